//! Raw devices and the files that stand in for them.
//!
//! This crate is the bottom of the vmkfs stack. [`ReadAt`] is the one positional-read trait every
//! layer's readers implement. [`device::Device`] opens a block device or a regular
//! file and offers positional I/O (`pread`/`pwrite` on `&self`, so many threads can share one handle),
//! the device size (by ioctl for block devices), allocation queries (`SEEK_DATA`/`SEEK_HOLE`),
//! space reservation, hole punching and range zeroing, and exclusive write locks.
//!
//! RDM mapping files (the `-rdm.vmdk` / `-rdmp.vmdk` records that name a device by a stable
//! identity) build on this: [`identity`] reads and compares what makes a device the same device
//! (WWID, serial, `/dev/disk/by-id` names, size; canonical path and size for a file), and
//! [`mapping`] is the record itself (layout in `rdm/FORMAT.md`) and the search that finds the device
//! again, refusing one whose identity or size changed.

#![warn(missing_docs)]

pub mod device;
pub mod identity;
pub mod mapping;
pub mod read_at;

pub use device::{lock_holders, process_alive, rename_noreplace, Device, LockHolder, OpenMode};
pub use identity::{DeviceKind, Difference, FoundBy, Identity};
pub use mapping::{Mapping, MappingError, Mode, Resolved};
pub use read_at::{ReadAt, Shifted};
