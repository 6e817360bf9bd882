//! Chains of VMDK links: a base disk and the REDO (delta) links above it.
//!
//! - [`chain`]: open a chain in any of its shapes (hosted, modern ESX `-00000N.vmdk`, ESX 2
//!   `.REDO`), read through it, explain what is broken ([`chain::diagnose`]).
//! - [`snapshot`](mod@snapshot): add a REDO link on top, discard the top link.
//! - [`commit`]: merge a REDO link into its parent, crash-safely.
//! - [`changemap`]: the change map of a link (its changed blocks, as runs), unions and differences, and a
//!   checksummed serialization.

#![warn(missing_docs)]

pub mod chain;
pub mod changemap;
pub mod commit;
pub mod snapshot;

pub use chain::{diagnose, Chain, ChainError, LinkReport};
pub use changemap::{ChangeMap, ChangeMapError};
pub use commit::{commit_with, CommitReport};
pub use snapshot::{discard, snapshot, RedoError};
