//! Strict format detection, one stream model and bounded cost (issue 10, item 4):
//! - plausible raw images (zeros, random bytes, MBR, GPT, ext4, ISO 9660, NTFS, plain text) still
//!   open as raw images;
//! - damaged signatures (a flipped magic, a destroyed magic, a damaged descriptor key, a `*.REDO`
//!   without COWD, flags that contradict createType, a child whose descriptor size was zeroed) are
//!   errors naming file, offset and field, never raw images;
//! - streams read the same through random access and through a pipe, or are refused by both;
//! - headers that ask for tables larger than the file really holds fail fast without big
//!   allocations;
//! - a flat extent truncated under an open link is an error in the map and on read, never zeros;
//! - the newline-detection error names the real cause.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::counting::{cheaply, Counting};
use common::*;
use vmdk::create::{create, stream_layout, CreateOptions, DiskFormat, Parent};
use vmdk::extent::stream::sequential::{Pipe, StreamReader};
use vmdk::extent::stream::writer::{EncodedGrains, GrainEncoder, StreamWriter, WriteSink};
use vmdk::{Container, Error, Link, OpenOptions, Storage};

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---------------------------------------------------------------------------------------------
// Raw images stay raw images.

/// CRC-32 (IEEE), for a GPT header a partitioning tool would accept.
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
        }
    }
    !c
}

/// Boot code: x86-looking bytes with the messages a boot loader carries.
fn boot_code(seed: u64) -> Vec<u8> {
    let mut code = vec![0u8; 440];
    Rng::new(seed).fill_nonzero(&mut code);
    code[..3].copy_from_slice(&[0xEB, 0x63, 0x90]);
    let msg = b"Invalid partition table\r\nError loading operating system\r\nMissing operating system\r\n";
    code[0x163..0x163 + msg.len()].copy_from_slice(msg);
    code
}

fn mbr_disk() -> Vec<u8> {
    let mut d = vec![0u8; 8 << 20];
    d[..440].copy_from_slice(&boot_code(1));
    // Two partitions: a bootable Linux one and an extended one.
    for (i, (boot, kind, start, len)) in [(0x80u8, 0x83u8, 2048u32, 8192u32), (0, 0x05, 10240, 4096)].iter().enumerate()
    {
        let e = 446 + i * 16;
        d[e] = *boot;
        d[e + 1..e + 4].copy_from_slice(&[0x20, 0x21, 0x00]);
        d[e + 4] = *kind;
        d[e + 5..e + 8].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
        d[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
        d[e + 12..e + 16].copy_from_slice(&len.to_le_bytes());
    }
    d[510..512].copy_from_slice(&[0x55, 0xAA]);
    d
}

fn gpt_disk() -> Vec<u8> {
    let sectors = 16384u64;
    let mut d = vec![0u8; (sectors * 512) as usize];
    // Protective MBR.
    d[446 + 4] = 0xEE;
    d[446 + 1..446 + 4].copy_from_slice(&[0x00, 0x02, 0x00]);
    d[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    d[446 + 12..446 + 16].copy_from_slice(&((sectors - 1) as u32).to_le_bytes());
    d[510..512].copy_from_slice(&[0x55, 0xAA]);
    // One partition entry (Linux filesystem type GUID) at LBA 2.
    let mut entries = vec![0u8; 128 * 128];
    entries[..16].copy_from_slice(&[
        0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4,
    ]);
    Rng::new(9).fill_nonzero(&mut entries[16..32]);
    entries[32..40].copy_from_slice(&2048u64.to_le_bytes());
    entries[40..48].copy_from_slice(&(sectors - 34).to_le_bytes());
    for (i, c) in "data".encode_utf16().enumerate() {
        entries[56 + i * 2..58 + i * 2].copy_from_slice(&c.to_le_bytes());
    }
    d[1024..1024 + entries.len()].copy_from_slice(&entries);
    // The header at LBA 1.
    let mut h = vec![0u8; 92];
    h[..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&1u64.to_le_bytes());
    h[32..40].copy_from_slice(&(sectors - 1).to_le_bytes());
    h[40..48].copy_from_slice(&34u64.to_le_bytes());
    h[48..56].copy_from_slice(&(sectors - 34).to_le_bytes());
    Rng::new(10).fill_nonzero(&mut h[56..72]);
    h[72..80].copy_from_slice(&2u64.to_le_bytes());
    h[80..84].copy_from_slice(&128u32.to_le_bytes());
    h[84..88].copy_from_slice(&128u32.to_le_bytes());
    h[88..92].copy_from_slice(&crc32(&entries).to_le_bytes());
    let c = crc32(&h);
    h[16..20].copy_from_slice(&c.to_le_bytes());
    d[512..512 + 92].copy_from_slice(&h);
    d
}

fn ext4_by_hand() -> Vec<u8> {
    let mut d = vec![0u8; 8 << 20];
    let sb = &mut d[1024..2048];
    sb[0..4].copy_from_slice(&2048u32.to_le_bytes()); // inodes
    sb[4..8].copy_from_slice(&8192u32.to_le_bytes()); // blocks
    sb[24..28].copy_from_slice(&0u32.to_le_bytes()); // log block size (1 KiB)
    sb[32..36].copy_from_slice(&8192u32.to_le_bytes()); // blocks per group
    sb[56..58].copy_from_slice(&0xEF53u16.to_le_bytes()); // magic
    sb[58..60].copy_from_slice(&1u16.to_le_bytes()); // state: clean
    sb[76..80].copy_from_slice(&1u32.to_le_bytes()); // revision
    sb[120..126].copy_from_slice(b"rootfs");
    d
}

fn iso9660() -> Vec<u8> {
    let mut d = vec![0u8; 2 << 20];
    let pvd = &mut d[32768..34816];
    pvd[0] = 1;
    pvd[1..6].copy_from_slice(b"CD001");
    pvd[6] = 1;
    pvd[8..40].copy_from_slice(&[b' '; 32]);
    pvd[8..13].copy_from_slice(b"LINUX");
    pvd[40..72].copy_from_slice(&[b' '; 32]);
    pvd[40..49].copy_from_slice(b"INSTALLER");
    pvd[80..84].copy_from_slice(&1024u32.to_le_bytes());
    pvd[84..88].copy_from_slice(&1024u32.to_be_bytes());
    pvd[128..130].copy_from_slice(&2048u16.to_le_bytes());
    let term = &mut d[34816..36864];
    term[0] = 255;
    term[1..6].copy_from_slice(b"CD001");
    term[6] = 1;
    d
}

fn ntfs() -> Vec<u8> {
    let mut d = vec![0u8; 4 << 20];
    d[..3].copy_from_slice(&[0xEB, 0x52, 0x90]);
    d[3..11].copy_from_slice(b"NTFS    ");
    d[11..13].copy_from_slice(&512u16.to_le_bytes());
    d[13] = 8;
    d[21] = 0xF8;
    d[24..26].copy_from_slice(&63u16.to_le_bytes());
    d[26..28].copy_from_slice(&255u16.to_le_bytes());
    d[40..48].copy_from_slice(&8191u64.to_le_bytes());
    d[48..56].copy_from_slice(&4u64.to_le_bytes());
    d[56..64].copy_from_slice(&511u64.to_le_bytes());
    d[64] = 0xF6;
    d[68] = 1;
    Rng::new(4).fill_nonzero(&mut d[72..80]);
    d[84..84 + 426].copy_from_slice(&boot_code(5)[..426]);
    d[510..512].copy_from_slice(&[0x55, 0xAA]);
    d
}

/// Opens `bytes` written as `name` and checks it is a raw image holding exactly those bytes.
#[track_caller]
fn assert_raw(dir: &Path, name: &str, bytes: &[u8]) {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    let link = Link::open(&p, &OpenOptions::read()).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(link.container(), Container::Raw, "{name}");
    let mut want = bytes.to_vec();
    want.resize(bytes.len().div_ceil(512) * 512, 0);
    assert_same(&read_all(&link), &want, name);
}

#[test]
fn plausible_raw_heads_open_as_raw_images() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_raw(d, "zeros.img", &vec![0u8; 4 << 20]);
    assert_raw(d, "mbr.img", &mbr_disk());
    assert_raw(d, "gpt.img", &gpt_disk());
    assert_raw(d, "ext4-hand.img", &ext4_by_hand());
    assert_raw(d, "iso.img", &iso9660());
    assert_raw(d, "ntfs.img", &ntfs());
    assert_raw(d, "tiny.img", b"KDM");
    assert_raw(d, "readme.txt", b"# Notes\nThis disk holds the RW copy of the data.\nversion 2 of the\nkey=value\n");
    assert_raw(d, "settings.ini", b"[main]\nname=vm1\nsize=2048\nmode=RW\n\n[disk]\npath=/vm/disk.img\n");
    // A disk whose partition starts with text mentioning VMDK words, after a real MBR.
    let mut m = mbr_disk();
    m[1 << 20..(1 << 20) + 40].copy_from_slice(b"createType=\"monolithicFlat\"\nddb.x = \"1\"\n");
    assert_raw(d, "mbr-text.img", &m);
    // Seeded random heads: many through the classifier alone, some through Link::open.
    for seed in 0..3000u64 {
        let mut head = vec![0u8; 4096];
        Rng::new(seed).fill_nonzero(&mut head);
        if seed % 2 == 0 {
            head[..4096 / 2].iter_mut().for_each(|b| *b &= 0x7f); // ASCII-ish halves too
        }
        let path = d.join(format!("r{seed}.img"));
        let f = vmdk::detect::classify(&path, &head, Some(&head[..1536]), 1 << 30).unwrap();
        assert_eq!(f, vmdk::detect::Format::Raw, "seed {seed}");
        if seed < 20 {
            assert_raw(d, &format!("r{seed}.img"), &head);
        }
    }
    // A real ext4 file system made by mkfs.ext4, when it is installed.
    let img = d.join("ext4.img");
    File::create(&img).unwrap().set_len(16 << 20).unwrap();
    match std::process::Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img).output() {
        Ok(o) if o.status.success() => {
            let bytes = std::fs::read(&img).unwrap();
            assert_eq!(&bytes[1024 + 56..1024 + 58], &[0x53, 0xEF], "mkfs.ext4 made an ext4 superblock");
            assert_raw(d, "ext4.img", &bytes);
        }
        _ => eprintln!("mkfs.ext4 not available: skipping the mkfs-made ext4 image"),
    }
}

// ---------------------------------------------------------------------------------------------
// Damaged signatures are errors naming the field.

/// Asserts `e` is `Error::Corrupt` about `file` at `offset` whose message contains every `words`.
#[test]
fn a_flipped_or_destroyed_magic_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = our_monosparse(dir.path());
    let f = patch_file(&img);
    f.write_all_at(b"XDMV", 0).unwrap();
    assert_corrupt_says(&open_err(&img), &img, 0, &["KDMV", "58, 44, 4d, 56", "damaged", "version 1"]);
    for bit in [0, 7, 13, 22, 31] {
        let mut m = *b"KDMV";
        m[bit / 8] ^= 1 << (bit % 8);
        f.write_all_at(&m, 0).unwrap();
        assert_corrupt_says(&open_err(&img), &img, 0, &["1 bits off", "damaged"]);
    }
    // Gone altogether: the other fields (version, grain, tables, newline bytes) still tell.
    f.write_all_at(&[0, 0, 0, 0], 0).unwrap();
    assert_corrupt_says(&open_err(&img), &img, 0, &["KDMV", "damaged"]);
    // And with the header sector wiped, the embedded descriptor in sector 1 still tells.
    f.write_all_at(b"KDMV", 0).unwrap();
    let mut header = [0u8; 512];
    f.read_exact_at(&mut header, 0).unwrap();
    f.write_all_at(&[0u8; 512], 0).unwrap();
    assert_corrupt_says(&open_err(&img), &img, 0, &["sector 1 holds an embedded VMDK descriptor"]);
    // The same file as the SPARSE extent of a separate descriptor.
    f.write_all_at(&header, 0).unwrap();
    assert!(Link::open(&img, &OpenOptions::read()).is_ok());
    f.write_all_at(b"KDMX", 0).unwrap();
    let d = dir.path().join("sep.vmdk");
    std::fs::write(&d, "version=1\nCID=1\nparentCID=ffffffff\ncreateType=\"custom\"\nRW 8192 SPARSE \"m.vmdk\"\n")
        .unwrap();
    assert_corrupt_says(&open_err(&d), &img, 0, &["KDMV", "3 bits off"]);
}

/// One of our streams of `data`, written by the writer `vmkfs -e/-i -d streamoptimized` uses.
fn our_stream(path: &Path, data: &[u8]) {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let (h, desc) = stream_layout(&name, data.len() as u64, vmdk::Adapter::LsiLogic, 128, None).unwrap();
    let mut w = StreamWriter::new(WriteSink::new(File::create(path).unwrap(), path), h, desc.as_bytes(), path).unwrap();
    let mut enc = GrainEncoder::new(6, 64 << 10).unwrap();
    w.append(&EncodedGrains::encode(&mut enc, 0, data).unwrap()).unwrap();
    w.finish().unwrap();
}

/// A qemu-made stream of `raw` (None, with a message, when qemu-img is missing).
fn qemu_stream(raw: &Path, out: &Path) -> Option<()> {
    if !have_qemu() {
        eprintln!("qemu-img not found: skipping the qemu-made stream");
        return None;
    }
    let (r, o) = (raw.to_str().unwrap(), out.to_str().unwrap());
    qemu_ok(&["convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", r, o]);
    Some(())
}

#[test]
fn damaged_stream_cowd_sesparse_and_mapping_magics_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // open-vmdk's unfinished stream (lowercase magic).
    let s = d.join("s.vmdk");
    our_stream(&s, &pattern(2 * MIB, 7));
    let f = patch_file(&s);
    f.write_all_at(b"kdmv", 0).unwrap();
    assert_corrupt_says(&open_err(&s), &s, 0, &["4 bits off", "open-vmdk", "never finished"]);
    // Header and descriptor wiped: the footer at the end still says what the file is.
    f.write_all_at(&vec![0u8; 21 * 512], 0).unwrap();
    assert_corrupt_says(&open_err(&s), &s, 0, &["streamOptimized footer"]);

    // COWD, also as an ESX 2 REDO log.
    let c = d.join("base.vmdk.REDO");
    let b = vmdk::HostStorage.create_new(&c).unwrap();
    vmdk::extent::cowd::create(&b, &vmdk::extent::cowd::CowdHeader::new(8192, 1, Some("base.vmdk"))).unwrap();
    drop(b);
    assert_eq!(Link::open(&c, &OpenOptions::read()).unwrap().container(), Container::BareExtent);
    patch_file(&c).write_all_at(b"COWE", 0).unwrap();
    assert_corrupt_says(&open_err(&c), &c, 0, &["COWD", "damaged", "8192 sectors"]);
    // A `*.REDO` that is no COWD file at all.
    let r = d.join("other.vmdk.REDO");
    std::fs::write(&r, vec![0u8; 64 << 10]).unwrap();
    assert_corrupt_says(&open_err(&r), &r, 0, &["REDO", "COWD"]);
    let (img, _) = our_monosparse(d);
    let r2 = d.join("m.vmdk.REDO");
    std::fs::rename(&img, &r2).unwrap();
    assert_corrupt_says(&open_err(&r2), &r2, 0, &["REDO", "4b, 44, 4d, 56"]);

    // seSparse (header and volatile header as ESXi lays them out).
    let se = d.join("x-sesparse.vmdk");
    let mut h = vec![0u8; 1 << 20];
    let put = |h: &mut Vec<u8>, at: usize, v: u64| h[at..at + 8].copy_from_slice(&v.to_le_bytes());
    for (at, v) in [(0, 0xCAFE_BABE), (8, 0x2_0000_0001), (16, 8192), (24, 8), (32, 64), (80, 1), (88, 1)] {
        put(&mut h, at, v);
    }
    for (at, v) in [(128, 4), (136, 1), (144, 5), (152, 64), (192, 69), (200, 64)] {
        put(&mut h, at, v);
    }
    put(&mut h, 512, 0xCAFE_CAFE);
    std::fs::write(&se, &h).unwrap();
    assert_eq!(Link::open(&se, &OpenOptions::read()).unwrap().capacity(), 8192 * 512);
    patch_file(&se).write_all_at(&[0xbe, 0xba, 0xfe, 0x4a], 0).unwrap();
    assert_corrupt_says(&open_err(&se), &se, 0, &["seSparse", "1 bits off"]);

    // Our RDM mapping record.
    let lun = d.join("lun.img");
    std::fs::write(&lun, vec![0x5au8; 1 << 20]).unwrap();
    let vm = d.join("vm.vmdk");
    let nd = vmdk::rawdev::create_device_disk(&vm, &vmdk::rawdev::DeviceDiskOptions::new(vmdk::RdmMode::Virtual, &lun))
        .unwrap();
    nd.commit().unwrap();
    let map = d.join("vm-rdm.vmdk");
    assert!(matches!(open_err(&map), Error::Unsupported { .. }));
    patch_file(&map).write_all_at(b"VMKFSRDL", 0).unwrap();
    assert_corrupt_says(&open_err(&map), &map, 0, &["VMKFSRDM", "damaged"]);
}

/// Replaces `from` by `to` in the descriptor text of `p` (a separate descriptor, or the embedded
/// area of a sparse file, whose length must not change).
fn edit_text(p: &Path, from: &str, to: &str) {
    let mut b = std::fs::read(p).unwrap();
    let at = b.windows(from.len()).position(|w| w == from.as_bytes()).unwrap_or_else(|| panic!("{from:?} not found"));
    if from.len() == to.len() {
        b[at..at + from.len()].copy_from_slice(to.as_bytes());
    } else {
        b.splice(at..at + from.len(), to.bytes());
    }
    std::fs::write(p, b).unwrap();
}

#[track_caller]
fn assert_descriptor_error(e: &Error, file: &Path, line: usize, words: &[&str]) {
    let Error::Descriptor { path, line: l, what } = e else { panic!("expected Error::Descriptor, got {e:?}") };
    assert_eq!((path.as_path(), *l), (file, line), "{e}");
    for w in words {
        assert!(what.contains(w), "message lacks {w:?}: {e}");
    }
}

#[test]
fn damaged_descriptor_keys_are_errors_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let flat = d.join("f.vmdk");
    create(&flat, &CreateOptions::new(DiskFormat::MonoFlat, MIB)).unwrap().commit().unwrap();
    let good = std::fs::read_to_string(&flat).unwrap();
    let line_of = |key: &str| good.lines().position(|l| l.starts_with(key)).unwrap() + 1;
    for (from, to, line, words) in [
        ("version=1", "versoin=1", line_of("version="), &["versoin", "\"version\""][..]),
        ("version=1", "vers1on=1", line_of("version="), &["\"version\""][..]),
        ("version=1", "version-1", line_of("version="), &["version-1", "key=value"][..]),
        ("CID=", "CJD=", line_of("CID="), &["\"CID\""][..]),
        ("createType=", "createTpye=", line_of("createType="), &["\"createType\""][..]),
        ("parentCID=", "parentCIT=", line_of("parentCID="), &["\"parentCID\""][..]),
    ] {
        std::fs::write(&flat, &good).unwrap();
        edit_text(&flat, from, to);
        assert_descriptor_error(&open_err(&flat), &flat, line, words);
    }
    // Case does not matter: that is no damage.
    std::fs::write(&flat, good.replace("version=1", "VERSION=1")).unwrap();
    assert_eq!(Link::open(&flat, &OpenOptions::read()).unwrap().capacity(), MIB);
    // Embedded descriptors too.
    let (img, _) = our_monosparse(d);
    edit_text(&img, "version=1", "versoin=1");
    assert_descriptor_error(&open_err(&img), &img, 2, &["\"version\""]);
}

// ---------------------------------------------------------------------------------------------
// Flags against createType, and a child that would lose its parent.

#[test]
fn stream_flags_that_contradict_create_type_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = pattern(3 * MIB, 21);
    let raw = d.join("r.raw");
    write_raw_sparse(&raw, &data);
    let mut streams = vec![d.join("ours.vmdk")];
    our_stream(&streams[0], &data);
    if qemu_stream(&raw, &d.join("qemu.vmdk")).is_some() {
        streams.push(d.join("qemu.vmdk"));
    }
    for s in &streams {
        let f = patch_file(s);
        let flags = read_u32_at(&f, 8);
        assert_eq!(flags & 0x3_0000, 0x3_0000);
        write_u32_at(&f, 8, flags & !0x3_0000);
        assert_corrupt_says(&open_err(s), s, 8, &["lack the compressed-grain and marker bits", "streamOptimized"]);
        write_u32_at(&f, 8, flags & !0x2_0000 | 0x1_0000);
        assert!(matches!(open_err(s), Error::Unsupported { .. } | Error::Corrupt { offset: 8, .. }));
    }
    // A monolithicSparse file whose header says compressed grains with markers.
    let (img, _) = our_monosparse(d);
    let f = patch_file(&img);
    write_u32_at(&f, 8, read_u32_at(&f, 8) | 0x3_0000);
    f.write_all_at(&1u16.to_le_bytes(), 77).unwrap();
    assert_corrupt_says(&open_err(&img), &img, 8, &["say compressed grains with markers", "monolithicSparse"]);
    // The same rule for an extent of a separate twoGbMaxExtentSparse descriptor.
    let split = d.join("w.vmdk");
    let mut o = CreateOptions::new(DiskFormat::TwoGbSparse, 2 * MIB);
    o.split_sectors = 2048;
    create(&split, &o).unwrap().commit().unwrap();
    let s2 = d.join("w-s002.vmdk");
    let f = patch_file(&s2);
    write_u32_at(&f, 8, read_u32_at(&f, 8) | 0x3_0000);
    f.write_all_at(&1u16.to_le_bytes(), 77).unwrap();
    assert_corrupt_says(&open_err(&split), &s2, 8, &["twoGbMaxExtentSparse"]);
}

#[test]
fn a_child_whose_descriptor_size_was_zeroed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (base, _) = our_monosparse(d);
    let cid = Link::open(&base, &OpenOptions::read()).unwrap().descriptor().cid;
    let child = d.join("m-000001.vmdk");
    let mut o = CreateOptions::new(DiskFormat::MonoSparse, 4 * MIB);
    o.parent = Some(Parent { hint: "m.vmdk".into(), cid });
    create(&child, &o).unwrap().commit().unwrap();
    let l = Link::open(&child, &OpenOptions::read()).unwrap();
    assert!(l.names_parent());
    assert_eq!((l.descriptor().parent_cid, l.descriptor().parent_file_name_hint.as_deref()), (cid, Some("m.vmdk")));
    drop(l);
    let f = patch_file(&child);
    let size = read_u64_at(&f, 36);
    write_u64_at(&f, 36, 0);
    assert_corrupt_says(&open_err(&child), &child, 36, &["descriptorSize is 0", "sector 1 holds descriptor text"]);
    // (the link does not open, so no chain can take it for a lone base)
    write_u64_at(&f, 36, size);
    write_u64_at(&f, 28, 0);
    assert_corrupt_says(&open_err(&child), &child, 28, &["descriptorOffset is 0"]);
    write_u64_at(&f, 28, 1);
    assert!(Link::open(&child, &OpenOptions::read()).unwrap().names_parent());
}

// ---------------------------------------------------------------------------------------------
// One stream model: random access and the pipe agree, or both refuse.

/// The whole disk through random access (`Link::open`, `read_at`).
fn random_access(p: &Path) -> Result<Vec<u8>, Error> {
    let link = Link::open(p, &OpenOptions::read())?;
    let mut v = vec![0u8; link.capacity() as usize];
    for (i, chunk) in v.chunks_mut(MIB as usize).enumerate() {
        link.read_at(chunk, i as u64 * MIB)?;
    }
    Ok(v)
}

/// The whole disk through the sequential reader, from a pipe over the file.
fn piped(p: &Path) -> Result<Vec<u8>, Error> {
    StreamReader::new(Pipe::new(File::open(p).unwrap(), p), p)?.read_to_vec()
}

/// Reads `p` both ways: the same bytes from both (returned), or an error from both (returned,
/// random access first).
#[track_caller]
fn both_ways(p: &Path, what: &str) -> Result<Vec<u8>, Box<(Error, Error)>> {
    match (random_access(p), piped(p)) {
        (Ok(a), Ok(b)) => {
            assert_same(&a, &b, &format!("{what}: random access and pipe"));
            Ok(a)
        }
        (Err(a), Err(b)) => Err(Box::new((a, b))),
        (a, b) => panic!(
            "{what}: the readers disagree: random access {}, pipe {}",
            a.map(|_| "reads".to_string()).unwrap_or_else(|e| e.to_string()),
            b.map(|_| "reads".to_string()).unwrap_or_else(|e| e.to_string())
        ),
    }
}

/// Both readers refuse `p`; random access names `offset` of `p` (when given), and both messages
/// contain `word`.
#[track_caller]
fn refused_by_both(p: &Path, what: &str, offset: Option<u64>, word: &str) {
    let (a, b) = *both_ways(p, what).err().unwrap_or_else(|| panic!("{what}: both readers accepted it"));
    if let Some(o) = offset {
        assert_corrupt(&a, p, Some(o));
    }
    for e in [&a, &b] {
        assert!(e.to_string().contains(word), "{what}: {word:?} missing from {e}");
    }
}

fn patched(src: &Path, dst: &Path, f: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut b = std::fs::read(src).unwrap();
    f(&mut b);
    std::fs::write(dst, &b).unwrap();
    dst.to_path_buf()
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Byte offset of the first metadata marker of `kind` after overHead in one of our streams.
fn marker_of(b: &[u8], kind: u32) -> usize {
    let mut pos = le64(b, 64) as usize * 512;
    loop {
        let (val, size, ty) = (
            le64(b, pos),
            u32::from_le_bytes(b[pos + 8..pos + 12].try_into().unwrap()),
            u32::from_le_bytes(b[pos + 12..pos + 16].try_into().unwrap()),
        );
        if size != 0 {
            pos += (12 + size as usize).div_ceil(512) * 512;
        } else if ty == kind {
            return pos;
        } else {
            pos += 512 + val as usize * 512;
        }
    }
}

#[test]
fn streams_read_the_same_both_ways_or_are_refused_by_both() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 34 MiB: two grain tables; data in both, with zero runs.
    let mut data = vec![0u8; (34 * MIB) as usize];
    data[..(3 * MIB) as usize].copy_from_slice(&pattern(3 * MIB, 31));
    data[(33 * MIB) as usize..].copy_from_slice(&pattern(MIB, 32));
    let raw = d.join("src.raw");
    write_raw_sparse(&raw, &data);
    let cap = data.len() as u64 / 512;

    let mut streams: Vec<(PathBuf, &str)> = Vec::new();
    let ours = d.join("ours.vmdk");
    our_stream(&ours, &data);
    streams.push((ours.clone(), "ours (directory at the end, footer)"));
    let hand = d.join("hand.vmdk");
    let grains: Vec<(u64, Vec<u8>)> =
        data.chunks(64 << 10).enumerate().filter(|(_, c)| !is_zero(c)).map(|(i, c)| (i as u64, c.to_vec())).collect();
    make_stream(&hand, cap, &grains, false);
    streams.push((hand.clone(), "open-vmdk layout (tables up front)"));
    let qemu = d.join("qemu.vmdk");
    if qemu_stream(&raw, &qemu).is_some() {
        streams.push((qemu.clone(), "qemu-made"));
    }
    for (s, what) in &streams {
        assert_same(&both_ways(s, what).unwrap_or_else(|e| panic!("{what}: {} / {}", e.0, e.1)), &data, what);
    }

    for (s, what) in &streams {
        let b = std::fs::read(s).unwrap();
        let has_footer = le64(&b, 56) == u64::MAX;
        let footer = b.len() - 1024;
        let v = |n: &str| d.join(format!("{}-{n}.vmdk", s.file_stem().unwrap().to_string_lossy()));

        // The embedded descriptor's extent maps less than the header's capacity.
        let text = format!("RW {cap} SPARSE");
        let p = patched(s, &v("extent"), |b| {
            let at = b.windows(text.len()).position(|w| w == text.as_bytes()).unwrap();
            b[at..at + text.len()].copy_from_slice(format!("RW {} SPARSE", cap - 128).as_bytes());
        });
        refused_by_both(&p, &format!("{what}, extent size"), Some(12), "embedded descriptor's extents");
        // The header's capacity changed (header and footer alike): the descriptor disagrees.
        let p = patched(s, &v("capacity"), |b| {
            b[12..20].copy_from_slice(&(cap + 128).to_le_bytes());
            if has_footer {
                b[footer + 12..footer + 20].copy_from_slice(&(cap + 128).to_le_bytes());
            }
        });
        refused_by_both(&p, &format!("{what}, capacity"), Some(12), "capacity");
        // Table sizes: halved and doubled entries per table.
        for gtes in [256u32, 1024] {
            let p = patched(s, &v(&format!("gtes{gtes}")), |b| {
                put32(b, 44, gtes);
                if has_footer {
                    put32(b, footer + 44, gtes);
                }
            });
            match both_ways(&p, &format!("{what}, {gtes} entries per table")) {
                Ok(got) => assert_same(&got, &data, &format!("{what}, {gtes} entries per table")),
                Err(e) => assert!(matches!(e.0, Error::Corrupt { .. }), "{:?}", e.0),
            }
        }
        // Not whole sectors: 100 bytes more, 100 bytes less.
        let p = patched(s, &v("long"), |b| b.extend_from_slice(&[0u8; 100]));
        refused_by_both(&p, &format!("{what}, 100 bytes longer"), Some(b.len() as u64 + 100), "");
        let p = patched(s, &v("short"), |b| b.truncate(b.len() - 100));
        refused_by_both(&p, &format!("{what}, 100 bytes shorter"), None, "truncated");
        // A blank descriptor, and a descriptor the header no longer declares.
        let p = patched(s, &v("blank"), |b| b[512..21 * 512].fill(0));
        refused_by_both(&p, &format!("{what}, blank descriptor"), Some(512), "blank");
        let p = patched(s, &v("undeclared"), |b| b[28..36].fill(0));
        refused_by_both(&p, &format!("{what}, descriptorOffset 0"), Some(28), "descriptorOffset is 0");
        if has_footer {
            // A grain table marker that says two tables, a directory marker that says two sectors,
            // a footer naming a directory one sector off.
            let gt = marker_of(&b, 1);
            let p = patched(s, &v("gtmarker"), |b| b[gt..gt + 8].copy_from_slice(&8u64.to_le_bytes()));
            refused_by_both(&p, &format!("{what}, grain table marker"), None, "grain table marker");
            let gd = marker_of(&b, 2);
            let p = patched(s, &v("gdmarker"), |b| b[gd..gd + 8].copy_from_slice(&2u64.to_le_bytes()));
            refused_by_both(&p, &format!("{what}, directory marker"), Some(gd as u64), "grain directory marker");
            let p = patched(s, &v("footergd"), |b| {
                let g = le64(b, footer + 56) + 1;
                b[footer + 56..footer + 64].copy_from_slice(&g.to_le_bytes());
            });
            refused_by_both(&p, &format!("{what}, footer directory offset"), None, "grain directory");
        }
    }

    // The blank-descriptor file of 65,187 bytes: a stream header, nothing else, not whole sectors.
    let b = std::fs::read(&ours).unwrap();
    let p = patched(&ours, &d.join("blank65187.vmdk"), |f| {
        f.truncate(65_187);
        f[512..].fill(0);
    });
    assert_eq!(b.len() % 512, 0);
    refused_by_both(&p, "blank 65,187-byte stream", Some(65_187), "truncated");
}

// ---------------------------------------------------------------------------------------------
// Bounded cost: nothing is allocated from a header field beyond what the file really holds.

/// A file of `len` bytes (a hole) holding only `head` at offset 0.
fn sparse_file(p: &Path, len: u64, head: &[u8]) {
    let f = File::create(p).unwrap();
    f.set_len(len).unwrap();
    f.write_all_at(head, 0).unwrap();
}

#[test]
fn a_huge_sparse_file_with_a_tiny_payload_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Hosted sparse: a directory of 2^31 entries (8 GiB) at sector 1, inside a 9 GiB file that
    // holds 512 real bytes.
    let gdes = 1u64 << 31;
    let mut h = vmdk::extent::kdmv::Layout::plan(2048, 128, 0).header;
    h.capacity = gdes * 512 * 128;
    h.rgd_offset = 0;
    h.flags = vmdk::extent::kdmv::FLAG_NEWLINE_TEST;
    h.gd_offset = 1;
    h.overhead = 1 + gdes * 4 / 512;
    let p = d.join("huge.vmdk");
    sparse_file(&p, 9 * GIB, &h.to_bytes());
    for opts in [OpenOptions::read(), OpenOptions::write()] {
        let e = cheaply("hosted sparse", || Link::open(&p, &opts)).unwrap_err();
        assert_corrupt_says(&e, &p, 56, &["more than the file really holds", "8589934592 bytes"]);
    }
    // The same shape as a stream with its directory in the header.
    let mut s = h.clone();
    s.version = 3;
    s.flags |= 0x3_0000;
    s.compress_algorithm = 1;
    let p = d.join("huge-stream.vmdk");
    sparse_file(&p, 9 * GIB, &s.to_bytes());
    let e = cheaply("stream", || Link::open(&p, &OpenOptions::read())).unwrap_err();
    assert_corrupt_says(&e, &p, 56, &["more than the file really holds"]);
    // COWD with 512-entry tables (Workstation 3 style): 2^23 directory entries (32 MiB).
    let mut c = vmdk::extent::cowd::CowdHeader::new(u32::MAX, 1, None).to_bytes();
    c[4..8].copy_from_slice(&3u32.to_le_bytes());
    c[24..28].copy_from_slice(&(u32::MAX.div_ceil(512)).to_le_bytes());
    let p = d.join("huge-delta.vmdk");
    sparse_file(&p, 9 * GIB, &c);
    let e = cheaply("cowd", || Link::open(&p, &OpenOptions::read())).unwrap_err();
    assert_corrupt_says(&e, &p, 20, &["more than the file really holds"]);
    // seSparse: 2^25 tables (a 256 MiB directory).
    let mut se = vec![0u8; 1024];
    let put = |b: &mut Vec<u8>, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    for (at, v) in [(0, 0xCAFE_BABE), (8, 0x2_0000_0001), (16, 1u64 << 40), (24, 8), (32, 64), (80, 1), (88, 1)] {
        put(&mut se, at, v);
    }
    for (at, v) in [(128, 2), (136, 1 << 19), (144, 1 << 20), (152, 64), (192, 1 << 21), (200, 64)] {
        put(&mut se, at, v);
    }
    put(&mut se, 512, 0xCAFE_CAFE);
    let p = d.join("huge-sesparse.vmdk");
    sparse_file(&p, 9 * GIB, &se);
    let e = cheaply("sesparse", || Link::open(&p, &OpenOptions::read())).unwrap_err();
    assert_corrupt_says(&e, &p, 128, &["more than the file really holds"]);
}

// ---------------------------------------------------------------------------------------------
// A flat extent that is (or becomes) shorter than the descriptor says.

#[test]
fn a_truncated_flat_extent_is_an_error_in_the_map_and_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (fmt, flat) in [(DiskFormat::MonoFlat, "f-flat.vmdk"), (DiskFormat::Thin, "f-flat.vmdk")] {
        let disk = d.join("f.vmdk");
        let _ = std::fs::remove_file(&disk);
        let _ = std::fs::remove_file(d.join(flat));
        let nd = create(&disk, &CreateOptions::new(fmt, 4 * MIB)).unwrap();
        nd.link().write_at(&pattern(MIB, 3), 0).unwrap();
        nd.link().write_at(&pattern(MIB, 4), 3 * MIB).unwrap();
        nd.commit().unwrap();
        let flat = d.join(flat);
        let link = Link::open(&disk, &OpenOptions::read()).unwrap();
        assert!(link.map(0, 4 * MIB).is_ok());
        // Cut under the open link.
        let cut = 2 * MIB + 100;
        File::options().write(true).open(&flat).unwrap().set_len(cut).unwrap();
        let e = link.map(0, 4 * MIB).unwrap_err();
        assert_corrupt_says(&e, &flat, cut, &["truncated", &(4 * MIB).to_string()]);
        assert!(link.map(0, MIB).is_ok(), "the part still in the file maps");
        let e = link.read_at(&mut vec![0u8; 4096], 3 * MIB).unwrap_err();
        assert!(
            matches!(&e, Error::Corrupt { path, .. } if path == &flat) && e.to_string().contains("truncated"),
            "{e}"
        );
        drop(link);
        // Opened again: refused at open, naming where the file ends.
        assert_corrupt_says(&open_err(&disk), &flat, cut, &["truncated"]);
    }
    // A raw image truncated under an open link.
    let raw = d.join("r.img");
    std::fs::write(&raw, pattern(2 * MIB, 5)).unwrap();
    let link = Link::open(&raw, &OpenOptions::read()).unwrap();
    File::options().write(true).open(&raw).unwrap().set_len(MIB).unwrap();
    assert_corrupt_says(&link.map(0, 2 * MIB).unwrap_err(), &raw, MIB, &["truncated"]);
}

// ---------------------------------------------------------------------------------------------
// Error wording names the real cause.

#[test]
fn the_newline_field_error_names_the_real_cause() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = our_monosparse(dir.path());
    let f = patch_file(&img);
    f.write_all_at(&[0, 0, 0, 0], 73).unwrap();
    let e = open_err(&img);
    assert_corrupt_says(&e, &img, 73, &["missing (all zero)", "0A 20 0D 0A"]);
    assert!(!e.to_string().contains("CR/LF"), "{e}");
    f.write_all_at(b"\n \n\n", 73).unwrap();
    assert_corrupt_says(&open_err(&img), &img, 73, &["CR/LF translation", "CR LF became LF"]);
    f.write_all_at(b"abcd", 73).unwrap();
    let e = open_err(&img);
    assert_corrupt_says(&e, &img, 73, &["61, 62, 63, 64", "damaged"]);
    assert!(!e.to_string().contains("CR/LF"), "{e}");
    f.write_all_at(b"\n \r\n", 73).unwrap();
    assert!(Link::open(&img, &OpenOptions::read()).is_ok());
}
