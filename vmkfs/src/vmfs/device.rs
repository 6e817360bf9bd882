//! The devices a volume lives on: image files, block devices, or memory (tests and fuzzing), all
//! read with positional reads on `&self`.

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use rdm::ReadAt;

use super::error::{Result, VmfsError};

/// A readable device or image: its reads are its [`ReadAt`] (exactly `buf.len()` bytes at an offset;
/// reading past the end is an error naming the device and offset).
pub trait DeviceRead: ReadAt<Error = VmfsError> + Debug {
    /// The path it was opened by (for messages).
    fn path(&self) -> &Path;
    /// Size in bytes.
    fn len(&self) -> u64;
    /// True for an empty device.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An image file or block device on the host, opened read-only.
#[derive(Debug)]
pub struct HostDevice {
    dev: rdm::Device,
    len: u64,
}

impl HostDevice {
    /// Opens `path` read-only (block devices report their size through the kernel).
    pub fn open(path: &Path) -> Result<HostDevice> {
        let io = |source| VmfsError::Io { device: path.into(), offset: 0, len: 0, source };
        let dev = rdm::Device::open(path, rdm::OpenMode::Read).map_err(io)?;
        let len = dev.size().map_err(io)?;
        Ok(HostDevice { dev, len })
    }
}

impl ReadAt for HostDevice {
    type Error = VmfsError;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let n = self.dev.read_at_most(buf, offset).map_err(|source| VmfsError::Io {
            device: self.path().into(),
            offset,
            len: buf.len() as u64,
            source,
        })?;
        if n < buf.len() {
            return Err(past_end(self.path(), offset, buf.len(), self.len));
        }
        Ok(())
    }
}

impl DeviceRead for HostDevice {
    fn path(&self) -> &Path {
        self.dev.path()
    }
    fn len(&self) -> u64 {
        self.len
    }
}

/// A device held in memory (tests, fuzzing).
#[derive(Debug, Clone)]
pub struct MemDevice {
    path: PathBuf,
    data: Vec<u8>,
}

impl MemDevice {
    /// A device named `path` holding `data`.
    pub fn new(path: impl Into<PathBuf>, data: Vec<u8>) -> MemDevice {
        MemDevice { path: path.into(), data }
    }
}

impl ReadAt for MemDevice {
    type Error = VmfsError;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        match end {
            Some(end) if end <= self.data.len() as u64 => {
                buf.copy_from_slice(&self.data[offset as usize..end as usize]);
                Ok(())
            }
            _ => Err(past_end(&self.path, offset, buf.len(), self.len())),
        }
    }
}

impl DeviceRead for MemDevice {
    fn path(&self) -> &Path {
        &self.path
    }
    fn len(&self) -> u64 {
        self.data.len() as u64
    }
}

fn past_end(path: &Path, offset: u64, n: usize, len: u64) -> VmfsError {
    VmfsError::corrupt(
        path.display().to_string(),
        offset,
        format!("device is truncated: needed {n} bytes at offset {offset}, the device ends at {len}"),
    )
}

/// Reads `n` bytes at `offset` into a new buffer (`n` is always a constant or a validated size).
pub(crate) fn read_vec(dev: &dyn DeviceRead, offset: u64, n: usize) -> Result<Vec<u8>> {
    let mut v = vec![0u8; n];
    dev.read_exact_at(&mut v, offset)?;
    Ok(v)
}
