//! VMDK virtual disks, one link at a time.
//!
//! - [`descriptor`]: the text descriptor (lenient parser, canonical writer).
//! - [`detect`]: what a file is (descriptor, sparse, stream, COWD, seSparse, mapping, raw image),
//!   with damaged signatures reported rather than taken for raw images.
//! - [`extent`]: each extent kind (flat, zero, hosted sparse, streamOptimized, COWD, seSparse).
//! - [`Link`]: a descriptor plus its extents, with positional reads and writes from many threads,
//!   the [`AllocMap`] of where data is, and the unclean-shutdown and CID rules.
//! - [`create`]: new disks in every format we write, built under temporary names.
//! - [`storage`]: the seam through which a link reaches its files.
//! - [`rawdev`]: raw device mappings (`VMFSRDM`, `VMFSRAW` extents), creating them, and
//!   [`rdm_mode`], the RDM mode of a disk.

#![warn(missing_docs)]

pub mod check;
pub mod create;
pub mod descriptor;
pub mod detect;
pub mod error;
pub mod extent;
pub mod family;
pub mod findings;
pub mod link;
pub mod map;
pub mod rawdev;
pub mod stack;
pub mod storage;
pub mod txn;

pub use create::{Adapter, CreateOptions, DiskFormat, NewDisk, NewStream};
pub use descriptor::{CreateType, Descriptor};
pub use error::{Error, Result};
pub use extent::device::rdm_mode;
pub use link::{Container, Link, OpenOptions};
pub use map::{AllocMap, Run, State};
pub use rdm::Mode as RdmMode;
pub use rdm::ReadAt;
pub use stack::Stack;
pub use storage::{Backing, HostStorage, Storage};

/// Bytes per sector.
pub const SECTOR: u64 = 512;

/// A random `u32` from the operating system.
pub(crate) fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    random_bytes(&mut b);
    u32::from_le_bytes(b)
}

/// Fills `buf` with random bytes from the operating system.
pub(crate) fn random_bytes(buf: &mut [u8]) {
    if getrandom::fill(buf).is_err() {
        // No OS randomness: fall back to time and address entropy (CIDs only need to differ).
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let mut x = (t as u64) ^ (buf.as_ptr() as u64).rotate_left(32);
        for b in buf.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
}
