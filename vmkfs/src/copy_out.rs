//! `--volume V --copy-out PATH DEST`: a plain file of a VMFS volume (a descriptor, a `.vmx`, a
//! flat extent, a system file — any type but a directory or a raw device mapping) copied to a host
//! file with its exact size and modification time.
//!
//! Only the file's data ranges are read and written: holes and to-be-zeroed blocks stay holes of
//! the destination. The destination is written under a temporary name through the transaction
//! home (`vmdk::txn::NewFiles`) and renamed into place when complete, so an interruption leaves
//! no partial file.

use std::path::{Path, PathBuf};

use vmdk::txn::NewFiles;
use vmdk::HostStorage;

use crate::error::{Error, Result};
use crate::vmfs::Volume;

/// Bytes read and written per step.
const CHUNK: u64 = 1 << 20;

/// What [`copy_out`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CopiedOut {
    /// The destination.
    pub path: PathBuf,
    /// Its size in bytes (the file's length).
    pub size: u64,
    /// Bytes of data copied (the rest are holes).
    pub data: u64,
    /// The modification time given to the destination (seconds since 1970, UTC).
    pub mtime: u32,
}

/// Copies file `path` of `vol` to the host file `dest` (replacing an existing one only with
/// `force`), with the file's length and modification time.
pub fn copy_out(vol: &Volume, path: &str, dest: &Path, force: bool) -> Result<CopiedOut> {
    let file = vol.open_file(path)?;
    let stat = vol.stat(path)?;
    let size = file.len();
    let storage = HostStorage::shared();
    let mut files = NewFiles::begin(&storage, dest, "copy-out", force)?;
    let out = files.create(dest)?;
    out.set_len(size)?;
    let mut data = 0;
    let mut buf = Vec::new();
    for (start, len) in file.data_runs(0, size)? {
        let end = start.checked_add(len).filter(|e| *e <= size).ok_or_else(|| {
            Error::Usage(format!("{path}: a data range {start}+{len} reaches past the file's {size} bytes"))
        })?;
        let mut pos = start;
        while pos < end {
            let n = (end - pos).min(CHUNK) as usize;
            buf.resize(n, 0);
            file.read_exact_at(&mut buf, pos)?;
            out.write_all_at(&buf, pos)?;
            pos += n as u64;
            data += n as u64;
        }
    }
    out.sync()?;
    drop(out);
    files.commit(Vec::new())?;
    set_mtime(dest, stat.mtime)?;
    Ok(CopiedOut { path: dest.to_path_buf(), size, data, mtime: stat.mtime })
}

fn set_mtime(dest: &Path, mtime: u32) -> Result<()> {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime.into());
    let io = |e| Error::Io { path: dest.to_path_buf(), source: e };
    let f = std::fs::File::options().write(true).open(dest).map_err(io)?;
    f.set_modified(t).map_err(io)
}
