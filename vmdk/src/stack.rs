//! Reading links stacked as a chain: [`Stack`] merges the links' allocation maps top-down and reads
//! each run from the link that holds it. It sits above [`crate::link`] (it holds links) and
//! [`crate::map`] (it is a [`MapSource`]), so the map itself knows nothing of links.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::link::Link;
use crate::map::{checked_step, out_of_range, AllocMap, MapSource, Run, State, BATCH};

/// Links stacked top first, as a chain reads them: a range reads from the topmost link that holds
/// it (`Data` or `Zero`); `Absent` runs remain only where no link holds anything (they read as
/// zeros), at the depth of the bottom link.
#[derive(Debug, Clone, Copy)]
pub struct Stack<'a> {
    links: &'a [Arc<Link>],
}

impl<'a> Stack<'a> {
    /// The stack of `links` (top first; at least one).
    pub fn new(links: &'a [Arc<Link>]) -> Stack<'a> {
        assert!(!links.is_empty(), "a stack needs a link");
        Stack { links }
    }

    /// Reads `buf.len()` bytes at `offset` through the stack: one merged map of the range, then
    /// each run from the link that holds it ([`Link::read_own`]), zeros where none does.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64).ok_or_else(|| out_of_range(offset, buf.len() as u64))?;
        let mut pos = offset;
        while pos < end {
            let mut m = AllocMap::new();
            pos = checked_step(pos, end, self.map_into(pos, end, BATCH, &mut m)?)?;
            for r in m.runs() {
                let b = &mut buf[(r.offset - offset) as usize..(r.end() - offset) as usize];
                self.read_run(b, r)?;
            }
        }
        Ok(())
    }

    /// Reads the bytes of run `r` (of this stack's map) into `buf`: from the link at its depth
    /// when it is data, else zeros.
    pub fn read_run(&self, buf: &mut [u8], r: &Run) -> Result<()> {
        match (r.state, self.links.get(r.depth as usize)) {
            (State::Data, Some(l)) => l.read_own(buf, r.offset),
            (State::Data, None) => Err(Error::InvalidArgument(format!(
                "run at {} names depth {} of a stack of {} links",
                r.offset,
                r.depth,
                self.links.len()
            ))),
            _ => {
                buf.fill(0);
                Ok(())
            }
        }
    }
}

impl MapSource for Stack<'_> {
    fn capacity(&self) -> u64 {
        self.links[0].capacity()
    }
    fn map_into(&self, offset: u64, end: u64, budget: usize, out: &mut AllocMap) -> Result<u64> {
        stacked(self.links, 0, offset, end, budget, out)
    }
}

/// The merged map of `links` (the first at `depth`) over `[offset, end)`: each link's `Absent` runs
/// are asked of the links below, and the walk stops early (see [`MapSource::map_into`]) once `out`
/// holds `budget` runs.
fn stacked(links: &[Arc<Link>], depth: u32, offset: u64, end: u64, budget: usize, out: &mut AllocMap) -> Result<u64> {
    let (first, below) = links.split_first().expect("a stack has a link");
    let mut own = AllocMap::new();
    let stop = first.map_into(offset, end, budget.saturating_sub(out.runs().len()).max(1), &mut own)?;
    for r in own.into_runs() {
        if r.state != State::Absent || below.is_empty() {
            out.push(r.offset, r.len, r.state, depth);
        } else {
            let mut pos = r.offset;
            while pos < r.end() {
                pos = checked_step(pos, r.end(), stacked(below, depth + 1, pos, r.end(), budget, out)?)?;
                if pos < r.end() && out.runs().len() >= budget {
                    return Ok(pos);
                }
            }
        }
        if out.runs().len() >= budget {
            return Ok(r.end());
        }
    }
    Ok(stop)
}
