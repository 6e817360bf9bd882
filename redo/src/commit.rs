//! Committing a REDO link into its parent, crash-safely.
//!
//! The protocol (every step leaves a chain that reads the same data, and re-running finishes it):
//!
//! 1. Open the parent for writing **without changing its CID**, so the link's `parentCID` stays
//!    valid while the parent's content changes underneath it. The link still holds everything it
//!    held, and it sits above the parent, so reads through it are unchanged at every moment.
//! 2. Copy the link's own data (and its known-zero ranges) into the parent; flush. Copying again is
//!    harmless, so a rerun after a crash simply starts over.
//! 3. Choose the parent's next CID and record it in the parent as `ddb.vmkfs.pendingCID` (reused if a
//!    previous run already chose one). Chains accept a child whose `parentCID` is either value.
//! 4. Re-point the link's children at the parent (hint and `parentCID` = the pending CID); an ESX 2
//!    child `LINK.REDO` is renamed over the link, which atomically makes the parent its parent.
//! 5. Delete the link's files (the descriptor first).
//! 6. Give the parent its new CID and drop the pending key; close it cleanly.
//!
//! Other children of the same parent see its CID change and are refused, as VMware refuses them:
//! the parent they were made from has been modified.

use std::path::{Path, PathBuf};

use vmdk::link::new_cid;
use vmdk::{Container, Link, OpenOptions};

use crate::chain::{cid_accepted, parent_of, Chain, ChainError, PENDING_CID_KEY};
use crate::snapshot::{children_of, RedoError};

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitReport {
    /// The parent the link was merged into.
    pub parent: PathBuf,
    /// Children re-pointed at the parent.
    pub children: Vec<PathBuf>,
    /// Files removed.
    pub removed: Vec<PathBuf>,
    /// The parent's new CID.
    pub cid: u32,
}

/// Merges the REDO link at `path` into its parent. `copy(link, parent)` must write every `Data`
/// range of `link` (its own data, zeros included) into the top of `parent`; the vmkfs clone engine
/// does this. Known-zero ranges of the link are applied here.
pub fn commit_with(
    path: &Path,
    opts: &OpenOptions,
    copy: impl FnOnce(&Link, &Chain) -> Result<(), RedoError>,
) -> Result<CommitReport, RedoError> {
    let ro = OpenOptions { write: false, ..opts.clone() };
    let link = Link::open(path, &ro)?;
    let Some(pref) = parent_of(&link)? else {
        return Err(RedoError::Refused {
            path: path.into(),
            why: "is a base disk: there is nothing to commit it into".into(),
        });
    };
    if !opts.storage.exists(&pref.path) {
        return Err(ChainError::MissingParent {
            child: path.into(),
            parent: pref.path,
            hint: pref.hint,
            renamed: None,
        }
        .into());
    }
    // Step 1: the parent (and the chain under it) opened for writing, CID kept.
    let parent_chain = Chain::open(&pref.path, &OpenOptions { write: true, keep_cid: true, ..opts.clone() })?;
    let parent = parent_chain.top().clone();
    if parent.capacity() != link.capacity() {
        return Err(ChainError::CapacityMismatch {
            child: path.into(),
            parent: pref.path,
            child_capacity: link.capacity(),
            parent_capacity: parent.capacity(),
        }
        .into());
    }
    if let Some(expected) = pref.expected_cid {
        if !cid_accepted(&parent, expected) {
            return Err(ChainError::CidMismatch {
                child: path.into(),
                parent: pref.path,
                expected,
                found: parent.descriptor().cid,
            }
            .into());
        }
    }
    // Step 2: the data.
    copy(&link, &parent_chain)?;
    let cap = link.capacity();
    let mut off = 0;
    while off < cap {
        let n = (1u64 << 30).min(cap - off);
        for r in link.map(off, n)?.runs().iter().filter(|r| r.state == vmdk::State::Zero) {
            parent.discard(r.offset, r.len)?;
        }
        off += n;
    }
    parent.flush()?;
    // Step 3: the pending CID.
    let has_cid = parent.container() != Container::BareExtent && parent.container() != Container::Raw;
    let pending = parent.descriptor().ddb(PENDING_CID_KEY).and_then(|v| u32::from_str_radix(v.trim(), 16).ok());
    let cid = pending.unwrap_or_else(|| new_cid(parent.descriptor().cid));
    if has_cid && pending.is_none() {
        parent.update_descriptor(|d| d.set_ddb(PENDING_CID_KEY, format!("{cid:08x}")))?;
        parent.flush()?;
    }
    // Step 4: the children.
    let mut children = Vec::new();
    let files = link.files();
    drop(link);
    let mut replaced = false;
    for child in children_of(path, opts) {
        let cl = Link::open(&child, &ro)?;
        let container = cl.container();
        drop(cl);
        if container == Container::BareExtent {
            // ESX 2: `LINK.REDO` takes the link's name, and with it the parent as implied parent.
            opts.storage.rename(&child, path)?;
            replaced = true;
            children.push(path.to_path_buf());
            continue;
        }
        let hint = relative_hint(&child, &pref.path);
        let cl = Link::open(&child, &OpenOptions { write: true, keep_cid: true, ..opts.clone() })?;
        cl.update_descriptor(|d| {
            d.parent_file_name_hint = Some(hint.clone());
            if has_cid {
                d.parent_cid = cid;
            }
        })?;
        cl.close()?;
        children.push(child);
    }
    // Step 5: the link's files (all of them if nothing took its name).
    let mut removed = Vec::new();
    for f in &files {
        if replaced && f == path {
            continue;
        }
        opts.storage.remove(f)?;
        removed.push(f.clone());
    }
    opts.storage.sync_dir(path.parent().unwrap_or(Path::new("")))?;
    // Step 6: the parent's new CID.
    if has_cid {
        parent.update_descriptor(|d| {
            d.set_cid(cid);
            d.remove_ddb(PENDING_CID_KEY);
        })?;
    }
    drop(parent);
    parent_chain.close()?;
    Ok(CommitReport { parent: pref.path, children, removed, cid })
}

/// The hint a child at `child` should use for `parent`: the file name when they share a folder,
/// else the absolute path.
fn relative_hint(child: &Path, parent: &Path) -> String {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (c, p) = (abs(child), abs(parent));
    if c.parent() == p.parent() {
        p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    } else {
        p.display().to_string()
    }
}
