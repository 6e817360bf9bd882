//! Replication out of a restic repository: `vmkfs -i restic:PATH@SNAP:/VM/disk.raw -d FMT
//! REPLICA` makes a replica that records the point it holds, and `vmkfs --apply
//! restic:PATH@SNAP:/VM/disk.raw REPLICA` brings it to another snapshot writing only the blocks
//! whose blob IDs differ.
//!
//! **The recorded point** is three keys of the replica's disk database, plus its CID:
//!
//! ```text
//! ddb.vmkfs.resticRepository = "<repository ID (the config's id)>"
//! ddb.vmkfs.resticSnapshot   = "<snapshot ID, 64 hex digits>"
//! ddb.vmkfs.resticFile       = "/VM/disk.raw"
//! CID = the first 4 bytes of SHA-256("vmkfs restic point" repository snapshot file)
//! ```
//!
//! The CID is a function of the point, so every copy of one snapshot's file carries the same one,
//! and any write since (VMware and vmkfs give a disk a new CID on its first write) shows: the
//! recorded point is then not trusted.
//!
//! **What `--apply` writes.** With a trusted point (same repository and file, the CID of the
//! point, the recorded snapshot still in the repository) it compares the two snapshots' content
//! lists: a blob at the same offset with the same ID and length is unchanged; every other range is
//! written (a range of zeros is discarded in a base, written as zeros above a parent). This works
//! in both directions: an older snapshot than the recorded one brings the replica back to it.
//! When the point is not trusted — the replica was written since, or the recorded snapshot was
//! forgotten and pruned — every block of the replica is read and hashed against the new blob IDs
//! and only those that differ are written (`compare`). A replica that records no point, or the
//! point of another repository or file, is refused unless `--force` (then: `compare`), as a delta
//! apply refuses a replica at another CID: it may be another disk.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use rayon::prelude::*;
use redo::Chain;
use sha2::{Digest, Sha256};
use vmdk::map::{AllocMap, MapSource, State};
use vmdk::{Descriptor, OpenOptions};

use super::location::Location;
use super::snapshot::{self, Snapshot};
use super::tree::Node;
use super::vmdisk::RepoFile;
use super::{Id, Repo};
use crate::engine::{CopyStats, Source};
use crate::error::{Error, Result};
use crate::redo_ops::{copy_every_block, replicate, Replication};

/// Disk database key: the repository's ID.
pub const KEY_REPOSITORY: &str = "vmkfs.resticRepository";
/// Disk database key: the snapshot's ID.
pub const KEY_SNAPSHOT: &str = "vmkfs.resticSnapshot";
/// Disk database key: the file of the snapshot.
pub const KEY_FILE: &str = "vmkfs.resticFile";

/// Ranges of the replica compared (read and hashed) at a time.
const COMPARE_BATCH: usize = 64;

/// A point of a restic repository: one file of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// The repository's ID (its config's `id`: the same wherever the repository is stored).
    pub repository: String,
    /// The snapshot.
    pub snapshot: Id,
    /// The file in it, `/VM/disk.raw`.
    pub file: String,
}

impl Point {
    /// The point `d` records, if it records one.
    pub fn of_descriptor(d: &Descriptor) -> Option<Point> {
        Some(Point {
            repository: d.ddb(KEY_REPOSITORY)?.to_string(),
            snapshot: Id::parse(d.ddb(KEY_SNAPSHOT)?)?,
            file: d.ddb(KEY_FILE)?.to_string(),
        })
    }

    /// The disk database entries recording the point.
    pub fn ddb(&self) -> Vec<(String, String)> {
        vec![
            (KEY_REPOSITORY.into(), self.repository.clone()),
            (KEY_SNAPSHOT.into(), self.snapshot.hex()),
            (KEY_FILE.into(), self.file.clone()),
        ]
    }

    /// The CID a disk holding exactly this point carries (never `ffffffff` or `fffffffe`).
    pub fn cid(&self) -> u32 {
        let mut h = Sha256::new();
        for part in ["vmkfs restic point", &self.repository, &self.snapshot.hex(), &self.file] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        let c = u32::from_be_bytes(h.finalize()[..4].try_into().expect("4 bytes"));
        if c >= 0xffff_fffe {
            c - 2
        } else {
            c
        }
    }

    /// Records the point in `d` (its keys and its CID).
    pub fn record(&self, d: &mut Descriptor) {
        for (k, v) in self.ddb() {
            d.set_ddb(&k, v);
        }
        d.set_cid(self.cid());
    }
}

/// A file of a snapshot, located: the repository opened, the snapshot, the file's node.
pub struct SnapshotFile {
    /// The repository.
    pub repo: Repo,
    /// The snapshot's ID (`latest` and prefixes resolved).
    pub id: Id,
    /// The snapshot.
    pub snapshot: Snapshot,
    /// The file's path in it, with a leading `/`.
    pub path: String,
    /// Its node.
    pub node: Node,
}

impl SnapshotFile {
    /// Opens the repository of `restic:PATH@SNAP:/FILE` with `password` and finds the file (the
    /// snapshot `latest` when none is named).
    pub fn open(l: &Location, password: &[u8]) -> Result<SnapshotFile> {
        let file = l.file.as_deref().ok_or_else(|| {
            Error::Usage(format!("{}: name the file: restic:PATH@SNAPSHOT:/VM/disk.raw", l.path.display()))
        })?;
        let repo = Repo::open(&l.path, password)?;
        let (id, snap) = repo.find_snapshot(l.snapshot.as_deref().unwrap_or("latest"))?;
        let path = format!("/{}", file.trim_start_matches('/'));
        let node = snapshot::find_file(&repo, &snap, &path)?;
        Ok(SnapshotFile { repo, id, snapshot: snap, path, node })
    }

    /// The file as a disk source.
    pub fn source(&self) -> Result<RepoFile<'_>> {
        RepoFile::new(&self.repo, &self.path, self.content(), self.node.size)
    }

    fn content(&self) -> &[Id] {
        self.node.content.as_deref().unwrap_or_default()
    }

    /// The point this file is.
    pub fn point(&self) -> Point {
        Point { repository: self.repo.config.id.clone(), snapshot: self.id, file: self.path.clone() }
    }

    /// `restic:ABSOLUTE-PATH@FULL-ID:/FILE`: the location pinned to this snapshot (so that the
    /// re-run of an interrupted apply means the same snapshot even after `latest` moved).
    pub fn pinned(&self) -> String {
        let root = std::path::absolute(self.repo.root()).unwrap_or_else(|_| self.repo.root().to_path_buf());
        format!("restic:{}@{}:{}", root.display(), self.id.hex(), self.path)
    }
}

/// How an apply decided what to write.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The replica was at the snapshot already: nothing written.
    Already,
    /// The recorded snapshot's content list against the new one's.
    Diff,
    /// Every block of the replica hashed against the new blob IDs (why: in the report).
    Compare,
}

/// What [`apply`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The replica.
    pub replica: PathBuf,
    /// The snapshot it was brought to.
    pub snapshot: String,
    /// The snapshot it recorded before, if it recorded one.
    pub from: Option<String>,
    /// How the blocks to write were found.
    pub mode: Mode,
    /// Why every block was compared (in [`Mode::Compare`]).
    pub why: Option<String>,
    /// The new snapshot is older than the recorded one: the replica went back to it.
    pub older: bool,
    /// Ranges (blobs) that differed.
    pub ranges: u64,
    /// Bytes of data written.
    pub written: u64,
    /// Bytes made zero (discarded, or written as zeros above a parent).
    pub zeroed: u64,
    /// Bytes of the replica read to compare.
    pub compared: u64,
}

/// What to do, decided by [`Replication::check`].
enum Plan {
    /// Nothing decided yet.
    Unset,
    /// These blobs (indexes into the new file's blobs) differ.
    Ranges(Vec<usize>),
    /// Hash every block of the replica.
    Compare,
}

struct ResticApply<'a> {
    src: &'a SnapshotFile,
    file: RepoFile<'a>,
    force: bool,
    plan: Plan,
    report: Report,
}

impl ResticApply<'_> {
    /// The blobs of the new file that differ from the file of the recorded point `from`, or
    /// `None` when that point's file cannot be compared by content list (gone, another size).
    fn differing_from(&self, from: &Point) -> Result<Option<(Vec<usize>, bool)>> {
        let repo = &self.src.repo;
        let Some((_, old)) = repo.snapshots.iter().find(|(id, _)| *id == from.snapshot) else { return Ok(None) };
        let node = match snapshot::find_file(repo, old, &from.file) {
            Ok(n) => n,
            Err(Error::Usage(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if node.size != self.src.node.size {
            return Ok(None);
        }
        let old_file = RepoFile::new(repo, &from.file, node.content.as_deref().unwrap_or_default(), node.size)?;
        let same: std::collections::HashSet<(u64, Id, u64)> = old_file.blobs().iter().copied().collect();
        let diff = (0..self.file.blobs().len()).filter(|&i| !same.contains(&self.file.blobs()[i])).collect();
        Ok(Some((diff, snapshot::time_key(&old.time) > snapshot::time_key(&self.src.snapshot.time))))
    }

    /// The blobs whose bytes the replica does not hold: read and hashed (a range the replica's map
    /// holds no data in is zeros, equal to a zero blob without reading).
    fn differing_in(&mut self, chain: &Chain, cancel: Option<&AtomicBool>) -> Result<Vec<usize>> {
        let blobs = self.file.blobs();
        let mut has_data = vec![false; blobs.len()];
        for run in vmdk::map::walk(chain) {
            let run = run?;
            if run.state != State::Data || run.len == 0 {
                continue;
            }
            let first = blobs.partition_point(|b| b.0 + b.2 <= run.offset);
            for (i, b) in blobs.iter().enumerate().skip(first) {
                if b.0 >= run.end() {
                    break;
                }
                has_data[i] = true;
            }
        }
        let todo: Vec<usize> = (0..blobs.len()).filter(|&i| has_data[i] || !self.file.is_zero(i)).collect();
        let mut out = Vec::new();
        for batch in todo.chunks(COMPARE_BATCH) {
            if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
                return Err(Error::Interrupted);
            }
            let verdicts: Vec<Result<bool>> = batch
                .par_iter()
                .map(|&i| {
                    let (off, id, len) = blobs[i];
                    if !has_data[i] {
                        return Ok(false);
                    }
                    let mut buf = vec![0u8; len as usize];
                    chain.read_at(&mut buf, off)?;
                    Ok(Id::of(&buf) == id)
                })
                .collect();
            for (&i, v) in batch.iter().zip(verdicts) {
                if has_data[i] {
                    self.report.compared += blobs[i].2;
                }
                if !v? {
                    out.push(i);
                }
            }
        }
        Ok(out)
    }
}

impl Replication for ResticApply<'_> {
    fn check(&mut self, chain: &Chain, resumed: bool) -> Result<bool> {
        let target = chain.top();
        let to = self.src.point();
        if target.capacity() != self.src.node.size {
            return Err(redo::ChainError::CapacityMismatch {
                child: PathBuf::from(self.src.pinned()),
                parent: self.report.replica.clone(),
                child_capacity: self.src.node.size,
                parent_capacity: target.capacity(),
            }
            .into());
        }
        let d = target.descriptor();
        let from = Point::of_descriptor(&d);
        self.report.from = from.as_ref().map(|p| p.snapshot.hex());
        let foreign = match &from {
            None => Some("it records no restic point (it was not made by vmkfs -i restic:… or --apply)".to_string()),
            Some(p) if p.repository != to.repository => {
                Some(format!("it records a point of another repository ({})", p.repository))
            }
            Some(p) if p.file != to.file => Some(format!("it records another file ({})", p.file)),
            Some(_) => None,
        };
        if let Some(why) = foreign {
            if !self.force {
                return Err(Error::Refused(format!(
                    "{}: {why}; give --force to compare every block and write those that differ",
                    self.report.replica.display()
                )));
            }
            self.plan = Plan::Compare;
            self.report.why = Some(why);
            return Ok(false);
        }
        let from = from.expect("a point: checked above");
        if d.cid != from.cid() {
            self.plan = Plan::Compare;
            self.report.why =
                Some(format!("the replica was written since its point (CID {:08x}, not {:08x})", d.cid, from.cid()));
            return Ok(false);
        }
        if from == to && !resumed {
            self.report.mode = Mode::Already;
            return Ok(true);
        }
        match self.differing_from(&from)? {
            Some((ranges, older)) => {
                self.plan = Plan::Ranges(ranges);
                self.report.older = older;
            }
            None => {
                self.plan = Plan::Compare;
                self.report.why = Some(format!(
                    "the recorded snapshot {} (or its file) is no longer in the repository",
                    &from.snapshot.hex()[..8]
                ));
            }
        }
        Ok(false)
    }

    fn write(
        &mut self,
        chain: &Chain,
        progress: &mut dyn FnMut(u64, u64),
        cancel: Option<&AtomicBool>,
    ) -> Result<CopyStats> {
        let ranges = match std::mem::replace(&mut self.plan, Plan::Unset) {
            Plan::Ranges(r) => {
                self.report.mode = Mode::Diff;
                r
            }
            Plan::Compare => {
                self.report.mode = Mode::Compare;
                self.differing_in(chain, cancel)?
            }
            Plan::Unset => return Err(Error::Usage("an apply wrote before it was checked".into())),
        };
        self.report.ranges = ranges.len() as u64;
        let target = chain.top();
        let blobs = self.file.blobs();
        let (zero, data): (Vec<usize>, Vec<usize>) = ranges.into_iter().partition(|&i| self.file.is_zero(i));
        for &i in &zero {
            let (off, _, len) = blobs[i];
            // A hole above a parent would show the parent: zeros are written there.
            if chain.links().len() > 1 {
                target.zero_range(off, len)?;
            } else {
                target.discard(off, len)?;
            }
            self.report.zeroed += len;
        }
        let only = Only { file: &self.file, ranges: merged(data.iter().map(|&i| (blobs[i].0, blobs[i].2))) };
        let stats = copy_every_block(&only, target, progress, cancel)?;
        self.report.written = stats.written;
        Ok(stats)
    }

    fn record(&self, d: &mut Descriptor) {
        self.src.point().record(d);
    }
}

/// Adjacent ranges `(offset, length)` (in order) joined.
fn merged(ranges: impl Iterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, l) in ranges {
        match out.last_mut() {
            Some(last) if last.0 + last.1 == s => last.1 += l,
            _ => out.push((s, l)),
        }
    }
    out
}

/// The file's bytes, but only inside `ranges` (sorted, disjoint): the rest is `Absent`, which a
/// copy leaves as the target holds it.
struct Only<'a, 'r> {
    file: &'a RepoFile<'r>,
    ranges: Vec<(u64, u64)>,
}

impl MapSource for Only<'_, '_> {
    fn capacity(&self) -> u64 {
        self.file.capacity()
    }

    fn map_into(&self, offset: u64, end: u64, budget: usize, m: &mut AllocMap) -> vmdk::Result<u64> {
        let mut pos = offset;
        let first = self.ranges.partition_point(|r| r.0 + r.1 <= offset);
        for &(s, l) in &self.ranges[first..] {
            if s >= end {
                break;
            }
            let (s, e) = (s.max(pos), (s + l).min(end));
            m.push(pos, s - pos, State::Absent, 0);
            m.push(s, e - s, State::Data, 0);
            pos = e;
            if m.runs().len() >= budget {
                return Ok(pos);
            }
        }
        m.push(pos, end - pos, State::Absent, 0);
        Ok(end)
    }
}

impl Source for Only<'_, '_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vmdk::Result<()> {
        self.file.read_at(buf, offset)
    }
}

/// `--apply restic:PATH@SNAP:/FILE REPLICA`: brings `replica` (any writable disk, the top of its
/// chain) to the file of the snapshot `src`, writing only what differs (see the module comment);
/// crash-safe through [`replicate`]: the recorded point changes only after every block is in,
/// and an interrupted apply is finished by re-running it (the snapshot pinned by its full ID).
/// `force`: accept a replica that records no point (or another repository's, another file's)
/// and compare every block.
pub fn apply(
    src: &SnapshotFile,
    replica: &Path,
    opts: &OpenOptions,
    force: bool,
    progress: &mut dyn FnMut(u64, u64),
    cancel: Option<&AtomicBool>,
) -> Result<Report> {
    let _lock = src.repo.lock(false)?;
    let rerun = crate::phase::rerun_command(&["--apply", &src.pinned()], &[replica], opts);
    let mut how = ResticApply {
        src,
        file: src.source()?,
        force,
        plan: Plan::Unset,
        report: Report {
            replica: replica.to_path_buf(),
            snapshot: src.id.hex(),
            from: None,
            mode: Mode::Already,
            why: None,
            older: false,
            ranges: 0,
            written: 0,
            zeroed: 0,
            compared: 0,
        },
    };
    replicate(replica, opts, rerun, &mut how, progress, cancel)?;
    Ok(how.report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_round_trip_through_a_descriptor() {
        let p = Point { repository: "ab12".into(), snapshot: Id::of(b"snap"), file: "/vm/scsi0-0-os.raw".into() };
        let mut d = Descriptor::new(vmdk::descriptor::CreateType::parse("monolithicSparse"), 1);
        assert_eq!(Point::of_descriptor(&d), None);
        p.record(&mut d);
        let text = d.to_text();
        let back = Descriptor::parse(&text, Path::new("r.vmdk")).unwrap();
        assert_eq!(Point::of_descriptor(&back), Some(p.clone()));
        assert_eq!(back.cid, p.cid());
        let other = Point { file: "/vm/scsi0-1-data.raw".into(), ..p.clone() };
        assert_ne!(other.cid(), p.cid());
    }

    #[test]
    fn adjacent_ranges_merge() {
        assert_eq!(merged([(0, 4), (4, 4), (10, 2), (12, 1)].into_iter()), vec![(0, 8), (10, 3)]);
        assert_eq!(merged(std::iter::empty()), vec![]);
    }
}
