//! The VMFS logical volume manager (LVM3–6): the device header at 1 MiB into the partition, its
//! volume table and physical-extent (PE) tables, and the logical volume assembled from the PEs of
//! one or more devices (a "spanned" volume), matched by the logical volume's UUID.
//!
//! Layout of the metadata region, from the device header `H` (partition + 1 MiB), where `m` is the
//! header size (512 bytes before LVM6, `mdAlignment` on LVM6) and `V` the volume-table capacity
//! (512 entries before LVM6, 1 on LVM6):
//!
//! ```text
//! H                      device header
//! H + m                  volume table, V × 512 bytes, then reserved space up to
//! H + m + 0x7E000        device-name table, 32 × 256 bytes
//! H + m + 0x80000        PE map 0: bitmap (1 KiB; max(m, 1 KiB) on LVM6), then 8192 × 128-byte entries
//!                        … up to 8 maps back to back
//! ```
//!
//! More maps live in extended regions (same magic), chained from the header's
//! `extDevMetadataOffset` through each region's `nextOffset`; each region's maps sit at the same
//! relative offset as in the main region. The PE tables, never a constant, say where each piece of
//! the logical volume is.

use std::sync::Arc;

use rdm::ReadAt;

use super::device::{read_vec, DeviceRead};
use super::error::{Result, VmfsError};
use super::le::{pow2_in, uuid_string, Le};
use super::partition::Partition;

pub use super::partition::{LVM_HEADER_OFFSET, LVM_MAGIC};
/// Bytes of one volume-table entry.
const VOL_ENTRY: u64 = 512;
/// Bytes of one PE-table entry.
const PE_ENTRY: u64 = 128;
/// PE entries per map.
const PES_PER_MAP: u64 = 8192;
/// Maps per metadata region.
const MAX_MAPS_PER_REGION: u32 = 8;
/// Extended metadata regions followed (a cycle limit).
const MAX_EXT_REGIONS: usize = 64;
/// Offset of the device-name table from the volume table.
const SD_TABLE_FROM_VOLUMES: u64 = 0x7E000;
/// Bytes of the device-name table (32 names of 256 bytes).
const SD_TABLE: u64 = 32 * 256;
/// Most devices a volume may span.
pub const MAX_DEVICES: usize = 32;

/// One entry of a device's volume table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDesc {
    /// Logical size in bytes.
    pub logical_size: u64,
    /// The volume's name (usually its UUID as text).
    pub name: String,
    /// UUID of the logical volume (identical on every device of a spanned volume).
    pub lv_uuid: String,
    /// Snapshot id (part of the identity together with the UUID).
    pub snap_id: u32,
    /// Index of the volume, named by PE entries.
    pub volume_id: u32,
    /// First PE of the volume on this device (0 on the first device).
    pub first_pe: u64,
    /// Last PE of the volume on this device.
    pub last_pe: u64,
    /// Devices the volume spans.
    pub num_devices: u32,
}

/// One used physical extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhysExtent {
    /// PE id.
    pub id: u32,
    /// Volume it belongs to.
    pub volume_id: u32,
    /// Offset in the partition.
    pub phys_offset: u64,
    /// Offset in the logical volume.
    pub logical_offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// The LVM metadata of one device.
#[derive(Debug, Clone)]
pub struct DeviceHeader {
    /// LVM major version (3–6).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Device size recorded by the LVM.
    pub total_bytes: u64,
    /// Offset of the first PE (17 MiB usually).
    pub data_offset: u64,
    /// UUID of this device.
    pub device_uuid: String,
    /// Metadata alignment (LVM6), else 512.
    pub md_alignment: u32,
    /// Flags (1 = VMFS-L).
    pub flags: u32,
    /// The volume table.
    pub volumes: Vec<VolumeDesc>,
    /// Used PEs of every volume on this device.
    pub extents: Vec<PhysExtent>,
    /// The device-name table (first device only), as far as it has names.
    pub device_names: Vec<String>,
}

fn place(dev: &dyn DeviceRead) -> String {
    dev.path().display().to_string()
}

impl DeviceHeader {
    /// Reads the LVM metadata of the partition `part` of `dev`.
    pub fn read(dev: &dyn DeviceRead, part: &Partition) -> Result<DeviceHeader> {
        let h_off = part
            .start
            .checked_add(LVM_HEADER_OFFSET)
            .ok_or_else(|| VmfsError::corrupt(place(dev), part.start, "partition start overflows the header offset"))?;
        if h_off.checked_add(512).is_none_or(|e| e > dev.len()) {
            return Err(VmfsError::corrupt(
                place(dev),
                h_off,
                format!("no room for an LVM header: the device is only {} bytes", dev.len()),
            ));
        }
        let raw = read_vec(dev, h_off, 512)?;
        DeviceHeader::parse(&raw, dev, part)
    }

    /// Parses the 512-byte header `raw` (read from `part.start + 1 MiB` of `dev`) and reads the
    /// tables it points to.
    pub fn parse(raw: &[u8], dev: &dyn DeviceRead, part: &Partition) -> Result<DeviceHeader> {
        let h_off = part.start + LVM_HEADER_OFFSET;
        let bad = |rel: u64, what: String| VmfsError::corrupt(place(dev), h_off + rel, what);
        let l = Le(raw);
        let magic = l.u32(0).unwrap_or(0);
        if magic != LVM_MAGIC {
            return Err(bad(0, format!("LVM device header magic is {magic:#010x}, expected {LVM_MAGIC:#010x}")));
        }
        let f = |at: usize| l.u32(at).unwrap_or(0);
        let g = |at: usize| l.u64(at).unwrap_or(0);
        let major = f(4);
        if !(3..=6).contains(&major) {
            return Err(VmfsError::unsupported(
                place(dev),
                format!("LVM major version {major} (LVM3 to LVM6 are known)"),
            ));
        }
        let lvm6 = major >= 6;
        let md_alignment = if lvm6 { f(0xCA) } else { 512 };
        if !pow2_in(md_alignment as u64, 512, 1 << 20) {
            return Err(bad(
                0xCA,
                format!("LVM6 metadata alignment {md_alignment} is not a power of two from 512 to 1 MiB"),
            ));
        }
        let max_vols: u32 = if lvm6 { 1 } else { 512 };
        let num_volumes = f(0x66);
        if num_volumes == 0 || num_volumes > max_vols {
            return Err(bad(0x66, format!("{num_volumes} volumes; LVM{major} holds 1 to {max_vols}")));
        }
        let vt = h_off + md_alignment as u64;
        let vt_bytes = num_volumes as u64 * VOL_ENTRY;
        if vt + vt_bytes > dev.len() {
            return Err(bad(md_alignment as u64, "the volume table runs past the end of the device".into()));
        }
        let volumes = read_volume_table(dev, vt, num_volumes)?;
        let device_names = if major >= 5 { read_device_names(dev, vt + SD_TABLE_FROM_VOLUMES)? } else { Vec::new() };
        let layout = PeLayout {
            bitmap: if lvm6 { (md_alignment as u64).max(1024) } else { 1024 },
            map_rel: md_alignment as u64 + SD_TABLE_FROM_VOLUMES + SD_TABLE,
        };
        let extents = read_pe_tables(dev, part, h_off, &layout, f(0x6A) as u64, f(0xBE).max(1), g(0xC2))?;
        Ok(DeviceHeader {
            major,
            minor: f(8),
            total_bytes: g(0x5E),
            data_offset: g(0x7A),
            device_uuid: uuid_string(l.bytes(0x82, 16).unwrap_or(&[])),
            md_alignment,
            flags: f(0xD2),
            volumes,
            extents,
            device_names,
        })
    }
}

/// Where the PE maps of a metadata region are, relative to the region's start: the maps begin at
/// `map_rel`, each a `bitmap`-byte bitmap followed by [`PES_PER_MAP`] entries.
struct PeLayout {
    bitmap: u64,
    map_rel: u64,
}

/// The `count` entries of the volume table at byte `vt` of `dev` (checked to lie on the device).
fn read_volume_table(dev: &dyn DeviceRead, vt: u64, count: u32) -> Result<Vec<VolumeDesc>> {
    let vraw = read_vec(dev, vt, count as usize * VOL_ENTRY as usize)?;
    Ok(vraw
        .chunks_exact(VOL_ENTRY as usize)
        .map(|entry| {
            let e = Le(entry);
            VolumeDesc {
                logical_size: e.u64(0).unwrap_or(0),
                name: e.cstr(0x14, 64).unwrap_or_default(),
                lv_uuid: uuid_string(e.bytes(0x54, 16).unwrap_or(&[])),
                snap_id: e.u32(0x64).unwrap_or(0),
                volume_id: e.u32(0x70).unwrap_or(0),
                first_pe: e.u64(0x78).unwrap_or(0),
                last_pe: e.u64(0x80).unwrap_or(0),
                num_devices: e.u32(0x90).unwrap_or(0),
            }
        })
        .collect())
}

/// The device-name table at byte `sd` of `dev` (LVM5 and later, meaningful on the first device):
/// up to 32 names of 256 bytes, ending at the first empty one; none when the table is past the end.
fn read_device_names(dev: &dyn DeviceRead, sd: u64) -> Result<Vec<String>> {
    if sd + SD_TABLE > dev.len() {
        return Ok(Vec::new());
    }
    let names = read_vec(dev, sd, SD_TABLE as usize)?;
    Ok((0..32).map(|i| Le(&names).cstr(i * 256, 256).unwrap_or_default()).take_while(|n| !n.is_empty()).collect())
}

/// The used physical extents of all PE maps: `num_pes` entries in the maps of the main metadata
/// region at `h_off` (`maps` of them), then of the extended regions chained from `next_ext`
/// (partition-relative), each region's maps at the same relative place ([`PeLayout`]).
fn read_pe_tables(
    dev: &dyn DeviceRead,
    part: &Partition,
    h_off: u64,
    layout: &PeLayout,
    num_pes: u64,
    maps: u32,
    mut next_ext: u64,
) -> Result<Vec<PhysExtent>> {
    let bad = |rel: u64, what: String| VmfsError::corrupt(place(dev), h_off + rel, what);
    let mut extents = Vec::new();
    let mut remaining = num_pes;
    // (region base, number of maps): the main region, then the extended ones.
    let mut region = Some((h_off, maps));
    let mut seen = 0usize;
    while let Some((base, maps)) = region.take() {
        if maps > MAX_MAPS_PER_REGION {
            return Err(bad(0xBE, format!("{maps} PE maps in one metadata region; at most {MAX_MAPS_PER_REGION}")));
        }
        for m in 0..maps as u64 {
            if remaining == 0 {
                break;
            }
            let n = remaining.min(PES_PER_MAP);
            let table = base + layout.map_rel + m * (layout.bitmap + PES_PER_MAP * PE_ENTRY) + layout.bitmap;
            read_pe_table(dev, table, n, &mut extents)?;
            remaining -= n;
        }
        if remaining == 0 || next_ext == 0 {
            break;
        }
        seen += 1;
        if seen > MAX_EXT_REGIONS {
            return Err(bad(0xC2, format!("more than {MAX_EXT_REGIONS} extended metadata regions (a loop?)")));
        }
        let at = part.start.checked_add(next_ext).filter(|a| a.checked_add(24).is_some_and(|e| e <= dev.len()));
        let Some(at) = at else {
            return Err(bad(0xC2, format!("extended metadata offset {next_ext} is outside the device")));
        };
        let x = read_vec(dev, at, 24)?;
        let xl = Le(&x);
        if xl.u32(0) != Some(LVM_MAGIC) {
            return Err(VmfsError::corrupt(place(dev), at, "extended LVM metadata has no 0xC001D00D magic"));
        }
        region = Some((at, xl.u32(4).unwrap_or(0).max(1)));
        let nx = xl.u64(16).unwrap_or(0);
        if nx != 0 && nx <= next_ext {
            return Err(VmfsError::corrupt(
                place(dev),
                at + 16,
                format!("extended metadata chain goes backwards ({nx} after {next_ext})"),
            ));
        }
        next_ext = nx;
    }
    Ok(extents)
}

/// The used entries of the PE table of `n` entries at byte `table` of `dev`, appended to `out`
/// after checking each (a non-zero whole number of sectors, no overflow, not in the header area).
fn read_pe_table(dev: &dyn DeviceRead, table: u64, n: u64, out: &mut Vec<PhysExtent>) -> Result<()> {
    if table.checked_add(n * PE_ENTRY).is_none_or(|e| e > dev.len()) {
        return Err(VmfsError::corrupt(
            place(dev),
            table,
            format!("PE table of {n} entries runs past the end of the device ({} bytes)", dev.len()),
        ));
    }
    let t = read_vec(dev, table, (n * PE_ENTRY) as usize)?;
    for (i, entry) in t.chunks_exact(PE_ENTRY as usize).enumerate() {
        let e = Le(entry);
        if e.u8(0) != Some(1) {
            continue;
        }
        let pe = PhysExtent {
            id: e.u32(1).unwrap_or(0),
            volume_id: e.u32(5).unwrap_or(0),
            phys_offset: e.u64(9).unwrap_or(0),
            logical_offset: e.u64(0x11).unwrap_or(0),
            len: e.u64(0x19).unwrap_or(0),
        };
        let at = table + i as u64 * PE_ENTRY;
        if pe.len == 0 || !pe.len.is_multiple_of(512) {
            return Err(VmfsError::corrupt(
                place(dev),
                at,
                format!("PE {} has length {}, expected a non-zero multiple of 512", pe.id, pe.len),
            ));
        }
        if pe.phys_offset.checked_add(pe.len).is_none() || pe.logical_offset.checked_add(pe.len).is_none() {
            return Err(VmfsError::corrupt(place(dev), at, format!("PE {} offsets overflow", pe.id)));
        }
        if pe.phys_offset < LVM_HEADER_OFFSET {
            return Err(VmfsError::corrupt(
                place(dev),
                at,
                format!("PE {} starts at partition offset {}, inside the LVM header area", pe.id, pe.phys_offset),
            ));
        }
        out.push(pe);
    }
    Ok(())
}

/// A piece of the logical volume on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Offset in the logical volume.
    pub logical: u64,
    /// Length in bytes.
    pub len: u64,
    /// Index of the device (in [`LogicalVolume::devices`]).
    pub device: usize,
    /// Byte offset on that device (partition start included).
    pub device_offset: u64,
}

/// One device of a volume, as opened.
#[derive(Debug, Clone)]
pub struct Member {
    /// The device.
    pub dev: Arc<dyn DeviceRead>,
    /// Its VMFS partition.
    pub partition: Partition,
    /// Its LVM metadata.
    pub header: DeviceHeader,
}

/// A logical volume: the concatenation of its PEs, sorted by logical offset.
#[derive(Debug)]
pub struct LogicalVolume {
    /// The devices, in volume order (first PE first).
    pub devices: Vec<Member>,
    /// The volume's descriptor on the first device.
    pub desc: VolumeDesc,
    /// Contiguous pieces (adjacent PEs on one device merged).
    pub segments: Vec<Segment>,
    /// Bytes of the volume.
    pub size: u64,
}

impl LogicalVolume {
    /// Assembles the volume held by `members` (every device of it, any order).
    pub fn assemble(mut members: Vec<Member>) -> Result<LogicalVolume> {
        if members.is_empty() {
            return Err(VmfsError::Volume("no VMFS device given".into()));
        }
        if members.len() > MAX_DEVICES {
            return Err(VmfsError::Volume(format!(
                "{} devices given; a volume spans at most {MAX_DEVICES}",
                members.len()
            )));
        }
        // The volume: the one whose descriptor is on the first device given.
        let key = {
            let v = &members[0].header.volumes[0];
            (v.lv_uuid.clone(), v.snap_id)
        };
        let mut descs = Vec::with_capacity(members.len());
        for m in &members {
            let d = m.header.volumes.iter().find(|v| (v.lv_uuid.clone(), v.snap_id) == key).cloned();
            let Some(d) = d else {
                let others: Vec<String> = m.header.volumes.iter().map(|v| v.lv_uuid.clone()).collect();
                return Err(VmfsError::Volume(format!(
                    "{} holds logical volume {}, not {} like {}: give the devices of one volume only",
                    m.dev.path().display(),
                    others.join(", "),
                    key.0,
                    members[0].dev.path().display()
                )));
            };
            descs.push(d);
        }
        let mut order: Vec<usize> = (0..members.len()).collect();
        order.sort_by_key(|&i| descs[i].first_pe);
        let members_sorted: Vec<Member> = order.iter().map(|&i| members[i].clone()).collect();
        let descs: Vec<VolumeDesc> = order.iter().map(|&i| descs[i].clone()).collect();
        members = members_sorted;
        let first = descs[0].clone();
        let wanted = first.num_devices.max(1) as usize;
        if descs[0].first_pe != 0 || wanted != members.len() {
            let names = members[0].header.device_names.clone();
            let hint = if names.is_empty() { String::new() } else { format!(" (its devices: {})", names.join(", ")) };
            return Err(VmfsError::Volume(format!(
                "logical volume {} spans {wanted} device(s){hint}; {} given{}",
                first.lv_uuid,
                members.len(),
                if descs[0].first_pe != 0 { ", and none of them holds its first extent" } else { "" }
            )));
        }
        let mut next_pe = 0u64;
        for (m, d) in members.iter().zip(&descs) {
            if d.first_pe != next_pe || d.last_pe < d.first_pe {
                return Err(VmfsError::Volume(format!(
                    "{} holds extents {}..={} of volume {}, expected the range to start at {next_pe}",
                    m.dev.path().display(),
                    d.first_pe,
                    d.last_pe,
                    first.lv_uuid
                )));
            }
            next_pe = d.last_pe + 1;
        }
        let mut pieces: Vec<Segment> = Vec::new();
        for (i, (m, d)) in members.iter().zip(&descs).enumerate() {
            for pe in m.header.extents.iter().filter(|p| p.volume_id == d.volume_id) {
                let device_offset = m.partition.start.checked_add(pe.phys_offset).ok_or_else(|| {
                    VmfsError::corrupt(m.dev.path().display().to_string(), m.partition.start, "PE offset overflows")
                })?;
                pieces.push(Segment { logical: pe.logical_offset, len: pe.len, device: i, device_offset });
            }
        }
        pieces.sort_by_key(|s| s.logical);
        let mut segments: Vec<Segment> = Vec::new();
        let mut expect = 0u64;
        for p in pieces {
            if p.logical != expect {
                return Err(VmfsError::Volume(format!(
                    "volume {}: physical extents leave a {} at logical offset {expect} (next extent starts at {})",
                    first.lv_uuid,
                    if p.logical > expect { "gap" } else { "overlap" },
                    p.logical
                )));
            }
            expect = p.logical + p.len;
            match segments.last_mut() {
                Some(l) if l.device == p.device && l.device_offset + l.len == p.device_offset => l.len += p.len,
                _ => segments.push(p),
            }
        }
        if segments.is_empty() {
            return Err(VmfsError::Volume(format!("volume {} has no physical extents", first.lv_uuid)));
        }
        let size = expect;
        Ok(LogicalVolume { devices: members, desc: first, segments, size })
    }

    /// The pieces of `[offset, offset+len)`, split at device boundaries.
    pub fn locate(&self, offset: u64, len: u64) -> Result<Vec<Segment>> {
        let end = offset.checked_add(len).filter(|e| *e <= self.size).ok_or_else(|| {
            VmfsError::corrupt(
                "logical volume",
                offset,
                format!("access of {len} bytes is beyond the end of the volume ({} bytes)", self.size),
            )
        })?;
        let mut out = Vec::new();
        let mut i = self.segments.partition_point(|s| s.logical + s.len <= offset);
        let mut pos = offset;
        while pos < end && i < self.segments.len() {
            let s = self.segments[i];
            let n = (s.logical + s.len).min(end) - pos;
            out.push(Segment {
                logical: pos,
                len: n,
                device: s.device,
                device_offset: s.device_offset + (pos - s.logical),
            });
            pos += n;
            i += 1;
        }
        Ok(out)
    }
}

impl ReadAt for LogicalVolume {
    type Error = VmfsError;
    /// Reads `buf.len()` bytes at volume offset `offset`, across devices as needed.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0usize;
        for s in self.locate(offset, buf.len() as u64)? {
            let n = s.len as usize;
            self.devices[s.device].dev.read_exact_at(&mut buf[done..done + n], s.device_offset)?;
            done += n;
        }
        Ok(())
    }
}
