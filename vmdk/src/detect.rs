//! What a file is, decided from its first bytes, its last bytes and its name: the one place that
//! tells a VMDK file from a raw image.
//!
//! A file is a raw image only when it carries no VMDK signature in the places the formats put one:
//! sector 0 (`KDMV`, `COWD`, seSparse's `CAFEBABE`, a text descriptor, our RDM mapping record),
//! sector 1 (the embedded descriptor of a hosted sparse file) and the last 1536 bytes (a
//! streamOptimized footer). A near-miss is a [`Error::Corrupt`] naming the field and what was
//! expected, never a raw image:
//! - a magic a few bits from `KDMV`, `COWD`, seSparse's or the mapping record's, in front of a
//!   header whose other fields are plausible (open-vmdk's unfinished `kdmv` included);
//! - a hosted sparse, COWD or seSparse header whose magic is destroyed but whose other fields all
//!   hold (for `KDMV` the newline-detection bytes too);
//! - text that is clearly a descriptor (the `# Disk DescriptorFile` comment, `createType=`, `CID=`,
//!   extent lines, `ddb.` keys) whose first key is not `version`: it is parsed as a descriptor, and
//!   the parser names the damaged line;
//! - an embedded descriptor in sector 1, or a stream footer at the end, of a file with no sparse
//!   header;
//! - a file named `*.REDO` (an ESX 2 REDO log) without COWD magic.
//!
//! The thresholds never take a real raw image for a damaged VMDK: a near-miss needs a header whose
//! fields (version, grain size, table size, capacity, flags) all hold at once, which chance does not
//! produce (tests: zeros, random bytes, MBR, GPT, ext4, ISO 9660 and NTFS heads open as raw images).

use std::path::Path;
use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian as LE};

use crate::descriptor::{descriptor_evidence, looks_like_descriptor};
use crate::error::{Error, Result};
use crate::extent::cowd::{self, CowdHeader};
use crate::extent::kdmv::{self, SparseHeader, FLAG_NEWLINE_TEST, GD_AT_END, NEWLINE_TEST};
use crate::extent::kdmv::{parse_marker, MARKER_FOOTER};
use crate::extent::sesparse::{self, SeSparseHeader};
use crate::storage::Backing;

/// Bytes at the start of a file that detection looks at.
pub const HEAD_BYTES: u64 = 4096;
/// Bytes at the end of a file that detection looks at (footer marker, footer, end-of-stream).
pub const TAIL_BYTES: u64 = 1536;
/// Most bits a damaged magic may differ by and still count as that magic (open-vmdk's lowercase
/// `kdmv` is 4 bits from `KDMV`); the rest of the header must be plausible as well.
pub const NEAR_MAGIC_BITS: u32 = 4;

/// What a file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// A hosted sparse or streamOptimized extent (`KDMV`), with its header.
    Sparse(SparseHeader),
    /// An ESX COWD extent (vmfsSparse, ESX 2 REDO log).
    Cowd,
    /// An seSparse extent.
    SeSparse,
    /// A text descriptor (possibly damaged: parsing it names the line).
    Descriptor,
    /// An RDM mapping record (`NAME-rdm.vmdk`).
    RdmMapping,
    /// A plain raw image: no VMDK signature anywhere.
    Raw,
}

/// Reads the head and tail of `backing` and decides what it is (see [`classify`]).
pub fn detect(backing: &Arc<dyn Backing>) -> Result<Format> {
    let len = backing.len()?;
    let mut head = vec![0u8; len.min(HEAD_BYTES) as usize];
    backing.read_exact_at(&mut head, 0)?;
    let tail = if len >= HEAD_BYTES + TAIL_BYTES {
        let mut t = vec![0u8; TAIL_BYTES as usize];
        backing.read_exact_at(&mut t, len - TAIL_BYTES)?;
        Some(t)
    } else {
        None
    };
    classify(backing.path(), &head, tail.as_deref(), len)
}

/// Decides what the file `path` of `file_len` bytes is from its first bytes `head` (up to
/// [`HEAD_BYTES`]) and its last [`TAIL_BYTES`] (`tail`, when the file is longer than both).
pub fn classify(path: &Path, head: &[u8], tail: Option<&[u8]>, file_len: u64) -> Result<Format> {
    let format = match exact(path, head)? {
        Some(f) => f,
        None => near_miss(path, head, tail, file_len)?,
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name.ends_with(".REDO") && format != Format::Cowd {
        return Err(Error::corrupt(
            path,
            0,
            format!(
                "{name} is named as an ESX 2 REDO log (`*.REDO`), which is a COWD file, but it starts with {:02x?}; expected `COWD`",
                &head[..head.len().min(4)]
            ),
        ));
    }
    Ok(format)
}

/// The format whose signature `head` carries exactly, if any.
fn exact(path: &Path, head: &[u8]) -> Result<Option<Format>> {
    let m4 = head.get(..4).map(LE::read_u32);
    if m4 == Some(kdmv::MAGIC) {
        let Some(s0) = head.get(..512) else {
            return Err(Error::corrupt(
                path,
                0,
                format!("file of {} bytes is shorter than a 512-byte sparse header", head.len()),
            ));
        };
        let mut b = [0u8; 512];
        b.copy_from_slice(s0);
        return Ok(Some(Format::Sparse(SparseHeader::parse(&b, path, 0)?)));
    }
    if m4 == Some(cowd::MAGIC) {
        return Ok(Some(Format::Cowd));
    }
    if head.get(..8).map(LE::read_u64) == Some(sesparse::MAGIC) {
        return Ok(Some(Format::SeSparse));
    }
    if rdm::Mapping::looks_like_mapping(head) {
        return Ok(Some(Format::RdmMapping));
    }
    if looks_like_descriptor(head) {
        return Ok(Some(Format::Descriptor));
    }
    Ok(None)
}

/// A file without an exact signature: a damaged VMDK (an error, or a descriptor for the parser to
/// explain), or a raw image.
fn near_miss(path: &Path, head: &[u8], tail: Option<&[u8]>, file_len: u64) -> Result<Format> {
    if let Some(what) = near_kdmv(head).or_else(|| near_cowd(head, file_len)).or_else(|| near_sesparse(head)) {
        return Err(Error::corrupt(path, 0, what));
    }
    if let Some(what) = near_mapping(head, file_len) {
        return Err(Error::corrupt(path, 0, what));
    }
    if descriptor_evidence(head) >= 2 {
        return Ok(Format::Descriptor);
    }
    if let Some(s1) = head.get(512..) {
        if looks_like_descriptor(s1) || descriptor_evidence(s1) >= 2 {
            return Err(Error::corrupt(
                path,
                0,
                format!(
                    "sector 1 holds an embedded VMDK descriptor, but sector 0 is no sparse header (it starts with {:02x?}; expected `KDMV`): the header is damaged",
                    &head[..4]
                ),
            ));
        }
    }
    if let Some(at) = tail.and_then(footer_in_tail).map(|off| file_len - TAIL_BYTES + off) {
        return Err(Error::corrupt(
            path,
            0,
            format!(
                "the file ends in a streamOptimized footer (at byte {at}) but starts with {:02x?}, not a `KDMV` header: the header is damaged",
                &head[..head.len().min(4)]
            ),
        ));
    }
    Ok(Format::Raw)
}

/// Bits in which `a` and `b` differ.
fn bit_distance(a: &[u8], b: &[u8]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// `head` with its first bytes replaced by `magic` (to parse the rest of a damaged header).
fn with_magic(head: &[u8], magic: &[u8], len: usize) -> Option<Vec<u8>> {
    let mut b = head.get(..len)?.to_vec();
    b[..magic.len()].copy_from_slice(magic);
    Some(b)
}

/// A hosted sparse header with a damaged magic: everything else parses, and either the magic is
/// within [`NEAR_MAGIC_BITS`] of `KDMV` or the newline-detection bytes are intact too.
fn near_kdmv(head: &[u8]) -> Option<String> {
    let magic = kdmv::MAGIC.to_le_bytes();
    let fixed: [u8; 512] = with_magic(head, &magic, 512)?.try_into().ok()?;
    let h = SparseHeader::parse(&fixed, Path::new(""), 0).ok()?;
    let plausible = h.capacity > 0 && h.overhead > 0 && h.gd_offset != 0;
    let bits = bit_distance(&head[..4], &magic);
    let newline = h.flags & FLAG_NEWLINE_TEST != 0 && head[73..77] == NEWLINE_TEST;
    if !plausible || (bits > NEAR_MAGIC_BITS && !newline) {
        return None;
    }
    let shape = format!(
        "version {}, flags {:#x}, {} sectors in grains of {}, {} entries per table, directory at {}",
        h.version,
        h.flags,
        h.capacity,
        h.grain_size,
        h.num_gtes_per_gt,
        if h.gd_offset == GD_AT_END { "the end".to_string() } else { format!("sector {}", h.gd_offset) }
    );
    let found = &head[..4];
    let unfinished = if found == b"kdmv" {
        " (`kdmv` is what open-vmdk writes until a stream is complete: the stream was never finished)"
    } else {
        ""
    };
    Some(format!(
        "expected sparse magic `KDMV`, found {found:02x?} ({bits} bits off) in front of a plausible hosted sparse header ({shape}): the magic is damaged{unfinished}"
    ))
}

/// A COWD header with a damaged magic: version 1 or 3, small flags, a capacity, a directory after
/// the header whose size fits the capacity. With the magic destroyed (more than
/// [`NEAR_MAGIC_BITS`] off) the rest must be exactly as ESX writes it: the directory right after the
/// header, the free sector past it and inside the file, the header's padding zero.
fn near_cowd(head: &[u8], file_len: u64) -> Option<String> {
    let magic = cowd::MAGIC.to_le_bytes();
    let fixed = with_magic(head, &magic, cowd::HEADER_BYTES)?;
    let h = CowdHeader::parse(&fixed, Path::new("")).ok()?;
    let plausible = matches!(h.version, 1 | 3) && h.flags < 0x100 && h.num_sectors > 0 && h.gd_offset >= 4;
    let bits = bit_distance(&head[..4], &magic);
    let free = h.free_sector as u64;
    let as_esx_writes = h.gd_offset == 4
        && free >= h.overhead()
        && free.saturating_mul(512) <= file_len
        && fixed[cowd::PAD_OFFSET..].iter().all(|&b| b == 0);
    if !plausible || (bits > NEAR_MAGIC_BITS && !as_esx_writes) {
        return None;
    }
    Some(format!(
        "expected COWD magic `COWD`, found {:02x?} ({bits} bits off) in front of a plausible COWD header (version {}, {} sectors in grains of {}, {} directory entries at sector {}): the magic is damaged",
        &head[..4],
        h.version,
        h.num_sectors,
        h.grain_size,
        h.num_gdes,
        h.gd_offset
    ))
}

/// An seSparse header with a damaged magic: version 2.1, 8-sector grains, 64-sector tables.
fn near_sesparse(head: &[u8]) -> Option<String> {
    let magic = sesparse::MAGIC.to_le_bytes();
    let fixed: [u8; 512] = with_magic(head, &magic, 512)?.try_into().ok()?;
    let h = SeSparseHeader::parse(&fixed, Path::new("")).ok()?;
    if h.capacity == 0 {
        return None;
    }
    let bits = bit_distance(&head[..8], &magic);
    Some(format!(
        "expected seSparse magic CAFEBABE, found {:02x?} ({bits} bits off) in front of a plausible seSparse header (version 2.1, {} sectors): the magic is damaged",
        &head[..8],
        h.capacity
    ))
}

/// Our RDM mapping record with a damaged magic: version 1, a known mode and kind, and a body length
/// that accounts for the whole file.
fn near_mapping(head: &[u8], file_len: u64) -> Option<String> {
    let magic = rdm::mapping::MAGIC;
    let h = head.get(..rdm::mapping::HEADER_LEN)?;
    let bits = bit_distance(&h[..8], &magic);
    let body = LE::read_u32(&h[32..]) as u64;
    let fits = rdm::mapping::HEADER_LEN as u64 + body + 4 == file_len;
    let plausible =
        LE::read_u16(&h[8..]) == rdm::mapping::VERSION && (1..=3).contains(&h[10]) && (1..=2).contains(&h[11]);
    if bits > NEAR_MAGIC_BITS || !plausible || !fits {
        return None;
    }
    Some(format!(
        "expected the RDM mapping magic \"VMKFSRDM\", found {:02x?} ({bits} bits off) in front of a plausible mapping record: the magic is damaged",
        &h[..8]
    ))
}

/// Offset in `tail` of a streamOptimized footer (a footer marker followed by a valid header).
fn footer_in_tail(tail: &[u8]) -> Option<u64> {
    let (val, size, kind) = parse_marker(tail.get(..512)?);
    if (val, size, kind) != (1, 0, MARKER_FOOTER) {
        return None;
    }
    let f: [u8; 512] = tail.get(512..1024)?.try_into().ok()?;
    SparseHeader::parse(&f, Path::new(""), 0).ok().map(|_| 512)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extent::kdmv::Layout;

    fn p() -> &'static Path {
        Path::new("/d/x.vmdk")
    }

    #[test]
    fn exact_signatures() {
        let mut h = Layout::plan(2048, 128, 20).header.to_bytes().to_vec();
        h.resize(4096, 0);
        assert!(matches!(classify(p(), &h, None, 1 << 20).unwrap(), Format::Sparse(_)));
        let d = b"# Disk DescriptorFile\nversion=1\ncreateType=\"vmfs\"\n";
        assert_eq!(classify(p(), d, None, d.len() as u64).unwrap(), Format::Descriptor);
        assert_eq!(classify(p(), &[0u8; 4096], None, 1 << 20).unwrap(), Format::Raw);
    }

    #[test]
    fn one_flipped_bit_in_a_magic_is_an_error() {
        let mut h = Layout::plan(2048, 128, 20).header.to_bytes().to_vec();
        h.resize(4096, 0);
        for bit in 0..32 {
            let mut b = h.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let e = classify(p(), &b, None, 1 << 20).unwrap_err();
            assert!(matches!(e, Error::Corrupt { offset: 0, .. }) && e.to_string().contains("KDMV"), "{bit}: {e}");
        }
        let mut c = CowdHeader::new(4096, 1, None).to_bytes();
        c.resize(4096, 0);
        c[0] = b'X';
        let e = classify(p(), &c, None, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("COWD"), "{e}");
    }

    #[test]
    fn destroyed_magics_need_the_whole_header() {
        // A COWD header with its magic zeroed is still recognized...
        let mut c = CowdHeader::new(4096, 1, None).to_bytes();
        c.resize(4096, 0);
        c[..4].fill(0);
        let e = classify(p(), &c, None, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("COWD") && e.to_string().contains("15 bits off"), "{e}");
        // ...but a binary head of small integers that merely fits COWD's field ranges is not.
        let mut b = vec![0u8; 4096];
        for (i, v) in [0xdead_beefu32, 1, 3, 100, 1, 4, 1, 7].iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        b[2000] = 1;
        assert_eq!(classify(p(), &b, None, 1 << 20).unwrap(), Format::Raw);
        // A hosted sparse header without its magic and without the newline bytes is not either.
        let mut h = Layout::plan(2048, 128, 20).header.to_bytes().to_vec();
        h.resize(4096, 0);
        h[..4].copy_from_slice(b"\x7fELF");
        h[73..77].fill(0);
        assert_eq!(classify(p(), &h, None, 1 << 20).unwrap(), Format::Raw);
    }

    #[test]
    fn redo_names_need_cowd() {
        let e = classify(Path::new("/d/x.vmdk.REDO"), &[0u8; 4096], None, 1 << 20).unwrap_err();
        assert!(matches!(e, Error::Corrupt { offset: 0, .. }) && e.to_string().contains("REDO"), "{e}");
        let mut c = CowdHeader::new(4096, 1, None).to_bytes();
        c.resize(4096, 0);
        assert_eq!(classify(Path::new("/d/x.vmdk.REDO"), &c, None, 1 << 20).unwrap(), Format::Cowd);
    }
}
