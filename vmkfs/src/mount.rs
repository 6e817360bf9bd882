//! File-level access (`vmkfs --mount DIR DISK`): a disk or chain exposed as one raw image file in
//! a FUSE mount, so `mount -o loop,ro`, libguestfs or any program that reads raw images can open
//! the guest's file systems — vcbMounter's file mode, offline.
//!
//! The mount holds one file, named after the disk (`vm-000001.vmdk` → `vm-000001.img`), as large
//! as the disk's capacity. Reads go through the chain ([`Disk::read_at`]); with `writable`, writes
//! go to the top link, which the [`Disk`] holds under the lock protocol's exclusive lock for the
//! mount's life, and `fsync` flushes it. Mounting goes through `fusermount3` (Debian: `fuse3`), so
//! no libfuse library or headers are needed. [`serve`] returns when its stop flag is set (the
//! command sets it on SIGINT and SIGTERM) or the mount is unmounted from outside (`fusermount3 -u
//! DIR`, `umount DIR`); it unmounts, then closes the disk (flushed, unclean flags cleared).

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, LockOwner, MountOption, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    WriteFlags,
};

use crate::error::{Error, Result};
use crate::facade::Disk;

/// The inode of the image file (the root directory is [`INodeNo::ROOT`]).
const IMAGE: INodeNo = INodeNo(2);

/// How long the kernel may cache attributes and names: they never change during a mount.
const TTL: Duration = Duration::from_secs(3600);

/// The largest read or write served in one request (the kernel asks for at most its `max_read`
/// and `max_write`, far below this; a larger request is cut here, and the kernel asks again).
const MAX_IO: u64 = 16 << 20;

/// How often [`serve`] looks at its stop flag and the session.
const POLL: Duration = Duration::from_millis(100);

/// The file name a disk's image gets in the mount: the disk's file name with `.img` for its
/// extension.
///
/// ```
/// use std::path::Path;
/// assert_eq!(vmkfs::mount::image_name(Path::new("/vms/vm-000001.vmdk")), "vm-000001.img");
/// assert_eq!(vmkfs::mount::image_name(Path::new("disk")), "disk.img");
/// ```
pub fn image_name(disk: &Path) -> OsString {
    let mut name = disk.file_stem().map(OsStr::to_os_string).unwrap_or_else(|| "disk".into());
    name.push(".img");
    name
}

/// The file system of one image file.
struct ImageFs {
    disk: Arc<Disk>,
    name: OsString,
    writable: bool,
    /// Owner, group and times of the files: those of the mount directory.
    uid: u32,
    gid: u32,
    time: SystemTime,
    /// Where I/O errors of the disk are told ([`MountOptions::on_io_error`]).
    on_io_error: Option<IoErrorSink>,
}

impl ImageFs {
    fn attr(&self, ino: INodeNo) -> FileAttr {
        let (kind, size, perm, nlink) = if ino == IMAGE {
            (FileType::RegularFile, self.disk.capacity(), if self.writable { 0o600 } else { 0o400 }, 1)
        } else {
            (FileType::Directory, 0, 0o500, 2)
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.time,
            mtime: self.time,
            ctime: self.time,
            crtime: self.time,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// The part of `[offset, offset+len)` inside the image (cut at [`MAX_IO`]).
    fn span(&self, offset: u64, len: u64) -> u64 {
        self.disk.capacity().saturating_sub(offset).min(len).min(MAX_IO)
    }

    /// Tells the mount's error sink of an I/O error of the disk (the kernel only passes EIO on)
    /// and returns that errno.
    fn io_error(&self, what: &str, e: Error) -> Errno {
        if let Some(sink) = &self.on_io_error {
            sink(&format!("{what} of {}: {e}", self.disk.path().display()));
        }
        Errno::EIO
    }
}

impl Filesystem for ImageFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == self.name.as_os_str() {
            reply.entry(&TTL, &self.attr(IMAGE), fuser::Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == IMAGE || ino == INodeNo::ROOT {
            reply.attr(&TTL, &self.attr(ino));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino == IMAGE {
            reply.opened(FileHandle(0), FopenFlags::empty());
        } else {
            reply.error(Errno::EISDIR);
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino != IMAGE {
            return reply.error(Errno::EISDIR);
        }
        let mut buf = vec![0u8; self.span(offset, u64::from(size)) as usize];
        match self.disk.read_at(&mut buf, offset) {
            Ok(()) => reply.data(&buf),
            Err(e) => reply.error(self.io_error("read", e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino != IMAGE {
            return reply.error(Errno::EISDIR);
        }
        if !self.writable {
            return reply.error(Errno::EROFS);
        }
        let n = self.span(offset, data.len() as u64) as usize;
        if n == 0 && !data.is_empty() {
            return reply.error(Errno::ENOSPC);
        }
        match self.disk.write_at(&data[..n], offset) {
            Ok(()) => reply.written(n as u32),
            Err(e) => reply.error(self.io_error("write", e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.disk.flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.io_error("flush", e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino == INodeNo::ROOT {
            reply.opened(FileHandle(0), FopenFlags::empty());
        } else {
            reply.error(Errno::ENOTDIR);
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, OsStr::new(".")),
            (INodeNo::ROOT, FileType::Directory, OsStr::new("..")),
            (IMAGE, FileType::RegularFile, self.name.as_os_str()),
        ];
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.disk.capacity().div_ceil(4096);
        reply.statfs(blocks, 0, 0, 2, 0, 4096, 255, 4096);
    }
}

/// Where a mount tells of a failed read, write or flush of its disk: called from the FUSE threads
/// with one line, e.g. `read of /vms/vm.vmdk: …`.
pub type IoErrorSink = Arc<dyn Fn(&str) + Send + Sync>;

/// Told once the mount is in place, with the image's path.
pub type MountedSink = Arc<dyn Fn(&Path) + Send + Sync>;

/// What [`serve`] does.
#[derive(Clone, Default)]
pub struct MountOptions {
    /// Allow writes to the image (the disk must have been opened writable).
    pub writable: bool,
    /// The image's file name (default: [`image_name`] of the disk).
    pub name: Option<OsString>,
    /// Called once the mount is in place, with the image's path.
    pub on_mounted: Option<MountedSink>,
    /// Told of every I/O error of the disk that a request met (the program reading the image
    /// only sees EIO); `None`: not told anywhere.
    pub on_io_error: Option<IoErrorSink>,
}

impl std::fmt::Debug for MountOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountOptions")
            .field("writable", &self.writable)
            .field("name", &self.name)
            .field("on_mounted", &self.on_mounted.as_ref().map(|_| "a callback"))
            .field("on_io_error", &self.on_io_error.as_ref().map(|_| "a sink"))
            .finish()
    }
}

/// Mounts `disk` as one image file in `dir` (an existing, empty directory) and serves it until
/// `stop` is set or the mount is unmounted from outside; then unmounts and closes the disk.
/// Asking for a writable mount of a disk opened read-only is an error, before anything is
/// mounted.
///
/// ```no_run
/// use std::sync::atomic::AtomicBool;
/// # fn main() -> vmkfs::Result<()> {
/// let disk = vmkfs::Disk::open("vm.vmdk")?;
/// let stop = AtomicBool::new(false); // set it from a signal handler or another thread
/// vmkfs::mount::serve(disk, "/mnt/vm".as_ref(), &vmkfs::mount::MountOptions::default(), &stop)?;
/// # Ok(()) }
/// ```
pub fn serve(disk: Disk, dir: &Path, opts: &MountOptions, stop: &AtomicBool) -> Result<()> {
    let io = |source: std::io::Error| Error::Io { path: dir.to_path_buf(), source };
    if opts.writable && !disk.chain().top().is_writable() {
        return Err(Error::Usage(format!("{}: opened read-only, cannot be mounted writable", disk.path().display())));
    }
    let meta = std::fs::metadata(dir).map_err(io)?;
    if !meta.is_dir() {
        return Err(Error::Usage(format!("{}: not a directory (the mount point)", dir.display())));
    }
    let name = opts.name.clone().unwrap_or_else(|| image_name(disk.path()));
    let disk = Arc::new(disk);
    let fs = ImageFs {
        disk: disk.clone(),
        name: name.clone(),
        writable: opts.writable,
        uid: meta.uid(),
        gid: meta.gid(),
        time: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        on_io_error: opts.on_io_error.clone(),
    };
    let mut config = Config::default();
    config.mount_options = vec![MountOption::FSName("vmkfs".into()), MountOption::Subtype("vmkfs".into())];
    config.mount_options.push(if opts.writable { MountOption::RW } else { MountOption::RO });
    config.n_threads = Some(2);
    let session = fuser::spawn_mount(fs, dir, &config).map_err(|e| mount_error(dir, e))?;
    if let Some(f) = &opts.on_mounted {
        f(&dir.join(&name));
    }
    while !stop.load(Ordering::Relaxed) && !session.guard.is_finished() {
        std::thread::sleep(POLL);
    }
    let unmounted = session.umount_and_join().map_err(io);
    let disk = Arc::try_unwrap(disk).map_err(|_| Error::Refused("the mount still uses the disk".into()))?;
    let closed = disk.close();
    unmounted?;
    closed
}

/// The error of a failed mount, saying what is missing where that is the cause.
fn mount_error(dir: &Path, e: std::io::Error) -> Error {
    let hint = match e.kind() {
        std::io::ErrorKind::NotFound => " (is fusermount3 installed? Debian: fuse3)",
        std::io::ErrorKind::PermissionDenied => " (no access to /dev/fuse, or mounting is not allowed here)",
        _ => "",
    };
    Error::Refused(format!("cannot mount on {}: {e}{hint}", dir.display()))
}
