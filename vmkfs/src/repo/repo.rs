//! The repository on a local folder: `config`, `keys/`, `data/XX/`, `index/`, `snapshots/`,
//! `locks/`. Opening reads the snapshots, then the index (restic's read order); a [`Writer`]
//! stores blobs into packs, then the index naming them, and a snapshot last.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vmdk::{HostStorage, Storage};

use super::crypto::{self, Key, KeyError, KeyFile};
use super::host::{hostname, username};
use super::index::{IndexBlob, IndexFile, IndexPack};
use super::pack::{PackBuf, TARGET};
use super::snapshot::Snapshot;
use super::tree::Tree;
use super::{BlobKind, Id};
use crate::error::{Error, Result};

/// Largest blob plaintext read (a tree of a 1 TiB disk in 1 MiB blocks is ~70 MB).
const MAX_BLOB: u64 = 1 << 30;
/// Largest unpacked file (index, snapshot, lock, config) read.
const MAX_FILE: u64 = 1 << 30;
/// A lock older than this is stale (restic's rule).
const STALE: Duration = Duration::from_secs(30 * 60);
/// A held lock is written anew this often.
const REFRESH: Duration = Duration::from_secs(5 * 60);

/// The `config` file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Repository format version (1 or 2).
    pub version: u32,
    /// Repository ID.
    pub id: String,
    /// Parameter of restic's chunker (we cut fixed blocks and never use it).
    pub chunker_polynomial: String,
}

/// An open repository.
pub struct Repo {
    root: PathBuf,
    key: Key,
    /// Its config.
    pub config: Config,
    /// Snapshots, as listed before the index was read.
    pub snapshots: Vec<(Id, Snapshot)>,
    index: HashMap<Id, (Id, IndexBlob)>,
    pack_cache: Mutex<Option<(Id, Arc<dyn vmdk::Backing>)>>,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repo({})", self.root.display())
    }
}

fn host() -> Arc<dyn Storage> {
    HostStorage::shared()
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Io { path: path.to_path_buf(), source: e }
}

/// A repository error naming the file (and offset) and what was expected.
pub fn corrupt(path: &Path, offset: Option<u64>, what: impl Into<String>) -> Error {
    Error::Repo { path: path.to_path_buf(), offset, what: what.into() }
}

/// Where a repository's password may come from, in restic's order: a password file given on the
/// command line, else the file `RESTIC_PASSWORD_FILE` names, else `RESTIC_PASSWORD` itself. The
/// library reads no environment: the caller fills in the two variables.
#[derive(Debug, Clone, Default)]
pub struct PasswordSources {
    /// `--password-file FILE`.
    pub file: Option<PathBuf>,
    /// The value of `RESTIC_PASSWORD_FILE`.
    pub env_file: Option<std::ffi::OsString>,
    /// The value of `RESTIC_PASSWORD`.
    pub env_password: Option<std::ffi::OsString>,
}

/// The password restic would use (see [`PasswordSources`]; a file's content without surrounding
/// white space, as restic reads it).
pub fn password(from: &PasswordSources) -> Result<Vec<u8>> {
    if let Some(f) = from.file.clone().or_else(|| from.env_file.clone().map(PathBuf::from)) {
        let raw = std::fs::read(&f).map_err(|e| io(&f, e))?;
        return Ok(String::from_utf8_lossy(&raw).trim().as_bytes().to_vec());
    }
    if let Some(p) = &from.env_password {
        return Ok(p.clone().into_encoded_bytes());
    }
    Err(Error::Usage(
        "a restic repository needs its password: --password-file FILE, RESTIC_PASSWORD_FILE or RESTIC_PASSWORD".into(),
    ))
}

/// Encodes an unpacked file's plaintext: version byte 2, then zstd-compressed JSON.
fn pack_json<T: Serialize>(v: &T) -> Vec<u8> {
    let json = serde_json::to_vec(v).expect("serializable");
    let mut out = vec![2u8];
    out.extend(zstd::bulk::compress(&json, 3).expect("zstd compresses memory"));
    out
}

/// Reads at most `limit` bytes out of a zstd frame; `None` when it is not one or is longer.
fn unzstd(data: &[u8], limit: u64) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(data).ok()?.take(limit + 1).read_to_end(&mut out).ok()?;
    (out.len() as u64 <= limit).then_some(out)
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    match vmdk::txn::write_file(&host(), path, bytes, false) {
        Ok(()) => Ok(()),
        // Content-addressed: the same name holds the same bytes.
        Err(vmdk::Error::Exists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn list_ids(dir: &Path) -> Result<Vec<Id>> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| io(dir, e))?;
    for e in rd {
        let e = e.map_err(|e| io(dir, e))?;
        if let Some(id) = e.file_name().to_str().and_then(Id::parse) {
            out.push(id);
        }
    }
    out.sort();
    Ok(out)
}

impl Repo {
    /// Creates a repository (format version 2) at `root` (which must not exist or be empty) with
    /// one key for `password`.
    pub fn init(root: &Path, password: &[u8]) -> Result<()> {
        if root.join("config").exists() {
            return Err(Error::Usage(format!("{}: a repository already exists here", root.display())));
        }
        std::fs::create_dir_all(root).map_err(|e| io(root, e))?;
        for d in ["keys", "index", "snapshots", "locks"] {
            std::fs::create_dir_all(root.join(d)).map_err(|e| io(&root.join(d), e))?;
        }
        for i in 0..256 {
            let d = root.join("data").join(format!("{i:02x}"));
            std::fs::create_dir_all(&d).map_err(|e| io(&d, e))?;
        }
        let master = Key::random();
        let kf = KeyFile::new(&master, password, &hostname(), &username(), &crate::text::now_utc());
        let kjson = serde_json::to_vec(&kf).expect("serializable");
        write_new(&root.join("keys").join(Id::of(&kjson).hex()), &kjson)?;
        let mut rid = [0u8; 32];
        crypto::random(&mut rid);
        let cfg = Config {
            version: 2,
            id: crate::text::hex(&rid),
            // restic checks that this is an irreducible polynomial of degree 53; this one is the
            // example of its design document. We cut fixed blocks and never use it.
            chunker_polynomial: "25b468838dcb75".into(),
        };
        let plain = serde_json::to_vec(&cfg).expect("serializable");
        write_new(&root.join("config"), &master.encrypt(&plain))?;
        for d in [root.join("keys"), root.join("data"), root.to_path_buf()] {
            host().sync_dir(&d)?;
        }
        Ok(())
    }

    /// Opens the repository at `root` with `password`: finds the key, reads the config, the
    /// snapshots and the index.
    pub fn open(root: &Path, password: &[u8]) -> Result<Repo> {
        let cfg_path = root.join("config");
        if !cfg_path.is_file() {
            return Err(Error::Usage(format!(
                "{}: not a restic repository (no config file); give --init to create one",
                root.display()
            )));
        }
        let key = Self::find_key(root, password)?;
        let cfg_raw = std::fs::read(&cfg_path).map_err(|e| io(&cfg_path, e))?;
        let plain =
            key.decrypt(&cfg_raw).ok_or_else(|| corrupt(&cfg_path, None, "its MAC does not match the master key"))?;
        let config: Config = Self::decode_unpacked(&cfg_path, &plain)?;
        if config.version != 1 && config.version != 2 {
            return Err(corrupt(&cfg_path, None, format!("format version {}: expected 1 or 2", config.version)));
        }
        let mut repo = Repo {
            root: root.to_path_buf(),
            key,
            config,
            snapshots: Vec::new(),
            index: HashMap::new(),
            pack_cache: Mutex::new(None),
        };
        for id in list_ids(&root.join("snapshots"))? {
            let s: Snapshot = repo.load_unpacked(&root.join("snapshots").join(id.hex()))?;
            repo.snapshots.push((id, s));
        }
        repo.snapshots.sort_by_key(|(id, s)| (super::snapshot::time_key(&s.time), *id));
        for id in list_ids(&root.join("index"))? {
            let f: IndexFile = repo.load_unpacked(&root.join("index").join(id.hex()))?;
            for p in f.packs {
                for b in p.blobs {
                    repo.index.insert(b.id, (p.id, b));
                }
            }
        }
        Ok(repo)
    }

    fn find_key(root: &Path, password: &[u8]) -> Result<Key> {
        let dir = root.join("keys");
        let mut bad = Vec::new();
        for id in list_ids(&dir)? {
            let p = dir.join(id.hex());
            let raw = std::fs::read(&p).map_err(|e| io(&p, e))?;
            let kf: KeyFile = match serde_json::from_slice(&raw) {
                Ok(k) => k,
                Err(e) => {
                    bad.push(format!("{}: {e}", p.display()));
                    continue;
                }
            };
            match kf.open(password) {
                Ok(k) => return Ok(k),
                Err(KeyError::WrongPassword) => {}
                Err(KeyError::Bad(what)) => bad.push(format!("{}: {what}", p.display())),
            }
        }
        Err(corrupt(
            &dir,
            None,
            if bad.is_empty() {
                "no key opens with this password (wrong password)".to_string()
            } else {
                format!("no key opens with this password; unusable keys: {}", bad.join("; "))
            },
        ))
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where pack `id` lives.
    pub fn pack_path(&self, id: &Id) -> PathBuf {
        let h = id.hex();
        self.root.join("data").join(&h[..2]).join(h)
    }

    fn decode_unpacked<T: DeserializeOwned>(path: &Path, plain: &[u8]) -> Result<T> {
        let json = match plain.first() {
            Some(b'{') | Some(b'[') => plain.to_vec(),
            Some(2) => unzstd(&plain[1..], MAX_FILE)
                .ok_or_else(|| corrupt(path, Some(1), "not a zstd frame (or larger than 1 GiB)"))?,
            Some(v) => return Err(corrupt(path, Some(0), format!("encoding version {v}: expected 2 or JSON"))),
            None => return Err(corrupt(path, Some(0), "empty")),
        };
        serde_json::from_slice(&json).map_err(|e| corrupt(path, None, format!("JSON: {e}")))
    }

    /// Reads, decrypts and decodes an unpacked file (index, snapshot, lock).
    pub fn load_unpacked<T: DeserializeOwned>(&self, path: &Path) -> Result<T> {
        let raw = std::fs::read(path).map_err(|e| io(path, e))?;
        if raw.len() as u64 > MAX_FILE {
            return Err(corrupt(path, None, "larger than 1 GiB"));
        }
        let plain = self.key.decrypt(&raw).ok_or_else(|| corrupt(path, None, "its MAC does not match (damaged?)"))?;
        Self::decode_unpacked(path, &plain)
    }

    /// Writes an unpacked file into `dir` (`index`, `snapshots`, `locks`) under its storage ID.
    pub fn save_unpacked<T: Serialize>(&self, dir: &str, v: &T) -> Result<Id> {
        let bytes = self.key.encrypt(&pack_json(v));
        let id = Id::of(&bytes);
        write_new(&self.root.join(dir).join(id.hex()), &bytes)?;
        Ok(id)
    }

    /// Where blob `id` is, if the index has it.
    pub fn blob(&self, id: &Id) -> Option<&IndexBlob> {
        self.index.get(id).map(|(_, b)| b)
    }

    /// Reads blob `id`: decrypted, decompressed, checked against its ID. A damaged pack is an
    /// error naming it and the blob's offset.
    pub fn read_blob(&self, id: &Id) -> Result<Vec<u8>> {
        let (pack, b) = self
            .index
            .get(id)
            .ok_or_else(|| corrupt(&self.root.join("index"), None, format!("blob {id} is in no index")))?;
        let path = self.pack_path(pack);
        let file = {
            let mut c = self.pack_cache.lock().expect("not poisoned");
            match c.as_ref().filter(|(p, _)| p == pack) {
                Some((_, f)) => f.clone(),
                None => {
                    let f = host().open(&path, false)?;
                    *c = Some((*pack, f.clone()));
                    f
                }
            }
        };
        let mut raw = vec![0u8; b.length as usize];
        file.read_exact_at(&mut raw, b.offset)
            .map_err(|e| corrupt(&path, Some(b.offset), format!("blob {id} cannot be read: {e}")))?;
        let plain = self.key.decrypt(&raw).ok_or_else(|| {
            corrupt(&path, Some(b.offset), format!("blob {id}: its MAC does not match (damaged pack)"))
        })?;
        let data = match b.uncompressed_length {
            Some(u) if u as u64 > MAX_BLOB => {
                return Err(corrupt(&path, Some(b.offset), format!("blob {id}: {u} bytes, more than 1 GiB")))
            }
            Some(u) => unzstd(&plain, u as u64)
                .filter(|d| d.len() == u as usize)
                .ok_or_else(|| corrupt(&path, Some(b.offset), format!("blob {id}: not a zstd frame of {u} bytes")))?,
            None => plain,
        };
        if Id::of(&data) != *id {
            return Err(corrupt(&path, Some(b.offset), format!("blob {id}: its content has another SHA-256")));
        }
        Ok(data)
    }

    /// The snapshot `spec` names: `latest`, or an ID or a unique prefix of one.
    pub fn find_snapshot(&self, spec: &str) -> Result<(Id, Snapshot)> {
        let dir = self.root.join("snapshots");
        if spec == "latest" {
            return self.snapshots.last().cloned().ok_or_else(|| corrupt(&dir, None, "the repository has no snapshot"));
        }
        let hits: Vec<_> = self.snapshots.iter().filter(|(id, _)| id.hex().starts_with(spec)).collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Error::Usage(format!("snapshot {spec:?}: no snapshot in {} has this ID", self.root.display()))),
            _ => Err(Error::Usage(format!("snapshot {spec:?}: the prefix names {} snapshots", hits.len()))),
        }
    }

    /// Takes restic's lock (non-exclusive unless `exclusive`): refused while another process holds
    /// a conflicting lock that is not stale.
    pub fn lock(&self, exclusive: bool) -> Result<Lock<'_>> {
        self.remove_dead_locks()?;
        self.check_locks(exclusive, None)?;
        let mut l = Lock { repo: self, exclusive, id: None, written: Instant::now() };
        l.write()?;
        // Another process may have written its lock meanwhile: look again.
        std::thread::sleep(Duration::from_millis(100));
        if let Err(e) = self.check_locks(exclusive, l.id) {
            drop(l);
            return Err(e);
        }
        Ok(l)
    }

    /// Removes the locks of processes of this host that are gone (a killed backup's), as
    /// `restic unlock` does; restic's own exclusive commands refuse any lock, stale or not.
    fn remove_dead_locks(&self) -> Result<()> {
        let dir = self.root.join("locks");
        for id in list_ids(&dir)? {
            let p = dir.join(id.hex());
            if let Ok(l) = self.load_unpacked::<LockFile>(&p) {
                if l.hostname == hostname() && !rdm::process_alive(l.pid as u32) {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        Ok(())
    }

    fn check_locks(&self, exclusive: bool, ours: Option<Id>) -> Result<()> {
        let dir = self.root.join("locks");
        for id in list_ids(&dir)? {
            if Some(id) == ours {
                continue;
            }
            let Ok(l) = self.load_unpacked::<LockFile>(&dir.join(id.hex())) else { continue };
            if l.is_stale() || !(exclusive || l.exclusive) {
                continue;
            }
            return Err(Error::Refused(format!(
                "{}: locked by {} (pid {} on {}, since {}{}); try again later",
                self.root.display(),
                if l.exclusive { "an exclusive lock" } else { "a lock" },
                l.pid,
                l.hostname,
                l.time,
                if exclusive { "" } else { ": restic prune or check is running" }
            )));
        }
        Ok(())
    }
}

/// A `locks/` file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LockFile {
    time: String,
    exclusive: bool,
    hostname: String,
    #[serde(default)]
    username: String,
    pid: i64,
    #[serde(default)]
    uid: u32,
    #[serde(default)]
    gid: u32,
}

impl LockFile {
    fn is_stale(&self) -> bool {
        let age = crate::text::parse_utc(&self.time).map(|t| crate::text::unix_now().saturating_sub(t));
        if age.is_some_and(|a| a > STALE.as_secs()) {
            return true;
        }
        // A lock of this machine whose process is gone.
        self.hostname == hostname() && !rdm::process_alive(self.pid as u32)
    }
}

/// A held lock: removed when dropped.
pub struct Lock<'a> {
    repo: &'a Repo,
    exclusive: bool,
    id: Option<Id>,
    written: Instant,
}

impl Lock<'_> {
    fn write(&mut self) -> Result<()> {
        let f = LockFile {
            time: crate::text::now_utc(),
            exclusive: self.exclusive,
            hostname: hostname(),
            username: username(),
            pid: std::process::id() as i64,
            uid: 0,
            gid: 0,
        };
        let new = self.repo.save_unpacked("locks", &f)?;
        if let Some(old) = self.id.replace(new) {
            let _ = std::fs::remove_file(self.repo.root.join("locks").join(old.hex()));
        }
        self.written = Instant::now();
        Ok(())
    }

    /// Writes the lock anew when it is due (every 5 minutes), so it never looks stale.
    pub fn refresh(&mut self) -> Result<()> {
        if self.written.elapsed() >= REFRESH {
            self.write()?;
        }
        Ok(())
    }
}

impl Drop for Lock<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            let _ = std::fs::remove_file(self.repo.root.join("locks").join(id.hex()));
        }
    }
}

/// Stores blobs (once each), then the index of the packs written; the caller saves the snapshot
/// after [`Writer::finish`].
pub struct Writer<'a> {
    repo: &'a Repo,
    lock: Lock<'a>,
    data: PackBuf,
    tree: PackBuf,
    written: Vec<IndexPack>,
    added: HashMap<Id, ()>,
    /// Blob bytes stored (encrypted, as in the packs).
    pub stored: u64,
}

/// A tree blob's JSON on its way into the repository: hashed (its ID), compressed and counted.
struct HashAndCompress {
    sha: Sha256,
    zstd: zstd::stream::Encoder<'static, Vec<u8>>,
    len: u64,
}

impl std::io::Write for HashAndCompress {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sha.update(buf);
        self.zstd.write_all(buf)?;
        self.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What one blob became before it is put into a pack.
struct Sealed {
    id: Id,
    encrypted: Vec<u8>,
    uncompressed: Option<u32>,
}

impl<'a> Writer<'a> {
    /// A writer holding a non-exclusive lock on `repo`.
    pub fn new(repo: &'a Repo) -> Result<Writer<'a>> {
        if repo.config.version < 2 {
            return Err(Error::Usage(format!(
                "{}: a format version 1 repository (restic migrate upgrade_repo_v2 makes it version 2)",
                repo.root.display()
            )));
        }
        let lock = repo.lock(false)?;
        Ok(Writer {
            repo,
            lock,
            data: PackBuf::new(BlobKind::Data),
            tree: PackBuf::new(BlobKind::Tree),
            written: Vec::new(),
            added: HashMap::new(),
            stored: 0,
        })
    }

    /// True when the repository (or this writer) has blob `id`.
    pub fn has(&self, id: &Id) -> bool {
        self.added.contains_key(id) || self.repo.index.contains_key(id)
    }

    fn seal(&self, id: Id, plain: &[u8]) -> Sealed {
        let z = zstd::bulk::compress(plain, 3).expect("zstd compresses memory");
        if z.len() < plain.len() {
            Sealed { id, encrypted: self.repo.key.encrypt(&z), uncompressed: Some(plain.len() as u32) }
        } else {
            Sealed { id, encrypted: self.repo.key.encrypt(plain), uncompressed: None }
        }
    }

    /// Stores `blobs` of `kind` (hashed, compressed and encrypted in parallel), skipping those the
    /// repository already has; returns their IDs in order.
    pub fn add(&mut self, kind: BlobKind, blobs: &[&[u8]]) -> Result<Vec<Id>> {
        let ids: Vec<Id> = blobs.par_iter().map(|b| Id::of(b)).collect();
        let mut todo: Vec<usize> = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            if !self.has(id) && !todo.iter().any(|&j| ids[j] == *id) {
                todo.push(i);
            }
        }
        let sealed: Vec<Sealed> = todo.par_iter().map(|&i| self.seal(ids[i], blobs[i])).collect();
        for s in sealed {
            self.store(kind, s)?;
        }
        Ok(ids)
    }

    /// Stores tree blob `tree` unless the repository has it; returns its ID. The JSON goes
    /// through SHA-256 and zstd as it is written, never whole in memory (a 1 TiB disk's content
    /// list is ~70 MB), and is stored compressed whatever the ratio (format version 2 allows it).
    pub fn add_tree(&mut self, tree: Tree) -> Result<Id> {
        let mut tee = HashAndCompress {
            sha: Sha256::new(),
            zstd: zstd::stream::Encoder::new(Vec::new(), 3).expect("zstd compresses memory"),
            len: 0,
        };
        {
            let mut buf = std::io::BufWriter::with_capacity(1 << 20, &mut tee);
            tree.encode_into(&mut buf).and_then(|_| buf.flush()).expect("writing to memory cannot fail");
        }
        let id = Id(tee.sha.finalize().into());
        let len = u32::try_from(tee.len).map_err(|_| {
            Error::Usage(format!("a tree of {} bytes: restic's pack header holds at most 4 GiB a blob", tee.len))
        })?;
        let z = tee.zstd.finish().expect("zstd compresses memory");
        if !self.has(&id) {
            let s = Sealed { id, encrypted: self.repo.key.encrypt(&z), uncompressed: Some(len) };
            self.store(BlobKind::Tree, s)?;
        }
        Ok(id)
    }

    /// Puts a sealed blob into the open pack of its kind, closing the pack when it is full.
    fn store(&mut self, kind: BlobKind, s: Sealed) -> Result<()> {
        self.added.insert(s.id, ());
        self.stored += s.encrypted.len() as u64;
        let pack = if kind == BlobKind::Data { &mut self.data } else { &mut self.tree };
        pack.push(s.id, &s.encrypted, s.uncompressed);
        if pack.len() >= TARGET {
            self.flush(kind)?;
        }
        Ok(())
    }

    fn flush(&mut self, kind: BlobKind) -> Result<()> {
        let slot = if kind == BlobKind::Data { &mut self.data } else { &mut self.tree };
        let full = std::mem::replace(slot, PackBuf::new(kind));
        if full.is_empty() {
            return Ok(());
        }
        let (id, bytes, entry) = full.finish(&self.repo.key);
        write_new(&self.repo.pack_path(&id), &bytes)?;
        self.written.push(entry);
        self.lock.refresh()
    }

    /// Writes the open packs and the index of every pack written; the repository now holds the
    /// blobs (a snapshot may reference them). Returns the lock, to hold until the snapshot is saved.
    pub fn finish(mut self) -> Result<Lock<'a>> {
        self.flush(BlobKind::Data)?;
        self.flush(BlobKind::Tree)?;
        if !self.written.is_empty() {
            let f = IndexFile { supersedes: Vec::new(), packs: std::mem::take(&mut self.written) };
            self.repo.save_unpacked("index", &f)?;
        }
        Ok(self.lock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::tree::Node;

    #[test]
    fn streamed_trees_read_back_as_encoded() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        Repo::init(&root, b"pw").unwrap();
        let repo = Repo::open(&root, b"pw").unwrap();
        let z = Id::of(&[0u8; 16]);
        let tree = || Tree { nodes: vec![Node::file("disk.raw", 1 << 40, vec![z; 100_000], "2026-12-01T00:00:00Z")] };
        let mut w = Writer::new(&repo).unwrap();
        let id = w.add_tree(tree()).unwrap();
        let stored = w.stored;
        assert!(stored > 0 && stored < 100_000, "100 000 equal IDs (6.7 MB of JSON) compress: {stored} bytes");
        assert_eq!(w.add_tree(tree()).unwrap(), id);
        assert_eq!(w.stored, stored, "a tree the writer has is not stored again");
        drop(w.finish().unwrap());
        let repo = Repo::open(&root, b"pw").unwrap();
        let plain = repo.read_blob(&id).unwrap();
        assert_eq!(Id::of(&plain), id);
        assert_eq!(plain, tree().encode());
    }
}
