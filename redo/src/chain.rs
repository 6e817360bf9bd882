//! Opening a chain, reading through it, and explaining what is wrong with a broken one.
//!
//! Three shapes are followed:
//! - **hosted and modern ESX**: a link's descriptor names its parent in `parentFileNameHint`
//!   (relative to the link's folder, or absolute) and records the parent's CID in `parentCID`;
//! - **ESX 2 REDO logs**: a bare COWD file named `X.REDO` whose parent is `X` (so
//!   `disk.vmdk.REDO.REDO` → `disk.vmdk.REDO` → `disk.vmdk`); there is no CID to check.
//!
//! A child's `parentCID` must equal its parent's CID — or the CID a commit in progress has promised
//! the parent (`ddb.vmkfs.pendingCID`, see [`crate::commit`]) — and every link has the same capacity.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use vmdk::family::ParentRef;
use vmdk::map::MapSource;
use vmdk::stack::Stack;
use vmdk::{AllocMap, Container, Link, OpenOptions, ReadAt};

/// Longest chain we follow (a guard against cycles and runaway chains).
pub const MAX_DEPTH: usize = 255;

/// The `ddb` key a commit in progress uses to announce the parent's next CID.
pub const PENDING_CID_KEY: &str = "vmkfs.pendingCID";

/// Why a chain could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A link could not be opened or read.
    #[error(transparent)]
    Link(#[from] vmdk::Error),
    /// A link names a parent that does not exist.
    #[error("{child}: parent {parent} (from parentFileNameHint {hint:?}) does not exist{renamed}", child = .child.display(), parent = .parent.display(), renamed = .renamed.as_ref().map(|r| format!("; {} has the expected CID, so the parent was probably renamed", r.display())).unwrap_or_default())]
    MissingParent {
        /// The child link.
        child: PathBuf,
        /// Where the parent was looked for.
        parent: PathBuf,
        /// The hint as written.
        hint: String,
        /// A disk in the same folder whose CID is the child's parentCID.
        renamed: Option<PathBuf>,
    },
    /// The parent's capacity differs from the child's.
    #[error("{child}: capacity {child_capacity} differs from its parent {parent}'s {parent_capacity}", child = .child.display(), parent = .parent.display())]
    CapacityMismatch {
        /// The child link.
        child: PathBuf,
        /// The parent link.
        parent: PathBuf,
        /// Child capacity in bytes.
        child_capacity: u64,
        /// Parent capacity in bytes.
        parent_capacity: u64,
    },
    /// The parent was modified after the child was created.
    #[error("{child}: parentCID {expected:08x} does not match the CID {found:08x} of {parent}: the parent virtual disk has been modified since the child was created", child = .child.display(), parent = .parent.display())]
    CidMismatch {
        /// The child link.
        child: PathBuf,
        /// The parent link.
        parent: PathBuf,
        /// The child's parentCID.
        expected: u32,
        /// The parent's CID.
        found: u32,
    },
    /// A link is its own ancestor.
    #[error("{child}: the chain loops back to {parent}", child = .child.display(), parent = .parent.display())]
    Cycle {
        /// The link whose parent closes the loop.
        child: PathBuf,
        /// The link met twice.
        parent: PathBuf,
    },
    /// The chain is deeper than [`MAX_DEPTH`].
    #[error("{top}: chain is longer than {MAX_DEPTH} links", top = .top.display())]
    TooDeep {
        /// The top link.
        top: PathBuf,
    },
}

/// The parent of `link`, if it has one (see [`vmdk::family::parent_ref`]); a hint leaving the
/// link's folder needs `allow_outside`.
pub fn parent_of(link: &Link, allow_outside: bool) -> Result<Option<ParentRef>, ChainError> {
    Ok(link.parent_ref(allow_outside)?)
}

/// True when `child_expects` is the parent's CID, or the CID a commit in progress promised it.
pub fn cid_accepted(parent: &Link, child_expects: u32) -> bool {
    let d = parent.descriptor();
    d.cid == child_expects
        || d.ddb(PENDING_CID_KEY).and_then(|v| u32::from_str_radix(v.trim(), 16).ok()) == Some(child_expects)
}

/// Looks in `dir` for a disk whose CID is `cid` (to explain a missing, probably renamed, parent).
fn find_by_cid(dir: &Path, cid: u32, skip: &Path) -> Option<PathBuf> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "vmdk") || p == skip {
            continue;
        }
        if let Ok(l) = Link::open(&p, &OpenOptions { lock: false, ..OpenOptions::read() }) {
            if l.container() != Container::Raw && l.descriptor().cid == cid {
                return Some(p);
            }
        }
    }
    None
}

/// Refuses a parent that shares a file with a link above it (a child whose extent is its parent's
/// file would destroy the parent's data when written, and commit or discard would delete it).
fn refuse_shared_files<'a>(above: impl IntoIterator<Item = &'a Link>, parent: &Link) -> Result<(), ChainError> {
    for l in above {
        for (p, id) in parent.file_identities() {
            if let Some((q, _)) = l.file_identities().iter().find(|(_, i)| i == id) {
                return Err(vmdk::Error::Alias {
                    path: l.path().into(),
                    what: format!(
                        "its file {} is also {}, a file of its parent {}",
                        q.display(),
                        p.display(),
                        parent.path().display()
                    ),
                }
                .into());
            }
        }
    }
    Ok(())
}

/// Refuses (with [`vmdk::Error::Alias`]) a link that shares a file with one of its ancestors, as far
/// as they can be found (a missing or mismatched parent ends the walk: there is nothing more to
/// protect). For operations that remove a link's files without opening its chain (`-U`,
/// `--discard`): removing them must never remove a parent's data.
pub fn refuse_files_of_ancestors(link: &Link, opts: &OpenOptions) -> Result<(), ChainError> {
    let look = OpenOptions { write: false, exclusive: false, lock: false, allow_outside: true, ..opts.clone() };
    let mut seen: HashSet<PathBuf> = HashSet::from([canonical(link.path())]);
    let mut cur = parent_of(link, true).ok().flatten();
    while let Some(pref) = cur {
        if seen.len() > MAX_DEPTH || !seen.insert(canonical(&pref.path)) || !opts.storage.exists(&pref.path) {
            break;
        }
        let Ok(parent) = Link::open(&pref.path, &look) else { break };
        refuse_shared_files([link], &parent)?;
        cur = parent_of(&parent, true).ok().flatten();
    }
    Ok(())
}

/// A chain of links, top first.
#[derive(Debug)]
pub struct Chain {
    links: Vec<Arc<Link>>,
}

/// What a link reads below itself: the links under it, read as a stack (each range from the link
/// holding it, without asking every link on the way).
struct ParentRead(Vec<Arc<Link>>);

impl ReadAt for ParentRead {
    type Error = vmdk::Error;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> vmdk::Result<()> {
        Stack::new(&self.0).read_at(buf, offset)
    }
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
}

impl Chain {
    /// Opens the link at `path` and every parent below it. Only the top link is opened for writing
    /// (when `opts.write` is set).
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Chain, ChainError> {
        let top = Arc::new(Link::open(path.as_ref(), opts)?);
        Chain::open_below(top, opts)
    }

    /// Opens every parent below the already open link `top` (read-only, with shared locks, as
    /// `opts` says otherwise).
    pub fn open_below(top: Arc<Link>, opts: &OpenOptions) -> Result<Chain, ChainError> {
        let top_path = top.path().to_path_buf();
        let mut links = vec![top];
        let ro = OpenOptions { write: false, exclusive: false, allow_children: true, ..opts.clone() };
        let mut seen: HashSet<PathBuf> = HashSet::from([canonical(&top_path)]);
        loop {
            let child = links.last().expect("chain has a top link").clone();
            let Some(pref) = parent_of(&child, opts.allow_outside)? else { break };
            if links.len() > MAX_DEPTH {
                return Err(ChainError::TooDeep { top: top_path });
            }
            if !opts.storage.exists(&pref.path) {
                let renamed = pref
                    .expected_cid
                    .and_then(|cid| find_by_cid(child.path().parent().unwrap_or(Path::new("")), cid, child.path()));
                return Err(ChainError::MissingParent {
                    child: child.path().into(),
                    parent: pref.path,
                    hint: pref.hint,
                    renamed,
                });
            }
            vmdk::storage::confine(opts.storage.as_ref(), child.path(), &pref.path, &pref.hint, opts.allow_outside)?;
            if !seen.insert(canonical(&pref.path)) {
                return Err(ChainError::Cycle { child: child.path().into(), parent: pref.path });
            }
            let parent = Arc::new(Link::open(&pref.path, &ro)?);
            refuse_shared_files(links.iter().map(|l| &**l), &parent)?;
            if parent.capacity() != child.capacity() {
                return Err(ChainError::CapacityMismatch {
                    child: child.path().into(),
                    parent: pref.path,
                    child_capacity: child.capacity(),
                    parent_capacity: parent.capacity(),
                });
            }
            if let Some(expected) = pref.expected_cid {
                if !cid_accepted(&parent, expected) {
                    return Err(ChainError::CidMismatch {
                        child: child.path().into(),
                        parent: pref.path,
                        expected,
                        found: parent.descriptor().cid,
                    });
                }
            }
            links.push(parent);
        }
        Ok(Chain::from_links(links))
    }

    /// Builds a chain from links already opened (top first); sets each link's parent (the links
    /// below it).
    pub fn from_links(links: Vec<Arc<Link>>) -> Chain {
        for (i, l) in links.iter().enumerate().take(links.len().saturating_sub(1)) {
            l.set_parent(Some(Arc::new(ParentRead(links[i + 1..].to_vec()))));
        }
        Chain { links }
    }

    /// The links, top first.
    pub fn links(&self) -> &[Arc<Link>] {
        &self.links
    }

    /// The top link (where writes go).
    pub fn top(&self) -> &Arc<Link> {
        &self.links[0]
    }

    /// The base (bottom) link.
    pub fn base(&self) -> &Arc<Link> {
        self.links.last().expect("chain has a top link")
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.top().capacity()
    }

    /// Reads through the chain: each range from the link that holds it ([`Stack::read_at`]).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> vmdk::Result<()> {
        self.stack().read_at(buf, offset)
    }

    /// The links as a [`Stack`]: the merged map and reads by depth.
    pub fn stack(&self) -> Stack<'_> {
        Stack::new(&self.links)
    }

    /// Writes to the top link.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> vmdk::Result<()> {
        self.top().write_at(buf, offset)
    }

    /// The merged allocation map of `[offset, offset+len)` in one piece: each run says which link
    /// (depth) holds it; `Absent` runs remain only where no link holds anything (they read as
    /// zeros). To walk a large range in bounded memory use [`vmdk::map::runs`] (a chain is a
    /// [`MapSource`]).
    pub fn map(&self, offset: u64, len: u64) -> vmdk::Result<AllocMap> {
        vmdk::map::collect(self, offset, len)
    }

    /// Flushes and closes every link (clearing unclean-shutdown flags of written links).
    pub fn close(self) -> vmdk::Result<()> {
        for l in &self.links {
            l.set_parent(None);
        }
        for l in self.links {
            match Arc::try_unwrap(l) {
                Ok(l) => l.close()?,
                Err(l) => l.flush()?,
            }
        }
        Ok(())
    }
}

impl MapSource for Chain {
    fn capacity(&self) -> u64 {
        Chain::capacity(self)
    }
    fn map_into(&self, offset: u64, end: u64, budget: usize, out: &mut AllocMap) -> vmdk::Result<u64> {
        self.stack().map_into(offset, end, budget, out)
    }
}

impl ReadAt for Chain {
    type Error = vmdk::Error;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> vmdk::Result<()> {
        Chain::read_at(self, buf, offset)
    }
}

/// What `--chain` reports about one link.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LinkReport {
    /// The link's path.
    pub path: PathBuf,
    /// createType (or `raw`).
    pub format: String,
    /// Capacity in bytes.
    pub capacity: u64,
    /// CID as hex.
    pub cid: String,
    /// parentCID as hex.
    pub parent_cid: String,
    /// The parent as named by the link.
    pub parent: Option<PathBuf>,
    /// `ok`, or what is wrong between this link and its parent.
    pub status: String,
}

/// Walks the chain from `path` down as far as it can, explaining every break instead of failing.
pub fn diagnose(path: &Path, opts: &OpenOptions) -> Vec<LinkReport> {
    let mut out = Vec::new();
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut cur = path.to_path_buf();
    loop {
        let mut r = LinkReport {
            path: cur.clone(),
            format: String::new(),
            capacity: 0,
            cid: String::new(),
            parent_cid: String::new(),
            parent: None,
            status: "ok".into(),
        };
        if !seen.insert(canonical(&cur)) {
            r.status = "cycle: this link was already met higher in the chain".into();
            out.push(r);
            return out;
        }
        let link = match Link::open(&cur, opts) {
            Ok(l) => l,
            Err(e) => {
                r.status = format!("cannot open: {e}");
                out.push(r);
                return out;
            }
        };
        let d = link.descriptor();
        r.format = if link.container() == Container::Raw { "raw".into() } else { d.create_type.as_str().into() };
        r.capacity = link.capacity();
        r.cid = format!("{:08x}", d.cid);
        r.parent_cid = format!("{:08x}", d.parent_cid);
        let pref = match parent_of(&link, opts.allow_outside) {
            Ok(Some(p)) => p,
            Ok(None) => {
                out.push(r);
                return out;
            }
            Err(e) => {
                r.status = e.to_string();
                out.push(r);
                return out;
            }
        };
        r.parent = Some(pref.path.clone());
        if out.len() >= MAX_DEPTH {
            r.status = format!("chain is longer than {MAX_DEPTH} links");
            out.push(r);
            return out;
        }
        if !opts.storage.exists(&pref.path) {
            let renamed =
                pref.expected_cid.and_then(|cid| find_by_cid(cur.parent().unwrap_or(Path::new("")), cid, &cur));
            r.status = match renamed {
                Some(p) => format!(
                    "missing parent {} (renamed? {} has the expected CID {})",
                    pref.path.display(),
                    p.display(),
                    r.parent_cid
                ),
                None => format!("missing parent {}", pref.path.display()),
            };
            out.push(r);
            return out;
        }
        match Link::open(&pref.path, opts) {
            Ok(parent) => {
                if parent.capacity() != link.capacity() {
                    r.status =
                        format!("capacity mismatch: {} here, {} in the parent", link.capacity(), parent.capacity());
                } else if let Some(expected) = pref.expected_cid {
                    if !cid_accepted(&parent, expected) {
                        r.status = format!(
                            "CID mismatch: parentCID {expected:08x}, parent's CID {:08x} (the parent was modified after this link was created)",
                            parent.descriptor().cid
                        );
                    }
                }
            }
            Err(e) => r.status = format!("parent cannot be opened: {e}"),
        }
        out.push(r);
        cur = pref.path;
    }
}
