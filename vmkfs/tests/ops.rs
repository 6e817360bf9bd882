//! Disk operations through the command: extend, rename, delete, punch zeros, zero, inflate,
//! check/repair, compare, read-at/write-at.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn vmkfs(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmkfs")).args(args).current_dir(dir).output().expect("run vmkfs")
}

fn ok(args: &[&str], dir: &Path) -> String {
    let o = vmkfs(args, dir);
    assert!(
        o.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn qemu_ok(args: &[&str], dir: &Path) {
    match Command::new("qemu-img").args(args).current_dir(dir).output() {
        Ok(o) => assert!(o.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&o.stdout)),
        Err(_) => eprintln!("qemu-img not found: skipping qemu-img {args:?}"),
    }
}

fn raw(dir: &Path, size: usize) {
    let mut v = vec![0u8; size];
    for (i, b) in v.iter_mut().enumerate().take(300_000) {
        *b = (i % 251) as u8 + 1;
    }
    std::fs::write(dir.join("p.raw"), &v).unwrap();
}

fn info(dir: &Path, disk: &str) -> serde_json::Value {
    serde_json::from_str(&ok(&["--info", "--json", disk], dir)).unwrap()
}

#[test]
fn extend_every_format_keeps_data_and_qemu_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    raw(d, 4 << 20);
    for fmt in ["thin", "zeroedthick", "eagerzeroedthick", "monoflat", "2gbflat", "2gbsparse"] {
        let disk = format!("x-{fmt}.vmdk");
        ok(&["-i", "p.raw", "-d", fmt, &disk], d);
        let mut args = vec!["-X", "9m", &disk];
        if fmt == "eagerzeroedthick" {
            args.extend(["-d", "eagerzeroedthick"]);
        }
        ok(&args, d);
        assert_eq!(info(d, &disk)["capacity"], 9 << 20, "{fmt}");
        qemu_ok(&["check", &disk], d);
        // The old data is intact and the new space reads as zeros.
        let mut grown = std::fs::read(d.join("p.raw")).unwrap();
        grown.resize(9 << 20, 0);
        std::fs::write(d.join("grown.raw"), &grown).unwrap();
        ok(&["--compare", &disk, "grown.raw"], d);
        qemu_ok(&["compare", &disk, "grown.raw"], d);
        // Shrinking is refused.
        assert_eq!(vmkfs(&["-X", "1m", &disk], d).status.code(), Some(2));
    }
    // monosparse cannot grow in place: a clear "unsupported".
    ok(&["-i", "p.raw", "-d", "monosparse", "m.vmdk"], d);
    let o = vmkfs(&["-X", "9m", "m.vmdk"], d);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unsupported"));
}

#[test]
fn rename_moves_every_file_and_fixes_child_hints() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    raw(d, 4 << 20);
    ok(&["-i", "p.raw", "-d", "2gbflat", "old.vmdk"], d);
    // A hand-made child link that names old.vmdk as its parent.
    ok(&["-i", "p.raw", "-d", "monosparse", "child.vmdk"], d);
    let cid = info(d, "old.vmdk")["cid"].as_str().unwrap().to_string();
    let desc = format!(
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID={cid}\ncreateType=\"twoGbMaxExtentSparse\"\nparentFileNameHint=\"old.vmdk\"\n# Extent description\nRW 8192 SPARSE \"kid-s001.vmdk\"\n"
    );
    std::fs::write(d.join("kid.vmdk"), desc).unwrap();
    // Build kid-s001.vmdk as an empty sparse extent of the right size.
    ok(&["-c", "4m", "-d", "2gbsparse", "tmpkid.vmdk"], d);
    std::fs::rename(d.join("tmpkid-s001.vmdk"), d.join("kid-s001.vmdk")).unwrap();
    std::fs::remove_file(d.join("tmpkid.vmdk")).unwrap();
    ok(&["--compare", "kid.vmdk", "p.raw"], d);
    ok(&["-E", "old.vmdk", "new.vmdk"], d);
    assert!(!d.join("old.vmdk").exists() && !d.join("old-f001.vmdk").exists());
    assert!(d.join("new-f001.vmdk").exists());
    ok(&["--compare", "new.vmdk", "p.raw"], d);
    let kid = std::fs::read_to_string(d.join("kid.vmdk")).unwrap();
    assert!(kid.contains("parentFileNameHint=\"new.vmdk\""), "{kid}");
    ok(&["--compare", "kid.vmdk", "p.raw"], d);
    // Renaming onto an existing name is refused.
    assert_eq!(vmkfs(&["-E", "new.vmdk", "child.vmdk"], d).status.code(), Some(2));
    // A disk with a child is not deleted (the child would be orphaned); without it, every file goes.
    let o = vmkfs(&["-U", "new.vmdk"], d);
    assert_eq!(o.status.code(), Some(5), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("kid.vmdk is built on it"));
    ok(&["-U", "kid.vmdk"], d);
    ok(&["-U", "new.vmdk"], d);
    assert!(!d.join("new.vmdk").exists() && !d.join("new-f001.vmdk").exists());
}

#[test]
fn punch_zero_inflate_and_write_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    raw(d, 4 << 20);
    ok(&["-i", "p.raw", "-d", "thin", "t.vmdk"], d);
    let before = info(d, "t.vmdk")["allocated"].as_u64().unwrap();
    ok(&["-j", "t.vmdk"], d);
    let v = info(d, "t.vmdk");
    assert_eq!(v["allocated"], 4 << 20);
    assert_eq!(v["thin_provisioned"], false);
    ok(&["-K", "t.vmdk"], d);
    assert!(info(d, "t.vmdk")["allocated"].as_u64().unwrap() <= before + (64 << 10));
    ok(&["--compare", "t.vmdk", "p.raw"], d);
    qemu_ok(&["compare", "t.vmdk", "p.raw"], d);
    // Punching zeros in a sparse disk drops the zero grains.
    ok(&["-i", "p.raw", "-d", "monosparse", "s.vmdk"], d);
    ok(&["-w", "s.vmdk"], d);
    assert_eq!(info(d, "s.vmdk")["allocated"], 0);
    qemu_ok(&["check", "s.vmdk"], d);
    std::fs::write(d.join("z.raw"), vec![0u8; 4 << 20]).unwrap();
    ok(&["--compare", "s.vmdk", "z.raw"], d);
    // -k eager-zeroes a zeroedthick disk.
    ok(&["-c", "2m", "-d", "zeroedthick", "z.vmdk"], d);
    assert_eq!(info(d, "z.vmdk")["allocated"], 0);
    ok(&["-k", "z.vmdk"], d);
    assert_eq!(info(d, "z.vmdk")["allocated"], 2 << 20);
}

#[test]
fn check_and_repair_sparse_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    raw(d, 4 << 20);
    ok(&["-i", "p.raw", "-d", "monosparse", "s.vmdk"], d);
    assert!(ok(&["-x", "check", "s.vmdk"], d).contains("error free"));
    // Break the first entry of the primary grain table; the redundant copy still has it.
    let mut f = std::fs::read(d.join("s.vmdk")).unwrap();
    let gd = u64::from_le_bytes(f[56..64].try_into().unwrap()) as usize;
    let gt = u32::from_le_bytes(f[gd * 512..gd * 512 + 4].try_into().unwrap()) as usize;
    f[gt * 512..gt * 512 + 4].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
    f[72] = 1; // unclean-shutdown flag
    std::fs::write(d.join("s.vmdk"), &f).unwrap();
    let o = vmkfs(&["-x", "check", "s.vmdk"], d);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("unclean-shutdown") && out.contains("differs from its redundant copy"), "{out}");
    let o = vmkfs(&["-x", "repair", "s.vmdk"], d);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(ok(&["-x", "check", "s.vmdk"], d).contains("error free"));
    ok(&["--compare", "s.vmdk", "p.raw"], d);
    qemu_ok(&["check", "s.vmdk"], d);
}

#[test]
fn compare_read_and_write_at() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    raw(d, 4 << 20);
    ok(&["-i", "p.raw", "-d", "2gbsparse", "s.vmdk"], d);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmkfs"))
        .args(["--write-at", "3m", "s.vmdk"])
        .current_dir(d)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello, disk").unwrap();
    assert!(child.wait().unwrap().success());
    let out = vmkfs(&["--read-at", "3m", "--length", "11", "s.vmdk"], d).stdout;
    assert_eq!(out, b"hello, disk");
    let o = vmkfs(&["--compare", "s.vmdk", "p.raw"], d);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("offset {}", 3 << 20)));
    qemu_ok(&["check", "s.vmdk"], d);
}
