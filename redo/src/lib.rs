//! Chains of VMDK links: a base disk and the REDO (delta) links above it.
//!
//! [`Chain::open`] opens a link and follows `parentFileNameHint` down to the base, opening every
//! link below the top read-only. Reads go through the top link, which falls through to its parent
//! where it holds nothing; [`Chain::map`] merges the links' allocation maps top-down.

#![warn(missing_docs)]

pub mod chain;

pub use chain::{Chain, ChainError};
