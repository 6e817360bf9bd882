//! Disk operations through the command: extend, rename, delete, punch zeros, zero, inflate,
//! check/repair, compare, read-at/write-at.

mod common;

use common::*;

use std::path::Path;

/// `qemu-img ARGS` in `dir`, which must succeed (skipped without qemu-img).
fn qemu_ok(args: &[&str], dir: &Path) {
    if have_qemu() {
        ok(&qemu_img(dir, args));
    }
}

fn raw(dir: &Path, size: usize) {
    let mut v = vec![0u8; size];
    for (i, b) in v.iter_mut().enumerate().take(300_000) {
        *b = (i % 251) as u8 + 1;
    }
    std::fs::write(dir.join("p.raw"), &v).unwrap();
}

#[test]
fn extend_every_format_keeps_data_and_qemu_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    raw(d, 4 << 20);
    for fmt in ["thin", "zeroedthick", "eagerzeroedthick", "monoflat", "2gbflat", "2gbsparse"] {
        let disk = format!("x-{fmt}.vmdk");
        vmkfs_ok(d, &["-i", "p.raw", "-d", fmt, &disk]);
        let mut args = vec!["-X", "9m", &disk];
        if fmt == "eagerzeroedthick" {
            args.extend(["-d", "eagerzeroedthick"]);
        }
        vmkfs_ok(d, &args);
        assert_eq!(info_json(d, &disk)["capacity"], 9 << 20, "{fmt}");
        qemu_ok(&["check", &disk], d);
        // The old data is intact and the new space reads as zeros.
        let mut grown = std::fs::read(d.join("p.raw")).unwrap();
        grown.resize(9 << 20, 0);
        std::fs::write(d.join("grown.raw"), &grown).unwrap();
        vmkfs_ok(d, &["--compare", &disk, "grown.raw"]);
        qemu_ok(&["compare", &disk, "grown.raw"], d);
        // Shrinking is refused.
        assert_eq!(vmkfs(d, &["-X", "1m", &disk]).status.code(), Some(2));
    }
    // monosparse cannot grow in place: a clear "unsupported".
    vmkfs_ok(d, &["-i", "p.raw", "-d", "monosparse", "m.vmdk"]);
    let o = vmkfs(d, &["-X", "9m", "m.vmdk"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unsupported"));
}

#[test]
fn rename_moves_every_file_and_fixes_child_hints() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    raw(d, 4 << 20);
    vmkfs_ok(d, &["-i", "p.raw", "-d", "2gbflat", "old.vmdk"]);
    // A hand-made child link that names old.vmdk as its parent.
    vmkfs_ok(d, &["-i", "p.raw", "-d", "monosparse", "child.vmdk"]);
    let cid = info_json(d, "old.vmdk")["cid"].as_str().unwrap().to_string();
    let desc = format!(
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID={cid}\ncreateType=\"twoGbMaxExtentSparse\"\nparentFileNameHint=\"old.vmdk\"\n# Extent description\nRW 8192 SPARSE \"kid-s001.vmdk\"\n"
    );
    std::fs::write(d.join("kid.vmdk"), desc).unwrap();
    // Build kid-s001.vmdk as an empty sparse extent of the right size.
    vmkfs_ok(d, &["-c", "4m", "-d", "2gbsparse", "tmpkid.vmdk"]);
    std::fs::rename(d.join("tmpkid-s001.vmdk"), d.join("kid-s001.vmdk")).unwrap();
    std::fs::remove_file(d.join("tmpkid.vmdk")).unwrap();
    vmkfs_ok(d, &["--compare", "kid.vmdk", "p.raw"]);
    vmkfs_ok(d, &["-E", "old.vmdk", "new.vmdk"]);
    assert!(!d.join("old.vmdk").exists() && !d.join("old-f001.vmdk").exists());
    assert!(d.join("new-f001.vmdk").exists());
    vmkfs_ok(d, &["--compare", "new.vmdk", "p.raw"]);
    let kid = std::fs::read_to_string(d.join("kid.vmdk")).unwrap();
    assert!(kid.contains("parentFileNameHint=\"new.vmdk\""), "{kid}");
    vmkfs_ok(d, &["--compare", "kid.vmdk", "p.raw"]);
    // Renaming onto an existing name is refused.
    assert_eq!(vmkfs(d, &["-E", "new.vmdk", "child.vmdk"]).status.code(), Some(2));
    // A disk with a child is not deleted (the child would be orphaned); without it, every file goes.
    let o = vmkfs(d, &["-U", "new.vmdk"]);
    assert_eq!(o.status.code(), Some(5), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("kid.vmdk is built on it"));
    vmkfs_ok(d, &["-U", "kid.vmdk"]);
    vmkfs_ok(d, &["-U", "new.vmdk"]);
    assert!(!d.join("new.vmdk").exists() && !d.join("new-f001.vmdk").exists());
}

#[test]
fn punch_zero_inflate_and_write_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    raw(d, 4 << 20);
    vmkfs_ok(d, &["-i", "p.raw", "-d", "thin", "t.vmdk"]);
    let before = info_json(d, "t.vmdk")["allocated"].as_u64().unwrap();
    vmkfs_ok(d, &["-j", "t.vmdk"]);
    let v = info_json(d, "t.vmdk");
    assert_eq!(v["allocated"], 4 << 20);
    assert_eq!(v["thin_provisioned"], false);
    vmkfs_ok(d, &["-K", "t.vmdk"]);
    assert!(info_json(d, "t.vmdk")["allocated"].as_u64().unwrap() <= before + (64 << 10));
    vmkfs_ok(d, &["--compare", "t.vmdk", "p.raw"]);
    qemu_ok(&["compare", "t.vmdk", "p.raw"], d);
    // Punching zeros in a sparse disk drops the zero grains.
    vmkfs_ok(d, &["-i", "p.raw", "-d", "monosparse", "s.vmdk"]);
    vmkfs_ok(d, &["-w", "s.vmdk"]);
    assert_eq!(info_json(d, "s.vmdk")["allocated"], 0);
    qemu_ok(&["check", "s.vmdk"], d);
    std::fs::write(d.join("z.raw"), vec![0u8; 4 << 20]).unwrap();
    vmkfs_ok(d, &["--compare", "s.vmdk", "z.raw"]);
    // -k eager-zeroes a zeroedthick disk.
    vmkfs_ok(d, &["-c", "2m", "-d", "zeroedthick", "z.vmdk"]);
    assert_eq!(info_json(d, "z.vmdk")["allocated"], 0);
    vmkfs_ok(d, &["-k", "z.vmdk"]);
    assert_eq!(info_json(d, "z.vmdk")["allocated"], 2 << 20);
}

#[test]
fn check_and_repair_sparse_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    raw(d, 4 << 20);
    vmkfs_ok(d, &["-i", "p.raw", "-d", "monosparse", "s.vmdk"]);
    assert!(vmkfs_ok(d, &["-x", "check", "s.vmdk"]).contains("error free"));
    // Break the first entry of the primary grain table; the redundant copy still has it.
    let mut f = std::fs::read(d.join("s.vmdk")).unwrap();
    let gd = u64::from_le_bytes(f[56..64].try_into().unwrap()) as usize;
    let gt = u32::from_le_bytes(f[gd * 512..gd * 512 + 4].try_into().unwrap()) as usize;
    let good = u32::from_le_bytes(f[gt * 512..gt * 512 + 4].try_into().unwrap());
    f[gt * 512..gt * 512 + 4].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
    f[72] = 1; // unclean-shutdown flag
    std::fs::write(d.join("s.vmdk"), &f).unwrap();
    let o = vmkfs(d, &["-x", "check", "s.vmdk"]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("s.vmdk: offset 72: unclean-shutdown flag is set"), "{out}");
    assert!(
        out.contains(&format!(
            "s.vmdk: offset {}: grain table entry for grain 0 points to sector 2147418112, past the end of the file",
            gt * 512
        )),
        "{out}"
    );
    assert!(out.contains("Disk has 2 problem(s)"), "{out}");
    let o = vmkfs(d, &["-x", "repair", "s.vmdk"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    // Every change printed, with the backup made before it.
    assert!(out.contains(&format!("(repaired: restored from the redundant grain table ({good}))")), "{out}");
    assert!(
        out.contains(&format!("Changed s.vmdk at byte {}: 0000ff7f -> {}", gt * 512, hex(&good.to_le_bytes()))),
        "{out}"
    );
    assert!(out.contains("Changed s.vmdk at byte 72: 01 -> 00 (unclean-shutdown flag)"), "{out}");
    assert!(
        out.contains("s.vmdk.repair-1.bak before changing it") && out.contains("Disk was successfully repaired"),
        "{out}"
    );
    assert!(d.join("s.vmdk.repair-1.bak").exists());
    assert!(vmkfs_ok(d, &["-x", "check", "s.vmdk"]).contains("error free"));
    vmkfs_ok(d, &["--compare", "s.vmdk", "p.raw"]);
    qemu_ok(&["check", "s.vmdk"], d);
    // Repairing a clean disk: nothing to do, no second backup.
    assert!(vmkfs_ok(d, &["-x", "repair", "s.vmdk"]).contains("error free"));
    assert!(!d.join("s.vmdk.repair-2.bak").exists());

    // Both copies broken: refused, nothing changed (exit 1, saying why).
    let mut f = std::fs::read(d.join("s.vmdk")).unwrap();
    let rgd = u64::from_le_bytes(f[48..56].try_into().unwrap()) as usize;
    let rgt = u32::from_le_bytes(f[rgd * 512..rgd * 512 + 4].try_into().unwrap()) as usize;
    f[gt * 512..gt * 512 + 4].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
    f[rgt * 512..rgt * 512 + 4].copy_from_slice(&0x7fff_0001u32.to_le_bytes());
    std::fs::write(d.join("s.vmdk"), &f).unwrap();
    let o = vmkfs(d, &["-x", "repair", "--json", "s.vmdk"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["refused"], true, "{v}");
    assert_eq!(v["changes"].as_array().map(|c| c.len()), Some(0), "{v}");
    assert!(v["findings"].as_array().unwrap().iter().all(|f| f["undecided"] == "neither copy is usable"), "{v}");
    assert_eq!(std::fs::read(d.join("s.vmdk")).unwrap(), f, "nothing changed");
    let o = vmkfs(d, &["-x", "repair", "s.vmdk"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("Nothing was changed"), "{o:?}");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `-x check` of a child checks its chain: every link's own metadata, and the relations (parent
/// present, CID and capacity the child recorded).
#[test]
fn check_follows_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    raw(d, 4 << 20);
    vmkfs_ok(d, &["-i", "p.raw", "-d", "monosparse", "base.vmdk"]);
    let child = vmkfs_ok(d, &["--snapshot", "base.vmdk"]);
    let child = Path::new(child.trim()).file_name().unwrap().to_string_lossy().into_owned();
    assert!(vmkfs_ok(d, &["-x", "check", &child]).contains("error free"));
    // Damage in the parent is found from the child.
    let good = std::fs::read(d.join("base.vmdk")).unwrap();
    let mut f = good.clone();
    f[72] = 1;
    std::fs::write(d.join("base.vmdk"), &f).unwrap();
    let o = vmkfs(d, &["-x", "check", &child]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("base.vmdk: offset 72: unclean-shutdown flag is set"), "{out}");
    std::fs::write(d.join("base.vmdk"), &good).unwrap();
    // A parent whose CID changed behind the child's back: the child's chain is broken.
    let cid = info_json(d, "base.vmdk")["cid"].as_str().unwrap().to_string();
    let other = if cid == "00000001" { "00000002" } else { "00000001" };
    let text = String::from_utf8_lossy(&good[512..1024]).into_owned();
    assert!(text.contains(&format!("CID={cid}")), "{text}");
    let mut f = good.clone();
    f[512..1024].copy_from_slice(text.replace(&format!("CID={cid}"), &format!("CID={other}")).as_bytes());
    std::fs::write(d.join("base.vmdk"), &f).unwrap();
    let o = vmkfs(d, &["-x", "check", &child]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("{child}: offset 0: chain: CID mismatch")), "{out}");
    // A missing parent.
    std::fs::rename(d.join("base.vmdk"), d.join("moved.vmdk")).unwrap();
    let out = String::from_utf8_lossy(&vmkfs(d, &["-x", "check", &child]).stdout).into_owned();
    assert!(out.contains("chain: missing parent"), "{out}");
}

#[test]
fn compare_read_and_write_at() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    raw(d, 4 << 20);
    vmkfs_ok(d, &["-i", "p.raw", "-d", "2gbsparse", "s.vmdk"]);
    ok(&vmkfs_stdin(d, &["--write-at", "3m", "s.vmdk"], b"hello, disk"));
    let out = vmkfs(d, &["--read-at", "3m", "--length", "11", "s.vmdk"]).stdout;
    assert_eq!(out, b"hello, disk");
    let o = vmkfs(d, &["--compare", "s.vmdk", "p.raw"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("offset {}", 3 << 20)));
    qemu_ok(&["check", "s.vmdk"], d);
}
