//! Writing streamOptimized files: compressed grain records, and the appender that lays them out as
//! VMware does.
//!
//! ```text
//! header (gdOffset = GD_AT_END) | descriptor | padding to overHead
//! for each grain table with data: grain records (marker + zlib stream, padded to a sector), GT marker, GT
//! GD marker, GD | footer marker, footer (the header with the real gdOffset) | end-of-stream marker
//! ```
//!
//! Every write is an append, so the stream can go to a pipe. Compression ([`GrainEncoder`]) is
//! separate from laying out ([`StreamWriter`]) so that many threads can compress while one appends
//! in LBA order.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian as LE};
use flate2::{Compress, Compression, FlushCompress, Status};

use crate::error::{Error, Result};
use crate::extent::is_zero;
use crate::extent::kdmv::{SparseHeader, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NEWLINE_TEST, GD_AT_END};
use crate::extent::kdmv::{MARKER_EOS, MARKER_FOOTER, MARKER_GD, MARKER_GT};
use crate::storage::Backing;

/// Entries per grain table in the files we write.
pub const GTES_PER_GT: u32 = 512;

/// Bytes of a grain marker before the compressed data (`u64 lba`, `u32 size`).
pub const GRAIN_MARKER_BYTES: usize = 12;

/// Order-0 entropy (bits per byte) at or above which a grain is stored without compression: deflate
/// cannot gain more than about 0.6 % on such bytes, and trying costs more than everything else.
pub const INCOMPRESSIBLE_BITS: f64 = 7.95;

/// The header of a new streamOptimized file: version 3, flags 0x30001 (newline test, compressed,
/// markers; no redundant directory), deflate, `gdOffset = GD_AT_END`, the descriptor at sector 1,
/// and the first grain at the first grain-aligned sector after it.
pub fn stream_header(capacity_sectors: u64, grain_sectors: u64, descriptor_sectors: u64) -> SparseHeader {
    let meta = 1 + descriptor_sectors;
    SparseHeader {
        version: 3,
        flags: FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
        capacity: capacity_sectors,
        grain_size: grain_sectors,
        descriptor_offset: if descriptor_sectors > 0 { 1 } else { 0 },
        descriptor_size: descriptor_sectors,
        num_gtes_per_gt: GTES_PER_GT,
        rgd_offset: 0,
        gd_offset: GD_AT_END,
        overhead: meta.div_ceil(grain_sectors) * grain_sectors,
        unclean_shutdown: false,
        compress_algorithm: 1,
    }
}

/// A metadata marker sector: `numSectors`, `size = 0`, `type`, zero padding.
pub fn metadata_marker(num_sectors: u64, kind: u32) -> [u8; 512] {
    let mut m = [0u8; 512];
    LE::write_u64(&mut m[0..], num_sectors);
    LE::write_u32(&mut m[12..], kind);
    m
}

/// True when `data` looks incompressible: its byte entropy is at least [`INCOMPRESSIBLE_BITS`].
pub fn looks_incompressible(data: &[u8]) -> bool {
    if data.len() < 4096 {
        return false;
    }
    // Four interleaved histograms avoid store-to-load stalls on runs of equal bytes.
    let mut h = [[0u32; 256]; 4];
    let mut quads = data.chunks_exact(4);
    for q in &mut quads {
        h[0][q[0] as usize] += 1;
        h[1][q[1] as usize] += 1;
        h[2][q[2] as usize] += 1;
        h[3][q[3] as usize] += 1;
    }
    for &b in quads.remainder() {
        h[0][b as usize] += 1;
    }
    let n = data.len() as f64;
    let mut bits = 0.0;
    for (((a, b), c), d) in h[0].iter().zip(&h[1]).zip(&h[2]).zip(&h[3]) {
        let c = a + b + c + d;
        if c > 0 {
            let p = c as f64 / n;
            bits -= p * p.log2();
        }
    }
    bits >= INCOMPRESSIBLE_BITS
}

/// Compresses grains into grain records (marker, zlib stream, zero padding to a sector). One per
/// thread; reused across grains.
pub struct GrainEncoder {
    level: u32,
    grain_bytes: usize,
    z: Compress,
    stored: Compress,
    pad: Vec<u8>,
}

impl std::fmt::Debug for GrainEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrainEncoder").field("level", &self.level).field("grain_bytes", &self.grain_bytes).finish()
    }
}

impl GrainEncoder {
    /// An encoder for `grain_bytes`-byte grains at zlib `level` (0–9). Level 0 stores every grain;
    /// levels 1–8 store grains that [look incompressible](looks_incompressible) and compress the
    /// rest; level 9 compresses every grain.
    pub fn new(level: u32, grain_bytes: usize) -> Result<GrainEncoder> {
        if level > 9 {
            return Err(Error::InvalidArgument(format!("compression level {level} is not between 0 and 9")));
        }
        if grain_bytes == 0 || !grain_bytes.is_multiple_of(512) {
            return Err(Error::InvalidArgument(format!("grain of {grain_bytes} bytes is not a multiple of 512")));
        }
        Ok(GrainEncoder {
            level,
            grain_bytes,
            z: Compress::new(Compression::new(level), true),
            stored: Compress::new(Compression::none(), true),
            pad: Vec::new(),
        })
    }

    /// The compression level.
    pub fn level(&self) -> u32 {
        self.level
    }

    /// Appends the record of the grain starting at sector `lba` to `out`. `data` is the grain's
    /// bytes; a shorter last grain is padded with zeros to a whole grain, as qemu expects.
    pub fn encode(&mut self, lba: u64, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let g = self.grain_bytes;
        if data.len() > g {
            return Err(Error::InvalidArgument(format!("grain data of {} bytes exceeds the grain ({g})", data.len())));
        }
        let data: &[u8] = if data.len() < g {
            self.pad.clear();
            self.pad.extend_from_slice(data);
            self.pad.resize(g, 0);
            &self.pad
        } else {
            data
        };
        let store = self.level == 0 || (self.level < 9 && looks_incompressible(data));
        let z = if store { &mut self.stored } else { &mut self.z };
        z.reset();
        let start = out.len();
        out.extend_from_slice(&[0u8; GRAIN_MARKER_BYTES]);
        // zlib's compressBound plus the stored-block headers.
        out.reserve(g + (g >> 12) + (g >> 14) + 64 + 512);
        loop {
            let before = z.total_in() as usize;
            let status = z
                .compress_vec(&data[before..], out, FlushCompress::Finish)
                .map_err(|e| Error::InvalidArgument(format!("compressing grain at sector {lba}: {e}")))?;
            match status {
                Status::StreamEnd => break,
                Status::Ok | Status::BufError => out.reserve(g / 4 + 512),
            }
        }
        let size = out.len() - start - GRAIN_MARKER_BYTES;
        LE::write_u64(&mut out[start..], lba);
        LE::write_u32(&mut out[start + 8..], size as u32);
        let rec = (out.len() - start).div_ceil(512) * 512;
        out.resize(start + rec, 0);
        Ok(())
    }
}

/// Grain records ready to append: the records back to back, and for each its grain number and
/// byte offset in `bytes`, in increasing grain order.
#[derive(Debug, Default, Clone)]
pub struct EncodedGrains {
    /// The records.
    pub bytes: Vec<u8>,
    /// `(grain number, offset of its record in bytes)`.
    pub grains: Vec<(u64, usize)>,
}

impl EncodedGrains {
    /// Encodes the non-zero grains of `buf`, which holds the disk from byte `offset` (a multiple of
    /// the grain size). Grains that are entirely zero are left out.
    pub fn encode(enc: &mut GrainEncoder, offset: u64, buf: &[u8]) -> Result<EncodedGrains> {
        let mut out = EncodedGrains::default();
        out.push_grains(enc, offset, buf)?;
        Ok(out)
    }

    /// Appends the records of the non-zero grains of `buf` (the disk from byte `offset`, a multiple
    /// of the grain size; the last grain may be short). The grains must follow those already held.
    pub fn push_grains(&mut self, enc: &mut GrainEncoder, offset: u64, buf: &[u8]) -> Result<()> {
        let g = enc.grain_bytes;
        if !offset.is_multiple_of(g as u64) {
            return Err(Error::InvalidArgument(format!("offset {offset} is not on a grain boundary")));
        }
        for (i, grain) in buf.chunks(g).enumerate() {
            if is_zero(grain) {
                continue;
            }
            let n = offset / g as u64 + i as u64;
            self.grains.push((n, self.bytes.len()));
            enc.encode(n * (g as u64 / 512), grain, &mut self.bytes)?;
        }
        Ok(())
    }
}

/// Where a stream is appended: a file (by position) or any [`Write`] (a pipe).
pub trait Sink: Send {
    /// Appends `buf`.
    fn put(&mut self, buf: &[u8]) -> Result<()>;
    /// Flushes what was appended.
    fn flush(&mut self) -> Result<()>;
}

/// Appends to a file through its [`Backing`].
#[derive(Debug)]
pub struct BackingSink {
    backing: Arc<dyn Backing>,
    pos: u64,
}

impl BackingSink {
    /// Appends from the start of `backing` (an empty file).
    pub fn new(backing: Arc<dyn Backing>) -> BackingSink {
        BackingSink { backing, pos: 0 }
    }
}

impl Sink for BackingSink {
    fn put(&mut self, buf: &[u8]) -> Result<()> {
        self.backing.write_all_at(buf, self.pos)?;
        self.pos += buf.len() as u64;
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Appends to a [`Write`] (standard output, a socket); errors name `name`.
#[derive(Debug)]
pub struct WriteSink<W> {
    out: W,
    name: PathBuf,
}

impl<W: Write + Send> WriteSink<W> {
    /// A sink over `out`, called `name` in errors (for example `<stdout>`).
    pub fn new(out: W, name: impl Into<PathBuf>) -> WriteSink<W> {
        WriteSink { out, name: name.into() }
    }

    /// The writer back.
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write + Send> Sink for WriteSink<W> {
    fn put(&mut self, buf: &[u8]) -> Result<()> {
        self.out.write_all(buf).map_err(|e| Error::io(&self.name, format!("write {} bytes", buf.len()), e))
    }
    fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.name, "flush", e))
    }
}

/// Lays out a streamOptimized file in one pass of appends: takes grain records in increasing grain
/// order, writes a grain table after the records of each table that has any, and the directory,
/// footer and end-of-stream marker at [`StreamWriter::finish`]. Tables with no grains are left
/// out (directory entry 0). Memory: the directory plus one table.
pub struct StreamWriter<S: Sink> {
    sink: S,
    header: SparseHeader,
    name: PathBuf,
    /// Sectors appended so far.
    pos: u64,
    gd: Vec<u32>,
    gt: Vec<u32>,
    cur_gt: Option<u64>,
    next_grain: u64,
    grains: u64,
}

impl<S: Sink> std::fmt::Debug for StreamWriter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWriter").field("name", &self.name).field("pos", &self.pos).finish_non_exhaustive()
    }
}

impl<S: Sink> StreamWriter<S> {
    /// Starts a stream: writes `header` (whose gdOffset must be [`GD_AT_END`]), the embedded
    /// `descriptor` at its offset, and zeros up to overHead. `name` is for errors.
    pub fn new(mut sink: S, header: SparseHeader, descriptor: &[u8], name: &Path) -> Result<StreamWriter<S>> {
        let bad = |what: String| Error::InvalidArgument(format!("{}: {what}", name.display()));
        if header.gd_offset != GD_AT_END || header.num_gtes_per_gt == 0 || header.grain_size == 0 {
            return Err(bad("a stream header needs gdOffset GD_AT_END and non-zero table and grain sizes".into()));
        }
        let room = header.descriptor_size * 512;
        if descriptor.len() as u64 > room || (header.descriptor_offset + header.descriptor_size) > header.overhead {
            return Err(bad(format!(
                "descriptor of {} bytes does not fit {room} bytes before overHead",
                descriptor.len()
            )));
        }
        let num_gdes = header.num_gdes();
        if num_gdes > (1 << 26) {
            return Err(bad(format!("{num_gdes} grain tables are too many for one stream")));
        }
        let mut head = vec![0u8; (header.overhead * 512) as usize];
        head[..512].copy_from_slice(&header.to_bytes());
        let at = (header.descriptor_offset * 512) as usize;
        head[at..at + descriptor.len()].copy_from_slice(descriptor);
        sink.put(&head)?;
        Ok(StreamWriter {
            sink,
            gd: vec![0; num_gdes as usize],
            gt: vec![0; header.num_gtes_per_gt as usize],
            pos: header.overhead,
            header,
            name: name.to_path_buf(),
            cur_gt: None,
            next_grain: 0,
            grains: 0,
        })
    }

    /// Bytes appended so far.
    pub fn bytes_written(&self) -> u64 {
        self.pos * 512
    }

    /// Grains written so far.
    pub fn grains(&self) -> u64 {
        self.grains
    }

    fn sector_u32(&self, what: &str) -> Result<u32> {
        u32::try_from(self.pos).map_err(|_| {
            Error::InvalidArgument(format!(
                "{}: {what} would start past 2 TiB into the stream, beyond what 32-bit table entries address",
                self.name.display()
            ))
        })
    }

    fn flush_table(&mut self) -> Result<()> {
        let Some(t) = self.cur_gt.take() else { return Ok(()) };
        let sectors = (self.gt.len() as u64 * 4).div_ceil(512);
        let mut rec = vec![0u8; (512 + sectors * 512) as usize];
        rec[..512].copy_from_slice(&metadata_marker(sectors, MARKER_GT));
        for (c, v) in rec[512..].chunks_exact_mut(4).zip(&self.gt) {
            LE::write_u32(c, *v);
        }
        self.pos += 1;
        self.gd[t as usize] = self.sector_u32("a grain table")?;
        self.sink.put(&rec)?;
        self.pos += sectors;
        self.gt.fill(0);
        Ok(())
    }

    /// Appends grain records (their grain numbers must be above every grain appended before).
    pub fn append(&mut self, enc: &EncodedGrains) -> Result<()> {
        let gtes = self.header.num_gtes_per_gt as u64;
        let total = self.header.capacity.div_ceil(self.header.grain_size);
        let mut i = 0;
        while i < enc.grains.len() {
            // A run of records in one grain table, written with one call.
            let (first, start) = enc.grains[i];
            let table = first / gtes;
            let mut j = i;
            while j < enc.grains.len() && enc.grains[j].0 / gtes == table {
                let (g, off) = enc.grains[j];
                if g < self.next_grain || g >= total {
                    return Err(Error::InvalidArgument(format!(
                        "{}: grain {g} is out of order or outside the disk ({total} grains, next expected at or after {})",
                        self.name.display(),
                        self.next_grain
                    )));
                }
                if self.cur_gt != Some(table) {
                    self.flush_table()?;
                    self.cur_gt = Some(table);
                }
                let end = enc.grains.get(j + 1).map(|x| x.1).unwrap_or(enc.bytes.len());
                if end <= off || !(end - off).is_multiple_of(512) || end > enc.bytes.len() {
                    return Err(Error::InvalidArgument(format!("grain {g}: record is not whole sectors")));
                }
                let at = self.pos + (off - start) as u64 / 512;
                self.gt[(g % gtes) as usize] = u32::try_from(at).map_err(|_| {
                    Error::InvalidArgument(format!(
                        "{}: the stream grows past 2 TiB, beyond what 32-bit table entries address",
                        self.name.display()
                    ))
                })?;
                self.next_grain = g + 1;
                self.grains += 1;
                j += 1;
            }
            let end = enc.grains.get(j).map(|x| x.1).unwrap_or(enc.bytes.len());
            self.sink.put(&enc.bytes[start..end])?;
            self.pos += (end - start) as u64 / 512;
            i = j;
        }
        Ok(())
    }

    /// Writes the last grain table, the directory, the footer and the end-of-stream marker; returns
    /// the sink and the total length in bytes.
    pub fn finish(mut self) -> Result<(S, u64)> {
        self.flush_table()?;
        let gd_sectors = (self.gd.len() as u64 * 4).div_ceil(512);
        let mut tail = vec![0u8; (512 + gd_sectors * 512 + 512 + 512 + 512) as usize];
        tail[..512].copy_from_slice(&metadata_marker(gd_sectors, MARKER_GD));
        for (c, v) in tail[512..].chunks_exact_mut(4).zip(&self.gd) {
            LE::write_u32(c, *v);
        }
        let gd_at = self.pos + 1;
        let mut footer = self.header.clone();
        footer.gd_offset = gd_at;
        let f = (512 + gd_sectors * 512) as usize;
        tail[f..f + 512].copy_from_slice(&metadata_marker(1, MARKER_FOOTER));
        tail[f + 512..f + 1024].copy_from_slice(&footer.to_bytes());
        tail[f + 1024..f + 1536].copy_from_slice(&metadata_marker(0, MARKER_EOS));
        self.sink.put(&tail)?;
        self.pos += tail.len() as u64 / 512;
        self.sink.flush()?;
        Ok((self.sink, self.pos * 512))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_vmware_shaped() {
        let h = stream_header(2_097_152, 128, 20);
        assert_eq!((h.version, h.flags, h.overhead, h.gd_offset), (3, 0x30001, 128, GD_AT_END));
        let b = h.to_bytes();
        assert_eq!(SparseHeader::parse(&b, Path::new("x"), 0).unwrap(), h);
    }

    #[test]
    fn random_bytes_are_stored_and_text_is_compressed() {
        let mut x: u64 = 1;
        let random: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(looks_incompressible(&random));
        let text: Vec<u8> = b"the quick brown fox ".iter().cycle().take(65536).copied().collect();
        assert!(!looks_incompressible(&text));
        let mut e = GrainEncoder::new(6, 65536).unwrap();
        let mut out = Vec::new();
        e.encode(128, &random, &mut out).unwrap();
        assert!(out.len() <= 65536 + 512 && out.len() > 65536, "{}", out.len());
        assert_eq!(LE::read_u64(&out), 128);
        let n = out.len();
        e.encode(256, &text[..1000], &mut out).unwrap();
        assert_eq!(out.len() - n, 512);
        assert_eq!(&out[n + 12..n + 14], &[0x78, 0x9c]);
    }
}
