//! Incremental export and replication: deltas exported since a snapshot chain onto a copy of that
//! snapshot, and applying them in order brings a replica to the source's state; out of order they
//! are refused.

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
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn write_at(dir: &Path, disk: &str, off: u64, data: &[u8]) {
    use std::io::Write;
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmkfs"))
        .args(["--write-at", &off.to_string(), disk])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(data).unwrap();
    assert!(c.wait().unwrap().success());
}

fn chain_data(dir: &Path, disk: &str) -> Vec<u8> {
    vmkfs(&["--read-at", "0", disk], dir).stdout
}

#[test]
fn incremental_exports_replicate_in_order() {
    for fmt in ["thin", "monosparse"] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut raw = vec![0u8; 6 << 20];
        for (i, b) in raw.iter_mut().enumerate().take(200_000) {
            *b = (i * 7 % 251) as u8 + 1;
        }
        std::fs::write(d.join("p.raw"), &raw).unwrap();
        ok(&["-i", "p.raw", "-d", fmt, "base.vmdk"], d);
        // The replica is a byte copy of the base (same CID).
        std::fs::create_dir(d.join("rep")).unwrap();
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("base") {
                std::fs::copy(e.path(), d.join("rep").join(&n)).unwrap();
            }
        }
        let s1 = ok(&["--snapshot", "base.vmdk"], d);
        write_at(d, &s1, 3 << 20, b"first increment");
        write_at(d, &s1, 1000, &[0u8; 5000]); // zeros over base data must travel too
        let s2 = ok(&["--snapshot", &s1], d);
        write_at(d, &s2, (5 << 20) + 17, b"second increment");
        // Deltas: since the base (differential) and since s1 (incremental).
        ok(&["--export-delta", "rep/d1.vmdk", "--since", "base.vmdk", &s1], d);
        ok(&["--export-delta", "rep/d2.vmdk", "--since", &s1, &s2], d);
        // d1 chains onto the replica's copy of the base and reads as s1 (also for qemu).
        ok(&["--compare", "rep/d1.vmdk", &s1], d);
        if Command::new("qemu-img").arg("--version").output().is_ok() {
            std::fs::write(d.join("s1.raw"), chain_data(d, &s1)).unwrap();
            let c =
                Command::new("qemu-img").args(["compare", "rep/d1.vmdk", "s1.raw"]).current_dir(d).output().unwrap();
            assert!(c.status.success(), "{fmt}: {}", String::from_utf8_lossy(&c.stdout));
        }
        // Applying d2 first is refused (the replica is not at s1 yet).
        let o = vmkfs(&["--apply", "d2.vmdk", "base.vmdk"], &d.join("rep"));
        assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
        ok(&["--apply", "d1.vmdk", "base.vmdk"], &d.join("rep"));
        assert_eq!(chain_data(&d.join("rep"), "base.vmdk"), chain_data(d, &s1));
        ok(&["--apply", "d2.vmdk", "base.vmdk"], &d.join("rep"));
        assert_eq!(chain_data(&d.join("rep"), "base.vmdk"), chain_data(d, &s2));
        // The source chain is unchanged by exporting.
        let mut want = raw.clone();
        want[3 << 20..(3 << 20) + 15].copy_from_slice(b"first increment");
        want[1000..6000].fill(0);
        want[(5 << 20) + 17..(5 << 20) + 33].copy_from_slice(b"second increment");
        assert_eq!(chain_data(d, &s2), want);
        assert_eq!(chain_data(d, "base.vmdk"), raw);
    }
}
