//! Whole virtual machines: the `.vmx` model, backup catalogs, and the backup and restore plans
//! behind `vmkfs-backup` and `vmkfs-restore` (the vcbMounter / vcbRestore workflow, offline).
//!
//! ```text
//! vmx.rs (the .vmx model) ── place.rs (host folders, VMFS volumes, [datastore] paths)
//!   backup.rs: per disk snapshot → export (clone engine) → commit, small files, catalog
//!   restore.rs: the chain of backups → verified → staged → put in place by one intent record
//!   verify.rs: hashes, disks, catalogs
//! catalog.rs (the catalog text, documented in CATALOG.md)   blocks.rs (block hashes)
//! plain.rs (plain files through the copy engine, SHA-256 as they pass)   kv.rs (`key = "value"`)
//! ```
//!
//! **Every disk goes through the disk operations.** A backup snapshots each disk
//! ([`redo::snapshot()`]), exports the now static chain below the snapshot with the clone engine
//! ([`crate::clone::clone_chain_through`]; an incremental pass with
//! [`crate::redo_ops::export_delta`] from a change-tracking link, or by comparing block hashes),
//! then commits the snapshot ([`crate::redo_ops::commit`]) or keeps it as the change-tracking link.
//! A restore creates each disk with the clone engine and applies increments with
//! [`crate::redo_ops::apply_delta`]. Plain files go through the engine as well ([`plain`]).
//!
//! **Transactions.** A backup is built in a hidden folder beside its destination
//! (`.DEST.vmkfs-PID-TAG.tmp`, a [`vmdk::txn::temp_name`]) and renamed into place, whole, when
//! complete: that rename is the backup's commit point. The changes to the source VM — snapshot
//! links, then after the commit point the commits and the `.vmx` rewrite of a kept tracking link —
//! are covered by an intent record on the `.vmx` (its data phase names the backup command, so
//! every `vmkfs` command on the VM's disks is refused until the backup is re-run) and by a journal
//! beside the `.vmx` (`.NAME.vmx.vmkfs-backup`) listing what was done. The next `vmkfs-backup` of
//! the VM finishes an interrupted run: before the commit point it rolls back (discards the
//! snapshot links, removes the hidden folder), after it it rolls forward (commits, rewrites).
//! So a killed backup leaves no backup or a complete one, and a source VM that reads as before.
//!
//! A restore stages every file it writes in a hidden folder inside each target folder, then puts
//! them all in place through one intent record whose last step is the `.vmx`: interrupted before
//! that step, the next command on any of those files undoes the whole restore; after it, finishes
//! it. Nothing is ever half-restored.

pub mod backup;
pub mod blocks;
pub mod catalog;
pub mod in_repo;
pub mod kv;
pub mod place;
pub mod plain;
pub mod restore;
pub mod verify;
pub mod vmx;

use std::path::PathBuf;

use crate::error::{Error, Result};

/// What a backup or restore tells its caller as it goes (the command prints these as text lines
/// or JSON events).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A step begins (`disk` names the device key when it is about one disk).
    Step {
        /// The device key.
        disk: Option<String>,
        /// What happens.
        what: String,
    },
    /// Progress of a copy.
    Progress {
        /// The device key (or file) being copied.
        disk: String,
        /// Bytes done.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// Something the user should know (a disk skipped, an interrupted run finished).
    Note {
        /// The device key, when it is about one disk.
        disk: Option<String>,
        /// The note.
        what: String,
    },
}

/// Receives [`Event`]s.
pub trait Reporter {
    /// One event.
    fn event(&mut self, e: Event);
}

/// A reporter that drops everything.
#[derive(Debug, Default)]
pub struct Quiet;

impl Reporter for Quiet {
    fn event(&mut self, _e: Event) {}
}

/// The folder a `-r DEST` / `-s SRC` names: a path, or `file:///path`. Repository and network
/// transports are refused with a message naming what is supported.
pub fn folder_location(given: &str) -> Result<PathBuf> {
    if let Some(p) = given.strip_prefix("file://") {
        if !p.starts_with('/') {
            return Err(Error::Usage(format!(
                "{given:?}: a file:// location needs an absolute path (file:///backups/vm)"
            )));
        }
        return Ok(PathBuf::from(p));
    }
    if given.starts_with("restic:") {
        return Err(Error::Usage(format!(
            "{given:?}: a restic repository is not a folder here (vmkfs-backup -r and vmkfs-restore -s take restic:PATH); give a folder (a path or file:///path)"
        )));
    }
    if let Some((scheme, _)) = given.split_once("://") {
        return Err(Error::Usage(format!(
            "{given:?}: the {scheme}:// transport is not supported; give a folder (a path or file:///path)"
        )));
    }
    if given.is_empty() {
        return Err(Error::Usage("an empty location".into()));
    }
    Ok(PathBuf::from(given))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(folder_location("/b/vm1").unwrap(), PathBuf::from("/b/vm1"));
        assert_eq!(folder_location("file:///b/vm1").unwrap(), PathBuf::from("/b/vm1"));
        for bad in ["file://rel", "restic:/repo", "nfs://host/x", "sftp://h/x", ""] {
            assert!(matches!(folder_location(bad), Err(Error::Usage(_))), "{bad}");
        }
    }
}
