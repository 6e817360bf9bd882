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
mod settings;
pub mod vmfs;

pub use settings::{Outcome, Settings, Stdio, VolumeCache};

use std::path::Path;

use crate::error::{Error, Result};
use crate::report::Reporter;

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
