//! Intent records: how a multi-file operation survives being interrupted at any system call.
//!
//! An operation that changes several files first makes every new file under a temporary name and
//! syncs it, then writes its **intent record** `.PRIMARY.vmkfs-intent` beside its primary disk (and a
//! copy in every other folder it touches): the list of [`Step`]s — renames, removals, in-place
//! writes — that take the files from "before" to "after". Each step can be replayed any number of
//! times with the same result. Then it makes the steps, syncs the folders and removes the record.
//! Its owner holds an exclusive lock on the record for the whole operation.
//!
//! Every command, before it opens a disk, calls [`settle`]: a record naming that disk whose owner
//! is gone (its lock is free) is replayed to the end and removed, so what the command sees is the
//! "after" state; a record whose owner is alive makes the command wait or fail as locked.
//!
//! Some operations change data in place before their files change (a commit copies the link into
//! its parent; an apply copies a delta into a replica): those cannot be undone, and only the
//! operation itself can redo them. Their record carries `rerun`, the command that finishes them,
//! while the data phase runs; [`settle`] then refuses every other command on the disks with
//! [`Error::Interrupted`] naming that command, and the command itself takes the record over with
//! [`pending`] and starts its data phase again (which is idempotent).
//!
//! The record is versioned JSON after a header line carrying a CRC-32 of it; it is always written
//! whole under a temporary name and renamed into place, so a reader never sees half of one.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{file_name, folder, is_temp_name, sweep_stale_temps, temp_name};
use crate::error::{Error, Result};
use crate::storage::{Backing, LockMode, Storage};
use crate::txn::sealed::{seal, unseal};

/// The name suffix of intent records.
pub const SUFFIX: &str = ".vmkfs-intent";
/// The first word of the header line.
const MAGIC: &str = "vmkfs-intent";
/// The record format version.
const VERSION: u32 = 1;
/// Largest record read (a commit of a link with many children stays far below).
const MAX_RECORD: u64 = 16 << 20;

/// One replayable step of an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case")]
pub enum Step {
    /// Rename `from` to `to`, replacing `to` if it exists. Done when `from` is gone and `to` exists.
    Rename {
        /// The file renamed (usually a temporary name).
        from: PathBuf,
        /// Its new name.
        to: PathBuf,
    },
    /// Rename `from` to `to`, which must not exist (a file we did not create is never replaced).
    RenameNew {
        /// The file renamed.
        from: PathBuf,
        /// Its new name, free when the record was written.
        to: PathBuf,
    },
    /// Remove `path` if it exists.
    Remove {
        /// The file removed.
        path: PathBuf,
    },
    /// Write `data` (hex) at byte `offset` of `path`, then sync it (an embedded descriptor, a CID).
    Write {
        /// The file written.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// The bytes, as lower-case hex.
        data: String,
    },
}

impl Step {
    /// A [`Step::Write`] of `bytes`.
    pub fn write(path: impl Into<PathBuf>, offset: u64, bytes: &[u8]) -> Step {
        Step::Write { path: path.into(), offset, data: bytes.iter().map(|b| format!("{b:02x}")).collect() }
    }

    /// The temporary file this step consumes, if any (the stale-file sweep keeps it).
    fn source(&self) -> Option<&Path> {
        match self {
            Step::Rename { from, .. } | Step::RenameNew { from, .. } => Some(from),
            _ => None,
        }
    }

    /// Makes the step, or finds it made.
    fn replay(&self, storage: &dyn Storage, record: &Path) -> Result<()> {
        let fail = |what: String| Error::corrupt(record, 0, format!("cannot finish the recorded operation: {what}"));
        match self {
            Step::Rename { from, to } => {
                if storage.exists(from) {
                    storage.rename(from, to)
                } else if storage.exists(to) {
                    Ok(())
                } else {
                    Err(fail(format!("neither {} nor {} exists", from.display(), to.display())))
                }
            }
            Step::RenameNew { from, to } => match (storage.exists(from), storage.exists(to)) {
                (true, false) => storage.rename_noreplace(from, to),
                (false, true) => Ok(()),
                (true, true) => {
                    // The hard-link fallback of a no-replace rename was interrupted between its link
                    // and its unlink: both names are the same file.
                    let a = storage.open(from, false)?.identity();
                    let b = storage.open(to, false)?.identity();
                    if a.is_some() && a == b {
                        storage.remove(from)
                    } else {
                        Err(fail(format!(
                            "{} exists and is not the file {} was to become",
                            to.display(),
                            from.display()
                        )))
                    }
                }
                (false, false) => Err(fail(format!("neither {} nor {} exists", from.display(), to.display()))),
            },
            Step::Remove { path } => {
                if storage.exists(path) {
                    storage.remove(path)
                } else {
                    Ok(())
                }
            }
            Step::Write { path, offset, data } => {
                let bytes = unhex(data).ok_or_else(|| fail(format!("the bytes for {} are not hex", path.display())))?;
                let b = storage.open(path, true)?;
                b.write_all_at(&bytes, *offset)?;
                b.sync()
            }
        }
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// What an intent record says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The operation (`create`, `commit`, `rename`, …), for messages.
    pub op: String,
    /// The process that wrote it.
    pub pid: u32,
    /// Every disk (main file, by real path) the operation involves.
    pub disks: Vec<PathBuf>,
    /// While the data phase runs: the command (arguments) that finishes it.
    pub rerun: Option<Vec<String>>,
    /// The steps from "before" to "after" (empty while only reserved, or during the data phase).
    pub steps: Vec<Step>,
    /// Every copy of this record (one per folder the operation touches).
    pub copies: Vec<PathBuf>,
    /// A creation that is undone rather than finished when interrupted before its last step (the
    /// rename that makes the new disk visible under its name): every step is a
    /// [`Step::RenameNew`] of a new file, so undoing removes exactly what it made, and the disk
    /// reads as before — absent — so re-running the creation simply starts again.
    #[serde(default)]
    pub undo_unless_last: bool,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        seal(MAGIC, VERSION, self)
    }

    fn decode(raw: &[u8], path: &Path) -> Result<Record> {
        unseal(raw, path, MAGIC, VERSION, "intent record")
    }

    /// The command that finishes it, as one shell-like string.
    pub fn rerun_text(&self) -> Option<String> {
        self.rerun.as_ref().map(|a| a.iter().map(|s| shell_quote(s)).collect::<Vec<_>>().join(" "))
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Intent records this process owns (their lock is ours, so [`settle`] passes them by).
static OWNED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn owned(p: &Path) -> bool {
    OWNED.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|o| o == p)
}

fn own(paths: &[PathBuf], yes: bool) {
    let mut o = OWNED.lock().unwrap_or_else(|e| e.into_inner());
    for p in paths {
        if yes {
            o.push(p.clone());
        } else if let Some(i) = o.iter().position(|x| x == p) {
            o.swap_remove(i);
        }
    }
}

/// The record path for an operation whose primary disk is `primary` (a real path), in `dir`.
fn record_path(dir: &Path, primary: &Path) -> PathBuf {
    dir.join(format!(".{}{SUFFIX}", file_name(primary)))
}

/// True for the name of an intent record.
pub fn is_record_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(SUFFIX) && name.len() > SUFFIX.len() + 1
}

fn read_record(storage: &dyn Storage, path: &Path) -> Result<Record> {
    let b = storage.open(path, false)?;
    let len = b.len()?;
    if len > MAX_RECORD {
        return Err(Error::corrupt(path, 0, format!("intent record of {len} bytes is larger than {MAX_RECORD}")));
    }
    let mut raw = vec![0u8; len as usize];
    b.read_exact_at(&mut raw, 0)?;
    Record::decode(&raw, path)
}

/// An operation in progress: its record, locked by this process.
pub struct Intent {
    storage: Arc<dyn Storage>,
    record: Record,
    /// One lock per copy of the record.
    locks: Vec<Arc<dyn Backing>>,
    finished: bool,
}

impl std::fmt::Debug for Intent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intent").field("record", &self.record).finish_non_exhaustive()
    }
}

impl Intent {
    /// Reserves an operation `op` on `primary` (its main file) involving `disks` (primaries
    /// included; every path is made real here): writes and locks its record in the folder of each
    /// disk. `rerun` is the command that finishes the operation if its data phase is interrupted
    /// (see the module text); `None` for operations whose steps alone finish them.
    ///
    /// A record left for `primary` by a dead process is settled first (see [`settle`]); one held
    /// by a live process is [`Error::Locked`].
    pub fn begin(
        storage: &Arc<dyn Storage>,
        primary: &Path,
        op: &str,
        disks: &[PathBuf],
        rerun: Option<Vec<String>>,
    ) -> Result<Intent> {
        if !storage.is_writable() {
            return Err(Error::ReadOnly { path: primary.into(), what: "the storage is read-only".into() });
        }
        let primary = storage.real_path(primary);
        let mut all: Vec<PathBuf> = vec![primary.clone()];
        for d in disks {
            let r = storage.real_path(d);
            if !all.contains(&r) {
                all.push(r);
            }
        }
        for d in &all {
            settle(storage.as_ref(), d)?;
        }
        let mut dirs: Vec<PathBuf> = Vec::new();
        for d in &all {
            let dir = folder(d).to_path_buf();
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        let copies: Vec<PathBuf> = dirs.iter().map(|d| record_path(d, &primary)).collect();
        let record = Record {
            op: op.into(),
            pid: std::process::id(),
            disks: all,
            rerun,
            steps: Vec::new(),
            copies,
            undo_unless_last: false,
        };
        let mut intent = Intent { storage: storage.clone(), record, locks: Vec::new(), finished: false };
        for c in intent.record.copies.clone() {
            let lock = intent.write_copy(&c, true)?;
            intent.locks.push(lock);
            own(std::slice::from_ref(&c), true);
        }
        Ok(intent)
    }

    /// Writes the record at `path` under a temporary name and renames it into place (without
    /// replacing an existing record when `new`); returns the new file, locked.
    fn write_copy(&self, path: &Path, new: bool) -> Result<Arc<dyn Backing>> {
        let tmp = temp_name(path);
        let b = self.storage.create_new(&tmp)?;
        let placed = b.write_all_at(&self.record.encode(), 0).and_then(|_| b.sync()).and_then(|_| {
            if new {
                self.storage.rename_noreplace(&tmp, path)
            } else {
                self.storage.rename(&tmp, path)
            }
        });
        if let Err(e) = placed {
            let _ = self.storage.remove(&tmp);
            return Err(match e {
                Error::Exists { .. } => Error::Locked {
                    path: path.into(),
                    holder: describe_owner(self.storage.as_ref(), path).unwrap_or_else(|| "another process".into()),
                },
                e => e,
            });
        }
        self.storage.sync_dir(folder(path))?;
        Ok(b)
    }

    /// The record.
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// Records the steps from "before" to "after" and ends the data phase (`rerun` cleared): from
    /// now on an interruption is finished by whoever comes next. Written to every copy before it
    /// returns.
    pub fn set_steps(&mut self, steps: Vec<Step>) -> Result<()> {
        self.record.steps = steps;
        self.record.rerun = None;
        self.rewrite()
    }

    /// Records the steps of a creation: only [`Step::RenameNew`]s of new files, the one that makes
    /// the disk visible last. Interrupted before that last one, the creation is undone by whoever
    /// comes next (see [`Record::undo_unless_last`]); after it, finished.
    pub fn set_creation_steps(&mut self, steps: Vec<Step>) -> Result<()> {
        if !steps.iter().all(|s| matches!(s, Step::RenameNew { .. })) {
            return Err(Error::InvalidArgument("a creation's steps must all be no-replace renames".into()));
        }
        self.record.undo_unless_last = true;
        self.set_steps(steps)
    }

    /// Enters (or re-enters) a data phase finished only by re-running `rerun`.
    pub fn set_rerun(&mut self, rerun: Vec<String>) -> Result<()> {
        self.record.rerun = Some(rerun);
        self.rewrite()
    }

    fn rewrite(&mut self) -> Result<()> {
        let mut locks = Vec::new();
        for c in self.record.copies.clone() {
            locks.push(self.write_copy(&c, false)?);
        }
        self.locks = locks;
        Ok(())
    }

    /// Makes the recorded steps, syncs the folders, and removes the record.
    pub fn finish(mut self) -> Result<()> {
        if let Some(r) = self.record.rerun_text() {
            return Err(Error::InvalidArgument(format!(
                "intent {}: finished during its data phase ({r})",
                self.record.op
            )));
        }
        replay(self.storage.as_ref(), &self.record, &self.record.copies[0], false)?;
        self.finished = true;
        own(&self.record.copies, false);
        Ok(())
    }

    /// Gives the operation up before anything it recorded was done: removes the record.
    pub fn abandon(mut self) -> Result<()> {
        remove_copies(self.storage.as_ref(), &self.record)?;
        self.finished = true;
        own(&self.record.copies, false);
        Ok(())
    }
}

impl Drop for Intent {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // A reservation with nothing recorded yet changed nothing: it goes. A record with steps, or
        // in a data phase, stays for the next command (or the re-run) to finish.
        if self.record.steps.is_empty() && self.record.rerun.is_none() {
            let _ = remove_copies(self.storage.as_ref(), &self.record);
        }
        self.locks.clear();
        own(&self.record.copies, false);
    }
}

fn remove_copies(storage: &dyn Storage, record: &Record) -> Result<()> {
    for c in &record.copies {
        if storage.exists(c) {
            storage.remove(c)?;
        }
        storage.sync_dir(folder(c))?;
    }
    Ok(())
}

/// Makes every step of `record` (found at `at`) — or, when `recovering` from an interruption,
/// undoes a creation interrupted before its last step — syncs the folders involved, removes the
/// copies.
fn replay(storage: &dyn Storage, record: &Record, at: &Path, recovering: bool) -> Result<()> {
    if recovering && record.undo_unless_last {
        if let Some(Step::RenameNew { from, .. }) = record.steps.last() {
            if storage.exists(from) {
                return undo_creation(storage, record);
            }
        }
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    for s in &record.steps {
        s.replay(storage, at)?;
        let p = match s {
            Step::Rename { to, .. } | Step::RenameNew { to, .. } => to,
            Step::Remove { path } | Step::Write { path, .. } => path,
        };
        let d = folder(p).to_path_buf();
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    for d in &dirs {
        storage.sync_dir(d)?;
    }
    remove_copies(storage, record)
}

/// Undoes a creation interrupted before its last step: removes every new file, under whichever name
/// it has, then the record.
fn undo_creation(storage: &dyn Storage, record: &Record) -> Result<()> {
    for s in &record.steps {
        if let Step::RenameNew { from, to } = s {
            if storage.exists(from) {
                storage.remove(from)?;
            } else if storage.exists(to) {
                storage.remove(to)?;
            }
            storage.sync_dir(folder(to))?;
        }
    }
    remove_copies(storage, record)
}

/// Who owns the record at `path`, for messages (`process 12 (vmkfs -m x.vmdk), running commit`).
fn describe_owner(storage: &dyn Storage, path: &Path) -> Option<String> {
    let rec = read_record(storage, path).ok();
    let holders = rdm::lock_holders(path);
    let who = if holders.is_empty() {
        rec.as_ref().map(|r| format!("process {}", r.pid)).unwrap_or_else(|| "another process".into())
    } else {
        holders.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(", ")
    };
    Some(match rec {
        Some(r) => format!("{who}, which is running {}", r.op),
        None => who,
    })
}

/// Before a command touches the disk at `path`: finishes every interrupted operation recorded in
/// its folder that involves it (see the module text), then removes temporary files that dead
/// processes left there. Fails with [`Error::Locked`] while such an operation's owner is alive,
/// and with [`Error::Interrupted`] (naming the command to re-run) when one was interrupted in its
/// data phase.
pub fn settle(storage: &dyn Storage, path: &Path) -> Result<()> {
    if !storage.is_writable() {
        return Ok(());
    }
    let real = storage.real_path(path);
    let dir = folder(&real).to_path_buf();
    let names = storage.list_dir(&dir);
    if !names.iter().any(|n| is_record_name(n) || is_temp_name(n)) {
        return Ok(());
    }
    let mut keep: HashSet<PathBuf> = HashSet::new();
    for n in names.iter().filter(|n| is_record_name(n)) {
        let rp = dir.join(n);
        let rec = match read_record(storage, &rp) {
            Ok(r) => r,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if owned(&rp) || !rec.disks.contains(&real) {
            keep.extend(rec.steps.iter().filter_map(|s| s.source().map(Path::to_path_buf)));
            continue;
        }
        let lock = match storage.open_locked(&rp, LockMode::Exclusive, std::time::Duration::ZERO) {
            Ok(l) => l,
            Err(Error::Locked { .. }) => {
                let holder = describe_owner(storage, &rp).unwrap_or_else(|| "another process".into());
                return Err(Error::Locked { path: path.into(), holder });
            }
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        // Read again under the lock: the owner may have finished it meanwhile.
        let rec = match read_record(storage, &rp) {
            Ok(r) => r,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if let Some(rerun) = rec.rerun_text() {
            return Err(Error::Interrupted { path: path.into(), op: rec.op.clone(), rerun });
        }
        replay(storage, &rec, &rp, true)?;
        drop(lock);
    }
    let keep: Vec<PathBuf> = keep.into_iter().collect();
    sweep_stale_temps(storage, &dir, &names, &keep);
    Ok(())
}

/// For a command that finishes its own interrupted operation: the record left for `primary` by a
/// process that is gone, taken over (locked) by this one, or `None` when there is none. A live owner
/// is [`Error::Locked`].
pub fn pending(storage: &Arc<dyn Storage>, primary: &Path) -> Result<Option<Intent>> {
    if !storage.is_writable() {
        return Ok(None);
    }
    let primary = storage.real_path(primary);
    let rp = record_path(folder(&primary), &primary);
    if !storage.exists(&rp) {
        return Ok(None);
    }
    let rec = read_record(storage.as_ref(), &rp)?;
    let mut locks = Vec::new();
    for c in &rec.copies {
        match storage.open_locked(c, LockMode::Exclusive, std::time::Duration::ZERO) {
            Ok(l) => locks.push(l),
            Err(Error::Locked { .. }) => {
                let holder = describe_owner(storage.as_ref(), c).unwrap_or_else(|| "another process".into());
                return Err(Error::Locked { path: primary, holder });
            }
            // A copy in another folder already removed by a replay that stopped half-way.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let rec = read_record(storage.as_ref(), &rp)?;
    own(&rec.copies, true);
    Ok(Some(Intent { storage: storage.clone(), record: rec, locks, finished: false }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::HostStorage;

    #[test]
    fn record_round_trip_and_damage() {
        let r = Record {
            op: "commit".into(),
            pid: 7,
            disks: vec!["/a/x.vmdk".into()],
            rerun: Some(vec!["vmkfs".into(), "-m".into(), "/a/x y.vmdk".into()]),
            steps: vec![Step::Remove { path: "/a/x.vmdk".into() }, Step::write("/a/p.vmdk", 512, b"CID")],
            copies: vec!["/a/.x.vmdk.vmkfs-intent".into()],
            undo_unless_last: false,
        };
        let raw = r.encode();
        assert_eq!(Record::decode(&raw, Path::new("i")).unwrap(), r);
        assert_eq!(r.rerun_text().unwrap(), "vmkfs -m '/a/x y.vmdk'");
        let mut bad = raw.clone();
        let n = bad.len();
        bad[n - 10] ^= 1;
        let e = Record::decode(&bad, Path::new("i")).unwrap_err().to_string();
        assert!(e.contains("CRC-32 does not match"), "{e}");
    }

    #[test]
    fn a_dead_owners_steps_are_finished_by_the_next_command() {
        let dir = tempfile::tempdir().unwrap();
        let st = HostStorage::shared();
        let disk = dir.path().join("d.vmdk");
        let tmp = temp_name(&disk);
        std::fs::write(&tmp, b"new").unwrap();
        std::fs::write(dir.path().join("old-extent"), b"x").unwrap();
        let mut i = Intent::begin(&st, &disk, "create", &[], None).unwrap();
        i.set_steps(vec![
            Step::RenameNew { from: tmp.clone(), to: disk.clone() },
            Step::Remove { path: dir.path().join("old-extent") },
        ])
        .unwrap();
        // The owner "dies" here: its lock goes, the record stays.
        drop(i);
        let rec = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| is_record_name(&e.as_ref().unwrap().file_name().to_string_lossy()))
            .count();
        assert_eq!(rec, 1);
        settle(st.as_ref(), &disk).unwrap();
        assert_eq!(std::fs::read(&disk).unwrap(), b"new");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("d.vmdk")]);
        // Replaying again changes nothing.
        settle(st.as_ref(), &disk).unwrap();
    }

    /// Writes the temporary descriptor and extent of a new disk and begins its creation intent:
    /// the extent's rename first, the descriptor's last. `(temporary, final)` names each.
    fn begin_creation(st: &Arc<dyn Storage>, desc: (&PathBuf, &PathBuf), ext: (&PathBuf, &PathBuf)) -> Intent {
        std::fs::write(desc.0, b"descriptor").unwrap();
        std::fs::write(ext.0, b"extent").unwrap();
        let mut i = Intent::begin(st, desc.1, "create", &[], None).unwrap();
        i.set_creation_steps(vec![
            Step::RenameNew { from: ext.0.clone(), to: ext.1.clone() },
            Step::RenameNew { from: desc.0.clone(), to: desc.1.clone() },
        ])
        .unwrap();
        i
    }

    #[test]
    fn a_creation_interrupted_before_its_last_rename_is_undone() {
        let dir = tempfile::tempdir().unwrap();
        let st = HostStorage::shared();
        let (disk, ext) = (dir.path().join("d.vmdk"), dir.path().join("d-flat.vmdk"));
        let (td, te) = (temp_name(&disk), temp_name(&ext));
        let i = begin_creation(&st, (&td, &disk), (&te, &ext));
        // Killed after the extent's rename, before the descriptor's.
        std::fs::rename(&te, &ext).unwrap();
        drop(i);
        settle(st.as_ref(), &disk).unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        // Past the last rename it is finished instead.
        let i = begin_creation(&st, (&td, &disk), (&te, &ext));
        std::fs::rename(&td, &disk).unwrap();
        drop(i);
        settle(st.as_ref(), &disk).unwrap();
        assert_eq!(std::fs::read(&disk).unwrap(), b"descriptor");
        assert_eq!(std::fs::read(&ext).unwrap(), b"extent");
    }

    #[test]
    fn data_phase_refuses_others_and_is_taken_over_by_its_rerun() {
        let dir = tempfile::tempdir().unwrap();
        let st = HostStorage::shared();
        let link = dir.path().join("l.vmdk");
        let parent = dir.path().join("p.vmdk");
        let i =
            Intent::begin(&st, &link, "commit", std::slice::from_ref(&parent), Some(vec!["vmkfs".into(), "-m".into()]))
                .unwrap();
        // While the owner lives, others are told who holds it.
        drop(std::fs::File::create(&parent));
        let e = std::thread::spawn({
            let parent = parent.clone();
            move || {
                // Another "process": the registry of owned records is per process, so clear it here.
                own(&[dir_of(&parent).join(".l.vmdk.vmkfs-intent")], false);
                settle(HostStorage::shared().as_ref(), &parent).unwrap_err()
            }
        })
        .join()
        .unwrap();
        assert!(matches!(e, Error::Locked { .. }), "{e}");
        assert!(e.to_string().contains("running commit"), "{e}");
        drop(i);
        let e = settle(st.as_ref(), &parent).unwrap_err();
        assert!(matches!(e, Error::Interrupted { .. }), "{e}");
        assert!(e.to_string().contains("re-run `vmkfs -m`"), "{e}");
        let mut again = pending(&st, &link).unwrap().unwrap();
        assert_eq!(again.record().op, "commit");
        settle(st.as_ref(), &parent).unwrap();
        again.set_steps(vec![]).unwrap();
        again.finish().unwrap();
        assert!(pending(&st, &link).unwrap().is_none());
    }

    fn dir_of(p: &Path) -> PathBuf {
        std::fs::canonicalize(folder(p)).unwrap()
    }
}
