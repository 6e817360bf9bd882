//! The life of a disk: create under temporary names (nothing left behind without commit), refuse to
//! overwrite, lock writers, mark and clear the unclean-shutdown flag, change the CID on first write,
//! refuse writes to read-only links and accesses past the end.

mod common;

use std::path::Path;

use common::*;
use vmdk::create::{create, CreateOptions, DiskFormat};
use vmdk::{Error, Link, OpenOptions};

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn opts(format: DiskFormat, cap: u64) -> CreateOptions {
    let mut o = CreateOptions::new(format, cap);
    o.split_sectors = 2048;
    o
}

#[test]
fn dropping_without_commit_leaves_nothing() {
    for format in DiskFormat::ALL {
        let dir = tempfile::tempdir().unwrap();
        let nd = create(dir.path().join("d.vmdk"), &opts(format, 3 * MIB)).unwrap();
        nd.link().write_at(&[1u8; 5000], 70_000).unwrap();
        assert!(!names(dir.path()).is_empty());
        drop(nd);
        assert_eq!(names(dir.path()), Vec::<String>::new(), "{}", format.name());
    }
}

#[test]
fn commit_produces_exactly_the_planned_files() {
    for format in DiskFormat::ALL {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.vmdk");
        let nd = create(&img, &opts(format, 3 * MIB)).unwrap();
        let mut planned: Vec<String> =
            nd.final_paths().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        planned.sort();
        let from_plan = vmdk::create::planned_files(&img, format, 3 * MIB, 2048);
        assert_eq!(from_plan.len(), planned.len(), "{}", format.name());
        nd.commit().unwrap();
        assert_eq!(names(dir.path()), planned, "{}", format.name());
    }
}

#[test]
fn existing_destination_is_refused_unless_forced() {
    for format in DiskFormat::ALL {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.vmdk");
        let nd = create(&img, &opts(format, MIB)).unwrap();
        nd.link().write_at(&[9u8; 512], 0).unwrap();
        nd.commit().unwrap();
        let before = names(dir.path());
        let e = create(&img, &opts(format, 2 * MIB)).unwrap_err();
        assert!(matches!(e, Error::Exists { .. }), "{}: {e:?}", format.name());
        assert_eq!(names(dir.path()), before, "{}: a refused create must leave nothing", format.name());
        let mut o = opts(format, 2 * MIB);
        o.force = true;
        create(&img, &o).unwrap().commit().unwrap();
        let link = Link::open(&img, &OpenOptions::read()).unwrap();
        assert_eq!(link.capacity(), 2 * MIB);
        let mut b = [1u8; 512];
        link.read_at(&mut b, 0).unwrap();
        assert_eq!(b, [0u8; 512], "{}: forced create must start empty", format.name());
    }
}

#[test]
fn bad_create_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.vmdk");
    for (cap, grain, split) in [(1000, 128, 2048), (0, 128, 2048), (MIB, 3, 2048), (MIB, 128, 100)] {
        let mut o = opts(DiskFormat::TwoGbSparse, cap);
        o.grain_sectors = grain;
        o.split_sectors = split;
        assert!(matches!(create(&img, &o), Err(Error::InvalidArgument(_))), "{cap} {grain} {split}");
    }
    assert_eq!(names(dir.path()), Vec::<String>::new());
}

#[test]
fn a_writer_locks_out_writers_and_readers() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.vmdk");
    create(&img, &opts(DiskFormat::TwoGbSparse, 3 * MIB)).unwrap().commit().unwrap();
    let w = Link::open(&img, &OpenOptions::write()).unwrap();
    let e = Link::open(&img, &OpenOptions::write()).unwrap_err();
    assert!(matches!(e, Error::Locked { .. }), "{e:?}");
    let e = open_err(&img);
    assert!(matches!(e, Error::Locked { .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("locked by this process {}", std::process::id())), "{e}");
    w.write_at(b"data", 4 * MIB / 2).unwrap();
    // A look outside the lock protocol still sees the data.
    let r = Link::open(&img, &OpenOptions { lock: false, ..OpenOptions::read() }).unwrap();
    let mut b = [0u8; 4];
    r.read_at(&mut b, 4 * MIB / 2).unwrap();
    assert_eq!(&b, b"data");
    w.close().unwrap();
    drop(r);
    // Readers share: two of them at once, and a writer waits for both.
    let (r1, r2) = (Link::open(&img, &OpenOptions::read()).unwrap(), Link::open(&img, &OpenOptions::read()).unwrap());
    assert!(matches!(Link::open(&img, &OpenOptions::write()), Err(Error::Locked { .. })));
    drop((r1, r2));
    Link::open(&img, &OpenOptions::write()).unwrap().close().unwrap();
}

#[test]
fn read_only_and_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.vmdk");
    create(&img, &opts(DiskFormat::MonoSparse, MIB)).unwrap().commit().unwrap();
    let r = Link::open(&img, &OpenOptions { lock: false, ..OpenOptions::read() }).unwrap();
    assert!(matches!(r.write_at(b"x", 0), Err(Error::ReadOnly { .. })));
    let w = Link::open(&img, &OpenOptions::write()).unwrap();
    for (off, len) in [(MIB, 1), (MIB - 1, 2), (u64::MAX, 1), (u64::MAX - 10, 20)] {
        let mut b = vec![0u8; len];
        assert!(matches!(r.read_at(&mut b, off), Err(Error::OutOfRange { .. })), "{off}+{len}");
        assert!(matches!(w.write_at(&b, off), Err(Error::OutOfRange { .. })), "{off}+{len}");
        assert!(matches!(r.map(off, len as u64), Err(Error::OutOfRange { .. })), "{off}+{len}");
    }
    r.read_at(&mut [], MIB).unwrap();
    w.write_at(&[], MIB).unwrap();
    w.write_at(b"end", MIB - 3).unwrap();
    w.close().unwrap();
    let size = std::fs::metadata(&img).unwrap().len();
    drop(r);
    let r = Link::open(&img, &OpenOptions::read()).unwrap();
    let mut b = [0u8; 3];
    r.read_at(&mut b, MIB - 3).unwrap();
    assert_eq!(&b, b"end");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), size);
}

#[test]
fn unclean_flag_and_cid() {
    for format in [DiskFormat::MonoSparse, DiskFormat::TwoGbSparse, DiskFormat::Thin] {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.vmdk");
        create(&img, &opts(format, 3 * MIB)).unwrap().commit().unwrap();
        let cid0 = Link::open(&img, &OpenOptions::read()).unwrap().descriptor().cid;

        // Opening for writing alone changes nothing.
        Link::open(&img, &OpenOptions::write()).unwrap().close().unwrap();
        let l = Link::open(&img, &OpenOptions::read()).unwrap();
        assert_eq!(l.descriptor().cid, cid0, "{}: CID changed without a write", format.name());
        drop(l);

        // A write gives a new CID (with longContentID in step) and, until close, the unclean flag.
        let w = Link::open(&img, &OpenOptions::write()).unwrap();
        w.write_at(&[5u8; 100], 2 * MIB + 10).unwrap();
        let during = Link::open(&img, &OpenOptions { lock: false, ..OpenOptions::read() }).unwrap();
        let d = during.descriptor();
        assert_ne!(d.cid, cid0, "{}", format.name());
        assert!(d.ddb("longContentID").unwrap().ends_with(&format!("{:08x}", d.cid)), "{}", format.name());
        if format.is_sparse() {
            assert!(during.was_unclean(), "{}: unclean flag not set while writing", format.name());
        }
        w.close().unwrap();
        let after = Link::open(&img, &OpenOptions::read()).unwrap();
        assert!(!after.was_unclean(), "{}", format.name());
        assert_eq!(after.descriptor().cid, d.cid);
        drop(after);

        // A writer that never closes (a crash) leaves the flag set.
        if format.is_sparse() {
            let w = Link::open(&img, &OpenOptions::write()).unwrap();
            w.write_at(&[6u8; 100], 10).unwrap();
            std::mem::forget(w);
            // (The forgotten writer still holds its lock in this process: look outside the protocol.)
            let l = Link::open(&img, &OpenOptions { lock: false, ..OpenOptions::read() }).unwrap();
            assert!(l.was_unclean(), "{}", format.name());
            let mut b = [0u8; 100];
            l.read_at(&mut b, 10).unwrap();
            assert_eq!(b, [6u8; 100]);
        }
    }
}

#[test]
fn refused_writes_change_nothing() {
    // A write refused because its range is read-only (stream extent, ZERO or RDONLY extent) must not
    // touch any file: no new CID, no unclean flag.
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("s.vmdk");
    let mut g = vec![0u8; (64 * KIB) as usize];
    Rng::new(1).fill_nonzero(&mut g);
    make_stream(&s, 4 * 128, &[(1, g)], false);
    let flat = dir.path().join("f.img");
    std::fs::write(&flat, vec![4u8; 8 * 512]).unwrap();
    let d = dir.path().join("d.vmdk");
    std::fs::write(&d, "version=1\nCID=11111111\nparentCID=ffffffff\ncreateType=\"custom\"\nRW 4 FLAT \"f.img\" 0\nRW 4 ZERO\nRDONLY 4 FLAT \"f.img\" 4\n").unwrap();
    for (img, off) in [(&s, 0u64), (&s, 100_000), (&d, 4 * 512), (&d, 8 * 512 + 3), (&d, 4 * 512 - 1)] {
        let before: Vec<Vec<u8>> = [&s, &d, &flat].iter().map(|p| std::fs::read(p).unwrap()).collect();
        let link = Link::open(img, &OpenOptions::write()).unwrap();
        let e = link.write_at(b"xy", off).unwrap_err();
        assert!(matches!(e, Error::ReadOnly { .. }), "{}@{off}: {e:?}", img.display());
        link.close().unwrap();
        let after: Vec<Vec<u8>> = [&s, &d, &flat].iter().map(|p| std::fs::read(p).unwrap()).collect();
        assert!(before == after, "{}@{off}: a refused write changed the files", img.display());
    }
}
