//! Bounded mutation campaign (issue 10): seeded mutants of every disk format `vmkfs` reads, run
//! through `vmkfs -x check`, `--info` and a whole-disk `--read-at 0` under `prlimit --as=2 GiB`
//! with a 20 s timeout per command. Required: no panic, no timeout, no death by a signal, and no
//! mutant that `-x check` calls clean (exit 0) while `--info` or `--read-at` refuses it.
//!
//! Seeds, made with vmkfs itself, with `qemu-img` and with `fuzz/seeds.sh` (its hand-built
//! VMware-layout stream and seSparse extent; the script runs on a copy in a temporary folder, so
//! the worktree is not touched): monolithicSparse and twoGbMaxExtentSparse (vmkfs, qemu),
//! streamOptimized (vmkfs, qemu, VMware layout with a footer), vmfs zeroedthick and thin
//! (descriptor + flat), monolithicFlat (qemu), twoGbMaxExtentFlat (vmkfs), a COWD delta with its
//! vmfsSparse descriptor, a hosted monolithicSparse child, an ESX 2 `.REDO` log, an seSparse child
//! and a raw device mapping (descriptor + mapping record over a file).
//!
//! Mutations: bit flips and byte sets in headers and metadata; field-targeted edits (magic,
//! version, flags, capacity, grain size, directory and descriptor offsets and sizes, table and
//! directory entries, stream markers and footers, every header field of COWD and seSparse);
//! descriptor edits (lines deleted, duplicated, swapped or inserted; createType, CID, parentCID,
//! parentFileNameHint, extent access, size, type, file and offset; truncation, CRLF, byte flips),
//! on text descriptors and on the embedded descriptors of sparse and stream files; truncations and
//! extensions of every file.
//!
//! Knobs: `VMKFS_MUTANTS` (default 3000), `VMKFS_MUTATION_SEED` (default fixed, printed),
//! `VMKFS_MUTANT` (run one mutant index only, to reproduce), `VMKFS_MUTATION_THREADS` (default 2).
//! Failing mutants are saved with a `MUTATION.txt` under `target/mutation-failures/`.
//! A disk whose `--info` capacity exceeds 1 GiB (a mutant can legitimately describe a huge ZERO
//! extent) is read in its first and last 64 MiB instead of whole; the summary counts those.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const SEED_CAP: u64 = 4 * MIB;
const DEFAULT_SEED: u64 = 0x5EED_0010_CAFE_F00D;
const TIMEOUT: Duration = Duration::from_secs(20);
const ADDRESS_SPACE: &str = "--as=2147483648";
/// Disks larger than this are read at both ends only.
const WHOLE_READ_LIMIT: u64 = GIB;

// ---------------------------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------------------------

/// How a file of a seed is laid out (what the targeted mutations know about it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Hosted sparse extent (`KDMV`), maybe with an embedded descriptor.
    Kdmv,
    /// streamOptimized (`KDMV` with markers).
    Stream,
    /// COWD (vmfsSparse delta, ESX 2 REDO log).
    Cowd,
    /// seSparse extent.
    SeSparse,
    /// Text descriptor.
    Descriptor,
    /// Flat data.
    Flat,
    /// Raw device mapping record.
    Rdm,
}

impl Kind {
    /// How often files of this kind are picked for mutation.
    fn weight(self) -> u64 {
        match self {
            Kind::Flat => 1,
            Kind::Descriptor | Kind::Rdm => 3,
            _ => 4,
        }
    }
}

#[derive(Debug, Clone)]
struct Seed {
    name: &'static str,
    dir: PathBuf,
    /// The path given to the commands.
    target: String,
    /// The files mutations may touch (others are only linked into the mutant's folder).
    files: Vec<(String, Kind)>,
}

/// A little data in a disk: 256 KiB at the start, 64 KiB across a grain boundary, 128 KiB at
/// the end, a block of written zeros.
fn light_data(dir: &Path, disk: &str, cap: u64, seed: u64) {
    write_pattern(dir, disk, 0, 256 * KIB as usize, seed);
    write_pattern(dir, disk, MIB + 60 * KIB, 64 * KIB as usize, seed);
    write_pattern(dir, disk, cap - 128 * KIB, 128 * KIB as usize, seed);
    write_at(dir, disk, 128 * KIB, &vec![0u8; 64 * KIB as usize]);
}

/// The same content as a raw image (for qemu-img to convert).
fn light_raw(path: &Path, cap: u64, seed: u64) {
    let mut v = vec![0u8; cap as usize];
    for (off, len) in [(0, 256 * KIB), (MIB + 60 * KIB, 64 * KIB), (cap - 128 * KIB, 128 * KIB)] {
        v[off as usize..(off + len) as usize].copy_from_slice(&pattern(off, len as usize, seed));
    }
    v[128 * KIB as usize..192 * KIB as usize].fill(0);
    std::fs::write(path, v).unwrap();
}

fn qemu_convert(dir: &Path, subformat: &str, out: &str) {
    light_raw(&dir.join("src.raw"), SEED_CAP, 21);
    let o = qemu_img(
        dir,
        &["convert", "-q", "-f", "raw", "-O", "vmdk", "-o", &format!("subformat={subformat}"), "src.raw", out],
    );
    assert!(o.success(), "{}", o.describe());
    std::fs::remove_file(dir.join("src.raw")).unwrap();
}

fn files(v: &[(&str, Kind)]) -> Vec<(String, Kind)> {
    v.iter().map(|(n, k)| (n.to_string(), *k)).collect()
}

/// Runs `fuzz/seeds.sh` on a copy in `work` (its corpus lands there); returns the corpus folder.
fn fuzz_seeds(work: &Path) -> Option<PathBuf> {
    if !have_tool("python3") {
        skip("python3 not installed: the seeds from fuzz/seeds.sh (VMware-layout stream, seSparse) are left out");
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds.sh");
    std::fs::create_dir_all(work).unwrap();
    std::fs::copy(&script, work.join("seeds.sh")).unwrap();
    let o = run(
        {
            let mut c = Command::new("bash");
            c.arg(work.join("seeds.sh")).current_dir(work);
            c
        },
        None,
        Some(Duration::from_secs(120)),
    );
    assert!(o.success(), "fuzz/seeds.sh: {}", o.describe());
    Some(work.join("corpus"))
}

fn build_seeds(root: &Path) -> Vec<Seed> {
    let qemu = have_tool("qemu-img");
    if !qemu {
        skip("qemu-img not installed: the qemu-made seeds are left out");
    }
    let corpus = fuzz_seeds(&root.join("fuzz-seeds"));
    let mut seeds = Vec::new();
    let mut add = |name: &'static str, target: &str, fs: &[(&str, Kind)], build: &dyn Fn(&Path)| {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        build(&dir);
        seeds.push(Seed { name, dir, target: target.into(), files: files(fs) });
    };
    let vmkfs_disk = |format: &'static str| {
        move |d: &Path| {
            create_disk(d, "disk.vmdk", format, SEED_CAP);
            light_data(d, "disk.vmdk", SEED_CAP, 20);
        }
    };
    use Kind::*;
    add("monosparse-vmkfs", "disk.vmdk", &[("disk.vmdk", Kdmv)], &vmkfs_disk("monosparse"));
    add(
        "2gbsparse-vmkfs",
        "disk.vmdk",
        &[("disk.vmdk", Descriptor), ("disk-s001.vmdk", Kdmv)],
        &vmkfs_disk("2gbsparse"),
    );
    add("streamoptimized-vmkfs", "disk.vmdk", &[("disk.vmdk", Stream)], &|d: &Path| {
        let src = tempfile::tempdir().unwrap();
        vmkfs_disk("monosparse")(src.path());
        let src = src.path().join("disk.vmdk").display().to_string();
        vmkfs_ok(d, &["-i", &src, "-d", "streamoptimized", "disk.vmdk"]);
    });
    add(
        "vmfs-zeroedthick",
        "disk.vmdk",
        &[("disk.vmdk", Descriptor), ("disk-flat.vmdk", Flat)],
        &vmkfs_disk("zeroedthick"),
    );
    add("vmfs-thin", "disk.vmdk", &[("disk.vmdk", Descriptor), ("disk-flat.vmdk", Flat)], &vmkfs_disk("thin"));
    add("2gbflat-vmkfs", "disk.vmdk", &[("disk.vmdk", Descriptor), ("disk-f001.vmdk", Flat)], &vmkfs_disk("2gbflat"));
    add(
        "cowd-delta",
        "disk-000001.vmdk",
        &[("disk-000001.vmdk", Descriptor), ("disk-000001-delta.vmdk", Cowd)],
        &|d: &Path| {
            vmkfs_disk("thin")(d);
            let s = snapshot(d, "disk.vmdk", false);
            write_pattern(d, &s, 64 * KIB, 128 * KIB as usize, 22);
            write_pattern(d, &s, 3 * MIB, 4 * KIB as usize, 22);
        },
    );
    add("hosted-child", "disk-000001.vmdk", &[("disk-000001.vmdk", Kdmv)], &|d: &Path| {
        vmkfs_disk("monosparse")(d);
        let s = snapshot(d, "disk.vmdk", false);
        write_pattern(d, &s, 64 * KIB, 128 * KIB as usize, 23);
    });
    add("esx2-redo", "disk.vmdk.REDO", &[("disk.vmdk.REDO", Cowd)], &|d: &Path| {
        vmkfs_disk("thin")(d);
        let s = snapshot(d, "disk.vmdk", true);
        write_pattern(d, &s, 64 * KIB, 128 * KIB as usize, 24);
    });
    add("rdm", "map.vmdk", &[("map.vmdk", Descriptor), ("map-rdm.vmdk", Rdm)], &|d: &Path| {
        light_raw(&d.join("dev.img"), SEED_CAP, 25);
        vmkfs_ok(d, &["-r", "dev.img", "map.vmdk"]);
    });
    if qemu {
        add("monosparse-qemu", "disk.vmdk", &[("disk.vmdk", Kdmv)], &|d: &Path| {
            qemu_convert(d, "monolithicSparse", "disk.vmdk")
        });
        add("2gbsparse-qemu", "disk.vmdk", &[("disk.vmdk", Descriptor), ("disk-s001.vmdk", Kdmv)], &|d: &Path| {
            qemu_convert(d, "twoGbMaxExtentSparse", "disk.vmdk")
        });
        add("streamoptimized-qemu", "disk.vmdk", &[("disk.vmdk", Stream)], &|d: &Path| {
            qemu_convert(d, "streamOptimized", "disk.vmdk")
        });
        add("monoflat-qemu", "disk.vmdk", &[("disk.vmdk", Descriptor), ("disk-flat.vmdk", Flat)], &|d: &Path| {
            qemu_convert(d, "monolithicFlat", "disk.vmdk")
        });
    }
    if let Some(corpus) = &corpus {
        add("streamoptimized-vmware", "disk.vmdk", &[("disk.vmdk", Stream)], &|d: &Path| {
            std::fs::copy(corpus.join("stream/seed_vmware_layout.vmdk"), d.join("disk.vmdk")).unwrap();
        });
        add(
            "sesparse-child",
            "disk-000001.vmdk",
            &[("disk-000001.vmdk", Descriptor), ("disk-000001-sesparse.vmdk", SeSparse)],
            &|d: &Path| {
                // The seed extent describes 65536 sectors (32 MiB); its parent is a thin base.
                create_disk(d, "disk.vmdk", "thin", 32 * MIB);
                light_data(d, "disk.vmdk", 32 * MIB, 26);
                std::fs::copy(corpus.join("sesparse/seed_esxi.vmdk"), d.join("disk-000001-sesparse.vmdk")).unwrap();
                let text = format!(
                    "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=5e5e5e5e\nparentCID={}\n\
                     isNativeSnapshot=\"no\"\ncreateType=\"seSparse\"\nparentFileNameHint=\"disk.vmdk\"\n\n\
                     # Extent description\nRW 65536 SESPARSE \"disk-000001-sesparse.vmdk\"\n\n# The Disk Data Base\n#DDB\n\n\
                     ddb.grain = \"8\"\n",
                    cid_of(d, "disk.vmdk")
                );
                std::fs::write(d.join("disk-000001.vmdk"), text).unwrap();
            },
        );
    }
    seeds
}

// ---------------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------------

fn get(b: &[u8], off: usize, width: usize) -> Option<u64> {
    let field = b.get(off..off.checked_add(width)?)?;
    let mut v = [0u8; 8];
    v[..width].copy_from_slice(field);
    Some(u64::from_le_bytes(v))
}

fn put(b: &mut [u8], off: usize, width: usize, value: u64) -> bool {
    match off.checked_add(width).and_then(|end| b.get_mut(off..end)) {
        Some(field) => {
            field.copy_from_slice(&value.to_le_bytes()[..width]);
            true
        }
        None => false,
    }
}

/// Values that break parsers, plus values near `near` (the field's current value).
fn interesting(rng: &mut Rng, near: u64, width: usize) -> u64 {
    let max = if width >= 8 { u64::MAX } else { (1u64 << (width * 8)) - 1 };
    let v = match rng.below(16) {
        0 => 0,
        1 => 1,
        2 => 2,
        3 => max,
        4 => max / 2 + 1,
        5 => near.wrapping_add(1),
        6 => near.wrapping_sub(1),
        7 => near.wrapping_mul(2),
        8 => near / 2,
        9 => near.wrapping_add(1 + rng.below(4096)),
        10 => 1u64 << rng.below(64),
        11 => 0x7F,
        12 => 0xFFFF_FFFF,
        13 => 1 << 32,
        14 => near ^ (1 << rng.below((width * 8) as u64)),
        _ => rng.next_u64(),
    };
    v & max
}

/// Sets the `width`-byte field at `off`; describes the edit.
fn set_field(b: &mut [u8], rng: &mut Rng, name: &str, off: usize, width: usize) -> String {
    let old = get(b, off, width).unwrap_or(0);
    let new = interesting(rng, old, width);
    if put(b, off, width, new) {
        format!("{name} (byte {off}, {width} bytes): {old:#x} -> {new:#x}")
    } else {
        format!("{name} (byte {off}) is past the end: no change")
    }
}

fn bit_flip(b: &mut [u8], rng: &mut Rng, lo: usize, hi: usize) -> String {
    let hi = hi.min(b.len());
    if lo >= hi {
        return "bit flip: empty region, no change".into();
    }
    let off = lo + rng.below((hi - lo) as u64) as usize;
    let bit = rng.below(8);
    b[off] ^= 1 << bit;
    format!("bit {bit} of byte {off} flipped")
}

fn byte_set(b: &mut [u8], rng: &mut Rng, lo: usize, hi: usize) -> String {
    let hi = hi.min(b.len());
    if lo >= hi {
        return "byte set: empty region, no change".into();
    }
    let off = lo + rng.below((hi - lo) as u64) as usize;
    let len = 1 + rng.below(16) as usize;
    let value = *rng.pick(&[0u8, 0xFF, 0x7F, 0x80, 0x20, 0x0A]);
    let end = (off + len).min(b.len());
    b[off..end].fill(value);
    format!("bytes {off}..{end} set to {value:#04x}")
}

/// Truncates at a length chosen near structure boundaries.
fn truncate(b: &mut Vec<u8>, rng: &mut Rng, boundaries: &[u64]) -> String {
    let len = b.len() as u64;
    let at = match rng.below(6) {
        0 => 0,
        1 => len.saturating_sub(1),
        2 => len.saturating_sub(512 * (1 + rng.below(4))),
        3 if !boundaries.is_empty() => {
            let x = *rng.pick(boundaries);
            x.saturating_add(rng.below(3)).saturating_sub(1).min(len.saturating_sub(1))
        }
        _ => rng.below(len.max(1)),
    };
    b.truncate(at as usize);
    format!("truncated from {len} to {at} bytes")
}

fn extend(b: &mut Vec<u8>, rng: &mut Rng) -> String {
    let n = 1 + rng.below(64 * KIB) as usize;
    let fill = rng.below(3);
    let old = b.len();
    for _ in 0..n {
        b.push(match fill {
            0 => 0,
            1 => 0xFF,
            _ => rng.next_u64() as u8,
        });
    }
    format!("extended from {old} by {n} bytes of {}", ["zeros", "0xff", "random bytes"][fill as usize])
}

/// A directory or table entry: `count` entries of `width` bytes at `base`.
fn entry(b: &mut [u8], rng: &mut Rng, name: &str, base: usize, count: usize, width: usize) -> String {
    if count == 0 {
        return format!("{name}: no entries, no change");
    }
    let i = rng.below(count as u64) as usize;
    let off = base.saturating_add(i * width);
    let old = get(b, off, width).unwrap_or(0);
    // Another entry's value (a shared table or grain) or an interesting one.
    let new = if rng.below(4) == 0 {
        let j = rng.below(count as u64) as usize;
        get(b, base.saturating_add(j * width), width).unwrap_or(0)
    } else {
        interesting(rng, old, width)
    };
    if put(b, off, width, new) {
        format!("{name} entry {i} (byte {off}): {old:#x} -> {new:#x}")
    } else {
        format!("{name} entry {i} is past the end: no change")
    }
}

/// Hosted sparse header fields (and the footer copy of a stream, at `base`).
const KDMV_FIELDS: [(&str, usize, usize); 13] = [
    ("magic", 0, 4),
    ("version", 4, 4),
    ("flags", 8, 4),
    ("capacity", 12, 8),
    ("grainSize", 20, 8),
    ("descriptorOffset", 28, 8),
    ("descriptorSize", 36, 8),
    ("numGTEsPerGT", 44, 4),
    ("rgdOffset", 48, 8),
    ("gdOffset", 56, 8),
    ("overHead", 64, 8),
    ("uncleanShutdown", 72, 1),
    ("compressAlgorithm", 77, 2),
];

fn kdmv_field(b: &mut [u8], rng: &mut Rng, base: usize, what: &str) -> String {
    let (name, off, width) = *rng.pick(&KDMV_FIELDS);
    if name == "flags" && rng.below(2) == 0 {
        // One of the meaningful flag bits: newline test, RGD, zeroed GTE, compressed, markers.
        let bit = *rng.pick(&[0u32, 1, 2, 16, 17]);
        let old = get(b, base + off, 4).unwrap_or(0) as u32;
        put(b, base + off, 4, (old ^ (1 << bit)) as u64);
        return format!("{what} flags bit {bit} toggled ({old:#x})");
    }
    format!("{what} {}", set_field(b, rng, name, base + off, width))
}

/// Mutates the embedded descriptor of a sparse or stream file in place (within its area).
fn embedded_descriptor(b: &mut [u8], rng: &mut Rng, names: &[String]) -> Option<String> {
    let h = kdmv(b)?;
    let (start, len) = (h.desc_offset.checked_mul(512)? as usize, h.desc_size.checked_mul(512)? as usize);
    if len == 0 || start.checked_add(len)? > b.len() {
        return None;
    }
    let area = &b[start..start + len];
    let end = area.iter().position(|&c| c == 0).unwrap_or(len);
    let text = String::from_utf8_lossy(&area[..end]).into_owned();
    let (new, what) = mutate_text(&text, rng, names);
    let mut bytes = new.into_bytes();
    bytes.resize(len, 0);
    b[start..start + len].copy_from_slice(&bytes);
    Some(format!("embedded descriptor: {what}"))
}

fn mutate_kdmv(b: &mut Vec<u8>, rng: &mut Rng, names: &[String]) -> String {
    let Some(h) = kdmv(b) else { return bit_flip(b, rng, 0, 512) };
    let grains_per_gt = h.gtes_per_gt.max(1) as u64;
    let gdes = (h.capacity / h.grain.max(1)).div_ceil(grains_per_gt).min(4096) as usize;
    let gd = (h.gd_offset as usize).saturating_mul(512);
    let rgd = (h.rgd_offset as usize).saturating_mul(512);
    let first_gt = get(b, gd, 4).unwrap_or(0) as usize * 512;
    let meta_end = (h.overhead as usize).saturating_mul(512).min(b.len());
    match rng.below(20) {
        0..=3 => kdmv_field(b, rng, 0, "header"),
        4..=5 => entry(b, rng, "grain directory", gd, gdes, 4),
        6 => entry(b, rng, "redundant grain directory", rgd, gdes, 4),
        7..=10 => entry(b, rng, "grain table 0", first_gt, h.gtes_per_gt.min(4096) as usize, 4),
        11..=12 => embedded_descriptor(b, rng, names).unwrap_or_else(|| bit_flip(b, rng, 0, 512)),
        13..=14 => bit_flip(b, rng, 0, meta_end),
        15 => byte_set(b, rng, 0, usize::MAX),
        16..=18 => truncate(b, rng, &[512, gd as u64, rgd as u64, first_gt as u64, meta_end as u64]),
        _ => extend(b, rng),
    }
}

/// Offsets of the markers of a stream, walked from `overhead` (best effort; at most 4096).
fn stream_markers(b: &[u8], overhead: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut pos = overhead;
    while pos + 16 <= b.len() && out.len() < 4096 {
        out.push(pos);
        let value = get(b, pos, 8).unwrap_or(0);
        let size = get(b, pos + 8, 4).unwrap_or(0) as usize;
        let step = if size > 0 {
            (12 + size).div_ceil(512) * 512
        } else {
            if get(b, pos + 12, 4) == Some(0) {
                break; // end of stream
            }
            match usize::try_from(value).ok().and_then(|v| v.checked_mul(512)).and_then(|v| v.checked_add(512)) {
                Some(s) => s,
                None => break,
            }
        };
        pos += step;
    }
    out
}

fn mutate_stream(b: &mut Vec<u8>, rng: &mut Rng, names: &[String]) -> String {
    let Some(h) = kdmv(b) else { return bit_flip(b, rng, 0, 512) };
    let overhead = (h.overhead as usize).saturating_mul(512);
    let markers = stream_markers(b, overhead);
    let footer = b.len().checked_sub(1024).filter(|&f| kdmv(&b[f..]).is_some());
    match rng.below(20) {
        0..=3 => kdmv_field(b, rng, 0, "header"),
        4..=6 => match footer {
            Some(f) => kdmv_field(b, rng, f, "footer"),
            None => kdmv_field(b, rng, 0, "header"),
        },
        7..=10 if !markers.is_empty() => {
            let m = *rng.pick(&markers);
            let (name, off, width) = *rng.pick(&[("value (LBA or sectors)", 0, 8), ("size", 8, 4), ("type", 12, 4)]);
            format!("marker at byte {m}: {}", set_field(b, rng, name, m + off, width))
        }
        11..=12 => embedded_descriptor(b, rng, names).unwrap_or_else(|| bit_flip(b, rng, 0, 512)),
        13..=14 => {
            let lo = if markers.is_empty() { 0 } else { *rng.pick(&markers) };
            bit_flip(b, rng, lo, lo + 512)
        }
        15..=18 => {
            let mut bounds: Vec<u64> = markers.iter().map(|&m| m as u64).collect();
            bounds.push(overhead as u64);
            truncate(b, rng, &bounds)
        }
        _ => extend(b, rng),
    }
}

const COWD_FIELDS: [(&str, usize, usize); 9] = [
    ("magic", 0, 4),
    ("version", 4, 4),
    ("flags", 8, 4),
    ("numSectors", 12, 4),
    ("grainSize", 16, 4),
    ("gdOffset", 20, 4),
    ("numGDEntries", 24, 4),
    ("freeSector", 28, 4),
    ("generation", 1060, 4),
];

fn mutate_cowd(b: &mut Vec<u8>, rng: &mut Rng) -> String {
    let gd = get(b, 20, 4).unwrap_or(0) as usize * 512;
    let gdes = get(b, 24, 4).unwrap_or(0).min(4096) as usize;
    let first_gt = get(b, gd, 4).unwrap_or(0) as usize * 512;
    match rng.below(20) {
        0..=5 => {
            let (name, off, width) = *rng.pick(&COWD_FIELDS);
            format!("header {}", set_field(b, rng, name, off, width))
        }
        6..=8 => entry(b, rng, "grain directory", gd, gdes, 4),
        9..=12 => entry(b, rng, "grain table 0", first_gt, 512, 4),
        13 => byte_set(b, rng, 32, 32 + 1024), // the parent file name
        14..=15 => bit_flip(b, rng, 0, 2048),
        16..=18 => truncate(b, rng, &[2048, gd as u64, first_gt as u64]),
        _ => extend(b, rng),
    }
}

const SESPARSE_FIELDS: [(&str, usize); 12] = [
    ("magic", 0),
    ("version", 8),
    ("capacity", 16),
    ("grainSize", 24),
    ("gtSize", 32),
    ("volatileHeaderOffset", 80),
    ("gdOffset", 128),
    ("gdSize", 136),
    ("gtOffset", 144),
    ("gtSize (region)", 152),
    ("grainsOffset", 192),
    ("grainsSize", 200),
];

fn mutate_sesparse(b: &mut Vec<u8>, rng: &mut Rng) -> String {
    let gd = get(b, 128, 8).unwrap_or(0).min(1 << 40) as usize * 512;
    let gd_entries = (get(b, 136, 8).unwrap_or(0).min(8) * 64) as usize;
    let gt = get(b, 144, 8).unwrap_or(0).min(1 << 40) as usize * 512;
    match rng.below(20) {
        0..=5 => {
            let (name, off) = *rng.pick(&SESPARSE_FIELDS);
            format!("header {}", set_field(b, rng, name, off, 8))
        }
        6 => format!("volatile header {}", set_field(b, rng, "magic", 512, 8)),
        7..=8 => entry(b, rng, "grain directory", gd, gd_entries, 8),
        9..=13 => entry(b, rng, "grain table", gt, 8192, 8),
        14..=15 => bit_flip(b, rng, 0, gt + 4096),
        16..=18 => truncate(b, rng, &[512, 1024, gd as u64, gt as u64]),
        _ => extend(b, rng),
    }
}

fn mutate_flat(b: &mut Vec<u8>, rng: &mut Rng) -> String {
    match rng.below(10) {
        0..=5 => truncate(b, rng, &[512, MIB]),
        6..=8 => extend(b, rng),
        _ => bit_flip(b, rng, 0, usize::MAX),
    }
}

fn mutate_rdm(b: &mut Vec<u8>, rng: &mut Rng) -> String {
    match rng.below(10) {
        0..=2 => bit_flip(b, rng, 0, usize::MAX),
        3..=4 => byte_set(b, rng, 0, usize::MAX),
        5..=6 => {
            let off = 4 * rng.below((b.len() as u64 / 4).clamp(1, 16)) as usize;
            let width = if rng.below(2) == 0 { 4 } else { 8 };
            set_field(b, rng, "field", off, width)
        }
        7..=8 => truncate(b, rng, &[8, 16, 32]),
        _ => extend(b, rng),
    }
}

// Descriptor text -------------------------------------------------------------------------------

const CREATE_TYPES: [&str; 18] = [
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
    "vmfs",
    "vmfsThin",
    "vmfsEagerZeroedThick",
    "vmfsSparse",
    "seSparse",
    "vmfsRawDeviceMap",
    "vmfsPassthroughRawDeviceMap",
    "vmfsRaw",
    "custom",
    "fullDevice",
    "partitionedDevice",
    "bogusType",
    "",
];

const EXTENT_TYPES: [&str; 10] =
    ["FLAT", "SPARSE", "ZERO", "VMFS", "VMFSSPARSE", "SESPARSE", "VMFSRDM", "VMFSRAW", "VMFSRDMP", "BOGUS"];

fn garbage_line(rng: &mut Rng, names: &[String]) -> String {
    let name = rng.pick(names).clone();
    match rng.below(14) {
        0 => format!("RW 99999999999999999999 SPARSE \"{name}\""),
        1 => format!("RW {} FLAT \"{name}\" 0", 1u64 << rng.below(60)),
        2 => "RW 8 ZERO".into(),
        3 => "RW 1 FLAT \"\" 0".into(),
        4 => "RW 2048 FLAT \"missing-file.vmdk\" 0".into(),
        5 => "RW 2048 FLAT \"../../../etc/passwd\" 0".into(),
        6 => "parentFileNameHint=\"/etc/passwd\"".into(),
        7 => "CID=zzzzzzzz".into(),
        8 => "createType=\"monolithicFlat\"".into(),
        9 => "ddb.geometry.cylinders = \"99999999999999999999999\"".into(),
        10 => "x".repeat(1 + rng.below(20000) as usize),
        11 => "\u{0}\u{1}\u{2}=\u{7f}".into(),
        12 => "version=99".into(),
        _ => (0..1 + rng.below(80)).map(|_| (0x20 + rng.below(0x5f)) as u8 as char).collect(),
    }
}

fn key_value(rng: &mut Rng, key: &str, names: &[String], own: &str) -> String {
    let k = key.to_ascii_lowercase();
    let pick = |rng: &mut Rng, v: &[&str]| rng.pick(v).to_string();
    if k == "cid" || k == "parentcid" {
        pick(rng, &["ffffffff", "00000000", "fffffffe", "zzzzzzzz", "", "123456789", "-1", "0x1234"])
    } else if k == "createtype" {
        pick(rng, &CREATE_TYPES)
    } else if k == "parentfilenamehint" {
        let others = ["missing.vmdk", "/etc/passwd", "../../x.vmdk", "", "disk.vmdk.REDO", "disk-000001.vmdk"];
        if rng.below(3) == 0 {
            own.to_string() // the link itself: a cycle
        } else {
            pick(rng, &others)
        }
    } else if k == "version" {
        pick(rng, &["0", "2", "3", "4", "99", "-1", "x", ""])
    } else if k == "encoding" {
        pick(rng, &["UTF-8", "windows-1252", "Shift_JIS", "EBCDIC", "", "\u{ff}"])
    } else if k.starts_with("ddb.") {
        pick(rng, &["99999999999999999999", "-1", "0", "", "\\\"", "lsilogic", "4294967296"])
    } else {
        let n = rng.pick(names).clone();
        pick(rng, &["", "0", "-1", "18446744073709551616", n.as_str()])
    }
}

/// An extent line's tokens: access, sectors, type, "file", offset (quotes kept on the file).
fn extent_tokens(line: &str) -> Option<Vec<String>> {
    let t = line.trim_start();
    let first = t.split_whitespace().next()?;
    if !matches!(first, "RW" | "RDONLY" | "NOACCESS") {
        return None;
    }
    let mut out = Vec::new();
    let mut rest = t;
    while !rest.is_empty() {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let end = if let Some(q) = rest.strip_prefix('"') {
            q.find('"').map(|i| i + 2).unwrap_or(rest.len())
        } else {
            rest.find(char::is_whitespace).unwrap_or(rest.len())
        };
        out.push(rest[..end].to_string());
        rest = &rest[end..];
    }
    Some(out)
}

fn mutate_extent_line(tokens: &mut Vec<String>, rng: &mut Rng, names: &[String]) -> String {
    let field = rng.below(5) as usize;
    let old = tokens.get(field).cloned().unwrap_or_default();
    let sectors = tokens.get(1).and_then(|s| s.parse::<u64>().ok()).unwrap_or(8192);
    let new = match field {
        0 => rng.pick(&["RW", "RDONLY", "NOACCESS", "RX", ""]).to_string(),
        1 => rng
            .pick(&[
                "0".to_string(),
                "1".to_string(),
                (sectors + 1).to_string(),
                (sectors - 1).to_string(),
                (sectors * 2).to_string(),
                (sectors / 2).to_string(),
                (1u64 << 32).to_string(),
                (1u64 << 55).to_string(),
                u64::MAX.to_string(),
                "-1".to_string(),
                "12abc".to_string(),
            ])
            .clone(),
        2 => rng.pick(&EXTENT_TYPES).to_string(),
        3 => {
            let n = rng.pick(names).clone();
            rng.pick(&[
                format!("\"{n}\""),
                "\"missing.vmdk\"".to_string(),
                "\"../../../etc/passwd\"".to_string(),
                "\"/etc/passwd\"".to_string(),
                "\"\"".to_string(),
                "\"unterminated".to_string(),
            ])
            .clone()
        }
        _ => rng
            .pick(&[
                "0".to_string(),
                "1".to_string(),
                sectors.to_string(),
                (1u64 << 62).to_string(),
                "x".to_string(),
                String::new(),
            ])
            .clone(),
    };
    if field < tokens.len() {
        tokens[field] = new.clone();
    } else {
        tokens.push(new.clone());
    }
    format!("extent field {field}: {old:?} -> {new:?}")
}

/// One edit of a descriptor's text; describes it.
fn mutate_text(text: &str, rng: &mut Rng, names: &[String]) -> (String, String) {
    let own = names.first().cloned().unwrap_or_default();
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let n = lines.len().max(1);
    let k = rng.below(n as u64) as usize;
    let what = match rng.below(22) {
        0..=1 if k < lines.len() => format!("line {k} deleted: {:?}", lines.remove(k)),
        2 if k < lines.len() => {
            let l = lines[k].clone();
            lines.insert(k, l.clone());
            format!("line {k} duplicated: {l:?}")
        }
        3 => {
            let j = rng.below(n as u64) as usize;
            if k < lines.len() && j < lines.len() {
                lines.swap(k, j);
            }
            format!("lines {k} and {j} swapped")
        }
        4..=5 => {
            let g = garbage_line(rng, names);
            let shown: String = g.chars().take(80).collect();
            lines.insert(k.min(lines.len()), g);
            format!("line inserted at {k}: {shown:?}")
        }
        6..=12 => {
            // An extent line, if there is one.
            let ext: Vec<usize> = (0..lines.len()).filter(|&i| extent_tokens(&lines[i]).is_some()).collect();
            match ext.is_empty() {
                true => "no extent line, no change".into(),
                false => {
                    let i = *rng.pick(&ext);
                    let mut t = extent_tokens(&lines[i]).unwrap();
                    let what = mutate_extent_line(&mut t, rng, names);
                    lines[i] = t.join(" ");
                    format!("line {i}: {what}")
                }
            }
        }
        13..=18 => {
            let kv: Vec<usize> = (0..lines.len())
                .filter(|&i| lines[i].contains('=') && !lines[i].trim_start().starts_with('#'))
                .collect();
            if kv.is_empty() {
                "no key=value line, no change".into()
            } else {
                let i = *rng.pick(&kv);
                let (key, value) = lines[i].split_once('=').unwrap();
                let quoted = value.trim().starts_with('"');
                let new = key_value(rng, key.trim(), names, &own);
                let old = lines[i].clone();
                lines[i] = if quoted { format!("{key}=\"{new}\"") } else { format!("{key}={new}") };
                format!("line {i} {old:?} -> {:?}", lines[i])
            }
        }
        19 => {
            let joined = lines.join("\n");
            let at = rng.below(joined.len() as u64 + 1) as usize;
            let at = (0..=at).rev().find(|&i| joined.is_char_boundary(i)).unwrap_or(0);
            return (joined[..at].to_string(), format!("text truncated at byte {at}"));
        }
        20 => return (lines.join("\r\n"), "CRLF line endings".into()),
        _ => {
            let mut bytes = lines.join("\n").into_bytes();
            let what = bit_flip(&mut bytes, rng, 0, usize::MAX);
            return (String::from_utf8_lossy(&bytes).into_owned(), format!("text: {what}"));
        }
    };
    (lines.join("\n"), what)
}

fn mutate_descriptor(b: &mut Vec<u8>, rng: &mut Rng, names: &[String]) -> String {
    match rng.below(20) {
        0..=16 => {
            let (text, what) = mutate_text(&String::from_utf8_lossy(b), rng, names);
            *b = text.into_bytes();
            what
        }
        17..=18 => truncate(b, rng, &[]),
        _ => extend(b, rng),
    }
}

// ---------------------------------------------------------------------------------------------
// Running a mutant
// ---------------------------------------------------------------------------------------------

struct Mutant {
    index: usize,
    seed: usize,
    file: String,
    what: String,
}

fn mutant_rng(global: u64, index: usize) -> Rng {
    Rng::new(global ^ (index as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93))
}

/// Builds mutant `index` of `seed` in `dir`: the seed's files linked in, one of them copied and
/// mutated.
fn make_mutant(seeds: &[Seed], global: u64, index: usize, dir: &Path) -> Mutant {
    let s = index % seeds.len();
    let seed = &seeds[s];
    let mut rng = mutant_rng(global, index);
    let total: u64 = seed.files.iter().map(|(_, k)| k.weight()).sum();
    let mut pick = rng.below(total);
    let (file, kind) = seed
        .files
        .iter()
        .find(|(_, k)| {
            if pick < k.weight() {
                true
            } else {
                pick -= k.weight();
                false
            }
        })
        .cloned()
        .unwrap();
    for e in std::fs::read_dir(&seed.dir).unwrap().flatten() {
        let name = e.file_name();
        if name.to_string_lossy() != file {
            std::fs::hard_link(e.path(), dir.join(&name)).unwrap();
        }
    }
    let mut bytes = std::fs::read(seed.dir.join(&file)).unwrap();
    let mut names: Vec<String> = vec![seed.target.clone()];
    names.extend(seed.files.iter().map(|(n, _)| n.clone()));
    // One edit, or (a quarter of the mutants) two or three stacked on the same file.
    let edits = if rng.below(4) == 0 { 2 + rng.below(2) } else { 1 };
    let mut what = Vec::new();
    for _ in 0..edits {
        what.push(match kind {
            Kind::Kdmv => mutate_kdmv(&mut bytes, &mut rng, &names),
            Kind::Stream => mutate_stream(&mut bytes, &mut rng, &names),
            Kind::Cowd => mutate_cowd(&mut bytes, &mut rng),
            Kind::SeSparse => mutate_sesparse(&mut bytes, &mut rng),
            Kind::Descriptor => mutate_descriptor(&mut bytes, &mut rng, &names),
            Kind::Flat => mutate_flat(&mut bytes, &mut rng),
            Kind::Rdm => mutate_rdm(&mut bytes, &mut rng),
        });
    }
    let what = what.join("; then ");
    std::fs::write(dir.join(&file), &bytes).unwrap();
    Mutant { index, seed: s, file, what }
}

/// `vmkfs ARGS` under the address-space limit (when prlimit exists) and the timeout.
fn limited(dir: &Path, args: &[&str], discard_output: bool) -> Outcome {
    let mut c = if have_tool("prlimit") {
        let mut c = Command::new("prlimit");
        c.args([ADDRESS_SPACE, "--"]).arg(bin());
        c
    } else {
        Command::new(bin())
    };
    c.args(args).current_dir(dir);
    if discard_output {
        run_discarding_output(c, TIMEOUT)
    } else {
        run(c, None, Some(TIMEOUT))
    }
}

struct Verdict {
    mutant: Mutant,
    info: Outcome,
    check: Outcome,
    reads: Vec<Outcome>,
    capped: bool,
    problems: Vec<String>,
}

fn first_line(s: &str) -> String {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().chars().take(300).collect()
}

fn judge(o: &Outcome, what: &str, problems: &mut Vec<String>) {
    if o.timed_out {
        problems.push(format!("timeout: {what} ran over {}s", TIMEOUT.as_secs()));
    } else if o.panicked() {
        let panic_line = o.err().lines().find(|l| l.contains("panicked")).unwrap_or("").to_string();
        problems.push(format!(
            "panic in {what}: {}",
            if panic_line.is_empty() { first_line(&o.err()) } else { panic_line }
        ));
    } else if let Some(sig) = o.signal() {
        problems.push(format!("crash: {what} killed by signal {sig}: {}", first_line(&o.err())));
    }
}

fn run_mutant(seeds: &[Seed], global: u64, index: usize, scratch: &Path) -> Verdict {
    let dir = tempfile::tempdir_in(scratch).unwrap();
    let d = dir.path();
    let mutant = make_mutant(seeds, global, index, d);
    let target = seeds[mutant.seed].target.as_str();
    let info = limited(d, &["--info", "--json", target], false);
    let check = limited(d, &["-x", "check", target], false);
    let capacity = info
        .success()
        .then(|| serde_json::from_slice::<serde_json::Value>(&info.stdout).ok())
        .flatten()
        .and_then(|v| v["capacity"].as_u64());
    let capped = capacity.is_some_and(|c| c > WHOLE_READ_LIMIT);
    let reads = match capacity {
        Some(c) if capped => vec![
            limited(d, &["--read-at", "0", "--length", "64m", target], true),
            limited(d, &["--read-at", &(c - 64 * MIB).to_string(), "--length", "64m", target], true),
        ],
        _ => vec![limited(d, &["--read-at", "0", target], true)],
    };
    let mut problems = Vec::new();
    judge(&info, "--info", &mut problems);
    judge(&check, "-x check", &mut problems);
    for r in &reads {
        judge(r, "--read-at", &mut problems);
    }
    if check.success() {
        if !info.success() {
            problems.push(format!("-x check calls it clean, --info refuses: {}", first_line(&info.text())));
        }
        if let Some(r) = reads.iter().find(|r| !r.success()) {
            problems.push(format!("-x check calls it clean, --read-at refuses: {}", first_line(&r.err())));
        }
    }
    Verdict { mutant, info, check, reads, capped, problems }
}

fn how_short(o: &Outcome) -> String {
    if o.timed_out {
        "timeout".into()
    } else if let Some(c) = o.code() {
        c.to_string()
    } else {
        format!("signal {}", o.signal().unwrap_or(0))
    }
}

/// Copies a failing mutant to `target/mutation-failures/INDEX-SEED/` with a `MUTATION.txt`.
fn save_failure(v: &Verdict, seeds: &[Seed], global: u64, scratch: &Path, out: &Path) -> PathBuf {
    let seed = &seeds[v.mutant.seed];
    let dest = out.join(format!("{:05}-{}", v.mutant.index, seed.name));
    std::fs::create_dir_all(&dest).unwrap();
    let again = tempfile::tempdir_in(scratch).unwrap();
    make_mutant(seeds, global, v.mutant.index, again.path());
    copy_dir(again.path(), &dest);
    let mut text = format!(
        "mutant {} of seed {} ({}), file {}: {}\nreproduce: VMKFS_MUTATION_SEED={global:#x} VMKFS_MUTANT={} cargo test --release -p vmkfs --test mutation_campaign -- --nocapture\nor in this folder: vmkfs -x check {t}; vmkfs --info {t}; vmkfs --read-at 0 {t} > /dev/null\n\nproblems:\n",
        v.mutant.index,
        seed.name,
        v.mutant.seed,
        v.mutant.file,
        v.mutant.what,
        v.mutant.index,
        t = seed.target
    );
    for p in &v.problems {
        let _ = writeln!(text, "- {p}");
    }
    for (name, o) in std::iter::once(("--info", &v.info))
        .chain([("-x check", &v.check)])
        .chain(v.reads.iter().map(|r| ("--read-at", r)))
    {
        let _ = writeln!(text, "\n{name}: {}", o.describe());
    }
    std::fs::write(dest.join("MUTATION.txt"), text).unwrap();
    dest
}

/// The campaign's seed: `VMKFS_MUTATION_SEED` (decimal or 0x-hex), else [`DEFAULT_SEED`].
fn campaign_seed() -> u64 {
    std::env::var("VMKFS_MUTATION_SEED")
        .ok()
        .map(|s| {
            let t = s.trim();
            t.strip_prefix("0x")
                .map(|h| u64::from_str_radix(h, 16))
                .unwrap_or_else(|| t.parse())
                .expect("VMKFS_MUTATION_SEED")
        })
        .unwrap_or(DEFAULT_SEED)
}

/// The campaign's summary: mutants and failures per seed, each command's exits, the failure kinds.
fn summarize(verdicts: &[Verdict], seeds: &[Seed], global: u64, elapsed: std::time::Duration) -> String {
    let mut per_seed: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut hist: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut capped = 0;
    for v in verdicts {
        let e = per_seed.entry(seeds[v.mutant.seed].name).or_default();
        e.0 += 1;
        e.1 += usize::from(!v.problems.is_empty());
        *hist.entry("--info").or_default().entry(how_short(&v.info)).or_default() += 1;
        *hist.entry("-x check").or_default().entry(how_short(&v.check)).or_default() += 1;
        for r in &v.reads {
            *hist.entry("--read-at").or_default().entry(how_short(r)).or_default() += 1;
        }
        capped += usize::from(v.capped);
        for p in &v.problems {
            let k =
                ["timeout", "panic", "crash", "-x check calls it clean, --info", "-x check calls it clean, --read-at"]
                    .into_iter()
                    .find(|k| p.starts_with(k))
                    .unwrap_or("other");
            *kinds.entry(k).or_default() += 1;
        }
    }
    let mut summary = String::new();
    let _ = writeln!(summary, "\n{:<26} {:>8} {:>8}", "seed", "mutants", "failing");
    for (name, (n, f)) in &per_seed {
        let _ = writeln!(summary, "{name:<26} {n:>8} {f:>8}");
    }
    for (cmd, h) in &hist {
        let _ = writeln!(
            summary,
            "{cmd:<10} exits: {}",
            h.iter().map(|(k, n)| format!("{k}={n}")).collect::<Vec<_>>().join(" ")
        );
    }
    let _ = writeln!(
        summary,
        "panics {}, timeouts {}, crashes by signal {}, clean by -x check but refused by --info {} / by --read-at {}",
        kinds.get("panic").unwrap_or(&0),
        kinds.get("timeout").unwrap_or(&0),
        kinds.get("crash").unwrap_or(&0),
        kinds.get("-x check calls it clean, --info").unwrap_or(&0),
        kinds.get("-x check calls it clean, --read-at").unwrap_or(&0),
    );
    let _ = writeln!(
        summary,
        "{} mutants ({capped} read at both ends only: capacity over 1 GiB), seed {global:#x}, {:.0}s",
        verdicts.len(),
        elapsed.as_secs_f64()
    );
    summary
}

#[test]
fn mutants_never_panic_hang_or_pass_check_unreadable() {
    let started = Instant::now();
    let global = campaign_seed();
    let count = env_number("VMKFS_MUTANTS", 3000) as usize;
    let threads = env_number("VMKFS_MUTATION_THREADS", 2) as usize;
    let only = std::env::var("VMKFS_MUTANT").ok().map(|s| s.trim().parse::<usize>().expect("VMKFS_MUTANT"));
    if !have_tool("prlimit") {
        skip("prlimit (util-linux) not installed: mutants run without the 2 GiB address-space limit");
    }
    let root = tempfile::tempdir().unwrap();
    let seeds = build_seeds(&root.path().join("seeds"));
    let scratch = root.path().join("mutants");
    std::fs::create_dir(&scratch).unwrap();
    println!("mutation campaign: seed {global:#x}, {count} mutants over {} seeds, {threads} threads", seeds.len());

    // The seeds themselves must be sound.
    for s in &seeds {
        for args in [&["--info", s.target.as_str()][..], &["-x", "check", &s.target], &["--read-at", "0", &s.target]] {
            let o = limited(&s.dir, args, true);
            assert!(o.success(), "seed {} is not sound: {}", s.name, o.describe());
        }
    }
    let before: Vec<Vec<(String, String)>> = seeds.iter().map(|s| hash_tree(&s.dir)).collect();

    let indices: Vec<usize> = match only {
        Some(i) => vec![i],
        None => (0..count).collect(),
    };
    let verdicts = parallel_map(&indices, threads, |&i| run_mutant(&seeds, global, i, &scratch), |_, _| {});
    let elapsed = started.elapsed();

    let summary = summarize(&verdicts, &seeds, global, elapsed);
    println!("{summary}");

    let after: Vec<Vec<(String, String)>> = seeds.iter().map(|s| hash_tree(&s.dir)).collect();
    assert_eq!(before, after, "a read-only command changed a seed file (through a mutant's hard link)");

    let failing: Vec<&Verdict> = verdicts.iter().filter(|v| !v.problems.is_empty()).collect();
    if !failing.is_empty() {
        let out = target_dir().join("mutation-failures");
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        let mut list = String::new();
        for (n, v) in failing.iter().enumerate() {
            let dest = if n < 200 {
                save_failure(v, &seeds, global, &scratch, &out).display().to_string()
            } else {
                "(not saved: over 200)".into()
            };
            let _ = writeln!(
                list,
                "mutant {} [{} {}] {}: {} — {}",
                v.mutant.index,
                seeds[v.mutant.seed].name,
                v.mutant.file,
                v.mutant.what,
                v.problems.join(" | "),
                dest
            );
        }
        std::fs::write(out.join("FAILURES.txt"), format!("{list}{summary}")).unwrap();
        let shown: String = list.lines().take(60).map(|l| format!("{l}\n")).collect();
        panic!(
            "{} failing mutants (all in {}; reproduce one: VMKFS_MUTATION_SEED={global:#x} VMKFS_MUTANT=N):\n{shown}{summary}",
            failing.len(),
            out.join("FAILURES.txt").display()
        );
    }
}
