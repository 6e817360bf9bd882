//! The allocation map: the one answer every layer gives about where data is.
//!
//! A map is a sorted, gap-free list of [`Run`]s over a byte range. Each run is
//! [`State::Data`] (stored in this link), [`State::Zero`] (known zeros: a hole, a zeroed-grain entry,
//! a ZERO extent) or [`State::Absent`] (not in this link: read the parent, or zeros if there is none).
//! Chains merge maps top-down; the clone engine copies only `Data`.
//!
//! ## Walking a map
//!
//! A [`MapSource`] is anything whose map can be asked for: a [`crate::Link`], links stacked as a
//! chain reads them ([`crate::stack::Stack`], which `redo::Chain` uses), or a view such as the changed blocks of a
//! chain. [`runs`] is the one walker: an iterator of maximal runs over a range, which asks its
//! source for at most [`BATCH`] runs at a time. Every source answers in runs and skips what holds
//! nothing in one step (an unallocated grain table or a stretch of them, a hole, a ZERO extent), so
//! a walk costs in proportion to the runs and to the metadata that exists — never to the bytes or
//! grains of the range — and its memory stays bounded however large or fragmented the disk.

use std::sync::Arc;

use crate::error::{Error, Result};

/// Runs a walker asks its source for at a time (a source may return a few more, up to the end of
/// the grain table it stopped in).
pub const BATCH: usize = 4096;

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
}

/// Something whose allocation map can be walked: a link, a chain of links, a view of one.
pub trait MapSource {
    /// Capacity in bytes: maps cover `[0, capacity)`.
    fn capacity(&self) -> u64;

    /// Appends to `out` (empty, or ending at `offset`) the runs of `[offset, end)` in order, with
    /// the depth of the link answering each. May stop early, at a run boundary, once `out` holds
    /// `budget` runs or more; returns the offset it reached (`end` unless it stopped early, always
    /// more than `offset` when `offset < end`). A range outside `[0, capacity)` is an error.
    fn map_into(&self, offset: u64, end: u64, budget: usize, out: &mut AllocMap) -> Result<u64>;
}

impl<T: MapSource + ?Sized> MapSource for &T {
    fn capacity(&self) -> u64 {
        (**self).capacity()
    }
    fn map_into(&self, offset: u64, end: u64, budget: usize, out: &mut AllocMap) -> Result<u64> {
        (**self).map_into(offset, end, budget, out)
    }
}

impl<T: MapSource + ?Sized> MapSource for Arc<T> {
    fn capacity(&self) -> u64 {
        (**self).capacity()
    }
    fn map_into(&self, offset: u64, end: u64, budget: usize, out: &mut AllocMap) -> Result<u64> {
        (**self).map_into(offset, end, budget, out)
    }
}

/// The whole map of `[offset, offset+len)` of `src` in one [`AllocMap`] (for ranges whose runs are
/// known to be few; walk larger ones with [`runs`]).
pub fn collect<S: MapSource + ?Sized>(src: &S, offset: u64, len: u64) -> Result<AllocMap> {
    let end = offset.checked_add(len).ok_or_else(|| out_of_range(offset, len))?;
    let mut out = AllocMap::new();
    let mut pos = offset;
    while pos < end {
        pos = checked_step(pos, end, src.map_into(pos, end, usize::MAX, &mut out)?)?;
    }
    Ok(out)
}

/// Walks `[start, end)` of `src`: the maximal runs in order (neighbours in the same state at the
/// same depth are one run), fetched [`BATCH`] at a time.
pub fn runs<S: MapSource + ?Sized>(src: &S, start: u64, end: u64) -> Runs<'_, S> {
    Runs { src, pos: start, end, batch: Vec::new().into_iter(), held: None, failed: false }
}

/// Walks the whole disk of `src`: [`runs`] over `[0, capacity)`.
pub fn walk<S: MapSource + ?Sized>(src: &S) -> Runs<'_, S> {
    runs(src, 0, src.capacity())
}

/// The iterator [`runs`] returns. After an error it ends.
#[derive(Debug)]
pub struct Runs<'a, S: MapSource + ?Sized> {
    src: &'a S,
    /// Where the next batch starts.
    pos: u64,
    end: u64,
    batch: std::vec::IntoIter<Run>,
    /// The last run seen, held back until the next one shows it is complete.
    held: Option<Run>,
    failed: bool,
}

impl<S: MapSource + ?Sized> Runs<'_, S> {
    /// Where the walk has got to: every run before this offset has been fetched.
    pub fn position(&self) -> u64 {
        self.pos
    }
}

impl<S: MapSource + ?Sized> Iterator for Runs<'_, S> {
    type Item = Result<Run>;

    fn next(&mut self) -> Option<Result<Run>> {
        loop {
            if let Some(r) = self.batch.next() {
                match self.held.take() {
                    Some(h) if h.state == r.state && h.depth == r.depth && h.end() == r.offset => {
                        self.held = Some(Run { len: h.len + r.len, ..h });
                    }
                    Some(h) => {
                        self.held = Some(r);
                        return Some(Ok(h));
                    }
                    None => self.held = Some(r),
                }
                continue;
            }
            if self.failed || self.pos >= self.end {
                return self.held.take().map(Ok);
            }
            let mut m = AllocMap::new();
            let step =
                self.src.map_into(self.pos, self.end, BATCH, &mut m).and_then(|s| checked_step(self.pos, self.end, s));
            match step {
                Ok(stop) if m.len() == stop - self.pos && m.runs().first().is_none_or(|r| r.offset == self.pos) => {
                    self.pos = stop;
                    self.batch = m.into_runs().into_iter();
                }
                Ok(stop) => {
                    self.failed = true;
                    return Some(Err(Error::InvalidArgument(format!(
                        "map source answered {} bytes for [{}, {stop})",
                        m.len(),
                        self.pos
                    ))));
                }
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

pub(crate) fn out_of_range(offset: u64, len: u64) -> Error {
    Error::InvalidArgument(format!("map range of {len} bytes at {offset} overflows"))
}

/// Checks a source's answer to a request from `pos` to `end`: progress, and not past the end.
pub(crate) fn checked_step(pos: u64, end: u64, stop: u64) -> Result<u64> {
    if stop <= pos || stop > end {
        return Err(Error::InvalidArgument(format!("map source stopped at {stop} for a walk of [{pos}, {end})")));
    }
    Ok(stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces() {
        let mut m = AllocMap::new();
        m.push(0, 10, State::Data, 0);
        m.push(10, 5, State::Data, 0);
        m.push(15, 5, State::Absent, 0);
        m.push(20, 5, State::Zero, 0);
        assert_eq!(m.runs().len(), 3);
        assert_eq!(m.data_bytes(), 15);
        assert_eq!(m.len(), 25);
    }

    /// A source of `n` alternating one-byte runs that answers at most `per_call` runs at a time
    /// (whatever the budget), counting its calls.
    struct Striped {
        n: u64,
        per_call: u64,
        calls: std::cell::Cell<u64>,
    }

    impl MapSource for Striped {
        fn capacity(&self) -> u64 {
            self.n
        }
        fn map_into(&self, offset: u64, end: u64, budget: usize, out: &mut AllocMap) -> Result<u64> {
            self.calls.set(self.calls.get() + 1);
            let stop = end.min(offset + self.per_call.min(budget as u64));
            for o in offset..stop {
                let state = if (o / 3) % 2 == 0 { State::Data } else { State::Absent };
                out.push(o, 1, state, 0);
            }
            Ok(stop)
        }
    }

    #[test]
    fn walker_coalesces_across_batches() {
        let src = Striped { n: 100, per_call: 4, calls: Default::default() };
        let got: Vec<Run> = walk(&src).collect::<Result<_>>().unwrap();
        // Runs of three bytes each, though the source answered four bytes at a time.
        assert_eq!(got.len(), 34);
        assert!(got.iter().take(33).all(|r| r.len == 3));
        assert_eq!(got[1], Run { offset: 3, len: 3, state: State::Absent, depth: 0 });
        assert_eq!(got.iter().map(|r| r.len).sum::<u64>(), 100);
        assert_eq!(src.calls.get(), 25);
        let part: Vec<Run> = runs(&src, 5, 10).collect::<Result<_>>().unwrap();
        assert_eq!(part[0], Run { offset: 5, len: 1, state: State::Absent, depth: 0 });
        assert_eq!(part[2], Run { offset: 9, len: 1, state: State::Absent, depth: 0 });
        assert_eq!(collect(&src, 5, 5).unwrap().runs(), &part[..]);
    }

    /// A source that breaks the contract (no progress) ends the walk with an error.
    struct Stuck;

    impl MapSource for Stuck {
        fn capacity(&self) -> u64 {
            10
        }
        fn map_into(&self, offset: u64, _end: u64, _budget: usize, _out: &mut AllocMap) -> Result<u64> {
            Ok(offset)
        }
    }

    #[test]
    fn a_source_without_progress_is_an_error() {
        let mut w = walk(&Stuck);
        assert!(matches!(w.next(), Some(Err(Error::InvalidArgument(_)))));
        assert!(w.next().is_none());
    }
}
