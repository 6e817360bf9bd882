//! `restic:PATH[@SNAPSHOT[:/FILE]]`: how a command names a repository, one of its snapshots, and a
//! file inside it.

use std::path::PathBuf;

/// A `restic:PATH[@SNAPSHOT]` location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The repository folder.
    pub path: PathBuf,
    /// The snapshot (`latest`, an ID or prefix), when given.
    pub snapshot: Option<String>,
    /// A file inside the snapshot (`…@SNAP:/VM/disk.raw`), when given.
    pub file: Option<String>,
}

/// Parses `restic:PATH[@SNAP[:/FILE]]`; `None` when `given` is not a `restic:` location.
pub fn parse_location(given: &str) -> Option<Location> {
    let rest = given.strip_prefix("restic:")?;
    let (path, snap) = match rest.rsplit_once('@') {
        Some((p, s)) if !s.contains('/') || s.contains(":/") => (p, Some(s)),
        _ => (rest, None),
    };
    let (snapshot, file) = match snap {
        Some(s) => match s.split_once(':') {
            Some((s, f)) => (Some(s.to_string()), Some(f.to_string())),
            None => (Some(s.to_string()), None),
        },
        None => (None, None),
    };
    Some(Location { path: PathBuf::from(path), snapshot, file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let l = |s: &str| parse_location(s).unwrap();
        assert_eq!(l("restic:/r"), Location { path: "/r".into(), snapshot: None, file: None });
        assert_eq!(l("restic:/r@latest"), Location { path: "/r".into(), snapshot: Some("latest".into()), file: None });
        assert_eq!(
            l("restic:/r@4f1c:/vm/scsi0-0-vm.raw"),
            Location { path: "/r".into(), snapshot: Some("4f1c".into()), file: Some("/vm/scsi0-0-vm.raw".into()) }
        );
        // An @ inside the path is part of it.
        assert_eq!(l("restic:/backups/a@b/repo").path, PathBuf::from("/backups/a@b/repo"));
        assert!(parse_location("/plain/folder").is_none());
    }
}
