//! Disk operations: delete, rename, extend, punch zeros, zero, inflate, compare.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redo::Chain;
use vmdk::create::{Adapter, VMWARE_SPLIT_SECTORS};
use vmdk::descriptor::{CreateType, Descriptor, ExtentLine, ExtentType};
use vmdk::extent::is_zero;
use vmdk::storage::{resolve_extent_path, write_zeros};
use vmdk::{Container, Link, OpenOptions, State, Storage};

use crate::error::{Error, Result};

const CHUNK: u64 = 1 << 20;

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn stem(p: &Path) -> String {
    let n = file_name(p);
    n.strip_suffix(".vmdk").unwrap_or(&n).to_string()
}

/// Writes a descriptor file atomically: a temporary file beside it, synced, then renamed over it.
pub fn write_descriptor_file(storage: &Arc<dyn Storage>, path: &Path, d: &Descriptor) -> Result<()> {
    let tmp = path.with_file_name(format!(".{}.vmkfs-desc.tmp", file_name(path)));
    let _ = storage.remove(&tmp);
    let b = storage.create_new(&tmp)?;
    let text = d.to_text();
    b.write_all_at(text.as_bytes(), 0)?;
    b.sync()?;
    drop(b);
    storage.rename(&tmp, path)?;
    storage.sync_dir(path.parent().unwrap_or(Path::new("")))?;
    Ok(())
}

/// `-U`: deletes a disk and every file it owns (the descriptor first, so a crash never leaves a
/// descriptor naming missing files). Returns the files removed. A raw device mapping loses its
/// descriptor and mapping file only: the device is never touched, and need not be present.
pub fn delete(path: &Path, opts: &OpenOptions) -> Result<Vec<PathBuf>> {
    if let Some(files) = crate::rdm_ops::mapping_files(path, opts)? {
        for f in &files {
            opts.storage.remove(f)?;
        }
        return Ok(files);
    }
    let files = Link::open(path, opts)?.files();
    for f in &files {
        opts.storage.remove(f)?;
    }
    Ok(files)
}

/// `-E`: renames a disk and every file it owns whose name starts with the disk's name, rewriting
/// the descriptor, and the `parentFileNameHint` of child links in the new disk's folder.
pub fn rename(old: &Path, new: &Path, opts: &OpenOptions) -> Result<PathBuf> {
    let storage = &opts.storage;
    if storage.exists(new) {
        return Err(vmdk::Error::Exists { path: new.into() }.into());
    }
    let link = Link::open(old, opts)?;
    let container = link.container();
    let mut d = link.descriptor();
    drop(link);
    let (old_stem, new_stem) = (stem(old), stem(new));
    let new_dir = new.parent().unwrap_or(Path::new("")).to_path_buf();
    match container {
        Container::Embedded => {
            storage.rename(old, new)?;
            let l = Link::open(new, &OpenOptions { write: true, ..opts.clone() })?;
            l.update_descriptor(|d| {
                if let Some(e) = d.extents.first_mut() {
                    e.file = Some(file_name(new));
                }
            })?;
            l.close()?;
        }
        Container::BareExtent | Container::Raw => storage.rename(old, new)?,
        Container::Descriptor => {
            let mut moves = Vec::new();
            for e in d.extents.iter_mut() {
                let Some(name) = e.file.clone() else { continue };
                let from = resolve_extent_path(old, &name, opts.allow_outside)?;
                let to_name = match name.strip_prefix(&old_stem) {
                    Some(rest) if !name.contains('/') => format!("{new_stem}{rest}"),
                    _ => name.clone(),
                };
                let to = new_dir.join(&to_name);
                if to != from {
                    if storage.exists(&to) {
                        return Err(vmdk::Error::Exists { path: to }.into());
                    }
                    moves.push((from, to));
                }
                e.file = Some(to_name);
            }
            // New descriptor under a temporary name, extents moved, then the descriptor swapped in.
            let tmp = new.with_file_name(format!(".{}.vmkfs-desc.tmp", file_name(new)));
            let _ = storage.remove(&tmp);
            let b = storage.create_new(&tmp)?;
            b.write_all_at(d.to_text().as_bytes(), 0)?;
            b.sync()?;
            drop(b);
            for (from, to) in &moves {
                storage.rename(from, to)?;
            }
            storage.rename(&tmp, new)?;
            if old != new {
                storage.remove(old)?;
            }
            storage.sync_dir(&new_dir)?;
        }
    }
    // ESX 2 REDO logs name their parent by their own name (`OLD.REDO`): they move along.
    let (mut o, mut n) = (old.as_os_str().to_owned(), new.as_os_str().to_owned());
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
        storage.rename(&op, &np)?;
    }
    fix_child_hints(old, new, opts)?;
    Ok(new.to_path_buf())
}

/// Rewrites `parentFileNameHint` of descriptors in `new`'s folder that named `old`.
fn fix_child_hints(old: &Path, new: &Path, opts: &OpenOptions) -> Result<()> {
    let dir = new.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    let old_abs = std::path::absolute(old).unwrap_or_else(|_| old.to_path_buf());
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "vmdk") || p == new {
            continue;
        }
        let Ok(link) = Link::open(&p, &OpenOptions::read()) else { continue };
        let d = link.descriptor();
        let Some(hint) = d.parent_file_name_hint.clone() else { continue };
        let Ok(target) = resolve_extent_path(&p, &hint, true) else { continue };
        if std::path::absolute(&target).unwrap_or(target) != old_abs {
            continue;
        }
        let abs = |x: &Path| std::path::absolute(x).unwrap_or_else(|_| x.to_path_buf());
        let same_dir = abs(new).parent() == abs(&p).parent();
        let new_hint = if same_dir { file_name(new) } else { abs(new).display().to_string() };
        let container = link.container();
        drop(link);
        match container {
            Container::Descriptor => {
                let mut d = d;
                d.parent_file_name_hint = Some(new_hint);
                write_descriptor_file(&opts.storage, &p, &d)?;
            }
            Container::Embedded => {
                let l = Link::open(&p, &OpenOptions { write: true, ..opts.clone() })?;
                l.update_descriptor(|d| d.parent_file_name_hint = Some(new_hint))?;
                l.close()?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// `-X`: grows a disk to `new_capacity` bytes (never shrinks). Flat extents grow in place (space
/// reserved for thick disks, zeroed for `eager`), split formats gain extents, the geometry follows.
pub fn extend(path: &Path, new_capacity: u64, eager: bool, opts: &OpenOptions) -> Result<()> {
    let link = Link::open(path, opts)?;
    let cap = link.capacity();
    let container = link.container();
    let mut d = link.descriptor();
    drop(link);
    if !new_capacity.is_multiple_of(512) {
        return Err(Error::Usage(format!("size {new_capacity} is not a multiple of 512 bytes")));
    }
    if new_capacity <= cap {
        return Err(Error::Usage(format!(
            "{}: new size {new_capacity} is not larger than the current {cap} bytes (disks never shrink)",
            path.display()
        )));
    }
    if let Some(child) = redo::snapshot::children_of(path, opts).first() {
        return Err(Error::Usage(format!(
            "{}: cannot extend a disk that has REDO links ({} is built on it): every link of a chain must keep the same capacity; commit or discard them first",
            path.display(),
            child.display()
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
    let mut created = Vec::new();
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
            let f = path.with_file_name(&name);
            let b = storage.create_new(&f)?;
            created.push(f.clone());
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
    let (c, h, s) = adapter.geometry(new_capacity / 512);
    if d.ddb("geometry.cylinders").is_some() {
        d.set_ddb("geometry.cylinders", c.to_string());
        d.set_ddb("geometry.heads", h.to_string());
        d.set_ddb("geometry.sectors", s.to_string());
    }
    if let Err(e) = write_descriptor_file(storage, path, &d) {
        for f in created {
            let _ = storage.remove(&f);
        }
        return Err(e);
    }
    Ok(())
}

fn open_rw(path: &Path, opts: &OpenOptions) -> Result<Chain> {
    Ok(Chain::open(path, &OpenOptions { write: true, ..opts.clone() })?)
}

/// `-K`: deallocates blocks of the top link that hold only zeros. Returns bytes freed. An ESX flat
/// disk (`createType="vmfs"`) that this leaves with holes is thin from then on: it gets
/// `ddb.thinProvisioned = "1"`.
pub fn punch_zero(path: &Path, opts: &OpenOptions) -> Result<u64> {
    let chain = open_rw(path, opts)?;
    let top = chain.top();
    let block: u64 = 64 << 10;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut freed = 0;
    let cap = top.capacity();
    let mut off = 0;
    while off < cap {
        let n = (1u64 << 30).min(cap - off);
        for r in top.map(off, n)?.runs().iter().filter(|r| r.state == State::Data) {
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
        off += n;
    }
    if freed > 0 && top.descriptor().create_type == CreateType::Vmfs {
        set_thin_flag(top, true)?;
    }
    top.flush()?;
    Ok(freed)
}

fn all_flat(link: &Link) -> bool {
    link.extents().iter().all(|e| matches!(e.kind, "FLAT" | "VMFS" | "ZERO"))
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
    let cap = link.capacity();
    let mut written = 0;
    let mut off = 0;
    while off < cap {
        let n = (1u64 << 30).min(cap - off);
        for r in link.map(off, n)?.runs().iter().filter(|r| r.state != State::Data) {
            let mut pos = r.offset;
            while pos < r.end() {
                let len = CHUNK.min(r.end() - pos);
                link.write_at(&zeros[..len as usize], pos)?;
                pos += len;
                written += len;
            }
        }
        off += n;
    }
    Ok(written)
}

/// `-w`: zeroes the whole disk (its top link). Flat disks get zeros written everywhere (they end up
/// eager-zeroed, so a thin one loses `ddb.thinProvisioned`); sparse links drop every grain.
pub fn write_zeros_disk(path: &Path, opts: &OpenOptions) -> Result<()> {
    let chain = open_rw(path, opts)?;
    let top = chain.top();
    let cap = top.capacity();
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
    top.flush()?;
    Ok(())
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
    if top.extents().iter().any(|e| e.kind == "ZERO") {
        return Err(vmdk::Error::unsupported(path, "disk has ZERO extents, which hold no storage to zero").into());
    }
    let n = fill_holes(top)?;
    set_thin_flag(top, false)?;
    top.flush()?;
    Ok(n)
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
    let mut off = 0;
    while off < cap {
        let n = (1u64 << 30).min(cap - off);
        let (ma, mb) = (ca.map(off, n)?, cb.map(off, n)?);
        // Byte ranges where either side has data.
        let mut ranges: Vec<(u64, u64)> =
            ma.runs().iter().chain(mb.runs()).filter(|r| r.state == State::Data).map(|r| (r.offset, r.end())).collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (s, e) in ranges {
            match merged.last_mut() {
                Some(m) if s <= m.1 => m.1 = m.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        for (s, e) in merged {
            let mut pos = s;
            while pos < e {
                let len = CHUNK.min(e - pos) as usize;
                ca.read_at(&mut ba[..len], pos)?;
                cb.read_at(&mut bb[..len], pos)?;
                if ba[..len] != bb[..len] {
                    let i = ba[..len].iter().zip(&bb[..len]).position(|(x, y)| x != y).unwrap_or(0);
                    return Ok(Comparison::Content { offset: pos + i as u64 });
                }
                pos += len as u64;
            }
        }
        off += n;
    }
    Ok(Comparison::Identical)
}
