//! The backup a repair writes before it changes anything.
//!
//! **Name**: `NAME.repair-N.bak` beside the disk's main file `NAME` (`disk.vmdk.repair-1.bak`),
//! `N` the first number from 1 that is free. The name does not depend on the clock, so a repair
//! that was killed and re-run leaves exactly the files an uninterrupted one leaves: the re-run keeps
//! the backup the interrupted run wrote (the one recorded by the same process, as the repair's
//! intent record names it, holding every block the re-run still changes). The name is no temporary
//! name of the transaction home (`.NAME.vmkfs-PID-TAG.tmp`), so the stale-file sweep never removes
//! it, and it does not end in `.vmdk` or `.REDO`, so it is never taken for a disk or a child.
//!
//! **Format** (version 1): a header line `vmkfs-repair-backup 1 CRC`, where `CRC` is the CRC-32
//! (8 lower-case hex digits) of everything after that line, then one JSON object:
//!
//! ```json
//! {"disk": "/vm/disk.vmdk", "pid": 4242, "created": 1767225600,
//!  "blocks": [{"file": "/vm/disk.vmdk", "offset": 10752, "data": "0000000080010000…"}]}
//! ```
//!
//! `created` is in seconds since 1970 (UTC). Each block is one whole metadata structure — a
//! header, a grain directory, a grain table — as it was before the repair: the bytes (`data`, hex)
//! and where they were (`file`, `offset`). Writing every block back at its offset restores the
//! metadata byte for byte: [`Backup::restore`], or by hand, per block,
//! `echo DATA | xxd -r -p | dd of=FILE bs=1 seek=OFFSET conv=notrunc`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Change;
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::txn::sealed::{seal, unseal};
use crate::txn::{file_name, folder, temp_name};

/// The first word of the header line.
const MAGIC: &str = "vmkfs-repair-backup";
/// The format version.
const VERSION: u32 = 1;
/// Largest backup read (metadata only: a 2 TiB extent's tables are 128 MiB, twice in hex).
const MAX_BYTES: u64 = 1 << 30;

/// One saved metadata block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The file it is in.
    pub file: PathBuf,
    /// Its byte offset there.
    pub offset: u64,
    /// The bytes as they were, hex-encoded in the file.
    #[serde(with = "hex_bytes")]
    pub data: Vec<u8>,
}

/// A repair's backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// The disk repaired (its main file, real path).
    pub disk: PathBuf,
    /// The process that made the repair (its intent record's).
    pub pid: u32,
    /// When it was written, in seconds since 1970.
    pub created: u64,
    /// The blocks, in the order saved.
    pub blocks: Vec<Block>,
}

impl Backup {
    fn encode(&self) -> Vec<u8> {
        seal(MAGIC, VERSION, self)
    }

    fn decode(raw: &[u8], path: &Path) -> Result<Backup> {
        unseal(raw, path, MAGIC, VERSION, "repair backup")
    }

    /// Reads the backup at `path`.
    pub fn read(storage: &dyn Storage, path: &Path) -> Result<Backup> {
        let b = storage.open(path, false)?;
        let len = b.len()?;
        if len > MAX_BYTES {
            return Err(Error::corrupt(path, 0, format!("repair backup of {len} bytes is larger than {MAX_BYTES}")));
        }
        let mut raw = vec![0u8; len as usize];
        b.read_exact_at(&mut raw, 0)?;
        Backup::decode(&raw, path)
    }

    /// Writes every block back where it was (the metadata as before the repair), syncing each
    /// file. The disk must not be in use.
    pub fn restore(&self, storage: &dyn Storage) -> Result<()> {
        for blk in &self.blocks {
            let f = storage.open(&blk.file, true)?;
            f.write_all_at(&blk.data, blk.offset)?;
            f.sync()?;
        }
        Ok(())
    }

    /// True when every block `changes` touch is saved here.
    fn covers(&self, storage: &dyn Storage, changes: &[Change]) -> bool {
        changes.iter().all(|c| {
            let file = storage.real_path(&c.file);
            self.blocks.iter().any(|b| {
                b.file == file && b.offset <= c.block.0 && c.block.0 + c.block.1 <= b.offset + b.data.len() as u64
            })
        })
    }
}

/// The name of backup number `n` of the disk whose main file is `disk`.
pub fn backup_path(disk: &Path, n: u32) -> PathBuf {
    disk.with_file_name(format!("{}.repair-{n}.bak", file_name(disk)))
}

/// The number of a backup of `disk` from its file name, if it is one.
fn number_of(disk: &Path, name: &str) -> Option<u32> {
    let n = name.strip_prefix(&format!("{}.repair-", file_name(disk)))?.strip_suffix(".bak")?;
    n.bytes().all(|b| b.is_ascii_digit()).then(|| n.parse().ok()).flatten()
}

/// The backup a repair by process `pid` of `disk` (real path) wrote, holding every block
/// `changes` touch (an interrupted repair's, which its re-run keeps), if there is one.
pub fn find(storage: &dyn Storage, disk: &Path, pid: u32, changes: &[Change]) -> Result<Option<PathBuf>> {
    let mut found: Option<(u32, PathBuf)> = None;
    for name in storage.list_dir(folder(disk)) {
        let Some(n) = number_of(disk, &name) else { continue };
        let p = folder(disk).join(&name);
        let Ok(b) = Backup::read(storage, &p) else { continue };
        if b.pid == pid && b.disk == disk && b.covers(storage, changes) && found.as_ref().is_none_or(|(m, _)| n > *m) {
            found = Some((n, p));
        }
    }
    Ok(found.map(|f| f.1))
}

/// Saves, before any of `changes` is made, every block they touch (each once) to a new backup of
/// `disk` (real path) made by process `pid`: written and synced under a temporary name, then given
/// the first free backup name, the folder synced. Returns its path.
pub fn save(storage: &Arc<dyn Storage>, disk: &Path, pid: u32, changes: &[Change]) -> Result<PathBuf> {
    let mut blocks: Vec<Block> = Vec::new();
    for c in changes {
        let file = storage.real_path(&c.file);
        if blocks.iter().any(|b| b.file == file && b.offset == c.block.0 && b.data.len() as u64 == c.block.1) {
            continue;
        }
        let f = storage.open(&c.file, false)?;
        let mut data = vec![0u8; c.block.1 as usize];
        f.read_exact_at(&mut data, c.block.0)?;
        blocks.push(Block { file, offset: c.block.0, data });
    }
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let bytes = Backup { disk: disk.to_path_buf(), pid, created, blocks }.encode();
    let first = backup_path(disk, 1);
    let tmp = temp_name(&first);
    let b = storage.create_new(&tmp)?;
    if let Err(e) = b.write_all_at(&bytes, 0).and_then(|_| b.sync()) {
        let _ = storage.remove(&tmp);
        return Err(e);
    }
    let mut n = 1;
    loop {
        let to = backup_path(disk, n);
        match storage.rename_noreplace(&tmp, &to) {
            Ok(()) => {
                storage.sync_dir(folder(disk))?;
                return Ok(to);
            }
            Err(Error::Exists { .. }) if n < u32::MAX => n += 1,
            Err(e) => {
                let _ = storage.remove(&tmp);
                return Err(e);
            }
        }
    }
}

/// Bytes as lower-case hex in JSON.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        let bad = || serde::de::Error::custom("data is not hex");
        if !s.len().is_multiple_of(2) {
            return Err(bad());
        }
        (0..s.len())
            .step_by(2)
            .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or_else(bad))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_round_trip() {
        let d = Path::new("/vm/disk.vmdk");
        assert_eq!(backup_path(d, 3), Path::new("/vm/disk.vmdk.repair-3.bak"));
        assert_eq!(number_of(d, "disk.vmdk.repair-12.bak"), Some(12));
        assert_eq!(number_of(d, "disk.vmdk.repair-x.bak"), None);
        assert!(!crate::txn::is_temp_name("disk.vmdk.repair-1.bak"));
        let b = Backup {
            disk: d.into(),
            pid: 7,
            created: 1,
            blocks: vec![Block { file: d.into(), offset: 512, data: vec![0, 1, 0xfe] }],
        };
        let raw = b.encode();
        assert_eq!(Backup::decode(&raw, d).unwrap(), b);
        let mut bad = raw.clone();
        let n = bad.len();
        bad[n - 5] ^= 1;
        assert!(Backup::decode(&bad, d).unwrap_err().to_string().contains("CRC-32"));
    }
}
