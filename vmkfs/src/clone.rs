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
use vmdk::extent::stream::writer::{BackingSink, WriteSink};
use vmdk::{Link, OpenOptions};

use crate::engine::{copy, copy_feed, CopyStats, EngineOptions, Feed, Needs, Piece, Source, Target};
use crate::error::{Error, Result};
use crate::stream::{open_input, Input, RawFeed, RawTarget, StreamTarget, DEFAULT_COMPRESS_LEVEL};

/// What [`CloneOptions::sealed`] is called with: every file's `(final, temporary)` path.
pub type Sealed<'a> = dyn FnMut(&[(PathBuf, PathBuf)]) + 'a;

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
    /// Engine tuning; `None`: the defaults. Each target adds what it needs ([`Target::needs`]).
    pub engine: Option<EngineOptions>,
    /// zlib level (0–9) of streamOptimized output.
    pub compress_level: u32,
    /// Disk database entries the new disk gets (the restic point a replica records); not for
    /// streamOptimized, which is never a replica.
    pub ddb: Vec<(String, String)>,
    /// Called once the new disk's files hold their final bytes, before they are flushed and put
    /// in place, with every file's `(final, temporary)` path: a reader (a hasher) can take them
    /// while they are flushed. Not called for streamOptimized output.
    pub sealed: Option<&'a mut Sealed<'a>>,
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
            ddb: Vec::new(),
            sealed: None,
        }
    }
}

/// A new disk's link as a copy target: what the link needs ([`Target::needs`]: sparse links are
/// written in order with grain-sized zero detection, flat ones in parallel), and for an
/// eager-zeroed disk every byte written.
struct DiskTarget<'a> {
    link: &'a Link,
    eager: bool,
}

impl Target for DiskTarget<'_> {
    type Encoded = ();
    fn capacity(&self) -> u64 {
        self.link.capacity()
    }
    fn needs(&self) -> Needs {
        Needs { dense: self.eager, ..self.link.needs() }
    }
    fn encode(&self, piece: &Piece<'_>) -> Result<()> {
        self.link.encode(piece)
    }
    fn write(&self, piece: &Piece<'_>, encoded: ()) -> Result<u64> {
        self.link.write(piece, encoded)
    }
    fn zero_range(&self, offset: u64, len: u64) -> Result<()> {
        Target::zero_range(self.link, offset, len)
    }
    fn start_writeback(&self, offset: u64, len: u64) {
        Target::start_writeback(self.link, offset, len)
    }
    fn enable_direct_io(&self) -> bool {
        self.link.enable_direct_io()
    }
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
    /// A format written through a writable link; `eager`: every byte is written (eagerzeroedthick).
    Disk {
        /// The new disk.
        disk: Box<NewDisk>,
        /// Every byte of it is written, zeros included.
        eager: bool,
    },
    /// A streamOptimized file, and the target appending to it.
    Stream(Box<(NewStream, StreamTarget<BackingSink>)>),
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Disk { disk, eager } => {
                f.debug_struct("Disk").field("disk", disk).field("eager", eager).finish()
            }
            Destination::Stream(s) => f.debug_tuple("Stream").field(&s.0).finish(),
        }
    }
}

impl Destination {
    /// Creates the destination described by `copts` at `dst` (the transaction home first finishes
    /// or clears what killed runs left for it). `level` is the zlib level of a streamOptimized
    /// destination.
    pub fn create(dst: &Path, copts: &CreateOptions, level: u32) -> Result<Destination> {
        vmdk::create::check_capacity(dst, copts.format, copts.capacity, copts.split_sectors)?;
        if copts.format == DiskFormat::StreamOptimized {
            let new = create_stream(dst, copts)?;
            let sink = BackingSink::new(new.backing().clone());
            let target = StreamTarget::new(sink, new.header().clone(), new.descriptor(), dst, level)?;
            return Ok(Destination::Stream(Box::new((new, target))));
        }
        let eager = copts.format == DiskFormat::EagerZeroedThick;
        Ok(Destination::Disk { disk: Box::new(create(dst, copts)?), eager })
    }

    /// Every file the destination will have.
    pub fn final_paths(&self) -> Vec<PathBuf> {
        match self {
            Destination::Disk { disk, .. } => disk.final_paths(),
            Destination::Stream(s) => s.0.final_paths(),
        }
    }

    /// Copies `from` into the destination with `engine` (to which the target adds what it needs).
    pub fn fill(
        &self,
        from: CopyFrom<'_>,
        engine: &EngineOptions,
        progress: &mut dyn FnMut(u64, u64),
        cancel: Option<&AtomicBool>,
    ) -> Result<CopyStats> {
        match (self, from) {
            (Destination::Disk { disk, eager }, from) => {
                let t = DiskTarget { link: disk.link(), eager: *eager };
                match from {
                    CopyFrom::Source(s) => copy(s, &t, engine, progress, cancel),
                    CopyFrom::Feed(f) => copy_feed(f, &t, engine, progress, cancel),
                }
            }
            (Destination::Stream(d), CopyFrom::Source(s)) => copy(s, &d.1, engine, progress, cancel),
            (Destination::Stream(d), CopyFrom::Feed(f)) => copy_feed(f, &d.1, engine, progress, cancel),
        }
    }

    /// Finishes the destination (the stream's directory and footer), flushes it and renames its
    /// files into place.
    pub fn commit(self) -> Result<PathBuf> {
        match self {
            Destination::Disk { disk, .. } => Ok((*disk).commit()?),
            Destination::Stream(d) => {
                let (s, t) = *d;
                t.finish()?;
                Ok(s.commit()?)
            }
        }
    }
}

/// Creates an empty disk at `dst` in any format we write (`-c`): a writable format through
/// [`vmdk::create::create`], a streamOptimized one as a complete stream with no grains (its
/// directory, footer and end-of-stream marker written, zlib `level`). Returns the disk's path and
/// every file it has.
pub fn create_disk(dst: &Path, copts: &CreateOptions, level: u32) -> Result<(PathBuf, Vec<PathBuf>)> {
    let new = Destination::create(dst, copts, level)?;
    let files = new.final_paths();
    Ok((new.commit()?, files))
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
    let adapter = chain.top().descriptor().ddb("adapterType").and_then(Adapter::parse);
    clone_source_into(through, chain.capacity(), adapter, content_id(chain), dst, opts)
}

/// Clones any source (a file of a restic snapshot, …) into a new disk at `dst` of `capacity`
/// bytes, with content identity `cid` (a fresh one when `None`); `adapter` is the default when
/// `opts` names none (else lsilogic).
pub fn clone_source_into(
    through: &dyn Source,
    cap: u64,
    adapter: Option<Adapter>,
    cid: Option<u32>,
    dst: &Path,
    opts: &mut CloneOptions<'_>,
) -> Result<CloneReport> {
    let adapter = if opts.format == DiskFormat::StreamOptimized {
        opts.adapter.unwrap_or(Adapter::LsiLogic)
    } else {
        opts.adapter.or(adapter).unwrap_or(Adapter::LsiLogic)
    };
    let mut copts = CreateOptions::new(opts.format, cap);
    copts.adapter = adapter;
    copts.force = opts.force;
    copts.zero_fill = false;
    copts.cid = cid;
    let new = Destination::create(dst, &copts, opts.compress_level)?;
    let files = new.final_paths();
    let engine = opts.engine.unwrap_or_default();
    let mut noop = |_: u64, _: u64| {};
    let progress: &mut dyn FnMut(u64, u64) = match opts.progress.as_mut() {
        Some(p) => *p,
        None => &mut noop,
    };
    let stats = new.fill(CopyFrom::Source(through), &engine, progress, opts.cancel)?;
    if let (Destination::Disk { disk, .. }, false) = (&new, opts.ddb.is_empty()) {
        disk.link().update_descriptor(|d| {
            for (k, v) in &opts.ddb {
                d.set_ddb(k, v.clone());
            }
        })?;
    }
    if let (Destination::Disk { disk, .. }, Some(sealed)) = (&new, opts.sealed.as_mut()) {
        sealed(&disk.seal()?);
    }
    let path = new.commit()?;
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
            let stats = copy(&chain, &t, &base, progress, opts.cancel)?;
            let (_, n) = t.finish()?;
            Ok((stats, n))
        }
        PipeFormat::Raw => {
            let t = RawTarget::new(out, cap, out_name);
            let stats = copy(&chain, &t, &base, progress, opts.cancel)?;
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
        let engine = tuned.unwrap_or_default();
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
    if let (Destination::Disk { disk, .. }, Some(sealed)) = (&new, opts.sealed.as_mut()) {
        sealed(&disk.seal()?);
    }
    let path = new.commit()?;
    Ok(CloneReport { path, files, stats })
}
