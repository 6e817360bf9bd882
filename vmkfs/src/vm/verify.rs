//! Reading backups back: a backup folder's catalog, the chain of backups a restore needs, and
//! `vmkfs-backup --verify` (every SHA-256, every disk opens and reads, the catalogs agree).

use std::path::{Path, PathBuf};

use redo::Chain;
use serde::Serialize;
use vmdk::{HostStorage, Link, OpenOptions};

use super::blocks::BlockHashes;
use super::catalog::{self, Catalog, Kind, Method};
use super::{kv, plain, Event, Reporter};
use crate::engine::{copy, EngineOptions, Piece, Source, Target};
use crate::error::{Error, Result};
use crate::redo_ops::OwnData;

/// Most backups a chain may have (a cycle in hand-edited catalogs stops here).
const MAX_CHAIN: usize = 10_000;

/// The catalog of the backup folder `folder`.
pub fn load(folder: &Path) -> Result<Catalog> {
    let path = folder.join(catalog::FILE_NAME);
    if !folder.is_dir() {
        return Err(Error::Backup { path: folder.into(), what: "no such backup folder".into() });
    }
    let raw = super::place::Place::host(&path).read_small(kv::MAX_BYTES).map_err(|e| match e {
        Error::Vmdk(vmdk::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Error::Backup { path: folder.into(), what: "not a backup: it has no catalog".into() }
        }
        e => e,
    })?;
    let text = String::from_utf8(raw)
        .map_err(|_| Error::Backup { path: path.clone(), what: "the catalog is not UTF-8 text".into() })?;
    Catalog::parse(&text, &path)
}

/// The folder of the backup `cat` (in `folder`) builds on.
pub fn parent_folder(folder: &Path, cat: &Catalog) -> Option<PathBuf> {
    let (p, _) = cat.parent.as_ref()?;
    let p = Path::new(p);
    Some(if p.is_absolute() { p.to_path_buf() } else { lexical(&folder.join(p)) })
}

/// `path` with `.` and `..` components taken away lexically (`/b/inc/../full` → `/b/full`).
fn lexical(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// The backups a restore of `folder` needs, oldest (the full backup) first: every incremental back
/// to the full one, or the full one and a differential. A missing or mismatched backup is an error
/// naming it.
pub fn chain(folder: &Path) -> Result<Vec<(PathBuf, Catalog)>> {
    let folder = std::path::absolute(folder).unwrap_or_else(|_| folder.to_path_buf());
    let mut out = vec![(folder.clone(), load(&folder)?)];
    loop {
        let (f, c) = out.last().expect("not empty");
        if c.kind == Kind::Full {
            break;
        }
        let want = c.parent.as_ref().map(|(_, id)| id.clone()).unwrap_or_default();
        let pf = parent_folder(f, c).expect("non-full backups have a parent");
        let pc = load(&pf).map_err(|e| Error::Backup {
            path: pf.clone(),
            what: format!("the backup {} builds on cannot be read: {e}", f.display()),
        })?;
        if pc.id != want {
            return Err(Error::Backup {
                path: pf.clone(),
                what: format!("is backup {}, but {} builds on backup {want}", pc.id, f.display()),
            });
        }
        if c.kind == Kind::Differential && pc.kind != Kind::Full {
            return Err(Error::Backup {
                path: pf,
                what: format!("{} is differential, but this backup is not full", f.display()),
            });
        }
        if out.len() >= MAX_CHAIN || out.iter().any(|(x, _)| *x == pf) {
            return Err(Error::Backup { path: pf, what: "the backups' parents form a loop".into() });
        }
        out.push((pf, pc));
    }
    out.reverse();
    Ok(out)
}

/// Problems with the files of one backup: missing, of another size, another SHA-256, or present
/// but not in the catalog.
pub fn check_files(folder: &Path, cat: &Catalog, r: &mut dyn Reporter) -> Vec<String> {
    let mut found = Vec::new();
    let host = HostStorage::shared();
    for f in &cat.files {
        let p = folder.join(&f.name);
        r.event(Event::Step { disk: f.disk.clone(), what: format!("checking {}", p.display()) });
        match plain::sha256_file(&host, &p) {
            Err(e) => found.push(format!("{}: cannot be read: {e}", p.display())),
            Ok((size, _)) if size != f.size => {
                found.push(format!("{}: {size} bytes, the catalog says {}", p.display(), f.size))
            }
            Ok((_, sum)) if sum != f.sha256 => found.push(format!(
                "{}: SHA-256 is {sum}, the catalog says {}: the file is damaged",
                p.display(),
                f.sha256
            )),
            Ok(_) => {}
        }
    }
    for n in host.list_dir(folder) {
        if n != catalog::FILE_NAME && !cat.files.iter().any(|f| f.name == n) {
            found.push(format!("{}: not in the catalog", folder.join(n).display()));
        }
    }
    found
}

/// A target that keeps nothing (reading a disk to see that it reads).
struct Discard(u64);

impl Target for Discard {
    type Encoded = ();
    fn capacity(&self) -> u64 {
        self.0
    }
    fn encode(&self, _piece: &Piece<'_>) -> Result<()> {
        Ok(())
    }
    fn write(&self, _piece: &Piece<'_>, _e: ()) -> Result<u64> {
        Ok(0)
    }
}

fn read_all(src: &dyn Source) -> Result<()> {
    copy(src, &Discard(src.capacity()), &EngineOptions::new(), &mut |_, _| {}, None).map(|_| ())
}

/// What `--verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The backups checked, oldest first.
    pub backups: Vec<PathBuf>,
    /// Every problem (none: the backup is sound).
    pub findings: Vec<String>,
}

/// Checks the backup `folder` and every backup it builds on.
pub fn verify(folder: &Path, r: &mut dyn Reporter) -> Result<VerifyReport> {
    let backups = chain(folder)?;
    let mut findings = Vec::new();
    for (i, (f, c)) in backups.iter().enumerate() {
        let mut here = check_files(f, c, r);
        let damaged = !here.is_empty();
        findings.append(&mut here);
        if damaged {
            continue;
        }
        for d in c.disks.iter().filter(|d| d.skipped.is_none()) {
            let file = f.join(d.filename.as_deref().unwrap_or_default());
            r.event(Event::Step { disk: Some(d.key.clone()), what: format!("reading {}", file.display()) });
            if let Err(e) = check_disk(&file, d, &backups[..i], c.kind) {
                findings.push(format!("{} disk {}: {e}", f.display(), d.key));
            }
            if let Some(b) = &d.blocks {
                let p = f.join(b);
                match std::fs::read(&p)
                    .map_err(|e| Error::Io { path: p.clone(), source: e })
                    .and_then(|raw| BlockHashes::from_bytes(&raw, &p))
                {
                    Ok(t) if t.capacity() != d.capacity => findings.push(format!(
                        "{}: for {} bytes, the disk has {}",
                        p.display(),
                        t.capacity(),
                        d.capacity
                    )),
                    Ok(_) => {}
                    Err(e) => findings.push(format!("{e}")),
                }
            }
        }
    }
    Ok(VerifyReport { backups: backups.into_iter().map(|(f, _)| f).collect(), findings })
}

/// The CID the backups before a pass left disk `key` at: the newest earlier backup holding it, or
/// for a differential the full backup.
pub fn prior_cid(before: &[(PathBuf, Catalog)], kind: Kind, key: &str) -> Option<u32> {
    let pool: Vec<&(PathBuf, Catalog)> =
        if kind == Kind::Differential { before.iter().take(1).collect() } else { before.iter().collect() };
    pool.iter().rev().find_map(|(_, c)| c.disk(key).filter(|d| d.skipped.is_none()).map(|d| d.cid))
}

fn check_disk(file: &Path, d: &catalog::DiskEntry, before: &[(PathBuf, Catalog)], kind: Kind) -> Result<()> {
    let bad = |what: String| Err(Error::Backup { path: file.into(), what });
    if d.method == Some(Method::Full) {
        let chain = Chain::open(file, &OpenOptions::read())?;
        read_all(&chain)?;
        let cid = chain.top().descriptor().cid;
        if cid != d.cid || chain.capacity() != d.capacity {
            return bad(format!(
                "CID {cid:08x} and {} bytes, the catalog says {:08x} and {}",
                chain.capacity(),
                d.cid,
                d.capacity
            ));
        }
        return Ok(());
    }
    let link = Link::open(file, &OpenOptions::read())?;
    read_all(&OwnData(&link))?;
    let desc = link.descriptor();
    if desc.cid != d.cid || Some(desc.parent_cid) != d.parent_cid {
        return bad(format!(
            "CID {:08x} over {:08x}, the catalog says {:08x} over {:08x}",
            desc.cid,
            desc.parent_cid,
            d.cid,
            d.parent_cid.unwrap_or_default()
        ));
    }
    match prior_cid(before, kind, &d.key) {
        Some(p) if Some(p) == d.parent_cid => Ok(()),
        Some(p) => {
            bad(format!("applies onto CID {:08x}, but the backup before leaves the disk at {p:08x}", desc.parent_cid))
        }
        None => bad("is a change set, but no earlier backup holds the disk".into()),
    }
}
