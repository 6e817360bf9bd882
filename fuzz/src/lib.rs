//! Shared pieces of the fuzz targets: an in-memory [`Storage`], builders that turn short fuzz
//! inputs into files whose headers are valid enough to reach the directory and table walks, and the
//! common "open, map, read" exercise with its invariants.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use vmdk::extent::is_zero;
use vmdk::map::State;
use vmdk::{Backing, Error, Link, OpenOptions, Result, Storage};

/// The name every target opens.
pub const DISK: &str = "/fuzz/disk.vmdk";

/// Largest range the targets map or read in one call. Keeps an execution fast whatever capacity
/// a header claims (a walk is linear in grains).
pub const WINDOW: u64 = 4 << 20;

/// One in-memory file.
#[derive(Debug)]
pub struct MemFile {
    path: PathBuf,
    data: RwLock<Vec<u8>>,
}

impl MemFile {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<u8>> {
        self.data.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<u8>> {
        self.data.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Files above this size are refused on write, so a corrupt header cannot make a target grow a
/// file without bound.
const MAX_FILE: u64 = 256 << 20;

impl vmdk::ReadAt for MemFile {
    type Error = vmdk::Error;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let d = self.read();
        let len = d.len() as u64;
        let end = offset.checked_add(buf.len() as u64);
        match end {
            Some(end) if end <= len => {
                buf.copy_from_slice(&d[offset as usize..end as usize]);
                Ok(())
            }
            _ => {
                let avail = len.saturating_sub(offset);
                Err(Error::corrupt(
                    &self.path,
                    offset.saturating_add(avail),
                    format!(
                        "file is truncated: needed {} bytes at offset {offset}, file ends after {avail}",
                        buf.len()
                    ),
                ))
            }
        }
    }
}

impl Backing for MemFile {
    fn path(&self) -> &Path {
        &self.path
    }
    fn len(&self) -> Result<u64> {
        Ok(self.read().len() as u64)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= MAX_FILE)
            .ok_or_else(|| too_big(&self.path, offset, buf.len() as u64))?;
        let mut d = self.write();
        if (d.len() as u64) < end {
            d.resize(end as usize, 0);
        }
        d[offset as usize..end as usize].copy_from_slice(buf);
        Ok(())
    }
    fn set_len(&self, len: u64) -> Result<()> {
        if len > MAX_FILE {
            return Err(too_big(&self.path, len, 0));
        }
        self.write().resize(len as usize, 0);
        Ok(())
    }
    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

fn too_big(path: &Path, offset: u64, len: u64) -> Error {
    Error::io(
        path,
        format!("write {len} bytes at {offset}"),
        std::io::Error::new(std::io::ErrorKind::StorageFull, "in-memory file limit"),
    )
}

/// A folder of in-memory files.
#[derive(Debug, Default)]
pub struct MemStorage {
    files: Mutex<HashMap<PathBuf, Arc<MemFile>>>,
}

impl MemStorage {
    /// A storage holding `files`.
    pub fn new(files: impl IntoIterator<Item = (PathBuf, Vec<u8>)>) -> Arc<MemStorage> {
        let s = MemStorage::default();
        for (p, d) in files {
            s.insert(p, d);
        }
        Arc::new(s)
    }

    /// Adds or replaces a file.
    pub fn insert(&self, path: PathBuf, data: Vec<u8>) {
        let f = Arc::new(MemFile { path: path.clone(), data: RwLock::new(data) });
        self.lock().insert(path, f);
    }

    /// The current contents of a file.
    pub fn get(&self, path: &Path) -> Option<Vec<u8>> {
        self.lock().get(path).map(|f| f.read().clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Arc<MemFile>>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Storage for MemStorage {
    fn open(&self, path: &Path, _write: bool) -> Result<Arc<dyn Backing>> {
        match self.lock().get(path) {
            Some(f) => Ok(f.clone()),
            None => Err(Error::io(path, "open", std::io::ErrorKind::NotFound.into())),
        }
    }
    fn create_new(&self, path: &Path) -> Result<Arc<dyn Backing>> {
        let mut files = self.lock();
        if files.contains_key(path) {
            return Err(Error::Exists { path: path.into() });
        }
        let f = Arc::new(MemFile { path: path.into(), data: RwLock::new(Vec::new()) });
        files.insert(path.into(), f.clone());
        Ok(f)
    }
    fn exists(&self, path: &Path) -> bool {
        self.lock().contains_key(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        let mut files = self.lock();
        let f = files.remove(from).ok_or_else(|| Error::io(from, "rename", std::io::ErrorKind::NotFound.into()))?;
        let moved = Arc::new(MemFile { path: to.into(), data: RwLock::new(f.read().clone()) });
        files.insert(to.into(), moved);
        Ok(())
    }
    fn remove(&self, path: &Path) -> Result<()> {
        self.lock()
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| Error::io(path, "remove", std::io::ErrorKind::NotFound.into()))
    }
}

/// Options opening files in `storage` (read-only unless `write`).
pub fn options(storage: Arc<MemStorage>, write: bool) -> OpenOptions {
    OpenOptions { write, storage, ..OpenOptions::default() }
}

/// Byte `i` of the input, or 0 past its end.
pub fn byte(data: &[u8], i: usize) -> u8 {
    data.get(i).copied().unwrap_or(0)
}

fn u16_at(data: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([byte(data, i), byte(data, i + 1)])
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Copies `src` into `file` at `at`, growing it as needed.
fn overlay(file: &mut Vec<u8>, at: usize, src: &[u8]) {
    if file.len() < at + src.len() {
        file.resize(at + src.len(), 0);
    }
    file[at..at + src.len()].copy_from_slice(src);
}

/// Number of leading bytes of a short input used as parameters by the builders below.
pub const PARAMS: usize = 8;

/// A `KDMV` file from a fuzz input. An input that already starts with `KDMV` is the file. Any other
/// input is a few parameter bytes (grain size, entries per table, capacity, flags) followed by the
/// bytes of the grain tables and grains: the header is built valid, the directory either generated
/// (tables laid out right after it, as qemu does) or taken from the input, so the fuzzer reaches the
/// table walk and the grain reads at once. A compressed file whose directory is at the end gets
/// VMware's layout instead (tables inline after their markers, directory, footer, end-of-stream).
pub fn kdmv_file(data: &[u8], compressed: bool) -> Vec<u8> {
    if data.starts_with(b"KDMV") {
        return data.to_vec();
    }
    let grain: u64 = 1 << (byte(data, 0) % 8); // 1..=128 sectors
    let gtes: u64 = 1 << (4 + byte(data, 1) % 6); // 16..=512 entries
    let mode = byte(data, 2);
    let capacity = (u16_at(data, 3) as u64 % 4096 + 1) * grain - (byte(data, 5) as u64 % grain);
    let gt_count = capacity.div_ceil(grain * gtes);
    let gd_sectors = (gt_count * 4).div_ceil(512);
    let gt_sectors = (gtes * 4).div_ceil(512);
    let gd = 1u64;
    let gts = gd + gd_sectors;
    let meta_end = gts + gt_count * gt_sectors;
    let overhead = if mode & 0x10 != 0 { meta_end } else { meta_end.div_ceil(grain) * grain };
    let mut flags = 0x1u32;
    let mut version = 1u32;
    if mode & 1 != 0 && !compressed {
        flags |= 0x2; // redundant directory: the same sectors as the primary
    }
    if mode & 2 != 0 && !compressed {
        flags |= 0x4;
        version = 2;
    }
    if compressed {
        flags |= 0x3_0000;
        version = 3;
    }
    let at_end = compressed && mode & 8 != 0;
    let mut h = [0u8; 512];
    h[..4].copy_from_slice(b"KDMV");
    put_u32(&mut h, 4, version);
    put_u32(&mut h, 8, flags);
    put_u64(&mut h, 12, capacity);
    put_u64(&mut h, 20, grain);
    put_u32(&mut h, 44, gtes as u32);
    put_u64(&mut h, 48, if flags & 0x2 != 0 { gd } else { 0 });
    put_u64(&mut h, 56, if at_end { u64::MAX } else { gd });
    put_u64(&mut h, 64, overhead);
    h[73..77].copy_from_slice(b"\n \r\n");
    put_u32(&mut h, 77, if compressed { 1 } else { 0 });
    let mut file = h.to_vec();
    file.resize((overhead * 512) as usize, 0);
    let body = data.get(PARAMS..).unwrap_or(&[]);
    if at_end {
        return inline_stream(file, &h, body, mode & 4 != 0, gt_count, gd_sectors, gt_sectors);
    }
    if mode & 4 == 0 {
        // Generated directory; the input fills the tables and the grains.
        for i in 0..gt_count {
            let at = (gd * 512 + i * 4) as usize;
            put_u32(&mut file, at, (gts + i * gt_sectors) as u32);
        }
        overlay(&mut file, (gts * 512) as usize, body);
    } else {
        // The input is the directory, tables and grains.
        overlay(&mut file, (gd * 512) as usize, body);
    }
    file
}

/// A metadata marker sector: `numSectors`, size 0, `kind`.
fn marker(num_sectors: u64, kind: u32) -> [u8; 512] {
    let mut m = [0u8; 512];
    put_u64(&mut m, 0, num_sectors);
    put_u32(&mut m, 12, kind);
    m
}

/// Completes `file` (header and metadata up to overHead) in VMware's stream layout: each grain
/// table inline after its marker (filled from `body`), the rest of `body` (grains), the directory
/// after its marker (generated, or with `fuzzed_gd` taken from the start of `body`), the footer
/// after its marker and the end-of-stream marker.
fn inline_stream(
    mut file: Vec<u8>,
    header: &[u8; 512],
    body: &[u8],
    fuzzed_gd: bool,
    gt_count: u64,
    gd_sectors: u64,
    gt_sectors: u64,
) -> Vec<u8> {
    let gd_bytes = (gd_sectors * 512) as usize;
    let (mut gd, mut rest) = (vec![0u8; gd_bytes], body);
    if fuzzed_gd {
        let n = rest.len().min(gd_bytes);
        gd[..n].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
    for i in 0..gt_count as usize {
        file.extend_from_slice(&marker(gt_sectors, 1));
        if !fuzzed_gd {
            put_u32(&mut gd, i * 4, (file.len() / 512) as u32);
        }
        let n = rest.len().min((gt_sectors * 512) as usize);
        let at = file.len();
        file.extend_from_slice(&rest[..n]);
        file.resize(at + (gt_sectors * 512) as usize, 0);
        rest = &rest[n..];
    }
    file.extend_from_slice(rest);
    file.resize(file.len().div_ceil(512) * 512, 0);
    file.extend_from_slice(&marker(gd_sectors, 2));
    let gd_sector = (file.len() / 512) as u64;
    file.extend_from_slice(&gd);
    file.extend_from_slice(&marker(1, 3));
    let mut footer = *header;
    put_u64(&mut footer, 56, gd_sector);
    file.extend_from_slice(&footer);
    file.extend_from_slice(&marker(0, 0));
    file
}

/// A COWD file from a fuzz input: an input starting with `COWD` is the file; otherwise a valid
/// header (version, grain size, capacity and table size from the parameter bytes), a generated or
/// fuzzed directory, and the input as tables and grains.
pub fn cowd_file(data: &[u8]) -> Vec<u8> {
    if data.starts_with(b"COWD") {
        return data.to_vec();
    }
    let mode = byte(data, 0);
    let version = if mode & 1 != 0 { 3 } else { 1 };
    let grain: u64 = 1 << (byte(data, 1) % 4);
    let gtes: u64 = if version == 3 && mode & 2 != 0 { 512 } else { 4096 };
    let num_sectors = (u16_at(data, 2) as u64 + 1) * (byte(data, 4) as u64 % 8 + 1);
    let num_gdes = num_sectors.div_ceil(gtes * grain);
    let gd = 4u64;
    let gd_sectors = (num_gdes * 4).div_ceil(512);
    let gts = gd + gd_sectors;
    let gt_sectors = gtes * 4 / 512;
    let mut h = vec![0u8; 2048];
    h[..4].copy_from_slice(b"COWD");
    put_u32(&mut h, 4, version);
    put_u32(&mut h, 8, if mode & 4 != 0 { 2 } else { 3 });
    put_u32(&mut h, 12, num_sectors as u32);
    put_u32(&mut h, 16, grain as u32);
    put_u32(&mut h, 20, gd as u32);
    put_u32(&mut h, 24, num_gdes as u32);
    put_u32(&mut h, 28, (gts + gt_sectors) as u32);
    if mode & 4 != 0 {
        h[32..40].copy_from_slice(b"base.vmd");
    }
    let mut file = h;
    file.resize((gts * 512) as usize, 0);
    let body = data.get(PARAMS..).unwrap_or(&[]);
    if mode & 8 == 0 {
        // Generated directory naming only the first table (later ones absent), then the input.
        put_u32(&mut file, (gd * 512) as usize, gts as u32);
        let end = ((gts + gt_sectors) * 512) as usize;
        file.resize(end, 0);
        overlay(&mut file, (gts * 512) as usize, body);
    } else {
        overlay(&mut file, (gd * 512) as usize, body);
    }
    file
}

/// seSparse magic bytes (`0xCAFEBABE` as a little-endian u64).
pub const SESPARSE_MAGIC: [u8; 8] = [0xbe, 0xba, 0xfe, 0xca, 0, 0, 0, 0];

/// An seSparse file from a fuzz input: an input starting with the magic is the file; otherwise the
/// constant and volatile headers are built (capacity and areas from the parameter bytes), the
/// directory is generated or fuzzed, and the input is the grain tables and grains.
pub fn sesparse_file(data: &[u8]) -> Vec<u8> {
    if data.starts_with(&SESPARSE_MAGIC) {
        return data.to_vec();
    }
    let mode = byte(data, 0);
    // Up to 4 tables (64 MiB) so a padded file stays small.
    let capacity = (u16_at(data, 1) as u64 % 0x8000 + 1) * 8 - (byte(data, 3) as u64 % 8);
    let tables = capacity.div_ceil(8 * 4096);
    let gd = 2u64;
    let gd_size = 1u64;
    let gt = 3u64;
    let gt_size = tables * 64;
    let grains = gt + gt_size;
    let grains_size = (byte(data, 4) as u64 + 1) * 8;
    let mut file = vec![0u8; 1024];
    put_u64(&mut file, 0, 0xCAFE_BABE);
    put_u64(&mut file, 8, 0x0000_0002_0000_0001);
    put_u64(&mut file, 16, capacity);
    put_u64(&mut file, 24, 8);
    put_u64(&mut file, 32, 64);
    put_u64(&mut file, 80, 1);
    put_u64(&mut file, 88, 1);
    put_u64(&mut file, 128, gd);
    put_u64(&mut file, 136, gd_size);
    put_u64(&mut file, 144, gt);
    put_u64(&mut file, 152, gt_size);
    put_u64(&mut file, 192, grains);
    put_u64(&mut file, 200, grains_size);
    put_u64(&mut file, 512, 0xCAFE_CAFE);
    put_u64(&mut file, 512 + 24, (mode & 0x80 != 0) as u64);
    let body = data.get(PARAMS..).unwrap_or(&[]);
    if mode & 1 == 0 {
        file.resize((gt * 512) as usize, 0);
        for i in 0..tables {
            // Table i uses slot (i + mode>>1) % tables, so the fuzzer can permute them.
            let slot = (i + (mode as u64 >> 1)) % tables;
            put_u64(&mut file, (gd * 512 + i * 8) as usize, 0x1000_0000_0000_0000 | slot);
        }
        file.resize(((gt + 64) * 512) as usize, 0);
        overlay(&mut file, (gt * 512) as usize, body);
    } else {
        overlay(&mut file, (gd * 512) as usize, body);
    }
    file
}

/// A few `(offset, len)` reads chosen by the last bytes of the input, inside `[0, cap)`.
pub fn chosen_ranges(data: &[u8], cap: u64) -> Vec<(u64, u64)> {
    if cap == 0 {
        return Vec::new();
    }
    let tail = &data[data.len().saturating_sub(24)..];
    let mut out = Vec::new();
    for c in tail.chunks(8) {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        let v = u64::from_le_bytes(w);
        let off = (v >> 16) % cap;
        let len = ((v & 0xffff) + 1).min(cap - off).min(WINDOW);
        out.push((off, len));
    }
    // The very end of the disk (a partial last grain is a classic off-by-one).
    let l = cap.min(4096);
    out.push((cap - l, l));
    out
}

/// Opens `DISK`, maps and reads it, and checks the invariants every link must keep:
/// - the map covers exactly the requested range, its runs are contiguous and non-empty;
/// - with no parent, `Absent` and `Zero` runs read as zeros.
///
/// Errors (corrupt input) are fine; panics, hangs and huge allocations are the bugs.
pub fn exercise(storage: Arc<MemStorage>, data: &[u8]) -> Option<Link> {
    let link = Link::open(DISK, &options(storage, false)).ok()?;
    let _ = link.descriptor().to_text();
    let _ = link.extents();
    let _ = link.was_unclean();
    let cap = link.capacity();
    let mut ranges = vec![(0, cap.min(WINDOW))];
    ranges.extend(chosen_ranges(data, cap));
    for (off, len) in ranges {
        check_range(&link, off, len);
    }
    Some(link)
}

/// Maps and reads `[off, off+len)` and checks the two against each other.
pub fn check_range(link: &Link, off: u64, len: u64) {
    let map = link.map(off, len);
    if let Ok(m) = &map {
        assert_eq!(m.len(), len, "map of {len} bytes at {off} covers {} bytes", m.len());
        let mut pos = off;
        for r in m.runs() {
            assert_eq!(r.offset, pos, "map runs are not contiguous");
            assert!(r.len > 0, "empty run");
            pos = r.end();
        }
    }
    let mut buf = vec![0u8; len as usize];
    if link.read_at(&mut buf, off).is_err() {
        return;
    }
    if let Ok(m) = map {
        for r in m.runs() {
            if r.state != State::Data {
                let b = &buf[(r.offset - off) as usize..(r.end() - off) as usize];
                // `is_zero` ORs 16 bytes at a time with no branch per byte, which keeps the
                // fuzzer's comparison tracing off this hot loop.
                assert!(is_zero(b), "{:?} run at {} of {} bytes reads non-zero", r.state, r.offset, r.len);
            }
        }
    }
}
