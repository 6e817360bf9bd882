//! Pipes: `vmkfs -e - SRC -d streamoptimized | vmkfs -i - -d FMT DST` (and `-d raw`) round trips
//! are byte-identical, a chain is flattened, messages go to standard error when standard output
//! carries the disk, and the refusals say why.

mod common;

use common::*;

use std::path::Path;
use std::process::Stdio;

/// `vmkfs A | vmkfs B`: both outputs (the second's standard output and both standard errors).
fn pipe(a: &[&str], b: &[&str], dir: &Path) -> (Outcome, Outcome) {
    let mut first = vmkfs_cmd(dir, a);
    first.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut first = first.spawn().unwrap();
    let mut second = vmkfs_cmd(dir, b);
    second.stdin(Stdio::from(first.stdout.take().unwrap())).stdout(Stdio::piped()).stderr(Stdio::piped());
    let reader = second.spawn().unwrap();
    // The command holds the pipe's read end: dropped, so the writer sees EPIPE when the reader ends.
    drop(second);
    let o2 = reader.wait_with_output().unwrap();
    let o1 = first.wait_with_output().unwrap();
    let outcome = |args: &[&str], o: std::process::Output| Outcome {
        argv: args.iter().map(|a| a.to_string()).collect(),
        dir: dir.into(),
        status: o.status,
        stdout: o.stdout,
        stderr: o.stderr,
        timed_out: false,
    };
    (outcome(a, o1), outcome(b, o2))
}

fn text(o: &Outcome) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

/// 20 MiB and 33 KiB (the last grain is partial): random, text and zero runs.
fn image(dir: &Path) -> Vec<u8> {
    let mix = Mix { state: 0x5eed_1234_abcd_0001, run_kib: 600, edge: 300, kinds: 4, random: 1, text: b"pipe dream " };
    let len = (20 << 20) + (33 << 10);
    let data = mixed_image(len, len, &mix);
    std::fs::write(dir.join("src.raw"), &data).unwrap();
    data
}

/// The plain bytes of a disk, through `-e - … -d raw`.
fn raw_bytes(disk: &str, dir: &Path) -> Vec<u8> {
    let o = vmkfs(dir, &["-e", "-", disk, "-d", "raw"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

#[test]
fn stream_round_trip_through_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let want = image(d);
    assert!(vmkfs(d, &["-i", "src.raw", "-d", "monosparse", "src.vmdk"]).status.success());
    for fmt in ["thin", "monosparse", "2gbsparse", "eagerzeroedthick", "streamoptimized"] {
        let dst = format!("back-{fmt}.vmdk");
        let (o1, o2) = pipe(&["-e", "-", "src.vmdk", "-d", "streamoptimized"], &["-i", "-", "-d", fmt, &dst], d);
        assert!(o1.status.success(), "{fmt}: {}", text(&o1));
        assert!(o2.status.success(), "{fmt}: {}", text(&o2));
        // The exporter's messages are on standard error.
        let err = String::from_utf8_lossy(&o1.stderr);
        assert!(
            err.contains("Destination disk format: stream optimized") && err.contains("Clone: 100% done."),
            "{err}"
        );
        assert!(String::from_utf8_lossy(&o2.stdout).contains("Clone: 100% done."), "{}", text(&o2));
        assert!(raw_bytes(&dst, d) == want, "{fmt}: the round trip changed the disk");
    }
}

#[test]
fn raw_round_trip_through_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let want = image(d);
    assert!(vmkfs(d, &["-i", "src.raw", "-d", "2gbsparse", "src.vmdk"]).status.success());
    // The raw bytes on standard output are exactly the disk.
    assert!(raw_bytes("src.vmdk", d) == want);
    let size = want.len().to_string();
    for fmt in ["thin", "monosparse", "streamoptimized"] {
        let dst = format!("back-{fmt}.vmdk");
        let (o1, o2) = pipe(&["-e", "-", "src.vmdk", "-d", "raw"], &["-i", "-", "-d", fmt, "--size", &size, &dst], d);
        assert!(o1.status.success() && o2.status.success(), "{fmt}: {}\n{}", text(&o1), text(&o2));
        assert!(raw_bytes(&dst, d) == want, "{fmt}: the round trip changed the disk");
    }
    // Raw input needs --size, and the size must match.
    let (_, o2) = pipe(&["-e", "-", "src.vmdk", "-d", "raw"], &["-i", "-", "-d", "thin", "x.vmdk"], d);
    assert_eq!(o2.status.code(), Some(2), "{}", text(&o2));
    assert!(text(&o2).contains("--size"), "{}", text(&o2));
    let short = (want.len() + 512).to_string();
    let (_, o2) =
        pipe(&["-e", "-", "src.vmdk", "-d", "raw"], &["-i", "-", "-d", "thin", "--size", &short, "x.vmdk"], d);
    assert!(!o2.status.success());
    assert!(text(&o2).contains(&format!("input ends after {} bytes", want.len())), "{}", text(&o2));
    let long = (want.len() - 512).to_string();
    let (_, o2) = pipe(&["-e", "-", "src.vmdk", "-d", "raw"], &["-i", "-", "-d", "thin", "--size", &long, "x.vmdk"], d);
    assert!(!o2.status.success());
    assert!(text(&o2).contains("more than"), "{}", text(&o2));
    assert!(!d.join("x.vmdk").exists() && !d.join("x-flat.vmdk").exists());
}

#[test]
fn export_flattens_a_chain_and_writes_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut want = image(d);
    assert!(vmkfs(d, &["-i", "src.raw", "-d", "monosparse", "base.vmdk"]).status.success());
    let o = vmkfs(d, &["--snapshot", "base.vmdk"]);
    if !o.status.success() {
        eprintln!("--snapshot is not available ({}): exporting the base alone", text(&o));
    } else {
        let child = String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or("").trim().to_string();
        ok(&vmkfs_stdin(d, &["--write-at", "4096", &child], &[0xEE; 8192]));
        want[4096..4096 + 8192].fill(0xEE);
        let o = vmkfs(d, &["-e", "-", &child, "-d", "streamoptimized"]);
        assert!(o.status.success(), "{}", text(&o));
        std::fs::write(d.join("flat.vmdk"), &o.stdout).unwrap();
        assert!(raw_bytes("flat.vmdk", d) == want, "the exported chain is not flattened");
    }
    // -e to a file: 2gbsparse by default, vmkfstools' wording on standard output.
    let o = vmkfs(d, &["-e", "exp.vmdk", "base.vmdk"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Destination disk format: sparse with 2GB maximum extent size"), "{out}");
    assert!(out.contains("Cloning disk 'base.vmdk'...") && out.contains("Clone: 100% done."), "{out}");
    assert!(d.join("exp-s001.vmdk").exists());
    let o = vmkfs(d, &["-e", "exp2.vmdk", "base.vmdk", "-d", "streamoptimized", "--compress-level", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(vmkfs(d, &["--compare", "exp.vmdk", "exp2.vmdk"]).status.success());
}

#[test]
fn refusals_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    image(d);
    let cases: [(&[&str], &str); 6] = [
        (&["-e", "-", "src.raw"], "-d streamoptimized or -d raw"),
        (&["-e", "-", "src.raw", "-d", "thin"], "-d streamoptimized or -d raw"),
        (&["-e", "x.img", "src.raw", "-d", "raw"], "-d raw is for standard output"),
        (&["-e", "x.vmdk", "src.raw", "-d", "thin", "--compress-level", "3"], "--compress-level"),
        (&["-i", "src.raw", "-d", "thin", "--size", "1m", "x.vmdk"], "--size"),
        (&["-e", "-", "src.raw", "-d", "nosuch"], "unknown disk format"),
    ];
    for (args, want) in cases {
        let o = vmkfs(d, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(want), "{args:?}: {}", text(&o));
    }
    let o = vmkfs(d, &["-e", "-", "src.raw", "-d", "streamoptimized", "--compress-level", "12"]);
    assert_eq!(o.status.code(), Some(2));
    // --json events go to standard error when standard output carries the disk.
    let o = vmkfs(d, &["-e", "-", "src.raw", "-d", "streamoptimized", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(&o.stdout[..4], b"KDMV");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "{err}");
    assert!(err.contains("\"event\":\"done\""), "{err}");
}
