//! The `vmkfs` command, end to end: clone, create, info, geometry; refusals and exit codes.

mod common;

use common::*;

use std::path::{Path, PathBuf};

/// A deterministic 8 MiB raw image: pseudo-random and text blocks with zero gaps.
fn pattern(dir: &Path) -> PathBuf {
    let mut data = vec![0u8; 8 << 20];
    let mut x = XorShift(0x9e37_79b9_7f4a_7c15);
    for (i, chunk) in data.chunks_mut(64 << 10).enumerate() {
        match i % 4 {
            0 => chunk.iter_mut().for_each(|b| *b = x.next_u64() as u8),
            1 => {}
            2 => {
                let text = b"the quick brown fox jumps over the lazy dog ";
                for (j, b) in chunk[1000..30000].iter_mut().enumerate() {
                    *b = text[j % text.len()];
                }
            }
            _ => {}
        }
    }
    let p = dir.join("pattern.raw");
    std::fs::write(&p, &data).unwrap();
    p
}

#[test]
fn clone_to_every_format_reads_identically_in_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pattern(d);
    let q = have_qemu();
    for fmt in ["zeroedthick", "eagerzeroedthick", "thin", "thick", "monosparse", "2gbsparse", "monoflat", "2gbflat"] {
        let dst = format!("out-{fmt}.vmdk");
        let o = vmkfs(d, &["-i", "pattern.raw", "-d", fmt, &dst]);
        assert!(o.status.success(), "{fmt}: {}", String::from_utf8_lossy(&o.stdout));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("Destination disk format: "), "{out}");
        assert!(out.contains("Cloning disk 'pattern.raw'..."), "{out}");
        assert!(out.contains("Clone: 100% done."), "{out}");
        if q {
            let c = qemu_img(d, &["compare", &dst, "pattern.raw"]);
            assert!(c.status.success(), "{fmt}: {}", String::from_utf8_lossy(&c.stdout));
        }
    }
    // No temporary files are left behind.
    assert!(names(d).iter().all(|n| !n.ends_with(".tmp")), "{:?}", names(d));
}

#[test]
fn thin_stays_thin() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pattern(d);
    assert!(vmkfs(d, &["-i", "pattern.raw", "-d", "thin", "t.vmdk"]).status.success());
    let o = vmkfs(d, &["--info", "--json", "t.vmdk"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["capacity"], 8 << 20);
    assert_eq!(v["format"], "vmfs");
    assert_eq!(v["thin_provisioned"], true);
    // 32 random 64 KiB blocks, and 32 text runs that touch eight 4 KiB blocks each: zeros are holes.
    assert_eq!(v["allocated"], (2 << 20) + 32 * 32 * 1024, "{v}");
    let desc = std::fs::read_to_string(d.join("t.vmdk")).unwrap();
    assert!(desc.contains("ddb.thinProvisioned = \"1\""));
    assert!(desc.contains("RW 16384 VMFS \"t-flat.vmdk\""));
}

#[test]
fn existing_destination_is_never_overwritten_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pattern(d);
    std::fs::write(d.join("keep.vmdk"), b"precious").unwrap();
    let o = vmkfs(d, &["-i", "pattern.raw", "-d", "monosparse", "keep.vmdk"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Failed to clone disk:") && err.contains("keep.vmdk") && err.contains("already exists"),
        "{err}"
    );
    assert_eq!(std::fs::read(d.join("keep.vmdk")).unwrap(), b"precious");
    // An extent file of the destination counts too.
    std::fs::write(d.join("x-flat.vmdk"), b"precious").unwrap();
    let o = vmkfs(d, &["-i", "pattern.raw", "-d", "thin", "x.vmdk"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!d.join("x.vmdk").exists());
    assert_eq!(std::fs::read(d.join("x-flat.vmdk")).unwrap(), b"precious");
    // --force replaces.
    let o = vmkfs(d, &["-i", "pattern.raw", "-d", "monosparse", "--force", "keep.vmdk"]);
    assert!(o.status.success());
    assert_ne!(std::fs::read(d.join("keep.vmdk")).unwrap(), b"precious");
}

#[test]
fn corrupt_source_fails_cleanly_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pattern(d);
    assert!(vmkfs(d, &["-i", "pattern.raw", "-d", "monosparse", "src.vmdk"]).status.success());
    // Point the first grain table entry far past the end of the file.
    let mut f = std::fs::read(d.join("src.vmdk")).unwrap();
    let gd_offset = u64::from_le_bytes(f[56..64].try_into().unwrap()) as usize;
    let gt = u32::from_le_bytes(f[gd_offset * 512..gd_offset * 512 + 4].try_into().unwrap()) as usize;
    f[gt * 512..gt * 512 + 4].copy_from_slice(&0x4000_0000u32.to_le_bytes());
    std::fs::write(d.join("src.vmdk"), &f).unwrap();
    let before = names(d);
    let o = vmkfs(d, &["-i", "src.vmdk", "-d", "thin", "dst.vmdk"]);
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stderr);
    assert!(out.contains("Failed to clone disk:"), "{out}");
    assert!(out.contains("src.vmdk") && out.contains(&format!("offset {}", gt * 512)), "{out}");
    assert!(out.contains("past the end of the file"), "{out}");
    assert_eq!(names(d), before, "no destination or temporary file may remain");
}

#[test]
fn create_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let q = have_qemu();
    for fmt in ["zeroedthick", "eagerzeroedthick", "thin", "monosparse", "2gbsparse", "monoflat", "2gbflat"] {
        let p = format!("c-{fmt}.vmdk");
        let o = vmkfs(d, &["-c", "10m", "-d", fmt, "-a", "ide", &p]);
        assert!(o.status.success(), "{fmt}: {}", String::from_utf8_lossy(&o.stderr));
        let o = vmkfs(d, &["--info", "--json", &p]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["capacity"], 10 << 20);
        assert_eq!(v["adapter"], "ide");
        if q {
            let info = qemu_img(d, &["info", "--output=json", &p]);
            let qi: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
            assert_eq!(qi["virtual-size"], 10 << 20, "{fmt}");
        }
    }
    let o = vmkfs(d, &["-g", "c-thin.vmdk"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "Geometry information C/H/S is 20/16/63");
    // Eager-zeroed disks are fully allocated.
    let m = std::fs::metadata(d.join("c-eagerzeroedthick-flat.vmdk")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(m.blocks() * 512 >= 10 << 20);
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(vmkfs(d, &["-c", "1000", "x.vmdk"]).status.code(), Some(2));
    assert_eq!(vmkfs(d, &["-c", "1m", "-d", "bogus", "x.vmdk"]).status.code(), Some(2));
    assert_eq!(vmkfs(d, &["--nonsense"]).status.code(), Some(2));
    assert_eq!(vmkfs(d, &[]).status.code(), Some(2));
    assert_eq!(vmkfs(d, &["--info", "missing.vmdk"]).status.code(), Some(3));
}
