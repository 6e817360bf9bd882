//! Metadata cost in proportion to allocated data, not to capacity (issue 11).
//!
//! The same 1 MiB change above a 1 GiB and a 1 TiB disk, in the three chain shapes (an ESX delta
//! over a thin disk, a hosted child over monosparse, an ESX 2 `.REDO` log over a thin disk): the map
//! of the chain, its changed blocks and the commit of the child read about as much metadata at
//! 1 TiB as at 1 GiB. Reads are counted through a counting storage (calls and bytes, and
//! `SEEK_DATA` walks), never timed. Then disks whose metadata or capacity is huge — a ZERO extent
//! of 2^55−1 sectors, an empty COWD of 2^32−1 sectors, a hosted sparse file of 2^36 one-sector
//! grains — are mapped and described by the command within a generous timeout, as one run.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::*;
use vmkfs::redo::Chain;
use vmkfs::vmdk::{OpenOptions, State};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `vmfsSparse` (COWD) child of a thin ESX disk.
    Esx,
    /// monolithicSparse child of a monolithicSparse disk.
    Hosted,
    /// ESX 2 `base.vmdk.REDO` over a thin ESX disk.
    Redo,
}

const SHAPES: [Shape; 3] = [Shape::Esx, Shape::Hosted, Shape::Redo];
const TIB: u64 = 1 << 40;

/// Makes the chain of `shape` of capacity `cap` in `dir`, with 1 MiB written in the middle of its
/// top link; returns the top's name and the data.
fn chain(dir: &Path, shape: Shape, cap: u64) -> (String, Vec<u8>) {
    let format = if shape == Shape::Hosted { "monosparse" } else { "thin" };
    create_disk(dir, "base.vmdk", format, cap);
    let top = snapshot(dir, "base.vmdk", shape == Shape::Redo);
    let data = write_pattern(dir, &top, cap / 2, MIB as usize, 11);
    (top, data)
}

/// Runs `f` with options over a counting storage; returns what `f` returned and the counts
/// (reads, bytes read, data-run walks).
fn counted<T>(f: impl FnOnce(&OpenOptions) -> T) -> (T, (u64, u64, u64)) {
    let (storage, counts) = Counting::storage();
    let opts = OpenOptions { storage, ..OpenOptions::read() };
    let out = f(&opts);
    (out, counts.get())
}

/// Bytes of the grain directories a link of `shape` and capacity `cap` reads when opened (they
/// are as large as the capacity requires; a walk must read nothing else in proportion to it).
fn directory_bytes(shape: Shape, cap: u64) -> u64 {
    match shape {
        // One directory entry per 2 MiB table (4096 one-sector grains).
        Shape::Esx | Shape::Redo => cap / (2 * MIB) * 4,
        // Two directories (and the redundant one) of one entry per 32 MiB table.
        Shape::Hosted => 2 * cap / (32 * MIB) * 4,
    }
}

/// What one operation cost at 1 GiB and at 1 TiB.
#[derive(Debug)]
struct Cost {
    what: String,
    small: (u64, u64, u64),
    large: (u64, u64, u64),
}

impl Cost {
    /// At most a small constant factor more reads and seeks at 1 TiB, and no more bytes than the
    /// small disk's plus the larger directories (each open of a link reads its directory once).
    fn check(&self, shape: Shape, opens: u64) {
        let (s, l) = (self.small, self.large);
        assert!(l.0 <= 2 * s.0 + 8, "{}: {} reads at 1 TiB, {} at 1 GiB", self.what, l.0, s.0);
        assert!(l.2 <= 2 * s.2 + 40, "{}: {} data-run walks at 1 TiB, {} at 1 GiB", self.what, l.2, s.2);
        let allowance = opens * (directory_bytes(shape, TIB) + directory_bytes(shape, GIB));
        assert!(
            l.1 <= 2 * s.1 + allowance,
            "{}: {} bytes read at 1 TiB, {} at 1 GiB (directories: {allowance})",
            self.what,
            l.1,
            s.1
        );
    }
}

/// The map, changed blocks and commit of the chain of `shape` at capacity `cap`; checks what each
/// answers, and returns their counts.
fn costs(shape: Shape, cap: u64) -> [(u64, u64, u64); 3] {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let (top, data) = chain(d, shape, cap);
    let top = d.join(top);
    let (runs, map) = counted(|o| {
        let c = Chain::open(&top, o).unwrap();
        vmkfs::vmdk::map::walk(&c).collect::<Result<Vec<_>, _>>().unwrap()
    });
    let data_runs: Vec<(u64, u64, u32)> =
        runs.iter().filter(|r| r.state == State::Data).map(|r| (r.offset, r.len, r.depth)).collect();
    assert_eq!(data_runs, vec![(cap / 2, MIB, 0)], "{shape:?} at {cap}: {runs:?}");
    assert!(runs.len() <= 3, "{shape:?} at {cap}: the map is not in maximal runs: {runs:?}");
    let (changes, changed) =
        counted(|o| vmkfs::redo_ops::changed_blocks(&top, None, vmkfs::redo::changemap::DEFAULT_BLOCK, o).unwrap());
    assert_eq!(changes.ranges().collect::<Vec<_>>(), vec![(cap / 2, MIB)], "{shape:?} at {cap}");
    let ((), commit) = counted(|o| {
        vmkfs::redo_ops::commit(&top, o, &mut |_, _| {}, None).unwrap();
    });
    assert!(!top.exists(), "{shape:?}: the child is gone after the commit");
    assert_eq!(read_at(d, "base.vmdk", cap / 2, MIB), data, "{shape:?}: the base holds the change");
    [map, changed, commit]
}

#[test]
fn metadata_reads_do_not_grow_with_capacity() {
    for shape in SHAPES {
        let small = costs(shape, GIB);
        let large = costs(shape, TIB);
        // How many directories each operation reads: the chain's links with one (a hosted base has
        // one too), each time it opens them.
        let links = if shape == Shape::Hosted { 2 } else { 1 };
        for (i, (what, opens)) in [("--map", links), ("--changed-blocks", links), ("-m", 4)].into_iter().enumerate() {
            let c = Cost { what: format!("{shape:?} {what}"), small: small[i], large: large[i] };
            eprintln!("{c:?}");
            c.check(shape, opens);
        }
    }
}

/// `-x check` of the same chains reads the tables that exist, not one per directory entry. A
/// hosted sparse file holds every grain table of its capacity from its creation (so does VMware's),
/// and the check reads each of them, and its redundant copy, once: for that shape the tables are
/// the allowance. A COWD child holds the tables of its data only.
#[test]
fn check_reads_do_not_grow_with_capacity() {
    for shape in SHAPES {
        let cost = |cap: u64| {
            let t = tempfile::tempdir().unwrap();
            let (top, _) = chain(t.path(), shape, cap);
            let top = t.path().join(top);
            let (report, n) = counted(|o| vmkfs::vmdk::check::check_disk(&top, o).unwrap());
            assert!(report.is_clean(), "{shape:?}: {report:?}");
            n
        };
        let (small, mut large) = (cost(GIB), cost(TIB));
        eprintln!("{shape:?} -x check: {small:?} at 1 GiB, {large:?} at 1 TiB");
        if shape == Shape::Hosted {
            // Tables of 512 entries (2 KiB) per 32 MiB, and as many redundant ones, in each of the
            // chain's two hosted files: one read each.
            let tables = |cap: u64| 2 * 2 * cap / (32 * MIB);
            assert!(large.0 <= tables(TIB) + 2 * small.0 + 8, "{shape:?}: {large:?} at 1 TiB, {small:?} at 1 GiB");
            assert!(large.1 <= tables(TIB) * 2048 + 2 * small.1 + 2 * directory_bytes(shape, TIB));
            large.0 = large.0.saturating_sub(tables(TIB));
            large.1 = large.1.saturating_sub(tables(TIB) * 2048);
        }
        let c = Cost { what: format!("{shape:?} -x check"), small, large };
        // The chain's open reads each directory once and the per-kind check once more.
        c.check(shape, 2);
    }
}

/// `--info` and `--map` of `disk` in `dir` finish within the timeout; the map is one run, of
/// `state` over the whole capacity.
fn one_run_quickly(dir: &Path, disk: &str, capacity: u64, state: &str) {
    let limit = Duration::from_secs(20);
    let o = run(vmkfs_cmd(dir, &["--map", "--json", disk]), None, Some(limit));
    assert!(o.success() && !o.timed_out, "{}", o.describe());
    let map: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let runs = map.as_array().unwrap();
    assert_eq!(runs.len(), 1, "{disk}: {map}");
    assert_eq!((runs[0]["start"].as_u64(), runs[0]["length"].as_u64()), (Some(0), Some(capacity)), "{disk}: {map}");
    assert_eq!(runs[0]["data"], false, "{disk}: {map}");
    let plain = run(vmkfs_cmd(dir, &["--map", disk]), None, Some(limit));
    assert!(plain.success() && plain.out().contains(state), "{}", plain.describe());
    let o = run(vmkfs_cmd(dir, &["--info", "--json", disk]), None, Some(limit));
    assert!(o.success() && !o.timed_out, "{}", o.describe());
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((info["capacity"].as_u64(), info["allocated"].as_u64()), (Some(capacity), Some(0)), "{info}");
}

#[test]
fn huge_empty_disks_map_in_one_run() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // A ZERO extent of 2^55-1 sectors (a 118-byte descriptor).
    let sectors: u64 = (1 << 55) - 1;
    std::fs::write(
        d.join("z.vmdk"),
        format!("version=1\nCID=1\nparentCID=ffffffff\ncreateType=\"custom\"\nRW {sectors} ZERO\n"),
    )
    .unwrap();
    one_run_quickly(d, "z.vmdk", sectors * 512, "zero");

    // An empty COWD of 2^32-1 one-sector grains, 4096 to a table: a directory of 2^20 entries.
    let sectors: u64 = (1 << 32) - 1;
    let gdes = sectors.div_ceil(4096);
    let mut h = vec![0u8; 2048];
    for (at, v) in [(4, 1u64), (8, 3), (12, sectors), (16, 1), (20, 4), (24, gdes), (28, 4 + gdes * 4 / 512)] {
        h[at..at + 4].copy_from_slice(&(v as u32).to_le_bytes());
    }
    h[..4].copy_from_slice(b"COWD");
    let f = std::fs::File::create(d.join("empty.vmdk")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &h, 0).unwrap();
    f.set_len((4 + gdes * 4 / 512) * 512).unwrap();
    one_run_quickly(d, "empty.vmdk", sectors * 512, "absent");

    // A hosted sparse file of 2^36 one-sector grains, 4096 to a table: a 64 MiB directory, written
    // (the file holds what its header claims), every entry 0.
    let capacity: u64 = 1 << 36;
    let gdes = capacity / 4096;
    let mut h = vec![0u8; 512];
    h[..4].copy_from_slice(b"KDMV");
    h[4..8].copy_from_slice(&1u32.to_le_bytes()); // version
    h[8..12].copy_from_slice(&1u32.to_le_bytes()); // flags: newline test
    h[12..20].copy_from_slice(&capacity.to_le_bytes());
    h[20..28].copy_from_slice(&1u64.to_le_bytes()); // grain: one sector
    h[44..48].copy_from_slice(&4096u32.to_le_bytes());
    h[56..64].copy_from_slice(&1u64.to_le_bytes()); // directory at sector 1
    h[64..72].copy_from_slice(&(1 + gdes * 4 / 512).to_le_bytes()); // overHead
    h[73..77].copy_from_slice(b"\n \r\n");
    let mut f = std::fs::File::create(d.join("g1.vmdk")).unwrap();
    f.write_all(&h).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..gdes * 4 / (1 << 20) {
        f.write_all(&zeros).unwrap();
    }
    drop(f);
    one_run_quickly(d, "g1.vmdk", capacity * 512, "absent");
}
