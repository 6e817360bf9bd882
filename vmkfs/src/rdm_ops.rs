//! Raw device mappings: create (`-r`, `-z`), query (`-q`), clone onto a device (`-d rdm:DEV`,
//! `rdmp:DEV`, `raw:DEV`) and delete (`-U`, which removes the descriptor and the mapping file and
//! never touches the device).
//!
//! Reading and writing through a mapping, and cloning from one, need nothing here: [`vmdk::Link`]
//! opens `VMFSRDM` and `VMFSRAW` extents itself (see [`vmdk::rawdev`]).

use std::path::{Path, PathBuf};

use rdm::{Identity, Mapping, Mode, OpenMode};
use redo::Chain;
use serde::Serialize;
use vmdk::create::Adapter;
use vmdk::descriptor::{looks_like_descriptor, Descriptor, ExtentType, MAX_DESCRIPTOR_BYTES};
use vmdk::extent::device::{rdm_mode, read_mapping};
use vmdk::rawdev::{create_device_disk, DeviceDiskOptions};
use vmdk::storage::resolve_extent_path;
use vmdk::OpenOptions;

use crate::clone::{CloneOptions, CloneReport};
use crate::engine::copy;
use crate::error::{Error, Result};

/// A `-d` value naming a device target: `rdm:DEV`, `rdmp:DEV` or `raw:DEV`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceTarget {
    /// Virtual (`rdm:`), physical (`rdmp:`) or raw (`raw:`).
    pub mode: Mode,
    /// The device.
    pub device: PathBuf,
}

impl DeviceTarget {
    /// Parses `rdm:DEV`, `rdmp:DEV` or `raw:DEV` (the prefix in any case); `None` for anything else.
    pub fn parse(s: &str) -> Option<DeviceTarget> {
        let (prefix, dev) = s.split_once(':')?;
        let mode = match prefix.to_ascii_lowercase().as_str() {
            "rdm" => Mode::Virtual,
            "rdmp" => Mode::Physical,
            "raw" => Mode::Raw,
            _ => return None,
        };
        (!dev.is_empty()).then(|| DeviceTarget { mode, device: PathBuf::from(dev) })
    }

    /// The `-d` prefix: `rdm`, `rdmp` or `raw`.
    pub fn name(&self) -> &'static str {
        match self.mode {
            Mode::Virtual => "rdm",
            Mode::Physical => "rdmp",
            Mode::Raw => "raw",
        }
    }

    /// The wording after `Destination disk format: `.
    pub fn description(&self) -> &'static str {
        describe(self.mode)
    }
}

fn describe(mode: Mode) -> &'static str {
    match mode {
        Mode::Virtual => "raw device mapping (virtual compatibility mode)",
        Mode::Physical => "raw device mapping (physical compatibility mode, passthrough)",
        Mode::Raw => "raw device",
    }
}

/// What `-r` / `-z` made.
#[derive(Debug, Clone)]
pub struct MappingReport {
    /// The descriptor.
    pub path: PathBuf,
    /// Every file written (mapping file, then descriptor).
    pub files: Vec<PathBuf>,
    /// The mapping recorded.
    pub mapping: Mapping,
    /// The disk's capacity in bytes.
    pub capacity: u64,
}

/// `-r` (virtual) / `-z` (physical): creates the descriptor `map` and its mapping file for
/// `device`. The device is only read (its identity and size).
pub fn create_mapping(
    device: &Path,
    map: &Path,
    mode: Mode,
    adapter: Option<Adapter>,
    force: bool,
    allow_outside: bool,
) -> Result<MappingReport> {
    if mode == Mode::Raw {
        return Err(Error::Usage("mapping files are made for virtual or physical mode only".into()));
    }
    let mut o = DeviceDiskOptions::new(mode, device);
    o.force = force;
    o.allow_outside = allow_outside;
    if let Some(a) = adapter {
        o.adapter = a;
    }
    let new = create_device_disk(map, &o)?;
    let files = new.final_paths();
    let capacity = new.capacity();
    let mapping = new.mapping().cloned().ok_or_else(|| Error::Usage("no mapping was made".into()))?;
    let path = new.commit()?;
    Ok(MappingReport { path, files, mapping, capacity })
}

/// Clones `src` (a disk or chain, flattened) onto a device and writes the disk describing it at
/// `dst`: a mapping for `rdm:`/`rdmp:`, a `VMFSRAW` descriptor for `raw:`. The device must hold at
/// least the source's capacity. Ranges that read as zeros in the source are zeroed on the device
/// (`BLKZEROOUT`, `FALLOC_FL_ZERO_RANGE`, else written zeros), because a LUN holds stale data,
/// unless `target_is_zero` says the device already reads as zeros there. `opts.format` is not used.
///
/// An interrupted or failed clone removes the descriptor and mapping file it was writing; what
/// was already written to the device stays there.
pub fn clone_to_device(
    src: &Path,
    dst: &Path,
    target: &DeviceTarget,
    opts: &mut CloneOptions<'_>,
    target_is_zero: bool,
) -> Result<CloneReport> {
    let chain = Chain::open(src, &opts.source)?;
    let cap = chain.capacity();
    let mut o = DeviceDiskOptions::new(target.mode, &target.device);
    o.min_capacity = Some(cap);
    o.force = opts.force;
    o.allow_outside = opts.source.allow_outside;
    o.write = true;
    o.adapter = opts
        .adapter
        .or_else(|| chain.top().descriptor().ddb("adapterType").and_then(Adapter::parse))
        .unwrap_or(Adapter::LsiLogic);
    let new = create_device_disk(dst, &o)?;
    let files = new.final_paths();
    let link = new.link().ok_or_else(|| Error::Usage("the device disk has no writable link".into()))?;
    let mut engine = opts.engine.unwrap_or_default();
    engine.dense = false;
    engine.ordered = false;
    engine.zero_target = !target_is_zero;
    engine.skip_zeros = target_is_zero;
    let mut noop = |_: u64, _: u64| {};
    let progress: &mut dyn FnMut(u64, u64) = match opts.progress.as_mut() {
        Some(p) => *p,
        None => &mut noop,
    };
    let stats = copy(&chain, link, &engine, progress, opts.cancel)?;
    drop(chain);
    let path = new.commit()?;
    Ok(CloneReport { path, files, stats })
}

/// What `-q` reports.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RdmInfo {
    /// The path queried (a descriptor, or a mapping file itself).
    pub path: PathBuf,
    /// `virtual`, `physical` or `raw`.
    pub mode: String,
    /// True for physical and raw (SCSI passthrough).
    pub passthrough: bool,
    /// The descriptor's createType (`None` when a mapping file was queried directly).
    pub create_type: Option<String>,
    /// Capacity the descriptor declares, in bytes.
    pub capacity: Option<u64>,
    /// The mapping file (RDM modes).
    pub mapping_file: Option<PathBuf>,
    /// The device path recorded (RDM) or named (raw).
    pub maps_to: PathBuf,
    /// The recorded identity (RDM modes).
    pub identity: Option<Identity>,
    /// Creation time of the mapping, seconds since 1970 (RDM modes).
    pub created: Option<u64>,
    /// Where the device is now, when it was found and matches.
    pub found_at: Option<PathBuf>,
    /// How it was found.
    pub found_by: Option<String>,
    /// Why the device cannot be used, when it cannot.
    pub problem: Option<String>,
}

/// The text of a descriptor or the bytes of a mapping file at `path` (bounded reads).
enum Head {
    Descriptor(Descriptor),
    Mapping(Mapping),
    Other,
}

fn read_head(path: &Path, opts: &OpenOptions) -> Result<Head> {
    let b = opts.storage.open(path, false)?;
    let len = b.len()?;
    let mut head = vec![0u8; len.min(4096) as usize];
    b.read_exact_at(&mut head, 0)?;
    if Mapping::looks_like_mapping(&head) {
        return Ok(Head::Mapping(read_mapping(&opts.storage, path)?));
    }
    if !looks_like_descriptor(&head) {
        return Ok(Head::Other);
    }
    if len > MAX_DESCRIPTOR_BYTES as u64 {
        return Err(vmdk::Error::Descriptor {
            path: path.into(),
            line: 0,
            what: format!("descriptor file is {len} bytes; at most {MAX_DESCRIPTOR_BYTES} are accepted"),
        }
        .into());
    }
    let mut raw = vec![0u8; len as usize];
    b.read_exact_at(&mut raw, 0)?;
    Ok(Head::Descriptor(Descriptor::parse(&String::from_utf8_lossy(&raw), path)?))
}

/// `-q`: what the disk at `path` maps, and whether the device can be used now. `None` when it is
/// not a raw device mapping (nor a raw device disk). `path` may also be a mapping file itself.
pub fn query(path: &Path, opts: &OpenOptions) -> Result<Option<RdmInfo>> {
    let mut info = RdmInfo {
        path: path.to_path_buf(),
        mode: String::new(),
        passthrough: false,
        create_type: None,
        capacity: None,
        mapping_file: None,
        maps_to: PathBuf::new(),
        identity: None,
        created: None,
        found_at: None,
        found_by: None,
        problem: None,
    };
    let mapping = match read_head(path, opts)? {
        Head::Other => return Ok(None),
        Head::Mapping(m) => {
            info.mapping_file = Some(path.to_path_buf());
            m
        }
        Head::Descriptor(d) => {
            let Some(mode) = rdm_mode(&d) else { return Ok(None) };
            info.create_type = Some(d.create_type.as_str().to_string());
            info.capacity = Some(d.total_sectors() * 512);
            info.mode = mode.name().into();
            info.passthrough = mode.is_passthrough();
            let kind = if mode == Mode::Raw { ExtentType::VmfsRaw } else { ExtentType::VmfsRdm };
            let line = d.extents.iter().find(|e| e.kind == kind).ok_or_else(|| {
                vmdk::Error::unsupported(path, format!("{} disk without a {} extent", mode.name(), kind.as_str()))
            })?;
            let name = line.file.as_deref().unwrap_or("");
            if mode == Mode::Raw {
                info.maps_to = PathBuf::from(name);
                match resolve_extent_path(path, name, true).map_err(Error::from).and_then(|p| {
                    let dev = rdm::mapping::open_device(&p, OpenMode::Read).map_err(vmdk::Error::from)?;
                    let size = dev.size().map_err(|e| Error::Io { path: p.clone(), source: e })?;
                    if size < line.sectors * 512 {
                        return Err(Error::Usage(format!(
                            "{}: the device holds {size} bytes but the descriptor maps {}",
                            p.display(),
                            line.sectors * 512
                        )));
                    }
                    Ok(p)
                }) {
                    Ok(p) => {
                        info.found_at = Some(p);
                        info.found_by = Some("descriptor path".into());
                    }
                    Err(e) => info.problem = Some(e.to_string()),
                }
                return Ok(Some(info));
            }
            let map_path = resolve_extent_path(path, name, opts.allow_outside)?;
            info.mapping_file = Some(map_path.clone());
            read_mapping(&opts.storage, &map_path)?
        }
    };
    info.mode = mapping.mode.name().into();
    info.passthrough = mapping.mode.is_passthrough();
    info.maps_to = mapping.device_path.clone();
    info.identity = Some(mapping.identity.clone());
    info.created = Some(mapping.created);
    let map_path = info.mapping_file.clone().unwrap_or_else(|| path.to_path_buf());
    match mapping.open_device(OpenMode::Read, &map_path) {
        Ok(r) => {
            info.found_at = Some(r.device.path().to_path_buf());
            info.found_by = Some(r.found_by.to_string());
        }
        Err(e) => info.problem = Some(e.to_string()),
    }
    Ok(Some(info))
}

/// The files `-U` removes for a device-backed disk at `path`: the descriptor, then each mapping file
/// its `VMFSRDM` extents name (never a device, never a file that is not a mapping record). `None`
/// when `path` is not a device-backed disk; the device need not be present.
pub fn mapping_files(path: &Path, opts: &OpenOptions) -> Result<Option<Vec<PathBuf>>> {
    let d = match read_head(path, opts) {
        Ok(Head::Descriptor(d)) => d,
        Ok(Head::Mapping(_)) => {
            return Err(vmdk::Error::unsupported(
                path,
                "this is an RDM mapping file; delete the descriptor (NAME.vmdk) that names it",
            )
            .into())
        }
        _ => return Ok(None),
    };
    if rdm_mode(&d).is_none() {
        return Ok(None);
    }
    let mut files = vec![path.to_path_buf()];
    for e in d.extents.iter().filter(|e| e.kind == ExtentType::VmfsRdm) {
        let m = resolve_extent_path(path, e.file.as_deref().unwrap_or(""), opts.allow_outside)?;
        if !opts.storage.exists(&m) {
            continue;
        }
        let b = opts.storage.open(&m, false)?;
        let mut head = vec![0u8; b.len()?.min(8) as usize];
        b.read_exact_at(&mut head, 0)?;
        if !Mapping::looks_like_mapping(&head) {
            return Err(vmdk::Error::unsupported(
                &m,
                "the descriptor names this as its RDM mapping file, but it is not one; not deleting anything",
            )
            .into());
        }
        if !files.contains(&m) {
            files.push(m);
        }
    }
    Ok(Some(files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_targets_parse() {
        assert_eq!(
            DeviceTarget::parse("rdm:/dev/sdb"),
            Some(DeviceTarget { mode: Mode::Virtual, device: "/dev/sdb".into() })
        );
        assert_eq!(DeviceTarget::parse("RDMP:/dev/x").map(|t| t.mode), Some(Mode::Physical));
        assert_eq!(DeviceTarget::parse("raw:a:b").map(|t| t.device), Some(PathBuf::from("a:b")));
        assert_eq!(DeviceTarget::parse("rdm:"), None);
        assert_eq!(DeviceTarget::parse("thin"), None);
        assert_eq!(DeviceTarget::parse("vmfs:/x"), None);
    }
}
