//! `FLAT` and `VMFS` extents: raw bytes in a file or device, optionally at an offset.

use std::sync::Arc;

use super::{Extent, ExtentInfo, ExtentKind};
use crate::error::{Error, Result};
use crate::findings::Sink;
use crate::map::{AllocMap, State};
use crate::storage::Backing;
use rdm::ReadAt;

/// The first window of a map's `SEEK_DATA` walk; it doubles while windows hold at most
/// [`WINDOW_RUNS`] runs and halves (down to [`MIN_WINDOW`]) where they hold more.
const FIRST_WINDOW: u64 = 64 << 20;
const MIN_WINDOW: u64 = 1 << 20;
const WINDOW_RUNS: usize = 1024;

/// A flat extent: `len` bytes of `backing` starting at byte `start`.
#[derive(Debug)]
pub struct FlatExtent {
    backing: Arc<dyn Backing>,
    start: u64,
    len: u64,
    kind: ExtentKind,
    writable: bool,
    /// Bytes of the extent actually present in the file; the rest (at most one partial sector of a
    /// raw image whose length is not a multiple of 512) reads as zeros.
    present: u64,
}

impl FlatExtent {
    /// Opens a flat extent, checking that the file holds all of it.
    pub fn open(backing: Arc<dyn Backing>, start: u64, len: u64, kind: ExtentKind, writable: bool) -> Result<Self> {
        let file_len = backing.len()?;
        let need =
            start.checked_add(len).ok_or_else(|| Error::corrupt(backing.path(), start, "extent offset overflows"))?;
        if file_len < need {
            return Err(Error::corrupt(
                backing.path(),
                file_len,
                format!("{kind} extent is truncated: the descriptor maps {len} bytes at offset {start}, which needs {need} bytes, but the file has {file_len}"),
            ));
        }
        Ok(FlatExtent { backing, start, len, kind, writable, present: len })
    }

    /// A raw image file as a flat extent covering the whole file, rounded up to a sector.
    pub fn raw_image(backing: Arc<dyn Backing>, writable: bool) -> Result<Self> {
        let file_len = backing.len()?;
        let len = file_len.div_ceil(512) * 512;
        Ok(FlatExtent { backing, start: 0, len, kind: ExtentKind::Flat, writable, present: file_len })
    }

    /// Checks that the file still holds the extent's bytes up to extent offset `end` (a raw image's
    /// zero-padded last partial sector excepted): a file truncated after open is an error naming
    /// the file and the offset where it now ends, never zeros.
    fn check_present(&self, end: u64) -> Result<()> {
        let need = self.start + end.min(self.present);
        let file_len = self.backing.len()?;
        if file_len < need {
            return Err(Error::corrupt(
                self.backing.path(),
                file_len,
                format!(
                    "{} extent is truncated: its first {end} bytes (from byte {} of the file) need {need} bytes of the file, but the file now has {file_len}",
                    self.kind, self.start
                ),
            ));
        }
        Ok(())
    }

    /// The backing file.
    pub fn backing(&self) -> &Arc<dyn Backing> {
        &self.backing
    }

    /// Byte offset of the extent inside its file.
    pub fn start(&self) -> u64 {
        self.start
    }
}

/// `-x check` of a flat extent: its file holds the `len` bytes at byte `start` the descriptor maps
/// (the reader's rule: [`FlatExtent::open`]).
pub fn check(backing: Arc<dyn Backing>, start: u64, len: u64, kind: ExtentKind, sink: &mut Sink) -> Result<()> {
    sink.result(FlatExtent::open(backing, start, len, kind, false))?;
    Ok(())
}

impl ReadAt for FlatExtent {
    type Error = Error;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset + buf.len() as u64;
        if end <= self.present {
            return self.backing.read_exact_at(buf, self.start + offset);
        }
        let have = self.present.saturating_sub(offset).min(buf.len() as u64) as usize;
        self.backing.read_exact_at(&mut buf[..have], self.start + offset)?;
        buf[have..].fill(0);
        Ok(())
    }
}

impl Extent for FlatExtent {
    fn len(&self) -> u64 {
        self.len
    }
    fn info(&self) -> ExtentInfo {
        ExtentInfo {
            kind: self.kind,
            file: Some(self.backing.path().to_path_buf()),
            len: self.len,
            grain: None,
            version: None,
            unclean: false,
        }
    }
    fn writable(&self) -> bool {
        self.writable
    }
    fn locate(&self, offset: u64, len: u64) -> Result<Option<(&dyn Backing, u64, u64)>> {
        if offset >= self.present || len == 0 {
            return Ok(None);
        }
        Ok(Some((&*self.backing, self.start + offset, len.min(self.present - offset))))
    }
    fn write_at(&self, buf: &[u8], offset: u64, _below: Option<&dyn ReadAt<Error = Error>>) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly { path: self.backing.path().into(), what: "extent is read-only".into() });
        }
        self.backing.write_all_at(buf, self.start + offset)
    }
    fn map(&self, offset: u64, len: u64, base: u64, budget: usize, out: &mut AllocMap) -> Result<u64> {
        // The file's data runs, asked for in windows that grow while they hold few runs (a hole of
        // any size costs a few seeks) and shrink where they hold many (memory stays bounded).
        let end = offset + len;
        let mut pos = offset;
        let mut window = FIRST_WINDOW;
        while pos < end {
            let wend = end.min(pos.saturating_add(window));
            let runs = self.backing.data_runs(self.start + pos, wend - pos)?;
            let found = runs.len();
            let mut at = pos;
            for (s, l) in runs {
                let s = (s - self.start.min(s)).clamp(at, wend);
                let e = (s + l).min(wend);
                out.push(base + at, s - at, State::Zero, 0);
                out.push(base + s, e - s, State::Data, 0);
                at = e.max(at);
            }
            out.push(base + at, wend - at, State::Zero, 0);
            pos = wend;
            if out.runs().len() >= budget {
                break;
            }
            window = if found > WINDOW_RUNS { (window / 2).max(MIN_WINDOW) } else { window.saturating_mul(2) };
        }
        // Past the end of the file there is no hole but missing data: SEEK_DATA cannot tell them
        // apart, so the length (read after the runs, to catch a truncation while seeking) must cover
        // what was mapped, or it would read as zeros.
        self.check_present(pos)?;
        Ok(pos)
    }
    fn zero_range(&self, offset: u64, len: u64, _below: Option<&dyn ReadAt<Error = Error>>) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly { path: self.backing.path().into(), what: "extent is read-only".into() });
        }
        self.backing.zero_range(self.start + offset, len)
    }
    fn discard(&self, offset: u64, len: u64, _has_parent: bool) -> Result<u64> {
        if !self.writable {
            return Err(Error::ReadOnly { path: self.backing.path().into(), what: "extent is read-only".into() });
        }
        let before: u64 = self.backing.data_runs(self.start + offset, len)?.iter().map(|r| r.1).sum();
        self.backing.punch_hole(self.start + offset, len)?;
        let after: u64 = self.backing.data_runs(self.start + offset, len)?.iter().map(|r| r.1).sum();
        Ok(before.saturating_sub(after))
    }
    fn start_writeback(&self, offset: u64, len: u64) {
        if self.writable {
            self.backing.start_writeback(self.start + offset, len);
        }
    }
    fn enable_direct(&self) -> bool {
        self.writable && self.backing.enable_direct()
    }
    fn flush(&self) -> Result<()> {
        if self.writable {
            self.backing.sync()?;
        }
        Ok(())
    }
}
