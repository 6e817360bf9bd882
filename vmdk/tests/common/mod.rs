//! Helpers shared by the integration tests: a seeded generator, test patterns, interval sets,
//! qemu-img plumbing and raw header patching.

#![allow(dead_code)]

pub mod counting;
#[path = "../../../vmkfs/tests/common/portable.rs"]
mod portable;
pub use portable::*;

use std::fs::{File, OpenOptions as FsOpen};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use vmdk::create::{create, CreateOptions, DiskFormat};
use vmdk::{AllocMap, Error, Link, OpenOptions, State};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;
pub const GIB: u64 = 1024 * MIB;

/// A test pattern of `len` bytes: random data runs, zero runs (some spanning whole grains, some
/// tiny), lone non-zero bytes inside zero runs, all with unaligned boundaries.
pub fn pattern(len: u64, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut v = vec![0u8; len as usize];
    let mut pos = 0u64;
    while pos < len {
        let kind = rng.range(0, 9);
        let n = match kind {
            0..=3 => rng.range(1, 150_000),          // data
            4..=5 => rng.range(1, 3_000),            // short zero gap (inside a grain)
            6..=7 => rng.range(64 * KIB, 600 * KIB), // long zero run (whole grains)
            _ => rng.range(1_000, 100_000),          // zeros with a lone byte
        }
        .min(len - pos);
        let r = &mut v[pos as usize..(pos + n) as usize];
        match kind {
            0..=3 => rng.fill_nonzero(r),
            8 => {
                let at = rng.range(0, n - 1) as usize;
                r[at] = 0x5a;
            }
            _ => {}
        }
        pos += n;
    }
    v
}

/// Writes `data` to a new raw file, leaving holes where it is zero (per 4 KiB block).
pub fn write_raw_sparse(path: &Path, data: &[u8]) {
    let f = File::create(path).unwrap();
    f.set_len(data.len() as u64).unwrap();
    for (i, chunk) in data.chunks(4096).enumerate() {
        if !is_zero(chunk) {
            f.write_all_at(chunk, i as u64 * 4096).unwrap();
        }
    }
}

/// Reads the whole link.
pub fn read_all(link: &Link) -> Vec<u8> {
    let mut v = vec![0u8; link.capacity() as usize];
    for (i, chunk) in v.chunks_mut(MIB as usize).enumerate() {
        link.read_at(chunk, i as u64 * MIB).unwrap();
    }
    v
}

/// Asserts two buffers are equal, reporting the first difference instead of dumping megabytes.
#[track_caller]
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    if got == want {
        return; // memcmp: fast even in debug builds
    }
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i} (0x{i:x}): got {:#04x}, want {:#04x}; {} bytes differ",
            got[i],
            want[i],
            got.iter().zip(want).filter(|(a, b)| a != b).count()
        );
    }
}

/// True when every byte is zero (compared a page at a time, fast in debug builds).
pub fn is_zero(s: &[u8]) -> bool {
    static ZEROS: [u8; 4096] = [0; 4096];
    s.chunks(4096).all(|c| c == &ZEROS[..c.len()])
}

/// Sorted, merged half-open intervals `[start, end)`.
pub fn normalize(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.retain(|r| r.1 > r.0);
    v.sort();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if last.1 >= s => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// `a` minus `b` (both normalized interval sets).
pub fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(s, e) in a {
        let mut pos = s;
        for &(bs, be) in b {
            if be <= pos || bs >= e {
                continue;
            }
            if bs > pos {
                out.push((pos, bs));
            }
            pos = pos.max(be);
        }
        if pos < e {
            out.push((pos, e));
        }
    }
    normalize(out)
}

/// The intervals of `map` in `state`.
pub fn map_set(map: &AllocMap, state: State) -> Vec<(u64, u64)> {
    normalize(map.runs().iter().filter(|r| r.state == state).map(|r| (r.offset, r.end())).collect())
}

/// Checks that a map covers `[0, len)` contiguously.
#[track_caller]
pub fn assert_map_covers(map: &AllocMap, len: u64) {
    let mut pos = 0;
    for r in map.runs() {
        assert_eq!(r.offset, pos, "map has a gap or overlap at {pos}");
        assert!(r.len > 0);
        pos = r.end();
    }
    assert_eq!(pos, len, "map does not cover the disk");
}

/// The intervals of `unit`-sized blocks of `data` holding a non-zero byte.
pub fn nonzero_blocks(data: &[u8], unit: u64) -> Vec<(u64, u64)> {
    let len = data.len() as u64;
    normalize(
        data.chunks(unit as usize)
            .enumerate()
            .filter(|(_, c)| !is_zero(c))
            .map(|(i, _)| (i as u64 * unit, ((i as u64 + 1) * unit).min(len)))
            .collect(),
    )
}

/// Total bytes of an interval set.
pub fn set_bytes(v: &[(u64, u64)]) -> u64 {
    v.iter().map(|r| r.1 - r.0).sum()
}

/// True when `qemu-img` can be run.
pub fn have_qemu() -> bool {
    static HAVE: OnceLock<bool> = OnceLock::new();
    *HAVE.get_or_init(|| Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// Skips the current test (with a message) when qemu-img is not installed.
#[macro_export]
macro_rules! require_qemu {
    () => {
        if !$crate::common::have_qemu() {
            eprintln!("qemu-img not found: skipping {}", module_path!());
            return;
        }
    };
}

/// Runs qemu-img with `args` and returns its output (not checked).
pub fn qemu_img(args: &[&str]) -> Output {
    Command::new("qemu-img").args(args).output().expect("run qemu-img")
}

/// Runs qemu-img and panics with its stderr unless it succeeds; returns stdout.
#[track_caller]
pub fn qemu_ok(args: &[&str]) -> String {
    let o = qemu_img(args);
    assert!(
        o.status.success(),
        "qemu-img {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The bytes qemu reports as `data && !zero` in `qemu-img map --output=json`.
pub fn qemu_data_set(image: &Path) -> Vec<(u64, u64)> {
    let out = qemu_ok(&["map", "--output=json", "-f", "vmdk", image.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("qemu-img map JSON");
    let mut set = Vec::new();
    for r in v.as_array().expect("map is an array") {
        let start = r["start"].as_u64().unwrap();
        let len = r["length"].as_u64().unwrap();
        if r["data"].as_bool().unwrap() && !r["zero"].as_bool().unwrap() {
            set.push((start, start + len));
        }
    }
    normalize(set)
}

/// Opens a file for patching.
pub fn patch_file(path: &Path) -> File {
    FsOpen::new().read(true).write(true).open(path).unwrap()
}

pub fn read_u32_at(f: &File, off: u64) -> u32 {
    let mut b = [0u8; 4];
    f.read_exact_at(&mut b, off).unwrap();
    u32::from_le_bytes(b)
}

pub fn read_u64_at(f: &File, off: u64) -> u64 {
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, off).unwrap();
    u64::from_le_bytes(b)
}

pub fn write_u32_at(f: &File, off: u64, v: u32) {
    f.write_all_at(&v.to_le_bytes(), off).unwrap();
}

pub fn write_u64_at(f: &File, off: u64, v: u64) {
    f.write_all_at(&v.to_le_bytes(), off).unwrap();
}

/// Fields of a KDMV header read from a file (byte offsets from the fact sheet).
#[derive(Debug, Clone, Copy)]
pub struct Kdmv {
    pub capacity: u64,
    pub grain: u64,
    pub gtes: u64,
    pub rgd: u64,
    pub gd: u64,
    pub overhead: u64,
}

pub fn kdmv(f: &File) -> Kdmv {
    Kdmv {
        capacity: read_u64_at(f, 12),
        grain: read_u64_at(f, 20),
        gtes: read_u32_at(f, 44) as u64,
        rgd: read_u64_at(f, 48),
        gd: read_u64_at(f, 56),
        overhead: read_u64_at(f, 64),
    }
}

/// Byte offset of the (primary) grain table entry for grain `g` of a KDMV file.
pub fn gte_offset(f: &File, g: u64) -> u64 {
    let h = kdmv(f);
    let gde = read_u32_at(f, h.gd * 512 + (g / h.gtes) * 4) as u64;
    assert!(gde > 1, "grain table of grain {g} is not allocated");
    gde * 512 + (g % h.gtes) * 4
}

/// Writes `data` at `base` through `link` in chunks of random (unaligned) size, in disk order; all-zero
/// chunks are written too, except those `skip(disk_offset, chunk)` says to leave alone. Returns the
/// written ranges (disk offsets).
pub fn write_in_chunks(
    link: &Link,
    data: &[u8],
    base: u64,
    rng: &mut Rng,
    max_chunk: u64,
    mut skip: impl FnMut(u64, &[u8]) -> bool,
) -> Vec<(u64, u64)> {
    let mut written = Vec::new();
    let mut pos = 0u64;
    let len = data.len() as u64;
    while pos < len {
        let n = rng.range(1, max_chunk).min(len - pos);
        let chunk = &data[pos as usize..(pos + n) as usize];
        if !skip(base + pos, chunk) {
            link.write_at(chunk, base + pos).unwrap();
            written.push((base + pos, base + pos + n));
        }
        pos += n;
    }
    normalize(written)
}

/// Builds a streamOptimized file by hand (no qemu needed). `grains` are `(grain number, bytes)`
/// with 64 KiB grains. With `footer`, the layout is VMware's (grains, GT markers and tables, GD
/// marker and directory, footer, EOS; header says GD_AT_END); without, open-vmdk's (directory and
/// tables right after the descriptor, grains after them, EOS). Returns the byte offset of each
/// grain's marker, in the order given.
pub fn make_stream(path: &Path, capacity_sectors: u64, grains: &[(u64, Vec<u8>)], footer: bool) -> Vec<u64> {
    use flate2::write::ZlibEncoder;
    use std::io::Write;
    use vmdk::extent::kdmv::{SparseHeader, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NEWLINE_TEST, GD_AT_END};
    const GRAIN: u64 = 128;
    let gt_count = capacity_sectors.div_ceil(GRAIN).div_ceil(512);
    let gd_sectors = (gt_count * 4).div_ceil(512);
    let mut out = vec![0u8; 21 * 512];
    let desc = format!(
        "# Disk DescriptorFile\nversion=1\nCID=1a2b3c4d\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n# Extent description\nRW {capacity_sectors} SPARSE \"{}\"\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = \"lsilogic\"\n",
        path.file_name().unwrap().to_string_lossy()
    );
    out[512..512 + desc.len()].copy_from_slice(desc.as_bytes());
    let pad = |v: &mut Vec<u8>| v.resize(v.len().div_ceil(512) * 512, 0);
    let mut gts = vec![0u32; (gt_count * 512) as usize];
    let (gd_at, overhead) = if footer {
        (GD_AT_END, 21)
    } else {
        out.resize(((21 + gd_sectors + gt_count * 4) * 512) as usize, 0);
        (21, 21 + gd_sectors + gt_count * 4)
    };
    let mut markers = Vec::new();
    for (g, data) in grains {
        let at = out.len() as u64;
        markers.push(at);
        let mut z = ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(data).unwrap();
        let comp = z.finish().unwrap();
        out.extend_from_slice(&(g * GRAIN).to_le_bytes());
        out.extend_from_slice(&(comp.len() as u32).to_le_bytes());
        out.extend_from_slice(&comp);
        pad(&mut out);
        gts[*g as usize] = (at / 512) as u32;
    }
    let mut gd = vec![0u32; gt_count as usize];
    let header = |gd_offset: u64| SparseHeader {
        version: 3,
        flags: FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
        capacity: capacity_sectors,
        grain_size: GRAIN,
        descriptor_offset: 1,
        descriptor_size: 20,
        num_gtes_per_gt: 512,
        rgd_offset: 0,
        gd_offset,
        overhead,
        unclean_shutdown: false,
        compress_algorithm: 1,
    };
    let marker = |num: u64, ty: u32| {
        let mut m = vec![0u8; 512];
        m[..8].copy_from_slice(&num.to_le_bytes());
        m[12..16].copy_from_slice(&ty.to_le_bytes());
        m
    };
    if footer {
        for (i, t) in gts.chunks(512).enumerate() {
            if t.iter().all(|&e| e == 0) {
                continue; // VMware leaves out empty tables
            }
            out.extend_from_slice(&marker(4, 1));
            gd[i] = (out.len() / 512) as u32;
            for e in t {
                out.extend_from_slice(&e.to_le_bytes());
            }
        }
        out.extend_from_slice(&marker(gd_sectors, 2));
        let gd_sector = (out.len() / 512) as u64;
        for e in &gd {
            out.extend_from_slice(&e.to_le_bytes());
        }
        pad(&mut out);
        out.extend_from_slice(&marker(1, 3));
        out.extend_from_slice(&header(gd_sector).to_bytes());
    } else {
        for i in 0..gt_count {
            gd[i as usize] = (21 + gd_sectors + i * 4) as u32;
        }
        for (i, e) in gd.iter().enumerate() {
            out[21 * 512 + i * 4..21 * 512 + i * 4 + 4].copy_from_slice(&e.to_le_bytes());
        }
        for (i, e) in gts.iter().enumerate() {
            let at = ((21 + gd_sectors) * 512) as usize + i * 4;
            out[at..at + 4].copy_from_slice(&e.to_le_bytes());
        }
    }
    out.extend_from_slice(&[0u8; 512]); // EOS
    out[..512].copy_from_slice(&header(gd_at).to_bytes());
    std::fs::write(path, &out).unwrap();
    markers
}

/// Checks that the redundant grain directory's tables equal the primary ones, entry for entry (as
/// VirtualBox does on open). Returns the number of allocated grains.
#[track_caller]
pub fn assert_redundant_tables_match(path: &Path) -> u64 {
    let f = File::open(path).unwrap();
    let h = kdmv(&f);
    assert!(h.rgd != 0, "{}: no redundant directory", path.display());
    let count = h.capacity.div_ceil(h.grain * h.gtes);
    let mut allocated = 0;
    for i in 0..count {
        let gt = read_u32_at(&f, h.gd * 512 + i * 4) as u64;
        let rgt = read_u32_at(&f, h.rgd * 512 + i * 4) as u64;
        assert!(gt > 1 && rgt > 1 && gt != rgt, "{}: directory entry {i}: {gt} / {rgt}", path.display());
        let mut a = vec![0u8; (h.gtes * 4) as usize];
        let mut b = a.clone();
        f.read_exact_at(&mut a, gt * 512).unwrap();
        f.read_exact_at(&mut b, rgt * 512).unwrap();
        assert!(a == b, "{}: grain table {i} differs from its redundant copy", path.display());
        allocated += a.chunks(4).filter(|e| u32::from_le_bytes([e[0], e[1], e[2], e[3]]) > 1).count() as u64;
    }
    allocated
}

/// Asserts `e` is `Error::Corrupt` about `file` at byte `offset` (when given), and that the message
/// names both.
#[track_caller]
pub fn assert_corrupt(e: &Error, file: &Path, offset: Option<u64>) -> u64 {
    let Error::Corrupt { path, offset: at, .. } = e else {
        panic!("expected Error::Corrupt, got {e:?}");
    };
    assert_eq!(path, file, "error names the wrong file: {e}");
    if let Some(o) = offset {
        assert_eq!(*at, o, "error names the wrong offset: {e}");
    }
    let msg = e.to_string();
    let name = file.file_name().unwrap().to_string_lossy();
    assert!(msg.contains(&*name), "message does not name {name}: {msg}");
    assert!(msg.contains(&at.to_string()), "message does not name offset {at}: {msg}");
    *at
}

/// [`assert_corrupt`], and the message holds each of `words`.
#[track_caller]
pub fn assert_corrupt_says(e: &Error, file: &Path, offset: u64, words: &[&str]) {
    assert_corrupt(e, file, Some(offset));
    let msg = e.to_string();
    for w in words {
        assert!(msg.contains(w), "message lacks {w:?}: {msg}");
    }
}

/// Reads `n` random unaligned windows of 1 to `max_len` bytes through `read` (a seeded stream,
/// `(seed, n, max_len)`) and compares each with `want`.
#[track_caller]
pub fn random_reads(
    read: impl Fn(&mut [u8], u64) -> vmdk::Result<()>,
    want: &[u8],
    (seed, n, max_len): (u64, usize, u64),
    what: &str,
) {
    let mut rng = Rng::new(seed);
    let cap = want.len() as u64;
    for _ in 0..n {
        let off = rng.range(0, cap - 1);
        let len = rng.range(1, max_len).min(cap - off);
        let mut buf = vec![0xeeu8; len as usize];
        read(&mut buf, off).unwrap_or_else(|e| panic!("{what}: read of {len} bytes at {off}: {e}"));
        assert_same(&buf, &want[off as usize..(off + len) as usize], &format!("{what}: read of {len} bytes at {off}"));
    }
}

/// The error opening `p`, which must not open.
#[track_caller]
pub fn open_err(p: &Path) -> Error {
    Link::open(p, &OpenOptions::read()).expect_err("a damaged file must not open")
}

/// A committed monosparse disk of 4 MiB with data in grains 0, 1 and 5.
pub fn our_monosparse(dir: &Path) -> (PathBuf, Vec<u8>) {
    let img = dir.join("m.vmdk");
    let nd = create(&img, &CreateOptions::new(DiskFormat::MonoSparse, 4 * MIB)).unwrap();
    let mut data = vec![0u8; (4 * MIB) as usize];
    Rng::new(1).fill_nonzero(&mut data[..(128 * KIB) as usize]);
    Rng::new(2).fill_nonzero(&mut data[(5 * 64 * KIB) as usize..(6 * 64 * KIB) as usize]);
    nd.link().write_at(&data, 0).unwrap();
    nd.commit().unwrap();
    (img, data)
}
