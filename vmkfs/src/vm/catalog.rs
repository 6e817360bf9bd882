//! The backup catalog: the text file `catalog` in every backup folder, saying what the backup holds
//! and where each file came from. The format is documented in `vm/CATALOG.md` (keys, meanings,
//! an example); this module writes and reads it with the shared [`kv`](super::kv) syntax.
//!
//! Reading is strict about what restore relies on (every disk and file entry complete, hashes of
//! the right shape, a known backup type) and ignores keys it does not know, so a catalog edited by
//! hand (to move the restored VM elsewhere) or written by a later version still reads.

use std::path::Path;

use super::kv::Lines;
use crate::error::{Error, Result};

/// The catalog's file name inside a backup folder.
pub const FILE_NAME: &str = "catalog";
/// `disk.K.export` of a disk stored as a raw file of a restic snapshot.
pub const RAW_EXPORT: &str = "raw";
/// The version this code writes and reads.
pub const VERSION: &str = "1";

/// What a backup holds relative to others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Everything.
    Full,
    /// The changes since the previous backup (full or incremental).
    Incremental,
    /// The changes since a full backup.
    Differential,
}

impl Kind {
    /// The catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Incremental => "incremental",
            Kind::Differential => "differential",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "full" => Kind::Full,
            "incremental" => Kind::Incremental,
            "differential" => Kind::Differential,
            _ => return None,
        })
    }
}

/// How a disk's data got into this backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A whole export of the disk.
    Full,
    /// A REDO link of the blocks a change-tracking link says changed.
    Tracking,
    /// A REDO link of the blocks whose hash differs from the previous backup's.
    Hashes,
}

impl Method {
    /// The catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Full => "full",
            Method::Tracking => "tracking",
            Method::Hashes => "hashes",
        }
    }

    fn parse(s: &str) -> Option<Method> {
        Some(match s {
            "full" => Method::Full,
            "tracking" => Method::Tracking,
            "hashes" => Method::Hashes,
            _ => return None,
        })
    }
}

/// One disk of the VM.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiskEntry {
    /// Device key (`scsi0:0`).
    pub key: String,
    /// The disk as the `.vmx` named it, as a datastore path or absolute (`disk.K.diskname`).
    pub diskname: String,
    /// The disk's main file in the backup (`None` for a disk not backed up).
    pub filename: Option<String>,
    /// Why the disk is not in the backup.
    pub skipped: Option<String>,
    /// The source's format (`thin`, `zeroedthick`, `2gbsparse`, …).
    pub format: String,
    /// The format of the file in the backup.
    pub export: String,
    /// Capacity in bytes.
    pub capacity: u64,
    /// Content identity (CID) of the state backed up.
    pub cid: u32,
    /// For a REDO link: the CID of the state it applies onto (the previous backup's).
    pub parent_cid: Option<u32>,
    /// How the data got here.
    pub method: Option<Method>,
    /// The block-hash file (see [`super::blocks`]).
    pub blocks: Option<String>,
    /// Bytes of the disk the file carries (all data for a full export, the changes otherwise).
    pub bytes: u64,
    /// The source link holding this state after the pass (kept for change tracking).
    pub point: Option<String>,
    /// The change-tracking link the pass left on top of the source disk.
    pub tracking: Option<String>,
}

/// What a file in the backup is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The `.vmx`.
    Config,
    /// NVRAM, `.vmsd`, `.vmxf`: restored beside the `.vmx`.
    VmFile,
    /// A log: restored to `config.logdir`.
    Log,
    /// The suspended state: restored to `config.suspenddir`.
    Suspend,
    /// A file of a backed-up disk.
    Disk,
    /// A block-hash file.
    Blocks,
}

impl Role {
    /// The catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Config => "config",
            Role::VmFile => "vmfile",
            Role::Log => "log",
            Role::Suspend => "suspend",
            Role::Disk => "disk",
            Role::Blocks => "blocks",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "config" => Role::Config,
            "vmfile" => Role::VmFile,
            "log" => Role::Log,
            "suspend" => Role::Suspend,
            "disk" => Role::Disk,
            "blocks" => Role::Blocks,
            _ => return None,
        })
    }
}

/// One file of the backup folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Its name in the backup folder (small files keep their original name).
    pub name: String,
    /// What it is.
    pub role: Role,
    /// The disk it belongs to (disk and block-hash files).
    pub disk: Option<String>,
    /// Length in bytes.
    pub size: u64,
    /// SHA-256, lower-case hex.
    pub sha256: String,
}

/// A backup's catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    /// Random identity of this backup (32 hex digits).
    pub id: String,
    /// Full, incremental or differential.
    pub kind: Kind,
    /// When it was taken (UTC, `YYYY-MM-DDTHH:MM:SSZ`).
    pub time: String,
    /// The backup this one builds on: its folder (relative to this backup's folder when they
    /// share a parent) and its id.
    pub parent: Option<(String, String)>,
    /// The id of the full backup at the start of the chain (its own id for a full backup).
    pub base: String,
    /// `displayName`.
    pub display_name: String,
    /// `uuid.bios`.
    pub uuid: String,
    /// `poweredOff` or `suspended`.
    pub state: String,
    /// `host` or `volume`.
    pub source: String,
    /// How the disks were made static (a snapshot per disk, or none for a volume image).
    pub snapshot: String,
    /// The `.vmx`, as a datastore path or absolute.
    pub config_vmx: String,
    /// Where the suspended state lives.
    pub config_suspenddir: String,
    /// Where the logs live.
    pub config_logdir: String,
    /// Every disk of the VM, backed up or not.
    pub disks: Vec<DiskEntry>,
    /// Every file of the backup folder but the catalog.
    pub files: Vec<FileEntry>,
}

fn hex32(v: u32) -> String {
    format!("{v:08x}")
}

impl Catalog {
    /// The catalog's text.
    pub fn to_text(&self) -> String {
        let mut l = Lines::new(Path::new(FILE_NAME));
        l.comment("vmkfs backup catalog (format: vmkfs/src/vm/CATALOG.md)");
        l.push("catalog.version", VERSION);
        l.push("backup.id", &self.id);
        l.push("backup.type", self.kind.as_str());
        l.push("backup.time", &self.time);
        if let Some((p, id)) = &self.parent {
            l.push("backup.parent", p);
            l.push("backup.parent.id", id);
        }
        l.push("backup.base.id", &self.base);
        l.push("display_name", &self.display_name);
        l.push("uuid", &self.uuid);
        l.push("state", &self.state);
        l.push("source", &self.source);
        l.push("source.snapshot", &self.snapshot);
        l.push("config.vmx", &self.config_vmx);
        l.push("config.suspenddir", &self.config_suspenddir);
        l.push("config.logdir", &self.config_logdir);
        for d in &self.disks {
            let k = |s: &str| format!("disk.{}.{s}", d.key);
            l.push(&k("diskname"), &d.diskname);
            if let Some(s) = &d.skipped {
                l.push(&k("skipped"), s);
                continue;
            }
            l.push(&k("filename"), d.filename.as_deref().unwrap_or_default());
            l.push(&k("format"), &d.format);
            l.push(&k("export"), &d.export);
            l.push(&k("capacity"), &d.capacity.to_string());
            l.push(&k("cid"), &hex32(d.cid));
            if let Some(p) = d.parent_cid {
                l.push(&k("parentcid"), &hex32(p));
            }
            if let Some(m) = d.method {
                l.push(&k("method"), m.as_str());
            }
            if let Some(b) = &d.blocks {
                l.push(&k("blocks"), b);
            }
            l.push(&k("bytes"), &d.bytes.to_string());
            if let Some(p) = &d.point {
                l.push(&k("point"), p);
            }
            if let Some(t) = &d.tracking {
                l.push(&k("tracking"), t);
            }
        }
        for (i, f) in self.files.iter().enumerate() {
            let k = |s: &str| format!("file{i}.{s}");
            l.push(&k("name"), &f.name);
            l.push(&k("role"), f.role.as_str());
            if let Some(d) = &f.disk {
                l.push(&k("disk"), d);
            }
            l.push(&k("size"), &f.size.to_string());
            l.push(&k("sha256"), &f.sha256);
        }
        l.to_text()
    }

    /// Reads a catalog's text (from `path`, named in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Catalog> {
        let r = Fields { l: Lines::parse(text, path)?, path };
        let version = r.need("catalog.version")?;
        if version != VERSION {
            return Err(r.err("catalog.version", format!("catalog version {version:?} is not {VERSION:?}")));
        }
        let (kind, parent) = r.kind_and_parent()?;
        let disks = r.disk_keys().into_iter().map(|key| r.disk(key)).collect::<Result<Vec<_>>>()?;
        let files = r.files()?;
        let l = &r.l;
        let c = Catalog {
            id: r.need("backup.id")?,
            kind,
            time: r.need("backup.time")?,
            parent,
            base: r.need("backup.base.id")?,
            display_name: l.get("display_name").unwrap_or_default().to_string(),
            uuid: l.get("uuid").unwrap_or_default().to_string(),
            state: r.need("state")?,
            source: r.need("source")?,
            snapshot: l.get("source.snapshot").unwrap_or_default().to_string(),
            config_vmx: r.need("config.vmx")?,
            config_suspenddir: r.need("config.suspenddir")?,
            config_logdir: r.need("config.logdir")?,
            disks,
            files,
        };
        r.check_files_named(&c)?;
        Ok(c)
    }

    /// The disk entry of `key`.
    pub fn disk(&self, key: &str) -> Option<&DiskEntry> {
        self.disks.iter().find(|d| d.key == key)
    }
}

/// A catalog's entries as [`Catalog::parse`] reads them: each value by key, each error naming the
/// catalog's line of that key.
struct Fields<'a> {
    l: Lines,
    path: &'a Path,
}

impl Fields<'_> {
    fn err(&self, key: &str, what: String) -> Error {
        Error::Config { path: self.path.into(), line: self.l.line_of(key), what }
    }

    fn need(&self, key: &str) -> Result<String> {
        self.l.get(key).map(str::to_string).ok_or_else(|| self.err(key, format!("the catalog has no `{key}`")))
    }

    fn opt(&self, key: &str) -> Option<String> {
        self.l.get(key).filter(|v| !v.is_empty()).map(str::to_string)
    }

    fn num(&self, key: &str) -> Result<u64> {
        let v = self.need(key)?;
        v.parse().map_err(|_| self.err(key, format!("`{key}` = {v:?} is not a number")))
    }

    fn cid(&self, key: &str) -> Result<u32> {
        let v = self.need(key)?;
        u32::from_str_radix(&v, 16).map_err(|_| self.err(key, format!("`{key}` = {v:?} is not a hexadecimal CID")))
    }

    /// The backup type and the parent backup (path and id), checked to go together: a full backup
    /// has none, the others one.
    fn kind_and_parent(&self) -> Result<(Kind, Option<(String, String)>)> {
        let kind_s = self.need("backup.type")?;
        let kind = Kind::parse(&kind_s).ok_or_else(|| {
            self.err("backup.type", format!("backup type {kind_s:?} is not full, incremental or differential"))
        })?;
        let parent = match (self.opt("backup.parent"), self.opt("backup.parent.id")) {
            (Some(p), Some(id)) => Some((p, id)),
            (None, None) => None,
            _ => return Err(self.err("backup.parent", "`backup.parent` and `backup.parent.id` go together".into())),
        };
        if (kind == Kind::Full) != parent.is_none() {
            return Err(self.err(
                "backup.type",
                format!(
                    "a {} backup {} a parent backup",
                    kind.as_str(),
                    if parent.is_none() { "needs" } else { "has no" }
                ),
            ));
        }
        Ok((kind, parent))
    }

    /// The disk keys of `disk.KEY.FIELD` entries, in first-seen order.
    fn disk_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        for (k, _) in self.l.entries() {
            if let Some(rest) = k.to_ascii_lowercase().strip_prefix("disk.") {
                if let Some((key, _)) = rest.rsplit_once('.') {
                    if !keys.iter().any(|x| x == key) {
                        keys.push(key.to_string());
                    }
                }
            }
        }
        keys
    }

    /// The entry of disk `key`.
    fn disk(&self, key: String) -> Result<DiskEntry> {
        let k = |s: &str| format!("disk.{key}.{s}");
        let mut d = DiskEntry { key: key.clone(), diskname: self.need(&k("diskname"))?, ..DiskEntry::default() };
        if let Some(s) = self.opt(&k("skipped")) {
            d.skipped = Some(s);
            return Ok(d);
        }
        d.filename = Some(self.need(&k("filename"))?);
        d.format = self.need(&k("format"))?;
        d.export = self.need(&k("export"))?;
        d.capacity = self.num(&k("capacity"))?;
        d.cid = self.cid(&k("cid"))?;
        d.parent_cid = if self.l.get(&k("parentcid")).is_some() { Some(self.cid(&k("parentcid"))?) } else { None };
        let m = self.need(&k("method"))?;
        d.method = Some(
            Method::parse(&m)
                .ok_or_else(|| self.err(&k("method"), format!("method {m:?} is not full, tracking or hashes")))?,
        );
        // A raw file of a restic snapshot is always whole; its method says how it was read.
        let whole = d.method == Some(Method::Full) || d.export == RAW_EXPORT;
        if whole == d.parent_cid.is_some() {
            return Err(self.err(
                &k("method"),
                format!(
                    "disk {key}: a `{m}` disk {} a parentcid",
                    if d.parent_cid.is_some() { "has no" } else { "needs" }
                ),
            ));
        }
        d.blocks = self.opt(&k("blocks"));
        d.bytes = self.num(&k("bytes"))?;
        d.point = self.opt(&k("point"));
        d.tracking = self.opt(&k("tracking"));
        Ok(d)
    }

    /// The `fileN.*` entries, from `file0` up to the first missing number.
    fn files(&self) -> Result<Vec<FileEntry>> {
        let mut files = Vec::new();
        for i in 0.. {
            let k = |s: &str| format!("file{i}.{s}");
            let Some(name) = self.opt(&k("name")) else { break };
            if name.contains('/') || name == "." || name == ".." || name == FILE_NAME {
                return Err(
                    self.err(&k("name"), format!("file name {name:?} is not a plain name in the backup folder"))
                );
            }
            let r = self.need(&k("role"))?;
            let role = Role::parse(&r).ok_or_else(|| self.err(&k("role"), format!("file role {r:?} is not known")))?;
            let sha256 = self.need(&k("sha256"))?;
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(self.err(&k("sha256"), format!("{sha256:?} is not a SHA-256 (64 hex digits)")));
            }
            files.push(FileEntry {
                name,
                role,
                disk: self.opt(&k("disk")),
                size: self.num(&k("size"))?,
                sha256: sha256.to_ascii_lowercase(),
            });
        }
        Ok(files)
    }

    /// Every disk's file is among the files (a disk in a restic snapshot, `raw`, is checked by its
    /// blob IDs instead), and one file is the `.vmx`.
    fn check_files_named(&self, c: &Catalog) -> Result<()> {
        for d in &c.disks {
            if let Some(f) = d.filename.as_ref().filter(|_| d.export != RAW_EXPORT) {
                if !c.files.iter().any(|x| &x.name == f && x.role == Role::Disk) {
                    return Err(self.err(
                        &format!("disk.{}.filename", d.key),
                        format!("disk {}: {f:?} is not among the files", d.key),
                    ));
                }
            }
        }
        if !c.files.iter().any(|f| f.role == Role::Config) {
            return Err(self.err("config.vmx", "no file has the role `config` (the .vmx)".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Catalog {
        Catalog {
            id: "0123456789abcdef0123456789abcdef".into(),
            kind: Kind::Incremental,
            time: "2024-05-01T02:00:00Z".into(),
            parent: Some(("../full".into(), "ffff".into())),
            base: "ffff".into(),
            display_name: "web \"01\"".into(),
            uuid: "56 4d".into(),
            state: "poweredOff".into(),
            source: "host".into(),
            snapshot: "a snapshot of every disk".into(),
            config_vmx: "[ds1] web/web.vmx".into(),
            config_suspenddir: "[ds1] web".into(),
            config_logdir: "[ds1] web".into(),
            disks: vec![
                DiskEntry {
                    key: "scsi0:0".into(),
                    diskname: "[ds1] web/web.vmdk".into(),
                    filename: Some("scsi0-0-web.vmdk".into()),
                    format: "thin".into(),
                    export: "monosparse".into(),
                    capacity: 1 << 30,
                    cid: 0xdeadbeef,
                    parent_cid: Some(0x12345678),
                    method: Some(Method::Tracking),
                    blocks: Some("scsi0-0-web.blocks".into()),
                    bytes: 65536,
                    point: Some("[ds1] web/web.vmdk".into()),
                    tracking: Some("[ds1] web/web-000002.vmdk".into()),
                    skipped: None,
                },
                DiskEntry {
                    key: "ide0:0".into(),
                    diskname: "[ds1] web/scratch.vmdk".into(),
                    skipped: Some("independent-nonpersistent".into()),
                    ..DiskEntry::default()
                },
            ],
            files: vec![
                FileEntry { name: "web.vmx".into(), role: Role::Config, disk: None, size: 10, sha256: "a".repeat(64) },
                FileEntry {
                    name: "scsi0-0-web.vmdk".into(),
                    role: Role::Disk,
                    disk: Some("scsi0:0".into()),
                    size: 20,
                    sha256: "b".repeat(64),
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let c = sample();
        let text = c.to_text();
        assert!(text.contains("disk.scsi0:0.diskname = \"[ds1] web/web.vmdk\"\n"), "{text}");
        assert_eq!(Catalog::parse(&text, Path::new("catalog")).unwrap(), c);
    }

    #[test]
    fn incomplete_catalogs_name_the_problem() {
        let text = sample().to_text();
        for (cut, what) in [
            ("disk.scsi0:0.cid", "no `disk.scsi0:0.cid`"),
            ("backup.parent.id", "go together"),
            ("file1.name", "is not among the files"),
        ] {
            let t: String = text.lines().filter(|l| !l.starts_with(cut)).map(|l| format!("{l}\n")).collect();
            let e = Catalog::parse(&t, Path::new("catalog")).unwrap_err().to_string();
            assert!(e.contains(what), "{cut}: {e}");
        }
        let t = text.replace("\"incremental\"", "\"weekly\"");
        let e = Catalog::parse(&t, Path::new("catalog")).unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("weekly"), "{e}");
    }
}
