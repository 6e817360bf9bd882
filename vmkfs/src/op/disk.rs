//! Creating, inspecting and changing disks: `-c`, `-X`, `-U`, `-E`, `-K`, `-w`, `-j`, `-k`, `-x`,
//! `-g`, `-D`, `--info`, `--map`, `--compare`, `--read-at`, `--write-at`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::info::{info, DiskInfo};
use crate::ops::{self, Comparison};
use crate::report::Reporter;
use crate::size::range_end;
use crate::vmdk::create::{Adapter, CreateOptions, DiskFormat};
use crate::vmdk::{OpenOptions, State};

use super::settings::{Outcome, Settings};
use crate::report::outln;
use crate::text::human;

/// A disk operation; every path is the disk operated on unless said otherwise.
#[derive(Debug)]
pub enum DiskOp {
    /// `-c SIZE`: create a disk.
    Create {
        /// The new disk.
        path: PathBuf,
        /// Its capacity in bytes.
        capacity: u64,
        /// Its format.
        format: DiskFormat,
        /// Its adapter type (default lsilogic).
        adapter: Option<Adapter>,
        /// `--compress-level` (streamOptimized only).
        compress_level: Option<u32>,
    },
    /// `--info`: format, capacity, allocation, extents, CID and chain depth.
    Info(PathBuf),
    /// `-g`: the geometry.
    Geometry(PathBuf),
    /// `-D`: the metadata of every link of the chain.
    Dump(PathBuf),
    /// `-X SIZE`: grow the disk.
    Extend {
        /// The disk.
        path: PathBuf,
        /// The new capacity in bytes.
        capacity: u64,
        /// Zero the new space (`-d eagerzeroedthick`).
        eager: bool,
    },
    /// `-U`: delete the disk and its files.
    Delete(PathBuf),
    /// `-E OLD NEW`: rename a disk and its files.
    Rename {
        /// The disk's name.
        from: PathBuf,
        /// The new name.
        to: PathBuf,
    },
    /// `-K`: deallocate blocks of zeros.
    PunchZero(PathBuf),
    /// `-w`: zero the whole disk.
    WriteZeros(PathBuf),
    /// `-j` / `-k`: inflate or eager-zero the disk.
    Inflate(PathBuf),
    /// `-x check|repair`.
    Fix {
        /// The disk.
        path: PathBuf,
        /// Repair (else check only).
        repair: bool,
    },
    /// `--map`: the allocation runs.
    Map(PathBuf),
    /// `--compare A B`.
    Compare {
        /// Disk A.
        a: PathBuf,
        /// Disk B.
        b: PathBuf,
    },
    /// `--read-at OFF [--length LEN]`: bytes of the disk to the output.
    ReadAt {
        /// The disk.
        path: PathBuf,
        /// The first byte.
        offset: u64,
        /// How many bytes (default: to the end).
        length: Option<u64>,
    },
    /// `--write-at OFF`: standard input into the disk.
    WriteAt {
        /// The disk.
        path: PathBuf,
        /// The first byte written.
        offset: u64,
    },
}

/// Runs a disk operation.
pub fn run(op: DiskOp, s: &Settings, r: &Reporter) -> Result<Outcome> {
    let opts = s.open_options();
    let json = r.json();
    match op {
        DiskOp::Create { path, capacity, format, adapter, compress_level } => {
            run_create(s, r, &path, capacity, format, adapter, compress_level)?
        }
        DiskOp::Info(p) => run_info(r, &p, &opts)?,
        DiskOp::Geometry(p) => run_geometry(r, &p, &opts)?,
        DiskOp::Dump(p) => run_dump(r, &p, &opts)?,
        DiskOp::Extend { path, capacity, eager } => {
            ops::extend(&path, capacity, eager, &opts)?;
            if json {
                r.line(serde_json::json!({"event": "extended", "path": path, "capacity": capacity}));
            }
        }
        DiskOp::Delete(p) => {
            let files = ops::delete(&p, &opts)?;
            if json {
                r.line(serde_json::json!({"event": "deleted", "files": files}));
            }
        }
        DiskOp::Rename { from, to } => {
            // The new name goes into the descriptor: refuse one it cannot carry before moving anything.
            crate::vmdk::descriptor::check_file_name(&to)?;
            ops::rename(&from, &to, &opts)?;
            if json {
                r.line(serde_json::json!({"event": "renamed", "from": from, "to": to}));
            }
        }
        DiskOp::PunchZero(p) => {
            let freed = ops::punch_zero(&p, &opts)?;
            if json {
                r.line(serde_json::json!({"event": "punched", "freed": freed}));
            } else {
                outln!(r, "Punched {freed} bytes of zeros.");
            }
        }
        DiskOp::WriteZeros(p) => ops::write_zeros_disk(&p, &opts)?,
        DiskOp::Inflate(p) => {
            let n = ops::inflate(&p, &opts)?;
            if json {
                r.line(serde_json::json!({"event": "zeroed", "written": n}));
            }
        }
        DiskOp::Fix { path, repair } => return run_fix(r, &path, repair, &opts),
        DiskOp::Map(p) => run_map(r, &p, &opts)?,
        DiskOp::Compare { a, b } => return run_compare(r, &a, &b, &opts),
        DiskOp::ReadAt { path, offset, length } => run_read_at(r, &path, offset, length, &opts)?,
        DiskOp::WriteAt { path, offset } => {
            let chain = crate::redo::Chain::open(&path, &s.rw_options())?;
            crate::rw::write_from(&chain, offset, s.input()?, Path::new("standard input"))?;
        }
    }
    Ok(Outcome::Done)
}

fn run_create(
    s: &Settings,
    r: &Reporter,
    path: &Path,
    cap: u64,
    format: DiskFormat,
    adapter: Option<Adapter>,
    level: Option<u32>,
) -> Result<()> {
    let mut opts = CreateOptions::new(format, cap);
    if let Some(a) = adapter {
        opts.adapter = a;
    }
    opts.force = s.force;
    if format == DiskFormat::EagerZeroedThick && !r.json() {
        outln!(r, "Creating disk '{}' and zeroing it out...", path.display());
    }
    let level = super::copy::compress_level(level, format == DiskFormat::StreamOptimized)?;
    let (_, files) = crate::clone::create_disk(path, &opts, level)?;
    if r.json() {
        r.line(serde_json::json!({"event": "created", "path": path, "format": format.name(), "capacity": cap, "files": files}));
    } else if format == DiskFormat::EagerZeroedThick {
        r.line("Create: 100% done.");
    }
    Ok(())
}

fn print_info(r: &Reporter, i: &DiskInfo) {
    outln!(r, "Disk: {}", i.path.display());
    outln!(r, "Format: {}{}", i.format, if i.thin_provisioned { " (thin provisioned)" } else { "" });
    outln!(r, "Capacity: {} bytes ({})", i.capacity, human(i.capacity));
    outln!(r, "Allocated: {} bytes ({})", i.allocated, human(i.allocated));
    outln!(r, "CID: {}  parentCID: {}", i.cid, i.parent_cid);
    if let Some(p) = &i.parent {
        outln!(r, "Parent: {p}");
    }
    outln!(r, "Chain depth: {}", i.chain_depth);
    if let Some(a) = &i.adapter {
        outln!(r, "Adapter: {a}");
    }
    if let Some(g) = &i.geometry {
        outln!(r, "Geometry: {}/{}/{}", g.cylinders, g.heads, g.sectors);
    }
    if i.unclean {
        r.line("Warning: the disk was not closed cleanly (unclean-shutdown flag set)");
    }
    r.line("Extents:");
    for e in &i.extents {
        let file = e.file.as_ref().map(|f| f.display().to_string()).unwrap_or_else(|| "-".into());
        let grain = e.grain.map(|g| format!(" grain {}", human(g))).unwrap_or_default();
        let ver = e.version.map(|v| format!(" v{v}")).unwrap_or_default();
        outln!(r, "  {:<10} {:>14} {}{}{}", e.kind, e.size, file, grain, ver);
    }
}

fn run_info(r: &Reporter, path: &Path, opts: &OpenOptions) -> Result<()> {
    let i = info(path, opts)?;
    if r.json() {
        r.json_pretty(&i);
    } else {
        print_info(r, &i);
    }
    Ok(())
}

/// `-D`: every link of the chain, top first.
fn run_dump(r: &Reporter, path: &Path, opts: &OpenOptions) -> Result<()> {
    let links = crate::info::dump(path, opts)?;
    if r.json() {
        r.json_pretty(&links);
        return Ok(());
    }
    for (i, l) in links.iter().enumerate() {
        outln!(r, "Link {i}: {}", l.path.display());
        outln!(r, "  Container: {}  Format: {}  Capacity: {} bytes", l.container, l.format, l.capacity);
        outln!(
            r,
            "  CID: {}  parentCID: {}  parentFileNameHint: {}",
            l.cid,
            l.parent_cid,
            l.parent.as_deref().unwrap_or("-")
        );
        for e in &l.extents {
            let file = e.file.as_ref().map(|f| f.display().to_string()).unwrap_or_else(|| "-".into());
            let grain = e.grain.map(|g| format!(", grain {g} bytes")).unwrap_or_default();
            let ver = e.version.map(|v| format!(", version {v}")).unwrap_or_default();
            let unclean = if e.unclean { ", unclean" } else { "" };
            outln!(r, "  Extent {} {} bytes {file}{grain}{ver}{unclean}", e.kind, e.size);
        }
        let files: Vec<String> = l.files.iter().map(|f| f.display().to_string()).collect();
        outln!(r, "  Files: {}", files.join(", "));
        if !l.descriptor.is_empty() {
            r.line("  Descriptor:");
            for line in l.descriptor.lines() {
                outln!(r, "    {line}");
            }
        }
    }
    Ok(())
}

fn run_geometry(r: &Reporter, path: &Path, opts: &OpenOptions) -> Result<()> {
    let i = info(path, opts)?;
    let g =
        i.geometry.ok_or_else(|| Error::Usage(format!("{} has no geometry in its descriptor", i.path.display())))?;
    if r.json() {
        r.line(serde_json::json!({"cylinders": g.cylinders, "heads": g.heads, "sectors": g.sectors}));
    } else {
        outln!(r, "Geometry information C/H/S is {}/{}/{}", g.cylinders, g.heads, g.sectors);
    }
    Ok(())
}

/// `--map`: the allocation runs, one per line (a JSON array with `--json`). Stops early when the
/// reader of the output goes away.
fn run_map(r: &Reporter, disk: &Path, opts: &OpenOptions) -> Result<()> {
    let chain = crate::redo::Chain::open(disk, opts)?;
    let json = r.json();
    let mut first = true;
    if json {
        r.text("[");
    }
    for run in crate::vmdk::map::walk(&chain) {
        if r.closed() {
            break;
        }
        let run = run?;
        let data = run.state == State::Data;
        if json {
            let v = serde_json::json!({"start": run.offset, "length": run.len, "data": data, "zero": !data, "depth": run.depth});
            r.text(format_args!("{}{v}", if first { "" } else { ",\n" }));
        } else {
            let what = match run.state {
                State::Data => "data",
                State::Zero => "zero",
                State::Absent => "absent",
            };
            outln!(r, "{:>16} {:>16} {:<6} depth {}", run.offset, run.len, what, run.depth);
        }
        first = false;
    }
    if json {
        r.line("]");
    }
    Ok(())
}

/// `--compare A B`: done when identical, negative (saying why) when the capacities or the
/// contents differ.
fn run_compare(r: &Reporter, a: &Path, b: &Path, opts: &OpenOptions) -> Result<Outcome> {
    let json = r.json();
    match ops::compare(a, b, opts)? {
        Comparison::Identical => {
            if json {
                r.line(serde_json::json!({"identical": true}));
            } else {
                r.line("Disks are identical.");
            }
            Ok(Outcome::Done)
        }
        Comparison::Capacity { a: ca, b: cb } => {
            if json {
                r.line(
                    serde_json::json!({"identical": false, "reason": "capacity", "a": a, "b": b, "capacity_a": ca, "capacity_b": cb}),
                );
            } else {
                outln!(r, "Capacity mismatch: {} is {ca} bytes, {} is {cb} bytes.", a.display(), b.display());
            }
            Ok(Outcome::Negative)
        }
        Comparison::Content { offset } => {
            if json {
                r.line(serde_json::json!({"identical": false, "reason": "content", "first_difference": offset}));
            } else {
                outln!(r, "Content mismatch at offset {offset}!");
            }
            Ok(Outcome::Negative)
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `-x check|repair`: every finding (file, byte offset, what), and for a repair what was done
/// about it, every change made (file, offset, bytes before and after) and the backup of the
/// metadata changed. Done when clean (or everything was repaired), negative otherwise.
fn run_fix(r: &Reporter, disk: &Path, repair: bool, opts: &OpenOptions) -> Result<Outcome> {
    let report = if repair { crate::check::repair(disk, opts)? } else { crate::check::check(disk, opts)? };
    if r.json() {
        let f: Vec<_> = report
            .findings
            .iter()
            .map(|f| {
                serde_json::json!({"file": f.file, "offset": f.offset, "problem": f.what,
                    "repaired": f.repaired, "undecided": f.undecided})
            })
            .collect();
        let c: Vec<_> = report
            .changes
            .iter()
            .map(|c| {
                serde_json::json!({"file": c.file, "offset": c.offset, "before": hex(&c.before),
                    "after": hex(&c.after), "what": c.what})
            })
            .collect();
        r.line(serde_json::json!({"clean": report.is_clean(), "findings": f, "omitted": report.omitted,
            "changes": c, "backup": report.backup, "refused": report.refused(), "files": report.files}));
    } else {
        print_fix(r, &report, repair);
    }
    let bad = if repair { report.unrepaired() > 0 } else { !report.is_clean() };
    Ok(if bad { Outcome::Negative } else { Outcome::Done })
}

fn print_fix(r: &Reporter, report: &crate::vmdk::check::Report, repair: bool) {
    for f in &report.findings {
        let tail = match (&f.repaired, &f.undecided) {
            (Some(x), _) => format!(" (repaired: {x})"),
            (None, Some(u)) => format!(" (cannot repair: {u})"),
            _ => String::new(),
        };
        outln!(r, "{}: offset {}: {}{tail}", f.file.display(), f.offset, f.what);
    }
    if report.omitted > 0 {
        outln!(r, "... and {} more problem(s) not listed", report.omitted);
    }
    if let Some(b) = &report.backup {
        outln!(r, "Metadata saved to {} before changing it", b.display());
    }
    for c in &report.changes {
        outln!(
            r,
            "Changed {} at byte {}: {} -> {} ({})",
            c.file.display(),
            c.offset,
            hex(&c.before),
            hex(&c.after),
            c.what
        );
    }
    if report.is_clean() {
        r.line("Disk is error free");
    } else if repair && report.unrepaired() == 0 {
        r.line("Disk was successfully repaired");
    } else if repair && report.refused() {
        outln!(
            r,
            "Nothing was changed: {} problem(s) cannot be decided or repaired",
            report.findings.iter().filter(|f| f.undecided.is_some()).count()
        );
    } else {
        outln!(r, "Disk has {} problem(s)", report.unrepaired());
    }
}

/// `--read-at OFF [--length LEN]`: the bytes to the output. The range is checked against the
/// capacity before anything is read; a reader that goes away stops the transfer (an I/O error).
fn run_read_at(r: &Reporter, disk: &Path, off: u64, len: Option<u64>, opts: &OpenOptions) -> Result<()> {
    if let Some(len) = len {
        range_end(off, len, u64::MAX)?; // an overflow is refused before the disk is opened
    }
    let chain = crate::redo::Chain::open(disk, opts)?;
    crate::rw::read_range(&chain, off, len, |b| r.data(b))?;
    r.flush_data()
}
