//! Cloning: any readable disk or chain into a new disk of any format we write.
//!
//! The source chain is opened read-only, the target is created under temporary names, the
//! [engine](crate::engine) copies what the source's allocation map says is data, and the target is
//! flushed and renamed into place only when complete. A failure or interruption leaves no destination.
//!
//! [`import`] does the same from a pipe (a streamOptimized stream or a raw image read once, in
//! order), and [`export_to`] writes a disk to a pipe (a stream or plain bytes).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use redo::Chain;
use vmdk::create::{create, create_stream, stream_layout, Adapter, CreateOptions, DiskFormat, NewDisk, NewStream};
use vmdk::extent::stream_write::{BackingSink, WriteSink};
use vmdk::OpenOptions;

use crate::engine::{copy, copy_feed, CopyStats, EngineOptions, Feed, Source};
use crate::error::{Error, Result};
use crate::stream::{open_input, Input, RawFeed, RawTarget, StreamTarget, DEFAULT_COMPRESS_LEVEL};

/// Options for [`clone_disk`].
pub struct CloneOptions<'a> {
    /// Target format.
    pub format: DiskFormat,
    /// Adapter for the new disk (default: the source's, else lsilogic; always lsilogic for
    /// streamOptimized unless given).
    pub adapter: Option<Adapter>,
    /// Replace an existing destination.
    pub force: bool,
    /// How the source is opened (storage, path rules).
    pub source: OpenOptions,
    /// Called with `(bytes done, bytes total)` as the copy proceeds.
    pub progress: Option<&'a mut dyn FnMut(u64, u64)>,
    /// Set from elsewhere (a signal handler) to stop the clone; the destination is then removed.
    pub cancel: Option<&'a AtomicBool>,
    /// Engine tuning; `None` picks what the target format needs.
    pub engine: Option<EngineOptions>,
    /// zlib level (0–9) of streamOptimized output.
    pub compress_level: u32,
}

impl<'a> CloneOptions<'a> {
    /// Defaults for `format`.
    pub fn new(format: DiskFormat) -> CloneOptions<'a> {
        CloneOptions {
            format,
            adapter: None,
            force: false,
            source: OpenOptions::read(),
            progress: None,
            cancel: None,
            engine: None,
            compress_level: DEFAULT_COMPRESS_LEVEL,
        }
    }
}

/// The engine settings a target format needs: sparse targets are written in order through one
/// writer with grain-sized zero detection; eager-zeroed targets get every byte written; flat targets
/// take parallel writes with 4 KiB zero detection (the file-system block); streamOptimized targets
/// compress on every reader and append in order, whole grains at a time.
pub fn engine_for(format: DiskFormat, grain_bytes: u64) -> EngineOptions {
    let mut e = EngineOptions::new();
    if format.is_sparse() || format == DiskFormat::StreamOptimized {
        e.ordered = true;
        e.zero_block = grain_bytes as usize;
    }
    if format == DiskFormat::StreamOptimized {
        e.chunk = e.chunk.max(grain_bytes);
        e.align = grain_bytes;
    }
    e.dense = format == DiskFormat::EagerZeroedThick;
    e
}

/// What a clone did.
#[derive(Debug, Clone)]
pub struct CloneReport {
    /// The destination (its descriptor, or its single file).
    pub path: PathBuf,
    /// Every file of the destination.
    pub files: Vec<PathBuf>,
    /// Engine statistics.
    pub stats: CopyStats,
}

/// Where a copy reads from: a disk (random access, by its map) or a pipe (once, in order).
pub enum CopyFrom<'a> {
    /// A disk or chain.
    Source(&'a dyn Source),
    /// A feed.
    Feed(&'a mut dyn Feed),
}

/// A destination disk being created under temporary names, in any format we write.
pub enum Destination {
    /// A format written through a writable link.
    Disk(Box<NewDisk>),
    /// A streamOptimized file, and the target appending to it.
    Stream(Box<(NewStream, StreamTarget<BackingSink>)>),
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Disk(d) => f.debug_tuple("Disk").field(d).finish(),
            Destination::Stream(s) => f.debug_tuple("Stream").field(&s.0).finish(),
        }
    }
}

impl Destination {
    /// Creates the destination described by `copts` at `dst` (the transaction home first finishes
    /// or clears what killed runs left for it). `level` is the zlib level of a streamOptimized
    /// destination.
    pub fn create(dst: &Path, copts: &CreateOptions, level: u32) -> Result<Destination> {
        vmdk::descriptor::check_capacity(dst, copts.format, copts.capacity, copts.split_sectors)?;
        if copts.format == DiskFormat::StreamOptimized {
            let new = create_stream(dst, copts)?;
            let sink = BackingSink::new(new.backing().clone());
            let target = StreamTarget::new(sink, new.header().clone(), new.descriptor(), dst, level)?;
            return Ok(Destination::Stream(Box::new((new, target))));
        }
        Ok(Destination::Disk(Box::new(create(dst, copts)?)))
    }

    /// Every file the destination will have.
    pub fn final_paths(&self) -> Vec<PathBuf> {
        match self {
            Destination::Disk(d) => d.final_paths(),
            Destination::Stream(s) => s.0.final_paths(),
        }
    }

    /// Copies `from` into the destination with `engine` (adjusted to what the target needs).
    pub fn fill(
        &self,
        from: CopyFrom<'_>,
        engine: &EngineOptions,
        progress: &mut dyn FnMut(u64, u64),
        cancel: Option<&AtomicBool>,
    ) -> Result<CopyStats> {
        match (self, from) {
            (Destination::Disk(d), CopyFrom::Source(s)) => copy(s, d.link(), engine, progress, cancel),
            (Destination::Disk(d), CopyFrom::Feed(f)) => copy_feed(f, d.link(), engine, progress, cancel),
            (Destination::Stream(d), CopyFrom::Source(s)) => copy(s, &d.1, &d.1.engine(*engine), progress, cancel),
            (Destination::Stream(d), CopyFrom::Feed(f)) => copy_feed(f, &d.1, &d.1.engine(*engine), progress, cancel),
        }
    }

    /// Finishes the destination (the stream's directory and footer), flushes it and renames its
    /// files into place.
    pub fn commit(self) -> Result<PathBuf> {
        match self {
            Destination::Disk(d) => Ok((*d).commit()?),
            Destination::Stream(d) => {
                let (s, t) = *d;
                t.finish()?;
                Ok(s.commit()?)
            }
        }
    }
}

/// Clones `src` (a disk or the top of a chain, flattened) into a new disk at `dst`.
pub fn clone_disk(src: &Path, dst: &Path, opts: &mut CloneOptions<'_>) -> Result<CloneReport> {
    let chain = Chain::open(src, &opts.source)?;
    clone_chain_through(&chain, &chain, dst, opts)
}

/// Clones the open `chain` into a new disk at `dst` like [`clone_disk`], reading its data through
/// `through` — a source over the same content (the chain itself, or a wrapper that observes what
/// is read, as a VM backup records block hashes while it exports). The new disk's capacity,
/// adapter and content identity come from `chain`.
pub fn clone_chain_through(
    chain: &Chain,
    through: &dyn Source,
    dst: &Path,
    opts: &mut CloneOptions<'_>,
) -> Result<CloneReport> {
    let cap = chain.capacity();
    let adapter = if opts.format == DiskFormat::StreamOptimized {
        opts.adapter.unwrap_or(Adapter::LsiLogic)
    } else {
        opts.adapter
            .or_else(|| chain.top().descriptor().ddb("adapterType").and_then(Adapter::parse))
            .unwrap_or(Adapter::LsiLogic)
    };
    let mut copts = CreateOptions::new(opts.format, cap);
    copts.adapter = adapter;
    copts.force = opts.force;
    copts.zero_fill = false;
    copts.cid = content_id(chain);
    let grain = copts.grain_sectors * 512;
    let new = Destination::create(dst, &copts, opts.compress_level)?;
    let files = new.final_paths();
    let engine = opts.engine.unwrap_or_else(|| engine_for(opts.format, grain));
    let mut noop = |_: u64, _: u64| {};
    let progress: &mut dyn FnMut(u64, u64) = match opts.progress.as_mut() {
        Some(p) => *p,
        None => &mut noop,
    };
    let trace = std::env::var_os("VMKFS_TRACE").is_some();
    let t0 = std::time::Instant::now();
    let stats = new.fill(CopyFrom::Source(through), &engine, progress, opts.cancel)?;
    let t1 = std::time::Instant::now();
    let path = new.commit()?;
    if trace {
        eprintln!(
            "vmkfs: copy {:.3}s, flush+rename {:.3}s, {stats:?}",
            (t1 - t0).as_secs_f64(),
            t1.elapsed().as_secs_f64()
        );
    }
    Ok(CloneReport { path, files, stats })
}

/// The content identity (CID) a full copy of `chain` carries: its top link's, so that a copy of a
/// static base is known to be that base (deltas exported against it apply to the copy). `None` for
/// a top without a CID of its own (a raw image, a bare extent): the copy gets a fresh one.
pub fn content_id(chain: &Chain) -> Option<u32> {
    let top = chain.top();
    matches!(top.container(), vmdk::Container::Descriptor | vmdk::Container::Embedded).then(|| top.descriptor().cid)
}

/// What [`export_to`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeFormat {
    /// A streamOptimized stream.
    Stream,
    /// The plain bytes of the disk.
    Raw,
}

/// Writes `src` (a disk or chain, flattened) to `out` as a streamOptimized stream or as plain
/// bytes. `name` is the file name the stream's embedded descriptor gives itself; `adapter`
/// defaults to lsilogic. Returns the engine statistics and the bytes written.
pub fn export_to<W: Write + Send>(
    src: &Path,
    out: W,
    format: PipeFormat,
    name: &str,
    opts: &mut CloneOptions<'_>,
) -> Result<(CopyStats, u64)> {
    let chain = Chain::open(src, &opts.source)?;
    let cap = chain.capacity();
    let mut noop = |_: u64, _: u64| {};
    let progress: &mut dyn FnMut(u64, u64) = match opts.progress.as_mut() {
        Some(p) => *p,
        None => &mut noop,
    };
    let base = opts.engine.unwrap_or_default();
    let out_name = Path::new("<stdout>");
    match format {
        PipeFormat::Stream => {
            let grain = vmdk::create::DEFAULT_GRAIN_SECTORS;
            // The stream holds whole sectors; a raw image of odd length reads as zero-padded.
            let cap = cap.div_ceil(512) * 512;
            let adapter = opts.adapter.unwrap_or(Adapter::LsiLogic);
            let (h, desc) = stream_layout(name, cap, adapter, grain, content_id(&chain))?;
            let t = StreamTarget::new(WriteSink::new(out, out_name), h, &desc, out_name, opts.compress_level)?;
            let stats = copy(&chain, &t, &t.engine(base), progress, opts.cancel)?;
            let (_, n) = t.finish()?;
            Ok((stats, n))
        }
        PipeFormat::Raw => {
            let t = RawTarget::new(out, cap, out_name);
            let stats = copy(&chain, &t, &t.engine(base), progress, opts.cancel)?;
            let (_, n) = t.finish()?;
            Ok((stats, n))
        }
    }
}

/// Imports a disk from `input` (a pipe: standard input) into a new disk at `dst` in
/// `opts.format`. The input is a streamOptimized stream (detected by its `KDMV` magic; the capacity
/// comes from its header) or a raw image of exactly `size` bytes (required for raw input). A
/// truncated or overlong input is an error, and then no destination is left behind.
pub fn import<R: Read + Send>(
    input: R,
    name: &Path,
    dst: &Path,
    size: Option<u64>,
    opts: &mut CloneOptions<'_>,
) -> Result<CloneReport> {
    let (format, given_adapter, force, level, tuned, cancel) =
        (opts.format, opts.adapter, opts.force, opts.compress_level, opts.engine, opts.cancel);
    let make = |cap: u64, adapter: Option<Adapter>, cid: Option<u32>| -> Result<(Destination, EngineOptions)> {
        let mut copts = CreateOptions::new(format, cap);
        copts.adapter = given_adapter.or(adapter).unwrap_or(Adapter::LsiLogic);
        copts.force = force;
        copts.zero_fill = false;
        copts.cid = cid;
        let engine = tuned.unwrap_or_else(|| engine_for(format, copts.grain_sectors * 512));
        Ok((Destination::create(dst, &copts, level)?, engine))
    };
    let mut noop = |_: u64, _: u64| {};
    let progress: &mut dyn FnMut(u64, u64) = match opts.progress.as_mut() {
        Some(p) => *p,
        None => &mut noop,
    };
    let (new, stats) = match open_input(input, name)? {
        Input::Stream(mut feed) => {
            let cap = feed.reader().capacity();
            if let Some(s) = size.filter(|s| *s != cap) {
                return Err(Error::Usage(format!(
                    "--size {s} differs from the capacity of the stream on the input ({cap} bytes)"
                )));
            }
            let desc = feed.reader().descriptor().and_then(|t| vmdk::Descriptor::parse(t, name).ok());
            let adapter = desc.as_ref().and_then(|d| d.ddb("adapterType").and_then(Adapter::parse));
            // A restored backup stream is the disk it was made from: it keeps that content identity.
            let (new, engine) = make(cap, adapter, desc.map(|d| d.cid))?;
            let engine = feed.engine(engine);
            let stats = new.fill(CopyFrom::Feed(&mut *feed), &engine, progress, cancel)?;
            (new, stats)
        }
        Input::Raw(r) => {
            let cap = size.ok_or_else(|| {
                Error::Usage(
                    "the input is a raw image (no KDMV magic): give its size with --size (a streamOptimized stream carries its own)"
                        .into(),
                )
            })?;
            let (new, engine) = make(cap, None, None)?;
            let mut feed = RawFeed::new(r, name, cap);
            let stats = new.fill(CopyFrom::Feed(&mut feed), &engine, progress, cancel)?;
            (new, stats)
        }
    };
    let files = new.final_paths();
    let path = new.commit()?;
    Ok(CloneReport { path, files, stats })
}
