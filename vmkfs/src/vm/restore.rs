//! `vmkfs-restore -s DIR`: a VM back from a backup (and the backups it builds on) to the places
//! its catalog names.
//!
//! 1. The chain of backups is assembled from the catalogs (full + every incremental, or full + a
//!    differential) and every file of every backup in it is checked against its SHA-256 — a
//!    missing or damaged backup is an error naming it before anything is written.
//! 2. The targets come from the catalog (or an edited copy, `-a CATALOG`, which moves them):
//!    `config.vmx`, the folder of `config.vmx` for NVRAM, `.vmsd`, `.vmxf`, `config.logdir` for logs,
//!    `config.suspenddir` for the suspended state, and `disk.K.diskname` for each disk.
//! 3. For every target that exists the policy decides: `overwrite`, `keep`, `abort`, or `prompt`
//!    (asked through [`Ask`], per file or for all) — all before anything is written.
//! 4. Every file is made in a hidden staging folder inside its target folder: each disk through
//!    the creation path (the clone engine, `-d FMT`, default the ESX type the catalog recorded,
//!    else thin) with the increments applied in order ([`apply_delta`]); plain files through the
//!    engine; the `.vmx` rewritten to name the restored disks, written with
//!    [`vmdk::txn::write_file`].
//! 5. One intent record puts them all in place, the `.vmx` last (see the [module text](super)).
//!
//! From a restic repository (`-s restic:PATH[@SNAP]`) the snapshot's small files are first read
//! out into a private folder (their catalog SHA-256s are checked there as in step 1) and each disk
//! is cloned straight out of the snapshot's raw file (zero blobs are not read); the rest is the
//! same.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use vmdk::create::{planned_files, DiskFormat, VMWARE_SPLIT_SECTORS};
use vmdk::txn::{Intent, Step};
use vmdk::{HostStorage, Link, OpenOptions, Storage};

use super::catalog::{Catalog, DiskEntry, Method, Role};
use super::place::{Datastores, Place};
use super::vmx::Vmx;
use super::{kv, plain, verify, Event, Reporter};
use crate::clone::{clone_disk, CloneOptions};
use crate::error::{Error, Result};
use crate::redo_ops::apply_delta;
use vmdk::map::MapSource;

/// The intent operation name of a restore.
pub const OP: &str = "restore";

/// What to do with a target that exists (`-b`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Ask for each (a terminal is needed).
    Prompt,
    /// Replace it.
    Overwrite,
    /// Leave it and do not restore that file.
    Keep,
    /// Stop before anything is written.
    Abort,
}

impl Policy {
    /// Parses a `-b` value.
    pub fn parse(s: &str) -> Option<Policy> {
        Some(match s {
            "prompt" => Policy::Prompt,
            "overwrite" => Policy::Overwrite,
            "keep" => Policy::Keep,
            "abort" => Policy::Abort,
            _ => return None,
        })
    }
}

/// An answer to "this file exists".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Replace this one.
    Overwrite,
    /// Keep this one.
    Keep,
    /// Stop.
    Abort,
    /// Replace this and every later one.
    OverwriteAll,
    /// Keep this and every later one.
    KeepAll,
}

/// Asks what to do with an existing target (the command asks on the terminal).
pub trait Ask {
    /// `target` exists; `what` says what would be restored there.
    fn ask(&mut self, target: &Path, what: &str) -> Result<Answer>;
}

/// What to restore and how.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The backup folder.
    pub src: PathBuf,
    /// An edited copy of its catalog (moves the targets).
    pub catalog: Option<PathBuf>,
    /// Existing targets.
    pub policy: Policy,
    /// Format of the restored disks (default: the ESX type recorded, else thin).
    pub format: Option<DiskFormat>,
    /// Datastores for `[NAME] path` targets.
    pub datastores: Datastores,
    /// `src` is a restic repository: its password and the snapshot (`latest`: the newest VM
    /// snapshot; an ID or prefix).
    pub repo: Option<(Vec<u8>, String)>,
    /// Where the small files of a repository's snapshot are read out to before they are restored
    /// (a private folder is made inside it and removed afterwards); the command passes the
    /// system's temporary folder.
    pub scratch: PathBuf,
}

/// A restic snapshot being restored: the repository, the point, the folder its small files were
/// read out into (removed when dropped).
struct FromRepo {
    repo: crate::repo::Repo,
    point: super::in_repo::Point,
    dir: PathBuf,
}

impl Drop for FromRepo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Opens the repository and reads the snapshot's small files and catalog out into a private
/// folder beside the repository.
fn open_repo(root: &Path, password: &[u8], spec: &str, scratch: &Path) -> Result<FromRepo> {
    use super::in_repo;
    let repo = crate::repo::Repo::open(root, password)?;
    let point = in_repo::find_point(&repo, None, spec)?
        .ok_or_else(|| Error::Backup { path: root.into(), what: "the repository holds no vmkfs VM snapshot".into() })?;
    let dir = vmdk::txn::temp_name(&scratch.join("vmkfs-restore"));
    std::fs::create_dir(&dir).map_err(|e| Error::Io { path: dir.clone(), source: e })?;
    let from = FromRepo { repo, point, dir };
    let mut names: Vec<&str> = from.point.catalog.files.iter().map(|f| f.name.as_str()).collect();
    names.push(super::catalog::FILE_NAME);
    for n in names {
        let f = from.point.file(&from.repo, n)?;
        plain::write_source(&f, &host(), &from.dir.join(n))?;
    }
    Ok(from)
}

/// One disk restored.
#[derive(Debug, Clone, Serialize)]
pub struct RestoredDisk {
    /// Device key.
    pub disk: String,
    /// Where.
    pub path: PathBuf,
    /// In which format.
    pub format: &'static str,
    /// How many backups it was assembled from.
    pub backups: usize,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// The `.vmx`.
    pub vmx: PathBuf,
    /// The backups used, oldest first.
    pub backups: Vec<PathBuf>,
    /// Disks written.
    pub disks: Vec<RestoredDisk>,
    /// Files written (disks' main files, small files, the `.vmx`).
    pub written: Vec<PathBuf>,
    /// Existing files kept.
    pub kept: Vec<PathBuf>,
    /// Disks the backup does not hold, and why.
    pub skipped: Vec<(String, String)>,
}

/// What one target is.
enum What {
    /// A disk: its entry, the backups' files to assemble (full first), its format.
    Disk { entry: Box<DiskEntry>, files: Vec<PathBuf>, format: DiskFormat },
    /// A plain file of the last backup.
    File(PathBuf),
    /// The `.vmx`, rewritten.
    Vmx(PathBuf),
}

struct Item {
    target: PathBuf,
    what: What,
    /// Replace what exists.
    replace: bool,
}

fn host() -> std::sync::Arc<dyn Storage> {
    HostStorage::shared()
}

/// The default restore format for a disk whose source was `format`.
pub fn default_format(format: &str) -> DiskFormat {
    match DiskFormat::parse(format) {
        Some(f) if f.is_esx() => f,
        _ => DiskFormat::Thin,
    }
}

/// Restores the VM in `opts.src`.
pub fn restore(opts: &RestoreOptions, ask: &mut dyn Ask, r: &mut dyn Reporter) -> Result<RestoreReport> {
    let ds = &opts.datastores;
    let from_repo = opts.repo.as_ref().map(|(pw, spec)| open_repo(&opts.src, pw, spec, &opts.scratch)).transpose()?;
    let chain = match &from_repo {
        Some(f) => vec![(f.dir.clone(), f.point.catalog.clone())],
        None => verify::chain(&opts.src)?,
    };
    check_chain(&chain, r)?;
    let (last_folder, last) = chain.last().cloned().expect("a chain has a backup");
    let cat = chosen_catalog(opts.catalog.as_deref(), &last_folder, &last)?;
    let vmx_t = on_host(ds.resolve(&cat.config_vmx, &Place::host("/"), "config.vmx")?)?;
    let (mut items, skipped) = plan(opts, &cat, &chain, from_repo.is_some(), &vmx_t)?;
    prepare_targets(&items)?;
    let disk_targets: Vec<(String, PathBuf)> = items
        .iter()
        .filter_map(|i| match &i.what {
            What::Disk { entry, .. } => Some((entry.key.clone(), i.target.clone())),
            _ => None,
        })
        .collect();
    let kept = decide(&mut items, opts.policy, ask)?;

    // Stage.
    let mut staging: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    let result = stage_and_place(&items, &disk_targets, &vmx_t, &mut staging, from_repo.as_ref(), r);
    for s in staging.values() {
        let _ = std::fs::remove_dir_all(s);
    }
    let (disks, written) = result?;
    Ok(RestoreReport {
        vmx: vmx_t.path,
        backups: chain.into_iter().map(|(f, _)| f).collect(),
        disks,
        written,
        kept,
        skipped,
    })
}

/// Says which backups the restore reads and checks every file of each against its catalog:
/// a damaged backup stops the restore before anything is written.
fn check_chain(chain: &[(PathBuf, Catalog)], r: &mut dyn Reporter) -> Result<()> {
    r.event(Event::Step {
        disk: None,
        what: format!(
            "restoring from {} backup(s): {}",
            chain.len(),
            chain.iter().map(|(f, _)| f.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    });
    for (f, c) in chain {
        let found = verify::check_files(f, c, &mut super::Quiet);
        if let Some(first) = found.first() {
            return Err(Error::Backup {
                path: f.clone(),
                what: format!(
                    "the backup is damaged, nothing was restored: {}{}",
                    first,
                    if found.len() > 1 { format!(" (and {} more problems)", found.len() - 1) } else { String::new() }
                ),
            });
        }
    }
    Ok(())
}

/// The catalog the restore follows: the last backup's, or the one at `given` (which must be the
/// same backup's, possibly edited to place things elsewhere).
fn chosen_catalog(given: Option<&Path>, last_folder: &Path, last: &Catalog) -> Result<Catalog> {
    let Some(p) = given else {
        return Ok(last.clone());
    };
    let raw = Place::host(p).read_small(kv::MAX_BYTES)?;
    let c = Catalog::parse(&String::from_utf8_lossy(&raw), p)?;
    if c.id != last.id {
        return Err(Error::Usage(format!(
            "{}: the catalog of backup {}, not of {} ({})",
            p.display(),
            c.id,
            last_folder.display(),
            last.id
        )));
    }
    Ok(c)
}

/// What [`plan`] returns: the items to restore, and the `(key, reason)` of the disks the backup
/// skipped.
type Planned = (Vec<Item>, Vec<(String, String)>);

/// What goes where: an item for every disk the catalog `cat` holds (and the keys and reasons of
/// the ones the backup skipped), every other file of the last backup of `chain`, and the .vmx
/// last, at `vmx_t`.
fn plan(
    opts: &RestoreOptions,
    cat: &Catalog,
    chain: &[(PathBuf, Catalog)],
    from_repo: bool,
    vmx_t: &Place,
) -> Result<Planned> {
    let ds = &opts.datastores;
    let (last_folder, last) = chain.last().expect("a chain has a backup");
    let vm_dir = vmx_t.folder();
    let log_dir = on_host(ds.resolve(&cat.config_logdir, &vm_dir, "config.logdir")?)?;
    let suspend_dir = on_host(ds.resolve(&cat.config_suspenddir, &vm_dir, "config.suspenddir")?)?;
    let mut items: Vec<Item> = Vec::new();
    let mut skipped = Vec::new();
    for d in &cat.disks {
        if let Some(why) = &d.skipped {
            skipped.push((d.key.clone(), why.clone()));
            continue;
        }
        let target = on_host(ds.resolve(&d.diskname, &vm_dir, &format!("disk {}", d.key))?)?.path;
        let files = if from_repo { Vec::new() } else { disk_files(chain, &d.key)? };
        let format = opts.format.unwrap_or_else(|| default_format(&d.format));
        items.push(Item { target, what: What::Disk { entry: Box::new(d.clone()), files, format }, replace: false });
    }
    let mut vmx_file = None;
    for f in &last.files {
        let dir = match f.role {
            Role::Config => {
                vmx_file = Some(last_folder.join(&f.name));
                continue;
            }
            Role::VmFile => &vm_dir,
            Role::Log => &log_dir,
            Role::Suspend => &suspend_dir,
            Role::Disk | Role::Blocks => continue,
        };
        items.push(Item {
            target: dir.path.join(&f.name),
            what: What::File(last_folder.join(&f.name)),
            replace: false,
        });
    }
    let vmx_file =
        vmx_file.ok_or_else(|| Error::Backup { path: last_folder.clone(), what: "the backup holds no .vmx".into() })?;
    items.push(Item { target: vmx_t.path.clone(), what: What::Vmx(vmx_file), replace: false });
    Ok((items, skipped))
}

/// Before anything is decided about the targets: no running VM owns them, transactions left on
/// them are settled, and what dead restores left in their folders is gone, so that a restore that
/// stops at an existing file (`-b abort` after a killed run had finished) leaves none.
fn prepare_targets(items: &[Item]) -> Result<()> {
    let places: Vec<Place> = items.iter().map(|i| Place::host(&i.target)).collect();
    super::backup::refuse_running(&places)?;
    for i in items {
        vmdk::txn::settle(host().as_ref(), &i.target)?;
    }
    let folders: std::collections::BTreeSet<&Path> = items.iter().filter_map(|i| i.target.parent()).collect();
    for f in folders {
        sweep_stale_staging(f);
    }
    Ok(())
}

fn on_host(p: Place) -> Result<Place> {
    if p.on_volume() {
        return Err(Error::Usage(format!(
            "{}: a restore target inside a VMFS volume (volumes are read-only): map the datastore to a host folder with --datastore NAME=DIR, or edit the catalog (-a)",
            p.describe()
        )));
    }
    Ok(p)
}

/// The backups' files that assemble disk `key`: the newest backup's, back to the one that
/// holds it whole.
fn disk_files(chain: &[(PathBuf, Catalog)], key: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (f, c) in chain.iter().rev() {
        let Some(d) = c.disk(key).filter(|d| d.skipped.is_none()) else {
            return Err(Error::Backup {
                path: f.clone(),
                what: format!("disk {key} is restored from later backups, but this one does not hold it"),
            });
        };
        out.push(f.join(d.filename.as_deref().unwrap_or_default()));
        if d.method == Some(Method::Full) {
            out.reverse();
            return Ok(out);
        }
    }
    Err(Error::Backup { path: chain[0].0.clone(), what: format!("no backup in the chain holds disk {key} whole") })
}

/// The files a target would bring into place (for a disk: every file of its format).
fn planned(item: &Item) -> Vec<PathBuf> {
    match &item.what {
        What::Disk { entry, format, .. } => {
            let mut v = planned_files(&item.target, *format, entry.capacity, VMWARE_SPLIT_SECTORS);
            if !v.contains(&item.target) {
                v.push(item.target.clone());
            }
            v
        }
        _ => vec![item.target.clone()],
    }
}

/// Applies the policy to every target that exists; returns those kept (and drops them).
fn decide(items: &mut Vec<Item>, policy: Policy, ask: &mut dyn Ask) -> Result<Vec<PathBuf>> {
    let mut all: Option<Answer> = None;
    let mut kept = Vec::new();
    let mut keep_idx = Vec::new();
    for (n, i) in items.iter_mut().enumerate() {
        let Some(existing) = planned(i).into_iter().find(|p| std::fs::symlink_metadata(p).is_ok()) else { continue };
        let what = match &i.what {
            What::Disk { entry, .. } => format!("disk {}", entry.key),
            What::File(_) => "a file of the VM".into(),
            What::Vmx(_) => "the VM's configuration".into(),
        };
        let answer = match (policy, all) {
            (_, Some(a)) => a,
            (Policy::Overwrite, _) => Answer::Overwrite,
            (Policy::Keep, _) => Answer::Keep,
            (Policy::Abort, _) => Answer::Abort,
            (Policy::Prompt, None) => ask.ask(&existing, &what)?,
        };
        match answer {
            Answer::Abort => {
                return Err(Error::Usage(format!(
                    "{}: already exists ({what}): the restore stopped before writing anything (-b overwrite or -b keep decide otherwise)",
                    existing.display()
                )))
            }
            Answer::Overwrite | Answer::OverwriteAll => i.replace = true,
            Answer::Keep | Answer::KeepAll => {
                kept.push(i.target.clone());
                keep_idx.push(n);
            }
        }
        if matches!(answer, Answer::OverwriteAll | Answer::KeepAll) {
            all = Some(answer);
        }
    }
    for n in keep_idx.into_iter().rev() {
        items.remove(n);
    }
    Ok(kept)
}

/// The hidden staging folder inside `dir` (made on first use).
fn staging_for(dir: &Path, staging: &mut BTreeMap<PathBuf, PathBuf>) -> Result<PathBuf> {
    if let Some(s) = staging.get(dir) {
        return Ok(s.clone());
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.into(), source: e })?;
    sweep_stale_staging(dir);
    let s = vmdk::txn::temp_name(&dir.join("vmkfs-restore"));
    std::fs::create_dir(&s).map_err(|e| Error::Io { path: s.clone(), source: e })?;
    staging.insert(dir.to_path_buf(), s.clone());
    Ok(s)
}

/// Removes staging folders of dead restores in `dir` (their intent, if any, was settled first).
fn sweep_stale_staging(dir: &Path) {
    for n in host().list_dir(dir) {
        if let Some((fin, pid)) = vmdk::txn::temp::parse_temp_name(&n) {
            let p = dir.join(&n);
            if fin == "vmkfs-restore" && p.is_dir() && !rdm::process_alive(pid) {
                let _ = std::fs::remove_dir_all(&p);
            }
        }
    }
}

#[allow(clippy::type_complexity)]
fn stage_and_place(
    items: &[Item],
    disk_targets: &[(String, PathBuf)],
    vmx_t: &Place,
    staging: &mut BTreeMap<PathBuf, PathBuf>,
    from_repo: Option<&FromRepo>,
    r: &mut dyn Reporter,
) -> Result<(Vec<RestoredDisk>, Vec<PathBuf>)> {
    let h = host();
    // (staged, final, replace) in the order they go into place; the .vmx last.
    let mut moves: Vec<(PathBuf, PathBuf, bool)> = Vec::new();
    let mut removals: Vec<PathBuf> = Vec::new();
    let mut held: Vec<Link> = Vec::new();
    let mut disks = Vec::new();
    let mut written = Vec::new();
    let mut vmx_item = None;
    for (n, i) in items.iter().enumerate() {
        let dir = vmdk::txn::folder(&i.target).to_path_buf();
        let name = vmdk::txn::file_name(&i.target);
        match &i.what {
            What::Disk { entry, files, format } => {
                let st = staging_for(&dir, staging)?;
                r.event(Event::Step {
                    disk: Some(entry.key.clone()),
                    what: format!("restoring {} ({}, from {} file(s))", i.target.display(), format.name(), files.len()),
                });
                let made = match from_repo {
                    Some(f) => from_snapshot(f, entry, *format, &st.join(&name), r)?,
                    None => assemble(entry, files, *format, &st.join(&name), r)?,
                };
                if i.replace {
                    if let Some(old) = replaced_disk(&i.target)? {
                        let new_finals: Vec<PathBuf> = made.iter().map(|p| dir.join(vmdk::txn::file_name(p))).collect();
                        removals.extend(
                            old.files()
                                .into_iter()
                                .map(|f| h.real_path(&f))
                                .filter(|f| !new_finals.iter().any(|n| h.real_path(n) == *f)),
                        );
                        held.push(old);
                    }
                }
                for p in made {
                    moves.push((p.clone(), dir.join(vmdk::txn::file_name(&p)), i.replace));
                }
                disks.push(RestoredDisk {
                    disk: entry.key.clone(),
                    path: i.target.clone(),
                    format: format.name(),
                    backups: files.len(),
                });
                written.push(i.target.clone());
            }
            What::File(src) => {
                let st = staging_for(&dir, staging)?;
                plain::copy_file(&h, src, &h, &st.join(&name))?;
                moves.push((st.join(&name), i.target.clone(), i.replace));
                written.push(i.target.clone());
            }
            What::Vmx(_) => vmx_item = Some(n),
        }
    }
    if let Some(n) = vmx_item {
        let i = &items[n];
        let What::Vmx(src) = &i.what else { unreachable!("vmx_item is the .vmx") };
        let dir = vmdk::txn::folder(&i.target).to_path_buf();
        let st = staging_for(&dir, staging)?;
        let text = rewrite_vmx(src, disk_targets, &vmx_t.folder())?;
        let staged = st.join(vmdk::txn::file_name(&i.target));
        vmdk::txn::write_file(&h, &staged, text.as_bytes(), false)?;
        moves.push((staged, i.target.clone(), i.replace));
        written.push(i.target.clone());
    }
    if moves.is_empty() {
        return Ok((disks, written));
    }
    for s in staging.values() {
        h.sync_dir(s)?;
    }
    let mut steps: Vec<Step> = moves
        .iter()
        .map(|(from, to, replace)| {
            let (from, to) = (h.real_path(from), h.real_path(to));
            if *replace {
                Step::Rename { from, to }
            } else {
                Step::RenameNew { from, to }
            }
        })
        .collect();
    steps.extend(removals.into_iter().map(|path| Step::Remove { path }));
    let targets: Vec<PathBuf> = moves.iter().map(|(_, t, _)| t.clone()).collect();
    let primary = moves.last().map(|(_, t, _)| t.clone()).expect("not empty");
    let mut intent = Intent::begin(&h, &primary, OP, &targets, None)?;
    if steps.iter().all(|s| matches!(s, Step::RenameNew { .. })) {
        intent.set_creation_steps(steps)?;
    } else {
        intent.set_steps(steps)?;
    }
    drop(held);
    intent.finish()?;
    r.event(Event::Step {
        disk: None,
        what: format!("restored {} file(s); the VM is {}", written.len(), vmx_t.path.display()),
    });
    Ok((disks, written))
}

/// The disk at `target` being replaced, held exclusively until the new one is in place (refused
/// when other links read through it).
fn replaced_disk(target: &Path) -> Result<Option<Link>> {
    if !target.exists() {
        return Ok(None);
    }
    let o = OpenOptions { exclusive: true, ..OpenOptions::read() };
    match Link::open(target, &o) {
        Ok(l) => {
            l.refuse_if_parent("replacing it with the restored disk")?;
            Ok(Some(l))
        }
        Err(e @ (vmdk::Error::Locked { .. } | vmdk::Error::InUseByVmware { .. } | vmdk::Error::Interrupted { .. })) => {
            Err(e.into())
        }
        // Not a disk we can read: only the names written are replaced.
        Err(_) => Ok(None),
    }
}

/// Builds disk `entry` at `dst` (in a staging folder) from its raw file in the restic snapshot,
/// with the CID the catalog recorded; returns the disk's files, descriptor last.
fn from_snapshot(
    f: &FromRepo,
    entry: &DiskEntry,
    format: DiskFormat,
    dst: &Path,
    r: &mut dyn Reporter,
) -> Result<Vec<PathBuf>> {
    let name = entry.filename.as_deref().unwrap_or_default();
    let src = f.point.file(&f.repo, name)?;
    if src.capacity() != entry.capacity {
        return Err(Error::Backup {
            path: f.repo.root().into(),
            what: format!("/{}/{name}: {} bytes, the catalog says {}", f.point.folder, src.capacity(), entry.capacity),
        });
    }
    let key = entry.key.clone();
    let mut progress = |done: u64, total: u64| r.event(Event::Progress { disk: key.clone(), done, total });
    let mut copts = CloneOptions::new(format);
    copts.progress = Some(&mut progress);
    let rep = crate::clone::clone_source_into(&src, entry.capacity, None, Some(entry.cid), dst, &mut copts)?;
    Ok(rep.files)
}

/// Builds disk `entry` at `dst` (in a staging folder) from `files` (the full export, then each
/// increment in order); returns the disk's files, descriptor last.
fn assemble(
    entry: &DiskEntry,
    files: &[PathBuf],
    format: DiskFormat,
    dst: &Path,
    r: &mut dyn Reporter,
) -> Result<Vec<PathBuf>> {
    let key = entry.key.clone();
    let mut progress = |done: u64, total: u64| r.event(Event::Progress { disk: key.clone(), done, total });
    let read_only_result = format == DiskFormat::StreamOptimized && files.len() > 1;
    // A stream cannot take increments: assemble as thin first, then write the stream from it.
    let build = if read_only_result {
        dst.with_file_name(format!("{}-assemble.vmdk", vmdk::txn::file_name(dst).trim_end_matches(".vmdk")))
    } else {
        dst.to_path_buf()
    };
    let mut copts = CloneOptions::new(if read_only_result { DiskFormat::Thin } else { format });
    copts.progress = Some(&mut progress);
    let mut rep = clone_disk(&files[0], &build, &mut copts)?;
    for delta in &files[1..] {
        apply_delta(delta, &build, &OpenOptions::read(), false, &mut |_, _| {}, None)?;
    }
    if read_only_result {
        let mut copts = CloneOptions::new(format);
        rep = clone_disk(&build, dst, &mut copts)?;
    }
    let cid = Link::open(dst, &OpenOptions::read())?.descriptor().cid;
    if cid != entry.cid {
        return Err(Error::Backup {
            path: dst.into(),
            what: format!("disk {} assembled to CID {cid:08x}, the catalog says {:08x}", entry.key, entry.cid),
        });
    }
    Ok(rep.files)
}

/// The backed-up `.vmx` with each disk reference naming the restored (or kept) disk at its target:
/// its file name when it lies beside the `.vmx`, else its absolute path.
fn rewrite_vmx(src: &Path, disk_targets: &[(String, PathBuf)], vm_dir: &Place) -> Result<String> {
    let raw = Place::host(src).read_small(kv::MAX_BYTES)?;
    let mut vmx = Vmx::parse(&String::from_utf8_lossy(&raw), src)?;
    for (key, target) in disk_targets {
        let name = if vmdk::txn::folder(target) == vm_dir.path {
            vmdk::txn::file_name(target)
        } else {
            std::path::absolute(target).unwrap_or_else(|_| target.clone()).display().to_string()
        };
        vmx = vmx.with_disk_file(key, &name);
    }
    Ok(vmx.to_text())
}
