//! The copy engine: the one place data moves from a source disk to a target.
//!
//! ```text
//! source --map--> planner (chunks, grain aligned) --> N reader threads (pread, zero detection,
//!   or a sequential feed (a pipe) ----^                 Target::encode: identity, or compression)
//!     parallel targets (flat, thin, thick), direct I/O or dense: each reader writes its own chunk
//!     ordered targets (sparse, stream), and every other buffered copy: one writer calls
//!       Target::write in LBA order
//! ```
//!
//! The planner walks the source's allocation map once, in runs ([`vmdk::map::runs`]: a cost in
//! proportion to what the source holds, not to its capacity; the same pass gives the progress
//! total), and hands out chunks of at most [`EngineOptions::chunk`] bytes whose boundaries are
//! multiples of the chunk size (so every grain size up to the chunk size stays aligned). Ranges the
//! map says are absent or zero are never read; a chunk inside one data run is read straight from
//! the layer (link) that holds it ([`Source::read_run`]).
//! Every chunk read is split into blocks of [`EngineOptions::zero_block`] bytes and all-zero blocks
//! are not written, so thin and sparse targets stay thin. With `zero_target` (raw devices, which
//! hold stale data) ranges without data are zeroed through the target's zeroing primitive. In dense
//! mode (eager-zeroed targets) every byte of the target is written, zeros included.
//!
//! A source that can only be read once, in order (a pipe), is a [`Feed`] instead: the planner
//! takes its pieces in order (reading the pipe under the planner's lock) and the readers decode
//! them ([`copy_feed`]).
//!
//! Targets implement [`Target`]: `encode` runs on the reader threads (in parallel), `write` on the
//! writer, and [`Target::needs`] declares what the target needs of the engine ([`Needs`]: ordered
//! writes, every byte, whole grains, its zero-detection unit). A [`Link`] encodes nothing and
//! writes the non-zero runs (in order when its extents allocate grains); a streamOptimized target
//! compresses grains in `encode` and appends them in `write`.
//!
//! Memory is bounded: at most [`EngineOptions::in_flight`] chunk buffers (and their encodings)
//! exist at once, whatever the disk size.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Condvar, Mutex};

use redo::Chain;
use vmdk::extent::is_zero;
use vmdk::map::{MapSource, Runs};
use vmdk::{Link, State};

use crate::error::{Error, Result};

/// What the engine reads from: a map to walk ([`MapSource`]: the planner walks it once, in runs,
/// with [`vmdk::map::runs`]) and the bytes.
pub trait Source: MapSource + Sync {
    /// Reads any range, through every layer of the source.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vmdk::Result<()>;
    /// Reads a range that lies inside one `Data` run the map reported at `depth`, straight from
    /// the layer holding it (a chain's link at that depth) without mapping the range again. The
    /// default reads through every layer.
    fn read_run(&self, buf: &mut [u8], offset: u64, depth: u32) -> vmdk::Result<()> {
        let _ = depth;
        self.read_at(buf, offset)
    }
}

impl Source for Chain {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vmdk::Result<()> {
        Chain::read_at(self, buf, offset)
    }
    fn read_run(&self, buf: &mut [u8], offset: u64, depth: u32) -> vmdk::Result<()> {
        match self.links().get(depth as usize) {
            Some(l) => l.read_own(buf, offset),
            None => Chain::read_at(self, buf, offset),
        }
    }
}

/// A chunk of the source as the engine hands it to a [`Target`]: `buf` holds the disk from byte
/// `offset`, and `runs` (`(start, len)` in `buf`) are the parts to store — the non-zero blocks, or
/// all of `buf` in dense mode.
#[derive(Debug, Clone, Copy)]
pub struct Piece<'a> {
    /// Disk offset of `buf[0]`.
    pub offset: u64,
    /// The chunk's bytes.
    pub buf: &'a [u8],
    /// The runs of `buf` to store.
    pub runs: &'a [(usize, usize)],
}

/// What a target needs from the engine, declared by the target ([`Target::needs`]): the one place a
/// target's shape turns into engine settings. [`copy`] and [`copy_feed`] add it to the caller's
/// [`EngineOptions`], which keep what the operation asks for (eager zeroing, zeroing a device,
/// keeping zero blocks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// Chunks written in disk order through one writer (targets that allocate grains as they go,
    /// or append to a stream).
    pub ordered: bool,
    /// Every byte written, zeros included (plain bytes on a pipe).
    pub dense: bool,
    /// Map ranges widened to multiples of this many bytes, so no unit of the target is split
    /// across chunks (whole grains of a stream); 0: none.
    pub align: u64,
    /// Zero detection in blocks of this many bytes (the target's allocation unit); 0: the
    /// engine's default.
    pub zero_block: usize,
}

impl EngineOptions {
    /// These options with what a target needs added: ordered and dense when it needs them, its
    /// alignment and zero-detection unit, and chunks at least that large.
    pub fn with_needs(mut self, n: Needs) -> EngineOptions {
        self.ordered |= n.ordered;
        self.dense |= n.dense;
        self.align = self.align.max(n.align);
        if n.zero_block > 0 {
            self.zero_block = n.zero_block;
        }
        self.chunk = self.chunk.max(self.align).max(self.zero_block as u64);
        self
    }
}

/// What the engine writes to.
///
/// [`Target::encode`] runs on the reader threads, many chunks at once; [`Target::write`] runs on
/// the reader threads too for parallel targets, and for ordered targets ([`Needs::ordered`]) on one
/// writer, chunk after chunk in disk order.
pub trait Target: Sync {
    /// A chunk made ready for writing (compressed grains, or nothing for an identity encoding).
    type Encoded: Send;
    /// Capacity in bytes.
    fn capacity(&self) -> u64;
    /// What this target needs from the engine. The default: nothing (parallel writes, the
    /// engine's zero detection).
    fn needs(&self) -> Needs {
        Needs::default()
    }
    /// Prepares a chunk for [`Target::write`] (the costly, parallel part).
    fn encode(&self, piece: &Piece<'_>) -> Result<Self::Encoded>;
    /// Stores a chunk; returns the disk bytes stored.
    fn write(&self, piece: &Piece<'_>, encoded: Self::Encoded) -> Result<u64>;
    /// Makes `[offset, offset+len)` read as zeros (for `EngineOptions::zero_target`). The default
    /// refuses.
    fn zero_range(&self, offset: u64, len: u64) -> Result<()> {
        Err(Error::Usage(format!("this target cannot zero {len} bytes at {offset}")))
    }
    /// Starts writing back a chunk just written (a hint). The default does nothing.
    fn start_writeback(&self, _offset: u64, _len: u64) {}
    /// Sends aligned writes past the page cache from now on (direct I/O, for a large copy); false
    /// where the target cannot, which then stays buffered. The default cannot.
    fn enable_direct_io(&self) -> bool {
        false
    }
}

/// A link encodes nothing: each run is written with [`Link::write_at`]. A link whose extents
/// allocate grains as they are written (hosted sparse, COWD) is written in disk order, with zero
/// detection per grain.
impl Target for Link {
    type Encoded = ();
    fn capacity(&self) -> u64 {
        Link::capacity(self)
    }
    fn needs(&self) -> Needs {
        let grain = self.extents().iter().filter(|e| e.kind.allocates_grains()).filter_map(|e| e.grain).max();
        match grain {
            Some(g) => Needs { ordered: true, zero_block: g as usize, ..Needs::default() },
            None => Needs::default(),
        }
    }
    fn encode(&self, _piece: &Piece<'_>) -> Result<()> {
        Ok(())
    }
    fn write(&self, piece: &Piece<'_>, _encoded: ()) -> Result<u64> {
        let mut n = 0;
        for &(s, l) in piece.runs {
            self.write_at(&piece.buf[s..s + l], piece.offset + s as u64)?;
            n += l as u64;
        }
        Ok(n)
    }
    fn zero_range(&self, offset: u64, len: u64) -> Result<()> {
        Ok(Link::zero_range(self, offset, len)?)
    }
    fn start_writeback(&self, offset: u64, len: u64) {
        Link::start_writeback(self, offset, len)
    }
    fn enable_direct_io(&self) -> bool {
        Link::enable_direct_io(self)
    }
}

/// A shared target is a target (so `&Arc<Link>` works where `&Link` does).
impl<T: Target + Send> Target for std::sync::Arc<T> {
    type Encoded = T::Encoded;
    fn capacity(&self) -> u64 {
        (**self).capacity()
    }
    fn needs(&self) -> Needs {
        (**self).needs()
    }
    fn encode(&self, piece: &Piece<'_>) -> Result<Self::Encoded> {
        (**self).encode(piece)
    }
    fn write(&self, piece: &Piece<'_>, encoded: Self::Encoded) -> Result<u64> {
        (**self).write(piece, encoded)
    }
    fn zero_range(&self, offset: u64, len: u64) -> Result<()> {
        (**self).zero_range(offset, len)
    }
    fn start_writeback(&self, offset: u64, len: u64) {
        (**self).start_writeback(offset, len)
    }
    fn enable_direct_io(&self) -> bool {
        (**self).enable_direct_io()
    }
}

/// Fills a chunk buffer (already zeroed) on a reader thread.
pub type FillFn = Box<dyn FnOnce(&mut [u8]) -> vmdk::Result<()> + Send>;

/// A piece of a [`Feed`]: `len` bytes of the disk at `offset`, and how to produce them.
pub struct FeedPiece {
    /// Disk offset.
    pub offset: u64,
    /// Length in bytes (the piece must not cross a multiple of the chunk size).
    pub len: u64,
    /// Fills the piece's buffer (zeroed beforehand) on a reader thread: decompression, a copy.
    pub fill: FillFn,
}

impl std::fmt::Debug for FeedPiece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedPiece").field("offset", &self.offset).field("len", &self.len).finish_non_exhaustive()
    }
}

/// A source read once, in order (a pipe). Ranges it never hands out are zeros.
pub trait Feed: Send {
    /// Capacity in bytes.
    fn capacity(&self) -> u64;
    /// The next piece, in increasing offset order, not crossing a multiple of `chunk`; `None` at
    /// the end. Called under the planner's lock: read the input here, decode in the piece's `fill`.
    fn next(&mut self, chunk: u64) -> vmdk::Result<Option<FeedPiece>>;
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
    /// Write chunks in LBA order through one writer (targets declare it: [`Needs::ordered`]).
    pub ordered: bool,
    /// Most chunk buffers alive at once.
    pub in_flight: usize,
    /// Start writeback of each chunk as soon as it is written, so the final flush overlaps the copy
    /// (buffered writes only).
    pub writeback: bool,
    /// Whether data goes to the target past the page cache (direct I/O).
    pub direct: DirectIo,
    /// Skip all-zero blocks of data ranges (thin targets). Off when the target may hold older data
    /// the zeros must overwrite (committing a REDO link into its parent).
    pub skip_zeros: bool,
    /// Zero the target where the source map holds no data, with [`Link::zero_range`] (`BLKZEROOUT`
    /// on a device, `FALLOC_FL_ZERO_RANGE` on a file) instead of leaving it alone: for targets that
    /// hold stale data, like a raw device. Pair it with `skip_zeros = false`, so zero blocks inside
    /// data ranges are written too, and the target then reads exactly as the source.
    pub zero_target: bool,
    /// Widen every data range of the map to multiples of this many bytes (a power of two dividing
    /// `chunk`; 0 or 1: no widening), so a target that stores whole grains never sees a grain in
    /// two chunks (streamOptimized).
    pub align: u64,
}

/// Whether a copy writes past the page cache ([`EngineOptions::direct`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DirectIo {
    /// Direct I/O when the copy writes at least [`DIRECT_MIN`] bytes into a target that takes it
    /// (flat files and devices, on file systems that support `O_DIRECT`); buffered otherwise.
    #[default]
    Auto,
    /// Direct I/O wherever the target takes it, whatever the size.
    On,
    /// Always through the page cache.
    Off,
}

/// Bytes of data from which [`DirectIo::Auto`] writes past the page cache. Below it, buffered
/// writes and one flush cost less than direct writes (which wait for the device one by one); above
/// it, the page cache's writeback costs more CPU than the copy itself and evicts what the machine
/// was caching, for data nobody reads back soon.
pub const DIRECT_MIN: u64 = 256 << 20;

impl DirectIo {
    /// Whether a copy of `total` bytes should ask its target for direct I/O.
    fn wanted(self, total: u64) -> bool {
        match self {
            DirectIo::Auto => total >= DIRECT_MIN,
            DirectIo::On => true,
            DirectIo::Off => false,
        }
    }
}

/// A chunk buffer whose bytes start at a multiple of [`rdm::device::DIRECT_ALIGN`], so a direct
/// write can take it as it is. Reads as the slice it holds.
struct Buf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Buf {
    /// A zeroed buffer of `len` bytes.
    fn new(len: usize) -> Buf {
        const ALIGN: usize = rdm::device::DIRECT_ALIGN;
        let raw = vec![0u8; len + ALIGN];
        let start = (ALIGN - raw.as_ptr() as usize % ALIGN) % ALIGN;
        Buf { raw, start, len }
    }
}

impl std::ops::Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// Process-wide engine defaults a program sets once, before any copy (the `vmkfs` binary's hidden
/// `--threads` and `--chunk-kib`, which test harnesses use to make runs repeatable). A library
/// caller tunes each copy through its [`EngineOptions`] instead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tuning {
    /// Reader threads of every copy (`None`: two per core, 4 to 16).
    pub threads: Option<usize>,
    /// Chunk size in bytes, rounded up to a power of two (`None`: 2 MiB).
    pub chunk: Option<u64>,
    /// Direct I/O (`None`: [`DirectIo::Auto`]).
    pub direct: Option<DirectIo>,
}

static TUNING: std::sync::OnceLock<Tuning> = std::sync::OnceLock::new();

/// Sets the process-wide [`Tuning`] every [`EngineOptions::new`] starts from. Only the first call
/// counts; returns false when the tuning was already set.
pub fn set_tuning(t: Tuning) -> bool {
    TUNING.set(t).is_ok()
}

impl EngineOptions {
    /// Defaults: 2 MiB chunks, two readers per core (at least 4), 4 KiB zero blocks, parallel
    /// writes — or what [`set_tuning`] set.
    pub fn new() -> EngineOptions {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let t = TUNING.get().copied().unwrap_or_default();
        let threads = t.threads.unwrap_or((cores * 2).clamp(4, 16)).max(1);
        let chunk = t.chunk.map(|c| c.max(4096).next_power_of_two()).unwrap_or(2 << 20);
        EngineOptions {
            chunk,
            threads,
            zero_block: 4096,
            dense: false,
            ordered: false,
            in_flight: threads + 4,
            writeback: true,
            direct: t.direct.unwrap_or_default(),
            skip_zeros: true,
            zero_target: false,
            align: 0,
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
    /// The data went past the page cache ([`EngineOptions::direct`]).
    pub direct: bool,
}

#[derive(Debug, Clone, Copy)]
struct Chunk {
    idx: u64,
    offset: u64,
    len: u64,
    /// Read from the source (false: the chunk is zeros; only in dense mode).
    read: bool,
    /// Bytes of a feed skipped since the previous chunk (counted as done for progress).
    skipped: u64,
}

/// How a chunk's buffer gets its bytes.
enum Fill {
    /// Read from the [`Source`]: from the layer at this depth when the chunk lies inside one data
    /// run of it ([`Source::read_run`]), else (`None`: a range widened to whole grains) through
    /// every layer.
    Source(Option<u32>),
    /// No data: zeros.
    Zeros,
    /// A feed's piece.
    With(FillFn),
}

/// Hands out chunks in disk order.
trait Plan: Send {
    fn next(&mut self) -> vmdk::Result<Option<(Chunk, Fill)>>;
}

/// Data runs the first pass of a sparse copy keeps for the planner (about 1.5 MiB); past them the
/// pass only counts, and the planner walks that part of the map again when it gets there.
const QUEUED_RUNS: usize = 1 << 16;

/// Plans from a source's allocation map, walked in runs ([`vmdk::map::runs`]). For a sparse copy
/// one pass over the map gives both the progress total (the data bytes) and the runs to copy (kept
/// up to [`QUEUED_RUNS`]); in dense mode (total: the capacity) the planner walks as it goes.
struct MapPlan<'a> {
    src: &'a (dyn Source + 'a),
    chunk: u64,
    dense: bool,
    align: u64,
    /// Runs of the first pass, in order.
    queued: VecDeque<vmdk::Run>,
    /// The walk of what the first pass did not keep.
    rest: Option<Runs<'a, dyn Source + 'a>>,
    /// The range being cut into chunks: `(pos, end, read, depth)`.
    cur: Option<(u64, u64, bool, Option<u32>)>,
    /// End of the last chunk handed out.
    emitted: u64,
    next_idx: u64,
}

impl<'a> MapPlan<'a> {
    /// The plan of a copy of `src` with `opts`, and the bytes it will move (the progress total).
    fn new(src: &'a (dyn Source + 'a), opts: &EngineOptions, dense: bool) -> vmdk::Result<(MapPlan<'a>, u64)> {
        let mut plan = MapPlan {
            src,
            chunk: opts.chunk,
            dense,
            align: opts.align,
            queued: VecDeque::new(),
            rest: None,
            cur: None,
            emitted: 0,
            next_idx: 0,
        };
        if dense {
            plan.rest = Some(vmdk::map::walk(src));
            return Ok((plan, src.capacity()));
        }
        let mut total = 0;
        let mut resume = None;
        for r in vmdk::map::walk(src) {
            let r = r?;
            if r.state != State::Data {
                continue;
            }
            total += r.len;
            if resume.is_none() {
                if plan.queued.len() < QUEUED_RUNS {
                    plan.queued.push_back(r);
                } else {
                    resume = Some(r.offset);
                }
            }
        }
        plan.rest = resume.map(|at| vmdk::map::runs(src, at, src.capacity()));
        Ok((plan, total))
    }

    fn next_run(&mut self) -> vmdk::Result<Option<vmdk::Run>> {
        if let Some(r) = self.queued.pop_front() {
            return Ok(Some(r));
        }
        self.rest.as_mut().and_then(|w| w.next()).transpose()
    }
}

impl Plan for MapPlan<'_> {
    fn next(&mut self) -> vmdk::Result<Option<(Chunk, Fill)>> {
        loop {
            if let Some((pos, end, read, depth)) = self.cur {
                if pos < end {
                    // Cut at the next multiple of the chunk size.
                    let cut = ((pos / self.chunk) + 1) * self.chunk;
                    let stop = cut.min(end);
                    self.cur = Some((stop, end, read, depth));
                    self.emitted = stop;
                    let c = Chunk { idx: self.next_idx, offset: pos, len: stop - pos, read, skipped: 0 };
                    self.next_idx += 1;
                    return Ok(Some((c, if read { Fill::Source(depth) } else { Fill::Zeros })));
                }
                self.cur = None;
            }
            let Some(r) = self.next_run()? else { return Ok(None) };
            let data = r.state == State::Data;
            if !data && !self.dense {
                continue;
            }
            let (mut start, mut end) = (r.offset, r.end());
            if self.align > 1 && data {
                start -= start % self.align;
                end = end.div_ceil(self.align).saturating_mul(self.align).min(self.src.capacity());
            }
            // A widened range may already have been handed out.
            start = start.max(self.emitted);
            // Inside the run it came from, a chunk is read from the layer holding it.
            let depth = (start >= r.offset && end <= r.end()).then_some(r.depth);
            if start < end {
                self.cur = Some((start, end, data, depth));
            }
        }
    }
}

/// Plans from a [`Feed`], checking its pieces, and in dense mode filling the gaps with zero chunks.
struct FeedPlan<'a> {
    feed: &'a mut dyn Feed,
    chunk: u64,
    dense: bool,
    capacity: u64,
    /// End of the last chunk handed out.
    pos: u64,
    pending: Option<FeedPiece>,
    ended: bool,
    next_idx: u64,
}

impl Plan for FeedPlan<'_> {
    fn next(&mut self) -> vmdk::Result<Option<(Chunk, Fill)>> {
        if self.pending.is_none() && !self.ended {
            match self.feed.next(self.chunk)? {
                None => self.ended = true,
                Some(p) => {
                    let end = p.offset.checked_add(p.len).filter(|e| *e <= self.capacity);
                    let ok = p.len > 0
                        && p.offset >= self.pos
                        && end.is_some_and(|e| p.offset / self.chunk == (e - 1) / self.chunk);
                    if !ok {
                        return Err(vmdk::Error::InvalidArgument(format!(
                            "input piece of {} bytes at {} is out of order, empty, past the capacity ({}) or across a chunk",
                            p.len, p.offset, self.capacity
                        )));
                    }
                    self.pending = Some(p);
                }
            }
        }
        let next_data = self.pending.as_ref().map(|p| p.offset).unwrap_or(self.capacity);
        let idx = self.next_idx;
        if self.dense && self.pos < next_data {
            let stop = (((self.pos / self.chunk) + 1) * self.chunk).min(next_data);
            let c = Chunk { idx, offset: self.pos, len: stop - self.pos, read: false, skipped: 0 };
            self.pos = stop;
            self.next_idx += 1;
            return Ok(Some((c, Fill::Zeros)));
        }
        let Some(p) = self.pending.take() else { return Ok(None) };
        let c = Chunk { idx, offset: p.offset, len: p.len, read: true, skipped: p.offset - self.pos };
        self.pos = p.offset + p.len;
        self.next_idx += 1;
        Ok(Some((c, Fill::With(p.fill))))
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

/// A chunk read, encoded and waiting for the ordered writer.
struct Filled<E> {
    chunk: Chunk,
    buf: Buf,
    runs: Vec<(usize, usize)>,
    enc: E,
}

enum Msg<E> {
    /// A chunk read and encoded (ordered mode).
    Filled(Filled<E>),
    /// A chunk fully handled by its reader (parallel mode).
    Done {
        chunk: Chunk,
        written: u64,
    },
    Failed(Error),
}

/// Copies `src` into `dst` (same capacity). `progress(done, total)` is called from the calling
/// thread; `cancel`, when set, stops the copy with [`Error::Interrupted`].
pub fn copy<T: Target>(
    src: &dyn Source,
    dst: &T,
    opts: &EngineOptions,
    progress: &mut dyn FnMut(u64, u64),
    cancel: Option<&AtomicBool>,
) -> Result<CopyStats> {
    if dst.capacity() < src.capacity() {
        return Err(Error::Usage(format!("target holds {} bytes, source {}", dst.capacity(), src.capacity())));
    }
    let opts = &opts.with_needs(dst.needs());
    check_options(opts)?;
    let dense = opts.dense || opts.zero_target;
    let (plan, total) = MapPlan::new(src, opts, dense)?;
    run(plan, Some(src), dst, opts, total, progress, cancel)
}

/// Copies what `feed` hands out into `dst` (at least the feed's capacity), in one pass over the
/// feed. Progress counts bytes of the disk passed, out of the capacity.
pub fn copy_feed<T: Target>(
    feed: &mut dyn Feed,
    dst: &T,
    opts: &EngineOptions,
    progress: &mut dyn FnMut(u64, u64),
    cancel: Option<&AtomicBool>,
) -> Result<CopyStats> {
    let capacity = feed.capacity();
    if dst.capacity() < capacity {
        return Err(Error::Usage(format!("target holds {} bytes, source {capacity}", dst.capacity())));
    }
    let opts = &opts.with_needs(dst.needs());
    check_options(opts)?;
    let plan = FeedPlan {
        feed,
        chunk: opts.chunk,
        dense: opts.dense || opts.zero_target,
        capacity,
        pos: 0,
        pending: None,
        ended: false,
        next_idx: 0,
    };
    run(plan, None, dst, opts, capacity, progress, cancel)
}

fn check_options(opts: &EngineOptions) -> Result<()> {
    let ok = opts.chunk.is_power_of_two()
        && opts.zero_block.is_power_of_two()
        && opts.zero_block as u64 <= opts.chunk
        && (opts.align <= 1 || (opts.align.is_power_of_two() && opts.align <= opts.chunk));
    if !ok {
        return Err(Error::Usage(format!(
            "engine: chunk {}, zero block {} and alignment {} must be powers of two, the chunk the largest",
            opts.chunk, opts.zero_block, opts.align
        )));
    }
    Ok(())
}

/// The engine proper: readers pull chunks from `plan`, fill and encode them, and either write them
/// (parallel) or pass them to the calling thread, which writes them in order.
fn run<P: Plan, T: Target>(
    plan: P,
    src: Option<&dyn Source>,
    dst: &T,
    opts: &EngineOptions,
    total: u64,
    progress: &mut dyn FnMut(u64, u64),
    cancel: Option<&AtomicBool>,
) -> Result<CopyStats> {
    progress(0, total);
    let threads = opts.threads.max(1);
    let in_flight = opts.in_flight.max(threads + 1);
    let direct = !opts.ordered && opts.direct.wanted(total) && dst.enable_direct_io();
    // Buffered data writes go through one writer: a file system takes a file's buffered writes
    // one at a time (ext4, XFS: under the inode lock), so writers on every reader thread would
    // only wait for each other, spinning on that lock on the cores the readers need. (Dense
    // copies keep their parallel writers: their zero chunks are cleared in place, not written.)
    let one_writer = opts.ordered || (!direct && !opts.dense && !opts.zero_target);
    let opts = &EngineOptions { ordered: one_writer, ..*opts };
    let job = Job {
        planner: Mutex::new(plan),
        src,
        dst,
        opts,
        ahead: (in_flight - threads) as u64,
        abort: AtomicBool::new(false),
        gate: Gate { written: Mutex::new(0), cv: Condvar::new() },
        pool: Mutex::new(Vec::new()),
        zeros: Buf::new(opts.chunk as usize),
        whole: opts.dense || !opts.skip_zeros,
        writeback: opts.writeback && !direct,
    };
    let mut tally = Tally { stats: CopyStats { total, direct, ..CopyStats::default() }, done: 0 };
    let cancelled = || cancel.is_some_and(|c| c.load(Ordering::Relaxed));
    let (tx, rx) = sync_channel::<Msg<T::Encoded>>(in_flight);
    let mut result: Result<()> = Ok(());
    // A scoped pool: its threads are joined before the copy returns, so an embedding program is
    // left with no threads (nor their thread-locals) of ours after a call.
    let scoped =
        rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("vmkfs-copy-{i}")).build_scoped(
            |t| t.run(),
            |pool_threads| {
                pool_threads.in_place_scope(|s| {
                    for _ in 0..threads {
                        let (tx, job) = (tx.clone(), &job);
                        s.spawn(move |_| job.read_chunks(tx));
                    }
                    drop(tx);
                    result = job.collect(rx, &mut tally, progress, &cancelled);
                })
            },
        );
    scoped.map_err(|e| Error::Usage(format!("cannot start copy threads: {e}")))?;
    result?;
    if cancelled() {
        return Err(Error::Interrupted);
    }
    if tally.done < total {
        progress(total, total);
    }
    Ok(tally.stats)
}

/// What the readers and the writer of one copy share.
struct Job<'a, P, T> {
    planner: Mutex<P>,
    src: Option<&'a dyn Source>,
    dst: &'a T,
    opts: &'a EngineOptions,
    /// Chunks readers may run ahead of the ordered writer.
    ahead: u64,
    abort: AtomicBool,
    gate: Gate,
    pool: Mutex<Vec<Buf>>,
    zeros: Buf,
    /// Every byte of a chunk is written, zeros included.
    whole: bool,
    /// Start writeback of each chunk written (buffered writes).
    writeback: bool,
}

/// What the calling thread has counted: the statistics and the bytes done (for progress).
struct Tally {
    stats: CopyStats,
    done: u64,
}

impl<P: Plan, T: Target> Job<'_, P, T> {
    /// Stops every reader (a failure or a cancellation).
    fn stop(&self) {
        self.abort.store(true, Ordering::Release);
        self.gate.wake();
    }

    fn stopped(&self) -> bool {
        self.abort.load(Ordering::Acquire)
    }

    /// One reader thread: takes chunks from the planner until it runs dry or the copy stops, and
    /// sends what became of each.
    fn read_chunks(&self, tx: SyncSender<Msg<T::Encoded>>) {
        loop {
            if self.stopped() {
                return;
            }
            let (chunk, fill) = match self.planner.lock().unwrap_or_else(|p| p.into_inner()).next() {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(e) => return self.fail(&tx, e.into()),
            };
            if self.opts.ordered {
                self.gate.wait(chunk.idx, self.ahead, &self.abort);
                if self.stopped() {
                    return;
                }
            }
            let msg = if matches!(fill, Fill::Zeros) && !self.opts.ordered {
                self.write_zeros(chunk).map(|()| Msg::Done { chunk, written: chunk.len })
            } else {
                self.copy_chunk(chunk, fill)
            };
            match msg {
                Ok(m) => {
                    if tx.send(m).is_err() {
                        return;
                    }
                }
                Err(e) => return self.fail(&tx, e),
            }
        }
    }

    fn fail(&self, tx: &SyncSender<Msg<T::Encoded>>, e: Error) {
        self.stop();
        let _ = tx.send(Msg::Failed(e));
    }

    /// Dense mode, a range with no data: zeros written without reading (or the target's range
    /// zeroed through its zeroing primitive).
    fn write_zeros(&self, chunk: Chunk) -> Result<()> {
        if self.opts.zero_target {
            return self.dst.zero_range(chunk.offset, chunk.len);
        }
        let len = chunk.len as usize;
        let runs = [(0, len)];
        let piece = Piece { offset: chunk.offset, buf: &self.zeros[..len], runs: &runs };
        let enc = self.dst.encode(&piece)?;
        self.dst.write(&piece, enc).map(|_| ())
    }

    /// Fills a buffer with one chunk and encodes it; a parallel target's chunk is written here, an
    /// ordered one's is handed to the writer.
    fn copy_chunk(&self, chunk: Chunk, fill: Fill) -> Result<Msg<T::Encoded>> {
        let len = chunk.len as usize;
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut buf = pooled.unwrap_or_else(|| Buf::new(self.opts.chunk as usize));
        self.fill(&mut buf[..len], chunk.offset, fill)?;
        let runs = if self.whole { vec![(0, len)] } else { nonzero_runs(&buf[..len], self.opts.zero_block) };
        let piece = Piece { offset: chunk.offset, buf: &buf[..len], runs: &runs };
        let enc = self.dst.encode(&piece)?;
        if self.opts.ordered {
            return Ok(Msg::Filled(Filled { chunk, buf, runs, enc }));
        }
        let written = self.dst.write(&piece, enc)?;
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).push(buf);
        if self.writeback && written > 0 {
            self.dst.start_writeback(chunk.offset, chunk.len);
        }
        Ok(Msg::Done { chunk, written })
    }

    /// Gives `buf` (one chunk at `offset`) its bytes.
    fn fill(&self, buf: &mut [u8], offset: u64, fill: Fill) -> vmdk::Result<()> {
        match fill {
            Fill::Zeros => {
                buf.fill(0);
                Ok(())
            }
            Fill::Source(depth) => match (self.src, depth) {
                (Some(s), Some(d)) => s.read_run(buf, offset, d),
                (Some(s), None) => s.read_at(buf, offset),
                (None, _) => Err(vmdk::Error::InvalidArgument("a feed's chunk asks to read a source".into())),
            },
            Fill::With(f) => {
                buf.fill(0);
                f(buf)
            }
        }
    }

    /// The calling thread's part: counts what the readers did, reports progress, and writes the
    /// chunks of an ordered target in disk order. Returns the first failure (or the cancellation)
    /// after every reader has stopped.
    fn collect(
        &self,
        rx: Receiver<Msg<T::Encoded>>,
        tally: &mut Tally,
        progress: &mut dyn FnMut(u64, u64),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<()> {
        let mut result: Result<()> = Ok(());
        let mut pending: BTreeMap<u64, Filled<T::Encoded>> = BTreeMap::new();
        let mut next_write = 0u64;
        let total = tally.stats.total;
        for msg in rx.iter() {
            if result.is_err() {
                continue; // Drain until every reader has stopped.
            }
            let msg = if cancelled() { Msg::Failed(Error::Interrupted) } else { msg };
            match msg {
                Msg::Failed(e) => {
                    result = Err(e);
                    self.stop();
                }
                Msg::Done { chunk, written } => {
                    tally.count(chunk, written);
                    progress(tally.done, total);
                }
                Msg::Filled(f) => {
                    pending.insert(f.chunk.idx, f);
                    while let Some(f) = pending.remove(&next_write) {
                        let c = f.chunk;
                        let piece = Piece { offset: c.offset, buf: &f.buf[..c.len as usize], runs: &f.runs };
                        let written = self.dst.write(&piece, f.enc);
                        self.pool.lock().unwrap_or_else(|p| p.into_inner()).push(f.buf);
                        next_write += 1;
                        self.gate.advance(next_write);
                        match written {
                            Ok(n) => {
                                if self.writeback && n > 0 {
                                    self.dst.start_writeback(c.offset, c.len);
                                }
                                tally.count(c, n)
                            }
                            Err(e) => {
                                result = Err(e);
                                self.stop();
                                break;
                            }
                        }
                        progress(tally.done, total);
                    }
                }
            }
        }
        result
    }
}

impl Tally {
    /// Counts a chunk handled, `written` bytes of it stored.
    fn count(&mut self, chunk: Chunk, written: u64) {
        self.stats.read += if chunk.read { chunk.len } else { 0 };
        self.stats.written += written;
        self.done += chunk.skipped + chunk.len;
    }
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

    /// A source whose map says data at odd places.
    struct Odd {
        data: Vec<u8>,
        runs: Vec<(u64, u64)>,
    }

    impl MapSource for Odd {
        fn capacity(&self) -> u64 {
            self.data.len() as u64
        }
        fn map_into(&self, offset: u64, end: u64, _budget: usize, m: &mut vmdk::AllocMap) -> vmdk::Result<u64> {
            let mut pos = offset;
            for &(s, l) in &self.runs {
                let (s, e) = (s.max(offset), (s + l).min(end));
                if s >= e {
                    continue;
                }
                m.push(pos, s - pos, State::Absent, 0);
                m.push(s, e - s, State::Data, 0);
                pos = e;
            }
            m.push(pos, end - pos, State::Absent, 0);
            Ok(end)
        }
    }

    impl Source for Odd {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> vmdk::Result<()> {
            buf.copy_from_slice(&self.data[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
    }

    /// Records the chunks a target is given.
    struct Record(Mutex<Vec<(u64, u64)>>, u64);

    impl Target for Record {
        type Encoded = ();
        fn capacity(&self) -> u64 {
            self.1
        }
        fn encode(&self, _: &Piece<'_>) -> Result<()> {
            Ok(())
        }
        fn write(&self, p: &Piece<'_>, _: ()) -> Result<u64> {
            self.0.lock().unwrap().push((p.offset, p.buf.len() as u64));
            Ok(0)
        }
    }

    #[test]
    fn aligned_plans_never_split_a_grain() {
        let src = Odd { data: vec![1u8; 1 << 20], runs: vec![(4096, 4096), (16384, 100), (65536 * 3 + 7, 70000)] };
        let t = Record(Mutex::new(Vec::new()), 1 << 20);
        let mut o = EngineOptions::new();
        o.chunk = 128 << 10;
        o.align = 65536;
        o.ordered = true;
        copy(&src, &t, &o, &mut |_, _| {}, None).unwrap();
        let got = t.0.into_inner().unwrap();
        assert_eq!(got, vec![(0, 65536), (3 * 65536, 65536), (4 * 65536, 65536)]);
    }

    struct Pieces(Vec<(u64, u64)>, u64);

    impl Feed for Pieces {
        fn capacity(&self) -> u64 {
            self.1
        }
        fn next(&mut self, _chunk: u64) -> vmdk::Result<Option<FeedPiece>> {
            if self.0.is_empty() {
                return Ok(None);
            }
            let (offset, len) = self.0.remove(0);
            Ok(Some(FeedPiece {
                offset,
                len,
                fill: Box::new(|b: &mut [u8]| {
                    b.fill(7);
                    Ok(())
                }),
            }))
        }
    }

    #[test]
    fn feeds_fill_gaps_in_dense_mode_and_report_progress() {
        let t = Record(Mutex::new(Vec::new()), 1 << 20);
        let mut o = EngineOptions::new();
        o.chunk = 256 << 10;
        o.ordered = true;
        o.dense = true;
        let mut last = (0, 0);
        let mut feed = Pieces(vec![(100 << 10, 4096), (600 << 10, 8192)], 1 << 20);
        copy_feed(&mut feed, &t, &o, &mut |d, t| last = (d, t), None).unwrap();
        let got = t.0.into_inner().unwrap();
        let mut pos = 0;
        for (off, len) in &got {
            assert_eq!(*off, pos);
            pos += len;
        }
        assert_eq!(pos, 1 << 20);
        assert_eq!(last, (1 << 20, 1 << 20));
        // Out of order pieces are refused.
        let t = Record(Mutex::new(Vec::new()), 1 << 20);
        let mut feed = Pieces(vec![(600 << 10, 4096), (100 << 10, 4096)], 1 << 20);
        assert!(copy_feed(&mut feed, &t, &o, &mut |_, _| {}, None).is_err());
    }
}
