//! Positional I/O on block devices and regular files.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// How a device is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Read only; no lock is taken.
    Read,
    /// Read only, with a shared advisory lock (`flock(LOCK_SH)`): other readers may hold it too, a
    /// writer's exclusive lock conflicts ([`io::ErrorKind::WouldBlock`]).
    ReadShared,
    /// Read and write, with an exclusive advisory lock (`flock`); a second writer gets
    /// [`io::ErrorKind::WouldBlock`].
    Write,
    /// Create a new file (fails if it exists), read-write, exclusively locked.
    CreateNew,
}

/// An open block device or regular file with positional I/O.
#[derive(Debug)]
pub struct Device {
    file: File,
    path: PathBuf,
    block_device: bool,
    writable: bool,
    /// A second descriptor of the same file opened with `O_DIRECT`, once [`Device::enable_direct`]
    /// asked for one (`None` inside: the file system refused).
    direct: std::sync::OnceLock<Option<File>>,
}

/// What direct I/O needs aligned: a write goes through the `O_DIRECT` descriptor only when its
/// buffer address, offset and length are all multiples of this (4 KiB covers 512-byte and 4 KiB
/// logical blocks).
pub const DIRECT_ALIGN: usize = 4096;

impl Device {
    /// Opens `path` in `mode`.
    ///
    /// A block device opened for writing is also opened with `O_EXCL`, so the kernel refuses it while
    /// it is mounted or held exclusively by another process; that refusal, like a lock held by another
    /// writer, is reported as [`io::ErrorKind::WouldBlock`].
    pub fn open(path: &Path, mode: OpenMode) -> io::Result<Device> {
        let mut opts = OpenOptions::new();
        opts.read(true);
        match mode {
            OpenMode::Read | OpenMode::ReadShared => {}
            OpenMode::Write => {
                opts.write(true);
                if std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device()) {
                    opts.custom_flags(libc::O_EXCL);
                }
            }
            OpenMode::CreateNew => {
                opts.write(true).create_new(true).mode(0o644);
            }
        }
        let file = opts.open(path).map_err(busy)?;
        Device::with_lock(file, path, mode)
    }

    /// Opens `rel` inside the folder `dir` in `mode`, refusing — with
    /// [`io::ErrorKind::PermissionDenied`] and the message "leaves the folder" — any path that
    /// resolves outside `dir`: `..` components, absolute paths, and symbolic links (at any component)
    /// whose target is outside (`openat2` with `RESOLVE_BENEATH`; where the kernel lacks it, the
    /// resolved path is checked before opening).
    pub fn open_beneath(dir: &Path, rel: &Path, mode: OpenMode) -> io::Result<Device> {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let escape = || io::Error::new(io::ErrorKind::PermissionDenied, "leaves the folder");
        let full = dir.join(rel);
        let d = std::fs::File::open(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })?;
        let c = CString::new(rel.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let flags = match mode {
            OpenMode::Read | OpenMode::ReadShared => libc::O_RDONLY,
            OpenMode::Write => libc::O_RDWR,
            OpenMode::CreateNew => libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
        };
        // SAFETY: `open_how` is a plain C struct of integers, for which all zeros is valid.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (flags | libc::O_CLOEXEC) as u64;
        how.mode = if mode == OpenMode::CreateNew { 0o644 } else { 0 };
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: openat2 reads the NUL-terminated path and `size_of::<open_how>()` bytes of `how`,
        // both alive across the call; it returns a new descriptor we then own, or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                d.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        let file = if fd >= 0 {
            use std::os::unix::io::FromRawFd;
            // SAFETY: `fd` is a descriptor openat2 just returned; nothing else owns it.
            unsafe { File::from_raw_fd(fd as libc::c_int) }
        } else {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EXDEV | libc::ELOOP) => return Err(escape()),
                Some(libc::ENOSYS | libc::EPERM) => {
                    // No openat2 (an old kernel, or a sandbox filtering it): resolve and check.
                    let base = std::fs::canonicalize(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })?;
                    let target = match std::fs::canonicalize(&full) {
                        Ok(t) => t,
                        Err(_) if mode == OpenMode::CreateNew => full.clone(),
                        Err(e) => return Err(e),
                    };
                    if !target.starts_with(&base)
                        || rel
                            .components()
                            .any(|c| !matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir))
                    {
                        return Err(escape());
                    }
                    return Device::open(&full, mode);
                }
                _ => return Err(busy(e)),
            }
        };
        Device::with_lock(file, &full, mode)
    }

    fn with_lock(file: File, path: &Path, mode: OpenMode) -> io::Result<Device> {
        let block_device = file.metadata()?.file_type().is_block_device();
        let writable = matches!(mode, OpenMode::Write | OpenMode::CreateNew);
        let lock = match mode {
            OpenMode::Read => None,
            OpenMode::ReadShared => Some(libc::LOCK_SH),
            OpenMode::Write | OpenMode::CreateNew => Some(libc::LOCK_EX),
        };
        if let Some(op) = lock {
            // SAFETY: flock on a valid, owned file descriptor has no memory-safety requirements.
            let rc = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Device { file, path: path.to_path_buf(), block_device, writable, direct: std::sync::OnceLock::new() })
    }

    /// The `(device, inode)` pair of the open file: two handles name the same file exactly when
    /// their identities are equal.
    pub fn identity(&self) -> io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let m = self.file.metadata()?;
        Ok((m.dev(), m.ino()))
    }

    /// The path this device was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True for block devices (as opposed to regular files).
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// The metadata of the open file (`fstat`): for a block device, `rdev` names it.
    pub fn metadata(&self) -> io::Result<std::fs::Metadata> {
        self.file.metadata()
    }

    /// True when opened for writing.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Size in bytes: the file length, or the device size by ioctl.
    pub fn size(&self) -> io::Result<u64> {
        if self.block_device {
            let mut size: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at a live u64.
            let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(size)
        } else {
            Ok(self.file.metadata()?.len())
        }
    }

    /// Reads exactly `buf.len()` bytes at `offset`; a short read is [`io::ErrorKind::UnexpectedEof`].
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Reads up to `buf.len()` bytes at `offset`, returning how many were read (fewer only at EOF).
    pub fn read_at_most(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Writes all of `buf` at `offset`: through the direct descriptor when
    /// [`Device::enable_direct`] opened one and the write is aligned to [`DIRECT_ALIGN`], else
    /// through the page cache.
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let aligned = |n: usize| n.is_multiple_of(DIRECT_ALIGN);
        if let Some(Some(direct)) = self.direct.get() {
            if aligned(buf.as_ptr() as usize) && aligned(buf.len()) && offset.is_multiple_of(DIRECT_ALIGN as u64) {
                match direct.write_all_at(buf, offset) {
                    // A file system that took the open but refuses this write (alignment finer
                    // than it supports): the page cache takes it.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                    r => return r,
                }
            }
        }
        self.file.write_all_at(buf, offset)
    }

    /// Opens a second descriptor of this (writable) file with `O_DIRECT`, which
    /// [`Device::write_all_at`] then uses for every write aligned to [`DIRECT_ALIGN`]: large copies
    /// go to the device without filling the page cache with data nobody reads back, and without the
    /// kernel's writeback in between. Other writes stay buffered; [`Device::sync`] flushes both.
    /// Returns false, changing nothing, for a read-only device or where the file system refuses
    /// direct I/O (tmpfs on older kernels, some FUSE file systems).
    pub fn enable_direct(&self) -> bool {
        if !self.writable {
            return false;
        }
        let reopen = || {
            // Reopening through /proc names this very file, whatever happened to its path.
            let proc = PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()));
            OpenOptions::new().write(true).custom_flags(libc::O_DIRECT | libc::O_CLOEXEC).open(proc).ok()
        };
        self.direct.get_or_init(reopen).is_some()
    }

    /// Sets the file length (regular files only).
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    /// Flushes data and metadata to stable storage.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    /// Reserves space for `[offset, offset+len)` without writing it (`fallocate`, keeping the size
    /// unless the range extends it). Fails with `Unsupported` where the file system cannot.
    pub fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(0, offset, len)
    }

    /// Starts writing back dirty pages of `[offset, offset+len)` without waiting
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so a later `sync` has less left to do.
    pub fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        let (off, l) = (to_off(offset)?, to_off(len)?);
        // SAFETY: sync_file_range on a valid descriptor with integer arguments.
        let rc = unsafe { libc::sync_file_range(self.file.as_raw_fd(), off, l, libc::SYNC_FILE_RANGE_WRITE) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Deallocates `[offset, offset+len)`, which then reads as zeros (`FALLOC_FL_PUNCH_HOLE`).
    pub fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, len)
    }

    /// Makes `[offset, offset+len)` read as zeros, cheaply where the system can: `BLKZEROOUT` on a
    /// block device (the device may offload it, e.g. SCSI WRITE SAME), `FALLOC_FL_ZERO_RANGE` on a
    /// file (the range stays allocated), else `FALLOC_FL_PUNCH_HOLE`; where none of these is
    /// available, zeros are written. Unlike [`Device::punch_hole`] this never fails for lack of
    /// support.
    pub fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let unsupported = |e: &io::Error| {
            matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOTTY | libc::ENOSYS))
        };
        if self.block_device {
            let range: [u64; 2] = [offset, len];
            // SAFETY: BLKZEROOUT reads two u64 values (start, length) through the pointer, which
            // points at a live array of two u64.
            let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), BLKZEROOUT, range.as_ptr()) };
            if rc == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if !unsupported(&e) {
                return Err(e);
            }
        } else {
            match self.fallocate(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE, offset, len) {
                Ok(()) => return Ok(()),
                Err(e) if unsupported(&e) => {}
                Err(e) => return Err(e),
            }
            match self.punch_hole(offset, len) {
                Ok(()) => return Ok(()),
                Err(e) if unsupported(&e) => {}
                Err(e) => return Err(e),
            }
        }
        write_zeros_with(offset, len, |buf, at| self.write_all_at(buf, at))
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (off, l) = (to_off(offset)?, to_off(len)?);
        loop {
            // SAFETY: fallocate on a valid file descriptor; the arguments are plain integers.
            let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, l) };
            if rc == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Lists the data runs of `[offset, offset+len)` as `(start, length)` pairs using
    /// `SEEK_DATA`/`SEEK_HOLE`; everything outside them is a hole that reads as zeros. Block devices
    /// and file systems without hole support report the whole range as data.
    pub fn data_runs(&self, offset: u64, len: u64) -> io::Result<Vec<(u64, u64)>> {
        let end = offset.saturating_add(len);
        if len == 0 {
            return Ok(Vec::new());
        }
        if self.block_device {
            return Ok(vec![(offset, len)]);
        }
        let fd = self.file.as_raw_fd();
        let mut runs = Vec::new();
        let mut pos = offset;
        while pos < end {
            let data = match seek(fd, pos, libc::SEEK_DATA) {
                Ok(d) => d,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    // The file system has no SEEK_DATA: everything is data.
                    runs.push((pos, end - pos));
                    break;
                }
                Err(e) => return Err(e),
            };
            if data >= end {
                break;
            }
            let hole = match seek(fd, data, libc::SEEK_HOLE) {
                Ok(h) => h.min(end),
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => end,
                Err(e) => return Err(e),
            };
            if hole > data {
                runs.push((data, hole - data));
            }
            pos = hole.max(data + 1);
        }
        Ok(runs)
    }

    /// Sends `len` bytes of this file at `offset` to the socket (or pipe) `out` inside the kernel
    /// (`sendfile`): the file's page-cache pages are handed to the socket without a copy through
    /// user space. Returns the bytes sent: fewer than `len` only at the file's EOF. A socket that
    /// takes nothing for its send timeout is [`io::ErrorKind::WouldBlock`] (some bytes may have
    /// gone; the caller cannot resume a message then).
    pub fn send_to(&self, out: std::os::fd::BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<u64> {
        in_kernel(len, |done, chunk| {
            let mut off = to_off(offset + done)?;
            // SAFETY: both descriptors are valid for the call (`out` is borrowed, `self.file` owned);
            // the offset pointer points at a live off_t, which sendfile reads and updates.
            Ok(unsafe { libc::sendfile(out.as_raw_fd(), self.file.as_raw_fd(), &mut off, chunk) })
        })
    }
}

/// Grows the pipe `fd` to hold at least `bytes` (`F_SETPIPE_SZ`, which an unprivileged process
/// may raise up to `/proc/sys/fs/pipe-max-size`, 1 MiB by default) and returns its capacity; a
/// pipe already that large is left alone. Fails on anything that is not a pipe.
pub fn grow_pipe(fd: std::os::fd::BorrowedFd<'_>, bytes: usize) -> io::Result<usize> {
    let want = libc::c_int::try_from(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: F_GETPIPE_SZ and F_SETPIPE_SZ take and return integers; `fd` is a live descriptor.
    let have = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if have < 0 {
        return Err(io::Error::last_os_error());
    }
    if have >= want {
        return Ok(have as usize);
    }
    // SAFETY: as above.
    let set = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
    if set < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(set as usize)
}

/// A copy inside the kernel of `len` bytes in steps: `step(done, max)` makes one system call for at
/// most `max` bytes, `done` bytes in, and returns what it returned (bytes moved, 0 at the source's
/// end, -1 with `errno` set). Interrupted calls are made again. Returns the bytes moved.
fn in_kernel(len: u64, mut step: impl FnMut(u64, usize) -> io::Result<isize>) -> io::Result<u64> {
    let mut done = 0u64;
    while done < len {
        let n = step(done, (len - done).min(1 << 30) as usize)?;
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        done += n as u64;
    }
    Ok(done)
}

/// Waits until `fd` is readable (for a listening socket: a connection is waiting) or `timeout`
/// passes (`poll`); true if it is readable, or reports an error or a hang-up, which the next read
/// or accept will give. A signal ends the wait early, returning false.
pub fn wait_readable(fd: std::os::fd::BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<bool> {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `p` is one live pollfd and the count passed is 1.
    let rc = unsafe { libc::poll(&mut p, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
    }
    Ok(rc > 0)
}

/// Asks for a send buffer of `bytes` on the socket `sock` (`SO_SNDBUF`; the kernel caps it at
/// `net.core.wmem_max`), so that a large reply is queued in fewer rounds of waking the reader.
pub fn set_send_buffer(sock: std::os::fd::BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `sock` is a valid descriptor for the call; the option value points at a live c_int
    // whose size is passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Renames `from` to `to` unless `to` exists (`renameat2(RENAME_NOREPLACE)`; where the file system
/// lacks it, a hard link then an unlink, which is just as exclusive). An existing `to` is
/// [`io::ErrorKind::AlreadyExists`] and nothing changes.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c =
        |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: both arguments are valid NUL-terminated strings that live across the call.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), libc::RENAME_NOREPLACE) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)) {
        return Err(e);
    }
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
}

/// A device that refuses to be opened because it is mounted or held exclusively reads as locked.
fn busy(e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::EBUSY) {
        io::Error::new(io::ErrorKind::WouldBlock, "device is in use (mounted, or opened exclusively elsewhere)")
    } else {
        e
    }
}

/// True when a process with id `pid` exists (it may belong to another user).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A process holding an advisory lock on a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    /// Its process id.
    pub pid: u32,
    /// Its command line (arguments joined by spaces), when readable.
    pub command: Option<String>,
    /// True for an exclusive (write) lock.
    pub exclusive: bool,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let own = self.pid == std::process::id();
        write!(f, "{}process {}", if own { "this " } else { "" }, self.pid)?;
        if let Some(c) = &self.command {
            write!(f, " ({c})")?;
        }
        Ok(())
    }
}

/// The processes holding `flock` locks on the file at `path`, from `/proc/locks` (empty when it
/// cannot be read, or when nobody holds one).
///
/// `/proc/locks` is generated a page per `read` from a list other processes change meanwhile, so
/// one reading can miss an entry while locks elsewhere come and go; callers ask after a conflict
/// (somebody holds the lock), so an empty answer is read again a few times before it is believed.
pub fn lock_holders(path: &Path) -> Vec<LockHolder> {
    let Ok(m) = std::fs::metadata(path) else { return Vec::new() };
    for _ in 0..4 {
        let Ok(table) = std::fs::read_to_string("/proc/locks") else { return Vec::new() };
        let found = holders_in(&table, &m);
        if !found.is_empty() {
            return found;
        }
    }
    Vec::new()
}

/// The holders of `flock` locks on the file `m` describes, in one reading of `/proc/locks`.
fn holders_in(table: &str, m: &std::fs::Metadata) -> Vec<LockHolder> {
    use std::os::unix::fs::MetadataExt;
    let (major, minor) = (libc::major(m.dev()), libc::minor(m.dev()));
    let mut out: Vec<LockHolder> = Vec::new();
    for line in table.lines() {
        // `1: FLOCK  ADVISORY  WRITE 2006 fe:00:5308633 0 EOF` (blocked waiters have `->`).
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[1] != "FLOCK" {
            continue;
        }
        let mut id = f[5].split(':');
        let (Some(ma), Some(mi), Some(ino)) = (id.next(), id.next(), id.next()) else { continue };
        let same = u32::from_str_radix(ma, 16).ok() == Some(major)
            && u32::from_str_radix(mi, 16).ok() == Some(minor)
            && ino.parse::<u64>().ok() == Some(m.ino());
        let Ok(pid) = f[4].parse::<u32>() else { continue };
        if !same || out.iter().any(|h| h.pid == pid) {
            continue;
        }
        let command = std::fs::read(format!("/proc/{pid}/cmdline")).ok().map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a))
                .collect::<Vec<_>>()
                .join(" ")
        });
        out.push(LockHolder { pid, command: command.filter(|c| !c.is_empty()), exclusive: f[3] == "WRITE" });
    }
    out
}

/// The flag [`catch_interrupts`] sets.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The first signal asks the command to stop (the flag); a second one, for a command that does not
/// stop, ends the process at once with the signal's default action.
extern "C" fn on_interrupt(sig: libc::c_int) {
    if INTERRUPTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        // SAFETY: signal and raise are async-signal-safe; restoring the default action and raising
        // the signal again ends the process as if no handler had been installed.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
}

/// The flag [`catch_interrupts`] sets (false until a signal arrives, or when none is caught).
pub fn interrupt_flag() -> &'static std::sync::atomic::AtomicBool {
    &INTERRUPTED
}

/// Catches SIGINT, SIGTERM and SIGHUP: the first sets the returned flag (commands poll it and stop
/// cleanly), a second ends the process. The handler is installed without `SA_RESTART`, so a system
/// call blocked when the signal arrives (a write to a pipe nobody reads) returns `EINTR` instead of
/// waiting on. Installing it again is harmless.
pub fn catch_interrupts() -> &'static std::sync::atomic::AtomicBool {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the sigaction struct is zeroed then filled (handler, empty mask, no flags) and
        // lives across the call; the handler only touches an atomic and async-signal-safe calls.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    &INTERRUPTED
}

/// `_IOR(0x12, 114, size_t)`: the block device size in bytes.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// `_IO(0x12, 127)`: zero a byte range `[start, len]` of a block device.
const BLKZEROOUT: libc::c_ulong = 0x127f;

fn to_off(v: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(v).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))
}

fn seek(fd: libc::c_int, pos: u64, whence: libc::c_int) -> io::Result<u64> {
    // SAFETY: lseek on a valid descriptor; SEEK_DATA/SEEK_HOLE do not touch memory.
    let r = unsafe { libc::lseek(fd, to_off(pos)?, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

/// Writes `len` zero bytes at `offset` through `write(buf, at)`, in chunks of at most 1 MiB (one
/// buffer of zeros, reused): the fallback of every zeroing path that the storage cannot do itself.
pub fn write_zeros_with<E>(offset: u64, len: u64, mut write: impl FnMut(&[u8], u64) -> Result<(), E>) -> Result<(), E> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done);
        write(&zeros[..n as usize], offset + done)?;
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_writes_land_and_unaligned_ones_stay_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let d = Device::open(&p, OpenMode::CreateNew).unwrap();
        assert!(!Device::open(&p, OpenMode::Read).unwrap().enable_direct(), "a read-only device takes no direct I/O");
        if !d.enable_direct() {
            eprintln!("skipped: the file system of {} refuses O_DIRECT", dir.path().display());
            return;
        }
        // An aligned buffer (direct), then writes unaligned in address, offset or length (buffered).
        let mut raw = vec![0u8; 3 * DIRECT_ALIGN + 8192];
        let start = (DIRECT_ALIGN - raw.as_ptr() as usize % DIRECT_ALIGN) % DIRECT_ALIGN;
        raw[start..start + 8192].fill(0x5a);
        d.write_all_at(&raw[start..start + 8192], 1 << 20).unwrap();
        d.write_all_at(&raw[start + 1..start + 4097], 0).unwrap();
        d.write_all_at(&[7u8; 4096], 4096 + 512).unwrap();
        d.write_all_at(&[9u8; 100], 3 << 20).unwrap();
        d.sync().unwrap();
        let all = std::fs::read(&p).unwrap();
        assert_eq!(all.len(), (3 << 20) + 100);
        assert!(all[1 << 20..(1 << 20) + 8192].iter().all(|&b| b == 0x5a));
        assert!(all[..4096].iter().all(|&b| b == 0x5a));
        assert!(all[4096..4608].iter().all(|&b| b == 0));
        assert!(all[4608..8704].iter().all(|&b| b == 7));
        assert!(all[3 << 20..].iter().all(|&b| b == 9));
        // The direct descriptor writes the same file: data runs see the direct write.
        assert!(d.data_runs(1 << 20, 8192).unwrap() == vec![(1 << 20, 8192)]);
    }

    #[test]
    fn data_runs_follow_holes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let d = Device::open(&p, OpenMode::CreateNew).unwrap();
        d.set_len(8 << 20).unwrap();
        d.write_all_at(&[1u8; 4096], 1 << 20).unwrap();
        let runs = d.data_runs(0, 8 << 20).unwrap();
        assert_eq!(runs, vec![(1 << 20, 4096)]);
        assert_eq!(d.size().unwrap(), 8 << 20);
    }

    #[test]
    fn zero_range_zeroes_and_keeps_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let d = Device::open(&p, OpenMode::CreateNew).unwrap();
        d.write_all_at(&[0xaau8; 3 << 20], 0).unwrap();
        d.zero_range(4096, 1 << 20).unwrap();
        d.zero_range(0, 0).unwrap();
        let mut b = vec![0u8; 3 << 20];
        d.read_exact_at(&mut b, 0).unwrap();
        assert!(b[..4096].iter().all(|&x| x == 0xaa));
        assert!(b[4096..4096 + (1 << 20)].iter().all(|&x| x == 0));
        assert!(b[4096 + (1 << 20)..].iter().all(|&x| x == 0xaa));
        assert_eq!(d.size().unwrap(), 3 << 20);
    }

    #[test]
    fn second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let _a = Device::open(&p, OpenMode::CreateNew).unwrap();
        let e = Device::open(&p, OpenMode::Write).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        // Plain readers take no lock; shared readers conflict with the writer.
        Device::open(&p, OpenMode::Read).unwrap();
        let e = Device::open(&p, OpenMode::ReadShared).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let holders = lock_holders(&p);
        assert_eq!(holders.len(), 1, "{holders:?}");
        assert_eq!(holders[0].pid, std::process::id());
        assert!(holders[0].exclusive);
    }

    #[test]
    fn shared_readers_coexist_and_exclude_writers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        drop(Device::open(&p, OpenMode::CreateNew).unwrap());
        let a = Device::open(&p, OpenMode::ReadShared).unwrap();
        let _b = Device::open(&p, OpenMode::ReadShared).unwrap();
        assert_eq!(Device::open(&p, OpenMode::Write).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert!(!lock_holders(&p)[0].exclusive);
        drop(a);
    }

    #[test]
    fn open_beneath_stays_in_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let (inner, outer) = (dir.path().join("vm"), dir.path().join("secret"));
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(&outer, b"outside").unwrap();
        std::fs::write(inner.join("ok"), b"inside").unwrap();
        std::os::unix::fs::symlink("ok", inner.join("near")).unwrap();
        std::os::unix::fs::symlink(&outer, inner.join("far")).unwrap();
        std::os::unix::fs::symlink("../secret", inner.join("up")).unwrap();
        for ok in ["ok", "near", "./ok"] {
            let d = Device::open_beneath(&inner, Path::new(ok), OpenMode::Read).unwrap();
            assert_eq!(d.size().unwrap(), 6, "{ok}");
        }
        for bad in ["far", "up", "../secret", "/etc/passwd"] {
            let e = Device::open_beneath(&inner, Path::new(bad), OpenMode::Read).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{bad}: {e}");
        }
        let e = Device::open_beneath(&inner, Path::new("far"), OpenMode::Write).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(std::fs::read(&outer).unwrap(), b"outside");
    }

    #[test]
    fn rename_noreplace_refuses_an_existing_target() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        assert_eq!(rename_noreplace(&a, &b).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&b).unwrap(), b"b");
        std::fs::remove_file(&b).unwrap();
        rename_noreplace(&a, &b).unwrap();
        assert!(!a.exists());
        assert_eq!(std::fs::read(&b).unwrap(), b"a");
    }
}
