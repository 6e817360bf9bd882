//! The toolkit's error type and the command's exit codes.

use std::path::PathBuf;

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Exit codes of the `vmkfs` command (see `cli.md`).
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// A negative answer (`--compare` differs, `-x check` found problems).
    pub const NEGATIVE: i32 = 1;
    /// Bad usage.
    pub const USAGE: i32 = 2;
    /// Bad or unsupported input.
    pub const BAD_INPUT: i32 = 3;
    /// I/O error.
    pub const IO: i32 = 4;
    /// Locked or busy.
    pub const LOCKED: i32 = 5;
}

/// Everything a toolkit operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A link-level error.
    #[error(transparent)]
    Vmdk(#[from] vmdk::Error),
    /// A chain could not be opened.
    #[error(transparent)]
    Chain(#[from] redo::ChainError),
    /// A snapshot, commit or discard failed.
    #[error(transparent)]
    Redo(#[from] redo::RedoError),
    /// A change map could not be built or read.
    #[error(transparent)]
    ChangeMap(#[from] redo::ChangeMapError),
    /// A VMFS volume could not be opened or read.
    #[error(transparent)]
    Vmfs(#[from] crate::vmfs::VmfsError),
    /// A bad argument.
    #[error("{0}")]
    Usage(String),
    /// The disks given do not allow the operation (a delta that does not follow the replica, …).
    #[error("{0}")]
    Refused(String),
    /// An I/O error outside a disk (standard output, …).
    #[error("{path}: {source}", path = .path.display())]
    Io {
        /// What was being accessed.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The operation was interrupted.
    #[error("interrupted")]
    Interrupted,
    /// A line of a text file of the VM layer (a `.vmx`, a backup catalog) that cannot be understood.
    #[error("{path}: line {line}: {what}", path = .path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// 1-based line number (0: the file as a whole).
        line: usize,
        /// What is wrong and what was expected.
        what: String,
    },
    /// A restic repository file that cannot be used: damaged (a MAC or SHA-256 that does not
    /// match), not of the format, or locked by no key this password opens.
    #[error("{path}{at}: {what}", path = .path.display(), at = match .offset { Some(o) => format!(" at byte {o}"), None => String::new() })]
    Repo {
        /// The file (a pack, an index, a snapshot, the keys folder).
        path: PathBuf,
        /// Byte offset in it, when known.
        offset: Option<u64>,
        /// What was found and what was expected.
        what: String,
    },
    /// A backup that does not hold what its catalog says (a damaged or missing file, a broken chain
    /// of backups).
    #[error("{path}: {what}", path = .path.display())]
    Backup {
        /// The file or backup folder.
        path: PathBuf,
        /// What was found and what was expected.
        what: String,
    },
}

impl Error {
    /// True when the error is a write into a pipe whose reader went away (`EPIPE`, as in
    /// `vmkfs -e - … | head -c 100`): the command stops quietly instead of reporting it.
    pub fn is_broken_pipe(&self) -> bool {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cur {
            if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) {
                return true;
            }
            cur = e.source();
        }
        false
    }

    /// The exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Vmdk(e) => vmdk_code(e),
            Error::Chain(redo::ChainError::Link(e)) => vmdk_code(e),
            Error::Chain(_) => exit::BAD_INPUT,
            Error::Redo(redo::RedoError::Link(e)) => vmdk_code(e),
            Error::Redo(redo::RedoError::Chain(redo::ChainError::Link(e))) => vmdk_code(e),
            Error::Redo(redo::RedoError::Interrupted) => exit::IO,
            Error::Redo(_) | Error::ChangeMap(_) | Error::Refused(_) => exit::BAD_INPUT,
            Error::Io { .. } | Error::Interrupted => exit::IO,
            Error::Config { .. } | Error::Backup { .. } | Error::Repo { .. } => exit::BAD_INPUT,
            Error::Vmfs(e) if e.is_bad_input() => exit::BAD_INPUT,
            Error::Vmfs(_) => exit::IO,
        }
    }
}

fn vmdk_code(e: &vmdk::Error) -> i32 {
    match e {
        vmdk::Error::InvalidArgument(_) | vmdk::Error::Exists { .. } => exit::USAGE,
        vmdk::Error::Locked { .. }
        | vmdk::Error::InUseByVmware { .. }
        | vmdk::Error::Interrupted { .. }
        | vmdk::Error::HasChildren { .. }
        | vmdk::Error::Rdm(rdm::MappingError::Busy { .. }) => exit::LOCKED,
        vmdk::Error::Rdm(rdm::MappingError::Io { source, .. }) if source.kind() != std::io::ErrorKind::NotFound => {
            exit::IO
        }
        vmdk::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => exit::BAD_INPUT,
        vmdk::Error::Io { .. } | vmdk::Error::ReadOnly { .. } => exit::IO,
        _ => exit::BAD_INPUT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    #[test]
    fn broken_pipes_are_found_through_the_source_chain() {
        let pipe = || std::io::Error::from(ErrorKind::BrokenPipe);
        assert!(Error::Io { path: "<stdout>".into(), source: pipe() }.is_broken_pipe());
        assert!(Error::from(vmdk::Error::io("<stdout>", "write 4096 bytes", pipe())).is_broken_pipe());
        assert!(!Error::Io { path: "x".into(), source: ErrorKind::NotFound.into() }.is_broken_pipe());
        assert!(!Error::Usage("broken pipe".into()).is_broken_pipe());
    }
}
