//! The C ABI of vmkfs (`libvmkfs.so`, header `include/vmkfs.h`), shaped like VDDK's VixDiskLib:
//! open a disk or chain, get its info, read and write at sector or byte offsets, query allocated
//! and changed blocks, create a disk, create a child (snapshot), commit, clone with a progress
//! callback and cancellation, and the text of the last error.
//!
//! Every function is a thin wrapper over the Rust facade (`vmkfs::Disk`, `vmkfs::clone`, …): it
//! checks its pointers, calls the facade inside `catch_unwind` (a panic never crosses into C: it
//! becomes [`VMKFS_ERR_INTERNAL`]), and turns an error into a status code and the thread's
//! last-error text. The rules a C caller must follow are in the header's opening comment (this
//! module's `HEADER_RULES`, written into the header by cbindgen's configuration, `cbindgen.toml`).

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use vmkfs_rs::error::ErrorKind;
use vmkfs_rs::redo::RedoError;
use vmkfs_rs::{ByteRange, Disk, DiskFormat, Error};

/// Success.
pub const VMKFS_OK: c_int = 0;
/// A bad argument: a NULL pointer, an unknown format or flag, a range past the capacity, an
/// existing destination.
pub const VMKFS_ERR_USAGE: c_int = 2;
/// Bad or unsupported input: a damaged disk, a broken chain, a link that is not in the chain.
pub const VMKFS_ERR_BAD_INPUT: c_int = 3;
/// An I/O error.
pub const VMKFS_ERR_IO: c_int = 4;
/// Locked or busy: another process or a running VM holds the disk, the disk has child links, or an
/// interrupted operation must be re-run first.
pub const VMKFS_ERR_LOCKED: c_int = 5;
/// Cancelled: the progress callback returned 0 or the cancellation token was set.
pub const VMKFS_ERR_CANCELLED: c_int = 6;
/// An internal error (a bug in vmkfs; the text says where).
pub const VMKFS_ERR_INTERNAL: c_int = 7;

/// `vmkfs_open` flag: open for writing (the top link is locked exclusively). Without it the disk
/// is opened read-only with shared locks.
pub const VMKFS_OPEN_WRITABLE: u32 = 1;

/// Bytes per sector of the sector-addressed calls (`vmkfs_read`, `vmkfs_write`).
pub const VMKFS_SECTOR_SIZE: u64 = 512;

/// An open disk or chain. Opaque; made by `vmkfs_open`, released by `vmkfs_close`.
pub struct VmkfsDisk {
    disk: Disk,
}

/// A cancellation token: set from any thread (or a signal handler: setting it is one atomic
/// store) to stop a `vmkfs_clone` or `vmkfs_commit` that was given it.
pub struct VmkfsCancel {
    flag: AtomicBool,
}

/// What `vmkfs_get_info` reports.
#[repr(C)]
pub struct VmkfsInfo {
    /// Capacity in bytes.
    pub capacity: u64,
    /// Capacity in sectors of `VMKFS_SECTOR_SIZE` bytes (rounded down).
    pub sectors: u64,
    /// Bytes holding data in the whole chain.
    pub allocated: u64,
    /// The top link's content ID.
    pub cid: u32,
    /// The top link's parent content ID (`0xffffffff` for a base disk).
    pub parent_cid: u32,
    /// Number of links in the chain (1 for a disk without snapshots).
    pub chain_depth: u32,
    /// The top link's createType (`monolithicSparse`, `vmfs`, `vmfsSparse`, …) or `raw`,
    /// NUL-terminated.
    pub format: [c_char; 64],
    /// `ddb.adapterType` (`lsilogic`, `ide`, …), empty when not given; NUL-terminated.
    pub adapter: [c_char; 32],
}

/// A byte range.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmkfsRange {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// An array of ranges that vmkfs allocated; release it with `vmkfs_free_ranges`.
#[repr(C)]
pub struct VmkfsRangeList {
    /// The ranges, in order, not overlapping (NULL when `count` is 0).
    pub ranges: *mut VmkfsRange,
    /// How many.
    pub count: usize,
}

/// Progress callback of `vmkfs_clone` and `vmkfs_commit`: called on the thread that made the call
/// with `user_data` as given, the bytes done and the bytes in total. Return nonzero to go on, 0 to
/// cancel (the call then fails with `VMKFS_ERR_CANCELLED`).
pub type VmkfsProgressFn = Option<unsafe extern "C" fn(user_data: *mut c_void, done: u64, total: u64) -> c_int>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// A failed call: its status code and the text for `vmkfs_last_error`.
struct Failure {
    code: c_int,
    message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let code = match e {
            Error::Interrupted | Error::Redo(RedoError::Interrupted) => VMKFS_ERR_CANCELLED,
            ref e => match e.kind() {
                ErrorKind::Usage => VMKFS_ERR_USAGE,
                ErrorKind::BadInput => VMKFS_ERR_BAD_INPUT,
                ErrorKind::Io => VMKFS_ERR_IO,
                ErrorKind::Locked => VMKFS_ERR_LOCKED,
            },
        };
        Failure { code, message: e.to_string() }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure { code: VMKFS_ERR_USAGE, message: message.into() }
}

fn set_last_error(message: &str) {
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = text);
}

/// Runs `f`, turning its error or panic into a status code and the thread's last-error text.
fn guard(f: impl FnOnce() -> Result<(), Failure>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => VMKFS_OK,
        Ok(Err(fail)) => {
            set_last_error(&fail.message);
            fail.code
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("internal error: {what}"));
            VMKFS_ERR_INTERNAL
        }
    }
}

/// The string at `p` (NUL-terminated), or a usage failure naming `what` when `p` is NULL.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid for `'a`.
unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a [u8], Failure> {
    if p.is_null() {
        return Err(usage(format!("{what} is NULL")));
    }
    // SAFETY: `p` is not NULL and, by this function's contract (the header's rule for string
    // arguments), points to a NUL-terminated string valid for 'a.
    Ok(unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// A path argument (bytes as the file system takes them, no encoding assumed).
///
/// # Safety
/// As [`str_arg`].
unsafe fn path_arg<'a>(p: *const c_char, what: &str) -> Result<&'a Path, Failure> {
    // SAFETY: forwarded contract.
    let bytes = unsafe { str_arg(p, what) }?;
    Ok(Path::new(OsStr::from_bytes(bytes)))
}

/// A `-d` format name.
///
/// # Safety
/// As [`str_arg`].
unsafe fn format_arg(p: *const c_char) -> Result<DiskFormat, Failure> {
    // SAFETY: forwarded contract.
    let bytes = unsafe { str_arg(p, "format") }?;
    let name = String::from_utf8_lossy(bytes);
    DiskFormat::parse(&name).ok_or_else(|| {
        let known: Vec<&str> = DiskFormat::EVERY.iter().map(|f| f.name()).collect();
        usage(format!("unknown disk format {name:?} (expected one of {})", known.join(", ")))
    })
}

/// The disk behind a handle.
///
/// # Safety
/// `d` is NULL or a handle from `vmkfs_open` not yet given to `vmkfs_close`, valid for `'a`.
unsafe fn disk_arg<'a>(d: *const VmkfsDisk) -> Result<&'a Disk, Failure> {
    if d.is_null() {
        return Err(usage("disk handle is NULL"));
    }
    // SAFETY: not NULL, and by contract a live handle made by Box::into_raw in vmkfs_open; only
    // shared references are made from it (Disk is Sync).
    Ok(&unsafe { &*d }.disk)
}

/// A place to write a result to.
///
/// # Safety
/// `p` is NULL or valid for writes of a `T` (and suitably aligned) for `'a`.
unsafe fn out_arg<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T, Failure> {
    if p.is_null() {
        return Err(usage(format!("{what} is NULL")));
    }
    // SAFETY: not NULL, and by contract valid and aligned for writes of a T; the caller does not
    // access it during the call.
    Ok(unsafe { &mut *p })
}

/// The buffer of a read.
///
/// # Safety
/// `buf` is valid for writes of `len` bytes (may be NULL when `len` is 0).
unsafe fn buf_mut<'a>(buf: *mut u8, len: usize) -> Result<&'a mut [u8], Failure> {
    if len == 0 {
        return Ok(&mut []);
    }
    if buf.is_null() {
        return Err(usage("buffer is NULL"));
    }
    // SAFETY: not NULL and, by contract, valid for writes of `len` bytes and not accessed by the
    // caller during the call.
    Ok(unsafe { std::slice::from_raw_parts_mut(buf, len) })
}

/// The buffer of a write.
///
/// # Safety
/// `buf` is valid for reads of `len` bytes (may be NULL when `len` is 0).
unsafe fn buf_ref<'a>(buf: *const u8, len: usize) -> Result<&'a [u8], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if buf.is_null() {
        return Err(usage("buffer is NULL"));
    }
    // SAFETY: not NULL and, by contract, valid for reads of `len` bytes during the call.
    Ok(unsafe { std::slice::from_raw_parts(buf, len) })
}

/// `sectors` sectors from `start` as a byte offset and length.
fn sector_span(start: u64, sectors: u64) -> Result<(u64, usize), Failure> {
    let offset = start.checked_mul(VMKFS_SECTOR_SIZE);
    let len = sectors.checked_mul(VMKFS_SECTOR_SIZE).and_then(|l| usize::try_from(l).ok());
    match (offset, len) {
        (Some(o), Some(l)) => Ok((o, l)),
        _ => Err(usage(format!("{sectors} sectors at sector {start} overflow a byte offset"))),
    }
}

/// Copies `s` into a fixed C string field, truncated to fit, NUL-terminated.
fn fill_c_string(dst: &mut [c_char], s: &str) {
    let n = s.len().min(dst.len().saturating_sub(1));
    for (d, b) in dst.iter_mut().zip(s.as_bytes()[..n].iter()) {
        *d = *b as c_char;
    }
    for d in dst.iter_mut().skip(n) {
        *d = 0;
    }
}

/// Hands `ranges` to C as a list it frees with `vmkfs_free_ranges`.
fn range_list(ranges: impl Iterator<Item = (u64, u64)>) -> VmkfsRangeList {
    let v: Box<[VmkfsRange]> = ranges.map(|(offset, length)| VmkfsRange { offset, length }).collect();
    if v.is_empty() {
        return VmkfsRangeList { ranges: std::ptr::null_mut(), count: 0 };
    }
    let count = v.len();
    VmkfsRangeList { ranges: Box::into_raw(v).cast::<VmkfsRange>(), count }
}

/// Runs `op` with a progress closure that reports to `progress` and a stop flag that is set when
/// the callback returns 0 or `cancel` is set (checked before starting and at every report).
///
/// # Safety
/// `progress` is NULL or a function safe to call with `user_data`; `cancel` is NULL or a live
/// token.
unsafe fn with_progress(
    progress: VmkfsProgressFn,
    user_data: *mut c_void,
    cancel: *const VmkfsCancel,
    op: impl FnOnce(&mut dyn FnMut(u64, u64), &AtomicBool) -> Result<(), Error>,
) -> Result<(), Failure> {
    // SAFETY: by contract `cancel` is NULL or a token from vmkfs_cancel_new not yet freed.
    let token = unsafe { cancel.as_ref() };
    let cancelled = || token.is_some_and(|t| t.flag.load(Ordering::SeqCst));
    if cancelled() {
        return Err(Error::Interrupted.into());
    }
    let stop = AtomicBool::new(false);
    let mut report = |done: u64, total: u64| {
        // SAFETY: by contract `progress` is safe to call with `user_data` on this thread.
        let go_on = progress.is_none_or(|f| unsafe { f(user_data, done, total) } != 0);
        if !go_on || cancelled() {
            stop.store(true, Ordering::SeqCst);
        }
    };
    Ok(op(&mut report, &stop)?)
}

/// Opens the disk or chain whose top link is `path`. `flags`: 0 (read-only, shared locks on every
/// link) or `VMKFS_OPEN_WRITABLE` (the top link locked exclusively; writes go there). On success
/// `*out` is a handle to release with `vmkfs_close`; on failure it is set to NULL.
///
/// # Safety
/// `path` is a NUL-terminated string; `out` is valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn vmkfs_open(path: *const c_char, flags: u32, out: *mut *mut VmkfsDisk) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract for `out`.
        let out = unsafe { out_arg(out, "out") }?;
        *out = std::ptr::null_mut();
        // SAFETY: the caller's contract for `path`.
        let path = unsafe { path_arg(path, "path") }?;
        if flags & !VMKFS_OPEN_WRITABLE != 0 {
            return Err(usage(format!("unknown open flags {flags:#x}")));
        }
        let disk = if flags & VMKFS_OPEN_WRITABLE != 0 { Disk::open_writable(path) } else { Disk::open(path) }?;
        *out = Box::into_raw(Box::new(VmkfsDisk { disk }));
        Ok(())
    })
}

/// Flushes and closes the disk, releasing its locks and the handle (which must not be used
/// again, whatever the result). NULL is accepted and does nothing.
///
/// # Safety
/// `disk` is NULL or a handle from `vmkfs_open` not yet closed, and no other thread is using it.
#[no_mangle]
pub unsafe extern "C" fn vmkfs_close(disk: *mut VmkfsDisk) -> c_int {
    guard(|| {
        if disk.is_null() {
            return Ok(());
        }
        // SAFETY: by contract a live handle made by Box::into_raw in vmkfs_open, used by no one
        // else; ownership comes back here once.
        let d = unsafe { Box::from_raw(disk) };
        Ok(d.disk.close()?)
    })
}

/// Fills `*info` with the disk's capacity, allocated bytes, CIDs, chain depth, format and adapter.
/// Counting the allocated bytes walks the chain's allocation metadata once.
///
/// # Safety
/// `disk` is a live handle; `info` is valid for writing a `VmkfsInfo`.
#[no_mangle]
pub unsafe extern "C" fn vmkfs_get_info(disk: *const VmkfsDisk, info: *mut VmkfsInfo) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let (disk, out) = unsafe { (disk_arg(disk)?, out_arg(info, "info")?) };
        let i = disk.info()?;
        out.capacity = i.capacity;
        out.sectors = i.capacity / VMKFS_SECTOR_SIZE;
        out.allocated = i.allocated;
        out.cid = disk.cid();
        out.parent_cid = u32::from_str_radix(&i.parent_cid, 16).unwrap_or(u32::MAX);
        out.chain_depth = u32::try_from(i.chain_depth).unwrap_or(u32::MAX);
        fill_c_string(&mut out.format, &i.format);
        fill_c_string(&mut out.adapter, i.adapter.as_deref().unwrap_or(""));
        Ok(())
    })
}

/// Reads `num_sectors` sectors (of `VMKFS_SECTOR_SIZE` bytes) from sector `start_sector` into
/// `buf` (VixDiskLib_Read).
///
/// # Safety
/// `disk` is a live handle; `buf` is valid for writing `num_sectors * 512` bytes.
#[no_mangle]
pub unsafe extern "C" fn vmkfs_read(
    disk: *const VmkfsDisk,
    start_sector: u64,
    num_sectors: u64,
    buf: *mut u8,
) -> c_int {
    guard(|| {
        let (offset, len) = sector_span(start_sector, num_sectors)?;
        // SAFETY: the caller's contract.
        let (disk, buf) = unsafe { (disk_arg(disk)?, buf_mut(buf, len)?) };
        Ok(disk.read_at(buf, offset)?)
    })
}

/// Writes `num_sectors` sectors from `buf` at sector `start_sector` into the top link
/// (VixDiskLib_Write). The disk must have been opened with `VMKFS_OPEN_WRITABLE`.
///
/// # Safety
/// `disk` is a live handle; `buf` is valid for reading `num_sectors * 512` bytes.
#[no_mangle]
pub unsafe extern "C" fn vmkfs_write(
    disk: *const VmkfsDisk,
    start_sector: u64,
    num_sectors: u64,
    buf: *const u8,
) -> c_int {
    guard(|| {
        let (offset, len) = sector_span(start_sector, num_sectors)?;
        // SAFETY: the caller's contract.
        let (disk, buf) = unsafe { (disk_arg(disk)?, buf_ref(buf, len)?) };
        Ok(disk.write_at(buf, offset)?)
    })
}

/// Reads `len` bytes at byte `offset` into `buf`.
///
/// # Safety
/// `disk` is a live handle; `buf` is valid for writing `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn vmkfs_read_at(disk: *const VmkfsDisk, offset: u64, len: usize, buf: *mut u8) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let (disk, buf) = unsafe { (disk_arg(disk)?, buf_mut(buf, len)?) };
        Ok(disk.read_at(buf, offset)?)
    })
}

/// Writes `len` bytes from `buf` at byte `offset` into the top link.
///
/// # Safety
/// `disk` is a live handle; `buf` is valid for reading `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn vmkfs_write_at(disk: *const VmkfsDisk, offset: u64, len: usize, buf: *const u8) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let (disk, buf) = unsafe { (disk_arg(disk)?, buf_ref(buf, len)?) };
        Ok(disk.write_at(buf, offset)?)
    })
}

/// Flushes written data and metadata to stable storage.
///
/// # Safety
/// `disk` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn vmkfs_flush(disk: *const VmkfsDisk) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let disk = unsafe { disk_arg(disk) }?;
        Ok(disk.flush()?)
    })
}

/// Fills `*out` with the byte ranges holding data in any link of the chain, neighbours merged
/// (VixDiskLib_QueryAllocatedBlocks). Release the list with `vmkfs_free_ranges`. On failure
/// `*out` is an empty list.
///
/// # Safety
/// `disk` is a live handle; `out` is valid for writing a `VmkfsRangeList`.
#[no_mangle]
pub unsafe extern "C" fn vmkfs_query_allocated(disk: *const VmkfsDisk, out: *mut VmkfsRangeList) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let (disk, out) = unsafe { (disk_arg(disk)?, out_arg(out, "out")?) };
        *out = range_list(std::iter::empty());
        let extents: Vec<ByteRange> = disk.allocated()?;
        *out = range_list(extents.into_iter().map(|e| (e.offset, e.len)));
        Ok(())
    })
}

/// Fills `*out` with the byte ranges written above the link `since` (a path naming a link of this
/// disk's chain; NULL: the base), in blocks of `block_size` bytes (a power of two, at least 512;
/// 0: 64 KiB) — what an incremental backup since that snapshot copies. Release the list with
/// `vmkfs_free_ranges`. On failure `*out` is an empty list.
///
/// # Safety
/// `disk` is a live handle; `since` is NULL or a NUL-terminated string; `out` is valid for writing
/// a `VmkfsRangeList`.
#[no_mangle]
pub unsafe extern "C" fn vmkfs_changed_since(
    disk: *const VmkfsDisk,
    since: *const c_char,
    block_size: u64,
    out: *mut VmkfsRangeList,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let (disk, out) = unsafe { (disk_arg(disk)?, out_arg(out, "out")?) };
        *out = range_list(std::iter::empty());
        // SAFETY: the caller's contract for `since` (checked for NULL first).
        let since = if since.is_null() { None } else { Some(unsafe { path_arg(since, "since") }?) };
        let block = if block_size == 0 { vmkfs_rs::redo::changemap::DEFAULT_BLOCK } else { block_size };
        let changes = disk.changed_since_in_blocks(since, block)?;
        *out = range_list(changes.ranges());
        Ok(())
    })
}

/// Releases a list filled by `vmkfs_query_allocated` or `vmkfs_changed_since` and leaves it
/// empty (so a second call does nothing). NULL is accepted.
///
/// # Safety
/// `list` is NULL or points to a list vmkfs filled and that was not released since.
#[no_mangle]
pub unsafe extern "C" fn vmkfs_free_ranges(list: *mut VmkfsRangeList) {
    // SAFETY: by contract NULL or a valid list.
    let Some(list) = (unsafe { list.as_mut() }) else { return };
    if !list.ranges.is_null() {
        let raw = std::ptr::slice_from_raw_parts_mut(list.ranges, list.count);
        // SAFETY: `ranges`/`count` came from Box::into_raw of a boxed slice of that length in
        // range_list, and are released here once (the list is emptied below).
        drop(unsafe { Box::from_raw(raw) });
    }
    list.ranges = std::ptr::null_mut();
    list.count = 0;
}

/// Creates an empty disk of `capacity` bytes (a multiple of 512) at `path` in `format` (the `-d`
/// names of `vmkfs`: `zeroedthick`, `eagerzeroedthick`, `thin`, `monosparse`, `2gbsparse`,
/// `monoflat`, `2gbflat`, `streamoptimized`), lsilogic adapter (VixDiskLib_Create). An existing
/// destination is refused.
///
/// # Safety
/// `path` and `format` are NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn vmkfs_create(path: *const c_char, format: *const c_char, capacity: u64) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let (path, format) = unsafe { (path_arg(path, "path")?, format_arg(format)?) };
        vmkfs_rs::create(path, format, capacity)?;
        Ok(())
    })
}

/// Adds a REDO link on top of the chain whose top is `path` (VixDiskLib_CreateChild; the chain
/// below becomes static). When `child_out` is not NULL, `*child_out` receives the new link's path,
/// to release with `vmkfs_free_string` (NULL on failure).
///
/// # Safety
/// `path` is a NUL-terminated string; `child_out` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn vmkfs_create_child(path: *const c_char, child_out: *mut *mut c_char) -> c_int {
    guard(|| {
        // SAFETY: by contract NULL or valid for writes.
        let mut out = unsafe { child_out.as_mut() };
        if let Some(o) = out.as_deref_mut() {
            *o = std::ptr::null_mut();
        }
        // SAFETY: the caller's contract.
        let path = unsafe { path_arg(path, "path") }?;
        let child = vmkfs_rs::snapshot(path)?;
        if let Some(o) = out {
            let text = CString::new(child.as_os_str().as_bytes())
                .map_err(|_| usage(format!("{}: a path with a NUL byte", child.display())))?;
            *o = text.into_raw();
        }
        Ok(())
    })
}

/// Merges the REDO link `link` into its parent, crash-safely (`vmkfs -m`). `progress` (may be
/// NULL) is called with `user_data` as the data is copied; `cancel` (may be NULL) stops it. A
/// cancelled or interrupted commit is finished by calling `vmkfs_commit` again; until then the
/// disks are refused as locked.
///
/// # Safety
/// `link` is a NUL-terminated string; `progress` is NULL or safe to call with `user_data`;
/// `cancel` is NULL or a live token.
#[no_mangle]
pub unsafe extern "C" fn vmkfs_commit(
    link: *const c_char,
    progress: VmkfsProgressFn,
    user_data: *mut c_void,
    cancel: *const VmkfsCancel,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let link = unsafe { path_arg(link, "link") }?;
        // SAFETY: the caller's contract for the callback and token.
        unsafe {
            with_progress(progress, user_data, cancel, |report, stop| {
                vmkfs_rs::commit(link, report, Some(stop)).map(|_| ())
            })
        }
    })
}

/// Clones the disk or chain whose top is `src` (flattened) into a new disk at `dst` in `format`
/// (the names of `vmkfs_create`), keeping its content ID (VixDiskLib_Clone). `progress` (may be
/// NULL) is called on this thread with `user_data`, the bytes done and the total; it returns 0 to
/// cancel. `cancel` (may be NULL) is a token another thread may set. A failed or cancelled clone
/// leaves no destination.
///
/// # Safety
/// `src`, `dst` and `format` are NUL-terminated strings; `progress` is NULL or safe to call with
/// `user_data`; `cancel` is NULL or a live token.
#[no_mangle]
pub unsafe extern "C" fn vmkfs_clone(
    src: *const c_char,
    dst: *const c_char,
    format: *const c_char,
    progress: VmkfsProgressFn,
    user_data: *mut c_void,
    cancel: *const VmkfsCancel,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let (src, dst, format) = unsafe { (path_arg(src, "src")?, path_arg(dst, "dst")?, format_arg(format)?) };
        // SAFETY: the caller's contract for the callback and token.
        unsafe {
            with_progress(progress, user_data, cancel, |report, stop| {
                vmkfs_rs::clone(src, dst, format, report, Some(stop)).map(|_| ())
            })
        }
    })
}

/// A new cancellation token (not set). Release it with `vmkfs_cancel_free`.
#[no_mangle]
pub extern "C" fn vmkfs_cancel_new() -> *mut VmkfsCancel {
    Box::into_raw(Box::new(VmkfsCancel { flag: AtomicBool::new(false) }))
}

/// Sets the token: every clone or commit given it stops at its next step. Safe from any thread.
///
/// # Safety
/// `cancel` is NULL or a live token.
#[no_mangle]
pub unsafe extern "C" fn vmkfs_cancel_set(cancel: *const VmkfsCancel) {
    // SAFETY: by contract NULL or a live token; only shared access to an atomic.
    if let Some(t) = unsafe { cancel.as_ref() } {
        t.flag.store(true, Ordering::SeqCst);
    }
}

/// Clears the token so it can be given to another call.
///
/// # Safety
/// `cancel` is NULL or a live token.
#[no_mangle]
pub unsafe extern "C" fn vmkfs_cancel_reset(cancel: *const VmkfsCancel) {
    // SAFETY: by contract NULL or a live token; only shared access to an atomic.
    if let Some(t) = unsafe { cancel.as_ref() } {
        t.flag.store(false, Ordering::SeqCst);
    }
}

/// Releases a token. NULL is accepted.
///
/// # Safety
/// `cancel` is NULL or a token from `vmkfs_cancel_new` that no call is using and that was not
/// released before.
#[no_mangle]
pub unsafe extern "C" fn vmkfs_cancel_free(cancel: *mut VmkfsCancel) {
    if !cancel.is_null() {
        // SAFETY: made by Box::into_raw in vmkfs_cancel_new, released here once (contract).
        drop(unsafe { Box::from_raw(cancel) });
    }
}

/// Releases a string vmkfs returned (`vmkfs_create_child`'s path). NULL is accepted.
///
/// # Safety
/// `s` is NULL or a string vmkfs returned that was not released before.
#[no_mangle]
pub unsafe extern "C" fn vmkfs_free_string(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: made by CString::into_raw in this library and released here once (contract).
        drop(unsafe { CString::from_raw(s) });
    }
}

/// The text of the last failed call on this thread (empty when none failed). Owned by vmkfs:
/// valid until the next failing vmkfs call on the same thread; do not free it.
#[no_mangle]
pub extern "C" fn vmkfs_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The library version (`MAJOR.MINOR.PATCH`), a static string.
#[no_mangle]
pub extern "C" fn vmkfs_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
