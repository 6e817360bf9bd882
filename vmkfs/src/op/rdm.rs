//! Raw device mappings: `-r/--createrdm`, `-z/--createrdmpassthru`, `-q/--queryrdm`. Reading,
//! writing, `--info`, `--map`, cloning from a mapping and `-U` go through the disk operations, which
//! handle mappings like any disk; cloning onto a device is a copy ([`super::copy`]).

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::rdm::Mode;
use crate::rdm_ops::{create_mapping, query, RdmInfo};
use crate::report::Reporter;
use crate::vmdk::create::Adapter;

use super::settings::{Outcome, Settings};
use crate::report::outln;

/// A raw device mapping operation.
#[derive(Debug)]
pub enum RdmOp {
    /// `-r DEV` / `-z DEV`: create a mapping of a device.
    Create {
        /// The device mapped.
        device: PathBuf,
        /// The mapping's descriptor.
        path: PathBuf,
        /// Virtual (`-r`) or physical (`-z`, passthrough).
        mode: Mode,
        /// The adapter type.
        adapter: Option<Adapter>,
    },
    /// `-q`: what the mapping maps.
    Query(PathBuf),
}

/// Runs a raw device mapping operation.
pub fn run(op: RdmOp, s: &Settings, r: &Reporter) -> Result<Outcome> {
    match op {
        RdmOp::Create { device, path, mode, adapter } => {
            let report = create_mapping(&device, &path, mode, adapter, s.force, s.allow_outside)?;
            if r.json() {
                r.line(serde_json::json!({
                    "event": "created",
                    "path": report.path,
                    "mode": mode.name(),
                    "device": report.mapping.device_path,
                    "capacity": report.capacity,
                    "files": report.files,
                }));
            }
            Ok(Outcome::Done)
        }
        RdmOp::Query(p) => run_query(s, r, &p),
    }
}

fn print_identity(r: &Reporter, id: &crate::rdm::Identity) {
    outln!(r, "Device: {}, {} bytes", id.kind, id.size);
    if let Some(w) = &id.wwid {
        outln!(r, "WWID: {w}");
    }
    if let Some(s) = &id.serial {
        outln!(r, "Serial: {s}");
    }
    for n in &id.by_id {
        outln!(r, "By-id: /dev/disk/by-id/{n}");
    }
    if let Some(l) = &id.loop_backing {
        outln!(r, "Loop backing file: {l}");
    }
    if let Some(n) = id.partition {
        outln!(r, "Partition: {n}");
    }
    if let Some(c) = &id.canonical_path {
        outln!(r, "Canonical path: {c}");
    }
    let weak = id.wwid.is_none() && id.serial.is_none() && id.by_id.is_empty() && id.loop_backing.is_none();
    if weak && id.kind == crate::rdm::DeviceKind::Block {
        outln!(r, "Identity: path and size only (the device shows no WWID, serial or by-id name)");
    }
}

fn print_query(r: &Reporter, i: &RdmInfo) {
    let p = i.path.display();
    match i.mode.as_str() {
        "virtual" => outln!(r, "Disk {p} is a Non-passthrough Raw Device Mapping"),
        "physical" => outln!(r, "Disk {p} is a Passthrough Raw Device Mapping"),
        _ => outln!(r, "Disk {p} is a Passthrough Raw Device (vmfsRaw)"),
    }
    outln!(r, "Maps to: {}", i.maps_to.display());
    if let Some(m) = &i.mapping_file {
        outln!(r, "Mapping file: {}", m.display());
    }
    if let Some(c) = i.capacity {
        outln!(r, "Capacity: {c} bytes");
    }
    if let Some(id) = &i.identity {
        print_identity(r, id);
    }
    if let Some(c) = i.created {
        outln!(r, "Created: {} UTC", crate::text::utc_text(c));
    }
    match (&i.found_at, &i.problem) {
        (Some(f), _) => {
            outln!(r, "Status: device found at {} (by {})", f.display(), i.found_by.as_deref().unwrap_or("path"))
        }
        (None, Some(e)) => outln!(r, "Status: {e}"),
        (None, None) => {}
    }
}

fn run_query(s: &Settings, r: &Reporter, path: &Path) -> Result<Outcome> {
    let Some(info) = query(path, &s.open_options())? else {
        if r.json() {
            r.line(serde_json::json!({"path": path, "rdm": false}));
        } else {
            outln!(r, "Disk {} is not a Raw Device Mapping", path.display());
        }
        return Ok(Outcome::Negative);
    };
    if r.json() {
        let mut v = serde_json::to_value(&info).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("rdm".into(), serde_json::Value::Bool(true));
        }
        r.json_pretty(&v);
    } else {
        print_query(r, &info);
    }
    // A mapping whose device cannot be used is a bad input, whatever was printed.
    Ok(if info.problem.is_some() { Outcome::Unusable } else { Outcome::Done })
}
