//! The one description of a streamOptimized file that both of its readers build on: the
//! random-access reader ([`super`], files) and the sequential one ([`super::sequential`],
//! pipes). Whatever they read the disk's shape from — capacity, grain size, table sizes, where the
//! directory is, the embedded descriptor and its extent size, the footer, metadata markers, the
//! file length — is checked here, by the same function for both, so a file the two would read
//! differently is refused by both.
//!
//! Rules (vmdk-format.md §3, and what every known writer produces):
//! - flags carry compressed grains *and* markers, deflate; grains of at most
//!   [`MAX_STREAM_GRAIN_SECTORS`];
//! - the embedded descriptor area (when the header declares one) lies before overHead and holds a
//!   descriptor whose createType is streamOptimized and whose one SPARSE extent maps exactly the
//!   header's capacity;
//! - a directory named by the header lies before overHead with all its tables (qemu, open-vmdk);
//!   one named by the footer follows a grain directory marker (VMware, VirtualBox, ours);
//! - grain table and directory markers state the size of one table and of the directory, the footer
//!   marker one sector; the footer repeats the header's capacity, grain size, table size and flags;
//! - the file is a whole number of sectors.

use flate2::{Decompress, FlushDecompress, Status};
use std::path::{Path, PathBuf};

use crate::descriptor::{Descriptor, ExtentType};
use crate::error::{Error, Result};
use crate::extent::kdmv::{marker_name, table_sectors, MARKER_FOOTER, MARKER_GD, MARKER_GT};
use crate::extent::kdmv::{SparseHeader, FLAG_COMPRESSED, FLAG_MARKERS, GD_AT_END};

/// Largest grain a stream may have, in sectors (8 MiB; every known writer uses 128). A grain is
/// inflated whole, so this bounds what one read allocates.
pub const MAX_STREAM_GRAIN_SECTORS: u64 = 16384;

/// The shape of a stream, validated: built from its header, completed with its embedded
/// descriptor.
#[derive(Debug, Clone)]
pub struct StreamModel {
    path: PathBuf,
    header: SparseHeader,
    descriptor: Option<Descriptor>,
}

impl StreamModel {
    /// Validates the header (sector 0) of the stream called `path`.
    pub fn new(header: SparseHeader, path: &Path) -> Result<StreamModel> {
        let stream = FLAG_COMPRESSED | FLAG_MARKERS;
        if header.flags & stream != stream {
            return Err(Error::unsupported(
                path,
                format!(
                    "flags {:#x} (byte 8): only streamOptimized files with compressed grains and markers ({stream:#x}) are supported",
                    header.flags
                ),
            ));
        }
        if header.grain_size > MAX_STREAM_GRAIN_SECTORS {
            return Err(Error::unsupported(
                path,
                format!(
                    "grains of {} sectors (byte 20); streams are read with grains of at most {MAX_STREAM_GRAIN_SECTORS}",
                    header.grain_size
                ),
            ));
        }
        if header.overhead == 0 || header.overhead > u64::MAX / 512 {
            return Err(Error::corrupt(
                path,
                64,
                format!("overHead {} is impossible: grains would overlap the header", header.overhead),
            ));
        }
        let m = StreamModel { path: path.to_path_buf(), header, descriptor: None };
        let h = &m.header;
        if h.descriptor_offset != 0 && h.descriptor_size != 0 && m.descriptor_range().is_none() {
            return Err(Error::corrupt(
                path,
                28,
                format!(
                    "embedded descriptor ({} sectors at sector {}) does not lie between the header and overHead (sector {})",
                    h.descriptor_size, h.descriptor_offset, h.overhead
                ),
            ));
        }
        if h.gd_offset != GD_AT_END && m.header_directory().is_none() {
            return Err(Error::corrupt(
                path,
                56,
                format!(
                    "grain directory at sector {} ({} sectors) does not lie between the header and overHead (sector {}), where a stream keeps a directory its header names",
                    h.gd_offset,
                    m.gd_sectors(),
                    h.overhead
                ),
            ));
        }
        Ok(m)
    }

    /// The header (sector 0).
    pub fn header(&self) -> &SparseHeader {
        &self.header
    }

    /// The stream's name in errors.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Capacity of the virtual disk in bytes.
    pub fn capacity(&self) -> u64 {
        self.header.capacity * 512
    }

    /// Bytes of one grain.
    pub fn grain_bytes(&self) -> u64 {
        self.header.grain_size * 512
    }

    /// Entries of the grain directory.
    pub fn gd_entries(&self) -> u64 {
        self.header.num_gdes()
    }

    /// Sectors of the grain directory.
    pub fn gd_sectors(&self) -> u64 {
        self.gd_entries().saturating_mul(4).div_ceil(512)
    }

    /// Sectors of one grain table.
    pub fn gt_sectors(&self) -> u64 {
        table_sectors(self.header.num_gtes_per_gt)
    }

    /// Byte offset of overHead: where grains and markers start.
    pub fn overhead_bytes(&self) -> u64 {
        self.header.overhead * 512
    }

    /// The byte range `[start, end)` of `sectors` sectors at sector `offset`, when it lies between
    /// the header and overHead.
    fn before_overhead(&self, offset: u64, sectors: u64) -> Option<(u64, u64)> {
        let s = offset.checked_mul(512)?;
        let e = s.checked_add(sectors.checked_mul(512)?)?;
        (offset >= 1 && e <= self.overhead_bytes() && e > s).then_some((s, e))
    }

    /// The byte range of the embedded descriptor area, when the header declares one.
    pub fn descriptor_range(&self) -> Option<(u64, u64)> {
        let h = &self.header;
        if h.descriptor_offset == 0 || h.descriptor_size == 0 {
            return None;
        }
        self.before_overhead(h.descriptor_offset, h.descriptor_size)
            .filter(|(s, e)| e - s <= crate::descriptor::MAX_DESCRIPTOR_BYTES as u64)
    }

    /// The byte range of the directory the header names (`None` when it is at the end).
    pub fn header_directory(&self) -> Option<(u64, u64)> {
        if self.header.gd_offset == GD_AT_END {
            return None;
        }
        let (s, _) = self.before_overhead(self.header.gd_offset, self.gd_sectors())?;
        Some((s, s + self.gd_entries() * 4))
    }

    /// Validates the embedded descriptor: `text` is the area's text up to its first NUL (`None`
    /// when there is no area). A declared area must hold a descriptor of createType
    /// streamOptimized with one SPARSE extent mapping exactly the header's capacity.
    pub fn set_descriptor(&mut self, text: Option<&str>) -> Result<()> {
        let h = &self.header;
        let Some((start, end)) = self.descriptor_range() else {
            return Ok(()); // No area: a bare stream extent, sized by its header.
        };
        let text = text.unwrap_or("");
        if text.trim().is_empty() {
            return Err(Error::corrupt(
                &self.path,
                start,
                format!(
                    "the embedded descriptor area ({} bytes at sector {}) is blank; a streamOptimized file carries its descriptor there",
                    end - start,
                    h.descriptor_offset
                ),
            ));
        }
        let d = Descriptor::parse(text, &self.path)?;
        h.check_create_type(&d.create_type, &self.path, 0)?;
        let sizes: Vec<u64> = d.extents.iter().map(|e| e.sectors).collect();
        let one_sparse = d.extents.len() == 1 && d.extents[0].kind == ExtentType::Sparse;
        if !one_sparse || sizes[0] != h.capacity {
            return Err(Error::corrupt(
                &self.path,
                12,
                format!(
                    "the header says a capacity of {} sectors, but the embedded descriptor's extents are {:?} ({}); a stream has one SPARSE extent of its capacity",
                    h.capacity,
                    sizes,
                    d.extents.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        self.descriptor = Some(d);
        Ok(())
    }

    /// The embedded descriptor, once [`StreamModel::set_descriptor`] accepted it.
    pub fn descriptor(&self) -> Option<&Descriptor> {
        self.descriptor.as_ref()
    }

    /// Checks the length of the whole stream: whole sectors, and at least the metadata before
    /// overHead.
    pub fn check_length(&self, len: u64) -> Result<()> {
        if !len.is_multiple_of(512) {
            return Err(Error::corrupt(
                &self.path,
                len,
                format!(
                    "stream is truncated at byte {len}: a stream is whole 512-byte sectors, this one ends {} bytes into one",
                    len % 512
                ),
            ));
        }
        if len < self.overhead_bytes() {
            return Err(Error::corrupt(
                &self.path,
                len,
                format!(
                    "stream is truncated at byte {len}: the metadata before overHead ends at byte {}",
                    self.overhead_bytes()
                ),
            ));
        }
        Ok(())
    }

    /// Checks the `numSectors` of a metadata marker of type `kind` at byte `at`: one table for a
    /// grain table marker, the directory for a directory marker, one sector for a footer marker.
    pub fn check_marker(&self, kind: u32, val: u64, at: u64) -> Result<()> {
        let want = match kind {
            MARKER_GT => self.gt_sectors(),
            MARKER_GD => self.gd_sectors(),
            MARKER_FOOTER => 1,
            _ => return Ok(()),
        };
        if val != want {
            return Err(Error::corrupt(
                &self.path,
                at,
                format!(
                    "{} marker says {val} sectors follow; the header's shape ({} sectors in grains of {}, {} entries per table) needs {want}",
                    marker_name(kind),
                    self.header.capacity,
                    self.header.grain_size,
                    self.header.num_gtes_per_gt
                ),
            ));
        }
        Ok(())
    }

    /// Parses and checks the footer sector found at byte `at`: a valid header with a real
    /// directory offset and the header's capacity, grain size, table size, stream flags and
    /// overHead (the random-access reader reads grains with the footer's fields, the sequential one
    /// with the header's, so the two must agree).
    pub fn check_footer(&self, sector: &[u8; 512], at: u64) -> Result<SparseHeader> {
        let f = SparseHeader::parse(sector, &self.path, at)?;
        let h = &self.header;
        if f.gd_offset == GD_AT_END {
            return Err(Error::corrupt(&self.path, at + 56, "the footer's grain directory offset is also `at end`"));
        }
        let stream = FLAG_COMPRESSED | FLAG_MARKERS;
        if (f.capacity, f.grain_size, f.num_gtes_per_gt, f.flags & stream)
            != (h.capacity, h.grain_size, h.num_gtes_per_gt, h.flags & stream)
        {
            return Err(Error::corrupt(
                &self.path,
                at + 12,
                format!(
                    "the footer says {} sectors in grains of {} ({} per table, flags {:#x}), the header {} in grains of {} ({}, flags {:#x})",
                    f.capacity, f.grain_size, f.num_gtes_per_gt, f.flags, h.capacity, h.grain_size, h.num_gtes_per_gt, h.flags
                ),
            ));
        }
        if f.overhead != h.overhead {
            return Err(Error::corrupt(
                &self.path,
                at + 64,
                format!(
                    "the footer says overHead is sector {}, the header sector {}: a footer is a copy of the header",
                    f.overhead, h.overhead
                ),
            ));
        }
        Ok(f)
    }

    /// Checks the entries of a directory the header names (read from byte `gd_at`) as the writers
    /// that put the directory there lay it out (qemu, open-vmdk): every table is present, lies
    /// between the header and overHead, and overlaps neither another table nor the directory. (A
    /// damaged table size makes entries run into padding or into other tables, which this refuses
    /// before either reader could map grains through the wrong entries.)
    pub fn check_header_tables(&self, gd: &[u32], gd_at: u64) -> Result<()> {
        let bad = |i: usize, what: String| Error::corrupt(&self.path, gd_at + i as u64 * 4, what);
        let gt = self.gt_sectors();
        let dir = (self.header.gd_offset, self.header.gd_offset + self.gd_sectors());
        for (i, &e) in gd.iter().enumerate() {
            let e = e as u64;
            if e == 0 {
                return Err(bad(
                    i,
                    format!(
                        "grain directory entry {i} names no grain table; a directory in the header has every table"
                    ),
                ));
            }
            if self.before_overhead(e, gt).is_none() || (e < dir.1 && e + gt > dir.0) {
                return Err(bad(
                    i,
                    format!(
                        "grain directory entry {i} points to a grain table at sector {e}, which does not lie between the directory and overHead (sector {})",
                        self.header.overhead
                    ),
                ));
            }
        }
        let mut order: Vec<(u32, usize)> = gd.iter().copied().zip(0..).collect();
        order.sort_unstable();
        for w in order.windows(2) {
            if (w[1].0 as u64) < w[0].0 as u64 + gt {
                return Err(bad(
                    w[1].1,
                    format!(
                        "grain directory entries {} and {} name overlapping grain tables (sectors {} and {}, {gt} sectors each)",
                        w[0].1, w[1].1, w[0].0, w[1].0
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks a grain table entry `e` found at byte `at`: 0, or a grain at or after overHead.
    pub fn check_table_entry(&self, e: u64, at: u64) -> Result<()> {
        if e != 0 && e < self.header.overhead {
            return Err(Error::corrupt(
                &self.path,
                at,
                format!(
                    "grain table entry points to sector {e}, inside the metadata before overHead (sector {})",
                    self.header.overhead
                ),
            ));
        }
        Ok(())
    }
}

/// Largest compressed grain we accept, exclusive (VirtualBox rejects twice the grain or more; qemu
/// reads two grains' worth).
pub fn max_compressed_size(grain_bytes: u64) -> u64 {
    2 * grain_bytes + 1024
}

/// Inflates the zlib stream `comp` of grain `g` (found at byte `at` of `path`) into `out`, which
/// must end up holding at least `want` inflated bytes; output beyond `out` (a last grain inflated
/// past the disk's end) is dropped.
pub fn inflate_grain(
    path: &Path,
    at: u64,
    comp: &[u8],
    g: u64,
    grain_bytes: u64,
    want: usize,
    out: &mut [u8],
) -> Result<()> {
    let mut z = Decompress::new(true);
    let status = z
        .decompress(comp, out, FlushDecompress::Finish)
        .map_err(|e| Error::corrupt(path, at, format!("grain {g} does not inflate: {e}")))?;
    let n = z.total_out() as usize;
    if status != Status::StreamEnd && n < out.len() {
        return Err(Error::corrupt(
            path,
            at,
            format!("grain {g}: compressed data ends early ({n} of {grain_bytes} bytes)"),
        ));
    }
    if n < want {
        return Err(Error::corrupt(path, at, format!("grain {g} inflates to {n} bytes, expected {want}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extent::kdmv::{check_table_marker, MARKER_PROGRESS};
    use crate::extent::stream::writer::stream_header;

    fn model(h: SparseHeader) -> Result<StreamModel> {
        StreamModel::new(h, Path::new("s.vmdk"))
    }

    #[test]
    fn header_rules() {
        let h = stream_header(2048, 128, 20);
        assert!(model(h.clone()).is_ok());
        let mut bad = h.clone();
        bad.flags &= !FLAG_MARKERS;
        assert!(matches!(model(bad), Err(Error::Unsupported { .. })));
        let mut bad = h.clone();
        bad.grain_size = MAX_STREAM_GRAIN_SECTORS * 2;
        assert!(matches!(model(bad), Err(Error::Unsupported { .. })));
        let mut bad = h.clone();
        bad.descriptor_size = 200; // past overHead (128)
        assert!(matches!(model(bad), Err(Error::Corrupt { offset: 28, .. })));
        let mut bad = h.clone();
        bad.gd_offset = 500;
        assert!(matches!(model(bad), Err(Error::Corrupt { offset: 56, .. })));
    }

    #[test]
    fn descriptor_rules() {
        let h = stream_header(2048, 128, 20);
        let text = |ct: &str, size: u64| {
            format!("# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"{ct}\"\nRW {size} SPARSE \"s.vmdk\"\n")
        };
        let mut m = model(h.clone()).unwrap();
        m.set_descriptor(Some(&text("streamOptimized", 2048))).unwrap();
        assert_eq!(m.descriptor().unwrap().extents[0].sectors, 2048);
        let e = model(h.clone()).unwrap().set_descriptor(Some(&text("streamOptimized", 1024))).unwrap_err();
        assert!(matches!(e, Error::Corrupt { offset: 12, .. }), "{e}");
        let e = model(h.clone()).unwrap().set_descriptor(Some(&text("monolithicSparse", 2048))).unwrap_err();
        assert!(matches!(e, Error::Corrupt { offset: 8, .. }), "{e}");
        let e = model(h.clone()).unwrap().set_descriptor(Some("\n  \n")).unwrap_err();
        assert!(matches!(e, Error::Corrupt { offset: 512, .. }) && e.to_string().contains("blank"), "{e}");
        let e = model(h).unwrap().set_descriptor(None).unwrap_err();
        assert!(e.to_string().contains("blank"), "{e}");
    }

    #[test]
    fn markers_footer_and_length() {
        let h = stream_header(600 * 128, 128, 20);
        let m = model(h.clone()).unwrap();
        assert_eq!((m.gt_sectors(), m.gd_sectors()), (4, 1));
        m.check_marker(MARKER_GT, 4, 0).unwrap();
        assert!(m.check_marker(MARKER_GT, 8, 512).is_err());
        assert!(m.check_marker(MARKER_GD, 2, 512).is_err());
        assert!(m.check_marker(MARKER_FOOTER, 0, 512).is_err());
        m.check_marker(MARKER_PROGRESS, 99, 0).unwrap();
        let mut f = h.clone();
        f.gd_offset = 300;
        assert_eq!(m.check_footer(&f.to_bytes(), 1024).unwrap().gd_offset, 300);
        let mut o = f.clone();
        o.overhead += 1;
        assert!(matches!(m.check_footer(&o.to_bytes(), 1024), Err(Error::Corrupt { offset: 1088, .. })));
        f.capacity += 128;
        assert!(matches!(m.check_footer(&f.to_bytes(), 1024), Err(Error::Corrupt { offset: 1036, .. })));
        m.check_length(128 * 512 + 1024).unwrap();
        let e = m.check_length(65_187).unwrap_err();
        assert!(matches!(e, Error::Corrupt { offset: 65_187, .. }) && e.to_string().contains("truncated"), "{e}");
        assert!(
            check_table_marker(Path::new("s"), &crate::extent::stream::writer::metadata_marker(4, 1), 0, 512).is_ok()
        );
        assert!(
            check_table_marker(Path::new("s"), &crate::extent::stream::writer::metadata_marker(1, 1), 0, 512).is_err()
        );
    }
}
