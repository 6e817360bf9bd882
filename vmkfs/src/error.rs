//! The toolkit's error type and its classification ([`ErrorKind`]).

use std::path::PathBuf;

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] is: what a program tells its caller (the `vmkfs` command
/// maps each kind to an exit code, the C ABI to a status number; see `cli.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A bad argument, or a destination that exists.
    Usage,
    /// Bad or unsupported input: a damaged or unknown file, a missing one, disks that do not allow
    /// the operation.
    BadInput,
    /// An I/O error, or an interrupted operation.
    Io,
    /// A disk locked or busy (another process, a running VM, children that depend on it).
    Locked,
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

    /// The kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Usage(_) => ErrorKind::Usage,
            Error::Vmdk(e) => vmdk_kind(e),
            Error::Chain(redo::ChainError::Link(e)) => vmdk_kind(e),
            Error::Chain(_) => ErrorKind::BadInput,
            Error::Redo(redo::RedoError::Link(e)) => vmdk_kind(e),
            Error::Redo(redo::RedoError::Chain(redo::ChainError::Link(e))) => vmdk_kind(e),
            Error::Redo(redo::RedoError::Interrupted) => ErrorKind::Io,
            Error::Redo(_) | Error::ChangeMap(_) | Error::Refused(_) => ErrorKind::BadInput,
            Error::Io { .. } | Error::Interrupted => ErrorKind::Io,
            Error::Config { .. } | Error::Backup { .. } | Error::Repo { .. } => ErrorKind::BadInput,
            Error::Vmfs(e) if e.is_bad_input() => ErrorKind::BadInput,
            Error::Vmfs(_) => ErrorKind::Io,
        }
    }
}

fn vmdk_kind(e: &vmdk::Error) -> ErrorKind {
    match e {
        vmdk::Error::InvalidArgument(_) | vmdk::Error::Exists { .. } => ErrorKind::Usage,
        vmdk::Error::Locked { .. }
        | vmdk::Error::InUseByVmware { .. }
        | vmdk::Error::Interrupted { .. }
        | vmdk::Error::HasChildren { .. }
        | vmdk::Error::Rdm(rdm::MappingError::Busy { .. }) => ErrorKind::Locked,
        vmdk::Error::Rdm(rdm::MappingError::Io { source, .. }) if source.kind() != std::io::ErrorKind::NotFound => {
            ErrorKind::Io
        }
        vmdk::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => ErrorKind::BadInput,
        vmdk::Error::Io { .. } | vmdk::Error::ReadOnly { .. } => ErrorKind::Io,
        _ => ErrorKind::BadInput,
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
