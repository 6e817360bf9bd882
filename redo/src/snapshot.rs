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

use vmdk::create::{create, create_delta, CreateOptions, DiskFormat, Parent};
use vmdk::extent::cowd::{self, CowdHeader};
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
pub fn snapshot(path: &Path, opts: &OpenOptions, legacy: bool) -> Result<PathBuf, RedoError> {
    let ro = OpenOptions { write: false, ..opts.clone() };
    // Opening the whole chain checks it is sound before anything is added on top.
    let chain = Chain::open(path, &ro)?;
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
    drop(chain);
    let storage = &opts.storage;
    match shape {
        Shape::LegacyRedo => {
            let new = path.with_file_name(format!("{}.REDO", file_name(path)));
            if storage.exists(&new) {
                return Err(vmdk::Error::Exists { path: new }.into());
            }
            let sectors = u32::try_from(cap / 512).map_err(|_| RedoError::Refused {
                path: path.into(),
                why: "ESX 2 REDO logs hold at most 2 TiB".into(),
            })?;
            let tmp = new.with_file_name(format!(".{}.vmkfs-{}.tmp", file_name(&new), std::process::id()));
            let _ = storage.remove(&tmp);
            let b = storage.create_new(&tmp)?;
            let r = cowd::create(&b, &CowdHeader::new(sectors, 1, Some(&file_name(path)))).and_then(|_| b.sync());
            drop(b);
            if let Err(e) = r {
                let _ = storage.remove(&tmp);
                return Err(e.into());
            }
            storage.rename(&tmp, &new)?;
            storage.sync_dir(new.parent().unwrap_or(Path::new("")))?;
            Ok(new)
        }
        Shape::EsxDelta | Shape::Hosted => {
            let stem = base_stem(path);
            let new = (1..1_000_000)
                .map(|n| path.with_file_name(format!("{stem}-{n:06}.vmdk")))
                .find(|p| {
                    !storage.exists(p)
                        && !storage
                            .exists(&p.with_file_name(format!("{}-delta.vmdk", file_name(p).trim_end_matches(".vmdk"))))
                })
                .ok_or_else(|| RedoError::Refused { path: path.into(), why: "no free snapshot number".into() })?;
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
            Ok(nd.commit()?)
        }
    }
}

/// Links in `link`'s folder whose parent is `link`.
pub fn children_of(link: &Path, opts: &OpenOptions) -> Vec<PathBuf> {
    let target = std::fs::canonicalize(link).unwrap_or_else(|_| link.to_path_buf());
    let dir = link.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        let name = file_name(&p);
        if !(name.ends_with(".vmdk") || name.ends_with(".REDO")) || name.starts_with('.') {
            continue;
        }
        let Ok(l) = Link::open(&p, &OpenOptions { write: false, ..opts.clone() }) else { continue };
        if let Ok(Some(pr)) = parent_of(&l) {
            if std::fs::canonicalize(&pr.path).unwrap_or(pr.path) == target {
                out.push(p);
            }
        }
    }
    out
}

/// `--discard`: drops the top link `path` without merging it. Refused when another link names it as
/// its parent.
pub fn discard(path: &Path, opts: &OpenOptions) -> Result<Vec<PathBuf>, RedoError> {
    let link = Link::open(path, &OpenOptions { write: false, ..opts.clone() })?;
    if parent_of(&link)?.is_none() {
        return Err(RedoError::Refused {
            path: path.into(),
            why: "is a base disk, not a REDO link (use -U to delete a disk)".into(),
        });
    }
    let kids = children_of(path, opts);
    if let Some(k) = kids.first() {
        return Err(RedoError::Refused {
            path: path.into(),
            why: format!("is not the top of its chain: {} is built on it (discard that first, or commit)", k.display()),
        });
    }
    let files = link.files();
    drop(link);
    for f in &files {
        opts.storage.remove(f)?;
    }
    Ok(files)
}
