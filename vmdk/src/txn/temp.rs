//! Temporary names beside final ones, and the sweep of those a dead process left.
//!
//! A temporary name is `.NAME.vmkfs-PID-TAG.tmp` in the final file's folder: hidden, tied to the
//! final name `NAME`, unique per process (`PID`) and call (`TAG`, random), so that two processes
//! never share one and a rerun never trips over a file an earlier run left.

use std::path::{Path, PathBuf};

use super::file_name;

/// A fresh temporary name for the final file `fin`.
pub fn temp_name(fin: &Path) -> PathBuf {
    let tag = crate::random_u32();
    fin.with_file_name(format!(".{}.vmkfs-{}-{tag:08x}.tmp", file_name(fin), std::process::id()))
}

/// If `name` is a temporary name, the final name and the PID of the process that made it.
pub fn parse_temp_name(name: &str) -> Option<(&str, u32)> {
    let rest = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (fin, tail) = rest.rsplit_once(".vmkfs-")?;
    let (pid, tag) = tail.split_once('-')?;
    if tag.len() != 8 || !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((fin, pid.parse().ok()?))
}

/// True when `name` is one of our temporary names.
pub fn is_temp_name(name: &str) -> bool {
    parse_temp_name(name).is_some()
}

/// Removes, from the folder `dir` listed as `names`, the temporary files whose process is dead and
/// which no intent record in `keep` still needs. Returns what was removed.
pub fn sweep_stale_temps(storage: &dyn crate::Storage, dir: &Path, names: &[String], keep: &[PathBuf]) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for n in names {
        let Some((_, pid)) = parse_temp_name(n) else { continue };
        if pid == std::process::id() || rdm::process_alive(pid) {
            continue;
        }
        let p = dir.join(n);
        if keep.iter().any(|k| k == &p) {
            continue;
        }
        if storage.remove(&p).is_ok() {
            removed.push(p);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let t = temp_name(Path::new("/vm/disk-flat.vmdk"));
        let n = file_name(&t);
        let (fin, pid) = parse_temp_name(&n).unwrap();
        assert_eq!(fin, "disk-flat.vmdk");
        assert_eq!(pid, std::process::id());
        assert!(!is_temp_name("disk.vmdk"));
        assert!(!is_temp_name(".disk.vmdk.vmkfs-intent"));
        assert!(!is_temp_name(".x.vmkfs-12-zz.tmp"));
    }
}
