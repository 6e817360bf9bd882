//! An open VMFS volume: the logical volume, the FS descriptor, the system files bootstrapped from
//! `.fdc.sf`, and path lookups.

use rdm::ReadAt;

use std::path::Path;
use std::sync::Arc;

use super::address::{fd_addr, kind, Addr};
use super::blockmap::{BlockMap, DeviceRun, PbCache, VolumeRunKind};
use super::device::{read_vec, DeviceRead, HostDevice};
use super::dir::{self, RawEntry};
use super::error::{Result, VmfsError};
use super::file::File;
use super::filedesc::{FileDesc, FileKind, RdmInfo};
use super::fsdesc::{FsDescriptor, Generation, FS_DESC_LEN, FS_DESC_OFFSET};
use super::geometry::Geometry;
use super::heartbeat::{self, Heartbeat};
use super::inner::{Inner, SysFile};
use super::le::Le;
use super::lvm::{DeviceHeader, LogicalVolume, Member};
use super::partition;
use super::resource::{ResourceMeta, META_LEN, RCMD_SIGNATURE};

/// FD address of the root directory.
pub const ROOT: u32 = 0x0000_0004;
/// FD addresses of the system files.
pub mod sysaddr {
    /// `.fbb.sf`: file-block allocation.
    pub const FBB: u32 = 0x0040_0004;
    /// `.fdc.sf`: the file descriptors.
    pub const FDC: u32 = 0x0080_0004;
    /// `.pbc.sf`: pointer blocks.
    pub const PBC: u32 = 0x00C0_0004;
    /// `.sbc.sf`: sub-blocks.
    pub const SBC: u32 = 0x0100_0004;
    /// `.vh.sf`: volume header and heartbeats.
    pub const VH: u32 = 0x0140_0004;
    /// `.pb2.sf`: second-level pointer blocks.
    pub const PB2: u32 = 0x0180_0004;
    /// `.sdd.sf`: a system directory.
    pub const SDD: u32 = 0x01C0_0004;
}

/// Largest directory file read (a cap on memory, far above real directories).
const MAX_DIR_BYTES: u64 = 256 << 20;
/// Symbolic links followed in one lookup (a cycle limit).
const MAX_SYMLINKS: usize = 40;
/// Longest symbolic-link target read.
const MAX_LINK_BYTES: u64 = 4096;

/// An open, read-only VMFS volume. Cheap to clone; every method takes `&self` and is safe to call
/// from many threads.
#[derive(Debug, Clone)]
pub struct Volume {
    pub(crate) inner: Arc<Inner>,
}

/// What a path is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Stat {
    /// The path as looked up.
    pub path: String,
    /// Kind.
    pub kind: FileKind,
    /// Length in bytes.
    pub size: u64,
    /// Bytes allocated (blocks × block size from the descriptor; 0 for resident data).
    pub allocated: u64,
    /// Block size of the file.
    pub block_size: u64,
    /// Modification time (seconds since 1970, UTC).
    pub mtime: u32,
    /// Change time.
    pub ctime: u32,
    /// Access time.
    pub atime: u32,
    /// Mode with the file-type bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub links: u32,
    /// FD address.
    pub fd_address: u32,
    /// Zero-level address type (how the block map is read).
    pub zla: u32,
    /// Blocks marked to be zeroed (lazily zeroed thick disks).
    pub tbz_blocks: u64,
    /// Symbolic-link target.
    pub link_target: Option<String>,
    /// The disk an RDM descriptor maps.
    pub rdm: Option<RdmInfo>,
}

/// A directory entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DirEntry {
    /// Name.
    pub name: String,
    /// FD address.
    pub fd_address: u32,
    /// Kind recorded in the directory.
    pub kind: FileKind,
}

/// A device of the volume, for reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceInfo {
    /// Path.
    pub path: std::path::PathBuf,
    /// Partition number (0 = bare partition).
    pub partition: u32,
    /// Partition start on the device.
    pub partition_offset: u64,
    /// LVM device UUID.
    pub uuid: String,
    /// LVM major version.
    pub lvm_version: u32,
    /// Bytes of the volume on this device.
    pub bytes: u64,
}

/// Allocation of file blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Capacity in bytes.
    pub capacity: u64,
    /// File blocks.
    pub blocks: u64,
    /// Free bytes.
    pub free: u64,
    /// Free file blocks (small file blocks on VMFS6, counting free large blocks as theirs).
    pub free_blocks: u64,
}

impl Volume {
    /// Opens the volume on the image files or block devices `paths` (all devices of a spanned
    /// volume, in any order).
    pub fn open<P: AsRef<Path>>(paths: &[P]) -> Result<Volume> {
        let mut devs: Vec<Arc<dyn DeviceRead>> = Vec::with_capacity(paths.len());
        for p in paths {
            devs.push(Arc::new(HostDevice::open(p.as_ref())?));
        }
        Volume::open_devices(devs)
    }

    /// Opens the volume on already-open devices.
    pub fn open_devices(devs: Vec<Arc<dyn DeviceRead>>) -> Result<Volume> {
        if devs.is_empty() {
            return Err(VmfsError::Volume("no VMFS device given".into()));
        }
        if devs.len() > super::lvm::MAX_DEVICES {
            return Err(VmfsError::Volume(format!(
                "{} devices given; a volume spans at most {}",
                devs.len(),
                super::lvm::MAX_DEVICES
            )));
        }
        let mut members = Vec::with_capacity(devs.len());
        for dev in devs {
            let parts = partition::find(dev.as_ref())?;
            let Some(part) = parts.first().copied() else {
                return Err(VmfsError::corrupt(
                    dev.path().display().to_string(),
                    super::lvm::LVM_HEADER_OFFSET,
                    "no VMFS partition: no MBR partition of type 0xFB, no GPT partition of the VMFS type, and no LVM header (magic 0xC001D00D) at 1 MiB",
                ));
            };
            let header = DeviceHeader::read(dev.as_ref(), &part)?;
            members.push(Member { dev, partition: part, header });
        }
        let lv = LogicalVolume::assemble(members)?;
        let place = format!("VMFS volume {}", lv.desc.lv_uuid);
        if lv.size < FS_DESC_OFFSET + FS_DESC_LEN as u64 {
            return Err(VmfsError::corrupt(
                &place,
                0,
                format!("logical volume of {} bytes has no room for an FS descriptor", lv.size),
            ));
        }
        let mut raw = vec![0u8; FS_DESC_LEN];
        lv.read_exact_at(&mut raw, FS_DESC_OFFSET)?;
        let fs = FsDescriptor::parse(&raw, &place)?;
        let place = if fs.label.is_empty() {
            format!("VMFS volume {}", fs.uuid)
        } else {
            format!("VMFS volume {:?}", fs.label)
        };
        let g = Geometry::new(&fs);
        Volume::bootstrap(lv, fs, g, place)
    }

    fn bootstrap(lv: LogicalVolume, fs: FsDescriptor, g: Geometry, place: String) -> Result<Volume> {
        let sfb_default = if fs.is_vmfs6() { (0x2000u64).min((512u64 << 20) / g.fbs).max(1) } else { 1 };
        let mut inner = Inner {
            fdc: SysFile {
                fd: FileDesc::placeholder(),
                meta: ResourceMeta {
                    rpc: 0,
                    cpg: 1,
                    cg_offset: 0,
                    res_size: 0,
                    cg_size: 0,
                    num_resources: 0,
                    num_groups: 0,
                    flags: 0,
                    child_meta_offset: 0,
                    header: g.cluster_header,
                },
            },
            lv,
            fs,
            g,
            place,
            sbc: None,
            pbc: None,
            pb2: None,
            fbb: None,
            sfb: None,
            sfb_per_cluster: sfb_default,
        };
        let cache = PbCache::default();
        // Order matters: `.sbc.sf` on VMFS6 reaches its sub-blocks through `.pb2.sf`.
        if inner.fs.is_vmfs6() || inner.fs.pb2_vol_addr != 0 || inner.fs.pb2_fd_addr != 0 {
            inner.pb2 = Some(Namespace(&inner).open_system_file(sysaddr::PB2, ".pb2.sf", &cache)?);
        }
        inner.pbc = Some(Namespace(&inner).open_system_file(sysaddr::PBC, ".pbc.sf", &cache)?);
        let fbb = Namespace(&inner).open_system_file(sysaddr::FBB, ".fbb.sf", &cache)?;
        if inner.fs.is_vmfs6() {
            let child = fbb.meta.child_meta_offset;
            if child != 0 {
                let sfb = Namespace(&inner).read_meta(&fbb.fd, child, ".fbb.sf small-file-block header", &cache)?;
                if sfb.rpc != 0 {
                    inner.sfb_per_cluster = sfb.rpc;
                }
                inner.sfb = Some(sfb);
            }
        }
        inner.fbb = Some(fbb);
        inner.fdc = Namespace(&inner).open_system_file(sysaddr::FDC, ".fdc.sf", &cache)?;
        if inner.fdc.meta.res_size != inner.g.fd_size {
            return Err(VmfsError::corrupt(
                &inner.place,
                inner.fdc.fd.vol_offset,
                format!(
                    ".fdc.sf holds {}-byte resources, expected {}-byte file descriptors",
                    inner.fdc.meta.res_size, inner.g.fd_size
                ),
            ));
        }
        let sbc = Namespace(&inner).open_system_file(sysaddr::SBC, ".sbc.sf", &cache)?;
        if sbc.meta.res_size != inner.g.sbs {
            return Err(VmfsError::corrupt(
                &inner.place,
                sbc.fd.vol_offset,
                format!(
                    ".sbc.sf holds {}-byte resources, the FS descriptor says sub-blocks are {}",
                    sbc.meta.res_size, inner.g.sbs
                ),
            ));
        }
        inner.sbc = Some(sbc);
        let vol = Volume { inner: Arc::new(inner) };
        // The root must be a directory.
        let root = Namespace(&vol.inner).read_fd(ROOT)?;
        if !root.is_dir() {
            return Err(VmfsError::corrupt(
                &vol.inner.place,
                root.vol_offset,
                format!("the root descriptor has type {}, expected a directory", root.raw_type),
            ));
        }
        Ok(vol)
    }

    /// The FS descriptor.
    pub fn descriptor(&self) -> &FsDescriptor {
        &self.inner.fs
    }

    /// Derived geometry (block sizes, layouts).
    pub fn geometry(&self) -> &Geometry {
        &self.inner.g
    }

    /// Bytes of the logical volume.
    pub fn size(&self) -> u64 {
        self.inner.lv.size
    }

    /// UUID of the logical volume.
    pub fn lv_uuid(&self) -> &str {
        &self.inner.lv.desc.lv_uuid
    }

    /// The devices, in volume order.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.inner
            .lv
            .devices
            .iter()
            .enumerate()
            .map(|(i, m)| DeviceInfo {
                path: m.dev.path().to_path_buf(),
                partition: m.partition.number,
                partition_offset: m.partition.start,
                uuid: m.header.device_uuid.clone(),
                lvm_version: m.header.major,
                bytes: self.inner.lv.segments.iter().filter(|s| s.device == i).map(|s| s.len).sum(),
            })
            .collect()
    }

    /// Live heartbeats: hosts that had the volume mounted when the image was taken (or still have).
    pub fn heartbeats(&self) -> Result<Vec<Heartbeat>> {
        heartbeat::live(&self.inner)
    }

    /// File-block allocation from `.fbb.sf`.
    pub fn usage(&self) -> Result<Usage> {
        Namespace(&self.inner).usage()
    }

    /// The entries of directory `path` (without `.` and `..`), in on-disk order.
    pub fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let fd = Namespace(&self.inner).lookup(path, true)?;
        if !fd.is_dir() {
            return Err(VmfsError::NotADirectory { path: path.into() });
        }
        Ok(Namespace(&self.inner)
            .dir_entries(&fd)?
            .into_iter()
            .filter(|e| e.name != "." && e.name != "..")
            .map(|e| DirEntry { name: e.name, fd_address: e.addr, kind: e.kind })
            .collect())
    }

    /// What `path` is (a final symbolic link is not followed).
    pub fn stat(&self, path: &str) -> Result<Stat> {
        let fd = Namespace(&self.inner).lookup(path, false)?;
        Namespace(&self.inner).stat_of(path, &fd)
    }

    /// Like [`Volume::stat`] for each entry of a directory (one descriptor read per entry).
    pub fn list(&self, path: &str) -> Result<Vec<(DirEntry, Stat)>> {
        let entries = self.read_dir(path)?;
        let base = path.trim_end_matches('/');
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let fd = Namespace(&self.inner).read_fd(e.fd_address)?;
            let st = Namespace(&self.inner).stat_of(&format!("{base}/{}", e.name), &fd)?;
            out.push((e, st));
        }
        Ok(out)
    }

    /// The target of symbolic link `path`.
    pub fn read_link(&self, path: &str) -> Result<String> {
        let fd = Namespace(&self.inner).lookup(path, false)?;
        if fd.kind != FileKind::Symlink {
            return Err(VmfsError::NotASymlink { path: path.into() });
        }
        Namespace(&self.inner).link_target(&fd)
    }

    /// Opens file `path` (following symbolic links) for positional reads.
    pub fn open_file(&self, path: &str) -> Result<File> {
        let fd = Namespace(&self.inner).lookup(path, true)?;
        match fd.kind {
            FileKind::Directory => return Err(VmfsError::IsADirectory { path: path.into() }),
            FileKind::Rdm => {
                let lun = fd.rdm.as_ref().map(|r| r.describe()).unwrap_or_default();
                return Err(VmfsError::Rdm { path: path.into(), lun });
            }
            _ => {}
        }
        Ok(File::new(self.inner.clone(), path.to_string(), fd))
    }

    /// The extent map of file `path`: data ranges with their device offsets, to-be-zeroed ranges
    /// and holes, covering the whole file in order.
    pub fn extent_map(&self, path: &str) -> Result<Vec<DeviceRun>> {
        let f = self.open_file(path)?;
        f.extents(0, f.len())
    }

    /// The file descriptor of `path` (not following a final symbolic link): its address, lock,
    /// generation, links, block size and allocated blocks (`-D --volume`).
    pub fn file_desc(&self, path: &str) -> Result<FileDesc> {
        Namespace(&self.inner).lookup(path, false)
    }

    /// True when `path` exists.
    pub fn exists(&self, path: &str) -> bool {
        Namespace(&self.inner).lookup(path, false).is_ok()
    }
}

/// A volume's shared state seen as its namespace: system files, file descriptors, directories,
/// symbolic links, path lookup and usage, over the [`BlockMap`] of its files.
struct Namespace<'a>(&'a Inner);

impl std::ops::Deref for Namespace<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        self.0
    }
}

impl Namespace<'_> {
    /// Where a system file's descriptor sits before `.fdc.sf` can be read: resource r of cluster 0
    /// (or, for `.pb2.sf` and `.sdd.sf` on VMFS5 with sparse sub-blocks, the address the FS
    /// descriptor records).
    fn system_fd_offset(&self, addr: u32) -> u64 {
        let (fs, g) = (&self.fs, &self.g);
        if !fs.is_vmfs6() && !fs.dense_sub_blocks() {
            if addr == fs.pb2_fd_addr && fs.pb2_vol_addr != 0 {
                return fs.pb2_vol_addr;
            }
            if addr == fs.sdd_fd_addr && fs.sdd_vol_addr != 0 {
                return fs.sdd_vol_addr;
            }
        }
        let r = ((addr >> 22) & 0x3FF) as u64;
        g.fdc_start
            + fs.fdc_cluster_group_offset as u64
            + fs.fdc_clusters_per_group as u64 * g.cluster_header
            + r * g.fd_size
    }

    /// The descriptor of system file `name` at FD address `addr`, read from where bootstrapping
    /// finds it, checked to be that system file with the file block size.
    fn system_fd(&self, addr: u32, name: &str) -> Result<FileDesc> {
        let at = self.system_fd_offset(addr);
        let fd = self.read_fd_at(at)?;
        if fd.addr != addr || (fd.kind != FileKind::System && addr != sysaddr::SDD) {
            return Err(VmfsError::corrupt(
                &self.place,
                at,
                format!(
                    "{name} descriptor expected here (address {addr:#x}, system file), found address {:#x} of type {}",
                    fd.addr, fd.raw_type
                ),
            ));
        }
        if fd.block_size != self.g.fbs && fd.zla != super::filedesc::zla::RESIDENT {
            return Err(VmfsError::corrupt(
                &self.place,
                at,
                format!("{name} has block size {}, expected the file block size {}", fd.block_size, self.g.fbs),
            ));
        }
        Ok(fd)
    }

    /// System resource file `name` (descriptor and metadata header) at FD address `addr`.
    fn open_system_file(&self, addr: u32, name: &str, cache: &PbCache) -> Result<SysFile> {
        let fd = self.system_fd(addr, name)?;
        let meta = self.read_meta(&fd, 0, name, cache)?;
        Ok(SysFile { fd, meta })
    }

    /// Reads and parses the descriptor at volume offset `at`.
    pub(crate) fn read_fd_at(&self, at: u64) -> Result<FileDesc> {
        let mut raw = vec![0u8; self.g.fd_size as usize];
        self.lv.read_exact_at(&mut raw, at)?;
        FileDesc::parse(&raw, &self.g, at, &self.place)
    }

    /// Reads the descriptor with FD address `addr` through `.fdc.sf`.
    pub(crate) fn read_fd(&self, addr: u32) -> Result<FileDesc> {
        let Addr::Res { kind: kind::FD, cluster, resource } = Addr::fd(addr) else {
            return Err(VmfsError::corrupt(&self.place, 0, format!("{addr:#x} is not a file-descriptor address")));
        };
        if addr & 7 != kind::FD as u32 {
            return Err(VmfsError::corrupt(&self.place, 0, format!("{addr:#x} is not a file-descriptor address")));
        }
        let off = self
            .fdc
            .meta
            .offset(cluster, resource)
            .filter(|o| o + self.g.fd_size <= self.fdc.fd.length)
            .ok_or_else(|| {
                VmfsError::corrupt(
                    &self.place,
                    self.fdc.fd.vol_offset,
                    format!("file descriptor {addr:#x} (cluster {cluster}, resource {resource}) is outside .fdc.sf"),
                )
            })?;
        let pieces = BlockMap(self.0).map_file(&self.fdc.fd, off, self.g.fd_size, &PbCache::default())?;
        let mut raw = vec![0u8; self.g.fd_size as usize];
        let mut vol_at = None;
        for p in &pieces {
            let VolumeRunKind::Data(at) = p.kind else {
                return Err(VmfsError::corrupt(
                    &self.place,
                    self.fdc.fd.vol_offset,
                    format!("file descriptor {addr:#x} lies in a hole of .fdc.sf"),
                ));
            };
            vol_at.get_or_insert(at);
            let b = (p.offset - off) as usize;
            self.lv.read_exact_at(&mut raw[b..b + p.len as usize], at)?;
        }
        let vol_at = vol_at.unwrap_or(0);
        if pieces.len() != 1 {
            return Err(VmfsError::unsupported(
                &self.place,
                format!("file descriptor {addr:#x} is split across blocks of .fdc.sf"),
            ));
        }
        let fd = FileDesc::parse(&raw, &self.g, vol_at, &self.place)?;
        if fd.addr != addr {
            return Err(VmfsError::corrupt(
                &self.place,
                vol_at + self.g.fd_meta as u64,
                format!(
                    "file descriptor slot of address {addr:#x} holds address {:#x} (a free or stale slot)",
                    fd.addr
                ),
            ));
        }
        Ok(fd)
    }

    fn read_meta(&self, fd: &FileDesc, at: u64, name: &str, cache: &PbCache) -> Result<ResourceMeta> {
        if at.checked_add(META_LEN as u64).is_none_or(|e| e > fd.length) {
            return Err(VmfsError::corrupt(
                &self.place,
                fd.vol_offset,
                format!("{name} of {} bytes has no room for its resource header at {at}", fd.length),
            ));
        }
        let raw = BlockMap(self.0).read_file(fd, at, META_LEN as u64, cache, 1)?;
        ResourceMeta::parse(&raw, self.fs.is_vmfs6(), self.g.cluster_header, &format!("{} ({name})", self.place), at)
    }

    pub(crate) fn dir_entries(&self, fd: &FileDesc) -> Result<Vec<RawEntry>> {
        if fd.length > MAX_DIR_BYTES {
            return Err(VmfsError::unsupported(
                &self.place,
                format!("directory of {} bytes (at most {MAX_DIR_BYTES} are read)", fd.length),
            ));
        }
        let data = BlockMap(self.0).read_file(fd, 0, fd.length, &PbCache::default(), 0)?;
        if self.fs.generation == Generation::Vmfs6 {
            dir::parse_v6(&data, self.g.md_align as usize, &self.place, fd.vol_offset)
        } else {
            Ok(dir::parse_flat(&data))
        }
    }

    pub(crate) fn link_target(&self, fd: &FileDesc) -> Result<String> {
        if fd.length > MAX_LINK_BYTES {
            return Err(VmfsError::corrupt(
                &self.place,
                fd.vol_offset,
                format!("symbolic link of {} bytes (at most {MAX_LINK_BYTES})", fd.length),
            ));
        }
        let b = BlockMap(self.0).read_file(fd, 0, fd.length, &PbCache::default(), 0)?;
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        Ok(String::from_utf8_lossy(&b[..end]).into_owned())
    }

    pub(crate) fn stat_of(&self, path: &str, fd: &FileDesc) -> Result<Stat> {
        let link_target = if fd.kind == FileKind::Symlink { Some(self.link_target(fd)?) } else { None };
        Ok(Stat {
            path: path.to_string(),
            kind: fd.kind,
            size: fd.length,
            allocated: fd.allocated(),
            block_size: fd.block_size,
            mtime: fd.mtime,
            ctime: fd.ctime,
            atime: fd.atime,
            mode: fd.full_mode(),
            uid: fd.uid,
            gid: fd.gid,
            links: fd.links,
            fd_address: fd.addr,
            zla: fd.zla,
            tbz_blocks: fd.tbz_blocks,
            link_target,
            rdm: fd.rdm.clone(),
        })
    }

    /// Looks `path` up from the root. Intermediate symbolic links are followed; the final one
    /// only when `follow`.
    pub(crate) fn lookup(&self, path: &str, follow: bool) -> Result<FileDesc> {
        let mut hops = 0usize;
        // Components still to walk, in reverse order, and the directories walked (for `..`).
        let mut todo: Vec<String> = components(path).into_iter().rev().collect();
        let mut stack: Vec<FileDesc> = vec![self.read_fd(ROOT)?];
        while let Some(c) = todo.pop() {
            let cur = stack.last().cloned().unwrap_or_else(unreachable_root);
            if c == ".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            if !cur.is_dir() {
                return Err(VmfsError::NotADirectory { path: path.into() });
            }
            let entries = self.dir_entries(&cur)?;
            let Some(e) = entries.iter().find(|e| e.name == c && e.name != "." && e.name != "..") else {
                return Err(VmfsError::NotFound { path: path.into() });
            };
            let fd = self.read_fd(e.addr)?;
            if fd.kind == FileKind::Symlink && (follow || !todo.is_empty()) {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Err(VmfsError::SymlinkLoop { path: path.into() });
                }
                let target = self.link_target(&fd)?;
                if target.starts_with('/') {
                    stack.truncate(1);
                }
                for t in components(&target).into_iter().rev() {
                    todo.push(t);
                }
                continue;
            }
            stack.push(fd);
        }
        Ok(stack.pop().unwrap_or_else(unreachable_root))
    }

    fn usage(&self) -> Result<Usage> {
        let fbb = self.fbb.as_ref().ok_or_else(|| VmfsError::unsupported(&self.place, "no .fbb.sf"))?;
        let cache = PbCache::default();
        let half = self.g.cluster_header / 2;
        if self.fs.is_vmfs6() {
            let lfb = &fbb.meta;
            let sfb = self
                .sfb
                .as_ref()
                .ok_or_else(|| VmfsError::unsupported(&self.place, ".fbb.sf has no small-file-block header"))?;
            let mut free_lfb = 0u64;
            for c in 0..lfb.num_clusters().min(1 << 24) {
                let Some(h) = lfb.cluster_header_offset(c) else { break };
                if h + self.g.cluster_header > fbb.fd.length {
                    break;
                }
                let b = BlockMap(self.0).read_file(&fbb.fd, h + half, 0x24, &cache, 0)?;
                let l = Le(&b);
                if l.u32(0x10) == Some(RCMD_SIGNATURE) {
                    free_lfb += l.u16(0x22).unwrap_or(0).min(l.u16(0x20).unwrap_or(0)) as u64;
                }
            }
            let mut free_sfb = 0u64;
            for r in 0..lfb.num_resources.min(1 << 24) {
                let Some(at) = lfb.offset(r / lfb.rpc.max(1), r % lfb.rpc.max(1)) else { break };
                if at + self.g.cluster_header > fbb.fd.length || lfb.res_size < self.g.cluster_header {
                    break;
                }
                let b = BlockMap(self.0).read_file(&fbb.fd, at + half, 0x24, &cache, 0)?;
                let l = Le(&b);
                if l.u32(0x10) == Some(RCMD_SIGNATURE) {
                    free_sfb += l.u16(0x22).unwrap_or(0).min(l.u16(0x20).unwrap_or(0)) as u64;
                }
            }
            let blocks = sfb.num_resources;
            let per_lfb = self.g.lfbs / self.g.fbs;
            let free_blocks = (free_lfb * per_lfb + free_sfb).min(blocks);
            return Ok(Usage { capacity: blocks * self.g.fbs, blocks, free: free_blocks * self.g.fbs, free_blocks });
        }
        let m = &fbb.meta;
        let mut free = 0u64;
        let clusters = m.num_clusters().min(1 << 26);
        let mut c = 0;
        while c < clusters {
            // One cluster group's headers at a time.
            let n = (m.cpg - c % m.cpg).min(clusters - c);
            let Some(h) = m.cluster_header_offset(c) else { break };
            if h + n * self.g.cluster_header > fbb.fd.length {
                break;
            }
            let b = BlockMap(self.0).read_file(&fbb.fd, h, n * self.g.cluster_header, &cache, 0)?;
            for i in 0..n as usize {
                let l = Le(&b[i * self.g.cluster_header as usize + half as usize..]);
                free += (l.u32(8).unwrap_or(0) as u64).min(m.rpc);
            }
            c += n;
        }
        let blocks = m.num_resources;
        let free = free.min(blocks);
        Ok(Usage { capacity: blocks * self.g.fbs, blocks, free: free * self.g.fbs, free_blocks: free })
    }
}

fn unreachable_root() -> FileDesc {
    // The stack always holds the root; this is never reached.
    FileDesc::placeholder()
}

/// Path components, without empty ones and `.`; ESXi's `/vmfs/volumes/NAME/` prefix is not special.
fn components(path: &str) -> Vec<String> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".").map(str::to_string).collect()
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<Volume>();
    let _ = fd_addr;
    let _ = read_vec;
}
