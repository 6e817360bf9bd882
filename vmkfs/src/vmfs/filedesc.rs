//! File descriptors (the inodes): a lock block, the metadata (type, length, block size, times,
//! mode, the zero-level address type), and the data area holding the block-pointer array, resident
//! data or an RDM's SCSI disk id.

use super::error::{Result, VmfsError};
use super::geometry::Geometry;
use super::le::{uuid_string, Le};

/// Zero-level address types: how a descriptor's block-pointer array is read.
pub mod zla {
    /// Direct file blocks.
    pub const FILE_BLOCK: u32 = 1;
    /// Direct sub-blocks.
    pub const SUB_BLOCK: u32 = 2;
    /// Single indirect through pointer blocks.
    pub const POINTER_BLOCK: u32 = 3;
    /// Single indirect through second-level pointer blocks.
    pub const POINTER2_BLOCK: u32 = 5;
    /// Double indirect (pointer block → pointer block → block).
    pub const DOUBLE_INDIRECT: u32 = 0x10D0;
    /// Data resident in the descriptor.
    pub const RESIDENT: u32 = 0x10D1;
}

/// What a descriptor describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A directory.
    Directory,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// A system file (`.fdc.sf`, …); `.sdd.sf` is a system directory.
    System,
    /// A raw device mapping.
    Rdm,
    /// The volume descriptor.
    Volume,
    /// Another type number.
    Other,
}

impl FileKind {
    fn from_raw(t: u32) -> FileKind {
        match t {
            1 => FileKind::Volume,
            2 => FileKind::Directory,
            3 => FileKind::File,
            4 => FileKind::Symlink,
            5 => FileKind::System,
            6 => FileKind::Rdm,
            _ => FileKind::Other,
        }
    }

    /// A short name (`dir`, `file`, `symlink`, `sysfile`, `rdm`, …).
    pub fn name(self) -> &'static str {
        match self {
            FileKind::Directory => "dir",
            FileKind::File => "file",
            FileKind::Symlink => "symlink",
            FileKind::System => "sysfile",
            FileKind::Rdm => "rdm",
            FileKind::Volume => "volume",
            FileKind::Other => "other",
        }
    }
}

/// The SCSI disk id an RDM descriptor maps.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RdmInfo {
    /// LUN number.
    pub lun: u16,
    /// SCSI device type.
    pub device_type: u8,
    /// Vendor.
    pub vendor: String,
    /// Model.
    pub model: String,
    /// Revision.
    pub revision: String,
    /// Device id bytes, hex.
    pub id: String,
}

impl RdmInfo {
    /// `vendor model (lun N, id …)`.
    pub fn describe(&self) -> String {
        format!("{} {} (lun {}, id {})", self.vendor.trim(), self.model.trim(), self.lun, self.id)
    }
}

/// The on-disk lock at the start of every file descriptor (the metadata header ESXi locks a file
/// through): who holds it, in what mode, and under which heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DiskLock {
    /// Lock type as stored.
    pub kind: u32,
    /// The lock's own volume address as recorded.
    pub address: u64,
    /// Volume offset of the holder's heartbeat slot (0: none).
    pub heartbeat: u64,
    /// The holder's heartbeat generation.
    pub heartbeat_generation: u64,
    /// Lock token (bumped on every acquisition).
    pub token: u64,
    /// Mode: 0 free, 1 exclusive, 2 read-only, 3 multi-writer.
    pub mode: u32,
    /// UUID of the host that last held the lock (all zeros when never held).
    pub owner: String,
    /// When the lock was last taken (the holder's uptime stamp).
    pub mtime: u64,
    /// Hosts holding it shared.
    pub holders: u32,
}

impl DiskLock {
    /// Parses the lock at the start of a descriptor's bytes.
    fn parse(raw: &[u8]) -> DiskLock {
        let l = Le(raw);
        DiskLock {
            kind: l.u32(0).unwrap_or(0),
            address: l.u64(0x04).unwrap_or(0),
            heartbeat: l.u64(0x0C).unwrap_or(0),
            heartbeat_generation: l.u64(0x14).unwrap_or(0),
            token: l.u64(0x1C).unwrap_or(0),
            mode: l.u32(0x24).unwrap_or(0),
            owner: uuid_string(l.bytes(0x28, 16).unwrap_or(&[])),
            mtime: l.u64(0x38).unwrap_or(0),
            holders: l.u32(0x40).unwrap_or(0),
        }
    }

    /// The mode in words.
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            0 => "free",
            1 => "exclusive",
            2 => "read-only",
            3 => "multi-writer",
            _ => "unknown",
        }
    }
}

/// A parsed file descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDesc {
    /// Its own FD address (as the metadata records it).
    pub addr: u32,
    /// Volume offset of the descriptor.
    pub vol_offset: u64,
    /// Raw type number.
    pub raw_type: u32,
    /// Kind (from the type, and the mode's directory bit for system files).
    pub kind: FileKind,
    /// Link count.
    pub links: u32,
    /// Generation.
    pub generation: u32,
    /// File length in bytes.
    pub length: u64,
    /// Block size of this file.
    pub block_size: u64,
    /// Blocks allocated.
    pub num_blocks: u64,
    /// Times (seconds since 1970).
    pub mtime: u32,
    /// Change/creation time.
    pub ctime: u32,
    /// Access time.
    pub atime: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Mode bits as stored.
    pub mode: u32,
    /// Zero-level address type.
    pub zla: u32,
    /// log2 of the bytes each block pointer covers.
    pub block_shift: u32,
    /// To-be-zeroed blocks (from the header).
    pub tbz_blocks: u64,
    /// The block-pointer array (raw, widened to u64).
    pub blocks: Vec<u64>,
    /// Resident data area (resident files), the whole area.
    pub resident: Vec<u8>,
    /// The mapped disk (RDM descriptors).
    pub rdm: Option<RdmInfo>,
    /// The descriptor's on-disk lock.
    pub lock: DiskLock,
}

/// Mode's file-type mask and directory bit.
const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;

impl FileDesc {
    /// Parses the `g.fd_size` bytes `raw` read at volume offset `vol_offset`. `place` names the
    /// volume for messages.
    pub fn parse(raw: &[u8], g: &Geometry, vol_offset: u64, place: &str) -> Result<FileDesc> {
        if raw.len() < g.fd_size as usize {
            return Err(VmfsError::corrupt(
                place,
                vol_offset,
                format!("file descriptor of {} bytes, expected {}", raw.len(), g.fd_size),
            ));
        }
        let m = Le(&raw[g.fd_meta..]);
        let f = |o: usize| m.u32(o).unwrap_or(0);
        let q = |o: usize| m.u64(o).unwrap_or(0);
        let bad = |rel: usize, what: String| VmfsError::corrupt(place, vol_offset + (g.fd_meta + rel) as u64, what);
        let raw_type = f(0x0C);
        let mode = f(0x40);
        let mut kind = FileKind::from_raw(raw_type);
        if kind == FileKind::System && mode & S_IFMT == S_IFDIR {
            kind = FileKind::Directory;
        }
        let zla = f(0x44);
        let block_size = q(0x1C);
        let length = q(0x14);
        let resident = zla == zla::RESIDENT;
        // VMFS3 leaves blockOffsetShift zero: it follows from the block size.
        let stored_shift = m.u8(0x89).unwrap_or(0) as u32;
        let block_shift = if resident {
            0
        } else if stored_shift != 0 {
            stored_shift
        } else if block_size.is_power_of_two() {
            block_size.trailing_zeros()
        } else {
            0
        };
        if !resident && length > 0 && !(9..=40).contains(&block_shift) {
            return Err(bad(0x1C, format!("block size {block_size} / block offset shift {stored_shift} give no usable block size (expected a power of two from 512 bytes to 1 TiB)")));
        }
        let mut blocks = Vec::new();
        let mut resident_data = Vec::new();
        let mut rdm = None;
        let data = &raw[g.fd_data..g.fd_data + g.fd_data_size];
        if resident {
            if length > g.fd_data_size as u64 {
                return Err(bad(
                    0x14,
                    format!("resident file of {length} bytes; a descriptor holds at most {}", g.fd_data_size),
                ));
            }
            resident_data = data.to_vec();
        } else if kind == FileKind::Rdm {
            let d = Le(data);
            rdm = Some(RdmInfo {
                lun: d.u16(2).unwrap_or(0),
                device_type: d.u8(4).unwrap_or(0),
                vendor: d.cstr(6, 8).unwrap_or_default(),
                model: d.cstr(14, 16).unwrap_or_default(),
                revision: d.cstr(30, 4).unwrap_or_default(),
                id: d.bytes(34, 44).map(|b| b.iter().map(|x| format!("{x:02x}")).collect()).unwrap_or_default(),
            });
        } else {
            let a = Le(&raw[g.fd_addrs..]);
            blocks.reserve_exact(g.fd_addr_count);
            for i in 0..g.fd_addr_count {
                let v = if g.addr_width == 8 { a.u64(i * 8) } else { a.u32(i * 4).map(u64::from) };
                blocks.push(v.unwrap_or(0));
            }
        }
        Ok(FileDesc {
            addr: f(0),
            vol_offset,
            raw_type,
            kind,
            links: f(0x08),
            generation: f(0x04),
            length,
            block_size,
            num_blocks: q(0x24),
            mtime: f(0x2C),
            ctime: f(0x30),
            atime: f(0x34),
            uid: f(0x38),
            gid: f(0x3C),
            mode,
            zla,
            block_shift,
            tbz_blocks: f(0x48) as u64 | ((f(0x54) as u64) << 32),
            blocks,
            resident: resident_data,
            rdm,
            lock: DiskLock::parse(&raw[..g.fd_meta]),
        })
    }

    /// An empty descriptor (a stand-in before the real one is read).
    pub fn placeholder() -> FileDesc {
        FileDesc {
            addr: 0,
            vol_offset: 0,
            raw_type: 0,
            kind: FileKind::Other,
            links: 0,
            generation: 0,
            length: 0,
            block_size: 0,
            num_blocks: 0,
            mtime: 0,
            ctime: 0,
            atime: 0,
            uid: 0,
            gid: 0,
            mode: 0,
            zla: 0,
            block_shift: 0,
            tbz_blocks: 0,
            blocks: Vec::new(),
            resident: Vec::new(),
            rdm: None,
            lock: DiskLock::parse(&[]),
        }
    }

    /// True for directories (including system directories such as `.sdd.sf`).
    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Directory
    }

    /// Mode with the file-type bits filled in from the kind.
    pub fn full_mode(&self) -> u32 {
        if self.mode & S_IFMT != 0 {
            return self.mode;
        }
        self.mode
            | match self.kind {
                FileKind::Directory => S_IFDIR,
                FileKind::Symlink => 0o120000,
                FileKind::Rdm => 0o060000,
                _ => 0o100000,
            }
    }

    /// Bytes allocated to the file, from its header (blocks × block size; 0 for resident data).
    pub fn allocated(&self) -> u64 {
        if self.zla == zla::RESIDENT {
            0
        } else {
            self.num_blocks.saturating_mul(self.block_size)
        }
    }
}
