//! The file-system descriptor ("superblock") at volume offset 2 MiB: magic, version, UUID, label,
//! block sizes, where the system files start, and the VMFS6 geometry (metadata alignment, large
//! file blocks).

use super::error::{Result, VmfsError};
use super::le::{pow2_in, uuid_string, Le};

/// Volume offset of the FS descriptor.
pub const FS_DESC_OFFSET: u64 = 0x20_0000;
/// Bytes of the FS descriptor read.
pub const FS_DESC_LEN: usize = 512;
/// Magic of VMFS.
pub const VMFS_MAGIC: u32 = 0x2FAB_F15E;
/// Magic of VMFS-L (the local variant, e.g. ESXi OSDATA).
pub const VMFSL_MAGIC: u32 = 0x2FAB_F15F;
/// First raw major version of VMFS6.
pub const VMFS6_MAJOR: u32 = 24;
/// Config flag: sub-block addresses carry two more resource bits.
pub const CONFIG_DENSE_SBPC: u32 = 0x4;

/// Which on-disk generation a volume is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Generation {
    /// VMFS3 (32-bit addresses, 64 KiB sub-blocks, no `blockOffsetShift`).
    Vmfs3,
    /// VMFS5 (32-bit addresses).
    Vmfs5,
    /// VMFS6 (64-bit addresses, hashed directories, small and large file blocks).
    Vmfs6,
}

impl Generation {
    /// 3, 5 or 6.
    pub fn number(self) -> u32 {
        match self {
            Generation::Vmfs3 => 3,
            Generation::Vmfs5 => 5,
            Generation::Vmfs6 => 6,
        }
    }
}

/// The parsed FS descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsDescriptor {
    /// True for VMFS-L.
    pub local: bool,
    /// Raw major version (4 = VMFS3, 14 = VMFS5, 24 = VMFS6).
    pub major: u32,
    /// Minor version.
    pub minor: u8,
    /// What generation the raw version means.
    pub generation: Generation,
    /// File-system UUID.
    pub uuid: String,
    /// Config flags.
    pub config: u32,
    /// Label.
    pub label: String,
    /// File block size (the small file block on VMFS6).
    pub file_block_size: u64,
    /// Creation time (seconds since 1970).
    pub creation_time: u32,
    /// UUID of the logical volume the FS lives on.
    pub lv_uuid: String,
    /// Offset of the first cluster group in `.fdc.sf`.
    pub fdc_cluster_group_offset: u32,
    /// Clusters per group in `.fdc.sf`.
    pub fdc_clusters_per_group: u32,
    /// Sub-block size.
    pub sub_block_size: u64,
    /// Volume address of the `.pb2.sf` descriptor (non-dense VMFS5).
    pub pb2_vol_addr: u64,
    /// FD address of `.pb2.sf`.
    pub pb2_fd_addr: u32,
    /// Volume address of the `.sdd.sf` descriptor (non-dense VMFS5).
    pub sdd_vol_addr: u64,
    /// FD address of `.sdd.sf`.
    pub sdd_fd_addr: u32,
    /// Metadata alignment (VMFS6; 512 assumed before).
    pub md_alignment: u64,
    /// log2(large file block / small file block) on VMFS6.
    pub sfb_to_lfb_shift: u32,
}

impl FsDescriptor {
    /// Parses the descriptor bytes read at volume offset 2 MiB. `place` names the volume.
    pub fn parse(raw: &[u8], place: &str) -> Result<FsDescriptor> {
        let l = Le(raw);
        let bad = |rel: u64, what: String| VmfsError::corrupt(place, FS_DESC_OFFSET + rel, what);
        let magic = l.u32(0).unwrap_or(0);
        let local = match magic {
            VMFS_MAGIC => false,
            VMFSL_MAGIC => true,
            m => {
                return Err(bad(
                    0,
                    format!("FS descriptor magic is {m:#010x}, expected {VMFS_MAGIC:#010x} (VMFS) or {VMFSL_MAGIC:#010x} (VMFS-L)"),
                ))
            }
        };
        let major = l.u32(4).unwrap_or(0);
        let generation = match major {
            0..=2 => return Err(VmfsError::unsupported(place, format!("VMFS raw major version {major}"))),
            3..=4 => Generation::Vmfs3,
            5..=23 => Generation::Vmfs5,
            _ => Generation::Vmfs6,
        };
        let fbs = l.u64(0xA1).unwrap_or(0);
        if !pow2_in(fbs, 4096, 1 << 30) {
            return Err(bad(0xA1, format!("file block size {fbs} is not a power of two from 4 KiB to 1 GiB")));
        }
        let sbs = l.u32(0xD9).unwrap_or(0) as u64;
        if !pow2_in(sbs, 512, fbs) {
            return Err(bad(
                0xD9,
                format!("sub-block size {sbs} is not a power of two from 512 to the file block size {fbs}"),
            ));
        }
        let md_alignment = if generation == Generation::Vmfs6 { l.u32(0x134).unwrap_or(0) as u64 } else { 512 };
        if !pow2_in(md_alignment, if generation == Generation::Vmfs6 { 4096 } else { 512 }, 1 << 20) {
            return Err(bad(
                0x134,
                format!("metadata alignment {md_alignment} is not a power of two from 4 KiB (VMFS6) to 1 MiB"),
            ));
        }
        let sfb_to_lfb_shift = if generation == Generation::Vmfs6 { l.u16(0x138).unwrap_or(0) as u32 } else { 0 };
        if sfb_to_lfb_shift > 16 || (fbs << sfb_to_lfb_shift) > (1 << 40) {
            return Err(bad(0x138, format!("large-file-block shift {sfb_to_lfb_shift} is out of range")));
        }
        let cgo = l.u32(0xD1).unwrap_or(0);
        let cpg = l.u32(0xD5).unwrap_or(0);
        if cpg == 0 || cpg > 1 << 16 || cgo as u64 > 1 << 30 {
            return Err(bad(
                0xD1,
                format!("FDC cluster-group offset {cgo} / clusters per group {cpg} are out of range"),
            ));
        }
        Ok(FsDescriptor {
            local,
            major,
            minor: l.u8(8).unwrap_or(0),
            generation,
            uuid: uuid_string(l.bytes(9, 16).unwrap_or(&[])),
            config: l.u32(0x19).unwrap_or(0),
            label: l.cstr(0x1D, 128).unwrap_or_default(),
            file_block_size: fbs,
            creation_time: l.u32(0xA9).unwrap_or(0),
            lv_uuid: uuid_string(l.bytes(0xB1, 16).unwrap_or(&[])),
            fdc_cluster_group_offset: cgo,
            fdc_clusters_per_group: cpg,
            sub_block_size: sbs,
            pb2_vol_addr: l.u64(0xE1).unwrap_or(0),
            pb2_fd_addr: l.u32(0xE9).unwrap_or(0),
            sdd_vol_addr: l.u64(0x105).unwrap_or(0),
            sdd_fd_addr: l.u32(0x10D).unwrap_or(0),
            md_alignment,
            sfb_to_lfb_shift,
        })
    }

    /// True on VMFS6.
    pub fn is_vmfs6(&self) -> bool {
        self.generation == Generation::Vmfs6
    }

    /// True when sub-block addresses use the dense layout (VMFS5 `DENSE_SBPC`).
    pub fn dense_sub_blocks(&self) -> bool {
        self.config & CONFIG_DENSE_SBPC != 0
    }

    /// `VMFS-5.81`-style version text.
    pub fn version_text(&self) -> String {
        format!("VMFS{}-{}.{:02}", if self.local { "-L" } else { "" }, self.generation.number(), self.minor)
    }

    /// Large file block size (VMFS6).
    pub fn large_block_size(&self) -> u64 {
        self.file_block_size << self.sfb_to_lfb_shift
    }
}
