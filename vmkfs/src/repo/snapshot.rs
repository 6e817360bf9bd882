//! Snapshot files: the root tree, the paths backed up, host, user, tags.

use serde::{Deserialize, Serialize};

use super::Id;

/// A snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Snapshot {
    /// When it was taken (RFC 3339).
    pub time: String,
    /// The root tree.
    pub tree: Id,
    /// The paths it holds.
    pub paths: Vec<String>,
    /// Host.
    #[serde(default)]
    pub hostname: String,
    /// User.
    #[serde(default)]
    pub username: String,
    /// User id.
    #[serde(default)]
    pub uid: u32,
    /// Group id.
    #[serde(default)]
    pub gid: u32,
    /// Tags (`vmkfs`, the VM's name, the backup type).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The snapshot this one was made from by changing its metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Id>,
    /// The program that wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_version: Option<String>,
}

/// Saves a snapshot holding one folder `name` with `files` (nodes made by the caller from blobs
/// `w` stored): the folder's tree and the root tree are stored, `w` writes its packs and index,
/// then the snapshot file is written — the commit point; the lock is released after it.
pub fn save_folder(
    repo: &super::Repo,
    mut w: super::Writer<'_>,
    name: &str,
    files: Vec<super::tree::Node>,
    tags: Vec<String>,
) -> crate::Result<Id> {
    use super::tree::{Node, Tree};
    use super::BlobKind;
    if !super::tree::plain_name(name) {
        return Err(crate::Error::Usage(format!(
            "{name:?}: a snapshot folder name without quotes, backslashes, slashes or control characters"
        )));
    }
    let time = crate::vm::catalog::now_utc();
    let folder = Tree { nodes: files }.encode();
    let folder_id = w.add(BlobKind::Tree, &[&folder])?[0];
    let root = Tree { nodes: vec![Node::dir(name, folder_id, &time)] }.encode();
    let root_id = w.add(BlobKind::Tree, &[&root])?[0];
    let lock = w.finish()?;
    let snap = Snapshot {
        time,
        tree: root_id,
        paths: vec![format!("/{name}")],
        hostname: super::repo::hostname(),
        username: std::env::var("USER").unwrap_or_default(),
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
pub fn folder(repo: &super::Repo, snap: &Snapshot, name: Option<&str>) -> crate::Result<Vec<super::tree::Node>> {
    let root: super::tree::Tree = read_tree(repo, &snap.tree)?;
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
pub fn read_tree(repo: &super::Repo, id: &Id) -> crate::Result<super::tree::Tree> {
    let raw = repo.read_blob(id)?;
    serde_json::from_slice(&raw)
        .map_err(|e| super::repo::corrupt(&repo.root().join("index"), None, format!("tree {id}: JSON: {e}")))
}

/// The file node at `path` (`/VM/disk.raw`, `disk.raw`) of a snapshot.
pub fn find_file(repo: &super::Repo, snap: &Snapshot, path: &str) -> crate::Result<super::tree::Node> {
    let path = path.trim_start_matches('/');
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    folder(repo, snap, Some(dir))?
        .into_iter()
        .find(|n| n.name == name && n.kind == "file")
        .ok_or_else(|| crate::Error::Usage(format!("/{path}: no such file in snapshot {}", snap.tree)))
}
