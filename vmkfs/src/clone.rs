//! Cloning: any readable disk or chain into a new disk of any format we write.
//!
//! The source chain is opened read-only, the target is created under temporary names, the
//! [engine](crate::engine) copies what the source's allocation map says is data, and the target is
//! flushed and renamed into place only when complete. A failure or interruption leaves no destination.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use redo::Chain;
use vmdk::create::{create, Adapter, CreateOptions, DiskFormat};
use vmdk::OpenOptions;

use crate::engine::{copy, CopyStats, EngineOptions};
use crate::error::Result;

/// Options for [`clone_disk`].
pub struct CloneOptions<'a> {
    /// Target format.
    pub format: DiskFormat,
    /// Adapter for the new disk (default: the source's, else lsilogic).
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
        }
    }
}

/// The engine settings a target format needs: sparse targets are written in order through one
/// writer with grain-sized zero detection; eager-zeroed targets get every byte written; flat targets
/// take parallel writes with 4 KiB zero detection (the file-system block).
pub fn engine_for(format: DiskFormat, grain_bytes: u64) -> EngineOptions {
    let mut e = EngineOptions::new();
    if format.is_sparse() {
        e.ordered = true;
        e.zero_block = grain_bytes as usize;
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

/// Clones `src` (a disk or the top of a chain, flattened) into a new disk at `dst`.
pub fn clone_disk(src: &Path, dst: &Path, opts: &mut CloneOptions<'_>) -> Result<CloneReport> {
    let chain = Chain::open(src, &opts.source)?;
    let cap = chain.capacity();
    let adapter = opts
        .adapter
        .or_else(|| chain.top().descriptor().ddb("adapterType").and_then(Adapter::parse))
        .unwrap_or(Adapter::LsiLogic);
    let mut copts = CreateOptions::new(opts.format, cap);
    copts.adapter = adapter;
    copts.force = opts.force;
    copts.zero_fill = false;
    let grain = copts.grain_sectors * 512;
    vmdk::create::remove_stale_temps(&vmdk::create::planned_files(dst, opts.format, cap, copts.split_sectors));
    let new = create(dst, &copts)?;
    let files = new.final_paths();
    let engine = opts.engine.unwrap_or_else(|| engine_for(opts.format, grain));
    let mut noop = |_: u64, _: u64| {};
    let progress: &mut dyn FnMut(u64, u64) = match opts.progress.as_mut() {
        Some(p) => *p,
        None => &mut noop,
    };
    let trace = std::env::var_os("VMKFS_TRACE").is_some();
    let t0 = std::time::Instant::now();
    let stats = copy(&chain, new.link(), &engine, progress, opts.cancel)?;
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
