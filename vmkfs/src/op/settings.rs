//! What every operation shares: the [`Settings`] it runs with (open options, volume, tuning,
//! standard streams, the restic password) and the [`Outcome`] it ends with.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::engine::Tuning;
use crate::error::{Error, Result};
use crate::repo::repo::PasswordSources;
use crate::vmdk::{OpenOptions, Storage};

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
            o.storage =
                Arc::clone(self.volume_storage.0.get_or_init(|| crate::vmfs::storage::volume_storage(&self.volume)));
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
