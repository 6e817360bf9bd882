//! Model-based property test: random writes (unaligned offsets and lengths, spanning grains and
//! extents, some all-zero or nearly zero) go both to a sparse link and to a `Vec<u8>`; full reads
//! must agree after the writes, after commit and reopen for more writes, and after close + reopen.

mod common;

use common::{assert_map_covers, is_zero, read_all, Rng, KIB, MIB};
use proptest::prelude::*;
use vmdk::create::{create, CreateOptions, DiskFormat};
use vmdk::{Link, OpenOptions, State};

#[derive(Debug, Clone)]
enum Fill {
    Random(u64),
    Zero,
    /// Zeros with one non-zero byte at this fraction of the length.
    Lone(u8),
}

#[derive(Debug, Clone)]
struct Op {
    offset: u64,
    len: u64,
    fill: Fill,
}

#[derive(Debug, Clone)]
struct Case {
    format: DiskFormat,
    grain_sectors: u64,
    capacity: u64,
    split_sectors: u64,
    ops: Vec<Op>,
    /// Ops before the reopen.
    first: usize,
}

fn case() -> impl Strategy<Value = Case> {
    (any::<bool>(), prop_oneof![Just(8u64), Just(128u64)]).prop_flat_map(|(mono, grain)| {
        let format = if mono { DiskFormat::MonoSparse } else { DiskFormat::TwoGbSparse };
        // Not a multiple of the grain: the last grain is partial. Split extents of 512 KiB.
        let capacity = if mono { 3 * MIB + 20 * KIB + 512 } else { 2 * MIB + 20 * KIB + 512 };
        let split_sectors = 1024;
        let boundaries: Vec<u64> = (1..=capacity / (512 * KIB)).map(|i| i * 512 * KIB).collect();
        let offset = prop_oneof![
            3 => 0..capacity,
            1 => (proptest::sample::select(boundaries), -5000i64..5000).prop_map(move |(b, d)| (b as i64 + d) as u64),
            1 => Just(capacity - 1),
        ];
        let fill = prop_oneof![
            3 => any::<u64>().prop_map(Fill::Random),
            1 => Just(Fill::Zero),
            1 => any::<u8>().prop_map(Fill::Lone),
        ];
        let len = prop_oneof![3 => 1u64..70_000, 1 => 1u64..700_000, 1 => 1u64..600];
        let op = (offset, len, fill).prop_map(move |(o, l, fill)| {
            let o = o.min(capacity - 1);
            Op { offset: o, len: l.min(capacity - o), fill }
        });
        (proptest::collection::vec(op, 1..30), 0usize..30).prop_map(move |(ops, first)| Case {
            format,
            grain_sectors: grain,
            capacity,
            split_sectors,
            first: first.min(ops.len()),
            ops,
        })
    })
}

fn bytes(op: &Op) -> Vec<u8> {
    let mut v = vec![0u8; op.len as usize];
    match op.fill {
        Fill::Random(seed) => Rng::new(seed).fill_nonzero(&mut v),
        Fill::Zero => {}
        Fill::Lone(f) => {
            let at = (op.len - 1) * f as u64 / 255;
            v[at as usize] = 0x77;
        }
    }
    v
}

fn apply(link: &Link, model: &mut [u8], ops: &[Op]) {
    for op in ops {
        let b = bytes(op);
        link.write_at(&b, op.offset).unwrap();
        model[op.offset as usize..(op.offset + op.len) as usize].copy_from_slice(&b);
    }
}

fn check(link: &Link, model: &[u8], when: &str) -> Result<(), TestCaseError> {
    let got = read_all(link);
    if got != model {
        let i = got.iter().zip(model).position(|(a, b)| a != b).unwrap_or(0);
        return Err(TestCaseError::fail(format!("{when}: first difference at byte {i}")));
    }
    // Every non-zero byte is stored; nothing claims to be zero or absent where data is.
    let map = link.map(0, link.capacity()).unwrap();
    assert_map_covers(&map, link.capacity());
    for r in map.runs() {
        prop_assert!(r.state != State::Zero, "{when}: unexpected zeroed grain {r:?}");
        if r.state == State::Absent {
            let s = &model[r.offset as usize..r.end() as usize];
            prop_assert!(is_zero(s), "{when}: absent run {r:?} holds data");
        }
    }
    Ok(())
}

fn run(c: &Case) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("p.vmdk");
    let mut opts = CreateOptions::new(c.format, c.capacity);
    opts.grain_sectors = c.grain_sectors;
    opts.split_sectors = c.split_sectors;
    let nd = create(&img, &opts).unwrap();
    let mut model = vec![0u8; c.capacity as usize];
    apply(nd.link(), &mut model, &c.ops[..c.first]);
    check(nd.link(), &model, "before commit")?;
    nd.commit().unwrap();

    let link = Link::open(&img, &OpenOptions::write()).unwrap();
    check(&link, &model, "reopened for writing")?;
    apply(&link, &mut model, &c.ops[c.first..]);
    check(&link, &model, "after more writes")?;
    link.close().unwrap();

    let link = Link::open(&img, &OpenOptions::read()).unwrap();
    prop_assert!(!link.was_unclean());
    check(&link, &model, "after close and reopen")?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn sparse_link_matches_model(c in case()) {
        run(&c)?;
    }
}

/// Fixed cases that have mattered: a write ending exactly at the capacity (partial last grain), a
/// zero write over an absent grain followed by a lone byte, writes straddling every extent boundary.
#[test]
fn fixed_cases() {
    for format in [DiskFormat::MonoSparse, DiskFormat::TwoGbSparse] {
        for grain_sectors in [8, 128] {
            let capacity = 2 * MIB + 20 * KIB + 512;
            let mut ops = vec![
                Op { offset: capacity - 3000, len: 3000, fill: Fill::Random(1) },
                Op { offset: 64 * KIB, len: 64 * KIB, fill: Fill::Zero },
                Op { offset: 64 * KIB + 5, len: 10, fill: Fill::Lone(128) },
                Op { offset: 0, len: 1, fill: Fill::Random(2) },
            ];
            for b in 1..=4 {
                ops.push(Op { offset: b * 512 * KIB - 777, len: 1554, fill: Fill::Random(b) });
            }
            ops.push(Op { offset: 100_000, len: 1_500_000, fill: Fill::Zero });
            ops.push(Op { offset: 300_001, len: 70_000, fill: Fill::Random(9) });
            let c = Case { format, grain_sectors, capacity, split_sectors: 1024, first: 5, ops };
            run(&c).unwrap();
        }
    }
}
