//! `-v N`: more detail on standard error. Level 1: the chain of the disk operated on (every link,
//! its format, CID and parentCID) and, after a copy, what the engine read and wrote and how fast;
//! level 2: also the engine's settings and the bytes of data, zeros and absent ranges per link of
//! the chain; level 3: also every allocation run.

use std::path::Path;
use std::time::Duration;

use vmkfs::engine::{CopyStats, EngineOptions};
use vmkfs::vmdk::State;

use crate::{open_options, out, Cli};

/// The `-v` level (0 without it).
pub fn level(cli: &Cli) -> u32 {
    cli.common.verbose.unwrap_or(0)
}

/// Describes the disk at `path` at the `-v` level: its chain, and from level 2 its map.
pub fn describe(cli: &Cli, path: &Path) {
    if level(cli) == 0 || path == Path::new("-") {
        return;
    }
    for (i, l) in vmkfs::redo::diagnose(path, &open_options(cli)).iter().enumerate() {
        out::err_line(format_args!(
            "vmkfs: link {i}: {} [{}] CID {} parentCID {} {}",
            l.path.display(),
            l.format,
            l.cid,
            l.parent_cid,
            l.status
        ));
    }
    if level(cli) >= 2 {
        describe_map(cli, path);
    }
}

/// Bytes per state and depth of the chain's map (level 2), every run (level 3).
fn describe_map(cli: &Cli, path: &Path) {
    let chain = match vmkfs::redo::Chain::open(path, &open_options(cli)) {
        Ok(c) => c,
        Err(e) => return out::err_line(format_args!("vmkfs: {}: map not read: {e}", path.display())),
    };
    let mut per_depth: Vec<[u64; 3]> = vec![[0; 3]; chain.links().len()];
    for r in vmkfs::vmdk::map::walk(&chain) {
        let r = match r {
            Ok(r) => r,
            Err(e) => return out::err_line(format_args!("vmkfs: {}: map walk stopped: {e}", path.display())),
        };
        let i = match r.state {
            State::Data => 0,
            State::Zero => 1,
            State::Absent => 2,
        };
        if let Some(d) = per_depth.get_mut(r.depth as usize) {
            d[i] += r.len;
        }
        if level(cli) >= 3 {
            out::err_line(format_args!("vmkfs: run {} +{} {:?} depth {}", r.offset, r.len, r.state, r.depth));
        }
    }
    for (depth, [data, zero, absent]) in per_depth.iter().enumerate() {
        out::err_line(format_args!("vmkfs: depth {depth}: {data} bytes of data, {zero} of zeros, {absent} absent"));
    }
}

/// The engine settings a copy runs with (level 2).
pub fn engine(cli: &Cli, e: &EngineOptions) {
    if level(cli) >= 2 {
        out::err_line(format_args!(
            "vmkfs: engine: {} reader thread(s), {} KiB chunks, {} chunks in flight, zero blocks of {} bytes, direct I/O {:?}",
            e.threads,
            e.chunk >> 10,
            e.in_flight,
            e.zero_block,
            e.direct
        ));
    }
}

/// What a copy did and how long it took (level 1).
pub fn copied(cli: &Cli, stats: &CopyStats, took: Duration) {
    if level(cli) == 0 {
        return;
    }
    let secs = took.as_secs_f64();
    let rate = if secs > 0.0 { stats.read as f64 / secs / (1 << 20) as f64 } else { 0.0 };
    out::err_line(format_args!(
        "vmkfs: read {} bytes, wrote {} bytes ({} bytes of the source's data ranges) in {secs:.3} s ({rate:.1} MiB/s read), {} writes",
        stats.read,
        stats.written,
        stats.total,
        if stats.direct { "direct" } else { "buffered" }
    ));
}
