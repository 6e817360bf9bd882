//! Device extents: `VMFSRDM` (a mapping file naming a device by its identity) and `VMFSRAW` (the
//! device itself), opened as flat extents over the device (fact sheet §1.3, §5).
//!
//! A `VMFSRDM` extent names a mapping file (our own record, `rdm/FORMAT.md`), which names the device
//! by a stable identity; opening the extent reads the record, finds the device through
//! [`rdm::Mapping::open_device`] (refusing one whose identity or size changed) and then acts as a
//! flat extent over the device: every byte is data on a block device, `SEEK_DATA`/`SEEK_HOLE` answer
//! for a regular file. A `VMFSRAW` extent names the device itself; since the descriptor then points
//! outside the disk's folder, it opens only with `allow_outside`.
//!
//! Device extents report the mapping file (or nothing, for `VMFSRAW`) as their file, never the

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rdm::{FoundBy, Mapping, Mode, OpenMode};

use crate::descriptor::{CreateType, Descriptor, ExtentLine, ExtentType};
use crate::error::{Error, Result};
use crate::extent::flat::FlatExtent;
use crate::extent::{Extent, ExtentInfo, ExtentKind};
use crate::map::AllocMap;
use crate::storage::{confine, resolve_extent_path, Backing, HostFile, Storage};
use rdm::ReadAt;

/// The RDM mode a descriptor declares: [`Mode::Virtual`] for `vmfsRawDeviceMap`, [`Mode::Physical`]
/// for `vmfsPassthroughRawDeviceMap`, [`Mode::Raw`] for `vmfsRaw` or any `VMFSRAW` extent, `None`
/// for a disk that is not device-backed. A `VMFSRDM` extent under any other createType (which
/// [`Link::open`] refuses) counts as physical, the mode that allows the least.
///
/// Snapshot rules follow from it: [`Mode::allows_snapshots`] is true for virtual mode only.
pub fn rdm_mode(d: &Descriptor) -> Option<Mode> {
    match d.create_type {
        CreateType::VmfsRawDeviceMap => Some(Mode::Virtual),
        CreateType::VmfsPassthroughRawDeviceMap => Some(Mode::Physical),
        CreateType::VmfsRaw => Some(Mode::Raw),
        _ if d.extents.iter().any(|e| e.kind == ExtentType::VmfsRaw) => Some(Mode::Raw),
        _ if d.extents.iter().any(|e| e.kind == ExtentType::VmfsRdm) => Some(Mode::Physical),
        _ => None,
    }
}

/// The createType of each mode.
pub fn create_type(mode: Mode) -> CreateType {
    match mode {
        Mode::Virtual => CreateType::VmfsRawDeviceMap,
        Mode::Physical => CreateType::VmfsPassthroughRawDeviceMap,
        Mode::Raw => CreateType::VmfsRaw,
    }
}

/// Reads and parses a mapping file through `storage` (at most [`rdm::mapping::MAX_RECORD`] bytes
/// are read).
pub fn read_mapping(storage: &Arc<dyn Storage>, path: &Path) -> Result<Mapping> {
    let b = storage.open(path, false)?;
    let len = b.len()?;
    if len > rdm::mapping::MAX_RECORD as u64 {
        return Err(Error::Rdm(rdm::MappingError::Corrupt {
            path: path.into(),
            offset: 0,
            what: format!("file is {len} bytes; a mapping record is at most {}", rdm::mapping::MAX_RECORD),
        }));
    }
    let mut raw = vec![0u8; len as usize];
    b.read_exact_at(&mut raw, 0)?;
    Ok(Mapping::parse(&raw, path)?)
}

/// An extent over a raw device: a flat extent whose backing is the device, described by the
/// mapping file it was found through.
#[derive(Debug)]
pub struct DeviceExtent {
    pub(crate) flat: FlatExtent,
    pub(crate) kind: ExtentKind,
    /// The mapping file (VMFSRDM); `None` for VMFSRAW.
    pub(crate) mapping_file: Option<PathBuf>,
    /// The mapping, for VMFSRDM.
    pub(crate) mapping: Option<Mapping>,
    /// How the device was found, for VMFSRDM.
    pub(crate) found_by: Option<FoundBy>,
}

impl DeviceExtent {
    /// The device path opened.
    pub fn device(&self) -> &Path {
        self.flat.backing().path()
    }

    /// The mapping record (VMFSRDM extents).
    pub fn mapping(&self) -> Option<&Mapping> {
        self.mapping.as_ref()
    }

    /// How the device was found (VMFSRDM extents).
    pub fn found_by(&self) -> Option<&FoundBy> {
        self.found_by.as_ref()
    }
}

impl ReadAt for DeviceExtent {
    type Error = Error;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.flat.read_exact_at(buf, offset)
    }
}

impl Extent for DeviceExtent {
    fn len(&self) -> u64 {
        self.flat.len()
    }
    fn info(&self) -> ExtentInfo {
        ExtentInfo { kind: self.kind, file: self.mapping_file.clone(), ..self.flat.info() }
    }
    fn writable(&self) -> bool {
        self.flat.writable()
    }
    fn write_at(&self, buf: &[u8], offset: u64, below: Option<&dyn ReadAt<Error = Error>>) -> Result<()> {
        self.flat.write_at(buf, offset, below)
    }
    fn map(&self, offset: u64, len: u64, base: u64, budget: usize, out: &mut AllocMap) -> Result<u64> {
        self.flat.map(offset, len, base, budget, out)
    }
    fn discard(&self, offset: u64, len: u64, has_parent: bool) -> Result<u64> {
        self.flat.discard(offset, len, has_parent)
    }
    fn zero_range(&self, offset: u64, len: u64, below: Option<&dyn ReadAt<Error = Error>>) -> Result<()> {
        self.flat.zero_range(offset, len, below)
    }
    fn start_writeback(&self, offset: u64, len: u64) {
        self.flat.start_writeback(offset, len)
    }
    fn enable_direct(&self) -> bool {
        self.flat.enable_direct()
    }
    fn flush(&self) -> Result<()> {
        self.flat.flush()
    }
}

pub(crate) fn device_backing(dev: rdm::Device) -> Arc<dyn Backing> {
    Arc::new(HostFile::new(dev))
}

/// Opens a `VMFSRDM` or `VMFSRAW` extent line of the descriptor at `descriptor` (called by
/// [`crate::Link::open`]). Devices are always host paths, opened through [`rdm`] (exclusively when
/// `write`), whatever storage the descriptor lives in.
pub(crate) fn open_extent(
    descriptor: &Path,
    desc: &Descriptor,
    line: &ExtentLine,
    storage: &Arc<dyn Storage>,
    allow_outside: bool,
    write: bool,
) -> Result<Box<dyn Extent>> {
    let len = line.sectors * 512;
    let name = line.file.as_deref().unwrap_or("");
    let mode = if write { OpenMode::Write } else { OpenMode::Read };
    match line.kind {
        ExtentType::VmfsRdm => {
            let map_path = resolve_extent_path(descriptor, name, allow_outside)?;
            confine(storage.as_ref(), descriptor, &map_path, name, allow_outside)?;
            let mapping = read_mapping(storage, &map_path)?;
            let declared = match desc.create_type {
                CreateType::VmfsRawDeviceMap => Mode::Virtual,
                CreateType::VmfsPassthroughRawDeviceMap => Mode::Physical,
                ref t => {
                    return Err(Error::unsupported(
                        descriptor,
                        format!("a VMFSRDM extent under createType {:?} (expected vmfsRawDeviceMap or vmfsPassthroughRawDeviceMap)", t.as_str()),
                    ))
                }
            };
            if mapping.mode != declared {
                return Err(Error::corrupt(
                    &map_path,
                    10,
                    format!(
                        "the mapping file records {} mode but the descriptor's createType {:?} says {} mode",
                        mapping.mode.name(),
                        desc.create_type.as_str(),
                        declared.name()
                    ),
                ));
            }
            let r = mapping.open_device(mode, &map_path)?;
            // A device may be anywhere; a regular file standing in for one obeys the folder rule
            // (a crafted record must not reach any host file).
            if !r.device.is_block_device() {
                let shown = r.device.path().display().to_string();
                confine(storage.as_ref(), descriptor, r.device.path(), &shown, allow_outside)?;
            }
            let flat = FlatExtent::open(
                device_backing(r.device),
                line.offset.unwrap_or(0) * 512,
                len,
                ExtentKind::VmfsRdm,
                write,
            )?;
            Ok(Box::new(DeviceExtent {
                flat,
                kind: ExtentKind::VmfsRdm,
                mapping_file: Some(map_path),
                mapping: Some(mapping),
                found_by: Some(r.found_by),
            }))
        }
        ExtentType::VmfsRaw => {
            // `VMFSRAW` names the device by its absolute path: a block device may be anywhere, a
            // regular file standing in for one must lie in the disk's folder.
            let dev_path = resolve_extent_path(descriptor, name, true)?;
            let dev = rdm::mapping::open_device(&dev_path, mode)?;
            if !dev.is_block_device() {
                confine(storage.as_ref(), descriptor, &dev_path, name, allow_outside)?;
            }
            let flat =
                FlatExtent::open(device_backing(dev), line.offset.unwrap_or(0) * 512, len, ExtentKind::VmfsRaw, write)?;
            Ok(Box::new(DeviceExtent {
                flat,
                kind: ExtentKind::VmfsRaw,
                mapping_file: None,
                mapping: None,
                found_by: None,
            }))
        }
        ref k => Err(Error::unsupported(descriptor, format!("{} is not a device extent", k.as_str()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::Access;

    #[test]
    fn modes_of_descriptors() {
        let mut d = Descriptor::new(CreateType::VmfsRawDeviceMap, 1);
        assert_eq!(rdm_mode(&d), Some(Mode::Virtual));
        d.create_type = CreateType::VmfsPassthroughRawDeviceMap;
        assert_eq!(rdm_mode(&d), Some(Mode::Physical));
        d.create_type = CreateType::VmfsRaw;
        assert_eq!(rdm_mode(&d), Some(Mode::Raw));
        d.create_type = CreateType::Vmfs;
        assert_eq!(rdm_mode(&d), None);
        d.create_type = CreateType::Custom;
        d.extents.push(ExtentLine {
            access: Access::ReadWrite,
            sectors: 1,
            kind: ExtentType::VmfsRdm,
            file: Some("x".into()),
            offset: None,
            extra: vec![],
        });
        assert_eq!(rdm_mode(&d), Some(Mode::Physical));
    }
}
