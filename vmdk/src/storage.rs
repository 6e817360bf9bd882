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

use rdm::{Device, OpenMode, ReadAt};

use crate::error::{Error, Result};

/// One open file (or device) with positional I/O on `&self`. Reads are its [`ReadAt`]: exactly
/// `buf.len()` bytes at an offset, a read past the end a [`Error::Corrupt`] naming the offset
/// ("file is truncated").
pub trait Backing: ReadAt<Error = Error> + Debug {
    /// The path the file was opened by (for error messages).
    fn path(&self) -> &Path;
    /// Current length in bytes.
    fn len(&self) -> Result<u64>;
    /// True when the file has length zero.
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
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
    /// Sends aligned writes past the page cache from now on ([`rdm::Device::enable_direct`]);
    /// false where the backing cannot. The default cannot.
    fn enable_direct(&self) -> bool {
        false
    }
    /// The host device under this backing, when there is one (for `copy_file_range`).
    fn device(&self) -> Option<&Device> {
        None
    }
    /// The `(device, inode)` identity of the file, where the storage has one: two backings are the
    /// same file exactly when their identities are equal.
    fn identity(&self) -> Option<(u64, u64)> {
        None
    }
}

/// The lock a command holds on a disk's main file for its whole duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Reading through it: other readers may too, writers may not.
    Shared,
    /// Changing it: nobody else may read or write it.
    Exclusive,
}

/// Writes `len` zero bytes at `offset` in chunks of at most 1 MiB.
pub fn write_zeros<B: Backing + ?Sized>(b: &B, offset: u64, len: u64) -> Result<()> {
    rdm::device::write_zeros_with(offset, len, |buf, at| b.write_all_at(buf, at))
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
    /// Opens the main file of a disk (its descriptor, or its only file) holding `lock` on it for as
    /// long as the backing lives, waiting up to `wait` for a conflicting holder to let go; a holder
    /// that stays is [`Error::Locked`] naming it. Storages without locks (a read-only VMFS volume)
    /// just open the file.
    fn open_locked(&self, path: &Path, lock: LockMode, _wait: std::time::Duration) -> Result<Arc<dyn Backing>> {
        self.open(path, lock == LockMode::Exclusive)
    }
    /// Opens `rel` (a path relative to folder `dir`, as a descriptor names an extent) like
    /// [`Storage::open`], refusing with [`Error::PathEscape`] a path that resolves outside `dir` —
    /// through `..`, an absolute path, or a symbolic link at any component — so a disk never
    /// reaches files outside its folder unless the caller allows it. `descriptor` is named in the
    /// error. Storages without links just join the paths.
    fn open_beneath(&self, dir: &Path, rel: &str, write: bool, descriptor: &Path) -> Result<Arc<dyn Backing>> {
        let _ = descriptor;
        self.open(&dir.join(rel), write)
    }
    /// Renames `from` to `to`, failing with [`Error::Exists`] (and changing nothing) if `to` exists.
    fn rename_noreplace(&self, from: &Path, to: &Path) -> Result<()> {
        if self.exists(to) {
            return Err(Error::Exists { path: to.into() });
        }
        self.rename(from, to)
    }
    /// The names in folder `dir`, sorted (empty where the storage cannot list, or the folder is
    /// missing).
    fn list_dir(&self, _dir: &Path) -> Vec<String> {
        Vec::new()
    }
    /// True if `path` is a folder.
    fn is_dir(&self, _path: &Path) -> bool {
        false
    }
    /// `path` with every symbolic link resolved (the folder at least, when the file does not exist
    /// yet), so that two names of one disk compare equal. Storages without links return `path`.
    fn real_path(&self, path: &Path) -> PathBuf {
        path.to_path_buf()
    }
    /// True when the storage can be changed (the host file system); false for read-only ones,
    /// which then need no locks and hold no interrupted operations.
    fn is_writable(&self) -> bool {
        false
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

impl ReadAt for HostFile {
    type Error = Error;
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
}

impl Backing for HostFile {
    fn path(&self) -> &Path {
        self.dev.path()
    }
    fn len(&self) -> Result<u64> {
        self.map(|| "size".into(), self.dev.size())
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
    fn enable_direct(&self) -> bool {
        self.dev.enable_direct()
    }
    fn device(&self) -> Option<&Device> {
        Some(&self.dev)
    }
    fn identity(&self) -> Option<(u64, u64)> {
        self.dev.identity().ok()
    }
}

/// How long [`HostStorage::open`] retries a write lock before reporting [`Error::Locked`]: a child
/// process that another thread is starting holds a copy of every open descriptor (and so the lock
/// of a file this process just closed) until it execs, which takes milliseconds.
pub const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// Who holds a lock on `path`, for messages.
fn holder_of(path: &Path) -> String {
    let holders = rdm::lock_holders(path);
    if holders.is_empty() {
        "another process".into()
    } else {
        holders.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(", ")
    }
}

impl HostStorage {
    /// Opens `path` in `mode`, retrying a conflicting lock for up to `wait`. A locked open is kept
    /// only if `path` still names the file that was locked (a writer may have replaced it by
    /// renaming a new version over it), else it is retried on the new file.
    fn open_mode(&self, path: &Path, mode: OpenMode, wait: std::time::Duration) -> Result<Arc<dyn Backing>> {
        use std::os::unix::fs::MetadataExt;
        let start = std::time::Instant::now();
        loop {
            match Device::open(path, mode) {
                Ok(dev) => {
                    if mode != OpenMode::Read && !dev.is_block_device() {
                        let now = std::fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
                        if now.is_some() && now != dev.identity().ok() {
                            continue;
                        }
                    }
                    return Ok(Arc::new(HostFile { dev }));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if start.elapsed() >= wait {
                        return Err(Error::Locked { path: path.into(), holder: holder_of(path) });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Err(e) => {
                    let op = if mode == OpenMode::Write { "open for writing" } else { "open" };
                    return Err(Error::io(path, op, e));
                }
            }
        }
    }
}

impl Storage for HostStorage {
    fn open(&self, path: &Path, write: bool) -> Result<Arc<dyn Backing>> {
        let mode = if write { OpenMode::Write } else { OpenMode::Read };
        self.open_mode(path, mode, LOCK_RETRY)
    }
    fn open_locked(&self, path: &Path, lock: LockMode, wait: std::time::Duration) -> Result<Arc<dyn Backing>> {
        let mode = if lock == LockMode::Exclusive { OpenMode::Write } else { OpenMode::ReadShared };
        self.open_mode(path, mode, wait.max(LOCK_RETRY))
    }
    fn open_beneath(&self, dir: &Path, rel: &str, write: bool, descriptor: &Path) -> Result<Arc<dyn Backing>> {
        let mode = if write { OpenMode::Write } else { OpenMode::Read };
        let full = dir.join(rel);
        let start = std::time::Instant::now();
        loop {
            match Device::open_beneath(dir, Path::new(rel), mode) {
                Ok(dev) => return Ok(Arc::new(HostFile { dev })),
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied && e.to_string() == "leaves the folder" => {
                    return Err(Error::PathEscape { path: descriptor.into(), extent: rel.into() })
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && start.elapsed() < LOCK_RETRY => {
                    std::thread::sleep(std::time::Duration::from_millis(2))
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(Error::Locked { path: full.clone(), holder: holder_of(&full) })
                }
                Err(e) => return Err(Error::io(&full, if write { "open for writing" } else { "open" }, e)),
            }
        }
    }
    fn rename_noreplace(&self, from: &Path, to: &Path) -> Result<()> {
        rdm::rename_noreplace(from, to).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Error::Exists { path: to.into() }
            } else {
                Error::io(from, format!("rename to {}", to.display()), e)
            }
        })
    }
    fn list_dir(&self, dir: &Path) -> Vec<String> {
        let d = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        let Ok(entries) = std::fs::read_dir(d) else { return Vec::new() };
        let mut v: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }
    fn is_dir(&self, path: &Path) -> bool {
        std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
    }
    fn real_path(&self, path: &Path) -> PathBuf {
        if let Ok(p) = std::fs::canonicalize(path) {
            return p;
        }
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| std::path::absolute(dir).unwrap_or(dir.to_path_buf()));
        match path.file_name() {
            Some(n) => dir.join(n),
            None => dir,
        }
    }
    fn is_writable(&self) -> bool {
        true
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

/// The one confinement rule for a path a disk names (an extent, a parent, a mapping file, a device
/// standing in as a regular file): unless `allow_outside`, `path` must resolve — symbolic links
/// followed — to a file beneath the folder of `descriptor` (the disk naming it), else
/// [`Error::PathEscape`] naming `what` as written. (Extent files are also opened with
/// [`Storage::open_beneath`], which holds the rule while opening.)
pub fn confine(storage: &dyn Storage, descriptor: &Path, path: &Path, what: &str, allow_outside: bool) -> Result<()> {
    if allow_outside {
        return Ok(());
    }
    let dir = descriptor.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !storage.real_path(path).starts_with(storage.real_path(dir)) {
        return Err(Error::PathEscape { path: descriptor.into(), extent: what.into() });
    }
    Ok(())
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
