//! Strict on corruption: every damaged structure is a typed `vmdk::Error` naming the file and the
//! byte offset of the bad data, never a panic, a silent zero or a wrong byte.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;
use vmdk::create::{create, CreateOptions, DiskFormat};
use vmdk::{Error, Link, OpenOptions};

fn qemu_monosparse(dir: &Path) -> Option<(PathBuf, Vec<u8>)> {
    if !have_qemu() {
        eprintln!("qemu-img not found: skipping the qemu-made variant");
        return None;
    }
    let raw = dir.join("q.raw");
    let data = pattern(2 * MIB, 3);
    write_raw_sparse(&raw, &data);
    let img = dir.join("q.vmdk");
    qemu_ok(&["convert", "-f", "raw", "-O", "vmdk", raw.to_str().unwrap(), img.to_str().unwrap()]);
    Some((img, data))
}

fn first_allocated_grain(img: &Path) -> u64 {
    let link = Link::open(img, &OpenOptions::read()).unwrap();
    let map = link.map(0, link.capacity()).unwrap();
    let r = map.runs().iter().find(|r| r.state == vmdk::State::Data).expect("some data");
    r.offset / (64 * KIB)
}

fn gte_past_eof(img: &Path) {
    let g = first_allocated_grain(img);
    let f = patch_file(img);
    let at = gte_offset(&f, g);
    let len = f.metadata().unwrap().len();
    write_u32_at(&f, at, (len / 512 + 1000) as u32);
    drop(f);
    let link = Link::open(img, &OpenOptions::read()).unwrap();
    let mut buf = vec![0u8; 4096];
    let e = link.read_at(&mut buf, g * 64 * KIB + 100).unwrap_err();
    assert_corrupt(&e, img, Some(at));
    assert!(e.to_string().contains("past the end"), "{e}");
    let e = link.map(0, link.capacity()).unwrap_err();
    assert_corrupt(&e, img, Some(at));
    // Writing there is refused too, and nothing is written past the end.
    drop(link);
    let link = Link::open(img, &OpenOptions::write()).unwrap();
    let e = link.write_at(b"x", g * 64 * KIB).unwrap_err();
    assert_corrupt(&e, img, Some(at));
    link.close().unwrap();
    assert_eq!(std::fs::metadata(img).unwrap().len(), len);
}

#[test]
fn grain_table_entry_past_eof_ours() {
    let dir = tempfile::tempdir().unwrap();
    let (img, data) = our_monosparse(dir.path());
    // Other grains still read.
    gte_past_eof(&img);
    let link = Link::open(&img, &OpenOptions::read()).unwrap();
    let mut buf = vec![0u8; 1000];
    link.read_at(&mut buf, 5 * 64 * KIB).unwrap();
    assert_same(&buf, &data[(5 * 64 * KIB) as usize..(5 * 64 * KIB + 1000) as usize], "intact grain");
}

#[test]
fn grain_table_entry_past_eof_qemu() {
    let dir = tempfile::tempdir().unwrap();
    if let Some((img, _)) = qemu_monosparse(dir.path()) {
        gte_past_eof(&img);
    }
}

#[test]
fn grain_table_entry_inside_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = our_monosparse(dir.path());
    let f = patch_file(&img);
    let at = gte_offset(&f, 5);
    write_u32_at(&f, at, 2); // the sector after the header: descriptor, not a grain
    drop(f);
    let link = Link::open(&img, &OpenOptions::read()).unwrap();
    let e = link.read_at(&mut [0u8; 10], 5 * 64 * KIB).unwrap_err();
    assert_corrupt(&e, &img, Some(at));
}

#[test]
fn truncated_sparse_file() {
    // The last grain is cut in half: reading it names the file and where it ends.
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = our_monosparse(dir.path());
    let len = std::fs::metadata(&img).unwrap().len();
    File::options().write(true).open(&img).unwrap().set_len(len - 32 * KIB).unwrap();
    let link = Link::open(&img, &OpenOptions::read()).unwrap();
    let mut buf = vec![0u8; (64 * KIB) as usize];
    let mut errors = 0;
    for g in [0, 1, 5] {
        if let Err(e) = link.read_at(&mut buf, g * 64 * KIB) {
            assert_corrupt(&e, &img, None);
            errors += 1;
        }
    }
    assert_eq!(errors, 1, "exactly the last grain is damaged");
}

#[test]
fn truncated_flat_extent() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("f.vmdk");
    let nd = create(&img, &CreateOptions::new(DiskFormat::MonoFlat, MIB)).unwrap();
    nd.link().write_at(&[7u8; 1000], 0).unwrap();
    nd.commit().unwrap();
    let flat = dir.path().join("f-flat.vmdk");
    let cut = 512 * KIB + 100;
    File::options().write(true).open(&flat).unwrap().set_len(cut).unwrap();
    for opts in [OpenOptions::read(), OpenOptions::write()] {
        let e = Link::open(&img, &opts).unwrap_err();
        assert_corrupt(&e, &flat, Some(cut));
        assert!(e.to_string().contains("truncated"), "{e}");
    }
}

#[test]
fn truncated_split_flat_extent() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("s.vmdk");
    let mut opts = CreateOptions::new(DiskFormat::TwoGbFlat, 3 * MIB);
    opts.split_sectors = 2048;
    create(&img, &opts).unwrap().commit().unwrap();
    let f2 = dir.path().join("s-f002.vmdk");
    File::options().write(true).open(&f2).unwrap().set_len(1000).unwrap();
    let e = open_err(&img);
    assert_corrupt(&e, &f2, Some(1000));
}

/// A grain directory entry, or the header's offset of a directory, pointing far past the end of
/// our monosparse disk: opening fails with the error at that entry or field.
#[test]
fn grain_directories_pointing_outside_the_file() {
    type At = fn(&Kdmv) -> u64;
    // (what is damaged, where it is, the value written there, its width in bytes, what the message says)
    let cases: [(&str, At, u64, usize, &str); 4] = [
        ("a grain directory entry", |h| h.gd * 512, 0x7fff_0000, 4, "outside the file"),
        ("a redundant grain directory entry", |h| h.rgd * 512, 0x7fff_0000, 4, ""),
        ("gdOffset", |_| 56, 1 << 40, 8, ""),
        ("rgdOffset", |_| 48, u64::MAX / 256, 8, ""),
    ];
    for (what, at, value, width, says) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (img, _) = our_monosparse(dir.path());
        let f = patch_file(&img);
        let at = at(&kdmv(&f));
        if width == 4 {
            write_u32_at(&f, at, value as u32);
        } else {
            write_u64_at(&f, at, value);
        }
        drop(f);
        let e = open_err(&img);
        assert!(matches!(e, Error::Corrupt { offset, .. } if offset == at), "{what}: {e:?}");
        assert_corrupt_says(&e, &img, at, &[says]);
    }
}

#[test]
fn grain_directory_runs_past_eof() {
    // gdOffset inside the file, but the directory does not fit before the end.
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = our_monosparse(dir.path());
    let f = patch_file(&img);
    let len = f.metadata().unwrap().len();
    write_u64_at(&f, 56, len / 512 - 1);
    // Capacity large enough that the directory needs more than one sector.
    write_u64_at(&f, 12, 200 * 65536 * 128);
    drop(f);
    let e = open_err(&img);
    let Error::Corrupt { offset, .. } = &e else { panic!("{e:?}") };
    assert!(*offset == len - 512 || *offset == 12 || *offset == 28, "{e}");
    assert_corrupt(&e, &img, None);
}

#[test]
fn wrong_magic_in_sparse_extent() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("w.vmdk");
    let mut opts = CreateOptions::new(DiskFormat::TwoGbSparse, 3 * MIB);
    opts.split_sectors = 2048;
    create(&img, &opts).unwrap().commit().unwrap();
    let s2 = dir.path().join("w-s002.vmdk");
    patch_file(&s2).write_all_at(b"KDMX", 0).unwrap();
    let e = open_err(&img);
    assert_corrupt(&e, &s2, Some(0));
    assert!(e.to_string().contains("magic"), "{e}");
}

#[test]
fn wrong_version_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = our_monosparse(dir.path());
    let f = patch_file(&img);
    write_u32_at(&f, 4, 9);
    let e = open_err(&img);
    assert_corrupt(&e, &img, Some(4));
    write_u32_at(&f, 4, 1);
    write_u32_at(&f, 8, 0x0004_0003); // an unknown incompatible flag
    let e = open_err(&img);
    assert_corrupt(&e, &img, Some(8));
    write_u32_at(&f, 8, 3);
    f.write_all_at(b"\n \n\n", 73).unwrap(); // CR/LF translation damage
    let e = open_err(&img);
    assert_corrupt(&e, &img, Some(73));
    f.write_all_at(b"\n \r\n", 73).unwrap();
    write_u64_at(&f, 20, 100); // grain size not a power of two
    let e = open_err(&img);
    assert_corrupt(&e, &img, Some(20));
}

#[test]
fn file_shorter_than_header() {
    let dir = tempfile::tempdir().unwrap();
    // A bare KDMV stub, opened directly.
    let stub = dir.path().join("stub.vmdk");
    let mut b = b"KDMV".to_vec();
    b.extend_from_slice(&[1u8; 100]);
    std::fs::write(&stub, &b).unwrap();
    let e = open_err(&stub);
    assert_corrupt(&e, &stub, Some(0));
    assert!(e.to_string().contains("shorter"), "{e}");

    // The same stub named as the SPARSE extent of a descriptor.
    let d = dir.path().join("d.vmdk");
    std::fs::write(&d, "version=1\ncreateType=\"twoGbMaxExtentSparse\"\nRW 2048 SPARSE \"stub.vmdk\"\n").unwrap();
    let e = open_err(&d);
    assert_corrupt(&e, &stub, Some(0));

    // A real monosparse file cut after the embedded descriptor, before the grain tables: shorter
    // than its metadata.
    let (img, _) = our_monosparse(dir.path());
    File::options().write(true).open(&img).unwrap().set_len(21 * 512 + 100).unwrap();
    let e = open_err(&img);
    assert_corrupt(&e, &img, None);
    // Cut inside the embedded descriptor.
    File::options().write(true).open(&img).unwrap().set_len(700).unwrap();
    let e = open_err(&img);
    assert_corrupt(&e, &img, Some(28));

    // A COWD stub.
    let cowd = dir.path().join("c-delta.vmdk");
    let mut b = b"COWD".to_vec();
    b.extend_from_slice(&[0u8; 1000]);
    std::fs::write(&cowd, &b).unwrap();
    let e = open_err(&cowd);
    assert_corrupt(&e, &cowd, Some(0));
}

fn grain(seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; (64 * KIB) as usize];
    Rng::new(seed).fill_nonzero(&mut v[..40_000]);
    v
}

#[test]
fn hand_made_stream_reads() {
    for footer in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.vmdk");
        let cap = 600 * 128; // 600 grains: two grain tables
        let grains = vec![(0, grain(1)), (3, grain(2)), (599, grain(3))];
        make_stream(&p, cap, &grains, footer);
        let link = Link::open(&p, &OpenOptions::read()).unwrap();
        let mut want = vec![0u8; (cap * 512) as usize];
        for (g, d) in &grains {
            want[(g * 64 * KIB) as usize..((g + 1) * 64 * KIB) as usize].copy_from_slice(d);
        }
        assert_same(&read_all(&link), &want, &format!("stream, footer={footer}"));
        let data = map_set(&link.map(0, cap * 512).unwrap(), vmdk::State::Data);
        assert_eq!(data, vec![(0, 64 * KIB), (3 * 64 * KIB, 4 * 64 * KIB), (599 * 64 * KIB, 600 * 64 * KIB)]);
        assert!(matches!(link.write_at(b"x", 0), Err(Error::ReadOnly { .. })));
        drop(link);
        let e = Link::open(&p, &OpenOptions::write()).and_then(|l| l.write_at(b"x", 0)).unwrap_err();
        assert!(matches!(e, Error::ReadOnly { .. }), "{e:?}");
    }
}

#[test]
fn stream_grain_marker_with_wrong_lba() {
    for footer in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.vmdk");
        let markers = make_stream(&p, 8 * 128, &[(1, grain(4)), (2, grain(5))], footer);
        write_u64_at(&patch_file(&p), markers[1], 5 * 128); // grain 2's marker says grain 5
        let link = Link::open(&p, &OpenOptions::read()).unwrap();
        let mut buf = vec![0u8; 100];
        link.read_at(&mut buf, 64 * KIB).unwrap(); // grain 1 is fine
        let e = link.read_at(&mut buf, 2 * 64 * KIB + 7).unwrap_err();
        assert_corrupt(&e, &p, Some(markers[1]));
        assert!(e.to_string().contains("LBA"), "{e}");
    }
}

#[test]
fn stream_grain_damage() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.vmdk");
    let markers = make_stream(&p, 8 * 128, &[(1, grain(6)), (2, grain(7))], false);
    let f = patch_file(&p);
    // Compressed size impossible.
    write_u32_at(&f, markers[0] + 8, 0x7fff_ffff);
    // Compressed bytes garbled.
    f.write_all_at(&[0xffu8; 64], markers[1] + 12 + 2).unwrap();
    drop(f);
    let link = Link::open(&p, &OpenOptions::read()).unwrap();
    let mut buf = vec![0u8; 10];
    let e = link.read_at(&mut buf, 64 * KIB).unwrap_err();
    assert_corrupt(&e, &p, Some(markers[0] + 8));
    let e = link.read_at(&mut buf, 2 * 64 * KIB).unwrap_err();
    assert_corrupt(&e, &p, Some(markers[1] + 12));
}

#[test]
fn stream_entry_past_eof_and_bad_footer() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.vmdk");
    make_stream(&p, 8 * 128, &[(1, grain(8))], false);
    let f = patch_file(&p);
    let at = gte_offset(&f, 1);
    write_u32_at(&f, at, 0x00ff_ffff);
    drop(f);
    let link = Link::open(&p, &OpenOptions::read()).unwrap();
    let e = link.read_at(&mut [0u8; 10], 64 * KIB).unwrap_err();
    assert_corrupt(&e, &p, Some(at));

    // VMware layout: damaged footer magic, and a missing footer marker.
    let p = dir.path().join("t.vmdk");
    make_stream(&p, 8 * 128, &[(1, grain(9))], true);
    let len = std::fs::metadata(&p).unwrap().len();
    let f = patch_file(&p);
    f.write_all_at(b"XDMV", len - 1024).unwrap();
    let e = open_err(&p);
    assert_corrupt(&e, &p, Some(len - 1024));
    f.write_all_at(b"KDMV", len - 1024).unwrap();
    // No footer marker (here an unknown marker type instead): the grains are found by walking the
    // markers, and read as before.
    let before = {
        let link = Link::open(&p, &OpenOptions::read()).unwrap();
        let mut b = vec![0u8; (128 * KIB) as usize];
        link.read_at(&mut b, 0).unwrap();
        b
    };
    write_u32_at(&f, len - 1536 + 12, 7);
    let link = Link::open(&p, &OpenOptions::read()).unwrap();
    let mut b = vec![0u8; (128 * KIB) as usize];
    link.read_at(&mut b, 0).unwrap();
    assert_eq!(b, before);
    // Without its end-of-stream marker too, the walk finds the stream truncated.
    drop(link);
    f.set_len(len - 512).unwrap();
    let e = open_err(&p);
    assert_corrupt(&e, &p, Some(len - 512));
}

#[test]
fn qemu_stream_marker_with_wrong_lba() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("r.raw");
    let data = pattern(3 * MIB, 10);
    write_raw_sparse(&raw, &data);
    let img = dir.path().join("q.vmdk");
    qemu_ok(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        raw.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    let g = first_allocated_grain(&img);
    let f = patch_file(&img);
    let marker = read_u32_at(&f, gte_offset(&f, g)) as u64 * 512;
    assert_eq!(read_u64_at(&f, marker), g * 128, "qemu's marker LBA");
    write_u64_at(&f, marker, g * 128 + 128);
    drop(f);
    let link = Link::open(&img, &OpenOptions::read()).unwrap();
    let e = link.read_at(&mut [0u8; 512], g * 64 * KIB).unwrap_err();
    assert_corrupt(&e, &img, Some(marker));
}

#[test]
fn extent_size_mismatch() {
    // The descriptor maps more than the sparse extent holds.
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.vmdk");
    let mut opts = CreateOptions::new(DiskFormat::TwoGbSparse, 2 * MIB);
    opts.split_sectors = 2048;
    create(&img, &opts).unwrap().commit().unwrap();
    let text = std::fs::read_to_string(&img).unwrap().replace("RW 2048 SPARSE", "RW 4096 SPARSE");
    std::fs::write(&img, text).unwrap();
    let e = open_err(&img);
    assert_corrupt(&e, &dir.path().join("x-s001.vmdk"), Some(12));
}
