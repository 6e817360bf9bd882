//! A disk (or any [`Source`]) as one file of a snapshot, in fixed blocks taken from the
//! allocation map; and a file of a snapshot read back as a [`Source`].

use std::collections::HashMap;
use std::sync::Mutex;

use vmdk::map::{AllocMap, MapSource, State};

use super::repo::{corrupt, Repo, Writer};
use super::{BlobKind, Id};
use crate::engine::Source;
use crate::error::Result;

/// The block size of a disk file: 1 MiB, aligned to the disk (a multiple of every grain).
pub const BLOCK: u64 = 1 << 20;
/// Blocks read, hashed and sealed at a time (in parallel).
const BATCH: usize = 16;

/// What [`write_source`] did.
#[derive(Debug, Default, Clone)]
pub struct Written {
    /// The file's blobs, in order.
    pub content: Vec<Id>,
    /// Bytes read from the source.
    pub read: u64,
    /// Blocks taken over from the previous snapshot without reading.
    pub reused: u64,
}

/// The ID of `len` zero bytes.
pub fn zero_id(len: u64) -> Id {
    Id::of(&vec![0u8; len as usize])
}

/// Which blocks of `src` hold data (anything the map does not call zero or unallocated).
fn data_blocks(src: &dyn Source) -> Result<Vec<bool>> {
    let cap = src.capacity();
    let mut out = vec![false; cap.div_ceil(BLOCK) as usize];
    for run in vmdk::map::walk(src) {
        let run = run?;
        if run.state == State::Data && run.len > 0 {
            for b in out.iter_mut().take(run.end().div_ceil(BLOCK) as usize).skip((run.offset / BLOCK) as usize) {
                *b = true;
            }
        }
    }
    Ok(out)
}

/// Stores `src` as a file's blobs. Blocks the map calls zero or unallocated become the zero blob
/// without reading; with `prev` (the previous snapshot's blobs of the same disk and, per block,
/// whether it may have changed since), unchanged blocks keep their blob without reading. Every
/// other block is read once; a block the repository holds already is not stored again.
pub fn write_source(
    w: &mut Writer<'_>,
    src: &dyn Source,
    prev: Option<(&[Id], &[bool])>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Written> {
    let cap = src.capacity();
    let data = data_blocks(src)?;
    let n = data.len();
    let full_zero = zero_id(BLOCK.min(cap));
    let tail = cap - (n.saturating_sub(1) as u64) * BLOCK;
    let tail_zero = if tail == BLOCK { full_zero } else { zero_id(tail) };
    let prev = prev.filter(|(ids, changed)| ids.len() == n && changed.len() == n);
    let mut out = Written { content: Vec::with_capacity(n), ..Written::default() };
    let mut zeros_needed = (false, false);
    let mut buf = vec![0u8; BATCH * BLOCK as usize];
    let len_of = |b: usize| if b + 1 == n { tail } else { BLOCK };
    // The blob block `b` gets without reading: the previous snapshot's when the change map says
    // it did not change, the zero blob when the allocation map holds no data there.
    let unread = |b: usize| -> Option<Id> {
        match prev {
            Some((ids, changed)) if !changed[b] => Some(ids[b]),
            _ if data[b] => None,
            _ if b + 1 == n => Some(tail_zero),
            _ => Some(full_zero),
        }
    };
    let mut i = 0;
    while i < n {
        if let Some(id) = unread(i) {
            if data[i] {
                out.reused += 1;
            } else if id == tail_zero && i + 1 == n {
                zeros_needed.1 = true;
            } else if id == full_zero {
                zeros_needed.0 = true;
            }
            out.content.push(id);
            i += 1;
            continue;
        }
        // A batch of consecutive blocks to read.
        let mut j = i + 1;
        while j < n && j - i < BATCH && unread(j).is_none() {
            j += 1;
        }
        let start = i as u64 * BLOCK;
        let bytes = (i..j).map(len_of).sum::<u64>() as usize;
        src.read_at(&mut buf[..bytes], start)?;
        out.read += bytes as u64;
        let pieces: Vec<&[u8]> = (i..j).map(|b| &buf[(b - i) * BLOCK as usize..][..len_of(b) as usize]).collect();
        out.content.extend(w.add(BlobKind::Data, &pieces)?);
        i = j;
        progress(start + bytes as u64, cap);
    }
    // The zero blobs referenced without reading must exist.
    let z = vec![0u8; BLOCK.min(cap) as usize];
    if zeros_needed.0 {
        w.add(BlobKind::Data, &[&z])?;
    }
    if zeros_needed.1 {
        w.add(BlobKind::Data, &[&z[..tail as usize]])?;
    }
    progress(cap, cap);
    Ok(out)
}

/// A file of a snapshot, read as a disk: its blobs in order; blobs of zeros map as zeros.
pub struct RepoFile<'a> {
    repo: &'a Repo,
    /// `(start offset, blob, length)` per blob.
    blobs: Vec<(u64, Id, u64)>,
    zero: Vec<bool>,
    size: u64,
    last: Mutex<Option<(usize, Vec<u8>)>>,
}

impl<'a> RepoFile<'a> {
    /// The file made of `content`, `size` bytes (`name` names it in errors).
    pub fn new(repo: &'a Repo, name: &str, content: &[Id], size: u64) -> Result<RepoFile<'a>> {
        let mut blobs = Vec::with_capacity(content.len());
        let mut pos = 0u64;
        for id in content {
            let b = repo.blob(id).ok_or_else(|| {
                corrupt(&repo.root().join("index"), None, format!("{name}: blob {id} is in no index"))
            })?;
            blobs.push((pos, *id, b.plain_len()));
            pos += b.plain_len();
        }
        if pos != size {
            return Err(corrupt(
                &repo.root().join("snapshots"),
                None,
                format!("{name}: its blobs hold {pos} bytes, the tree says {size}"),
            ));
        }
        // Zero blobs: for each length that occurs more than once (restic's chunker cuts runs of
        // zeros into equal maximal chunks; our blocks are all 1 MiB).
        let mut by_len: HashMap<u64, usize> = HashMap::new();
        for b in &blobs {
            *by_len.entry(b.2).or_default() += 1;
        }
        let zeros: HashMap<u64, Id> =
            by_len.into_iter().filter(|(_, c)| *c > 1).map(|(l, _)| (l, zero_id(l))).collect();
        let mut zero: Vec<bool> = blobs.iter().map(|b| zeros.get(&b.2) == Some(&b.1)).collect();
        if let Some(last) = blobs.last() {
            if let Some(z) = zero.last_mut() {
                *z = *z || last.2 <= BLOCK && last.1 == zero_id(last.2);
            }
        }
        Ok(RepoFile { repo, blobs, zero, size, last: Mutex::new(None) })
    }

    /// `(start offset, blob, length)` of each blob, in order.
    pub fn blobs(&self) -> &[(u64, Id, u64)] {
        &self.blobs
    }

    /// Whether blob `i` (of [`RepoFile::blobs`]) is all zeros.
    pub fn is_zero(&self, i: usize) -> bool {
        self.zero[i]
    }

    fn blob_at(&self, offset: u64) -> usize {
        self.blobs.partition_point(|b| b.0 + b.2 <= offset)
    }

    fn to_vmdk(e: crate::Error) -> vmdk::Error {
        match e {
            crate::Error::Repo { path, offset, what } => {
                vmdk::Error::Corrupt { path, offset: offset.unwrap_or(0), what }
            }
            crate::Error::Vmdk(v) => v,
            e => vmdk::Error::Corrupt { path: Default::default(), offset: 0, what: e.to_string() },
        }
    }
}

impl MapSource for RepoFile<'_> {
    fn capacity(&self) -> u64 {
        self.size
    }

    fn map_into(&self, offset: u64, end: u64, budget: usize, out: &mut AllocMap) -> vmdk::Result<u64> {
        if offset > end || end > self.size {
            return Err(vmdk::Error::Corrupt {
                path: self.repo.root().into(),
                offset,
                what: format!("map of [{offset}, {end}) outside the file of {} bytes", self.size),
            });
        }
        let mut pos = offset;
        let mut i = self.blob_at(offset);
        let mut pushed = 0;
        while pos < end && i < self.blobs.len() {
            let (s, _, l) = self.blobs[i];
            let e = (s + l).min(end);
            out.push(pos, e - pos, if self.zero[i] { State::Zero } else { State::Data }, 0);
            pos = e;
            i += 1;
            pushed += 1;
            if pushed >= budget {
                break;
            }
        }
        Ok(pos)
    }
}

impl Source for RepoFile<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vmdk::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let i = self.blob_at(pos);
            let Some(&(s, id, l)) = self.blobs.get(i) else {
                return Err(vmdk::Error::Corrupt {
                    path: self.repo.root().into(),
                    offset: pos,
                    what: format!("read past the end of a file of {} bytes", self.size),
                });
            };
            let n = ((s + l - pos) as usize).min(buf.len() - done);
            let dst = &mut buf[done..done + n];
            if self.zero[i] {
                dst.fill(0);
            } else {
                let mut last = self.last.lock().expect("not poisoned");
                if last.as_ref().map(|(j, _)| *j) != Some(i) {
                    *last = Some((i, self.repo.read_blob(&id).map_err(Self::to_vmdk)?));
                }
                let data = &last.as_ref().expect("set above").1;
                dst.copy_from_slice(&data[(pos - s) as usize..(pos - s) as usize + n]);
            }
            done += n;
        }
        Ok(())
    }
}
