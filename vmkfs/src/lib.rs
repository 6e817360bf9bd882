//! vmkfs: a userspace, embeddable vmkfstools for VMDK disks.
//!
//! This crate is what backup and migration tools embed. Start with the facade at the crate root:
//!
//! - [`Disk`]: open a disk or a chain of REDO links read-only or writable; capacity, format, chain
//!   depth, CID, [`Disk::info`]; [`Disk::read_at`] / [`Disk::write_at`] at byte offsets; the
//!   allocated ranges ([`Disk::allocated`], [`Disk::runs`]) and the blocks changed since a link
//!   ([`Disk::changed_since`]).
//! - [`create()`], [`snapshot()`] (add a REDO link), [`commit()`] (merge one into its parent),
//!   [`clone()`](fn@clone) (any disk or chain into any format, with progress and cancellation).
//! - [`Chain`], [`ChangeMap`], [`DiskFormat`]: the types those speak, re-exported.
//!
//! ```
//! # fn main() -> vmkfs::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let base = dir.path().join("vm.vmdk");
//! vmkfs::create(&base, vmkfs::DiskFormat::MonoSparse, 8 << 20)?;
//! let top = vmkfs::snapshot(&base)?;                    // the base is now static
//! vmkfs::Disk::open_writable(&top)?.write_at(&[0x5a; 4096], 1 << 20)?;
//! let disk = vmkfs::Disk::open(&top)?;
//! for (offset, len) in disk.changed_since(Some(&base))?.ranges() {
//!     let mut buf = vec![0; len as usize];
//!     disk.read_at(&mut buf, offset)?;                  // what an incremental backup copies
//! }
//! # Ok(()) }
//! ```
//!
//! Underneath are the modules the `vmkfs` command uses ([`clone`](mod@clone), [`info`], [`check`],
//! [`ops`], [`redo_ops`], [`vm`], [`vmfs`], …) and the lower layers, re-exported: [`vmdk`] for
//! one link, [`redo`] for chains, [`rdm`] for raw devices. The README's "Embedding" section says
//! which of these the semver promise covers.

#![warn(missing_docs)]

pub mod check;
pub mod clone;
pub mod copy_out;
pub mod engine;
pub mod error;
pub mod facade;
pub mod info;
pub mod interrupt;
pub mod mount;
pub mod nbd;
pub mod op;
pub mod ops;
pub mod phase;
pub mod rdm_ops;
pub mod redo_ops;
pub mod repo;
pub mod report;
pub mod rw;
pub mod size;
pub mod stream;
pub mod text;
pub mod vm;
pub mod vmfs;

pub use error::{Error, Result};
pub use facade::{clone, commit, create, snapshot, ByteRange, Disk};
pub use rdm;
pub use redo;
pub use redo::{Chain, ChangeMap};
pub use vmdk;
pub use vmdk::create::DiskFormat;
