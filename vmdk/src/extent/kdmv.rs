//! The hosted sparse header (`KDMV`), shared by sparse and streamOptimized extents.
//!
//! The header is packed and has unaligned 64-bit fields, so it is read and written at explicit byte
//! offsets rather than through a `repr(C)` struct.

use std::path::Path;
use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian as LE};

use crate::descriptor::{descriptor_evidence, looks_like_descriptor, CreateType, MAX_DESCRIPTOR_BYTES};
use crate::error::{Error, Result};
use crate::storage::Backing;

/// `KDMV` as a little-endian u32.
pub const MAGIC: u32 = 0x564D_444B;
/// gdOffset value meaning "the grain directory is found through the footer".
pub const GD_AT_END: u64 = u64::MAX;
/// Newline-detection bytes are valid.
pub const FLAG_NEWLINE_TEST: u32 = 0x1;
/// A redundant grain directory exists.
pub const FLAG_RGD: u32 = 0x2;
/// Grain table entry 1 means "zeroed grain".
pub const FLAG_ZEROED_GTE: u32 = 0x4;
/// Grains are compressed.
pub const FLAG_COMPRESSED: u32 = 0x1_0000;
/// Metadata markers are present.
pub const FLAG_MARKERS: u32 = 0x2_0000;
/// Largest grain we accept (qemu's limit), in sectors.
pub const MAX_GRAIN_SECTORS: u64 = 0x20_0000;
/// Largest number of grain table entries per table we accept.
pub const MAX_GTES_PER_GT: u32 = 4096;
/// The newline-detection bytes at offset 73 (`\n`, ` `, `\r`, `\n`), valid when
/// [`FLAG_NEWLINE_TEST`] is set.
pub const NEWLINE_TEST: [u8; 4] = *b"\n \r\n";
/// Byte offset of the flags field, which errors about contradicting flags point at.
pub const FLAGS_OFFSET: u64 = 8;

/// Describes damaged newline-detection bytes (`window` starts at offset 73, 7 bytes): all zero is a
/// missing field; only the shapes a text-mode transfer leaves (CR LF turned into LF, LF turned into
/// CR LF) are blamed on CR/LF translation.
fn newline_damage(window: &[u8]) -> String {
    let found = &window[..4];
    if found.iter().all(|&b| b == 0) {
        return "newline-detection bytes (offset 73..77) are missing (all zero), although flag 0x1 says they are valid; expected 0A 20 0D 0A".into();
    }
    let crlf_to_lf = window.starts_with(b"\n \n");
    let lf_to_crlf =
        window.starts_with(b"\r\n \r\n") || window.starts_with(b"\r\n \r\r\n") || window.starts_with(b"\n \r\r\n");
    if crlf_to_lf || lf_to_crlf {
        let how = if crlf_to_lf { "CR LF became LF" } else { "LF became CR LF" };
        return format!(
            "newline-detection bytes are {found:02x?}, expected 0A 20 0D 0A: the file was corrupted by CR/LF translation ({how}, as a text-mode transfer does)"
        );
    }
    format!("newline-detection bytes are {found:02x?}, expected 0A 20 0D 0A (the header is damaged)")
}

/// A parsed `KDMV` header. Sizes and offsets are in sectors, as on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseHeader {
    /// 1, 2 (zeroed-grain entries) or 3.
    pub version: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Sectors held by this extent.
    pub capacity: u64,
    /// Sectors per grain.
    pub grain_size: u64,
    /// Embedded descriptor start (0 = none).
    pub descriptor_offset: u64,
    /// Embedded descriptor length.
    pub descriptor_size: u64,
    /// Entries per grain table.
    pub num_gtes_per_gt: u32,
    /// Redundant grain directory.
    pub rgd_offset: u64,
    /// Grain directory (or [`GD_AT_END`]).
    pub gd_offset: u64,
    /// Metadata sectors; where the first grain may start.
    pub overhead: u64,
    /// Set while open for writing.
    pub unclean_shutdown: bool,
    /// 0 none, 1 deflate.
    pub compress_algorithm: u16,
}

impl SparseHeader {
    /// Parses and validates a header sector. `path` and `at` (byte offset of the header) are for errors.
    pub fn parse(buf: &[u8; 512], path: &Path, at: u64) -> Result<SparseHeader> {
        let bad = |off: u64, what: String| Error::corrupt(path, at + off, what);
        let magic = LE::read_u32(&buf[0..]);
        if magic != MAGIC {
            return Err(bad(0, format!("expected sparse magic KDMV, found {:02x?}", &buf[0..4])));
        }
        let h = SparseHeader {
            version: LE::read_u32(&buf[4..]),
            flags: LE::read_u32(&buf[8..]),
            capacity: LE::read_u64(&buf[12..]),
            grain_size: LE::read_u64(&buf[20..]),
            descriptor_offset: LE::read_u64(&buf[28..]),
            descriptor_size: LE::read_u64(&buf[36..]),
            num_gtes_per_gt: LE::read_u32(&buf[44..]),
            rgd_offset: LE::read_u64(&buf[48..]),
            gd_offset: LE::read_u64(&buf[56..]),
            overhead: LE::read_u64(&buf[64..]),
            unclean_shutdown: buf[72] != 0,
            compress_algorithm: LE::read_u16(&buf[77..]),
        };
        if !(1..=3).contains(&h.version) {
            return Err(bad(4, format!("sparse version {} is not supported (expected 1, 2 or 3)", h.version)));
        }
        let incompatible = (h.flags >> 16) & !0x3;
        if incompatible != 0 {
            return Err(bad(8, format!("unknown incompatible flags {:#x}", h.flags)));
        }
        if h.flags & FLAG_MARKERS != 0 && h.flags & FLAG_COMPRESSED == 0 {
            return Err(bad(8, format!("flags {:#x}: markers without compression", h.flags)));
        }
        if h.flags & FLAG_NEWLINE_TEST != 0 && buf[73..77] != NEWLINE_TEST {
            return Err(bad(73, newline_damage(&buf[73..80])));
        }
        if h.flags & FLAG_COMPRESSED != 0 && h.compress_algorithm != 1 {
            return Err(bad(77, format!("compression algorithm {} is not deflate (1)", h.compress_algorithm)));
        }
        if !h.grain_size.is_power_of_two() || h.grain_size > MAX_GRAIN_SECTORS {
            return Err(bad(
                20,
                format!("grain size {} sectors is not a power of two up to {MAX_GRAIN_SECTORS}", h.grain_size),
            ));
        }
        if !h.num_gtes_per_gt.is_power_of_two() || h.num_gtes_per_gt > MAX_GTES_PER_GT {
            return Err(bad(
                44,
                format!("{} entries per grain table is not a power of two up to {MAX_GTES_PER_GT}", h.num_gtes_per_gt),
            ));
        }
        if h.capacity > crate::descriptor::MAX_SECTORS {
            return Err(bad(12, format!("capacity {} sectors is too large", h.capacity)));
        }
        Ok(h)
    }

    /// True when the flags say compressed grains (a streamOptimized extent).
    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }

    /// Checks the flags against the `createType` of the descriptor this extent belongs to:
    /// streamOptimized needs compressed grains with markers, monolithicSparse and
    /// twoGbMaxExtentSparse have neither. A contradiction is an error naming the flags field of the
    /// header at byte `at` of `path` (a header whose stream flags were cleared would otherwise read
    /// markers and zlib bytes as disk data).
    pub fn check_create_type(&self, create_type: &CreateType, path: &Path, at: u64) -> Result<()> {
        let stream = FLAG_COMPRESSED | FLAG_MARKERS;
        let has = self.flags & stream;
        let wrong = match create_type {
            CreateType::StreamOptimized => has != stream,
            CreateType::MonolithicSparse | CreateType::TwoGbMaxExtentSparse => has != 0,
            _ => false,
        };
        if !wrong {
            return Ok(());
        }
        let what = if has == stream {
            format!("flags {:#x} say compressed grains with markers (streamOptimized)", self.flags)
        } else if has == 0 {
            format!("flags {:#x} lack the compressed-grain and marker bits ({stream:#x})", self.flags)
        } else {
            format!("flags {:#x} have only part of the compressed-grain and marker bits ({stream:#x})", self.flags)
        };
        let want = if *create_type == CreateType::StreamOptimized {
            format!("the descriptor's createType \"{create_type}\" requires both")
        } else {
            format!("the descriptor's createType \"{create_type}\" allows neither")
        };
        Err(Error::corrupt(path, at + FLAGS_OFFSET, format!("{what}, but {want}")))
    }

    /// Sectors covered by one grain table.
    pub fn gt_coverage(&self) -> u64 {
        self.num_gtes_per_gt as u64 * self.grain_size
    }

    /// Number of grain directory entries.
    pub fn num_gdes(&self) -> u64 {
        self.capacity.div_ceil(self.gt_coverage())
    }

    /// Serializes the header into a sector.
    pub fn to_bytes(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        LE::write_u32(&mut b[0..], MAGIC);
        LE::write_u32(&mut b[4..], self.version);
        LE::write_u32(&mut b[8..], self.flags);
        LE::write_u64(&mut b[12..], self.capacity);
        LE::write_u64(&mut b[20..], self.grain_size);
        LE::write_u64(&mut b[28..], self.descriptor_offset);
        LE::write_u64(&mut b[36..], self.descriptor_size);
        LE::write_u32(&mut b[44..], self.num_gtes_per_gt);
        LE::write_u64(&mut b[48..], self.rgd_offset);
        LE::write_u64(&mut b[56..], self.gd_offset);
        LE::write_u64(&mut b[64..], self.overhead);
        b[72] = self.unclean_shutdown as u8;
        b[73..77].copy_from_slice(b"\n \r\n");
        LE::write_u16(&mut b[77..], self.compress_algorithm);
        b
    }
}

/// The embedded descriptor area a header declares (`descriptorOffset`, `descriptorSize`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorArea {
    /// Byte offset of the area in the file.
    pub offset: u64,
    /// Bytes reserved for it.
    pub room: u64,
    /// Its text, up to the first NUL (lossily decoded).
    pub text: String,
}

impl DescriptorArea {
    /// True when the area holds no text (qemu leaves the area of split extents after the first
    /// zero-filled).
    pub fn is_blank(&self) -> bool {
        self.text.trim().is_empty()
    }
}

/// Byte offset of the `descriptorOffset` field.
pub const DESCRIPTOR_OFFSET_FIELD: u64 = 28;
/// Byte offset of the `descriptorSize` field.
pub const DESCRIPTOR_SIZE_FIELD: u64 = 36;

/// Reads the embedded descriptor area `h` declares (None when `descriptorOffset` or
/// `descriptorSize` is 0), after checking that it lies inside the file and is at most
/// [`MAX_DESCRIPTOR_BYTES`].
pub fn read_descriptor_area(backing: &Arc<dyn Backing>, h: &SparseHeader) -> Result<Option<DescriptorArea>> {
    if h.descriptor_offset == 0 || h.descriptor_size == 0 {
        return Ok(None);
    }
    let path = backing.path();
    let off = h.descriptor_offset.checked_mul(512);
    let room = h.descriptor_size.checked_mul(512).filter(|r| *r <= MAX_DESCRIPTOR_BYTES as u64);
    let (Some(offset), Some(room)) = (off, room) else {
        return Err(Error::corrupt(
            path,
            DESCRIPTOR_OFFSET_FIELD,
            format!(
                "embedded descriptor of {} sectors at sector {} is impossible (at most {MAX_DESCRIPTOR_BYTES} bytes)",
                h.descriptor_size, h.descriptor_offset
            ),
        ));
    };
    let file_len = backing.len()?;
    if offset.checked_add(room).is_none_or(|e| e > file_len) {
        return Err(Error::corrupt(
            path,
            DESCRIPTOR_OFFSET_FIELD,
            format!("embedded descriptor ({room} bytes at {offset}) runs past the end of the file ({file_len} bytes)"),
        ));
    }
    let mut raw = vec![0u8; room as usize];
    backing.read_exact_at(&mut raw, offset)?;
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let text = String::from_utf8_lossy(&raw[..end]).into_owned();
    Ok(Some(DescriptorArea { offset, room, text }))
}

/// The layout of a new hosted sparse extent (the spec's order: header, descriptor, RGD, RGTs, GD,
/// GTs, padding to a grain), as qemu and VirtualBox also write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The header to write (unclean flag clear).
    pub header: SparseHeader,
    /// Number of grain tables (= GD entries).
    pub gt_count: u64,
    /// Sectors of one directory.
    pub gd_sectors: u64,
    /// Sectors of one grain table.
    pub gt_sectors: u64,
}

impl Layout {
    /// Plans an extent of `capacity` sectors with `grain_size`-sector grains, 512 entries per table,
    /// a redundant directory, and `descriptor_size` sectors reserved for an embedded descriptor
    /// (0 for none).
    pub fn plan(capacity: u64, grain_size: u64, descriptor_size: u64) -> Layout {
        let gtes = 512u64;
        let gt_count = capacity.div_ceil(grain_size).div_ceil(gtes);
        let gd_sectors = (gt_count * 4).div_ceil(512);
        let gt_sectors = gtes * 4 / 512;
        let (descriptor_offset, descriptor_size) = if descriptor_size > 0 { (1, descriptor_size) } else { (0, 0) };
        let rgd = 1 + descriptor_size;
        let gd = rgd + gd_sectors + gt_count * gt_sectors;
        let end = gd + gd_sectors + gt_count * gt_sectors;
        let overhead = end.div_ceil(grain_size) * grain_size;
        Layout {
            header: SparseHeader {
                version: 1,
                flags: FLAG_NEWLINE_TEST | FLAG_RGD,
                capacity,
                grain_size,
                descriptor_offset,
                descriptor_size,
                num_gtes_per_gt: gtes as u32,
                rgd_offset: rgd,
                gd_offset: gd,
                overhead,
                unclean_shutdown: false,
                compress_algorithm: 0,
            },
            gt_count,
            gd_sectors,
            gt_sectors,
        }
    }

    /// The bytes of a directory whose tables start right after it.
    pub fn directory(&self, dir_offset: u64) -> Vec<u8> {
        let mut b = vec![0u8; (self.gd_sectors * 512) as usize];
        for i in 0..self.gt_count {
            let gt = dir_offset + self.gd_sectors + i * self.gt_sectors;
            LE::write_u32(&mut b[(i * 4) as usize..], gt as u32);
        }
        b
    }
}

/// The sector a hosted sparse header would keep its descriptor in when it declares none
/// (`descriptorOffset` or `descriptorSize` 0), and the byte offset of the field that is 0: where
/// text left behind by a damaged field would be. `None` when the header declares an area, or that
/// sector is not metadata (at or past overHead).
pub fn undeclared_descriptor_sector(h: &SparseHeader) -> Option<(u64, u64)> {
    if h.descriptor_offset != 0 && h.descriptor_size != 0 {
        return None;
    }
    let (sector, field) = if h.descriptor_offset != 0 {
        (h.descriptor_offset, DESCRIPTOR_SIZE_FIELD)
    } else {
        (1, DESCRIPTOR_OFFSET_FIELD)
    };
    (sector < h.overhead && sector < u64::MAX / 512).then_some((sector, field))
}

/// Checks the bytes `s` of the sector [`undeclared_descriptor_sector`] names: if they hold
/// descriptor text, a descriptor field is damaged, and opening the file without its descriptor
/// would lose its parent and CID (a child read as a base disk). The error names the field that is
/// 0.
pub fn check_undeclared_descriptor(h: &SparseHeader, s: &[u8], path: &Path) -> Result<()> {
    let Some((sector, field)) = undeclared_descriptor_sector(h) else { return Ok(()) };
    if !looks_like_descriptor(s) && descriptor_evidence(s) < 2 {
        return Ok(());
    }
    let name = if field == DESCRIPTOR_SIZE_FIELD { "descriptorSize" } else { "descriptorOffset" };
    Err(Error::corrupt(
        path,
        field,
        format!(
            "{name} is 0, but sector {sector} holds descriptor text: the header is damaged, and reading the file without its descriptor would lose its parent and CID"
        ),
    ))
}

/// [`check_undeclared_descriptor`] on the file `backing` whose header is `h`.
pub fn check_descriptor_fields(backing: &Arc<dyn Backing>, h: &SparseHeader) -> Result<()> {
    let Some((sector, _)) = undeclared_descriptor_sector(h) else { return Ok(()) };
    if (sector + 1) * 512 > backing.len()? {
        return Ok(()); // Not in the file: nothing a descriptor could hide in.
    }
    let mut s = [0u8; 512];
    backing.read_exact_at(&mut s, sector * 512)?;
    check_undeclared_descriptor(h, &s, backing.path())
}

// Metadata markers: shared by streamOptimized extents (every table follows one) and hosted sparse
// ones (whose reader checks the markers of a stream's inline tables).

/// Marker type: end of stream.
pub const MARKER_EOS: u32 = 0;
/// Marker type: grain table follows.
pub const MARKER_GT: u32 = 1;
/// Marker type: grain directory follows.
pub const MARKER_GD: u32 = 2;
/// Marker type: footer follows.
pub const MARKER_FOOTER: u32 = 3;
/// Marker type 4: undocumented ("progress" in open-vmdk; seen in vSphere files). Skipped.
pub const MARKER_PROGRESS: u32 = 4;

/// Sectors of one grain table of `gtes` 32-bit entries.
pub fn table_sectors(gtes: u32) -> u64 {
    (gtes as u64 * 4).div_ceil(512)
}

/// A metadata marker as found in a sector: `(numSectors, size, type)`.
pub fn parse_marker(sector: &[u8]) -> (u64, u32, u32) {
    (LE::read_u64(&sector[0..]), LE::read_u32(&sector[8..]), LE::read_u32(&sector[12..]))
}

pub(crate) fn marker_name(kind: u32) -> &'static str {
    match kind {
        MARKER_EOS => "end-of-stream",
        MARKER_GT => "grain table",
        MARKER_GD => "grain directory",
        MARKER_FOOTER => "footer",
        _ => "metadata",
    }
}

/// Checks that the sector at byte `at` of `path` is a grain table marker stating one table of
/// `gtes` entries (the record an inline table of a stream follows).
pub fn check_table_marker(path: &Path, sector: &[u8], at: u64, gtes: u32) -> Result<()> {
    let (val, size, kind) = parse_marker(sector);
    let want = table_sectors(gtes);
    if size != 0 || kind != MARKER_GT || val != want {
        return Err(Error::corrupt(
            path,
            at,
            format!(
                "expected a grain table marker of {want} sectors before the grain table at byte {}, found (numSectors {val}, size {size}, type {kind})",
                at + 512
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_qemu() {
        // The fact sheet's table: 1 GiB → RGD 21, GD 150, overHead 384.
        let l = Layout::plan(2_097_152, 128, 20);
        assert_eq!(l.header.rgd_offset, 21);
        assert_eq!(l.header.gd_offset, 150);
        assert_eq!(l.header.overhead, 384);
        let l = Layout::plan(4_194_304, 128, 20);
        assert_eq!((l.header.gd_offset, l.header.overhead), (278, 640));
        let b = l.header.to_bytes();
        assert_eq!(SparseHeader::parse(&b, Path::new("x"), 0).unwrap(), l.header);
    }

    #[test]
    fn rejects_bad_fields() {
        let mut h = Layout::plan(2048, 128, 0).header;
        h.grain_size = 3;
        assert!(SparseHeader::parse(&h.to_bytes(), Path::new("x"), 0).is_err());
        let mut b = Layout::plan(2048, 128, 0).header.to_bytes();
        b[75] = b'\n';
        let e = SparseHeader::parse(&b, Path::new("x"), 0).unwrap_err();
        assert!(e.to_string().contains("CR/LF") && e.to_string().contains("CR LF became LF"), "{e}");
        b[73..77].fill(0);
        let e = SparseHeader::parse(&b, Path::new("x"), 0).unwrap_err();
        assert!(e.to_string().contains("missing (all zero)") && !e.to_string().contains("CR/LF"), "{e}");
        b[73..77].copy_from_slice(&[0x41, 0x42, 0x43, 0x44]);
        let e = SparseHeader::parse(&b, Path::new("x"), 0).unwrap_err();
        assert!(e.to_string().contains("41, 42, 43, 44") && !e.to_string().contains("CR/LF"), "{e}");
        b[73..80].copy_from_slice(b"\r\n \r\r\n\0");
        let e = SparseHeader::parse(&b, Path::new("x"), 0).unwrap_err();
        assert!(e.to_string().contains("LF became CR LF"), "{e}");
        b[0] = b'X';
        assert!(SparseHeader::parse(&b, Path::new("x"), 0).unwrap_err().to_string().contains("magic"));
    }
}
