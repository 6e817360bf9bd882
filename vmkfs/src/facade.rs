//! The embedding API: a disk (or chain) you open, read, write and ask about, and the operations a
//! backup or migration tool calls — create, snapshot, commit, clone.
//!
//! Everything here is a thin layer over the crates underneath (`redo::Chain` for reading through
//! a chain, `vmdk::map` for allocation, [`crate::redo_ops`] for change maps and commit,
//! [`crate::clone`](mod@crate::clone) for copies); it exists so an embedder needs one `use` and no knowledge of the
//! layering. Every mutation takes the lock protocol's locks: a [`Disk`] opened writable holds its
//! top link exclusively until it is dropped or [closed](Disk::close).
//!
//! ```
//! # fn main() -> vmkfs::Result<()> {
//! use vmkfs::{Disk, DiskFormat};
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("vm.vmdk");
//! vmkfs::create(&path, DiskFormat::MonoSparse, 1 << 20)?;
//! let disk = Disk::open_writable(&path)?;
//! disk.write_at(b"hello", 4096)?;
//! disk.close()?;
//!
//! let disk = Disk::open(&path)?;
//! let mut buf = [0u8; 5];
//! disk.read_at(&mut buf, 4096)?;
//! assert_eq!(&buf, b"hello");
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use redo::{Chain, ChangeMap, CommitReport};
use vmdk::create::{CreateOptions, DiskFormat};
use vmdk::map::{Run, Runs};
use vmdk::{OpenOptions, State};

use crate::clone::{clone_disk, CloneOptions, CloneReport, Destination};
use crate::error::Result;
use crate::info::DiskInfo;

/// A byte range of a disk: `offset` and `len` in bytes.
///
/// ```
/// let e = vmkfs::ByteRange { offset: 65536, len: 4096 };
/// assert_eq!(e.offset + e.len, 69632);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteRange {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// An open disk: one link or a chain of REDO links read as one virtual disk (reads come from the
/// link holding each range; writes go to the top link).
///
/// A `Disk` is `Send + Sync`: reads and writes take `&self` and positional offsets, so several
/// threads may use one disk at once. Dropping it flushes and unlocks; [`Disk::close`] does the
/// same and reports errors.
///
/// ```
/// # fn main() -> vmkfs::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("d.vmdk");
/// # vmkfs::create(&path, vmkfs::DiskFormat::Thin, 1 << 20)?;
/// let disk = vmkfs::Disk::open(&path)?;
/// assert_eq!(disk.capacity(), 1 << 20);
/// assert_eq!(disk.chain_depth(), 1);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Disk {
    path: PathBuf,
    chain: Chain,
}

/// The promise of [`Disk`]'s documentation (and of the C ABI's thread rules), checked when the
/// crate compiles.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Disk>();
};

impl Disk {
    /// Opens the disk or chain topped by `path` read-only (shared locks on every link).
    ///
    /// ```
    /// # fn main() -> vmkfs::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("d.vmdk");
    /// # vmkfs::create(&path, vmkfs::DiskFormat::MonoSparse, 1 << 20)?;
    /// let disk = vmkfs::Disk::open(&path)?;
    /// assert!(disk.write_at(b"x", 0).is_err()); // read-only
    /// # Ok(()) }
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Disk> {
        Disk::open_with(path, &OpenOptions::read())
    }

    /// Opens the chain topped by `path` for writing: the top link is locked exclusively (a disk
    /// that a running VM or another process holds is refused as locked), the links below it are
    /// opened read-only with shared locks.
    ///
    /// ```
    /// # fn main() -> vmkfs::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("d.vmdk");
    /// # vmkfs::create(&path, vmkfs::DiskFormat::MonoSparse, 1 << 20)?;
    /// let disk = vmkfs::Disk::open_writable(&path)?;
    /// disk.write_at(&[0xab; 512], 512)?;
    /// assert!(vmkfs::Disk::open(&path).is_err()); // held exclusively until closed
    /// disk.close()?;
    /// # Ok(()) }
    /// ```
    pub fn open_writable(path: impl AsRef<Path>) -> Result<Disk> {
        Disk::open_with(path, &OpenOptions::write())
    }

    /// Opens with explicit [`OpenOptions`]: another storage (a VMFS volume,
    /// [`crate::vmfs::VmfsStorage`]), paths outside the disk's folder, a lock wait.
    ///
    /// ```
    /// # fn main() -> vmkfs::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("d.vmdk");
    /// # vmkfs::create(&path, vmkfs::DiskFormat::Thin, 1 << 20)?;
    /// let opts = vmkfs::vmdk::OpenOptions { wait: std::time::Duration::from_secs(2), ..Default::default() };
    /// let disk = vmkfs::Disk::open_with(&path, &opts)?;
    /// # drop(disk);
    /// # Ok(()) }
    /// ```
    pub fn open_with(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Disk> {
        let path = path.as_ref();
        Ok(Disk { path: path.to_path_buf(), chain: Chain::open(path, opts)? })
    }

    /// The path the disk was opened from (its top link).
    ///
    /// ```
    /// # fn main() -> vmkfs::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("d.vmdk");
    /// # vmkfs::create(&path, vmkfs::DiskFormat::Thin, 1 << 20)?;
    /// assert_eq!(vmkfs::Disk::open(&path)?.path(), path);
    /// # Ok(()) }
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The chain underneath, top first (for what the facade does not cover).
    ///
    /// ```
    /// # fn main() -> vmkfs::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("d.vmdk");
    /// # vmkfs::create(&path, vmkfs::DiskFormat::Thin, 1 << 20)?;
    /// let disk = vmkfs::Disk::open(&path)?;
    /// assert_eq!(disk.chain().base().path(), path);
    /// # Ok(()) }
    /// ```
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// Capacity in bytes.
    ///
    /// ```
    /// # fn main() -> vmkfs::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("d.vmdk");
    /// vmkfs::create(&path, vmkfs::DiskFormat::TwoGbSparse, 3 << 20)?;
    /// assert_eq!(vmkfs::Disk::open(&path)?.capacity(), 3 << 20);
    /// # Ok(()) }
    /// ```
    pub fn capacity(&self) -> u64 {
        self.chain.capacity()
    }

    /// Number of links (1 for a disk without snapshots).
    ///
    /// ```
    /// # fn main() -> vmkfs::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("d.vmdk");
    /// # vmkfs::create(&path, vmkfs::DiskFormat::MonoSparse, 1 << 20)?;
    /// let top = vmkfs::snapshot(&path)?;
    /// assert_eq!(vmkfs::Disk::open(&top)?.chain_depth(), 2);
    /// # Ok(()) }
    /// ```
    pub fn chain_depth(&self) -> usize {
        self.chain.links().len()
    }

    /// The top link's content ID (CID). Equal CIDs mean equal content: a full clone keeps its
    /// source's, a commit gives the parent the committed link's, the first write gives a new one.
    ///
    /// ```
    /// # fn main() -> vmkfs::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let (a, b) = (dir.path().join("a.vmdk"), dir.path().join("b.vmdk"));
    /// # vmkfs::create(&a, vmkfs::DiskFormat::MonoSparse, 1 << 20)?;
    /// vmkfs::clone(&a, &b, vmkfs::DiskFormat::Thin, |_, _| {}, None)?;
    /// assert_eq!(vmkfs::Disk::open(&a)?.cid(), vmkfs::Disk::open(&b)?.cid());
    /// # Ok(()) }
    /// ```
    pub fn cid(&self) -> u32 {
        self.chain.top().descriptor().cid
    }

    /// The top link's format: its createType (`monolithicSparse`, `vmfs`, `vmfsSparse`, …), or
    /// `raw` for a raw image.
    ///
    /// ```
    /// # fn main() -> vmkfs::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("d.vmdk");
    /// vmkfs::create(&path, vmkfs::DiskFormat::MonoSparse, 1 << 20)?;
    /// assert_eq!(vmkfs::Disk::open(&path)?.format(), "monolithicSparse");
    /// # Ok(()) }
    /// ```
    pub fn format(&self) -> String {
        crate::info::format_name(self.chain.top())
    }

    /// Everything `vmkfs --info` reports: format, capacity, allocated bytes (one walk of the
    /// map's metadata), CIDs, parent hint, adapter, geometry, chain depth, extents.
    ///
    /// ```
    /// # fn main() -> vmkfs::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("d.vmdk");
    /// # vmkfs::create(&path, vmkfs::DiskFormat::MonoSparse, 1 << 20)?;
    /// let disk = vmkfs::Disk::open_writable(&path)?;
    /// disk.write_at(&[1; 65536], 0)?;
    /// let info = disk.info()?;
    /// assert_eq!((info.capacity, info.allocated, info.chain_depth), (1 << 20, 65536, 1));
    /// # Ok(()) }
    /// ```
    pub fn info(&self) -> Result<DiskInfo> {
        crate::info::describe(&self.path, &self.chain)
    }

    /// Reads `buf.len()` bytes at byte `offset` through the chain (ranges no link holds read as
    /// zeros). Reading past the capacity is an error.
    ///
    /// ```
    /// # fn main() -> vmkfs::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("d.vmdk");
    /// # vmkfs::create(&path, vmkfs::DiskFormat::Thin, 1 << 20)?;
    /// let disk = vmkfs::Disk::open(&path)?;
    /// let mut sector = [0xffu8; 512];
    /// disk.read_at(&mut sector, 0)?;
    /// assert!(sector.iter().all(|b| *b == 0));
    /// assert!(disk.read_at(&mut sector, 1 << 20).is_err());
    /// # Ok(()) }
    /// ```
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        Ok(self.chain.read_at(buf, offset)?)
    }

    /// Writes `buf` at byte `offset` into the top link (the disk must have been opened writable;
    /// the first write gives the link a new CID and marks it unclean until closed).
    ///
    /// ```
    /// # fn main() -> vmkfs::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("d.vmdk");
    /// # vmkfs::create(&path, vmkfs::DiskFormat::MonoSparse, 1 << 20)?;
    /// let disk = vmkfs::Disk::open_writable(&path)?;
    /// let before = disk.cid();
    /// disk.write_at(b"boot", 0)?;
    /// assert_ne!(disk.cid(), before);
    /// # Ok(()) }
    /// ```
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        Ok(self.chain.write_at(buf, offset)?)
    }

    /// Flushes written data and metadata to stable storage.
    ///
    /// ```
    /// # fn main() -> vmkfs::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("d.vmdk");
    /// # vmkfs::create(&path, vmkfs::DiskFormat::MonoSparse, 1 << 20)?;
    /// let disk = vmkfs::Disk::open_writable(&path)?;
    /// disk.write_at(b"data", 0)?;
    /// disk.flush()?;
    /// # Ok(()) }
    /// ```
    pub fn flush(&self) -> Result<()> {
        for l in self.chain.links() {
            l.flush()?;
        }
        Ok(())
    }

    /// Every run of the merged allocation map, in order: `Data` (with the depth of the link
    /// holding it, 0 = top), `Zero` (known zeros) and `Absent` (no link holds it: zeros). The walk
    /// asks the links for a batch at a time, so it costs what the metadata holds, not the
    /// capacity.
    ///
    /// ```
    /// # fn main() -> vmkfs::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("d.vmdk");
    /// # vmkfs::create(&path, vmkfs::DiskFormat::MonoSparse, 1 << 20)?;
    /// use vmkfs::vmdk::State;
    /// let disk = vmkfs::Disk::open(&path)?;
    /// let runs: Vec<_> = disk.runs().collect::<Result<_, _>>()?;
    /// assert!(runs.iter().all(|r| r.state != State::Data));
    /// assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), 1 << 20);
    /// # Ok(()) }
    /// ```
    pub fn runs(&self) -> Runs<'_, Chain> {
        vmdk::map::walk(&self.chain)
    }

    /// The ranges holding data (in any link of the chain), neighbours merged: what a backup
    /// must read (VixDiskLib's QueryAllocatedBlocks).
    ///
    /// ```
    /// # fn main() -> vmkfs::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("d.vmdk");
    /// # vmkfs::create(&path, vmkfs::DiskFormat::MonoSparse, 1 << 20)?;
    /// use vmkfs::ByteRange;
    /// let disk = vmkfs::Disk::open_writable(&path)?;
    /// disk.write_at(&[7; 65536], 131072)?;
    /// assert_eq!(disk.allocated()?, vec![ByteRange { offset: 131072, len: 65536 }]);
    /// # Ok(()) }
    /// ```
    pub fn allocated(&self) -> Result<Vec<ByteRange>> {
        let mut out: Vec<ByteRange> = Vec::new();
        for r in self.runs() {
            let r: Run = r?;
            if r.state != State::Data {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.offset + last.len == r.offset => last.len += r.len,
                _ => out.push(ByteRange { offset: r.offset, len: r.len }),
            }
        }
        Ok(out)
    }

    /// The blocks (of `redo::changemap::DEFAULT_BLOCK`, 64 KiB) written above `since`, a link of
    /// this chain (`None`: the base) — an incremental backup since the snapshot that link was
    /// the top of, or a differential since the base.
    ///
    /// ```
    /// # fn main() -> vmkfs::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let base = dir.path().join("d.vmdk");
    /// # vmkfs::create(&base, vmkfs::DiskFormat::MonoSparse, 1 << 20)?;
    /// let top = vmkfs::snapshot(&base)?;
    /// let disk = vmkfs::Disk::open_writable(&top)?;
    /// disk.write_at(b"changed", 70_000)?;
    /// let changes = disk.changed_since(Some(&base))?;
    /// assert_eq!(changes.ranges().collect::<Vec<_>>(), vec![(65536, 65536)]);
    /// # Ok(()) }
    /// ```
    pub fn changed_since(&self, since: Option<&Path>) -> Result<ChangeMap> {
        self.changed_since_in_blocks(since, redo::changemap::DEFAULT_BLOCK)
    }

    /// [`Disk::changed_since`] in blocks of `block` bytes (a power of two, at least 512).
    ///
    /// ```
    /// # fn main() -> vmkfs::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let base = dir.path().join("d.vmdk");
    /// # vmkfs::create(&base, vmkfs::DiskFormat::MonoSparse, 1 << 20)?;
    /// let top = vmkfs::snapshot(&base)?;
    /// let disk = vmkfs::Disk::open_writable(&top)?;
    /// disk.write_at(&[1; 4096], 0)?;
    /// let m = disk.changed_since_in_blocks(None, 1 << 20)?;
    /// assert_eq!(m.changed_bytes(), 1 << 20);
    /// # Ok(()) }
    /// ```
    pub fn changed_since_in_blocks(&self, since: Option<&Path>, block: u64) -> Result<ChangeMap> {
        crate::redo_ops::changed_in(&self.chain, since, block)
    }

    /// Flushes and closes every link (clearing unclean flags), releasing the locks.
    ///
    /// ```
    /// # fn main() -> vmkfs::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("d.vmdk");
    /// # vmkfs::create(&path, vmkfs::DiskFormat::MonoSparse, 1 << 20)?;
    /// vmkfs::Disk::open_writable(&path)?.close()?;
    /// vmkfs::Disk::open_writable(&path)?.close()?; // the lock is free again
    /// # Ok(()) }
    /// ```
    pub fn close(self) -> Result<()> {
        Ok(self.chain.close()?)
    }
}

/// Creates a new, empty disk of `format` and `capacity` bytes (a multiple of 512) at `path`,
/// with the lsilogic adapter, and returns its path. Refuses an existing destination. For other
/// settings (adapter, split size, grain size) use [`vmdk::create::create`] with
/// [`CreateOptions`].
///
/// ```
/// # fn main() -> vmkfs::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("new.vmdk");
/// vmkfs::create(&path, vmkfs::DiskFormat::Thin, 10 << 20)?;
/// assert!(vmkfs::create(&path, vmkfs::DiskFormat::Thin, 10 << 20).is_err()); // exists
/// # Ok(()) }
/// ```
pub fn create(path: impl AsRef<Path>, format: DiskFormat, capacity: u64) -> Result<PathBuf> {
    let path = path.as_ref();
    let copts = CreateOptions::new(format, capacity);
    Destination::create(path, &copts, crate::stream::DEFAULT_COMPRESS_LEVEL)?.commit()
}

/// Adds a REDO link on top of the chain topped by `path` (the chain below becomes static: a
/// backup can read it while writes go to the new link); returns the new link's path (VixDiskLib's
/// CreateChild).
///
/// ```
/// # fn main() -> vmkfs::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let base = dir.path().join("vm.vmdk");
/// # vmkfs::create(&base, vmkfs::DiskFormat::Thin, 1 << 20)?;
/// let child = vmkfs::snapshot(&base)?;
/// assert_eq!(child, dir.path().join("vm-000001.vmdk"));
/// # Ok(()) }
/// ```
pub fn snapshot(path: impl AsRef<Path>) -> Result<PathBuf> {
    Ok(redo::snapshot(path.as_ref(), &OpenOptions::read(), false)?)
}

/// Merges the REDO link at `path` into its parent, crash-safely (`vmkfs -m`); `progress` gets
/// `(bytes done, bytes total)`, `cancel` stops the copy (the commit is then refused until run
/// again, which resumes it).
///
/// ```
/// # fn main() -> vmkfs::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let base = dir.path().join("vm.vmdk");
/// # vmkfs::create(&base, vmkfs::DiskFormat::MonoSparse, 1 << 20)?;
/// let top = vmkfs::snapshot(&base)?;
/// vmkfs::Disk::open_writable(&top)?.write_at(b"kept", 0)?;
/// let report = vmkfs::commit(&top, |_, _| {}, None)?;
/// assert_eq!(report.parent, base);
/// let mut b = [0; 4];
/// vmkfs::Disk::open(&base)?.read_at(&mut b, 0)?;
/// assert_eq!(&b, b"kept");
/// # Ok(()) }
/// ```
pub fn commit(
    path: impl AsRef<Path>,
    mut progress: impl FnMut(u64, u64),
    cancel: Option<&AtomicBool>,
) -> Result<CommitReport> {
    crate::redo_ops::commit(path.as_ref(), &OpenOptions::read(), &mut progress, cancel)
}

/// Clones the disk or chain topped by `src` (flattened) into a new disk of `format` at `dst`
/// (VixDiskLib's Clone). `progress` is called on the calling thread with `(bytes done, bytes
/// total)`; setting `cancel` (from another thread or a signal handler) stops the copy with
/// [`crate::Error::Interrupted`] and leaves no destination. The copy keeps the source's CID. For
/// more settings use [`crate::clone::clone_disk`] with [`CloneOptions`].
///
/// ```
/// # fn main() -> vmkfs::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let (src, dst) = (dir.path().join("src.vmdk"), dir.path().join("dst.vmdk"));
/// # vmkfs::create(&src, vmkfs::DiskFormat::MonoSparse, 4 << 20)?;
/// let mut last = (0, 0);
/// let report = vmkfs::clone(&src, &dst, vmkfs::DiskFormat::Thin, |done, total| last = (done, total), None)?;
/// assert_eq!(report.path, dst);
/// assert_eq!(last.0, last.1);
///
/// let stop = std::sync::atomic::AtomicBool::new(true);
/// let again = dir.path().join("never.vmdk");
/// let r = vmkfs::clone(&src, &again, vmkfs::DiskFormat::Thin, |_, _| {}, Some(&stop));
/// assert!(matches!(r, Err(vmkfs::Error::Interrupted)) && !again.exists());
/// # Ok(()) }
/// ```
pub fn clone(
    src: impl AsRef<Path>,
    dst: impl AsRef<Path>,
    format: DiskFormat,
    mut progress: impl FnMut(u64, u64),
    cancel: Option<&AtomicBool>,
) -> Result<CloneReport> {
    let mut opts = CloneOptions::new(format);
    opts.progress = Some(&mut progress);
    opts.cancel = cancel;
    clone_disk(src.as_ref(), dst.as_ref(), &mut opts)
}
