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
}

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
            OpenMode::Read => {}
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
        let file = opts.open(path).map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                io::Error::new(io::ErrorKind::WouldBlock, "device is in use (mounted, or opened exclusively elsewhere)")
            } else {
                e
            }
        })?;
        let block_device = file.metadata()?.file_type().is_block_device();
        let writable = mode != OpenMode::Read;
        if writable {
            // SAFETY: flock on a valid, owned file descriptor has no memory-safety requirements.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Device { file, path: path.to_path_buf(), block_device, writable })
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

    /// Writes all of `buf` at `offset`.
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
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
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; CHUNK.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = CHUNK.min(len - done);
            self.write_all_at(&zeros[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
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

    /// Copies `len` bytes from `src` at `src_off` to this device at `dst_off` inside the kernel
    /// (`copy_file_range`). Returns the bytes copied (fewer than `len` only at the source's EOF).
    pub fn copy_from(&self, src: &Device, src_off: u64, dst_off: u64, len: u64) -> io::Result<u64> {
        let mut done = 0u64;
        while done < len {
            let mut so = to_off(src_off + done)?;
            let mut dof = to_off(dst_off + done)?;
            let chunk = (len - done).min(1 << 30) as usize;
            // SAFETY: both descriptors are valid; the offset pointers point at live i64 values.
            let n = unsafe {
                libc::copy_file_range(src.file.as_raw_fd(), &mut so, self.file.as_raw_fd(), &mut dof, chunk, 0)
            };
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

#[cfg(test)]
mod tests {
    use super::*;

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
        // Readers take no lock.
        Device::open(&p, OpenMode::Read).unwrap();
    }
}
