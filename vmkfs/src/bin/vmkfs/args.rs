//! The options of `vmkfs`, by subject (the help text is their doc comments).

use std::path::PathBuf;

use clap::Args;

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

/// REDO-chain operations.
#[derive(Args, Debug)]
pub struct RedoArgs {
    /// Add a REDO link on top of the disk's chain; prints the new link's path.
    #[arg(long)]
    pub snapshot: bool,
    /// With --snapshot: create an ESX 2 style `DISK.REDO` log.
    #[arg(long = "legacy-redo", requires = "snapshot")]
    pub legacy_redo: bool,
    /// Merge the target REDO link into its parent and remove it (crash-safe).
    #[arg(short = 'm', long = "commit")]
    pub commit: bool,
    /// Drop the target REDO link (the top of its chain) without merging it.
    #[arg(long)]
    pub discard: bool,
    /// Show the chain from the target down, with CID checks and what is broken.
    #[arg(long)]
    pub chain: bool,
    /// Print the byte ranges that changed above a link (--since; default: the base).
    #[arg(long = "changed-blocks")]
    pub changed_blocks: bool,
    /// With --changed-blocks or --export-delta: the link changes are counted from (incremental:
    /// the previous snapshot; differential: the base).
    #[arg(long, value_name = "LINK")]
    pub since: Option<PathBuf>,
    /// Incremental export: write the blocks changed since --since LINK as a new REDO link DST that
    /// chains onto a copy of LINK.
    #[arg(long = "export-delta", value_name = "DST", requires = "since")]
    pub export_delta: Option<PathBuf>,
    /// Replication: apply an exported REDO link DELTA onto the target (a replica of its parent), or
    /// the file of a restic snapshot (restic:PATH@SNAP:/VM/disk.raw): only the blocks that differ.
    #[arg(long = "apply", value_name = "DELTA")]
    pub apply: Option<PathBuf>,
    /// With --changed-blocks: block size (default 64k).
    #[arg(long = "block-size", value_name = "SIZE", requires = "changed_blocks")]
    pub block_size: Option<String>,
    /// With --changed-blocks: also save the change map (checksummed; format in redo/CHANGEMAP.md) to FILE.
    #[arg(long = "save-map", value_name = "FILE", requires = "changed_blocks")]
    pub save_map: Option<PathBuf>,
    /// With --changed-blocks: only the blocks not already marked in the change map saved (with
    /// --save-map) in FILE; its block size is used.
    #[arg(long = "since-map", value_name = "FILE", requires = "changed_blocks", conflicts_with = "block_size")]
    pub since_map: Option<PathBuf>,
    /// Exit 0 when every link of the target's chain opens and its CIDs agree, 1 saying what is broken.
    #[arg(long = "chainConsistent", visible_alias = "chain-consistent")]
    pub chain_consistent: bool,
    /// Bytes the links of CHILD's chain above the target (default: CHILD's parent) hold that the
    /// target and the links below it do not.
    #[arg(long = "uniqueblocks", value_name = "CHILD")]
    pub unique_blocks: Option<PathBuf>,
}

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

/// Export and pipe options.
#[derive(Args, Debug)]
pub struct StreamArgs {
    /// Export the target disk (a chain is flattened) to DST, by default as 2gbsparse; DST `-` writes
    /// to standard output, with -d streamoptimized (a stream) or -d raw (the plain bytes).
    #[arg(short = 'e', long = "exportfile", value_name = "DST")]
    pub export_file: Option<PathBuf>,
    /// zlib level of -d streamoptimized output, 0 (store) to 9 (smallest); default 6.
    #[arg(long = "compress-level", value_name = "N", value_parser = clap::value_parser!(u32).range(0..=9))]
    pub compress_level: Option<u32>,
    /// Size of a raw image read from standard input by `-i -` (a stream carries its own).
    #[arg(long = "size", value_name = "SIZE")]
    pub input_size: Option<String>,
}

/// NBD serving.
#[derive(Args, Debug)]
pub struct NbdArgs {
    /// Serve the target disk (a chain: read through every link) over NBD on SOCKET: a Unix socket
    /// path, tcp:127.0.0.1:PORT or tcp:[::1]:PORT. Read-only unless --writable; ends on SIGINT/SIGTERM.
    #[arg(long = "serve-nbd", value_name = "SOCKET")]
    pub serve_nbd: Option<String>,
    /// With --serve-nbd or --mount: accept writes, into the top link (locked exclusively while
    /// served or mounted).
    #[arg(long = "writable")]
    pub writable: bool,
}

/// Mount options.
#[derive(Args, Debug)]
pub struct MountArgs {
    /// Expose TARGET (a disk or the top of a chain; with --volume, a disk inside the volume) as one
    /// raw image file, TARGET's name with .img, in a FUSE mount on DIR, until SIGINT or SIGTERM
    /// (or an unmount). Read-only unless --writable.
    #[arg(long = "mount", value_name = "DIR")]
    pub mount: Option<PathBuf>,
}
