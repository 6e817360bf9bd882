//! Consistency checks and repairs (`-x check|repair`).
//!
//! For hosted sparse extents: the header, the unclean-shutdown flag, the grain directory and its
//! redundant copy, every grain table against its redundant copy, every grain pointer (inside the
//! file, past the metadata, not shared by two grains). For flat extents: that the files hold what
//! the descriptor maps. Repair rebuilds what the redundant copy allows (a table or directory entry
//! that is broken in one copy and sound in the other), drops pointers nothing can rebuild (those
//! grains then read as zeros, and the report says so), and clears the unclean-shutdown flag.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian as LE};

use crate::descriptor::{looks_like_descriptor, Descriptor, ExtentType};
use crate::error::{Error, Result};
use crate::extent::kdmv::{self, SparseHeader, FLAG_COMPRESSED, FLAG_RGD, FLAG_ZEROED_GTE, GD_AT_END};
use crate::link::OpenOptions;
use crate::storage::{resolve_extent_path, Backing};

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file it is in.
    pub file: PathBuf,
    /// Byte offset in that file.
    pub offset: u64,
    /// What is wrong.
    pub what: String,
    /// What repair did about it (None when checking only, or when it cannot be repaired).
    pub repaired: Option<String>,
}

/// The result of a check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Problems, in file order.
    pub findings: Vec<Finding>,
    /// Files examined.
    pub files: Vec<PathBuf>,
}

impl Report {
    /// True when nothing was found.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
    /// Findings that were not repaired.
    pub fn unrepaired(&self) -> usize {
        self.findings.iter().filter(|f| f.repaired.is_none()).count()
    }
}

/// Checks (and with `repair`, repairs) the disk at `path`.
pub fn check_disk(path: &Path, opts: &OpenOptions, repair: bool) -> Result<Report> {
    let mut report = Report::default();
    // An interrupted operation is finished first (as by any command); one that only its own re-run
    // can finish is the finding.
    match crate::txn::settle(opts.storage.as_ref(), path) {
        Err(Error::Interrupted { path: p, op, rerun }) => {
            report.files.push(p.clone());
            report.findings.push(Finding {
                file: p,
                offset: 0,
                what: format!("an interrupted {op} has not finished: re-run `{rerun}` to complete it"),
                repaired: None,
            });
            return Ok(report);
        }
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    let main = opts.storage.open(path, repair)?;
    let mut head = vec![0u8; main.len()?.min(4096) as usize];
    main.read_exact_at(&mut head, 0)?;
    if head.len() >= 4 && LE::read_u32(&head) == kdmv::MAGIC {
        report.files.push(path.to_path_buf());
        check_sparse(&main, repair, None, &mut report)?;
        return Ok(report);
    }
    if !looks_like_descriptor(&head) {
        report.files.push(path.to_path_buf());
        return Ok(report); // A raw image has no metadata to check.
    }
    let len = main.len()?;
    let mut raw = vec![0u8; len.min(crate::descriptor::MAX_DESCRIPTOR_BYTES as u64 + 1) as usize];
    main.read_exact_at(&mut raw, 0)?;
    let d = Descriptor::parse(&String::from_utf8_lossy(&raw), path)?;
    report.files.push(path.to_path_buf());
    let mut opened: HashMap<PathBuf, Arc<dyn Backing>> = HashMap::new();
    for e in &d.extents {
        let Some(name) = &e.file else { continue };
        let f = resolve_extent_path(path, name, opts.allow_outside)?;
        if !opts.storage.exists(&f) {
            report.findings.push(Finding { file: f, offset: 0, what: "extent file is missing".into(), repaired: None });
            continue;
        }
        let b = match opened.get(&f) {
            Some(b) => b.clone(),
            None => {
                let b = opts.storage.open(&f, repair)?;
                opened.insert(f.clone(), b.clone());
                report.files.push(f.clone());
                b
            }
        };
        match e.kind {
            ExtentType::Flat | ExtentType::Vmfs => {
                let need = (e.offset.unwrap_or(0) + e.sectors) * 512;
                let have = b.len()?;
                if have < need {
                    report.findings.push(Finding {
                        file: f,
                        offset: have,
                        what: format!("flat extent is truncated: {have} bytes, the descriptor needs {need}"),
                        repaired: None,
                    });
                }
            }
            ExtentType::Sparse => {
                let mut m = [0u8; 4];
                b.read_exact_at(&mut m, 0)?;
                if LE::read_u32(&m) == kdmv::MAGIC {
                    check_sparse(&b, repair, Some(e.sectors), &mut report)?;
                }
            }
            _ => {}
        }
    }
    Ok(report)
}

fn read_u32s(b: &Arc<dyn Backing>, sector: u64, count: u64) -> Result<Vec<u32>> {
    let mut raw = vec![0u8; (count * 4) as usize];
    b.read_exact_at(&mut raw, sector * 512)?;
    Ok(raw.chunks_exact(4).map(LE::read_u32).collect())
}

/// Checks one hosted sparse extent file.
fn check_sparse(b: &Arc<dyn Backing>, repair: bool, sectors: Option<u64>, report: &mut Report) -> Result<()> {
    let path = b.path().to_path_buf();
    let mut add = |offset: u64, what: String, repaired: Option<String>| {
        report.findings.push(Finding { file: path.clone(), offset, what, repaired });
    };
    let mut s0 = [0u8; 512];
    b.read_exact_at(&mut s0, 0)?;
    let h = match SparseHeader::parse(&s0, b.path(), 0) {
        Ok(h) => h,
        Err(Error::Corrupt { offset, what, .. }) => {
            add(offset, what, None);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let file_len = b.len()?;
    if h.unclean_shutdown {
        let fixed = if repair {
            b.write_all_at(&[0], 72)?;
            Some("cleared the flag".to_string())
        } else {
            None
        };
        add(72, "unclean-shutdown flag is set: the disk was not closed cleanly".into(), fixed);
    }
    if let Some(s) = sectors {
        if h.capacity < s {
            add(12, format!("capacity {} sectors is less than the descriptor's {s}", h.capacity), None);
        }
    }
    if h.flags & FLAG_COMPRESSED != 0 || h.gd_offset == GD_AT_END {
        return Ok(()); // streamOptimized: read-only, checked by reading.
    }
    let count = h.num_gdes();
    let gt_bytes = h.num_gtes_per_gt as u64 * 4;
    let dir_ok = |off: u64| off.checked_mul(512).is_some_and(|o| o + count * 4 <= file_len);
    if !dir_ok(h.gd_offset) {
        add(56, format!("grain directory at sector {} ({count} entries) lies outside the file", h.gd_offset), None);
        return Ok(());
    }
    let gd = read_u32s(b, h.gd_offset, count)?;
    let has_rgd = h.flags & FLAG_RGD != 0 && h.rgd_offset != 0;
    let rgd = if has_rgd {
        if dir_ok(h.rgd_offset) {
            Some(read_u32s(b, h.rgd_offset, count)?)
        } else {
            add(48, format!("redundant grain directory at sector {} lies outside the file", h.rgd_offset), None);
            None
        }
    } else {
        None
    };
    let zeroed_ok = h.flags & FLAG_ZEROED_GTE != 0;
    let gte_ok = |v: u32| -> bool {
        let v = v as u64;
        v == 0 || (v == 1 && zeroed_ok) || (v >= h.overhead && (v + h.grain_size) * 512 <= file_len)
    };
    let table_ok = |s: u32| s as u64 > 1 && (s as u64 * 512 + gt_bytes) <= file_len;
    let mut owners: HashMap<u32, u64> = HashMap::new();
    for i in 0..count as usize {
        let (p, r) = (gd[i], rgd.as_ref().map(|r| r[i]));
        if p != 0 && !table_ok(p) {
            add(
                h.gd_offset * 512 + i as u64 * 4,
                format!("grain directory entry {i} points to sector {p}, outside the file"),
                None,
            );
            continue;
        }
        if let Some(r) = r {
            if (p == 0) != (r == 0) {
                add(
                    h.rgd_offset * 512 + i as u64 * 4,
                    format!("grain directory entry {i} is set in only one of the two directories"),
                    None,
                );
            }
        }
        if p == 0 {
            continue;
        }
        let mut gt = read_u32s(b, p as u64, h.num_gtes_per_gt as u64)?;
        let rgt = match r {
            Some(r) if table_ok(r) => Some(read_u32s(b, r as u64, h.num_gtes_per_gt as u64)?),
            _ => None,
        };
        let mut dirty_p = false;
        let mut dirty_r = false;
        let mut rgt_fixed = rgt.clone();
        for j in 0..gt.len() {
            let at = p as u64 * 512 + j as u64 * 4;
            let v = gt[j];
            let rv = rgt.as_ref().map(|t| t[j]);
            if let Some(rv) = rv {
                if rv != v {
                    // Prefer the primary (written first) when it is sound.
                    let (fixv, note) = if gte_ok(v) {
                        (v, "copied the primary entry")
                    } else if gte_ok(rv) {
                        (rv, "restored from the redundant table")
                    } else {
                        (0, "dropped: the grain now reads as zeros")
                    };
                    add(
                        at,
                        format!("grain table entry {j} of table {i} differs from its redundant copy ({v} vs {rv})"),
                        repair.then(|| note.to_string()),
                    );
                    if repair {
                        if gt[j] != fixv {
                            gt[j] = fixv;
                            dirty_p = true;
                        }
                        if let Some(t) = rgt_fixed.as_mut() {
                            t[j] = fixv;
                            dirty_r = true;
                        }
                    }
                    continue;
                }
            }
            if !gte_ok(v) {
                let what = if v as u64 * 512 >= file_len {
                    format!("grain table entry {j} of table {i} points to sector {v}, past the end of the file ({file_len} bytes)")
                } else {
                    format!("grain table entry {j} of table {i} points to sector {v}, which is not a valid grain")
                };
                add(at, what, repair.then(|| "dropped: the grain now reads as zeros".to_string()));
                if repair {
                    gt[j] = 0;
                    dirty_p = true;
                    if let Some(t) = rgt_fixed.as_mut() {
                        t[j] = 0;
                        dirty_r = true;
                    }
                }
                continue;
            }
            if v > 1 {
                let g = i as u64 * h.num_gtes_per_gt as u64 + j as u64;
                if let Some(other) = owners.insert(v, g) {
                    add(at, format!("grains {other} and {g} share the grain at sector {v}"), None);
                }
            }
        }
        let write = |sector: u32, t: &[u32]| -> Result<()> {
            let mut raw = vec![0u8; t.len() * 4];
            for (c, v) in raw.chunks_exact_mut(4).zip(t) {
                LE::write_u32(c, *v);
            }
            b.write_all_at(&raw, sector as u64 * 512)
        };
        if dirty_p {
            write(p, &gt)?;
        }
        if dirty_r {
            if let (Some(r), Some(t)) = (r, rgt_fixed.as_ref()) {
                write(r, t)?;
            }
        }
    }
    if repair {
        b.sync()?;
    }
    Ok(())
}
