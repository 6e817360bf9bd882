//! REDO-chain operations on top of the `redo` crate: commit through the copy engine, changed
//! blocks between points of a chain.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use redo::{Chain, ChangeMap, CommitReport, RedoError};
use vmdk::map::MapSource;
use vmdk::{AllocMap, Link, OpenOptions};

use crate::engine::{copy, CopyStats, EngineOptions, Source};
use crate::error::{Error, Result};

/// A link's own data, as a copy source: its map (absent and zero ranges are not copied) and its
/// own bytes, never its parent's.
pub struct OwnData<'a>(pub &'a Link);

impl MapSource for OwnData<'_> {
    fn capacity(&self) -> u64 {
        self.0.capacity()
    }
    fn map_into(&self, offset: u64, end: u64, budget: usize, out: &mut AllocMap) -> vmdk::Result<u64> {
        self.0.map_into(offset, end, budget, out)
    }
}

impl Source for OwnData<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vmdk::Result<()> {
        self.0.read_own(buf, offset)
    }
}

/// `-m`: merges the REDO link at `path` into its parent (crash-safe; see [`redo::commit`]).
pub fn commit(
    path: &Path,
    opts: &OpenOptions,
    progress: &mut dyn FnMut(u64, u64),
    cancel: Option<&AtomicBool>,
) -> Result<CommitReport> {
    let rerun = crate::phase::rerun_command(&["-m"], &[path], opts);
    Ok(redo::commit_with(path, opts, rerun, |link: &Link, parent: &Chain| {
        copy_every_block(&OwnData(link), parent.top(), progress, cancel).map(|_| ()).map_err(|e| match e {
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

/// The blocks that changed above `since` (a link of the open `chain`; `None`: the base) — the
/// union of the change maps of the links above it, in blocks of `block` bytes.
pub fn changed_in(chain: &Chain, since: Option<&Path>, block: u64) -> Result<ChangeMap> {
    Ok(changes_in(chain, since, block)?.0)
}

/// `--changed-blocks --since-map FILE`: the blocks the chain marks now (above `since`, default
/// the base) that the change map saved in `saved` (the bytes of a `--save-map` file) did not
/// mark — what changed in blocks that were still unchanged when the map was saved. The saved
/// map's block size is used; its capacity must be the disk's.
pub fn changed_since_map(path: &Path, since: Option<&Path>, saved: &[u8], opts: &OpenOptions) -> Result<ChangeMap> {
    let old = ChangeMap::from_bytes(saved)?;
    let chain = Chain::open(path, opts)?;
    if old.capacity() != chain.capacity() {
        return Err(Error::Refused(format!(
            "the saved change map is of a disk of {} bytes, {} has {} bytes",
            old.capacity(),
            path.display(),
            chain.capacity()
        )));
    }
    let mut now = changes_in(&chain, since, old.block())?.0;
    now.difference(&old)?;
    Ok(now)
}

/// What `--uniqueblocks` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unique {
    /// Bytes of data the child links store (in 512-byte sectors).
    pub held: u64,
    /// Of those, the bytes no link below stores data for.
    pub unique: u64,
}

/// `--uniqueblocks CHILD [PARENT]`: the bytes of data the links of CHILD's chain above PARENT
/// (default: CHILD's own link) store where PARENT and the links below it store none, counted in
/// 512-byte sectors. Holes and zeroed grains are not data.
pub fn unique_blocks(child: &Path, parent: Option<&Path>, opts: &OpenOptions) -> Result<Unique> {
    let chain = Chain::open(child, opts)?;
    let links = chain.links();
    if links.len() < 2 {
        return Err(Error::Usage(format!("{} has no parent: it is the base of its chain", child.display())));
    }
    let stop = match parent {
        None => 1,
        Some(p) => changes_in(&chain, Some(p), 512)?.1,
    };
    let data_of = |ls: &[std::sync::Arc<Link>]| -> Result<ChangeMap> {
        let mut m = ChangeMap::new(chain.capacity(), 512)?;
        for l in ls {
            mark_data(&mut m, l)?;
        }
        Ok(m)
    };
    let mut unique = data_of(&links[..stop])?;
    let held = unique.changed_bytes();
    unique.difference(&data_of(&links[stop..])?)?;
    Ok(Unique { held, unique: unique.changed_bytes() })
}

/// Marks in `m` every `Data` run of `link`'s own map.
fn mark_data(m: &mut ChangeMap, link: &Link) -> Result<()> {
    for r in vmdk::map::walk(link) {
        let r = r?;
        if r.state == vmdk::State::Data && r.depth == 0 {
            m.mark(r.offset, r.len);
        }
    }
    Ok(())
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
    Ok((union_of_links(&links[..stop], chain.capacity(), block)?, stop))
}

/// The union of the change maps of `links` (a disk of `capacity` bytes, blocks of `block`): what
/// changed in them, i.e. above the link below the last of them.
pub fn union_of_links(links: &[std::sync::Arc<Link>], capacity: u64, block: u64) -> Result<ChangeMap> {
    let mut m = ChangeMap::new(capacity, block)?;
    for l in links {
        m.union(&ChangeMap::of_link(l, block)?)?;
    }
    Ok(m)
}

/// The chain's content, but only inside the blocks of a change map (everything else is absent).
pub struct Masked<'a> {
    /// The chain read.
    pub chain: &'a Chain,
    /// The blocks that count.
    pub changes: &'a ChangeMap,
}

/// The changed ranges are `Data` (at depth 0: reads go through the chain), the rest `Absent`.
impl MapSource for Masked<'_> {
    fn capacity(&self) -> u64 {
        self.chain.capacity()
    }
    fn map_into(&self, offset: u64, end: u64, budget: usize, m: &mut AllocMap) -> vmdk::Result<u64> {
        let mut pos = offset;
        for (s, l) in self.changes.ranges_in(offset, end) {
            m.push(pos, s - pos, vmdk::State::Absent, 0);
            m.push(s, l, vmdk::State::Data, 0);
            pos = s + l;
            if m.runs().len() >= budget {
                return Ok(pos);
            }
        }
        m.push(pos, end - pos, vmdk::State::Absent, 0);
        Ok(end)
    }
}

impl Source for Masked<'_> {
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
/// `sealed`, if given, is called with the delta's files once they hold their final bytes, before
/// they are flushed and put in place (a backup hashes them meanwhile).
#[allow(clippy::too_many_arguments)]
pub fn export_delta(
    top: &Path,
    since: &Path,
    dst: &Path,
    opts: &OpenOptions,
    force: bool,
    progress: &mut dyn FnMut(u64, u64),
    cancel: Option<&AtomicBool>,
    sealed: Option<&mut crate::clone::Sealed<'_>>,
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
    copy_every_block(&Masked { chain: &chain, changes: &changes }, new.link(), progress, cancel)?;
    new.link().update_descriptor(|d| d.set_cid(top_cid))?;
    if let Some(sealed) = sealed {
        sealed(&new.seal()?);
    }
    Ok(new.commit()?)
}

/// What [`apply_delta`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The delta's blocks were written; the replica now has this CID.
    Now(u32),
    /// The replica already had the delta's CID (an earlier run applied it): nothing was written.
    Already(u32),
}

/// A copy of `src` into `dst` that writes the zero blocks inside `src`'s data ranges too (a
/// zero block left out would show what `dst` or its parent held there before): the copy of a
/// commit, a replication and an export of changes.
pub(crate) fn copy_every_block<T: crate::engine::Target>(
    src: &dyn Source,
    dst: &T,
    progress: &mut dyn FnMut(u64, u64),
    cancel: Option<&AtomicBool>,
) -> Result<CopyStats> {
    let mut e = EngineOptions::new();
    e.skip_zeros = false;
    copy(src, dst, &e, progress, cancel)
}

/// One way of bringing a replica to a new point — an exported REDO link ([`apply_delta`]), a file
/// of a restic snapshot ([`crate::repo::replica`]) — as [`replicate`] drives it: checks, the data
/// phase, and the point the replica records afterwards.
pub trait Replication {
    /// Whether the replica may keep its child `child` (a link naming it as its parent, by real
    /// path): a delta placed beside the replica is the one being merged; any other child reads the
    /// replica as it is and forbids the change.
    fn allows_child(&self, _child: &Path) -> bool {
        false
    }

    /// Before the data phase (`resumed`: a re-run of an interrupted one): `Ok(true)` when the
    /// replica (the top of `chain`) is at the point already and nothing is to be written; an error
    /// refuses the replication.
    fn check(&mut self, chain: &Chain, resumed: bool) -> Result<bool>;

    /// The data phase: writes into the top of `chain` what it needs to reach the point. Must give
    /// the same result when run again over a replica an interrupted run left half written.
    fn write(
        &mut self,
        chain: &Chain,
        progress: &mut dyn FnMut(u64, u64),
        cancel: Option<&AtomicBool>,
    ) -> Result<CopyStats>;

    /// The point reached, recorded in the replica's descriptor (its CID, disk database keys).
    fn record(&self, d: &mut vmdk::Descriptor);
}

/// Brings `replica` to the point `how` describes, through the transaction home: the replica is
/// locked exclusively (opened for writing, keeping its CID), the data phase runs under an intent
/// whose re-run is `rerun`, and the new point is recorded in the descriptor only as the last step,
/// after every block is in and the replica is closed cleanly. While the data phase runs (or after
/// it was interrupted) the replica is refused to every command but this re-run, which writes again
/// and finishes. Returns `None` when the replica was at the point already (nothing written).
pub fn replicate(
    replica: &Path,
    opts: &OpenOptions,
    rerun: Vec<String>,
    how: &mut dyn Replication,
    progress: &mut dyn FnMut(u64, u64),
    cancel: Option<&AtomicBool>,
) -> Result<Option<CopyStats>> {
    let storage = &opts.storage;
    let mut resumed = None;
    if let Some(i) = vmdk::txn::pending(storage, replica)? {
        let rec = i.record().clone();
        match (rec.op.as_str(), &rec.rerun) {
            ("apply", Some(r)) if *r == rerun => resumed = Some(i),
            ("apply", Some(_)) => {
                let rerun = rec.rerun_text().unwrap_or_default();
                return Err(vmdk::Error::Interrupted { path: replica.into(), op: rec.op, rerun }.into());
            }
            _ => {
                drop(i);
                vmdk::txn::settle(storage.as_ref(), replica)?;
            }
        }
    }
    let rchain =
        Chain::open(replica, &OpenOptions { write: true, keep_cid: true, allow_children: true, ..opts.clone() })?;
    let target = rchain.top();
    if how.check(&rchain, resumed.is_some())? {
        return Ok(None);
    }
    if let Some(child) = target.children().into_iter().find(|c| !how.allows_child(&storage.real_path(c))) {
        return Err(vmdk::Error::HasChildren { path: replica.into(), child, what: "applying to it".into() }.into());
    }
    let mut intent = match resumed {
        Some(i) => i,
        None => vmdk::txn::Intent::begin(storage, target.real_path(), "apply", &[], Some(rerun))?,
    };
    let stats = how.write(&rchain, progress, cancel)?;
    target.flush()?;
    let mut d = target.descriptor();
    how.record(&mut d);
    let steps = target.descriptor_update(&d)?.map(|(_, s)| s).into_iter().collect();
    // The replica closed cleanly (its unclean-shutdown flag cleared) before the data phase ends.
    rchain.close()?;
    intent.set_steps(steps)?;
    intent.finish()?;
    Ok(Some(stats))
}

/// [`apply_delta`]'s [`Replication`]: the delta's own data, its zeros, its CID.
struct DeltaApply<'a> {
    delta: &'a Path,
    replica: &'a Path,
    dl: Link,
    opts: &'a OpenOptions,
    force: bool,
}

impl Replication for DeltaApply<'_> {
    fn allows_child(&self, child: &Path) -> bool {
        child == self.dl.real_path()
    }

    fn check(&mut self, chain: &Chain, resumed: bool) -> Result<bool> {
        let target = chain.top();
        let (want, have, cid) = (self.dl.descriptor().parent_cid, target.descriptor().cid, self.dl.descriptor().cid);
        if !resumed && !self.force {
            if have == cid {
                return Ok(true);
            }
            if want != have {
                return Err(out_of_order(self.delta, self.replica, want, have, self.opts));
            }
        }
        if self.dl.capacity() != target.capacity() {
            return Err(redo::ChainError::CapacityMismatch {
                child: self.delta.into(),
                parent: self.replica.into(),
                child_capacity: self.dl.capacity(),
                parent_capacity: target.capacity(),
            }
            .into());
        }
        Ok(false)
    }

    fn write(
        &mut self,
        chain: &Chain,
        progress: &mut dyn FnMut(u64, u64),
        cancel: Option<&AtomicBool>,
    ) -> Result<CopyStats> {
        let stats = copy_every_block(&OwnData(&self.dl), chain.top(), progress, cancel)?;
        // A hole in a replica that has a parent would show the parent: zeros are written there.
        redo::commit::apply_zeros(&self.dl, chain.top(), chain.links().len() > 1)?;
        Ok(stats)
    }

    fn record(&self, d: &mut vmdk::Descriptor) {
        d.set_cid(self.dl.descriptor().cid);
    }
}

/// Replication: applies an exported REDO link (`delta`) onto `replica`, a copy of the link it was
/// exported against. The replica's CID must be the delta's parentCID (unless `force`); afterwards
/// the replica has the delta's CID, so the next incremental applies on top. A replica that already
/// has the delta's CID is left as it is ([`Applied::Already`]), so a rerun after success is
/// harmless; a delta for a later point is refused naming the CID the replica must reach first (and
/// the delta in `delta`'s folder that would bring it there, if one is).
///
/// The copy into the replica is a data phase in the sense of [`vmdk::txn`] ([`replicate`]).
pub fn apply_delta(
    delta: &Path,
    replica: &Path,
    opts: &OpenOptions,
    force: bool,
    progress: &mut dyn FnMut(u64, u64),
    cancel: Option<&AtomicBool>,
) -> Result<Applied> {
    let rerun = crate::phase::rerun_command(&["--apply"], &[delta, replica], opts);
    let dl = Link::open(delta, &OpenOptions { write: false, ..opts.clone() })?;
    let cid = dl.descriptor().cid;
    let mut how = DeltaApply { delta, replica, dl, opts, force };
    Ok(match replicate(replica, opts, rerun, &mut how, progress, cancel)? {
        Some(_) => Applied::Now(cid),
        None => Applied::Already(cid),
    })
}

/// The refusal of a delta that does not follow the replica's point: names the CID needed and, if
/// one of the deltas beside `delta` would bring the replica there, that delta.
fn out_of_order(delta: &Path, replica: &Path, want: u32, have: u32, opts: &OpenOptions) -> Error {
    let dir = vmdk::txn::folder(delta);
    let peek = |p: &Path| vmdk::family::peek(opts.storage.as_ref(), p).ok().flatten().map(|p| p.descriptor);
    let missing = opts.storage.list_dir(dir).into_iter().map(|n| dir.join(n)).find(|p| {
        p.extension().is_some_and(|x| x == "vmdk")
            && peek(p).is_some_and(|d| d.cid == want && d.parent_cid == have && d.parent_file_name_hint.is_some())
    });
    let next = match missing {
        Some(p) => format!("apply {} first", p.display()),
        None => format!("the delta that takes CID {have:08x} to {want:08x} is missing"),
    };
    Error::Refused(format!(
        "{}: out of order for {}: it applies to a replica at CID {want:08x}, but the replica is at {have:08x}: {next}",
        delta.display(),
        replica.display()
    ))
}

/// The links of the chain at `path`, top first (for messages).
pub fn chain_paths(path: &Path, opts: &OpenOptions) -> Result<Vec<PathBuf>> {
    Ok(Chain::open(path, opts)?.links().iter().map(|l| l.path().to_path_buf()).collect())
}
