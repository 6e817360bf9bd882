//! Opening a chain and reading through it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmdk::descriptor::NO_PARENT_CID;
use vmdk::storage::resolve_extent_path;
use vmdk::{AllocMap, Link, OpenOptions, ReadAt};

/// Longest chain we follow (a guard against cycles).
pub const MAX_DEPTH: usize = 255;

/// Why a chain could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A link could not be opened or read.
    #[error(transparent)]
    Link(#[from] vmdk::Error),
    /// A link names a parent that does not exist.
    #[error("{child}: parent {parent} (from parentFileNameHint {hint:?}) does not exist", child = .child.display(), parent = .parent.display())]
    MissingParent {
        /// The child link.
        child: PathBuf,
        /// Where the parent was looked for.
        parent: PathBuf,
        /// The hint as written.
        hint: String,
    },
    /// A link has a parentCID but no parent hint.
    #[error("{child}: parentCID is {parent_cid:08x} but there is no parentFileNameHint", child = .child.display())]
    NoHint {
        /// The child link.
        child: PathBuf,
        /// Its parentCID.
        parent_cid: u32,
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
    /// The chain loops or is deeper than [`MAX_DEPTH`].
    #[error("{top}: chain is longer than {MAX_DEPTH} links or loops back on itself", top = .top.display())]
    TooDeep {
        /// The top link.
        top: PathBuf,
    },
}

/// A chain of links, top first.
#[derive(Debug)]
pub struct Chain {
    links: Vec<Arc<Link>>,
}

struct ParentRead(Arc<Link>);

impl ReadAt for ParentRead {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vmdk::Result<()> {
        self.0.read_at(buf, offset)
    }
}

impl Chain {
    /// Opens the link at `path` and every parent below it. Only the top link is opened for writing
    /// (when `opts.write` is set).
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Chain, ChainError> {
        let top_path = path.as_ref().to_path_buf();
        let mut links = vec![Arc::new(Link::open(&top_path, opts)?)];
        let ro = OpenOptions { write: false, ..opts.clone() };
        loop {
            let child = links.last().expect("chain has a top link").clone();
            let d = child.descriptor();
            if d.parent_cid == NO_PARENT_CID && d.parent_file_name_hint.is_none() {
                break;
            }
            let Some(hint) = d.parent_file_name_hint.clone() else {
                return Err(ChainError::NoHint { child: child.path().into(), parent_cid: d.parent_cid });
            };
            if links.len() > MAX_DEPTH {
                return Err(ChainError::TooDeep { top: top_path });
            }
            let parent_path = resolve_extent_path(child.path(), &hint, true)?;
            if !opts.storage.exists(&parent_path) {
                return Err(ChainError::MissingParent { child: child.path().into(), parent: parent_path, hint });
            }
            let parent = Arc::new(Link::open(&parent_path, &ro)?);
            if parent.capacity() != child.capacity() {
                return Err(ChainError::CapacityMismatch {
                    child: child.path().into(),
                    parent: parent_path,
                    child_capacity: child.capacity(),
                    parent_capacity: parent.capacity(),
                });
            }
            let pcid = parent.descriptor().cid;
            if d.parent_cid != pcid {
                return Err(ChainError::CidMismatch {
                    child: child.path().into(),
                    parent: parent_path,
                    expected: d.parent_cid,
                    found: pcid,
                });
            }
            child.set_parent(Some(Arc::new(ParentRead(parent.clone()))));
            links.push(parent);
        }
        Ok(Chain { links })
    }

    /// The links, top first.
    pub fn links(&self) -> &[Arc<Link>] {
        &self.links
    }

    /// The top link (where writes go).
    pub fn top(&self) -> &Arc<Link> {
        &self.links[0]
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.top().capacity()
    }

    /// Reads through the chain.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> vmdk::Result<()> {
        self.top().read_at(buf, offset)
    }

    /// Writes to the top link.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> vmdk::Result<()> {
        self.top().write_at(buf, offset)
    }

    /// The merged allocation map of `[offset, offset+len)`: each run says which link (depth) holds
    /// it; `Absent` runs remain only where no link holds anything (they read as zeros).
    pub fn map(&self, offset: u64, len: u64) -> vmdk::Result<AllocMap> {
        Self::map_from(&self.links, offset, len)
    }

    fn map_from(links: &[Arc<Link>], offset: u64, len: u64) -> vmdk::Result<AllocMap> {
        let m = links[0].map(offset, len)?;
        if links.len() == 1 {
            return Ok(m);
        }
        m.fill_absent(|o, l| Self::map_from(&links[1..], o, l))
    }
}

impl ReadAt for Chain {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vmdk::Result<()> {
        Chain::read_at(self, buf, offset)
    }
}
