//! A VM backup inside a restic repository: its previous point, one disk's blobs, and the upload
//! of the small files and the catalog (the layout `/VMNAME/{catalog, .vmx, …, KEY-NAME.raw}`).
//! Above both the VM model and the repository ([`crate::repo`]), which knows nothing of VMs.

use std::path::Path;
use std::sync::Arc;

use vmdk::{HostStorage, Storage};

use super::catalog::{self, Catalog};
use super::plain::PlainFile;
use crate::engine::Source;
use crate::error::{Error, Result};
use crate::repo::snapshot::{self, Snapshot};
use crate::repo::tree::{self, Node};
use crate::repo::vmdisk::{self, RepoFile, Written};
use crate::repo::{Id, Repo, Writer};

/// The folder name a VM gets in its snapshots: its display name when restic keeps it as it is,
/// else the `.vmx` name without `.vmx`.
pub fn folder_name(display: Option<&str>, vmx_name: &str) -> String {
    match display {
        Some(d) if tree::plain_name(d) => d.to_string(),
        _ => vmx_name.strip_suffix(".vmx").unwrap_or(vmx_name).to_string(),
    }
}

/// A snapshot of a VM read back: its catalog and its files.
pub struct Point {
    /// The snapshot's ID.
    pub id: Id,
    /// The snapshot.
    pub snapshot: Snapshot,
    /// The VM's folder in it.
    pub folder: String,
    /// The catalog.
    pub catalog: Catalog,
    /// The folder's nodes.
    pub nodes: Vec<Node>,
}

impl Point {
    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name && n.kind == "file")
    }

    /// The file `name` of the point as a source.
    pub fn file<'a>(&self, repo: &'a Repo, name: &str) -> Result<RepoFile<'a>> {
        let n = self.node(name).ok_or_else(|| Error::Backup {
            path: repo.root().join("snapshots").join(self.id.hex()),
            what: format!("/{}/{name}: not in the snapshot", self.folder),
        })?;
        RepoFile::new(repo, name, n.content.as_deref().unwrap_or_default(), n.size)
    }
}

/// Reads the VM snapshot `id`: its one folder and the catalog in it.
pub fn load_point(repo: &Repo, id: Id, snap: Snapshot) -> Result<Point> {
    let root = snapshot::folder(repo, &snap, None)?;
    let spath = repo.root().join("snapshots").join(id.hex());
    let dir = root
        .iter()
        .find(|n| n.kind == "dir" && n.subtree.is_some())
        .ok_or_else(|| Error::Backup { path: spath.clone(), what: "the snapshot holds no VM folder".into() })?;
    let folder = dir.name.clone();
    let nodes = snapshot::read_tree(repo, &dir.subtree.expect("filtered"))?.nodes;
    let cat_node = nodes.iter().find(|n| n.name == catalog::FILE_NAME).ok_or_else(|| Error::Backup {
        path: spath.clone(),
        what: format!("/{folder}/{}: not in the snapshot (not a vmkfs VM backup)", catalog::FILE_NAME),
    })?;
    let f = RepoFile::new(repo, catalog::FILE_NAME, cat_node.content.as_deref().unwrap_or_default(), cat_node.size)?;
    if cat_node.size > super::kv::MAX_BYTES {
        return Err(Error::Backup { path: spath, what: "the catalog is too large".into() });
    }
    let mut text = vec![0u8; cat_node.size as usize];
    f.read_at(&mut text, 0)?;
    let catalog = Catalog::parse(&String::from_utf8_lossy(&text), &spath.join(&folder).join(catalog::FILE_NAME))?;
    Ok(Point { id, snapshot: snap, folder, catalog, nodes })
}

/// The newest vmkfs snapshot (of the VM folder `folder`, when given), or the one `spec` names.
pub fn find_point(repo: &Repo, folder: Option<&str>, spec: &str) -> Result<Option<Point>> {
    if spec != "latest" {
        let (id, s) = repo.find_snapshot(spec)?;
        return load_point(repo, id, s).map(Some);
    }
    let hit = repo.snapshots.iter().rev().find(|(_, s)| {
        s.tags.iter().any(|t| t == "vmkfs") && folder.is_none_or(|f| s.paths.iter().any(|p| *p == format!("/{f}")))
    });
    match hit {
        Some((id, s)) => load_point(repo, *id, s.clone()).map(Some),
        None => Ok(None),
    }
}

/// Stores one disk (the static chain `src`): with `prev` (the previous point's blobs and the
/// blocks a change map says may have changed since) unchanged blocks are not read. The blobs go
/// into the node (not copied: a 1 TiB disk has a million); the returned [`Written`] keeps the
/// counts and an empty content list.
pub fn write_disk(
    w: &mut Writer<'_>,
    name: &str,
    src: &dyn Source,
    prev: Option<(&[Id], &[bool])>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(Node, Written)> {
    let mut wr = vmdisk::write_source(w, src, prev, progress)?;
    let content = std::mem::take(&mut wr.content);
    Ok((Node::file(name, src.capacity(), content, &crate::text::now_utc()), wr))
}

/// Stores the plain files `names` of folder `dir` (the small files and the catalog).
pub fn write_files(w: &mut Writer<'_>, dir: &Path, names: &[String]) -> Result<Vec<Node>> {
    let storage: Arc<dyn Storage> = HostStorage::shared();
    let mut out = Vec::new();
    for n in names {
        if !tree::plain_name(n) {
            return Err(Error::Usage(format!(
                "{n:?}: restic would store this file name changed (quotes, backslashes, control characters)"
            )));
        }
        let f = PlainFile::open(&storage, &dir.join(n))?;
        let wr = vmdisk::write_source(w, &f, None, &mut |_, _| {})?;
        out.push(Node::file(n, f.len(), wr.content, &crate::text::now_utc()));
    }
    Ok(out)
}

/// Per 1 MiB block of a disk of `capacity`, whether the change map `m` marks any of it.
pub fn changed_blocks(m: &redo::ChangeMap, capacity: u64) -> Vec<bool> {
    let n = capacity.div_ceil(vmdisk::BLOCK) as usize;
    let mut out = vec![false; n];
    for (s, l) in m.ranges() {
        for b in out.iter_mut().take((s + l).div_ceil(vmdisk::BLOCK) as usize).skip((s / vmdisk::BLOCK) as usize) {
            *b = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_restic_keeps() {
        assert_eq!(folder_name(Some("web 01"), "web01.vmx"), "web 01");
        assert_eq!(folder_name(Some("a\"b"), "web01.vmx"), "web01");
        assert_eq!(folder_name(None, "web01.vmx"), "web01");
    }

    #[test]
    fn change_maps_become_blocks() {
        let mut m = redo::ChangeMap::new(5 * vmdisk::BLOCK, 65536).unwrap();
        m.mark(vmdisk::BLOCK + 4096, 10);
        m.mark(3 * vmdisk::BLOCK - 1, 2);
        assert_eq!(changed_blocks(&m, 5 * vmdisk::BLOCK), vec![false, true, true, true, false]);
    }
}
