//! Sizes and offsets that follow from the generation and the FS descriptor: file-descriptor layout,
//! pointer-block size, cluster-header size, where the system files start.

use super::fsdesc::{FsDescriptor, Generation};

/// Volume offset of the heartbeat region.
pub const HEARTBEAT_OFFSET: u64 = 0x30_0000;

/// Derived geometry of one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    /// Generation.
    pub generation: Generation,
    /// File block (small file block) size.
    pub fbs: u64,
    /// Sub-block size.
    pub sbs: u64,
    /// Large file block size (VMFS6; equal to `fbs` before).
    pub lfbs: u64,
    /// Metadata alignment (512 before VMFS6).
    pub md_align: u64,
    /// Bytes of one file descriptor.
    pub fd_size: u64,
    /// Offset of the metadata in a descriptor.
    pub fd_meta: usize,
    /// Offset of resident data in a descriptor.
    pub fd_data: usize,
    /// Bytes of resident data a descriptor holds.
    pub fd_data_size: usize,
    /// Offset of the block-pointer array in a descriptor.
    pub fd_addrs: usize,
    /// Entries of the block-pointer array.
    pub fd_addr_count: usize,
    /// Bytes per block pointer (4 or 8).
    pub addr_width: usize,
    /// Pointers per pointer block.
    pub ptrs_per_pb: u64,
    /// Bytes of a resource-cluster header.
    pub cluster_header: u64,
    /// Sub-block addresses use the dense layout.
    pub dense: bool,
    /// Volume offset where `.fdc.sf` starts (bootstrap).
    pub fdc_start: u64,
    /// Heartbeat slot size and count.
    pub heartbeat_slot: u64,
    /// Number of heartbeat slots.
    pub heartbeat_slots: u64,
}

impl Geometry {
    /// The geometry of the volume described by `fs`.
    pub fn new(fs: &FsDescriptor) -> Geometry {
        let fbs = fs.file_block_size;
        if fs.generation == Generation::Vmfs6 {
            let m = fs.md_alignment;
            let addrs_size = if m <= 4096 { 2560 } else { m / 2 };
            let fd_size = 2 * m;
            Geometry {
                generation: fs.generation,
                fbs,
                sbs: fs.sub_block_size,
                lfbs: fs.large_block_size(),
                md_align: m,
                fd_size,
                fd_meta: m as usize,
                fd_data: (m + 512) as usize,
                fd_data_size: (m - 512) as usize,
                fd_addrs: (fd_size - addrs_size) as usize,
                fd_addr_count: (addrs_size / 8) as usize,
                addr_width: 8,
                ptrs_per_pb: if m < 0x10000 { 8192 } else { m / 8 },
                cluster_header: 2 * m,
                dense: false,
                // The heartbeat region (1024 slots of one metadata block) ends the header area;
                // `.fdc.sf` starts at the next MiB.
                fdc_start: (HEARTBEAT_OFFSET + 1024 * m).div_ceil(1 << 20) * (1 << 20),
                heartbeat_slot: m,
                heartbeat_slots: 1024,
            }
        } else {
            Geometry {
                generation: fs.generation,
                fbs,
                sbs: fs.sub_block_size,
                lfbs: fbs,
                md_align: 512,
                fd_size: 2048,
                fd_meta: 512,
                fd_data: 1024,
                fd_data_size: 1024,
                fd_addrs: 1024,
                fd_addr_count: 256,
                addr_width: 4,
                ptrs_per_pb: 1024,
                cluster_header: 1024,
                dense: fs.dense_sub_blocks(),
                // The 4 MiB header area rounded up to a file block.
                fdc_start: (4u64 << 20).div_ceil(fbs) * fbs,
                heartbeat_slot: 512,
                heartbeat_slots: 2048,
            }
        }
    }

    /// Bytes of one pointer block.
    pub fn pb_bytes(&self) -> u64 {
        self.ptrs_per_pb * self.addr_width as u64
    }
}
