//! Several threads writing disjoint, unaligned ranges into one link through `&Link`. Neighbouring
//! ranges of different threads share grains, so threads race to allocate the same grain; each
//! thread reads its range back at once, and the whole disk is checked after the threads finish and
//! again after close + reopen.

mod common;

use common::*;
use vmdk::create::{create, CreateOptions, DiskFormat};
use vmdk::{Link, OpenOptions, State};

const THREADS: usize = 4;

fn assert_sync<T: Sync + Send>() {}

/// For each thread, the `(offset, bytes)` writes it makes.
type Plan = Vec<Vec<(u64, Vec<u8>)>>;

/// Disjoint ranges covering `[0, len)` with cuts on average `avg` bytes apart, each owned by a
/// random thread, with its bytes (one in five ranges all zeros).
fn plan(len: u64, avg: u64, seed: u64) -> (Plan, Vec<u8>) {
    let mut rng = Rng::new(seed);
    let mut want = vec![0u8; len as usize];
    let mut per_thread = vec![Vec::new(); THREADS];
    let mut pos = 0;
    while pos < len {
        let n = rng.range(1, 2 * avg).min(len - pos);
        let mut b = vec![0u8; n as usize];
        if !rng.chance(1, 5) {
            rng.fill_nonzero(&mut b);
        }
        want[pos as usize..(pos + n) as usize].copy_from_slice(&b);
        per_thread[rng.range(0, THREADS as u64 - 1) as usize].push((pos, b));
        pos += n;
    }
    // Each thread writes in its own random order.
    for (t, v) in per_thread.iter_mut().enumerate() {
        let mut r = Rng::new(seed ^ ((t as u64 + 1) * 7919));
        for i in (1..v.len()).rev() {
            v.swap(i, r.range(0, i as u64) as usize);
        }
    }
    (per_thread, want)
}

fn hammer(link: &Link, per_thread: &[Vec<(u64, Vec<u8>)>]) {
    std::thread::scope(|s| {
        for ranges in per_thread {
            s.spawn(move || {
                for (off, b) in ranges {
                    link.write_at(b, *off).unwrap();
                    let mut back = vec![0u8; b.len()];
                    link.read_at(&mut back, *off).unwrap();
                    assert_same(&back, b, &format!("read-back of {} bytes at {off}", b.len()));
                }
            });
        }
    });
}

fn run(format: DiskFormat, grain_sectors: u64, cap: u64, avg: u64, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("c.vmdk");
    let mut opts = CreateOptions::new(format, cap);
    opts.grain_sectors = grain_sectors;
    opts.split_sectors = 2048;
    let what = format!("{} grain {grain_sectors} avg {avg} seed {seed}", format.name());

    // Half of the disk is written while the disk is new, half after reopening it.
    let (per_thread, want) = plan(cap, avg, seed);
    let (first, second): (Vec<_>, Vec<_>) =
        per_thread.into_iter().map(|v| v.into_iter().partition::<Vec<_>, _>(|(off, _)| *off < cap / 2)).unzip();
    let nd = create(&img, &opts).unwrap();
    hammer(nd.link(), &first);
    nd.commit().unwrap();
    let link = Link::open(&img, &OpenOptions::write()).unwrap();
    hammer(&link, &second);
    assert_same(&read_all(&link), &want, &what);
    if format.is_sparse() {
        let map = link.map(0, cap).unwrap();
        for r in map.runs() {
            if r.state != State::Data {
                assert!(is_zero(&want[r.offset as usize..r.end() as usize]), "{what}: {r:?} holds data");
            }
        }
    }
    link.close().unwrap();
    let link = Link::open(&img, &OpenOptions::read()).unwrap();
    assert_same(&read_all(&link), &want, &format!("{what}, reopened"));
}

#[test]
fn link_is_sync() {
    assert_sync::<Link>();
}

#[test]
fn monosparse_many_writers() {
    for seed in 0..3 {
        run(DiskFormat::MonoSparse, 128, 6 * MIB, 20_000, seed);
    }
}

#[test]
fn monosparse_small_grains_tiny_ranges() {
    // Ranges of a few hundred bytes: every grain is shared by several threads.
    for seed in 10..13 {
        run(DiskFormat::MonoSparse, 8, MIB, 300, seed);
    }
}

#[test]
fn twogbsparse_many_writers() {
    for seed in 20..23 {
        run(DiskFormat::TwoGbSparse, 128, 5 * MIB + 4096, 15_000, seed);
    }
}

#[test]
fn thin_many_writers() {
    run(DiskFormat::Thin, 128, 4 * MIB, 10_000, 30);
}
