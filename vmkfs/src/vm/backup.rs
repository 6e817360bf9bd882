//! `vmkfs-backup -a VM -r DEST`: a VM's disks and small files into a new backup folder.
//!
//! For each disk the `.vmx` names (see [`super::vmx`]; every disk's snapshot is taken before the
//! first export):
//! 1. **snapshot** the top link the `.vmx` names ([`redo::snapshot()`]), so the chain below it is
//!    static (disks inside a VMFS volume image need none: the image does not change);
//! 2. **export** that chain into the hidden backup folder: a full pass clones it
//!    ([`clone_chain_through`], default `2gbsparse` as VCB does, recording a BLAKE3 digest per
//!    block as it reads: [`blocks`]); an incremental (`--since PREV`) or differential (`--since FULL --differential`)
//!    pass writes a REDO link of the blocks changed since that backup — from the change-tracking
//!    link the earlier pass kept ([`export_delta`], cost ∝ changed data), or else by comparing
//!    block hashes with the earlier pass's ([`ChangedOnly`], one read of the disk, writes only
//!    the changes). Each disk exports on its own thread; a disk read whole starts once the disk
//!    before it has been read, so that its copy overlaps that disk's flush; disks exported from
//!    their tracking links (cost ∝ changes, mostly waiting on flushes) all start at once. A full
//!    export's files are hashed (SHA-256, for the catalog) from the moment they hold their final
//!    bytes, while they are flushed ([`vmdk::create::NewDisk::seal`]); the others' once written;
//! 3. after the backup folder is in place: **commit** the snapshot ([`commit`]), or with
//!    `--keep-tracking` keep it as the change-tracking link (the `.vmx` then names it: the VM
//!    writes there, and the next pass exports exactly its blocks). A pass that used a tracking
//!    link commits the links above the earlier pass's point, so the chain stays short; a
//!    differential pass keeps them, so the next differential still finds the full backup's point.
//!    The disks' commits run concurrently (each disk's links in order).
//!
//! Then the small files (`.vmx`, NVRAM, `.vmsd`, `.vmxf`, logs, the suspended state) are copied,
//! every file is hashed, the catalog is written and the folder is renamed into place. How
//! interruption is handled is in the [module text](super).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redo::Chain;
use serde::{Deserialize, Serialize};
use vmdk::create::{CreateOptions, DiskFormat, Parent};
use vmdk::{CreateType, HostStorage, OpenOptions, RdmMode, Storage};

use super::blocks::{self, BlockHashes, ChangedOnly, Hashing};
use super::catalog::{self, Catalog, DiskEntry, FileEntry, Kind, Method, Role};
use super::in_repo;
use super::place::{Datastores, Place};
use super::verify;
use super::vmx::{DiskMode, Vmx, VmxDisk};
use super::{kv, plain, Event, Reporter};
use crate::clone::{clone_chain_through, CloneOptions};
use crate::engine::{copy, EngineOptions};
use crate::error::{Error, Result};
use crate::redo_ops::{changed_blocks, commit, export_delta};
use crate::repo::vmdisk;
use crate::repo::{tree::Node, Writer};

/// The intent operation name of a backup.
pub const OP: &str = "backup";
/// Largest small file read whole (`.vmx`, a catalog).
const SMALL: u64 = kv::MAX_BYTES;

/// What to back up and how.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The VM: a `.vmx`, its folder, or `name:DISPLAYNAME`.
    pub vm: String,
    /// The new backup folder (must not exist; its parent must).
    pub dest: PathBuf,
    /// Format of full exports.
    pub format: DiskFormat,
    /// The earlier backup an incremental or differential pass is relative to.
    pub since: Option<PathBuf>,
    /// `--differential`: `since` is a full backup and this pass holds every change since it.
    pub differential: bool,
    /// Keep each snapshot as the change-tracking link.
    pub keep_tracking: bool,
    /// Datastores and the volume.
    pub datastores: Datastores,
    /// The command that re-runs this backup (recorded for an interrupted run).
    pub command: Vec<String>,
    /// A restic repository instead of a folder (`-r restic:PATH`): `dest` is the repository and
    /// `since`, when given, names a snapshot (`latest`, an ID).
    pub repo: Option<RepoDest>,
}

/// Where a backup into a restic repository goes.
#[derive(Debug, Clone)]
pub struct RepoDest {
    /// The repository's password.
    pub password: Vec<u8>,
    /// Create the repository first (`--init`).
    pub init: bool,
}

/// One disk backed up.
#[derive(Debug, Clone, Serialize)]
pub struct DiskDone {
    /// Device key.
    pub disk: String,
    /// `full`, `tracking` or `hashes`.
    pub method: &'static str,
    /// Its main file in the backup.
    pub file: String,
    /// Bytes of the disk carried.
    pub bytes: u64,
}

/// A disk not backed up.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// Device key.
    pub disk: String,
    /// Why.
    pub why: String,
}

/// What a backup did.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// The backup folder.
    pub dest: PathBuf,
    /// Its id.
    pub id: String,
    /// `full`, `incremental` or `differential`.
    pub kind: &'static str,
    /// The disks backed up.
    pub disks: Vec<DiskDone>,
    /// The disks left out.
    pub skipped: Vec<Skipped>,
    /// Files in the backup (the catalog included).
    pub files: usize,
    /// True when this run finished an interrupted run that had already written `dest`.
    pub finished_interrupted: bool,
}

/// How one disk's data gets into this backup.
enum Plan {
    Full,
    /// From the change-tracking link: the point (a link below the top) the earlier backup left,
    /// the links to commit afterwards, and the earlier backup's block hashes.
    Tracking {
        point: PathBuf,
        commits: Vec<PathBuf>,
        prev: BlockHashes,
    },
    /// By block hashes: the earlier backup's, its disk CID and file name.
    Hashes {
        prev: BlockHashes,
        prev_cid: u32,
        prev_file: String,
    },
}

struct Disk {
    vd: VmxDisk,
    place: Place,
    written: String,
    format: String,
    capacity: u64,
    plan: Plan,
}

/// The journal of a backup's changes to the source VM (`.NAME.vmx.vmkfs-backup`, JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Journal {
    id: String,
    dest: PathBuf,
    temp: PathBuf,
    vmx: PathBuf,
    /// The `.vmx` text to put in place once the backup is (kept tracking links).
    vmx_after: Option<String>,
    /// Set once the backup folder is in place (the commit point): from then on an interrupted
    /// run is finished, never rolled back, even if the folder was removed meanwhile.
    #[serde(default)]
    placed: bool,
    disks: Vec<JournalDisk>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct JournalDisk {
    key: String,
    /// The link the snapshot is taken of.
    top: PathBuf,
    /// Its children before the snapshot (a child that is not among them is ours).
    children_before: Vec<PathBuf>,
    snapshot: Option<PathBuf>,
    /// Links to commit, in order, once the backup is in place.
    commit: Vec<PathBuf>,
}

fn journal_path(vmx: &Path) -> PathBuf {
    vmx.with_file_name(format!(".{}.vmkfs-backup", vmdk::txn::file_name(vmx)))
}

fn host() -> Arc<dyn Storage> {
    HostStorage::shared()
}

fn write_journal(j: &Journal) -> Result<()> {
    let text = serde_json::to_vec_pretty(j).map_err(|e| Error::Usage(format!("journal: {e}")))?;
    Ok(vmdk::txn::write_file(&host(), &journal_path(&j.vmx), &text, true)?)
}

fn read_journal(vmx: &Path) -> Result<Option<Journal>> {
    let p = journal_path(vmx);
    if !p.exists() {
        return Ok(None);
    }
    let raw = Place::host(&p).read_small(SMALL)?;
    serde_json::from_slice(&raw)
        .map(Some)
        .map_err(|e| Error::Backup { path: p, what: format!("the backup journal cannot be read: {e}") })
}

fn ro(place: &Place) -> OpenOptions {
    OpenOptions { storage: place.storage(), ..OpenOptions::read() }
}

fn rw() -> OpenOptions {
    OpenOptions::write()
}

/// A random id of 32 hex digits.
fn new_id() -> String {
    let mut b = [0u8; 16];
    for c in b.chunks_mut(4) {
        c.copy_from_slice(&vmdk::link::new_cid(0).to_le_bytes());
    }
    crate::text::hex(&b)
}

/// `vm-000002.vmdk` → `vm`.
fn disk_stem(name: &str) -> String {
    let n = name.strip_suffix(".vmdk").unwrap_or(name);
    match n.rsplit_once('-') {
        Some((s, num)) if num.len() == 6 && num.bytes().all(|b| b.is_ascii_digit()) => s.to_string(),
        _ => n.to_string(),
    }
}

/// The format name of a chain's base (what the catalog records and a restore defaults to).
pub fn format_name(base: &vmdk::Descriptor) -> String {
    match &base.create_type {
        CreateType::Vmfs | CreateType::VmfsPreallocated | CreateType::VmfsThick
            if base.ddb("thinProvisioned") == Some("1") =>
        {
            "thin".into()
        }
        CreateType::Vmfs | CreateType::VmfsPreallocated | CreateType::VmfsThick => "zeroedthick".into(),
        CreateType::VmfsThin => "thin".into(),
        CreateType::VmfsEagerZeroedThick => "eagerzeroedthick".into(),
        CreateType::MonolithicSparse => "monosparse".into(),
        CreateType::TwoGbMaxExtentSparse => "2gbsparse".into(),
        CreateType::MonolithicFlat => "monoflat".into(),
        CreateType::TwoGbMaxExtentFlat => "2gbflat".into(),
        CreateType::StreamOptimized => "streamoptimized".into(),
        t => t.as_str().to_string(),
    }
}

/// Refuses a VM that VMware is running: a `.lck` folder beside the `.vmx` or any disk file
/// (hosted products make one for every file a running VM holds open).
pub(super) fn refuse_running(places: &[Place]) -> Result<()> {
    for p in places.iter().filter(|p| !p.on_volume()) {
        for name in p.folder().list() {
            if name.ends_with(".lck") && p.folder().join(&name).is_dir() {
                return Err(vmdk::Error::InUseByVmware { path: p.path.clone(), folder: name.into() }.into());
            }
        }
    }
    Ok(())
}

/// What a backup pass works from: the VM, where the backup goes, and what it is relative to.
struct Pass<'a> {
    opts: &'a BackupOptions,
    /// The backup folder (absolute), or the repository.
    dest: PathBuf,
    /// Its parent folder.
    parent: PathBuf,
    vmx: Vmx,
    vmx_place: Place,
    vm_dir: Place,
    /// True for a VM on the host: its disks get snapshots (a volume image does not change).
    snapshots: bool,
    /// The `.vmx` as a real host path (where the intent record and the journal go).
    vmx_real: PathBuf,
    repo: Option<crate::repo::Repo>,
    /// The VM's folder in a repository snapshot.
    folder_name: String,
    /// The repository snapshot this pass builds on.
    point: Option<in_repo::Point>,
    /// The earlier backup this pass is relative to: its folder and catalog.
    prev: Option<(PathBuf, Catalog)>,
    kind: Kind,
}

/// The disks of a pass: those backed up, those left out, and the catalog entries of the latter.
struct Planned {
    disks: Vec<Disk>,
    skipped: Vec<Skipped>,
    entries: Vec<DiskEntry>,
}

/// What the exports of a pass gave: catalog entries, the files written (hashes still to fill in),
/// the disks' summaries and, for a repository, the disks' tree nodes.
#[derive(Default)]
struct Exported {
    entries: Vec<DiskEntry>,
    files: Vec<FileEntry>,
    done: Vec<DiskDone>,
    nodes: Vec<Node>,
}

impl Exported {
    fn add(&mut self, (entry, files, done): (DiskEntry, Vec<FileEntry>, DiskDone)) {
        self.entries.push(entry);
        self.files.extend(files);
        self.done.push(done);
    }
}

/// Backs up the VM `opts.vm` into `opts.dest`.
pub fn backup(opts: &BackupOptions, r: &mut dyn Reporter) -> Result<BackupReport> {
    let ds = &opts.datastores;
    let dest = std::path::absolute(&opts.dest).unwrap_or_else(|_| opts.dest.clone());
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| Error::Usage(format!("{}: not a folder path", dest.display())))?
        .to_path_buf();
    let vmx_place = ds.find_vm(&opts.vm)?;
    let vmx_raw = vmx_place.read_small(SMALL)?;
    let vmx = Vmx::parse(&String::from_utf8_lossy(&vmx_raw), &vmx_place.path)?;
    let vm_dir = vmx_place.folder();
    let snapshots = !vmx_place.on_volume();
    if opts.keep_tracking && !snapshots {
        return Err(Error::Usage(format!(
            "{}: --keep-tracking needs a VM on the host: a VMFS volume is opened read-only, so no tracking link can be kept in it",
            vmx_place.describe()
        )));
    }
    let mut places = vec![vmx_place.clone()];
    let listed = vmx.disks();
    for vd in &listed {
        places.push(ds.resolve(&vd.file_name, &vm_dir, &format!("disk {}", vd.key))?);
    }
    refuse_running(&places)?;
    let vmx_real = if snapshots { host().real_path(&vmx_place.path) } else { vmx_place.path.clone() };
    if snapshots {
        if let Some(done) = recover(&vmx_real, r)? {
            if done.complete && done.dest == dest && opts.repo.is_none() {
                let cat = verify::load(&dest)?;
                return Ok(report_of(&dest, &cat, true));
            }
        }
    }
    let repo = open_repo(opts, &dest)?;
    let folder_name = super::in_repo::folder_name(vmx.display_name(), &vmx_place.name());
    check_dest(&parent, &dest, repo.is_some())?;
    sweep_stale_folders(&dest);
    let point = repo_point(repo.as_ref(), opts, &folder_name, r)?;
    let prev = earlier_backup(opts, repo.is_some(), point.as_ref(), &dest, &vmx, &ds.written(&vmx_place))?;
    let kind = match (&prev, opts.differential) {
        (None, _) => Kind::Full,
        (Some(_), false) => Kind::Incremental,
        (Some(_), true) => Kind::Differential,
    };
    let pass =
        Pass { opts, dest, parent, vmx, vmx_place, vm_dir, snapshots, vmx_real, repo, folder_name, point, prev, kind };
    let planned = plan_disks(&pass, listed, places.into_iter().skip(1).collect(), r)?;
    run_pass(&pass, planned, r)
}

/// The repository of `-r restic:PATH` (created first with `--init`), if that is where the backup
/// goes.
fn open_repo(opts: &BackupOptions, dest: &Path) -> Result<Option<crate::repo::Repo>> {
    let Some(rd) = &opts.repo else { return Ok(None) };
    if rd.init {
        crate::repo::Repo::init(dest, &rd.password)?;
    }
    Ok(Some(crate::repo::Repo::open(dest, &rd.password)?))
}

/// Refuses a destination whose parent is missing, or a folder backup whose folder exists (a
/// repository takes many snapshots; a folder backup is always new).
fn check_dest(parent: &Path, dest: &Path, in_repo: bool) -> Result<()> {
    if !parent.is_dir() {
        return Err(Error::Usage(format!("{}: the parent folder of the backup does not exist", parent.display())));
    }
    if !in_repo && (dest.exists() || std::fs::symlink_metadata(dest).is_ok()) {
        return Err(Error::Usage(format!(
            "{}: already exists (a backup is always written to a new folder)",
            dest.display()
        )));
    }
    Ok(())
}

/// The repository snapshot `--since` names, if the backup goes into a repository.
fn repo_point(
    repo: Option<&crate::repo::Repo>,
    opts: &BackupOptions,
    folder_name: &str,
    r: &mut dyn Reporter,
) -> Result<Option<in_repo::Point>> {
    let (Some(repo), Some(spec)) = (repo, &opts.since) else { return Ok(None) };
    let p = super::in_repo::find_point(repo, Some(folder_name), &spec.to_string_lossy())?;
    if p.is_none() {
        r.event(Event::Note { disk: None, what: format!("no snapshot of {folder_name} yet: a full backup") });
    }
    Ok(p)
}

/// The earlier backup (folder and catalog) this pass is relative to: `--since` checked to be a
/// backup of this VM (and a full one for `--differential`), or the repository's point.
fn earlier_backup(
    opts: &BackupOptions,
    in_repo: bool,
    point: Option<&in_repo::Point>,
    dest: &Path,
    vmx: &Vmx,
    config: &str,
) -> Result<Option<(PathBuf, Catalog)>> {
    if in_repo {
        return Ok(point.map(|p| (dest.to_path_buf(), p.catalog.clone())));
    }
    let Some(p) = &opts.since else {
        if opts.differential {
            return Err(Error::Usage("--differential needs --since FULL".into()));
        }
        return Ok(None);
    };
    let folder = std::path::absolute(p).unwrap_or_else(|_| p.clone());
    let cat = verify::load(&folder)?;
    check_same_vm(&folder, &cat, vmx, config)?;
    if opts.differential && cat.kind != Kind::Full {
        return Err(Error::Usage(format!(
            "{}: --differential needs a full backup as --since, and this one is {}",
            folder.display(),
            cat.kind.as_str()
        )));
    }
    Ok(Some((folder, cat)))
}

/// Chooses for each disk of the `.vmx` (`listed`, at `places`) whether and how it is backed up.
fn plan_disks(pass: &Pass, listed: Vec<VmxDisk>, places: Vec<Place>, r: &mut dyn Reporter) -> Result<Planned> {
    let ds = &pass.opts.datastores;
    let mut planned = Planned { disks: Vec::new(), skipped: Vec::new(), entries: Vec::new() };
    for (vd, place) in listed.into_iter().zip(places) {
        let written = ds.written(&place);
        if let Some(why) = skip_reason(&vd, &place)? {
            r.event(Event::Note { disk: Some(vd.key.clone()), what: format!("not backed up: {why}") });
            planned.entries.push(DiskEntry {
                key: vd.key.clone(),
                diskname: written,
                skipped: Some(why.clone()),
                ..Default::default()
            });
            planned.skipped.push(Skipped { disk: vd.key.clone(), why });
            continue;
        }
        let chain = Chain::open(&place.path, &ro(&place))?;
        if pass.snapshots && !place.on_volume() {
            if let Some(c) = vmdk::family::children(host().as_ref(), &place.path).first() {
                return Err(vmdk::Error::HasChildren {
                    path: place.path.clone(),
                    child: c.clone(),
                    what: format!("disk {} is not the top of its chain", vd.key),
                }
                .into());
            }
        }
        let plan = plan_disk(&vd, &place, &chain, pass.prev.as_ref(), pass.repo.is_some(), ds, r)?;
        // A disk whose chain still holds the point an earlier pass recorded keeps the name it had
        // then, even when the .vmx now names a tracking link above it: that is the disk a restore
        // brings back.
        let written = pass
            .prev
            .as_ref()
            .and_then(|(_, c)| c.disk(&vd.key))
            .filter(|d| d.point.as_deref().is_some_and(|p| in_chain(ds, &place, &chain, p)))
            .map(|d| d.diskname.clone())
            .unwrap_or(written);
        planned.disks.push(Disk {
            format: format_name(&chain.base().descriptor()),
            capacity: chain.capacity(),
            vd,
            place,
            written,
            plan,
        });
    }
    Ok(planned)
}

/// Runs a planned pass: from here the source VM changes, and the intent record and the journal
/// cover it. A failure before the commit point (the backup in place) undoes what this run did to
/// the source; after it, the source steps are finished.
fn run_pass(pass: &Pass, planned: Planned, r: &mut dyn Reporter) -> Result<BackupReport> {
    let Planned { disks, skipped, entries } = planned;
    let id = new_id();
    let temp = vmdk::txn::temp_name(&pass.dest);
    let snap_disks: Vec<usize> = (0..disks.len()).filter(|&i| pass.snapshots && !disks[i].place.on_volume()).collect();
    // The journal lists every disk to snapshot, with its children before any snapshot (a child
    // not among them is this run's), before the first one is made.
    let journal_disks = snap_disks
        .iter()
        .map(|&i| JournalDisk {
            key: disks[i].vd.key.clone(),
            top: disks[i].place.path.clone(),
            children_before: vmdk::family::children(host().as_ref(), &disks[i].place.path),
            ..Default::default()
        })
        .collect();
    let mut journal = Journal {
        id: id.clone(),
        dest: pass.dest.clone(),
        temp: temp.clone(),
        vmx: pass.vmx_real.clone(),
        disks: journal_disks,
        ..Journal::default()
    };
    let intent = if pass.snapshots {
        let tops: Vec<PathBuf> = snap_disks.iter().map(|&i| disks[i].place.path.clone()).collect();
        let i = vmdk::txn::Intent::begin(&host(), &pass.vmx_real, OP, &tops, Some(pass.opts.command.clone()))?;
        write_journal(&journal)?;
        Some(i)
    } else {
        None
    };
    let built = build(pass, &disks, &snap_disks, &id, &temp, &mut journal, entries, r);
    let (cat, done) = match built {
        Ok(b) => b,
        Err(e) => {
            if roll_back(&journal).is_ok() {
                if let Some(i) = intent {
                    let _ = std::fs::remove_file(journal_path(&pass.vmx_real));
                    let _ = crate::phase::end(i);
                }
            }
            return Err(e);
        }
    };
    host().sync_dir(&pass.parent)?;
    r.event(Event::Step { disk: None, what: format!("backup in place: {}", pass.dest.display()) });
    if let Some(i) = intent {
        journal.placed = true;
        write_journal(&journal)?;
        finish_source(&journal, r)?;
        let jp = journal_path(&pass.vmx_real);
        std::fs::remove_file(&jp).map_err(|e| Error::Io { path: jp.clone(), source: e })?;
        crate::phase::end(i)?;
    }
    let mut rep = report_of(&pass.dest, &cat, false);
    rep.disks = done;
    rep.skipped = skipped;
    Ok(rep)
}

/// Everything up to the commit point: snapshots, exports, small files, hashes, the catalog, and
/// the folder (or repository snapshot) put in place.
#[allow(clippy::too_many_arguments)]
fn build(
    pass: &Pass,
    disks: &[Disk],
    snap_disks: &[usize],
    id: &str,
    temp: &Path,
    journal: &mut Journal,
    skipped_entries: Vec<DiskEntry>,
    r: &mut dyn Reporter,
) -> Result<(Catalog, Vec<DiskDone>)> {
    std::fs::create_dir(temp).map_err(|e| Error::Io { path: temp.to_path_buf(), source: e })?;
    let mut writer = pass.repo.as_ref().map(Writer::new).transpose()?;
    let hasher = plain::Hasher::new();
    let snaps = take_snapshots(pass, disks, snap_disks, journal, r)?;
    let mut ex = export_disks(pass, disks, &snaps, temp, writer.as_mut(), &hasher, r)?;
    let mut entries = skipped_entries;
    entries.append(&mut ex.entries);
    // Sorted by device key order as the .vmx lists them (skipped disks were pushed first).
    let order: Vec<String> = pass.vmx.disks().into_iter().map(|d| d.key).collect();
    entries.sort_by_key(|e| order.iter().position(|k| *k == e.key).unwrap_or(usize::MAX));

    r.event(Event::Step { disk: None, what: "copying the VM's files".into() });
    let ds = &pass.opts.datastores;
    let mut files = ex.files;
    let config = small_files(&pass.vmx, &pass.vmx_place, &pass.vm_dir, ds, temp, &mut files, r)?;
    for (path, hashed) in hasher.finish() {
        let (size, sha256) = hashed?;
        let name = vmdk::txn::file_name(&path);
        if let Some(f) = files.iter_mut().find(|f| f.name == name) {
            f.size = size;
            f.sha256 = sha256;
        }
    }
    let cat = catalog_of(pass, disks.len(), snap_disks.len(), id, config, entries, files);
    vmdk::txn::write_file(&host(), &temp.join(catalog::FILE_NAME), cat.to_text().as_bytes(), false)?;
    match (writer, pass.repo.as_ref()) {
        (Some(w), Some(repo)) => store_in_repo(pass, repo, w, &cat, temp, ex.nodes, r)?,
        _ => put_in_place(temp, &pass.dest)?,
    }
    Ok((cat, ex.done))
}

/// Every disk's snapshot, before any export (the VM's disks are static from one moment on); the
/// disks (independent chains) at once unless two of them would pick snapshot names from one stem
/// in one folder. The journal already lists the disks; it records the snapshots made, the links
/// to commit once the backup is in place and, with `--keep-tracking`, the `.vmx` naming the
/// tracking links, in one write after the last snapshot. Returns each disk's snapshot (none for a
/// disk in a volume image).
fn take_snapshots(
    pass: &Pass,
    disks: &[Disk],
    snap_disks: &[usize],
    journal: &mut Journal,
    r: &mut dyn Reporter,
) -> Result<Vec<Option<PathBuf>>> {
    let targets: Vec<&Disk> = snap_disks.iter().map(|&n| &disks[n]).collect();
    let snap = |d: &&Disk, _: &(), r: &mut dyn Reporter| -> Result<PathBuf> {
        let s = redo::snapshot(&d.place.path, &rw(), false)?;
        r.event(Event::Step {
            disk: Some(d.vd.key.clone()),
            what: format!("snapshot {} (the disk is static below it)", s.display()),
        });
        Ok(s)
    };
    let stems: Vec<(PathBuf, String)> =
        targets.iter().map(|d| (d.place.folder().path.clone(), disk_stem(&d.place.name()))).collect();
    let distinct = stems.iter().enumerate().all(|(i, s)| !stems[..i].contains(s));
    let units = vec![(); targets.len()];
    let made: Vec<Result<PathBuf>> = if distinct {
        concurrently(&targets, &units, snap, r)
    } else {
        targets.iter().map(|d| snap(d, &(), r)).collect()
    };
    let keep = pass.opts.keep_tracking;
    let mut vmx_after: Option<Vmx> = None;
    let mut first_error = None;
    for ((jd, d), m) in journal.disks.iter_mut().zip(&targets).zip(made) {
        let s = match m {
            Ok(s) => s,
            Err(e) => {
                first_error.get_or_insert(e);
                continue;
            }
        };
        jd.snapshot = Some(s.clone());
        jd.commit = match (&d.plan, keep) {
            (_, false) => vec![s.clone()],
            (Plan::Tracking { commits, .. }, true) if pass.kind == Kind::Incremental => commits.clone(),
            _ => Vec::new(),
        };
        if keep {
            let name = vmdk::txn::file_name(&s);
            let fname = match d.vd.file_name.rsplit_once('/') {
                Some((dir, _)) => format!("{dir}/{name}"),
                None => name,
            };
            vmx_after = Some(vmx_after.as_ref().unwrap_or(&pass.vmx).with_disk_file(&d.vd.key, &fname));
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    journal.vmx_after = vmx_after.map(|v| v.to_text());
    if !targets.is_empty() {
        write_journal(journal)?;
    }
    let mut snaps: Vec<Option<PathBuf>> = vec![None; disks.len()];
    for (&n, jd) in snap_disks.iter().zip(&journal.disks) {
        snaps[n] = jd.snapshot.clone();
    }
    Ok(snaps)
}

/// Exports every disk: into a repository one after another; into the folder each disk on its own
/// thread, each disk's files queued to `hasher` as soon as that disk is written. A disk read whole
/// (a full export, a comparison of block hashes: reading and hashing take the cores) starts when
/// the disk before it has been copied, so that its copy overlaps that disk's flush, and that disk's
/// hashing its own flush; disks exported from tracking links (cost ∝ changes, mostly waiting on
/// flushes) all start at once.
fn export_disks(
    pass: &Pass,
    disks: &[Disk],
    snaps: &[Option<PathBuf>],
    temp: &Path,
    writer: Option<&mut Writer<'_>>,
    hasher: &plain::Hasher,
    r: &mut dyn Reporter,
) -> Result<Exported> {
    let (format, kind, keep, ds) = (pass.opts.format, pass.kind, pass.opts.keep_tracking, &pass.opts.datastores);
    let mut ex = Exported::default();
    if let Some(w) = writer {
        for (d, snapshot) in disks.iter().zip(snaps) {
            let (entry, node, dd) = repo_disk(d, w, pass.point.as_ref(), kind, snapshot, keep, ds, r)?;
            ex.nodes.push(node);
            ex.add((entry, Vec::new(), dd));
        }
        return Ok(ex);
    }
    // copied[i] opens once disk i no longer reads the whole disk (its copy is done, or it failed).
    let copied: Vec<Gate> = disks.iter().map(|_| Gate::default()).collect();
    let work: Vec<(usize, &Option<PathBuf>)> = snaps.iter().enumerate().collect();
    let each = |d: &Disk, &(i, snapshot): &(usize, &Option<PathBuf>), r: &mut dyn Reporter| {
        let whole = !matches!(d.plan, Plan::Tracking { .. });
        if whole && i > 0 {
            copied[i - 1].wait();
        }
        let out = export_disk(d, temp, format, kind, snapshot, keep, ds, &|| copied[i].open(), hasher, r);
        copied[i].open();
        let out = out?;
        for f in &out.1 {
            hasher.add(&temp.join(&f.name));
        }
        Ok(out)
    };
    for out in concurrently(disks, &work, each, r) {
        ex.add(out?);
    }
    Ok(ex)
}

/// A flag that opens once, and that threads wait for.
#[derive(Default)]
struct Gate {
    open: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_all();
    }

    fn wait(&self) {
        let mut g = self.open.lock().unwrap_or_else(|p| p.into_inner());
        while !*g {
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The catalog of this pass (`config` is what [`small_files`] returns).
fn catalog_of(
    pass: &Pass,
    disks: usize,
    snapshotted: usize,
    id: &str,
    config: (String, String, String),
    entries: Vec<DiskEntry>,
    files: Vec<FileEntry>,
) -> Catalog {
    // Every snapshot of a repository is a whole restore point.
    let in_repo = pass.repo.is_some();
    let prev = pass.prev.as_ref().filter(|_| !in_repo);
    let (config_vmx, config_suspenddir, config_logdir) = config;
    Catalog {
        id: id.to_string(),
        kind: if in_repo { Kind::Full } else { pass.kind },
        time: crate::text::now_utc(),
        parent: prev.map(|(f, c)| (relative_to(f, &pass.parent), c.id.clone())),
        base: prev.map(|(_, c)| c.base.clone()).unwrap_or_else(|| id.to_string()),
        display_name: pass.vmx.display_name().unwrap_or_default().to_string(),
        uuid: pass.vmx.uuid().unwrap_or_default().to_string(),
        state: pass.vmx.state().to_string(),
        source: if pass.vmx_place.on_volume() { "volume".into() } else { "host".into() },
        snapshot: match (snapshotted, disks) {
            (0, _) => "none: the disks are in a VMFS volume image, opened read-only, which does not change".into(),
            (n, m) if n == m => {
                "a snapshot of every disk (a REDO link), committed after the export or kept as the change-tracking link".into()
            }
            _ => "a snapshot of each disk on the host; none for the disks inside the VMFS volume image (opened read-only, it does not change)".into(),
        },
        config_vmx,
        config_suspenddir,
        config_logdir,
        disks: entries,
        files,
    }
}

/// Stores the small files and the catalog of `temp` with the disks' `nodes` as one repository
/// snapshot (the commit point: the snapshot file), then removes `temp`.
fn store_in_repo(
    pass: &Pass,
    repo: &crate::repo::Repo,
    mut w: Writer<'_>,
    cat: &Catalog,
    temp: &Path,
    mut disk_nodes: Vec<Node>,
    r: &mut dyn Reporter,
) -> Result<()> {
    r.event(Event::Step { disk: None, what: format!("storing the VM's files in {}", pass.dest.display()) });
    let mut names: Vec<String> = cat.files.iter().map(|f| f.name.clone()).collect();
    names.push(catalog::FILE_NAME.to_string());
    let mut nodes = in_repo::write_files(&mut w, temp, &names)?;
    nodes.append(&mut disk_nodes);
    let tags = vec!["vmkfs".to_string(), pass.folder_name.clone(), pass.kind.as_str().to_string()];
    let snap = crate::repo::snapshot::save_folder(repo, w, &pass.folder_name, nodes, tags)?;
    r.event(Event::Step { disk: None, what: format!("snapshot {snap} saved") });
    std::fs::remove_dir_all(temp).map_err(|e| Error::Io { path: temp.to_path_buf(), source: e })
}

/// The commit point of a folder backup: the hidden folder `temp`, flushed, becomes `dest` at once.
fn put_in_place(temp: &Path, dest: &Path) -> Result<()> {
    let h = host();
    h.sync_dir(temp)?;
    h.rename_noreplace(temp, dest).map_err(|e| match e {
        vmdk::Error::Exists { path } => {
            Error::Usage(format!("{}: already exists (another backup wrote it meanwhile)", path.display()))
        }
        e => e.into(),
    })?;
    Ok(())
}

fn report_of(dest: &Path, cat: &Catalog, finished: bool) -> BackupReport {
    BackupReport {
        dest: dest.to_path_buf(),
        id: cat.id.clone(),
        kind: cat.kind.as_str(),
        disks: cat
            .disks
            .iter()
            .filter(|d| d.skipped.is_none())
            .map(|d| DiskDone {
                disk: d.key.clone(),
                method: d.method.map(Method::as_str).unwrap_or("full"),
                file: d.filename.clone().unwrap_or_default(),
                bytes: d.bytes,
            })
            .collect(),
        skipped: cat
            .disks
            .iter()
            .filter_map(|d| d.skipped.clone().map(|why| Skipped { disk: d.key.clone(), why }))
            .collect(),
        files: cat.files.len() + 1,
        finished_interrupted: finished,
    }
}

/// `folder` as the catalog names a parent backup: relative to `base` (this backup's parent
/// folder, `../NAME`) when it lies there, else absolute.
fn relative_to(folder: &Path, base: &Path) -> String {
    match folder.parent() {
        Some(p) if p == base => format!("../{}", vmdk::txn::file_name(folder)),
        _ => folder.display().to_string(),
    }
}

fn check_same_vm(folder: &Path, cat: &Catalog, vmx: &Vmx, config: &str) -> Result<()> {
    let uuid = vmx.uuid().unwrap_or_default();
    if cat.config_vmx != config || (!cat.uuid.is_empty() && !uuid.is_empty() && cat.uuid != uuid) {
        return Err(Error::Usage(format!(
            "{}: a backup of another VM ({} with uuid {:?}), not of {config} ({uuid:?})",
            folder.display(),
            cat.config_vmx,
            cat.uuid
        )));
    }
    Ok(())
}

/// True when `written` (a path as a catalog writes it) names a link of `chain`.
fn in_chain(ds: &Datastores, place: &Place, chain: &Chain, written: &str) -> bool {
    let Ok(p) = ds.resolve(written, &place.folder(), "point") else { return false };
    let real = p.storage().real_path(&p.path);
    chain.links().iter().any(|l| l.real_path() == real)
}

/// Why a disk is not backed up, if it is not.
fn skip_reason(vd: &VmxDisk, place: &Place) -> Result<Option<String>> {
    if vd.mode == DiskMode::NonPersistent {
        return Ok(Some(format!(
            "{} disk: its writes are thrown away at power-off, so there is nothing to keep",
            vd.mode_text.as_deref().unwrap_or("nonpersistent")
        )));
    }
    let peek = vmdk::family::peek(place.storage().as_ref(), &place.path)?;
    if let Some(p) = peek {
        let d = &p.descriptor;
        let physical = matches!(vmdk::rdm_mode(d), Some(RdmMode::Physical | RdmMode::Raw))
            || matches!(d.create_type, CreateType::FullDevice | CreateType::PartitionedDevice);
        if physical {
            return Ok(Some(
                "physical device (a passthrough raw device mapping or a raw disk): its data is on the LUN, outside any snapshot; back the LUN up with the array".into(),
            ));
        }
    }
    Ok(None)
}

/// Chooses how disk `vd` gets into this backup.
fn plan_disk(
    vd: &VmxDisk,
    place: &Place,
    chain: &Chain,
    prev: Option<&(PathBuf, Catalog)>,
    in_repo: bool,
    ds: &Datastores,
    r: &mut dyn Reporter,
) -> Result<Plan> {
    let Some((pfolder, pcat)) = prev else { return Ok(Plan::Full) };
    let note = |r: &mut dyn Reporter, what: String| r.event(Event::Note { disk: Some(vd.key.clone()), what });
    let Some(pd) = pcat.disk(&vd.key).filter(|d| d.skipped.is_none()) else {
        note(r, format!("not in {}: exported whole", pfolder.display()));
        return Ok(Plan::Full);
    };
    if pd.capacity != chain.capacity() {
        note(
            r,
            format!(
                "its capacity changed since {} ({} → {} bytes): exported whole",
                pfolder.display(),
                pd.capacity,
                chain.capacity()
            ),
        );
        return Ok(Plan::Full);
    }
    // A repository's previous point has blob IDs in place of block hashes.
    let prev_table =
        if in_repo { BlockHashes::zeros(pd.capacity, vmdisk::BLOCK)? } else { load_blocks(pfolder, pcat, pd)? };
    // The earlier pass's point must still be a link below the top with the CID it recorded.
    if let (Some(point), Some(tracking)) = (&pd.point, &pd.tracking) {
        let resolve = |w: &str| ds.resolve(w, &place.folder(), "tracking link").map(|p| p.storage().real_path(&p.path));
        let (point, tracking) = (resolve(point)?, resolve(tracking)?);
        let links = chain.links();
        let real = |l: &vmdk::Link| l.real_path().to_path_buf();
        let at = links.iter().position(|l| real(l) == point);
        let tr = links.iter().position(|l| real(l) == tracking);
        match (at, tr) {
            (Some(i), Some(t)) if i > 0 && t < i && links[i].descriptor().cid == pd.cid => {
                let commits = links[..i].iter().rev().map(|l| l.path().to_path_buf()).collect();
                return Ok(Plan::Tracking { point: links[i].path().to_path_buf(), commits, prev: prev_table });
            }
            _ => note(
                r,
                format!(
                    "the tracking link {} kept no longer covers every change since {}: comparing block hashes instead",
                    tracking.display(),
                    pfolder.display()
                ),
            ),
        }
    }
    Ok(Plan::Hashes { prev: prev_table, prev_cid: pd.cid, prev_file: pd.filename.clone().unwrap_or_default() })
}

/// The block hashes an earlier backup recorded for a disk, after checking the file's SHA-256.
fn load_blocks(folder: &Path, cat: &Catalog, d: &DiskEntry) -> Result<BlockHashes> {
    let name = d.blocks.as_deref().ok_or_else(|| Error::Backup {
        path: folder.into(),
        what: format!("disk {} has no block hashes to compare with", d.key),
    })?;
    let path = folder.join(name);
    let entry = cat.files.iter().find(|f| f.name == name).ok_or_else(|| Error::Backup {
        path: path.clone(),
        what: "the block-hash file is not among the catalog's files".into(),
    })?;
    let (_, sum) = plain::sha256_file(&host(), &path)?;
    if sum != entry.sha256 {
        return Err(Error::Backup {
            path,
            what: format!("SHA-256 is {sum}, the catalog says {}: the file is damaged", entry.sha256),
        });
    }
    let raw = std::fs::read(&path).map_err(|e| Error::Io { path: path.clone(), source: e })?;
    BlockHashes::from_bytes(&raw, &path)
}

/// Most disks [`concurrently`] works on at once.
const CONCURRENT_DISKS: usize = 4;

/// A reporter that passes events to another thread's.
struct Forward(std::sync::mpsc::Sender<Event>);

impl Reporter for Forward {
    fn event(&mut self, e: Event) {
        let _ = self.0.send(e);
    }
}

/// Runs `work` for every item of `items` (with its `extra`) on up to [`CONCURRENT_DISKS`]
/// threads, passing their events to `r` as they come; the results in the order of `items`.
/// For passes whose cost is the changes (a tracking link's blocks, its commit), each disk's fixed
/// costs — creating, flushing and renaming files, waiting on the disk — then overlap.
fn concurrently<T: Sync, X: Sync, O: Send>(
    items: &[T],
    extra: &[X],
    work: impl Fn(&T, &X, &mut dyn Reporter) -> Result<O> + Sync,
    r: &mut dyn Reporter,
) -> Vec<Result<O>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let outs: Vec<std::sync::Mutex<Option<Result<O>>>> = items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let (tx, rx) = std::sync::mpsc::channel::<Event>();
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..items.len().min(CONCURRENT_DISKS))
            .map(|_| {
                let mut fwd = Forward(tx.clone());
                let (next, outs, work) = (&next, &outs, &work);
                s.spawn(move || loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= items.len() {
                        return;
                    }
                    let o = work(&items[i], &extra[i], &mut fwd);
                    *outs[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(o);
                })
            })
            .collect();
        drop(tx);
        for e in rx {
            r.event(e);
        }
        for t in threads {
            if let Err(p) = t.join() {
                std::panic::resume_unwind(p);
            }
        }
    });
    outs.into_iter()
        .map(|o| {
            o.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or_else(|| Err(Error::Usage("a disk was not worked on".into())))
        })
        .collect()
}

/// Exports one disk into the backup folder `temp`; returns its catalog entry, its files and a
/// summary. `copied` is called once the disk has been read (the rest is writing and flushing); a
/// full export queues its files to `hasher` once they hold their final bytes, before they are
/// flushed.
#[allow(clippy::too_many_arguments)]
fn export_disk(
    d: &Disk,
    temp: &Path,
    format: DiskFormat,
    kind: Kind,
    snapshot: &Option<PathBuf>,
    keep_tracking: bool,
    ds: &Datastores,
    copied: &dyn Fn(),
    hasher: &plain::Hasher,
    r: &mut dyn Reporter,
) -> Result<(DiskEntry, Vec<FileEntry>, DiskDone)> {
    let key = d.vd.key.clone();
    let stem = format!("{}-{}", d.vd.file_key(), disk_stem(&d.place.name()));
    let dst = temp.join(format!("{stem}.vmdk"));
    let opts = ro(&d.place);
    let chain = Chain::open(&d.place.path, &opts)?;
    let cid = chain.top().descriptor().cid;
    let block = match &d.plan {
        Plan::Full => blocks::block_size_for(d.capacity),
        Plan::Tracking { prev, .. } | Plan::Hashes { prev, .. } => prev.block(),
    };
    let mut progress = |done: u64, total: u64| {
        if done >= total {
            copied();
        }
        r.event(Event::Progress { disk: key.clone(), done, total })
    };
    let (method, parent_cid, table, bytes, paths, export) = match &d.plan {
        Plan::Full => {
            let hs = Hashing::new(&chain, block)?;
            let mut copts = CloneOptions::new(format);
            copts.source = opts.clone();
            let mut e = EngineOptions::new();
            e.align = e.align.max(block);
            e.chunk = e.chunk.max(block);
            copts.engine = Some(e);
            copts.progress = Some(&mut progress);
            // The files are hashed while they are flushed.
            let mut sealed = |files: &[(PathBuf, PathBuf)]| {
                for (fin, now) in files {
                    hasher.add_as(fin, now);
                }
            };
            copts.sealed = Some(&mut sealed);
            let rep = clone_chain_through(&chain, &hs, &dst, &mut copts)?;
            (Method::Full, None, hs.into_table(), rep.stats.read, rep.files, format.name().to_string())
        }
        Plan::Tracking { point, prev, .. } => {
            let point_cid = chain
                .links()
                .iter()
                .find(|l| l.path() == point.as_path())
                .map(|l| l.descriptor().cid)
                .unwrap_or_default();
            drop(chain);
            let changes = changed_blocks(&d.place.path, Some(point), redo::changemap::DEFAULT_BLOCK, &opts)?;
            // The changed blocks are hashed again while the export copies and flushes them, and
            // the export's files are hashed while they are flushed.
            let mut sealed = |files: &[(PathBuf, PathBuf)]| {
                for (fin, now) in files {
                    hasher.add_as(fin, now);
                }
            };
            let (exported, table) = std::thread::scope(|s| {
                let hashes = s.spawn(|| rehash(&d.place.path, &opts, prev, &changes));
                let exported =
                    export_delta(&d.place.path, point, &dst, &opts, false, &mut progress, None, Some(&mut sealed));
                (exported, hashes.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            });
            let (path, table) = (exported?, table?);
            let files = vmdk::Link::open(&path, &OpenOptions::read())?.files();
            (Method::Tracking, Some(point_cid), table, changes.changed_bytes(), files, "redo".to_string())
        }
        Plan::Hashes { prev, prev_cid, prev_file } => {
            let (files, table, changed) = hash_delta(&chain, prev, *prev_cid, prev_file, &dst, cid, &mut progress)?;
            (Method::Hashes, Some(*prev_cid), table, changed, files, "redo".to_string())
        }
    };
    let blocks_name = format!("{stem}.blocks");
    vmdk::txn::write_file(&host(), &temp.join(&blocks_name), &table.to_bytes(), false)?;
    // Sizes and hashes are filled in by the caller's hasher.
    let entry =
        |name: String, role: Role| FileEntry { name, role, disk: Some(key.clone()), size: 0, sha256: String::new() };
    let mut files: Vec<FileEntry> = paths.iter().map(|p| entry(vmdk::txn::file_name(p), Role::Disk)).collect();
    files.push(entry(blocks_name.clone(), Role::Blocks));
    let what = match method {
        Method::Full => format!("exported whole ({bytes} bytes of data)"),
        Method::Tracking => format!("{bytes} bytes changed, from the tracking link"),
        Method::Hashes => format!("{bytes} bytes changed, found by block hashes"),
    };
    r.event(Event::Step { disk: Some(key.clone()), what });
    let file = vmdk::txn::file_name(&dst);
    let entry = DiskEntry {
        filename: Some(file.clone()),
        export,
        parent_cid,
        method: Some(method),
        blocks: Some(blocks_name),
        bytes,
        ..entry_of(d, cid, recorded_points(d, kind, snapshot.as_deref(), keep_tracking, ds))
    };
    Ok((entry, files, DiskDone { disk: key, method: method.as_str(), file, bytes }))
}

/// The catalog entry of disk `d` (its top's CID `cid`) with what every backup of it records:
/// key, names, format, capacity, CID, and the `point` and `tracking` of [`recorded_points`]; the
/// caller adds what it wrote (file, export, method, bytes, …).
fn entry_of(d: &Disk, cid: u32, (point, tracking): (Option<String>, Option<String>)) -> DiskEntry {
    DiskEntry {
        key: d.vd.key.clone(),
        diskname: d.written.clone(),
        filename: None,
        skipped: None,
        format: d.format.clone(),
        export: String::new(),
        capacity: d.capacity,
        cid,
        parent_cid: None,
        method: None,
        blocks: None,
        bytes: 0,
        point,
        tracking,
    }
}

/// The catalog's `point` and `tracking` of disk `d` after this pass (as the catalog writes paths,
/// [`Datastores::written`]). With a tracking link kept (`snapshot` taken and `keep_tracking`): the
/// point is the link the pass read up to (an incremental pass's tracking point, else the disk's
/// top) and the tracking link is `snapshot`. Without one, the point still names the link holding
/// this state (its CID changes with the commit, so no later pass takes it for a tracking point),
/// which keeps the disk's name stable across passes.
fn recorded_points(
    d: &Disk,
    kind: Kind,
    snapshot: Option<&Path>,
    keep_tracking: bool,
    ds: &Datastores,
) -> (Option<String>, Option<String>) {
    let written = |p: &Path| ds.written(&d.place.at(p));
    match (snapshot, keep_tracking) {
        (Some(s), true) => {
            let at = match (&d.plan, kind) {
                (Plan::Tracking { point, .. }, Kind::Incremental) => point.as_path(),
                _ => d.place.path.as_path(),
            };
            (Some(written(at)), Some(written(s)))
        }
        _ => (Some(written(&d.place.path)), None),
    }
}

/// Stores one disk into the repository as `KEY-STEM.raw`: a tracking plan reads only the blocks
/// its change map marks (the others keep the previous point's blobs), every other plan reads the
/// blocks the allocation map holds (the index keeps unchanged ones from being stored again).
#[allow(clippy::too_many_arguments)]
fn repo_disk(
    d: &Disk,
    w: &mut Writer<'_>,
    point: Option<&in_repo::Point>,
    kind: Kind,
    snapshot: &Option<PathBuf>,
    keep_tracking: bool,
    ds: &Datastores,
    r: &mut dyn Reporter,
) -> Result<(DiskEntry, Node, DiskDone)> {
    let key = d.vd.key.clone();
    let file = format!("{}-{}.raw", d.vd.file_key(), disk_stem(&d.place.name()));
    let opts = ro(&d.place);
    let chain = Chain::open(&d.place.path, &opts)?;
    let cid = chain.top().descriptor().cid;
    // The previous point's blobs of this disk, and which blocks changed since (tracking link).
    let prev_blobs = point.zip(point.and_then(|p| p.catalog.disk(&key))).and_then(|(p, pd)| {
        p.node(pd.filename.as_deref()?).filter(|n| n.size == d.capacity).and_then(|n| n.content.clone())
    });
    let changed = match (&d.plan, &prev_blobs) {
        (Plan::Tracking { point: at, .. }, Some(_)) => {
            let m = changed_blocks(&d.place.path, Some(at), vmdisk::BLOCK, &opts)?;
            Some(in_repo::changed_blocks(&m, d.capacity))
        }
        _ => None,
    };
    let method = match (&d.plan, &changed) {
        (Plan::Full, _) => Method::Full,
        (Plan::Tracking { .. }, Some(_)) => Method::Tracking,
        _ => Method::Hashes,
    };
    let mut progress = |done: u64, total: u64| r.event(Event::Progress { disk: key.clone(), done, total });
    let prev = prev_blobs.as_deref().zip(changed.as_deref());
    let (node, wr) = in_repo::write_disk(w, &file, &chain, prev, &mut progress)?;
    r.event(Event::Step {
        disk: Some(key.clone()),
        what: format!("{} bytes read, {} blocks kept from the previous snapshot unread", wr.read, wr.reused),
    });
    let entry = DiskEntry {
        filename: Some(file.clone()),
        export: catalog::RAW_EXPORT.into(),
        method: Some(method),
        bytes: wr.read,
        ..entry_of(d, cid, recorded_points(d, kind, snapshot.as_deref(), keep_tracking, ds))
    };
    Ok((entry, node, DiskDone { disk: key, method: method.as_str(), file, bytes: wr.read }))
}

/// The block hashes after a tracking pass: `prev` with every block the change map touches hashed
/// again from the chain at `top` (cost ∝ changed data).
fn rehash(top: &Path, opts: &OpenOptions, prev: &BlockHashes, changes: &redo::ChangeMap) -> Result<BlockHashes> {
    let chain = Chain::open(top, opts)?;
    let mut t = prev.clone();
    let b = prev.block();
    let mut buf = Vec::new();
    let mut last: Option<usize> = None;
    for (s, l) in changes.ranges() {
        let (first, end) = ((s / b) as usize, ((s + l).div_ceil(b)) as usize);
        for i in first.max(last.map_or(0, |x| x + 1))..end.min(t.len()) {
            let (off, len) = t.range(i);
            buf.resize(len as usize, 0);
            chain.read_at(&mut buf, off)?;
            t.set(i, t.digest(&buf));
            last = Some(i);
        }
    }
    Ok(t)
}

/// A REDO link at `dst` holding the blocks of `chain` whose hash differs from `prev` (the state
/// of CID `prev_cid`, stored in the earlier backup as `prev_file`), with CID `cid`. Returns its
/// files, the block hashes now, and the bytes changed.
fn hash_delta(
    chain: &Chain,
    prev: &BlockHashes,
    prev_cid: u32,
    prev_file: &str,
    dst: &Path,
    cid: u32,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(Vec<PathBuf>, BlockHashes, u64)> {
    let mut copts = CreateOptions::new(DiskFormat::MonoSparse, chain.capacity());
    copts.parent = Some(Parent { hint: prev_file.to_string(), cid: prev_cid });
    if let Some(a) = chain.top().descriptor().ddb("adapterType").and_then(vmdk::Adapter::parse) {
        copts.adapter = a;
    }
    let nd = vmdk::create::create(dst, &copts)?;
    let t = ChangedOnly::new(nd.link(), prev)?;
    let mut e = EngineOptions::new();
    e.ordered = true;
    e.skip_zeros = false;
    e.align = prev.block();
    e.chunk = e.chunk.max(prev.block());
    copy(chain, &t, &e, progress, None)?;
    let (table, changed) = t.finish()?;
    nd.link().update_descriptor(|d| d.set_cid(cid))?;
    let files = nd.final_paths();
    nd.commit()?;
    Ok((files, table, changed))
}

/// Copies the small files into `temp`; returns the catalog's `config.vmx`, `config.suspenddir`
/// and `config.logdir`.
fn small_files(
    vmx: &Vmx,
    vmx_place: &Place,
    vm_dir: &Place,
    ds: &Datastores,
    temp: &Path,
    files: &mut Vec<FileEntry>,
    r: &mut dyn Reporter,
) -> Result<(String, String, String)> {
    let suspend_dir = match vmx.suspend_dir() {
        Some(s) => ds.resolve(s, vm_dir, "suspend.directory")?,
        None => vm_dir.clone(),
    };
    let (log_dir, log_stem) = match vmx.log_file() {
        Some(l) => {
            let p = ds.resolve(l, vm_dir, "log.fileName")?;
            let stem = p.name().strip_suffix(".log").unwrap_or(&p.name()).to_string();
            (p.folder(), Some(stem))
        }
        None => (vm_dir.clone(), None),
    };
    let mut want: Vec<(Place, Role)> = vec![(vmx_place.clone(), Role::Config)];
    let stem = vmx_place.name();
    let stem = stem.strip_suffix(".vmx").unwrap_or(&stem).to_string();
    for (written, what) in [(vmx.nvram(), "nvram"), (vmx.vmxf(), "extendedConfigFile")] {
        if let Some(w) = written {
            want.push((ds.resolve(w, vm_dir, what)?, Role::VmFile));
        }
    }
    want.push((vm_dir.join(&format!("{stem}.vmsd")), Role::VmFile));
    if let Some(s) = vmx.vm_state() {
        want.push((ds.resolve(s, &suspend_dir, "checkpoint.vmState")?, Role::Suspend));
    }
    for n in log_dir.list() {
        let log =
            n.ends_with(".log") && (n.starts_with("vmware") || log_stem.as_deref().is_some_and(|s| n.starts_with(s)));
        if log {
            want.push((log_dir.join(&n), Role::Log));
        }
    }
    for (p, role) in want {
        if !p.exists() {
            // An absent .vmsd is ordinary (no key names it); another absent file is worth a note.
            if !p.name().ends_with(".vmsd") {
                r.event(Event::Note { disk: None, what: format!("{} is named but absent: not copied", p.describe()) });
            }
            continue;
        }
        let name = p.name();
        if files.iter().any(|f| f.name == name) {
            if role == Role::Log {
                continue;
            }
            return Err(Error::Usage(format!("{}: a second file named {name:?} in the backup", p.describe())));
        }
        let (size, sha256) = plain::copy_file(&p.storage(), &p.path, &host(), &temp.join(&name))?;
        files.push(FileEntry { name, role, disk: None, size, sha256 });
    }
    Ok((ds.written(vmx_place), ds.written(&suspend_dir), ds.written(&log_dir)))
}

/// After the backup is in place: the `.vmx` names the kept tracking links, then the links are
/// committed. Each step is done only if not done yet, so this also finishes an interrupted run.
fn finish_source(j: &Journal, r: &mut dyn Reporter) -> Result<()> {
    if let Some(text) = &j.vmx_after {
        let now = std::fs::read_to_string(&j.vmx).map_err(|e| Error::Io { path: j.vmx.clone(), source: e })?;
        if &now != text {
            vmdk::txn::write_file(&host(), &j.vmx, text.as_bytes(), true)?;
            r.event(Event::Step { disk: None, what: format!("{} names the tracking links", j.vmx.display()) });
        }
    }
    // Each disk's links in order; the disks (independent chains) at once.
    let commit_links = |d: &JournalDisk, _: &(), r: &mut dyn Reporter| -> Result<()> {
        for link in &d.commit {
            vmdk::txn::settle(host().as_ref(), link)?;
            if link.exists() {
                commit(link, &rw(), &mut |_, _| {}, None)?;
                r.event(Event::Step { disk: Some(d.key.clone()), what: format!("committed {}", link.display()) });
            }
        }
        Ok(())
    };
    let units = vec![(); j.disks.len()];
    concurrently(&j.disks, &units, commit_links, r).into_iter().collect()
}

/// What an interrupted backup left was finished: `dest` is complete (rolled forward) or absent.
#[derive(Debug, Clone)]
pub struct Recovered {
    /// The interrupted backup's destination.
    pub dest: PathBuf,
    /// True when it was complete and the source steps were finished.
    pub complete: bool,
}

/// Finishes a backup of the VM at `vmx` (a real host path) that was interrupted: rolled forward
/// when its folder had been put in place, rolled back (snapshot links discarded, the hidden
/// folder removed) otherwise. `None` when there was none.
pub fn recover(vmx: &Path, r: &mut dyn Reporter) -> Result<Option<Recovered>> {
    let h = host();
    let Some(intent) = vmdk::txn::pending(&h, vmx)? else {
        if journal_path(vmx).exists() {
            // The intent is finished last: a journal without one is what a run left after it was
            // done with the source.
            let _ = std::fs::remove_file(journal_path(vmx));
        }
        return Ok(None);
    };
    if intent.record().op != OP {
        drop(intent);
        vmdk::txn::settle(h.as_ref(), vmx)?;
        return Ok(None);
    }
    let Some(j) = read_journal(vmx)? else {
        // Interrupted before anything was recorded, so before anything changed.
        intent.abandon()?;
        return Ok(None);
    };
    let complete = j.placed || verify::load(&j.dest).is_ok_and(|c| c.id == j.id);
    if complete {
        r.event(Event::Note {
            disk: None,
            what: format!("finishing the interrupted backup {} (it is complete)", j.dest.display()),
        });
        finish_source(&j, r)?;
    } else {
        r.event(Event::Note { disk: None, what: format!("rolling back the interrupted backup {}", j.dest.display()) });
        roll_back(&j)?;
    }
    std::fs::remove_file(journal_path(vmx)).map_err(|e| Error::Io { path: journal_path(vmx), source: e })?;
    crate::phase::end(intent)?;
    Ok(Some(Recovered { dest: j.dest, complete }))
}

/// Undoes an interrupted backup that never reached its commit point: its snapshot links (empty:
/// nothing writes the disks while the backup's record is there) are discarded and its hidden
/// folder removed.
fn roll_back(j: &Journal) -> Result<()> {
    let h = host();
    for d in &j.disks {
        let dir = vmdk::txn::folder(&d.top).to_path_buf();
        // A snapshot being made when the run died is finished or undone by its own record first.
        for n in h.list_dir(&dir) {
            if vmdk::txn::intent::is_record_name(&n) {
                let primary = n.trim_start_matches('.').trim_end_matches(vmdk::txn::intent::SUFFIX);
                vmdk::txn::settle(h.as_ref(), &dir.join(primary))?;
            }
        }
        let ours: Vec<PathBuf> = vmdk::family::children(h.as_ref(), &d.top)
            .into_iter()
            .filter(|c| !d.children_before.contains(c))
            .chain(d.snapshot.clone())
            .collect();
        for s in ours {
            if s.exists() {
                redo::discard(&s, &rw())?;
            }
        }
    }
    if j.temp.exists() && is_our_temp(&j.temp) {
        std::fs::remove_dir_all(&j.temp).map_err(|e| Error::Io { path: j.temp.clone(), source: e })?;
    }
    Ok(())
}

fn is_our_temp(p: &Path) -> bool {
    vmdk::txn::temp::parse_temp_name(&vmdk::txn::file_name(p)).is_some()
}

/// Removes hidden backup folders for `dest` that a dead process left (a run killed before its
/// commit point whose VM was not backed up again since).
fn sweep_stale_folders(dest: &Path) {
    let Some(parent) = dest.parent() else { return };
    let want = vmdk::txn::file_name(dest);
    for n in host().list_dir(parent) {
        if let Some((fin, pid)) = vmdk::txn::temp::parse_temp_name(&n) {
            let p = parent.join(&n);
            if fin == want && p.is_dir() && !rdm::process_alive(pid) {
                let _ = std::fs::remove_dir_all(&p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(disk_stem("vm-000012.vmdk"), "vm");
        assert_eq!(disk_stem("my-disk.vmdk"), "my-disk");
        assert_eq!(disk_stem("data-1.vmdk"), "data-1");
        assert_eq!(new_id().len(), 32);
        assert_eq!(relative_to(Path::new("/b/full"), Path::new("/b")), "../full");
        assert_eq!(relative_to(Path::new("/a/full"), Path::new("/b")), "/a/full");
    }
}
