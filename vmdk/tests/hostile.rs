//! Hostile input: extent paths leaving the disk's folder, headers asking for gigabytes of metadata,
//! oversized descriptors. Each must fail quickly with a typed error and without a big allocation
//! (a counting allocator records the largest single allocation of each test thread).

mod common;

use std::path::Path;

use common::counting::{cheaply, Counting};
use common::*;
use vmdk::extent::kdmv::{SparseHeader, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NEWLINE_TEST, FLAG_RGD, GD_AT_END};
use vmdk::{Error, Link, OpenOptions};

#[global_allocator]
static GLOBAL: Counting = Counting;

fn descriptor(dir: &Path, name: &str, extent_file: &str) -> std::path::PathBuf {
    let d = dir.join(name);
    std::fs::write(
        &d,
        format!("version=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"{extent_file}\" 0\n"),
    )
    .unwrap();
    d
}

#[test]
fn extent_paths_outside_the_folder_are_refused() {
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("vm");
    std::fs::create_dir(&dir).unwrap();
    let outside = top.path().join("x");
    std::fs::write(&outside, vec![7u8; 4096]).unwrap();
    let abs = outside.to_str().unwrap().to_string();
    for name in ["../x", "/etc/passwd", abs.as_str(), "sub/../../x", "./../x"] {
        let d = descriptor(&dir, "d.vmdk", name);
        for opts in [OpenOptions::read(), OpenOptions::write()] {
            let e = Link::open(&d, &opts).unwrap_err();
            let Error::PathEscape { path, extent } = &e else { panic!("{name}: expected PathEscape, got {e:?}") };
            assert_eq!(path, &d);
            assert_eq!(extent, name);
            assert!(e.to_string().contains(name), "{e}");
        }
    }
    // Explicitly allowed: both spellings reach the file and read it.
    for name in ["../x", abs.as_str()] {
        let d = descriptor(&dir, "d.vmdk", name);
        let opts = OpenOptions { allow_outside: true, ..OpenOptions::read() };
        let link = Link::open(&d, &opts).unwrap();
        assert_same(&read_all(&link), &[7u8; 4096], name);
    }
    // A name inside the folder (with `./` and a subfolder) is fine without permission.
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/in.img"), vec![3u8; 4096]).unwrap();
    let d = descriptor(&dir, "d.vmdk", "./sub/in.img");
    assert_same(&read_all(&Link::open(&d, &OpenOptions::read()).unwrap()), &[3u8; 4096], "./sub/in.img");
}

#[test]
fn escaping_sparse_extent_is_refused() {
    let top = tempfile::tempdir().unwrap();
    let d = top.path().join("s.vmdk");
    std::fs::write(&d, "version=1\ncreateType=\"twoGbMaxExtentSparse\"\nRW 2048 SPARSE \"../../../etc/shadow\"\n")
        .unwrap();
    assert!(matches!(Link::open(&d, &OpenOptions::read()), Err(Error::PathEscape { .. })));
}

fn header(capacity: u64, grain: u64, gtes: u32, gd: u64, rgd: u64, overhead: u64) -> SparseHeader {
    SparseHeader {
        version: 1,
        flags: FLAG_NEWLINE_TEST | if rgd != 0 { FLAG_RGD } else { 0 },
        capacity,
        grain_size: grain,
        descriptor_offset: 0,
        descriptor_size: 0,
        num_gtes_per_gt: gtes,
        rgd_offset: rgd,
        gd_offset: gd,
        overhead,
        unclean_shutdown: false,
        compress_algorithm: 0,
    }
}

fn write_sparse(path: &Path, h: &SparseHeader, file_len: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(file_len).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &h.to_bytes(), 0).unwrap();
}

#[test]
fn huge_grain_directory_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("huge.vmdk");
    let cases = [
        // Nearly 2^55 sectors with 8-sector grains and 512-entry tables: 2^43 directory entries.
        header((1 << 55) - 8, 8, 512, 1, 0, 2),
        // A capacity whose byte count does not fit a u64.
        header(1 << 55, 8, 512, 1, 0, 2),
        header(u64::MAX, 8, 512, 1, 0, 2),
        // Tiny tables: one entry per table.
        header(1 << 40, 8, 1, 1, 0, 2),
        // A redundant directory that is huge while the primary is fine.
        header(1 << 40, 8, 512, 1, 2, 4),
        // Directory at the very end of the u64 range.
        header(1 << 30, 128, 512, u64::MAX / 512, 0, 2),
        // Overhead far past the end of the file.
        header(2048, 128, 512, 1, 0, 1 << 50),
    ];
    for (i, h) in cases.iter().enumerate() {
        write_sparse(&p, h, 64 * KIB);
        let e = cheaply(&format!("case {i}"), || Link::open(&p, &OpenOptions::read())).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "case {i}: {e:?}");
        // Writers are refused just as quickly.
        let e = cheaply(&format!("case {i} rw"), || Link::open(&p, &OpenOptions::write())).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "case {i}: {e:?}");
    }
}

#[test]
fn sparse_file_as_big_as_its_claims_needs_no_big_allocation() {
    // A header that is consistent with a (sparse, 3 GiB) file: GD of 2^20 entries. Opening reads the
    // directory (4 MiB) but must not load or allocate all grain tables.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.vmdk");
    let gdes: u64 = 1 << 20;
    let gd_sectors = gdes * 4 / 512;
    let h = header(gdes * 512 * 8, 8, 512, 1, 0, 1 + gd_sectors);
    write_sparse(&p, &h, 3 * GIB);
    let link = cheaply("open", || Link::open(&p, &OpenOptions::read())).unwrap();
    assert_eq!(link.capacity(), gdes * 512 * 8 * 512);
    let mut buf = vec![1u8; 4096];
    cheaply("read", || link.read_at(&mut buf, 12345 * 4096)).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
}

#[test]
fn huge_stream_and_embedded_descriptor_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.vmdk");
    // streamOptimized, footer says huge capacity with its GD near the end of the file.
    let mut h = header(1 << 55, 8, 512, GD_AT_END, 0, 1);
    h.flags = FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS;
    h.version = 3;
    h.compress_algorithm = 1;
    let len = 64 * KIB;
    write_sparse(&p, &h, len);
    let mut footer = h.clone();
    footer.gd_offset = 2;
    let f = patch_file(&p);
    let mut marker = [0u8; 512];
    marker[..8].copy_from_slice(&1u64.to_le_bytes());
    marker[12..16].copy_from_slice(&3u32.to_le_bytes());
    std::os::unix::fs::FileExt::write_all_at(&f, &marker, len - 1536).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &footer.to_bytes(), len - 1024).unwrap();
    drop(f);
    let e = cheaply("stream", || Link::open(&p, &OpenOptions::read())).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");

    // An embedded descriptor claiming gigabytes.
    let mut h = header(2048, 128, 512, 1, 0, 128);
    h.descriptor_offset = 1;
    h.descriptor_size = 1 << 40;
    write_sparse(&p, &h, 64 * KIB);
    let e = cheaply("embedded descriptor", || Link::open(&p, &OpenOptions::read())).unwrap_err();
    assert!(matches!(e, Error::Corrupt { offset: 28, .. }), "{e:?}");
}

#[test]
fn huge_cowd_directory_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c-delta.vmdk");
    let mut b = vec![0u8; 4096];
    b[..4].copy_from_slice(b"COWD");
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    b[8..12].copy_from_slice(&3u32.to_le_bytes());
    b[12..16].copy_from_slice(&u32::MAX.to_le_bytes()); // numSectors
    b[16..20].copy_from_slice(&1u32.to_le_bytes()); // grain
    b[20..24].copy_from_slice(&4u32.to_le_bytes()); // gdOffset
    b[24..28].copy_from_slice(&(u32::MAX.div_ceil(4096)).to_le_bytes()); // numGDEntries
    std::fs::write(&p, &b).unwrap();
    let e = cheaply("cowd", || Link::open(&p, &OpenOptions::read())).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
}

#[test]
fn oversized_descriptor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("big.vmdk");
    let mut text = String::from("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 8 ZERO\n");
    while text.len() <= 1 << 20 {
        text.push_str("# padding padding padding padding padding padding padding padding padding padding\n");
    }
    std::fs::write(&d, &text).unwrap();
    let e = cheaply("descriptor", || Link::open(&d, &OpenOptions::read())).unwrap_err();
    assert!(matches!(e, Error::Descriptor { .. }), "{e:?}");
    assert!(e.to_string().contains("big.vmdk"), "{e}");
    // Just under the limit is accepted.
    text.truncate((1 << 20) - 200);
    let cut = text.rfind('\n').unwrap() + 1;
    text.truncate(cut);
    std::fs::write(&d, &text).unwrap();
    let link = Link::open(&d, &OpenOptions::read()).unwrap();
    assert_eq!(link.capacity(), 8 * 512);
    // A huge file that is not a descriptor at all opens as a raw image without reading it whole.
    let raw = dir.path().join("huge.img");
    std::fs::File::create(&raw).unwrap().set_len(4 * GIB).unwrap();
    let link = cheaply("raw", || Link::open(&raw, &OpenOptions::read())).unwrap();
    assert_eq!(link.capacity(), 4 * GIB);
}

#[test]
fn descriptor_with_absurd_extents() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("e.vmdk");
    // Sizes that overflow when added, and a flat offset that overflows in bytes.
    std::fs::write(&d, "version=1\ncreateType=\"custom\"\nRW 36028797018963967 ZERO\nRW 36028797018963967 ZERO\n")
        .unwrap();
    assert!(matches!(Link::open(&d, &OpenOptions::read()), Err(Error::Descriptor { .. })));
    std::fs::write(dir.path().join("f.img"), [0u8; 512]).unwrap();
    std::fs::write(&d, "version=1\ncreateType=\"custom\"\nRW 1 FLAT \"f.img\" 36028797018963967\n").unwrap();
    let e = open_err(&d);
    assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    // Many extents, each opening the same file: bounded by MAX_EXTENTS.
    let mut text = String::from("version=1\ncreateType=\"custom\"\n");
    for _ in 0..5000 {
        text.push_str("RW 1 FLAT \"f.img\" 0\n");
    }
    std::fs::write(&d, &text).unwrap();
    let e = cheaply("many extents", || Link::open(&d, &OpenOptions::read())).unwrap_err();
    assert!(matches!(e, Error::Descriptor { .. }), "{e:?}");
    // Access past the end of an absurdly large (all-zero) disk is refused, not wrapped around.
    std::fs::write(&d, "version=1\ncreateType=\"custom\"\nRW 36028797018963968 ZERO\n").unwrap();
    assert!(matches!(Link::open(&d, &OpenOptions::read()), Err(Error::Descriptor { .. })));
    std::fs::write(&d, "version=1\ncreateType=\"custom\"\nRW 36028797018963967 ZERO\n").unwrap();
    let link = Link::open(&d, &OpenOptions::read()).unwrap();
    let e = link.read_at(&mut [0u8; 16], u64::MAX - 8).unwrap_err();
    assert!(matches!(e, Error::OutOfRange { .. }), "{e:?}");
    let m = cheaply("map of a huge zero disk", || link.map(0, link.capacity())).unwrap();
    assert_eq!(m.runs().len(), 1);
}
