//! Consistency checks and repairs of one link (`-x check|repair`).
//!
//! [`check_disk`] answers "would every read of this link succeed, and do its structures agree?":
//! 1. Interrupted operations are settled first, as by every command; one that only its own re-run
//!    can finish is the finding (naming the command to re-run).
//! 2. The link is opened with the very code every command uses ([`Link::open`]); a link that does
//!    not open is a finding carrying the reader's error.
//! 3. Each extent is checked by its own module, on the same rules its reader applies (the rules
//!    are shared, not copied): hosted sparse and COWD in [`crate::extent::sparse_check`] (headers,
//!    directories and their redundant copies, every grain table and every entry of both copies:
//!    inside the file, past the metadata, not used twice; the unclean-shutdown flag; COWD's free
//!    sector), streams in [`crate::extent::stream::check`] (every marker walked, every grain
//!    inflated, the directory against the walk, footer and end-of-stream), seSparse in
//!    [`crate::extent::sesparse::check`] (every table and entry), flat extents in
//!    [`crate::extent::flat::check`] (lengths); the descriptor against its extents (types, sizes,
//!    createType against the sparse flags) here.
//! 4. When nothing was found, the link's allocation map is walked whole through the reader, so
//!    `clean` never stands beside a map `--info` cannot build.
//!
//! [`repair_disk`] runs the same checks, and for every finding decides what to change: per grain
//! table entry (and directory entry) the copy that is consistent — accepted by the reader's rule,
//! not overlapping metadata or another grain — wins; a valid pointer is never replaced by an
//! invalid or zero one; the unclean-shutdown flag is cleared once everything else agrees. When a
//! finding cannot be decided (neither copy is sound, both are sound but differ, no redundant copy,
//! or nothing repair knows how to fix), nothing at all is changed and the report says why. Before
//! the first change, every metadata block that will change is saved to a backup file beside the
//! disk ([`backup`]); the changes run under an intent record whose re-run is the repair command, so
//! a repair killed half-way leaves the disk refused with "re-run `vmkfs -x repair DISK`", and the
//! re-run (which takes the record and the backup over) finishes it.

pub mod backup;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::descriptor::{CreateType, Descriptor, ExtentLine, ExtentType, MAX_DESCRIPTOR_BYTES};
use crate::detect::{self, Format};
use crate::error::{Error, Result};
use crate::extent::kdmv;
use crate::extent::{flat, sesparse, sparse_check, stream, ExtentKind};
use crate::link::{Link, OpenOptions};
use crate::storage::{resolve_extent_path, Backing, LockMode};
use crate::txn::{self, Intent};

/// The intent record's operation name for a repair.
pub const OP: &str = "repair";

use crate::findings::{finding_of, Fate};
pub use crate::findings::{Change, Finding, ProblemId, Report, Sink, MAX_FINDINGS};

/// Checks the link at `path` (see the module text). `Ok` with findings when something is wrong;
/// `Err` only when the check itself cannot run (the main file is missing or locked, I/O fails).
pub fn check_disk(path: &Path, opts: &OpenOptions) -> Result<Report> {
    run(path, opts, None)
}

/// Checks the link at `path` and repairs what can be decided (see the module text). `rerun` is the
/// command that finishes this repair if it is interrupted (recorded in its intent record and shown
/// to the user, e.g. `vmkfs -x repair /vm/disk.vmdk`).
pub fn repair_disk(path: &Path, opts: &OpenOptions, rerun: Vec<String>) -> Result<Report> {
    run(path, opts, Some(rerun))
}

fn run(path: &Path, opts: &OpenOptions, rerun: Option<Vec<String>>) -> Result<Report> {
    let storage = &opts.storage;
    let repair = rerun.is_some();
    let mut report = Report::default();
    // A repair interrupted earlier is finished by this one: take its record over (so settling
    // passes it by).
    let mut resumed = None;
    if repair {
        if let Some(i) = txn::pending(storage, path)? {
            if i.record().op == OP {
                resumed = Some(i);
            }
        }
    }
    // An interrupted operation is finished first (as by any command); one that only its own re-run
    // can finish is the finding.
    match txn::settle(storage.as_ref(), path) {
        Err(Error::Interrupted { path: p, op, rerun }) => {
            report.files.push(p.clone());
            report.findings.push(Finding {
                file: p,
                offset: 0,
                what: format!("an interrupted {op} has not finished: re-run `{rerun}` to complete it"),
                repaired: None,
                undecided: repair.then(|| format!("the interrupted {op} must be finished first")),
            });
            return Ok(report);
        }
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    let mut sink = Sink::new(path, repair);
    // The reader's verdict, with the lock protocol (VMware lock folders, locks, children allowed:
    // checking and repairing change nothing the children read).
    let reader = OpenOptions { write: false, exclusive: repair, allow_children: true, ..opts.clone() };
    let (link, opened) = match Link::open(path, &reader) {
        Ok(l) => (Some(l), None),
        Err(e) => match finding_of(&e, path) {
            Some(f) => (None, Some(f)),
            None => return Err(e),
        },
    };
    // A repair writes the main file through the one handle that holds its exclusive lock (the
    // link's lock is let go for it: two exclusive locks of one process on one file conflict); a
    // check holds the link's shared lock, or, when the link does not open, the main file's.
    let mut main_lock: Option<Arc<dyn Backing>> = None;
    let mut link = link;
    if repair || link.is_none() {
        let opened_fine = link.take().is_some();
        let mode = if repair { LockMode::Exclusive } else { LockMode::Shared };
        main_lock = Some(storage.open_locked(path, mode, opts.wait)?);
        if opened_fine {
            // The same link again, under the lock just taken (for the walk of its map below).
            link = Link::open(path, &OpenOptions { lock: false, ..reader.clone() }).ok();
        }
    }
    // Listed first, and dropped again when a per-kind finding names the same place.
    let opened = opened.map(|(file, offset, what)| {
        sink.problem(&file, offset, format!("the disk cannot be opened: {what}"));
        (file, offset)
    });
    let pieces = disk_extent_files(path, opts, &mut sink)?;
    report.files.push(path.to_path_buf());
    for p in &pieces {
        if !report.files.contains(&p.file) {
            report.files.push(p.file.clone());
        }
        check_extent_file(p, opts, &mut sink)?;
    }
    if let Some((file, offset)) = opened {
        if sink.findings.iter().skip(1).any(|f| f.file == file && f.offset == offset) {
            sink.findings.remove(0);
            sink.notes.remove(0);
            sink.fates.remove(0);
        }
    }
    if sink.is_empty() {
        if let Some(l) = &link {
            walk_map(l, &mut sink)?;
        }
    }
    drop(link);
    if repair {
        repair_from(path, opts, &mut sink, resumed, rerun.unwrap_or_default(), main_lock.as_ref(), &mut report)?;
    }
    report.omitted = sink.fates.len().saturating_sub(sink.findings.len()) as u64;
    report.findings = sink.findings;
    Ok(report)
}

/// Walks the link's allocation map whole through its reader (1 GiB at a time); an error is a
/// finding.
fn walk_map(link: &Link, sink: &mut Sink) -> Result<()> {
    const WINDOW: u64 = 1 << 30;
    let cap = link.capacity();
    let mut off = 0;
    while off < cap {
        let n = WINDOW.min(cap - off);
        if sink.result(link.map(off, n))?.is_none() {
            break;
        }
        off += n;
    }
    Ok(())
}

/// One extent of the disk as its files say: the file, and the descriptor line mapping it (none for
/// a bare extent).
#[derive(Debug, Clone)]
struct ExtentFile {
    file: PathBuf,
    line: Option<ExtentLine>,
    create_type: Option<CreateType>,
    /// The main file of a hosted sparse disk: the first extent whatever type its line says.
    main: bool,
}

/// The extents of the disk at `path`, from its main file as [`detect`] classifies it: a hosted
/// sparse file (itself, then any further lines of its embedded descriptor), a descriptor's lines,
/// a bare COWD or seSparse extent; nothing for a raw image (whose one flat extent always reads) or
/// a file that cannot be classified (a finding). The embedded descriptor of a hosted sparse file is
/// checked here as its reader checks it.
fn disk_extent_files(path: &Path, opts: &OpenOptions, sink: &mut Sink) -> Result<Vec<ExtentFile>> {
    let main = opts.storage.open(path, false)?;
    let Some(format) = sink.result(detect::detect(&main))? else { return Ok(Vec::new()) };
    let lines = |d: &Descriptor, skip: usize, sink: &mut Sink| -> Result<Vec<ExtentFile>> {
        let mut v = Vec::new();
        for line in d.extents.iter().skip(skip) {
            let Some(name) = &line.file else { continue };
            if line.kind == ExtentType::Zero {
                continue;
            }
            let Some(file) = sink.result(resolve_extent_path(path, name, opts.allow_outside))? else { continue };
            if !opts.storage.exists(&file) {
                sink.problem(path, 0, format!("extent file {name:?} ({}) is missing", file.display()));
                continue;
            }
            v.push(ExtentFile {
                file,
                line: Some(line.clone()),
                create_type: Some(d.create_type.clone()),
                main: false,
            });
        }
        Ok(v)
    };
    match format {
        Format::Sparse(h) if !h.is_compressed() => {
            let mut desc = None;
            if sink.result(crate::extent::kdmv::check_descriptor_fields(&main, &h))?.is_some() {
                if let Some(Some(area)) = sink.result(kdmv::read_descriptor_area(&main, &h))? {
                    if !area.is_blank() {
                        desc = sink.result(Descriptor::parse(&area.text, path))?;
                    }
                }
            }
            let mut v = vec![ExtentFile {
                file: path.to_path_buf(),
                line: desc.as_ref().and_then(|d| d.extents.first().cloned()),
                create_type: desc.as_ref().map(|d| d.create_type.clone()),
                main: true,
            }];
            if let Some(d) = &desc {
                v.extend(lines(d, 1, sink)?);
            }
            Ok(v)
        }
        // A stream's embedded descriptor is checked by the stream's own model.
        Format::Sparse(_) | Format::Cowd | Format::SeSparse => {
            Ok(vec![ExtentFile { file: path.to_path_buf(), line: None, create_type: None, main: true }])
        }
        Format::Descriptor => {
            let len = main.len()?;
            if len > MAX_DESCRIPTOR_BYTES as u64 {
                sink.problem(
                    path,
                    0,
                    format!("descriptor file is {len} bytes; at most {MAX_DESCRIPTOR_BYTES} are accepted"),
                );
                return Ok(Vec::new());
            }
            let mut raw = vec![0u8; len as usize];
            main.read_exact_at(&mut raw, 0)?;
            match sink.result(Descriptor::parse(&String::from_utf8_lossy(&raw), path))? {
                Some(d) => lines(&d, 0, sink),
                None => Ok(Vec::new()),
            }
        }
        Format::Raw | Format::RdmMapping => Ok(Vec::new()),
    }
}

/// Checks one extent by its own module.
fn check_extent_file(p: &ExtentFile, opts: &OpenOptions, sink: &mut Sink) -> Result<()> {
    let Some(b) = sink.result(opts.storage.open(&p.file, false))? else { return Ok(()) };
    let len = p.line.as_ref().map(|l| l.sectors * 512);
    let kind = p.line.as_ref().map(|l| l.kind.clone()).filter(|_| !p.main);
    match kind {
        Some(ExtentType::Flat | ExtentType::Vmfs) => {
            let line = p.line.as_ref().expect("a flat piece has its line");
            let kind = if line.kind == ExtentType::Flat { ExtentKind::Flat } else { ExtentKind::Vmfs };
            let start = line.offset.unwrap_or(0).saturating_mul(512);
            flat::check(b, start, line.sectors.saturating_mul(512), kind, sink)
        }
        None | Some(ExtentType::Sparse | ExtentType::VmfsSparse | ExtentType::SeSparse) => {
            check_sparse_kind(&b, p, len, sink)
        }
        // Devices (VMFSRDM, VMFSRAW) are checked by opening the link; ZERO extents hold nothing.
        _ => Ok(()),
    }
}

/// Checks a grain-table extent file, whatever [`detect`] finds in it, against the descriptor line
/// naming it (type, size, createType).
fn check_sparse_kind(b: &Arc<dyn Backing>, p: &ExtentFile, len: Option<u64>, sink: &mut Sink) -> Result<()> {
    let path = b.path();
    let Some(format) = sink.result(detect::detect(b))? else { return Ok(()) };
    let line_kind = p.line.as_ref().map(|l| l.kind.as_str().to_string());
    let named = |found: &str, sink: &mut Sink| {
        if let Some(k) = &line_kind {
            sink.problem(path, 0, format!("the descriptor names this file as a {k} extent, but it is {found}"));
        }
    };
    match format {
        Format::Sparse(h) => {
            if p.line.as_ref().is_some_and(|l| l.kind != ExtentType::Sparse) {
                named("a hosted sparse (KDMV) file", sink);
            }
            if let Some(ct) = &p.create_type {
                sink.result(h.check_create_type(ct, path, 0))?;
            }
            if h.is_compressed() {
                stream::check(b.clone(), h, len, sink)
            } else {
                sparse_check::check_hosted(b, &h, len, sink)
            }
        }
        Format::Cowd => {
            if matches!(p.line.as_ref().map(|l| &l.kind), Some(ExtentType::SeSparse)) {
                named("a COWD file", sink);
            }
            sparse_check::check_cowd(b, len, sink)
        }
        Format::SeSparse => {
            if matches!(p.line.as_ref().map(|l| &l.kind), Some(ExtentType::Sparse | ExtentType::VmfsSparse)) {
                named("an seSparse file", sink);
            }
            sesparse::check(b.clone(), len, sink)
        }
        _ => {
            let mut head = [0u8; 4];
            let n = b.len()?.min(4) as usize;
            b.read_exact_at(&mut head[..n], 0)?;
            let k = line_kind.unwrap_or_else(|| "bare".into());
            sink.problem(
                path,
                0,
                format!("{k} extent has no KDMV, COWD or seSparse magic (found {:02x?})", &head[..n]),
            );
            Ok(())
        }
    }
}

/// The repair phase of [`repair_disk`]: refuses (changing nothing) when a finding cannot be
/// decided; otherwise saves the blocks it will change, then changes them under the repair's
/// intent record.
fn repair_from(
    path: &Path,
    opts: &OpenOptions,
    sink: &mut Sink,
    resumed: Option<Intent>,
    rerun: Vec<String>,
    main_lock: Option<&Arc<dyn Backing>>,
    report: &mut Report,
) -> Result<()> {
    let storage = &opts.storage;
    let open: Vec<usize> = (0..sink.fates.len()).filter(|&i| sink.fates[i] == Fate::Open).collect();
    sink.cannot(&open, "repair cannot fix this: it restores grain tables and directories from their other copy, the free sector, and the unclean-shutdown flag");
    let refused = sink.fates.contains(&Fate::Undecided);
    if refused || sink.changes.is_empty() {
        // Nothing to change (or nothing may be): an interrupted repair whose changes are all made
        // is finished here.
        if let Some(mut i) = resumed {
            i.set_steps(vec![])?;
            i.finish()?;
        }
        return Ok(());
    }
    let real = storage.real_path(path);
    let was_resumed = resumed.is_some();
    let mut intent = match resumed {
        Some(i) => i,
        None => Intent::begin(storage, &real, OP, &[], Some(rerun))?,
    };
    let pid = intent.record().pid;
    let kept = if was_resumed { backup::find(storage.as_ref(), &real, pid, &sink.changes)? } else { None };
    let saved = match kept {
        Some(b) => b,
        None => backup::save(storage, &real, pid, &sink.changes)?,
    };
    report.backup = Some(saved);
    // Every change but the last ones, synced; then the last ones (the unclean-shutdown flags).
    let mut order: Vec<&Change> = sink.changes.iter().filter(|c| !c.last).collect();
    let split = order.len();
    order.extend(sink.changes.iter().filter(|c| c.last));
    for part in [&order[..split], &order[split..]] {
        let mut files: Vec<(PathBuf, Arc<dyn Backing>)> = Vec::new();
        for c in part {
            let b = match files.iter().find(|(p, _)| *p == c.file) {
                Some((_, b)) => b.clone(),
                None => {
                    let b = match main_lock {
                        Some(m) if storage.real_path(&c.file) == real => m.clone(),
                        _ => storage.open(&c.file, true)?,
                    };
                    files.push((c.file.clone(), b.clone()));
                    b
                }
            };
            b.write_all_at(&c.after, c.offset)?;
            report.changes.push((*c).clone());
        }
        for (_, b) in &files {
            b.sync()?;
        }
    }
    intent.set_steps(vec![])?;
    intent.finish()?;
    for (i, f) in sink.findings.iter_mut().enumerate() {
        f.repaired = sink.notes[i].take();
    }
    Ok(())
}
