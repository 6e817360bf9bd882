//! `vmkfs`: the vmkfstools-style command. Parses flags, calls the library, prints.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgAction, Parser};
use vmkfs::clone::{clone_disk, CloneOptions};
use vmkfs::error::{exit, Error, Result};
use vmkfs::info::{info, DiskInfo};
use vmkfs::size::parse_size;
use vmkfs::vmdk::create::{create, Adapter, CreateOptions, DiskFormat};
use vmkfs::vmdk::OpenOptions;

/// A userspace vmkfstools for VMDK disks.
#[derive(Parser, Debug)]
#[command(name = "vmkfs", version, about, disable_help_flag = true)]
struct Cli {
    /// Create a virtual disk of SIZE (N, Nk, Nm, Ng, Nt).
    #[arg(short = 'c', long = "createvirtualdisk", value_name = "SIZE")]
    create: Option<String>,
    /// Clone or import SRC (a chain is flattened) into the target disk.
    #[arg(short = 'i', long = "clonevirtualdisk", visible_alias = "importfile", value_name = "SRC")]
    clone: Option<PathBuf>,
    /// Disk format: zeroedthick (default), eagerzeroedthick, thin, thick, 2gbsparse, monosparse, monoflat, 2gbflat.
    #[arg(short = 'd', long = "diskformat", value_name = "FMT")]
    format: Option<String>,
    /// Adapter type: ide, buslogic, lsilogic (default), lsisas, pvscsi.
    #[arg(short = 'a', long = "adaptertype", value_name = "ADAPTER")]
    adapter: Option<String>,
    /// Print format, capacity, allocation, extents, CID and chain depth.
    #[arg(long)]
    info: bool,
    /// Print the geometry.
    #[arg(short = 'g', long = "geometry")]
    geometry: bool,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Allow replacing an existing destination.
    #[arg(long)]
    force: bool,
    /// Allow extent paths outside the disk's folder.
    #[arg(long = "allow-outside-paths")]
    allow_outside: bool,
    /// More detail on standard error.
    #[arg(short = 'v', long = "verbose", value_name = "N")]
    verbose: Option<u32>,
    /// Print help.
    #[arg(short = 'h', long = "help", action = ArgAction::Help)]
    help: Option<bool>,
    /// The disk operated on.
    #[arg(value_name = "TARGET")]
    target: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { exit::OK };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    let code = run(&cli);
    ExitCode::from(code as u8)
}

fn target(cli: &Cli) -> Result<&Path> {
    cli.target.as_deref().ok_or_else(|| Error::Usage("missing the target disk path".into()))
}

fn disk_format(cli: &Cli) -> Result<DiskFormat> {
    match &cli.format {
        None => Ok(DiskFormat::ZeroedThick),
        Some(f) => DiskFormat::parse(f).ok_or_else(|| {
            let all: Vec<&str> = DiskFormat::ALL.iter().map(|f| f.name()).collect();
            Error::Usage(format!("unknown disk format {f:?} (expected one of: {}, thick)", all.join(", ")))
        }),
    }
}

fn adapter(cli: &Cli) -> Result<Option<Adapter>> {
    cli.adapter
        .as_deref()
        .map(|a| Adapter::parse(a).ok_or_else(|| Error::Usage(format!("unknown adapter type {a:?}"))))
        .transpose()
}

fn open_options(cli: &Cli) -> OpenOptions {
    OpenOptions { allow_outside: cli.allow_outside, ..OpenOptions::read() }
}

fn run(cli: &Cli) -> i32 {
    let ops = [cli.create.is_some(), cli.clone.is_some(), cli.info, cli.geometry].iter().filter(|x| **x).count();
    if ops != 1 {
        eprintln!("vmkfs: give exactly one operation (-c, -i, --info, -g); see --help");
        return exit::USAGE;
    }
    let r = if let Some(src) = &cli.clone {
        return run_clone(cli, src);
    } else if let Some(size) = &cli.create {
        run_create(cli, size)
    } else if cli.info {
        run_info(cli)
    } else {
        run_geometry(cli)
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            if cli.json {
                println!("{}", serde_json::json!({"event": "error", "message": e.to_string(), "exit": e.exit_code()}));
            } else {
                eprintln!("vmkfs: {e}");
            }
            e.exit_code()
        }
    }
}

fn run_create(cli: &Cli, size: &str) -> Result<i32> {
    let path = target(cli)?;
    let cap = parse_size(size)?;
    let format = disk_format(cli)?;
    let mut opts = CreateOptions::new(format, cap);
    if let Some(a) = adapter(cli)? {
        opts.adapter = a;
    }
    opts.force = cli.force;
    if format == DiskFormat::EagerZeroedThick && !cli.json {
        println!("Creating disk '{}' and zeroing it out...", path.display());
    }
    let new = create(path, &opts)?;
    let files = new.final_paths();
    new.commit()?;
    if cli.json {
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
        let format = disk_format(cli)?;
        let adapter = adapter(cli)?;
        if cli.json {
            println!(
                "{}",
                serde_json::json!({"event": "start", "source": src, "destination": dst, "format": format.name()})
            );
        } else {
            println!("Destination disk format: {}", format.description());
            println!("Cloning disk '{}'...", src.display());
        }
        let tty = std::io::stdout().is_terminal() && !cli.json;
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
        let json = cli.json;
        let mut progress = |done: u64, total: u64| {
            let pct = if total == 0 { 100 } else { done * 100 / total };
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
        opts.force = cli.force;
        opts.source = open_options(cli);
        opts.progress = Some(&mut progress);
        let out = clone_disk(src, dst, &mut opts).map(|r| r.path);
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
            if cli.json {
                println!("{}", serde_json::json!({"event": "done", "destination": path}));
            }
            exit::OK
        }
        Err(e) => {
            if cli.json {
                println!("{}", serde_json::json!({"event": "error", "message": e.to_string(), "exit": e.exit_code()}));
            } else {
                let msg = e.to_string();
                println!("Failed to clone disk: {}.", msg.trim_end_matches('.'));
            }
            e.exit_code()
        }
    }
}

fn human(n: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
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
    if cli.json {
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
    if cli.json {
        println!("{}", serde_json::json!({"cylinders": g.cylinders, "heads": g.heads, "sectors": g.sectors}));
    } else {
        println!("Geometry information C/H/S is {}/{}/{}", g.cylinders, g.heads, g.sectors);
    }
    Ok(exit::OK)
}
