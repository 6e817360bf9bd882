//! Raw device mappings: `-r/--createrdm`, `-z/--createrdmpassthru`, `-q/--queryrdm`, and what
//! cloning onto a device (`-i SRC -d rdm:DEV|rdmp:DEV|raw:DEV DST`) needs from the command line.
//! Reading, writing, `--info`, `--map`, cloning from a mapping and `-U` go through the disk
//! operations, which handle mappings like any disk.

use std::path::{Path, PathBuf};

use clap::Args;
use vmkfs::error::{exit, Error, Result};
use vmkfs::rdm::Mode;
use vmkfs::rdm_ops::{create_mapping, query, DeviceTarget, RdmInfo};

use crate::out::outln;
use crate::{disk, open_options, out, target, Cli};

/// Raw device mapping operations.
#[derive(Args, Debug)]
pub struct RdmArgs {
    /// Create a virtual-mode (non-passthrough) raw device mapping of DEV at the target path
    /// (descriptor + NAME-rdm.vmdk).
    #[arg(short = 'r', long = "createrdm", value_name = "DEV")]
    pub create_rdm: Option<PathBuf>,
    /// Create a physical-mode (passthrough) raw device mapping of DEV at the target path
    /// (descriptor + NAME-rdmp.vmdk).
    #[arg(short = 'z', long = "createrdmpassthru", value_name = "DEV")]
    pub create_rdmp: Option<PathBuf>,
    /// Print what the target mapping maps, its mode and the device's identity.
    #[arg(short = 'q', long = "queryrdm")]
    pub query: bool,
    /// With -i ... -d rdm:|rdmp:|raw:DEV: the device already reads as zeros, so ranges that are
    /// zero in the source are not zeroed on it.
    #[arg(long = "target-is-zero")]
    pub target_is_zero: bool,
}

/// How many RDM operations the command line selects (cloning onto a device counts as `-i`).
pub fn selected(cli: &Cli) -> usize {
    let r = &cli.rdm;
    [r.create_rdm.is_some(), r.create_rdmp.is_some(), r.query].iter().filter(|x| **x).count()
}

/// Runs the selected RDM operation; `None` when none is selected.
pub fn run(cli: &Cli) -> Option<i32> {
    if selected(cli) == 0 {
        return None;
    }
    Some(run_inner(cli).unwrap_or_else(|e| crate::report_error(cli, &e)))
}

/// The device target of `-d rdm:DEV`, `rdmp:DEV` or `raw:DEV`; `None` for other formats.
pub fn device_target(cli: &Cli) -> Result<Option<DeviceTarget>> {
    let Some(f) = cli.common.format.as_deref() else { return Ok(None) };
    if let Some(t) = DeviceTarget::parse(f) {
        return Ok(Some(t));
    }
    let lower = f.to_ascii_lowercase();
    if ["rdm", "rdmp", "raw", "rdm:", "rdmp:", "raw:"].contains(&lower.as_str()) {
        return Err(Error::Usage(format!("-d {f} needs the device: -d {}:DEV", lower.trim_end_matches(':'))));
    }
    Ok(None)
}

fn run_inner(cli: &Cli) -> Result<i32> {
    let r = &cli.rdm;
    if r.target_is_zero {
        return Err(Error::Usage("--target-is-zero goes with -i SRC -d rdm:|rdmp:|raw:DEV DST".into()));
    }
    let path = target(cli)?;
    if let Some(dev) = &r.create_rdm {
        return run_create(cli, dev, path, Mode::Virtual);
    }
    if let Some(dev) = &r.create_rdmp {
        return run_create(cli, dev, path, Mode::Physical);
    }
    run_query(cli, path)
}

fn run_create(cli: &Cli, dev: &Path, map: &Path, mode: Mode) -> Result<i32> {
    let report = create_mapping(dev, map, mode, disk::adapter(cli)?, cli.common.force, cli.common.allow_outside)?;
    if cli.common.json {
        out::line(serde_json::json!({
            "event": "created",
            "path": report.path,
            "mode": mode.name(),
            "device": report.mapping.device_path,
            "capacity": report.capacity,
            "files": report.files,
        }));
    }
    Ok(exit::OK)
}

fn print_query(i: &RdmInfo) {
    let p = i.path.display();
    match i.mode.as_str() {
        "virtual" => outln!("Disk {p} is a Non-passthrough Raw Device Mapping"),
        "physical" => outln!("Disk {p} is a Passthrough Raw Device Mapping"),
        _ => outln!("Disk {p} is a Passthrough Raw Device (vmfsRaw)"),
    }
    outln!("Maps to: {}", i.maps_to.display());
    if let Some(m) = &i.mapping_file {
        outln!("Mapping file: {}", m.display());
    }
    if let Some(c) = i.capacity {
        outln!("Capacity: {c} bytes");
    }
    if let Some(id) = &i.identity {
        outln!("Device: {}, {} bytes", id.kind, id.size);
        if let Some(w) = &id.wwid {
            outln!("WWID: {w}");
        }
        if let Some(s) = &id.serial {
            outln!("Serial: {s}");
        }
        for n in &id.by_id {
            outln!("By-id: /dev/disk/by-id/{n}");
        }
        if let Some(l) = &id.loop_backing {
            outln!("Loop backing file: {l}");
        }
        if let Some(n) = id.partition {
            outln!("Partition: {n}");
        }
        if let Some(c) = &id.canonical_path {
            outln!("Canonical path: {c}");
        }
        let weak = id.wwid.is_none() && id.serial.is_none() && id.by_id.is_empty() && id.loop_backing.is_none();
        if weak && id.kind == "block device" {
            outln!("Identity: path and size only (the device shows no WWID, serial or by-id name)");
        }
    }
    if let Some(c) = i.created {
        outln!("Created: {} UTC", vmkfs::text::utc_text(c));
    }
    match (&i.found_at, &i.problem) {
        (Some(f), _) => {
            outln!("Status: device found at {} (by {})", f.display(), i.found_by.as_deref().unwrap_or("path"))
        }
        (None, Some(e)) => outln!("Status: {e}"),
        (None, None) => {}
    }
}

fn run_query(cli: &Cli, path: &Path) -> Result<i32> {
    let Some(info) = query(path, &open_options(cli))? else {
        if cli.common.json {
            out::line(serde_json::json!({"path": path, "rdm": false}));
        } else {
            outln!("Disk {} is not a Raw Device Mapping", path.display());
        }
        return Ok(exit::NEGATIVE);
    };
    if cli.common.json {
        let mut v = serde_json::to_value(&info).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("rdm".into(), serde_json::Value::Bool(true));
        }
        out::json_pretty(&v);
    } else {
        print_query(&info);
    }
    // A mapping whose device cannot be used is a bad input, whatever was printed.
    Ok(if info.problem.is_some() { exit::BAD_INPUT } else { exit::OK })
}
