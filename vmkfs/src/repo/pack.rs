//! Pack files: `EncryptedBlob1 || … || EncryptedBlobN || EncryptedHeader || Header_Length`. A
//! header entry is a type byte (0 data, 1 tree, 2 compressed data, 3 compressed tree), the
//! encrypted length, for compressed blobs the plaintext length, and the blob's ID (all little-endian
//! `u32`s). Data and tree blobs go to separate packs (format version 2).

use super::crypto::Key;
use super::index::{IndexBlob, IndexPack};
use super::{BlobKind, Id};

/// A pack being filled.
pub struct PackBuf {
    kind: BlobKind,
    bytes: Vec<u8>,
    blobs: Vec<IndexBlob>,
}

/// A pack is closed once it holds this many bytes (restic's packs are 4–16 MiB by default).
pub const TARGET: usize = 16 << 20;

impl PackBuf {
    /// An empty pack for blobs of `kind`.
    pub fn new(kind: BlobKind) -> PackBuf {
        PackBuf { kind, bytes: Vec::with_capacity(TARGET + (2 << 20)), blobs: Vec::new() }
    }

    /// Appends a blob already encrypted (`uncompressed`: its plaintext length when it was
    /// compressed before encryption).
    pub fn push(&mut self, id: Id, encrypted: &[u8], uncompressed: Option<u32>) {
        self.blobs.push(IndexBlob {
            id,
            kind: self.kind,
            offset: self.bytes.len() as u64,
            length: encrypted.len() as u32,
            uncompressed_length: uncompressed,
        });
        self.bytes.extend_from_slice(encrypted);
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True when no blob was added.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// The whole pack file and its index entry (the pack's ID is the SHA-256 of the file).
    pub fn finish(self, key: &Key) -> (Id, Vec<u8>, IndexPack) {
        let mut header = Vec::with_capacity(self.blobs.len() * 41);
        for b in &self.blobs {
            let base = if self.kind == BlobKind::Tree { 1u8 } else { 0 };
            match b.uncompressed_length {
                Some(u) => {
                    header.push(base | 2);
                    header.extend_from_slice(&b.length.to_le_bytes());
                    header.extend_from_slice(&u.to_le_bytes());
                }
                None => {
                    header.push(base);
                    header.extend_from_slice(&b.length.to_le_bytes());
                }
            }
            header.extend_from_slice(&b.id.0);
        }
        let enc = key.encrypt(&header);
        let mut bytes = self.bytes;
        bytes.extend_from_slice(&enc);
        bytes.extend_from_slice(&(enc.len() as u32).to_le_bytes());
        let id = Id::of(&bytes);
        (id, bytes, IndexPack { id, blobs: self.blobs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_at_the_end_describes_the_blobs() {
        let key = Key::random();
        let mut p = PackBuf::new(BlobKind::Data);
        let (a, b) = (key.encrypt(b"one"), key.encrypt(b"compressed"));
        p.push(Id::of(b"one"), &a, None);
        p.push(Id::of(b"two"), &b, Some(1000));
        let (id, bytes, entry) = p.finish(&key);
        assert_eq!(id, Id::of(&bytes));
        let hlen = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap()) as usize;
        let header = key.decrypt(&bytes[bytes.len() - 4 - hlen..bytes.len() - 4]).unwrap();
        assert_eq!(header.len(), 37 + 41);
        assert_eq!(header[0], 0);
        assert_eq!(&header[1..5], &(a.len() as u32).to_le_bytes());
        assert_eq!(&header[5..37], &Id::of(b"one").0);
        assert_eq!(header[37], 2);
        assert_eq!(&header[42..46], &1000u32.to_le_bytes());
        assert_eq!(entry.blobs[1].offset, a.len() as u64);
    }
}
