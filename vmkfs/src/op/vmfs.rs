//! VMFS volumes: `-P/--queryfs`, `-l/--list [PATH]`, `--copy-out PATH DEST`, `-D --volume V PATH`
//! (`-h`: human-readable sizes). With `--volume`, the paths of every other operation resolve
//! inside the volume ([`storage`]).

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::report::Reporter;
use crate::vmfs::{FileKind, Stat, Volume};

use super::settings::{Outcome, Settings};
use crate::report::outln;
use crate::text::{human, in_units_of_1024};

/// A VMFS volume operation; `devices` are the volume's (every device of a spanned volume).
#[derive(Debug)]
pub enum VmfsOp {
    /// `-P`: the volume's attributes.
    QueryFs {
        /// The volume's devices.
        devices: Vec<PathBuf>,
        /// `-h`: human-readable sizes.
        human: bool,
    },
    /// `-l [PATH]`: a directory of the volume.
    List {
        /// The volume's devices.
        devices: Vec<PathBuf>,
        /// The directory (or file) listed.
        path: String,
        /// `-h`: human-readable sizes.
        human: bool,
    },
    /// `--copy-out PATH DEST`: a file of the volume copied to the host.
    CopyOut {
        /// The volume's devices.
        devices: Vec<PathBuf>,
        /// The file of the volume.
        path: String,
        /// The copy.
        dest: PathBuf,
    },
    /// `-D --volume V PATH`: the file descriptor of a file of the volume.
    DumpFile {
        /// The volume's devices.
        devices: Vec<PathBuf>,
        /// The file of the volume.
        path: String,
    },
}

/// Runs a VMFS volume operation.
pub fn run(op: VmfsOp, s: &Settings, r: &Reporter) -> Result<Outcome> {
    match op {
        VmfsOp::QueryFs { devices, human } => run_queryfs(r, &Volume::open(&devices)?, human)?,
        VmfsOp::List { devices, path, human } => run_list(r, &Volume::open(&devices)?, &path, human)?,
        VmfsOp::CopyOut { devices, path, dest } => run_copy_out(r, &Volume::open(&devices)?, &path, &dest, s.force)?,
        VmfsOp::DumpFile { devices, path } => run_dump_file(r, &Volume::open(&devices)?, &path)?,
    }
    Ok(Outcome::Done)
}

/// Decimal units the way vmkfstools -h prints them (`256 MB`, `1.5 GB`).
fn vm_human(n: u64) -> String {
    const U: [&str; 6] = ["bytes", "KB", "MB", "GB", "TB", "PB"];
    let (v, i) = in_units_of_1024(n);
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

fn run_queryfs(r: &Reporter, vol: &Volume, human: bool) -> Result<()> {
    let fs = vol.descriptor();
    let g = vol.geometry();
    let usage = vol.usage()?;
    let devices = vol.devices();
    let heartbeats = vol.heartbeats()?;
    let max = max_file_size(vol);
    if r.json() {
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
        r.json_pretty(&j);
        return Ok(());
    }
    let sz = |n: u64| if human { vm_human(n) } else { n.to_string() };
    outln!(
        r,
        "{} (Raw Major Version: {}) file system spanning {} partitions.",
        fs.version_text(),
        fs.major,
        devices.len()
    );
    outln!(r, "File system label (if any): {}", fs.label);
    outln!(r, "Mode: {}", if fs.local { "private" } else { "public" });
    if human {
        outln!(
            r,
            "Capacity {}, {} available, file block size {}, max supported file size {}",
            vm_human(usage.capacity),
            vm_human(usage.free),
            vm_human(g.fbs),
            vm_human(max)
        );
    } else {
        outln!(
            r,
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
            r,
            "Small file block size {}, large file block size {}, sub-block size {}, metadata alignment {}",
            sz(g.fbs),
            sz(g.lfbs),
            sz(g.sbs),
            g.md_align
        );
    } else {
        outln!(r, "Sub-block size {}", sz(g.sbs));
    }
    outln!(r, "Volume Creation Time: {} UTC", crate::text::utc_text(fs.creation_time as u64));
    outln!(r, "UUID: {}", fs.uuid);
    outln!(r, "Logical device: {}", vol.lv_uuid());
    outln!(r, "Partitions spanned (on \"lvm\"):");
    for d in &devices {
        let part = if d.partition == 0 { String::new() } else { format!(":{}", d.partition) };
        outln!(r, "\t{}{} ({}, LVM{})", d.path.display(), part, sz(d.bytes), d.lvm_version);
    }
    for h in &heartbeats {
        let addr = if h.address.is_empty() { String::new() } else { format!(" ({})", h.address) };
        outln!(
            r,
            "Warning: live heartbeat of host {}{addr} at offset {:#x}: the volume is (or was, when imaged) in use; metadata may change while it is read",
            h.owner,
            h.offset
        );
    }
    Ok(())
}

fn run_list(r: &Reporter, vol: &Volume, path: &str, human_sizes: bool) -> Result<()> {
    let st = vol.stat(path)?;
    let rows: Vec<Stat> =
        if st.kind == FileKind::Directory { vol.list(path)?.into_iter().map(|(_, s)| s).collect() } else { vec![st] };
    if r.json() {
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
        r.json_pretty(&v);
        return Ok(());
    }
    let size = |n: u64| if human_sizes { human(n) } else { n.to_string() };
    outln!(r, "{:<8} {:>14} {:>14}  {:<19}  Name", "Type", "Size", "Allocated", "Modified (UTC)");
    for s in &rows {
        let name = s.path.rsplit('/').next().unwrap_or("");
        let extra = match (&s.link_target, &s.rdm) {
            (Some(t), _) => format!(" -> {t}"),
            (_, Some(m)) => format!(" (raw device mapping: {})", m.describe()),
            _ => String::new(),
        };
        outln!(
            r,
            "{:<8} {:>14} {:>14}  {:<19}  {name}{extra}",
            s.kind.name(),
            size(s.size),
            size(s.allocated),
            crate::text::utc_text(s.mtime as u64)
        );
    }
    Ok(())
}

/// `--volume V --copy-out PATH DEST`.
fn run_copy_out(r: &Reporter, vol: &Volume, path: &str, dest: &Path, force: bool) -> Result<()> {
    let c = crate::copy_out::copy_out(vol, path, dest, force)?;
    if r.json() {
        r.line(serde_json::json!({"event": "copied", "source": path, "destination": c.path,
            "size": c.size, "data": c.data, "mtime": c.mtime}));
    } else {
        outln!(
            r,
            "Copied '{path}' to '{}': {} bytes ({} of data), modified {} UTC.",
            dest.display(),
            c.size,
            c.data,
            crate::text::utc_text(c.mtime.into())
        );
    }
    Ok(())
}

/// `-D --volume V PATH`: the file descriptor of PATH.
fn run_dump_file(r: &Reporter, vol: &Volume, path: &str) -> Result<()> {
    let fd = vol.file_desc(path)?;
    let st = vol.stat(path)?;
    let l = &fd.lock;
    if r.json() {
        r.json_pretty(&serde_json::json!({
            "path": path, "type": fd.kind.name(), "address": format!("{:#x}", fd.addr), "volume_offset": fd.vol_offset,
            "generation": fd.generation, "links": fd.links, "size": fd.length, "block_size": fd.block_size,
            "allocated_blocks": fd.num_blocks, "allocated": st.allocated, "to_be_zeroed_blocks": fd.tbz_blocks,
            "zla": fd.zla, "mode": format!("{:o}", fd.mode), "uid": fd.uid, "gid": fd.gid,
            "mtime": fd.mtime, "ctime": fd.ctime, "atime": fd.atime,
            "lock": {"type": l.kind, "address": l.address, "mode": l.mode, "mode_name": l.mode_name(), "owner": l.owner,
                "heartbeat": l.heartbeat, "heartbeat_generation": l.heartbeat_generation, "token": l.token,
                "mtime": l.mtime, "holders": l.holders},
        }));
        return Ok(());
    }
    outln!(r, "File: {path} ({})", fd.kind.name());
    outln!(r, "Address: {:#x} (descriptor at volume offset {:#x})", fd.addr, fd.vol_offset);
    outln!(r, "Generation: {}  Links: {}", fd.generation, fd.links);
    outln!(
        r,
        "Size: {} bytes  Block size: {}  Allocated blocks: {} ({} bytes)",
        fd.length,
        fd.block_size,
        fd.num_blocks,
        st.allocated
    );
    outln!(r, "To-be-zeroed blocks: {}  Address type: {}", fd.tbz_blocks, fd.zla);
    outln!(r, "Mode: {:o}  Owner: {}:{}", fd.mode, fd.uid, fd.gid);
    outln!(
        r,
        "Modified: {} UTC  Changed: {} UTC  Accessed: {} UTC",
        crate::text::utc_text(fd.mtime.into()),
        crate::text::utc_text(fd.ctime.into()),
        crate::text::utc_text(fd.atime.into())
    );
    outln!(
        r,
        "Lock: {} (mode {}), owner {}, token {}, heartbeat {:#x} generation {}, holders {}",
        l.mode_name(),
        l.mode,
        l.owner,
        l.token,
        l.heartbeat,
        l.heartbeat_generation,
        l.holders
    );
    Ok(())
}
