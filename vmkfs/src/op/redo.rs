//! REDO chains: `--snapshot`, `-m/--commit`, `--discard`, `--chain`, `--chainConsistent`,
//! `--changed-blocks`, `--export-delta`, `--apply`, `--uniqueblocks`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::redo::changemap::DEFAULT_BLOCK;
use crate::report::Reporter;
use crate::vmdk::OpenOptions;

use super::settings::{Outcome, Settings};
use crate::report::outln;

/// A REDO-chain operation; `path` is the disk (or link) operated on.
#[derive(Debug)]
pub enum RedoOp {
    /// `--snapshot [--legacy-redo]`: a new link on top.
    Snapshot {
        /// The disk.
        path: PathBuf,
        /// An ESX 2 style `DISK.REDO` log.
        legacy: bool,
    },
    /// `-m`: merge the top link into its parent.
    Commit(PathBuf),
    /// `--discard`: drop the top link.
    Discard(PathBuf),
    /// `--chain`: the chain with its CID checks.
    Chain(PathBuf),
    /// `--chainConsistent`.
    ChainConsistent(PathBuf),
    /// `--changed-blocks`.
    ChangedBlocks {
        /// The top of the chain.
        path: PathBuf,
        /// `--since LINK` (default: the base).
        since: Option<PathBuf>,
        /// `--block-size` (default 64 KiB).
        block: Option<u64>,
        /// `--save-map FILE`.
        save_map: Option<PathBuf>,
        /// `--since-map FILE`.
        since_map: Option<PathBuf>,
    },
    /// `--export-delta DST --since LINK`.
    ExportDelta {
        /// The top of the chain.
        path: PathBuf,
        /// The link the changes are counted from.
        since: PathBuf,
        /// The delta written.
        dst: PathBuf,
    },
    /// `--apply DELTA REPLICA`.
    Apply {
        /// The exported delta.
        delta: PathBuf,
        /// The replica it is applied to.
        replica: PathBuf,
    },
    /// `--apply restic:PATH@SNAP:/FILE REPLICA`.
    ApplyRestic {
        /// The file of the snapshot.
        location: crate::repo::location::Location,
        /// The replica brought to it.
        replica: PathBuf,
    },
    /// `--uniqueblocks CHILD [PARENT]`.
    Unique {
        /// The child.
        child: PathBuf,
        /// The parent (default: the child's).
        parent: Option<PathBuf>,
    },
}

/// Runs a REDO-chain operation.
pub fn run(op: RedoOp, s: &Settings, r: &Reporter) -> Result<Outcome> {
    let opts = s.open_options();
    match op {
        RedoOp::Snapshot { path, legacy } => {
            let new = crate::redo::snapshot(&path, &opts, legacy)?;
            if r.json() {
                r.line(serde_json::json!({"event": "snapshot", "link": new, "parent": path}));
            } else {
                r.line(new.display());
            }
        }
        RedoOp::Commit(p) => run_commit(r, &p, &opts)?,
        RedoOp::Discard(p) => {
            let files = crate::redo::discard(&p, &opts)?;
            if r.json() {
                r.line(serde_json::json!({"event": "discarded", "files": files}));
            }
        }
        RedoOp::Chain(p) => return Ok(run_chain(r, &p, &opts)),
        RedoOp::ChainConsistent(p) => return Ok(run_chain_consistent(r, &p, &opts)),
        RedoOp::ChangedBlocks { path, since, block, save_map, since_map } => {
            let m = changed_blocks(&path, since.as_deref(), block, since_map.as_deref(), &opts)?;
            print_changed(s, r, &m, save_map.as_deref())?;
        }
        RedoOp::ExportDelta { path, since, dst } => {
            let mut progress = |_: u64, _: u64| {};
            let interrupt = Some(crate::interrupt::install());
            let out =
                crate::redo_ops::export_delta(&path, &since, &dst, &opts, s.force, &mut progress, interrupt, None)?;
            if r.json() {
                r.line(serde_json::json!({"event": "exported", "delta": out, "since": since}));
            } else {
                r.line(out.display());
            }
        }
        RedoOp::Apply { delta, replica } => run_apply(s, r, &delta, &replica, &opts)?,
        RedoOp::ApplyRestic { location, replica } => run_apply_restic(s, r, &location, &replica, &opts)?,
        RedoOp::Unique { child, parent } => {
            let u = crate::redo_ops::unique_blocks(&child, parent.as_deref(), &opts)?;
            if r.json() {
                r.line(serde_json::json!({"child": child, "parent": parent, "held": u.held, "unique": u.unique}));
            } else {
                outln!(r, "{} bytes unique to '{}' ({} bytes held).", u.unique, child.display(), u.held);
            }
        }
    }
    Ok(Outcome::Done)
}

/// `--apply DELTA REPLICA`: an exported delta written into its replica.
fn run_apply(s: &Settings, r: &Reporter, delta: &Path, disk: &Path, opts: &OpenOptions) -> Result<()> {
    let mut progress = |_: u64, _: u64| {};
    let interrupt = Some(crate::interrupt::install());
    let applied = crate::redo_ops::apply_delta(delta, disk, opts, s.force, &mut progress, interrupt)?;
    let (cid, already) = match applied {
        crate::redo_ops::Applied::Now(c) => (c, false),
        crate::redo_ops::Applied::Already(c) => (c, true),
    };
    if r.json() {
        r.line(
            serde_json::json!({"event": "applied", "replica": disk, "cid": format!("{cid:08x}"), "already": already}),
        );
    } else if already {
        outln!(r, "'{}' already holds '{}' (CID {cid:08x}): nothing to do.", disk.display(), delta.display());
    } else {
        outln!(r, "Applied '{}' to '{}'.", delta.display(), disk.display());
    }
    Ok(())
}

/// `-m`: the top link committed into its parent, with vmkfstools' progress lines.
fn run_commit(r: &Reporter, disk: &Path, opts: &OpenOptions) -> Result<()> {
    let json = r.json();
    let tty = r.out_is_terminal() && !json;
    let mut last = u64::MAX;
    let mut progress = |done: u64, total: u64| {
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        if pct != last {
            last = pct;
            if json {
                r.line(serde_json::json!({"event": "progress", "done": done, "total": total, "percent": pct}));
            } else if tty {
                r.text(format_args!("\rCommit: {pct}% done."));
            } else {
                outln!(r, "Commit: {pct}% done.");
            }
        }
    };
    let rep = crate::redo_ops::commit(disk, opts, &mut progress, Some(crate::interrupt::install()))?;
    if tty {
        r.line("");
    }
    if json {
        r.line(
            serde_json::json!({"event": "committed", "parent": rep.parent, "children": rep.children, "removed": rep.removed, "cid": format!("{:08x}", rep.cid)}),
        );
    } else {
        outln!(r, "Committed '{}' into '{}'.", disk.display(), rep.parent.display());
    }
    Ok(())
}

/// `--chain`: every link of the chain with its CIDs, and whether it is sound.
fn run_chain(r: &Reporter, disk: &Path, opts: &OpenOptions) -> Outcome {
    let rep = crate::redo::diagnose(disk, opts);
    let broken = rep.iter().any(|l| l.status != "ok");
    if r.json() {
        r.line(serde_json::json!({"links": rep, "ok": !broken}));
    } else {
        for (i, l) in rep.iter().enumerate() {
            outln!(
                r,
                "{i}: {} [{}] CID {} parentCID {} {}",
                l.path.display(),
                l.format,
                l.cid,
                l.parent_cid,
                if l.status == "ok" { "ok".to_string() } else { format!("BROKEN: {}", l.status) }
            );
        }
    }
    if broken {
        Outcome::Negative
    } else {
        Outcome::Done
    }
}

/// `--apply restic:PATH@SNAP:/FILE REPLICA`: the replica brought to the file of the snapshot,
/// only the blocks that differ written ([`crate::repo::replica`]).
fn run_apply_restic(
    s: &Settings,
    r: &Reporter,
    l: &crate::repo::location::Location,
    disk: &Path,
    opts: &OpenOptions,
) -> Result<()> {
    let src = crate::repo::replica::SnapshotFile::open(l, &s.password()?)?;
    let mut progress = |_: u64, _: u64| {};
    let interrupt = Some(crate::interrupt::install());
    let rep = crate::repo::replica::apply(&src, disk, opts, s.force, &mut progress, interrupt)?;
    if r.json() {
        let mut v = serde_json::to_value(&rep).unwrap_or_default();
        v["event"] = "applied".into();
        r.line(v);
    } else if rep.mode == crate::repo::replica::Mode::Already {
        outln!(r, "'{}' already holds snapshot {}: nothing to do.", disk.display(), &rep.snapshot[..8]);
    } else {
        if let Some(why) = &rep.why {
            outln!(r, "Every block compared: {why}.");
        }
        outln!(
            r,
            "Applied snapshot {} to '{}'{}: {} ranges differed, {} bytes written, {} bytes zeroed.",
            &rep.snapshot[..8],
            disk.display(),
            if rep.older { " (an older snapshot than it held)" } else { "" },
            rep.ranges,
            rep.written,
            rep.zeroed
        );
    }
    Ok(())
}

/// The change map of `--changed-blocks [--since LINK | --since-map FILE]`.
fn changed_blocks(
    disk: &Path,
    since: Option<&Path>,
    block: Option<u64>,
    since_map: Option<&Path>,
    opts: &OpenOptions,
) -> Result<crate::redo::ChangeMap> {
    if let Some(f) = since_map {
        let saved = std::fs::read(f).map_err(|e| Error::Io { path: f.to_path_buf(), source: e })?;
        return crate::redo_ops::changed_since_map(disk, since, &saved, opts).map_err(|e| in_file(f, e));
    }
    crate::redo_ops::changed_blocks(disk, since, block.unwrap_or(DEFAULT_BLOCK), opts)
}

/// `--changed-blocks [--save-map FILE]`: the map saved, and its ranges printed.
fn print_changed(s: &Settings, r: &Reporter, m: &crate::redo::ChangeMap, save_map: Option<&Path>) -> Result<()> {
    if let Some(f) = save_map {
        // Never over an existing file (or through a symbolic link) unless --force.
        crate::vmdk::txn::write_file(&crate::vmdk::HostStorage::shared(), f, &m.to_bytes(), s.force)?;
    }
    if r.json() {
        let ranges: Vec<_> = m.ranges().map(|(s, l)| serde_json::json!({"start": s, "length": l})).collect();
        r.line(serde_json::json!({"block": m.block(), "changed": m.changed_bytes(), "ranges": ranges}));
    } else {
        for (s, l) in m.ranges() {
            outln!(r, "{s} {l}");
        }
    }
    Ok(())
}

/// A change-map file that does not parse is bad input named by its path.
fn in_file(f: &Path, e: Error) -> Error {
    match e {
        Error::ChangeMap(c) => Error::Refused(format!("{}: {c}", f.display())),
        e => e,
    }
}

/// `--chainConsistent`: vmkfstools' answer about a chain, negative when it is broken.
fn run_chain_consistent(r: &Reporter, disk: &Path, opts: &OpenOptions) -> Outcome {
    let rep = crate::redo::diagnose(disk, opts);
    let broken: Vec<String> =
        rep.iter().filter(|l| l.status != "ok").map(|l| format!("{}: {}", l.path.display(), l.status)).collect();
    if r.json() {
        r.line(serde_json::json!({"consistent": broken.is_empty(), "links": rep.len(), "broken": broken}));
    } else if broken.is_empty() {
        outln!(r, "Disk chain is consistent ({} link(s)).", rep.len());
    } else {
        outln!(r, "Disk chain is not consistent: {}", broken.join("; "));
    }
    if broken.is_empty() {
        Outcome::Done
    } else {
        Outcome::Negative
    }
}
