//! Creating, cloning, inspecting and changing disks: `-c`, `-i`, `-X`, `-U`, `-E`, `-K`, `-w`, `-j`,
//! `-k`, `-x`, `-g`, `--info`, `--map`, `--compare`, `--read-at`, `--write-at`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use vmkfs::clone::{clone_disk, CloneOptions};
use vmkfs::error::{exit, Error, Result};
use vmkfs::info::{info, DiskInfo};
use vmkfs::size::parse_size;
use vmkfs::vmdk::create::{create, Adapter, CreateOptions, DiskFormat};

use crate::{human, open_options, parse_offset, rw_options, target, Cli};

/// Disk operations.
#[derive(Args, Debug)]
pub struct DiskArgs {
    /// Create a virtual disk of SIZE (N, Nk, Nm, Ng, Nt).
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
    /// Compare the target with disk B: exit 0 when identical, 1 when not.
    #[arg(long, value_name = "B")]
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
        println!("Creating disk '{}' and zeroing it out...", path.display());
    }
    let new = create(path, &opts)?;
    let files = new.final_paths();
    new.commit()?;
    if cli.common.json {
        println!(
            "{}",
            serde_json::json!({"event": "created", "path": path, "format": format.name(), "capacity": cap, "files": files})
        );
    } else if format == DiskFormat::EagerZeroedThick {
        println!("Create: 100% done.");
    }
    Ok(exit::OK)
}

fn run_clone(cli: &Cli, src: &Path) -> i32 {
    let result = (|| -> Result<PathBuf> {
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
        if cli.common.json {
            println!(
                "{}",
                serde_json::json!({"event": "start", "source": src, "destination": dst, "format": format_name})
            );
        } else {
            println!("Destination disk format: {description}");
            println!("Cloning disk '{}'...", src.display());
        }
        let tty = std::io::stdout().is_terminal() && !cli.common.json;
        let bar = tty.then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "Clone: {percent:>3}% [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b
        });
        let mut last_pct = u64::MAX;
        let json = cli.common.json;
        let mut progress = |done: u64, total: u64| {
            let pct = (done * 100).checked_div(total).unwrap_or(100);
            if let Some(b) = &bar {
                b.set_length(total);
                b.set_position(done);
            } else if pct != last_pct {
                last_pct = pct;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"event": "progress", "done": done, "total": total, "percent": pct})
                    );
                } else {
                    println!("Clone: {pct}% done.");
                }
                let _ = std::io::stdout().flush();
            }
        };
        let mut opts = CloneOptions::new(format);
        opts.adapter = adapter;
        opts.force = cli.common.force;
        opts.source = open_options(cli);
        opts.progress = Some(&mut progress);
        opts.cancel = Some(install_interrupt_handler());
        crate::stream::apply(cli, format, &mut opts)?;
        let out = match &device {
            Some(t) => vmkfs::rdm_ops::clone_to_device(src, dst, t, &mut opts, cli.rdm.target_is_zero),
            None => clone_disk(src, dst, &mut opts),
        }
        .map(|r| r.path);
        if let Some(b) = &bar {
            b.finish_and_clear();
            if out.is_ok() {
                println!("Clone: 100% done.");
            }
        }
        out
    })();
    match result {
        Ok(path) => {
            if cli.common.json {
                println!("{}", serde_json::json!({"event": "done", "destination": path}));
            }
            exit::OK
        }
        Err(e) => {
            if cli.common.json {
                println!("{}", serde_json::json!({"event": "error", "message": e.to_string(), "exit": e.exit_code()}));
            } else {
                let msg = e.to_string();
                println!("Failed to clone disk: {}.", msg.trim_end_matches('.'));
            }
            e.exit_code()
        }
    }
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Makes SIGINT, SIGTERM and SIGHUP stop a clone cleanly (the destination's temporary files are
/// removed) instead of killing the process mid-write.
pub fn install_interrupt_handler() -> &'static std::sync::atomic::AtomicBool {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
        }
    }
    &INTERRUPTED
}

fn print_info(i: &DiskInfo) {
    println!("Disk: {}", i.path.display());
    println!("Format: {}{}", i.format, if i.thin_provisioned { " (thin provisioned)" } else { "" });
    println!("Capacity: {} bytes ({})", i.capacity, human(i.capacity));
    println!("Allocated: {} bytes ({})", i.allocated, human(i.allocated));
    println!("CID: {}  parentCID: {}", i.cid, i.parent_cid);
    if let Some(p) = &i.parent {
        println!("Parent: {p}");
    }
    println!("Chain depth: {}", i.chain_depth);
    if let Some(a) = &i.adapter {
        println!("Adapter: {a}");
    }
    if let Some(g) = &i.geometry {
        println!("Geometry: {}/{}/{}", g.cylinders, g.heads, g.sectors);
    }
    if i.unclean {
        println!("Warning: the disk was not closed cleanly (unclean-shutdown flag set)");
    }
    println!("Extents:");
    for e in &i.extents {
        let file = e.file.as_ref().map(|f| f.display().to_string()).unwrap_or_else(|| "-".into());
        let grain = e.grain.map(|g| format!(" grain {}", human(g))).unwrap_or_default();
        let ver = e.version.map(|v| format!(" v{v}")).unwrap_or_default();
        println!("  {:<10} {:>14} {}{}{}", e.kind, e.size, file, grain, ver);
    }
}

fn run_info(cli: &Cli) -> Result<i32> {
    let i = info(target(cli)?, &open_options(cli))?;
    if cli.common.json {
        println!("{}", serde_json::to_string_pretty(&i).unwrap_or_default());
    } else {
        print_info(&i);
    }
    Ok(exit::OK)
}

fn run_geometry(cli: &Cli) -> Result<i32> {
    let i = info(target(cli)?, &open_options(cli))?;
    let g =
        i.geometry.ok_or_else(|| Error::Usage(format!("{} has no geometry in its descriptor", i.path.display())))?;
    if cli.common.json {
        println!("{}", serde_json::json!({"cylinders": g.cylinders, "heads": g.heads, "sectors": g.sectors}));
    } else {
        println!("Geometry information C/H/S is {}/{}/{}", g.cylinders, g.heads, g.sectors);
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
            println!("{}", serde_json::json!({"event": "extended", "path": disk, "capacity": parse_size(size)?}));
        }
        return Ok(exit::OK);
    }
    if cli.disk.delete {
        let files = ops::delete(disk, &opts)?;
        if cli.common.json {
            println!("{}", serde_json::json!({"event": "deleted", "files": files}));
        }
        return Ok(exit::OK);
    }
    if let Some(old) = &cli.disk.rename {
        ops::rename(old, disk, &opts)?;
        if cli.common.json {
            println!("{}", serde_json::json!({"event": "renamed", "from": old, "to": disk}));
        }
        return Ok(exit::OK);
    }
    if cli.disk.punch_zero {
        let freed = ops::punch_zero(disk, &opts)?;
        if cli.common.json {
            println!("{}", serde_json::json!({"event": "punched", "freed": freed}));
        } else {
            println!("Punched {freed} bytes of zeros.");
        }
        return Ok(exit::OK);
    }
    if cli.disk.write_zeros {
        ops::write_zeros_disk(disk, &opts)?;
        return Ok(exit::OK);
    }
    if cli.disk.inflate || cli.disk.eager_zero {
        let n = ops::inflate(disk, cli.disk.inflate, &opts)?;
        if cli.common.json {
            println!("{}", serde_json::json!({"event": "zeroed", "written": n}));
        }
        return Ok(exit::OK);
    }
    if let Some(mode) = &cli.disk.fix {
        let repair = match mode.as_str() {
            "check" => false,
            "repair" => true,
            m => return Err(Error::Usage(format!("-x takes check or repair, not {m:?}"))),
        };
        let report = vmkfs::vmdk::check::check_disk(disk, &opts, repair)?;
        if cli.common.json {
            let f: Vec<_> = report
                .findings
                .iter()
                .map(|f| serde_json::json!({"file": f.file, "offset": f.offset, "problem": f.what, "repaired": f.repaired}))
                .collect();
            println!("{}", serde_json::json!({"clean": report.is_clean(), "findings": f, "files": report.files}));
        } else {
            for f in &report.findings {
                match &f.repaired {
                    Some(r) => println!("{}: offset {}: {} (repaired: {r})", f.file.display(), f.offset, f.what),
                    None => println!("{}: offset {}: {}", f.file.display(), f.offset, f.what),
                }
            }
            if report.is_clean() {
                println!("Disk is error free");
            } else if repair && report.unrepaired() == 0 {
                println!("Disk was successfully repaired");
            } else {
                println!("Disk has {} problem(s)", report.unrepaired().max(report.findings.len()));
            }
        }
        let bad = if repair { report.unrepaired() > 0 } else { !report.is_clean() };
        return Ok(if bad { exit::NEGATIVE } else { exit::OK });
    }
    if cli.disk.map {
        let chain = vmkfs::redo::Chain::open(disk, &opts)?;
        let cap = chain.capacity();
        let mut off = 0;
        let mut first = true;
        if cli.common.json {
            print!("[");
        }
        while off < cap {
            let n = (1u64 << 30).min(cap - off);
            for r in chain.map(off, n)?.runs() {
                let data = r.state == vmkfs::vmdk::State::Data;
                let zero = !data;
                if cli.common.json {
                    print!(
                        "{}{}",
                        if first { "" } else { ",\n" },
                        serde_json::json!({"start": r.offset, "length": r.len, "data": data, "zero": zero, "depth": r.depth})
                    );
                } else {
                    let what = match r.state {
                        vmkfs::vmdk::State::Data => "data",
                        vmkfs::vmdk::State::Zero => "zero",
                        vmkfs::vmdk::State::Absent => "absent",
                    };
                    println!("{:>16} {:>16} {:<6} depth {}", r.offset, r.len, what, r.depth);
                }
                first = false;
            }
            off += n;
        }
        if cli.common.json {
            println!("]");
        }
        return Ok(exit::OK);
    }
    if let Some(b) = &cli.disk.compare {
        return match ops::compare(disk, b, &opts)? {
            None => {
                if cli.common.json {
                    println!("{}", serde_json::json!({"identical": true}));
                } else {
                    println!("Disks are identical.");
                }
                Ok(exit::OK)
            }
            Some(off) => {
                if cli.common.json {
                    println!("{}", serde_json::json!({"identical": false, "first_difference": off}));
                } else {
                    println!("Content mismatch at offset {off}!");
                }
                Ok(exit::NEGATIVE)
            }
        };
    }
    if let Some(off) = &cli.disk.read_at {
        let off = parse_offset(off)?;
        let chain = vmkfs::redo::Chain::open(disk, &opts)?;
        let len = match &cli.disk.length {
            Some(l) => parse_offset(l)?,
            None => chain.capacity().saturating_sub(off),
        };
        let mut out = std::io::stdout().lock();
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = off;
        let end = off.checked_add(len).ok_or_else(|| Error::Usage("offset + length overflows".into()))?;
        while pos < end {
            let n = (end - pos).min(buf.len() as u64) as usize;
            chain.read_at(&mut buf[..n], pos)?;
            out.write_all(&buf[..n]).map_err(|e| Error::Io { path: "<stdout>".into(), source: e })?;
            pos += n as u64;
        }
        out.flush().map_err(|e| Error::Io { path: "<stdout>".into(), source: e })?;
        return Ok(exit::OK);
    }
    if let Some(off) = &cli.disk.write_at {
        let mut pos = parse_offset(off)?;
        let chain = vmkfs::redo::Chain::open(disk, &rw_options(cli))?;
        let mut input = std::io::stdin().lock();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let mut n = 0;
            while n < buf.len() {
                let r = std::io::Read::read(&mut input, &mut buf[n..])
                    .map_err(|e| Error::Io { path: "<stdin>".into(), source: e })?;
                if r == 0 {
                    break;
                }
                n += r;
            }
            if n == 0 {
                break;
            }
            chain.write_at(&buf[..n], pos)?;
            pos += n as u64;
            if n < buf.len() {
                break;
            }
        }
        chain.top().flush()?;
        return Ok(exit::OK);
    }
    Err(Error::Usage("no operation".into()))
}
