//! Committing a REDO link into its parent, crash-safely.
//!
//! The protocol, through the transaction home ([`vmdk::txn`]):
//!
//! 1. Lock: the link and its children exclusively (their files change), the parent exclusively
//!    (its data changes), the chain below the parent shared. A parent with other children is
//!    refused: merging would change what they read.
//! 2. Write the commit's intent record with the command that finishes it (`rerun`), then copy the
//!    link's own data (and its known-zero ranges) into the parent, which keeps its CID meanwhile;
//!    flush. This **data phase** cannot be undone and is idempotent: until it is over, every
//!    command on these disks is refused with "re-run the commit", and the re-run takes the record
//!    over and copies again.
//! 3. Record the steps that finish the commit — each child re-pointed at the parent (hint only: its
//!    `parentCID` already names the link's CID, which the parent is about to take over; an ESX 2
//!    child `LINK.REDO` is renamed `PARENT.REDO`), the link's files removed, the parent given the
//!    link's CID — and make them. From here an interruption is finished by whichever command comes
//!    next.
//!
//! The parent takes over the link's CID because it now holds exactly the link's content: a full
//! copy made of the link earlier (a backup) and the parent are then known to be the same disk, so
//! deltas exported from the chain keep applying to that copy.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use vmdk::family::ParentRef;
use vmdk::link::new_cid;
use vmdk::txn::{self, Intent, Step};
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
    /// True when this run finished a commit that an earlier, interrupted run had started.
    pub resumed: bool,
}

/// The name commit intent records carry.
pub const OP: &str = "commit";

/// Merges the REDO link at `path` into its parent. `copy(link, parent)` must write every `Data`
/// range of `link` (its own data, zeros included) into the top of `parent`; the vmkfs clone engine
/// does this. Known-zero ranges of the link are applied here. `rerun` is the command that finishes
/// this commit if it is interrupted (recorded for the user; e.g. `vmkfs -m PATH`).
///
/// If an earlier commit of `path` was interrupted, this finishes it (re-copying when its data phase
/// had not ended).
pub fn commit_with(
    path: &Path,
    opts: &OpenOptions,
    rerun: Vec<String>,
    copy: impl FnOnce(&Link, &Chain) -> Result<(), RedoError>,
) -> Result<CommitReport, RedoError> {
    let storage = &opts.storage;
    let resumed = match earlier_commit(path, opts)? {
        ControlFlow::Break(report) => return Ok(report),
        ControlFlow::Continue(resumed) => resumed,
    };
    let lock = OpenOptions { write: false, exclusive: true, allow_children: true, ..opts.clone() };
    let link = Link::open(path, &lock)?;
    let OpenedParent { pref, legacy_moves, chain: parent_chain } = open_parent(path, &link, opts)?;
    let parent = parent_chain.top().clone();
    // The children, held exclusively: their descriptors change.
    let kids: Vec<Link> =
        children_of(path, opts).iter().map(|c| Link::open(c, &lock)).collect::<Result<_, vmdk::Error>>()?;
    let mut disks: Vec<PathBuf> = vec![parent.real_path().to_path_buf()];
    disks.extend(kids.iter().map(|k| k.real_path().to_path_buf()));
    let mut intent = match resumed {
        Some(mut i) => {
            i.set_rerun(rerun)?;
            i
        }
        None => Intent::begin(storage, link.real_path(), OP, &disks, Some(rerun))?,
    };
    // The data phase.
    copy(&link, &parent_chain)?;
    apply_zeros(&link, &parent, parent_chain.links().len() > 1)?;
    parent.flush()?;
    // The steps.
    let cid = if !has_cid(&parent) {
        parent.descriptor().cid
    } else if has_cid(&link) {
        link.descriptor().cid
    } else {
        new_cid(parent.descriptor().cid)
    };
    let plan = Plan { path, link: &link, parent: &parent, parent_path: &pref.path, legacy_moves: &legacy_moves, cid };
    let (steps, children) = plan.steps(&kids, opts)?;
    let files = link.files();
    // Every handle goes (the parent closed cleanly: its unclean-shutdown flag cleared) before the
    // steps are recorded and made (they rewrite and remove these files); the record's lock keeps
    // other commands out meanwhile.
    drop(kids);
    drop(link);
    drop(parent);
    parent_chain.close()?;
    intent.set_steps(steps)?;
    intent.finish()?;
    Ok(CommitReport { parent: pref.path, children, removed: files, cid, resumed: false })
}

/// Settles what an earlier run left for `path`: another operation's record is settled as every
/// command does; an earlier commit past its data phase is finished (`Break` with its report); one
/// still in its data phase is taken over (`Continue(Some(record))`, copied again).
fn earlier_commit(path: &Path, opts: &OpenOptions) -> Result<ControlFlow<CommitReport, Option<Intent>>, RedoError> {
    let storage = &opts.storage;
    let Some(i) = txn::pending(storage, path)? else { return Ok(ControlFlow::Continue(None)) };
    if i.record().op != OP {
        // Another operation's record for this disk: the ordinary settling decides.
        drop(i);
        txn::settle(storage.as_ref(), path)?;
        Ok(ControlFlow::Continue(None))
    } else if i.record().rerun.is_none() {
        finish_recorded(i, opts).map(ControlFlow::Break)
    } else {
        Ok(ControlFlow::Continue(Some(i)))
    }
}

/// A commit's parent, checked ([`open_parent`]).
struct OpenedParent {
    pref: ParentRef,
    /// ESX 2 children to rename: `(child, new name)`.
    legacy_moves: Vec<(PathBuf, PathBuf)>,
    /// The parent's chain, its top opened for writing.
    chain: Chain,
}

/// Finds and checks `link`'s parent before anything changes: it exists inside the folder rule, has
/// no other child, has the link's capacity and a CID the link accepts; ESX 2 children can be
/// renamed. Returns the parent reference, the planned renames of those children, and the parent's
/// chain opened for writing its top.
fn open_parent(path: &Path, link: &Link, opts: &OpenOptions) -> Result<OpenedParent, RedoError> {
    let storage = &opts.storage;
    let Some(pref) = parent_of(link, opts.allow_outside)? else {
        return Err(RedoError::Refused {
            path: path.into(),
            why: "is a base disk: there is nothing to commit it into".into(),
        });
    };
    if !storage.exists(&pref.path) {
        return Err(ChainError::MissingParent {
            child: path.into(),
            parent: pref.path,
            hint: pref.hint,
            renamed: None,
        }
        .into());
    }
    vmdk::storage::confine(storage.as_ref(), path, &pref.path, &pref.hint, opts.allow_outside)?;
    crate::chain::refuse_files_of_ancestors(link, opts)?;
    if let Some(other) = children_of(&pref.path, opts).into_iter().find(|c| storage.real_path(c) != *link.real_path()) {
        return Err(RedoError::Refused {
            path: path.into(),
            why: format!(
                "its parent {} has another child, {}, which reads the parent as it is now: commit would change it",
                pref.path.display(),
                other.display()
            ),
        });
    }
    // ESX 2 children (`LINK.REDO`) name their parent only implicitly, so re-pointing one means
    // renaming it to `PARENT.REDO`; check that this is possible before anything changes.
    let legacy_moves = plan_legacy_children(path, &pref.path, opts)?;
    let parent_opts = OpenOptions { write: true, keep_cid: true, allow_children: true, ..opts.clone() };
    let parent_chain = Chain::open(&pref.path, &parent_opts)?;
    let parent = parent_chain.top();
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
        if !cid_accepted(parent, expected) {
            return Err(ChainError::CidMismatch {
                child: path.into(),
                parent: pref.path,
                expected,
                found: parent.descriptor().cid,
            }
            .into());
        }
    }
    Ok(OpenedParent { pref, legacy_moves, chain: parent_chain })
}

/// True for links whose descriptor carries a CID (not bare extents or raw images).
fn has_cid(l: &Link) -> bool {
    l.container() != Container::BareExtent && l.container() != Container::Raw
}

/// What the steps of a commit are made from.
struct Plan<'a> {
    path: &'a Path,
    link: &'a Link,
    parent: &'a Link,
    parent_path: &'a Path,
    legacy_moves: &'a [(PathBuf, PathBuf)],
    /// The parent's CID after the commit.
    cid: u32,
}

impl Plan<'_> {
    /// The steps that finish the commit after its data phase — each child re-pointed at the parent
    /// (an ESX 2 child renamed), the link's files removed, the parent's CID set — and the children's
    /// paths afterwards.
    fn steps(&self, kids: &[Link], opts: &OpenOptions) -> Result<(Vec<Step>, Vec<PathBuf>), RedoError> {
        let storage = &opts.storage;
        let mut steps = Vec::new();
        let mut children = Vec::new();
        let mut takes_name: Option<PathBuf> = None;
        for kid in kids {
            if kid.container() == Container::BareExtent {
                let to =
                    self.legacy_moves.iter().find(|(c, _)| storage.real_path(c) == *kid.real_path()).map(|(_, t)| t);
                let to = to.ok_or_else(|| RedoError::Refused {
                    path: self.path.into(),
                    why: format!("{} appeared during the commit", kid.path().display()),
                })?;
                // When the link is itself `PARENT.REDO`, the child takes its name after the link's
                // files are gone.
                if storage.real_path(to) == *self.link.real_path() {
                    takes_name = Some(kid.real_path().to_path_buf());
                } else {
                    steps.push(Step::RenameNew { from: kid.real_path().into(), to: storage.real_path(to) });
                }
                children.push(to.clone());
                continue;
            }
            let mut d = kid.descriptor();
            d.parent_file_name_hint = Some(relative_hint(kid.path(), self.parent_path));
            d.parent_cid = self.cid;
            if let Some((_, step)) = kid.descriptor_update(&d)? {
                steps.push(step);
            }
            children.push(kid.path().to_path_buf());
        }
        for f in &self.link.files() {
            let real = storage.real_path(f);
            match &takes_name {
                // The child is renamed over the link's file instead.
                Some(kid) if real == *self.link.real_path() => steps.push(Step::Rename { from: kid.clone(), to: real }),
                _ => steps.push(Step::Remove { path: real }),
            }
        }
        if has_cid(self.parent) {
            let mut d = self.parent.descriptor();
            d.set_cid(self.cid);
            d.remove_ddb(PENDING_CID_KEY);
            if let Some((_, step)) = self.parent.descriptor_update(&d)? {
                steps.push(step);
            }
        }
        Ok((steps, children))
    }
}

/// Applies the known-zero ranges of `link` (its own `Zero` runs) to `parent`: freed in a base;
/// written as zeros in a parent that has a parent of its own (a hole there would show the
/// grandparent, and not every link can store a zeroed grain). Walks `link`'s map in runs
/// ([`vmdk::map::walk`]). Commit and `--apply` share it.
pub fn apply_zeros(link: &Link, parent: &Link, parent_has_parent: bool) -> Result<(), RedoError> {
    for r in vmdk::map::walk(link) {
        let r = r?;
        if r.state != vmdk::State::Zero {
            continue;
        }
        if parent_has_parent {
            parent.zero_range(r.offset, r.len)?;
        } else {
            parent.discard(r.offset, r.len)?;
        }
    }
    Ok(())
}

/// Finishes a commit whose data phase an earlier run completed: its steps are recorded.
fn finish_recorded(intent: Intent, opts: &OpenOptions) -> Result<CommitReport, RedoError> {
    let rec = intent.record().clone();
    intent.finish()?;
    let parent = rec.disks.get(1).cloned().unwrap_or_default();
    let cid = Link::open(&parent, &OpenOptions { write: false, ..opts.clone() })?.descriptor().cid;
    let removed =
        rec.steps.iter().filter_map(|s| if let Step::Remove { path } = s { Some(path.clone()) } else { None });
    Ok(CommitReport { parent, children: rec.disks[2..].to_vec(), removed: removed.collect(), cid, resumed: true })
}

/// Where each ESX 2 child of `link` goes when `link` is merged into `parent`: `PARENT.REDO`.
/// Refused when that name is taken by another disk, when the parent is in another folder, or when
/// the child has links of its own (renaming it would orphan them: commit from the top down).
fn plan_legacy_children(link: &Path, parent: &Path, opts: &OpenOptions) -> Result<Vec<(PathBuf, PathBuf)>, RedoError> {
    let storage = &opts.storage;
    let mut out = Vec::new();
    for child in children_of(link, opts) {
        let is_bare =
            vmdk::family::peek(storage.as_ref(), &child)?.is_some_and(|p| p.container == Container::BareExtent);
        if !is_bare {
            continue;
        }
        let refuse = |why: String| RedoError::Refused { path: link.into(), why };
        let to = parent.with_file_name(format!("{}.REDO", txn::file_name(parent)));
        if txn::folder(&storage.real_path(&to)) != txn::folder(&storage.real_path(&child)) {
            return Err(refuse(format!(
                "its ESX 2 REDO log {} would have to move to {}'s folder to keep its parent",
                child.display(),
                parent.display()
            )));
        }
        if storage.real_path(&to) != storage.real_path(link) && storage.exists(&to) {
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
        txn::file_name(&p)
    } else {
        p.display().to_string()
    }
}
