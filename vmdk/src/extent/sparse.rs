//! Grain-table extents: hosted sparse (`KDMV`, versions 1–3: grain directory, grain tables,
//! redundant copies, zeroed-grain entries) and ESX COWD (vmfsSparse redo logs: one directory, grain
//! tables allocated on first write). Both share one reader and one grain allocator; what differs
//! (header, where the unclean flag lives, whether tables can be added) is in [`Meta`].

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use byteorder::{ByteOrder, LittleEndian as LE};

use super::cowd::CowdHeader;
use super::gtcache::{self, GtCache, Table};
use super::kdmv::{SparseHeader, FLAG_COMPRESSED, FLAG_RGD, FLAG_ZEROED_GTE, GD_AT_END};
use super::{is_zero, pieces, Extent, ExtentInfo, ExtentKind};
use crate::error::{Error, Result};
use crate::map::{AllocMap, State};
use crate::storage::Backing;
use rdm::ReadAt;

/// Bytes of a file whose data runs [`GrainDir::skip_unwritten_tables`] asks for at a time.
pub const TABLE_WINDOW: u64 = 64 << 20;

/// For each table at `sectors[k]` (0: no table) of `gt_bytes` bytes, whether it lies wholly in a
/// hole of the file, so it reads as zeros (all its grains unallocated) and walks may skip it
/// unread. Asks the file for its data runs in windows of [`TABLE_WINDOW`] bytes from each table not
/// covered yet (a few calls for tables laid out back to back). A table reaching past the end of the
/// file is not in a hole but missing (reading it reports the truncation). None where the file
/// cannot say (an error, no `SEEK_DATA`): then every table counts as written.
pub fn tables_in_holes(backing: &dyn Backing, sectors: &[u64], gt_bytes: u64) -> Option<Vec<bool>> {
    let file_len = backing.len().ok()?;
    // The file's data runs over `[start, end)`.
    let mut window: (u64, u64, Vec<(u64, u64)>) = (0, 0, Vec::new());
    let mut out = vec![false; sectors.len()];
    for (k, &sector) in sectors.iter().enumerate() {
        if sector == 0 {
            continue;
        }
        let (start, end) = (sector * 512, sector * 512 + gt_bytes);
        if !(window.0 <= start && end <= window.1) {
            let we = start.saturating_add(TABLE_WINDOW.max(gt_bytes));
            window = (start, we, backing.data_runs(start, we - start).ok()?);
        }
        let runs = &window.2;
        let first = runs.partition_point(|&(s, l)| s + l <= start);
        out[k] = end <= file_len && runs.get(first).is_none_or(|&(s, _)| s >= end);
    }
    Some(out)
}

/// A grain directory with 32-bit entries and its tables, read through a shared [`GtCache`].
/// Used by hosted sparse, streamOptimized and COWD extents.
#[derive(Debug)]
pub struct GrainDir {
    backing: Arc<dyn Backing>,
    /// Sector offsets of the grain tables (0 = none); atomics so a COWD extent can add tables.
    gd: Box<[AtomicU32]>,
    /// One bit per table: set when the table may hold entries (its directory entry is not 0, and
    /// it was not found unwritten, see [`GrainDir::skip_unwritten_tables`]). Walks jump over clear
    /// bits without reading anything, 64 tables per word.
    held: Box<[AtomicU64]>,
    /// The redundant directory, when present.
    rgd: Option<Vec<u32>>,
    /// Entries per grain table.
    gtes: u32,
    owner: u64,
    cache: Arc<GtCache>,
    /// Tables at or after this sector must follow a grain table marker (streamOptimized files,
    /// whose tables after overHead are inline records); `None` for other extents.
    inline_from: Option<u64>,
}

impl GrainDir {
    /// Where a directory of `count` entries at sector `offset` lies: `(byte start, byte length)`,
    /// after checking that it lies inside the file of `file_len` bytes and is no larger than the
    /// file really holds ([`super::check_table_bytes`]). `what` names the directory in errors;
    /// `field_at` is the byte offset of the header field holding `offset`, which an error about a
    /// directory outside the file points at.
    pub fn directory_bytes(
        backing: &Arc<dyn Backing>,
        offset: u64,
        count: u64,
        file_len: u64,
        what: &str,
        field_at: u64,
    ) -> Result<(u64, u64)> {
        let path = backing.path();
        let start = offset.checked_mul(512).filter(|s| *s < file_len);
        let bytes = count.checked_mul(4);
        let (Some(start), Some(bytes)) = (start, bytes) else {
            return Err(Error::corrupt(
                path,
                field_at,
                format!("{what} at sector {offset} ({count} entries) lies outside the file of {file_len} bytes"),
            ));
        };
        if start + bytes > file_len {
            return Err(Error::corrupt(
                path,
                start,
                format!("{what} of {count} entries runs past the end of the file ({file_len} bytes)"),
            ));
        }
        super::check_table_bytes(&**backing, &format!("{what} ({count} entries)"), bytes, field_at)?;
        Ok((start, bytes))
    }

    /// Checks entry `i` of a directory (`e`, found at byte `at` of `path`): 0 (no table), or a
    /// table of `gtes` entries that lies inside the file of `file_len` bytes (sector 1 is never a
    /// table: it would overlap the header).
    pub fn check_directory_entry(
        path: &Path,
        what: &str,
        i: usize,
        e: u32,
        at: u64,
        gtes: u32,
        file_len: u64,
    ) -> Result<()> {
        if e != 0 && (e as u64 * 512 + gtes as u64 * 4 > file_len || e == 1) {
            return Err(Error::corrupt(
                path,
                at,
                format!("{what} entry {i} points to a grain table at sector {e}, outside the file ({file_len} bytes)"),
            ));
        }
        Ok(())
    }

    /// Reads `count` directory entries at sector `offset`, checking that the directory and every
    /// table it names lie inside the file (so no header field can make us read or allocate more than
    /// the file holds): [`GrainDir::directory_bytes`], then [`GrainDir::check_directory_entry`] on
    /// every entry.
    pub fn read_directory(
        backing: &Arc<dyn Backing>,
        offset: u64,
        count: u64,
        gtes: u32,
        file_len: u64,
        what: &str,
        field_at: u64,
    ) -> Result<Vec<u32>> {
        let (start, bytes) = GrainDir::directory_bytes(backing, offset, count, file_len, what, field_at)?;
        let mut raw = vec![0u8; bytes as usize];
        backing.read_exact_at(&mut raw, start)?;
        let gd: Vec<u32> = raw.chunks_exact(4).map(LE::read_u32).collect();
        for (i, &e) in gd.iter().enumerate() {
            GrainDir::check_directory_entry(backing.path(), what, i, e, start + i as u64 * 4, gtes, file_len)?;
        }
        Ok(gd)
    }

    /// A directory over already-validated entries.
    pub fn new(
        backing: Arc<dyn Backing>,
        gd: Vec<u32>,
        rgd: Option<Vec<u32>>,
        gtes: u32,
        cache: Arc<GtCache>,
    ) -> GrainDir {
        let held = (0..gd.len().div_ceil(64))
            .map(|w| {
                let bits = gd[w * 64..gd.len().min(w * 64 + 64)].iter().enumerate().filter(|(_, &e)| e != 0);
                AtomicU64::new(bits.fold(0, |acc, (i, _)| acc | 1 << i))
            })
            .collect();
        GrainDir {
            backing,
            held,
            gd: gd.into_iter().map(AtomicU32::new).collect(),
            rgd,
            gtes,
            owner: gtcache::new_owner(),
            cache,
            inline_from: None,
        }
    }

    /// Requires every table at or after sector `from` to follow a grain table marker whose length
    /// is one table (the inline tables of a streamOptimized file; see
    /// [`super::stream::layout::StreamModel::check_marker`], [`super::kdmv::check_table_marker`]).
    pub fn with_inline_tables(mut self, from: u64) -> GrainDir {
        self.inline_from = Some(from);
        self
    }

    /// Counts tables lying wholly in holes of the file as empty, so walks skip them unread: a table
    /// never written reads as zeros (hosted sparse files whose creator left the tables unwritten,
    /// as vmkfs does). Asks the file for its data runs in windows of [`TABLE_WINDOW`] bytes from
    /// each table not covered yet (a few calls for tables laid out back to back); where the file
    /// cannot say (an error, no `SEEK_DATA`), every table counts as written.
    pub fn skip_unwritten_tables(self) -> GrainDir {
        let sectors: Vec<u64> = (0..self.gd.len() as u64).map(|gt| self.sector_of_table(gt) as u64).collect();
        let Some(unwritten) = tables_in_holes(&*self.backing, &sectors, self.gtes as u64 * 4) else {
            return self;
        };
        for (gt, _) in unwritten.iter().enumerate().filter(|(_, &u)| u) {
            self.held[gt / 64].fetch_and(!(1 << (gt % 64)), Ordering::AcqRel);
        }
        self
    }

    /// True when table `gt` may hold entries (see [`GrainDir::skip_unwritten_tables`]).
    pub fn may_hold(&self, gt: u64) -> bool {
        self.held.get((gt / 64) as usize).is_some_and(|w| w.load(Ordering::Acquire) & (1 << (gt % 64)) != 0)
    }

    /// Records that table `gt` may now hold entries: every change of a table's entries other than
    /// through [`GrainDir::write_entries`] or [`GrainDir::set_table`] (which record it themselves)
    /// must be announced here, or walks may skip the table.
    pub fn mark_written(&self, gt: u64) {
        if let Some(w) = self.held.get((gt / 64) as usize) {
            w.fetch_or(1 << (gt % 64), Ordering::AcqRel);
        }
    }

    /// The first table from `from` (below `limit`) that may hold entries.
    fn next_held(&self, from: u64, limit: u64) -> Option<u64> {
        let limit = limit.min(self.gd.len() as u64);
        let mut gt = from;
        while gt < limit {
            let word = self.held[(gt / 64) as usize].load(Ordering::Acquire) >> (gt % 64);
            if word != 0 {
                let found = gt + word.trailing_zeros() as u64;
                return (found < limit).then_some(found);
            }
            gt = (gt / 64 + 1) * 64;
        }
        None
    }

    /// Walks the entries of grains `[first, end)` in order, calling `f(grain, count, entry)`: for
    /// grains no table holds, and for runs of 0 entries, one call for the whole stretch (`entry` 0)
    /// however many tables it spans, and one call per grain with any other entry. Tables that may
    /// hold nothing are skipped unread. Stops when `f` returns `false`, returning the grain it
    /// reached (`end` otherwise).
    pub fn walk_grains(&self, first: u64, end: u64, mut f: impl FnMut(u64, u64, u64) -> Result<bool>) -> Result<u64> {
        let gtes = self.gtes as u64;
        let mut g = first;
        while g < end {
            let gt = g / gtes;
            let table_end = gt.saturating_add(1).saturating_mul(gtes).min(end);
            let table = if self.may_hold(gt) { self.table(gt)? } else { None };
            let Some(t) = table else {
                let next = self.next_held(gt + 1, end.div_ceil(gtes)).map_or(end, |n| n * gtes).clamp(table_end, end);
                if !f(g, next - g, 0)? {
                    return Ok(next);
                }
                g = next;
                continue;
            };
            let mut zeros_from = None;
            while g < table_end {
                let v = t[(g % gtes) as usize].load(Ordering::Acquire);
                if v == 0 {
                    zeros_from.get_or_insert(g);
                } else {
                    if let Some(z) = zeros_from.take() {
                        if !f(z, g - z, 0)? {
                            return Ok(g);
                        }
                    }
                    if !f(g, 1, v)? {
                        return Ok(g + 1);
                    }
                }
                g += 1;
            }
            if let Some(z) = zeros_from {
                if !f(z, g - z, 0)? {
                    return Ok(g);
                }
            }
        }
        Ok(end)
    }

    /// The file holding the directory.
    pub fn backing(&self) -> &Arc<dyn Backing> {
        &self.backing
    }

    /// Entries per table.
    pub fn gtes(&self) -> u32 {
        self.gtes
    }

    /// The primary directory.
    pub fn entries(&self) -> Vec<u32> {
        self.gd.iter().map(|e| e.load(Ordering::Acquire)).collect()
    }

    fn sector_of_table(&self, gt: u64) -> u32 {
        self.gd.get(gt as usize).map(|e| e.load(Ordering::Acquire)).unwrap_or(0)
    }

    /// Points directory entry `gt` at a new (zeroed) table at `sector`, writing the entry of the
    /// directory at sector `dir_sector`. Used by COWD, whose tables are allocated on first write.
    pub fn set_table(&self, gt: u64, sector: u32, dir_sector: u64) -> Result<()> {
        self.backing.write_all_at(&sector.to_le_bytes(), dir_sector * 512 + gt * 4)?;
        if let Some(e) = self.gd.get(gt as usize) {
            e.store(sector, Ordering::Release);
        }
        self.mark_written(gt);
        Ok(())
    }

    /// The redundant directory.
    pub fn redundant(&self) -> Option<&[u32]> {
        self.rgd.as_deref()
    }

    /// Table `gt` (None when its directory entry is 0 or past the directory).
    pub fn table(&self, gt: u64) -> Result<Option<Table>> {
        let sector = self.sector_of_table(gt);
        if sector == 0 {
            return Ok(None);
        }
        let t = self.cache.get(self.owner, gt, || self.read_table(sector as u64))?;
        Ok(Some(t))
    }

    /// Reads a table from disk (no cache).
    pub fn read_table(&self, sector: u64) -> Result<Vec<u64>> {
        let gt_bytes = self.gtes as usize * 4;
        let inline = self.inline_from.is_some_and(|from| sector >= from);
        let marker = if inline { 512 } else { 0 };
        let mut raw = vec![0u8; marker + gt_bytes];
        self.backing.read_exact_at(&mut raw, sector * 512 - marker as u64)?;
        if inline {
            let at = (sector - 1) * 512;
            super::kdmv::check_table_marker(self.backing.path(), &raw[..512], at, self.gtes)?;
        }
        Ok(raw[marker..].chunks_exact(4).map(|c| LE::read_u32(c) as u64).collect())
    }

    /// Byte offset in the file of entry `idx` of table `gt` (primary copy).
    pub fn entry_offset(&self, gt: u64, idx: u64) -> u64 {
        self.sector_of_table(gt) as u64 * 512 + idx * 4
    }

    /// Writes entries `first..` of table `gt` in both copies and updates the cache: the primary
    /// table first, then the redundant one (the order [`heal_redundant`] relies on).
    pub fn write_entries(&self, gt: u64, first: u64, values: &[u64]) -> Result<()> {
        let mut raw = vec![0u8; values.len() * 4];
        for (c, v) in raw.chunks_exact_mut(4).zip(values) {
            LE::write_u32(c, *v as u32);
        }
        let primary = self.sector_of_table(gt) as u64;
        let redundant = self.rgd.as_ref().and_then(|r| r.get(gt as usize)).copied().unwrap_or(0) as u64;
        self.mark_written(gt);
        self.cache.update(self.owner, gt, first as usize, values, || {
            self.backing.write_all_at(&raw, primary * 512 + first * 4)?;
            if redundant != 0 {
                self.backing.write_all_at(&raw, redundant * 512 + first * 4)?;
            }
            Ok(())
        })
    }
}

impl Drop for GrainDir {
    fn drop(&mut self) {
        self.cache.forget(self.owner);
    }
}

/// What a grain table entry means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grain {
    /// 0: not here (read the parent, or zeros).
    Absent,
    /// A zeroed grain (entry 1 where that means zeros): reads as zeros, hiding the parent.
    Zero,
    /// The grain's data starts at this sector.
    At(u64),
}

impl Grain {
    /// The allocation-map state of a grain's range.
    pub fn state(self) -> State {
        match self {
            Grain::At(_) => State::Data,
            Grain::Zero => State::Zero,
            Grain::Absent => State::Absent,
        }
    }
}

/// The reader's rule for a grain table entry of an extent: 0 is absent, 1 a zeroed grain where
/// `one_is_zero`, anything else a grain that must lie inside the file and past the metadata. The
/// reader applies it to every entry it uses; `-x check`, repair and the self-heal apply it to every
/// entry there is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRule {
    /// Sectors per grain.
    pub grain_sectors: u64,
    /// First sector a grain may occupy.
    pub overhead: u64,
    /// True when entry 1 reads as a zeroed grain.
    pub one_is_zero: bool,
    /// Length of the extent's file.
    pub file_len: u64,
}

impl EntryRule {
    /// What entry `gte` (of grain `grain`, found at byte `at` of `path`) means, or the error the
    /// reader gives for it. `what` names the entry in that error (`grain table entry`, `redundant
    /// grain table entry`).
    pub fn classify(&self, path: &Path, what: &str, gte: u64, grain: u64, at: u64) -> Result<Grain> {
        match gte {
            0 => Ok(Grain::Absent),
            1 if self.one_is_zero => Ok(Grain::Zero),
            _ => {
                if gte.saturating_add(self.grain_sectors).saturating_mul(512) > self.file_len {
                    return Err(Error::corrupt(
                        path,
                        at,
                        format!(
                            "{what} for grain {grain} points to sector {gte}, past the end of the file ({} bytes)",
                            self.file_len
                        ),
                    ));
                }
                if gte < self.overhead {
                    return Err(Error::corrupt(
                        path,
                        at,
                        format!(
                            "{what} for grain {grain} points to sector {gte}, inside the metadata (first grain sector is {})",
                            self.overhead
                        ),
                    ));
                }
                Ok(Grain::At(gte))
            }
        }
    }

    /// True when the reader accepts entry `gte`.
    pub fn accepts(&self, gte: u64) -> bool {
        self.classify(Path::new(""), "", gte, 0, 0).is_ok()
    }
}

/// The self-heal of a hosted sparse extent opened for writing with its unclean-shutdown flag set:
/// makes every redundant grain table entry agree with its primary entry where the reader accepts
/// the primary one (see [`EntryRule`]), then syncs. Returns the number of entries changed.
///
/// Why the primary copy wins: the writer always writes the primary copy first —
/// [`GrainDir::write_entries`] writes the primary table's entries, then the redundant table's; a new
/// grain's data is written before either (`Batch::flush`), and a discarded grain's entries before its
/// space is freed ([`Extent::discard`]) — so a writer that died between the two copies left the
/// primary one as new or newer. And the reader only ever reads the primary copy, so this never
/// changes what the disk reads. Grain directory entries of hosted sparse files are never written
/// (every table is allocated at creation), so a directory that disagrees with its redundant copy was
/// not left by our writer; that, and a primary entry the reader refuses, is left to `-x repair`.
pub fn heal_redundant(backing: &Arc<dyn Backing>, gd: &[u32], rgd: &[u32], gtes: u32, rule: &EntryRule) -> Result<u64> {
    let gt_bytes = gtes as usize * 4;
    let (mut p, mut r) = (vec![0u8; gt_bytes], vec![0u8; gt_bytes]);
    let mut changed = 0;
    for (&pt, &rt) in gd.iter().zip(rgd) {
        if pt == 0 || rt == 0 || pt == rt {
            continue;
        }
        backing.read_exact_at(&mut p, pt as u64 * 512)?;
        backing.read_exact_at(&mut r, rt as u64 * 512)?;
        let mut run: Option<(usize, usize)> = None; // byte range of r to write
        for j in 0..gtes as usize {
            let (a, b) = (&p[j * 4..j * 4 + 4], &r[j * 4..j * 4 + 4]);
            if a == b || !rule.accepts(LE::read_u32(a) as u64) {
                continue;
            }
            r[j * 4..j * 4 + 4].copy_from_slice(&p[j * 4..j * 4 + 4]);
            changed += 1;
            run = Some(match run {
                Some((s, _)) => (s, j * 4 + 4),
                None => (j * 4, j * 4 + 4),
            });
        }
        if let Some((s, e)) = run {
            backing.write_all_at(&r[s..e], rt as u64 * 512 + s as u64)?;
        }
    }
    if changed > 0 {
        backing.sync()?;
    }
    Ok(changed)
}

/// The header of a grain-table extent, by flavour.
#[derive(Debug, Clone)]
pub enum Meta {
    /// A hosted sparse (`KDMV`) extent.
    Hosted(SparseHeader),
    /// An ESX COWD (vmfsSparse) extent.
    Cowd(CowdHeader),
}

/// A hosted sparse or COWD extent.
#[derive(Debug)]
pub struct SparseExtent {
    dir: GrainDir,
    header: Mutex<Meta>,
    unclean_at_open: bool,
    grain_bytes: u64,
    len: u64,
    writable: bool,
    /// Next free sector for a new grain; its lock serializes grain allocation.
    next_free: Mutex<u64>,
    file_len: AtomicU64,
    /// Where the file's writeback was last started up to ([`Extent::start_writeback`]).
    written_back: AtomicU64,
    dirty: AtomicBool,
}

impl SparseExtent {
    /// Opens a sparse extent whose header is `header` (already read from sector 0). `len` is the byte
    /// length the descriptor maps (None = the header's capacity).
    pub fn open(
        backing: Arc<dyn Backing>,
        header: SparseHeader,
        len: Option<u64>,
        cache: Arc<GtCache>,
        writable: bool,
    ) -> Result<SparseExtent> {
        let path = backing.path().to_path_buf();
        if header.flags & FLAG_COMPRESSED != 0 {
            return Err(Error::unsupported(
                &path,
                "compressed grains in a plain sparse extent (open it as streamOptimized)",
            ));
        }
        let file_len = backing.len()?;
        let capacity = header.capacity * 512;
        let len = len.unwrap_or(capacity);
        if len > capacity {
            return Err(Error::corrupt(
                &path,
                12,
                format!("sparse capacity is {capacity} bytes but the descriptor maps {len}"),
            ));
        }
        if header.overhead.saturating_mul(512) > file_len {
            return Err(Error::corrupt(
                &path,
                64,
                format!("file of {file_len} bytes is shorter than its metadata ({} sectors)", header.overhead),
            ));
        }
        if header.gd_offset == GD_AT_END {
            return Err(Error::corrupt(
                &path,
                56,
                "grain directory offset says `at end`, which only streamOptimized files use",
            ));
        }
        let count = header.num_gdes();
        let gd = GrainDir::read_directory(
            &backing,
            header.gd_offset,
            count,
            header.num_gtes_per_gt,
            file_len,
            "grain directory",
            56,
        )?;
        let rgd = if header.flags & FLAG_RGD != 0 && header.rgd_offset != 0 {
            Some(GrainDir::read_directory(
                &backing,
                header.rgd_offset,
                count,
                header.num_gtes_per_gt,
                file_len,
                "redundant grain directory",
                48,
            )?)
        } else {
            None
        };
        if writable && header.unclean_shutdown {
            if let Some(r) = &rgd {
                let rule = EntryRule {
                    grain_sectors: header.grain_size,
                    overhead: header.overhead,
                    one_is_zero: header.flags & FLAG_ZEROED_GTE != 0,
                    file_len,
                };
                heal_redundant(&backing, &gd, r, header.num_gtes_per_gt, &rule)?;
            }
        }
        let grain_bytes = header.grain_size * 512;
        let next = file_len.div_ceil(grain_bytes) * header.grain_size;
        Ok(SparseExtent {
            dir: GrainDir::new(backing, gd, rgd, header.num_gtes_per_gt, cache).skip_unwritten_tables(),
            unclean_at_open: header.unclean_shutdown,
            header: Mutex::new(Meta::Hosted(header)),
            grain_bytes,
            len,
            writable,
            next_free: Mutex::new(next.max(1)),
            file_len: AtomicU64::new(file_len),
            written_back: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
        })
    }

    /// Opens a COWD (vmfsSparse) extent. `len` is what the descriptor maps (None = the header's
    /// capacity).
    pub fn open_cowd(backing: Arc<dyn Backing>, len: Option<u64>, cache: Arc<GtCache>, writable: bool) -> Result<Self> {
        let path = backing.path().to_path_buf();
        let file_len = backing.len()?;
        let hb = super::cowd::HEADER_BYTES;
        if file_len < hb as u64 {
            return Err(Error::corrupt(
                &path,
                0,
                format!("file of {file_len} bytes is shorter than the {hb}-byte COWD header"),
            ));
        }
        let mut b = vec![0u8; hb];
        backing.read_exact_at(&mut b, 0)?;
        let mut header = CowdHeader::parse(&b, &path)?;
        let capacity = header.num_sectors as u64 * 512;
        let len = len.unwrap_or(capacity);
        if len > capacity {
            return Err(Error::corrupt(
                &path,
                12,
                format!("COWD capacity is {capacity} bytes but the descriptor maps {len}"),
            ));
        }
        let gd = GrainDir::read_directory(
            &backing,
            header.gd_offset as u64,
            header.num_gdes as u64,
            header.gtes,
            file_len,
            "COWD grain directory",
            20,
        )?;
        let grain_sectors = header.grain_size as u64;
        let end = file_len.div_ceil(512);
        if writable && header.unclean_shutdown && (header.free_sector as u64) < end && end <= u32::MAX as u64 {
            // The self-heal of a COWD log whose writer died: its free sector is recorded only at
            // close, while grains and tables are appended at the end of the file, so the file's end
            // is where the next free sector is.
            backing.write_all_at(&(end as u32).to_le_bytes(), super::cowd::FREE_SECTOR_OFFSET)?;
            backing.sync()?;
            header.free_sector = end as u32;
        }
        let next = end.max(header.free_sector as u64).max(header.overhead());
        Ok(SparseExtent {
            dir: GrainDir::new(backing, gd, None, header.gtes, cache),
            unclean_at_open: header.unclean_shutdown,
            grain_bytes: grain_sectors * 512,
            header: Mutex::new(Meta::Cowd(header)),
            len,
            writable,
            next_free: Mutex::new(next),
            file_len: AtomicU64::new(file_len),
            written_back: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
        })
    }

    /// The header as it is now.
    pub fn meta(&self) -> Meta {
        self.header.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// True when grain table entry 1 means "zeroed grain".
    fn zeroed_ok(&self) -> bool {
        matches!(&*self.header.lock().unwrap_or_else(|p| p.into_inner()), Meta::Hosted(h) if h.flags & FLAG_ZEROED_GTE != 0)
    }

    /// True when a grain table entry of 1 reads as a zeroed grain: hosted files with the zeroed-grain
    /// flag, and COWD files (where ESXi uses 1 for an emptied grain that hides the parent, as Xen
    /// Orchestra's and dissect's readers also treat it; we never write it there).
    fn one_is_zero(&self) -> bool {
        match &*self.header.lock().unwrap_or_else(|p| p.into_inner()) {
            Meta::Hosted(h) => h.flags & FLAG_ZEROED_GTE != 0,
            Meta::Cowd(_) => true,
        }
    }

    /// First sector a grain may occupy.
    fn overhead(&self) -> u64 {
        match &*self.header.lock().unwrap_or_else(|p| p.into_inner()) {
            Meta::Hosted(h) => h.overhead,
            Meta::Cowd(h) => h.overhead(),
        }
    }

    /// The grain directory.
    pub fn directory(&self) -> &GrainDir {
        &self.dir
    }

    fn path(&self) -> &Path {
        self.dir.backing.path()
    }

    /// The reader's rule for this extent's entries, with the file's length as it is now.
    fn rule(&self) -> EntryRule {
        EntryRule {
            grain_sectors: self.grain_bytes / 512,
            overhead: self.overhead(),
            one_is_zero: self.one_is_zero(),
            file_len: self.file_len.load(Ordering::Acquire),
        }
    }

    /// Walks `[offset, offset+len)` in pieces, calling `f(piece_offset, piece_len, grain)`: an
    /// allocated grain is one piece (at most a grain long), while absent and zeroed grains come in
    /// stretches as long as they run (a table that holds nothing, or many, in one piece). Stops when
    /// `f` returns `false`, returning the offset reached (`offset + len` otherwise).
    fn walk(&self, offset: u64, len: u64, mut f: impl FnMut(u64, u64, Grain) -> Result<bool>) -> Result<u64> {
        if len == 0 {
            return Ok(offset);
        }
        let mut rule = self.rule();
        let (gb, gtes, end) = (self.grain_bytes, self.dir.gtes as u64, offset + len);
        let mut zero_from: Option<u64> = None;
        let mut stopped: Option<u64> = None;
        let reached = self.dir.walk_grains(offset / gb, end.div_ceil(gb), |g, n, v| {
            let s = g.saturating_mul(gb).max(offset);
            let e = (g + n).saturating_mul(gb).min(end);
            let grain = if v == 0 {
                Grain::Absent
            } else {
                // The length after the entry was loaded: a grain allocated meanwhile is inside it.
                rule.file_len = self.file_len.load(Ordering::Acquire);
                rule.classify(self.path(), "grain table entry", v, g, self.dir.entry_offset(g / gtes, g % gtes))?
            };
            // Zeroed grains come one call each: they are passed on as one stretch.
            if grain == Grain::Zero {
                zero_from.get_or_insert(s);
                return Ok(true);
            }
            if let Some(z) = zero_from.take() {
                if !f(z, s - z, Grain::Zero)? {
                    stopped = Some(s);
                    return Ok(false);
                }
            }
            if !f(s, e - s, grain)? {
                stopped = Some(e);
                return Ok(false);
            }
            Ok(true)
        })?;
        if let Some(at) = stopped {
            return Ok(at);
        }
        let reached = reached.saturating_mul(gb).min(end);
        if let Some(z) = zero_from {
            f(z, reached - z, Grain::Zero)?;
        }
        Ok(reached)
    }

    fn allocate(
        &self,
        jobs: Vec<(u64, u64, usize)>,
        buf: &[u8],
        below: Option<&dyn ReadAt<Error = Error>>,
    ) -> Result<()> {
        let gb = self.grain_bytes;
        let gtes = self.dir.gtes as u64;
        let zeroed_ok = self.zeroed_ok();
        let mut next = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
        // A batch: new grains written back to back at `batch_sector`, whose entries are consecutive
        // in one grain table.
        let mut batch = Batch::default();
        // The table of the grain at hand, looked up once per table (jobs come in offset order).
        let mut table: Option<(u64, Option<Table>)> = None;
        let mut rule = self.rule();
        for (p, l, bpos) in jobs {
            let g = p / gb;
            let (gt, idx) = (g / gtes, g % gtes);
            let piece = &buf[bpos..bpos + l as usize];
            if table.as_ref().is_none_or(|(t, _)| *t != gt) {
                table = Some((gt, self.dir.table(gt)?));
            }
            // Re-check under the allocation lock: another writer may have allocated this grain.
            let entry = match table.as_ref().and_then(|(_, t)| t.as_ref()) {
                Some(t) => t[idx as usize].load(Ordering::Acquire),
                None => 0,
            };
            rule.file_len = self.file_len.load(Ordering::Acquire);
            let state = rule.classify(self.path(), "grain table entry", entry, g, self.dir.entry_offset(gt, idx))?;
            if let Grain::At(sector) = state {
                batch.flush(self, buf, &mut next)?;
                self.dir.backing.write_all_at(piece, sector * 512 + p % gb)?;
                continue;
            }
            if table.as_ref().is_none_or(|(_, t)| t.is_none()) {
                if let Meta::Cowd(h) = self.meta() {
                    // COWD: the table is allocated with its first grain, right before it.
                    batch.flush(self, buf, &mut next)?;
                    let sectors = (self.dir.gtes as u64 * 4).div_ceil(512);
                    let at = *next;
                    if at + sectors > u32::MAX as u64 {
                        return Err(Error::unsupported(self.path(), "COWD file would exceed 2 TiB (32-bit pointers)"));
                    }
                    self.dir.backing.write_all_at(&vec![0u8; (sectors * 512) as usize], at * 512)?;
                    self.dir.set_table(gt, at as u32, h.gd_offset as u64)?;
                    *next = at + sectors;
                    self.file_len.fetch_max(*next * 512, Ordering::AcqRel);
                    table = Some((gt, self.dir.table(gt)?));
                }
            }
            if table.as_ref().is_none_or(|(_, t)| t.is_none()) {
                return Err(Error::unsupported(
                    self.path(),
                    format!(
                        "grain table {gt} was never allocated (directory entry is 0); writing there is not supported"
                    ),
                ));
            }
            let grain_start = g * gb;
            let full = p == grain_start && l == gb;
            let zero = is_zero(piece);
            let reads_zero = state == Grain::Zero || below.is_none();
            if zero && reads_zero {
                continue; // Already reads as zeros: nothing to store.
            }
            let mut data;
            let grain: &[u8] = if full {
                piece
            } else {
                data = vec![0u8; gb as usize];
                if state == Grain::Absent {
                    if let Some(b) = below {
                        let n = gb.min(self.len - grain_start) as usize;
                        b.read_exact_at(&mut data[..n], grain_start)?;
                    }
                }
                data[(p % gb) as usize..(p % gb + l) as usize].copy_from_slice(piece);
                &data
            };
            if zeroed_ok && is_zero(grain) {
                batch.flush(self, buf, &mut next)?;
                self.dir.write_entries(gt, idx, &[1])?;
                continue;
            }
            if !batch.extends(gt, idx) {
                batch.flush(self, buf, &mut next)?;
                batch.start(gt, idx, *next);
            }
            if full {
                batch.push_run(buf, bpos, gb as usize);
            } else {
                batch.push_owned(buf, grain);
            }
        }
        batch.flush(self, buf, &mut next)
    }
}

/// New grains of one [`SparseExtent::allocate`] call that go to the file back to back. While they
/// are whole grains lying back to back in the caller's buffer (a copy's chunk: the usual case)
/// the batch is only that range and is written from the buffer; a partial grain (filled out from
/// below or with zeros) makes it a copy.
#[derive(Default)]
struct Batch {
    gt: u64,
    first: u64,
    count: u64,
    sector: u64,
    /// `(start, len)` in the caller's buffer, while the batch is one run of it.
    run: Option<(usize, usize)>,
    /// The batch's bytes once it is not.
    data: Vec<u8>,
}

impl Batch {
    fn extends(&self, gt: u64, idx: u64) -> bool {
        self.count > 0 && self.gt == gt && self.first + self.count == idx
    }

    fn start(&mut self, gt: u64, idx: u64, sector: u64) {
        self.gt = gt;
        self.first = idx;
        self.sector = sector;
        self.count = 0;
        self.run = None;
        self.data.clear();
    }

    /// Adds the grain `buf[start..start + len]`.
    fn push_run(&mut self, buf: &[u8], start: usize, len: usize) {
        match &mut self.run {
            Some((s, l)) if *s + *l == start => *l += len,
            _ if self.count == 0 => self.run = Some((start, len)),
            _ => {
                self.make_owned(buf);
                self.data.extend_from_slice(&buf[start..start + len]);
            }
        }
        self.count += 1;
    }

    /// Adds a grain assembled outside `buf`.
    fn push_owned(&mut self, buf: &[u8], grain: &[u8]) {
        self.make_owned(buf);
        self.data.extend_from_slice(grain);
        self.count += 1;
    }

    /// Copies a batch that is still a run of `buf` into `data`.
    fn make_owned(&mut self, buf: &[u8]) {
        if let Some((s, l)) = self.run.take() {
            self.data.extend_from_slice(&buf[s..s + l]);
        }
    }

    fn flush(&mut self, ext: &SparseExtent, buf: &[u8], next: &mut u64) -> Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        let grain_sectors = ext.grain_bytes / 512;
        let bytes = match self.run {
            Some((s, l)) => &buf[s..s + l],
            None => &self.data[..],
        };
        // Data first, then the table entries: a crash in between leaves an unreferenced grain,
        // never an entry pointing at garbage.
        ext.dir.backing.write_all_at(bytes, self.sector * 512)?;
        let end = (self.sector + self.count * grain_sectors) * 512;
        ext.file_len.fetch_max(end, Ordering::AcqRel);
        let values: Vec<u64> = (0..self.count).map(|i| self.sector + i * grain_sectors).collect();
        if values.last().is_some_and(|&v| v > u32::MAX as u64) {
            return Err(Error::unsupported(
                ext.path(),
                "sparse extent file would exceed 2 TiB (32-bit grain pointers)",
            ));
        }
        ext.dir.write_entries(self.gt, self.first, &values)?;
        *next = self.sector + self.count * grain_sectors;
        self.count = 0;
        self.run = None;
        self.data.clear();
        Ok(())
    }
}

impl ReadAt for SparseExtent {
    type Error = Error;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        // Coalesce grains that are contiguous in the file into one read.
        let mut run: Option<(u64, usize, usize)> = None; // (file offset, buf start, len)
        let backing = &self.dir.backing;
        let flush = |run: &mut Option<(u64, usize, usize)>, buf: &mut [u8]| -> Result<()> {
            if let Some((fo, bs, l)) = run.take() {
                backing.read_exact_at(&mut buf[bs..bs + l], fo)?;
            }
            Ok(())
        };
        let gb = self.grain_bytes;
        self.walk(offset, buf.len() as u64, |p, l, g| {
            let bs = (p - offset) as usize;
            match g {
                Grain::At(sector) => {
                    let fo = sector * 512 + p % gb;
                    match &mut run {
                        Some((rfo, rbs, rl)) if *rfo + *rl as u64 == fo && *rbs + *rl == bs => *rl += l as usize,
                        _ => {
                            flush(&mut run, buf)?;
                            run = Some((fo, bs, l as usize));
                        }
                    }
                }
                Grain::Zero | Grain::Absent => buf[bs..bs + l as usize].fill(0),
            }
            Ok(true)
        })?;
        flush(&mut run, buf)
    }
}

impl Extent for SparseExtent {
    fn len(&self) -> u64 {
        self.len
    }

    fn info(&self) -> ExtentInfo {
        let (kind, version) = match self.meta() {
            Meta::Hosted(h) => (ExtentKind::Sparse, h.version),
            Meta::Cowd(h) => (ExtentKind::VmfsSparse, h.version),
        };
        ExtentInfo {
            kind,
            file: Some(self.dir.backing.path().to_path_buf()),
            len: self.len,
            grain: Some(self.grain_bytes),
            version: Some(version),
            unclean: self.unclean_at_open,
        }
    }

    fn writable(&self) -> bool {
        self.writable
    }

    fn locate(&self, offset: u64, len: u64) -> Result<Option<(&dyn Backing, u64, u64)>> {
        // The allocated grains from `offset` on, as long as each follows the last in the file.
        let gb = self.grain_bytes;
        let mut found: Option<(u64, u64)> = None; // (file offset, bytes)
        self.walk(offset, len, |p, l, g| {
            let Grain::At(sector) = g else { return Ok(false) };
            let fo = sector * 512 + p % gb;
            match &mut found {
                None => found = Some((fo, l)),
                Some((f, n)) if *f + *n == fo => *n += l,
                Some(_) => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(found.map(|(fo, n)| (&*self.dir.backing as &dyn Backing, fo, n)))
    }

    fn write_at(&self, buf: &[u8], offset: u64, below: Option<&dyn ReadAt<Error = Error>>) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly { path: self.path().into(), what: "extent is opened read-only".into() });
        }
        let gb = self.grain_bytes;
        let mut jobs = Vec::new();
        let mut direct: Vec<(u64, u64, u64)> = Vec::new(); // (file offset, buf start, len)
        self.walk(offset, buf.len() as u64, |p, l, g| {
            let bs = p - offset;
            match g {
                Grain::At(sector) => {
                    let fo = sector * 512 + p % gb;
                    match direct.last_mut() {
                        Some((dfo, dbs, dl)) if *dfo + *dl == fo && *dbs + *dl == bs => *dl += l,
                        _ => direct.push((fo, bs, l)),
                    }
                }
                // Grains to allocate (or to fill from below), one job each.
                _ => jobs.extend(pieces(p, l, gb).map(|(jp, jl)| (jp, jl, (jp - offset) as usize))),
            }
            Ok(true)
        })?;
        for (fo, bs, l) in direct {
            self.dir.backing.write_all_at(&buf[bs as usize..(bs + l) as usize], fo)?;
        }
        if !jobs.is_empty() {
            self.allocate(jobs, buf, below)?;
        }
        Ok(())
    }

    fn map(&self, offset: u64, len: u64, base: u64, budget: usize, out: &mut AllocMap) -> Result<u64> {
        self.walk(offset, len, |p, l, g| {
            out.push(base + p, l, g.state(), 0);
            Ok(out.runs().len() < budget)
        })
    }

    fn discard(&self, offset: u64, len: u64, has_parent: bool) -> Result<u64> {
        if !self.writable {
            return Err(Error::ReadOnly { path: self.path().into(), what: "extent is opened read-only".into() });
        }
        let gb = self.grain_bytes;
        let gtes = self.dir.gtes as u64;
        let zeroed_ok = self.zeroed_ok();
        let _alloc = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
        let mut freed = 0;
        let mut pieces_to_zero = Vec::new();
        self.walk(offset, len, |p, l, g| {
            let whole = p % gb == 0 && l == gb.min(self.len - p);
            match g {
                Grain::At(sector) if whole && (!has_parent || zeroed_ok) => {
                    let gi = p / gb;
                    // The entry first, then free the grain: a crash in between leaks space only.
                    self.dir.write_entries(gi / gtes, gi % gtes, &[if has_parent { 1 } else { 0 }])?;
                    self.dir.backing.punch_hole(sector * 512, gb)?;
                    freed += gb;
                }
                Grain::At(_) => pieces_to_zero.push((p, l)),
                Grain::Absent if has_parent => pieces_to_zero.push((p, l)),
                _ => {}
            }
            Ok(true)
        })?;
        drop(_alloc);
        let zeros = vec![0u8; pieces_to_zero.iter().map(|z| z.1).max().unwrap_or(0).min(1 << 20) as usize];
        for (p, l) in pieces_to_zero {
            for (zp, zl) in pieces(p, l, 1 << 20) {
                self.write_at(&zeros[..zl as usize], zp, None)?;
            }
        }
        Ok(freed)
    }

    fn begin_write(&self) -> Result<()> {
        let mut m = self.header.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *m {
            Meta::Hosted(h) => {
                h.unclean_shutdown = true;
                self.dir.backing.write_all_at(&[1], 72)?;
            }
            Meta::Cowd(h) => {
                h.unclean_shutdown = true;
                self.dir.backing.write_all_at(&1u32.to_le_bytes(), super::cowd::UNCLEAN_OFFSET)?;
            }
        }
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Grains are appended, so the bytes a copy wrote since the last call are the file's tail:
    /// its writeback starts there (the virtual range given says nothing about where in the file
    /// its grains went), and the final flush has only the tables left to write.
    fn start_writeback(&self, _offset: u64, _len: u64) {
        if !self.writable {
            return;
        }
        let end = self.file_len.load(Ordering::Acquire);
        let from = self.written_back.fetch_max(end, Ordering::AcqRel);
        if end > from {
            self.dir.backing.start_writeback(from, end - from);
        }
    }

    fn flush(&self) -> Result<()> {
        if self.writable {
            self.dir.backing.sync()?;
        }
        Ok(())
    }

    fn close(&self) -> Result<()> {
        if self.dirty.swap(false, Ordering::AcqRel) {
            self.dir.backing.sync()?;
            self.mark_clean(true)?;
            self.dir.backing.sync()?;
        }
        Ok(())
    }

    fn seal(&self) -> Result<()> {
        if self.dirty.swap(false, Ordering::AcqRel) {
            self.mark_clean(false)?;
        }
        Ok(())
    }
}

impl SparseExtent {
    /// Clears the unclean-shutdown mark (a COWD extent records its next free sector first, synced
    /// before the mark goes when `sync_between`).
    fn mark_clean(&self, sync_between: bool) -> Result<()> {
        let next = *self.next_free.lock().unwrap_or_else(|p| p.into_inner());
        let mut m = self.header.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *m {
            Meta::Hosted(h) => {
                h.unclean_shutdown = false;
                self.dir.backing.write_all_at(&[0], 72)?;
            }
            Meta::Cowd(h) => {
                // Record the next free sector, then clear the flag.
                h.free_sector = next.min(u32::MAX as u64) as u32;
                self.dir.backing.write_all_at(&h.free_sector.to_le_bytes(), super::cowd::FREE_SECTOR_OFFSET)?;
                if sync_between {
                    self.dir.backing.sync()?;
                }
                h.unclean_shutdown = false;
                self.dir.backing.write_all_at(&0u32.to_le_bytes(), super::cowd::UNCLEAN_OFFSET)?;
            }
        }
        Ok(())
    }
}

/// Creates the metadata of a new sparse extent in an empty file: header, embedded descriptor area,
/// redundant directory and tables, directory and tables, truncated to the first grain.
pub fn create(backing: &Arc<dyn Backing>, layout: &super::kdmv::Layout, descriptor: Option<&[u8]>) -> Result<()> {
    let h = &layout.header;
    let mut meta = vec![0u8; (h.overhead * 512) as usize];
    meta[..512].copy_from_slice(&h.to_bytes());
    if let Some(d) = descriptor {
        let room = (h.descriptor_size * 512) as usize;
        if d.len() > room {
            return Err(Error::InvalidArgument(format!(
                "embedded descriptor of {} bytes does not fit in {room}",
                d.len()
            )));
        }
        let at = (h.descriptor_offset * 512) as usize;
        meta[at..at + d.len()].copy_from_slice(d);
    }
    for dir in [h.rgd_offset, h.gd_offset] {
        let bytes = layout.directory(dir);
        let at = (dir * 512) as usize;
        meta[at..at + bytes.len()].copy_from_slice(&bytes);
    }
    // Only what is not zero is written: the tables stay holes until they get entries, so a walk
    // skips them unread ([`GrainDir::skip_unwritten_tables`]) and a new disk's size does not grow
    // with its capacity.
    backing.set_len(h.overhead * 512)?;
    let mut run: Option<(u64, u64)> = None;
    for (at, n) in pieces(0, meta.len() as u64, 4096).chain([(meta.len() as u64, 0)]) {
        let zero = n == 0 || is_zero(&meta[at as usize..(at + n) as usize]);
        match (&mut run, zero) {
            (Some((_, e)), false) => *e = at + n,
            (None, false) => run = Some((at, at + n)),
            (Some((s, e)), true) => {
                backing.write_all_at(&meta[*s as usize..*e as usize], *s)?;
                run = None;
            }
            (None, true) => {}
        }
    }
    Ok(())
}
