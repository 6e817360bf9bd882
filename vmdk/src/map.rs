//! The allocation map: the one answer every layer gives about where data is.
//!
//! A map is a sorted, gap-free list of [`Run`]s over a byte range. Each run is
//! [`State::Data`] (stored in this link), [`State::Zero`] (known zeros: a hole, a zeroed-grain entry,
//! a ZERO extent) or [`State::Absent`] (not in this link: read the parent, or zeros if there is none).
//! Chains merge maps top-down; the clone engine copies only `Data`.

/// What a range of a link holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Stored in this link.
    Data,
    /// Known to read as zeros, whatever lies below.
    Zero,
    /// Not in this link: falls through to the parent (zeros when there is none).
    Absent,
}

/// A run of bytes in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Start, in bytes of the virtual disk.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// What the run holds.
    pub state: State,
    /// Which link answered: 0 = the top link, 1 = its parent, …
    pub depth: u32,
}

impl Run {
    /// End offset (exclusive).
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// A sorted, contiguous, coalesced list of runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllocMap {
    runs: Vec<Run>,
}

impl AllocMap {
    /// An empty map.
    pub fn new() -> AllocMap {
        AllocMap::default()
    }

    /// Appends a run, which must start where the map ends; merges with the last run when equal.
    pub fn push(&mut self, offset: u64, len: u64, state: State, depth: u32) {
        if len == 0 {
            return;
        }
        if let Some(last) = self.runs.last_mut() {
            debug_assert_eq!(last.end(), offset, "runs must be contiguous");
            if last.state == state && last.depth == depth && last.end() == offset {
                last.len += len;
                return;
            }
        }
        self.runs.push(Run { offset, len, state, depth });
    }

    /// Appends every run of `other` (which must start where this map ends).
    pub fn extend(&mut self, other: &AllocMap) {
        for r in &other.runs {
            self.push(r.offset, r.len, r.state, r.depth);
        }
    }

    /// The runs.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// Consumes the map, returning the runs.
    pub fn into_runs(self) -> Vec<Run> {
        self.runs
    }

    /// Bytes in `Data` runs.
    pub fn data_bytes(&self) -> u64 {
        self.runs.iter().filter(|r| r.state == State::Data).map(|r| r.len).sum()
    }

    /// Total bytes covered.
    pub fn len(&self) -> u64 {
        self.runs.iter().map(|r| r.len).sum()
    }

    /// True when no runs.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Replaces each `Absent` run with what `below` says for that range, one level deeper.
    /// `below(offset, len)` must return a map covering exactly that range.
    pub fn fill_absent<E>(&self, mut below: impl FnMut(u64, u64) -> Result<AllocMap, E>) -> Result<AllocMap, E> {
        let mut out = AllocMap::new();
        for r in &self.runs {
            if r.state == State::Absent {
                let sub = below(r.offset, r.len)?;
                for s in sub.runs {
                    out.push(s.offset, s.len, s.state, s.depth + 1);
                }
            } else {
                out.push(r.offset, r.len, r.state, r.depth);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_and_fills() {
        let mut m = AllocMap::new();
        m.push(0, 10, State::Data, 0);
        m.push(10, 5, State::Data, 0);
        m.push(15, 5, State::Absent, 0);
        m.push(20, 5, State::Zero, 0);
        assert_eq!(m.runs().len(), 3);
        assert_eq!(m.data_bytes(), 15);
        let filled = m
            .fill_absent(|o, l| {
                let mut b = AllocMap::new();
                b.push(o, 2, State::Data, 0);
                b.push(o + 2, l - 2, State::Absent, 0);
                Ok::<_, ()>(b)
            })
            .unwrap();
        assert_eq!(filled.runs()[1], Run { offset: 15, len: 2, state: State::Data, depth: 1 });
        assert_eq!(filled.runs()[2], Run { offset: 17, len: 3, state: State::Absent, depth: 1 });
        assert_eq!(filled.len(), 25);
    }
}
