//! The transaction home: every creation, replacement, rename and removal of a disk's files goes
//! through this module, so that an interruption at any system call leaves each disk reading exactly
//! as before the operation or exactly as after it, and the next command (or re-running the same
//! one) finishes what was interrupted.
//!
//! The pieces:
//! - [`temp`]: temporary names (`.NAME.vmkfs-PID-TAG.tmp`) beside the final ones, and the sweep
//!   that removes those a dead process left behind.
//! - [`replace`]: atomic replacement of one small file (a descriptor): a new file, synced, renamed
//!   over the old one, the folder synced.
//! - [`intent`]: the intent record of a multi-file operation (`.NAME.vmkfs-intent`): the list of
//!   renames, removals and in-place writes that take the files from "before" to "after", written
//!   (and synced) before the first of them is made. Until it is removed, every command on a disk it
//!   names first replays it ([`settle`]); an operation whose data phase was interrupted (a commit
//!   copying into its parent) instead refuses every command but its own re-run
//!   ([`Error::Interrupted`](crate::Error::Interrupted)).
//! - [`files`]: a set of new files under temporary names, put in place together through an intent
//!   (creating a disk, splitting an extended disk), never replacing a file it did not create
//!   (`RENAME_NOREPLACE`) unless asked to replace a disk, whose files then all go.
//!
//! Locks are part of the same protocol ([`crate::storage::LockMode`]): a command holds an
//! exclusive lock on the main file of every link whose files it changes and a shared lock on every
//! link it reads through, for its whole duration; the owner of an intent holds an exclusive lock on
//! the intent file, which is how a later command tells a running operation (wait or refuse) from an
//! interrupted one (finish it).

pub mod files;
pub mod intent;
pub mod replace;
pub mod sealed;
pub mod temp;

pub use files::NewFiles;
pub use intent::{pending, settle, Intent, Record, Step};
pub use replace::{replace_file, write_file};
pub use temp::{is_temp_name, sweep_stale_temps, temp_name};

use std::path::{Path, PathBuf};

/// The folder a path lies in (`.` for a bare file name).
pub fn folder(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// The file name of a path as a string (empty when it has none).
pub fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// VMware's lock folder for a file: `NAME.lck` beside it (hosted products create one for every disk
/// file a running VM has open).
pub fn vmware_lock_folder(path: &Path) -> PathBuf {
    path.with_file_name(format!("{}.lck", file_name(path)))
}
