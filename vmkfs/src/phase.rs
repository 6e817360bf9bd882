//! Data phases: operations that change a disk's data in place (commit, apply, `-w`, `-K` of a
//! grain-table link, repair) cannot be undone once started, so while they run — and after an
//! interruption — their intent record ([`vmdk::txn`]) carries the command that finishes them, every
//! other command on the disk is refused naming it, and running it again takes the record over and
//! starts the data phase again (each of these operations is idempotent).

use std::path::Path;

use vmdk::txn::{self, Intent};
use vmdk::OpenOptions;

use crate::error::Result;

/// The command that finishes an interrupted operation, as recorded in its intent record: `vmkfs`,
/// the `flags`, then each path made absolute (and `--allow-outside-paths` when it was given).
pub fn rerun_command(flags: &[&str], paths: &[&Path], opts: &OpenOptions) -> Vec<String> {
    let mut v = vec!["vmkfs".to_string()];
    if opts.allow_outside {
        v.push("--allow-outside-paths".into());
    }
    v.extend(flags.iter().map(|f| f.to_string()));
    v.extend(paths.iter().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string()));
    v
}

/// Before opening `path` for a data phase of operation `op` whose re-run command is `rerun`: the
/// record an interrupted run of the very same command left (its process gone), taken over; any
/// other interrupted operation on the disk is settled as every command settles it (finished, or
/// refused naming its own re-run).
pub fn resume(path: &Path, opts: &OpenOptions, op: &str, rerun: &[String]) -> Result<Option<Intent>> {
    let storage = &opts.storage;
    let Some(i) = txn::pending(storage, path)? else { return Ok(None) };
    let rec = i.record();
    if rec.op == op && rec.rerun.as_deref() == Some(rerun) {
        return Ok(Some(i));
    }
    drop(i);
    txn::settle(storage.as_ref(), path)?;
    Ok(None)
}

/// Starts (or, with `resumed`, continues) the data phase of `op` on the disk whose main file is
/// `real` (a real path), once the disk is open and locked.
pub fn begin(real: &Path, opts: &OpenOptions, op: &str, rerun: Vec<String>, resumed: Option<Intent>) -> Result<Intent> {
    Ok(match resumed {
        Some(i) => i,
        None => Intent::begin(&opts.storage, real, op, &[], Some(rerun))?,
    })
}

/// Ends a data phase whose work is flushed and whose links are closed: nothing is left to do.
pub fn end(mut intent: Intent) -> Result<()> {
    intent.set_steps(Vec::new())?;
    Ok(intent.finish()?)
}
