//! Disk operations: delete, rename, extend, punch zeros, zero, inflate, compare.

use std::path::{Path, PathBuf};

use redo::Chain;
use vmdk::create::{Adapter, VMWARE_SPLIT_SECTORS};
use vmdk::descriptor::{CreateType, ExtentLine, ExtentType};
use vmdk::extent::{is_zero, ExtentKind};
use vmdk::storage::{resolve_extent_path, write_zeros};
use vmdk::txn::{Intent, Step};
use vmdk::{Container, Link, OpenOptions, State};

use crate::error::{Error, Result};
use crate::phase;

const CHUNK: u64 = 1 << 20;

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn stem(p: &Path) -> String {
    let n = file_name(p);
    n.strip_suffix(".vmdk").unwrap_or(&n).to_string()
}

/// Refuses to act on a disk through a symbolic link: renaming or deleting the link would leave
/// the real disk behind, following it would act on a name the user did not give.
fn refuse_symlink(path: &Path, what: &str) -> Result<()> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        return Err(Error::Usage(format!(
            "{} is a symbolic link (to {}): {what} the disk by its real path, or remove the link itself with rm",
            path.display(),
            real.display()
        )));
    }
    Ok(())
}

/// Options that lock a disk exclusively without opening its extents for writing (for operations
/// that change its files, not its data).
fn exclusive(opts: &OpenOptions) -> OpenOptions {
    OpenOptions { write: false, exclusive: true, ..opts.clone() }
}

/// `-U`: deletes a disk and every file it owns, through one intent record (so an interruption is
/// finished by the next command; the descriptor goes first). Refused for a disk that has children,
/// is in use, or is reached through a symbolic link. Returns the files removed. A raw device mapping
/// loses its descriptor and mapping file only: the device is never touched, and need not be
/// present.
pub fn delete(path: &Path, opts: &OpenOptions) -> Result<Vec<PathBuf>> {
    refuse_symlink(path, "delete")?;
    let storage = &opts.storage;
    // The link (or, for a mapping whose device may be gone, just its descriptor) held exclusively.
    let (files, held): (Vec<PathBuf>, Box<dyn std::any::Any>) = match crate::rdm_ops::mapping_files(path, opts)? {
        Some(files) => {
            vmdk::txn::settle(storage.as_ref(), path)?;
            let lock = storage.open_locked(path, vmdk::storage::LockMode::Exclusive, opts.wait)?;
            if let Some(child) = vmdk::family::children(storage.as_ref(), path).into_iter().next() {
                return Err(vmdk::Error::HasChildren { path: path.into(), child, what: "deleting it".into() }.into());
            }
            (files, Box::new(lock))
        }
        None => {
            let link = Link::open(path, &exclusive(opts))?;
            redo::chain::refuse_files_of_ancestors(&link, opts)?;
            (link.files(), Box::new(link))
        }
    };
    let real = storage.real_path(path);
    let mut intent = Intent::begin(storage, &real, "delete", &[], None)?;
    intent.set_steps(files.iter().map(|f| Step::Remove { path: storage.real_path(f) }).collect())?;
    drop(held);
    intent.finish()?;
    Ok(files)
}

/// `-E`: renames a disk and every file it owns whose name starts with the disk's name (files
/// elsewhere keep their names but move along into the new folder), rewriting the descriptor; ESX 2
/// REDO logs `OLD.REDO` follow, and child links in the folder get hints naming `new`. Everything is
/// prepared under temporary names and put in place through one intent record: an interruption is
/// finished by the next command on either name. Never replaces an existing file.
pub fn rename(old: &Path, new: &Path, opts: &OpenOptions) -> Result<PathBuf> {
    refuse_symlink(old, "rename")?;
    let storage = &opts.storage;
    if new.file_name().is_none() {
        return Err(Error::Usage(format!("{} is not a disk file name", new.display())));
    }
    if storage.exists(new) {
        return Err(vmdk::Error::Exists { path: new.into() }.into());
    }
    let lock = OpenOptions { allow_children: true, ..exclusive(opts) };
    let link = Link::open(old, &lock)?;
    let (real_old, real_new) = (link.real_path().to_path_buf(), storage.real_path(new));
    let kids: Vec<Link> = link
        .children()
        .iter()
        .filter(|c| {
            vmdk::family::peek(storage.as_ref(), c).ok().flatten().is_some_and(|p| p.container != Container::BareExtent)
        })
        .map(|c| Link::open(c, &lock))
        .collect::<vmdk::Result<_>>()?;
    let mut disks = vec![real_new.clone()];
    disks.extend(kids.iter().map(|k| k.real_path().to_path_buf()));
    let mut intent = Intent::begin(storage, &real_old, "rename", &disks, None)?;
    let mut steps = rename_steps(&link, &real_new, opts)?;
    // ESX 2 REDO logs name their parent by their own name (`OLD.REDO`): they move along.
    let (mut o, mut n) = (real_old.as_os_str().to_owned(), real_new.as_os_str().to_owned());
    loop {
        o.push(".REDO");
        n.push(".REDO");
        let (op, np) = (PathBuf::from(&o), PathBuf::from(&n));
        if !storage.exists(&op) {
            break;
        }
        if storage.exists(&np) {
            return Err(vmdk::Error::Exists { path: np }.into());
        }
        steps.push(Step::RenameNew { from: op, to: np });
    }
    for kid in &kids {
        let mut d = kid.descriptor();
        let same_dir = vmdk::txn::folder(kid.real_path()) == vmdk::txn::folder(&real_new);
        let hint = if same_dir { file_name(&real_new) } else { real_new.display().to_string() };
        d.parent_file_name_hint = Some(hint);
        if let Some((_, step)) = kid.descriptor_update(&d)? {
            steps.push(step);
        }
    }
    intent.set_steps(steps)?;
    drop(kids);
    drop(link);
    intent.finish()?;
    Ok(new.to_path_buf())
}

/// The steps that move `link`'s own files to `new` (a real path) and give it a descriptor naming
/// them.
fn rename_steps(link: &Link, new: &Path, opts: &OpenOptions) -> Result<Vec<Step>> {
    let storage = &opts.storage;
    let old = link.real_path();
    let mut d = link.descriptor();
    let mut steps = Vec::new();
    match link.container() {
        Container::Embedded => {
            if let Some(e) = d.extents.first_mut() {
                e.file = Some(file_name(new));
            }
            steps.push(Step::RenameNew { from: old.into(), to: new.into() });
            if let Some((_, Step::Write { offset, data, .. })) = link.descriptor_update(&d)? {
                steps.push(Step::Write { path: new.into(), offset, data });
            }
        }
        Container::BareExtent | Container::Raw => steps.push(Step::RenameNew { from: old.into(), to: new.into() }),
        Container::Descriptor => {
            let (old_stem, new_stem) = (stem(old), stem(new));
            let new_dir = vmdk::txn::folder(new).to_path_buf();
            for e in d.extents.iter_mut() {
                let Some(name) = e.file.clone() else { continue };
                if matches!(e.kind, ExtentType::VmfsRaw) {
                    continue; // names a device, which does not move
                }
                let from = storage.real_path(&resolve_extent_path(old, &name, opts.allow_outside)?);
                let to_name = match name.strip_prefix(&old_stem) {
                    Some(rest) if !name.contains('/') => format!("{new_stem}{rest}"),
                    _ => file_name(&from),
                };
                let to = new_dir.join(&to_name);
                if to != from {
                    if storage.exists(&to) {
                        return Err(vmdk::Error::Exists { path: to }.into());
                    }
                    steps.push(Step::RenameNew { from, to });
                }
                e.file = Some(to_name);
            }
            let tmp = vmdk::txn::temp_name(new);
            let b = storage.create_new(&tmp)?;
            b.write_all_at(d.to_text().as_bytes(), 0)?;
            b.sync()?;
            steps.push(Step::RenameNew { from: tmp, to: new.into() });
            steps.push(Step::Remove { path: old.into() });
        }
    }
    Ok(steps)
}

/// `-X`: grows a disk to `new_capacity` bytes (never shrinks). Flat extents grow in place (space
/// reserved for thick disks, zeroed for `eager`; bytes past the old capacity are read by nobody
/// until the descriptor says so), split formats gain extents made under temporary names; the new
/// descriptor (geometry following) and any new extents go into place through one intent record.
/// Refused for a link that has children (every link of a chain keeps one capacity).
pub fn extend(path: &Path, new_capacity: u64, eager: bool, opts: &OpenOptions) -> Result<()> {
    let link = Link::open(path, &exclusive(opts))?;
    let cap = link.capacity();
    let container = link.container();
    let mut d = link.descriptor();
    if !new_capacity.is_multiple_of(512) {
        return Err(Error::Usage(format!("size {new_capacity} is not a multiple of 512 bytes")));
    }
    if new_capacity <= cap {
        return Err(Error::Usage(format!(
            "{}: new size {new_capacity} is not larger than the current {cap} bytes (disks never shrink)",
            path.display()
        )));
    }
    if container != Container::Descriptor {
        return Err(vmdk::Error::unsupported(path, "extending disks without a separate descriptor (monolithicSparse, raw images); clone to 2gbsparse or a flat format first").into());
    }
    let thin = d.ddb("thinProvisioned") == Some("1");
    let storage = &opts.storage;
    let add = (new_capacity - cap) / 512;
    let last = d.extents.last().cloned().ok_or_else(|| vmdk::Error::unsupported(path, "disk has no extents"))?;
    let split = matches!(d.create_type, vmdk::CreateType::TwoGbMaxExtentFlat | vmdk::CreateType::TwoGbMaxExtentSparse);
    let intent = Intent::begin(storage, link.real_path(), "extend", &[], None)?;
    let mut files = vmdk::txn::NewFiles::within(storage, intent);
    if !split && matches!(last.kind, ExtentType::Flat | ExtentType::Vmfs) {
        let f = resolve_extent_path(path, last.file.as_deref().unwrap_or(""), opts.allow_outside)?;
        let b = storage.open(&f, true)?;
        let start = last.offset.unwrap_or(0) * 512 + last.sectors * 512;
        let bytes = add * 512;
        b.set_len(start + bytes)?;
        if eager {
            b.allocate(start, bytes)?;
            write_zeros(b.as_ref(), start, bytes)?;
        } else if !thin {
            b.allocate(start, bytes)?;
        }
        b.sync()?;
        if let Some(e) = d.extents.last_mut() {
            e.sectors += add;
        }
    } else if split {
        let sparse = d.create_type == vmdk::CreateType::TwoGbMaxExtentSparse;
        let mut left = add;
        let mut i = d.extents.len();
        let base = stem(path);
        while left > 0 {
            let n = left.min(VMWARE_SPLIT_SECTORS);
            let name = if sparse { format!("{base}-s{:03}.vmdk", i + 1) } else { format!("{base}-f{:03}.vmdk", i + 1) };
            let b = files.create(&path.with_file_name(&name))?;
            if sparse {
                let layout = vmdk::extent::kdmv::Layout::plan(n, vmdk::create::DEFAULT_GRAIN_SECTORS, 0);
                vmdk::extent::sparse::create(&b, &layout, None)?;
            } else {
                b.set_len(n * 512)?;
                b.allocate(0, n * 512)?;
                if eager {
                    write_zeros(b.as_ref(), 0, n * 512)?;
                }
            }
            b.sync()?;
            d.extents.push(ExtentLine {
                access: vmdk::descriptor::Access::ReadWrite,
                sectors: n,
                kind: if sparse { ExtentType::Sparse } else { ExtentType::Flat },
                file: Some(name),
                offset: if sparse { None } else { Some(0) },
                extra: vec![],
            });
            left -= n;
            i += 1;
        }
    } else {
        return Err(vmdk::Error::unsupported(
            path,
            format!("extending a disk whose last extent is {}", last.kind.as_str()),
        )
        .into());
    }
    let adapter = d.ddb("adapterType").and_then(Adapter::parse).unwrap_or(Adapter::LsiLogic);
    let esx = d.create_type == vmdk::descriptor::CreateType::Vmfs;
    let sectors = new_capacity / 512;
    let (c, h, s) = if esx { adapter.esx_geometry(sectors) } else { adapter.geometry(sectors) };
    if d.ddb("geometry.cylinders").is_some() {
        d.set_ddb("geometry.cylinders", c.to_string());
        d.set_ddb("geometry.heads", h.to_string());
        d.set_ddb("geometry.sectors", s.to_string());
    }
    let step = link.descriptor_update(&d)?.map(|(_, s)| s).into_iter().collect();
    drop(link);
    files.commit(step)?;
    Ok(())
}

fn open_rw(path: &Path, opts: &OpenOptions) -> Result<Chain> {
    Ok(Chain::open(path, &OpenOptions { write: true, ..opts.clone() })?)
}

/// `-K`: deallocates blocks of the top link that hold only zeros. Returns bytes freed. An ESX flat
/// disk (`createType="vmfs"`) that this leaves with holes is thin from then on: it gets
/// `ddb.thinProvisioned = "1"`.
pub fn punch_zero(path: &Path, opts: &OpenOptions) -> Result<u64> {
    let rerun = phase::rerun_command(&["-K"], &[path], opts);
    let resumed = phase::resume(path, opts, "punch-zero", &rerun)?;
    let chain = open_rw(path, opts)?;
    let top = chain.top();
    // Freeing grains rewrites grain tables in place: a data phase until it is done. Punching holes
    // in flat files changes no byte anyone reads, so an interruption there needs no re-run.
    let intent = match all_flat(top) {
        true => None,
        false => Some(phase::begin(top.real_path(), opts, "punch-zero", rerun, resumed)?),
    };
    let block: u64 = 64 << 10;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut freed = 0;
    for r in vmdk::map::walk(&**top) {
        let r = r?;
        if r.state != State::Data {
            continue;
        }
        let mut pos = r.offset;
        while pos < r.end() {
            let len = CHUNK.min(r.end() - pos);
            let b = &mut buf[..len as usize];
            top.read_own(b, pos)?;
            let mut i = 0;
            while i < len {
                // Blocks aligned to the disk, not to the run.
                let bstart = pos + i;
                let bend = ((bstart / block + 1) * block).min(pos + len);
                if is_zero(&b[i as usize..(bend - pos) as usize]) {
                    freed += top.discard(bstart, bend - bstart)?;
                }
                i = bend - pos;
            }
            pos += len;
        }
    }
    if freed > 0 && top.descriptor().create_type == CreateType::Vmfs {
        set_thin_flag(top, true)?;
    }
    chain.close()?;
    if let Some(i) = intent {
        phase::end(i)?;
    }
    Ok(freed)
}

/// True when every extent of `link` is a flat file or a ZERO extent (no grains, no device).
fn all_flat(link: &Link) -> bool {
    link.extents().iter().all(|e| e.kind.is_flat_file() || e.kind == ExtentKind::Zero)
}

/// Makes `ddb.thinProvisioned` say whether the link's flat extents have holes (`"1"`) or are fully
/// allocated (no entry, as vmkfstools writes thick disks). The descriptor is rewritten only when
/// the flag changes.
fn set_thin_flag(link: &Link, thin: bool) -> Result<()> {
    if (link.descriptor().ddb("thinProvisioned") == Some("1")) == thin {
        return Ok(());
    }
    link.update_descriptor(|d| if thin { d.set_ddb("thinProvisioned", "1") } else { d.remove_ddb("thinProvisioned") })?;
    Ok(())
}

/// Writes explicit zeros over every range of the top link that is not stored data (holes,
/// reserved-but-unwritten space). For flat disks only.
fn fill_holes(link: &Link) -> Result<u64> {
    let zeros = vec![0u8; CHUNK as usize];
    let mut written = 0;
    for r in vmdk::map::walk(link) {
        let r = r?;
        if r.state == State::Data {
            continue;
        }
        let mut pos = r.offset;
        while pos < r.end() {
            let len = CHUNK.min(r.end() - pos);
            link.write_at(&zeros[..len as usize], pos)?;
            pos += len;
            written += len;
        }
    }
    Ok(written)
}

/// `-w`: zeroes the whole disk (its top link). Flat disks get zeros written everywhere (they end up
/// eager-zeroed, so a thin one loses `ddb.thinProvisioned`); sparse links drop every grain.
pub fn write_zeros_disk(path: &Path, opts: &OpenOptions) -> Result<()> {
    let rerun = phase::rerun_command(&["-w"], &[path], opts);
    let resumed = phase::resume(path, opts, "write-zeros", &rerun)?;
    let chain = open_rw(path, opts)?;
    let top = chain.top();
    let cap = top.capacity();
    // Until every byte is zero the disk reads as neither before nor after: a data phase.
    let intent = phase::begin(top.real_path(), opts, "write-zeros", rerun, resumed)?;
    if all_flat(top) {
        let zeros = vec![0u8; CHUNK as usize];
        let mut pos = 0;
        while pos < cap {
            let len = CHUNK.min(cap - pos);
            top.write_at(&zeros[..len as usize], pos)?;
            pos += len;
        }
        set_thin_flag(top, false)?;
    } else {
        top.discard(0, cap)?;
    }
    chain.close()?;
    phase::end(intent)
}

/// `-j` (thin → eagerzeroedthick) and `-k` (zeroedthick → eagerzeroedthick): writes zeros over
/// every unwritten range of a flat disk. Either leaves the disk fully allocated, so it loses
/// `ddb.thinProvisioned`. Returns the bytes written.
pub fn inflate(path: &Path, opts: &OpenOptions) -> Result<u64> {
    let chain = open_rw(path, opts)?;
    let top = chain.top();
    if !all_flat(top) {
        return Err(vmdk::Error::unsupported(
            path,
            "only flat (vmfs, monolithicFlat, twoGbMaxExtentFlat) disks can be inflated or eager-zeroed",
        )
        .into());
    }
    if top.extents().iter().any(|e| e.kind == ExtentKind::Zero) {
        return Err(vmdk::Error::unsupported(path, "disk has ZERO extents, which hold no storage to zero").into());
    }
    let n = fill_holes(top)?;
    set_thin_flag(top, false)?;
    top.flush()?;
    Ok(n)
}

/// The `(start, end)` ranges of the `Data` runs of a chain, walked in runs.
fn data_ranges(c: &Chain) -> impl Iterator<Item = vmdk::Result<(u64, u64)>> + '_ {
    vmdk::map::walk(c).filter_map(|r| match r {
        Ok(r) if r.state != State::Data => None,
        r => Some(r.map(|r| (r.offset, r.end()))),
    })
}

/// What [`compare`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// Same capacity and the same bytes.
    Identical,
    /// The capacities (in bytes) differ; the contents were not read.
    Capacity {
        /// The first disk's capacity.
        a: u64,
        /// The second disk's capacity.
        b: u64,
    },
    /// Same capacity, different bytes.
    Content {
        /// The first byte offset where they differ.
        offset: u64,
    },
}

/// `--compare`: whether two disks (or chains) are identical — same capacity, same bytes — and if
/// not, why. Ranges both maps say hold no data are not read.
pub fn compare(a: &Path, b: &Path, opts: &OpenOptions) -> Result<Comparison> {
    let (ca, cb) = (Chain::open(a, opts)?, Chain::open(b, opts)?);
    let cap = ca.capacity();
    if cb.capacity() != cap {
        return Ok(Comparison::Capacity { a: cap, b: cb.capacity() });
    }
    let mut ba = vec![0u8; CHUNK as usize];
    let mut bb = vec![0u8; CHUNK as usize];
    // The first difference inside `[s, e)`, a range where either side has data.
    let mut differs = |(s, e): (u64, u64)| -> Result<Option<u64>> {
        let mut pos = s;
        while pos < e {
            let len = CHUNK.min(e - pos) as usize;
            ca.read_at(&mut ba[..len], pos)?;
            cb.read_at(&mut bb[..len], pos)?;
            if ba[..len] != bb[..len] {
                let i = ba[..len].iter().zip(&bb[..len]).position(|(x, y)| x != y).unwrap_or(0);
                return Ok(Some(pos + i as u64));
            }
            pos += len as u64;
        }
        Ok(None)
    };
    // Both maps walked side by side: the union of their data runs, in order.
    let (mut wa, mut wb) = (data_ranges(&ca), data_ranges(&cb));
    let (mut na, mut nb) = (wa.next().transpose()?, wb.next().transpose()?);
    let mut cur: Option<(u64, u64)> = None;
    loop {
        let r = match (na, nb) {
            (Some(x), Some(y)) if x.0 <= y.0 => std::mem::replace(&mut na, wa.next().transpose()?),
            (_, Some(_)) => std::mem::replace(&mut nb, wb.next().transpose()?),
            (Some(_), None) => std::mem::replace(&mut na, wa.next().transpose()?),
            (None, None) => break,
        };
        let Some(r) = r else { break };
        match cur {
            Some(c) if r.0 <= c.1 => cur = Some((c.0, c.1.max(r.1))),
            Some(c) => {
                if let Some(offset) = differs(c)? {
                    return Ok(Comparison::Content { offset });
                }
                cur = Some(r);
            }
            None => cur = Some(r),
        }
    }
    if let Some(offset) = cur.map(&mut differs).transpose()?.flatten() {
        return Ok(Comparison::Content { offset });
    }
    Ok(Comparison::Identical)
}
