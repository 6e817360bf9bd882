//! `vmdk::check`: every finding names the file, the byte offset and the problem; repair decides per
//! entry which copy is consistent, saves what it changes to a backup first, refuses (changing
//! nothing) when it cannot decide; the self-heal of a sparse extent opened for writing with its
//! unclean-shutdown flag set makes the redundant tables agree with the primary ones. (COWD and
//! seSparse findings are in `delta_formats.rs`, beside their writers.)

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;
use vmdk::check::backup::{backup_path, Backup};
use vmdk::check::{check_disk, repair_disk, Finding, Report};
use vmdk::create::{create, CreateOptions, DiskFormat};
use vmdk::{HostStorage, Link, OpenOptions};

fn check(path: &Path) -> Report {
    check_disk(path, &OpenOptions::read()).unwrap()
}

fn repair(path: &Path) -> Report {
    repair_disk(
        path,
        &OpenOptions::read(),
        vec!["vmkfs".into(), "-x".into(), "repair".into(), path.display().to_string()],
    )
    .unwrap()
}

/// The one finding of `r`, which must be about `file` at `offset` and say `words`.
#[track_caller]
fn only(r: &Report, file: &Path, offset: u64, words: &str) -> Finding {
    assert_eq!(r.findings.len(), 1, "expected one finding, got {:#?}", r.findings);
    has(r, file, offset, words)
}

/// The finding of `r` about `file` at `offset` saying `words`.
#[track_caller]
fn has(r: &Report, file: &Path, offset: u64, words: &str) -> Finding {
    r.findings
        .iter()
        .find(|f| f.file == file && f.offset == offset && f.what.contains(words))
        .unwrap_or_else(|| panic!("no finding at {}:{offset} saying {words:?} in {:#?}", file.display(), r.findings))
        .clone()
}

/// Byte offset of the redundant grain table entry of grain `g`.
fn rgte_offset(f: &File, g: u64) -> u64 {
    let h = kdmv(f);
    let rgt = read_u32_at(f, h.rgd * 512 + (g / h.gtes) * 4) as u64;
    rgt * 512 + (g % h.gtes) * 4
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

fn folder_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn disks_as_we_write_them_are_clean() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mono, _) = our_monosparse(d);
    assert!(check(&mono).is_clean(), "{:#?}", check(&mono));
    for (name, format) in [("split.vmdk", DiskFormat::TwoGbSparse), ("thin.vmdk", DiskFormat::Thin)] {
        let p = d.join(name);
        let nd = create(&p, &CreateOptions::new(format, 4 * MIB)).unwrap();
        nd.link().write_at(&pattern(MIB, 7), MIB).unwrap();
        nd.commit().unwrap();
        let r = check(&p);
        assert!(r.is_clean(), "{name}: {:#?}", r.findings);
        assert!(r.files.len() >= 2, "{name}: the extent files are examined too: {:?}", r.files);
    }
    let grains: Vec<(u64, Vec<u8>)> = (0..6).map(|g| (g * 3, pattern(64 * KIB, 10 + g))).collect();
    for footer in [true, false] {
        let p = d.join(format!("stream-{footer}.vmdk"));
        make_stream(&p, 40 * 128, &grains, footer);
        let r = check(&p);
        assert!(r.is_clean(), "stream (footer {footer}): {:#?}", r.findings);
    }
}

#[test]
fn sparse_entries_outside_the_file_or_used_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = our_monosparse(dir.path());
    let good = bytes(&img);
    let f = patch_file(&img);
    let len = f.metadata().unwrap().len();

    // A primary entry past the end of the file: the reader's own words.
    let at = gte_offset(&f, 1);
    let bad = (len / 512 + 100) as u32;
    write_u32_at(&f, at, bad);
    only(
        &check(&img),
        &img,
        at,
        &format!("grain table entry for grain 1 points to sector {bad}, past the end of the file ({len} bytes)"),
    );
    std::fs::write(&img, &good).unwrap();

    // A primary entry inside the metadata.
    write_u32_at(&f, at, 3);
    only(&check(&img), &img, at, "grain table entry for grain 1 points to sector 3, inside the metadata");
    std::fs::write(&img, &good).unwrap();

    // The redundant copy disagrees (both copies valid).
    let rat = rgte_offset(&f, 1);
    let p = read_u32_at(&f, at);
    write_u32_at(&f, rat, 0);
    only(
        &check(&img),
        &img,
        at,
        &format!("grain table entry for grain 1 (entry 1 of table 0) differs from its redundant copy at byte {rat}: {p} vs 0"),
    );
    std::fs::write(&img, &good).unwrap();

    // Grain 5 points (in both copies) at grain 0's data: a pointer used twice.
    let p0 = read_u32_at(&f, gte_offset(&f, 0));
    write_u32_at(&f, gte_offset(&f, 5), p0);
    write_u32_at(&f, rgte_offset(&f, 5), p0);
    let r = check(&img);
    let f5 = has(&r, &img, gte_offset(&f, 5), &format!("points to sector {p0}, whose grain overlaps"));
    assert!(f5.what.contains("used only once"), "{f5:?}");
    has(&r, &img, gte_offset(&f, 0), "used only once");
    std::fs::write(&img, &good).unwrap();

    // A redundant directory entry outside the file: the reader refuses the disk at that entry.
    let h = kdmv(&f);
    write_u32_at(&f, h.rgd * 512, 0x7fff_ffff);
    let e = open_err(&img);
    assert_corrupt(&e, &img, Some(h.rgd * 512));
    only(
        &check(&img),
        &img,
        h.rgd * 512,
        "redundant grain directory entry 0 points to a grain table at sector 2147483647, outside the file",
    );
    std::fs::write(&img, &good).unwrap();

    // A directory entry naming the other directory's table.
    let rgt = read_u32_at(&f, h.rgd * 512);
    write_u32_at(&f, h.gd * 512, rgt);
    let r = check(&img);
    has(&r, &img, h.rgd * 512, &format!("redundant grain directory entry 0 names a grain table at sector {rgt} (4 sectors), which overlaps the grain table of grain directory entry 0"));
    std::fs::write(&img, &good).unwrap();

    // The unclean-shutdown flag.
    f.write_all_at(&[1], 72).unwrap();
    only(&check(&img), &img, 72, "unclean-shutdown flag is set");
}

#[test]
fn descriptor_against_its_extents() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // An embedded descriptor whose createType says stream, over a plain sparse header.
    let (img, _) = our_monosparse(d);
    let f = patch_file(&img);
    let mut area = vec![0u8; 20 * 512];
    f.read_exact_at(&mut area, 512).unwrap();
    let text = String::from_utf8_lossy(&area).replace("monolithicSparse", "streamOptimized");
    f.write_all_at(text.as_bytes(), 512).unwrap();
    only(&check(&img), &img, 8, "createType \"streamOptimized\" requires both");

    // A split disk whose descriptor maps more than the extent holds, and one whose extent is gone.
    let p = d.join("split.vmdk");
    create(&p, &CreateOptions::new(DiskFormat::TwoGbSparse, 4 * MIB)).unwrap().commit().unwrap();
    let desc = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, desc.replace("RW 8192 SPARSE", "RW 8320 SPARSE")).unwrap();
    let ext = d.join("split-s001.vmdk");
    let r = check(&p);
    has(&r, &ext, 12, "sparse capacity is 4194304 bytes but the descriptor maps 4259840");
    std::fs::write(&p, &desc).unwrap();
    assert!(check(&p).is_clean());
    std::fs::rename(&ext, d.join("elsewhere.vmdk")).unwrap();
    let r = check(&p);
    has(&r, &p, 0, "extent file \"split-s001.vmdk\"");
    assert!(!r.is_clean());

    // A truncated flat extent: the reader's words, at the offset where the file ends.
    let thin = d.join("thin.vmdk");
    create(&thin, &CreateOptions::new(DiskFormat::Thin, 4 * MIB)).unwrap().commit().unwrap();
    let flat = d.join("thin-flat.vmdk");
    File::options().write(true).open(&flat).unwrap().set_len(3 * MIB).unwrap();
    has(&check(&thin), &flat, 3 * MIB, "VMFS extent is truncated");

    // An ESX 2 REDO log that is no COWD file.
    let redo = d.join("thin.vmdk.REDO");
    std::fs::write(&redo, vec![0u8; 8192]).unwrap();
    has(&check(&redo), &redo, 0, "named as an ESX 2 REDO log");
}

#[test]
fn streams_every_grain_inflated_and_the_directory_against_the_walk() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let grains: Vec<(u64, Vec<u8>)> = (0..4).map(|g| (g, pattern(64 * KIB, 20 + g))).collect();
    // The open-vmdk layout: directory at sector 21, its one table at 22.
    let p = d.join("s.vmdk");
    let markers = make_stream(&p, 8 * 128, &grains, false);
    let good = bytes(&p);
    let f = patch_file(&p);
    // Damaged zlib bytes in grain 2: it does not inflate (the walk finds it at its data).
    f.write_all_at(&[0xff; 32], markers[2] + 12 + 40).unwrap();
    let r = check(&p);
    has(&r, &p, markers[2] + 12, "grain 2");
    assert!(r.findings.iter().all(|x| x.what.contains("inflate") || x.what.contains("grain 2")), "{:#?}", r.findings);
    std::fs::write(&p, &good).unwrap();

    // The directory sends grain 3 to grain 1's record: the random-access reader refuses it (LBA),
    // and grain 3's own record is one no directory entry names.
    let entry3 = 22 * 512 + 3 * 4;
    write_u32_at(&f, entry3, (markers[1] / 512) as u32);
    let r = check(&p);
    has(&r, &p, markers[1], "grain marker says LBA 128, expected 384 for grain 3");
    has(&r, &p, markers[3], "is not the one the grain directory names for that LBA");
    std::fs::write(&p, &good).unwrap();

    // VMware's layout without its end-of-stream marker: the walk (what a pipe read sees) ends early.
    let v = d.join("v.vmdk");
    make_stream(&v, 8 * 128, &grains, true);
    let mut b = bytes(&v);
    let n = b.len();
    b.truncate(n - 512);
    std::fs::write(&v, &b).unwrap();
    let r = check(&v);
    assert!(!r.is_clean() && r.findings.iter().any(|x| x.file == v), "{:#?}", r.findings);
}

#[test]
fn a_disk_that_does_not_open_is_never_clean() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = d.join("bad.vmdk");
    std::fs::write(&p, "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"vmfs\"\nRW 100 VMFS \"../outside.vmdk\"\n").unwrap();
    let e = open_err(&p);
    let r = check(&p);
    let f = has(&r, &p, 0, "outside the disk's folder");
    assert!(e.to_string().contains(&f.what) || f.what.contains("cannot be opened"), "{e} / {f:?}");
}

/// The file's bytes, its backup, and the disk's content (for the repair tests).
struct Damaged {
    _dir: tempfile::TempDir,
    img: PathBuf,
    good: Vec<u8>,
    data: Vec<u8>,
}

fn damaged(damage: impl FnOnce(&File)) -> Damaged {
    let dir = tempfile::tempdir().unwrap();
    let (img, data) = our_monosparse(dir.path());
    let good = bytes(&img);
    let f = patch_file(&img);
    damage(&f);
    f.sync_all().unwrap();
    Damaged { _dir: dir, img, good, data }
}

#[test]
fn repair_restores_a_zeroed_primary_entry_from_the_redundant_copy() {
    let mut at = 0;
    let x = damaged(|f| {
        at = gte_offset(f, 1);
        write_u32_at(f, at, 0);
    });
    let before = bytes(&x.img);
    let f = patch_file(&x.img);
    let want = read_u32_at(&f, rgte_offset(&f, 1));
    // Checked: the entry differs from its redundant copy.
    has(&check(&x.img), &x.img, at, "differs from its redundant copy");
    let r = repair(&x.img);
    let fix = only(&r, &x.img, at, "differs from its redundant copy");
    assert_eq!(fix.repaired.as_deref(), Some(format!("restored from the redundant grain table ({want})").as_str()));
    assert_eq!(r.changes.len(), 1, "{:#?}", r.changes);
    assert_eq!(
        (r.changes[0].offset, &r.changes[0].before[..], &r.changes[0].after[..]),
        (at, &[0u8; 4][..], &want.to_le_bytes()[..])
    );
    assert_eq!(bytes(&x.img), x.good, "the file is as before the damage");
    assert!(check(&x.img).is_clean());
    let link = Link::open(&x.img, &OpenOptions::read()).unwrap();
    assert_same(&read_all(&link), &x.data, "repaired disk");
    drop(link);
    // The backup holds the primary table as it was; writing it back restores the damaged file byte
    // for byte.
    let b = r.backup.clone().expect("a backup");
    assert_eq!(b, backup_path(&std::fs::canonicalize(&x.img).unwrap(), 1));
    let saved = Backup::read(&HostStorage, &b).unwrap();
    let h = kdmv(&f);
    let gt = read_u32_at(&f, h.gd * 512) as u64;
    assert_eq!(saved.blocks.len(), 1);
    assert_eq!((saved.blocks[0].offset, saved.blocks[0].data.len()), (gt * 512, 2048));
    saved.restore(&HostStorage).unwrap();
    assert_eq!(bytes(&x.img), before, "the backup restores the old metadata byte for byte");
    // Repairing a clean disk changes nothing and writes no backup.
    std::fs::write(&x.img, &x.good).unwrap();
    let names = folder_names(x.img.parent().unwrap());
    let r = repair(&x.img);
    assert!(r.is_clean() && r.changes.is_empty() && r.backup.is_none(), "{r:#?}");
    assert_eq!(folder_names(x.img.parent().unwrap()), names);
}

#[test]
fn repair_fixes_a_bad_redundant_entry_from_the_primary() {
    let mut at = 0;
    let x = damaged(|f| {
        at = rgte_offset(f, 5);
        write_u32_at(f, at, 0x7fff_0000);
    });
    let r = check(&x.img);
    only(
        &r,
        &x.img,
        at,
        "redundant grain table entry for grain 5 points to sector 2147418112, past the end of the file",
    );
    let r = repair(&x.img);
    let fix = only(&r, &x.img, at, "redundant grain table entry");
    assert!(
        fix.repaired.as_deref().is_some_and(|n| n.starts_with("set the redundant copy to the primary entry")),
        "{fix:?}"
    );
    assert_eq!(bytes(&x.img), x.good);
    assert!(check(&x.img).is_clean());
}

#[test]
fn repair_refuses_what_it_cannot_decide_and_changes_nothing() {
    // Both copies past the end of the file (and the unclean flag, which alone could be cleared).
    let x = damaged(|f| {
        write_u32_at(f, gte_offset(f, 1), 0x7fff_0000);
        write_u32_at(f, rgte_offset(f, 1), 0x7fff_0001);
        f.write_all_at(&[1], 72).unwrap();
    });
    let before = bytes(&x.img);
    let names = folder_names(x.img.parent().unwrap());
    let r = repair(&x.img);
    assert!(r.refused() && r.changes.is_empty() && r.backup.is_none(), "{r:#?}");
    let f = patch_file(&x.img);
    let undecided = has(&r, &x.img, gte_offset(&f, 1), "past the end of the file");
    assert_eq!(undecided.undecided.as_deref(), Some("neither copy is usable"));
    assert!(r.findings.iter().all(|f| f.repaired.is_none()), "{r:#?}");
    assert_eq!(bytes(&x.img), before, "nothing changed");
    assert_eq!(folder_names(x.img.parent().unwrap()), names, "no backup written");

    // Two valid, different pointers: the redundant copy names a grain of its own past the others.
    let y = damaged(|f| {
        let len = f.metadata().unwrap().len();
        f.set_len(len + 64 * KIB).unwrap();
        write_u32_at(f, rgte_offset(f, 1), (len / 512) as u32);
    });
    let before = bytes(&y.img);
    let r = repair(&y.img);
    let f = patch_file(&y.img);
    let u = only(&r, &y.img, gte_offset(&f, 1), "differs from its redundant copy");
    assert!(u.undecided.as_deref().is_some_and(|w| w.starts_with("both copies point to valid grains")), "{u:?}");
    assert_eq!(bytes(&y.img), before);
}

#[test]
fn repair_restores_a_directory_entry_where_the_layout_puts_its_table() {
    let mut at = 0;
    let x = damaged(|f| {
        at = kdmv(f).gd * 512;
        write_u32_at(f, at, 0);
    });
    let r = check(&x.img);
    only(
        &r,
        &x.img,
        kdmv(&patch_file(&x.img)).rgd * 512,
        "grain directory entry 0 is set in only one of the two directories",
    );
    let r = repair(&x.img);
    assert_eq!(r.changes.len(), 1, "{r:#?}");
    assert_eq!(r.changes[0].offset, at);
    assert_eq!(bytes(&x.img), x.good);
    let _ = at;
}

#[test]
fn opening_for_writing_with_the_unclean_flag_set_heals_a_lagging_redundant_table() {
    let dir = tempfile::tempdir().unwrap();
    let (img, data) = our_monosparse(dir.path());
    let good = bytes(&img);
    let f = patch_file(&img);
    // A writer died between the primary entry of grain 5 and its redundant copy.
    let (at, rat) = (gte_offset(&f, 5), rgte_offset(&f, 5));
    let p = read_u32_at(&f, at);
    write_u32_at(&f, rat, 0);
    let r = check(&img);
    assert_eq!(r.findings.len(), 1);
    has(&r, &img, at, "differs from its redundant copy");
    // Without the flag, opening for writing leaves it alone (that is repair's to decide).
    drop(Link::open(&img, &OpenOptions::write()).unwrap());
    assert_eq!(read_u32_at(&f, rat), 0);
    f.write_all_at(&[1], 72).unwrap();
    let damaged = bytes(&img);
    // Reading never heals.
    drop(Link::open(&img, &OpenOptions::read()).unwrap());
    assert_eq!(bytes(&img), damaged);
    // Opening for writing does, before the first write.
    let link = Link::open(&img, &OpenOptions::write()).unwrap();
    assert_eq!(read_u32_at(&f, rat), p, "the redundant entry follows the primary one");
    // The interrupted write, done again, leaves a clean disk.
    link.write_at(&data[..(64 * KIB) as usize], 0).unwrap();
    link.close().unwrap();
    assert!(check(&img).is_clean(), "{:#?}", check(&img));
    let mut now = bytes(&img);
    let mut was = good.clone();
    // The CID changed with the write (embedded descriptor); everything else is as before.
    now[512..512 * 21].fill(0);
    was[512..512 * 21].fill(0);
    assert!(now == was, "the metadata is as before the damage");
}

#[test]
fn an_interrupted_repair_refuses_the_disk_until_it_is_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = our_monosparse(dir.path());
    let storage = HostStorage::shared();
    let rerun = vec!["vmkfs".to_string(), "-x".into(), "repair".into(), img.display().to_string()];
    let real = std::fs::canonicalize(&img).unwrap();
    // A repair that died in its data phase (its record stays; its lock went with it).
    drop(vmdk::txn::Intent::begin(&storage, &real, vmdk::check::OP, &[], Some(rerun.clone())).unwrap());
    let e = open_err(&img);
    assert!(e.to_string().contains(&format!("re-run `vmkfs -x repair {}`", img.display())), "{e}");
    let r = check(&img);
    only(&r, &img, 0, &format!("an interrupted repair has not finished: re-run `vmkfs -x repair {}`", img.display()));
    // The re-run finishes it.
    let r = repair_disk(&img, &OpenOptions::read(), rerun).unwrap();
    assert!(r.is_clean(), "{r:#?}");
    Link::open(&img, &OpenOptions::read()).unwrap();
    assert!(check(&img).is_clean());
    assert_eq!(folder_names(dir.path()), ["m.vmdk"]);
}
