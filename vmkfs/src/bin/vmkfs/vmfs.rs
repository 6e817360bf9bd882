//! VMFS volumes: `--volume DEV[,DEV…]` (paths of every other operation resolve inside the volume),
//! `-P/--queryfs`, `-l/--list [PATH]` (`-h` for human-readable sizes).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use clap::{Args, CommandFactory};
use vmkfs::error::{exit, Error, Result};
use vmkfs::vmdk::Storage;
use vmkfs::vmfs::{FileKind, Stat, VmfsStorage, Volume};

use crate::out::outln;
use crate::{human, out, Cli};

/// VMFS volume options.
#[derive(Args, Debug)]
pub struct VmfsArgs {
    /// Resolve every path inside the VMFS volume on DEV (image files or block devices; give every
    /// device of a spanned volume, comma-separated). The volume is read-only.
    #[arg(long = "volume", value_name = "DEV[,DEV...]", value_delimiter = ',')]
    pub volume: Vec<PathBuf>,
    /// Print the volume's attributes: version, label, UUID, capacity and free space, block sizes,
    /// extents, live heartbeats (with --volume, or the devices as the target).
    #[arg(short = 'P', long = "queryfs")]
    pub queryfs: bool,
    /// List directory PATH of the volume (default /): type, size, allocated, mtime, name.
    #[arg(short = 'l', long = "list", value_name = "PATH", num_args = 0..=1, default_missing_value = "/")]
    pub list: Option<String>,
    /// Copy file PATH of the volume (any plain file) to the target, with its exact size and mtime.
    #[arg(long = "copy-out", value_name = "PATH", requires = "volume")]
    pub copy_out: Option<String>,
    /// Human-readable sizes (with -l and -P). Alone, prints help.
    #[arg(short = 'h', long = "human-readable")]
    pub human: bool,
}

/// How many VMFS operations the command line selects.
pub fn selected(cli: &Cli) -> usize {
    let v = &cli.vmfs;
    let n = v.queryfs as usize + v.list.is_some() as usize + v.copy_out.is_some() as usize;
    // `-h` alone keeps printing help, as it always has.
    if n == 0 && v.human && others_selected(cli) == 0 {
        return 1;
    }
    n
}

fn others_selected(cli: &Cli) -> usize {
    crate::disk::selected(cli) + crate::redo::selected(cli) + crate::rdm::selected(cli)
}

/// Runs the selected VMFS operation; `None` when none is selected.
pub fn run(cli: &Cli) -> Option<i32> {
    let v = &cli.vmfs;
    if let Some(path) = &v.copy_out {
        return Some(run_copy_out(cli, path).unwrap_or_else(|e| crate::report_error(cli, &e)));
    }
    if !v.queryfs && v.list.is_none() {
        if v.human && others_selected(cli) == 0 {
            let _ = Cli::command().print_help();
            return Some(exit::OK);
        }
        return None;
    }
    let r = if v.queryfs { run_queryfs(cli) } else { run_list(cli, v.list.as_deref().unwrap_or("/")) };
    Some(r.unwrap_or_else(|e| crate::report_error(cli, &e)))
}

static VOLUME: OnceLock<std::result::Result<Volume, String>> = OnceLock::new();

/// The volume of `--volume` (opened once).
fn volume_of(devs: &[PathBuf]) -> std::result::Result<Volume, String> {
    VOLUME.get_or_init(|| Volume::open(devs).map_err(|e| e.to_string())).clone()
}

/// The storage paths resolve in: the volume's when `--volume` is given.
pub fn storage(cli: &Cli) -> Option<Arc<dyn Storage>> {
    if cli.vmfs.volume.is_empty() {
        return None;
    }
    Some(match volume_of(&cli.vmfs.volume) {
        Ok(v) => VmfsStorage::shared(v),
        Err(e) => Arc::new(vmkfs::vmfs::storage::Unopened(e)),
    })
}

fn open_volume(cli: &Cli) -> Result<Volume> {
    let devs: Vec<PathBuf> = if !cli.vmfs.volume.is_empty() {
        cli.vmfs.volume.clone()
    } else if let Some(t) = &cli.common.target {
        t.to_string_lossy().split(',').filter(|s| !s.is_empty()).map(PathBuf::from).collect()
    } else {
        return Err(Error::Usage("give the volume's devices with --volume DEV[,DEV...]".into()));
    };
    Volume::open(&devs).map_err(Error::from)
}

/// Decimal units the way vmkfstools -h prints them (`256 MB`, `1.5 GB`).
fn vm_human(n: u64) -> String {
    const U: [&str; 6] = ["bytes", "KB", "MB", "GB", "TB", "PB"];
    let (v, i) = crate::in_units_of_1024(n);
    if i == 0 {
        format!("{n} bytes")
    } else if (v - v.round()).abs() < 0.05 {
        format!("{} {}", v.round(), U[i])
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn max_file_size(vol: &Volume) -> u64 {
    match vol.descriptor().generation.number() {
        3 => vol.geometry().fbs * 262_144 - 512,
        5 => 69_201_586_814_976,
        _ => 70_368_744_177_664,
    }
}

fn run_queryfs(cli: &Cli) -> Result<i32> {
    let vol = open_volume(cli)?;
    let fs = vol.descriptor();
    let g = vol.geometry();
    let usage = vol.usage().map_err(Error::from)?;
    let devices = vol.devices();
    let heartbeats = vol.heartbeats().map_err(Error::from)?;
    let max = max_file_size(&vol);
    if cli.common.json {
        let j = serde_json::json!({
            "version": fs.version_text(),
            "raw_major_version": fs.major,
            "minor_version": fs.minor,
            "vmfs_l": fs.local,
            "label": fs.label,
            "uuid": fs.uuid,
            "logical_device": vol.lv_uuid(),
            "created": fs.creation_time,
            "capacity": usage.capacity,
            "free": usage.free,
            "blocks": usage.blocks,
            "free_blocks": usage.free_blocks,
            "file_block_size": g.fbs,
            "sub_block_size": g.sbs,
            "large_file_block_size": if fs.is_vmfs6() { Some(g.lfbs) } else { None },
            "metadata_alignment": g.md_align,
            "max_file_size": max,
            "volume_size": vol.size(),
            "devices": devices,
            "live_heartbeats": heartbeats,
        });
        out::json_pretty(&j);
        return Ok(exit::OK);
    }
    outln!(
        "{} (Raw Major Version: {}) file system spanning {} partitions.",
        fs.version_text(),
        fs.major,
        devices.len()
    );
    outln!("File system label (if any): {}", fs.label);
    outln!("Mode: {}", if fs.local { "private" } else { "public" });
    if cli.vmfs.human {
        outln!(
            "Capacity {}, {} available, file block size {}, max supported file size {}",
            vm_human(usage.capacity),
            vm_human(usage.free),
            vm_human(g.fbs),
            vm_human(max)
        );
    } else {
        outln!(
            "Capacity {} ({} file blocks * {}), {} ({} blocks) avail, max supported file size {}",
            usage.capacity,
            usage.blocks,
            g.fbs,
            usage.free,
            usage.free_blocks,
            max
        );
    }
    if fs.is_vmfs6() {
        outln!(
            "Small file block size {}, large file block size {}, sub-block size {}, metadata alignment {}",
            sz(cli, g.fbs),
            sz(cli, g.lfbs),
            sz(cli, g.sbs),
            g.md_align
        );
    } else {
        outln!("Sub-block size {}", sz(cli, g.sbs));
    }
    outln!("Volume Creation Time: {} UTC", vmkfs::text::utc_text(fs.creation_time as u64));
    outln!("UUID: {}", fs.uuid);
    outln!("Logical device: {}", vol.lv_uuid());
    outln!("Partitions spanned (on \"lvm\"):");
    for d in &devices {
        let part = if d.partition == 0 { String::new() } else { format!(":{}", d.partition) };
        outln!("\t{}{} ({}, LVM{})", d.path.display(), part, sz(cli, d.bytes), d.lvm_version);
    }
    for h in &heartbeats {
        let addr = if h.address.is_empty() { String::new() } else { format!(" ({})", h.address) };
        outln!(
            "Warning: live heartbeat of host {}{addr} at offset {:#x}: the volume is (or was, when imaged) in use; metadata may change while it is read",
            h.owner, h.offset
        );
    }
    Ok(exit::OK)
}

fn sz(cli: &Cli, n: u64) -> String {
    if cli.vmfs.human {
        vm_human(n)
    } else {
        n.to_string()
    }
}

fn run_list(cli: &Cli, path: &str) -> Result<i32> {
    if cli.vmfs.volume.is_empty() {
        return Err(Error::Usage("-l needs the volume: --volume DEV[,DEV...]".into()));
    }
    let vol = open_volume(cli)?;
    let st = vol.stat(path).map_err(Error::from)?;
    let rows: Vec<Stat> = if st.kind == FileKind::Directory {
        vol.list(path).map_err(Error::from)?.into_iter().map(|(_, s)| s).collect()
    } else {
        vec![st]
    };
    if cli.common.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|s| {
                let name = s.path.rsplit('/').next().unwrap_or("").to_string();
                serde_json::json!({
                    "name": name, "path": s.path, "type": s.kind.name(), "size": s.size, "allocated": s.allocated,
                    "mtime": s.mtime, "mode": format!("{:o}", s.mode), "uid": s.uid, "gid": s.gid, "links": s.links,
                    "target": s.link_target, "rdm": s.rdm,
                })
            })
            .collect();
        out::json_pretty(&v);
        return Ok(exit::OK);
    }
    let size = |n: u64| if cli.vmfs.human { human(n) } else { n.to_string() };
    outln!("{:<8} {:>14} {:>14}  {:<19}  Name", "Type", "Size", "Allocated", "Modified (UTC)");
    for s in &rows {
        let name = s.path.rsplit('/').next().unwrap_or("");
        let extra = match (&s.link_target, &s.rdm) {
            (Some(t), _) => format!(" -> {t}"),
            (_, Some(r)) => format!(" (raw device mapping: {})", r.describe()),
            _ => String::new(),
        };
        outln!(
            "{:<8} {:>14} {:>14}  {:<19}  {name}{extra}",
            s.kind.name(),
            size(s.size),
            size(s.allocated),
            vmkfs::text::utc_text(s.mtime as u64)
        );
    }
    Ok(exit::OK)
}

/// `--volume V --copy-out PATH DEST`.
fn run_copy_out(cli: &Cli, path: &str) -> Result<i32> {
    let dest = crate::target(cli)?;
    let vol = open_volume(cli)?;
    let c = vmkfs::copy_out::copy_out(&vol, path, dest, cli.common.force)?;
    if cli.common.json {
        out::line(serde_json::json!({"event": "copied", "source": path, "destination": c.path,
            "size": c.size, "data": c.data, "mtime": c.mtime}));
    } else {
        outln!(
            "Copied '{path}' to '{}': {} bytes ({} of data), modified {} UTC.",
            dest.display(),
            c.size,
            c.data,
            vmkfs::text::utc_text(c.mtime.into())
        );
    }
    Ok(exit::OK)
}

/// `-D --volume V PATH`: the file descriptor of PATH.
pub fn run_dump_file(cli: &Cli) -> Result<i32> {
    let path = crate::target(cli)?.to_string_lossy().into_owned();
    let vol = open_volume(cli)?;
    let fd = vol.file_desc(&path).map_err(Error::from)?;
    let st = vol.stat(&path).map_err(Error::from)?;
    let l = &fd.lock;
    if cli.common.json {
        out::json_pretty(&serde_json::json!({
            "path": path, "type": fd.kind.name(), "address": format!("{:#x}", fd.addr), "volume_offset": fd.vol_offset,
            "generation": fd.generation, "links": fd.links, "size": fd.length, "block_size": fd.block_size,
            "allocated_blocks": fd.num_blocks, "allocated": st.allocated, "to_be_zeroed_blocks": fd.tbz_blocks,
            "zla": fd.zla, "mode": format!("{:o}", fd.mode), "uid": fd.uid, "gid": fd.gid,
            "mtime": fd.mtime, "ctime": fd.ctime, "atime": fd.atime,
            "lock": {"type": l.kind, "address": l.address, "mode": l.mode, "mode_name": l.mode_name(), "owner": l.owner,
                "heartbeat": l.heartbeat, "heartbeat_generation": l.heartbeat_generation, "token": l.token,
                "mtime": l.mtime, "holders": l.holders},
        }));
        return Ok(exit::OK);
    }
    outln!("File: {path} ({})", fd.kind.name());
    outln!("Address: {:#x} (descriptor at volume offset {:#x})", fd.addr, fd.vol_offset);
    outln!("Generation: {}  Links: {}", fd.generation, fd.links);
    outln!(
        "Size: {} bytes  Block size: {}  Allocated blocks: {} ({} bytes)",
        fd.length,
        fd.block_size,
        fd.num_blocks,
        st.allocated
    );
    outln!("To-be-zeroed blocks: {}  Address type: {}", fd.tbz_blocks, fd.zla);
    outln!("Mode: {:o}  Owner: {}:{}", fd.mode, fd.uid, fd.gid);
    outln!(
        "Modified: {} UTC  Changed: {} UTC  Accessed: {} UTC",
        vmkfs::text::utc_text(fd.mtime.into()),
        vmkfs::text::utc_text(fd.ctime.into()),
        vmkfs::text::utc_text(fd.atime.into())
    );
    outln!(
        "Lock: {} (mode {}), owner {}, token {}, heartbeat {:#x} generation {}, holders {}",
        l.mode_name(),
        l.mode,
        l.owner,
        l.token,
        l.heartbeat,
        l.heartbeat_generation,
        l.holders
    );
    Ok(exit::OK)
}
