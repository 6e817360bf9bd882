//! Change maps: the fixed-size blocks of a disk where a link holds something.
//!
//! A REDO link is, in the words of VMware's backup guides, "a bitmap of changes to the disk". The
//! change map of a link is built from its own allocation map (every `Data` or `Zero` run at depth 0
//! marks the blocks it touches), walked in runs ([`vmdk::map::walk`]), so building it costs in
//! proportion to what the link holds, not to its capacity. The union of the maps of the links above
//! a point in the chain is what changed since that point: above the base it is a differential,
//! above the previous snapshot an incremental.
//!
//! A map is kept as the sorted list of its runs of marked blocks, so it stays small for a huge disk
//! with few changes (a 64 TiB disk with one changed block is one run, where a bit per 64 KiB block
//! would take 128 MiB), and unions and differences cost in proportion to the runs.
//!
//! ## Serialized form
//!
//! Maps serialize to a small checksummed file a backup tool keeps between runs; the format is
//! documented in `redo/CHANGEMAP.md` ([`ChangeMap::to_bytes`], [`ChangeMap::from_bytes`]).

use vmdk::{Link, State};

/// Default block size: 64 KiB (a multiple of every default grain size).
pub const DEFAULT_BLOCK: u64 = 64 << 10;
const MAGIC: &[u8; 8] = b"VMKFSCHG";
/// The version [`ChangeMap::to_bytes`] writes.
pub const VERSION: u32 = 2;
/// Magic, version, block size, capacity, block count.
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
    /// Runs of marked blocks `(first, end)`, end exclusive: sorted, disjoint, never touching.
    runs: Vec<(u64, u64)>,
}

impl ChangeMap {
    /// An empty map of a disk of `capacity` bytes in blocks of `block` bytes.
    pub fn new(capacity: u64, block: u64) -> Result<ChangeMap, ChangeMapError> {
        if !block.is_power_of_two() || block < 512 {
            return Err(ChangeMapError::BlockSize(block));
        }
        Ok(ChangeMap { block, capacity, runs: Vec::new() })
    }

    /// The change map of one link: the blocks where the link itself holds data or known zeros.
    pub fn of_link(link: &Link, block: u64) -> Result<ChangeMap, ChangeMapError> {
        let mut m = ChangeMap::new(link.capacity(), block)?;
        for r in vmdk::map::walk(link) {
            let r = r?;
            if r.state != State::Absent {
                m.mark(r.offset, r.len);
            }
        }
        Ok(m)
    }

    fn blocks(&self) -> u64 {
        self.capacity.div_ceil(self.block)
    }

    /// Marks the blocks that `[offset, offset+len)` touches. Marking in increasing order (as a
    /// walk of a map does) appends; anywhere else it merges into the runs.
    pub fn mark(&mut self, offset: u64, len: u64) {
        if len == 0 || offset >= self.capacity {
            return;
        }
        let end = offset.saturating_add(len).min(self.capacity);
        let (a, b) = (offset / self.block, end.div_ceil(self.block));
        match self.runs.last_mut() {
            None => self.runs.push((a, b)),
            Some(last) if a > last.1 => self.runs.push((a, b)),
            Some(last) if a >= last.0 => last.1 = last.1.max(b),
            Some(_) => {
                // Every run touching [a, b) merges with it.
                let i = self.runs.partition_point(|r| r.1 < a);
                let j = self.runs.partition_point(|r| r.0 <= b);
                let merged = (
                    a.min(self.runs[i..j].first().map_or(a, |r| r.0)),
                    b.max(self.runs[i..j].last().map_or(b, |r| r.1)),
                );
                self.runs.splice(i..j, [merged]);
            }
        }
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
        let i = i as u64;
        let k = self.runs.partition_point(|r| r.1 <= i);
        self.runs.get(k).is_some_and(|r| r.0 <= i)
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
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.runs.len() + other.runs.len());
        let (mut a, mut b) = (self.runs.iter().peekable(), other.runs.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.0 <= y.0 => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => break,
            };
            let &(s, e) = next.expect("peeked");
            match out.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        self.runs = out;
        Ok(())
    }

    /// Removes every block of `other`.
    pub fn difference(&mut self, other: &ChangeMap) -> Result<(), ChangeMapError> {
        self.same_shape(other)?;
        let mut out = Vec::with_capacity(self.runs.len());
        let mut cut = other.runs.iter().peekable();
        for &(mut s, e) in &self.runs {
            while let Some(&&(cs, ce)) = cut.peek() {
                if ce <= s {
                    cut.next();
                    continue;
                }
                if cs >= e {
                    break;
                }
                if cs > s {
                    out.push((s, cs));
                }
                s = ce.max(s);
                if ce > e {
                    break;
                }
                cut.next();
            }
            if s < e {
                out.push((s, e));
            }
        }
        self.runs = out;
        Ok(())
    }

    /// Number of marked blocks.
    pub fn count(&self) -> usize {
        self.runs.iter().map(|r| r.1 - r.0).sum::<u64>() as usize
    }

    /// Bytes covered by marked blocks (the last block clipped to the capacity).
    pub fn changed_bytes(&self) -> u64 {
        self.ranges().map(|(_, l)| l).sum()
    }

    /// The marked byte ranges `(start, len)`, merged, clipped to the capacity.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges_in(0, self.capacity)
    }

    /// The marked byte ranges that meet `[offset, end)`, clipped to it (found by a binary search,
    /// so a walk of a huge map range by range costs in proportion to the ranges).
    pub fn ranges_in(&self, offset: u64, end: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let end = end.min(self.capacity);
        let first = self.runs.partition_point(|r| r.1.saturating_mul(self.block) <= offset);
        self.runs[first..].iter().map_while(move |&(a, b)| {
            let s = a.saturating_mul(self.block).max(offset);
            let e = b.saturating_mul(self.block).min(end);
            (s < e).then_some((s, e - s))
        })
    }

    /// Serializes (version 2, see the module documentation): magic, version, block, capacity, block
    /// count, the runs, and a CRC-32 of everything before it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 8 + self.runs.len() * 16 + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.block.to_le_bytes());
        out.extend_from_slice(&self.capacity.to_le_bytes());
        out.extend_from_slice(&self.blocks().to_le_bytes());
        out.extend_from_slice(&(self.runs.len() as u64).to_le_bytes());
        for &(a, b) in &self.runs {
            out.extend_from_slice(&a.to_le_bytes());
            out.extend_from_slice(&(b - a).to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses what [`ChangeMap::to_bytes`] wrote (version 2) or an older version 1 map, checking
    /// every field (lengths against the input before allocating, the checksum, the runs' order and
    /// bounds).
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
        if version != 1 && version != VERSION {
            return Err(bad(8, "unknown version"));
        }
        let (block, capacity, blocks) = (u64at(12), u64at(20), u64at(28));
        if !block.is_power_of_two() || block < 512 {
            return Err(bad(12, "bad block size"));
        }
        if capacity.div_ceil(block) != blocks {
            return Err(bad(28, "block count does not match capacity and block size"));
        }
        let body = b.len() - 4;
        let need = if version == 1 {
            blocks.div_ceil(64).checked_mul(8).and_then(|w| w.checked_add(HEADER as u64 + 4))
        } else {
            if b.len() < HEADER + 8 + 4 {
                return Err(bad(b.len(), "shorter than the header"));
            }
            u64at(HEADER).checked_mul(16).and_then(|r| r.checked_add(HEADER as u64 + 8 + 4))
        };
        if need != Some(b.len() as u64) {
            return Err(bad(b.len(), "length does not match the block or run count"));
        }
        let crc = u32::from_le_bytes(b[body..].try_into().expect("4 bytes"));
        if crc32fast::hash(&b[..body]) != crc {
            return Err(bad(body, "checksum mismatch"));
        }
        let mut m = ChangeMap::new(capacity, block).map_err(|_| bad(12, "bad block size"))?;
        if version == 1 {
            for (w, word) in b[HEADER..body].chunks_exact(8).enumerate() {
                let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
                // Bits past the block count mean nothing (version 1 readers ignored them too).
                for i in (0..64).filter(|i| word >> i & 1 == 1).map(|bit| w as u64 * 64 + bit).filter(|&i| i < blocks) {
                    m.mark(i * block, block);
                }
            }
            return Ok(m);
        }
        for k in 0..(body - HEADER - 8) / 16 {
            let at = HEADER + 8 + k * 16;
            let (first, count) = (u64at(at), u64at(at + 8));
            let end = first.checked_add(count).filter(|e| count > 0 && *e <= blocks);
            let Some(end) = end else { return Err(bad(at, "a run is empty or passes the block count")) };
            if m.runs.last().is_some_and(|l| first <= l.1) {
                return Err(bad(at, "runs are not in order, apart"));
            }
            m.runs.push((first, end));
        }
        Ok(m)
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

    /// The runs against a plain set of blocks, through marks in any order, unions and differences.
    #[test]
    fn runs_match_a_set_of_blocks() {
        let mut x: u64 = 7;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let cap = 200 * 512 + 100;
        for _ in 0..200 {
            let mut maps = [ChangeMap::new(cap, 512).unwrap(), ChangeMap::new(cap, 512).unwrap()];
            let mut sets = [std::collections::BTreeSet::new(), std::collections::BTreeSet::new()];
            for (m, set) in maps.iter_mut().zip(sets.iter_mut()) {
                for _ in 0..rnd(12) {
                    let (o, l) = (rnd(cap + 600), rnd(6 * 512));
                    m.mark(o, l);
                    if l > 0 && o < cap {
                        set.extend(o / 512..(o + l).min(cap).div_ceil(512));
                    }
                }
                let got: Vec<bool> = (0..cap.div_ceil(512) as usize).map(|i| m.is_set(i)).collect();
                let want: Vec<bool> = (0..cap.div_ceil(512)).map(|i| set.contains(&i)).collect();
                assert_eq!(got, want);
                assert_eq!(m.count(), set.len());
                assert_eq!(ChangeMap::from_bytes(&m.to_bytes()).unwrap(), *m);
            }
            let mut u = maps[0].clone();
            u.union(&maps[1]).unwrap();
            let us: Vec<u64> = sets[0].union(&sets[1]).copied().collect();
            assert_eq!((0..cap.div_ceil(512)).filter(|&i| u.is_set(i as usize)).collect::<Vec<_>>(), us);
            let mut d = maps[0].clone();
            d.difference(&maps[1]).unwrap();
            let ds: Vec<u64> = sets[0].difference(&sets[1]).copied().collect();
            assert_eq!((0..cap.div_ceil(512)).filter(|&i| d.is_set(i as usize)).collect::<Vec<_>>(), ds);
            assert!(d.runs.windows(2).all(|w| w[0].1 < w[1].0) && u.runs.windows(2).all(|w| w[0].1 < w[1].0));
        }
    }

    /// A version 1 map (a bit per block) is still read.
    #[test]
    fn reads_version_1() {
        let (block, cap) = (4096u64, 300 * 4096u64);
        let mut v1 = Vec::new();
        v1.extend_from_slice(MAGIC);
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&block.to_le_bytes());
        v1.extend_from_slice(&cap.to_le_bytes());
        v1.extend_from_slice(&300u64.to_le_bytes());
        let mut words = [0u64; 5];
        for i in [0usize, 1, 2, 70, 299] {
            words[i / 64] |= 1 << (i % 64);
        }
        for w in words {
            v1.extend_from_slice(&w.to_le_bytes());
        }
        let crc = crc32fast::hash(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        let m = ChangeMap::from_bytes(&v1).unwrap();
        assert_eq!(m.ranges().collect::<Vec<_>>(), vec![(0, 3 * 4096), (70 * 4096, 4096), (299 * 4096, 4096)]);
        assert_eq!(m.to_bytes().len(), HEADER + 8 + 3 * 16 + 4);
    }

    /// Runs out of order, overlapping or past the end are refused even with a good checksum.
    #[test]
    fn refuses_bad_runs() {
        let good = {
            let mut m = ChangeMap::new(100 * 512, 512).unwrap();
            m.mark(0, 512);
            m.mark(10 * 512, 512);
            m.to_bytes()
        };
        let reseal = |mut b: Vec<u8>| {
            let body = b.len() - 4;
            let crc = crc32fast::hash(&b[..body]);
            b[body..].copy_from_slice(&crc.to_le_bytes());
            b
        };
        let at = HEADER + 8;
        for (field, value) in [(at + 16, 0u64), (at + 16, 1), (at + 24, 0), (at + 24, 95), (at + 8, 11)] {
            let mut b = good.clone();
            b[field..field + 8].copy_from_slice(&value.to_le_bytes());
            let e = ChangeMap::from_bytes(&reseal(b)).unwrap_err();
            assert!(matches!(e, ChangeMapError::Corrupt { .. }), "{field}: {e}");
        }
        // A run count larger than the input is refused before anything is allocated.
        let mut b = good.clone();
        b[HEADER..HEADER + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(ChangeMap::from_bytes(&reseal(b)).is_err());
    }
}
