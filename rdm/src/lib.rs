//! Raw devices and the files that stand in for them.
//!
//! This crate is the bottom of the vmkfs stack. [`device::Device`] opens a block device or a regular
//! file and offers positional I/O (`pread`/`pwrite` on `&self`, so many threads can share one handle),
//! the device size (by ioctl for block devices), allocation queries (`SEEK_DATA`/`SEEK_HOLE`),
//! space reservation and hole punching, and advisory write locks.
//!
//! RDM mapping files (the `-rdm.vmdk` / `-rdmp.vmdk` records that name a device by a stable
//! identity) build on this.

#![warn(missing_docs)]

pub mod device;

pub use device::{Device, OpenMode};
