//! streamOptimized extents (read): zlib-compressed grains behind grain markers, found through the
//! grain directory of the header or, when the header says "at end", of the footer.

use std::path::Path;
use std::sync::{Arc, Mutex};

use byteorder::{ByteOrder, LittleEndian as LE};
use flate2::{Decompress, FlushDecompress, Status};

use super::gtcache::GtCache;
use super::kdmv::{SparseHeader, FLAG_COMPRESSED, GD_AT_END};
use super::sparse::GrainDir;
use super::{pieces, Extent, ExtentInfo, ReadAt};
use crate::error::{Error, Result};
use crate::map::{AllocMap, State};
use crate::storage::Backing;

/// Marker type: end of stream.
pub const MARKER_EOS: u32 = 0;
/// Marker type: grain table follows.
pub const MARKER_GT: u32 = 1;
/// Marker type: grain directory follows.
pub const MARKER_GD: u32 = 2;
/// Marker type: footer follows.
pub const MARKER_FOOTER: u32 = 3;

/// Reads the footer of a streamOptimized file: the header copy at EOF−1024, after a footer marker
/// at EOF−1536. Returns the footer header.
pub fn read_footer(backing: &Arc<dyn Backing>, file_len: u64) -> Result<SparseHeader> {
    let path = backing.path();
    if file_len < 1536 + 512 {
        return Err(Error::corrupt(path, file_len, "file is too short to hold a footer and end-of-stream marker"));
    }
    let mut tail = [0u8; 1536];
    backing.read_exact_at(&mut tail, file_len - 1536)?;
    let marker = &tail[..512];
    if LE::read_u32(&marker[8..]) != 0 || LE::read_u32(&marker[12..]) != MARKER_FOOTER {
        return Err(Error::corrupt(
            path,
            file_len - 1536,
            "grain directory is `at end` but there is no footer marker 1536 bytes before the end (truncated stream?)",
        ));
    }
    let mut f = [0u8; 512];
    f.copy_from_slice(&tail[512..1024]);
    SparseHeader::parse(&f, path, file_len - 1024)
}

/// A streamOptimized extent, read-only.
#[derive(Debug)]
pub struct StreamExtent {
    dir: GrainDir,
    header: SparseHeader,
    grain_bytes: u64,
    len: u64,
    file_len: u64,
    /// The last grain decompressed: (grain number, bytes).
    last: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
}

impl StreamExtent {
    /// Opens a streamOptimized extent whose header (sector 0) is `header`.
    pub fn open(
        backing: Arc<dyn Backing>,
        header: SparseHeader,
        len: Option<u64>,
        cache: Arc<GtCache>,
    ) -> Result<Self> {
        let path = backing.path().to_path_buf();
        if header.flags & FLAG_COMPRESSED == 0 {
            return Err(Error::corrupt(&path, 8, "not a compressed extent"));
        }
        let file_len = backing.len()?;
        // Byte offset of the header (or footer) whose gdOffset is used, for errors.
        let header_at = if header.gd_offset == GD_AT_END { file_len.saturating_sub(1024) } else { 0 };
        let header = if header.gd_offset == GD_AT_END { read_footer(&backing, file_len)? } else { header };
        if header.gd_offset == GD_AT_END {
            return Err(Error::corrupt(&path, file_len - 1024, "the footer's grain directory offset is also `at end`"));
        }
        let capacity = header.capacity * 512;
        let len = len.unwrap_or(capacity);
        if len > capacity {
            return Err(Error::corrupt(
                &path,
                12,
                format!("capacity is {capacity} bytes but the descriptor maps {len}"),
            ));
        }
        let gd = GrainDir::read_directory(
            &backing,
            header.gd_offset,
            header.num_gdes(),
            header.num_gtes_per_gt,
            file_len,
            "grain directory",
            header_at + 56,
        )?;
        Ok(StreamExtent {
            dir: GrainDir::new(backing, gd, None, header.num_gtes_per_gt, cache),
            grain_bytes: header.grain_size * 512,
            header,
            len,
            file_len,
            last: Mutex::new(None),
        })
    }

    fn path(&self) -> &Path {
        self.dir.backing().path()
    }

    /// Grain table entry of grain `g` (0 = not present).
    fn entry(&self, g: u64) -> Result<(u64, u64)> {
        let gtes = self.dir.gtes() as u64;
        let (gt, idx) = (g / gtes, g % gtes);
        let v = match self.dir.table(gt)? {
            Some(t) => t[idx as usize].load(std::sync::atomic::Ordering::Acquire),
            None => 0,
        };
        Ok((v, self.dir.entry_offset(gt, idx)))
    }

    /// Decompresses grain `g` whose marker is at `sector`.
    fn grain(&self, g: u64, sector: u64, entry_at: u64) -> Result<Arc<Vec<u8>>> {
        if let Some((lg, data)) = self.last.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            if *lg == g {
                return Ok(data.clone());
            }
        }
        let data =
            Arc::new(read_grain(self.dir.backing(), sector, g, &self.header, self.len, self.file_len, entry_at)?);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((g, data.clone()));
        Ok(data)
    }
}

/// Reads and inflates the compressed grain `g` whose marker starts at `sector`, checking the marker's
/// LBA and size. Returns the grain's bytes (shorter only for a last grain past the capacity).
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
    if size == 0 || size >= 2 * grain_bytes + 1024 {
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
    let mut z = Decompress::new(true);
    let status = z
        .decompress(&comp, &mut out, FlushDecompress::Finish)
        .map_err(|e| Error::corrupt(path, at + 12, format!("grain {g} does not inflate: {e}")))?;
    let n = z.total_out() as usize;
    if status != Status::StreamEnd && n < grain_bytes as usize {
        return Err(Error::corrupt(
            path,
            at + 12,
            format!("grain {g}: compressed data ends early ({n} of {grain_bytes} bytes)"),
        ));
    }
    if n < want {
        return Err(Error::corrupt(path, at + 12, format!("grain {g} inflates to {n} bytes, expected {want}")));
    }
    Ok(out)
}

impl Extent for StreamExtent {
    fn len(&self) -> u64 {
        self.len
    }
    fn info(&self) -> ExtentInfo {
        ExtentInfo {
            kind: "STREAM",
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
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        for (p, l) in pieces(offset, buf.len() as u64, self.grain_bytes) {
            let g = p / self.grain_bytes;
            let dst = &mut buf[(p - offset) as usize..(p - offset + l) as usize];
            let (e, at) = self.entry(g)?;
            if e == 0 {
                dst.fill(0);
            } else {
                let data = self.grain(g, e, at)?;
                let w = (p % self.grain_bytes) as usize;
                dst.copy_from_slice(&data[w..w + l as usize]);
            }
        }
        Ok(())
    }
    fn write_at(&self, _buf: &[u8], _offset: u64, _below: Option<&dyn ReadAt>) -> Result<()> {
        Err(Error::ReadOnly {
            path: self.path().into(),
            what: "streamOptimized extents are read-only; clone to another format to modify".into(),
        })
    }
    fn map(&self, offset: u64, len: u64, base: u64, out: &mut AllocMap) -> Result<()> {
        for (p, l) in pieces(offset, len, self.grain_bytes) {
            let (e, _) = self.entry(p / self.grain_bytes)?;
            out.push(base + p, l, if e == 0 { State::Absent } else { State::Data }, 0);
        }
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
