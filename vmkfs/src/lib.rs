//! vmkfs: a userspace, embeddable vmkfstools for VMDK disks.
//!
//! This crate is what backup tools embed. It re-exports the lower layers ([`vmdk`] for one link,
//! [`redo`] for chains, [`rdm`] for raw devices) and adds the disk operations: [`clone`] (import and
//! convert between any formats), [`info`] (what a disk is), [`check`] (a disk and its chain) and the helpers the `vmkfs` command uses.

#![warn(missing_docs)]

pub mod check;
pub mod clone;
pub mod engine;
pub mod error;
pub mod info;
pub mod ops;
pub mod phase;
pub mod rdm_ops;
pub mod redo_ops;
pub mod repo;
pub mod size;
pub mod stream;
pub mod vm;
pub mod vmfs;

pub use error::{Error, Result};
pub use rdm;
pub use redo;
pub use vmdk;
