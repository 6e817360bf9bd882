//! The operations of the `vmkfs` command as values: the binary parses its command line into one
//! [`Op`] (typed, already-parsed parameters) and the [`Settings`] every operation shares, and
//! hands them to [`run`], which does the work and prints through a [`Reporter`].
//!
//! One module per subject: [`disk`] (create, inspect and change disks), [`copy`] (clone, import,
//! export), [`redo`] (REDO chains), [`rdm`] (raw device mappings), [`vmfs`] (VMFS volumes),
//! [`serve`] (NBD and FUSE). The exit code is the program's: [`run`] returns an [`Outcome`] or an
//! [`Error`] with its [`crate::error::ErrorKind`].

pub mod copy;
pub mod disk;
pub mod parse;
pub mod rdm;
pub mod redo;
pub mod serve;
pub mod vmfs;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::engine::Tuning;
use crate::error::{Error, Result};
use crate::repo::repo::PasswordSources;
use crate::report::Reporter;
use crate::vmdk::{OpenOptions, Storage};

/// One operation of the `vmkfs` command, by subject.
#[derive(Debug)]
pub enum Op {
    /// Create, inspect or change a disk.
    Disk(disk::DiskOp),
    /// Clone, import or export a disk.
    Copy(copy::CopyOp),
    /// Work on a REDO chain.
    Redo(redo::RedoOp),
    /// Create or query a raw device mapping.
    Rdm(rdm::RdmOp),
    /// Read a VMFS volume.
    Vmfs(vmfs::VmfsOp),
    /// Serve a disk over NBD or FUSE.
    Serve(serve::ServeOp),
}

impl Op {
    /// True for a clone, import or export: its errors are worded `Failed to clone disk: …`
    /// ([`crate::report::Wording::Clone`]).
    pub fn is_copy(&self) -> bool {
        matches!(self, Op::Copy(_))
    }
}

/// How an operation that completed ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done; a positive answer.
    Done,
    /// A negative answer: `--compare` differs, `-x check` found problems, a broken chain, a disk
    /// that is not a raw device mapping.
    Negative,
    /// The answer was given, but the input cannot be used (a mapping whose device is missing).
    Unusable,
}

/// What every operation shares.
#[derive(Debug, Default)]
pub struct Settings {
    /// Allow replacing an existing destination (`--force`).
    pub force: bool,
    /// Allow extent paths outside the disk's folder (`--allow-outside-paths`).
    pub allow_outside: bool,
    /// How long to wait for a disk another process has locked (`--wait`).
    pub wait: Option<Duration>,
    /// The devices of the VMFS volume paths resolve in (`--volume`; empty: the host's files).
    pub volume: Vec<PathBuf>,
    /// The copy engine's process-wide tuning (`--threads`, `--chunk-kib`, `--direct-io`).
    pub tuning: Tuning,
    /// Where a restic repository's password comes from.
    pub password: PasswordSources,
    /// Standard input and output, for the operations that carry a disk through them.
    pub stdio: Stdio,
    /// The volume of [`Settings::volume`], opened at first use.
    pub volume_storage: VolumeCache,
}

/// The process's standard input and output as files, given by the program.
#[derive(Debug, Default)]
pub struct Stdio {
    /// Standard input (`-i -`, `--write-at`).
    pub input: Option<File>,
    /// Standard output (`-e -`).
    pub output: Option<File>,
    /// True when standard input is a terminal.
    pub input_is_terminal: bool,
    /// True when standard output is a terminal.
    pub output_is_terminal: bool,
}

/// The storage of the `--volume` volume, opened once.
#[derive(Default)]
pub struct VolumeCache(OnceLock<Arc<dyn Storage>>);

impl std::fmt::Debug for VolumeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "VolumeCache(open)" } else { "VolumeCache(unopened)" })
    }
}

impl Settings {
    /// How to open disks read-only: the volume's storage with `--volume`, `--allow-outside-paths`,
    /// `--wait`.
    pub fn open_options(&self) -> OpenOptions {
        let mut o = OpenOptions { allow_outside: self.allow_outside, ..OpenOptions::read() };
        if !self.volume.is_empty() {
            o.storage = Arc::clone(self.volume_storage.0.get_or_init(|| vmfs::storage(&self.volume)));
        }
        if let Some(w) = self.wait {
            o.wait = w;
        }
        o
    }

    /// How to open disks for writing.
    pub fn rw_options(&self) -> OpenOptions {
        OpenOptions { write: true, ..self.open_options() }
    }

    /// The restic repository's password.
    pub fn password(&self) -> Result<Vec<u8>> {
        crate::repo::repo::password(&self.password)
    }

    /// Standard input as a file.
    pub fn input(&self) -> Result<File> {
        stdio_file(self.stdio.input.as_ref(), "<stdin>")
    }

    /// Standard output as a file.
    pub fn output(&self) -> Result<File> {
        stdio_file(self.stdio.output.as_ref(), "<stdout>")
    }
}

fn stdio_file(f: Option<&File>, name: &str) -> Result<File> {
    let e = |source| Error::Io { path: name.into(), source };
    f.ok_or_else(|| e(std::io::Error::from(std::io::ErrorKind::NotFound)))?.try_clone().map_err(e)
}

/// Runs `op` with `settings`, printing through `reporter`.
pub fn run(op: Op, settings: &Settings, reporter: &mut Reporter) -> Result<Outcome> {
    crate::engine::set_tuning(settings.tuning);
    let r: &Reporter = reporter;
    match op {
        Op::Disk(o) => disk::run(o, settings, r),
        Op::Copy(o) => copy::run(o, settings, r),
        Op::Redo(o) => redo::run(o, settings, r),
        Op::Rdm(o) => rdm::run(o, settings, r),
        Op::Vmfs(o) => vmfs::run(o, settings, r),
        Op::Serve(o) => serve::run(o, settings, r),
    }
}

/// Refuses, before any I/O, a disk argument that names no disk file: `.`, `..`, `/`, a path
/// ending in `/`, or (`on_host`: not inside a volume) a directory.
pub fn check_disk_name(p: &Path, on_host: bool) -> Result<()> {
    let dir_like = p.file_name().is_none() || p.as_os_str().as_encoded_bytes().ends_with(b"/");
    if dir_like || (on_host && p.is_dir()) {
        return Err(Error::Usage(format!("{}: a directory, not a disk file name", p.display())));
    }
    Ok(())
}

/// A byte count for people (`1.5 GiB`).
pub fn human(n: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let (v, i) = in_units_of_1024(n);
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// `n` as a value below 1024 and the power of 1024 it is in (0 to 5).
fn in_units_of_1024(n: u64) -> (f64, usize) {
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < 5 {
        v /= 1024.0;
        i += 1;
    }
    (v, i)
}

/// `println!` through [`Reporter::line`]: `outln!(r, "Clone: {pct}% done.")`.
macro_rules! outln {
    ($r:expr, $($arg:tt)*) => {
        $r.line(format_args!($($arg)*))
    };
}
pub(crate) use outln;
