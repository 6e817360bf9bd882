//! vmfsSparse / COWD extents (ESX redo logs and snapshot deltas), read.
//!
//! A 2048-byte header, one grain directory of 32-bit sector pointers, grain tables of 4096 entries
//! (512 in Workstation 3 files), grains of `grainSize` sectors (ESX default: one sector). An entry of
//! 0 means "not here: read the parent".

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian as LE};

use super::gtcache::GtCache;
use super::sparse::GrainDir;
use super::{pieces, Extent, ExtentInfo, ReadAt};
use crate::error::{Error, Result};
use crate::map::{AllocMap, State};
use crate::storage::Backing;

/// `COWD` as a little-endian u32.
pub const MAGIC: u32 = 0x4457_4F43;
/// Header size in bytes.
pub const HEADER_BYTES: usize = 2048;
/// Largest grain we accept, in sectors (1 MiB; the ESX range is 1 sector to 1 MB).
pub const MAX_GRAIN_SECTORS: u32 = 2048;

/// A parsed COWD header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CowdHeader {
    /// 1 (ESX) or 3 (Workstation 3).
    pub version: u32,
    /// Flags.
    pub flags: u32,
    /// Capacity in sectors.
    pub num_sectors: u32,
    /// Sectors per grain.
    pub grain_size: u32,
    /// Grain directory sector.
    pub gd_offset: u32,
    /// Directory entries.
    pub num_gdes: u32,
    /// Next free sector.
    pub free_sector: u32,
    /// Parent file name (child links; usually empty in recent files).
    pub parent_file_name: String,
    /// Generation.
    pub generation: u32,
    /// Set while open for writing.
    pub unclean_shutdown: bool,
    /// Entries per grain table, inferred from the directory size.
    pub gtes: u32,
}

impl CowdHeader {
    /// Parses and validates a header.
    pub fn parse(b: &[u8], path: &Path) -> Result<CowdHeader> {
        let bad = |off: u64, what: String| Error::corrupt(path, off, what);
        if b.len() < HEADER_BYTES {
            return Err(bad(0, format!("file is shorter than the {HEADER_BYTES}-byte COWD header")));
        }
        if LE::read_u32(b) != MAGIC {
            return Err(bad(0, format!("expected COWD magic, found {:02x?}", &b[..4])));
        }
        let version = LE::read_u32(&b[4..]);
        let flags = LE::read_u32(&b[8..]);
        let num_sectors = LE::read_u32(&b[12..]);
        let grain_size = LE::read_u32(&b[16..]);
        let gd_offset = LE::read_u32(&b[20..]);
        let num_gdes = LE::read_u32(&b[24..]);
        let free_sector = LE::read_u32(&b[28..]);
        if grain_size == 0 || grain_size > MAX_GRAIN_SECTORS {
            return Err(bad(16, format!("grain size {grain_size} sectors is outside 1..={MAX_GRAIN_SECTORS}")));
        }
        let fits = |gtes: u64| {
            let cov = gtes * grain_size as u64;
            num_gdes as u64 == (num_sectors as u64).div_ceil(cov)
        };
        let gtes = match (fits(4096), fits(512)) {
            (true, true) => {
                if version == 3 {
                    512
                } else {
                    4096
                }
            }
            (true, false) => 4096,
            (false, true) => 512,
            (false, false) => {
                return Err(bad(24, format!("{num_gdes} directory entries do not fit a capacity of {num_sectors} sectors with {grain_size}-sector grains")));
            }
        };
        let name_bytes = &b[32..32 + 1024];
        let end = name_bytes.iter().position(|&c| c == 0).unwrap_or(name_bytes.len());
        let parent_file_name =
            if flags & 1 == 0 { String::from_utf8_lossy(&name_bytes[..end]).into_owned() } else { String::new() };
        Ok(CowdHeader {
            version,
            flags,
            num_sectors,
            grain_size,
            gd_offset,
            num_gdes,
            free_sector,
            parent_file_name,
            generation: LE::read_u32(&b[1060..]),
            unclean_shutdown: LE::read_u32(&b[1648..]) != 0,
            gtes,
        })
    }
}

/// A COWD extent.
#[derive(Debug)]
pub struct CowdExtent {
    dir: GrainDir,
    header: CowdHeader,
    grain_bytes: u64,
    len: u64,
    file_len: u64,
}

impl CowdExtent {
    /// Opens a COWD extent. `len` is what the descriptor maps (None = the header's capacity).
    pub fn open(backing: Arc<dyn Backing>, len: Option<u64>, cache: Arc<GtCache>) -> Result<CowdExtent> {
        let path = backing.path().to_path_buf();
        let file_len = backing.len()?;
        let mut b = vec![0u8; HEADER_BYTES];
        if file_len < HEADER_BYTES as u64 {
            return Err(Error::corrupt(
                &path,
                0,
                format!("file of {file_len} bytes is shorter than the {HEADER_BYTES}-byte COWD header"),
            ));
        }
        backing.read_exact_at(&mut b, 0)?;
        let header = CowdHeader::parse(&b, &path)?;
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
        Ok(CowdExtent {
            dir: GrainDir::new(backing, gd, None, header.gtes, cache),
            grain_bytes: header.grain_size as u64 * 512,
            header,
            len,
            file_len,
        })
    }

    /// The header.
    pub fn header(&self) -> &CowdHeader {
        &self.header
    }

    fn sector_of(&self, g: u64) -> Result<Option<u64>> {
        let gtes = self.dir.gtes() as u64;
        let (gt, idx) = (g / gtes, g % gtes);
        let Some(t) = self.dir.table(gt)? else {
            return Ok(None);
        };
        let v = t[idx as usize].load(Ordering::Acquire);
        if v == 0 {
            return Ok(None);
        }
        if v * 512 + self.grain_bytes > self.file_len {
            return Err(Error::corrupt(
                self.dir.backing().path(),
                self.dir.entry_offset(gt, idx),
                format!(
                    "grain table entry for grain {g} points to sector {v}, past the end of the file ({} bytes)",
                    self.file_len
                ),
            ));
        }
        Ok(Some(v))
    }
}

impl Extent for CowdExtent {
    fn len(&self) -> u64 {
        self.len
    }
    fn info(&self) -> ExtentInfo {
        ExtentInfo {
            kind: "VMFSSPARSE",
            file: Some(self.dir.backing().path().to_path_buf()),
            len: self.len,
            grain: Some(self.grain_bytes),
            version: Some(self.header.version),
            unclean: self.header.unclean_shutdown,
        }
    }
    fn writable(&self) -> bool {
        false
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        for (p, l) in pieces(offset, buf.len() as u64, self.grain_bytes) {
            let dst = &mut buf[(p - offset) as usize..(p - offset + l) as usize];
            match self.sector_of(p / self.grain_bytes)? {
                Some(s) => self.dir.backing().read_exact_at(dst, s * 512 + p % self.grain_bytes)?,
                None => dst.fill(0),
            }
        }
        Ok(())
    }
    fn write_at(&self, _buf: &[u8], _offset: u64, _below: Option<&dyn ReadAt>) -> Result<()> {
        Err(Error::unsupported(self.dir.backing().path(), "writing COWD (vmfsSparse) extents"))
    }
    fn map(&self, offset: u64, len: u64, base: u64, out: &mut AllocMap) -> Result<()> {
        for (p, l) in pieces(offset, len, self.grain_bytes) {
            let s = self.sector_of(p / self.grain_bytes)?;
            out.push(base + p, l, if s.is_some() { State::Data } else { State::Absent }, 0);
        }
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
