//! Directories. VMFS3/5: the directory file is a flat array of 140-byte records (type, FD address,
//! generation, 128-byte name); a record with FD address 0 is free. VMFS6: a 64 KiB header (version,
//! entry count, the allocation-map block list, `.` and `..`, a name hash table) followed by blocks of
//! one metadata-alignment each, typed by the 4-bit entries of the allocation-map blocks; directory
//! entry blocks hold 288-byte entries whose slot bitmap bit is clear when the slot is in use. Names are
//! found by scanning, so the hash is never needed.

use super::error::{Result, VmfsError};
use super::filedesc::FileKind;
use super::le::Le;

/// Bytes of a VMFS3/5 directory record.
pub const FLAT_ENTRY: usize = 0x8C;
/// Bytes of the VMFS6 directory header block.
pub const V6_HEADER: usize = 0x10000;
/// VMFS6 directory header versions (release and debug builds).
pub const V6_VERSIONS: [u32; 2] = [0xF5_0001, 0xFD_C001];
/// Bytes of a VMFS6 directory entry.
pub const V6_ENTRY: usize = 0x120;
/// Bytes of a VMFS6 directory block header.
pub const V6_BLOCK_HEADER: usize = 0x40;
/// Offsets of `.` and `..` in the VMFS6 header.
pub const V6_SELF: usize = 0x3B8;
/// See [`V6_SELF`].
pub const V6_PARENT: usize = 0x4D8;
/// Most allocation-map blocks a VMFS6 header lists.
pub const V6_MAX_MAP_BLOCKS: usize = 128;
/// VMFS6 block types in the allocation map.
pub const V6_BLOCK_DIRENT: u8 = 1;

/// One raw directory record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    /// Name.
    pub name: String,
    /// FD address.
    pub addr: u32,
    /// Type recorded in the entry.
    pub kind: FileKind,
}

fn kind_of(t: u32) -> FileKind {
    match t {
        2 => FileKind::Directory,
        3 => FileKind::File,
        4 => FileKind::Symlink,
        5 => FileKind::System,
        6 => FileKind::Rdm,
        1 => FileKind::Volume,
        _ => FileKind::Other,
    }
}

/// Parses a VMFS3/5 directory file.
pub fn parse_flat(data: &[u8]) -> Vec<RawEntry> {
    let mut out = Vec::new();
    for rec in data.chunks_exact(FLAT_ENTRY) {
        let l = Le(rec);
        let addr = l.u32(4).unwrap_or(0);
        if addr == 0 {
            continue;
        }
        out.push(RawEntry { name: l.cstr(0xC, 128).unwrap_or_default(), addr, kind: kind_of(l.u32(0).unwrap_or(0)) });
    }
    out
}

fn v6_entry(b: &[u8]) -> RawEntry {
    let l = Le(b);
    RawEntry {
        name: l.cstr(0x18, 256).unwrap_or_default(),
        addr: l.u32(4).unwrap_or(0),
        kind: kind_of(l.u32(0).unwrap_or(0)),
    }
}

/// Parses a VMFS6 directory file whose blocks are `block` bytes. `place`/`at` locate it for
/// messages.
pub fn parse_v6(data: &[u8], block: usize, place: &str, at: u64) -> Result<Vec<RawEntry>> {
    let bad = |rel: usize, what: String| VmfsError::corrupt(place, at + rel as u64, what);
    if data.len() < V6_HEADER {
        return Err(bad(
            0,
            format!("VMFS6 directory of {} bytes is shorter than its {V6_HEADER}-byte header", data.len()),
        ));
    }
    let h = Le(data);
    let version = h.u32(0).unwrap_or(0);
    if !V6_VERSIONS.contains(&version) {
        return Err(bad(0, format!("VMFS6 directory version {version:#x}, expected {:#x}", V6_VERSIONS[0])));
    }
    let mut remaining = h.u32(4).unwrap_or(0) as u64;
    let map_blocks = h.u32(0xC).unwrap_or(0) as usize;
    if map_blocks > V6_MAX_MAP_BLOCKS {
        return Err(bad(
            0xC,
            format!("{map_blocks} allocation-map blocks; a header lists at most {V6_MAX_MAP_BLOCKS}"),
        ));
    }
    let mut out = Vec::new();
    for off in [V6_SELF, V6_PARENT] {
        if remaining == 0 {
            return Ok(out);
        }
        let e = v6_entry(&data[off..off + V6_ENTRY]);
        if e.addr != 0 {
            out.push(e);
            remaining -= 1;
        }
    }
    let nblocks = (data.len() - V6_HEADER) / block;
    let slots_max = ((block - V6_BLOCK_HEADER) / V6_ENTRY).min(56 * 8);
    let per_map = 2 * (block - V6_BLOCK_HEADER);
    for i in 0..map_blocks {
        if remaining == 0 {
            break;
        }
        let mb = h.u32(0x10 + 4 * i).unwrap_or(0) as usize;
        if mb >= nblocks {
            return Err(bad(
                0x10 + 4 * i,
                format!("allocation-map block {mb} is beyond the directory's {nblocks} blocks"),
            ));
        }
        let map = &data[V6_HEADER + mb * block + V6_BLOCK_HEADER..V6_HEADER + (mb + 1) * block];
        for (e, byte) in map.iter().enumerate() {
            for (half, nibble) in [(0usize, byte >> 4), (1, byte & 0xF)] {
                if remaining == 0 {
                    return Ok(out);
                }
                if nibble & 3 != V6_BLOCK_DIRENT {
                    continue;
                }
                let idx = i * per_map + 2 * e + half;
                if idx >= nblocks {
                    continue;
                }
                let b0 = V6_HEADER + idx * block;
                let blk = &data[b0..b0 + block];
                let bl = Le(blk);
                let total = (bl.u16(4).unwrap_or(0) as usize).min(slots_max);
                for s in 0..total {
                    if remaining == 0 {
                        return Ok(out);
                    }
                    let free = blk[8 + s / 8] >> (s % 8) & 1 != 0;
                    if free {
                        continue;
                    }
                    let off = V6_BLOCK_HEADER + s * V6_ENTRY;
                    out.push(v6_entry(&blk[off..off + V6_ENTRY]));
                    remaining -= 1;
                }
            }
        }
    }
    Ok(out)
}
