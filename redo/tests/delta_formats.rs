//! Reading the ESX delta formats: COWD (vmfsSparse, ESX 3–6 snapshots) and seSparse (ESXi 6.5+),
//! as links and as chains (a test of this crate for that, on vmdk's test helpers,
//! `vmdk/tests/common`). No VMware tool exists here, so writers in this file build such files from
//! the fact sheet's layouts (docs §6.1 and §6.2), in the shape ESX leaves them (a `NAME-000001.vmdk`
//! descriptor and a `-delta.vmdk` or `-sesparse.vmdk` extent over a thin `vmfs` base made by
//! `vmdk::create`), and independent readers must agree on them:
//!
//! - ours: the bare extent through `Link::open` (Data exactly where grains are present, Absent
//!   elsewhere, Zero for seSparse zero/unmapped grains) and the chain through `redo::Chain::open`
//!   (full read-through against the expected buffer, and the merged map with depths);
//! - qemu-img (`block/vmdk.c` reads both formats): `compare` against the expected raw image and
//!   `map --output=json` against our chain map, run for run with depths;
//! - dissect.hypervisor (Python): sha256 of its read-through against ours.
//!
//! Corrupt grain table entries must fail with `Error::Corrupt` naming the file and the entry's byte
//! offset. Tests that need qemu-img or dissect print a message and pass when the tool is missing.

#[path = "../../vmdk/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use redo::{Chain, ChainError};
use vmdk::create::{create, CreateOptions, DiskFormat};
use vmdk::extent::ExtentKind;
use vmdk::{AllocMap, Container, CreateType, Error, Link, OpenOptions, State};

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

fn put_u32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(buf: &mut [u8], off: usize, v: u64) {
    buf[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Fisher–Yates with the test generator: the order in which a "guest" wrote the grains.
fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.range(0, i as u64) as usize;
        v.swap(i, j);
    }
}

/// The bytes of one grain: random, all zeros (a present grain of zeros still hides the parent) or
/// half random.
fn grain_bytes(len: usize, rng: &mut Rng) -> Vec<u8> {
    let mut v = vec![0u8; len];
    match rng.range(0, 5) {
        0 => {}
        1 => rng.fill_nonzero(&mut v[..len / 2]),
        _ => rng.fill_nonzero(&mut v),
    }
    v
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Data => "data",
        State::Zero => "zero",
        State::Absent => "absent",
    }
}

/// A map as interval sets keyed by (depth, state).
type Classes = BTreeMap<(u32, &'static str), Vec<(u64, u64)>>;

fn classes(map: &AllocMap) -> Classes {
    let mut c: BTreeMap<(u32, &'static str), Vec<(u64, u64)>> = BTreeMap::new();
    for r in map.runs() {
        c.entry((r.depth, state_name(r.state))).or_default().push((r.offset, r.end()));
    }
    c.into_iter().map(|(k, v)| (k, normalize(v))).collect()
}

/// `qemu-img map --output=json` as interval sets keyed by (depth, state): `zero` is Zero (qemu
/// reports holes of a flat file as data+zero), else `data` is Data, else Absent.
fn qemu_classes(image: &Path) -> Classes {
    let out = qemu_ok(&["map", "--output=json", "-f", "vmdk", image.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("qemu-img map JSON");
    let mut c: BTreeMap<(u32, &'static str), Vec<(u64, u64)>> = BTreeMap::new();
    for r in v.as_array().expect("map is an array") {
        let start = r["start"].as_u64().unwrap();
        let len = r["length"].as_u64().unwrap();
        let depth = r["depth"].as_u64().unwrap() as u32;
        let state = if r["zero"].as_bool().unwrap() {
            "zero"
        } else if r["data"].as_bool().unwrap() {
            "data"
        } else {
            "absent"
        };
        c.entry((depth, state)).or_default().push((start, start + len));
    }
    c.into_iter().map(|(k, v)| (k, normalize(v))).collect()
}

fn chain_read_all(chain: &Chain) -> Vec<u8> {
    let mut v = vec![0u8; chain.capacity() as usize];
    for (i, chunk) in v.chunks_mut(MIB as usize).enumerate() {
        chain.read_at(chunk, i as u64 * MIB).unwrap();
    }
    v
}

/// Checks that `e` is `Error::Corrupt` about `file` at byte `offset`, and that its message names both.
#[track_caller]
fn assert_corrupt(e: &Error, file: &Path, offset: u64) {
    let Error::Corrupt { path, offset: at, .. } = e else {
        panic!("expected Error::Corrupt, got {e:?}");
    };
    assert_eq!(path, file, "error names the wrong file: {e}");
    assert_eq!(*at, offset, "error names the wrong offset: {e}");
    let msg = e.to_string();
    let name = file.file_name().unwrap().to_string_lossy();
    assert!(msg.contains(&*name), "message does not name {name}: {msg}");
    assert!(msg.contains(&offset.to_string()), "message does not name offset {offset}: {msg}");
}

fn sha256sum(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().expect("run sha256sum");
    assert!(o.status.success(), "sha256sum {}: {}", path.display(), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap().to_string()
}

// ---------------------------------------------------------------------------------------------
// The base and the child descriptor
// ---------------------------------------------------------------------------------------------

/// A thin ESX base `NAME.vmdk` + `NAME-flat.vmdk` of `cap` bytes made by our creator, holding the
/// test pattern (64 KiB pieces that are all zero are not written, so the flat file has holes).
/// Returns the content and the base's CID.
fn make_base(dir: &Path, name: &str, cap: u64, seed: u64) -> (Vec<u8>, u32) {
    let data = pattern(cap, seed);
    let path = dir.join(format!("{name}.vmdk"));
    let nd = create(&path, &CreateOptions::new(DiskFormat::Thin, cap)).unwrap();
    for (i, c) in data.chunks((64 * KIB) as usize).enumerate() {
        if !is_zero(c) {
            nd.link().write_at(c, i as u64 * 64 * KIB).unwrap();
        }
    }
    nd.commit().unwrap();
    let link = Link::open(&path, &OpenOptions::read()).unwrap();
    assert_eq!(link.descriptor().create_type, CreateType::Vmfs);
    (data, link.descriptor().cid)
}

/// An ESX delta descriptor as ESXi writes it (qemu's parser wants `key="value"` with no spaces,
/// `CID=` right before `parentCID=`, and `# Extent description` right before the extent line).
fn write_child_descriptor(
    path: &Path,
    create_type: &str,
    parent_cid: u32,
    hint: &str,
    sectors: u64,
    kind: &str,
    file: &str,
) {
    let cid = 0x5eed_c1d0u32;
    let text = format!(
        "# Disk DescriptorFile\n\
         version=1\n\
         encoding=\"UTF-8\"\n\
         CID={cid:08x}\n\
         parentCID={parent_cid:08x}\n\
         isNativeSnapshot=\"no\"\n\
         createType=\"{create_type}\"\n\
         parentFileNameHint=\"{hint}\"\n\
         # Extent description\n\
         RW {sectors} {kind} \"{file}\"\n\
         \n\
         # The Disk Data Base\n\
         #DDB\n\
         \n\
         ddb.longContentID = \"0123456789abcdef01234567{cid:08x}\"\n"
    );
    std::fs::write(path, text).unwrap();
}

// ---------------------------------------------------------------------------------------------
// COWD (vmfsSparse) writer, from the fact sheet §6.1
// ---------------------------------------------------------------------------------------------

const COWD_GTES: u64 = 4096;

/// Writes a COWD file the way ESX grows one: 2048-byte header, grain directory at sector 4, then,
/// in write order, each grain table (4096 u32 sector pointers) allocated together with its first
/// grain and followed by it, and every later grain appended at `freeSector`. `writes` are
/// `(grain number, grain bytes)` in the order the guest wrote them (a grain written twice is
/// overwritten in place). Returns the byte offset of each present grain's table entry.
fn write_cowd(path: &Path, cap_sectors: u64, grain_sectors: u64, writes: &[(u64, Vec<u8>)]) -> BTreeMap<u64, u64> {
    let num_gdes = cap_sectors.div_ceil(COWD_GTES * grain_sectors);
    let gd_offset = 4u64;
    let gd_sectors = (num_gdes * 4).div_ceil(512);
    let gt_sectors = COWD_GTES * 4 / 512;
    let mut free = gd_offset + gd_sectors;
    let mut gd = vec![0u32; num_gdes as usize];
    let mut gts: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    let mut grains: Vec<(u64, &[u8])> = Vec::new();
    for (g, bytes) in writes {
        assert_eq!(bytes.len() as u64, grain_sectors * 512, "grain {g} has the wrong size");
        let (t, i) = (g / COWD_GTES, (g % COWD_GTES) as usize);
        if gd[t as usize] == 0 {
            gd[t as usize] = free as u32;
            free += gt_sectors;
            gts.insert(t, vec![0; COWD_GTES as usize]);
        }
        let gt = gts.get_mut(&t).unwrap();
        if gt[i] == 0 {
            gt[i] = free as u32;
            free += grain_sectors;
        }
        grains.push((gt[i] as u64, bytes));
    }
    let mut out = vec![0u8; (free * 512) as usize];
    // ESX values: version 1, flags 3; freeSector is the end of the file; generation and name set;
    // savedGeneration (1636), uncleanShutdown (1648) and the parent name stay 0: a clean file.
    out[..4].copy_from_slice(b"COWD");
    put_u32(&mut out, 4, 1);
    put_u32(&mut out, 8, 3);
    put_u32(&mut out, 12, cap_sectors as u32);
    put_u32(&mut out, 16, grain_sectors as u32);
    put_u32(&mut out, 20, gd_offset as u32);
    put_u32(&mut out, 24, num_gdes as u32);
    put_u32(&mut out, 28, free as u32);
    put_u32(&mut out, 1060, 1);
    out[1064..1064 + 11].copy_from_slice(b"vmkfs-tests");
    for (i, e) in gd.iter().enumerate() {
        put_u32(&mut out, (gd_offset * 512) as usize + i * 4, *e);
    }
    let mut entries = BTreeMap::new();
    for (t, gt) in &gts {
        let at = gd[*t as usize] as usize * 512;
        for (i, e) in gt.iter().enumerate() {
            put_u32(&mut out, at + i * 4, *e);
            if *e != 0 {
                entries.insert(t * COWD_GTES + i as u64, (at + i * 4) as u64);
            }
        }
    }
    for (sector, bytes) in grains {
        let at = (sector * 512) as usize;
        out[at..at + bytes.len()].copy_from_slice(bytes);
    }
    std::fs::write(path, &out).unwrap();
    entries
}

/// A base and a delta child (COWD or seSparse), the expected contents and where things are.
struct Fixture {
    dir: tempfile::TempDir,
    /// The child descriptor `NAME-000001.vmdk`.
    child: PathBuf,
    /// The child's extent file.
    extent: PathBuf,
    base: PathBuf,
    cap: u64,
    base_cid: u32,
    /// What the chain reads.
    expected: Vec<u8>,
    /// What the child alone reads (zeros where it holds nothing).
    own: Vec<u8>,
    /// Byte ranges of the disk the child stores (Data).
    present: Vec<(u64, u64)>,
    /// Byte ranges the child marks as zero (seSparse types 1 and 2).
    zeroed: Vec<(u64, u64)>,
    /// Byte ranges of seSparse type-1 (unmapped) grains.
    unmapped: Vec<(u64, u64)>,
    /// Byte offset in the extent file of the table entry of each grain the child stores.
    entries: BTreeMap<u64, u64>,
    grain: u64,
}

/// Picks `(grain, bytes)` writes: the `fixed` grains plus `random` others, in a shuffled order.
/// Grains in `skip_tables` (4096-grain tables) are not used, so their directory entries stay 0.
fn pick_grains(
    grains: u64,
    grain_bytes_len: u64,
    fixed: &[u64],
    random: usize,
    skip_tables: &[u64],
    rng: &mut Rng,
) -> Vec<(u64, Vec<u8>)> {
    let mut set: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut add = |g: u64, rng: &mut Rng| {
        if g < grains && !skip_tables.contains(&(g / 4096)) {
            set.entry(g).or_insert_with(|| grain_bytes(grain_bytes_len as usize, rng));
        }
    };
    for &g in fixed {
        add(g, rng);
    }
    for _ in 0..random {
        let g = rng.range(0, grains - 1);
        add(g, rng);
    }
    let mut v: Vec<(u64, Vec<u8>)> = set.into_iter().collect();
    shuffle(&mut v, rng);
    v
}

/// Copies each grain's bytes over `buf` (clipped to the capacity) and returns the covered ranges.
fn overlay(buf: &mut [u8], gb: u64, grains: &[(u64, Vec<u8>)]) -> Vec<(u64, u64)> {
    let cap = buf.len() as u64;
    let mut ranges = Vec::new();
    for (g, bytes) in grains {
        let (s, e) = (g * gb, ((g + 1) * gb).min(cap));
        buf[s as usize..e as usize].copy_from_slice(&bytes[..(e - s) as usize]);
        ranges.push((s, e));
    }
    normalize(ranges)
}

/// A thin base `disk.vmdk` and an ESX vmfsSparse child `disk-000001.vmdk` +
/// `disk-000001-delta.vmdk` with `grain_sectors`-sector grains.
fn cowd_fixture(grain_sectors: u64, seed: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(seed);
    let gb = grain_sectors * 512;
    // Capacities that end in a partial grain (grain 16) and leave the last table partial.
    let (cap, mut fixed, random, skip): (u64, Vec<u64>, usize, Vec<u64>) = if grain_sectors == 1 {
        // 3 tables of 2 MiB; table 1 stays unallocated (directory entry 0); a run of 100 grains.
        let cap = 5 * MIB + 3 * 512;
        let last = cap / gb - 1;
        (cap, vec![0, 1, 2, 7, 4095, 8192, 8193, last], 60, vec![1])
    } else {
        // 2 tables (32 MiB each at 16 sectors); the last grain holds 5 of its 16 sectors.
        let cap = 36 * MIB + 5 * 512;
        let last = cap.div_ceil(gb) - 1;
        (cap, vec![0, 3, 4095, 4096, 4097, last - 1, last], 50, vec![])
    };
    fixed.extend(if grain_sectors == 1 { 9000..9100 } else { 200..240 });
    let (base_data, base_cid) = make_base(dir.path(), "disk", cap, seed + 1);
    let writes = pick_grains(cap.div_ceil(gb), gb, &fixed, random, &skip, &mut rng);
    let extent = dir.path().join("disk-000001-delta.vmdk");
    let entries = write_cowd(&extent, cap / 512, grain_sectors, &writes);
    let child = dir.path().join("disk-000001.vmdk");
    write_child_descriptor(
        &child,
        "vmfsSparse",
        base_cid,
        "disk.vmdk",
        cap / 512,
        "VMFSSPARSE",
        "disk-000001-delta.vmdk",
    );
    let mut expected = base_data;
    let present = overlay(&mut expected, gb, &writes);
    let mut own = vec![0u8; cap as usize];
    overlay(&mut own, gb, &writes);
    assert!(!present.is_empty() && set_bytes(&present) < cap / 2);
    Fixture {
        base: dir.path().join("disk.vmdk"),
        dir,
        child,
        extent,
        cap,
        base_cid,
        expected,
        own,
        present,
        zeroed: vec![],
        unmapped: vec![],
        entries,
        grain: gb,
    }
}

// ---------------------------------------------------------------------------------------------
// seSparse writer, from the fact sheet §6.2
// ---------------------------------------------------------------------------------------------

const SE_GRAIN: u64 = 8 * 512;
const SE_GTES: u64 = 4096;
/// Areas in sectors, as in the hostd.log example: header 0, volatile header 1, journal header 2,
/// journal 2048+2048, GD 4096+2048, GTs 6144+2048, free bitmap 8192+2048, backmap 10240+2048,
/// grains from 12288.
const SE_JOURNAL_HEADER: u64 = 2;
const SE_JOURNAL: u64 = 2048;
const SE_GD: u64 = 4096;
const SE_GTS: u64 = 6144;
const SE_BITMAP: u64 = 8192;
const SE_BACKMAP: u64 = 10240;
const SE_GRAINS: u64 = 12288;
const SE_AREA: u64 = 2048;

/// One grain of an seSparse child.
#[derive(Debug, Clone)]
enum SeGrain {
    /// Type 3: stored at grain index `index` of the grains area.
    Data { index: u64, bytes: Vec<u8> },
    /// Type 1: unmapped (SCSI UNMAP).
    Unmapped,
    /// Type 2: zero.
    Zero,
}

/// The type-3 entry for grain index `g`: qemu decodes `((e >> 48) & 0xfff) | ((e & 0xffff_ffff_ffff) << 12)`.
fn se_allocated(g: u64) -> u64 {
    (3 << 60) | ((g & 0xfff) << 48) | (g >> 12)
}

/// Writes an seSparse file (sparse on the host: the areas are mostly holes). `grains` are
/// `(grain number, what)` in write order; grain tables get slots in the order of their first write.
/// Returns the byte offset of every written grain table entry.
fn write_sesparse(path: &Path, cap_sectors: u64, grains: &[(u64, SeGrain)]) -> BTreeMap<u64, u64> {
    let tables = cap_sectors.div_ceil(8 * SE_GTES);
    assert!(tables * 8 <= SE_AREA * 512, "grain directory area too small");
    let mut gd = vec![0u64; tables as usize];
    let mut slots = 0u64;
    let mut gts: BTreeMap<u64, Vec<u64>> = BTreeMap::new(); // slot -> entries
    let mut data: Vec<(u64, &[u8])> = Vec::new();
    let mut max_index = 0;
    let mut entries = BTreeMap::new();
    for (g, what) in grains {
        let (t, i) = (g / SE_GTES, (g % SE_GTES) as usize);
        if gd[t as usize] == 0 {
            assert!(slots < SE_AREA / 64, "grain table area too small");
            gd[t as usize] = 0x1000_0000_0000_0000 | slots;
            gts.insert(slots, vec![0; SE_GTES as usize]);
            slots += 1;
        }
        let slot = gd[t as usize] & 0xffff_ffff;
        let e = match what {
            SeGrain::Data { index, bytes } => {
                assert_eq!(bytes.len() as u64, SE_GRAIN);
                data.push((*index, bytes));
                max_index = max_index.max(*index);
                se_allocated(*index)
            }
            SeGrain::Unmapped => 1 << 60,
            SeGrain::Zero => 2 << 60,
        };
        gts.get_mut(&slot).unwrap()[i] = e;
        entries.insert(*g, (SE_GTS + slot * 64) * 512 + i as u64 * 8);
    }
    let grains_size = (max_index + 1).max(cap_sectors.div_ceil(8)) * 8;
    let mut head = vec![0u8; 1024];
    put_u64(&mut head, 0, 0xCAFE_BABE);
    put_u64(&mut head, 8, 0x0000_0002_0000_0001);
    put_u64(&mut head, 16, cap_sectors);
    // Grain size 8 sectors, grain table size 64 sectors; flags (40) and reserved1..4 (48..80) stay
    // 0; then each area's offset and size.
    put_u64(&mut head, 24, 8);
    put_u64(&mut head, 32, 64);
    for (off, (at, size)) in [
        (1, 1),
        (SE_JOURNAL_HEADER, SE_JOURNAL - SE_JOURNAL_HEADER),
        (SE_JOURNAL, SE_AREA),
        (SE_GD, SE_AREA),
        (SE_GTS, SE_AREA),
        (SE_BITMAP, SE_AREA),
        (SE_BACKMAP, SE_AREA),
        (SE_GRAINS, grains_size),
    ]
    .iter()
    .enumerate()
    {
        put_u64(&mut head, 80 + off * 16, *at);
        put_u64(&mut head, 88 + off * 16, *size);
    }
    // Volatile header (sector 1): magic, free_gt_number, next_txn_seq_number, replay_journal = 0.
    put_u64(&mut head, 512, 0xCAFE_CAFE);
    put_u64(&mut head, 520, slots);
    put_u64(&mut head, 528, 1);
    let f = File::create(path).unwrap();
    f.set_len((SE_GRAINS + (max_index + 1) * 8) * 512).unwrap();
    f.write_all_at(&head, 0).unwrap();
    let mut raw = Vec::with_capacity(gd.len() * 8);
    for e in &gd {
        raw.extend_from_slice(&e.to_le_bytes());
    }
    f.write_all_at(&raw, SE_GD * 512).unwrap();
    for (slot, t) in &gts {
        let mut raw = Vec::with_capacity(t.len() * 8);
        for e in t {
            raw.extend_from_slice(&e.to_le_bytes());
        }
        f.write_all_at(&raw, (SE_GTS + slot * 64) * 512).unwrap();
    }
    for (index, bytes) in data {
        f.write_all_at(bytes, (SE_GRAINS + index * 8) * 512).unwrap();
    }
    entries
}

/// A thin base `disk.vmdk` and an seSparse child `disk-000001.vmdk` + `disk-000001-sesparse.vmdk`:
/// 36 MiB + 3 sectors (3 grain tables of 16 MiB, table 1 unallocated, a partial last grain), data
/// grains at grain indices that exercise both halves of the entry encoding (0…, 4095, 4096, 8199,
/// 0x12345), and unmapped and zero grains over base data.
fn sesparse_fixture(seed: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(seed);
    let cap = 36 * MIB + 3 * 512;
    let grains = cap.div_ceil(SE_GRAIN);
    let (base_data, base_cid) = make_base(dir.path(), "disk", cap, seed + 1);
    let last = grains - 1;
    let mut picked: BTreeMap<u64, SeGrain> = BTreeMap::new();
    let mut data_grains: Vec<u64> = vec![0, 1, 2, 100, 4095, 8192, 8193, last];
    data_grains.extend(200..230);
    for _ in 0..40 {
        let g = rng.range(0, grains - 1);
        if g / SE_GTES != 1 {
            data_grains.push(g);
        }
    }
    data_grains.sort_unstable();
    data_grains.dedup();
    // Unmapped and zero grains where the base holds data (so reading the parent would differ).
    let base_has_data = |g: u64| !is_zero(&base_data[(g * SE_GRAIN) as usize..((g + 1) * SE_GRAIN).min(cap) as usize]);
    let mut special = (0..grains).filter(|g| g / SE_GTES != 1 && !data_grains.contains(g) && base_has_data(*g));
    for _ in 0..6 {
        picked.insert(special.next().unwrap(), SeGrain::Unmapped);
    }
    for _ in 0..6 {
        picked.insert(special.next().unwrap(), SeGrain::Zero);
    }
    // Spread the zero kinds over the whole disk too.
    let far: Vec<u64> = (8200..grains).filter(|g| !data_grains.contains(g) && base_has_data(*g)).take(4).collect();
    picked.insert(far[0], SeGrain::Unmapped);
    picked.insert(far[1], SeGrain::Zero);
    // Grain indices: mostly dense, a few far out so the high part of the encoding is used.
    let mut indices: Vec<u64> = (0..data_grains.len() as u64).collect();
    let n = indices.len();
    indices[n - 1] = 0x1_2345;
    indices[n - 2] = 8199;
    indices[n - 3] = 4096;
    indices[n - 4] = 4095;
    shuffle(&mut indices, &mut rng);
    for (g, index) in data_grains.iter().zip(indices) {
        picked.insert(*g, SeGrain::Data { index, bytes: grain_bytes(SE_GRAIN as usize, &mut rng) });
    }
    let mut writes: Vec<(u64, SeGrain)> = picked.into_iter().collect();
    shuffle(&mut writes, &mut rng);
    let extent = dir.path().join("disk-000001-sesparse.vmdk");
    let entries = write_sesparse(&extent, cap / 512, &writes);

    let child = dir.path().join("disk-000001.vmdk");
    write_child_descriptor(
        &child,
        "seSparse",
        base_cid,
        "disk.vmdk",
        cap / 512,
        "SESPARSE",
        "disk-000001-sesparse.vmdk",
    );

    let data: Vec<(u64, Vec<u8>)> = writes
        .iter()
        .filter_map(|(g, w)| if let SeGrain::Data { bytes, .. } = w { Some((*g, bytes.clone())) } else { None })
        .collect();
    let zero_grains: Vec<(u64, Vec<u8>)> = writes
        .iter()
        .filter(|(_, w)| matches!(w, SeGrain::Unmapped | SeGrain::Zero))
        .map(|(g, _)| (*g, vec![0u8; SE_GRAIN as usize]))
        .collect();
    let unmapped: Vec<(u64, u64)> = normalize(
        writes
            .iter()
            .filter(|(_, w)| matches!(w, SeGrain::Unmapped))
            .map(|(g, _)| (g * SE_GRAIN, ((g + 1) * SE_GRAIN).min(cap)))
            .collect(),
    );
    let mut expected = base_data;
    let present = overlay(&mut expected, SE_GRAIN, &data);
    let zeroed = overlay(&mut expected, SE_GRAIN, &zero_grains);
    let mut own = vec![0u8; cap as usize];
    overlay(&mut own, SE_GRAIN, &data);
    let entries = entries.into_iter().filter(|(g, _)| data.iter().any(|(d, _)| d == g)).collect();
    Fixture {
        base: dir.path().join("disk.vmdk"),
        dir,
        child,
        extent,
        cap,
        base_cid,
        expected,
        own,
        present,
        zeroed,
        unmapped,
        entries,
        grain: SE_GRAIN,
    }
}

// ---------------------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------------------

/// The bare extent through `Link::open`: Data exactly for present grains, Zero for zero kinds,
/// Absent elsewhere; the bytes of present grains.
fn check_bare(fx: &Fixture, kind: ExtentKind, create_type: CreateType) {
    let link = Link::open(&fx.extent, &OpenOptions::read()).unwrap();
    assert_eq!(link.container(), Container::BareExtent);
    assert_eq!(link.descriptor().create_type, create_type);
    assert_eq!(link.capacity(), fx.cap);
    let ext = link.extents();
    assert_eq!(ext.len(), 1);
    assert_eq!(ext[0].kind, kind);
    assert_eq!(ext[0].grain, Some(fx.grain));
    assert!(!link.was_unclean());

    let map = link.map(0, fx.cap).unwrap();
    assert_map_covers(&map, fx.cap);
    assert!(map.runs().iter().all(|r| r.depth == 0));
    assert_eq!(map_set(&map, State::Data), fx.present, "{kind}: Data runs are not the present grains");
    assert_eq!(map_set(&map, State::Zero), fx.zeroed, "{kind}: Zero runs are not the zero grains");
    let absent = subtract(&subtract(&[(0, fx.cap)], &fx.present), &fx.zeroed);
    assert_eq!(map_set(&map, State::Absent), absent, "{kind}: Absent runs");
    // A piece of the map agrees with the whole.
    let (o, l) = (fx.grain * 3 + 17, fx.cap / 3);
    let part = link.map(o, l).unwrap();
    let whole_part: Vec<(u64, u64)> =
        fx.present.iter().map(|&(s, e)| (s.max(o), e.min(o + l))).filter(|r| r.1 > r.0).collect();
    assert_eq!(map_set(&part, State::Data), normalize(whole_part));

    assert_same(&read_all(&link), &fx.own, &format!("{kind}: bare read"));
    random_reads(|b, o| link.read_at(b, o), &fx.own, (7, 150, 70_000), &format!("{kind}: bare"));
}

/// The chain through `redo::Chain::open`: full read-through and the merged map.
fn check_chain(fx: &Fixture, create_type: CreateType) -> AllocMap {
    let chain = Chain::open(&fx.child, &OpenOptions::read()).unwrap();
    assert_eq!(chain.links().len(), 2);
    let top = chain.top();
    assert_eq!(top.container(), Container::Descriptor);
    let d = top.descriptor();
    assert_eq!(d.create_type, create_type);
    assert_eq!(d.parent_cid, fx.base_cid);
    assert_eq!(d.parent_file_name_hint.as_deref(), Some("disk.vmdk"));
    assert_eq!(chain.links()[1].path(), fx.base.as_path());
    assert_eq!(chain.capacity(), fx.cap);

    assert_same(&chain_read_all(&chain), &fx.expected, "chain read-through");
    random_reads(|b, o| chain.read_at(b, o), &fx.expected, (11, 150, 70_000), "chain");

    let map = chain.map(0, fx.cap).unwrap();
    assert_map_covers(&map, fx.cap);
    // Expected: the child's own runs at depth 0, the base's runs (Data/Zero of the thin flat file)
    // at depth 1 wherever the child holds nothing.
    let base_map = Link::open(&fx.base, &OpenOptions::read()).unwrap().map(0, fx.cap).unwrap();
    let covered = normalize(fx.present.iter().chain(&fx.zeroed).copied().collect());
    let mut want = Classes::new();
    want.insert((0, "data"), fx.present.clone());
    if !fx.zeroed.is_empty() {
        want.insert((0, "zero"), fx.zeroed.clone());
    }
    for st in [State::Data, State::Zero] {
        let s = subtract(&map_set(&base_map, st), &covered);
        if !s.is_empty() {
            want.insert((1, state_name(st)), s);
        }
    }
    assert_eq!(classes(&map), want, "chain map");
    map
}

/// qemu-img: compare with the expected raw image, and its map against ours.
fn check_qemu(fx: &Fixture, ours: &AllocMap) {
    if !have_qemu() {
        eprintln!("qemu-img not found: skipping the qemu half");
        return;
    }
    let raw = fx.dir.path().join("expected.raw");
    write_raw_sparse(&raw, &fx.expected);
    let out = qemu_ok(&["compare", "-f", "vmdk", "-F", "raw", fx.child.to_str().unwrap(), raw.to_str().unwrap()]);
    assert!(out.contains("Images are identical"), "qemu-img compare: {out}");
    let info = qemu_ok(&["info", "--output=json", fx.child.to_str().unwrap()]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["virtual-size"].as_u64(), Some(fx.cap), "qemu's virtual size");
    assert_eq!(info["format"].as_str(), Some("vmdk"));
    assert!(info["backing-filename"].as_str().is_some_and(|b| b.ends_with("disk.vmdk")), "qemu's backing: {info}");
    assert_eq!(qemu_classes(&fx.child), classes(ours), "qemu-img map differs from our chain map");
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn cowd_grain_1_sector() {
    let fx = cowd_fixture(1, 100);
    check_bare(&fx, ExtentKind::VmfsSparse, CreateType::VmfsSparse);
    let map = check_chain(&fx, CreateType::VmfsSparse);
    check_qemu(&fx, &map);
}

#[test]
fn cowd_grain_16_sectors() {
    let fx = cowd_fixture(16, 200);
    check_bare(&fx, ExtentKind::VmfsSparse, CreateType::VmfsSparse);
    let map = check_chain(&fx, CreateType::VmfsSparse);
    check_qemu(&fx, &map);
}

#[test]
fn sesparse_chain() {
    let fx = sesparse_fixture(300);
    check_bare(&fx, ExtentKind::SeSparse, CreateType::SeSparse);
    let map = check_chain(&fx, CreateType::SeSparse);
    check_qemu(&fx, &map);
}

/// A child whose parentCID is not the base's CID: we refuse the chain at open; qemu fails the first
/// read that falls through to the parent.
#[test]
fn parent_cid_mismatch() {
    let fx = cowd_fixture(16, 400);
    write_child_descriptor(
        &fx.child,
        "vmfsSparse",
        fx.base_cid ^ 1,
        "disk.vmdk",
        fx.cap / 512,
        "VMFSSPARSE",
        "disk-000001-delta.vmdk",
    );
    let e = Chain::open(&fx.child, &OpenOptions::read()).unwrap_err();
    assert!(
        matches!(e, ChainError::CidMismatch { expected, found, .. } if expected == fx.base_cid ^ 1 && found == fx.base_cid),
        "{e}"
    );
    if have_qemu() {
        let raw = fx.dir.path().join("expected.raw");
        write_raw_sparse(&raw, &fx.expected);
        let o = qemu_img(&["compare", "-f", "vmdk", "-F", "raw", fx.child.to_str().unwrap(), raw.to_str().unwrap()]);
        // Exit 4: a read error (EINVAL), not 1 ("images differ").
        assert!(
            o.status.code().is_some_and(|c| c >= 2) && String::from_utf8_lossy(&o.stderr).contains("Invalid argument"),
            "qemu-img read through a parent with the wrong CID: {o:?}"
        );
    }
}

/// dissect.hypervisor reads the same chains: sha256 of its full read-through against sha256sum of
/// the expected raw image.
#[test]
fn dissect_reads_the_same() {
    let fixtures = [cowd_fixture(1, 500), cowd_fixture(16, 600), sesparse_fixture(700)];
    let children: Vec<&Path> = fixtures.iter().map(|f| f.child.as_path()).collect();
    let Some(sums) = oracle_read("dissect", &children) else {
        return;
    };
    for (fx, (n, sum)) in fixtures.iter().zip(sums) {
        assert_eq!(n, fx.cap, "dissect's size of {}", fx.child.display());
        let raw = fx.dir.path().join("expected.raw");
        write_raw_sparse(&raw, &fx.expected);
        if sum == sha256sum(&raw) {
            continue;
        }
        // dissect reads seSparse type-1 (unmapped) grains from the parent, where qemu, Xen
        // Orchestra and we read zeros. Everything else must still agree: the expected image with
        // the base's bytes in the unmapped grains.
        assert!(!fx.unmapped.is_empty(), "dissect reads the COWD chain differently (grain {} bytes)", fx.grain);
        let base = Link::open(&fx.base, &OpenOptions::read()).unwrap();
        let mut alt = fx.expected.clone();
        for &(s, e) in &fx.unmapped {
            base.read_at(&mut alt[s as usize..e as usize], s).unwrap();
        }
        let raw2 = fx.dir.path().join("expected-unmapped-from-parent.raw");
        write_raw_sparse(&raw2, &alt);
        assert_eq!(sum, sha256sum(&raw2), "dissect reads the seSparse chain differently, beyond unmapped grains");
        eprintln!("note: dissect.hypervisor reads seSparse unmapped (type 1) grains from the parent; qemu and vmkfs read zeros");
    }
}

/// A COWD grain table entry pointing past the end of the file; and (16-sector grains) one whose
/// grain starts inside the file but ends past it.
#[test]
fn corrupt_cowd_entry() {
    for grain in [1, 16] {
        let fx = cowd_fixture(grain, 800 + grain);
        let file_len = std::fs::metadata(&fx.extent).unwrap().len();
        let (&g, &entry) = fx.entries.iter().nth(fx.entries.len() / 2).unwrap();
        let other = *fx.entries.keys().find(|&&o| o != g).unwrap();
        let f = patch_file(&fx.extent);
        write_u32_at(&f, entry, (file_len / 512 + 10) as u32);
        let link = Link::open(&fx.extent, &OpenOptions::read()).unwrap();
        let mut buf = vec![0u8; 512];
        let e = link.read_at(&mut buf, g * fx.grain).unwrap_err();
        assert_corrupt(&e, &fx.extent, entry);
        let e = link.map(0, fx.cap).unwrap_err();
        assert_corrupt(&e, &fx.extent, entry);
        // Elsewhere the file still reads.
        link.read_at(&mut buf, other * fx.grain).unwrap();
        // Through the chain the error still names the delta file and the entry.
        let chain = Chain::open(&fx.child, &OpenOptions::read()).unwrap();
        let e = chain.read_at(&mut buf, g * fx.grain).unwrap_err();
        assert_corrupt(&e, &fx.extent, entry);
        let e = chain.map(0, fx.cap).unwrap_err();
        assert_corrupt(&e, &fx.extent, entry);
        drop((link, chain));

        if grain > 1 {
            // The grain's first half is inside the file, its second half past the end: a pointer
            // must hold a whole grain, so even a read of its first sector fails.
            write_u32_at(&f, entry, (file_len / 512 - grain / 2) as u32);
            let link = Link::open(&fx.extent, &OpenOptions::read()).unwrap();
            let e = link.read_at(&mut buf, g * fx.grain).unwrap_err();
            assert_corrupt(&e, &fx.extent, entry);
            let e = link.map(g * fx.grain, fx.grain).unwrap_err();
            assert_corrupt(&e, &fx.extent, entry);
            let chain = Chain::open(&fx.child, &OpenOptions::read()).unwrap();
            let mut whole = vec![0u8; fx.grain as usize];
            let e = chain.read_at(&mut whole, g * fx.grain).unwrap_err();
            assert_corrupt(&e, &fx.extent, entry);
        }
    }
}

/// seSparse grain table entries of unknown type (4…15), an unallocated entry with stray bits, an
/// allocated entry past the end of the file, and a directory entry without the table tag.
#[test]
fn corrupt_sesparse_entry() {
    let fx = sesparse_fixture(900);
    let (&g, &entry) = fx.entries.iter().next().unwrap();
    let f = patch_file(&fx.extent);
    let file_len = std::fs::metadata(&fx.extent).unwrap().len();
    let past_end = (file_len / 512 - SE_GRAINS) / 8 + 1;
    let raw = fx.dir.path().join("expected.raw");
    write_raw_sparse(&raw, &fx.expected);
    for v in [4u64 << 60, 0xf << 60 | 0x1234, 7 << 60, 0x0000_0000_0000_0001, se_allocated(past_end)] {
        write_u64_at(&f, entry, v);
        let link = Link::open(&fx.extent, &OpenOptions::read()).unwrap();
        let mut buf = vec![0u8; 4096];
        let e = link.read_at(&mut buf, g * SE_GRAIN).unwrap_err();
        assert_corrupt(&e, &fx.extent, entry);
        let e = link.map(0, fx.cap).unwrap_err();
        assert_corrupt(&e, &fx.extent, entry);
        let chain = Chain::open(&fx.child, &OpenOptions::read()).unwrap();
        let e = chain.read_at(&mut buf, g * SE_GRAIN).unwrap_err();
        assert_corrupt(&e, &fx.extent, entry);
        if have_qemu() && v >> 60 != 3 {
            // qemu refuses these entries too (VMDK_ERROR → EIO).
            let o =
                qemu_img(&["compare", "-f", "vmdk", "-F", "raw", fx.child.to_str().unwrap(), raw.to_str().unwrap()]);
            // Exit 3: "Sector allocation test failed" (1 would mean "images differ").
            assert!(o.status.code().is_some_and(|c| c >= 2), "qemu-img accepted grain table entry {v:#x}: {o:?}");
        }
    }
    // A directory entry whose top 32 bits are not 0x10000000: refused at open.
    let gde = SE_GD * 512 + (g / SE_GTES) * 8;
    let old = read_u64_at(&f, gde);
    write_u64_at(&f, gde, old | 0x2000_0000_0000_0000);
    let e = Link::open(&fx.extent, &OpenOptions::read()).unwrap_err();
    assert_corrupt(&e, &fx.extent, gde);
}

// ---------------------------------------------------------------------------------------------
// -x check of the delta formats (vmdk::check): file, offset and the reader's words
// ---------------------------------------------------------------------------------------------

/// The finding of `r` about `file` at `offset` saying `words`.
#[track_caller]
fn finding(r: &vmdk::check::Report, file: &Path, offset: u64, words: &str) -> vmdk::check::Finding {
    r.findings
        .iter()
        .find(|f| f.file == file && f.offset == offset && f.what.contains(words))
        .unwrap_or_else(|| panic!("no finding at {}:{offset} saying {words:?} in {:#?}", file.display(), r.findings))
        .clone()
}

/// COWD: clean as written; an entry past the end of the file, a grain used twice, a free sector
/// before the allocated grains, the unclean flag. The free sector and the flag are repaired; the
/// entries (no redundant copy) are not, and then nothing is changed.
#[test]
fn check_cowd_findings() {
    let fx = cowd_fixture(1, 950);
    let check = |p: &Path| vmdk::check::check_disk(p, &OpenOptions::read()).unwrap();
    let r = check(&fx.child);
    assert!(r.is_clean(), "{:#?}", r.findings);
    assert!(r.files.contains(&fx.extent), "{:?}", r.files);
    let good = std::fs::read(&fx.extent).unwrap();
    let f = patch_file(&fx.extent);
    let file_len = good.len() as u64;
    let mut e = fx.entries.iter();
    let ((&g, &entry), (&g2, &entry2)) = (e.next().unwrap(), e.next().unwrap());

    write_u32_at(&f, entry, (file_len / 512 + 10) as u32);
    let r = check(&fx.child);
    assert_eq!(r.findings.len(), 1, "{:#?}", r.findings);
    finding(
        &r,
        &fx.extent,
        entry,
        &format!("grain table entry for grain {g} points to sector {}, past the end of the file", file_len / 512 + 10),
    );
    std::fs::write(&fx.extent, &good).unwrap();

    let p2 = read_u32_at(&f, entry2);
    write_u32_at(&f, entry, p2);
    let r = check(&fx.child);
    finding(&r, &fx.extent, entry2, "a grain may be used only once");
    let f1 = finding(
        &r,
        &fx.extent,
        entry,
        &format!("grain table entry for grain {g} points to sector {p2}, whose grain overlaps"),
    );
    assert!(f1.what.contains(&format!("grain {g2}")) || f1.what.contains("another grain table entry"), "{f1:?}");
    let before = std::fs::read(&fx.extent).unwrap();
    let rerun = vec!["vmkfs".into(), "-x".into(), "repair".into()];
    let rr = vmdk::check::repair_disk(&fx.child, &OpenOptions::read(), rerun.clone()).unwrap();
    assert!(rr.refused() && rr.changes.is_empty(), "{rr:#?}");
    assert!(
        rr.findings
            .iter()
            .all(|f| f.undecided.as_deref() == Some("there is no redundant grain table entry to restore it from")),
        "{rr:#?}"
    );
    assert_eq!(std::fs::read(&fx.extent).unwrap(), before);
    std::fs::write(&fx.extent, &good).unwrap();

    // A writer died: its grains are past the free sector, the flag is set.
    let free = read_u32_at(&f, 28);
    write_u32_at(&f, 28, free - 3);
    write_u32_at(&f, 1648, 1);
    let r = check(&fx.child);
    assert_eq!(r.findings.len(), 2, "{:#?}", r.findings);
    finding(
        &r,
        &fx.extent,
        28,
        &format!(
            "free sector {} lies before the end of the allocated grain tables and grains (sector {free})",
            free - 3
        ),
    );
    finding(&r, &fx.extent, 1648, "unclean-shutdown flag is set");
    let rr = vmdk::check::repair_disk(&fx.child, &OpenOptions::read(), rerun).unwrap();
    assert!(!rr.refused() && rr.unrepaired() == 0, "{rr:#?}");
    assert_eq!(std::fs::read(&fx.extent).unwrap(), good, "free sector and flag as the writer leaves them");
    assert!(check(&fx.child).is_clean());
    // The backup is beside the descriptor (the disk's main file) and names the extent's header.
    let b = rr.backup.unwrap();
    assert_eq!(b.parent(), Some(std::fs::canonicalize(fx.dir.path()).unwrap().as_path()));
    let saved = vmdk::check::backup::Backup::read(&vmdk::HostStorage, &b).unwrap();
    assert_eq!(saved.blocks.len(), 1);
    assert_eq!((saved.blocks[0].offset, saved.blocks[0].data.len()), (0, 2048));
    assert_eq!(saved.blocks[0].file, std::fs::canonicalize(&fx.extent).unwrap());
}

/// seSparse: clean as written; an entry of unknown type, and a grain used twice.
#[test]
fn check_sesparse_findings() {
    let fx = sesparse_fixture(960);
    let check = |p: &Path| vmdk::check::check_disk(p, &OpenOptions::read()).unwrap();
    let r = check(&fx.child);
    assert!(r.is_clean(), "{:#?}", r.findings);
    let good = std::fs::read(&fx.extent).unwrap();
    let f = patch_file(&fx.extent);
    let allocated: Vec<(u64, u64)> =
        fx.entries.iter().map(|(&g, &at)| (g, at)).filter(|&(_, at)| read_u64_at(&f, at) >> 60 == 3).collect();
    let (g, entry) = allocated[0];
    write_u64_at(&f, entry, 7 << 60);
    let r = check(&fx.child);
    assert_eq!(r.findings.len(), 1, "{:#?}", r.findings);
    finding(&r, &fx.extent, entry, "has unknown type 7");
    std::fs::write(&fx.extent, &good).unwrap();
    let (g2, entry2) = allocated[1];
    write_u64_at(&f, entry2, read_u64_at(&f, entry));
    let r = check(&fx.child);
    // Reported at the entry met second (grains are walked in order), naming both.
    let later = if g2 > g { entry2 } else { entry };
    finding(
        &r,
        &fx.extent,
        later,
        &format!("grains {} and {} both point to the grain at sector", g.min(g2), g.max(g2)),
    );
}

/// A COWD log whose writer died (flag set, free sector behind the grains it appended) gets its
/// free sector back when opened for writing, before the first write; reading leaves it alone.
#[test]
fn cowd_opened_for_writing_after_a_crash_records_its_free_sector() {
    let fx = cowd_fixture(1, 970);
    let f = patch_file(&fx.extent);
    let free = read_u32_at(&f, 28);
    write_u32_at(&f, 28, free - 5);
    write_u32_at(&f, 1648, 1);
    drop(Link::open(&fx.extent, &OpenOptions::read()).unwrap());
    assert_eq!(read_u32_at(&f, 28), free - 5, "reading changes nothing");
    let link = Link::open(&fx.extent, &OpenOptions::write()).unwrap();
    assert_eq!(read_u32_at(&f, 28), free, "the free sector is the end of the file again");
    link.write_at(&vec![7u8; 512], 0).unwrap();
    link.close().unwrap();
    let r = vmdk::check::check_disk(&fx.extent, &OpenOptions::read()).unwrap();
    assert!(r.is_clean(), "{:#?}", r.findings);
}
