//! Who is whose parent: the parent a link names, and the links in a folder that name a given one.
//!
//! A link names its parent in one of two ways: `parentFileNameHint` (plus `parentCID`) in its
//! descriptor (hosted and modern ESX deltas), or, for an ESX 2 REDO log (a bare COWD file called
//! `X.REDO`), by its own name: its parent is `X`. [`children`] finds the links of a folder whose
//! parent is a given disk by reading only their headers and descriptors — without locks and without
//! opening their extents — so a damaged or busy child is still found.

use std::path::{Path, PathBuf};

use crate::descriptor::{Container, CreateType, Descriptor, MAX_DESCRIPTOR_BYTES, NO_PARENT_CID};
use crate::detect::Format;
use crate::error::{Error, Result};
use crate::extent::kdmv;
use crate::storage::{resolve_extent_path, Storage};
use crate::txn::{file_name, folder, is_temp_name};

/// Where a link's parent is, as the link says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRef {
    /// The parent's path.
    pub path: PathBuf,
    /// The CID the child expects (`None` for ESX 2 REDO logs, which record none).
    pub expected_cid: Option<u32>,
    /// The hint as written (or the name it was derived from).
    pub hint: String,
}

/// The parent named by a link at `path` whose descriptor is `d` and which was opened from a
/// `container`. `allow_outside` lets a hint leave the link's folder (absolute, or with `..`);
/// without it such a hint is [`Error::PathEscape`]. `Ok(None)`: a base disk. A `parentCID` without
/// a hint is [`Error::Corrupt`].
pub fn parent_ref(path: &Path, d: &Descriptor, container: Container, allow_outside: bool) -> Result<Option<ParentRef>> {
    if let Some(hint) = d.parent_file_name_hint.clone() {
        let p = resolve_extent_path(path, &hint, allow_outside)?;
        return Ok(Some(ParentRef { path: p, expected_cid: Some(d.parent_cid), hint }));
    }
    if container == Container::BareExtent && d.create_type == CreateType::VmfsSparse {
        let name = file_name(path);
        if let Some(parent) = name.strip_suffix(".REDO") {
            return Ok(Some(ParentRef { path: path.with_file_name(parent), expected_cid: None, hint: parent.into() }));
        }
    }
    if d.parent_cid != NO_PARENT_CID && container != Container::BareExtent && container != Container::Raw {
        return Err(Error::corrupt(
            path,
            0,
            format!("parentCID is {:08x} but there is no parentFileNameHint naming the parent", d.parent_cid),
        ));
    }
    Ok(None)
}

/// What [`peek`] learns of a file without opening it as a disk.
#[derive(Debug, Clone)]
pub struct Peek {
    /// The descriptor (synthesized for bare extents and raw images).
    pub descriptor: Descriptor,
    /// What kind of file it is.
    pub container: Container,
}

/// Reads just enough of `path` to know its descriptor: a text descriptor, the embedded descriptor
/// of a hosted sparse or stream file, or what a bare COWD file implies. No lock is taken and no
/// extent is opened; what the file is comes from [`crate::detect`], as for [`crate::Link::open`].
/// `Ok(None)` for anything else (raw images, seSparse and other bare extents name no parent).
pub fn peek(storage: &dyn Storage, path: &Path) -> Result<Option<Peek>> {
    let b = storage.open(path, false)?;
    match crate::detect::detect(&b)? {
        Format::Sparse(h) => match kdmv::read_descriptor_area(&b, &h)?.filter(|a| !a.is_blank()) {
            Some(area) => {
                Ok(Some(Peek { descriptor: Descriptor::parse(&area.text, path)?, container: Container::Embedded }))
            }
            None => Ok(None),
        },
        Format::Cowd => {
            let d = Descriptor::new(CreateType::VmfsSparse, NO_PARENT_CID);
            Ok(Some(Peek { descriptor: d, container: Container::BareExtent }))
        }
        Format::Descriptor => {
            let len = b.len()?;
            if len > MAX_DESCRIPTOR_BYTES as u64 {
                return Ok(None);
            }
            let mut raw = vec![0u8; len as usize];
            b.read_exact_at(&mut raw, 0)?;
            let d = Descriptor::parse(&String::from_utf8_lossy(&raw), path)?;
            Ok(Some(Peek { descriptor: d, container: Container::Descriptor }))
        }
        _ => Ok(None),
    }
}

/// The links in `disk`'s folder that read through `disk`: they name it as their parent (compared
/// by real path) and record its current CID as their `parentCID` (or, like ESX 2 REDO logs, record
/// none). A link whose `parentCID` no longer matches is already broken (its chain is refused) and
/// does not count. Found with [`peek`]; files that cannot be read are passed over; hints leaving the
/// folder count (they name the parent all the same).
pub fn children(storage: &dyn Storage, disk: &Path) -> Vec<PathBuf> {
    let target = storage.real_path(disk);
    let cids = cids_of(storage, disk);
    let dir = folder(disk);
    let mut out = Vec::new();
    for name in storage.list_dir(dir) {
        if !(name.ends_with(".vmdk") || name.ends_with(".REDO")) || name.starts_with('.') || is_temp_name(&name) {
            continue;
        }
        let p = dir.join(&name);
        if storage.is_dir(&p) {
            continue;
        }
        let Ok(Some(pk)) = peek(storage, &p) else { continue };
        let Ok(Some(pr)) = parent_ref(&p, &pk.descriptor, pk.container, true) else { continue };
        if storage.real_path(&pr.path) != target || storage.real_path(&p) == target {
            continue;
        }
        if pr.expected_cid.is_none_or(|c| cids.contains(&c)) {
            out.push(p);
        }
    }
    out
}

/// The CIDs a child of `disk` may record for it: its CID, and the one an interrupted commit of
/// an earlier version announced (`ddb.vmkfs.pendingCID`); `ffffffff` for files without a
/// descriptor of their own.
fn cids_of(storage: &dyn Storage, disk: &Path) -> Vec<u32> {
    match peek(storage, disk) {
        Ok(Some(pk)) if pk.container != Container::BareExtent => {
            let d = pk.descriptor;
            let pending = d.ddb("vmkfs.pendingCID").and_then(|v| u32::from_str_radix(v.trim(), 16).ok());
            std::iter::once(d.cid).chain(pending).collect()
        }
        _ => vec![NO_PARENT_CID],
    }
}
