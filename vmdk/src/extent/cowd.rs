//! vmfsSparse / COWD headers (ESX redo logs and snapshot deltas).
//!
//! A 2048-byte header, one grain directory of 32-bit sector pointers, grain tables of 4096 entries
//! (512 in Workstation 3 files), grains of `grainSize` sectors (ESX default: one sector). An entry of
//! 0 means "not here: read the parent". Reading and writing the grains is the shared grain-table
//! engine in [`super::sparse`]; this module owns the header and creating new files.

use std::path::Path;
use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian as LE};

use crate::error::{Error, Result};
use crate::storage::Backing;

/// `COWD` as a little-endian u32.
pub const MAGIC: u32 = 0x4457_4F43;
/// Header size in bytes.
pub const HEADER_BYTES: usize = 2048;
/// Byte offset of the `freeSector` field.
pub const FREE_SECTOR_OFFSET: u64 = 28;
/// Byte offset of the `uncleanShutdown` field.
pub const UNCLEAN_OFFSET: u64 = 1648;
/// Byte offset of the header's zero padding (up to [`HEADER_BYTES`]).
pub const PAD_OFFSET: usize = 1652;
/// Entries per grain table in ESX files.
pub const ESX_GTES: u32 = 4096;
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

impl CowdHeader {
    /// First sector after the header and directory (where tables and grains may start).
    pub fn overhead(&self) -> u64 {
        self.gd_offset as u64 + (self.num_gdes as u64 * 4).div_ceil(512)
    }

    /// A header for a new ESX redo log of `sectors` sectors with `grain_size`-sector grains; a child
    /// (`parent` given, ESX 2 REDO logs) records its parent's file name.
    pub fn new(sectors: u32, grain_size: u32, parent: Option<&str>) -> CowdHeader {
        let num_gdes = (sectors as u64).div_ceil(ESX_GTES as u64 * grain_size as u64) as u32;
        let mut h = CowdHeader {
            version: 1,
            // root (0x1) for a disk without parent, checked (0x2) always.
            flags: if parent.is_some() { 0x2 } else { 0x3 },
            num_sectors: sectors,
            grain_size,
            gd_offset: 4,
            num_gdes,
            free_sector: 0,
            parent_file_name: parent.unwrap_or("").to_string(),
            generation: 0,
            unclean_shutdown: false,
            gtes: ESX_GTES,
        };
        h.free_sector = h.overhead() as u32;
        h
    }

    /// Serializes the header (2048 bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_BYTES];
        LE::write_u32(&mut b[0..], MAGIC);
        LE::write_u32(&mut b[4..], self.version);
        LE::write_u32(&mut b[8..], self.flags);
        LE::write_u32(&mut b[12..], self.num_sectors);
        LE::write_u32(&mut b[16..], self.grain_size);
        LE::write_u32(&mut b[20..], self.gd_offset);
        LE::write_u32(&mut b[24..], self.num_gdes);
        LE::write_u32(&mut b[28..], self.free_sector);
        if self.flags & 1 == 0 {
            let n = self.parent_file_name.as_bytes();
            let n = &n[..n.len().min(1023)];
            b[32..32 + n.len()].copy_from_slice(n);
        } else {
            // Root: the geometry (cylinders, heads, sectors).
            let c = (self.num_sectors as u64 / (255 * 63)).max(1) as u32;
            LE::write_u32(&mut b[32..], c);
            LE::write_u32(&mut b[36..], 255);
            LE::write_u32(&mut b[40..], 63);
        }
        LE::write_u32(&mut b[1060..], self.generation);
        LE::write_u32(&mut b[UNCLEAN_OFFSET as usize..], self.unclean_shutdown as u32);
        b
    }
}

/// Writes the header and an empty directory of a new COWD file into an empty backing.
pub fn create(backing: &Arc<dyn Backing>, header: &CowdHeader) -> Result<()> {
    if header.num_sectors == 0 {
        return Err(Error::InvalidArgument("a COWD redo log needs a capacity above zero".into()));
    }
    let mut meta = header.to_bytes();
    meta.resize((header.overhead() * 512) as usize, 0);
    backing.write_all_at(&meta, 0)?;
    backing.set_len(header.overhead() * 512)?;
    Ok(())
}
