//! Finding the VMFS partition on a device: an MBR partition of type `0xFB`, a GPT partition of the
//! VMFS type GUID, or a bare partition (the LVM header at 1 MiB from the start of the device).

use super::device::{read_vec, DeviceRead};
use super::error::Result;
use super::le::Le;

/// Offset of the LVM device header in its partition.
pub const LVM_HEADER_OFFSET: u64 = 0x10_0000;
/// Magic of the device header and of extended metadata regions.
pub const LVM_MAGIC: u32 = 0xC001_D00D;

/// MBR partition type of VMFS.
pub const MBR_TYPE_VMFS: u8 = 0xFB;

/// The VMFS GPT partition type GUID `AA31E02A-400F-11DB-9590-000C2911D1B8` as stored on disk (the
/// first three fields little-endian).
pub const GPT_TYPE_VMFS: [u8; 16] =
    [0x2A, 0xE0, 0x31, 0xAA, 0x0F, 0x40, 0xDB, 0x11, 0x95, 0x90, 0x00, 0x0C, 0x29, 0x11, 0xD1, 0xB8];

/// Where a VMFS partition starts on its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// Byte offset of the partition on the device.
    pub start: u64,
    /// Length in bytes (to the end of the device for a bare partition).
    pub len: u64,
    /// 1-based partition number in the table, 0 for a bare partition.
    pub number: u32,
}

/// Most GPT entries looked at (the usual table has 128).
const MAX_GPT_ENTRIES: u32 = 1024;

fn has_lvm_magic(dev: &dyn DeviceRead, start: u64) -> bool {
    let Some(at) = start.checked_add(LVM_HEADER_OFFSET) else { return false };
    if at.checked_add(4).is_none_or(|e| e > dev.len()) {
        return false;
    }
    read_vec(dev, at, 4).ok().and_then(|b| Le(&b).u32(0)) == Some(LVM_MAGIC)
}

/// The VMFS partitions of `dev`, in table order; a device without a partition table that has an LVM
/// header at 1 MiB is itself the partition.
pub fn find(dev: &dyn DeviceRead) -> Result<Vec<Partition>> {
    let len = dev.len();
    let mut out = Vec::new();
    if len >= 512 {
        let s0 = read_vec(dev, 0, 512)?;
        let l = Le(&s0);
        if l.u16(510) == Some(0xAA55) {
            let mut protective = false;
            for i in 0..4 {
                let e = 446 + 16 * i;
                let kind = l.u8(e + 4).unwrap_or(0);
                let lba = l.u32(e + 8).unwrap_or(0) as u64;
                let sectors = l.u32(e + 12).unwrap_or(0) as u64;
                if kind == 0xEE {
                    protective = true;
                }
                if kind == MBR_TYPE_VMFS && lba != 0 {
                    // 512-byte sectors, or 4 KiB sectors on a 4Kn device.
                    for ss in [512u64, 4096] {
                        let start = lba * ss;
                        if has_lvm_magic(dev, start) {
                            let plen = (sectors * ss).min(len.saturating_sub(start));
                            out.push(Partition { start, len: plen, number: i as u32 + 1 });
                            break;
                        }
                    }
                }
            }
            if protective {
                for ss in [512u64, 4096] {
                    out.extend(gpt(dev, ss)?);
                    if !out.is_empty() {
                        break;
                    }
                }
            }
        }
    }
    if out.is_empty() && has_lvm_magic(dev, 0) {
        out.push(Partition { start: 0, len, number: 0 });
    }
    Ok(out)
}

fn gpt(dev: &dyn DeviceRead, ss: u64) -> Result<Vec<Partition>> {
    let len = dev.len();
    let mut out = Vec::new();
    if ss * 2 > len {
        return Ok(out);
    }
    let h = read_vec(dev, ss, 512)?;
    let l = Le(&h);
    if l.bytes(0, 8) != Some(b"EFI PART") {
        return Ok(out);
    }
    let (Some(entries_lba), Some(count), Some(size)) = (l.u64(72), l.u32(80), l.u32(84)) else {
        return Ok(out);
    };
    if !(128..=4096).contains(&size) || count == 0 {
        return Ok(out);
    }
    let count = count.min(MAX_GPT_ENTRIES);
    let Some(table) = entries_lba.checked_mul(ss) else { return Ok(out) };
    let bytes = count as u64 * size as u64;
    if table.checked_add(bytes).is_none_or(|e| e > len) {
        return Ok(out);
    }
    let t = read_vec(dev, table, bytes as usize)?;
    for i in 0..count as usize {
        let e = Le(&t[i * size as usize..]);
        if e.bytes(0, 16) != Some(&GPT_TYPE_VMFS[..]) {
            continue;
        }
        let (Some(first), Some(last)) = (e.u64(32), e.u64(40)) else { continue };
        let (Some(start), Some(end)) = (first.checked_mul(ss), last.checked_add(1).and_then(|x| x.checked_mul(ss)))
        else {
            continue;
        };
        if end <= start || !has_lvm_magic(dev, start) {
            continue;
        }
        out.push(Partition { start, len: end.min(len).saturating_sub(start), number: i as u32 + 1 });
    }
    Ok(out)
}
