//! Raw device mappings: `VMFSRDM` and `VMFSRAW` extents, creating RDM and raw disks, and the RDM
//! mode of a disk.
//!
//! ESXi writes three kinds of device-backed descriptors (fact sheet §1.3, §5):
//!
//! ```text
//! createType="vmfsRawDeviceMap"             RW <sectors> VMFSRDM "NAME-rdm.vmdk"    virtual mode
//! createType="vmfsPassthroughRawDeviceMap"  RW <sectors> VMFSRDM "NAME-rdmp.vmdk"   physical mode
//! createType="vmfsRaw"                      RW <sectors> VMFSRAW "/dev/…"           raw device
//! ```
//!
//! A `VMFSRDM` extent names a mapping file (our own record, `rdm/FORMAT.md`), which names the device
//! by a stable identity; opening the extent reads the record, finds the device through
//! [`rdm::Mapping::open_device`] (refusing one whose identity or size changed) and then acts as a
//! flat extent over the device: every byte is data on a block device, `SEEK_DATA`/`SEEK_HOLE` answer
//! for a regular file. A `VMFSRAW` extent names the device itself; since the descriptor then points
//! outside the disk's folder, it opens only with `allow_outside`.
//!
//! Device extents report the mapping file (or nothing, for `VMFSRAW`) as their file, never the
//! device, so deleting or renaming a disk never touches the device.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rdm::{FoundBy, Mapping, Mode, OpenMode};

use crate::create::{new_uuid, Adapter, NewDisk};
use crate::descriptor::{Access, Descriptor, Entry, ExtentLine, ExtentType};
use crate::error::{Error, Result};
use crate::extent::device::{create_type, device_backing, DeviceExtent};
use crate::extent::flat::FlatExtent;
use crate::extent::ExtentKind;
use crate::link::{new_cid, Container, Link};
use crate::storage::{confine, HostStorage, Storage};

/// Options for [`create_device_disk`].
#[derive(Debug, Clone)]
pub struct DeviceDiskOptions {
    /// [`Mode::Virtual`] or [`Mode::Physical`]: a descriptor and a mapping file; [`Mode::Raw`]: a
    /// `vmfsRaw` descriptor naming the device directly.
    pub mode: Mode,
    /// The device (a block device, or a regular file standing in for one).
    pub device: PathBuf,
    /// Refuse a device holding fewer bytes than this (a clone's source capacity).
    pub min_capacity: Option<u64>,
    /// The adapter recorded in the descriptor.
    pub adapter: Adapter,
    /// Replace an existing descriptor or mapping file.
    pub force: bool,
    /// Open the device exclusively for writing and return a writable link over it (for cloning
    /// onto the device); otherwise the device is only read, for its identity and size.
    pub write: bool,
    /// Where the descriptor and mapping file are created (the device is always a host path).
    pub storage: Arc<dyn Storage>,
    /// Allow a regular file outside the disk's folder to stand in for the device. Without it such
    /// a disk is refused at creation, as it would be at every later open: what vmkfs creates
    /// reopens without flags.
    pub allow_outside: bool,
}

impl DeviceDiskOptions {
    /// Defaults: lsilogic, no minimum, no overwrite, device read-only, host storage.
    pub fn new(mode: Mode, device: impl Into<PathBuf>) -> DeviceDiskOptions {
        DeviceDiskOptions {
            mode,
            device: device.into(),
            min_capacity: None,
            adapter: Adapter::LsiLogic,
            force: false,
            write: false,
            storage: HostStorage::shared(),
            allow_outside: false,
        }
    }
}

/// The files a device disk at `path` consists of: the mapping file (RDM modes), then the
/// descriptor.
pub fn device_disk_files(path: &Path, mode: Mode) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if mode != Mode::Raw {
        v.push(path.with_file_name(Mapping::file_name(&stem(path), mode)));
    }
    v.push(path.to_path_buf());
    v
}

fn stem(path: &Path) -> String {
    let n = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    n.strip_suffix(".vmdk").unwrap_or(&n).to_string()
}

/// A device disk being created: its files under temporary names and, when opened for writing, a
/// writable link over the device. [`NewDeviceDisk::commit`] flushes and renames the mapping file,
/// then the descriptor, into place; dropping it removes the temporary files (the device keeps
/// whatever was written to it).
pub struct NewDeviceDisk {
    /// The files under temporary names and the link over the device (one home for commit and
    /// cleanup: [`NewDisk`]).
    disk: NewDisk,
    mapping: Option<Mapping>,
    capacity: u64,
}

impl std::fmt::Debug for NewDeviceDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewDeviceDisk").field("disk", &self.disk).field("capacity", &self.capacity).finish()
    }
}

impl NewDeviceDisk {
    /// The writable link over the device (`None` unless created with `write`).
    pub fn link(&self) -> Option<&Link> {
        self.disk.link.as_ref()
    }

    /// The mapping written (RDM modes).
    pub fn mapping(&self) -> Option<&Mapping> {
        self.mapping.as_ref()
    }

    /// The disk's capacity in bytes (the device size, rounded down to a sector).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Final paths of the disk's files, descriptor last.
    pub fn final_paths(&self) -> Vec<PathBuf> {
        self.disk.final_paths()
    }

    /// Flushes the device and the files, renames them into place and syncs the folder. Returns
    /// the descriptor's path.
    pub fn commit(self) -> Result<PathBuf> {
        self.disk.commit()
    }
}

/// Creates a device disk at `path` (the descriptor): for RDM modes a mapping file
/// `NAME-rdm.vmdk` / `NAME-rdmp.vmdk` beside it, for [`Mode::Raw`] a `VMFSRAW` extent naming the
/// device. The capacity is the device's size in whole sectors, as ESXi records a LUN.
pub fn create_device_disk(path: impl AsRef<Path>, opts: &DeviceDiskOptions) -> Result<NewDeviceDisk> {
    let path = path.as_ref();
    crate::descriptor::check_file_name(path)?;
    let storage = &opts.storage;
    let finals = device_disk_files(path, opts.mode);
    if path.file_name().is_none() {
        return Err(Error::InvalidArgument(format!("{} is not a file path", path.display())));
    }
    let disk = NewDisk::begin(storage, path, opts.force)?;
    for f in &finals {
        if !opts.force && storage.exists(f) {
            return Err(Error::Exists { path: f.clone() });
        }
    }
    let (mapping, dev) =
        Mapping::for_device(&opts.device, opts.mode, if opts.write { OpenMode::Write } else { OpenMode::Read })?;
    if !dev.is_block_device() {
        let shown = mapping.device_path.display().to_string();
        confine(storage.as_ref(), path, &mapping.device_path, &shown, opts.allow_outside)?;
    }
    let size = mapping.identity.size;
    let capacity = size / 512 * 512;
    if capacity == 0 {
        return Err(Error::InvalidArgument(format!(
            "{}: a device of {size} bytes holds no whole sector",
            mapping.device_path.display()
        )));
    }
    if let Some(min) = opts.min_capacity {
        if capacity < min {
            return Err(Error::InvalidArgument(format!(
                "{}: the device holds {capacity} bytes but the source needs {min}",
                mapping.device_path.display()
            )));
        }
    }
    let sectors = capacity / 512;
    let cid = new_cid(0xffff_ffff);
    let mut desc = Descriptor::new(create_type(opts.mode), cid);
    desc.header_extra.push(Entry { key: "isNativeSnapshot".into(), value: "no".into(), quoted: true });
    let (kind, file) = if opts.mode == Mode::Raw {
        (ExtentType::VmfsRaw, mapping.device_path.display().to_string())
    } else {
        (ExtentType::VmfsRdm, Mapping::file_name(&stem(path), opts.mode))
    };
    desc.extents.push(ExtentLine {
        access: Access::ReadWrite,
        sectors,
        kind,
        file: Some(file),
        offset: None,
        extra: vec![],
    });
    let (c, h, s) = opts.adapter.geometry(sectors);
    desc.set_ddb("adapterType", opts.adapter.ddb_value());
    desc.set_ddb("geometry.cylinders", c.to_string());
    desc.set_ddb("geometry.heads", h.to_string());
    desc.set_ddb("geometry.sectors", s.to_string());
    let mut long = [0u8; 12];
    crate::random_bytes(&mut long);
    let long: String = long.iter().map(|b| format!("{b:02x}")).collect();
    desc.set_ddb("longContentID", format!("{long}{cid:08x}"));
    desc.set_ddb("uuid", new_uuid());
    desc.set_ddb("virtualHWVersion", "11");

    let mut guard = NewDeviceDisk { disk, mapping: (opts.mode != Mode::Raw).then(|| mapping.clone()), capacity };
    if opts.mode != Mode::Raw {
        let b = guard.disk.files.create(&finals[0])?;
        b.write_all_at(&mapping.encode(), 0)?;
        b.sync()?;
    }
    let b = guard.disk.files.create(path)?;
    b.write_all_at(desc.to_text().as_bytes(), 0)?;
    if opts.write {
        let kind = if opts.mode == Mode::Raw { ExtentKind::VmfsRaw } else { ExtentKind::VmfsRdm };
        let flat = FlatExtent::open(device_backing(dev), 0, capacity, kind, true)?;
        let ext = DeviceExtent {
            flat,
            kind,
            mapping_file: (opts.mode != Mode::Raw).then(|| finals[0].clone()),
            found_by: (opts.mode != Mode::Raw).then_some(FoundBy::Path),
            mapping: guard.mapping.clone(),
        };
        guard.disk.link =
            Some(Link::from_parts(path, storage, Container::Descriptor, desc, Some(b), None, vec![Box::new(ext)]));
    } else {
        guard.disk.unsynced.push(b);
    }
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::OpenOptions;

    #[test]
    fn create_and_open_over_a_file_device() {
        let dir = tempfile::tempdir().unwrap();
        let lun = dir.path().join("lun.img");
        std::fs::write(&lun, vec![0x5au8; 1 << 20]).unwrap();
        let disk = dir.path().join("vm.vmdk");
        let mut o = DeviceDiskOptions::new(Mode::Virtual, &lun);
        o.write = true;
        let nd = create_device_disk(&disk, &o).unwrap();
        assert_eq!(nd.capacity(), 1 << 20);
        nd.link().unwrap().write_at(&[1, 2, 3], 512).unwrap();
        nd.link().unwrap().zero_range(4096, 8192).unwrap();
        let files = nd.final_paths();
        assert_eq!(files, vec![dir.path().join("vm-rdm.vmdk"), disk.clone()]);
        nd.commit().unwrap();
        let text = std::fs::read_to_string(&disk).unwrap();
        assert!(text.contains("createType=\"vmfsRawDeviceMap\"\n"), "{text}");
        assert!(text.contains("# Extent description\nRW 2048 VMFSRDM \"vm-rdm.vmdk\"\n"), "{text}");
        let raw = std::fs::read(&lun).unwrap();
        assert_eq!(&raw[512..515], &[1, 2, 3]);
        assert!(raw[4096..12288].iter().all(|&b| b == 0));
        assert_eq!(raw[12288], 0x5a);

        let l = Link::open(&disk, &OpenOptions::read()).unwrap();
        assert_eq!(l.rdm_mode(), Some(Mode::Virtual));
        assert_eq!(l.capacity(), 1 << 20);
        assert_eq!(l.files(), vec![disk.clone(), dir.path().join("vm-rdm.vmdk")]);
        let mut b = [0u8; 4];
        l.read_at(&mut b, 511).unwrap();
        assert_eq!(b, [0x5a, 1, 2, 3]);
        drop(l);

        // Shrinking the device makes the disk refuse to open, naming both sizes.
        std::fs::OpenOptions::new().write(true).open(&lun).unwrap().set_len(1 << 19).unwrap();
        let e = Link::open(&disk, &OpenOptions::read()).unwrap_err().to_string();
        assert!(e.contains("expected 1048576 bytes, found 524288 bytes"), "{e}");
    }

    #[test]
    fn raw_disks_follow_the_folder_rule_and_mode_must_agree() {
        let dir = tempfile::tempdir().unwrap();
        let lun = dir.path().join("lun.img");
        std::fs::write(&lun, vec![0u8; 4096]).unwrap();
        let disk = dir.path().join("raw.vmdk");
        create_device_disk(&disk, &DeviceDiskOptions::new(Mode::Raw, &lun)).unwrap().commit().unwrap();
        let text = std::fs::read_to_string(&disk).unwrap();
        assert!(text.contains("createType=\"vmfsRaw\"") && text.contains(" VMFSRAW \""), "{text}");
        // A raw disk over a file in its own folder reopens without flags.
        let l = Link::open(&disk, &OpenOptions::read()).unwrap();
        assert_eq!(l.rdm_mode(), Some(Mode::Raw));
        assert_eq!(l.files(), vec![disk.clone()]);
        drop(l);
        // One over a regular file elsewhere needs allow_outside, to be made and to be opened.
        let other = tempfile::tempdir().unwrap();
        let far = other.path().join("far.vmdk");
        assert!(matches!(
            create_device_disk(&far, &DeviceDiskOptions::new(Mode::Raw, &lun)),
            Err(Error::PathEscape { .. })
        ));
        let outside = DeviceDiskOptions { allow_outside: true, ..DeviceDiskOptions::new(Mode::Raw, &lun) };
        create_device_disk(&far, &outside).unwrap().commit().unwrap();
        assert!(matches!(Link::open(&far, &OpenOptions::read()), Err(Error::PathEscape { .. })));
        let o = OpenOptions { allow_outside: true, ..OpenOptions::read() };
        drop(Link::open(&far, &o).unwrap());

        // A descriptor saying physical over a virtual-mode mapping file is refused.
        let v = dir.path().join("v.vmdk");
        create_device_disk(&v, &DeviceDiskOptions::new(Mode::Virtual, &lun)).unwrap().commit().unwrap();
        let t = std::fs::read_to_string(&v).unwrap().replace("vmfsRawDeviceMap", "vmfsPassthroughRawDeviceMap");
        std::fs::write(&v, t).unwrap();
        let e = Link::open(&v, &OpenOptions::read()).unwrap_err().to_string();
        assert!(e.contains("records virtual mode"), "{e}");
        // Existing files are not replaced without force.
        assert!(matches!(
            create_device_disk(&v, &DeviceDiskOptions::new(Mode::Virtual, &lun)),
            Err(Error::Exists { .. })
        ));
    }
}
