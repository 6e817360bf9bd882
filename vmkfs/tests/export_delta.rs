//! Incremental export and replication: deltas exported since a snapshot chain onto a copy of that
//! snapshot, and applying them in order brings a replica to the source's state; out of order they
//! are refused.

mod common;

use common::*;

use std::path::Path;

fn chain_data(dir: &Path, disk: &str) -> Vec<u8> {
    vmkfs(dir, &["--read-at", "0", disk]).stdout
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
        vmkfs_ok(d, &["-i", "p.raw", "-d", fmt, "base.vmdk"]);
        // The replica is a byte copy of the base (same CID).
        std::fs::create_dir(d.join("rep")).unwrap();
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("base") {
                std::fs::copy(e.path(), d.join("rep").join(&n)).unwrap();
            }
        }
        let s1 = vmkfs_ok(d, &["--snapshot", "base.vmdk"]);
        write_at(d, &s1, 3 << 20, b"first increment");
        write_at(d, &s1, 1000, &[0u8; 5000]); // zeros over base data must travel too
        let s2 = vmkfs_ok(d, &["--snapshot", &s1]);
        write_at(d, &s2, (5 << 20) + 17, b"second increment");
        // Deltas: since the base (differential) and since s1 (incremental).
        vmkfs_ok(d, &["--export-delta", "rep/d1.vmdk", "--since", "base.vmdk", &s1]);
        vmkfs_ok(d, &["--export-delta", "rep/d2.vmdk", "--since", &s1, &s2]);
        // d1 chains onto the replica's copy of the base and reads as s1 (also for qemu).
        vmkfs_ok(d, &["--compare", "rep/d1.vmdk", &s1]);
        if have_qemu() {
            std::fs::write(d.join("s1.raw"), chain_data(d, &s1)).unwrap();
            let c = qemu_img(d, &["compare", "rep/d1.vmdk", "s1.raw"]);
            assert!(c.status.success(), "{fmt}: {}", String::from_utf8_lossy(&c.stdout));
        }
        // Applying d2 first is refused (the replica is not at s1 yet).
        let o = vmkfs(&d.join("rep"), &["--apply", "d2.vmdk", "base.vmdk"]);
        assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
        vmkfs_ok(&d.join("rep"), &["--apply", "d1.vmdk", "base.vmdk"]);
        assert_eq!(chain_data(&d.join("rep"), "base.vmdk"), chain_data(d, &s1));
        vmkfs_ok(&d.join("rep"), &["--apply", "d2.vmdk", "base.vmdk"]);
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
