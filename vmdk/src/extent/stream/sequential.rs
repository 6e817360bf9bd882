//! Reading streamOptimized files sequentially: walking the markers from overHead without seeking,
//! so a stream can come from a pipe.
//!
//! Tolerates what the different writers produce (vmdk-format.md §3):
//! - VMware and VirtualBox: `gdOffset = GD_AT_END`, GT markers inline, GD, footer, end-of-stream.
//! - qemu: the directory and every table before overHead, no footer and no end-of-stream marker (the
//!   file just ends, or ends in zero sectors, which read as an end-of-stream marker).
//! - open-vmdk: the directory and tables before overHead and no GT/GD markers.
//! - Metadata markers of unknown types (type 4 appears in vSphere files): skipped, 1 sector plus
//!   their `numSectors`.
//!
//! A stream that ends early is an error naming the byte offset where it ends, never a shorter disk:
//! a `GD_AT_END` stream must reach its end-of-stream marker, and a stream with its tables up front
//! must hold every grain they point to.
//!
//! The stream's shape is checked by [`super::layout::StreamModel`], as the random-access
//! reader checks it: header, embedded descriptor (createType and extent size), the tables up front,
//! the sizes stated by grain table, directory and footer markers, the footer itself (which must name
//! a directory that follows a directory marker, and be followed by the end-of-stream marker and
//! nothing else), and whole sectors. What follows any other end-of-stream marker must be zero
//! padding: records there would be lost.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian as LE};

use super::layout::StreamModel;
use super::layout::{inflate_grain, max_compressed_size};
use crate::error::{Error, Result};
use crate::extent::kdmv::{parse_marker, MARKER_EOS, MARKER_FOOTER, MARKER_GD, MARKER_GT};
use crate::extent::kdmv::{SparseHeader, GD_AT_END};
use crate::storage::Backing;

/// Where a sequential reader gets its bytes: reads in order, and skips forward.
pub trait SeqRead {
    /// Fills `buf` as far as the input goes; fewer bytes than `buf.len()` only at the end of input.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize>;
    /// Skips `n` bytes; returns how many were skipped (fewer only at the end of input).
    fn skip(&mut self, n: u64) -> Result<u64>;
    /// Passes the rest of the input: returns how many bytes there were and where (counted from
    /// the current position) the first non-zero one is.
    fn drain(&mut self) -> Result<(u64, Option<u64>)> {
        let mut buf = vec![0u8; 64 << 10];
        let (mut total, mut nonzero) = (0u64, None);
        loop {
            let n = self.read_full(&mut buf)?;
            if nonzero.is_none() {
                nonzero = buf[..n].iter().position(|&b| b != 0).map(|i| total + i as u64);
            }
            total += n as u64;
            if n < buf.len() {
                return Ok((total, nonzero));
            }
        }
    }
}

/// A [`SeqRead`] over any [`Read`] (standard input, a socket, a byte slice); errors name `name`.
#[derive(Debug)]
pub struct Pipe<R> {
    r: R,
    name: PathBuf,
    scratch: Vec<u8>,
}

impl<R: Read> Pipe<R> {
    /// Reads from `r`, called `name` in errors (for example `<stdin>`).
    pub fn new(r: R, name: impl Into<PathBuf>) -> Pipe<R> {
        Pipe { r, name: name.into(), scratch: Vec::new() }
    }
}

/// Reads from `r` until `buf` is full or the input ends (retrying interrupted reads); returns the
/// bytes read. Errors name `name` (the pipe or file being read).
pub fn read_full(r: &mut impl Read, buf: &mut [u8], name: &Path) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(name, "read", e)),
        }
    }
    Ok(n)
}

impl<R: Read> SeqRead for Pipe<R> {
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize> {
        read_full(&mut self.r, buf, &self.name)
    }
    fn skip(&mut self, n: u64) -> Result<u64> {
        if self.scratch.is_empty() {
            self.scratch = vec![0u8; 64 << 10];
        }
        let mut done = 0;
        while done < n {
            let want = (n - done).min(self.scratch.len() as u64) as usize;
            let mut s = std::mem::take(&mut self.scratch);
            let got = self.read_full(&mut s[..want]);
            self.scratch = s;
            let got = got?;
            done += got as u64;
            if got < want {
                break;
            }
        }
        Ok(done)
    }
}

/// A [`SeqRead`] over a file, reading by position (skips cost nothing).
#[derive(Debug)]
pub struct BackingCursor {
    backing: Arc<dyn Backing>,
    pos: u64,
    len: u64,
}

impl BackingCursor {
    /// Reads `backing` from its start.
    pub fn new(backing: Arc<dyn Backing>) -> Result<BackingCursor> {
        let len = backing.len()?;
        Ok(BackingCursor { backing, pos: 0, len })
    }
}

impl SeqRead for BackingCursor {
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        self.backing.read_exact_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn skip(&mut self, n: u64) -> Result<u64> {
        let k = n.min(self.len.saturating_sub(self.pos));
        self.pos += k;
        Ok(k)
    }
    fn drain(&mut self) -> Result<(u64, Option<u64>)> {
        // Holes are zeros: only the data runs are read.
        let start = self.pos;
        let rest = self.len.saturating_sub(start);
        let mut buf = Vec::new();
        for (s, l) in self.backing.data_runs(start, rest)? {
            let mut done = 0;
            while done < l {
                let n = (l - done).min(64 << 10);
                buf.resize(n as usize, 0);
                self.backing.read_exact_at(&mut buf, s + done)?;
                if let Some(i) = buf.iter().position(|&b| b != 0) {
                    self.pos = self.len;
                    return Ok((rest, Some(s + done + i as u64 - start)));
                }
                done += n;
            }
        }
        self.pos = self.len;
        Ok((rest, None))
    }
}

/// A compressed grain as found in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawGrain {
    /// Virtual sector where the grain starts (a multiple of the grain size).
    pub lba: u64,
    /// Byte offset of the grain marker in the stream.
    pub at: u64,
    /// The zlib stream (empty when the reader skips data).
    pub data: Vec<u8>,
}

/// A sequential reader of a streamOptimized file: the header, the embedded descriptor, then each
/// grain in the order the stream holds them. Its shape is checked by the same [`StreamModel`] as
/// the random-access reader's, and so are the grain table, directory and footer markers it passes.
#[derive(Debug)]
pub struct StreamReader<S> {
    src: S,
    /// Byte offset in the stream.
    pos: u64,
    model: StreamModel,
    descriptor: Option<String>,
    /// The highest sector a grain table entry before overHead points to (0: none seen).
    max_entry: u64,
    /// Sectors that directly follow a grain directory marker (where a footer may say the
    /// directory is).
    directories: Vec<u64>,
    /// Byte offset of the footer marker, once the footer was read (only the end-of-stream marker
    /// may follow).
    footer_at: Option<u64>,
    read_data: bool,
    done: bool,
    sector: Box<[u8; 512]>,
}

/// Bytes read at a time while passing the metadata before overHead.
const HEAD_BLOCK: usize = 64 << 10;

impl<S: SeqRead> StreamReader<S> {
    /// Reads the header and everything up to overHead (the embedded descriptor, and the directory
    /// and tables when a writer put them there). `path` names the stream in errors.
    pub fn new(src: S, path: &Path) -> Result<StreamReader<S>> {
        StreamReader::with_data(src, path, true)
    }

    /// Like [`StreamReader::new`]; with `read_data` false the grains' compressed bytes are skipped
    /// (for building an index of a file).
    pub fn with_data(mut src: S, path: &Path, read_data: bool) -> Result<StreamReader<S>> {
        let mut sector = Box::new([0u8; 512]);
        let n = src.read_full(&mut sector[..])?;
        if n < 512 {
            return Err(Error::corrupt(
                path,
                n as u64,
                format!("stream is truncated: it ends after {n} bytes, inside the 512-byte header"),
            ));
        }
        let header = SparseHeader::parse(&sector, path, 0)?;
        let model = StreamModel::new(header, path)?;
        let mut r = StreamReader {
            src,
            pos: 512,
            model,
            descriptor: None,
            max_entry: 0,
            directories: Vec::new(),
            footer_at: None,
            read_data,
            done: false,
            sector,
        };
        r.read_head()?;
        Ok(r)
    }

    /// The header (sector 0).
    pub fn header(&self) -> &SparseHeader {
        self.model.header()
    }

    /// The stream's shape, validated (with its embedded descriptor).
    pub fn model(&self) -> &StreamModel {
        &self.model
    }

    /// The embedded descriptor's text, if the stream has one.
    pub fn descriptor(&self) -> Option<&str> {
        self.descriptor.as_deref()
    }

    /// Capacity of the virtual disk in bytes.
    pub fn capacity(&self) -> u64 {
        self.model.capacity()
    }

    /// Bytes of one grain.
    pub fn grain_bytes(&self) -> u64 {
        self.model.grain_bytes()
    }

    /// Byte offset reached in the stream.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The stream's name in errors.
    pub fn path(&self) -> &Path {
        self.model.path()
    }

    fn truncated(&self, at: u64, what: String) -> Error {
        Error::corrupt(self.path(), at, format!("stream is truncated at byte {at}: {what}"))
    }

    /// Passes sectors 1..overHead, keeping the descriptor and the largest table entry.
    fn read_head(&mut self) -> Result<()> {
        let end = self.model.overhead_bytes();
        let desc = self.model.descriptor_range();
        let undeclared = crate::extent::kdmv::undeclared_descriptor_sector(self.model.header())
            .map(|(s, _)| (s * 512, s * 512 + 512));
        let gd = self.model.header_directory();
        let gd_bytes = gd.map(|(s, e)| e - s).unwrap_or(0);
        let mut desc_buf = Vec::new();
        let mut undeclared_buf = Vec::new();
        let mut gd_buf = Vec::new();
        // Tables (byte ranges), known once the directory has been read.
        let mut tables: Vec<(u64, u64)> = Vec::new();
        let mut next_table = 0;
        let gt_bytes = self.model.header().num_gtes_per_gt as u64 * 4;
        let mut block = vec![0u8; HEAD_BLOCK];
        while self.pos < end {
            let want = (end - self.pos).min(HEAD_BLOCK as u64) as usize;
            let interesting = |p: u64| {
                let hit = |r: Option<(u64, u64)>| r.is_some_and(|(s, e)| p < e && p + want as u64 > s);
                hit(desc)
                    || hit(undeclared)
                    || hit(gd)
                    || tables.get(next_table).is_some_and(|(s, _)| *s < p + want as u64)
            };
            if !interesting(self.pos) {
                let got = self.src.skip(want as u64)?;
                if got < want as u64 {
                    return Err(
                        self.truncated(self.pos + got, format!("the metadata before overHead ends at byte {end}"))
                    );
                }
                self.pos += got;
                continue;
            }
            let got = self.src.read_full(&mut block[..want])?;
            if got < want {
                return Err(
                    self.truncated(self.pos + got as u64, format!("the metadata before overHead ends at byte {end}"))
                );
            }
            let (b0, b1) = (self.pos, self.pos + want as u64);
            let copy = |r: Option<(u64, u64)>, out: &mut Vec<u8>| {
                if let Some((s, e)) = r {
                    let (a, z) = (s.max(b0), e.min(b1));
                    if a < z {
                        out.extend_from_slice(&block[(a - b0) as usize..(z - b0) as usize]);
                    }
                }
            };
            copy(desc, &mut desc_buf);
            copy(undeclared, &mut undeclared_buf);
            let had_gd = gd.is_some() && gd_buf.len() as u64 == gd_bytes;
            copy(gd, &mut gd_buf);
            if let (false, Some((gd_start, _))) = (had_gd, gd) {
                if gd_buf.len() as u64 == gd_bytes {
                    // The whole directory is in: its tables, in file order (all before overHead).
                    let entries: Vec<u32> = gd_buf.chunks_exact(4).map(LE::read_u32).collect();
                    self.model.check_header_tables(&entries, gd_start)?;
                    tables = entries
                        .iter()
                        .filter(|&&e| e != 0)
                        .map(|&e| (e as u64 * 512, e as u64 * 512 + gt_bytes))
                        .collect();
                    tables.sort_unstable();
                    tables.dedup();
                    // Tables that started in blocks already passed are not looked at.
                    next_table = tables.partition_point(|t| t.0 < b0);
                }
            }
            // Table entries in this block.
            while let Some(&(s, e)) = tables.get(next_table) {
                if s >= b1 {
                    break;
                }
                let (a, z) = (s.max(b0), e.min(b1));
                if a < z {
                    // Entries are 4-byte aligned relative to the table start, which is sector aligned.
                    for (k, c) in block[(a - b0) as usize..(z - b0) as usize].chunks_exact(4).enumerate() {
                        let e = LE::read_u32(c) as u64;
                        self.model.check_table_entry(e, a + k as u64 * 4)?;
                        self.max_entry = self.max_entry.max(e);
                    }
                }
                if e <= b1 {
                    next_table += 1;
                } else {
                    break;
                }
            }
            self.pos = b1;
        }
        crate::extent::kdmv::check_undeclared_descriptor(self.model.header(), &undeclared_buf, self.path())?;
        let n = desc_buf.iter().position(|&b| b == 0).unwrap_or(desc_buf.len());
        let text = String::from_utf8_lossy(&desc_buf[..n]).into_owned();
        self.model.set_descriptor(desc.map(|_| text.as_str()))?;
        if !text.trim().is_empty() {
            self.descriptor = Some(text);
        }
        Ok(())
    }

    /// The next grain, or `None` at the end of the stream (an end-of-stream marker, or for a stream
    /// whose tables are up front, the end of input after every grain they point to).
    pub fn next_grain(&mut self) -> Result<Option<RawGrain>> {
        if self.done {
            return Ok(None);
        }
        loop {
            let at = self.pos;
            let n = self.src.read_full(&mut self.sector[..])?;
            if n == 0 {
                return self.end_of_input(at);
            }
            if n < 512 {
                return Err(self.truncated(
                    at + n as u64,
                    format!("a marker at byte {at} needs 512 bytes, the stream ends after {n}"),
                ));
            }
            self.pos += 512;
            let (val, size, kind) = parse_marker(&self.sector[..]);
            if let Some(f) = self.footer_at {
                if size != 0 || kind != MARKER_EOS {
                    return Err(Error::corrupt(
                        self.path(),
                        at,
                        format!("the footer at byte {f} is followed by a record (size {size}, type {kind}), not by the end-of-stream marker"),
                    ));
                }
            }
            if size != 0 {
                return self.grain(at, val, size as u64).map(Some);
            }
            // A metadata marker: type at byte 12, `val` sectors of metadata follow.
            match kind {
                MARKER_EOS => {
                    if val == 0 && self.max_entry > at / 512 && self.footer_at.is_none() {
                        // A zero sector before grains the tables point to: padding, not the end.
                        continue;
                    }
                    self.finish(at)?;
                    return Ok(None);
                }
                MARKER_FOOTER => {
                    self.footer(at, val)?;
                    continue;
                }
                MARKER_GT | MARKER_GD => {
                    self.model.check_marker(kind, val, at)?;
                    if kind == MARKER_GD {
                        self.directories.push(at / 512 + 1);
                    }
                }
                _ => {}
            }
            let bytes = val.checked_mul(512).ok_or_else(|| {
                Error::corrupt(self.path(), at, format!("metadata marker of type {kind} claims {val} sectors"))
            })?;
            let got = self.src.skip(bytes)?;
            if got < bytes {
                return Err(self.truncated(
                    self.pos + got,
                    format!("the metadata marker of type {kind} at byte {at} is followed by {val} sectors"),
                ));
            }
            self.pos += got;
        }
    }

    /// Reads the grain whose marker (LBA `lba`, `size` compressed bytes) is at byte `at`; the
    /// marker's sector has been read.
    fn grain(&mut self, at: u64, lba: u64, size: u64) -> Result<RawGrain> {
        let h = self.model.header();
        let gb = self.model.grain_bytes();
        // A grain marker: LBA, compressed size, data from byte 12, padded to a sector.
        if !lba.is_multiple_of(h.grain_size) || lba >= h.capacity {
            return Err(Error::corrupt(
                self.path(),
                at,
                format!(
                    "grain marker says LBA {lba}, which is not the start of a grain inside the disk ({} sectors, grains of {})",
                    h.capacity, h.grain_size
                ),
            ));
        }
        if size >= max_compressed_size(gb) {
            return Err(Error::corrupt(
                self.path(),
                at + 8,
                format!("compressed grain size {size} is impossible for a {gb}-byte grain"),
            ));
        }
        let rest = (12 + size).div_ceil(512) * 512 - 512;
        let first = (size as usize).min(500);
        let mut data = Vec::new();
        if self.read_data {
            // Grown as bytes arrive, so a marker cannot make us allocate more than the input holds.
            data.extend_from_slice(&self.sector[12..12 + first]);
            let need = size as usize - first;
            let mut got = 0;
            while got < need {
                let step = (need - got).min(256 << 10);
                let at = data.len();
                data.resize(at + step, 0);
                let n = self.src.read_full(&mut data[at..])?;
                data.truncate(at + n);
                got += n;
                if n < step {
                    break;
                }
            }
            if got < need {
                return Err(self.truncated(
                    self.pos + got as u64,
                    format!("the grain at byte {at} (LBA {lba}) holds {size} compressed bytes"),
                ));
            }
            // A missing tail of zero padding is left to the next read, which finds the end.
            let skipped = self.src.skip(rest - need as u64)?;
            self.pos += need as u64 + skipped;
        } else {
            let need = (size as usize - first) as u64;
            let got = self.src.skip(rest)?;
            if got < need {
                return Err(self.truncated(
                    self.pos + got,
                    format!("the grain at byte {at} (LBA {lba}) holds {size} compressed bytes"),
                ));
            }
            self.pos += got;
        }
        Ok(RawGrain { lba, at, data })
    }

    /// Reads and checks the footer whose marker (`val` sectors) is at byte `at`: the model's
    /// footer rules, and a directory offset that names a directory the stream holds.
    fn footer(&mut self, at: u64, val: u64) -> Result<()> {
        self.model.check_marker(MARKER_FOOTER, val, at)?;
        let n = self.src.read_full(&mut self.sector[..])?;
        if n < 512 {
            return Err(self
                .truncated(at + 512 + n as u64, format!("the footer after the marker at byte {at} needs 512 bytes")));
        }
        self.pos += 512;
        let f = self.model.check_footer(&self.sector, at + 512)?;
        let header_gd = self.model.header().gd_offset;
        if f.gd_offset != header_gd && !self.directories.contains(&f.gd_offset) {
            return Err(Error::corrupt(
                self.path(),
                at + 512 + 56,
                format!(
                    "the footer names a grain directory at sector {}, but no grain directory marker precedes that sector (directories follow markers at sectors {:?})",
                    f.gd_offset,
                    self.directories.iter().map(|s| s - 1).collect::<Vec<_>>()
                ),
            ));
        }
        self.footer_at = Some(at);
        Ok(())
    }

    /// Ends the stream at the end-of-stream marker at byte `at`: after a footer nothing may follow;
    /// otherwise only zero padding, and the stream must be whole sectors.
    fn finish(&mut self, at: u64) -> Result<()> {
        let (rest, nonzero) = self.src.drain()?;
        let end = self.pos + rest;
        if let Some(f) = self.footer_at {
            if rest > 0 {
                return Err(Error::corrupt(
                    self.path(),
                    self.pos,
                    format!(
                        "{rest} bytes follow the end-of-stream marker at byte {at} that closes the footer at byte {f}"
                    ),
                ));
            }
        } else if let Some(z) = nonzero {
            return Err(Error::corrupt(
                self.path(),
                self.pos + z,
                format!("data follows the end-of-stream marker at byte {at}: the stream ends there, so what follows would be lost"),
            ));
        }
        self.model.check_length(end)?;
        self.pos = end;
        self.done = true;
        Ok(())
    }

    fn end_of_input(&mut self, at: u64) -> Result<Option<RawGrain>> {
        if self.model.header().gd_offset == GD_AT_END || self.footer_at.is_some() {
            return Err(self.truncated(
                at,
                "the stream ends without an end-of-stream marker (the header's directory is `at end`, or a footer was read)".into(),
            ));
        }
        if self.max_entry > 0 && self.max_entry >= at / 512 {
            return Err(self.truncated(
                at,
                format!("a grain table points to sector {}, past the end of the stream", self.max_entry),
            ));
        }
        self.done = true;
        Ok(None)
    }

    /// Inflates `g` into `out` (one grain; the part of a last grain past the capacity is dropped).
    pub fn inflate(&self, g: &RawGrain, out: &mut [u8]) -> Result<()> {
        inflate_into(self.path(), self.model.header(), g, out)
    }

    /// The whole disk in one buffer of its capacity, every grain inflated in place (small disks
    /// and tests: the buffer is as large as the disk).
    pub fn read_to_vec(mut self) -> Result<Vec<u8>> {
        let mut disk = vec![0u8; self.capacity() as usize];
        while let Some(g) = self.next_grain()? {
            let s = (g.lba * 512) as usize;
            let e = (s + self.grain_bytes() as usize).min(disk.len());
            self.inflate(&g, &mut disk[s..e])?;
        }
        Ok(disk)
    }
}

/// Inflates the grain `g` of a stream with `header` into `out` (at most one grain of bytes; the grain
/// must fill it, except that a last grain may end at the capacity).
pub fn inflate_into(path: &Path, header: &SparseHeader, g: &RawGrain, out: &mut [u8]) -> Result<()> {
    let gb = header.grain_size * 512;
    let start = g.lba * 512;
    let want = gb.min((header.capacity * 512).saturating_sub(start)).min(out.len() as u64) as usize;
    inflate_grain(path, g.at + 12, &g.data, g.lba / header.grain_size, gb, want, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extent::stream::writer::{stream_header, EncodedGrains, GrainEncoder, StreamWriter, WriteSink};

    fn desc(cap_grains: u64) -> String {
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n# Extent description\nRW {} SPARSE \"x.vmdk\"\n",
            cap_grains * 128
        )
    }

    fn sample(cap_grains: u64) -> (Vec<u8>, Vec<u8>) {
        let gb = 65536usize;
        let mut disk = vec![0u8; cap_grains as usize * gb];
        for (i, c) in disk.chunks_mut(gb).enumerate() {
            if i % 3 == 0 {
                c[..100].fill((i % 250) as u8 + 1);
            }
        }
        let h = stream_header(cap_grains * 128, 128, 20);
        let mut w =
            StreamWriter::new(WriteSink::new(Vec::new(), "<mem>"), h, desc(cap_grains).as_bytes(), Path::new("<mem>"))
                .unwrap();
        let mut e = GrainEncoder::new(6, gb).unwrap();
        w.append(&EncodedGrains::encode(&mut e, 0, &disk).unwrap()).unwrap();
        let (s, len) = w.finish().unwrap();
        let file = s.into_inner();
        assert_eq!(file.len() as u64, len);
        (disk, file)
    }

    fn read_all(file: &[u8]) -> Result<Vec<u8>> {
        StreamReader::new(Pipe::new(file, "<mem>"), Path::new("<mem>"))?.read_to_vec()
    }

    #[test]
    fn round_trip_through_a_pipe() {
        let (disk, file) = sample(1100);
        assert_eq!(read_all(&file).unwrap(), disk);
        let r = StreamReader::new(Pipe::new(&file[..], "<mem>"), Path::new("<mem>")).unwrap();
        assert_eq!(r.descriptor(), Some(desc(1100).as_str()));
        assert_eq!(r.model().descriptor().map(|d| d.total_sectors()), Some(1100 * 128));
    }

    #[test]
    fn truncation_is_an_error_naming_the_offset() {
        let (_, file) = sample(40);
        for cut in [100, 600, 128 * 512 + 700, file.len() - 512, file.len() - 1] {
            let e = read_all(&file[..cut]).unwrap_err().to_string();
            assert!(e.contains("truncated") && e.contains(&format!("byte offset {cut}:")), "{cut}: {e}");
        }
    }

    #[test]
    fn unknown_markers_are_skipped() {
        let (disk, file) = sample(8);
        let insert = |at: usize| {
            let mut f = file[..at].to_vec();
            f.extend_from_slice(&crate::extent::stream::writer::metadata_marker(2, 4));
            f.extend_from_slice(&[0xAB; 1024]);
            f.extend_from_slice(&file[at..]);
            f
        };
        // A type-4 marker with 2 sectors of payload between the directory and the footer.
        assert_eq!(read_all(&insert(file.len() - 1536)).unwrap(), disk);
        // The same right at overHead moves the directory: the footer's offset no longer names a
        // directory (random access would read the wrong sectors), so the walk refuses it too.
        let e = read_all(&insert(128 * 512)).unwrap_err();
        assert!(e.to_string().contains("no grain directory marker precedes"), "{e}");
    }
}
