//! The command's failure paths, end to end (issue 10, item 6): a reader that closes the pipe early,
//! errors on standard error, `--compare` of different capacities, names a descriptor cannot carry,
//! the thin flag after `-k`/`-j`/`-w`/`-K`, and the exit codes of bad offsets, bad names and
//! capacities a target cannot hold.

mod common;

use common::*;

mod vmfs_common;

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Stdio;

/// The pipe buffer of Linux (16 pages): output larger than this blocks until it is read.
const PIPE_BUFFER: usize = 64 << 10;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// What a run with an early-closed standard output left: its exit code, the bytes the reader took
/// and everything on standard error.
struct Closed {
    code: Option<i32>,
    read: Vec<u8>,
    stderr: String,
}

/// Runs vmkfs with standard output a real pipe whose reader takes `keep` bytes and then closes
/// its end. With `keep` 0 the reader is closed before vmkfs starts, so its first write fails.
fn with_closed_stdout(args: &[&str], dir: &Path, keep: usize) -> Closed {
    let (mut reader, writer) = std::io::pipe().unwrap();
    let mut cmd = vmkfs_cmd(dir, args);
    cmd.stdout(writer).stderr(Stdio::piped());
    let mut read = vec![0u8; keep];
    let child = if keep == 0 {
        drop(reader);
        cmd.spawn().unwrap()
    } else {
        let child = cmd.spawn().unwrap();
        reader.read_exact(&mut read).unwrap();
        drop(reader);
        child
    };
    drop(cmd); // the parent's copy of the write end
    let out = child.wait_with_output().unwrap();
    Closed { code: out.status.code(), read, stderr: text(&out.stderr) }
}

/// No panic, no backtrace, no word about the pipe.
fn assert_quiet_about_pipe(what: &str, c: &Closed) {
    for bad in ["panicked", "backtrace", "Broken pipe", "os error 32", "Failed", "error"] {
        assert!(!c.stderr.contains(bad), "{what}: stderr mentions {bad:?}: {}", c.stderr);
    }
}

/// A descriptor of `n` ZERO extents of 8 sectors each: `--info` lists every one of them.
fn many_extents(dir: &Path, n: usize) {
    let mut d = String::from(
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n# Extent description\n",
    );
    for _ in 0..n {
        d.push_str("RW 8 ZERO\n");
    }
    d.push_str("\n# The Disk Data Base\n#DDB\n\nddb.adapterType = \"lsilogic\"\nddb.geometry.cylinders = \"1\"\n");
    d.push_str("ddb.geometry.heads = \"255\"\nddb.geometry.sectors = \"63\"\n");
    std::fs::write(dir.join("many.vmdk"), d).unwrap();
}

/// A 64 MiB raw image with 4 KiB of pseudo-random data every 16 KiB and holes between: 8192
/// allocation runs, and 16 MiB that no compressor shrinks.
fn holey(dir: &Path) {
    let f = std::fs::File::create(dir.join("holey.raw")).unwrap();
    f.set_len(64 << 20).unwrap();
    let mut x = XorShift(0x2545_f491_4f6c_dd1d);
    let mut block = vec![0u8; 4096];
    for i in 0..4096u64 {
        block.iter_mut().for_each(|b| *b = (x.next_u64() >> 24) as u8 | 1);
        f.write_all_at(&block, i * (16 << 10)).unwrap();
    }
}

#[test]
fn info_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    many_extents(d, 4000);
    let full = vmkfs(d, &["--info", "many.vmdk"]);
    assert!(full.status.success(), "{}", text(&full.stderr));
    assert!(full.stdout.len() > PIPE_BUFFER + 12, "the listing must not fit in the pipe ({} bytes)", full.stdout.len());
    // `vmkfs --info X | head -c 12`: the reader goes away in the middle of the output.
    let c = with_closed_stdout(&["--info", "many.vmdk"], d, 12);
    assert_eq!(&c.read, &full.stdout[..12]);
    assert_eq!(c.code, Some(0), "{}", c.stderr);
    assert_eq!(c.stderr, "", "nothing may be said about the closed pipe");
    // Closed before the first line, as text and as JSON.
    for args in [&["--info", "many.vmdk"][..], &["--info", "--json", "many.vmdk"], &["-g", "many.vmdk"]] {
        let c = with_closed_stdout(args, d, 0);
        assert_eq!(c.code, Some(0), "{args:?}: {}", c.stderr);
        assert_eq!(c.stderr, "", "{args:?}");
    }
}

#[test]
fn map_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    holey(d);
    let full = vmkfs(d, &["--map", "--json", "holey.raw"]);
    assert!(full.status.success(), "{}", text(&full.stderr));
    let runs: serde_json::Value = serde_json::from_slice(&full.stdout).unwrap();
    if full.stdout.len() <= PIPE_BUFFER + 1 {
        eprintln!(
            "SKIP: this file system reports no holes ({} runs); the map fits in a pipe",
            runs.as_array().unwrap().len()
        );
        return;
    }
    for args in [&["--map", "--json", "holey.raw"][..], &["--map", "holey.raw"]] {
        let c = with_closed_stdout(args, d, 1);
        assert_eq!(c.code, Some(0), "{args:?}: {}", c.stderr);
        assert_eq!(c.stderr, "", "{args:?}");
    }
}

#[test]
fn read_at_and_export_into_a_closed_pipe_stop_with_exit_4_and_no_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    holey(d);
    let c = with_closed_stdout(&["--read-at", "0", "holey.raw"], d, 10);
    assert_eq!(c.code, Some(4), "{}", c.stderr);
    assert_eq!(c.stderr, "");
    assert_eq!(c.read, std::fs::read(d.join("holey.raw")).unwrap()[..10]);
    let c = with_closed_stdout(&["--read-at", "1m", "--length", "32m", "holey.raw"], d, 0);
    assert_eq!(c.code, Some(4), "{}", c.stderr);
    assert_eq!(c.stderr, "");
    for fmt in ["raw", "streamoptimized"] {
        for json in [false, true] {
            let mut args = vec!["-e", "-", "holey.raw", "-d", fmt];
            if json {
                args.push("--json");
            }
            let c = with_closed_stdout(&args, d, 100);
            assert_eq!(c.code, Some(4), "{args:?}: {}", c.stderr);
            // The progress messages (on standard error with -e -) stop where the copy stopped;
            // nothing is said about the pipe, and no `done` is claimed.
            assert_quiet_about_pipe(&format!("{args:?}"), &c);
            assert!(
                !c.stderr.contains("100% done") && !c.stderr.contains("\"event\":\"done\""),
                "{args:?}: {}",
                c.stderr
            );
            if json {
                assert!(c.stderr.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "{}", c.stderr);
            }
        }
    }
    assert_eq!(names(d), vec!["holey.raw"]);
}

#[test]
fn clone_whose_progress_reader_goes_away_still_completes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    holey(d);
    for (i, (keep, json)) in [(0, false), (0, true), (5, false), (5, true)].into_iter().enumerate() {
        let dst = format!("c{i}.vmdk");
        let mut args = vec!["-i", "holey.raw", "-d", "thin", &dst];
        if json {
            args.push("--json");
        }
        let c = with_closed_stdout(&args, d, keep);
        assert_eq!(c.code, Some(0), "{args:?}: {}", c.stderr);
        assert_eq!(c.stderr, "", "{args:?}");
        if keep > 0 {
            let want: &[u8] = if json { b"{\"des" } else { b"Desti" };
            assert_eq!(&c.read, want);
        }
        vmkfs_ok(d, &["--compare", "holey.raw", &dst]);
    }
    assert!(names(d).iter().all(|n| !n.ends_with(".tmp")), "{:?}", names(d));
}

#[test]
fn chain_query_and_volume_listings_into_a_closed_pipe_end_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    vmkfs_ok(d, &["-c", "1m", "-d", "monosparse", "base.vmdk"]);
    vmkfs_ok(d, &["--snapshot", "base.vmdk"]);
    std::fs::write(d.join("lun.img"), vec![0u8; 1 << 20]).unwrap();
    vmkfs_ok(d, &["-r", "lun.img", "map.vmdk"]);
    let mut cases: Vec<Vec<String>> = vec![
        vec!["--chain".into(), "base-000001.vmdk".into()],
        vec!["--chain".into(), "--json".into(), "base-000001.vmdk".into()],
        vec!["-q".into(), "map.vmdk".into()],
        vec!["-q".into(), "--json".into(), "map.vmdk".into()],
    ];
    match vmfs_common::real_image("vmfs5.bin") {
        Some(img) => {
            let img = img.display().to_string();
            cases.push(vec!["-P".into(), "--volume".into(), img.clone()]);
            cases.push(vec!["-P".into(), "-h".into(), "--volume".into(), img.clone()]);
            cases.push(vec!["--volume".into(), img.clone(), "-l".into()]);
            cases.push(vec!["--volume".into(), img, "-l".into(), "--json".into()]);
        }
        None => eprintln!("SKIP: no VMFS image: -P and -l are not checked here"),
    }
    for args in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let full = vmkfs(d, &args);
        assert!(full.status.success() && !full.stdout.is_empty(), "{args:?}: {}", text(&full.stderr));
        let c = with_closed_stdout(&args, d, 0);
        assert_eq!(c.code, Some(0), "{args:?}: {}", c.stderr);
        assert_quiet_about_pipe(&format!("{args:?}"), &c);
    }
}

#[test]
fn every_error_goes_to_standard_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("src.raw"), vec![7u8; 1 << 20]).unwrap();
    std::fs::write(d.join("keep.vmdk"), b"precious").unwrap();
    // A failed clone keeps vmkfstools' wording, on standard error; standard output has only the
    // lines printed before the failure.
    let o = vmkfs(d, &["-i", "src.raw", "-d", "monosparse", "keep.vmdk"]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("Failed to clone disk: keep.vmdk: already exists") && err.ends_with(".\n"), "{err}");
    assert_eq!(text(&o.stdout), "Destination disk format: monolithic sparse\nCloning disk 'src.raw'...\n");
    // A usage error found before the clone starts is worded the same way.
    let o = vmkfs(d, &["-i", "src.raw", "-d", "bogus", "x.vmdk"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).starts_with("Failed to clone disk: unknown disk format"), "{}", text(&o.stderr));
    assert_eq!(o.stdout, b"");
    // With --json the error is one JSON object on one line of standard error.
    for (args, code) in [
        (&["-i", "src.raw", "-d", "monosparse", "--json", "keep.vmdk"][..], 2),
        (&["-e", "out.vmdk", "missing.vmdk", "--json"], 3),
        (&["-e", "-", "missing.vmdk", "-d", "raw", "--json"], 3),
        (&["--info", "--json", "missing.vmdk"], 3),
        (&["--map", "--json", "missing.vmdk"], 3),
        (&["--chain", "--json", "."], 2),
    ] {
        let o = vmkfs(d, args);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", text(&o.stderr));
        let err = text(&o.stderr);
        let last = err.lines().last().unwrap_or("");
        let v: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{args:?}: {e}: {err}"));
        assert_eq!(v["event"], "error", "{args:?}");
        assert_eq!(v["exit"], code, "{args:?}");
        assert!(!text(&o.stdout).contains("\"error\""), "{args:?}: {}", text(&o.stdout));
    }
    // Other operations' errors: `vmkfs: REASON` on standard error, nothing on standard output.
    let o = vmkfs(d, &["--info", "missing.vmdk"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(text(&o.stderr).starts_with("vmkfs: ") && text(&o.stderr).contains("missing.vmdk"));
    assert_eq!(o.stdout, b"");
    assert_eq!(std::fs::read(d.join("keep.vmdk")).unwrap(), b"precious");
}

#[test]
fn compare_of_different_capacities_is_a_difference() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The same bytes, and the longer disk is all zeros past the shorter one's end: still not
    // identical, since a guest sees two disks of different sizes.
    let mut data = vec![0u8; 1 << 20];
    data[..4096].fill(0x5a);
    std::fs::write(d.join("short.raw"), &data).unwrap();
    data.resize(2 << 20, 0);
    std::fs::write(d.join("long.raw"), &data).unwrap();
    vmkfs_ok(d, &["-i", "long.raw", "-d", "thin", "long.vmdk"]);
    let o = vmkfs(d, &["--compare", "short.raw", "long.vmdk"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), "Capacity mismatch: short.raw is 1048576 bytes, long.vmdk is 2097152 bytes.");
    let o = vmkfs(d, &["--compare", "long.vmdk", "short.raw", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["identical"], false);
    assert_eq!(v["reason"], "capacity");
    assert_eq!((v["capacity_a"].as_u64(), v["capacity_b"].as_u64()), (Some(2 << 20), Some(1 << 20)), "{v}");
    assert_eq!((v["a"].as_str(), v["b"].as_str()), (Some("long.vmdk"), Some("short.raw")));
    // Equal capacities: content decides, as before.
    vmkfs_ok(d, &["--compare", "long.raw", "long.vmdk"]);
    let o = vmkfs(d, &["--compare", "long.raw", "short.raw", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    std::fs::write(d.join("other.raw"), {
        let mut x = data.clone();
        x[3000] = 1;
        x
    })
    .unwrap();
    let o = vmkfs(d, &["--compare", "long.vmdk", "other.raw", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["reason"].as_str(), v["first_difference"].as_u64()), (Some("content"), Some(3000)), "{v}");
}

#[test]
fn names_a_descriptor_cannot_carry_are_refused_at_creation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("src.raw"), vec![9u8; 1 << 20]).unwrap();
    std::fs::write(d.join("lun.img"), vec![0u8; 1 << 20]).unwrap();
    vmkfs_ok(d, &["-c", "1m", "-d", "thin", "good.vmdk"]);
    let before = names(d);
    let quote = "a\"b.vmdk";
    let newline = "a\nb.vmdk";
    let bell = "a\u{7}b.vmdk";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["-c", "1m", "-d", "thin", quote], "double quote"),
        (vec!["-c", "1m", "-d", "monosparse", quote], "double quote"),
        (vec!["-c", "1m", "-d", "2gbsparse", newline], "newline"),
        (vec!["-c", "1m", "-d", "monoflat", bell], "U+0007"),
        (vec!["-i", "src.raw", "-d", "thin", quote], "double quote"),
        (vec!["-i", "src.raw", "-d", "streamoptimized", quote], "double quote"),
        (vec!["-e", quote, "src.raw", "-d", "monosparse"], "double quote"),
        (vec!["-r", "lun.img", quote], "double quote"),
        (vec!["-z", "lun.img", newline], "newline"),
        (vec!["-E", "good.vmdk", quote], "double quote"),
    ];
    for (args, says) in cases {
        let o = vmkfs(d, &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains(says), "{args:?}: {}", text(&o.stderr));
        assert_eq!(names(d), before, "{args:?}: nothing may be created, moved or left behind");
    }
    // Not valid UTF-8.
    let bad = OsStr::from_bytes(b"x\xff.vmdk");
    let mut c = vmkfs_cmd(d, &["-c", "1m", "-d", "thin"]);
    c.arg(bad);
    let o = run(c, None, None);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("not valid UTF-8") && text(&o.stderr).contains("0xff"), "{}", text(&o.stderr));
    assert_eq!(names(d), before);
    // Spaces, apostrophes and any printable Unicode are fine, and read back.
    let fine = "it's a dïsk.vmdk";
    vmkfs_ok(d, &["-i", "src.raw", "-d", "thin", fine]);
    vmkfs_ok(d, &["--compare", "src.raw", fine]);
    assert!(std::fs::read_to_string(d.join(fine)).unwrap().contains("VMFS \"it's a dïsk-flat.vmdk\""));
}

#[test]
fn thin_flag_follows_the_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 4 MiB: 1 MiB of data, then zeros.
    let mut data = vec![0u8; 4 << 20];
    for (i, b) in data[..1 << 20].iter_mut().enumerate() {
        *b = (i % 251) as u8 + 1;
    }
    std::fs::write(d.join("p.raw"), &data).unwrap();
    let thin_line = "ddb.thinProvisioned = \"1\"";
    let desc = |n: &str| std::fs::read_to_string(d.join(n)).unwrap();
    for op in ["-k", "-j", "-w"] {
        let disk = format!("t{op}.vmdk");
        vmkfs_ok(d, &["-i", "p.raw", "-d", "thin", &disk]);
        assert_eq!(info_json(d, &disk)["thin_provisioned"], true);
        vmkfs_ok(d, &[op, &disk]);
        let v = info_json(d, &disk);
        assert_eq!(v["thin_provisioned"], false, "{op}: {v}");
        assert_eq!(v["allocated"], 4 << 20, "{op}: the disk is fully allocated");
        assert!(!desc(&disk).contains("thinProvisioned"), "{op}: {}", desc(&disk));
        if op != "-w" {
            vmkfs_ok(d, &["--compare", "p.raw", &disk]);
        }
    }
    // -K on a zeroedthick disk whose zeros were written: it gets holes, so it is thin now.
    vmkfs_ok(d, &["-i", "p.raw", "-d", "eagerzeroedthick", "e.vmdk"]);
    assert_eq!(info_json(d, "e.vmdk")["thin_provisioned"], false);
    vmkfs_ok(d, &["-K", "e.vmdk"]);
    let v = info_json(d, "e.vmdk");
    assert_eq!(v["thin_provisioned"], true, "{v}");
    assert!(v["allocated"].as_u64().unwrap() < 2 << 20, "{v}");
    assert!(desc("e.vmdk").contains(thin_line), "{}", desc("e.vmdk"));
    vmkfs_ok(d, &["--compare", "p.raw", "e.vmdk"]);
    // -K that frees nothing leaves a thick disk thick.
    let full: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8 + 1).collect();
    std::fs::write(d.join("full.raw"), &full).unwrap();
    vmkfs_ok(d, &["-i", "full.raw", "-d", "eagerzeroedthick", "f.vmdk"]);
    let o = vmkfs_ok(d, &["-K", "--json", "f.vmdk"]);
    assert!(o.contains("\"freed\":0"), "{o}");
    assert_eq!(info_json(d, "f.vmdk")["thin_provisioned"], false);
    assert!(!desc("f.vmdk").contains("thinProvisioned"));
    // Hosted flat disks carry no thin flag: -K punches them without adding one.
    vmkfs_ok(d, &["-i", "p.raw", "-d", "monoflat", "m.vmdk"]);
    vmkfs_ok(d, &["-K", "m.vmdk"]);
    assert!(!desc("m.vmdk").contains("thinProvisioned"));
    qemu_check(d, &["e.vmdk", "t-k.vmdk", "t-j.vmdk", "m.vmdk"]);
}

/// `qemu-img check` opens each disk (skipped without qemu-img).
fn qemu_check(dir: &Path, disks: &[&str]) {
    if !have_qemu() {
        return;
    }
    for disk in disks {
        let o = qemu_img(dir, &["compare", disk, "p.raw"]);
        assert!(o.success(), "qemu-img compare {disk}: {}", o.describe());
    }
}

#[test]
fn bad_offsets_and_ranges_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("p.raw"), vec![3u8; 1 << 20]).unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["--read-at", "18446744073709551615", "--length", "10", "p.raw"], "is more than"),
        (&["--read-at", "1", "--length", "18446744073709551615", "p.raw"], "is more than"),
        (&["--read-at", "2m", "p.raw"], "offset 2097152 is past the end of the disk (1048576 bytes)"),
        (&["--read-at", "1020k", "--length", "8k", "p.raw"], "reach past the end of the disk"),
        (&["--read-at", "99999999999t", "p.raw"], "too large"),
        (&["--read-at", "1q", "p.raw"], "unknown unit"),
    ];
    for (args, says) in cases {
        let o = vmkfs(d, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains(says), "{args:?}: {}", text(&o.stderr));
        assert_eq!(o.stdout, b"", "{args:?}: nothing may be written before the range is checked");
    }
    // Writes past the end are refused, and the disk is left as it was.
    for (off, input) in [("2m", 1usize), ("1m", 1), ("1020k", 8192), ("18446744073709551615", 1)] {
        let o = vmkfs_stdin(d, &["--write-at", off, "p.raw"], &vec![0xeeu8; input]);
        assert_eq!(o.status.code(), Some(2), "--write-at {off}: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains("past the end of the disk"), "{}", text(&o.stderr));
        assert_eq!(std::fs::read(d.join("p.raw")).unwrap(), vec![3u8; 1 << 20]);
    }
    // The last byte is still in range.
    ok(&vmkfs_stdin(d, &["--write-at", "1048575", "p.raw"], b"!"));
    assert_eq!(vmkfs(d, &["--read-at", "1048575", "p.raw"]).stdout, b"!");
}

#[test]
fn names_that_are_not_disk_files_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("p.raw"), vec![3u8; 1 << 20]).unwrap();
    std::fs::create_dir(d.join("sub")).unwrap();
    let before = names(d);
    for name in [".", "..", "/", "sub", "sub/", "p.raw/"] {
        let cases: Vec<Vec<&str>> = vec![
            vec!["--info", name],
            vec!["--map", name],
            vec!["-g", name],
            vec!["-U", name],
            vec!["-K", name],
            vec!["-w", name],
            vec!["-X", "2m", name],
            vec!["--chain", name],
            vec!["--snapshot", name],
            vec!["-q", name],
            vec!["--read-at", "0", name],
            vec!["--compare", "p.raw", name],
            vec!["--compare", name, "p.raw"],
            vec!["-i", name, "-d", "thin", "x.vmdk"],
            vec!["-i", "p.raw", "-d", "thin", name],
            vec!["-e", name, "p.raw"],
            vec!["-e", "x.vmdk", name],
            vec!["-E", "p.raw", name],
            vec!["-c", "1m", name],
            vec!["-r", "p.raw", name],
        ];
        for args in cases {
            let o = vmkfs(d, &args);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {}{}", text(&o.stdout), text(&o.stderr));
            assert!(text(&o.stderr).contains("not a disk file name"), "{args:?}: {}", text(&o.stderr));
        }
    }
    assert_eq!(names(d), before);
}

/// A descriptor of one ZERO extent of `sectors` sectors.
fn zero_disk(dir: &Path, name: &str, sectors: u64) {
    let d = format!(
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n# Extent description\nRW {sectors} ZERO\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = \"lsilogic\"\n"
    );
    std::fs::write(dir.join(name), d).unwrap();
}

#[test]
fn sources_a_target_cannot_hold_are_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    zero_disk(d, "empty.vmdk", 0);
    zero_disk(d, "huge.vmdk", (1 << 55) - 1); // the largest capacity a descriptor may state
    zero_disk(d, "big.vmdk", 10 << 31); // 10 TiB: one file holds it, 4096 split extents do not
    let before = names(d);
    let cases: [(&str, &str, &str); 11] = [
        ("empty.vmdk", "thin", "a capacity of 0 bytes"),
        ("empty.vmdk", "monosparse", "a capacity of 0 bytes"),
        ("empty.vmdk", "streamoptimized", "a capacity of 0 bytes"),
        ("huge.vmdk", "thin", "beyond what a file can hold"),
        ("huge.vmdk", "zeroedthick", "beyond what a file can hold"),
        ("huge.vmdk", "monoflat", "beyond what a file can hold"),
        ("huge.vmdk", "2gbflat", "beyond what a file can hold"),
        ("huge.vmdk", "2gbsparse", "beyond what a file can hold"),
        ("huge.vmdk", "streamoptimized", "beyond what a file can hold"),
        ("big.vmdk", "2gbsparse", "a descriptor holds at most 4096"),
        ("big.vmdk", "monosparse", "at most 2 TiB"),
    ];
    for (src, fmt, says) in cases {
        let o = vmkfs(d, &["-i", src, "-d", fmt, "out.vmdk"]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "{src} -> {fmt}: {err}");
        assert!(err.starts_with("Failed to clone disk: ") && err.contains(says), "{src} -> {fmt}: {err}");
        assert_eq!(names(d), before, "{src} -> {fmt}: nothing may be created");
    }
    let o = vmkfs(d, &["-e", "out.vmdk", "huge.vmdk"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    // A capacity from the command line that no file can hold is refused the same way.
    let o = vmkfs(d, &["-c", "8388608t", "-d", "thin", "out.vmdk"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("beyond what a file can hold"), "{}", text(&o.stderr));
    let o = vmkfs(d, &["-c", "9t", "-d", "2gbflat", "out.vmdk"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert_eq!(names(d), before);
}

#[test]
fn a_full_standard_output_is_an_io_error_not_a_quiet_end() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        eprintln!("SKIP: no /dev/full");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("p.raw"), vec![3u8; 1 << 20]).unwrap();
    for args in [&["--info", "p.raw"][..], &["--map", "--json", "p.raw"], &["--read-at", "0", "p.raw"]] {
        let o = vmkfs_cmd(d, args).stdout(full.try_clone().unwrap()).stderr(Stdio::piped()).output().unwrap();
        assert_eq!(o.status.code(), Some(4), "{args:?}: {}", text(&o.stderr));
        let err = text(&o.stderr);
        assert!(err.contains("<stdout>") && err.contains("No space left"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
