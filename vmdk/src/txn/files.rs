//! New files put in place together: the one way a disk (or part of one) is created.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::intent::{Intent, Step};
use super::temp_name;
use crate::error::{Error, Result};
use crate::storage::{Backing, Storage};

/// A set of new files being made under temporary names, for one operation whose primary disk is
/// reserved (an [`Intent`] without steps) from the start, so that two processes creating the same
/// disk exclude each other before either has copied anything.
///
/// [`NewFiles::commit`] records the renames (final names that must not exist yet — or, when
/// replacing a disk, the renames over it followed by the removal of every file of the old disk the
/// new one does not reuse), then makes them; an interruption after that point is finished by the
/// next command. Dropping an uncommitted set removes its temporary files and the reservation.
pub struct NewFiles {
    storage: Arc<dyn Storage>,
    intent: Option<Intent>,
    /// `(temporary, final)`, in the order they go into place (the primary file last).
    files: Vec<(PathBuf, PathBuf)>,
    /// Files of a replaced disk, removed after the new ones are in place.
    replaced: Vec<PathBuf>,
    force: bool,
}

impl std::fmt::Debug for NewFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewFiles").field("files", &self.files).field("replaced", &self.replaced).finish()
    }
}

impl NewFiles {
    /// Reserves the creation of `primary` (its main file) for operation `op`. Without `force`, a
    /// `primary` that exists is [`Error::Exists`]; with it, the caller names the old disk's files
    /// with [`NewFiles::replaces`].
    pub fn begin(storage: &Arc<dyn Storage>, primary: &Path, op: &str, force: bool) -> Result<NewFiles> {
        let intent = if storage.is_writable() { Some(Intent::begin(storage, primary, op, &[], None)?) } else { None };
        if !force && storage.exists(primary) {
            return Err(Error::Exists { path: primary.into() });
        }
        Ok(NewFiles { storage: storage.clone(), intent, files: Vec::new(), replaced: Vec::new(), force })
    }

    /// New files for an operation that already holds its intent (adding extents to an existing
    /// disk): none of them may replace an existing file.
    pub fn within(storage: &Arc<dyn Storage>, intent: Intent) -> NewFiles {
        NewFiles {
            storage: storage.clone(),
            intent: Some(intent),
            files: Vec::new(),
            replaced: Vec::new(),
            force: false,
        }
    }

    /// Creates the file that will become `fin`, under a temporary name, open for writing and
    /// exclusively locked. Without `force` an existing `fin` is [`Error::Exists`].
    pub fn create(&mut self, fin: &Path) -> Result<Arc<dyn Backing>> {
        if !self.force && self.storage.exists(fin) {
            return Err(Error::Exists { path: fin.into() });
        }
        if self.files.iter().any(|(_, f)| f == fin) {
            return Err(Error::InvalidArgument(format!("{} would be created twice", fin.display())));
        }
        let tmp = temp_name(fin);
        let b = self.storage.create_new(&tmp)?;
        self.files.push((tmp, fin.to_path_buf()));
        Ok(b)
    }

    /// Names the files of the disk being replaced (with `force`): those the new disk does not
    /// overwrite are removed once it is in place.
    pub fn replaces(&mut self, old: Vec<PathBuf>) {
        self.replaced = old;
    }

    /// `(final, temporary)` path of every file, in the order they go into place.
    pub fn paths(&self) -> Vec<(PathBuf, PathBuf)> {
        self.files.iter().map(|(tmp, fin)| (fin.clone(), tmp.clone())).collect()
    }

    /// Final paths, in the order they go into place.
    pub fn final_paths(&self) -> Vec<PathBuf> {
        self.files.iter().map(|f| f.1.clone()).collect()
    }

    /// The steps that put the files in place: renames (the primary last), then removals of the
    /// replaced disk's other files.
    pub fn steps(&self) -> Vec<Step> {
        let mut steps: Vec<Step> = self
            .files
            .iter()
            .map(|(tmp, fin)| {
                let to = self.storage.real_path(fin);
                if self.force {
                    Step::Rename { from: self.storage.real_path(tmp), to }
                } else {
                    Step::RenameNew { from: self.storage.real_path(tmp), to }
                }
            })
            .collect();
        let finals: Vec<PathBuf> = self.files.iter().map(|f| self.storage.real_path(&f.1)).collect();
        for old in &self.replaced {
            let old = self.storage.real_path(old);
            if !finals.contains(&old) {
                steps.push(Step::Remove { path: old });
            }
        }
        steps
    }

    /// Puts the files in place (see the type's text), with `extra` steps made after them (in the
    /// same record). The files must be written and synced.
    pub fn commit(mut self, extra: Vec<Step>) -> Result<()> {
        let mut steps = self.steps();
        steps.extend(extra);
        match self.intent.take() {
            Some(mut intent) => {
                // A new disk (nothing replaced, nothing else changed) is undone if interrupted before
                // it becomes visible; anything else is finished.
                if !self.force && self.replaced.is_empty() && steps.iter().all(|s| matches!(s, Step::RenameNew { .. }))
                {
                    intent.set_creation_steps(steps)?;
                } else {
                    intent.set_steps(steps)?;
                }
                self.files.clear();
                intent.finish()
            }
            None => {
                // A storage without intents (never the host): rename in order.
                for (tmp, fin) in std::mem::take(&mut self.files) {
                    if self.force {
                        self.storage.rename(&tmp, &fin)?;
                    } else {
                        self.storage.rename_noreplace(&tmp, &fin)?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl Drop for NewFiles {
    fn drop(&mut self) {
        for (tmp, _) in &self.files {
            let _ = self.storage.remove(tmp);
        }
    }
}
