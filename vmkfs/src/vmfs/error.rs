//! The VMFS reader's error type: every variant names where (device or volume, byte offset) and what
//! was expected there.

use std::path::PathBuf;

/// Result alias of the VMFS reader.
pub type Result<T, E = VmfsError> = std::result::Result<T, E>;

/// Everything that can go wrong while opening or reading a VMFS volume.
#[derive(Debug, thiserror::Error)]
pub enum VmfsError {
    /// The operating system refused a read.
    #[error("{device}: read of {len} bytes at byte offset {offset}: {source}", device = .device.display())]
    Io {
        /// Device or image file.
        device: PathBuf,
        /// Byte offset on the device.
        offset: u64,
        /// Bytes requested.
        len: u64,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// On-disk data is inconsistent with the format.
    #[error("{place}: corrupt at byte offset {offset}: {what}")]
    Corrupt {
        /// The device (for partition and LVM structures) or `VMFS volume LABEL` (for file-system
        /// structures, whose offsets are volume offsets).
        place: String,
        /// Byte offset in that place.
        offset: u64,
        /// What was found and what was expected.
        what: String,
    },
    /// Valid but not supported here.
    #[error("{place}: unsupported: {what}")]
    Unsupported {
        /// Device or volume.
        place: String,
        /// The feature.
        what: String,
    },
    /// The devices given do not make up one complete volume.
    #[error("{0}")]
    Volume(String),
    /// A path that does not exist in the volume.
    #[error("{path}: no such file or directory in the VMFS volume")]
    NotFound {
        /// The path asked for.
        path: String,
    },
    /// A path component that is not a directory.
    #[error("{path}: not a directory")]
    NotADirectory {
        /// The path asked for.
        path: String,
    },
    /// A directory where a file was expected.
    #[error("{path}: is a directory")]
    IsADirectory {
        /// The path asked for.
        path: String,
    },
    /// `read_link` on something that is not a symbolic link.
    #[error("{path}: not a symbolic link")]
    NotASymlink {
        /// The path asked for.
        path: String,
    },
    /// Symbolic links nested too deeply or looping.
    #[error("{path}: too many levels of symbolic links")]
    SymlinkLoop {
        /// The path asked for.
        path: String,
    },
    /// A raw device mapping: its data lives on another LUN, not in the volume.
    #[error("{path}: raw device mapping to LUN {lun}: its data is on that LUN, not on the VMFS volume")]
    Rdm {
        /// The path asked for.
        path: String,
        /// The mapped LUN, as the descriptor names it.
        lun: String,
    },
    /// An attempt to change the volume.
    #[error("{path}: the VMFS volume is opened read-only (cannot {op})")]
    ReadOnly {
        /// The path.
        path: String,
        /// What was attempted.
        op: String,
    },
}

impl VmfsError {
    /// Builds a [`VmfsError::Corrupt`].
    pub fn corrupt(place: impl Into<String>, offset: u64, what: impl Into<String>) -> Self {
        VmfsError::Corrupt { place: place.into(), offset, what: what.into() }
    }

    /// Builds a [`VmfsError::Unsupported`].
    pub fn unsupported(place: impl Into<String>, what: impl Into<String>) -> Self {
        VmfsError::Unsupported { place: place.into(), what: what.into() }
    }

    /// True for errors caused by bad or unsupported input (as opposed to I/O trouble).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, VmfsError::Io { .. })
    }
}

impl From<VmfsError> for vmdk::Error {
    fn from(e: VmfsError) -> vmdk::Error {
        match e {
            VmfsError::Io { device, offset, len, source } => {
                vmdk::Error::io(device, format!("read {len} bytes at offset {offset}"), source)
            }
            VmfsError::Corrupt { place, offset, what } => vmdk::Error::corrupt(place, offset, what),
            VmfsError::NotFound { path } => {
                vmdk::Error::io(path, "open in the VMFS volume", std::io::ErrorKind::NotFound.into())
            }
            VmfsError::ReadOnly { path, op } => vmdk::Error::ReadOnly {
                path: path.into(),
                what: format!("the VMFS volume is opened read-only (cannot {op})"),
            },
            other => {
                let msg = other.to_string();
                vmdk::Error::unsupported("VMFS volume", msg)
            }
        }
    }
}
