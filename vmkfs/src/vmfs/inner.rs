//! The shared state of an open volume, below everything that reads through it: the logical
//! volume, the FS descriptor, the geometry and the system files bootstrapped from `.fdc.sf`.
//! It has no methods of its own: [`super::blockmap`] maps files' blocks over it (`BlockMap`),
//! [`super::volume`] looks paths up over it (`Namespace`), and [`super::file`] and
//! [`super::heartbeat`] read through it.

use super::filedesc::FileDesc;
use super::fsdesc::FsDescriptor;
use super::geometry::Geometry;
use super::lvm::LogicalVolume;
use super::resource::ResourceMeta;

/// A system resource file: its descriptor and its metadata header.
#[derive(Debug, Clone)]
pub(crate) struct SysFile {
    pub fd: FileDesc,
    pub meta: ResourceMeta,
}

/// Shared state of an open volume.
#[derive(Debug)]
pub(crate) struct Inner {
    pub lv: LogicalVolume,
    pub fs: FsDescriptor,
    pub g: Geometry,
    pub place: String,
    pub fdc: SysFile,
    pub sbc: Option<SysFile>,
    pub pbc: Option<SysFile>,
    pub pb2: Option<SysFile>,
    pub fbb: Option<SysFile>,
    /// VMFS6: the small-file-block child header of `.fbb.sf`.
    pub sfb: Option<ResourceMeta>,
    pub sfb_per_cluster: u64,
}
