//! The storage seam: how a link reaches its descriptor and extent files.
//!
//! A [`Link`](crate::Link) never touches `std::fs` directly. It asks a [`Storage`] to open files by
//! path and then does positional I/O on the returned [`Backing`]. [`HostStorage`] is the ordinary host
//! file system; a VMFS volume reader (or a test) can provide another implementation so a disk inside
//! it opens exactly like one in a host folder.

use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rdm::{Device, OpenMode};

use crate::error::{Error, Result};

/// One open file (or device) with positional I/O on `&self`.
pub trait Backing: Send + Sync + Debug {
    /// The path the file was opened by (for error messages).
    fn path(&self) -> &Path;
    /// Current length in bytes.
    fn len(&self) -> Result<u64>;
    /// True when the file has length zero.
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Reads exactly `buf.len()` bytes at `offset`. Reading past the end is a
    /// [`Error::Corrupt`] naming the offset ("file is truncated").
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> Result<()>;
    /// Sets the length (growing makes a hole).
    fn set_len(&self, len: u64) -> Result<()>;
    /// Flushes to stable storage.
    fn sync(&self) -> Result<()>;
    /// The data runs of `[offset, offset+len)` as `(start, len)`; the rest reads as zeros.
    /// The default says everything is data.
    fn data_runs(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        Ok(if len == 0 { Vec::new() } else { vec![(offset, len)] })
    }
    /// Reserves space without writing it. The default does nothing.
    fn allocate(&self, _offset: u64, _len: u64) -> Result<()> {
        Ok(())
    }
    /// Deallocates a range so it reads as zeros. The default writes zeros.
    fn punch_hole(&self, offset: u64, len: u64) -> Result<()> {
        write_zeros(self, offset, len)
    }
    /// Makes a range read as zeros, keeping it allocated, by the cheapest means the file has (a
    /// block device's `BLKZEROOUT`, `FALLOC_FL_ZERO_RANGE`). The default writes zeros.
    fn zero_range(&self, offset: u64, len: u64) -> Result<()> {
        write_zeros(self, offset, len)
    }
    /// Starts writing back `[offset, offset+len)` to stable storage without waiting. The default
    /// does nothing.
    fn start_writeback(&self, _offset: u64, _len: u64) {}
    /// The host device under this backing, when there is one (for `copy_file_range`).
    fn device(&self) -> Option<&Device> {
        None
    }
}

/// Writes `len` zero bytes at `offset` in chunks of at most 1 MiB.
pub fn write_zeros<B: Backing + ?Sized>(b: &B, offset: u64, len: u64) -> Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done);
        b.write_all_at(&zeros[..n as usize], offset + done)?;
        done += n;
    }
    Ok(())
}

/// A place files live: the host file system, a VMFS volume, …
pub trait Storage: Send + Sync + Debug {
    /// Opens an existing file for reading, or for reading and writing (exclusively locked).
    fn open(&self, path: &Path, write: bool) -> Result<Arc<dyn Backing>>;
    /// Creates a new file, failing with [`Error::Exists`] if it exists.
    fn create_new(&self, path: &Path) -> Result<Arc<dyn Backing>>;
    /// True if something exists at `path`.
    fn exists(&self, path: &Path) -> bool;
    /// Renames a file, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> Result<()>;
    /// Flushes a directory entry change (after create/rename) to stable storage.
    fn sync_dir(&self, _dir: &Path) -> Result<()> {
        Ok(())
    }
}

/// The host file system, through [`rdm::Device`].
#[derive(Debug, Default, Clone, Copy)]
pub struct HostStorage;

impl HostStorage {
    /// A shared handle to the host storage.
    pub fn shared() -> Arc<dyn Storage> {
        Arc::new(HostStorage)
    }
}

/// A host file or device opened through [`HostStorage`].
#[derive(Debug)]
pub struct HostFile {
    dev: Device,
}

impl HostFile {
    /// Wraps a device or file opened elsewhere (a device found through an RDM mapping).
    pub fn new(dev: Device) -> HostFile {
        HostFile { dev }
    }

    fn map<T>(&self, op: impl FnOnce() -> String, r: io::Result<T>) -> Result<T> {
        r.map_err(|e| Error::io(self.dev.path(), op(), e))
    }
}

impl Backing for HostFile {
    fn path(&self) -> &Path {
        self.dev.path()
    }
    fn len(&self) -> Result<u64> {
        self.map(|| "size".into(), self.dev.size())
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let want = buf.len();
        let n = self.map(|| format!("read {want} bytes at offset {offset}"), self.dev.read_at_most(buf, offset))?;
        if n < buf.len() {
            return Err(Error::corrupt(
                self.path(),
                offset + n as u64,
                format!("file is truncated: needed {} bytes at offset {offset}, file ends after {n}", buf.len()),
            ));
        }
        Ok(())
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.map(|| format!("write {} bytes at offset {offset}", buf.len()), self.dev.write_all_at(buf, offset))
    }
    fn set_len(&self, len: u64) -> Result<()> {
        self.map(|| format!("set length to {len}"), self.dev.set_len(len))
    }
    fn sync(&self) -> Result<()> {
        self.map(|| "sync".into(), self.dev.sync())
    }
    fn data_runs(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        self.map(|| format!("seek data/hole at {offset}"), self.dev.data_runs(offset, len))
    }
    fn allocate(&self, offset: u64, len: u64) -> Result<()> {
        match self.dev.allocate(offset, len) {
            Ok(()) => Ok(()),
            // File systems without fallocate: reserve by extending the length (still sparse).
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                let end = offset + len;
                if self.len()? < end {
                    self.set_len(end)?;
                }
                Ok(())
            }
            Err(e) => Err(Error::io(self.path(), format!("fallocate {len} bytes at {offset}"), e)),
        }
    }
    fn punch_hole(&self, offset: u64, len: u64) -> Result<()> {
        match self.dev.punch_hole(offset, len) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => write_zeros(self, offset, len),
            Err(e) => Err(Error::io(self.path(), format!("punch hole of {len} bytes at {offset}"), e)),
        }
    }
    fn zero_range(&self, offset: u64, len: u64) -> Result<()> {
        self.map(|| format!("zero {len} bytes at offset {offset}"), self.dev.zero_range(offset, len))
    }
    fn start_writeback(&self, offset: u64, len: u64) {
        // Only a hint: a failure here shows up again at the final sync.
        let _ = self.dev.start_writeback(offset, len);
    }
    fn device(&self) -> Option<&Device> {
        Some(&self.dev)
    }
}

/// How long [`HostStorage::open`] retries a write lock before reporting [`Error::Locked`].
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

impl Storage for HostStorage {
    fn open(&self, path: &Path, write: bool) -> Result<Arc<dyn Backing>> {
        let mode = if write { OpenMode::Write } else { OpenMode::Read };
        // A child process that another thread is starting holds a copy of every open descriptor
        // (and so the lock of a file this process just closed) until it execs. Such a lock goes away
        // within milliseconds, so retry briefly before blaming another writer.
        let start = std::time::Instant::now();
        loop {
            match Device::open(path, mode) {
                Ok(dev) => return Ok(Arc::new(HostFile { dev })),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if start.elapsed() >= LOCK_RETRY {
                        return Err(Error::Locked { path: path.into() });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Err(e) => return Err(Error::io(path, if write { "open for writing" } else { "open" }, e)),
            }
        }
    }
    fn create_new(&self, path: &Path) -> Result<Arc<dyn Backing>> {
        match Device::open(path, OpenMode::CreateNew) {
            Ok(dev) => Ok(Arc::new(HostFile { dev })),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(Error::Exists { path: path.into() }),
            Err(e) => Err(Error::io(path, "create", e)),
        }
    }
    fn exists(&self, path: &Path) -> bool {
        std::fs::symlink_metadata(path).is_ok()
    }
    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        std::fs::rename(from, to).map_err(|e| Error::io(from, format!("rename to {}", to.display()), e))
    }
    fn remove(&self, path: &Path) -> Result<()> {
        std::fs::remove_file(path).map_err(|e| Error::io(path, "remove", e))
    }
    fn sync_dir(&self, dir: &Path) -> Result<()> {
        let d = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        let f = std::fs::File::open(d).map_err(|e| Error::io(d, "open directory", e))?;
        f.sync_all().map_err(|e| Error::io(d, "sync directory", e))
    }
}

/// Joins an extent file name from a descriptor onto the descriptor's folder, refusing names that
/// leave it (absolute paths, `..` components) unless `allow_outside` is set.
pub fn resolve_extent_path(descriptor: &Path, name: &str, allow_outside: bool) -> Result<PathBuf> {
    use std::path::Component;
    let p = Path::new(name);
    let escapes = name.is_empty() || p.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if escapes && !allow_outside {
        return Err(Error::PathEscape { path: descriptor.into(), extent: name.into() });
    }
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(descriptor.parent().unwrap_or(Path::new("")).join(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_paths_may_not_escape() {
        let d = Path::new("/vm/disk.vmdk");
        assert_eq!(resolve_extent_path(d, "disk-flat.vmdk", false).unwrap(), Path::new("/vm/disk-flat.vmdk"));
        assert_eq!(resolve_extent_path(d, "./sub/x.vmdk", false).unwrap(), Path::new("/vm/./sub/x.vmdk"));
        for bad in ["../x", "/etc/passwd", "a/../../b", ""] {
            assert!(matches!(resolve_extent_path(d, bad, false), Err(Error::PathEscape { .. })), "{bad}");
        }
        assert_eq!(resolve_extent_path(d, "/dev/sdb", true).unwrap(), Path::new("/dev/sdb"));
        assert_eq!(resolve_extent_path(d, "../x", true).unwrap(), Path::new("/vm/../x"));
    }
}
