//! REDO chains: `--snapshot`, `-m/--commit`, `--discard`, `--chain`, `--changed-blocks`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::Args;
use vmkfs::error::{exit, Error, Result};
use vmkfs::redo::changemap::DEFAULT_BLOCK;
use vmkfs::vmdk::OpenOptions;

use crate::out::outln;
use crate::{open_options, out, target, Cli};

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

/// How many REDO operations the command line selects.
pub fn selected(cli: &Cli) -> usize {
    let r = &cli.redo;
    [
        r.snapshot,
        r.commit,
        r.discard,
        r.chain,
        r.changed_blocks,
        r.export_delta.is_some(),
        r.apply.is_some(),
        r.chain_consistent,
        r.unique_blocks.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count()
}

/// Runs the selected REDO operation; `None` when none is selected.
pub fn run(cli: &Cli) -> Option<i32> {
    if selected(cli) == 0 {
        return None;
    }
    Some(run_inner(cli).unwrap_or_else(|e| crate::report_error(cli, &e)))
}

fn run_inner(cli: &Cli) -> Result<i32> {
    let r = &cli.redo;
    if let Some(child) = &r.unique_blocks {
        return run_unique(cli, child);
    }
    let disk = target(cli)?;
    let opts = open_options(cli);
    if r.chain_consistent {
        run_chain_consistent(cli, disk)
    } else if r.snapshot {
        run_snapshot(cli, disk, &opts)
    } else if let Some(dst) = &r.export_delta {
        run_export_delta(cli, disk, dst, &opts)
    } else if let Some(l) = r.apply.as_deref().and_then(|a| vmkfs::repo::location::parse_location(&a.to_string_lossy()))
    {
        run_apply_restic(cli, &l, disk, &opts)
    } else if let Some(delta) = &r.apply {
        run_apply(cli, delta, disk, &opts)
    } else if r.commit {
        run_commit(cli, disk, &opts)
    } else if r.discard {
        let files = vmkfs::redo::discard(disk, &opts)?;
        if cli.common.json {
            out::line(serde_json::json!({"event": "discarded", "files": files}));
        }
        Ok(exit::OK)
    } else if r.chain {
        run_chain(cli, disk, &opts)
    } else {
        run_changed_blocks(cli, disk, &opts)
    }
}

/// `--snapshot`: a new child link (or, with `--legacy-redo`, an ESX 2 `.REDO` log).
fn run_snapshot(cli: &Cli, disk: &Path, opts: &OpenOptions) -> Result<i32> {
    let new = vmkfs::redo::snapshot(disk, opts, cli.redo.legacy_redo)?;
    if cli.common.json {
        out::line(serde_json::json!({"event": "snapshot", "link": new, "parent": disk}));
    } else {
        out::line(new.display());
    }
    Ok(exit::OK)
}

/// `--export-delta DST --since LINK`: the changes above LINK as a standalone delta.
fn run_export_delta(cli: &Cli, disk: &Path, dst: &Path, opts: &OpenOptions) -> Result<i32> {
    let since = cli.redo.since.as_deref().expect("clap requires --since");
    let mut progress = |_: u64, _: u64| {};
    let interrupt = Some(crate::disk::install_interrupt_handler());
    let out = vmkfs::redo_ops::export_delta(disk, since, dst, opts, cli.common.force, &mut progress, interrupt)?;
    if cli.common.json {
        out::line(serde_json::json!({"event": "exported", "delta": out, "since": since}));
    } else {
        out::line(out.display());
    }
    Ok(exit::OK)
}

/// `--apply DELTA REPLICA`: an exported delta written into its replica.
fn run_apply(cli: &Cli, delta: &Path, disk: &Path, opts: &OpenOptions) -> Result<i32> {
    let mut progress = |_: u64, _: u64| {};
    let interrupt = Some(crate::disk::install_interrupt_handler());
    let applied = vmkfs::redo_ops::apply_delta(delta, disk, opts, cli.common.force, &mut progress, interrupt)?;
    let (cid, already) = match applied {
        vmkfs::redo_ops::Applied::Now(c) => (c, false),
        vmkfs::redo_ops::Applied::Already(c) => (c, true),
    };
    if cli.common.json {
        out::line(
            serde_json::json!({"event": "applied", "replica": disk, "cid": format!("{cid:08x}"), "already": already}),
        );
    } else if already {
        outln!("'{}' already holds '{}' (CID {cid:08x}): nothing to do.", disk.display(), delta.display());
    } else {
        outln!("Applied '{}' to '{}'.", delta.display(), disk.display());
    }
    Ok(exit::OK)
}

/// `-m`: the top link committed into its parent, with vmkfstools' progress lines.
fn run_commit(cli: &Cli, disk: &Path, opts: &OpenOptions) -> Result<i32> {
    let json = cli.common.json;
    let tty = std::io::stdout().is_terminal() && !json;
    let mut last = u64::MAX;
    let mut progress = |done: u64, total: u64| {
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        if pct != last {
            last = pct;
            if json {
                out::line(serde_json::json!({"event": "progress", "done": done, "total": total, "percent": pct}));
            } else if tty {
                out::text(format_args!("\rCommit: {pct}% done."));
            } else {
                outln!("Commit: {pct}% done.");
            }
        }
    };
    let rep = vmkfs::redo_ops::commit(disk, opts, &mut progress, Some(crate::disk::install_interrupt_handler()))?;
    if tty {
        out::line("");
    }
    if json {
        out::line(
            serde_json::json!({"event": "committed", "parent": rep.parent, "children": rep.children, "removed": rep.removed, "cid": format!("{:08x}", rep.cid)}),
        );
    } else {
        outln!("Committed '{}' into '{}'.", disk.display(), rep.parent.display());
    }
    Ok(exit::OK)
}

/// `--chain`: every link of the chain with its CIDs, and whether it is sound.
fn run_chain(cli: &Cli, disk: &Path, opts: &OpenOptions) -> Result<i32> {
    let rep = vmkfs::redo::diagnose(disk, opts);
    let broken = rep.iter().any(|l| l.status != "ok");
    if cli.common.json {
        out::line(serde_json::json!({"links": rep, "ok": !broken}));
    } else {
        for (i, l) in rep.iter().enumerate() {
            outln!(
                "{i}: {} [{}] CID {} parentCID {} {}",
                l.path.display(),
                l.format,
                l.cid,
                l.parent_cid,
                if l.status == "ok" { "ok".to_string() } else { format!("BROKEN: {}", l.status) }
            );
        }
    }
    Ok(if broken { exit::NEGATIVE } else { exit::OK })
}

/// `--apply restic:PATH@SNAP:/FILE REPLICA`: the replica brought to the file of the snapshot,
/// only the blocks that differ written ([`vmkfs::repo::replica`]).
fn run_apply_restic(cli: &Cli, l: &vmkfs::repo::location::Location, disk: &Path, opts: &OpenOptions) -> Result<i32> {
    let src = vmkfs::repo::replica::SnapshotFile::open(l, &crate::password(cli)?)?;
    let mut progress = |_: u64, _: u64| {};
    let rep = vmkfs::repo::replica::apply(
        &src,
        disk,
        opts,
        cli.common.force,
        &mut progress,
        Some(crate::disk::install_interrupt_handler()),
    )?;
    if cli.common.json {
        let mut v = serde_json::to_value(&rep).expect("serializable");
        v["event"] = "applied".into();
        out::line(v);
    } else if rep.mode == vmkfs::repo::replica::Mode::Already {
        outln!("'{}' already holds snapshot {}: nothing to do.", disk.display(), &rep.snapshot[..8]);
    } else {
        if let Some(why) = &rep.why {
            outln!("Every block compared: {why}.");
        }
        outln!(
            "Applied snapshot {} to '{}'{}: {} ranges differed, {} bytes written, {} bytes zeroed.",
            &rep.snapshot[..8],
            disk.display(),
            if rep.older { " (an older snapshot than it held)" } else { "" },
            rep.ranges,
            rep.written,
            rep.zeroed
        );
    }
    Ok(exit::OK)
}

/// `--changed-blocks [--since LINK | --since-map FILE] [--save-map FILE]`.
fn run_changed_blocks(cli: &Cli, disk: &Path, opts: &OpenOptions) -> Result<i32> {
    let (r, json) = (&cli.redo, cli.common.json);
    let m = if let Some(f) = &r.since_map {
        let saved = std::fs::read(f).map_err(|e| Error::Io { path: f.clone(), source: e })?;
        vmkfs::redo_ops::changed_since_map(disk, r.since.as_deref(), &saved, opts).map_err(|e| in_file(f, e))?
    } else {
        let block = match &r.block_size {
            Some(b) => vmkfs::size::parse_bytes(b, "block size")?,
            None => DEFAULT_BLOCK,
        };
        vmkfs::redo_ops::changed_blocks(disk, r.since.as_deref(), block, opts)?
    };
    let block = m.block();
    if let Some(f) = &r.save_map {
        // Never over an existing file (or through a symbolic link) unless --force.
        vmkfs::vmdk::txn::write_file(&vmkfs::vmdk::HostStorage::shared(), f, &m.to_bytes(), cli.common.force)?;
    }
    if json {
        let ranges: Vec<_> = m.ranges().map(|(s, l)| serde_json::json!({"start": s, "length": l})).collect();
        out::line(serde_json::json!({"block": block, "changed": m.changed_bytes(), "ranges": ranges}));
    } else {
        for (s, l) in m.ranges() {
            outln!("{s} {l}");
        }
    }
    Ok(exit::OK)
}

/// A change-map file that does not parse is bad input named by its path (exit 3).
fn in_file(f: &Path, e: Error) -> Error {
    match e {
        Error::ChangeMap(c) => Error::Refused(format!("{}: {c}", f.display())),
        e => e,
    }
}

/// `--chainConsistent`: vmkfstools' answer about a chain, exit 1 when it is broken.
fn run_chain_consistent(cli: &Cli, disk: &Path) -> Result<i32> {
    let rep = vmkfs::redo::diagnose(disk, &open_options(cli));
    let broken: Vec<String> =
        rep.iter().filter(|l| l.status != "ok").map(|l| format!("{}: {}", l.path.display(), l.status)).collect();
    if cli.common.json {
        out::line(serde_json::json!({"consistent": broken.is_empty(), "links": rep.len(), "broken": broken}));
    } else if broken.is_empty() {
        outln!("Disk chain is consistent ({} link(s)).", rep.len());
    } else {
        outln!("Disk chain is not consistent: {}", broken.join("; "));
    }
    Ok(if broken.is_empty() { exit::OK } else { exit::NEGATIVE })
}

/// `--uniqueblocks CHILD [PARENT]`.
fn run_unique(cli: &Cli, child: &Path) -> Result<i32> {
    let parent = cli.common.target.as_deref();
    let u = vmkfs::redo_ops::unique_blocks(child, parent, &open_options(cli))?;
    if cli.common.json {
        out::line(serde_json::json!({"child": child, "parent": parent, "held": u.held, "unique": u.unique}));
    } else {
        outln!("{} bytes unique to '{}' ({} bytes held).", u.unique, child.display(), u.held);
    }
    Ok(exit::OK)
}
