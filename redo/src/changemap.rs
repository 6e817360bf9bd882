//! Change maps: one bit per fixed-size block of the disk, set where a link holds something.
//!
//! A REDO link is, in the words of VMware's backup guides, "a bitmap of changes to the disk". The
//! change map of a link is built from its own allocation map (every `Data` or `Zero` run at depth 0
//! marks the blocks it touches). The union of the maps of the links above a point in the chain is
//! what changed since that point: above the base it is a differential, above the previous snapshot
//! an incremental. Maps serialize to a small checksummed file a backup tool can keep between runs.

use bitvec::prelude::*;

use vmdk::{Link, State};

/// Default block size: 64 KiB (a multiple of every default grain size).
pub const DEFAULT_BLOCK: u64 = 64 << 10;
const MAGIC: &[u8; 8] = b"VMKFSCHG";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 8 + 8 + 8;

/// Errors of change-map operations.
#[derive(Debug, thiserror::Error)]
pub enum ChangeMapError {
    /// Reading the link's allocation map failed.
    #[error(transparent)]
    Link(#[from] vmdk::Error),
    /// Two maps of different shapes were combined.
    #[error("change maps differ in shape: {0}")]
    Shape(String),
    /// A serialized map is damaged.
    #[error("change map is damaged at byte {offset}: {what}")]
    Corrupt {
        /// Byte offset in the serialized map.
        offset: usize,
        /// What is wrong.
        what: String,
    },
    /// A bad block size.
    #[error("block size {0} must be a power of two of at least 512 bytes")]
    BlockSize(u64),
}

/// A set of changed blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeMap {
    block: u64,
    capacity: u64,
    bits: BitVec<u64, Lsb0>,
}

impl ChangeMap {
    /// An empty map of a disk of `capacity` bytes in blocks of `block` bytes.
    pub fn new(capacity: u64, block: u64) -> Result<ChangeMap, ChangeMapError> {
        if !block.is_power_of_two() || block < 512 {
            return Err(ChangeMapError::BlockSize(block));
        }
        Ok(ChangeMap { block, capacity, bits: bitvec![u64, Lsb0; 0; capacity.div_ceil(block) as usize] })
    }

    /// The change map of one link: the blocks where the link itself holds data or known zeros.
    pub fn of_link(link: &Link, block: u64) -> Result<ChangeMap, ChangeMapError> {
        let mut m = ChangeMap::new(link.capacity(), block)?;
        let cap = link.capacity();
        let mut off = 0;
        while off < cap {
            let n = (1u64 << 30).min(cap - off);
            for r in link.map(off, n)?.runs() {
                if r.state != State::Absent {
                    m.mark(r.offset, r.len);
                }
            }
            off += n;
        }
        Ok(m)
    }

    /// Marks the blocks that `[offset, offset+len)` touches.
    pub fn mark(&mut self, offset: u64, len: u64) {
        if len == 0 || offset >= self.capacity {
            return;
        }
        let end = (offset + len).min(self.capacity);
        let (a, b) = ((offset / self.block) as usize, end.div_ceil(self.block) as usize);
        self.bits[a..b].fill(true);
    }

    /// Block size in bytes.
    pub fn block(&self) -> u64 {
        self.block
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// True if block `i` is marked.
    pub fn is_set(&self, i: usize) -> bool {
        self.bits.get(i).is_some_and(|b| *b)
    }

    fn same_shape(&self, other: &ChangeMap) -> Result<(), ChangeMapError> {
        if self.block != other.block || self.capacity != other.capacity {
            return Err(ChangeMapError::Shape(format!(
                "{} bytes in {}-byte blocks vs {} bytes in {}-byte blocks",
                self.capacity, self.block, other.capacity, other.block
            )));
        }
        Ok(())
    }

    /// Adds every block of `other`.
    pub fn union(&mut self, other: &ChangeMap) -> Result<(), ChangeMapError> {
        self.same_shape(other)?;
        self.bits |= &other.bits;
        Ok(())
    }

    /// Removes every block of `other`.
    pub fn difference(&mut self, other: &ChangeMap) -> Result<(), ChangeMapError> {
        self.same_shape(other)?;
        let not = !other.bits.clone();
        self.bits &= &not;
        Ok(())
    }

    /// Number of marked blocks.
    pub fn count(&self) -> usize {
        self.bits.count_ones()
    }

    /// Bytes covered by marked blocks (the last block clipped to the capacity).
    pub fn changed_bytes(&self) -> u64 {
        self.ranges().map(|(_, l)| l).sum()
    }

    /// The marked byte ranges, merged, clipped to the capacity.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut i = 0usize;
        let n = self.bits.len();
        std::iter::from_fn(move || {
            let start = i + self.bits[i..].first_one()?;
            let end = start + self.bits[start..].first_zero().unwrap_or(n - start);
            i = end;
            let s = start as u64 * self.block;
            let e = (end as u64 * self.block).min(self.capacity);
            Some((s, e - s))
        })
    }

    /// Serializes: magic, version, block, capacity, bit count, the bits as little-endian u64 words,
    /// and a CRC-32 of everything before it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.bits.as_raw_slice().len() * 8 + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.block.to_le_bytes());
        out.extend_from_slice(&self.capacity.to_le_bytes());
        out.extend_from_slice(&(self.bits.len() as u64).to_le_bytes());
        for w in self.bits.as_raw_slice() {
            out.extend_from_slice(&w.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses what [`ChangeMap::to_bytes`] wrote, checking every field before allocating.
    pub fn from_bytes(b: &[u8]) -> Result<ChangeMap, ChangeMapError> {
        let bad = |offset: usize, what: &str| ChangeMapError::Corrupt { offset, what: what.into() };
        if b.len() < HEADER + 4 {
            return Err(bad(b.len(), "shorter than the header"));
        }
        if &b[..8] != MAGIC {
            return Err(bad(0, "not a vmkfs change map (magic)"));
        }
        let u64at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(bad(8, "unknown version"));
        }
        let (block, capacity, nbits) = (u64at(12), u64at(20), u64at(28));
        if !block.is_power_of_two() || block < 512 {
            return Err(bad(12, "bad block size"));
        }
        if capacity.div_ceil(block) != nbits {
            return Err(bad(28, "bit count does not match capacity and block size"));
        }
        let words = nbits.div_ceil(64);
        let need = words.checked_mul(8).and_then(|w| w.checked_add(HEADER as u64 + 4));
        if need != Some(b.len() as u64) {
            return Err(bad(b.len(), "length does not match the bit count"));
        }
        let body = b.len() - 4;
        let crc = u32::from_le_bytes(b[body..].try_into().expect("4 bytes"));
        if crc32fast::hash(&b[..body]) != crc {
            return Err(bad(body, "checksum mismatch"));
        }
        let raw: Vec<u64> =
            b[HEADER..body].chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        let mut bits = BitVec::<u64, Lsb0>::from_vec(raw);
        bits.truncate(nbits as usize);
        Ok(ChangeMap { block, capacity, bits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_unions_and_round_trips() {
        let mut a = ChangeMap::new(1 << 20, 4096).unwrap();
        a.mark(100, 10);
        a.mark(8192, 8192);
        let mut b = ChangeMap::new(1 << 20, 4096).unwrap();
        b.mark(4096 * 4, 1);
        b.mark((1 << 20) - 1, 5);
        assert_eq!(a.ranges().collect::<Vec<_>>(), vec![(0, 4096), (8192, 8192)]);
        a.union(&b).unwrap();
        assert_eq!(a.ranges().collect::<Vec<_>>(), vec![(0, 4096), (8192, 12288), ((1 << 20) - 4096, 4096)]);
        let back = ChangeMap::from_bytes(&a.to_bytes()).unwrap();
        assert_eq!(back, a);
        a.difference(&b).unwrap();
        assert_eq!(a.count(), 3);
        let mut bytes = back.to_bytes();
        bytes[40] ^= 1;
        assert!(matches!(ChangeMap::from_bytes(&bytes), Err(ChangeMapError::Corrupt { .. })));
        assert!(ChangeMap::from_bytes(&bytes[..20]).is_err());
        assert!(a.union(&ChangeMap::new(1 << 20, 8192).unwrap()).is_err());
    }

    #[test]
    fn clips_to_capacity() {
        let mut m = ChangeMap::new(10_000, 4096).unwrap();
        m.mark(9000, 5000);
        assert_eq!(m.ranges().collect::<Vec<_>>(), vec![(8192, 1808)]);
        assert_eq!(m.changed_bytes(), 1808);
    }
}
