//! Snapshots: adding a REDO link on top of a chain, and discarding the top link.
//!
//! After a snapshot the link below becomes static and every write goes to the new link:
//! - ESX disks (`vmfs`, deltas, virtual-mode RDMs) get the modern shape: `NAME-00000N.vmdk`
//!   (`createType="vmfsSparse"`) plus `NAME-00000N-delta.vmdk`, a COWD redo log;
//! - hosted disks get a monolithicSparse child `NAME-00000N.vmdk` with `parentCID` and
//!   `parentFileNameHint` in its embedded descriptor;
//! - with `legacy`, the ESX 2 shape: a bare COWD file `DISK.REDO` whose parent is implied by its name.
//!
//! The new link's `parentCID` is the parent's CID now, so a later change to the parent is caught.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmdk::create::{create, create_delta, CreateOptions, DiskFormat, Parent};
use vmdk::extent::cowd::{self, CowdHeader};
use vmdk::txn::{Intent, NewFiles, Step};
use vmdk::{Container, CreateType, Link, OpenOptions};

use crate::chain::{parent_of, Chain, ChainError};

/// Errors of snapshot, discard and commit.
#[derive(Debug, thiserror::Error)]
pub enum RedoError {
    /// The chain could not be opened.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// A link-level failure.
    #[error(transparent)]
    Link(#[from] vmdk::Error),
    /// The operation is not allowed on this disk.
    #[error("{path}: {why}", path = .path.display())]
    Refused {
        /// The disk.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Interrupted by the caller.
    #[error("interrupted")]
    Interrupted,
}

/// How a snapshot is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `NAME-00000N.vmdk` (vmfsSparse descriptor) + `NAME-00000N-delta.vmdk` (COWD).
    EsxDelta,
    /// `NAME-00000N.vmdk`, a monolithicSparse child.
    Hosted,
    /// `DISK.REDO`, a bare COWD file (ESX 2).
    LegacyRedo,
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The stem snapshots are numbered from: `disk-000002.vmdk` → `disk`.
fn base_stem(p: &Path) -> String {
    let n = file_name(p);
    let n = n.strip_suffix(".vmdk").unwrap_or(&n).to_string();
    match n.rsplit_once('-') {
        Some((stem, num)) if num.len() == 6 && num.bytes().all(|b| b.is_ascii_digit()) => stem.to_string(),
        _ => n,
    }
}

/// True for createTypes that live on ESX (their snapshots take the vmfsSparse shape).
pub fn is_esx_type(t: &CreateType) -> bool {
    matches!(
        t,
        CreateType::Vmfs
            | CreateType::VmfsThin
            | CreateType::VmfsPreallocated
            | CreateType::VmfsEagerZeroedThick
            | CreateType::VmfsThick
            | CreateType::VmfsSparse
            | CreateType::SeSparse
            | CreateType::VmfsRawDeviceMap
            | CreateType::VmfsRaw
    )
}

/// Refuses snapshots of physical-mode (passthrough) RDMs anywhere in `link`'s descriptor.
fn refuse_passthrough(link: &Link) -> Result<(), RedoError> {
    if link.descriptor().create_type == CreateType::VmfsPassthroughRawDeviceMap {
        return Err(RedoError::Refused {
            path: link.path().into(),
            why: "snapshots are not possible on a physical-mode (passthrough) raw device mapping: SCSI commands go straight to the device, so there is no virtual layer to trap writes in a REDO log (use a virtual-mode mapping, -r, to snapshot a LUN)".into(),
        });
    }
    Ok(())
}

/// Adds a REDO link on top of the chain whose top is `path`; returns the new link's path.
///
/// The top is locked exclusively while the new link is made (no writer may change it under the
/// snapshot, whose `parentCID` records its CID now), and the new link is created like every disk:
/// under temporary names, put in place through one intent record.
pub fn snapshot(path: &Path, opts: &OpenOptions, legacy: bool) -> Result<PathBuf, RedoError> {
    let ro = OpenOptions { write: false, ..opts.clone() };
    // Opening the whole chain checks it is sound before anything is added on top; the top is held
    // exclusively (a link may get a second child: that changes nothing in it).
    let top_opts = OpenOptions { exclusive: true, allow_children: true, ..ro.clone() };
    let top = Arc::new(Link::open(path, &top_opts)?);
    let chain = Chain::open_below(top, &ro)?;
    let top = chain.top().clone();
    refuse_passthrough(&top)?;
    let d = top.descriptor();
    let cap = top.capacity();
    let shape = if legacy {
        Shape::LegacyRedo
    } else if is_esx_type(&d.create_type)
        || (top.container() == Container::BareExtent && d.create_type == CreateType::VmfsSparse)
    {
        Shape::EsxDelta
    } else {
        Shape::Hosted
    };
    let storage = &opts.storage;
    let new = match shape {
        Shape::LegacyRedo => {
            let new = path.with_file_name(format!("{}.REDO", file_name(path)));
            let sectors = u32::try_from(cap / 512).map_err(|_| RedoError::Refused {
                path: path.into(),
                why: "ESX 2 REDO logs hold at most 2 TiB".into(),
            })?;
            let mut files = NewFiles::begin(storage, &new, "snapshot", false)?;
            let b = files.create(&new)?;
            cowd::create(&b, &CowdHeader::new(sectors, 1, Some(&file_name(path))))?;
            b.sync()?;
            drop(b);
            files.commit(Vec::new())?;
            new
        }
        Shape::EsxDelta | Shape::Hosted => {
            let stem = base_stem(path);
            let mut new = None;
            for n in 1..1_000_000 {
                let p = path.with_file_name(format!("{stem}-{n:06}.vmdk"));
                // A snapshot an interrupted run was making under this number is undone first.
                vmdk::txn::settle(storage.as_ref(), &p)?;
                let delta = p.with_file_name(format!("{}-delta.vmdk", file_name(&p).trim_end_matches(".vmdk")));
                if !storage.exists(&p) && !storage.exists(&delta) {
                    new = Some(p);
                    break;
                }
            }
            let new =
                new.ok_or_else(|| RedoError::Refused { path: path.into(), why: "no free snapshot number".into() })?;
            let parent = Parent { hint: file_name(path), cid: d.cid };
            let mut copts = CreateOptions::new(DiskFormat::MonoSparse, cap);
            copts.storage = storage.clone();
            copts.parent = Some(parent.clone());
            if let Some(a) = d.ddb("adapterType").and_then(vmdk::Adapter::parse) {
                copts.adapter = a;
            }
            let nd = if shape == Shape::EsxDelta {
                create_delta(&new, cap, &parent, &copts)?
            } else {
                create(&new, &copts)?
            };
            nd.commit()?
        }
    };
    drop(top);
    drop(chain);
    Ok(new)
}

/// Links in `link`'s folder whose parent is `link` (see [`vmdk::family::children`]).
pub fn children_of(link: &Path, opts: &OpenOptions) -> Vec<PathBuf> {
    vmdk::family::children(opts.storage.as_ref(), link)
}

/// `--discard`: drops the top link `path` without merging it. Refused when another link names it
/// as its parent, and when a commit of it was interrupted (only re-running the commit may finish
/// that: its parent already holds part of its data). The files go through one intent record.
pub fn discard(path: &Path, opts: &OpenOptions) -> Result<Vec<PathBuf>, RedoError> {
    let lo = OpenOptions { write: false, exclusive: true, allow_children: true, ..opts.clone() };
    let link = Link::open(path, &lo)?;
    if parent_of(&link, true)?.is_none() {
        return Err(RedoError::Refused {
            path: path.into(),
            why: "is a base disk, not a REDO link (use -U to delete a disk)".into(),
        });
    }
    link.refuse_if_parent("discarding it")?;
    crate::chain::refuse_files_of_ancestors(&link, opts)?;
    let files = link.files();
    let mut intent = Intent::begin(&opts.storage, link.real_path(), "discard", &[], None)?;
    intent.set_steps(files.iter().map(|f| Step::Remove { path: opts.storage.real_path(f) }).collect())?;
    drop(link);
    intent.finish()?;
    Ok(files)
}
