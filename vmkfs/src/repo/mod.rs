//! restic repositories (format version 2, restic's `doc/design.rst`): what `vmkfs-backup -r
//! restic:PATH` writes and `vmkfs-restore -s restic:PATH[@SNAP]` reads. Plain `restic` checks,
//! lists, dumps, restores and prunes them.
//!
//! ```text
//! crypto.rs  AES-256-CTR + Poly1305-AES (aes256ctr_poly1305aes), scrypt key files
//! pack.rs    pack files: encrypted (zstd-compressed) blobs, then the encrypted header and its length
//! index.rs   index files: which pack holds each blob, where
//! tree.rs    tree blobs (directories), snapshot.rs snapshot files
//! browse.rs  a snapshot's folders and files saved and read through a repository
//! repo.rs    the repository: init, open with a password, unpacked files, locks, blob reads, writer
//! replica.rs a file of a snapshot opened as a clone source; a replica disk brought to a snapshot
//!            (`--apply`): the point it records, the blocks that differ
//! vmdisk.rs  a disk as one raw file of fixed 1 MiB blocks taken from the allocation map; a file of
//!            a snapshot read back as a disk source (zero blobs answer as zeros)
//! ```
//!
//! **Chunking.** A disk is one file `/VM/KEY-NAME.raw` of its full capacity cut into fixed 1 MiB
//! blocks aligned to the disk (a multiple of every grain size), so a block holds the same disk
//! range in every snapshot: an unchanged block has the previous snapshot's blob ID, and ranges the
//! allocation map calls zero or unallocated are the one all-zero blob, referenced without reading.
//! restic's own content-defined chunking would move boundaries and cost a read of everything.
//!
//! **Safety.** Every file is written under a temporary name, synced and renamed into place (packs,
//! then the index that names them, then the snapshot: restic's write order), so a killed backup
//! leaves at most packs no index names, which `restic prune` removes. A backup holds restic's
//! non-exclusive lock (a `locks/` file, refreshed every 5 minutes) and refuses to run beside an
//! exclusive one (`restic prune`).

pub mod browse;
pub mod crypto;
pub mod host;
pub mod index;
pub mod location;
pub mod pack;
pub mod replica;
#[allow(clippy::module_inception)]
pub mod repo;
pub mod snapshot;
pub mod tree;

pub mod vmdisk;

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

pub use repo::{Repo, Writer};

/// A storage or blob ID: the SHA-256 of a file's or a blob's plaintext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id(pub [u8; 32]);

impl Id {
    /// The SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Id {
        Id(Sha256::digest(bytes).into())
    }

    /// Lower-case hex, as restic names files.
    pub fn hex(&self) -> String {
        crate::text::hex(&self.0)
    }

    /// Lower-case hex without allocating.
    pub fn hex_digits(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        crate::text::hex_into(&self.0, &mut out);
        out
    }

    /// From 64 hex digits.
    pub fn parse(s: &str) -> Option<Id> {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Id(out))
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex()[..16])
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let digits = self.hex_digits();
        s.serialize_str(std::str::from_utf8(&digits).expect("hex digits are ASCII"))
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        d.deserialize_str(IdVisitor)
    }
}

/// Parses an ID from the borrowed string, allocating nothing (a large disk's tree lists a
/// million).
struct IdVisitor;

impl serde::de::Visitor<'_> for IdVisitor {
    type Value = Id;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a 64-digit hex ID")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Id, E> {
        Id::parse(s).ok_or_else(|| E::custom(format!("{s:?}: not a 64-digit hex ID")))
    }
}

/// What a blob holds.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    /// File content.
    Data,
    /// A directory (tree JSON).
    Tree,
}

#[cfg(test)]
mod tests {
    use super::tree::{Node, Tree};
    use super::*;

    #[test]
    fn ids_round_trip_through_json() {
        let a = Id::of(b"a");
        let json = serde_json::to_string(&vec![a, Id::default()]).unwrap();
        assert_eq!(json, format!("[\"{}\",\"{}\"]", a.hex(), "0".repeat(64)));
        assert_eq!(a.hex(), "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb");
        assert_eq!(serde_json::from_str::<Vec<Id>>(&json).unwrap(), vec![a, Id::default()]);
        for bad in ["\"ab\"", &format!("\"{}\"", "g".repeat(64)), "17"] {
            assert!(serde_json::from_str::<Id>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tree_encoding_is_sorted_json_and_a_newline() {
        let z = Id::of(&[0u8; 4]);
        let t =
            Tree { nodes: vec![Node::file("b.raw", 8, vec![z, z], "2026-12-01T00:00:00Z"), Node::dir("a", z, "t")] };
        let raw = t.encode();
        assert_eq!(raw.last(), Some(&b'\n'));
        let back: Tree = serde_json::from_slice(&raw).unwrap();
        assert_eq!(back.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["a", "b.raw"]);
        assert_eq!(back.nodes[1].content.as_deref(), Some(&[z, z][..]));
        let text = String::from_utf8(raw).unwrap();
        assert!(text.contains(&format!("\"content\":[\"{}\",\"{}\"]", z.hex(), z.hex())), "{text}");
    }
}
