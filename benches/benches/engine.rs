//! Criterion benchmarks for the copy path: zero detection, the allocation-map walk, and the clone
//! engine into each target format.
//!
//! Run: `cargo bench -p vmkfs-benches` (add `-- --quick` for a short run).

use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vmkfs::clone::{clone_disk, CloneOptions};
use vmkfs::engine::nonzero_runs;
use vmkfs::vmdk::create::{create, CreateOptions, DiskFormat};
use vmkfs::vmdk::extent::is_zero;
use vmkfs::vmdk::{Link, OpenOptions};

const SRC_BYTES: u64 = 64 << 20;

/// A 64 MiB source disk, half data: alternating 1 MiB runs of pseudo-random bytes and holes.
fn make_source(dir: &Path, format: DiskFormat) -> std::path::PathBuf {
    let path = dir.join(format!("src-{}.vmdk", format.name()));
    let new = create(&path, &CreateOptions::new(format, SRC_BYTES)).unwrap();
    let mut x: u64 = 42;
    let mut buf = vec![0u8; 1 << 20];
    for i in (0..SRC_BYTES).step_by(2 << 20) {
        for b in buf.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        new.link().write_at(&buf, i).unwrap();
    }
    new.commit().unwrap()
}

fn zero_detection(c: &mut Criterion) {
    let mut g = c.benchmark_group("zero_detection");
    let zeros = vec![0u8; 2 << 20];
    let mut mixed = vec![0u8; 2 << 20];
    for (i, b) in mixed.iter_mut().enumerate() {
        if (i / 4096) % 3 == 0 {
            *b = (i % 253) as u8 | 1;
        }
    }
    g.throughput(Throughput::Bytes(zeros.len() as u64));
    g.bench_function("is_zero 2MiB zeros", |b| b.iter(|| is_zero(std::hint::black_box(&zeros))));
    g.bench_function("nonzero_runs 2MiB mixed 4KiB", |b| b.iter(|| nonzero_runs(std::hint::black_box(&mixed), 4096)));
    g.finish();
}

fn map_walk(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("map_walk");
    for fmt in [DiskFormat::MonoSparse, DiskFormat::Thin] {
        let src = make_source(dir.path(), fmt);
        let link = Link::open(&src, &OpenOptions::read()).unwrap();
        g.throughput(Throughput::Bytes(SRC_BYTES));
        g.bench_with_input(BenchmarkId::from_parameter(fmt.name()), &link, |b, l| {
            b.iter(|| l.map(0, SRC_BYTES).unwrap())
        });
    }
    g.finish();
}

fn clone_targets(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let src = make_source(dir.path(), DiskFormat::MonoSparse);
    let mut g = c.benchmark_group("clone_64MiB_half_data");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(SRC_BYTES / 2));
    for fmt in DiskFormat::ALL {
        g.bench_function(BenchmarkId::from_parameter(fmt.name()), |b| {
            let dst = dir.path().join(format!("dst-{}.vmdk", fmt.name()));
            b.iter(|| {
                let mut opts = CloneOptions::new(fmt);
                opts.force = true;
                clone_disk(&src, &dst, &mut opts).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, zero_detection, map_walk, clone_targets);
criterion_main!(benches);
