//! The one error type of the `vmdk` crate.
//!
//! Every variant names the file it is about; corruption errors also name the byte offset and what was
//! expected there, so a user can find the problem with a hex editor.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while opening, reading, writing or creating a disk.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused an I/O request.
    #[error("{path}: {op}: {source}", path = .path.display())]
    Io {
        /// File the operation was on.
        path: PathBuf,
        /// What we were doing (`read at 4096`, `open`, …).
        op: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// On-disk data is inconsistent with the format.
    #[error("{path}: corrupt at byte offset {offset}: {what}", path = .path.display())]
    Corrupt {
        /// File holding the bad data.
        path: PathBuf,
        /// Byte offset in that file where the problem is.
        offset: u64,
        /// What was found and what was expected.
        what: String,
    },
    /// A descriptor line that cannot be understood.
    #[error("{path}: descriptor line {line}: {what}", path = .path.display())]
    Descriptor {
        /// The descriptor (or the sparse file embedding it).
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        what: String,
    },
    /// A valid but not (yet) supported feature.
    #[error("{path}: unsupported: {what}", path = .path.display())]
    Unsupported {
        /// File that uses the feature.
        path: PathBuf,
        /// The feature.
        what: String,
    },
    /// An extent path leaves the disk's folder and the caller did not allow that.
    #[error("{path}: {extent:?} is outside the disk's folder (an absolute path, `..`, or a symbolic link leading out); refusing unless explicitly allowed (--allow-outside-paths)", path = .path.display())]
    PathEscape {
        /// The descriptor naming the extent.
        path: PathBuf,
        /// The extent file name as written.
        extent: String,
    },
    /// An access outside the virtual disk.
    #[error("{path}: access of {len} bytes at offset {offset} is beyond the capacity of {capacity} bytes", path = .path.display())]
    OutOfRange {
        /// The disk.
        path: PathBuf,
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// Capacity of the disk.
        capacity: u64,
    },
    /// A write to a disk that was opened read-only (or has read-only extents).
    #[error("{path}: {what}", path = .path.display())]
    ReadOnly {
        /// The disk or extent.
        path: PathBuf,
        /// Why it cannot be written.
        what: String,
    },
    /// A destination that already exists.
    #[error("{path}: already exists (use --force to replace it)", path = .path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// Another process (or VMware) holds a lock that conflicts with the one needed.
    #[error("{path}: locked by {holder}", path = .path.display())]
    Locked {
        /// The locked file.
        path: PathBuf,
        /// Who holds it: `process 1234 (vmkfs --write-at 0 x.vmdk)`, or `another process`.
        holder: String,
    },
    /// A running VMware product has the file open: its lock folder `FILE.lck` exists.
    #[error("{path}: in use by VMware (lock folder {}): a running virtual machine has the disk open", .folder.display(), path = .path.display())]
    InUseByVmware {
        /// The file.
        path: PathBuf,
        /// VMware's lock folder beside it.
        folder: PathBuf,
    },
    /// An operation on this disk was interrupted in a phase that only re-running it can finish
    /// (its data was being copied in place); until then the disk is refused.
    #[error("{path}: an interrupted {op} has not finished: re-run `{rerun}` to complete it", path = .path.display())]
    Interrupted {
        /// The disk refused.
        path: PathBuf,
        /// The operation (`commit`, `apply`, …).
        op: String,
        /// The command that finishes it.
        rerun: String,
    },
    /// The disk has child links, which read through it: it must not change.
    #[error("{path}: {what}: {child} is built on it (a link that has children is read-only; commit or discard the children first)", path = .path.display(), child = .child.display())]
    HasChildren {
        /// The parent.
        path: PathBuf,
        /// One child.
        child: PathBuf,
        /// What was refused.
        what: String,
    },
    /// Two extents (or two links of a chain) are the same file.
    #[error("{path}: {what}", path = .path.display())]
    Alias {
        /// The disk.
        path: PathBuf,
        /// Which files coincide.
        what: String,
    },
    /// A bad argument from the caller (size, format name, …).
    #[error("{0}")]
    InvalidArgument(String),
    /// A raw device mapping: a bad mapping file, or a mapped device that is missing, busy or not
    /// the device the mapping was made for.
    #[error(transparent)]
    Rdm(#[from] rdm::MappingError),
}

impl Error {
    /// Builds an [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, op: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), op: op.into(), source }
    }

    /// Builds an [`Error::Corrupt`].
    pub fn corrupt(path: impl Into<PathBuf>, offset: u64, what: impl Into<String>) -> Self {
        Error::Corrupt { path: path.into(), offset, what: what.into() }
    }

    /// Builds an [`Error::Unsupported`].
    pub fn unsupported(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::Unsupported { path: path.into(), what: what.into() }
    }

    /// True for errors caused by bad or unsupported input (as opposed to I/O trouble or usage errors).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. }
                | Error::Descriptor { .. }
                | Error::Unsupported { .. }
                | Error::PathEscape { .. }
                | Error::OutOfRange { .. }
                | Error::Rdm(
                    rdm::MappingError::Corrupt { .. }
                        | rdm::MappingError::Version { .. }
                        | rdm::MappingError::NotADevice { .. }
                        | rdm::MappingError::NotFound { .. }
                        | rdm::MappingError::Mismatch { .. }
                )
        )
    }
}
