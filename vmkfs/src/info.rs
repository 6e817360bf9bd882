//! `--info`: what a disk is; `-D`/`--dump`: the metadata of every link of its chain.

use std::path::{Path, PathBuf};

use redo::Chain;
use serde::Serialize;
use vmdk::map::MapSource;
use vmdk::{Container, OpenOptions, State};

use crate::error::Result;

/// One extent, as `--info` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ExtentSummary {
    /// Extent type.
    pub kind: String,
    /// File, if any.
    pub file: Option<PathBuf>,
    /// Bytes of the disk it maps.
    pub size: u64,
    /// Grain size in bytes (sparse kinds).
    pub grain: Option<u64>,
    /// Format version (sparse kinds).
    pub version: Option<u32>,
    /// Unclean-shutdown flag found at open.
    pub unclean: bool,
}

/// Geometry from the disk database.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Geometry {
    /// Cylinders.
    pub cylinders: u64,
    /// Heads.
    pub heads: u64,
    /// Sectors per track.
    pub sectors: u64,
}

/// What `--info` reports.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DiskInfo {
    /// The disk's path.
    pub path: PathBuf,
    /// `descriptor`, `embedded`, `extent` or `raw`.
    pub container: String,
    /// The descriptor's createType (`raw` for raw images).
    pub format: String,
    /// Capacity in bytes.
    pub capacity: u64,
    /// Bytes stored in the chain (data runs of the merged map).
    pub allocated: u64,
    /// Bytes stored in the top link alone.
    pub allocated_top: u64,
    /// Content ID.
    pub cid: String,
    /// Parent content ID.
    pub parent_cid: String,
    /// Parent hint, for delta links.
    pub parent: Option<String>,
    /// `ddb.adapterType`.
    pub adapter: Option<String>,
    /// `ddb.geometry.*`.
    pub geometry: Option<Geometry>,
    /// `ddb.thinProvisioned = "1"`.
    pub thin_provisioned: bool,
    /// Number of links in the chain (1 for a base disk).
    pub chain_depth: usize,
    /// An extent was not closed cleanly.
    pub unclean: bool,
    /// The extents of the top link.
    pub extents: Vec<ExtentSummary>,
}

/// Bytes in `Data` runs of `src`, all of them and those at depth 0 (the top link's), in one walk
/// of its map in runs.
pub fn allocated_bytes(src: &dyn MapSource) -> vmdk::Result<(u64, u64)> {
    let (mut all, mut top) = (0, 0);
    for r in vmdk::map::walk(src) {
        let r = r?;
        if r.state == State::Data {
            all += r.len;
            top += if r.depth == 0 { r.len } else { 0 };
        }
    }
    Ok((all, top))
}

/// One link's metadata, as `-D`/`--dump` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LinkDump {
    /// The link's main file.
    pub path: PathBuf,
    /// `descriptor`, `embedded`, `extent` or `raw`.
    pub container: String,
    /// `createType` (or `raw`).
    pub format: String,
    /// Content ID (hex).
    pub cid: String,
    /// Parent content ID (hex; `ffffffff`: none).
    pub parent_cid: String,
    /// `parentFileNameHint`.
    pub parent: Option<String>,
    /// Capacity in bytes.
    pub capacity: u64,
    /// The descriptor as the link holds it (the text of a descriptor file or an embedded one).
    pub descriptor: String,
    /// The extents and their header fields.
    pub extents: Vec<ExtentSummary>,
    /// Every file the link owns.
    pub files: Vec<PathBuf>,
}

/// The metadata of every link of the chain of `path`, top first (`-D`/`--dump`).
pub fn dump(path: &Path, opts: &OpenOptions) -> Result<Vec<LinkDump>> {
    let chain = Chain::open(path, opts)?;
    Ok(chain.links().iter().map(|l| link_dump(l)).collect())
}

fn link_dump(l: &vmdk::Link) -> LinkDump {
    let d = l.descriptor();
    let raw = l.container() == Container::Raw;
    LinkDump {
        path: l.path().to_path_buf(),
        container: container_name(l.container()).into(),
        format: if raw { "raw".into() } else { d.create_type.as_str().into() },
        cid: format!("{:08x}", d.cid),
        parent_cid: format!("{:08x}", d.parent_cid),
        parent: d.parent_file_name_hint.clone(),
        capacity: l.capacity(),
        descriptor: if raw { String::new() } else { d.to_text() },
        extents: extent_summaries(l),
        files: l.files(),
    }
}

fn container_name(c: Container) -> &'static str {
    match c {
        Container::Descriptor => "descriptor",
        Container::Embedded => "embedded",
        Container::BareExtent => "extent",
        Container::Raw => "raw",
    }
}

fn extent_summaries(l: &vmdk::Link) -> Vec<ExtentSummary> {
    l.extents()
        .into_iter()
        .map(|e| ExtentSummary {
            kind: e.kind.as_str().into(),
            file: e.file,
            size: e.len,
            grain: e.grain,
            version: e.version,
            unclean: e.unclean,
        })
        .collect()
}

/// Describes the disk at `path` (and its chain).
pub fn info(path: &Path, opts: &OpenOptions) -> Result<DiskInfo> {
    let chain = Chain::open(path, opts)?;
    describe(path, &chain)
}

/// The format a link reports: its descriptor's createType, or `raw` for a raw image.
pub fn format_name(link: &vmdk::Link) -> String {
    if link.container() == Container::Raw {
        "raw".into()
    } else {
        link.descriptor().create_type.as_str().into()
    }
}

/// Describes the open `chain` (whose top was opened from `path`).
pub fn describe(path: &Path, chain: &Chain) -> Result<DiskInfo> {
    let top = chain.top();
    let d = top.descriptor();
    let cap = chain.capacity();
    let (allocated, allocated_top) = allocated_bytes(&chain)?;
    let num = |k: &str| d.ddb(k).and_then(|v| v.trim().parse::<u64>().ok());
    let geometry = match (num("geometry.cylinders"), num("geometry.heads"), num("geometry.sectors")) {
        (Some(cylinders), Some(heads), Some(sectors)) => Some(Geometry { cylinders, heads, sectors }),
        _ => None,
    };
    Ok(DiskInfo {
        path: path.to_path_buf(),
        container: container_name(top.container()).into(),
        format: format_name(top),
        capacity: cap,
        allocated,
        allocated_top,
        cid: format!("{:08x}", d.cid),
        parent_cid: format!("{:08x}", d.parent_cid),
        parent: d.parent_file_name_hint.clone(),
        adapter: d.ddb("adapterType").map(str::to_string),
        geometry,
        thin_provisioned: d.ddb("thinProvisioned") == Some("1"),
        chain_depth: chain.links().len(),
        unclean: chain.links().iter().any(|l| l.was_unclean()),
        extents: extent_summaries(top),
    })
}
