//! A read-only reader of VMFS3, VMFS5 and VMFS6 volumes, from one or more devices or images.
//!
//! ```text
//! devices ─ partition.rs (MBR 0xFB, GPT VMFS type, bare) ─ lvm.rs (LVM3–6, PE tables, spanned volumes)
//!   └ logical volume ─ fsdesc.rs (FS descriptor at 2 MiB) ─ geometry.rs (layouts per generation)
//!        └ volume.rs: bootstrap of the system files (resource.rs) from `.fdc.sf`, path lookup
//!             filedesc.rs (descriptors) ─ blockmap.rs (every block-map kind) ─ dir.rs (flat, hashed)
//!             file.rs (positional reads, extent maps) ─ storage.rs (the vmdk storage seam)
//! ```
//!
//! Every on-disk structure is bounds-checked before use and nothing is allocated from an unchecked
//! header field; pointer chains have depth limits, symbolic links a hop limit, LVM metadata chains a
//! region limit. Holes and to-be-zeroed blocks read as zeros. Locks are ignored and journals are not
//! replayed: read snapshots or quiet volumes (live heartbeats are reported).
//!
//! ```no_run
//! use vmkfs::vmfs::Volume;
//! let vol = Volume::open(&["/dev/sdb"])?;
//! for e in vol.read_dir("/")? {
//!     println!("{}", e.name);
//! }
//! let f = vol.open_file("/vm/vm-flat.vmdk")?;
//! for x in f.extents(0, f.len())? {
//!     println!("{x:?}");
//! }
//! # Ok::<(), vmkfs::vmfs::VmfsError>(())
//! ```

#![forbid(unsafe_code)]

pub mod address;
pub mod blockmap;
pub mod device;
pub mod dir;
pub mod error;
pub mod file;
pub mod filedesc;
pub mod fsdesc;
pub mod geometry;
pub mod heartbeat;
mod inner;
mod le;
pub mod lvm;
pub mod partition;
pub mod resource;
pub mod storage;
pub mod volume;

pub use blockmap::{DeviceRun, DeviceRunKind};
pub use device::{DeviceRead, HostDevice, MemDevice};
pub use error::{Result, VmfsError};
pub use file::File;
pub use filedesc::{DiskLock, FileDesc, FileKind, RdmInfo};
pub use fsdesc::{FsDescriptor, Generation};
pub use heartbeat::Heartbeat;
pub use rdm::ReadAt;
pub use storage::{VmfsBacking, VmfsStorage};
pub use volume::{DeviceInfo, DirEntry, Stat, Usage, Volume};
