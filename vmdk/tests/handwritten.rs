//! Hand-written descriptors in the shapes other tools (and people) produce: CRLF line endings, odd
//! case, spaces around `=`, several FLAT extents with offsets into one shared file and into separate
//! files, VMFS extents, ZERO extents in the middle. Each is read (and where possible written) and
//! compared with a buffer built here.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;
use vmdk::{Container, CreateType, Error, Link, OpenOptions, State};

fn random_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill_nonzero(&mut v);
    std::fs::write(path, &v).unwrap();
    v
}

/// `[start_sector, start_sector + sectors)` of `file`.
fn sectors(file: &[u8], start: usize, n: usize) -> &[u8] {
    &file[start * 512..(start + n) * 512]
}

/// Reads the whole disk, plus many unaligned windows, and compares with `want`.
#[track_caller]
fn check_reads(link: &Link, want: &[u8]) {
    assert_eq!(link.capacity(), want.len() as u64);
    assert_same(&read_all(link), want, "full read");
    let mut rng = Rng::new(want.len() as u64);
    for _ in 0..300 {
        let off = rng.range(0, want.len() as u64 - 1);
        let len = rng.range(1, 20_000).min(want.len() as u64 - off);
        let mut buf = vec![0xa5u8; len as usize];
        link.read_at(&mut buf, off).unwrap();
        assert_same(&buf, &want[off as usize..(off + len) as usize], &format!("read {len} at {off}"));
    }
    // One byte past the end is refused.
    let mut b = [0u8; 2];
    assert!(matches!(link.read_at(&mut b, want.len() as u64 - 1), Err(Error::OutOfRange { .. })));
}

#[test]
fn crlf_odd_case_spaces() {
    let dir = tempfile::tempdir().unwrap();
    let flat = random_file(&dir.path().join("disk-flat.vmdk"), 200 * 512, 1);
    let text = "# Disk DescriptorFile\r\n\
                VERSION = 1\r\n\
                Encoding = \"UTF-8\"\r\n\
                cid = 5523cf8\r\n\
                PARENTCID = FFFFFFFF\r\n\
                CREATETYPE = \"MONOLITHICFLAT\"\r\n\
                \r\n\
                # Extent description\r\n\
                rw 100 flat \"disk-flat.vmdk\" 50\r\n\
                \r\n\
                # The Disk Data Base\r\n\
                #DDB\r\n\
                \r\n\
                DDB.AdapterType=\"ide\"\r\n\
                ddb.geometry.cylinders = \"1\"\r\n";
    let d = dir.path().join("disk.vmdk");
    std::fs::write(&d, text).unwrap();
    let link = Link::open(&d, &OpenOptions::read()).unwrap();
    assert_eq!(link.container(), Container::Descriptor);
    let desc = link.descriptor();
    assert_eq!(desc.create_type, CreateType::MonolithicFlat);
    assert_eq!(desc.cid, 0x5523cf8);
    assert_eq!(desc.ddb("adaptertype"), Some("ide"));
    check_reads(&link, sectors(&flat, 50, 100));
    let map = link.map(0, link.capacity()).unwrap();
    assert_eq!(map_set(&map, State::Data), vec![(0, 100 * 512)]);
}

#[test]
fn crlf_descriptor_written_back_canonically() {
    // A write rewrites the descriptor (new CID) in the canonical LF layout; it must still open and
    // keep the extents and unknown keys.
    let dir = tempfile::tempdir().unwrap();
    let mut flat = random_file(&dir.path().join("w-flat.vmdk"), 64 * 512, 2);
    let text = "VERSION=1\r\nCID=fffffffe\r\nparentCID=ffffffff\r\ncreateType = \"vmfs\"\r\nRW 64 VMFS \"w-flat.vmdk\"\r\nddb.thinProvisioned = \"1\"\r\nsomeVendorKey = \"x y\"\r\n";
    let d = dir.path().join("w.vmdk");
    std::fs::write(&d, text).unwrap();
    let link = Link::open(&d, &OpenOptions::write()).unwrap();
    link.write_at(b"abc", 1000).unwrap();
    link.close().unwrap();
    flat[1000..1003].copy_from_slice(b"abc");
    let new_text = std::fs::read_to_string(&d).unwrap();
    assert!(!new_text.contains('\r'), "rewritten descriptor should use LF: {new_text:?}");
    assert!(!new_text.contains("CID=fffffffe"), "CID must change on first write: {new_text}");
    let link = Link::open(&d, &OpenOptions::read()).unwrap();
    assert_eq!(link.descriptor().header("somevendorkey"), Some("x y"));
    assert_eq!(link.descriptor().ddb("thinProvisioned"), Some("1"));
    check_reads(&link, &flat);
}

#[test]
fn flat_extents_shared_and_separate_files_with_zero() {
    let dir = tempfile::tempdir().unwrap();
    let shared = random_file(&dir.path().join("shared.bin"), 300 * 512, 3);
    let other = random_file(&dir.path().join("other.bin"), 40 * 512, 4);
    let third = random_file(&dir.path().join("sub dir.bin"), 9 * 512, 5);
    // Extent lines: odd spacing, offsets into the shared file out of order, a ZERO in the middle.
    let text = "# Disk DescriptorFile\n\
                version=1\n\
                CID=12345678\n\
                parentCID=ffffffff\n\
                createType=\"custom\"\n\
                # Extent description\n\
                RW 16 FLAT \"shared.bin\" 40\n\
                RW   8   FLAT   \"shared.bin\"   0\n\
                RW 32 FLAT \"other.bin\" 0\n\
                RW 10 ZERO\n\
                RDONLY 20 FLAT \"shared.bin\" 250\n\
                RW 7 FLAT \"sub dir.bin\" 2\n\
                RW 3 ZERO\n\
                RW 1 FLAT \"shared.bin\" 299\n";
    let d = dir.path().join("multi.vmdk");
    std::fs::write(&d, text).unwrap();
    let mut want = Vec::new();
    want.extend_from_slice(sectors(&shared, 40, 16));
    want.extend_from_slice(sectors(&shared, 0, 8));
    want.extend_from_slice(sectors(&other, 0, 32));
    want.extend(std::iter::repeat_n(0u8, 10 * 512));
    want.extend_from_slice(sectors(&shared, 250, 20));
    want.extend_from_slice(sectors(&third, 2, 7));
    want.extend(std::iter::repeat_n(0u8, 3 * 512));
    want.extend_from_slice(sectors(&shared, 299, 1));
    let link = Link::open(&d, &OpenOptions::read()).unwrap();
    assert_eq!(link.extents().len(), 8);
    check_reads(&link, &want);
    let map = link.map(0, link.capacity()).unwrap();
    assert_map_covers(&map, want.len() as u64);
    let zero = map_set(&map, State::Zero);
    assert_eq!(zero, vec![(56 * 512, 66 * 512), (93 * 512, 96 * 512)]);
    drop(link);

    // Open for writing: the shared file is opened (and locked) once. Writes spanning extents land in
    // the right places; the ZERO and RDONLY extents refuse writes.
    let link = Link::open(&d, &OpenOptions::write()).unwrap();
    let mut patch = vec![0u8; 30 * 512];
    Rng::new(6).fill_nonzero(&mut patch);
    let at = 10 * 512 + 77; // from the first extent, across the second, into the third
    link.write_at(&patch, at).unwrap();
    want[at as usize..at as usize + patch.len()].copy_from_slice(&patch);
    assert!(matches!(link.write_at(b"x", 60 * 512), Err(Error::ReadOnly { .. })));
    assert!(matches!(link.write_at(b"x", 70 * 512), Err(Error::ReadOnly { .. })));
    link.close().unwrap();
    let link = Link::open(&d, &OpenOptions::read()).unwrap();
    check_reads(&link, &want);
    // The bytes really went to the files at the offsets the descriptor gives.
    let shared_now = std::fs::read(dir.path().join("shared.bin")).unwrap();
    assert_eq!(&shared_now[40 * 512 + 10 * 512 + 77..56 * 512], &patch[..6 * 512 - 77]);
    assert_eq!(&shared_now[..8 * 512], &patch[6 * 512 - 77..14 * 512 - 77]);
}

#[test]
fn vmfs_extents() {
    let dir = tempfile::tempdir().unwrap();
    let a = random_file(&dir.path().join("esx-flat.vmdk"), 128 * 512, 7);
    let b = random_file(&dir.path().join("esx-2-flat.vmdk"), 64 * 512, 8);
    let text = "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=fffffffe\nparentCID=ffffffff\nisNativeSnapshot=\"no\"\ncreateType=\"vmfs\"\n\n# Extent description\nRW 128 VMFS \"esx-flat.vmdk\"\nRW 64 VMFS \"esx-2-flat.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = \"lsilogic\"\nddb.geometry.cylinders = \"0\"\nddb.geometry.heads = \"255\"\nddb.geometry.sectors = \"63\"\nddb.longContentID = \"8ab1bd8e5a5dfba6a3c4cef5fffffffe\"\nddb.thinProvisioned = \"1\"\nddb.uuid = \"60 00 C2 99 d3 f5 dc ad-9e 25 3e 89 48 2c 3f de\"\nddb.virtualHWVersion = \"11\"\n";
    let d = dir.path().join("esx.vmdk");
    std::fs::write(&d, text).unwrap();
    let link = Link::open(&d, &OpenOptions::read()).unwrap();
    assert_eq!(link.descriptor().create_type, CreateType::Vmfs);
    let mut want = a.clone();
    want.extend_from_slice(&b);
    check_reads(&link, &want);
    let infos = link.extents();
    assert_eq!(infos.iter().map(|i| i.kind).collect::<Vec<_>>(), vec![vmdk::extent::ExtentKind::Vmfs; 2]);

    // Spec spelling of the createType, upper-case extent type, and a flat file longer than needed.
    let text = "version=1\ncreateType=\"VMFSTHIN\"\nRW 100 vmfs \"esx-flat.vmdk\"\n";
    std::fs::write(&d, text).unwrap();
    let link = Link::open(&d, &OpenOptions::read()).unwrap();
    assert_eq!(link.descriptor().create_type, CreateType::VmfsThin);
    check_reads(&link, &a[..100 * 512]);
}

#[test]
fn zero_extent_between_flat_files_as_two_gb_flat() {
    let dir = tempfile::tempdir().unwrap();
    let f1 = random_file(&dir.path().join("s-f001.vmdk"), 2048 * 512, 9);
    let f3 = random_file(&dir.path().join("s-f003.vmdk"), 100 * 512, 10);
    let text = "# Disk DescriptorFile\nversion=1\nCID=abcdef01\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentFlat\"\n\n# Extent description\nRW 2048 FLAT \"s-f001.vmdk\" 0\nRW 4096 ZERO\nRW 100 FLAT \"s-f003.vmdk\" 0\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = \"ide\"\n";
    let d = dir.path().join("s.vmdk");
    std::fs::write(&d, text).unwrap();
    let link = Link::open(&d, &OpenOptions::read()).unwrap();
    let mut want = f1.clone();
    want.extend(std::iter::repeat_n(0u8, 4096 * 512));
    want.extend_from_slice(&f3);
    check_reads(&link, &want);
    let map = link.map(0, link.capacity()).unwrap();
    assert_eq!(map_set(&map, State::Zero), vec![(2048 * 512, 6144 * 512)]);
    assert_eq!(map_set(&map, State::Data), vec![(0, 2048 * 512), (6144 * 512, 6244 * 512)]);
}

#[test]
fn descriptor_without_cid_and_unquoted_values() {
    // Some hand-written descriptors leave out the CID and quotes; `#` comments appear between lines.
    let dir = tempfile::tempdir().unwrap();
    let f = random_file(&dir.path().join("plain.img"), 10 * 512, 11);
    let text = "\n\n# made by hand\nversion=1\n# comment\ncreateType=monolithicFlat\n  RW 10 FLAT plain.img 0  \n";
    let d = dir.path().join("plain.vmdk");
    std::fs::write(&d, text).unwrap();
    let link = Link::open(&d, &OpenOptions::read()).unwrap();
    check_reads(&link, &f);
}

#[test]
fn raw_image_of_odd_length() {
    // A plain raw image is a flat disk; a length that is not a multiple of 512 reads as zero-padded.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("odd.img");
    let f = random_file(&p, 5 * 512 + 100, 12);
    let link = Link::open(&p, &OpenOptions::read()).unwrap();
    assert_eq!(link.container(), Container::Raw);
    let mut want = f.clone();
    want.resize(6 * 512, 0);
    check_reads(&link, &want);
}

#[test]
fn descriptor_errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("bad.vmdk");
    std::fs::write(&d, "version=1\ncreateType=\"monolithicFlat\"\nRW 10 FLAT \"nope.img\" 0\nRW ten FLAT \"x\" 0\n")
        .unwrap();
    let e = open_err(&d);
    assert!(matches!(e, Error::Descriptor { line: 4, .. }), "{e:?}");
    assert!(e.to_string().contains("bad.vmdk"), "{e}");
    // A missing extent file is an I/O error naming that file.
    std::fs::write(&d, "version=1\ncreateType=\"monolithicFlat\"\nRW 10 FLAT \"nope.img\" 0\n").unwrap();
    let e = open_err(&d);
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("nope.img"), "{e}");
    // Unknown createType.
    std::fs::write(&d, "version=1\ncreateType=\"fancyNewType\"\nRW 10 ZERO\n").unwrap();
    let e = open_err(&d);
    assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
}

#[test]
fn read_only_extent_before_writable_one_in_the_same_file() {
    // The first line opens the shared file read-only; the second, writable, extent must still be
    // writable (one handle per file, opened for writing when any extent of it is writable).
    let dir = tempfile::tempdir().unwrap();
    let shared = random_file(&dir.path().join("one.bin"), 64 * 512, 13);
    let text = "version=1\ncreateType=\"custom\"\nRDONLY 16 FLAT \"one.bin\" 0\nRW 16 FLAT \"one.bin\" 32\n";
    let d = dir.path().join("ro-rw.vmdk");
    std::fs::write(&d, text).unwrap();
    let mut want = sectors(&shared, 0, 16).to_vec();
    want.extend_from_slice(sectors(&shared, 32, 16));
    let link = Link::open(&d, &OpenOptions::write()).unwrap();
    assert!(matches!(link.write_at(b"no", 100), Err(Error::ReadOnly { .. })));
    link.write_at(b"yes", 16 * 512 + 5).unwrap();
    link.close().unwrap();
    want[16 * 512 + 5..16 * 512 + 8].copy_from_slice(b"yes");
    let link = Link::open(&d, &OpenOptions::read()).unwrap();
    check_reads(&link, &want);
}

#[test]
fn holey_flat_file_at_an_offset() {
    // A sparse flat file mapped from sector 100: the map shifts the file's data runs correctly.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("holey.img");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(MIB).unwrap();
    let mut file = vec![0u8; MIB as usize];
    for (at, n) in [(100_000u64, 50_000u64), (600_000, 1000), (40_000, 100)] {
        let mut b = vec![0u8; n as usize];
        Rng::new(at).fill_nonzero(&mut b);
        std::os::unix::fs::FileExt::write_all_at(&f, &b, at).unwrap();
        file[at as usize..(at + n) as usize].copy_from_slice(&b);
    }
    drop(f);
    let d = dir.path().join("holey.vmdk");
    std::fs::write(&d, "version=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n# Extent description\nRW 1500 FLAT \"holey.img\" 100\n").unwrap();
    let link = Link::open(&d, &OpenOptions::read()).unwrap();
    let want = &file[51_200..51_200 + 1500 * 512];
    check_reads(&link, want);
    let map = link.map(0, link.capacity()).unwrap();
    assert_map_covers(&map, link.capacity());
    let data = map_set(&map, State::Data);
    // The written bytes (shifted by 51200; the run at 40000 is before the extent) are data...
    let written = vec![(100_000 - 51_200, 150_000 - 51_200), (600_000 - 51_200, 601_000 - 51_200)];
    for &(s, e) in &written {
        assert!(data.iter().any(|&(ds, de)| ds <= s && e <= de), "{s}..{e} not in data runs {data:?}");
    }
    // ...and little else (file-system blocks of up to 64 KiB around them).
    assert!(set_bytes(&data) <= set_bytes(&written) + 4 * 64 * KIB, "{data:?}");
    // A map of a piece in the middle agrees with the whole.
    let part = link.map(60_000, 200_000).unwrap();
    let part_data = map_set(&part, State::Data);
    let clipped: Vec<(u64, u64)> =
        data.iter().map(|&(s, e)| (s.max(60_000), e.min(260_000))).filter(|(s, e)| s < e).collect();
    assert_eq!(part_data, clipped);
    if have_qemu() {
        assert_eq!(data, qemu_data_set(&d), "qemu's map of the same descriptor");
    }
}

#[test]
fn byte_order_mark_tabs_and_cbt() {
    // Saved by a Windows editor: a UTF-8 byte-order mark, tabs between fields; an ESXi descriptor
    // with change tracking (`version=3`, changeTrackPath).
    let dir = tempfile::tempdir().unwrap();
    let f = random_file(&dir.path().join("cbt-flat.vmdk"), 64 * 512, 14);
    let text = "\u{feff}# Disk DescriptorFile\r\nversion=3\r\nencoding=\"UTF-8\"\r\nCID=fffffffe\r\nparentCID=ffffffff\r\nisNativeSnapshot=\"no\"\r\ncreateType=\"vmfs\"\r\n\r\n# Extent description\r\nRW\t64\tVMFS\t\"cbt-flat.vmdk\"\r\n\r\n# Change Tracking File\r\nchangeTrackPath=\"cbt-ctk.vmdk\"\r\n\r\n# The Disk Data Base\r\n#DDB\r\n\r\nddb.adapterType = \"lsilogic\"\r\nddb.comment = \"a=b \\\"c\\\"\"\r\n";
    let d = dir.path().join("cbt.vmdk");
    std::fs::write(&d, text).unwrap();
    let link = Link::open(&d, &OpenOptions::read()).unwrap();
    assert_eq!(link.container(), Container::Descriptor, "a descriptor with a BOM must not open as a raw image");
    let desc = link.descriptor();
    assert_eq!(desc.version, 3);
    assert_eq!(desc.create_type, CreateType::Vmfs);
    assert_eq!(desc.header("changeTrackPath"), Some("cbt-ctk.vmdk"));
    check_reads(&link, &f);
    drop(link);
    // Writing keeps version and change-tracking path.
    let link = Link::open(&d, &OpenOptions::write()).unwrap();
    link.write_at(&[1, 2, 3], 0).unwrap();
    link.close().unwrap();
    let link = Link::open(&d, &OpenOptions::read()).unwrap();
    assert_eq!(link.descriptor().version, 3);
    assert_eq!(link.descriptor().header("changeTrackPath"), Some("cbt-ctk.vmdk"));
    let mut want = f.clone();
    want[..3].copy_from_slice(&[1, 2, 3]);
    check_reads(&link, &want);
}

#[test]
fn embedded_descriptor_in_odd_shape() {
    // A monolithicSparse file whose embedded descriptor was written by another tool: CRLF, odd case,
    // spaces around `=`, an extent line naming some other file.
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("e.vmdk");
    let nd = vmdk::create::create(&img, &vmdk::CreateOptions::new(vmdk::DiskFormat::MonoSparse, 2 * MIB)).unwrap();
    let mut data = vec![0u8; (2 * MIB) as usize];
    Rng::new(15).fill_nonzero(&mut data[100_000..300_000]);
    nd.link().write_at(&data, 0).unwrap();
    nd.commit().unwrap();
    let text = "# Disk DescriptorFile\r\nVersion = 1\r\nCid = 0000abcd\r\nParentCid = ffffffff\r\nCreateType = \"MONOLITHICSPARSE\"\r\n\r\n# Extent description\r\nrw 4096 sparse \"Some Other Name.vmdk\"\r\n\r\nDDB.ADAPTERTYPE = \"ide\"\r\n";
    let mut area = vec![0u8; 20 * 512];
    area[..text.len()].copy_from_slice(text.as_bytes());
    patch_file(&img).write_all_at(&area, 512).unwrap();
    let link = Link::open(&img, &OpenOptions::read()).unwrap();
    assert_eq!(link.container(), Container::Embedded);
    assert_eq!(link.descriptor().cid, 0xabcd);
    check_reads(&link, &data);
    drop(link);
    let link = Link::open(&img, &OpenOptions::write()).unwrap();
    link.write_at(b"new", 5).unwrap();
    link.close().unwrap();
    data[5..8].copy_from_slice(b"new");
    let link = Link::open(&img, &OpenOptions::read()).unwrap();
    assert_ne!(link.descriptor().cid, 0xabcd);
    check_reads(&link, &data);
    if have_qemu() {
        let raw = dir.path().join("e.raw");
        std::fs::write(&raw, &data).unwrap();
        qemu_ok(&["compare", "-f", "vmdk", "-F", "raw", img.to_str().unwrap(), raw.to_str().unwrap()]);
    }
}
