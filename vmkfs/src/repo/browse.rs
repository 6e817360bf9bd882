//! A snapshot's folders and files, saved and read through a repository: the trees under a
//! snapshot's root (the snapshot file itself is [`super::snapshot`]).

use super::host::{hostname, username};
use super::repo::{Repo, Writer};
use super::snapshot::{now_nanos, Snapshot};
use super::tree::{plain_name, Node, Tree};
use super::Id;
use crate::error::Error;

/// Saves a snapshot holding one folder `name` with `files` (nodes made by the caller from blobs
/// `w` stored): the folder's tree and the root tree are stored, `w` writes its packs and index,
/// then the snapshot file is written — the commit point; the lock is released after it.
pub fn save_folder(
    repo: &Repo,
    mut w: Writer<'_>,
    name: &str,
    files: Vec<Node>,
    tags: Vec<String>,
) -> crate::Result<Id> {
    if !plain_name(name) {
        return Err(crate::Error::Usage(format!(
            "{name:?}: a snapshot folder name without quotes, backslashes, slashes or control characters"
        )));
    }
    let time = now_nanos();
    let folder_id = w.add_tree(Tree { nodes: files })?;
    let root_id = w.add_tree(Tree { nodes: vec![Node::dir(name, folder_id, &time)] })?;
    let lock = w.finish()?;
    let snap = Snapshot {
        time,
        tree: root_id,
        paths: vec![format!("/{name}")],
        hostname: hostname(),
        username: username(),
        tags,
        program_version: Some(format!("vmkfs {}", env!("CARGO_PKG_VERSION"))),
        ..Snapshot::default()
    };
    let id = repo.save_unpacked("snapshots", &snap)?;
    drop(lock);
    Ok(id)
}

/// The nodes of the folder `name` of a snapshot's root tree (restic's own `backup` of a path
/// nests it under each of its components; `--stdin` puts the file in the root).
pub fn folder(repo: &Repo, snap: &Snapshot, name: Option<&str>) -> crate::Result<Vec<Node>> {
    let root: Tree = read_tree(repo, &snap.tree)?;
    let Some(name) = name else { return Ok(root.nodes) };
    let mut tree = root;
    for part in name.split('/').filter(|p| !p.is_empty()) {
        let dir = tree
            .nodes
            .iter()
            .find(|n| n.name == part && n.kind == "dir")
            .and_then(|n| n.subtree)
            .ok_or_else(|| crate::Error::Usage(format!("{part:?}: no such folder in snapshot {}", snap.tree)))?;
        tree = read_tree(repo, &dir)?;
    }
    Ok(tree.nodes)
}

/// Reads and parses tree blob `id`.
pub fn read_tree(repo: &Repo, id: &Id) -> crate::Result<Tree> {
    let raw = repo.read_blob(id)?;
    serde_json::from_slice(&raw).map_err(|e| Error::Repo {
        path: repo.root().join("index"),
        offset: None,
        what: format!("tree {id}: JSON: {e}"),
    })
}

/// The file node at `path` (`/VM/disk.raw`, `disk.raw`) of a snapshot.
pub fn find_file(repo: &Repo, snap: &Snapshot, path: &str) -> crate::Result<Node> {
    let path = path.trim_start_matches('/');
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    folder(repo, snap, Some(dir))?
        .into_iter()
        .find(|n| n.name == name && n.kind == "file")
        .ok_or_else(|| crate::Error::Usage(format!("/{path}: no such file in snapshot {}", snap.tree)))
}
