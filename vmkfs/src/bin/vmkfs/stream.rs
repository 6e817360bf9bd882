//! Export and pipes: `-e/--exportfile DST SRC` (DST `-`: a stream or plain bytes on standard
//! output), `-i - … DST` (a streamOptimized stream or a raw image on standard input),
//! `--compress-level` and `--size`.
//!
//! With DST `-`, standard output carries the disk, so every message (progress, JSON events) goes to
//! standard error.

use std::fs::File;
use std::io::{BufReader, IsTerminal};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use clap::Args;
use vmkfs::clone::{clone_disk, export_to, import, CloneOptions, PipeFormat};
use vmkfs::error::{Error, Result};
use vmkfs::size::parse_size;
use vmkfs::vmdk::create::DiskFormat;

use crate::progress::Messages;
use crate::{open_options, target, Cli};

/// Export and pipe options.
#[derive(Args, Debug)]
pub struct StreamArgs {
    /// Export the target disk (a chain is flattened) to DST, by default as 2gbsparse; DST `-` writes
    /// to standard output, with -d streamoptimized (a stream) or -d raw (the plain bytes).
    #[arg(short = 'e', long = "exportfile", value_name = "DST")]
    pub export_file: Option<PathBuf>,
    /// zlib level of -d streamoptimized output, 0 (store) to 9 (smallest); default 6.
    #[arg(long = "compress-level", value_name = "N", value_parser = clap::value_parser!(u32).range(0..=9))]
    pub compress_level: Option<u32>,
    /// Size of a raw image read from standard input by `-i -` (a stream carries its own).
    #[arg(long = "size", value_name = "SIZE")]
    pub input_size: Option<String>,
}

/// How many export/pipe operations the command line selects (`-i -` is counted as `-i`).
pub fn selected(cli: &Cli) -> usize {
    usize::from(cli.stream.export_file.is_some())
}

/// Runs `-e`, or `-i -` (which `disk.rs` counts); `None` for anything else.
pub fn run(cli: &Cli) -> Option<i32> {
    if let Some(dst) = &cli.stream.export_file {
        return Some(run_export(cli, dst));
    }
    if cli.disk.clone.as_deref() == Some(Path::new("-")) {
        return Some(run_import(cli));
    }
    None
}

/// Applies `--compress-level` to a clone (`-i SRC -d streamoptimized DST`), refusing the stream
/// options where they mean nothing.
pub fn apply(cli: &Cli, format: DiskFormat, opts: &mut CloneOptions<'_>) -> Result<()> {
    if cli.stream.input_size.is_some() {
        return Err(Error::Usage("--size is for a raw image read from standard input (-i -)".into()));
    }
    opts.compress_level = compress_level(cli, format == DiskFormat::StreamOptimized)?;
    Ok(())
}

pub fn compress_level(cli: &Cli, stream: bool) -> Result<u32> {
    match cli.stream.compress_level {
        Some(_) if !stream => Err(Error::Usage("--compress-level applies to -d streamoptimized only".into())),
        Some(l) => Ok(l),
        None => Ok(vmkfs::stream::DEFAULT_COMPRESS_LEVEL),
    }
}

/// A writable handle on standard output, unbuffered (the engine writes whole chunks).
fn stdout_file() -> Result<File> {
    let fd =
        std::io::stdout().as_fd().try_clone_to_owned().map_err(|e| Error::Io { path: "<stdout>".into(), source: e })?;
    Ok(File::from(fd))
}

/// A readable handle on standard input.
fn stdin_file() -> Result<File> {
    let fd =
        std::io::stdin().as_fd().try_clone_to_owned().map_err(|e| Error::Io { path: "<stdin>".into(), source: e })?;
    Ok(File::from(fd))
}

fn run_export(cli: &Cli, dst: &Path) -> i32 {
    let to_stdout = dst == Path::new("-");
    let mut msg = Messages::new(cli, to_stdout);
    let result = (|| -> Result<serde_json::Value> {
        let src = target(cli)?;
        let fmt = cli.common.format.as_deref().unwrap_or("2gbsparse");
        let raw = fmt.eq_ignore_ascii_case("raw");
        let format = if raw {
            None
        } else {
            Some(DiskFormat::parse(fmt).ok_or_else(|| {
                let all: Vec<&str> = DiskFormat::EVERY.iter().map(|f| f.name()).collect();
                Error::Usage(format!("unknown disk format {fmt:?} for -e (expected one of: {}, raw)", all.join(", ")))
            })?)
        };
        let stream = format == Some(DiskFormat::StreamOptimized);
        if to_stdout && !stream && !raw {
            return Err(Error::Usage(
                "-e - writes to standard output, which takes -d streamoptimized or -d raw".into(),
            ));
        }
        if raw && !to_stdout {
            return Err(Error::Usage(
                "-d raw is for standard output (-e -); for a raw image file use -d monoflat (its -flat.vmdk)".into(),
            ));
        }
        if to_stdout && std::io::stdout().is_terminal() {
            return Err(Error::Usage("standard output is a terminal: redirect it to a file or a pipe".into()));
        }
        if cli.stream.input_size.is_some() {
            return Err(Error::Usage("--size is for a raw image read from standard input (-i -)".into()));
        }
        let level = compress_level(cli, stream)?;
        let adapter = crate::disk::adapter(cli)?;
        let (name, description) = match format {
            Some(f) => (f.name(), f.description()),
            None => ("raw", "raw (the plain bytes of the disk)"),
        };
        msg.start(src, dst, name, description);
        let mut progress = |d: u64, t: u64| msg.progress(d, t);
        let mut opts = CloneOptions::new(format.unwrap_or(DiskFormat::StreamOptimized));
        opts.adapter = adapter;
        opts.force = cli.common.force;
        opts.source = open_options(cli);
        opts.progress = Some(&mut progress);
        opts.cancel = Some(crate::disk::install_interrupt_handler());
        opts.compress_level = level;
        crate::verbose::describe(cli, src);
        let engine = vmkfs::engine::EngineOptions::new();
        crate::verbose::engine(cli, &engine);
        opts.engine = Some(engine);
        let t0 = std::time::Instant::now();
        if to_stdout {
            let stem = src.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "disk".into());
            let what = if raw { PipeFormat::Raw } else { PipeFormat::Stream };
            let (stats, bytes) = export_to(
                src,
                vmkfs::interrupt::Interruptible(vmkfs::stream::PipeOut::new(stdout_file()?)),
                what,
                &format!("{stem}-stream.vmdk"),
                &mut opts,
            )?;
            crate::verbose::copied(cli, &stats, t0.elapsed());
            return Ok(serde_json::json!({"event": "done", "destination": "-", "bytes": bytes, "read": stats.read}));
        }
        let r = clone_disk(src, dst, &mut opts)?;
        crate::verbose::copied(cli, &r.stats, t0.elapsed());
        Ok(serde_json::json!({"event": "done", "destination": r.path}))
    })();
    msg.finish(cli, &result)
}

fn run_import(cli: &Cli) -> i32 {
    let mut msg = Messages::new(cli, false);
    let result = (|| -> Result<serde_json::Value> {
        let dst = target(cli)?;
        if dst == Path::new("-") {
            return Err(Error::Usage("-i - writes a disk file: give its path, not `-`".into()));
        }
        if cli.common.format.as_deref().is_some_and(|f| f.contains(':')) {
            return Err(Error::Usage("-i - cannot write onto a device (-d rdm:, rdmp:, raw:)".into()));
        }
        let format = crate::disk::disk_format(cli)?;
        let size = cli.stream.input_size.as_deref().map(parse_size).transpose()?;
        let level = compress_level(cli, format == DiskFormat::StreamOptimized)?;
        let adapter = crate::disk::adapter(cli)?;
        if std::io::stdin().is_terminal() {
            return Err(Error::Usage("standard input is a terminal: pipe a stream or a raw image into -i -".into()));
        }
        msg.start(Path::new("-"), dst, format.name(), format.description());
        let mut progress = |d: u64, t: u64| msg.progress(d, t);
        let mut opts = CloneOptions::new(format);
        opts.adapter = adapter;
        opts.force = cli.common.force;
        opts.progress = Some(&mut progress);
        opts.cancel = Some(crate::disk::install_interrupt_handler());
        opts.compress_level = level;
        let input = BufReader::with_capacity(1 << 20, stdin_file()?);
        let r = import(input, Path::new("<stdin>"), dst, size, &mut opts)?;
        Ok(serde_json::json!({"event": "done", "destination": r.path}))
    })();
    msg.finish(cli, &result)
}
