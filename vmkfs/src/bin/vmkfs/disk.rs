//! Creating, cloning, inspecting and changing disks: `-c`, `-i`, `-X`, `-U`, `-E`, `-K`, `-w`, `-j`,
//! `-k`, `-x`, `-g`, `--info`, `--map`, `--compare`, `--read-at`, `--write-at`.

use std::path::{Path, PathBuf};

use clap::Args;
use vmkfs::clone::{clone_disk, CloneOptions};
use vmkfs::error::{exit, Error, Result};
use vmkfs::info::{info, DiskInfo};
use vmkfs::ops::Comparison;
use vmkfs::size::{parse_bytes, parse_size, range_end};
use vmkfs::vmdk::create::{Adapter, CreateOptions, DiskFormat};
use vmkfs::vmdk::{OpenOptions, State};

use crate::out::outln;
use crate::progress::Messages;
use crate::{human, open_options, out, rw_options, target, Cli};

/// Disk operations.
#[derive(Args, Debug)]
pub struct DiskArgs {
    /// Create a virtual disk of SIZE (N or Nb bytes, Ns sectors, Nk, Nm, Ng, Nt); any -d format,
    /// streamoptimized included (an empty stream).
    #[arg(short = 'c', long = "createvirtualdisk", value_name = "SIZE")]
    pub create: Option<String>,
    /// Clone or import SRC (a chain is flattened) into the target disk.
    #[arg(short = 'i', long = "clonevirtualdisk", visible_alias = "importfile", value_name = "SRC")]
    pub clone: Option<PathBuf>,
    /// Grow a disk to SIZE (never shrinks); with -d eagerzeroedthick the new space is zeroed.
    #[arg(short = 'X', long = "extendvirtualdisk", value_name = "SIZE")]
    pub extend: Option<String>,
    /// Delete a disk and every file it owns.
    #[arg(short = 'U', long = "deletevirtualdisk")]
    pub delete: bool,
    /// Rename disk OLD (and every file it owns) to the target name.
    #[arg(short = 'E', long = "renamevirtualdisk", value_name = "OLD")]
    pub rename: Option<PathBuf>,
    /// Deallocate blocks that hold only zeros.
    #[arg(short = 'K', long = "punchzero")]
    pub punch_zero: bool,
    /// Zero the whole disk.
    #[arg(short = 'w', long = "writezeros")]
    pub write_zeros: bool,
    /// Inflate a thin disk to eagerzeroedthick.
    #[arg(short = 'j', long = "inflatedisk")]
    pub inflate: bool,
    /// Eager-zero a zeroedthick disk.
    #[arg(short = 'k', long = "eagerzero")]
    pub eager_zero: bool,
    /// Check (or repair) the disk's metadata: check|repair.
    #[arg(short = 'x', long = "fix", value_name = "check|repair")]
    pub fix: Option<String>,
    /// Print format, capacity, allocation, extents, CID and chain depth.
    #[arg(long)]
    pub info: bool,
    /// Print the allocation runs of the disk (depth 0 = top link).
    #[arg(long)]
    pub map: bool,
    /// Compare disk A (this option's value) with the target B: exit 0 when identical (same capacity,
    /// same bytes), 1 when not, saying why.
    #[arg(long, value_name = "A")]
    pub compare: Option<PathBuf>,
    /// Write LEN (--length) bytes of the disk from byte OFF to standard output.
    #[arg(long = "read-at", value_name = "OFF")]
    pub read_at: Option<String>,
    /// Length for --read-at.
    #[arg(long, value_name = "LEN")]
    pub length: Option<String>,
    /// Write standard input into the disk at byte OFF (the top link of a chain).
    #[arg(long = "write-at", value_name = "OFF")]
    pub write_at: Option<String>,
    /// Print the geometry.
    #[arg(short = 'g', long = "geometry")]
    pub geometry: bool,
    /// Print the metadata of every link of the disk's chain (descriptor, extents and their header
    /// fields, CIDs); with --volume, the metadata of a file of the volume (address, lock,
    /// generation, links, block size, allocated blocks).
    #[arg(short = 'D', long = "dump")]
    pub dump: bool,
}

pub fn disk_format(cli: &Cli) -> Result<DiskFormat> {
    match &cli.common.format {
        None => Ok(DiskFormat::ZeroedThick),
        Some(f) => DiskFormat::parse(f).ok_or_else(|| {
            let all: Vec<&str> = DiskFormat::EVERY.iter().map(|f| f.name()).collect();
            Error::Usage(format!("unknown disk format {f:?} (expected one of: {}, thick)", all.join(", ")))
        }),
    }
}

pub fn adapter(cli: &Cli) -> Result<Option<Adapter>> {
    cli.common
        .adapter
        .as_deref()
        .map(|a| Adapter::parse(a).ok_or_else(|| Error::Usage(format!("unknown adapter type {a:?}"))))
        .transpose()
}

/// How many disk operations the command line selects.
pub fn selected(cli: &Cli) -> usize {
    let d = &cli.disk;
    [
        d.create.is_some(),
        d.clone.is_some(),
        d.info,
        d.geometry,
        d.extend.is_some(),
        d.delete,
        d.rename.is_some(),
        d.punch_zero,
        d.write_zeros,
        d.inflate,
        d.eager_zero,
        d.fix.is_some(),
        d.map,
        d.compare.is_some(),
        d.read_at.is_some(),
        d.write_at.is_some(),
        d.dump,
    ]
    .iter()
    .filter(|x| **x)
    .count()
}

/// Runs the selected disk operation; `None` when none is selected.
pub fn run(cli: &Cli) -> Option<i32> {
    if selected(cli) == 0 {
        return None;
    }
    let r = if let Some(src) = &cli.disk.clone {
        return Some(run_clone(cli, src));
    } else if let Some(size) = &cli.disk.create {
        run_create(cli, size)
    } else if cli.disk.info {
        run_info(cli)
    } else if cli.disk.geometry {
        run_geometry(cli)
    } else if cli.disk.dump && !cli.vmfs.volume.is_empty() {
        crate::vmfs::run_dump_file(cli)
    } else if cli.disk.dump {
        run_dump(cli)
    } else {
        run_op(cli)
    };
    Some(r.unwrap_or_else(|e| crate::report_error(cli, &e)))
}

fn run_create(cli: &Cli, size: &str) -> Result<i32> {
    let path = target(cli)?;
    let cap = parse_size(size)?;
    let format = disk_format(cli)?;
    let mut opts = CreateOptions::new(format, cap);
    if let Some(a) = adapter(cli)? {
        opts.adapter = a;
    }
    opts.force = cli.common.force;
    if format == DiskFormat::EagerZeroedThick && !cli.common.json {
        outln!("Creating disk '{}' and zeroing it out...", path.display());
    }
    let level = crate::stream::compress_level(cli, format == DiskFormat::StreamOptimized)?;
    let (_, files) = vmkfs::clone::create_disk(path, &opts, level)?;
    if cli.common.json {
        out::line(
            serde_json::json!({"event": "created", "path": path, "format": format.name(), "capacity": cap, "files": files}),
        );
    } else if format == DiskFormat::EagerZeroedThick {
        out::line("Create: 100% done.");
    }
    Ok(exit::OK)
}

fn run_clone(cli: &Cli, src: &Path) -> i32 {
    let mut msg = Messages::new(cli, false);
    let result = (|| -> Result<serde_json::Value> {
        let dst = target(cli)?;
        // `-d rdm:DEV`, `rdmp:DEV`, `raw:DEV`: onto a device (rdm.rs); otherwise a disk format.
        let device = crate::rdm::device_target(cli)?;
        if cli.rdm.target_is_zero && device.is_none() {
            return Err(Error::Usage("--target-is-zero needs -d rdm:DEV, rdmp:DEV or raw:DEV".into()));
        }
        let format = if device.is_some() { DiskFormat::ZeroedThick } else { disk_format(cli)? };
        let (format_name, description) = match &device {
            Some(t) => (t.name(), t.description()),
            None => (format.name(), format.description()),
        };
        let adapter = adapter(cli)?;
        msg.start(src, dst, format_name, description);
        let mut progress = |done: u64, total: u64| msg.progress(done, total);
        let mut opts = CloneOptions::new(format);
        opts.adapter = adapter;
        opts.force = cli.common.force;
        opts.source = open_options(cli);
        opts.progress = Some(&mut progress);
        opts.cancel = Some(install_interrupt_handler());
        crate::stream::apply(cli, format, &mut opts)?;
        crate::verbose::describe(cli, src);
        let engine = vmkfs::engine::EngineOptions::new();
        crate::verbose::engine(cli, &engine);
        opts.engine = Some(engine);
        let t0 = std::time::Instant::now();
        let restic = vmkfs::repo::location::parse_location(&src.to_string_lossy());
        let r = match (&device, restic) {
            (None, Some(l)) => clone_from_repo(cli, &l, dst, &mut opts)?,
            (Some(_), Some(_)) => {
                return Err(Error::Usage(
                    "a file of a restic snapshot clones into a disk format, not onto a device".into(),
                ))
            }
            (Some(t), None) => vmkfs::rdm_ops::clone_to_device(src, dst, t, &mut opts, cli.rdm.target_is_zero)?,
            (None, None) => clone_disk(src, dst, &mut opts)?,
        };
        crate::verbose::copied(cli, &r.stats, t0.elapsed());
        Ok(serde_json::json!({"event": "done", "destination": r.path}))
    })();
    msg.finish(cli, &result)
}

/// `-i restic:PATH@SNAP:/FILE`: the file of the snapshot (a disk's raw image) into a new disk,
/// which records the point ([`vmkfs::repo::replica::Point`]) so that `--apply` can bring it to
/// later snapshots.
fn clone_from_repo(
    cli: &Cli,
    l: &vmkfs::repo::location::Location,
    dst: &Path,
    opts: &mut CloneOptions<'_>,
) -> Result<vmkfs::clone::CloneReport> {
    let src = vmkfs::repo::replica::SnapshotFile::open(l, &crate::password(cli)?)?;
    let _lock = src.repo.lock(false)?;
    let point = src.point();
    opts.ddb = point.ddb();
    vmkfs::clone::clone_source_into(&src.source()?, src.node.size, None, Some(point.cid()), dst, opts)
}

/// Installs the library's interrupt handler ([`vmkfs::interrupt::install`]) and returns its flag.
pub fn install_interrupt_handler() -> &'static std::sync::atomic::AtomicBool {
    vmkfs::interrupt::install()
}

fn print_info(i: &DiskInfo) {
    outln!("Disk: {}", i.path.display());
    outln!("Format: {}{}", i.format, if i.thin_provisioned { " (thin provisioned)" } else { "" });
    outln!("Capacity: {} bytes ({})", i.capacity, human(i.capacity));
    outln!("Allocated: {} bytes ({})", i.allocated, human(i.allocated));
    outln!("CID: {}  parentCID: {}", i.cid, i.parent_cid);
    if let Some(p) = &i.parent {
        outln!("Parent: {p}");
    }
    outln!("Chain depth: {}", i.chain_depth);
    if let Some(a) = &i.adapter {
        outln!("Adapter: {a}");
    }
    if let Some(g) = &i.geometry {
        outln!("Geometry: {}/{}/{}", g.cylinders, g.heads, g.sectors);
    }
    if i.unclean {
        out::line("Warning: the disk was not closed cleanly (unclean-shutdown flag set)");
    }
    out::line("Extents:");
    for e in &i.extents {
        let file = e.file.as_ref().map(|f| f.display().to_string()).unwrap_or_else(|| "-".into());
        let grain = e.grain.map(|g| format!(" grain {}", human(g))).unwrap_or_default();
        let ver = e.version.map(|v| format!(" v{v}")).unwrap_or_default();
        outln!("  {:<10} {:>14} {}{}{}", e.kind, e.size, file, grain, ver);
    }
}

fn run_info(cli: &Cli) -> Result<i32> {
    let i = info(target(cli)?, &open_options(cli))?;
    if cli.common.json {
        out::json_pretty(&i);
    } else {
        print_info(&i);
    }
    Ok(exit::OK)
}

/// `-D`: every link of the chain, top first.
fn run_dump(cli: &Cli) -> Result<i32> {
    let links = vmkfs::info::dump(target(cli)?, &open_options(cli))?;
    if cli.common.json {
        out::json_pretty(&links);
        return Ok(exit::OK);
    }
    for (i, l) in links.iter().enumerate() {
        outln!("Link {i}: {}", l.path.display());
        outln!("  Container: {}  Format: {}  Capacity: {} bytes", l.container, l.format, l.capacity);
        outln!(
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
            outln!("  Extent {} {} bytes {file}{grain}{ver}{unclean}", e.kind, e.size);
        }
        let files: Vec<String> = l.files.iter().map(|f| f.display().to_string()).collect();
        outln!("  Files: {}", files.join(", "));
        if !l.descriptor.is_empty() {
            out::line("  Descriptor:");
            for line in l.descriptor.lines() {
                outln!("    {line}");
            }
        }
    }
    Ok(exit::OK)
}

fn run_geometry(cli: &Cli) -> Result<i32> {
    let i = info(target(cli)?, &open_options(cli))?;
    let g =
        i.geometry.ok_or_else(|| Error::Usage(format!("{} has no geometry in its descriptor", i.path.display())))?;
    if cli.common.json {
        out::line(serde_json::json!({"cylinders": g.cylinders, "heads": g.heads, "sectors": g.sectors}));
    } else {
        outln!("Geometry information C/H/S is {}/{}/{}", g.cylinders, g.heads, g.sectors);
    }
    Ok(exit::OK)
}

fn run_op(cli: &Cli) -> Result<i32> {
    use vmkfs::ops;
    let disk = target(cli)?;
    let opts = open_options(cli);
    if let Some(size) = &cli.disk.extend {
        let eager = match &cli.common.format {
            None => false,
            Some(f) if f.eq_ignore_ascii_case("eagerzeroedthick") => true,
            Some(f) => return Err(Error::Usage(format!("-X takes only -d eagerzeroedthick, not {f:?}"))),
        };
        ops::extend(disk, parse_size(size)?, eager, &opts)?;
        if cli.common.json {
            out::line(serde_json::json!({"event": "extended", "path": disk, "capacity": parse_size(size)?}));
        }
        return Ok(exit::OK);
    }
    if cli.disk.delete {
        let files = ops::delete(disk, &opts)?;
        if cli.common.json {
            out::line(serde_json::json!({"event": "deleted", "files": files}));
        }
        return Ok(exit::OK);
    }
    if let Some(old) = &cli.disk.rename {
        // The new name goes into the descriptor: refuse one it cannot carry before moving anything.
        vmkfs::vmdk::descriptor::check_file_name(disk)?;
        ops::rename(old, disk, &opts)?;
        if cli.common.json {
            out::line(serde_json::json!({"event": "renamed", "from": old, "to": disk}));
        }
        return Ok(exit::OK);
    }
    if cli.disk.punch_zero {
        let freed = ops::punch_zero(disk, &opts)?;
        if cli.common.json {
            out::line(serde_json::json!({"event": "punched", "freed": freed}));
        } else {
            outln!("Punched {freed} bytes of zeros.");
        }
        return Ok(exit::OK);
    }
    if cli.disk.write_zeros {
        ops::write_zeros_disk(disk, &opts)?;
        return Ok(exit::OK);
    }
    if cli.disk.inflate || cli.disk.eager_zero {
        let n = ops::inflate(disk, &opts)?;
        if cli.common.json {
            out::line(serde_json::json!({"event": "zeroed", "written": n}));
        }
        return Ok(exit::OK);
    }
    if let Some(mode) = &cli.disk.fix {
        return run_fix(cli, disk, mode, &opts);
    }
    if cli.disk.map {
        return run_map(cli, disk, &opts);
    }
    if let Some(a) = &cli.disk.compare {
        // `--compare A B`: A is the option's value, B the target.
        return run_compare(cli, a, disk, &opts);
    }
    if let Some(off) = &cli.disk.read_at {
        return run_read_at(cli, disk, off, &opts);
    }
    if let Some(off) = &cli.disk.write_at {
        return run_write_at(cli, disk, off);
    }
    Err(Error::Usage("no operation".into()))
}

/// `--map`: the allocation runs, one per line (a JSON array with `--json`). Stops early when the
/// reader of standard output goes away.
fn run_map(cli: &Cli, disk: &Path, opts: &OpenOptions) -> Result<i32> {
    let chain = vmkfs::redo::Chain::open(disk, opts)?;
    let json = cli.common.json;
    let mut first = true;
    if json {
        out::text("[");
    }
    for r in vmkfs::vmdk::map::walk(&chain) {
        if out::closed() {
            break;
        }
        let r = r?;
        let data = r.state == State::Data;
        if json {
            let run =
                serde_json::json!({"start": r.offset, "length": r.len, "data": data, "zero": !data, "depth": r.depth});
            out::text(format_args!("{}{run}", if first { "" } else { ",\n" }));
        } else {
            let what = match r.state {
                State::Data => "data",
                State::Zero => "zero",
                State::Absent => "absent",
            };
            outln!("{:>16} {:>16} {:<6} depth {}", r.offset, r.len, what, r.depth);
        }
        first = false;
    }
    if json {
        out::line("]");
    }
    Ok(exit::OK)
}

/// `--compare A B`: exit 0 when identical, 1 (saying why) when the capacities or the contents differ.
fn run_compare(cli: &Cli, a: &Path, b: &Path, opts: &OpenOptions) -> Result<i32> {
    let json = cli.common.json;
    match vmkfs::ops::compare(a, b, opts)? {
        Comparison::Identical => {
            if json {
                out::line(serde_json::json!({"identical": true}));
            } else {
                out::line("Disks are identical.");
            }
            Ok(exit::OK)
        }
        Comparison::Capacity { a: ca, b: cb } => {
            if json {
                out::line(
                    serde_json::json!({"identical": false, "reason": "capacity", "a": a, "b": b, "capacity_a": ca, "capacity_b": cb}),
                );
            } else {
                outln!("Capacity mismatch: {} is {ca} bytes, {} is {cb} bytes.", a.display(), b.display());
            }
            Ok(exit::NEGATIVE)
        }
        Comparison::Content { offset } => {
            if json {
                out::line(serde_json::json!({"identical": false, "reason": "content", "first_difference": offset}));
            } else {
                outln!("Content mismatch at offset {offset}!");
            }
            Ok(exit::NEGATIVE)
        }
    }
}

/// `-x check|repair`: every finding (file, byte offset, what), and for a repair what was done
/// about it, every change made (file, offset, bytes before and after) and the backup of the
/// metadata changed. Exit 0 when clean (or everything was repaired), 1 otherwise.
fn run_fix(cli: &Cli, disk: &Path, mode: &str, opts: &OpenOptions) -> Result<i32> {
    let repair = match mode {
        "check" => false,
        "repair" => true,
        m => return Err(Error::Usage(format!("-x takes check or repair, not {m:?}"))),
    };
    let report = if repair { vmkfs::check::repair(disk, opts)? } else { vmkfs::check::check(disk, opts)? };
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    if cli.common.json {
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
        out::line(serde_json::json!({"clean": report.is_clean(), "findings": f, "omitted": report.omitted,
            "changes": c, "backup": report.backup, "refused": report.refused(), "files": report.files}));
    } else {
        for f in &report.findings {
            let tail = match (&f.repaired, &f.undecided) {
                (Some(r), _) => format!(" (repaired: {r})"),
                (None, Some(u)) => format!(" (cannot repair: {u})"),
                _ => String::new(),
            };
            outln!("{}: offset {}: {}{tail}", f.file.display(), f.offset, f.what);
        }
        if report.omitted > 0 {
            outln!("... and {} more problem(s) not listed", report.omitted);
        }
        if let Some(b) = &report.backup {
            outln!("Metadata saved to {} before changing it", b.display());
        }
        for c in &report.changes {
            outln!(
                "Changed {} at byte {}: {} -> {} ({})",
                c.file.display(),
                c.offset,
                hex(&c.before),
                hex(&c.after),
                c.what
            );
        }
        if report.is_clean() {
            out::line("Disk is error free");
        } else if repair && report.unrepaired() == 0 {
            out::line("Disk was successfully repaired");
        } else if repair && report.refused() {
            outln!(
                "Nothing was changed: {} problem(s) cannot be decided or repaired",
                report.findings.iter().filter(|f| f.undecided.is_some()).count()
            );
        } else {
            outln!("Disk has {} problem(s)", report.unrepaired());
        }
    }
    let bad = if repair { report.unrepaired() > 0 } else { !report.is_clean() };
    Ok(if bad { exit::NEGATIVE } else { exit::OK })
}

/// `--read-at OFF [--length LEN]`: the bytes to standard output. The range is checked against the
/// capacity before anything is read; a reader that goes away stops the transfer (exit 4).
fn run_read_at(cli: &Cli, disk: &Path, off: &str, opts: &OpenOptions) -> Result<i32> {
    let off = parse_bytes(off, "offset")?;
    let len = cli.disk.length.as_deref().map(|l| parse_bytes(l, "length")).transpose()?;
    if let Some(len) = len {
        range_end(off, len, u64::MAX)?; // an overflow is refused before the disk is opened
    }
    let chain = vmkfs::redo::Chain::open(disk, opts)?;
    vmkfs::rw::read_range(&chain, off, len, out::data)?;
    out::flush_data()?;
    Ok(exit::OK)
}

fn run_write_at(cli: &Cli, disk: &Path, off: &str) -> Result<i32> {
    let off = parse_bytes(off, "offset")?;
    let chain = vmkfs::redo::Chain::open(disk, &rw_options(cli))?;
    vmkfs::rw::write_from(&chain, off, std::io::stdin().lock(), Path::new("standard input"))?;
    Ok(exit::OK)
}
