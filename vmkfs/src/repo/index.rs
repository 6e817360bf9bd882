//! Index files: `{"packs": [{"id", "blobs": [{"id", "type", "offset", "length",
//! "uncompressed_length"?}]}], "supersedes"?}`.

use serde::{Deserialize, Serialize};

use super::{BlobKind, Id};

/// A blob's place in its pack.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexBlob {
    /// The blob's ID (SHA-256 of its plaintext, before compression).
    pub id: Id,
    /// Data or tree.
    #[serde(rename = "type")]
    pub kind: BlobKind,
    /// Offset in the pack.
    pub offset: u64,
    /// Encrypted length.
    pub length: u32,
    /// Plaintext length of a compressed blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncompressed_length: Option<u32>,
}

impl IndexBlob {
    /// Plaintext length.
    pub fn plain_len(&self) -> u64 {
        match self.uncompressed_length {
            Some(u) => u as u64,
            None => (self.length as u64).saturating_sub(super::crypto::OVERHEAD as u64),
        }
    }
}

/// A pack and its blobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexPack {
    /// The pack's ID (its file name).
    pub id: Id,
    /// Its blobs.
    pub blobs: Vec<IndexBlob>,
}

/// An index file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IndexFile {
    /// Index files this one replaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supersedes: Vec<Id>,
    /// The packs it describes.
    pub packs: Vec<IndexPack>,
}
