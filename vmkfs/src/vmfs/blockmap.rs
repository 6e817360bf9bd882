//! Block maps: where each byte of a file is. A descriptor's zero-level address type says how its
//! block-pointer array is read (direct blocks or sub-blocks, one or two levels of pointer blocks, or
//! data resident in the descriptor); each pointer then resolves to a volume offset, a to-be-zeroed
//! block (reads as zeros) or a hole (null pointer, reads as zeros).

use rdm::ReadAt;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::address::{describe, kind, Addr};
use super::error::{Result, VmfsError};
use super::filedesc::{zla, FileDesc};
use super::inner::Inner;

/// How deep system files may refer to each other while resolving one address (a cycle limit:
/// a user file's sub-block lives in `.sbc.sf`, whose pointer blocks live in `.pb2.sf`).
const MAX_DEPTH: u8 = 4;

/// What a run of a file on the logical volume is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeRunKind {
    /// Stored at this volume offset.
    Data(u64),
    /// A to-be-zeroed block: allocated, reads as zeros.
    Zero,
    /// Not allocated: reads as zeros.
    Hole,
}

/// A run of a file on the logical volume (volume offsets; [`DeviceRun`] places it on devices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeRun {
    /// Offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// What it is.
    pub kind: VolumeRunKind,
}

/// Appends a run, merging it with the previous one when they continue each other.
pub(crate) fn push(out: &mut Vec<VolumeRun>, p: VolumeRun) {
    if p.len == 0 {
        return;
    }
    if let Some(l) = out.last_mut() {
        if l.offset + l.len == p.offset {
            match (l.kind, p.kind) {
                (VolumeRunKind::Data(a), VolumeRunKind::Data(b)) if a + l.len == b => {
                    l.len += p.len;
                    return;
                }
                (VolumeRunKind::Zero, VolumeRunKind::Zero) | (VolumeRunKind::Hole, VolumeRunKind::Hole) => {
                    l.len += p.len;
                    return;
                }
                _ => {}
            }
        }
    }
    out.push(p);
}

/// Pointer blocks already read, by raw address (bounded; cleared when full).
#[derive(Debug, Default)]
pub struct PbCache {
    map: Mutex<HashMap<u64, Arc<Vec<u64>>>>,
}

const PB_CACHE_ENTRIES: usize = 64;

/// A volume's shared state seen as the block map of its files: every block-map kind, pointer
/// blocks, and reads of files through it. The volume's other lookups ([`super::volume`]) build on it.
pub(crate) struct BlockMap<'a>(pub(crate) &'a Inner);

impl std::ops::Deref for BlockMap<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        self.0
    }
}

impl BlockMap<'_> {
    /// The pieces of `[offset, offset+len)` of the file `fd`, clamped to its length.
    pub(crate) fn map_file(&self, fd: &FileDesc, offset: u64, len: u64, cache: &PbCache) -> Result<Vec<VolumeRun>> {
        let mut out = Vec::new();
        self.map_into(fd, offset, len, cache, 0, &mut out)?;
        Ok(out)
    }

    fn map_into(
        &self,
        fd: &FileDesc,
        offset: u64,
        len: u64,
        cache: &PbCache,
        depth: u8,
        out: &mut Vec<VolumeRun>,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(VmfsError::corrupt(
                &self.place,
                fd.vol_offset,
                format!("system files refer to each other more than {MAX_DEPTH} levels deep (a loop?)"),
            ));
        }
        let end = offset.saturating_add(len).min(fd.length);
        if offset >= end {
            return Ok(());
        }
        if fd.zla == zla::RESIDENT {
            let at = fd.vol_offset + self.g.fd_data as u64 + offset;
            push(out, VolumeRun { offset, len: end - offset, kind: VolumeRunKind::Data(at) });
            return Ok(());
        }
        let shift = fd.block_shift;
        let ppb = self.g.ptrs_per_pb as u128;
        let count = fd.blocks.len() as u128;
        let levels = match fd.zla {
            zla::FILE_BLOCK | zla::SUB_BLOCK => 0,
            zla::POINTER_BLOCK | zla::POINTER2_BLOCK => 1,
            zla::DOUBLE_INDIRECT => 2,
            z => {
                return Err(VmfsError::unsupported(
                    &self.place,
                    format!("file descriptor at volume offset {} has zero-level address type {z:#x}", fd.vol_offset),
                ))
            }
        };
        let reach = (count * ppb.pow(levels)) << shift;
        if (fd.length as u128) > reach {
            return Err(VmfsError::corrupt(
                &self.place,
                fd.vol_offset + self.g.fd_meta as u64 + 0x14,
                format!(
                    "file length {} is beyond the {reach} bytes its block map (type {:#x}, {} pointers, {} bytes per block) can reach",
                    fd.length,
                    fd.zla,
                    count,
                    1u64 << shift
                ),
            ));
        }
        let mut pos = offset;
        while pos < end {
            let b = (pos >> shift) as u128;
            // (raw pointer, end of the file range it or its missing parent covers)
            let (raw, span_end): (u64, u128) = match levels {
                0 => (fd.blocks[b as usize], (b + 1) << shift),
                1 => {
                    let (i, j) = (b / ppb, b % ppb);
                    let top = fd.blocks[i as usize];
                    if top == 0 {
                        (0, ((i + 1) * ppb) << shift)
                    } else {
                        (self.pointer(top, j as usize, cache, depth, fd)?, (b + 1) << shift)
                    }
                }
                _ => {
                    let (i, j, k) = (b / (ppb * ppb), (b / ppb) % ppb, b % ppb);
                    let top = fd.blocks[i as usize];
                    if top == 0 {
                        (0, ((i + 1) * ppb * ppb) << shift)
                    } else {
                        let mid = self.pointer(top, j as usize, cache, depth, fd)?;
                        if mid == 0 {
                            (0, ((i * ppb + j + 1) * ppb) << shift)
                        } else {
                            (self.pointer(mid, k as usize, cache, depth, fd)?, (b + 1) << shift)
                        }
                    }
                }
            };
            let limit = span_end.min(end as u128) as u64;
            pos = self.resolve(raw, pos, limit, depth, cache, fd, out)?;
        }
        Ok(())
    }

    /// Resolves pointer `raw` for the file range starting at `pos` (up to `limit`), appends the
    /// pieces and returns where it stopped.
    #[allow(clippy::too_many_arguments)]
    fn resolve(
        &self,
        raw: u64,
        pos: u64,
        limit: u64,
        depth: u8,
        cache: &PbCache,
        fd: &FileDesc,
        out: &mut Vec<VolumeRun>,
    ) -> Result<u64> {
        let addr = self.decode(raw);
        // Pieces end at the block size of the pointer's kind as well as at the entry's range.
        let upto = |size: u64| -> u64 { (pos | (size - 1)).saturating_add(1).min(limit) };
        match addr {
            Addr::Null => {
                push(out, VolumeRun { offset: pos, len: limit - pos, kind: VolumeRunKind::Hole });
                Ok(limit)
            }
            Addr::Fb { block, tbz } => {
                let e = upto(self.g.fbs);
                let kind = self.block_piece(block, self.g.fbs, tbz, pos, raw, fd)?;
                push(out, VolumeRun { offset: pos, len: e - pos, kind });
                Ok(e)
            }
            Addr::Sfb { cluster, resource, tbz } => {
                let e = upto(self.g.fbs);
                if !tbz && resource >= self.sfb_per_cluster {
                    return Err(self.bad_pointer(fd, raw, "small-file-block resource beyond its cluster"));
                }
                let block =
                    cluster.checked_mul(self.sfb_per_cluster).and_then(|c| c.checked_add(resource)).unwrap_or(u64::MAX);
                let kind = self.block_piece(block, self.g.fbs, tbz, pos, raw, fd)?;
                push(out, VolumeRun { offset: pos, len: e - pos, kind });
                Ok(e)
            }
            Addr::Lfb { block, tbz } if self.g.generation == super::fsdesc::Generation::Vmfs6 => {
                let e = upto(self.g.lfbs);
                let kind = self.block_piece(block, self.g.lfbs, tbz, pos, raw, fd)?;
                push(out, VolumeRun { offset: pos, len: e - pos, kind });
                Ok(e)
            }
            Addr::Res { kind: kind::SB, cluster, resource } => {
                let e = upto(self.g.sbs);
                let sbc = self
                    .sbc
                    .as_ref()
                    .ok_or_else(|| self.bad_pointer(fd, raw, "sub-block pointer but the volume has no .sbc.sf"))?;
                let base = sbc
                    .meta
                    .offset(cluster, resource)
                    .ok_or_else(|| self.bad_pointer(fd, raw, "sub-block outside .sbc.sf"))?;
                let from = base + (pos & (self.g.sbs - 1));
                let n = e - pos;
                let mut inner = Vec::new();
                self.map_into(&sbc.fd, from, n, cache, depth + 1, &mut inner)?;
                let covered: u64 = inner.iter().map(|p| p.len).sum();
                if covered != n {
                    return Err(self.bad_pointer(fd, raw, "sub-block beyond the end of .sbc.sf"));
                }
                for p in inner {
                    push(out, VolumeRun { offset: pos + (p.offset - from), len: p.len, kind: p.kind });
                }
                Ok(e)
            }
            _ => Err(self.bad_pointer(fd, raw, "not a data block pointer")),
        }
    }

    fn decode(&self, raw: u64) -> Addr {
        if self.g.addr_width == 8 {
            Addr::decode64(raw)
        } else {
            Addr::decode32(raw as u32, self.g.dense)
        }
    }

    /// The piece at file offset `pos` inside block `block` of `size` bytes: to-be-zeroed when
    /// `tbz`, else data at the block's volume offset.
    fn block_piece(
        &self,
        block: u64,
        size: u64,
        tbz: bool,
        pos: u64,
        raw: u64,
        fd: &FileDesc,
    ) -> Result<VolumeRunKind> {
        if tbz {
            return Ok(VolumeRunKind::Zero);
        }
        Ok(VolumeRunKind::Data(self.block_offset(block, size, raw, fd)? + (pos & (size - 1))))
    }

    fn block_offset(&self, block: u64, size: u64, raw: u64, fd: &FileDesc) -> Result<u64> {
        block
            .checked_mul(size)
            .filter(|o| o.checked_add(size).is_some_and(|e| e <= self.lv.size.div_ceil(size) * size))
            .ok_or_else(|| self.bad_pointer(fd, raw, "block beyond the end of the volume"))
    }

    fn bad_pointer(&self, fd: &FileDesc, raw: u64, what: &str) -> VmfsError {
        VmfsError::corrupt(
            &self.place,
            fd.vol_offset,
            format!("file descriptor {:#x}: block pointer {}: {what}", fd.addr, describe(raw)),
        )
    }

    /// Entry `index` of the pointer block at `raw`.
    fn pointer(&self, raw: u64, index: usize, cache: &PbCache, depth: u8, fd: &FileDesc) -> Result<u64> {
        let pb = self.pointer_block(raw, cache, depth, fd)?;
        pb.get(index).copied().ok_or_else(|| {
            self.bad_pointer(fd, raw, &format!("pointer block has {} entries, entry {index} asked for", pb.len()))
        })
    }

    fn pointer_block(&self, raw: u64, cache: &PbCache, depth: u8, fd: &FileDesc) -> Result<Arc<Vec<u64>>> {
        if let Some(p) = cache.map.lock().unwrap_or_else(|p| p.into_inner()).get(&raw) {
            return Ok(p.clone());
        }
        let want = self.g.pb_bytes();
        let bytes = match self.decode(raw) {
            Addr::Res { kind: k @ (kind::PB | kind::PB2 | kind::SB), cluster, resource } => {
                let sys = match k {
                    kind::PB => self.pbc.as_ref(),
                    kind::PB2 => self.pb2.as_ref(),
                    _ if self.g.addr_width == 8 => self.sbc.as_ref(),
                    _ => None,
                };
                let sys = sys.ok_or_else(|| {
                    self.bad_pointer(fd, raw, "pointer block in a resource file the volume does not have")
                })?;
                if sys.meta.res_size == 0 {
                    return Err(self.bad_pointer(fd, raw, "pointer block in a resource file without resource data"));
                }
                let n = sys.meta.res_size.min(want);
                let off = sys
                    .meta
                    .offset(cluster, resource)
                    .ok_or_else(|| self.bad_pointer(fd, raw, "pointer block outside its resource file"))?;
                self.read_file(&sys.fd, off, n, cache, depth + 1)?
            }
            Addr::Sfb { cluster, resource, tbz: false } if self.g.addr_width == 8 => {
                let block =
                    cluster.checked_mul(self.sfb_per_cluster).and_then(|c| c.checked_add(resource)).unwrap_or(u64::MAX);
                let at = self.block_offset(block, self.g.fbs, raw, fd)?;
                let mut v = vec![0u8; want.min(self.g.fbs) as usize];
                self.lv.read_exact_at(&mut v, at)?;
                v
            }
            _ => return Err(self.bad_pointer(fd, raw, "not a pointer block")),
        };
        let w = self.g.addr_width;
        let ptrs: Vec<u64> = bytes
            .chunks_exact(w)
            .map(|c| {
                if w == 8 {
                    u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))
                } else {
                    u32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as u64
                }
            })
            .collect();
        let ptrs = Arc::new(ptrs);
        let mut m = cache.map.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= PB_CACHE_ENTRIES {
            m.clear();
        }
        m.insert(raw, ptrs.clone());
        Ok(ptrs)
    }

    /// Reads `[offset, offset+len)` of the file `fd` (holes and to-be-zeroed blocks as zeros);
    /// the range must lie within the file.
    pub(crate) fn read_file(
        &self,
        fd: &FileDesc,
        offset: u64,
        len: u64,
        cache: &PbCache,
        depth: u8,
    ) -> Result<Vec<u8>> {
        if offset.checked_add(len).is_none_or(|e| e > fd.length) {
            return Err(VmfsError::corrupt(
                &self.place,
                fd.vol_offset,
                format!(
                    "read of {len} bytes at offset {offset} of a {}-byte file (descriptor {:#x})",
                    fd.length, fd.addr
                ),
            ));
        }
        let mut buf = vec![0u8; len as usize];
        let mut pieces = Vec::new();
        self.map_into(fd, offset, len, cache, depth, &mut pieces)?;
        for p in pieces {
            if let VolumeRunKind::Data(at) = p.kind {
                let b = (p.offset - offset) as usize;
                self.lv.read_exact_at(&mut buf[b..b + p.len as usize], at)?;
            }
        }
        Ok(buf)
    }
}

/// What a range of a file is, with device offsets for data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DeviceRunKind {
    /// Stored on device `device` (index in [`super::Volume::devices`]) at `device_offset`.
    Data {
        /// Device index.
        device: usize,
        /// Byte offset on the device.
        device_offset: u64,
        /// Byte offset in the logical volume.
        volume_offset: u64,
    },
    /// Allocated but to be zeroed (lazily zeroed thick disks): reads as zeros.
    Zero,
    /// Not allocated: reads as zeros.
    Hole,
}

/// A range of a file placed on the volume's devices (an entry of the file's extent map; not a
/// VMDK extent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DeviceRun {
    /// Offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// What it is.
    #[serde(flatten)]
    pub kind: DeviceRunKind,
}

/// Volume runs placed on devices (a volume run spanning two devices becomes two device runs).
pub(crate) fn to_device_runs(inner: &Inner, pieces: Vec<VolumeRun>) -> Result<Vec<DeviceRun>> {
    let mut out: Vec<DeviceRun> = Vec::with_capacity(pieces.len());
    for p in pieces {
        match p.kind {
            VolumeRunKind::Data(at) => {
                let mut off = p.offset;
                for s in inner.lv.locate(at, p.len)? {
                    out.push(DeviceRun {
                        offset: off,
                        len: s.len,
                        kind: DeviceRunKind::Data {
                            device: s.device,
                            device_offset: s.device_offset,
                            volume_offset: s.logical,
                        },
                    });
                    off += s.len;
                }
            }
            VolumeRunKind::Zero => out.push(DeviceRun { offset: p.offset, len: p.len, kind: DeviceRunKind::Zero }),
            VolumeRunKind::Hole => out.push(DeviceRun { offset: p.offset, len: p.len, kind: DeviceRunKind::Hole }),
        }
    }
    Ok(out)
}
