//! Creating disks: every format we write, built under temporary names and renamed into place.
//!
//! [`create`] returns a [`NewDisk`]: a writable [`Link`] over files that still have temporary names.
//! Fill it, then call [`NewDisk::commit`], which flushes, renames the extent files and finally the
//! descriptor into place. Dropping a `NewDisk` without committing removes the temporary files, so a
//! failure or interruption leaves no destination behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::descriptor::{Access, CreateType, Descriptor, ExtentLine, ExtentType, MAX_EXTENTS, MAX_FILE_BYTES};
use crate::error::{Error, Result};
use crate::extent::flat::FlatExtent;
use crate::extent::gtcache::GtCache;
use crate::extent::kdmv::{Layout, SparseHeader};
use crate::extent::sparse::{self, SparseExtent};
use crate::extent::stream::writer::stream_header;
use crate::extent::{Extent, ExtentKind};
use crate::link::{new_cid, Container, Link};
use crate::storage::{write_zeros, Backing, HostStorage, Storage};
use crate::txn::NewFiles;

/// The CID value that means "none" (bare extents and raw images report it).
const NO_CID: u32 = crate::descriptor::NO_PARENT_CID;

/// VMware's full extent size for split disks, in sectors (2047 MiB).
pub const VMWARE_SPLIT_SECTORS: u64 = 4_192_256;
/// Sectors reserved for an embedded descriptor (what qemu, VirtualBox and open-vmdk use).
pub const EMBEDDED_DESCRIPTOR_SECTORS: u64 = 20;
/// The `ddb.virtualHWVersion` of ESX disks we create: ESXi 6.7's, which every ESXi since reads.
pub const ESX_HW_VERSION: &str = "14";
/// Default grain size in sectors (64 KiB).
pub const DEFAULT_GRAIN_SECTORS: u64 = 128;

/// A format we can create (the `-d` values of vmkfstools, plus `2gbflat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// ESX flat disk, space reserved (lazily zeroed).
    ZeroedThick,
    /// ESX flat disk, space reserved and zeroed.
    EagerZeroedThick,
    /// ESX flat disk, sparse file, `ddb.thinProvisioned = "1"`.
    Thin,
    /// Hosted monolithicSparse.
    MonoSparse,
    /// Hosted twoGbMaxExtentSparse.
    TwoGbSparse,
    /// Hosted monolithicFlat.
    MonoFlat,
    /// Hosted twoGbMaxExtentFlat.
    TwoGbFlat,
    /// streamOptimized: one compressed, append-only file (OVF/OVA, backups). Written with
    /// [`create_stream`], read-only once written.
    StreamOptimized,
}

impl DiskFormat {
    /// Every format [`create`] makes as a writable link, in `-d` spelling.
    pub const ALL: [DiskFormat; 7] = [
        DiskFormat::ZeroedThick,
        DiskFormat::EagerZeroedThick,
        DiskFormat::Thin,
        DiskFormat::MonoSparse,
        DiskFormat::TwoGbSparse,
        DiskFormat::MonoFlat,
        DiskFormat::TwoGbFlat,
    ];

    /// Every format we write: [`DiskFormat::ALL`] and streamOptimized.
    pub const EVERY: [DiskFormat; 8] = {
        let mut every = [DiskFormat::StreamOptimized; 8];
        let mut i = 0;
        while i < DiskFormat::ALL.len() {
            every[i] = DiskFormat::ALL[i];
            i += 1;
        }
        every
    };

    /// Parses a `-d` value (case-insensitive; `thick` means zeroedthick).
    pub fn parse(s: &str) -> Option<DiskFormat> {
        Some(match s.to_ascii_lowercase().as_str() {
            "zeroedthick" | "thick" | "preallocated" => DiskFormat::ZeroedThick,
            "eagerzeroedthick" => DiskFormat::EagerZeroedThick,
            "thin" => DiskFormat::Thin,
            "monosparse" => DiskFormat::MonoSparse,
            "2gbsparse" => DiskFormat::TwoGbSparse,
            "monoflat" => DiskFormat::MonoFlat,
            "2gbflat" => DiskFormat::TwoGbFlat,
            "streamoptimized" => DiskFormat::StreamOptimized,
            _ => return None,
        })
    }

    /// The `-d` spelling.
    pub fn name(self) -> &'static str {
        match self {
            DiskFormat::ZeroedThick => "zeroedthick",
            DiskFormat::EagerZeroedThick => "eagerzeroedthick",
            DiskFormat::Thin => "thin",
            DiskFormat::MonoSparse => "monosparse",
            DiskFormat::TwoGbSparse => "2gbsparse",
            DiskFormat::MonoFlat => "monoflat",
            DiskFormat::TwoGbFlat => "2gbflat",
            DiskFormat::StreamOptimized => "streamoptimized",
        }
    }

    /// vmkfstools' wording after `Destination disk format: `.
    pub fn description(self) -> &'static str {
        match self {
            DiskFormat::ZeroedThick => "VMFS zeroedthick",
            DiskFormat::EagerZeroedThick => "VMFS eagerzeroedthick",
            DiskFormat::Thin => "VMFS thin-provisioned",
            DiskFormat::MonoSparse => "monolithic sparse",
            DiskFormat::TwoGbSparse => "sparse with 2GB maximum extent size",
            DiskFormat::MonoFlat => "monolithic flat",
            DiskFormat::TwoGbFlat => "flat with 2GB maximum extent size",
            DiskFormat::StreamOptimized => "stream optimized (compressed)",
        }
    }

    /// The createType of a disk made in this format.
    pub fn create_type(self) -> CreateType {
        match self {
            DiskFormat::ZeroedThick | DiskFormat::EagerZeroedThick | DiskFormat::Thin => CreateType::Vmfs,
            DiskFormat::MonoSparse => CreateType::MonolithicSparse,
            DiskFormat::TwoGbSparse => CreateType::TwoGbMaxExtentSparse,
            DiskFormat::MonoFlat => CreateType::MonolithicFlat,
            DiskFormat::TwoGbFlat => CreateType::TwoGbMaxExtentFlat,
            DiskFormat::StreamOptimized => CreateType::StreamOptimized,
        }
    }

    /// True for hosted sparse formats (grain tables, no zero grains stored).
    pub fn is_sparse(self) -> bool {
        matches!(self, DiskFormat::MonoSparse | DiskFormat::TwoGbSparse)
    }

    /// True for formats kept in one file (the descriptor embedded): monosparse, streamOptimized.
    pub fn is_single_file(self) -> bool {
        matches!(self, DiskFormat::MonoSparse | DiskFormat::StreamOptimized)
    }

    /// True for the ESX `vmfs` formats.
    pub fn is_esx(self) -> bool {
        matches!(self, DiskFormat::ZeroedThick | DiskFormat::EagerZeroedThick | DiskFormat::Thin)
    }
}

/// The virtual adapter a disk is made for (sets `ddb.adapterType` and the geometry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adapter {
    /// IDE (16 heads).
    Ide,
    /// BusLogic SCSI.
    BusLogic,
    /// LSI Logic parallel SCSI (the default).
    LsiLogic,
    /// LSI Logic SAS.
    LsiSas,
    /// VMware paravirtual SCSI.
    Pvscsi,
    /// ESX 2 legacy.
    LegacyEsx,
}

impl Adapter {
    /// Parses an `-a` value.
    pub fn parse(s: &str) -> Option<Adapter> {
        Some(match s.to_ascii_lowercase().as_str() {
            "ide" => Adapter::Ide,
            "buslogic" => Adapter::BusLogic,
            "lsilogic" => Adapter::LsiLogic,
            "lsisas" | "lsisas1068" => Adapter::LsiSas,
            "pvscsi" => Adapter::Pvscsi,
            "legacyesx" => Adapter::LegacyEsx,
            _ => return None,
        })
    }

    /// The `ddb.adapterType` value.
    pub fn ddb_value(self) -> &'static str {
        match self {
            Adapter::Ide => "ide",
            Adapter::BusLogic => "buslogic",
            Adapter::LsiLogic => "lsilogic",
            Adapter::LsiSas => "lsisas1068",
            Adapter::Pvscsi => "pvscsi",
            Adapter::LegacyEsx => "legacyESX",
        }
    }

    /// Geometry `(cylinders, heads, sectors)` of an ESX (`vmfs`) disk of `sectors` sectors, as
    /// ESXi writes it: IDE 16 heads and 63 sectors per track (cylinders not capped); SCSI
    /// adapters 64 heads and 32 sectors up to 1023 MiB, 128/32 up to 2046 MiB, 255/63 above;
    /// cylinders = sectors / (heads × sectors per track), at least 1.
    pub fn esx_geometry(self, sectors: u64) -> (u64, u64, u64) {
        const MIB: u64 = 2048;
        let (h, s) = match self {
            Adapter::Ide => (16, 63),
            _ if sectors <= 1023 * MIB => (64, 32),
            _ if sectors <= 2046 * MIB => (128, 32),
            _ => (255, 63),
        };
        ((sectors / (h * s)).max(1), h, s)
    }

    /// Geometry `(cylinders, heads, sectors)` of a hosted disk of `sectors` sectors, as VMware's
    /// hosted products compute it (IDE cylinders capped at 16383).
    pub fn geometry(self, sectors: u64) -> (u64, u64, u64) {
        if self == Adapter::Ide {
            ((sectors / (16 * 63)).clamp(1, 16383), 16, 63)
        } else {
            ((sectors / (255 * 63)).max(1), 255, 63)
        }
    }
}

/// Options for [`create`].
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// The format.
    pub format: DiskFormat,
    /// Capacity in bytes (a multiple of 512).
    pub capacity: u64,
    /// The adapter.
    pub adapter: Adapter,
    /// Replace existing files.
    pub force: bool,
    /// Sectors per full extent of split formats (VMware's 4192256 by default; qemu uses 4194304).
    pub split_sectors: u64,
    /// Grain size of sparse formats, in sectors.
    pub grain_sectors: u64,
    /// Where to create the files.
    pub storage: Arc<dyn Storage>,
    /// Write zeros over an eager-zeroed disk at creation (a caller that writes every byte itself,
    /// like the clone engine, turns this off).
    pub zero_fill: bool,
    /// Make a child (delta) link of this parent instead of a base disk.
    pub parent: Option<Parent>,
    /// The CID to give the new disk instead of a fresh one: the CID of the disk whose content it
    /// will hold (a full copy of a disk is that disk's content, so deltas made against the
    /// original apply to the copy).
    pub cid: Option<u32>,
}

/// The parent a new delta link records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    /// `parentFileNameHint`: the parent's path, relative to the child's folder when they share it.
    pub hint: String,
    /// `parentCID`: the parent's CID now.
    pub cid: u32,
}

impl CreateOptions {
    /// Defaults: lsilogic adapter, VMware split size, 64 KiB grains, host storage, no overwrite.
    pub fn new(format: DiskFormat, capacity: u64) -> CreateOptions {
        CreateOptions {
            format,
            capacity,
            adapter: Adapter::LsiLogic,
            force: false,
            split_sectors: VMWARE_SPLIT_SECTORS,
            grain_sectors: DEFAULT_GRAIN_SECTORS,
            storage: HostStorage::shared(),
            zero_fill: true,
            parent: None,
            cid: None,
        }
    }
}

/// A disk being created: a writable link over temporarily named files.
///
/// The files are a [`NewFiles`] set, so the disk's name is reserved from the start (a second
/// creator of the same disk is refused as locked) and [`NewDisk::commit`] puts every file in place
/// through one intent record; dropping an uncommitted `NewDisk` removes its temporary files.
pub struct NewDisk {
    pub(crate) link: Option<Link>,
    pub(crate) files: NewFiles,
    /// Files written outside a link (a descriptor with no link over it) that commit must sync.
    pub(crate) unsynced: Vec<Arc<dyn crate::storage::Backing>>,
    /// The disk being replaced (`force`), held (locked) until the new one takes its place.
    pub(crate) replaced: Option<Link>,
}

impl std::fmt::Debug for NewDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewDisk").field("files", &self.files).finish()
    }
}

impl NewDisk {
    /// Reserves `path` for a new disk (see [`NewFiles::begin`]); with `force` an existing disk
    /// there is opened for writing (so it must not be in use or have children) and every file it
    /// owns is removed once the new disk is in place.
    pub(crate) fn begin(storage: &Arc<dyn Storage>, path: &Path, force: bool) -> Result<NewDisk> {
        let mut files = NewFiles::begin(storage, path, "create", force)?;
        let mut replaced = None;
        if force && storage.exists(path) {
            let o = crate::link::OpenOptions { write: true, storage: storage.clone(), ..Default::default() };
            match Link::open(path, &o) {
                Ok(old) => {
                    old.refuse_if_parent("replacing it")?;
                    files.replaces(old.files());
                    replaced = Some(old);
                }
                Err(e @ (Error::Locked { .. } | Error::Interrupted { .. } | Error::HasChildren { .. })) => {
                    return Err(e)
                }
                // A damaged disk cannot say which files it owns: only the names written are replaced.
                Err(_) => {}
            }
        }
        Ok(NewDisk { link: None, files, unsynced: Vec::new(), replaced })
    }

    /// The link to fill.
    pub fn link(&self) -> &Link {
        self.link.as_ref().expect("link is present until commit")
    }

    /// Final paths of every file of the disk, descriptor last.
    pub fn final_paths(&self) -> Vec<PathBuf> {
        self.files.final_paths()
    }

    /// Writes the final metadata of every extent without flushing it, and returns the `(final,
    /// temporary)` path of every file of the disk: from here the files hold the bytes they will
    /// have in place (nothing more may be written to the disk), so they can be read — hashed —
    /// while [`NewDisk::commit`] flushes them. Nothing is in place or durable until `commit`.
    pub fn seal(&self) -> Result<Vec<(PathBuf, PathBuf)>> {
        if let Some(link) = &self.link {
            link.seal()?;
        }
        Ok(self.files.paths())
    }

    /// Flushes everything, then puts the files in place (extents first, descriptor last) through
    /// one intent record, so that an interruption leaves no disk or the whole disk.
    pub fn commit(self) -> Result<PathBuf> {
        let NewDisk { link, files, unsynced, replaced } = self;
        if let Some(link) = link {
            link.close()?;
        }
        for b in unsynced {
            b.sync()?;
        }
        let main = files.final_paths().last().cloned().unwrap_or_default();
        drop(replaced);
        files.commit(Vec::new())?;
        Ok(main)
    }
}

/// Names of the files of a disk at `path` in `format` with `extents` data extents.
fn data_file_name(stem: &str, format: DiskFormat, i: usize) -> String {
    match format {
        DiskFormat::ZeroedThick | DiskFormat::EagerZeroedThick | DiskFormat::Thin | DiskFormat::MonoFlat => {
            format!("{stem}-flat.vmdk")
        }
        DiskFormat::TwoGbSparse => format!("{stem}-s{:03}.vmdk", i + 1),
        DiskFormat::TwoGbFlat => format!("{stem}-f{:03}.vmdk", i + 1),
        DiskFormat::MonoSparse | DiskFormat::StreamOptimized => format!("{stem}.vmdk"),
    }
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    crate::random_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A fresh `ddb.uuid` value: 16 hex pairs, with `-` between the 8th and 9th.
pub fn new_uuid() -> String {
    let mut b = [0u8; 16];
    crate::random_bytes(&mut b);
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}", h[..8].join(" "), h[8..].join(" "))
}

/// Creates a disk at `path` (the descriptor, or the single file of monosparse).
pub fn create(path: impl AsRef<Path>, opts: &CreateOptions) -> Result<NewDisk> {
    let path = path.as_ref();
    check_create_options(path, opts)?;
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::InvalidArgument(format!("{} is not a file path", path.display())))?;
    let stem = stem.strip_suffix(".vmdk").unwrap_or(&stem).to_string();
    let format = opts.format;
    let sizes = extent_sectors(opts.capacity / 512, format, opts.split_sectors);
    let data_final: Vec<PathBuf> =
        (0..sizes.len()).map(|i| path.with_file_name(data_file_name(&stem, format, i))).collect();
    let desc = new_descriptor(opts, &sizes, &data_final);

    // From here on, `guard` removes whatever was created if anything fails.
    let storage = &opts.storage;
    let mut guard = NewDisk::begin(storage, path, opts.force)?;
    let cache = Arc::new(GtCache::default());
    let mut extents: Vec<Box<dyn Extent>> = Vec::new();
    let mut embedded = None;
    for (fin, &n) in data_final.iter().zip(&sizes) {
        let b = guard.files.create(fin)?;
        let (extent, embedded_area) = create_extent(b, n, opts, &desc, &cache)?;
        extents.push(extent);
        embedded = embedded.or(embedded_area);
    }
    let mut separate = None;
    if format != DiskFormat::MonoSparse {
        let b = guard.files.create(path)?;
        let text = desc.to_text();
        b.write_all_at(text.as_bytes(), 0)?;
        separate = Some(b);
    }
    let container = if format == DiskFormat::MonoSparse { Container::Embedded } else { Container::Descriptor };
    guard.link = Some(Link::from_parts(path, storage, container, desc, separate, embedded, extents));
    Ok(guard)
}

/// Refuses options [`create`] cannot honour, before any file exists: the file name, the capacity,
/// grain and split sizes, and formats that are not created as writable links.
fn check_create_options(path: &Path, opts: &CreateOptions) -> Result<()> {
    crate::descriptor::check_file_name(path)?;
    let cap = opts.capacity;
    if !cap.is_multiple_of(512) {
        return Err(Error::InvalidArgument(format!("capacity {cap} is not a multiple of 512 bytes")));
    }
    if cap == 0 {
        return Err(Error::InvalidArgument("capacity must be greater than zero".into()));
    }
    if !opts.grain_sectors.is_power_of_two() || opts.grain_sectors < 8 || opts.grain_sectors > 2048 {
        return Err(Error::InvalidArgument(format!(
            "grain size {} sectors must be a power of two from 8 to 2048",
            opts.grain_sectors
        )));
    }
    if opts.split_sectors < opts.grain_sectors || !opts.split_sectors.is_multiple_of(opts.grain_sectors) {
        return Err(Error::InvalidArgument(format!(
            "split extent size {} sectors must be a multiple of the grain size",
            opts.split_sectors
        )));
    }
    let sectors = cap / 512;
    let format = opts.format;
    if format == DiskFormat::StreamOptimized {
        return Err(Error::InvalidArgument(
            "streamOptimized disks are written in one pass with create_stream, not as a writable link".into(),
        ));
    }
    if format.is_sparse()
        && sectors.min(if format == DiskFormat::TwoGbSparse { opts.split_sectors } else { u64::MAX }) > (1u64 << 32) - 1
    {
        return Err(Error::InvalidArgument(
            "a hosted sparse extent holds at most 2 TiB (use 2gbsparse or a flat format)".into(),
        ));
    }
    check_capacity(path, format, cap, opts.split_sectors)
}

/// The sectors of each extent of a disk of `sectors` in `format`: one extent, or extents of
/// `split_sectors` (the last one shorter) for the split formats.
fn extent_sectors(sectors: u64, format: DiskFormat, split_sectors: u64) -> Vec<u64> {
    match format {
        DiskFormat::TwoGbSparse | DiskFormat::TwoGbFlat => {
            let mut v = Vec::new();
            let mut left = sectors;
            while left > 0 {
                let n = left.min(split_sectors);
                v.push(n);
                left -= n;
            }
            v
        }
        _ => vec![sectors],
    }
}

/// The descriptor of a new disk: its createType, CID and parent, one extent line per data file
/// (`sizes[i]` sectors in `files[i]`), and the DDB keys ESXi (or Workstation) writes, in its order.
fn new_descriptor(opts: &CreateOptions, sizes: &[u64], files: &[PathBuf]) -> Descriptor {
    let format = opts.format;
    let sectors = opts.capacity / 512;
    let cid = opts.cid.filter(|c| *c != NO_CID).unwrap_or_else(|| new_cid(NO_CID));
    let mut desc = Descriptor::new(format.create_type(), cid);
    if let Some(p) = &opts.parent {
        desc.parent_cid = p.cid;
        desc.parent_file_name_hint = Some(p.hint.clone());
    }
    if format.is_esx() {
        desc.header_extra.push(crate::descriptor::Entry {
            key: "isNativeSnapshot".into(),
            value: "no".into(),
            quoted: true,
        });
    }
    let (kind, offset) = match format {
        DiskFormat::ZeroedThick | DiskFormat::EagerZeroedThick | DiskFormat::Thin => (ExtentType::Vmfs, None),
        DiskFormat::MonoFlat | DiskFormat::TwoGbFlat => (ExtentType::Flat, Some(0)),
        DiskFormat::MonoSparse | DiskFormat::TwoGbSparse | DiskFormat::StreamOptimized => (ExtentType::Sparse, None),
    };
    for (file, &n) in files.iter().zip(sizes) {
        desc.extents.push(ExtentLine {
            access: Access::ReadWrite,
            sectors: n,
            kind: kind.clone(),
            file: file.file_name().map(|s| s.to_string_lossy().into_owned()),
            offset,
            extra: vec![],
        });
    }
    if format.is_esx() {
        desc.encoding = Some("UTF-8".into());
    }
    let (c, h, s) = if format.is_esx() { opts.adapter.esx_geometry(sectors) } else { opts.adapter.geometry(sectors) };
    // ESXi writes the DDB keys in this (sorted) order.
    desc.set_ddb("adapterType", opts.adapter.ddb_value());
    desc.set_ddb("geometry.cylinders", c.to_string());
    desc.set_ddb("geometry.heads", h.to_string());
    desc.set_ddb("geometry.sectors", s.to_string());
    desc.set_ddb("longContentID", format!("{}{cid:08x}", random_hex(12)));
    if format == DiskFormat::Thin {
        desc.set_ddb("thinProvisioned", "1");
    }
    desc.set_ddb("uuid", new_uuid());
    desc.set_ddb("virtualHWVersion", if format.is_esx() { ESX_HW_VERSION } else { "4" });
    if !format.is_esx() {
        desc.set_ddb("toolsVersion", "2147483647");
    }
    desc
}

/// Where a monosparse file keeps its embedded descriptor: the file, the area's byte offset and length.
type EmbeddedArea = (Arc<dyn Backing>, u64, u64);

/// Lays out one new data file `b` of `n` sectors (a sparse header and tables, or a flat file sized,
/// allocated or zeroed as the format says) and opens it as a writable extent; for monosparse, also
/// where its embedded descriptor area is (`(file, offset, length)`).
fn create_extent(
    b: Arc<dyn Backing>,
    n: u64,
    opts: &CreateOptions,
    desc: &Descriptor,
    cache: &Arc<GtCache>,
) -> Result<(Box<dyn Extent>, Option<EmbeddedArea>)> {
    let format = opts.format;
    let bytes = n * 512;
    if let DiskFormat::MonoSparse | DiskFormat::TwoGbSparse = format {
        let mono = format == DiskFormat::MonoSparse;
        let layout = Layout::plan(n, opts.grain_sectors, if mono { EMBEDDED_DESCRIPTOR_SECTORS } else { 0 });
        let text = desc.to_text();
        sparse::create(&b, &layout, mono.then_some(text.as_bytes()))?;
        let embedded =
            mono.then(|| (b.clone(), layout.header.descriptor_offset * 512, layout.header.descriptor_size * 512));
        return Ok((Box::new(SparseExtent::open(b, layout.header, Some(bytes), cache.clone(), true)?), embedded));
    }
    b.set_len(bytes)?;
    match format {
        DiskFormat::Thin => {}
        DiskFormat::EagerZeroedThick => {
            b.allocate(0, bytes)?;
            if opts.zero_fill {
                write_zeros(b.as_ref(), 0, bytes)?;
            }
        }
        _ => b.allocate(0, bytes)?,
    }
    let kind = if format.is_esx() { ExtentKind::Vmfs } else { ExtentKind::Flat };
    Ok((Box::new(FlatExtent::open(b, 0, bytes, kind, true)?), None))
}

/// The data file names a disk at `path` in `format` would use (for messages and `-U`).
pub fn planned_files(path: &Path, format: DiskFormat, capacity: u64, split_sectors: u64) -> Vec<PathBuf> {
    let stem = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = stem.strip_suffix(".vmdk").unwrap_or(&stem).to_string();
    let n = match format {
        DiskFormat::TwoGbSparse | DiskFormat::TwoGbFlat => (capacity / 512).div_ceil(split_sectors) as usize,
        _ => 1,
    };
    let mut v: Vec<PathBuf> = (0..n).map(|i| path.with_file_name(data_file_name(&stem, format, i))).collect();
    if !format.is_single_file() {
        v.push(path.to_path_buf());
    }
    v
}

/// A streamOptimized file being written: an empty file under a temporary name, and the header
/// and embedded descriptor it must start with. Append the stream to [`NewStream::backing`] (with
/// [`StreamWriter`](crate::extent::stream::writer::StreamWriter) over a
/// [`BackingSink`](crate::extent::stream::writer::BackingSink)), then [`NewStream::commit`]. The file is
/// held by a [`NewDisk`] without a link (the one place temporary files are handled): dropping a
/// `NewStream` without committing removes it.
#[derive(Debug)]
pub struct NewStream {
    disk: NewDisk,
    backing: Arc<dyn Backing>,
    header: SparseHeader,
    descriptor: String,
}

impl NewStream {
    /// The (temporarily named) file to append to.
    pub fn backing(&self) -> &Arc<dyn Backing> {
        &self.backing
    }

    /// The header to start with (`gdOffset = GD_AT_END`).
    pub fn header(&self) -> &SparseHeader {
        &self.header
    }

    /// The embedded descriptor text.
    pub fn descriptor(&self) -> &str {
        &self.descriptor
    }

    /// The final path.
    pub fn final_paths(&self) -> Vec<PathBuf> {
        self.disk.final_paths()
    }

    /// Syncs the file, renames it into place and syncs the folder.
    pub fn commit(self) -> Result<PathBuf> {
        self.backing.sync()?;
        self.disk.commit()
    }
}

/// The header and embedded descriptor of a streamOptimized disk of `capacity` bytes whose file is
/// called `file_name`: createType `streamOptimized`, the adapter (VMware tools expect `lsilogic`),
/// geometry, `ddb.toolsVersion`, `ddb.virtualHWVersion`, the CID `cid` (a fresh one when `None`), a fresh UUID and longContentID.
pub fn stream_layout(
    file_name: &str,
    capacity: u64,
    adapter: Adapter,
    grain_sectors: u64,
    cid: Option<u32>,
) -> Result<(SparseHeader, String)> {
    if capacity == 0 || !capacity.is_multiple_of(512) {
        return Err(Error::InvalidArgument(format!("capacity {capacity} must be a positive multiple of 512 bytes")));
    }
    if !grain_sectors.is_power_of_two() || !(8..=2048).contains(&grain_sectors) {
        return Err(Error::InvalidArgument(format!(
            "grain size {grain_sectors} sectors must be a power of two from 8 to 2048"
        )));
    }
    let sectors = capacity / 512;
    if sectors > crate::descriptor::MAX_SECTORS {
        return Err(Error::InvalidArgument(format!("capacity {capacity} is too large")));
    }
    let cid = cid.filter(|c| *c != NO_CID).unwrap_or_else(|| new_cid(NO_CID));
    let mut desc = Descriptor::new(CreateType::StreamOptimized, cid);
    desc.extents.push(ExtentLine {
        access: Access::ReadWrite,
        sectors,
        kind: ExtentType::Sparse,
        file: Some(file_name.to_string()),
        offset: None,
        extra: vec![],
    });
    let (c, h, s) = adapter.geometry(sectors);
    desc.set_ddb("adapterType", adapter.ddb_value());
    desc.set_ddb("geometry.cylinders", c.to_string());
    desc.set_ddb("geometry.heads", h.to_string());
    desc.set_ddb("geometry.sectors", s.to_string());
    desc.set_ddb("longContentID", format!("{}{cid:08x}", random_hex(12)));
    desc.set_ddb("uuid", new_uuid());
    desc.set_ddb("virtualHWVersion", "4");
    desc.set_ddb("toolsVersion", "2147483647");
    let text = desc.to_text();
    if text.len() as u64 > EMBEDDED_DESCRIPTOR_SECTORS * 512 {
        return Err(Error::InvalidArgument(format!("descriptor of {} bytes does not fit its 20 sectors", text.len())));
    }
    Ok((stream_header(sectors, grain_sectors, EMBEDDED_DESCRIPTOR_SECTORS), text))
}

/// Creates the (empty, temporarily named) file of a streamOptimized disk at `path`, with the
/// layout of [`stream_layout`] for `opts.capacity`, `opts.adapter` and `opts.grain_sectors`.
pub fn create_stream(path: impl AsRef<Path>, opts: &CreateOptions) -> Result<NewStream> {
    let path = path.as_ref();
    crate::descriptor::check_file_name(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::InvalidArgument(format!("{} is not a file path", path.display())))?;
    let (header, descriptor) = stream_layout(&name, opts.capacity, opts.adapter, opts.grain_sectors, opts.cid)?;
    check_capacity(path, DiskFormat::StreamOptimized, opts.capacity, opts.split_sectors)?;
    let mut disk = NewDisk::begin(&opts.storage, path, opts.force)?;
    let backing = disk.files.create(path)?;
    Ok(NewStream { disk, backing, header, descriptor })
}

/// Creates an ESX delta link (the modern snapshot shape): `NAME.vmdk`, a descriptor with
/// `createType="vmfsSparse"` naming `parent`, and `NAME-delta.vmdk`, an empty COWD redo log with
/// one-sector grains (the ESX default). Built under temporary names like [`create`].
pub fn create_delta(path: impl AsRef<Path>, capacity: u64, parent: &Parent, opts: &CreateOptions) -> Result<NewDisk> {
    use crate::extent::cowd::{self, CowdHeader};
    let path = path.as_ref();
    crate::descriptor::check_file_name(path)?;
    if capacity == 0 || !capacity.is_multiple_of(512) {
        return Err(Error::InvalidArgument(format!("capacity {capacity} must be a positive multiple of 512 bytes")));
    }
    let sectors = u32::try_from(capacity / 512).map_err(|_| {
        Error::InvalidArgument("a vmfsSparse (COWD) delta holds at most 2 TiB; larger disks need seSparse".into())
    })?;
    let stem = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = stem.strip_suffix(".vmdk").unwrap_or(&stem).to_string();
    let data_name = format!("{stem}-delta.vmdk");
    let data_final = path.with_file_name(&data_name);
    let cid = opts.cid.filter(|c| *c != NO_CID).unwrap_or_else(|| new_cid(NO_CID));
    let mut desc = Descriptor::new(CreateType::VmfsSparse, cid);
    desc.parent_cid = parent.cid;
    desc.parent_file_name_hint = Some(parent.hint.clone());
    desc.header_extra.push(crate::descriptor::Entry {
        key: "isNativeSnapshot".into(),
        value: "no".into(),
        quoted: true,
    });
    desc.extents.push(ExtentLine {
        access: Access::ReadWrite,
        sectors: sectors as u64,
        kind: ExtentType::VmfsSparse,
        file: Some(data_name),
        offset: None,
        extra: vec![],
    });
    desc.set_ddb("longContentID", format!("{}{cid:08x}", random_hex(12)));
    let storage = &opts.storage;
    let mut guard = NewDisk::begin(storage, path, opts.force)?;
    let b = guard.files.create(&data_final)?;
    cowd::create(&b, &CowdHeader::new(sectors, 1, None))?;
    let ext = SparseExtent::open_cowd(b, Some(capacity), Arc::new(GtCache::default()), true)?;
    let d = guard.files.create(path)?;
    d.write_all_at(desc.to_text().as_bytes(), 0)?;
    guard.link = Some(Link::from_parts(path, storage, Container::Descriptor, desc, Some(d), None, vec![Box::new(ext)]));
    Ok(guard)
}

/// Refuses, before any file is created, a capacity that a disk in `format` cannot hold: not a
/// positive number of whole sectors, beyond a file offset ([`MAX_FILE_BYTES`]), a hosted sparse
/// extent of more than 2^32 − 1 sectors, or a split disk (extents of `split_sectors`) needing more
/// than [`MAX_EXTENTS`] extents (a descriptor we could not read back). Errors are
/// [`Error::Unsupported`] on `path`: the capacity usually comes from a source being cloned, and a
/// source the target cannot hold is an unsupported input.
pub fn check_capacity(path: &Path, format: DiskFormat, capacity: u64, split_sectors: u64) -> Result<()> {
    let refuse = |what: String| Err(Error::unsupported(path, what));
    if capacity == 0 || !capacity.is_multiple_of(512) {
        return refuse(format!(
            "a capacity of {capacity} bytes: a disk holds a positive number of whole 512-byte sectors"
        ));
    }
    if capacity > MAX_FILE_BYTES {
        return refuse(format!(
            "a capacity of {capacity} bytes is beyond what a file can hold (file offsets end at {MAX_FILE_BYTES} bytes)"
        ));
    }
    let sectors = capacity / 512;
    let split = matches!(format, DiskFormat::TwoGbSparse | DiskFormat::TwoGbFlat);
    let extent_sectors = if split { sectors.min(split_sectors.max(1)) } else { sectors };
    if format.is_sparse() && extent_sectors > u64::from(u32::MAX) {
        return refuse(format!(
            "a capacity of {capacity} bytes is beyond what a {} disk can hold (a hosted sparse extent holds at most 2 TiB; use 2gbsparse or a flat format)",
            format.name()
        ));
    }
    let extents = sectors.div_ceil(extent_sectors);
    if extents > MAX_EXTENTS as u64 {
        return refuse(format!(
            "a capacity of {capacity} bytes is beyond what a {} disk can hold ({extents} extents of {extent_sectors} sectors; a descriptor holds at most {MAX_EXTENTS}; use a flat or monolithic format)",
            format.name()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_names_its_create_type() {
        let names: Vec<String> = DiskFormat::EVERY.iter().map(|f| f.create_type().as_str().to_string()).collect();
        let want = [
            "vmfs",
            "vmfs",
            "vmfs",
            "monolithicSparse",
            "twoGbMaxExtentSparse",
            "monolithicFlat",
            "twoGbMaxExtentFlat",
            "streamOptimized",
        ];
        assert_eq!(names, want);
        assert_eq!(DiskFormat::EVERY[..7], DiskFormat::ALL);
    }

    #[test]
    fn geometry_follows_vmware() {
        assert_eq!(Adapter::LsiLogic.geometry(83_886_080), (5221, 255, 63));
        assert_eq!(Adapter::Ide.geometry(18_432_000), (16383, 16, 63));
        // ESXi's: by capacity for SCSI adapters, IDE uncapped.
        assert_eq!(Adapter::LsiLogic.esx_geometry(4096), (2, 64, 32));
        assert_eq!(Adapter::BusLogic.esx_geometry(1023 * 2048), (1023, 64, 32));
        assert_eq!(Adapter::BusLogic.esx_geometry(1024 * 2048), (512, 128, 32));
        assert_eq!(Adapter::Pvscsi.esx_geometry(2046 * 2048), (1023, 128, 32));
        assert_eq!(Adapter::LsiSas.esx_geometry(2047 * 2048), (260, 255, 63));
        assert_eq!(Adapter::Ide.esx_geometry(75_497_472), (74898, 16, 63));
        assert_eq!(Adapter::LsiLogic.esx_geometry(1), (1, 64, 32));
    }

    #[test]
    fn sealed_files_hold_the_bytes_they_have_in_place() {
        let d = tempfile::tempdir().unwrap();
        // The three formats of a new disk, and an ESX delta (vmfsSparse, as exports of changes are).
        let formats = [Some(DiskFormat::MonoSparse), Some(DiskFormat::TwoGbSparse), Some(DiskFormat::Thin), None];
        for (i, format) in formats.into_iter().enumerate() {
            let path = d.path().join(format!("d{i}.vmdk"));
            let nd = match format {
                Some(f) => create(&path, &CreateOptions::new(f, 8 << 20)).unwrap(),
                None => {
                    let parent = Parent { hint: "base.vmdk".into(), cid: 7 };
                    let opts = CreateOptions::new(DiskFormat::MonoSparse, 8 << 20);
                    create_delta(&path, 8 << 20, &parent, &opts).unwrap()
                }
            };
            // Whole sectors: a delta opened without its parent takes no partial grain.
            nd.link().write_at(&[7u8; 70_144], 3 << 20).unwrap();
            let mut last = [0u8; 512];
            last[508..].copy_from_slice(b"tail");
            nd.link().write_at(&last, (8 << 20) - 512).unwrap();
            let sealed: Vec<(PathBuf, Vec<u8>)> =
                nd.seal().unwrap().into_iter().map(|(fin, now)| (fin, std::fs::read(now).unwrap())).collect();
            assert_eq!(sealed.iter().map(|s| s.0.clone()).collect::<Vec<_>>(), nd.final_paths());
            nd.commit().unwrap();
            for (fin, bytes) in sealed {
                assert!(std::fs::read(&fin).unwrap() == bytes, "{format:?}: {} changed after seal", fin.display());
            }
            let l = Link::open(&path, &crate::link::OpenOptions::read()).unwrap();
            assert!(l.extents().iter().all(|e| !e.unclean), "{format:?}: sealed extents are clean");
            let mut back = vec![0u8; 4];
            l.read_at(&mut back, (8 << 20) - 4).unwrap();
            assert_eq!(&back, b"tail");
        }
    }

    #[test]
    fn uuid_shape() {
        let u = new_uuid();
        assert_eq!(u.len(), 47);
        assert_eq!(&u[23..24], "-");
    }

    #[test]
    fn capacities_a_format_cannot_hold_are_refused() {
        use crate::descriptor::MAX_SECTORS;
        let p = Path::new("d.vmdk");
        let split = VMWARE_SPLIT_SECTORS;
        check_capacity(p, DiskFormat::Thin, MAX_FILE_BYTES / 512 * 512, split).unwrap();
        check_capacity(p, DiskFormat::MonoSparse, u64::from(u32::MAX) * 512, split).unwrap();
        check_capacity(p, DiskFormat::TwoGbSparse, MAX_EXTENTS as u64 * split * 512, split).unwrap();
        let cases = [
            (DiskFormat::Thin, 0, "whole 512-byte sectors"),
            (DiskFormat::MonoFlat, 1000, "whole 512-byte sectors"),
            (DiskFormat::Thin, MAX_SECTORS * 512, "beyond what a file can hold"),
            (DiskFormat::ZeroedThick, (MAX_FILE_BYTES / 512 + 1) * 512, "file offsets end at"),
            (DiskFormat::StreamOptimized, u64::MAX / 512 * 512, "beyond what a file can hold"),
            (DiskFormat::MonoSparse, (u64::from(u32::MAX) + 1) * 512, "at most 2 TiB"),
            (DiskFormat::TwoGbSparse, (MAX_EXTENTS as u64 * split + 1) * 512, "at most 4096"),
            (DiskFormat::TwoGbFlat, 1 << 60, "at most 4096"),
        ];
        for (format, cap, says) in cases {
            let e = check_capacity(p, format, cap, split).unwrap_err();
            assert!(matches!(e, Error::Unsupported { .. }), "{format:?} {cap}: {e:?}");
            assert!(e.to_string().contains(says) && e.to_string().contains(&cap.to_string()), "{e}");
        }
    }
}
