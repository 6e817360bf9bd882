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
//!    child `LINK.REDO` is renamed `PARENT.REDO`, which atomically makes the parent its parent. When
//!    the link is itself `PARENT.REDO`, the child is renamed over it after step 6, so that a rerun
//!    never finds the child under the link's name. An ESX 2 child that has links of its own is
//!    refused up front: renaming it would orphan them.
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
    // ESX 2 children (`LINK.REDO`) name their parent only implicitly, so re-pointing one means
    // renaming it to `PARENT.REDO`; check that this is possible before anything changes.
    let legacy_moves = plan_legacy_children(path, &pref.path, opts)?;
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
    // Known-zero ranges: freed in a base; written as zeros in a parent that has a parent of its own
    // (a hole there would show the grandparent, and not every link can store a zeroed grain).
    let parent_has_parent = parent_chain.links().len() > 1;
    let cap = link.capacity();
    let mut off = 0;
    while off < cap {
        let n = (1u64 << 30).min(cap - off);
        for r in link.map(off, n)?.runs().iter().filter(|r| r.state == vmdk::State::Zero) {
            if parent_has_parent {
                parent.zero_range(r.offset, r.len)?;
            } else {
                parent.discard(r.offset, r.len)?;
            }
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
    // An ESX 2 child that takes the link's own name is renamed last, once the parent is complete:
    // until then the link stays, so a rerun after a crash commits the link again (harmlessly), never
    // the child that would otherwise already carry its name.
    let mut takes_name: Option<PathBuf> = None;
    for child in children_of(path, opts) {
        let cl = Link::open(&child, &ro)?;
        let container = cl.container();
        drop(cl);
        if container == Container::BareExtent {
            // ESX 2: `LINK.REDO` becomes `PARENT.REDO`, which implies the parent (when the link is
            // itself `PARENT.REDO`, the child takes its name in one atomic rename, at the end).
            let to = legacy_moves.iter().find(|(c, _)| *c == child).map(|(_, t)| t.clone()).ok_or_else(|| {
                RedoError::Refused { path: path.into(), why: format!("{} appeared during the commit", child.display()) }
            })?;
            if to == path {
                takes_name = Some(child);
            } else {
                opts.storage.rename(&child, &to)?;
            }
            children.push(to);
            continue;
        }
        let hint = relative_hint(&child, &pref.path);
        let cl = Link::open(&child, &OpenOptions { write: true, keep_cid: true, ..opts.clone() })?;
        // A parent without a CID of its own (an ESX 2 REDO log) is known by the CID every such link
        // reports (`ffffffff`), the value a snapshot of it records.
        let parent_cid = if has_cid { cid } else { parent.descriptor().cid };
        cl.update_descriptor(|d| {
            d.parent_file_name_hint = Some(hint.clone());
            d.parent_cid = parent_cid;
        })?;
        cl.close()?;
        children.push(child);
    }
    // Step 5: the link's files (all of them if nothing took its name).
    let mut removed = Vec::new();
    for f in &files {
        if takes_name.is_some() && f == path {
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
    if let Some(child) = takes_name {
        opts.storage.rename(&child, path)?;
        opts.storage.sync_dir(path.parent().unwrap_or(Path::new("")))?;
    }
    Ok(CommitReport { parent: pref.path, children, removed, cid })
}

/// Where each ESX 2 child of `link` goes when `link` is merged into `parent`: `PARENT.REDO`.
/// Refused when that name is taken by another disk, when the parent is in another folder, or when
/// the child has links of its own (renaming it would orphan them: commit from the top down).
fn plan_legacy_children(link: &Path, parent: &Path, opts: &OpenOptions) -> Result<Vec<(PathBuf, PathBuf)>, RedoError> {
    let ro = OpenOptions { write: false, ..opts.clone() };
    let mut out = Vec::new();
    for child in children_of(link, opts) {
        if Link::open(&child, &ro)?.container() != Container::BareExtent {
            continue;
        }
        let refuse = |why: String| RedoError::Refused { path: link.into(), why };
        let name = parent.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let to = parent.with_file_name(format!("{name}.REDO"));
        let dir = |p: &Path| {
            std::fs::canonicalize(p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")))
        };
        if dir(&to).ok() != dir(&child).ok() {
            return Err(refuse(format!(
                "its ESX 2 REDO log {} would have to move to {}'s folder to keep its parent",
                child.display(),
                parent.display()
            )));
        }
        if to != link && opts.storage.exists(&to) {
            return Err(refuse(format!(
                "its ESX 2 REDO log {} would have to be renamed to {}, which exists",
                child.display(),
                to.display()
            )));
        }
        if let Some(g) = children_of(&child, opts).first() {
            return Err(refuse(format!(
                "its ESX 2 REDO log {} would have to be renamed, which would orphan {} built on it; commit the links above first",
                child.display(),
                g.display()
            )));
        }
        out.push((child, to));
    }
    Ok(out)
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
