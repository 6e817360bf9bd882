//! Atomic replacement of one file.

use std::path::Path;
use std::sync::Arc;

use super::{folder, temp_name};
use crate::error::Result;
use crate::storage::{Backing, Storage};

/// Replaces the file at `path` (which must be the real path, not a symbolic link to it) with
/// `bytes`: a new file under a temporary name, written and synced, renamed over `path`, the folder
/// synced. Readers see the old content or the new, never a mix. The new file is returned open and
/// exclusively locked (it was created so), so a caller holding the lock of the old file keeps
/// holding the disk's lock across the replacement.
pub fn replace_file(storage: &Arc<dyn Storage>, path: &Path, bytes: &[u8]) -> Result<Arc<dyn Backing>> {
    put_file(storage, path, bytes, true)
}

/// Writes a new file at `path` holding `bytes`, whole or not at all (under a temporary name,
/// synced, renamed into place, the folder synced). Without `replace` an existing `path` — a file,
/// or a symbolic link, which is never followed — is [`crate::Error::Exists`] and nothing changes;
/// with it, whatever `path` names is replaced (a symbolic link itself, not its target).
pub fn write_file(storage: &Arc<dyn Storage>, path: &Path, bytes: &[u8], replace: bool) -> Result<()> {
    put_file(storage, path, bytes, replace).map(drop)
}

fn put_file(storage: &Arc<dyn Storage>, path: &Path, bytes: &[u8], replace: bool) -> Result<Arc<dyn Backing>> {
    let tmp = temp_name(path);
    let b = storage.create_new(&tmp)?;
    let written = b.write_all_at(bytes, 0).and_then(|_| b.sync()).and_then(|_| {
        if replace {
            storage.rename(&tmp, path)
        } else {
            storage.rename_noreplace(&tmp, path)
        }
    });
    if let Err(e) = written {
        let _ = storage.remove(&tmp);
        return Err(e);
    }
    storage.sync_dir(folder(path))?;
    Ok(b)
}
