//! Snapshot files: the root tree, the paths backed up, host, user, tags.

use serde::{Deserialize, Serialize};

use super::Id;
use crate::error::Error;

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

/// Now, as restic writes snapshot times (RFC 3339 with nanoseconds, UTC), so that two snapshots
/// taken within one second still have an order (`latest`).
pub fn now_nanos() -> String {
    loop {
        let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let whole = crate::text::now_utc();
        // The same second on both sides: `whole` names it.
        if crate::text::unix_now() == before.as_secs() {
            return format!("{}.{:09}Z", whole.trim_end_matches('Z'), before.subsec_nanos());
        }
    }
}

/// The order of snapshot times: seconds since 1970 (any RFC 3339 offset), then the fraction in
/// nanoseconds; a time that does not parse sorts first.
pub fn time_key(time: &str) -> (u64, u32) {
    let secs = crate::text::parse_utc(time).unwrap_or(0);
    let frac = time.split_once('.').map(|(_, f)| f.bytes().take_while(u8::is_ascii_digit).collect::<Vec<u8>>());
    let nanos = frac.map_or(0, |d| {
        let mut n = 0u32;
        for i in 0..9 {
            n = n * 10 + d.get(i).map_or(0, |c| u32::from(c - b'0'));
        }
        n
    });
    (secs, nanos)
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
    if !super::tree::plain_name(name) {
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
        hostname: super::host::hostname(),
        username: super::host::username(),
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
    serde_json::from_slice(&raw).map_err(|e| Error::Repo {
        path: repo.root().join("index"),
        offset: None,
        what: format!("tree {id}: JSON: {e}"),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_times_order_within_a_second() {
        assert!(time_key("2026-12-01T14:51:39.5Z") > time_key("2026-12-01T14:51:39.123456789Z"));
        assert!(time_key("2026-12-01T14:51:39Z") < time_key("2026-12-01T14:51:39.000000001Z"));
        // restic's local offsets: 15:51:40+01:00 is 14:51:40 UTC.
        assert!(time_key("2026-12-01T15:51:40.1+01:00") > time_key("2026-12-01T14:51:39.9Z"));
        let (a, b) = (now_nanos(), now_nanos());
        assert!(time_key(&b) >= time_key(&a) && time_key(&a).0 > 0, "{a} {b}");
    }
}
