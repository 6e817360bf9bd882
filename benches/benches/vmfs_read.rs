//! Reading a large file out of a VMFS volume: through the extent map (data runs read straight from
//! the device, as a SAN backup would), through positional `File::read_at`, and the device read
//! sequentially as the baseline the first two should match.
//!
//! Run: `cargo bench -p vmkfs-benches --bench vmfs_read` (add `-- --quick` for a short run).

#[path = "../../vmkfs/tests/vmfs_synth/mod.rs"]
#[allow(dead_code, clippy::all)]
mod vmfs_synth;

use std::os::unix::fs::FileExt;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vmfs_synth::{pattern, Builder, FileSpec, Gen, Layout};
use vmkfs::vmfs::{DeviceRunKind, Volume};

const FILE: u64 = 128 << 20;
const CHUNK: usize = 4 << 20;

fn vmfs_read(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Builder::new(Gen::V5, "bench", 512 << 20);
    // A thick file reached through pointer blocks, with a few holes.
    let chunks = vec![(0, pattern(1, (FILE - (8 << 20)) as usize))];
    b.file(
        "/disk-flat.vmdk",
        FileSpec { size: FILE, layout: Layout::Indirect { pb2: false }, chunks, sparse: false, tbz: vec![] },
    );
    let built = b.build(dir.path());
    let vol = Volume::open(&built.devices).unwrap();
    let f = vol.open_file("/disk-flat.vmdk").unwrap();
    let map = f.extents(0, f.len()).unwrap();
    let dev = std::fs::File::open(&built.devices[0]).unwrap();
    let mut buf = vec![0u8; CHUNK];

    let mut g = c.benchmark_group("vmfs_read_128MiB");
    g.throughput(Throughput::Bytes(FILE));
    g.sample_size(10);
    g.bench_function("extent_map_device_reads", |bn| {
        bn.iter(|| {
            let map = f.extents(0, f.len()).unwrap();
            let mut sum = 0u64;
            for e in &map {
                if let DeviceRunKind::Data { device_offset, .. } = e.kind {
                    let mut done = 0;
                    while done < e.len {
                        let n = (e.len - done).min(CHUNK as u64) as usize;
                        dev.read_exact_at(&mut buf[..n], device_offset + done).unwrap();
                        sum += buf[0] as u64;
                        done += n as u64;
                    }
                }
            }
            sum
        })
    });
    g.bench_function("file_read_at", |bn| {
        bn.iter(|| {
            let mut off = 0;
            let mut sum = 0u64;
            while off < f.len() {
                let n = f.read_at(&mut buf, off).unwrap();
                sum += buf[0] as u64;
                off += n as u64;
            }
            sum
        })
    });
    let data_start = map.iter().find_map(|e| match e.kind {
        DeviceRunKind::Data { device_offset, .. } => Some(device_offset),
        _ => None,
    });
    let start = data_start.unwrap();
    g.bench_function("device_sequential_baseline", |bn| {
        bn.iter(|| {
            let mut off = 0;
            let mut sum = 0u64;
            while off < FILE - (8 << 20) {
                dev.read_exact_at(&mut buf, start + off).unwrap();
                sum += buf[0] as u64;
                off += CHUNK as u64;
            }
            sum
        })
    });
    g.finish();
}

criterion_group!(benches, vmfs_read);
criterion_main!(benches);
