//! The link: one layer of a virtual disk — a descriptor plus its extents.
//!
//! [`Link::open`] accepts a text descriptor, a hosted sparse file with an embedded descriptor (whose
//! extent line may name a different file: the file opened is what counts), a bare COWD or seSparse
//! extent, or a plain raw image (a flat disk); [`crate::detect`] decides which. Reads and writes are positional and take `&self`, so
//! many threads can share one link.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::descriptor::{Access, CreateType, Descriptor, ExtentLine, ExtentType, MAX_DESCRIPTOR_BYTES};
use crate::detect::{self, Format};
use crate::error::{Error, Result};
use crate::extent::flat::FlatExtent;
use crate::extent::gtcache::GtCache;
use crate::extent::kdmv::{self, SparseHeader};
use crate::extent::sesparse::SeSparseExtent;
use crate::extent::sparse::SparseExtent;
use crate::extent::stream::{self, StreamExtent};
use crate::extent::zero::ZeroExtent;
use crate::extent::{Extent, ExtentInfo, ExtentKind};
use crate::family::{self, ParentRef};
use crate::map::{AllocMap, MapSource};
use crate::storage::{resolve_extent_path, Backing, HostStorage, LockMode, Storage};
use crate::txn;
use rdm::{ReadAt, Shifted};

/// How to open a link.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Open for writing (every file of the link is locked exclusively).
    pub write: bool,
    /// Allow extent paths outside the descriptor's folder (absolute or with `..`).
    pub allow_outside: bool,
    /// Where the files live.
    pub storage: Arc<dyn Storage>,
    /// Keep the CID on the first write (a commit merging a child into this link keeps the child's
    /// `parentCID` valid until the merge is complete, then sets the new CID itself).
    pub keep_cid: bool,
    /// Take the lock protocol's lock on the main file (shared to read, exclusive to write) and
    /// finish interrupted operations on the disk first ([`txn::settle`]). Off only for looking at
    /// a file without taking part in the protocol.
    pub lock: bool,
    /// How long to wait for a conflicting lock to go before failing with [`Error::Locked`].
    pub wait: std::time::Duration,
    /// Allow opening for writing a link that has children (links naming it as their parent). Off
    /// by default: such a link is read-only, since its children read through it. Operations that
    /// change only its metadata in ways the children follow (commit into it, rename) set it.
    pub allow_children: bool,
    /// Take the exclusive lock even when not opening for writing: for operations that change the
    /// link's files rather than its data (rename, delete, discard, snapshot on top of it).
    pub exclusive: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            write: false,
            allow_outside: false,
            storage: HostStorage::shared(),
            keep_cid: false,
            lock: true,
            wait: crate::storage::LOCK_RETRY,
            allow_children: false,
            exclusive: false,
        }
    }
}

impl OpenOptions {
    /// Read-only options on the host file system.
    pub fn read() -> OpenOptions {
        OpenOptions::default()
    }

    /// Read-write options on the host file system.
    pub fn write() -> OpenOptions {
        OpenOptions { write: true, ..OpenOptions::default() }
    }
}

pub use crate::descriptor::Container;

/// Where the descriptor is kept, for rewriting it (CID changes).
#[derive(Debug)]
enum Home {
    /// A descriptor file of its own. `replace`: rewritten by atomic replacement (an existing disk),
    /// else in place (a disk being created, under a temporary name nobody else opens).
    Separate {
        backing: Mutex<Arc<dyn Backing>>,
        replace: bool,
    },
    Embedded {
        backing: Arc<dyn Backing>,
        offset: u64,
        room: u64,
    },
    None,
}

#[derive(Debug)]
struct Slot {
    start: u64,
    ext: Box<dyn Extent>,
}

/// One link of a disk.
pub struct Link {
    path: PathBuf,
    /// `path` with symbolic links resolved: where the descriptor is replaced, and the name the
    /// transaction home knows the disk by.
    real: PathBuf,
    storage: Arc<dyn Storage>,
    /// Every file of the link with its `(device, inode)` identity, where the storage has one.
    identities: Vec<(PathBuf, (u64, u64))>,
    container: Container,
    descriptor: Mutex<Descriptor>,
    home: Home,
    slots: Vec<Slot>,
    capacity: u64,
    writable: bool,
    keep_cid: bool,
    started: AtomicBool,
    start_lock: Mutex<()>,
    closed: AtomicBool,
    parent: RwLock<Option<Arc<dyn ReadAt<Error = Error>>>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("path", &self.path).field("capacity", &self.capacity).finish_non_exhaustive()
    }
}

/// Opens files once per link, so two extents in one file share a handle (and one write lock).
struct Opener<'a> {
    opts: &'a OpenOptions,
    /// Each file's handle and whether it was opened for writing.
    open: HashMap<PathBuf, (Arc<dyn Backing>, bool)>,
}

impl Opener<'_> {
    /// Opens the main file, with the lock of the lock protocol when the options ask for it.
    fn get_main(&mut self, path: &Path) -> Result<Arc<dyn Backing>> {
        if !self.opts.lock {
            return self.get(path, self.opts.write);
        }
        let exclusive = self.opts.write || self.opts.exclusive;
        let mode = if exclusive { LockMode::Exclusive } else { LockMode::Shared };
        let b = self.opts.storage.open_locked(path, mode, self.opts.wait)?;
        self.open.insert(path.to_path_buf(), (b.clone(), exclusive));
        Ok(b)
    }

    /// Opens the extent file `name` of the descriptor at `descriptor` (resolved to `path`): beneath
    /// the descriptor's folder unless the options allow paths outside it.
    fn get_extent(&mut self, descriptor: &Path, name: &str, path: &Path, write: bool) -> Result<Arc<dyn Backing>> {
        if write && !self.open.contains_key(path) {
            // Two names of one file (a hard or symbolic link) would both be locked for writing by
            // this very open: say what it is before the second lock does.
            if let Some(id) = self.opts.storage.open(path, false).ok().and_then(|b| b.identity()) {
                if let Some((other, _)) = self.open.iter().find(|(_, (b, _))| b.identity() == Some(id)) {
                    return Err(Error::Alias {
                        path: descriptor.into(),
                        what: format!(
                            "extents name the same file by two names ({} and {})",
                            other.display(),
                            path.display()
                        ),
                    });
                }
            }
        }
        if self.opts.allow_outside || self.open.get(path).is_some_and(|(_, w)| *w || !write) {
            return self.get(path, write);
        }
        let dir = descriptor.parent().unwrap_or(Path::new(""));
        let b = self.opts.storage.open_beneath(dir, name, write, descriptor)?;
        self.open.insert(path.to_path_buf(), (b.clone(), write));
        Ok(b)
    }

    fn get(&mut self, path: &Path, write: bool) -> Result<Arc<dyn Backing>> {
        if let Some((b, writable)) = self.open.get(path) {
            if *writable || !write {
                return Ok(b.clone());
            }
            // Opened read-only for an earlier (RDONLY) extent: a writable extent of the same file
            // needs a writable handle. Read-only handles take no lock, so the two can coexist.
        }
        let b = self.opts.storage.open(path, write)?;
        self.open.insert(path.to_path_buf(), (b.clone(), write));
        Ok(b)
    }
}

fn read_head(b: &Arc<dyn Backing>, n: u64) -> Result<Vec<u8>> {
    let len = b.len()?.min(n);
    let mut v = vec![0u8; len as usize];
    b.read_exact_at(&mut v, 0)?;
    Ok(v)
}

/// Opens the extent in `backing` whose type [`detect`] finds (KDMV plain or compressed, COWD,
/// seSparse), for an extent line of type `expected` in a descriptor of `create_type` (whose rule
/// about compressed flags the header must follow).
fn open_sparse_kind(
    backing: Arc<dyn Backing>,
    len: Option<u64>,
    cache: &Arc<GtCache>,
    write: bool,
    expected: &str,
    create_type: &CreateType,
) -> Result<Box<dyn Extent>> {
    match detect::detect(&backing)? {
        Format::Sparse(h) => {
            h.check_create_type(create_type, backing.path(), 0)?;
            if h.is_compressed() {
                Ok(Box::new(StreamExtent::open(backing, h, len, cache.clone())?))
            } else {
                Ok(Box::new(SparseExtent::open(backing, h, len, cache.clone(), write)?))
            }
        }
        Format::Cowd => Ok(Box::new(SparseExtent::open_cowd(backing, len, cache.clone(), write)?)),
        Format::SeSparse => Ok(Box::new(SeSparseExtent::open(backing, len, cache.clone())?)),
        _ => {
            let head = read_head(&backing, 4)?;
            Err(Error::corrupt(
                backing.path(),
                0,
                format!("{expected} extent has no KDMV, COWD or seSparse magic (found {head:02x?})"),
            ))
        }
    }
}

/// A descriptor for a file that has none (a bare extent or a raw image): one extent of `kind`
/// over the file itself.
fn synthesized(
    create_type: CreateType,
    kind: ExtentType,
    sectors: u64,
    file: String,
    offset: Option<u64>,
) -> Descriptor {
    let mut d = Descriptor::new(create_type, 0xffff_ffff);
    d.extents.push(ExtentLine { access: Access::ReadWrite, sectors, kind, file: Some(file), offset, extra: vec![] });
    d
}

impl Link {
    /// Opens the disk at `path`. What the file is (descriptor, hosted sparse or stream, COWD,
    /// seSparse, mapping record, raw image) is decided by [`detect`]; a damaged signature is an
    /// error, never a raw image.
    ///
    /// With `opts.lock` (the default) this takes part in the lock protocol: interrupted operations
    /// recorded for the disk are finished first ([`txn::settle`]), VMware's lock folders
    /// (`FILE.lck`) count as a lock held by a running VM, and the main file is locked (shared to
    /// read, exclusive to write) for the link's whole life. Opening for writing a link that has
    /// children is refused unless `opts.allow_children`.
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Link> {
        let path = path.as_ref();
        if opts.lock {
            txn::settle(opts.storage.as_ref(), path)?;
            check_vmware_lock(opts.storage.as_ref(), path)?;
        }
        let link = Link::open_unchecked(path, opts)?;
        if opts.lock {
            for f in link.files().iter().skip(1) {
                check_vmware_lock(opts.storage.as_ref(), f)?;
            }
        }
        if (opts.write || opts.exclusive) && opts.lock && !opts.allow_children {
            link.refuse_if_parent(if opts.write { "opening it for writing" } else { "changing its files" })?;
        }
        Ok(link)
    }

    /// Refuses (with [`Error::HasChildren`]) when a link in this link's folder names it as its
    /// parent: `what` says what was refused.
    pub fn refuse_if_parent(&self, what: &str) -> Result<()> {
        match family::children(self.storage.as_ref(), &self.path).into_iter().next() {
            Some(child) => Err(Error::HasChildren { path: self.path.clone(), child, what: what.into() }),
            None => Ok(()),
        }
    }

    /// The links in this link's folder that name it as their parent.
    pub fn children(&self) -> Vec<PathBuf> {
        family::children(self.storage.as_ref(), &self.path)
    }

    /// The parent this link names (see [`family::parent_ref`]); hints that leave the link's folder
    /// need `allow_outside`.
    pub fn parent_ref(&self, allow_outside: bool) -> Result<Option<ParentRef>> {
        family::parent_ref(&self.path, &self.descriptor(), self.container, allow_outside)
    }

    /// Opens the file and its extents: no settling of interrupted operations, no VMware lock or
    /// children checks (the main file's lock is still taken as `opts` says).
    fn open_unchecked(path: &Path, opts: &OpenOptions) -> Result<Link> {
        let mut opener = Opener { opts, open: HashMap::new() };
        let main = opener.get_main(path)?;
        let cache = Arc::new(GtCache::default());
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match detect::detect(&main)? {
            Format::Sparse(h) => Link::open_kdmv(path, main, h, file_name, &mut opener, &cache),
            format @ (Format::Cowd | Format::SeSparse) => {
                let (ct, kind) = if format == Format::Cowd {
                    (CreateType::VmfsSparse, ExtentType::VmfsSparse)
                } else {
                    (CreateType::SeSparse, ExtentType::SeSparse)
                };
                let ext = open_sparse_kind(main.clone(), None, &cache, opts.write, "bare", &ct)?;
                let d = synthesized(ct, kind, ext.len() / 512, file_name, None);
                Link::assemble(path, Container::BareExtent, d, Home::None, Some(ext), &mut opener, &cache)
            }
            Format::RdmMapping => Err(Error::unsupported(
                path,
                "this is an RDM mapping file; open the descriptor (NAME.vmdk) that names it",
            )),
            Format::Descriptor => {
                let len = main.len()?;
                if len > MAX_DESCRIPTOR_BYTES as u64 {
                    return Err(Error::Descriptor {
                        path: path.into(),
                        line: 0,
                        what: format!("descriptor file is {len} bytes; at most {MAX_DESCRIPTOR_BYTES} are accepted"),
                    });
                }
                let raw = read_head(&main, len)?;
                let d = Descriptor::parse(&String::from_utf8_lossy(&raw), path)?;
                let home = Home::Separate { backing: Mutex::new(main), replace: true };
                Link::assemble(path, Container::Descriptor, d, home, None, &mut opener, &cache)
            }
            Format::Raw => {
                // A plain raw image: one flat extent over the whole file.
                let ext = FlatExtent::raw_image(main.clone(), opts.write)?;
                let d = synthesized(CreateType::MonolithicFlat, ExtentType::Flat, ext.len() / 512, file_name, Some(0));
                Link::assemble(path, Container::Raw, d, Home::None, Some(Box::new(ext)), &mut opener, &cache)
            }
        }
    }

    /// Opens a `KDMV` file (hosted sparse or streamOptimized) with header `h`: its embedded
    /// descriptor (whose createType must agree with the flags) or, without one, a synthesized one.
    fn open_kdmv(
        path: &Path,
        main: Arc<dyn Backing>,
        h: SparseHeader,
        file_name: String,
        opener: &mut Opener<'_>,
        cache: &Arc<GtCache>,
    ) -> Result<Link> {
        let write = opener.opts.write;
        let (desc, home, first): (Option<Descriptor>, Home, Box<dyn Extent>) = if h.is_compressed() {
            // The stream's own model checks its descriptor (the same checks the pipe reader makes).
            let model = stream::read_model(&main, h.clone())?;
            let home = match (model.descriptor(), model.descriptor_range()) {
                (Some(_), Some((offset, end))) => Home::Embedded { backing: main.clone(), offset, room: end - offset },
                _ => Home::None,
            };
            let first = StreamExtent::with_model(main.clone(), &model, None, cache.clone())?;
            (model.descriptor().cloned(), home, Box::new(first))
        } else {
            crate::extent::kdmv::check_descriptor_fields(&main, &h)?;
            let mut desc = None;
            let mut home = Home::None;
            if let Some(area) = kdmv::read_descriptor_area(&main, &h)?.filter(|a| !a.is_blank()) {
                let d = Descriptor::parse(&area.text, path)?;
                h.check_create_type(&d.create_type, path, 0)?;
                desc = Some(d);
                home = Home::Embedded { backing: main.clone(), offset: area.offset, room: area.room };
            }
            // The first extent is the file itself, whatever name the embedded descriptor gives it.
            let first_len = desc.as_ref().and_then(|d: &Descriptor| d.extents.first()).map(|e| e.sectors * 512);
            let first = SparseExtent::open(main.clone(), h.clone(), first_len, cache.clone(), write)?;
            (desc, home, Box::new(first))
        };
        let (desc, container) = match desc {
            Some(d) => (d, Container::Embedded),
            None => {
                let ct = if h.is_compressed() { CreateType::StreamOptimized } else { CreateType::MonolithicSparse };
                (synthesized(ct, ExtentType::Sparse, h.capacity, file_name, None), Container::BareExtent)
            }
        };
        Link::assemble(path, container, desc, home, Some(first), opener, cache)
    }

    fn assemble(
        path: &Path,
        container: Container,
        desc: Descriptor,
        home: Home,
        first: Option<Box<dyn Extent>>,
        opener: &mut Opener<'_>,
        cache: &Arc<GtCache>,
    ) -> Result<Link> {
        let opts = opener.opts;
        if let CreateType::Other(t) = &desc.create_type {
            return Err(Error::unsupported(path, format!("createType {t:?} is not a known VMDK type")));
        }
        let mut slots = Vec::with_capacity(desc.extents.len());
        let mut start = 0u64;
        let mut first = first;
        let mut uses: Vec<FileUse> = Vec::new();
        for line in &desc.extents {
            let len = line.sectors * 512;
            let write = opts.write && line.access == Access::ReadWrite;
            let ext: Box<dyn Extent> = if let Some(f) = first.take() {
                uses.push(FileUse { path: path.to_path_buf(), range: (0, u64::MAX), flat: false });
                f
            } else {
                let file = || -> Result<PathBuf> {
                    let name = line.file.as_deref().unwrap_or("");
                    resolve_extent_path(path, name, opts.allow_outside)
                };
                match &line.kind {
                    ExtentType::Zero => Box::new(ZeroExtent::new(len, path.to_path_buf())),
                    ExtentType::Flat | ExtentType::Vmfs => {
                        let f = file()?;
                        let b = opener.get_extent(path, line.file.as_deref().unwrap_or(""), &f, write)?;
                        let off = line.offset.unwrap_or(0) * 512;
                        uses.push(FileUse { path: f, range: (off, off.saturating_add(len)), flat: true });
                        let kind = if line.kind == ExtentType::Flat { ExtentKind::Flat } else { ExtentKind::Vmfs };
                        Box::new(FlatExtent::open(b, off, len, kind, write)?)
                    }
                    ExtentType::Sparse | ExtentType::VmfsSparse | ExtentType::SeSparse => {
                        let f = file()?;
                        let b = opener.get_extent(path, line.file.as_deref().unwrap_or(""), &f, write)?;
                        uses.push(FileUse { path: f, range: (0, u64::MAX), flat: false });
                        open_sparse_kind(b, Some(len), cache, write, line.kind.as_str(), &desc.create_type)?
                    }
                    ExtentType::VmfsRdm | ExtentType::VmfsRaw => {
                        crate::extent::device::open_extent(path, &desc, line, &opts.storage, opts.allow_outside, write)?
                    }
                    ExtentType::Other(t) => {
                        return Err(Error::unsupported(
                            path,
                            format!("extent type {t:?} is not a known VMDK extent type"),
                        ))
                    }
                }
            };
            if ext.len() != len {
                return Err(Error::corrupt(
                    path,
                    0,
                    format!("extent {} maps {} bytes but the descriptor says {len}", slots.len(), ext.len()),
                ));
            }
            slots.push(Slot { start, ext });
            start += len;
        }
        let writable = opts.write;
        refuse_aliases(path, container, &uses, opener)?;
        let mut identities: Vec<(PathBuf, (u64, u64))> =
            opener.open.iter().filter_map(|(p, (b, _))| b.identity().map(|i| (p.clone(), i))).collect();
        identities.sort();
        Ok(Link {
            path: path.to_path_buf(),
            real: opts.storage.real_path(path),
            storage: opts.storage.clone(),
            identities,
            container,
            descriptor: Mutex::new(desc),
            home,
            slots,
            capacity: start,
            writable,
            keep_cid: opts.keep_cid,
            started: AtomicBool::new(false),
            start_lock: Mutex::new(()),
            closed: AtomicBool::new(false),
            parent: RwLock::new(None),
        })
    }

    /// Builds a link from a descriptor and already-open extents (used when creating disks, whose
    /// files still have temporary names). `descriptor_home` is the file holding a separate descriptor,
    /// or `(file, offset, room)` for an embedded one.
    pub(crate) fn from_parts(
        path: &Path,
        storage: &Arc<dyn Storage>,
        container: Container,
        desc: Descriptor,
        separate: Option<Arc<dyn Backing>>,
        embedded: Option<(Arc<dyn Backing>, u64, u64)>,
        extents: Vec<Box<dyn Extent>>,
    ) -> Link {
        let home = match (separate, embedded) {
            (Some(b), _) => Home::Separate { backing: Mutex::new(b), replace: false },
            (None, Some((backing, offset, room))) => Home::Embedded { backing, offset, room },
            _ => Home::None,
        };
        let mut start = 0;
        let slots = extents
            .into_iter()
            .map(|ext| {
                let s = Slot { start, ext };
                start += s.ext.len();
                s
            })
            .collect();
        Link {
            path: path.to_path_buf(),
            real: storage.real_path(path),
            storage: storage.clone(),
            identities: Vec::new(),
            container,
            descriptor: Mutex::new(desc),
            home,
            slots,
            capacity: start,
            writable: true,
            // A new disk has the CID its creator chose (a fresh one, or the content identity of the
            // disk it is a copy of): filling it must not change that.
            keep_cid: true,
            started: AtomicBool::new(false),
            start_lock: Mutex::new(()),
            closed: AtomicBool::new(false),
            parent: RwLock::new(None),
        }
    }

    /// The path the link was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What kind of file the link was opened from.
    pub fn container(&self) -> Container {
        self.container
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// True when opened for writing.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// A copy of the descriptor (synthesized for raw images and bare extents).
    pub fn descriptor(&self) -> Descriptor {
        self.descriptor.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Descriptions of the extents, in disk order.
    pub fn extents(&self) -> Vec<ExtentInfo> {
        self.slots.iter().map(|s| s.ext.info()).collect()
    }

    /// Every file of this link: the descriptor (or single file) first, then each extent file once.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v = vec![self.path.clone()];
        for e in self.extents() {
            if let Some(f) = e.file {
                if !v.contains(&f) {
                    v.push(f);
                }
            }
        }
        v
    }

    /// True if any extent had its unclean-shutdown flag set when opened.
    pub fn was_unclean(&self) -> bool {
        self.slots.iter().any(|s| s.ext.info().unclean)
    }

    /// Sets the disk that partial-grain writes and reads of absent ranges fall through to.
    pub fn set_parent(&self, parent: Option<Arc<dyn ReadAt<Error = Error>>>) {
        *self.parent.write().unwrap_or_else(|p| p.into_inner()) = parent;
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|e| e > self.capacity) {
            return Err(Error::OutOfRange { path: self.path.clone(), offset, len, capacity: self.capacity });
        }
        Ok(())
    }

    /// Calls `f(slot, extent_offset, buf_offset, len)` for each extent piece of `[offset, offset+len)`.
    fn each_slot(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&Slot, u64, usize, usize) -> Result<()>,
    ) -> Result<()> {
        let end = offset + len;
        let mut i = self.slots.partition_point(|s| s.start + s.ext.len() <= offset);
        let mut pos = offset;
        while pos < end && i < self.slots.len() {
            let s = &self.slots[i];
            let s_end = s.start + s.ext.len();
            let n = s_end.min(end) - pos;
            if n > 0 {
                f(s, pos - s.start, (pos - offset) as usize, n as usize)?;
            }
            pos += n;
            i += 1;
        }
        Ok(())
    }

    /// Reads this link alone: ranges it does not hold read as zeros, whatever the parent holds.
    pub fn read_own(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.each_slot(offset, buf.len() as u64, |s, eo, bo, n| s.ext.read_exact_at(&mut buf[bo..bo + n], eo))
    }

    /// Where this link's own bytes at `offset` are stored as they read (see [`Extent::locate`]):
    /// `(file, file offset, n)` for the `n` bytes from `offset` (`1 <= n <= len`, within one
    /// extent) lying contiguous in `file`; `None` where the range does not start with such bytes.
    pub fn locate_own(&self, offset: u64, len: u64) -> Result<Option<(&dyn Backing, u64, u64)>> {
        self.check_range(offset, len)?;
        let i = self.slots.partition_point(|s| s.start + s.ext.len() <= offset);
        match self.slots.get(i) {
            Some(s) if len > 0 => s.ext.locate(offset - s.start, (s.start + s.ext.len() - offset).min(len)),
            _ => Ok(None),
        }
    }

    /// Reads `buf.len()` bytes at `offset`, falling through to the parent (if set) where this link
    /// holds nothing.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let parent = self.parent.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(parent) = parent else {
            return self.read_own(buf, offset);
        };
        let map = self.map(offset, buf.len() as u64)?;
        for r in map.runs() {
            let b = &mut buf[(r.offset - offset) as usize..(r.end() - offset) as usize];
            match r.state {
                crate::map::State::Absent => parent.read_exact_at(b, r.offset)?,
                crate::map::State::Zero => b.fill(0),
                crate::map::State::Data => self.read_own(b, r.offset)?,
            }
        }
        Ok(())
    }

    /// Writes `buf` at `offset`. The first write after open marks the extents dirty and gives the
    /// link a new CID.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly { path: self.path.clone(), what: "disk is opened read-only".into() });
        }
        self.check_range(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        // Refuse before anything changes (CID, unclean flags, the writable part of the range) when
        // part of the range lies in an extent that cannot be written (ZERO, RDONLY, streamOptimized).
        self.refuse_read_only_extents(offset, buf.len() as u64)?;
        self.begin_write()?;
        let mut parent = self.parent.read().unwrap_or_else(|p| p.into_inner()).clone();
        if parent.is_none() && self.names_parent() {
            // A delta written without its parent open (an exported increment): zeros must still be
            // stored to hide the parent, and a partial grain cannot be completed.
            parent = Some(Arc::new(Detached(self.path.clone())));
        }
        self.each_slot(offset, buf.len() as u64, |s, eo, bo, n| {
            let shifted = parent.as_deref().map(|p| Shifted { inner: p, base: s.start });
            s.ext.write_at(&buf[bo..bo + n], eo, shifted.as_ref().map(|x| x as &dyn ReadAt<Error = Error>))
        })
    }

    /// Refuses a write to `[offset, offset+len)` when part of it lies in an extent that cannot be
    /// written (ZERO, RDONLY, streamOptimized), before anything changes; the extent's own refusal
    /// (an empty write does no I/O) says why.
    fn refuse_read_only_extents(&self, offset: u64, len: u64) -> Result<()> {
        self.each_slot(offset, len, |s, eo, _, _| {
            if s.ext.writable() {
                return Ok(());
            }
            s.ext.write_at(&[], eo, None)?;
            Err(Error::ReadOnly { path: self.path.clone(), what: format!("extent at byte {} is read-only", s.start) })
        })
    }

    /// Makes `[offset, offset+len)` read as zeros while keeping it stored (see
    /// [`Extent::zero_range`]): a raw device gets `BLKZEROOUT`, a flat file `FALLOC_FL_ZERO_RANGE`,
    /// other extents written zeros. For clearing stale data; [`Link::discard`] frees space instead.
    pub fn zero_range(&self, offset: u64, len: u64) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly { path: self.path.clone(), what: "disk is opened read-only".into() });
        }
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.refuse_read_only_extents(offset, len)?;
        self.begin_write()?;
        let parent = self.parent.read().unwrap_or_else(|p| p.into_inner()).clone();
        self.each_slot(offset, len, |s, eo, _, n| {
            let shifted = parent.as_deref().map(|p| Shifted { inner: p, base: s.start });
            s.ext.zero_range(eo, n as u64, shifted.as_ref().map(|x| x as &dyn ReadAt<Error = Error>))
        })
    }

    /// Deallocates `[offset, offset+len)` so it reads as zeros (see [`Extent::discard`]); returns the
    /// bytes freed.
    pub fn discard(&self, offset: u64, len: u64) -> Result<u64> {
        if !self.writable {
            return Err(Error::ReadOnly { path: self.path.clone(), what: "disk is opened read-only".into() });
        }
        self.check_range(offset, len)?;
        self.begin_write()?;
        let has_parent = self.parent.read().unwrap_or_else(|p| p.into_inner()).is_some() || self.names_parent();
        let mut freed = 0;
        self.each_slot(offset, len, |s, eo, _, n| {
            freed += s.ext.discard(eo, n as u64, has_parent)?;
            Ok(())
        })?;
        Ok(freed)
    }

    /// Starts writing back `[offset, offset+len)` without waiting (see [`Extent::start_writeback`]).
    pub fn start_writeback(&self, offset: u64, len: u64) {
        if self.check_range(offset, len).is_ok() {
            let _ = self.each_slot(offset, len, |s, eo, _, n| {
                s.ext.start_writeback(eo, n as u64);
                Ok(())
            });
        }
    }

    /// Sends aligned writes into this link's flat and device extents past the page cache from now
    /// on (`O_DIRECT`; see [`rdm::Device::enable_direct`]): for a large copy into the link, whose
    /// data nobody reads back soon. Grain-allocating extents keep buffered writes. True when at
    /// least one extent took it.
    pub fn enable_direct_io(&self) -> bool {
        self.slots.iter().fold(false, |any, s| s.ext.enable_direct() | any)
    }

    /// The allocation map of `[offset, offset+len)` in this link alone (depth 0), in one piece.
    /// To walk a large range in bounded memory use [`crate::map::runs`] (a link is a
    /// [`MapSource`]).
    pub fn map(&self, offset: u64, len: u64) -> Result<AllocMap> {
        self.check_range(offset, len)?;
        crate::map::collect(self, offset, len)
    }

    fn begin_write(&self) -> Result<()> {
        if self.started.load(Ordering::Acquire) {
            return Ok(());
        }
        let _g = self.start_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.started.load(Ordering::Acquire) {
            return Ok(());
        }
        for s in &self.slots {
            if s.ext.writable() {
                s.ext.begin_write()?;
            }
        }
        if !self.keep_cid {
            {
                let mut d = self.descriptor.lock().unwrap_or_else(|p| p.into_inner());
                let cid = new_cid(d.cid);
                d.set_cid(cid);
            }
            self.write_descriptor()?;
        }
        self.started.store(true, Ordering::Release);
        Ok(())
    }

    /// Replaces the descriptor (for example to set a new parent hint) and writes it out.
    pub fn update_descriptor(&self, f: impl FnOnce(&mut Descriptor)) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly { path: self.path.clone(), what: "disk is opened read-only".into() });
        }
        f(&mut self.descriptor.lock().unwrap_or_else(|p| p.into_inner()));
        self.write_descriptor()
    }

    /// Writes the descriptor out: a separate descriptor of an existing disk by atomic replacement
    /// (the new file keeps this link's exclusive lock), an embedded one by rewriting only the bytes
    /// that changed, each run of them one write.
    fn write_descriptor(&self) -> Result<()> {
        let text = self.descriptor().to_text();
        match &self.home {
            Home::Separate { backing, replace } => {
                let mut b = backing.lock().unwrap_or_else(|p| p.into_inner());
                if *replace {
                    *b = txn::replace_file(&self.storage, &self.real, text.as_bytes())?;
                } else {
                    b.write_all_at(text.as_bytes(), 0)?;
                    b.set_len(text.len() as u64)?;
                }
            }
            Home::Embedded { backing, offset, room } => {
                let raw = self.embedded_bytes(&text, *room)?;
                let mut old = vec![0u8; raw.len()];
                backing.read_exact_at(&mut old, *offset)?;
                for (start, end) in changed_runs(&old, &raw) {
                    backing.write_all_at(&raw[start..end], *offset + start as u64)?;
                }
            }
            Home::None => {}
        }
        Ok(())
    }

    fn embedded_bytes(&self, text: &str, room: u64) -> Result<Vec<u8>> {
        if text.len() as u64 > room {
            return Err(Error::unsupported(
                &self.path,
                format!("descriptor of {} bytes does not fit the embedded area of {room} bytes", text.len()),
            ));
        }
        let mut raw = vec![0u8; room as usize];
        raw[..text.len()].copy_from_slice(text.as_bytes());
        Ok(raw)
    }

    /// How to rewrite this link's descriptor as `d` from an intent record ([`txn::Step`]s): for a
    /// separate descriptor, the new file under a temporary name (written and synced, returned with
    /// the step renaming it over the descriptor); for an embedded one, the in-place write. `None`
    /// for links without a descriptor of their own (bare extents, raw images).
    pub fn descriptor_update(&self, d: &Descriptor) -> Result<Option<(Option<PathBuf>, txn::Step)>> {
        let text = d.to_text();
        match &self.home {
            Home::Separate { .. } => {
                let tmp = txn::temp_name(&self.real);
                let b = self.storage.create_new(&tmp)?;
                b.write_all_at(text.as_bytes(), 0)?;
                b.sync()?;
                Ok(Some((Some(tmp.clone()), txn::Step::Rename { from: tmp, to: self.real.clone() })))
            }
            Home::Embedded { offset, room, .. } => {
                Ok(Some((None, txn::Step::write(self.real.clone(), *offset, &self.embedded_bytes(&text, *room)?))))
            }
            Home::None => Ok(None),
        }
    }

    /// Every file of the link (as opened) with its `(device, inode)` identity: a chain refuses two
    /// links sharing a file.
    pub fn file_identities(&self) -> &[(PathBuf, (u64, u64))] {
        &self.identities
    }

    /// The path with symbolic links resolved.
    pub fn real_path(&self) -> &Path {
        &self.real
    }

    /// The storage the link's files are in.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Flushes all written data and metadata to stable storage.
    pub fn flush(&self) -> Result<()> {
        for s in &self.slots {
            s.ext.flush()?;
        }
        if let Home::Separate { backing, .. } = &self.home {
            if self.writable {
                backing.lock().unwrap_or_else(|p| p.into_inner()).sync()?;
            }
        }
        Ok(())
    }

    /// Flushes and clears the unclean-shutdown flags. Dropping a link does this too, ignoring errors.
    pub fn close(self) -> Result<()> {
        self.close_ref()
    }

    /// Writes every extent's final metadata without flushing ([`Extent::seal`](crate::extent::Extent::seal)):
    /// for a new disk whose files are not in place yet (see [`crate::create::NewDisk::seal`]).
    pub fn seal(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        for s in &self.slots {
            s.ext.seal()?;
        }
        Ok(())
    }

    fn close_ref(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) || !self.writable {
            return Ok(());
        }
        self.flush()?;
        for s in &self.slots {
            s.ext.close()?;
        }
        Ok(())
    }
}

impl Link {
    /// The RDM mode of this link (see [`crate::rdm_mode`]): `Some(Mode::Virtual)` for a
    /// virtual-mode mapping, `Some(Mode::Physical)` for a passthrough one, `Some(Mode::Raw)` for a
    /// raw device, `None` for an ordinary disk. A REDO link (snapshot) may be put on top only when
    /// the mode is `None` or [`rdm::Mode::allows_snapshots`].
    pub fn rdm_mode(&self) -> Option<rdm::Mode> {
        crate::extent::device::rdm_mode(&self.descriptor())
    }
}

impl Link {
    /// True when the descriptor names a parent (a delta link), whether or not it is attached.
    pub fn names_parent(&self) -> bool {
        let d = self.descriptor.lock().unwrap_or_else(|p| p.into_inner());
        d.parent_file_name_hint.is_some() || d.parent_cid != crate::descriptor::NO_PARENT_CID
    }
}

/// The `(start, end)` byte ranges where `old` and `new` (of equal length) differ, runs closer than a
/// sector merged.
fn changed_runs(old: &[u8], new: &[u8]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, (a, b)) in old.iter().zip(new).enumerate() {
        if a == b {
            continue;
        }
        match runs.last_mut() {
            Some(r) if i <= r.1 + 512 => r.1 = i + 1,
            _ => runs.push((i, i + 1)),
        }
    }
    runs
}

/// A file an extent lives in, and the bytes of it the extent uses.
struct FileUse {
    path: PathBuf,
    range: (u64, u64),
    /// Flat extents may share a file (at different offsets); grain-table extents own theirs.
    flat: bool,
}

/// Refuses layouts in which two extents would write the same bytes, or an extent would write over
/// the descriptor: a file named twice by different names (a hard or symbolic link: same device and
/// inode), a grain-table file shared with another extent, flat extents overlapping in one file, and
/// a separate descriptor that is also an extent.
fn refuse_aliases(path: &Path, container: Container, uses: &[FileUse], opener: &Opener<'_>) -> Result<()> {
    let id = |p: &Path| opener.open.get(p).and_then(|(b, _)| b.identity());
    let main = id(path);
    let alias = |what: String| Error::Alias { path: path.into(), what };
    for (i, u) in uses.iter().enumerate() {
        let uid = id(&u.path);
        if container == Container::Descriptor && (u.path == path || (uid.is_some() && uid == main)) {
            return Err(alias(format!("extent {i} ({}) is the descriptor file itself", u.path.display())));
        }
        for (j, v) in uses.iter().enumerate().skip(i + 1) {
            let same_name = u.path == v.path;
            if !same_name && (uid.is_none() || uid != id(&v.path)) {
                continue;
            }
            if !same_name {
                return Err(alias(format!(
                    "extents {i} and {j} name the same file by two names ({} and {})",
                    u.path.display(),
                    v.path.display()
                )));
            }
            let overlap = u.range.0 < v.range.1 && v.range.0 < u.range.1;
            if !u.flat || !v.flat || overlap {
                return Err(alias(format!(
                    "extents {i} and {j} both use bytes {}..{} of {}",
                    u.range.0.max(v.range.0),
                    u.range.1.min(v.range.1),
                    u.path.display()
                )));
            }
        }
    }
    Ok(())
}

/// Refuses a file that a running VMware product has open: its lock folder `FILE.lck` exists.
fn check_vmware_lock(storage: &dyn Storage, file: &Path) -> Result<()> {
    let lck = txn::vmware_lock_folder(file);
    if storage.is_dir(&lck) {
        let folder = lck.file_name().map(PathBuf::from).unwrap_or(lck);
        return Err(Error::InUseByVmware { path: file.into(), folder });
    }
    Ok(())
}

/// Stands in for the parent of a delta written without its parent open.
struct Detached(PathBuf);

impl ReadAt for Detached {
    type Error = Error;
    fn read_exact_at(&self, _buf: &mut [u8], offset: u64) -> Result<()> {
        Err(Error::unsupported(
            &self.0,
            format!("a partial grain at byte {offset} needs the parent's data, but the delta was opened without its parent (open it as a chain)"),
        ))
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = self.close_ref();
    }
}

impl MapSource for Link {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    /// This link alone (depth 0), extent by extent.
    fn map_into(&self, offset: u64, end: u64, budget: usize, out: &mut AllocMap) -> Result<u64> {
        self.check_range(offset, end.saturating_sub(offset))?;
        let mut reached = offset;
        let mut stopped = false;
        self.each_slot(offset, end - offset, |s, eo, _, n| {
            if stopped {
                return Ok(());
            }
            let to = s.ext.map(eo, n as u64, s.start, budget, out)?;
            reached = s.start + to;
            stopped = to < eo + n as u64 || out.runs().len() >= budget;
            Ok(())
        })?;
        Ok(reached)
    }
}

impl ReadAt for Link {
    type Error = Error;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        Link::read_at(self, buf, offset)
    }
}

/// A random CID different from `old` and from the reserved values `ffffffff` / `fffffffe`.
pub fn new_cid(old: u32) -> u32 {
    loop {
        let c = crate::random_u32();
        if c != old && c != 0xffff_ffff && c != 0xffff_fffe {
            return c;
        }
    }
}
