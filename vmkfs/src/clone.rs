//! Cloning: any readable disk or chain into a new disk of any format we write.
//!
//! The copy is driven by the source's merged allocation map: ranges the map says are absent or zero
//! are never read; what is read is checked per 64 KiB block and all-zero blocks are not written, so
//! thin and sparse targets stay thin. The destination is built under temporary names and renamed
//! into place only when complete and flushed; a failure leaves no destination.

use std::path::{Path, PathBuf};

use redo::Chain;
use vmdk::create::{create, Adapter, CreateOptions, DiskFormat};
use vmdk::extent::is_zero;
use vmdk::{OpenOptions, State};

use crate::error::Result;

/// Bytes per copy chunk.
pub const CHUNK: u64 = 1 << 20;
/// Zero-detection granularity.
pub const ZERO_BLOCK: usize = 64 << 10;

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
}

impl<'a> CloneOptions<'a> {
    /// Defaults for `format`.
    pub fn new(format: DiskFormat) -> CloneOptions<'a> {
        CloneOptions { format, adapter: None, force: false, source: OpenOptions::read(), progress: None }
    }
}

/// Clones `src` (a disk or the top of a chain, flattened) into a new disk at `dst`.
pub fn clone_disk(src: &Path, dst: &Path, opts: &mut CloneOptions<'_>) -> Result<PathBuf> {
    let chain = Chain::open(src, &opts.source)?;
    let cap = chain.capacity();
    let adapter = opts
        .adapter
        .or_else(|| chain.top().descriptor().ddb("adapterType").and_then(Adapter::parse))
        .unwrap_or(Adapter::LsiLogic);
    let mut copts = CreateOptions::new(opts.format, cap);
    copts.adapter = adapter;
    copts.force = opts.force;
    let new = create(dst, &copts)?;
    let target = new.link();
    let total = crate::info::allocated_bytes(cap, false, |o, l| chain.map(o, l))?;
    let mut done = 0u64;
    let mut report = |d: u64| {
        if let Some(p) = opts.progress.as_mut() {
            p(d, total)
        }
    };
    report(0);
    let mut buf = vec![0u8; CHUNK as usize];
    const WINDOW: u64 = 1 << 30;
    let mut off = 0;
    while off < cap {
        let n = WINDOW.min(cap - off);
        for run in chain.map(off, n)?.runs().iter().filter(|r| r.state == State::Data) {
            let mut pos = run.offset;
            while pos < run.end() {
                let len = CHUNK.min(run.end() - pos) as usize;
                let b = &mut buf[..len];
                chain.read_at(b, pos)?;
                // Write only the non-zero blocks, merging neighbours into one write.
                let mut i = 0;
                while i < len {
                    let start = i;
                    while i < len && !is_zero(&b[i..(i + ZERO_BLOCK).min(len)]) {
                        i = (i + ZERO_BLOCK).min(len);
                    }
                    if i > start {
                        target.write_at(&b[start..i], pos + start as u64)?;
                    }
                    while i < len && is_zero(&b[i..(i + ZERO_BLOCK).min(len)]) {
                        i = (i + ZERO_BLOCK).min(len);
                    }
                }
                pos += len as u64;
                done += len as u64;
                report(done);
            }
        }
        off += n;
    }
    Ok(new.commit()?)
}
