//! REDO-chain operations on top of the `redo` crate: commit through the copy engine, changed
//! blocks between points of a chain.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use redo::{Chain, ChangeMap, CommitReport, RedoError};
use vmdk::{AllocMap, Link, OpenOptions};

use crate::engine::{copy, EngineOptions, Source};
use crate::error::{Error, Result};

/// A link's own data, as a copy source: its map (absent and zero ranges are not copied) and its
/// own bytes, never its parent's.
pub struct OwnData<'a>(pub &'a Link);

impl Source for OwnData<'_> {
    fn capacity(&self) -> u64 {
        self.0.capacity()
    }
    fn map(&self, offset: u64, len: u64) -> vmdk::Result<AllocMap> {
        self.0.map(offset, len)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vmdk::Result<()> {
        self.0.read_own(buf, offset)
    }
}

/// True when writes to `link` allocate grains (sparse or COWD extents), so the engine should write
/// in disk order through one writer.
pub fn needs_ordered_writes(link: &Link) -> bool {
    link.extents().iter().any(|e| matches!(e.kind, "SPARSE" | "VMFSSPARSE"))
}

/// `-m`: merges the REDO link at `path` into its parent (crash-safe; see [`redo::commit`]).
pub fn commit(
    path: &Path,
    opts: &OpenOptions,
    progress: &mut dyn FnMut(u64, u64),
    cancel: Option<&AtomicBool>,
) -> Result<CommitReport> {
    Ok(redo::commit_with(path, opts, |link, parent| {
        let target = parent.top();
        let mut e = EngineOptions::new();
        e.skip_zeros = false;
        e.ordered = needs_ordered_writes(target);
        copy(&OwnData(link), target, &e, progress, cancel).map(|_| ()).map_err(|e| match e {
            Error::Vmdk(v) => RedoError::Link(v),
            Error::Chain(c) => RedoError::Chain(c),
            Error::Interrupted => RedoError::Interrupted,
            other => RedoError::Refused { path: path.into(), why: other.to_string() },
        })
    })?)
}

/// `--changed-blocks`: the blocks that changed above `since` (a link of the chain; default: the
/// base), i.e. the union of the change maps of the links above it.
pub fn changed_blocks(path: &Path, since: Option<&Path>, block: u64, opts: &OpenOptions) -> Result<ChangeMap> {
    let chain = Chain::open(path, opts)?;
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let links = chain.links();
    let stop = match since {
        None => links.len() - 1,
        Some(s) => {
            let s = canon(s);
            links.iter().position(|l| canon(l.path()) == s).ok_or_else(|| {
                let names: Vec<String> = links.iter().map(|l| l.path().display().to_string()).collect();
                Error::Usage(format!("{} is not a link of this chain ({})", s.display(), names.join(" -> ")))
            })?
        }
    };
    let mut m = ChangeMap::new(chain.capacity(), block)?;
    for l in &links[..stop] {
        m.union(&ChangeMap::of_link(l, block)?)?;
    }
    Ok(m)
}

/// The links of the chain at `path`, top first (for messages).
pub fn chain_paths(path: &Path, opts: &OpenOptions) -> Result<Vec<PathBuf>> {
    Ok(Chain::open(path, opts)?.links().iter().map(|l| l.path().to_path_buf()).collect())
}
