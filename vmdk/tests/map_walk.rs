//! The one map walker (`vmdk::map`): every way of asking for a map gives the same maximal runs —
//! the whole map at once, [`MapSource::map_into`] with budgets of a few runs, the walker, and the
//! maps of small pieces joined — for every extent kind (flat with holes, ZERO, hosted sparse over
//! several extents, COWD, streams indexed by a directory or by their markers) and for links stacked
//! as a chain, whose reads by depth give the chain's bytes. Grain tables left unwritten by the
//! creator (holes in the file) are skipped unread, yet a table written later is seen.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use vmdk::create::{create, create_delta, CreateOptions, DiskFormat, Parent};
use vmdk::extent::pieces;
use vmdk::map::{self, MapSource};
use vmdk::stack::Stack;
use vmdk::{AllocMap, Link, OpenOptions, State};

/// `src`'s map of `[0, capacity)` asked for with `budget`, a fresh map each call: each answer
/// covers exactly what it says it reached, and stops early only with `budget` runs or more.
fn by_budget<S: MapSource + ?Sized>(src: &S, budget: usize) -> AllocMap {
    let cap = src.capacity();
    let mut total = AllocMap::new();
    let mut pos = 0;
    while pos < cap {
        let mut m = AllocMap::new();
        let stop = src.map_into(pos, cap, budget, &mut m).unwrap();
        assert!(stop > pos && stop <= cap, "budget {budget}: stopped at {stop} from {pos}");
        assert_eq!((m.runs()[0].offset, m.len()), (pos, stop - pos), "budget {budget} at {pos}");
        if stop < cap {
            assert!(m.runs().len() >= budget, "budget {budget}: stopped at {stop} with {} runs", m.runs().len());
        }
        total.extend(&m);
        pos = stop;
    }
    total
}

/// Every way of walking `src` agrees; returns the map.
#[track_caller]
fn assert_walks_agree<S: MapSource + ?Sized>(src: &S, piece: u64) -> AllocMap {
    let cap = src.capacity();
    let whole = map::collect(src, 0, cap).unwrap();
    assert_map_covers(&whole, cap);
    for w in whole.runs().windows(2) {
        assert!((w[0].state, w[0].depth) != (w[1].state, w[1].depth), "not maximal: {w:?}");
    }
    for budget in [1, 2, 7] {
        assert_eq!(by_budget(src, budget), whole, "budget {budget}");
    }
    let walked: Vec<vmdk::Run> = map::walk(src).collect::<Result<_, _>>().unwrap();
    assert_eq!(walked, whole.runs(), "walker");
    let mut joined = AllocMap::new();
    for (o, l) in pieces(0, cap, piece) {
        joined.extend(&map::collect(src, o, l).unwrap());
    }
    assert_eq!(joined, whole, "pieces of {piece} bytes joined");
    whole
}

/// A disk of several extents: a flat file with holes, a ZERO extent, and two hosted sparse files
/// (one of them with a last grain cut by the extent's end).
#[test]
fn every_extent_kind_walks_alike() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let mut rng = Rng::new(5);
    let flat = pattern(2 * MIB, 3)
        .into_iter()
        .enumerate()
        .map(|(i, b)| if (i / 8192) % 3 == 0 { b } else { 0 })
        .collect::<Vec<u8>>();
    write_raw_sparse(&d.join("f.img"), &flat);
    let mut sparse_len = Vec::new();
    for (name, cap) in [("s1.vmdk", 3 * MIB), ("s2.vmdk", MIB + 20 * KIB + 512)] {
        let mut o = CreateOptions::new(DiskFormat::MonoSparse, 3 * MIB);
        o.grain_sectors = 8;
        let new = create(d.join(name), &o).unwrap();
        for _ in 0..40 {
            let off = rng.range(0, cap - 1);
            let len = rng.range(1, 20_000).min(cap - off);
            let fill = if rng.chance(1, 5) { vec![0u8; len as usize] } else { pattern(len, off) };
            new.link().write_at(&fill, off).unwrap();
        }
        new.commit().unwrap();
        sparse_len.push(cap / 512);
    }
    let desc = d.join("multi.vmdk");
    std::fs::write(
        &desc,
        format!(
            "version=1\nCID=1\nparentCID=ffffffff\ncreateType=\"custom\"\nRW 4096 FLAT \"f.img\" 0\nRW 3000 ZERO\nRW {} SPARSE \"s1.vmdk\"\nRW {} SPARSE \"s2.vmdk\"\n",
            sparse_len[0], sparse_len[1]
        ),
    )
    .unwrap();
    let link = Link::open(&desc, &OpenOptions::read()).unwrap();
    let m = assert_walks_agree(&link, 12_288);
    // The map says what the bytes are: data runs hold every non-zero byte, the rest reads as zeros.
    let bytes = read_all(&link);
    for r in m.runs().iter().filter(|r| r.state != State::Data) {
        assert!(is_zero(&bytes[r.offset as usize..r.end() as usize]), "{r:?} is not zeros");
    }
    assert!(
        m.runs().iter().any(|r| r.state == State::Zero && r.offset <= 2 * MIB && r.end() >= 2 * MIB + 3000 * 512),
        "{:?}",
        m.runs()
    );
}

/// Streams: indexed by their directory (with and without a footer), and by their markers.
#[test]
fn streams_walk_alike() {
    let t = tempfile::tempdir().unwrap();
    let grains: Vec<(u64, Vec<u8>)> =
        [0u64, 1, 5, 511, 512, 513, 2000, 2047].iter().map(|&g| (g, pattern(64 * KIB, g + 1))).collect();
    for footer in [true, false] {
        let p = t.path().join(format!("s{footer}.vmdk"));
        make_stream(&p, 2048 * 128, &grains, footer);
        let link = Link::open(&p, &OpenOptions::read()).unwrap();
        let m = assert_walks_agree(&link, 300 * KIB);
        let data: Vec<(u64, u64)> = map_set(&m, State::Data);
        let want = normalize(grains.iter().map(|(g, _)| (g * 64 * KIB, (g + 1) * 64 * KIB)).collect());
        assert_eq!(data, want, "footer {footer}");
    }
    // A directory-at-end stream without its footer (the footer marker, footer and end-of-stream
    // marker cut, an end-of-stream marker put back) is indexed by walking its markers.
    let p = t.path().join("scan.vmdk");
    make_stream(&p, 2048 * 128, &grains, true);
    let len = std::fs::metadata(&p).unwrap().len();
    let f = patch_file(&p);
    f.set_len(len - 1536).unwrap();
    f.set_len(len - 1024).unwrap();
    drop(f);
    let link = Link::open(&p, &OpenOptions::read()).unwrap();
    let m = assert_walks_agree(&link, 300 * KIB);
    let want = normalize(grains.iter().map(|(g, _)| (g * 64 * KIB, (g + 1) * 64 * KIB)).collect());
    assert_eq!(map_set(&m, State::Data), want, "indexed by its markers");
}

/// A COWD delta over a hosted sparse base, as a stack: walks agree, each run names the link that
/// holds it, and reads by depth give the chain's bytes.
#[test]
fn stacked_links_walk_and_read_alike() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let cap = 6 * MIB;
    let base_path = d.join("base.vmdk");
    let mut o = CreateOptions::new(DiskFormat::MonoSparse, cap);
    o.grain_sectors = 8;
    let new = create(&base_path, &o).unwrap();
    let mut model = vec![0u8; cap as usize];
    let mut rng = Rng::new(9);
    for _ in 0..30 {
        let off = rng.range(0, cap / 512 - 64) * 512;
        let data = pattern(rng.range(1, 64) * 512, off + 1);
        new.link().write_at(&data, off).unwrap();
        model[off as usize..off as usize + data.len()].copy_from_slice(&data);
    }
    new.commit().unwrap();
    let base = Arc::new(Link::open(&base_path, &OpenOptions::read()).unwrap());
    let parent = Parent { hint: "base.vmdk".into(), cid: base.descriptor().cid };
    let new =
        create_delta(d.join("child.vmdk"), cap, &parent, &CreateOptions::new(DiskFormat::MonoSparse, cap)).unwrap();
    for _ in 0..30 {
        let off = rng.range(0, cap / 512 - 64) * 512;
        let data = if rng.chance(1, 4) { vec![0u8; 4096] } else { pattern(rng.range(1, 64) * 512, off + 7) };
        new.link().write_at(&data, off).unwrap();
        model[off as usize..off as usize + data.len()].copy_from_slice(&data);
    }
    let child_path = new.commit().unwrap();
    let child = Arc::new(Link::open(&child_path, &OpenOptions::read()).unwrap());
    let links = vec![child.clone(), base.clone()];
    let stack = Stack::new(&links);
    let m = assert_walks_agree(&stack, 100 * KIB);
    for r in m.runs() {
        let own = links[r.depth as usize].map(r.offset, r.len).unwrap();
        assert!(own.runs().iter().all(|o| o.state == r.state), "{r:?}: the link at its depth says {own:?}");
    }
    let mut got = vec![0u8; cap as usize];
    for (o, l) in pieces(0, cap, 777 * 512) {
        stack.read_at(&mut got[o as usize..(o + l) as usize], o).unwrap();
    }
    assert_same(&got, &model, "stack reads");
    // The chain reads the same through its parent link too (partial-grain fills use it).
    child.set_parent(Some(base.clone() as _));
    let mut via_link = vec![0u8; cap as usize];
    child.read_at(&mut via_link, 0).unwrap();
    assert_same(&via_link, &model, "link reads through its parent");
    child.set_parent(None);
}

/// A new hosted sparse disk leaves its tables unwritten (holes); walks skip them unread, and a
/// table written later (through the link, then after reopening) is seen. A copy whose tables are
/// written out as zeros (as other writers make them) maps the same.
#[test]
fn unwritten_tables_are_skipped_but_written_ones_seen() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("d.vmdk");
    let cap = 256 * MIB;
    let new = create(&p, &CreateOptions::new(DiskFormat::MonoSparse, cap)).unwrap();
    new.commit().unwrap();
    let allocated = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().blocks() * 512
    };
    assert!(allocated(&p) < 64 * KIB, "a new disk's tables are holes ({} bytes allocated)", allocated(&p));
    let link = Link::open(&p, &OpenOptions::write()).unwrap();
    assert_eq!(map_set(&link.map(0, cap).unwrap(), State::Absent), vec![(0, cap)]);
    let data = pattern(64 * KIB, 1);
    link.write_at(&data, 200 * MIB).unwrap();
    assert_eq!(map_set(&link.map(0, cap).unwrap(), State::Data), vec![(200 * MIB, 200 * MIB + 64 * KIB)]);
    link.close().unwrap();
    let link = Link::open(&p, &OpenOptions::read()).unwrap();
    let m = link.map(0, cap).unwrap();
    assert_eq!(map_set(&m, State::Data), vec![(200 * MIB, 200 * MIB + 64 * KIB)]);
    let mut back = vec![0u8; data.len()];
    link.read_at(&mut back, 200 * MIB).unwrap();
    assert_same(&back, &data, "the grain");
    drop(link);
    // The same disk with every byte before the first grain written out.
    let q = t.path().join("dense.vmdk");
    let mut bytes = std::fs::read(&p).unwrap();
    let overhead = u64::from_le_bytes(bytes[64..72].try_into().unwrap()) * 512;
    let f = std::fs::File::create(&q).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &bytes[..overhead as usize], 0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &bytes.split_off(overhead as usize), overhead).unwrap();
    drop(f);
    assert!(allocated(&q) >= overhead);
    assert_eq!(Link::open(&q, &OpenOptions::read()).unwrap().map(0, cap).unwrap(), m);
}
