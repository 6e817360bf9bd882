//! Block hashes: what a backup remembers of a disk's content so that a later pass without a
//! change-tracking link finds what changed by reading the disk once and writing only the blocks
//! whose hash differs.
//!
//! - [`BlockHashes`]: one 32-byte digest per block of the disk (a block that reads as zeros has
//!   the all-zero digest, which no data has), stored beside each backed-up disk as `NAME.blocks`.
//!   New tables use BLAKE3 ([`Algo::Blake3`], about 2.5 times the speed of SHA-256 with SHA-NI
//!   here: the change detection needs a collision-resistant hash, not SHA-256 in particular);
//!   tables of earlier backups hold SHA-256 digests ([`Algo::Sha256`]) and still read, and a
//!   later pass compares with a table in that table's own algorithm.
//! - [`Hashing`]: a copy source that hashes every block it reads, so a full export records the
//!   hashes on the engine's reader threads while it copies (the engine is asked to read whole
//!   blocks: `EngineOptions::align`).
//! - [`ChangedOnly`]: a copy target that hashes each block (in `encode`, on every core) and writes
//!   only those whose hash differs from the previous pass's into a REDO link.
//!
//! **File format** (`NAME.blocks`, little-endian): the magic `VMKFSBLK`, `u32` version (1: the
//! digests are SHA-256; 2: BLAKE3-256; nothing else differs), `u32` zero, `u64` disk capacity in bytes, `u64` block size in bytes (a power of two, at least 4 KiB),
//! `u64` count of non-zero blocks, then that many entries of `u64` block index and 32 digest
//! bytes, indexes strictly increasing. Blocks not listed read as zeros. The reader checks every
//! field against the file's length before allocating anything.
//!
//! Block size: 64 KiB (the change-map block), doubled until the disk has at most 2^20 blocks, so
//! the table in memory stays at most 32 MiB whatever the disk size.

use std::path::Path;
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};
use vmdk::map::MapSource;
use vmdk::{AllocMap, Link};

use crate::engine::{Piece, Source, Target};
use crate::error::{Error, Result};

/// A block's digest.
pub type Digest32 = [u8; 32];
/// The digest of a block that reads as zeros.
pub const ZERO: Digest32 = [0u8; 32];
const MAGIC: &[u8; 8] = b"VMKFSBLK";
const HEADER: usize = 40;
const ENTRY: usize = 40;
/// Most blocks a table holds (see the module text).
pub const MAX_BLOCKS: u64 = 1 << 20;

/// The block size for a disk of `capacity` bytes.
pub fn block_size_for(capacity: u64) -> u64 {
    let mut b = redo::changemap::DEFAULT_BLOCK;
    while capacity.div_ceil(b) > MAX_BLOCKS {
        b *= 2;
    }
    b
}

/// The hash a table's digests are made with (the file's version says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    /// SHA-256 (version 1: the tables of earlier backups).
    Sha256,
    /// BLAKE3 with 32-byte output (version 2: what new tables use).
    Blake3,
}

impl Algo {
    /// The algorithm new tables are made with.
    pub const CURRENT: Algo = Algo::Blake3;

    /// The file version that stands for this algorithm.
    pub fn version(self) -> u32 {
        match self {
            Algo::Sha256 => 1,
            Algo::Blake3 => 2,
        }
    }

    /// The algorithm of file version `v`, if it is one.
    pub fn of_version(v: u32) -> Option<Algo> {
        match v {
            1 => Some(Algo::Sha256),
            2 => Some(Algo::Blake3),
            _ => None,
        }
    }

    /// The digest of one block's bytes ([`ZERO`] for zeros).
    pub fn digest(self, bytes: &[u8]) -> Digest32 {
        if vmdk::extent::is_zero(bytes) {
            return ZERO;
        }
        match self {
            Algo::Sha256 => Sha256::digest(bytes).into(),
            Algo::Blake3 => *blake3::hash(bytes).as_bytes(),
        }
    }
}

/// One digest per block of a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHashes {
    algo: Algo,
    capacity: u64,
    block: u64,
    digests: Vec<Digest32>,
}

impl BlockHashes {
    /// A table for a disk of `capacity` bytes in blocks of `block` bytes, every block zeros, in
    /// the algorithm new tables use.
    pub fn zeros(capacity: u64, block: u64) -> Result<BlockHashes> {
        BlockHashes::zeros_in(Algo::CURRENT, capacity, block)
    }

    /// Like [`BlockHashes::zeros`], with digests in `algo`.
    pub fn zeros_in(algo: Algo, capacity: u64, block: u64) -> Result<BlockHashes> {
        if !block.is_power_of_two() || block < 4096 || capacity.div_ceil(block) > MAX_BLOCKS * 64 {
            return Err(Error::Usage(format!("block hashes: block size {block} for {capacity} bytes")));
        }
        Ok(BlockHashes { algo, capacity, block, digests: vec![ZERO; capacity.div_ceil(block) as usize] })
    }

    /// The algorithm of the digests.
    pub fn algo(&self) -> Algo {
        self.algo
    }

    /// The digest of `bytes` as this table records blocks.
    pub fn digest(&self, bytes: &[u8]) -> Digest32 {
        self.algo.digest(bytes)
    }

    /// Disk capacity.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Block size.
    pub fn block(&self) -> u64 {
        self.block
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// True for a disk of no blocks.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// The digest of block `i`.
    pub fn get(&self, i: usize) -> Digest32 {
        self.digests[i]
    }

    /// Sets the digest of block `i`.
    pub fn set(&mut self, i: usize, d: Digest32) {
        self.digests[i] = d;
    }

    /// Byte range of block `i`.
    pub fn range(&self, i: usize) -> (u64, u64) {
        let s = i as u64 * self.block;
        (s, self.block.min(self.capacity - s))
    }

    /// The file's bytes (see the module text).
    pub fn to_bytes(&self) -> Vec<u8> {
        let nz: Vec<(usize, &Digest32)> = self.digests.iter().enumerate().filter(|(_, d)| **d != ZERO).collect();
        let mut v = Vec::with_capacity(HEADER + nz.len() * ENTRY);
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&self.algo.version().to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&self.capacity.to_le_bytes());
        v.extend_from_slice(&self.block.to_le_bytes());
        v.extend_from_slice(&(nz.len() as u64).to_le_bytes());
        for (i, d) in nz {
            v.extend_from_slice(&(i as u64).to_le_bytes());
            v.extend_from_slice(d);
        }
        v
    }

    /// Parses a file's bytes (read from `path`, named in errors).
    pub fn from_bytes(b: &[u8], path: &Path) -> Result<BlockHashes> {
        let bad = |offset: u64, what: String| Error::Vmdk(vmdk::Error::corrupt(path, offset, what));
        if b.len() < HEADER {
            return Err(bad(0, format!("{} bytes is shorter than the {HEADER}-byte header", b.len())));
        }
        if &b[..8] != MAGIC {
            return Err(bad(0, "no VMKFSBLK magic: not a block-hash file".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let Some(algo) = Algo::of_version(u32_at(8)) else {
            return Err(bad(8, format!("version {} is not 1 (SHA-256) or 2 (BLAKE3)", u32_at(8))));
        };
        let (capacity, block, count) = (u64_at(16), u64_at(24), u64_at(32));
        if !block.is_power_of_two() || block < 4096 {
            return Err(bad(24, format!("block size {block} is not a power of two of at least 4096")));
        }
        let blocks = capacity.div_ceil(block);
        if blocks > MAX_BLOCKS * 64 {
            return Err(bad(16, format!("{blocks} blocks is more than a table may hold")));
        }
        let expect = (b.len() - HEADER) as u64;
        if count.checked_mul(ENTRY as u64) != Some(expect) || count > blocks {
            return Err(bad(
                32,
                format!("{count} entries do not fit the {expect} bytes after the header of a {blocks}-block table"),
            ));
        }
        let mut t = BlockHashes::zeros_in(algo, capacity, block)?;
        let mut last: Option<u64> = None;
        for k in 0..count as usize {
            let at = HEADER + k * ENTRY;
            let i = u64_at(at);
            if i >= blocks || last.is_some_and(|l| i <= l) {
                return Err(bad(at as u64, format!("block index {i} is out of order or past block {blocks}")));
            }
            last = Some(i);
            let mut d = ZERO;
            d.copy_from_slice(&b[at + 8..at + ENTRY]);
            t.digests[i as usize] = d;
        }
        Ok(t)
    }
}

/// A source that records the digest of every block read from `inner` (blocks never read are
/// zeros). Every read must cover whole blocks (give the engine `align` = the block size).
pub struct Hashing<'a> {
    inner: &'a dyn Source,
    table: Mutex<BlockHashes>,
}

impl<'a> Hashing<'a> {
    /// Hashes `inner` in blocks of `block` bytes.
    pub fn new(inner: &'a dyn Source, block: u64) -> Result<Hashing<'a>> {
        Ok(Hashing { inner, table: Mutex::new(BlockHashes::zeros(inner.capacity(), block)?) })
    }

    /// The table of what was read.
    pub fn into_table(self) -> BlockHashes {
        self.table.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

impl Hashing<'_> {
    /// Records the digests of the whole blocks `buf` (read at `offset`) holds.
    fn record(&self, buf: &[u8], offset: u64) -> vmdk::Result<()> {
        let (algo, block) = {
            let t = self.table.lock().unwrap_or_else(|p| p.into_inner());
            (t.algo, t.block)
        };
        let end = offset + buf.len() as u64;
        if !offset.is_multiple_of(block) || (!end.is_multiple_of(block) && end != self.capacity()) {
            return Err(vmdk::Error::InvalidArgument(format!(
                "block hashing: a read of {} bytes at {offset} does not cover whole {block}-byte blocks",
                buf.len()
            )));
        }
        let digests: Vec<Digest32> = buf.chunks(block as usize).map(|b| algo.digest(b)).collect();
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let first = (offset / block) as usize;
        for (k, d) in digests.into_iter().enumerate() {
            t.digests[first + k] = d;
        }
        Ok(())
    }
}

impl MapSource for Hashing<'_> {
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }
    fn map_into(&self, offset: u64, end: u64, budget: usize, out: &mut AllocMap) -> vmdk::Result<u64> {
        self.inner.map_into(offset, end, budget, out)
    }
}

impl Source for Hashing<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vmdk::Result<()> {
        self.inner.read_at(buf, offset)?;
        self.record(buf, offset)
    }
    fn read_run(&self, buf: &mut [u8], offset: u64, depth: u32) -> vmdk::Result<()> {
        self.inner.read_run(buf, offset, depth)?;
        self.record(buf, offset)
    }
}

/// What the ordered writer of [`ChangedOnly`] keeps.
struct Changes {
    now: BlockHashes,
    seen: Vec<bool>,
    changed: u64,
}

/// A target writing into `link` (a REDO link over the previous pass's disk) only the blocks whose
/// digest differs from `prev`, and recording every block's digest now.
pub struct ChangedOnly<'a> {
    link: &'a Link,
    prev: &'a BlockHashes,
    state: Mutex<Changes>,
}

impl<'a> ChangedOnly<'a> {
    /// Writes the changes since `prev` into `link`; the digests now are in `prev`'s algorithm, so
    /// that they compare.
    pub fn new(link: &'a Link, prev: &'a BlockHashes) -> Result<ChangedOnly<'a>> {
        let now = BlockHashes::zeros_in(prev.algo, prev.capacity, prev.block)?;
        let seen = vec![false; now.len()];
        Ok(ChangedOnly { link, prev, state: Mutex::new(Changes { now, seen, changed: 0 }) })
    }

    /// After the copy: zeros the blocks that were never read (they read as zeros now) but held
    /// data before; returns the digests now and the bytes changed.
    pub fn finish(self) -> Result<(BlockHashes, u64)> {
        let mut st = self.state.into_inner().unwrap_or_else(|p| p.into_inner());
        for i in 0..st.now.len() {
            if !st.seen[i] && self.prev.get(i) != ZERO {
                let (s, l) = st.now.range(i);
                write_zeros(self.link, s, l)?;
                st.changed += l;
            }
        }
        Ok((st.now, st.changed))
    }
}

/// Stores zeros over `[offset, offset+len)` of a REDO link written without its parent open (a
/// range that is absent there would show the parent's data).
fn write_zeros(link: &Link, offset: u64, len: u64) -> Result<()> {
    let zeros = vec![0u8; len.min(1 << 20) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64);
        link.write_at(&zeros[..n as usize], offset + done)?;
        done += n;
    }
    Ok(())
}

impl Target for ChangedOnly<'_> {
    type Encoded = Vec<Digest32>;
    fn capacity(&self) -> u64 {
        self.link.capacity()
    }
    fn encode(&self, piece: &Piece<'_>) -> Result<Vec<Digest32>> {
        let block = self.prev.block;
        let end = piece.offset + piece.buf.len() as u64;
        if !piece.offset.is_multiple_of(block) || (!end.is_multiple_of(block) && end != self.prev.capacity) {
            return Err(Error::Usage(format!(
                "block comparison: a piece of {} bytes at {} does not cover whole {block}-byte blocks",
                piece.buf.len(),
                piece.offset
            )));
        }
        Ok(piece.buf.chunks(block as usize).map(|b| self.prev.digest(b)).collect())
    }
    fn write(&self, piece: &Piece<'_>, digests: Vec<Digest32>) -> Result<u64> {
        let block = self.prev.block as usize;
        let first = (piece.offset / self.prev.block) as usize;
        let mut n = 0;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (k, d) in digests.into_iter().enumerate() {
            let i = first + k;
            st.now.set(i, d);
            st.seen[i] = true;
            if d == self.prev.get(i) {
                continue;
            }
            let bytes = &piece.buf[k * block..((k + 1) * block).min(piece.buf.len())];
            let at = piece.offset + (k * block) as u64;
            // Zeros over earlier data are stored as zeros: the link must hide its parent there.
            self.link.write_at(bytes, at)?;
            n += bytes.len() as u64;
        }
        st.changed += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_hostile_files() {
        let mut t = BlockHashes::zeros(10 * 65536 + 512, 65536).unwrap();
        assert_eq!(t.len(), 11);
        t.set(3, t.digest(b"abc"));
        t.set(10, t.digest(&[1u8; 512]));
        assert_eq!(t.range(10), (655360, 512));
        let b = t.to_bytes();
        assert_eq!(b.len(), HEADER + 2 * ENTRY);
        assert_eq!(BlockHashes::from_bytes(&b, Path::new("x")).unwrap(), t);
        let mut bad = b.clone();
        bad[32] = 3; // count no longer fits the file
        assert!(BlockHashes::from_bytes(&bad, Path::new("x")).is_err());
        let mut bad = b.clone();
        bad[HEADER..HEADER + 8].copy_from_slice(&99u64.to_le_bytes());
        assert!(BlockHashes::from_bytes(&bad, Path::new("x")).is_err());
        let mut huge = b.clone();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(BlockHashes::from_bytes(&huge, Path::new("x")).is_err());
        assert!(BlockHashes::from_bytes(&b[..20], Path::new("x")).is_err());
    }

    #[test]
    fn block_sizes_keep_tables_bounded() {
        assert_eq!(block_size_for(1 << 30), 65536);
        assert_eq!(block_size_for(64 << 30), 65536);
        assert_eq!(block_size_for((64 << 30) + 1), 131072);
        assert!((62u64 << 40).div_ceil(block_size_for(62 << 40)) <= MAX_BLOCKS);
        assert_eq!(Algo::CURRENT.digest(&[0u8; 4096]), ZERO);
    }

    #[test]
    fn version_names_the_algorithm_and_old_tables_still_read() {
        let data = [5u8; 4096];
        let sha: Digest32 = Sha256::digest(data).into();
        let b3: Digest32 = *blake3::hash(&data).as_bytes();
        assert_ne!(sha, b3);
        assert_eq!(Algo::Sha256.digest(&data), sha);
        assert_eq!(Algo::Blake3.digest(&data), b3);
        for (algo, d) in [(Algo::Sha256, sha), (Algo::Blake3, b3)] {
            let mut t = BlockHashes::zeros_in(algo, 3 * 65536, 65536).unwrap();
            t.set(1, t.digest(&data));
            assert_eq!(t.get(1), d);
            let b = t.to_bytes();
            assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), algo.version());
            let back = BlockHashes::from_bytes(&b, Path::new("x")).unwrap();
            assert_eq!(back.algo(), algo, "a version-{} file reads as {algo:?}", algo.version());
            assert_eq!(back, t);
        }
        assert_eq!(BlockHashes::zeros(65536, 65536).unwrap().algo(), Algo::Blake3);
        let mut bad = BlockHashes::zeros(65536, 65536).unwrap().to_bytes();
        bad[8..12].copy_from_slice(&3u32.to_le_bytes());
        let e = BlockHashes::from_bytes(&bad, Path::new("x")).unwrap_err().to_string();
        assert!(e.contains("version 3"), "{e}");
    }
    #[test]
    fn a_pass_against_a_sha256_table_compares_in_sha256() {
        let d = tempfile::tempdir().unwrap();
        let block = 65536usize;
        let cap = 4 * block as u64;
        // The disk now: block 0 zeros (as before), block 1 as before, block 2 changed, block 3
        // zeros over earlier data.
        let mut bytes = vec![0u8; cap as usize];
        bytes[block..2 * block].fill(1);
        bytes[2 * block..3 * block].fill(2);
        let raw = d.path().join("now.raw");
        std::fs::write(&raw, &bytes).unwrap();
        // The table of an earlier version's backup: SHA-256 digests.
        let mut prev = BlockHashes::zeros_in(Algo::Sha256, cap, block as u64).unwrap();
        prev.set(1, Algo::Sha256.digest(&vec![1u8; block]));
        prev.set(2, Algo::Sha256.digest(&vec![9u8; block]));
        prev.set(3, Algo::Sha256.digest(&vec![3u8; block]));
        let host = vmdk::HostStorage::shared();
        let src = crate::vm::plain::PlainFile::open(&host, &raw).unwrap();
        let copts = vmdk::create::CreateOptions::new(vmdk::create::DiskFormat::MonoSparse, cap);
        let nd = vmdk::create::create(d.path().join("delta.vmdk"), &copts).unwrap();
        let t = ChangedOnly::new(nd.link(), &prev).unwrap();
        let mut e = crate::engine::EngineOptions::new();
        e.ordered = true;
        e.skip_zeros = false;
        e.align = block as u64;
        e.chunk = e.chunk.max(block as u64);
        crate::engine::copy(&src, &t, &e, &mut |_, _| {}, None).unwrap();
        let (now, changed) = t.finish().unwrap();
        assert_eq!(now.algo(), Algo::Sha256, "the digests now compare with the earlier table's");
        assert_eq!(now.get(1), prev.get(1));
        assert_eq!(now.get(2), Algo::Sha256.digest(&bytes[2 * block..3 * block]));
        assert_eq!(now.get(3), ZERO);
        // Block 1 is unchanged only when compared in SHA-256 (in BLAKE3 it would differ).
        assert_eq!(changed, 2 * block as u64, "blocks 2 and 3 changed, block 1 did not");
        let mut back = vec![0u8; block];
        nd.link().read_at(&mut back, 2 * block as u64).unwrap();
        assert_eq!(back, bytes[2 * block..3 * block]);
    }
}
