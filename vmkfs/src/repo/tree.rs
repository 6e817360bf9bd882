//! Tree blobs: `{"nodes": [...]}` followed by a newline, nodes sorted by name, fields as restic's
//! `Node` (a file lists its content blobs, a directory names its subtree).

use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use super::Id;

/// `os.ModeDir | 0755` as Go's `fs.FileMode` stores it.
pub const DIR_MODE: u64 = (1 << 31) | 0o755;
/// A regular file, `0644`.
pub const FILE_MODE: u64 = 0o644;

/// One entry of a directory.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Node {
    /// Name in the directory.
    pub name: String,
    /// `file`, `dir`, `symlink`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// Go file mode.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mode: u64,
    /// Modification time (RFC 3339).
    #[serde(default)]
    pub mtime: String,
    /// Access time.
    #[serde(default)]
    pub atime: String,
    /// Change time.
    #[serde(default)]
    pub ctime: String,
    /// Owner.
    #[serde(default)]
    pub uid: u32,
    /// Group.
    #[serde(default)]
    pub gid: u32,
    /// Size of a file.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// Hard links.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub links: u64,
    /// A file's blobs, in order (`null` for other nodes).
    pub content: Option<Vec<Id>>,
    /// A directory's tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Node {
    /// A file of `size` bytes made of `content`.
    pub fn file(name: &str, size: u64, content: Vec<Id>, time: &str) -> Node {
        Node {
            name: name.into(),
            kind: "file".into(),
            mode: FILE_MODE,
            mtime: time.into(),
            atime: time.into(),
            ctime: time.into(),
            size,
            links: 1,
            content: Some(content),
            ..Node::default()
        }
    }

    /// A directory whose tree is `subtree`.
    pub fn dir(name: &str, subtree: Id, time: &str) -> Node {
        Node {
            name: name.into(),
            kind: "dir".into(),
            mode: DIR_MODE,
            mtime: time.into(),
            atime: time.into(),
            ctime: time.into(),
            subtree: Some(subtree),
            ..Node::default()
        }
    }
}

/// A directory.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Tree {
    /// Its entries.
    pub nodes: Vec<Node>,
}

impl Tree {
    /// The blob's bytes (nodes sorted by name, JSON, a newline).
    pub fn encode(self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out).expect("writing to memory cannot fail");
        out
    }

    /// Writes the blob's bytes (see [`Tree::encode`]) to `out` as they are made: a 1 TiB disk's
    /// content list is a million IDs (~70 MB), which [`super::Writer::add_tree`] hashes and
    /// compresses without holding them.
    pub fn encode_into(mut self, out: &mut dyn Write) -> io::Result<()> {
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        serde_json::to_writer(&mut *out, &self)?;
        out.write_all(b"\n")
    }
}

/// A name restic stores as it is (its tree names are Go-quoted, so `"`, `\` and control
/// characters would come back changed).
pub fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '"' || c == '\\' || c == '/' || c.is_control())
}
