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
    Ok(changes_in(&chain, since, block)?.0)
}

/// The change map above `since` in an open chain, and the index of `since` in its links.
fn changes_in(chain: &Chain, since: Option<&Path>, block: u64) -> Result<(ChangeMap, usize)> {
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
    Ok((m, stop))
}

/// The chain's content, but only inside the blocks of a change map (everything else is absent).
pub struct Masked<'a> {
    /// The chain read.
    pub chain: &'a Chain,
    /// The blocks that count.
    pub changes: &'a ChangeMap,
}

impl Source for Masked<'_> {
    fn capacity(&self) -> u64 {
        self.chain.capacity()
    }
    fn map(&self, offset: u64, len: u64) -> vmdk::Result<AllocMap> {
        let end = offset + len;
        let mut m = AllocMap::new();
        let mut pos = offset;
        for (s, l) in self.changes.ranges() {
            let (s, e) = (s.max(offset), (s + l).min(end));
            if s >= e {
                continue;
            }
            m.push(pos, s - pos, vmdk::State::Absent, 0);
            m.push(s, e - s, vmdk::State::Data, 0);
            pos = e;
        }
        m.push(pos, end - pos, vmdk::State::Absent, 0);
        Ok(m)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vmdk::Result<()> {
        self.chain.read_at(buf, offset)
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Incremental export: writes the blocks that changed above `since` in the chain topped by `top`
/// as a new REDO link at `dst` whose parent is `since` (by file name, so it chains onto a copy of
/// that link placed beside it) and whose CID is `top`'s, the state it brings a replica to. ESX
/// chains give an ESX delta (vmfsSparse + COWD), hosted ones a monolithicSparse child.
pub fn export_delta(
    top: &Path,
    since: &Path,
    dst: &Path,
    opts: &OpenOptions,
    force: bool,
    progress: &mut dyn FnMut(u64, u64),
    cancel: Option<&AtomicBool>,
) -> Result<PathBuf> {
    let chain = Chain::open(top, opts)?;
    let (changes, stop) = changes_in(&chain, Some(since), redo::changemap::DEFAULT_BLOCK)?;
    let base = &chain.links()[stop];
    let bd = base.descriptor();
    let top_cid = chain.top().descriptor().cid;
    let parent = vmdk::create::Parent { hint: file_name(base.path()), cid: bd.cid };
    let cap = chain.capacity();
    let mut copts = vmdk::create::CreateOptions::new(vmdk::DiskFormat::MonoSparse, cap);
    copts.force = force;
    copts.storage = opts.storage.clone();
    copts.parent = Some(parent.clone());
    let esx = redo::snapshot::is_esx_type(&chain.top().descriptor().create_type);
    let new =
        if esx { vmdk::create::create_delta(dst, cap, &parent, &copts)? } else { vmdk::create::create(dst, &copts)? };
    let mut e = EngineOptions::new();
    e.skip_zeros = false;
    e.ordered = true;
    copy(&Masked { chain: &chain, changes: &changes }, new.link(), &e, progress, cancel)?;
    new.link().update_descriptor(|d| d.set_cid(top_cid))?;
    Ok(new.commit()?)
}

/// Replication: applies an exported REDO link (`delta`) onto `replica`, a copy of the link it was
/// exported against. The replica's CID must be the delta's parentCID (unless `force`); afterwards
/// the replica has the delta's CID, so the next incremental applies on top. Like a commit, the
/// replica keeps its CID until every byte is in, so an interrupted apply can simply be rerun.
pub fn apply_delta(
    delta: &Path,
    replica: &Path,
    opts: &OpenOptions,
    force: bool,
    progress: &mut dyn FnMut(u64, u64),
    cancel: Option<&AtomicBool>,
) -> Result<u32> {
    let dl = Link::open(delta, &OpenOptions { write: false, ..opts.clone() })?;
    let rchain = Chain::open(replica, &OpenOptions { write: true, keep_cid: true, ..opts.clone() })?;
    let target = rchain.top();
    let (want, have) = (dl.descriptor().parent_cid, target.descriptor().cid);
    if want != have && !force {
        return Err(redo::ChainError::CidMismatch {
            child: delta.into(),
            parent: replica.into(),
            expected: want,
            found: have,
        }
        .into());
    }
    if dl.capacity() != target.capacity() {
        return Err(redo::ChainError::CapacityMismatch {
            child: delta.into(),
            parent: replica.into(),
            child_capacity: dl.capacity(),
            parent_capacity: target.capacity(),
        }
        .into());
    }
    let mut e = EngineOptions::new();
    e.skip_zeros = false;
    e.ordered = needs_ordered_writes(target);
    copy(&OwnData(&dl), target, &e, progress, cancel)?;
    let cap = dl.capacity();
    let mut off = 0;
    while off < cap {
        let n = (1u64 << 30).min(cap - off);
        for r in dl.map(off, n)?.runs().iter().filter(|r| r.state == vmdk::State::Zero) {
            // A hole in a replica that has a parent would show the parent: write zeros there.
            if rchain.links().len() > 1 {
                target.zero_range(r.offset, r.len)?;
            } else {
                target.discard(r.offset, r.len)?;
            }
        }
        off += n;
    }
    target.flush()?;
    let cid = dl.descriptor().cid;
    target.update_descriptor(|d| d.set_cid(cid))?;
    drop(dl);
    rchain.close()?;
    Ok(cid)
}

/// The links of the chain at `path`, top first (for messages).
pub fn chain_paths(path: &Path, opts: &OpenOptions) -> Result<Vec<PathBuf>> {
    Ok(Chain::open(path, opts)?.links().iter().map(|l| l.path().to_path_buf()).collect())
}
