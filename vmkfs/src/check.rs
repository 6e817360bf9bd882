//! `-x check` and `-x repair` of a disk and its chain.
//!
//! [`vmdk::check`] checks one link; here every link of the disk's chain is checked that way, and
//! so are the links' relations: each parent present, its CID the one the child recorded, its
//! capacity the child's. The relations are judged by opening the chain with the code every command
//! uses ([`redo::Chain::open`]), a break explained link by link by [`redo::diagnose`].
//!
//! Repair repairs the disk named (the top link) only: a parent is another disk, repaired by
//! naming it. Its chain is then checked as above, and what is wrong there stays a finding.

use std::path::{Path, PathBuf};

use vmdk::check::{Finding, Report};
use vmdk::OpenOptions;

use crate::error::Result;
use crate::phase::rerun_command;

/// Checks the disk at `path` and every link of its chain.
pub fn check(path: &Path, opts: &OpenOptions) -> Result<Report> {
    let mut report = vmdk::check::check_disk(path, opts)?;
    check_chain(path, opts, &mut report)?;
    Ok(report)
}

/// Repairs the disk at `path` (see [`vmdk::check::repair_disk`]; an interrupted repair is finished
/// by running `vmkfs -x repair PATH` again), then checks its chain.
pub fn repair(path: &Path, opts: &OpenOptions) -> Result<Report> {
    let rerun = rerun_command(&["-x", "repair"], &[path], opts);
    let mut report = vmdk::check::repair_disk(path, opts, rerun)?;
    if !report.refused() {
        check_chain(path, opts, &mut report)?;
    }
    Ok(report)
}

fn finding(file: &Path, what: String) -> Finding {
    Finding { file: file.to_path_buf(), offset: 0, what, repaired: None, undecided: None }
}

/// Adds the findings of the chain below `path`: each relation that is broken, and each parent
/// link's own check.
fn check_chain(path: &Path, opts: &OpenOptions, report: &mut Report) -> Result<()> {
    let links = redo::diagnose(path, opts);
    let mut seen: Vec<PathBuf> = vec![path.to_path_buf()];
    let mut relations = false;
    for l in &links {
        // A link that does not open is its own check's finding.
        if l.status != "ok" && !l.status.starts_with("cannot open: ") {
            report.findings.push(finding(&l.path, format!("chain: {}", l.status)));
            relations = true;
        }
        let parent = l.parent.as_ref().filter(|p| opts.storage.exists(p) && !seen.contains(p));
        if let Some(p) = parent {
            seen.push(p.clone());
            let r = vmdk::check::check_disk(p, opts)?;
            report.findings.extend(r.findings);
            report.omitted += r.omitted;
            for f in r.files {
                if !report.files.contains(&f) {
                    report.files.push(f);
                }
            }
        }
    }
    if !relations && report.unrepaired() == 0 {
        // What the chain's reader refuses beyond the relations above (links sharing a file, a
        // parent outside the folder) is a finding too.
        if let Err(e) = redo::Chain::open(path, opts) {
            report.findings.push(finding(path, format!("chain: {e}")));
        }
    }
    Ok(())
}
