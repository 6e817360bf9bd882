//! An open file: positional reads through its block map, and its extent map.

use rdm::ReadAt;

use super::blockmap::{BlockMap, PbCache, VolumeRunKind};
use super::error::{Result, VmfsError};
use super::filedesc::FileDesc;
use std::sync::Arc;

use super::blockmap::{to_device_runs, DeviceRun, DeviceRunKind};
use super::inner::Inner;

/// Largest range mapped at once by a read (keeps the piece list small for huge reads).
const READ_WINDOW: u64 = 64 << 20;

/// A file of a VMFS volume, open for positional reads from many threads.
#[derive(Debug)]
pub struct File {
    inner: Arc<Inner>,
    path: String,
    fd: FileDesc,
    cache: PbCache,
}

impl File {
    pub(crate) fn new(inner: Arc<Inner>, path: String, fd: FileDesc) -> File {
        File { inner, path, fd, cache: PbCache::default() }
    }

    /// The path it was opened by.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.fd.length
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.fd.length == 0
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns the bytes read (fewer only at the end of
    /// the file). Holes and to-be-zeroed blocks read as zeros.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let n = (buf.len() as u64).min(self.fd.length.saturating_sub(offset)) as usize;
        let mut done = 0usize;
        while done < n {
            let w = ((n - done) as u64).min(READ_WINDOW);
            let start = offset + done as u64;
            let inner = &self.inner;
            for p in BlockMap(inner).map_file(&self.fd, start, w, &self.cache)? {
                let b = done + (p.offset - start) as usize;
                let dst = &mut buf[b..b + p.len as usize];
                match p.kind {
                    VolumeRunKind::Data(at) => inner.lv.read_exact_at(dst, at)?,
                    VolumeRunKind::Zero | VolumeRunKind::Hole => dst.fill(0),
                }
            }
            done += w as usize;
        }
        Ok(n)
    }

    /// Reads exactly `buf.len()` bytes at `offset`; reading past the end is an error.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let n = self.read_at(buf, offset)?;
        if n < buf.len() {
            return Err(VmfsError::corrupt(
                format!("{} in {}", self.path, self.inner.place),
                offset + n as u64,
                format!(
                    "read of {} bytes at offset {offset} runs past the end of the {}-byte file",
                    buf.len(),
                    self.fd.length
                ),
            ));
        }
        Ok(())
    }

    /// The extent map of `[offset, offset+len)` (clamped to the file): data ranges with device
    /// offsets, to-be-zeroed ranges and holes, in order and contiguous.
    pub fn extents(&self, offset: u64, len: u64) -> Result<Vec<DeviceRun>> {
        let inner = &self.inner;
        let pieces = BlockMap(inner).map_file(&self.fd, offset, len, &self.cache)?;
        to_device_runs(inner, pieces)
    }

    /// Only the data ranges of `[offset, offset+len)` as `(file offset, length)`; everything else
    /// reads as zeros.
    pub fn data_runs(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        let inner = &self.inner;
        let mut out: Vec<(u64, u64)> = Vec::new();
        for p in BlockMap(inner).map_file(&self.fd, offset, len, &self.cache)? {
            if let VolumeRunKind::Data(_) = p.kind {
                match out.last_mut() {
                    Some(l) if l.0 + l.1 == p.offset => l.1 += p.len,
                    _ => out.push((p.offset, p.len)),
                }
            }
        }
        Ok(out)
    }

    /// Reads the data extent `e` (as returned by [`File::extents`]) straight from its device.
    pub fn read_extent(&self, e: &DeviceRun, buf: &mut [u8]) -> Result<()> {
        match e.kind {
            DeviceRunKind::Data { device, device_offset, .. } => {
                let d = self
                    .inner
                    .lv
                    .devices
                    .get(device)
                    .ok_or_else(|| VmfsError::Volume(format!("no device {device}")))?;
                d.dev.read_exact_at(buf, device_offset)
            }
            DeviceRunKind::Zero | DeviceRunKind::Hole => {
                buf.fill(0);
                Ok(())
            }
        }
    }
}

impl ReadAt for File {
    type Error = VmfsError;
    /// [`File::read_exact_at`].
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        File::read_exact_at(self, buf, offset)
    }
}
