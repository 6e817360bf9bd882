//! Extents: the pieces a link's virtual disk is made of, each kind in its own module.
//!
//! Every extent maps `len()` bytes of the virtual disk, starting at its own offset 0; the link shifts
//! offsets. Reads of ranges the extent does not hold return zeros; the link asks [`Extent::map`] first
//! when a parent must fill them.

use std::fmt::Debug;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::map::AllocMap;
use crate::storage::Backing;
use rdm::ReadAt;

pub mod cowd;
pub mod device;
pub mod flat;
pub mod gtcache;
pub mod kdmv;
pub mod sesparse;
pub mod sparse;
pub mod sparse_check;
pub mod stream;
pub mod zero;

/// What kind an extent is. [`ExtentKind::as_str`] is its descriptor keyword (`STREAM` for a
/// streamOptimized extent, whose descriptor says `SPARSE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtentKind {
    /// Raw bytes in a host file (`FLAT`).
    Flat,
    /// Raw bytes in an ESX flat file (`VMFS`).
    Vmfs,
    /// No storage: reads as zeros (`ZERO`).
    Zero,
    /// Hosted sparse grains and tables (`SPARSE`).
    Sparse,
    /// streamOptimized: compressed grains, read-only.
    Stream,
    /// An ESX COWD redo log (`VMFSSPARSE`).
    VmfsSparse,
    /// An ESXi seSparse delta (`SESPARSE`), read-only.
    SeSparse,
    /// A device through a raw device mapping (`VMFSRDM`).
    VmfsRdm,
    /// A device named by the descriptor (`VMFSRAW`).
    VmfsRaw,
}

impl ExtentKind {
    /// The keyword (`FLAT`, `SPARSE`, `STREAM`, `VMFSSPARSE`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ExtentKind::Flat => "FLAT",
            ExtentKind::Vmfs => "VMFS",
            ExtentKind::Zero => "ZERO",
            ExtentKind::Sparse => "SPARSE",
            ExtentKind::Stream => "STREAM",
            ExtentKind::VmfsSparse => "VMFSSPARSE",
            ExtentKind::SeSparse => "SESPARSE",
            ExtentKind::VmfsRdm => "VMFSRDM",
            ExtentKind::VmfsRaw => "VMFSRAW",
        }
    }

    /// True for the disk's bytes in place in a file (`FLAT`, `VMFS`).
    pub fn is_flat_file(self) -> bool {
        matches!(self, ExtentKind::Flat | ExtentKind::Vmfs)
    }

    /// True when writes allocate grains as they go (hosted sparse, COWD): such an extent is best
    /// written in disk order, through one writer.
    pub fn allocates_grains(self) -> bool {
        matches!(self, ExtentKind::Sparse | ExtentKind::VmfsSparse)
    }
}

impl std::fmt::Display for ExtentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A description of an extent for `--info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentInfo {
    /// What kind of extent.
    pub kind: ExtentKind,
    /// The file, if any.
    pub file: Option<PathBuf>,
    /// Bytes of the virtual disk it maps.
    pub len: u64,
    /// Grain size in bytes for sparse kinds.
    pub grain: Option<u64>,
    /// Format version for sparse kinds.
    pub version: Option<u32>,
    /// True when the unclean-shutdown flag was set at open.
    pub unclean: bool,
}

/// One extent of a link. Its reads are its [`ReadAt`]: `buf.len()` bytes at an extent offset,
/// ranges not stored here reading as zeros.
pub trait Extent: ReadAt<Error = Error> + Debug {
    /// Bytes of the virtual disk this extent maps.
    fn len(&self) -> u64;
    /// True for an empty extent.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A description for `--info`.
    fn info(&self) -> ExtentInfo;
    /// True if writes are possible.
    fn writable(&self) -> bool;
    /// Where the bytes at `offset` are stored as they read, when they are: `(file, file offset,
    /// n)`, the `n` bytes from `offset` (`1 <= n <= len`) lying contiguous in `file`, so a reader
    /// can hand them on without reading them (`sendfile`). `None` when the range does not start
    /// with such bytes (a hole, an absent or zeroed grain, compressed data, an extent kind that
    /// does not say): the caller reads it with [`ReadAt::read_exact_at`]. The default says `None`.
    fn locate(&self, offset: u64, len: u64) -> Result<Option<(&dyn Backing, u64, u64)>> {
        let _ = (offset, len);
        Ok(None)
    }
    /// Writes `buf` at `offset`. `below` reads what lies under this extent (for partial grains).
    fn write_at(&self, buf: &[u8], offset: u64, below: Option<&dyn ReadAt<Error = Error>>) -> Result<()>;
    /// Appends the runs of `[offset, offset+len)` to `out` (which ends at `base + offset`), shifted
    /// by `base`, skipping what holds nothing in one step (a cost in proportion to runs and existing
    /// metadata, never to grains). May stop early, at a run boundary, once `out` holds `budget`
    /// runs or more; returns the extent offset reached (`offset + len` unless it stopped early,
    /// always more than `offset` for a non-empty range). See [`crate::map::MapSource`].
    fn map(&self, offset: u64, len: u64, base: u64, budget: usize, out: &mut AllocMap) -> Result<u64>;
    /// Called once before the first write after open: marks the extent dirty (unclean shutdown).
    fn begin_write(&self) -> Result<()> {
        Ok(())
    }
    /// Deallocates `[offset, offset+len)`, whose content the caller knows is zero (or wants zeroed).
    /// `has_parent` says whether a parent lies below (then a hole must still read as zeros, not as
    /// the parent). Extents free what their granularity allows (whole grains, file-system blocks) and
    /// write zeros where the range must read as zeros but cannot be freed. Returns bytes freed.
    fn discard(&self, offset: u64, len: u64, has_parent: bool) -> Result<u64> {
        let _ = (offset, len, has_parent);
        Ok(0)
    }
    /// Makes `[offset, offset+len)` read as zeros while keeping it stored (unlike
    /// [`Extent::discard`]). The default writes zeros through [`Extent::write_at`]; flat extents
    /// use their backing's zeroing primitive.
    fn zero_range(&self, offset: u64, len: u64, below: Option<&dyn ReadAt<Error = Error>>) -> Result<()> {
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; CHUNK.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = CHUNK.min(len - done);
            self.write_at(&zeros[..n as usize], offset + done, below)?;
            done += n;
        }
        Ok(())
    }
    /// Starts writing back what was written to `[offset, offset+len)` without waiting (a hint that
    /// lets the final flush overlap with copying). The default does nothing.
    fn start_writeback(&self, _offset: u64, _len: u64) {}
    /// Sends this extent's aligned data writes past the page cache from now on (a large copy into
    /// a flat extent); false where it cannot. The default cannot.
    fn enable_direct(&self) -> bool {
        false
    }
    /// Flushes written data and metadata to stable storage.
    fn flush(&self) -> Result<()>;
    /// Flushes and clears the unclean-shutdown mark set by [`Extent::begin_write`].
    fn close(&self) -> Result<()> {
        self.flush()
    }
    /// Writes what [`Extent::close`] writes (clears the unclean-shutdown mark) without flushing,
    /// for a new extent whose file is not in place yet: its file then holds its final bytes, to be
    /// read (hashed) while it is flushed, and the caller flushes it before it becomes visible.
    /// `close` has nothing left to write afterwards. The default writes nothing.
    fn seal(&self) -> Result<()> {
        Ok(())
    }
}

/// Bytes of a table (grain directory) that may be allocated from header fields whatever the file
/// holds: enough for every directory a real extent has (a 2 TiB COWD log: 4 MiB; a 64 TiB hosted
/// sparse disk: 8 MiB) even when copying left its all-zero pages as holes.
pub const UNBACKED_TABLE_BYTES: u64 = 16 << 20;

/// Bytes of data (not holes) the file holds, counted up to `enough` (the count stops there, so a
/// large well-filled file costs a few `SEEK_DATA` steps).
pub fn allocated_bytes(backing: &dyn Backing, enough: u64) -> Result<u64> {
    const WINDOW: u64 = 1 << 30;
    let len = backing.len()?;
    let mut total = 0u64;
    let mut pos = 0u64;
    while pos < len && total < enough {
        let n = WINDOW.min(len - pos);
        total += backing.data_runs(pos, n)?.iter().map(|r| r.1).sum::<u64>();
        pos += n;
    }
    Ok(total)
}

/// Checks that a table of `bytes` sized by the header field at byte `field_at` is no more than the
/// file really holds: its allocated data (not its apparent length, which a sparse file can make
/// anything) plus [`UNBACKED_TABLE_BYTES`]. Call before allocating the table. `what` names it.
pub fn check_table_bytes(backing: &dyn Backing, what: &str, bytes: u64, field_at: u64) -> Result<()> {
    if bytes <= UNBACKED_TABLE_BYTES {
        return Ok(());
    }
    let need = bytes - UNBACKED_TABLE_BYTES;
    let data = allocated_bytes(backing, need)?;
    if data >= need {
        return Ok(());
    }
    Err(Error::corrupt(
        backing.path(),
        field_at,
        format!(
            "{what} of {bytes} bytes is more than the file really holds ({data} bytes of data in {} bytes of apparent length)",
            backing.len()?
        ),
    ))
}

/// True when every byte of `buf` is zero. Fast: ORs 16 bytes at a time (vectorized).
pub fn is_zero(buf: &[u8]) -> bool {
    let (words, tail) = buf.as_chunks::<16>();
    tail.iter().all(|&b| b == 0) && words.iter().fold(0u128, |a, w| a | u128::from_ne_bytes(*w)) == 0
}

/// Splits `[offset, offset+len)` at multiples of `unit`, yielding `(start, len)` pieces.
pub fn pieces(offset: u64, len: u64, unit: u64) -> impl Iterator<Item = (u64, u64)> {
    let end = offset + len;
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let next = ((pos / unit) + 1).saturating_mul(unit).min(end);
        let p = (pos, next - pos);
        pos = next;
        Some(p)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_check() {
        let mut v = vec![0u8; 1000];
        assert!(is_zero(&v));
        assert!(is_zero(&v[3..997]));
        v[999] = 1;
        assert!(!is_zero(&v));
        v[999] = 0;
        v[500] = 1;
        assert!(!is_zero(&v[1..]));
    }

    #[test]
    fn piece_split() {
        let p: Vec<_> = pieces(100, 300, 128).collect();
        assert_eq!(p, vec![(100, 28), (128, 128), (256, 128), (384, 16)]);
    }
}
