//! streamOptimized output and pipes: the compressing [`StreamTarget`], the plain-bytes
//! [`RawTarget`] (for standard output), and the [`Feed`]s that read a stream or a raw image from a
//! pipe ([`StreamFeed`], [`RawFeed`], [`open_input`]).
//!
//! Compression runs in [`Target::encode`] on the engine's reader threads; the engine's ordered
//! writer then appends the compressed grains in LBA order ([`StreamWriter`]), writing each grain
//! table after its grains and the directory, footer and end-of-stream marker at the end. Nothing is
//! ever rewritten, so the same target writes a file or standard output.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use vmdk::extent::kdmv::{SparseHeader, MAGIC};
use vmdk::extent::stream::sequential::{inflate_into, Pipe, RawGrain, SeqRead, StreamReader};
use vmdk::extent::stream::writer::{EncodedGrains, GrainEncoder, Sink, StreamWriter};

use crate::engine::{EngineOptions, Feed, FeedPiece, Needs, Piece, Target};
use crate::error::{Error, Result};

/// The compression level used unless one is asked for: zlib's default, what qemu uses.
pub const DEFAULT_COMPRESS_LEVEL: u32 = 6;

/// Largest grain accepted from a pipe (the engine holds a few chunks of at least a grain each).
pub const MAX_PIPE_GRAIN: u64 = 8 << 20;

/// Writes a streamOptimized disk: grains compressed in parallel ([`Target::encode`]), appended in
/// order by the engine's ordered writer ([`Target::write`]; the target says so in
/// [`Target::needs`]), then call [`StreamTarget::finish`].
pub struct StreamTarget<S: Sink> {
    writer: Mutex<Option<StreamWriter<S>>>,
    encoders: Mutex<Vec<GrainEncoder>>,
    level: u32,
    grain_bytes: u64,
    capacity: u64,
}

impl<S: Sink> std::fmt::Debug for StreamTarget<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTarget")
            .field("level", &self.level)
            .field("grain_bytes", &self.grain_bytes)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl<S: Sink> StreamTarget<S> {
    /// Starts a stream on `sink`: writes `header` and `descriptor` (see
    /// [`vmdk::create::stream_layout`]). `level` is the zlib level, 0–9; `name` is for errors.
    pub fn new(sink: S, header: SparseHeader, descriptor: &str, name: &Path, level: u32) -> Result<StreamTarget<S>> {
        GrainEncoder::new(level, 512)?;
        let grain_bytes = header.grain_size * 512;
        let capacity = header.capacity * 512;
        let writer = StreamWriter::new(sink, header, descriptor.as_bytes(), name)?;
        Ok(StreamTarget {
            writer: Mutex::new(Some(writer)),
            encoders: Mutex::new(Vec::new()),
            level,
            grain_bytes,
            capacity,
        })
    }

    /// Writes the last grain table, the directory, footer and end-of-stream marker; returns the
    /// sink and the stream's length in bytes.
    pub fn finish(self) -> Result<(S, u64)> {
        let w = self.writer.into_inner().unwrap_or_else(|p| p.into_inner());
        let w = w.ok_or_else(|| Error::Usage("stream already finished".into()))?;
        Ok(w.finish()?)
    }
}

impl<S: Sink> Target for StreamTarget<S> {
    type Encoded = EncodedGrains;

    fn capacity(&self) -> u64 {
        self.capacity
    }

    /// One ordered writer, zero detection per grain, map ranges widened to whole grains (and so
    /// chunks of at least a grain).
    fn needs(&self) -> Needs {
        Needs { ordered: true, dense: false, align: self.grain_bytes, zero_block: self.grain_bytes as usize }
    }

    fn encode(&self, piece: &Piece<'_>) -> Result<EncodedGrains> {
        let mut enc = match self.encoders.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            Some(e) => e,
            None => GrainEncoder::new(self.level, self.grain_bytes as usize)?,
        };
        let mut out = EncodedGrains::default();
        let r = piece
            .runs
            .iter()
            .try_for_each(|&(s, l)| out.push_grains(&mut enc, piece.offset + s as u64, &piece.buf[s..s + l]));
        self.encoders.lock().unwrap_or_else(|p| p.into_inner()).push(enc);
        r?;
        Ok(out)
    }

    fn write(&self, piece: &Piece<'_>, encoded: EncodedGrains) -> Result<u64> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let w = w.as_mut().ok_or_else(|| Error::Usage("stream already finished".into()))?;
        w.append(&encoded)?;
        Ok(piece.runs.iter().map(|r| r.1 as u64).sum())
    }
}

/// Writes the plain bytes of a disk, in order, to a [`Write`] (standard output): it needs one
/// ordered writer and every byte, zeros included ([`Target::needs`]).
pub struct RawTarget<W: Write + Send> {
    out: Mutex<(W, u64)>,
    capacity: u64,
    name: PathBuf,
}

impl<W: Write + Send> std::fmt::Debug for RawTarget<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawTarget").field("capacity", &self.capacity).field("name", &self.name).finish_non_exhaustive()
    }
}

impl<W: Write + Send> RawTarget<W> {
    /// A disk of `capacity` bytes written to `out`, called `name` in errors.
    pub fn new(out: W, capacity: u64, name: impl Into<PathBuf>) -> RawTarget<W> {
        RawTarget { out: Mutex::new((out, 0)), capacity, name: name.into() }
    }

    /// Flushes; returns the writer and the bytes written (the capacity after a complete copy).
    pub fn finish(self) -> Result<(W, u64)> {
        let (mut w, n) = self.out.into_inner().unwrap_or_else(|p| p.into_inner());
        w.flush().map_err(|e| Error::Io { path: self.name.clone(), source: e })?;
        Ok((w, n))
    }
}

impl<W: Write + Send> Target for RawTarget<W> {
    type Encoded = ();

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn needs(&self) -> Needs {
        Needs { ordered: true, dense: true, ..Needs::default() }
    }

    fn encode(&self, _piece: &Piece<'_>) -> Result<()> {
        Ok(())
    }

    fn write(&self, piece: &Piece<'_>, _encoded: ()) -> Result<u64> {
        let mut g = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if piece.offset != g.1 {
            return Err(Error::Usage(format!(
                "raw output must be written in order: got {} bytes at {}, expected offset {}",
                piece.buf.len(),
                piece.offset,
                g.1
            )));
        }
        g.0.write_all(piece.buf).map_err(|e| Error::Io { path: self.name.clone(), source: e })?;
        g.1 += piece.buf.len() as u64;
        Ok(piece.buf.len() as u64)
    }
}

/// A streamOptimized stream read from a pipe, as engine pieces: the compressed grains of each
/// chunk are read in order (under the engine's planner lock) and inflated on the reader threads.
/// Grains must come in increasing LBA order, as every writer puts them.
pub struct StreamFeed<S: SeqRead> {
    reader: StreamReader<S>,
    pending: Option<RawGrain>,
    next_lba: u64,
}

impl<S: SeqRead> std::fmt::Debug for StreamFeed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamFeed").field("path", &self.reader.path()).finish_non_exhaustive()
    }
}

impl<S: SeqRead> StreamFeed<S> {
    /// Feeds the grains of `reader`.
    pub fn new(reader: StreamReader<S>) -> Result<StreamFeed<S>> {
        if reader.grain_bytes() > MAX_PIPE_GRAIN {
            return Err(vmdk::Error::unsupported(
                reader.path(),
                format!(
                    "grains of {} bytes are too large to read from a pipe (at most {MAX_PIPE_GRAIN})",
                    reader.grain_bytes()
                ),
            )
            .into());
        }
        Ok(StreamFeed { reader, pending: None, next_lba: 0 })
    }

    /// The stream's reader (header, descriptor).
    pub fn reader(&self) -> &StreamReader<S> {
        &self.reader
    }

    /// The engine settings a feed of this stream needs: chunks of at least a grain.
    pub fn engine(&self, mut e: EngineOptions) -> EngineOptions {
        e.chunk = e.chunk.max(self.reader.grain_bytes());
        e
    }

    fn next_in_order(&mut self) -> vmdk::Result<Option<RawGrain>> {
        let Some(g) = self.reader.next_grain()? else { return Ok(None) };
        if g.lba < self.next_lba {
            return Err(vmdk::Error::corrupt(
                self.reader.path(),
                g.at,
                format!(
                    "grain at LBA {} comes after LBA {}: a stream read from a pipe must hold its grains in increasing order",
                    g.lba,
                    self.next_lba.saturating_sub(self.reader.header().grain_size)
                ),
            ));
        }
        self.next_lba = g.lba + self.reader.header().grain_size;
        Ok(Some(g))
    }
}

impl<S: SeqRead + Send> Feed for StreamFeed<S> {
    fn capacity(&self) -> u64 {
        self.reader.capacity()
    }

    fn next(&mut self, chunk: u64) -> vmdk::Result<Option<FeedPiece>> {
        let first = match self.pending.take() {
            Some(g) => g,
            None => match self.next_in_order()? {
                Some(g) => g,
                None => return Ok(None),
            },
        };
        let gb = self.reader.grain_bytes();
        let which = first.lba * 512 / chunk;
        let mut grains = vec![first];
        while let Some(g) = self.next_in_order()? {
            if g.lba * 512 / chunk == which {
                grains.push(g);
            } else {
                self.pending = Some(g);
                break;
            }
        }
        let offset = grains[0].lba * 512;
        let last = grains.last().map(|g| g.lba * 512).unwrap_or(offset);
        let end = (last + gb).min(self.reader.capacity());
        let header = self.reader.header().clone();
        let path = self.reader.path().to_path_buf();
        let fill = move |buf: &mut [u8]| -> vmdk::Result<()> {
            for g in &grains {
                let s = (g.lba * 512 - offset) as usize;
                let e = (s + gb as usize).min(buf.len());
                inflate_into(&path, &header, g, &mut buf[s..e])?;
            }
            Ok(())
        };
        Ok(Some(FeedPiece { offset, len: end - offset, fill: Box::new(fill) }))
    }
}

/// A raw image read from a pipe: exactly `capacity` bytes, in chunks.
pub struct RawFeed<R: Read + Send> {
    r: R,
    name: PathBuf,
    capacity: u64,
    pos: u64,
}

impl<R: Read + Send> std::fmt::Debug for RawFeed<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawFeed").field("name", &self.name).field("capacity", &self.capacity).finish_non_exhaustive()
    }
}

impl<R: Read + Send> RawFeed<R> {
    /// Reads a `capacity`-byte image from `r` (called `name` in errors). Fewer or more bytes than
    /// `capacity` is an error.
    pub fn new(r: R, name: impl Into<PathBuf>, capacity: u64) -> RawFeed<R> {
        RawFeed { r, name: name.into(), capacity, pos: 0 }
    }

    fn read_full(&mut self, buf: &mut [u8]) -> vmdk::Result<usize> {
        vmdk::extent::stream::sequential::read_full(&mut self.r, buf, &self.name)
    }
}

impl<R: Read + Send> Feed for RawFeed<R> {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn next(&mut self, chunk: u64) -> vmdk::Result<Option<FeedPiece>> {
        if self.pos >= self.capacity {
            let mut one = [0u8; 1];
            if self.read_full(&mut one)? > 0 {
                return Err(vmdk::Error::InvalidArgument(format!(
                    "{}: the input holds more than the {} bytes of the disk",
                    self.name.display(),
                    self.capacity
                )));
            }
            return Ok(None);
        }
        let len = (chunk - self.pos % chunk).min(self.capacity - self.pos);
        let mut data = vec![0u8; len as usize];
        let got = self.read_full(&mut data)?;
        if got < data.len() {
            return Err(vmdk::Error::corrupt(
                &self.name,
                self.pos + got as u64,
                format!("the input ends after {} bytes; the disk holds {}", self.pos + got as u64, self.capacity),
            ));
        }
        let offset = self.pos;
        self.pos += len;
        Ok(Some(FeedPiece {
            offset,
            len,
            fill: Box::new(move |b: &mut [u8]| {
                b.copy_from_slice(&data);
                Ok(())
            }),
        }))
    }
}

/// A pipe whose first bytes were read (to look for a magic) and are put back in front.
pub type Rejoined<R> = std::io::Chain<std::io::Cursor<Vec<u8>>, R>;

/// What [`open_input`] found on a pipe.
pub enum Input<R: Read + Send> {
    /// A streamOptimized stream (it starts with the `KDMV` magic).
    Stream(Box<StreamFeed<Pipe<Rejoined<R>>>>),
    /// Anything else: a raw image, whose first bytes were already read.
    Raw(Rejoined<R>),
}

impl<R: Read + Send> std::fmt::Debug for Input<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Stream(s) => f.debug_tuple("Stream").field(s).finish(),
            Input::Raw(_) => f.write_str("Raw"),
        }
    }
}

/// Looks at the first bytes of `r` (called `name` in errors): a `KDMV` magic means a
/// streamOptimized stream, read sequentially; anything else is a raw image.
pub fn open_input<R: Read + Send>(mut r: R, name: &Path) -> Result<Input<R>> {
    let mut head = vec![0u8; 512];
    let mut n = 0;
    while n < head.len() {
        match r.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Io { path: name.to_path_buf(), source: e }),
        }
    }
    head.truncate(n);
    let magic = head.get(..4).map(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
    let joined = std::io::Cursor::new(head).chain(r);
    if magic == Some(MAGIC) {
        let reader = StreamReader::new(Pipe::new(joined, name), name)?;
        return Ok(Input::Stream(Box::new(StreamFeed::new(reader)?)));
    }
    Ok(Input::Raw(joined))
}

/// Bytes per `write` into a pipe ([`PipeOut`]).
pub const PIPE_PIECE: usize = 128 << 10;

/// Capacity [`PipeOut`] asks of the pipe it writes to.
pub const PIPE_BYTES: usize = 1 << 20;

/// A pipe (standard output) made ready for a stream of large chunks: grown to [`PIPE_BYTES`], so
/// the reader at the other end is woken less often, and written in pieces of at most
/// [`PIPE_PIECE`] bytes, each of which fits in the pipe and in the CPU's cache: on the 2-core
/// machine 2 GiB went through `| cat` in 3.15 s in 2 MiB writes into a 64 KiB pipe, in 0.73 s in
/// 64 KiB writes into a 1 MiB one. Anything that is not a pipe is written as it is.
pub struct PipeOut<W>(W);

impl<W: Write + std::os::fd::AsFd> PipeOut<W> {
    /// Wraps `w`, growing it first when it is a pipe (a pipe the kernel will not grow stays as it
    /// is).
    pub fn new(w: W) -> PipeOut<W> {
        let _ = rdm::device::grow_pipe(w.as_fd(), PIPE_BYTES);
        PipeOut(w)
    }
}

impl<W: Write> Write for PipeOut<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.write(&b[..b.len().min(PIPE_PIECE)])
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pipe_out_grows_the_pipe_and_writes_every_byte() {
        let (mut r, w) = std::io::pipe().unwrap();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            r.read_to_end(&mut all).unwrap();
            all
        });
        let data: Vec<u8> = (0..3 * PIPE_BYTES + 12345).map(|i| (i * 7 % 251) as u8).collect();
        let mut out = PipeOut::new(w);
        // Grown to 1 MiB (or to the most the kernel allows an unprivileged process).
        let cap = rdm::device::grow_pipe(std::os::fd::AsFd::as_fd(&out.0), 1).unwrap();
        let max: usize =
            std::fs::read_to_string("/proc/sys/fs/pipe-max-size").map_or(PIPE_BYTES, |m| m.trim().parse().unwrap());
        assert!(cap >= PIPE_BYTES.min(max), "capacity {cap}");
        assert!(out.write(&data).unwrap() <= PIPE_PIECE);
        out.write_all(&data).unwrap();
        drop(out);
        let got = reader.join().unwrap();
        // One piece from the single write, then everything.
        assert_eq!(got.len(), PIPE_PIECE + data.len());
        assert_eq!(&got[..PIPE_PIECE], &data[..PIPE_PIECE]);
        assert_eq!(&got[PIPE_PIECE..], &data[..]);
    }

    use super::*;
    use crate::engine::copy_feed;
    use vmdk::extent::stream::writer::WriteSink;

    fn disk() -> Vec<u8> {
        let mut d = vec![0u8; 5 << 20];
        for (i, c) in d.chunks_mut(4096).enumerate() {
            if i % 7 == 0 {
                c.fill((i % 251) as u8 + 1);
            }
        }
        d
    }

    /// A disk through a stream and back, both through pipes (byte buffers).
    #[test]
    fn stream_round_trip_in_memory() {
        let d = disk();
        let (h, desc) =
            vmdk::create::stream_layout("x.vmdk", d.len() as u64, vmdk::Adapter::LsiLogic, 128, None).unwrap();
        let t = StreamTarget::new(WriteSink::new(Vec::new(), "<mem>"), h, &desc, Path::new("<mem>"), 1).unwrap();
        let mut raw = RawFeed::new(&d[..], "<mem>", d.len() as u64);
        copy_feed(&mut raw, &t, &EngineOptions::new(), &mut |_, _| {}, None).unwrap();
        let (sink, len) = t.finish().unwrap();
        let file = sink.into_inner();
        assert_eq!(file.len() as u64, len);
        let Input::Stream(mut feed) = open_input(&file[..], Path::new("<mem>")).unwrap() else {
            panic!("not detected as a stream")
        };
        let out = RawTarget::new(Vec::new(), d.len() as u64, "<mem>");
        let e = feed.engine(EngineOptions::new());
        copy_feed(&mut *feed, &out, &e, &mut |_, _| {}, None).unwrap();
        let (back, n) = out.finish().unwrap();
        assert_eq!(n, d.len() as u64);
        assert!(back == d);
    }

    #[test]
    fn raw_input_must_match_the_size() {
        let d = disk();
        let out = RawTarget::new(Vec::new(), d.len() as u64 + 512, "<mem>");
        let mut feed = RawFeed::new(&d[..], "<mem>", d.len() as u64 + 512);
        let e = EngineOptions::new();
        let err = copy_feed(&mut feed, &out, &e, &mut |_, _| {}, None).unwrap_err().to_string();
        assert!(err.contains(&format!("ends after {} bytes", d.len())), "{err}");
        let out = RawTarget::new(Vec::new(), d.len() as u64 - 512, "<mem>");
        let mut feed = RawFeed::new(&d[..], "<mem>", d.len() as u64 - 512);
        assert!(copy_feed(&mut feed, &out, &e, &mut |_, _| {}, None).unwrap_err().to_string().contains("more than"));
    }
}
