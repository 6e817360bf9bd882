//! Copies: `-i SRC DST` (a clone or import; onto a device with `-d rdm:|rdmp:|raw:DEV`; from a
//! file of a restic snapshot), `-i - DST` (a streamOptimized stream or a raw image on standard
//! input) and `-e DST SRC` (an export; DST `-`: a stream or plain bytes on standard output).
//!
//! With DST `-`, standard output carries the disk, so every message (progress, JSON events) goes to
//! the message sink.

use std::io::BufReader;
use std::path::{Path, PathBuf};

use crate::clone::{clone_disk, export_to, import, CloneOptions, PipeFormat};
use crate::error::{Error, Result};
use crate::rdm_ops::DeviceTarget;
use crate::report::Reporter;
use crate::vmdk::create::{Adapter, DiskFormat};

use super::settings::{Outcome, Settings};

/// A copy.
#[derive(Debug)]
pub enum CopyOp {
    /// `-i SRC [-d FMT] DST`.
    Clone {
        /// The source: a disk or chain, or `restic:PATH@SNAP:/FILE`.
        src: PathBuf,
        /// The destination.
        dst: PathBuf,
        /// How it is written.
        how: CloneArgs,
    },
    /// `-i - [-d FMT] DST`: a stream or a raw image from standard input.
    Import {
        /// The destination.
        dst: PathBuf,
        /// Its format.
        format: DiskFormat,
        /// `--size`: the size of a raw image.
        size: Option<u64>,
        /// `--compress-level`.
        compress_level: Option<u32>,
        /// The destination's adapter type.
        adapter: Option<Adapter>,
    },
    /// `-e DST [-d FMT] SRC`.
    Export {
        /// The disk exported.
        src: PathBuf,
        /// The destination, `-` for standard output.
        dst: PathBuf,
        /// Its format; `None` for `-d raw` (the plain bytes).
        format: Option<DiskFormat>,
        /// The destination's adapter type.
        adapter: Option<Adapter>,
        /// `--compress-level`.
        compress_level: Option<u32>,
        /// `--size` was given (it means nothing here).
        size_given: bool,
    },
}

/// Runs a copy: its messages from start to end (an error is the caller's to print).
pub fn run(op: CopyOp, s: &Settings, r: &Reporter) -> Result<Outcome> {
    let to_err = matches!(&op, CopyOp::Export { dst, .. } if dst == Path::new("-"));
    r.copy_begin(to_err);
    let result = match op {
        CopyOp::Clone { src, dst, how } => run_clone(s, r, &src, &dst, how),
        CopyOp::Import { dst, format, size, compress_level, adapter } => {
            run_import(s, r, &dst, format, size, compress_level, adapter)
        }
        CopyOp::Export { src, dst, format, adapter, compress_level, size_given } => {
            if size_given {
                Err(size_refused())
            } else {
                run_export(s, r, &src, &dst, format, adapter, compress_level)
            }
        }
    };
    r.copy_end(result.as_ref().ok());
    result.map(|_| Outcome::Done)
}

/// The zlib level of a copy: `--compress-level`, refused where the output is not a stream.
pub fn compress_level(level: Option<u32>, stream: bool) -> Result<u32> {
    match level {
        Some(_) if !stream => Err(Error::Usage("--compress-level applies to -d streamoptimized only".into())),
        Some(l) => Ok(l),
        None => Ok(crate::stream::DEFAULT_COMPRESS_LEVEL),
    }
}

fn size_refused() -> Error {
    Error::Usage("--size is for a raw image read from standard input (-i -)".into())
}

/// The options of a clone besides its source and destination.
#[derive(Debug)]
pub struct CloneArgs {
    /// `-d rdm:DEV`, `rdmp:DEV`, `raw:DEV`: onto that device.
    pub device: Option<DeviceTarget>,
    /// The destination's format (ignored onto a device).
    pub format: DiskFormat,
    /// The destination's adapter type.
    pub adapter: Option<Adapter>,
    /// `--target-is-zero`: the device already reads as zeros.
    pub target_is_zero: bool,
    /// `--compress-level`.
    pub compress_level: Option<u32>,
    /// `--size` was given (it means nothing here).
    pub size_given: bool,
}

fn run_clone(s: &Settings, r: &Reporter, src: &Path, dst: &Path, c: CloneArgs) -> Result<serde_json::Value> {
    let (format_name, description) = match &c.device {
        Some(t) => (t.name(), t.description()),
        None => (c.format.name(), c.format.description()),
    };
    r.copy_start(src, dst, format_name, description);
    let mut progress = |done: u64, total: u64| r.copy_progress(done, total);
    let mut opts = CloneOptions::new(c.format);
    opts.adapter = c.adapter;
    opts.force = s.force;
    opts.source = s.open_options();
    opts.progress = Some(&mut progress);
    opts.cancel = Some(crate::interrupt::install());
    if c.size_given {
        return Err(size_refused());
    }
    opts.compress_level = compress_level(c.compress_level, c.format == DiskFormat::StreamOptimized)?;
    r.describe(src, &s.open_options());
    let engine = crate::engine::EngineOptions::new();
    r.engine(&engine);
    opts.engine = Some(engine);
    let t0 = std::time::Instant::now();
    let restic = crate::repo::location::parse_location(&src.to_string_lossy());
    let rep = match (&c.device, restic) {
        (None, Some(l)) => clone_from_repo(s, &l, dst, &mut opts)?,
        (Some(_), Some(_)) => {
            return Err(Error::Usage("a file of a restic snapshot clones into a disk format, not onto a device".into()))
        }
        (Some(t), None) => crate::rdm_ops::clone_to_device(src, dst, t, &mut opts, c.target_is_zero)?,
        (None, None) => clone_disk(src, dst, &mut opts)?,
    };
    r.copied(&rep.stats, t0.elapsed());
    Ok(serde_json::json!({"event": "done", "destination": rep.path}))
}

/// `-i restic:PATH@SNAP:/FILE`: the file of the snapshot (a disk's raw image) into a new disk,
/// which records the point ([`crate::repo::replica::Point`]) so that `--apply` can bring it to
/// later snapshots.
fn clone_from_repo(
    s: &Settings,
    l: &crate::repo::location::Location,
    dst: &Path,
    opts: &mut CloneOptions<'_>,
) -> Result<crate::clone::CloneReport> {
    let src = crate::repo::replica::SnapshotFile::open(l, &s.password()?)?;
    let _lock = src.repo.lock(false)?;
    let point = src.point();
    opts.ddb = point.ddb();
    crate::clone::clone_source_into(&src.source()?, src.node.size, None, Some(point.cid()), dst, opts)
}

fn run_export(
    s: &Settings,
    r: &Reporter,
    src: &Path,
    dst: &Path,
    format: Option<DiskFormat>,
    adapter: Option<Adapter>,
    level: Option<u32>,
) -> Result<serde_json::Value> {
    let to_stdout = dst == Path::new("-");
    let raw = format.is_none();
    let stream = format == Some(DiskFormat::StreamOptimized);
    if to_stdout && !stream && !raw {
        return Err(Error::Usage("-e - writes to standard output, which takes -d streamoptimized or -d raw".into()));
    }
    if raw && !to_stdout {
        return Err(Error::Usage(
            "-d raw is for standard output (-e -); for a raw image file use -d monoflat (its -flat.vmdk)".into(),
        ));
    }
    if to_stdout && s.stdio.output_is_terminal {
        return Err(Error::Usage("standard output is a terminal: redirect it to a file or a pipe".into()));
    }
    let level = compress_level(level, stream)?;
    let (name, description) = match format {
        Some(f) => (f.name(), f.description()),
        None => ("raw", "raw (the plain bytes of the disk)"),
    };
    r.copy_start(src, dst, name, description);
    let mut progress = |d: u64, t: u64| r.copy_progress(d, t);
    let mut opts = CloneOptions::new(format.unwrap_or(DiskFormat::StreamOptimized));
    opts.adapter = adapter;
    opts.force = s.force;
    opts.source = s.open_options();
    opts.progress = Some(&mut progress);
    opts.cancel = Some(crate::interrupt::install());
    opts.compress_level = level;
    r.describe(src, &s.open_options());
    let engine = crate::engine::EngineOptions::new();
    r.engine(&engine);
    opts.engine = Some(engine);
    let t0 = std::time::Instant::now();
    if to_stdout {
        let stem = src.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "disk".into());
        let what = if raw { PipeFormat::Raw } else { PipeFormat::Stream };
        let out = crate::interrupt::Interruptible(crate::stream::PipeOut::new(s.output()?));
        let (stats, bytes) = export_to(src, out, what, &format!("{stem}-stream.vmdk"), &mut opts)?;
        r.copied(&stats, t0.elapsed());
        return Ok(serde_json::json!({"event": "done", "destination": "-", "bytes": bytes, "read": stats.read}));
    }
    let rep = clone_disk(src, dst, &mut opts)?;
    r.copied(&rep.stats, t0.elapsed());
    Ok(serde_json::json!({"event": "done", "destination": rep.path}))
}

fn run_import(
    s: &Settings,
    r: &Reporter,
    dst: &Path,
    format: DiskFormat,
    size: Option<u64>,
    level: Option<u32>,
    adapter: Option<Adapter>,
) -> Result<serde_json::Value> {
    let level = compress_level(level, format == DiskFormat::StreamOptimized)?;
    if s.stdio.input_is_terminal {
        return Err(Error::Usage("standard input is a terminal: pipe a stream or a raw image into -i -".into()));
    }
    r.copy_start(Path::new("-"), dst, format.name(), format.description());
    let mut progress = |d: u64, t: u64| r.copy_progress(d, t);
    let mut opts = CloneOptions::new(format);
    opts.adapter = adapter;
    opts.force = s.force;
    opts.progress = Some(&mut progress);
    opts.cancel = Some(crate::interrupt::install());
    opts.compress_level = level;
    let input = BufReader::with_capacity(1 << 20, s.input()?);
    let rep = import(input, Path::new("<stdin>"), dst, size, &mut opts)?;
    Ok(serde_json::json!({"event": "done", "destination": rep.path}))
}
