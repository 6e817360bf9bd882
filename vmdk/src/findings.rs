//! What checks find and repairs change: [`Finding`], [`Change`], [`Report`], and the [`Sink`] the
//! per-extent checks (in `crate::extent`) write into. The orchestration is in [`crate::check`];
//! these types sit below both, so the extents never reach up into it.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Findings kept in full; a badly damaged table can make thousands of entries findings, and the
/// rest are only counted ([`Report::omitted`]).
pub const MAX_FINDINGS: usize = 1000;

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file it is in.
    pub file: PathBuf,
    /// Byte offset in that file.
    pub offset: u64,
    /// What is wrong.
    pub what: String,
    /// What repair changed about it (only once changed).
    pub repaired: Option<String>,
    /// Why repair could not decide what to do about it (then repair changed nothing at all).
    pub undecided: Option<String>,
}

/// One change repair made (or would make): bytes of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The file changed.
    pub file: PathBuf,
    /// Byte offset of the change.
    pub offset: u64,
    /// The bytes there before.
    pub before: Vec<u8>,
    /// The bytes written.
    pub after: Vec<u8>,
    /// What the bytes are (`grain table entry for grain 7 …`).
    pub what: String,
    /// The metadata block holding them (`(offset, length)` in `file`: a header, a directory, a
    /// table), saved whole to the backup before anything changes.
    pub block: (u64, u64),
    /// Made after every other change has been synced (the unclean-shutdown flag).
    pub last: bool,
}

/// The result of a check or a repair.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Problems, in the order found (at most [`MAX_FINDINGS`]).
    pub findings: Vec<Finding>,
    /// Problems found beyond [`MAX_FINDINGS`], not listed.
    pub omitted: u64,
    /// Files examined.
    pub files: Vec<PathBuf>,
    /// The changes repair made, in the order made.
    pub changes: Vec<Change>,
    /// The backup of the metadata repair changed ([`crate::check::backup`]).
    pub backup: Option<PathBuf>,
}

impl Report {
    /// True when nothing was found.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty() && self.omitted == 0
    }

    /// Findings that were not repaired (every finding when checking only).
    pub fn unrepaired(&self) -> u64 {
        self.findings.iter().filter(|f| f.repaired.is_none()).count() as u64 + self.omitted
    }

    /// True when a repair could not decide something, and so changed nothing.
    pub fn refused(&self) -> bool {
        self.findings.iter().any(|f| f.undecided.is_some())
    }
}

/// What became of a problem while repairing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Nothing planned (yet).
    Open,
    /// A change was planned for it.
    Planned,
    /// It cannot be decided.
    Undecided,
}

/// Where the per-kind checks put what they find and, when repairing, the changes they decide.
#[derive(Debug)]
pub struct Sink {
    pub(crate) repair: bool,
    /// The disk's main file (an I/O error on it is an error, not a finding).
    pub(crate) main: PathBuf,
    pub(crate) findings: Vec<Finding>,
    /// One per problem found, listed or not.
    pub(crate) fates: Vec<Fate>,
    /// The planned repair of each listed finding.
    pub(crate) notes: Vec<Option<String>>,
    pub(crate) changes: Vec<Change>,
}

/// A problem's number in a [`Sink`].
pub type ProblemId = usize;

impl Sink {
    pub(crate) fn new(main: &Path, repair: bool) -> Sink {
        Sink {
            repair,
            main: main.to_path_buf(),
            findings: Vec::new(),
            fates: Vec::new(),
            notes: Vec::new(),
            changes: Vec::new(),
        }
    }

    /// True when repairing: the checks then also decide what to change.
    pub fn repairing(&self) -> bool {
        self.repair
    }

    /// Records a problem at byte `offset` of `file`.
    pub fn problem(&mut self, file: &Path, offset: u64, what: impl Into<String>) -> ProblemId {
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(Finding {
                file: file.to_path_buf(),
                offset,
                what: what.into(),
                repaired: None,
                undecided: None,
            });
            self.notes.push(None);
        }
        self.fates.push(Fate::Open);
        self.fates.len() - 1
    }

    /// Records the reader's error `e` as a problem when it is about the disk's content (a
    /// corrupt or unsupported structure, a missing or unreadable extent file, a path that leaves
    /// the folder); other errors (locks, I/O on the main file) are returned.
    pub fn error(&mut self, e: Error) -> Result<ProblemId> {
        match finding_of(&e, &self.main) {
            Some((file, offset, what)) => Ok(self.problem(&file, offset, what)),
            None => Err(e),
        }
    }

    /// `r`'s value, or `None` after recording its error (see [`Sink::error`]).
    pub fn result<T>(&mut self, r: Result<T>) -> Result<Option<T>> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(e) => self.error(e).map(|_| None),
        }
    }

    /// Plans `changes` as the repair of problems `ids` (`note` says what they do).
    pub fn fix(&mut self, ids: &[ProblemId], note: &str, changes: Vec<Change>) {
        if !self.repair {
            return;
        }
        for &i in ids {
            if self.fates[i] != Fate::Undecided {
                self.fates[i] = Fate::Planned;
                if let Some(n) = self.notes.get_mut(i) {
                    *n = Some(note.to_string());
                }
            }
        }
        self.changes.extend(changes);
    }

    /// Records that problems `ids` cannot be decided, and why.
    pub fn cannot(&mut self, ids: &[ProblemId], why: &str) {
        if !self.repair {
            return;
        }
        for &i in ids {
            self.fates[i] = Fate::Undecided;
            if let Some(f) = self.findings.get_mut(i) {
                f.undecided = Some(why.to_string());
            }
        }
    }

    /// True when nothing was found so far.
    pub(crate) fn is_empty(&self) -> bool {
        self.fates.is_empty()
    }
}

/// The file, offset and text of a finding for the reader's error `e`, when `e` is about the disk's
/// content (see [`Sink::error`]); `main` is the disk's main file.
pub(crate) fn finding_of(e: &Error, main: &Path) -> Option<(PathBuf, u64, String)> {
    let bare = |path: &Path| {
        let s = e.to_string();
        let prefix = format!("{}: ", path.display());
        s.strip_prefix(&prefix).map(str::to_string).unwrap_or(s)
    };
    match e {
        Error::Corrupt { path, offset, what } => Some((path.clone(), *offset, what.clone())),
        Error::Descriptor { path, line, what } => Some((path.clone(), 0, format!("descriptor line {line}: {what}"))),
        Error::Unsupported { path, .. }
        | Error::PathEscape { path, .. }
        | Error::Alias { path, .. }
        | Error::OutOfRange { path, .. } => Some((path.clone(), 0, bare(path))),
        Error::Io { path, .. } if path != main => Some((path.clone(), 0, bare(path))),
        Error::Rdm(m) => Some((main.to_path_buf(), 0, m.to_string())),
        _ => None,
    }
}
