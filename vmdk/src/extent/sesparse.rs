//! seSparse extents (ESXi 6.5+ space-efficient deltas), read.
//!
//! The format is undocumented; the facts come from qemu's reverse engineering (see the fact sheet):
//! a constant header of u64 fields, a volatile header whose `replay_journal` marks a dirty file, a
//! grain directory of u64 entries naming grain tables by index, and u64 grain table entries whose
//! top nibble is the state (0 unallocated, 1 unmapped, 2 zero, 3 allocated).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian as LE};

use super::gtcache::{self, GtCache, Table};
use super::sparse::Grain;
use super::{Extent, ExtentInfo, ExtentKind};
use crate::error::{Error, Result};
use crate::findings::Sink;
use crate::map::AllocMap;
use crate::storage::Backing;
use rdm::ReadAt;

/// Constant-header magic.
pub const MAGIC: u64 = 0xCAFE_BABE;
/// Volatile-header magic.
pub const VOLATILE_MAGIC: u64 = 0xCAFE_CAFE;
/// The only version seen ("2.1").
pub const VERSION: u64 = 0x0000_0002_0000_0001;
/// Grain size in sectors (the only one seen).
pub const GRAIN_SECTORS: u64 = 8;
/// Grain table size in sectors (4096 entries).
pub const GT_SECTORS: u64 = 64;

/// The fields of the constant header we use (offsets and sizes in sectors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeSparseHeader {
    /// Capacity in sectors.
    pub capacity: u64,
    /// Volatile header sector.
    pub volatile_offset: u64,
    /// Grain directory sector and size.
    pub gd_offset: u64,
    /// Grain directory size in sectors.
    pub gd_size: u64,
    /// First grain table sector.
    pub gt_offset: u64,
    /// Grain tables area size in sectors.
    pub gt_size: u64,
    /// First grain sector.
    pub grains_offset: u64,
    /// Grains area size in sectors.
    pub grains_size: u64,
}

impl SeSparseHeader {
    /// Parses and validates the constant header.
    pub fn parse(b: &[u8; 512], path: &Path) -> Result<SeSparseHeader> {
        let f = |off: usize| LE::read_u64(&b[off..]);
        let bad = |off: u64, what: String| Error::corrupt(path, off, what);
        if f(0) != MAGIC {
            return Err(bad(0, format!("expected seSparse magic CAFEBABE, found {:#x}", f(0))));
        }
        if f(8) != VERSION {
            return Err(bad(8, format!("seSparse version {:#x} is not supported (expected 2.1)", f(8))));
        }
        if f(24) != GRAIN_SECTORS {
            return Err(bad(24, format!("grain size {} sectors is not supported (expected 8)", f(24))));
        }
        if f(32) != GT_SECTORS {
            return Err(bad(32, format!("grain table size {} sectors is not supported (expected 64)", f(32))));
        }
        let h = SeSparseHeader {
            capacity: f(16),
            volatile_offset: f(80),
            gd_offset: f(128),
            gd_size: f(136),
            gt_offset: f(144),
            gt_size: f(152),
            grains_offset: f(192),
            grains_size: f(200),
        };
        if h.capacity > crate::descriptor::MAX_SECTORS {
            return Err(bad(16, format!("capacity {} sectors is too large", h.capacity)));
        }
        Ok(h)
    }
}

/// An seSparse extent.
#[derive(Debug)]
pub struct SeSparseExtent {
    backing: Arc<dyn Backing>,
    header: SeSparseHeader,
    gd: Vec<u64>,
    len: u64,
    file_len: u64,
    owner: u64,
    cache: Arc<GtCache>,
}

impl SeSparseExtent {
    /// Opens an seSparse extent.
    pub fn open(backing: Arc<dyn Backing>, len: Option<u64>, cache: Arc<GtCache>) -> Result<SeSparseExtent> {
        let path = backing.path().to_path_buf();
        let file_len = backing.len()?;
        let mut b = [0u8; 512];
        backing.read_exact_at(&mut b, 0)?;
        let header = SeSparseHeader::parse(&b, &path)?;
        let mut v = [0u8; 512];
        let vat = header
            .volatile_offset
            .checked_mul(512)
            .filter(|a| a.checked_add(512).is_some_and(|e| e <= file_len))
            .ok_or_else(|| {
                Error::corrupt(
                    &path,
                    80,
                    format!("volatile header at sector {} is outside the file", header.volatile_offset),
                )
            })?;
        backing.read_exact_at(&mut v, vat)?;
        if LE::read_u64(&v) != VOLATILE_MAGIC {
            return Err(Error::corrupt(&path, vat, "expected volatile header magic CAFECAFE"));
        }
        if LE::read_u64(&v[24..]) != 0 {
            return Err(Error::unsupported(
                &path,
                "the seSparse journal needs replaying (the file was not closed cleanly)",
            ));
        }
        let capacity = header.capacity * 512;
        let len = len.unwrap_or(capacity);
        if len > capacity {
            return Err(Error::corrupt(
                &path,
                16,
                format!("capacity is {capacity} bytes but the descriptor maps {len}"),
            ));
        }
        // One directory entry per grain table; each table covers 4096 grains.
        let needed = header.capacity.div_ceil(GRAIN_SECTORS * 4096);
        let avail = header.gd_size.saturating_mul(512) / 8;
        if needed > avail {
            return Err(Error::corrupt(
                &path,
                136,
                format!("grain directory of {avail} entries is too small for {needed} tables"),
            ));
        }
        let gd_at = header
            .gd_offset
            .checked_mul(512)
            .filter(|a| a.checked_add(needed * 8).is_some_and(|e| e <= file_len))
            .ok_or_else(|| {
                Error::corrupt(
                    &path,
                    128,
                    format!("grain directory at sector {} lies outside the file ({file_len} bytes)", header.gd_offset),
                )
            })?;
        super::check_table_bytes(&*backing, "grain directory", needed * 8, 128)?;
        let mut raw = vec![0u8; (needed * 8) as usize];
        backing.read_exact_at(&mut raw, gd_at)?;
        let gd: Vec<u64> = raw.chunks_exact(8).map(LE::read_u64).collect();
        let max_tables = header.gt_size / GT_SECTORS;
        for (i, &e) in gd.iter().enumerate() {
            if e == 0 {
                continue;
            }
            let idx = e & 0xffff_ffff;
            if e >> 32 != 0x1000_0000
                || idx >= max_tables
                || header
                    .gt_offset
                    .checked_add((idx + 1) * GT_SECTORS)
                    .and_then(|end| end.checked_mul(512))
                    .is_none_or(|end| end > file_len)
            {
                return Err(Error::corrupt(
                    &path,
                    gd_at + i as u64 * 8,
                    format!("grain directory entry {i} ({e:#x}) names no grain table inside the file"),
                ));
            }
        }
        Ok(SeSparseExtent { backing, header, gd, len, file_len, owner: gtcache::new_owner(), cache })
    }

    /// Table `gt` (`None` when its directory entry is 0 or past the directory) and its sector.
    fn table(&self, gt: u64) -> Result<Option<(Table, u64)>> {
        let e = self.gd.get(gt as usize).copied().unwrap_or(0);
        if e == 0 {
            return Ok(None);
        }
        let table_sector = self.header.gt_offset + (e & 0xffff_ffff) * GT_SECTORS;
        let t = self.cache.get(self.owner, gt, || {
            let mut raw = vec![0u8; (GT_SECTORS * 512) as usize];
            self.backing.read_exact_at(&mut raw, table_sector * 512)?;
            Ok(raw.chunks_exact(8).map(LE::read_u64).collect())
        })?;
        Ok(Some((t, table_sector)))
    }

    /// What grain `g`'s entry says (absent when its table is).
    fn grain(&self, g: u64) -> Result<Grain> {
        match self.table(g / 4096)? {
            None => Ok(Grain::Absent),
            Some((t, sector)) => {
                let idx = g % 4096;
                self.classify(g, t[idx as usize].load(Ordering::Acquire), sector * 512 + idx * 8)
            }
        }
    }

    /// What entry `v` of grain `g` (stored at byte `at`) says.
    fn classify(&self, g: u64, v: u64, at: u64) -> Result<Grain> {
        let path = self.backing.path();
        match v >> 60 {
            0 if v == 0 => Ok(Grain::Absent),
            0 => Err(Error::corrupt(path, at, format!("unallocated grain table entry {v:#x} has stray bits"))),
            1 | 2 => Ok(Grain::Zero),
            3 => {
                let index = ((v >> 48) & 0xfff) | ((v & 0xffff_ffff_ffff) << 12);
                if index >= self.header.grains_size / GRAIN_SECTORS {
                    return Err(Error::corrupt(path, at, format!("grain index {index} is outside the grains area")));
                }
                let end = self.header.grains_offset.checked_add((index + 1) * GRAIN_SECTORS);
                let sector = self.header.grains_offset.wrapping_add(index * GRAIN_SECTORS);
                if end.and_then(|e| e.checked_mul(512)).is_none_or(|e| e > self.file_len) {
                    return Err(Error::corrupt(
                        path,
                        at,
                        format!("grain {g} at sector {sector} lies past the end of the file ({} bytes)", self.file_len),
                    ));
                }
                Ok(Grain::At(sector))
            }
            n => Err(Error::corrupt(path, at, format!("grain table entry {v:#x} has unknown type {n}"))),
        }
    }

    /// Walks `[offset, offset+len)` in pieces, calling `f(piece_offset, piece_len, grain)`: an
    /// allocated grain is one piece; absent and zero grains come in stretches as long as they run
    /// (directory entries of 0 are skipped unread, however many). Stops when `f` returns `false`,
    /// returning the offset reached.
    fn walk(&self, offset: u64, len: u64, mut f: impl FnMut(u64, u64, Grain) -> Result<bool>) -> Result<u64> {
        let gb = GRAIN_SECTORS * 512;
        let end = offset + len;
        let (first, last) = (offset / gb, end.div_ceil(gb));
        let piece = |from: u64, to: u64| (from.saturating_mul(gb).max(offset), to.saturating_mul(gb).min(end));
        // Absent or zero grains from `.0` on, not yet passed on.
        let mut stretch: Option<(u64, Grain)> = None;
        let mut cur: Option<(u64, Option<(Table, u64)>)> = None;
        let mut g = first;
        while g < last {
            let gt = g / 4096;
            if cur.as_ref().is_none_or(|c| c.0 != gt) {
                cur = Some((gt, self.table(gt)?));
            }
            let (to, grain) = match cur.as_ref().and_then(|c| c.1.as_ref()) {
                None => {
                    // Jump to the next table the directory names.
                    let limit = (last.div_ceil(4096) as usize).min(self.gd.len());
                    let from = ((gt + 1) as usize).min(limit);
                    let next = self.gd[from..limit].iter().position(|&e| e != 0).map(|i| (from + i) as u64 * 4096);
                    (next.unwrap_or(last).clamp(((gt + 1) * 4096).min(last), last), Grain::Absent)
                }
                Some((t, sector)) => {
                    let v = t[(g % 4096) as usize].load(Ordering::Acquire);
                    (g + 1, self.classify(g, v, sector * 512 + (g % 4096) * 8)?)
                }
            };
            if let Some((from, s)) = stretch {
                if s == grain {
                    g = to;
                    continue;
                }
                let (ps, pe) = piece(from, g);
                if !f(ps, pe - ps, s)? {
                    return Ok(pe);
                }
                stretch = None;
            }
            match grain {
                Grain::At(_) => {
                    let (ps, pe) = piece(g, to);
                    if !f(ps, pe - ps, grain)? {
                        return Ok(pe);
                    }
                }
                _ => stretch = Some((g, grain)),
            }
            g = to;
        }
        if let Some((from, s)) = stretch {
            let (ps, pe) = piece(from, last);
            f(ps, pe - ps, s)?;
        }
        Ok(end)
    }
}

/// `-x check` of an seSparse extent: opened by its reader ([`SeSparseExtent::open`]: headers,
/// journal, directory), then every entry of every table by the reader's rule, each table and each
/// grain used once.
pub fn check(backing: Arc<dyn Backing>, len: Option<u64>, sink: &mut Sink) -> Result<()> {
    let Some(ext) = sink.result(SeSparseExtent::open(backing, len, Arc::new(GtCache::default())))? else {
        return Ok(());
    };
    ext.check_tables(sink)
}

impl SeSparseExtent {
    /// Every table the directory names (once) and every entry in it.
    fn check_tables(&self, sink: &mut Sink) -> Result<()> {
        let path = self.backing.path();
        let gd_at = self.header.gd_offset * 512;
        let mut tables: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
        let mut used: Vec<u64> = Vec::new();
        let mut walked: Vec<usize> = Vec::new();
        for (i, &e) in self.gd.iter().enumerate() {
            if e == 0 {
                continue;
            }
            let idx = e & 0xffff_ffff;
            if let Some(k) = tables.insert(idx, i) {
                sink.problem(
                    path,
                    gd_at + i as u64 * 8,
                    format!("grain directory entries {k} and {i} both name grain table {idx}: a table may be used only once"),
                );
                continue;
            }
            walked.push(i);
            for g in i as u64 * 4096..(i as u64 + 1) * 4096 {
                match self.grain(g) {
                    Ok(Grain::At(s)) => used.push(s),
                    Ok(_) => {}
                    Err(e) => {
                        sink.error(e)?;
                    }
                }
            }
        }
        used.sort_unstable();
        let twice: std::collections::HashSet<u64> = used.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]).collect();
        if twice.is_empty() {
            return Ok(());
        }
        let mut first: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
        for i in walked {
            let table = self.header.gt_offset + (self.gd[i] & 0xffff_ffff) * GT_SECTORS;
            for g in i as u64 * 4096..(i as u64 + 1) * 4096 {
                if let Ok(Grain::At(s)) = self.grain(g) {
                    if twice.contains(&s) {
                        if let Some(&h) = first.get(&s) {
                            sink.problem(
                                path,
                                table * 512 + (g % 4096) * 8,
                                format!("grains {h} and {g} both point to the grain at sector {s}: a grain may be used only once"),
                            );
                        } else {
                            first.insert(s, g);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for SeSparseExtent {
    fn drop(&mut self) {
        self.cache.forget(self.owner);
    }
}

impl ReadAt for SeSparseExtent {
    type Error = Error;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let gb = GRAIN_SECTORS * 512;
        self.walk(offset, buf.len() as u64, |p, l, g| {
            let dst = &mut buf[(p - offset) as usize..(p - offset + l) as usize];
            match g {
                Grain::At(s) => self.backing.read_exact_at(dst, s * 512 + p % gb)?,
                _ => dst.fill(0),
            }
            Ok(true)
        })?;
        Ok(())
    }
}

impl Extent for SeSparseExtent {
    fn len(&self) -> u64 {
        self.len
    }
    fn info(&self) -> ExtentInfo {
        ExtentInfo {
            kind: ExtentKind::SeSparse,
            file: Some(self.backing.path().to_path_buf()),
            len: self.len,
            grain: Some(GRAIN_SECTORS * 512),
            version: Some(2),
            unclean: false,
        }
    }
    fn writable(&self) -> bool {
        false
    }
    fn write_at(&self, _buf: &[u8], _offset: u64, _below: Option<&dyn ReadAt<Error = Error>>) -> Result<()> {
        Err(Error::unsupported(self.backing.path(), "writing seSparse extents"))
    }
    fn map(&self, offset: u64, len: u64, base: u64, budget: usize, out: &mut AllocMap) -> Result<u64> {
        self.walk(offset, len, |p, l, g| {
            out.push(base + p, l, g.state(), 0);
            Ok(out.runs().len() < budget)
        })
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
