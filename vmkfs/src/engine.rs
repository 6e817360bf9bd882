//! The copy engine: the one place data moves from a source disk to a target link.
//!
//! ```text
//! source --map--> planner (chunks, grain aligned) --> N reader threads (pread, zero detection)
//!     parallel targets (flat, thin, thick): each reader writes its own chunk (pwrite)
//!     ordered targets (sparse):             one writer appends chunks in LBA order
//! ```
//!
//! The planner walks the source's allocation map in windows and hands out chunks of at most
//! [`EngineOptions::chunk`] bytes whose boundaries are multiples of the chunk size (so every grain
//! size up to the chunk size stays aligned). Ranges the map says are absent or zero are never read.
//! Every chunk read is split into blocks of [`EngineOptions::zero_block`] bytes and all-zero blocks
//! are not written, so thin and sparse targets stay thin. With `zero_target` (raw devices, which
//! hold stale data) ranges without data are zeroed through the target's zeroing primitive. In dense
//! mode (eager-zeroed targets) every byte of the target is written, zeros included.
//!
//! Memory is bounded: at most [`EngineOptions::in_flight`] chunk buffers exist at once, whatever
//! the disk size.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Condvar, Mutex};

use redo::Chain;
use vmdk::extent::is_zero;
use vmdk::{AllocMap, Link, State};

use crate::error::{Error, Result};

/// What the engine reads from.
pub trait Source: Sync {
    /// Capacity in bytes.
    fn capacity(&self) -> u64;
    /// Merged allocation map of a range.
    fn map(&self, offset: u64, len: u64) -> vmdk::Result<AllocMap>;
    /// Reads a range.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vmdk::Result<()>;
}

impl Source for Chain {
    fn capacity(&self) -> u64 {
        Chain::capacity(self)
    }
    fn map(&self, offset: u64, len: u64) -> vmdk::Result<AllocMap> {
        Chain::map(self, offset, len)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vmdk::Result<()> {
        Chain::read_at(self, buf, offset)
    }
}

/// How the engine runs.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Chunk size in bytes (a power of two, at least `zero_block`).
    pub chunk: u64,
    /// Reader threads.
    pub threads: usize,
    /// Zero-detection block size in bytes (a power of two dividing `chunk`).
    pub zero_block: usize,
    /// Write every byte of the target, zeros included (eager zeroing).
    pub dense: bool,
    /// Write chunks in LBA order through one writer (sparse targets).
    pub ordered: bool,
    /// Most chunk buffers alive at once.
    pub in_flight: usize,
    /// Start writeback of each chunk as soon as it is written, so the final flush overlaps the copy.
    pub writeback: bool,
    /// Skip all-zero blocks of data ranges (thin targets). Off when the target may hold older data
    /// the zeros must overwrite (committing a REDO link into its parent).
    pub skip_zeros: bool,
    /// Zero the target where the source map holds no data, with [`Link::zero_range`] (`BLKZEROOUT`
    /// on a device, `FALLOC_FL_ZERO_RANGE` on a file) instead of leaving it alone: for targets that
    /// hold stale data, like a raw device. Pair it with `skip_zeros = false`, so zero blocks inside
    /// data ranges are written too, and the target then reads exactly as the source.
    pub zero_target: bool,
}

impl EngineOptions {
    /// Defaults: 2 MiB chunks, two readers per core (at least 4), 4 KiB zero blocks, parallel writes.
    pub fn new() -> EngineOptions {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        let threads = env("VMKFS_THREADS").map(|t| t as usize).unwrap_or((cores * 2).clamp(4, 16));
        let chunk = env("VMKFS_CHUNK_KIB").map(|k| (k << 10).next_power_of_two()).unwrap_or(2 << 20);
        EngineOptions {
            chunk,
            threads,
            zero_block: 4096,
            dense: false,
            ordered: false,
            in_flight: threads + 4,
            writeback: std::env::var_os("VMKFS_NO_WRITEBACK").is_none(),
            skip_zeros: true,
            zero_target: false,
        }
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions::new()
    }
}

/// What a copy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Bytes read from the source.
    pub read: u64,
    /// Bytes written to the target.
    pub written: u64,
    /// Bytes the target would have been sent had zeros not been skipped.
    pub total: u64,
}

#[derive(Debug, Clone, Copy)]
struct Chunk {
    idx: u64,
    offset: u64,
    len: u64,
    /// Read from the source (false: the chunk is zeros; only in dense mode).
    read: bool,
}

/// Hands out chunks in disk order, walking the source map in windows.
struct Planner<'a> {
    src: &'a dyn Source,
    chunk: u64,
    dense: bool,
    window_end: u64,
    runs: std::vec::IntoIter<vmdk::Run>,
    cur: Option<(u64, u64, bool)>,
    next_idx: u64,
}

const WINDOW: u64 = 1 << 30;

impl Planner<'_> {
    fn next(&mut self) -> vmdk::Result<Option<Chunk>> {
        loop {
            if let Some((pos, end, read)) = self.cur {
                if pos < end {
                    // Cut at the next multiple of the chunk size.
                    let cut = ((pos / self.chunk) + 1) * self.chunk;
                    let stop = cut.min(end);
                    self.cur = Some((stop, end, read));
                    let c = Chunk { idx: self.next_idx, offset: pos, len: stop - pos, read };
                    self.next_idx += 1;
                    return Ok(Some(c));
                }
                self.cur = None;
            }
            match self.runs.next() {
                Some(r) => {
                    let data = r.state == State::Data;
                    if data || self.dense {
                        self.cur = Some((r.offset, r.end(), data));
                    }
                }
                None => {
                    let cap = self.src.capacity();
                    if self.window_end >= cap {
                        return Ok(None);
                    }
                    let start = self.window_end;
                    let len = WINDOW.min(cap - start);
                    self.runs = self.src.map(start, len)?.into_runs().into_iter();
                    self.window_end = start + len;
                }
            }
        }
    }
}

/// Limits how far readers may run ahead of the ordered writer.
struct Gate {
    written: Mutex<u64>,
    cv: Condvar,
}

impl Gate {
    fn wait(&self, idx: u64, ahead: u64, abort: &AtomicBool) {
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        while idx >= *w + ahead && !abort.load(Ordering::Acquire) {
            w = self.cv.wait(w).unwrap_or_else(|p| p.into_inner());
        }
    }
    fn advance(&self, to: u64) {
        *self.written.lock().unwrap_or_else(|p| p.into_inner()) = to;
        self.cv.notify_all();
    }
    fn wake(&self) {
        let _g = self.written.lock().unwrap_or_else(|p| p.into_inner());
        self.cv.notify_all();
    }
}

/// Splits `buf` into runs of non-zero `block`-sized blocks: `(start, len)` pairs.
pub fn nonzero_runs(buf: &[u8], block: usize) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < buf.len() {
        let end = (i + block).min(buf.len());
        if !is_zero(&buf[i..end]) {
            match out.last_mut() {
                Some((s, l)) if *s + *l == i => *l += end - i,
                _ => out.push((i, end - i)),
            }
        }
        i = end;
    }
    out
}

/// A chunk read and waiting for the ordered writer: the chunk, its buffer, the runs to write.
type Filled = (Chunk, Vec<u8>, Vec<(usize, usize)>);

enum Msg {
    /// A chunk read (ordered mode): its buffer and the runs to write.
    Filled {
        chunk: Chunk,
        buf: Vec<u8>,
        runs: Vec<(usize, usize)>,
    },
    /// A chunk fully handled by its reader (parallel mode).
    Done {
        chunk: Chunk,
        written: u64,
    },
    Failed(Error),
}

/// Bytes the copy will move: data bytes of the source map (or the capacity in dense mode).
pub fn plan_total(src: &dyn Source, dense: bool) -> vmdk::Result<u64> {
    if dense {
        return Ok(src.capacity());
    }
    crate::info::allocated_bytes(src.capacity(), false, |o, l| src.map(o, l))
}

/// Copies `src` into `dst` (same capacity). `progress(done, total)` is called from the calling
/// thread; `cancel`, when set, stops the copy with [`Error::Interrupted`].
pub fn copy(
    src: &dyn Source,
    dst: &Link,
    opts: &EngineOptions,
    progress: &mut dyn FnMut(u64, u64),
    cancel: Option<&AtomicBool>,
) -> Result<CopyStats> {
    if dst.capacity() < src.capacity() {
        return Err(Error::Usage(format!("target holds {} bytes, source {}", dst.capacity(), src.capacity())));
    }
    assert!(opts.chunk.is_power_of_two() && opts.zero_block.is_power_of_two() && opts.zero_block as u64 <= opts.chunk);
    let total = plan_total(src, opts.dense || opts.zero_target)?;
    let mut stats = CopyStats { total, ..CopyStats::default() };
    progress(0, total);
    let planner = Mutex::new(Planner {
        src,
        chunk: opts.chunk,
        dense: opts.dense || opts.zero_target,
        window_end: 0,
        runs: Vec::new().into_iter(),
        cur: None,
        next_idx: 0,
    });
    let threads = opts.threads.max(1);
    let in_flight = opts.in_flight.max(threads + 1);
    let abort = AtomicBool::new(false);
    let gate = Gate { written: Mutex::new(0), cv: Condvar::new() };
    let pool: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    let zeros = vec![0u8; opts.chunk as usize];
    let (tx, rx) = sync_channel::<Msg>(in_flight);
    let cancelled = || cancel.is_some_and(|c| c.load(Ordering::Relaxed));

    let worker = |tx: std::sync::mpsc::SyncSender<Msg>| {
        let fail = |e: Error| {
            abort.store(true, Ordering::Release);
            gate.wake();
            let _ = tx.send(Msg::Failed(e));
        };
        loop {
            if abort.load(Ordering::Acquire) {
                return;
            }
            let chunk = match planner.lock().unwrap_or_else(|p| p.into_inner()).next() {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(e) => return fail(e.into()),
            };
            if opts.ordered {
                gate.wait(chunk.idx, in_flight as u64 - threads as u64, &abort);
                if abort.load(Ordering::Acquire) {
                    return;
                }
            }
            let len = chunk.len as usize;
            if !chunk.read && !opts.ordered {
                // Dense mode, a range with no data: write zeros without reading (or zero the target's
                // range through its zeroing primitive).
                let r = if opts.zero_target {
                    dst.zero_range(chunk.offset, chunk.len)
                } else {
                    dst.write_at(&zeros[..len], chunk.offset)
                };
                if let Err(e) = r {
                    return fail(e.into());
                }
                let _ = tx.send(Msg::Done { chunk, written: chunk.len });
                continue;
            }
            let mut buf = pool.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default();
            buf.resize(opts.chunk as usize, 0);
            if !chunk.read {
                buf[..len].fill(0);
            } else if let Err(e) = src.read_at(&mut buf[..len], chunk.offset) {
                return fail(e.into());
            }
            let runs = if opts.dense || !opts.skip_zeros {
                vec![(0, len)]
            } else {
                nonzero_runs(&buf[..len], opts.zero_block)
            };
            if opts.ordered {
                if tx.send(Msg::Filled { chunk, buf, runs }).is_err() {
                    return;
                }
                continue;
            }
            let mut written = 0;
            for &(s, l) in &runs {
                if let Err(e) = dst.write_at(&buf[s..s + l], chunk.offset + s as u64) {
                    return fail(e.into());
                }
                written += l as u64;
            }
            pool.lock().unwrap_or_else(|p| p.into_inner()).push(buf);
            if opts.writeback && written > 0 {
                dst.start_writeback(chunk.offset, chunk.len);
            }
            if tx.send(Msg::Done { chunk, written }).is_err() {
                return;
            }
        }
    };

    let mut result: Result<()> = Ok(());
    let pool_threads = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("vmkfs-copy-{i}"))
        .build()
        .map_err(|e| Error::Usage(format!("cannot start copy threads: {e}")))?;
    pool_threads.in_place_scope(|s| {
        for _ in 0..threads {
            let tx = tx.clone();
            let worker = &worker;
            s.spawn(move |_| worker(tx));
        }
        drop(tx);
        let mut pending: BTreeMap<u64, Filled> = BTreeMap::new();
        let mut next_write = 0u64;
        let mut done = 0u64;
        let fail = |e: Error, result: &mut Result<()>| {
            if result.is_ok() {
                *result = Err(e);
            }
            abort.store(true, Ordering::Release);
            gate.wake();
        };
        for msg in rx.iter() {
            if result.is_err() {
                continue; // Drain until every worker has stopped.
            }
            if cancelled() {
                fail(Error::Interrupted, &mut result);
                continue;
            }
            match msg {
                Msg::Failed(e) => fail(e, &mut result),
                Msg::Done { chunk, written } => {
                    stats.read += if chunk.read { chunk.len } else { 0 };
                    stats.written += written;
                    done += chunk.len;
                    progress(done, total);
                }
                Msg::Filled { chunk, buf, runs } => {
                    pending.insert(chunk.idx, (chunk, buf, runs));
                    while let Some((c, buf, runs)) = pending.remove(&next_write) {
                        for &(s, l) in &runs {
                            if let Err(e) = dst.write_at(&buf[s..s + l], c.offset + s as u64) {
                                fail(e.into(), &mut result);
                                break;
                            }
                            stats.written += l as u64;
                        }
                        stats.read += if c.read { c.len } else { 0 };
                        pool.lock().unwrap_or_else(|p| p.into_inner()).push(buf);
                        next_write += 1;
                        gate.advance(next_write);
                        done += c.len;
                        progress(done, total);
                        if result.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    });
    result?;
    if cancelled() {
        return Err(Error::Interrupted);
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonzero_runs_merge_neighbours() {
        let mut b = vec![0u8; 64];
        b[0] = 1;
        b[40] = 1;
        assert_eq!(nonzero_runs(&b, 16), vec![(0, 16), (32, 16)]);
        b[17] = 1;
        assert_eq!(nonzero_runs(&b, 16), vec![(0, 48)]);
        assert_eq!(nonzero_runs(&[0u8; 10], 4), vec![]);
        assert_eq!(nonzero_runs(&[0, 0, 0, 0, 0, 1], 4), vec![(4, 2)]);
    }
}
