//! streamOptimized extents (random-access read): zlib-compressed grains behind grain markers, found
//! through the grain directory of the header or, when the header says "at end", of the footer; for
//! an "at end" file without a footer, through an index built by walking the markers.
//!
//! The stream's shape (capacity, grain and table sizes, embedded descriptor, footer, markers, file
//! length) is validated by [`layout`], the same rules the sequential reader
//! ([`sequential`], pipes) applies. Writing is in [`writer`].

use std::path::Path;
use std::sync::{Arc, Mutex};

use byteorder::{ByteOrder, LittleEndian as LE};

use super::gtcache::GtCache;
use super::kdmv::{self, SparseHeader, GD_AT_END};
use super::kdmv::{parse_marker, MARKER_EOS, MARKER_FOOTER, MARKER_GD};
use super::sparse::GrainDir;
use super::{Extent, ExtentInfo, ExtentKind};
use crate::error::{Error, Result};
use crate::findings::Sink;
use crate::map::{AllocMap, State};
use crate::storage::Backing;
use layout::{inflate_grain, max_compressed_size, StreamModel};
use rdm::ReadAt;
use sequential::{BackingCursor, StreamReader};

pub mod layout;
pub mod sequential;
pub mod writer;

/// Builds the [`StreamModel`] of the stream in `backing` whose header (sector 0) is `header`:
/// checks the header, the file length and the embedded descriptor (including descriptor text left
/// where a header declaring none would have it).
pub fn read_model(backing: &Arc<dyn Backing>, header: SparseHeader) -> Result<StreamModel> {
    let mut model = StreamModel::new(header, backing.path())?;
    model.check_length(backing.len()?)?;
    super::kdmv::check_descriptor_fields(backing, model.header())?;
    let area = kdmv::read_descriptor_area(backing, model.header())?;
    model.set_descriptor(area.as_ref().map(|a| a.text.as_str()))?;
    Ok(model)
}

/// Reads the footer of a streamOptimized file: the header copy at EOF−1024, after a footer marker
/// at EOF−1536 and before the end-of-stream marker in the last sector. Returns `None` when there is
/// no footer marker there (no footer: a writer that left it out, or a truncated stream); a footer
/// marker followed by a footer or end-of-stream marker that the model refuses is an error naming
/// the offset.
pub fn read_footer(backing: &Arc<dyn Backing>, model: &StreamModel, file_len: u64) -> Result<Option<SparseHeader>> {
    let path = backing.path();
    if file_len < model.overhead_bytes() + 1536 {
        return Ok(None);
    }
    let at = file_len - 1536;
    let mut tail = [0u8; 1536];
    backing.read_exact_at(&mut tail, at)?;
    let (val, size, kind) = parse_marker(&tail[..512]);
    if size != 0 || kind != MARKER_FOOTER {
        return Ok(None);
    }
    model.check_marker(MARKER_FOOTER, val, at)?;
    let mut f = [0u8; 512];
    f.copy_from_slice(&tail[512..1024]);
    let footer = model.check_footer(&f, at + 512)?;
    if parse_marker(&tail[1024..]) != (0, 0, MARKER_EOS) {
        return Err(Error::corrupt(
            path,
            at + 1024,
            "the footer is not followed by an end-of-stream marker (numSectors 0, size 0, type 0) in the last sector",
        ));
    }
    Ok(Some(footer))
}

/// The directory the footer `f` names (footer at EOF−1024): it must follow a grain directory
/// marker of the directory's size, lie between overHead and the footer, and name only inline tables
/// (each after a grain table marker, checked when the table is loaded).
fn footer_directory(
    backing: &Arc<dyn Backing>,
    model: &StreamModel,
    f: &SparseHeader,
    file_len: u64,
    cache: Arc<GtCache>,
) -> Result<GrainDir> {
    let path = backing.path();
    let field = file_len - 1024 + 56;
    let footer_marker = file_len / 512 - 3;
    let overhead = model.header().overhead;
    let gd_end = f.gd_offset.checked_add(model.gd_sectors());
    if f.gd_offset <= overhead || gd_end.is_none_or(|e| e > footer_marker) {
        return Err(Error::corrupt(
            path,
            field,
            format!(
                "the footer's grain directory (sector {}, {} sectors) does not lie between overHead (sector {overhead}) and the footer (sector {footer_marker})",
                f.gd_offset,
                model.gd_sectors()
            ),
        ));
    }
    let marker_at = (f.gd_offset - 1) * 512;
    let mut m = [0u8; 512];
    backing.read_exact_at(&mut m, marker_at)?;
    let (val, size, kind) = parse_marker(&m);
    if size != 0 || kind != MARKER_GD {
        return Err(Error::corrupt(
            path,
            marker_at,
            format!(
                "the footer names a grain directory at sector {}, but no grain directory marker precedes it (found numSectors {val}, size {size}, type {kind})",
                f.gd_offset
            ),
        ));
    }
    model.check_marker(MARKER_GD, val, marker_at)?;
    let gtes = f.num_gtes_per_gt;
    let gd =
        GrainDir::read_directory(backing, f.gd_offset, model.gd_entries(), gtes, file_len, "grain directory", field)?;
    for (i, &e) in gd.iter().enumerate() {
        if e != 0 && (e as u64 <= overhead || e as u64 + model.gt_sectors() > footer_marker) {
            return Err(Error::corrupt(
                path,
                f.gd_offset * 512 + i as u64 * 4,
                format!("grain directory entry {i} points to sector {e}, outside the grains and tables between overHead (sector {overhead}) and the footer"),
            ));
        }
    }
    Ok(GrainDir::new(backing.clone(), gd, None, gtes, cache).with_inline_tables(overhead + 1))
}

/// Where the grains of a stream are found.
#[derive(Debug)]
enum Index {
    /// Through the grain directory and tables (of the header, or of the footer).
    Dir(GrainDir),
    /// Built by walking the markers of a `GD_AT_END` file without a usable footer: `(grain number,
    /// sector of its marker)`, sorted by grain. At most one entry per 512 bytes of file.
    Scan(Vec<(u64, u64)>),
}

/// A streamOptimized extent, read-only.
#[derive(Debug)]
pub struct StreamExtent {
    index: Index,
    backing: Arc<dyn Backing>,
    header: SparseHeader,
    grain_bytes: u64,
    len: u64,
    file_len: u64,
    /// The last grain decompressed: (grain number, bytes).
    last: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
}

impl StreamExtent {
    /// Opens the streamOptimized extent in `backing` whose header (sector 0) is `header` (see
    /// [`read_model`] and [`StreamExtent::with_model`]).
    pub fn open(
        backing: Arc<dyn Backing>,
        header: SparseHeader,
        len: Option<u64>,
        cache: Arc<GtCache>,
    ) -> Result<Self> {
        let model = read_model(&backing, header)?;
        StreamExtent::with_model(backing, &model, len, cache)
    }

    /// Opens the stream in `backing` whose shape is `model`. `len` is what a descriptor maps (None:
    /// the capacity). When the header says the directory is at the end and there is no footer, the
    /// grains are indexed by walking the markers (which fails, naming the offset, if the stream is
    /// truncated).
    pub fn with_model(
        backing: Arc<dyn Backing>,
        model: &StreamModel,
        len: Option<u64>,
        cache: Arc<GtCache>,
    ) -> Result<Self> {
        let path = backing.path().to_path_buf();
        let file_len = backing.len()?;
        let capacity = model.capacity();
        let len = len.unwrap_or(capacity);
        if len > capacity {
            return Err(Error::corrupt(
                &path,
                12,
                format!("capacity is {capacity} bytes but the descriptor maps {len}"),
            ));
        }
        let header = model.header().clone();
        let gtes = header.num_gtes_per_gt;
        let (index, header) = if header.gd_offset == GD_AT_END {
            match read_footer(&backing, model, file_len)? {
                Some(f) => (Index::Dir(footer_directory(&backing, model, &f, file_len, cache)?), f),
                None => (Index::Scan(scan(&backing)?), header),
            }
        } else {
            let gd = GrainDir::read_directory(
                &backing,
                header.gd_offset,
                model.gd_entries(),
                gtes,
                file_len,
                "grain directory",
                56,
            )?;
            model.check_header_tables(&gd, header.gd_offset * 512)?;
            (Index::Dir(GrainDir::new(backing.clone(), gd, None, gtes, cache)), header)
        };
        Ok(StreamExtent {
            index,
            backing,
            grain_bytes: header.grain_size * 512,
            header,
            len,
            file_len,
            last: Mutex::new(None),
        })
    }

    fn path(&self) -> &Path {
        self.backing.path()
    }

    /// Walks the grains of `[offset, offset+len)`, calling `f(piece_offset, piece_len, marker)`:
    /// `marker` is `Some((grain, sector of its marker, byte offset of what says so))` for a present
    /// grain (one piece each), `None` for stretches of absent grains (one piece however many grains
    /// and tables they span). Stops when `f` returns `false`, returning the offset reached.
    fn walk(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(u64, u64, Option<(u64, u64, u64)>) -> Result<bool>,
    ) -> Result<u64> {
        let (gb, end) = (self.grain_bytes, offset + len);
        let (first, last) = (offset / gb, end.div_ceil(gb));
        let mut stopped = None;
        let mut piece = |g: u64, n: u64, marker: Option<(u64, u64, u64)>| -> Result<bool> {
            let s = g.saturating_mul(gb).max(offset);
            let e = (g + n).saturating_mul(gb).min(end);
            let go = f(s, e - s, marker)?;
            if !go {
                stopped = Some(e);
            }
            Ok(go)
        };
        match &self.index {
            Index::Dir(dir) => {
                let gtes = dir.gtes() as u64;
                dir.walk_grains(first, last, |g, n, v| {
                    piece(g, n, (v != 0).then(|| (g, v, dir.entry_offset(g / gtes, g % gtes))))
                })?;
            }
            Index::Scan(v) => {
                let mut i = v.partition_point(|e| e.0 < first);
                let mut g = first;
                while g < last {
                    let next = v.get(i).map_or(last, |e| e.0.min(last));
                    let go = if next > g {
                        let go = piece(g, next - g, None)?;
                        g = next;
                        go
                    } else {
                        let go = piece(g, 1, Some((g, v[i].1, v[i].1 * 512)))?;
                        (g, i) = (g + 1, i + 1);
                        go
                    };
                    if !go {
                        break;
                    }
                }
            }
        }
        Ok(stopped.unwrap_or(end))
    }

    /// Decompresses grain `g` whose marker is at `sector`.
    fn grain(&self, g: u64, sector: u64, entry_at: u64) -> Result<Arc<Vec<u8>>> {
        if let Some((lg, data)) = self.last.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            if *lg == g {
                return Ok(data.clone());
            }
        }
        let data = Arc::new(read_grain(&self.backing, sector, g, &self.header, self.len, self.file_len, entry_at)?);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((g, data.clone()));
        Ok(data)
    }
}

/// `-x check` of the streamOptimized extent in `backing` whose header is `header` (`len`: what a
/// descriptor maps): opened by the random-access reader (model, descriptor, footer and
/// end-of-stream, directory), then every marker walked by the sequential reader (what a read from a
/// pipe sees) with every grain inflated, and the directory compared with the walk: every entry
/// must name a grain record the walk reaches, for its own LBA, and every record the walk reaches
/// must be the one the directory names — else a file read and a pipe read of the disk differ.
pub fn check(backing: Arc<dyn Backing>, header: SparseHeader, len: Option<u64>, sink: &mut Sink) -> Result<()> {
    let cache = Arc::new(GtCache::default());
    let Some(ext) = sink.result(StreamExtent::open(backing.clone(), header, len, cache))? else {
        return Ok(());
    };
    let Some(walked) = walk(&backing, sink)? else { return Ok(()) };
    ext.check_directory(&walked, sink)
}

/// Walks every marker of the stream, inflating every grain: `(marker sector, LBA)` of each grain in
/// file order, or `None` when the walk stops at an error (recorded).
fn walk(backing: &Arc<dyn Backing>, sink: &mut Sink) -> Result<Option<Vec<(u64, u64)>>> {
    let cursor = BackingCursor::new(backing.clone())?;
    let Some(mut r) = sink.result(StreamReader::new(cursor, backing.path()))? else { return Ok(None) };
    let mut buf = vec![0u8; r.grain_bytes() as usize];
    let mut v = Vec::new();
    loop {
        match r.next_grain() {
            Ok(Some(g)) => {
                sink.result(r.inflate(&g, &mut buf))?;
                v.push((g.at / 512, g.lba));
            }
            Ok(None) => return Ok(Some(v)),
            Err(e) => {
                sink.error(e)?;
                return Ok(None);
            }
        }
    }
}

impl StreamExtent {
    /// Compares the directory with the walk `walked` (see [`check`]); an extent indexed by the walk
    /// itself has nothing to compare.
    fn check_directory(&self, walked: &[(u64, u64)], sink: &mut Sink) -> Result<()> {
        let Index::Dir(dir) = &self.index else { return Ok(()) };
        let path = self.path();
        let gs = self.header.grain_size;
        let gtes = dir.gtes() as u64;
        let grains = self.header.capacity.div_ceil(gs);
        let mut matched = vec![false; walked.len()];
        // Only the tables the directory names (the others hold nothing): bounded by the file.
        let tables = dir.entries();
        let grains_of = |t: usize| t as u64 * gtes..((t as u64 + 1) * gtes).min(grains);
        for g in (0..tables.len()).filter(|&t| tables[t] != 0).flat_map(grains_of) {
            let (gt, idx) = (g / gtes, g % gtes);
            let entry =
                dir.table(gt).map(|t| t.map_or(0, |t| t[idx as usize].load(std::sync::atomic::Ordering::Acquire)));
            let (e, at) = match entry {
                Ok(v) => (v, dir.entry_offset(gt, idx)),
                Err(err) => {
                    // The table does not load: its other entries are not looked at.
                    if g % gtes == 0 {
                        sink.error(err)?;
                    }
                    continue;
                }
            };
            if e == 0 {
                continue;
            }
            match walked.binary_search_by_key(&e, |w| w.0) {
                Ok(k) if walked[k].1 == g * gs => matched[k] = true,
                _ => match read_grain(&self.backing, e, g, &self.header, self.len, self.file_len, at) {
                    Err(err) => {
                        sink.error(err)?;
                    }
                    Ok(_) => {
                        sink.problem(
                            path,
                            at,
                            format!("grain table entry for grain {g} points to a grain record at sector {e} that walking the stream's markers never reaches: a file read and a pipe read of the disk would differ"),
                        );
                    }
                },
            }
        }
        for (k, &(sector, lba)) in walked.iter().enumerate() {
            if !matched[k] {
                sink.problem(
                    path,
                    sector * 512,
                    format!("the grain record at byte {} (LBA {lba}) is not the one the grain directory names for that LBA: a pipe read and a file read of the disk would differ", sector * 512),
                );
            }
        }
        Ok(())
    }
}

/// Indexes a `GD_AT_END` stream by walking its markers: `(grain number, marker sector)` sorted by
/// grain, the last record winning for a grain written twice.
fn scan(backing: &Arc<dyn Backing>) -> Result<Vec<(u64, u64)>> {
    let cursor = BackingCursor::new(backing.clone())?;
    let mut r = StreamReader::with_data(cursor, backing.path(), false)?;
    let grain = r.header().grain_size;
    let mut v = Vec::new();
    while let Some(g) = r.next_grain()? {
        v.push((g.lba / grain, g.at / 512));
    }
    // Stable: among equal grains, file order is kept, so the last one is the one to keep.
    v.sort_by_key(|e| e.0);
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for e in v {
        match out.last_mut() {
            Some(l) if l.0 == e.0 => *l = e,
            _ => out.push(e),
        }
    }
    Ok(out)
}

/// Reads and inflates the compressed grain `g` whose marker starts at `sector`, checking the marker's
/// LBA and size. Returns the grain's bytes (a whole grain; the part past the disk's end is zeros).
pub fn read_grain(
    backing: &Arc<dyn Backing>,
    sector: u64,
    g: u64,
    header: &SparseHeader,
    len: u64,
    file_len: u64,
    entry_at: u64,
) -> Result<Vec<u8>> {
    let path = backing.path();
    let grain_bytes = header.grain_size * 512;
    let at = sector.checked_mul(512).filter(|a| a + 12 <= file_len).ok_or_else(|| {
        Error::corrupt(path, entry_at, format!("grain table entry for grain {g} points to sector {sector}, past the end of the file ({file_len} bytes)"))
    })?;
    if sector < header.overhead {
        return Err(Error::corrupt(
            path,
            entry_at,
            format!(
                "grain table entry for grain {g} points to sector {sector}, inside the metadata before overHead (sector {})",
                header.overhead
            ),
        ));
    }
    let mut m = [0u8; 12];
    backing.read_exact_at(&mut m, at)?;
    let lba = LE::read_u64(&m);
    let size = LE::read_u32(&m[8..]) as u64;
    if lba != g * header.grain_size {
        return Err(Error::corrupt(
            path,
            at,
            format!("grain marker says LBA {lba}, expected {} for grain {g}", g * header.grain_size),
        ));
    }
    if size == 0 || size >= max_compressed_size(grain_bytes) {
        return Err(Error::corrupt(
            path,
            at + 8,
            format!("compressed grain size {size} is impossible for a {grain_bytes}-byte grain"),
        ));
    }
    if at + 12 + size > file_len {
        // Checked before allocating, so a marker cannot make us reserve more than the file holds.
        return Err(Error::corrupt(
            path,
            at + 8,
            format!("compressed grain {g} of {size} bytes runs past the end of the file ({file_len} bytes)"),
        ));
    }
    let mut comp = vec![0u8; size as usize];
    backing.read_exact_at(&mut comp, at + 12)?;
    let want = grain_bytes.min(len.saturating_sub(g * grain_bytes)) as usize;
    let mut out = vec![0u8; grain_bytes as usize];
    inflate_grain(path, at + 12, &comp, g, grain_bytes, want, &mut out)?;
    Ok(out)
}

impl ReadAt for StreamExtent {
    type Error = Error;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.walk(offset, buf.len() as u64, |p, l, marker| {
            let dst = &mut buf[(p - offset) as usize..(p - offset + l) as usize];
            match marker {
                None => dst.fill(0),
                Some((g, sector, at)) => {
                    let data = self.grain(g, sector, at)?;
                    let w = (p % self.grain_bytes) as usize;
                    dst.copy_from_slice(&data[w..w + l as usize]);
                }
            }
            Ok(true)
        })?;
        Ok(())
    }
}

impl Extent for StreamExtent {
    fn len(&self) -> u64 {
        self.len
    }
    fn info(&self) -> ExtentInfo {
        ExtentInfo {
            kind: ExtentKind::Stream,
            file: Some(self.path().to_path_buf()),
            len: self.len,
            grain: Some(self.grain_bytes),
            version: Some(self.header.version),
            unclean: false,
        }
    }
    fn writable(&self) -> bool {
        false
    }
    fn write_at(&self, _buf: &[u8], _offset: u64, _below: Option<&dyn ReadAt<Error = Error>>) -> Result<()> {
        Err(Error::ReadOnly {
            path: self.path().into(),
            what: "streamOptimized extents are read-only; clone to another format to modify".into(),
        })
    }
    fn map(&self, offset: u64, len: u64, base: u64, budget: usize, out: &mut AllocMap) -> Result<u64> {
        self.walk(offset, len, |p, l, marker| {
            out.push(base + p, l, if marker.is_none() { State::Absent } else { State::Data }, 0);
            Ok(out.runs().len() < budget)
        })
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
