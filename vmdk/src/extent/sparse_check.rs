//! `-x check` and `-x repair` of grain-table extents — hosted sparse (`KDMV`) and COWD — on the
//! rules their reader ([`super::sparse`]) applies: [`GrainDir::directory_bytes`] and
//! [`GrainDir::check_directory_entry`] for directories, [`EntryRule::classify`] for every entry
//! of every table, the same capacity and metadata checks as [`SparseExtent::open`].
//!
//! Beyond what the reader refuses, the check finds what the reader would pass over: a redundant
//! directory or table that disagrees with the primary one, a table overlapping the header, the
//! embedded descriptor, a directory or another table, a grain overlapping metadata or another
//! grain (a pointer used twice), the unclean-shutdown flag, and for COWD a free sector before the
//! end of the allocated tables and grains (the next writer would overwrite them) or past the end
//! of the file.
//!
//! Repair decides per entry which copy is consistent (accepted by the reader's rule, its grain
//! overlapping nothing else): a sound copy wins over an unsound one, a grain pointer over an
//! unallocated or zeroed-grain entry (a valid pointer is never replaced by an invalid or zero
//! one); two different sound pointers, or two unsound copies, cannot be decided. A directory entry
//! whose table is missing or unusable is restored only to where the layout puts that table (the
//! tables after a directory follow each other) and only when the table found there is identical
//! to the one the other directory names.
//!
//! [`SparseExtent::open`]: super::sparse::SparseExtent::open

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian as LE};

use super::cowd::{self, CowdHeader};
use super::kdmv::table_sectors;
use super::kdmv::{SparseHeader, FLAG_RGD, FLAG_ZEROED_GTE, GD_AT_END};
use super::sparse::{EntryRule, Grain, GrainDir};
use crate::error::Result;
use crate::findings::{Change, ProblemId, Sink};
use crate::storage::Backing;

/// Checks (and, when the sink repairs, plans the repair of) the hosted sparse extent in `b` whose
/// header is `h`; `len` is the byte length a descriptor maps (None for a bare extent).
pub fn check_hosted(b: &Arc<dyn Backing>, h: &SparseHeader, len: Option<u64>, sink: &mut Sink) -> Result<()> {
    let path = b.path();
    let file_len = b.len()?;
    check_capacity(path, "sparse", h.capacity, len, sink);
    if h.unclean_shutdown {
        let mut flag = [0u8; 1];
        b.read_exact_at(&mut flag, 72)?;
        unclean(path, 72, &flag, 512, sink);
    }
    if h.overhead.saturating_mul(512) > file_len {
        sink.problem(
            path,
            64,
            format!("file of {file_len} bytes is shorter than its metadata ({} sectors)", h.overhead),
        );
    }
    if h.gd_offset == GD_AT_END {
        sink.problem(path, 56, "grain directory offset says `at end`, which only streamOptimized files use");
        return Ok(());
    }
    let mut fixed = vec![(0, 1, "the header".to_string())];
    if h.descriptor_offset != 0 && h.descriptor_size != 0 {
        let end = h.descriptor_offset.saturating_add(h.descriptor_size);
        fixed.push((
            h.descriptor_offset,
            end,
            format!("the embedded descriptor (sectors {}..{end})", h.descriptor_offset),
        ));
    }
    let shape = Shape {
        path,
        rule: EntryRule {
            grain_sectors: h.grain_size,
            overhead: h.overhead,
            one_is_zero: h.flags & FLAG_ZEROED_GTE != 0,
            file_len,
        },
        gtes: h.num_gtes_per_gt,
        count: h.num_gdes(),
        fixed,
    };
    let gd = read_dir(b, &shape, h.gd_offset, 56, "grain directory", sink)?;
    let rgd = if h.flags & FLAG_RGD != 0 && h.rgd_offset != 0 {
        read_dir(b, &shape, h.rgd_offset, 48, "redundant grain directory", sink)?
    } else {
        None
    };
    if let Some(gd) = gd {
        check_tables(b, &shape, gd, rgd, sink)?;
    }
    Ok(())
}

/// Checks (and plans the repair of) the COWD extent in `b`; `len` is the byte length a descriptor
/// maps (None for a bare extent).
pub fn check_cowd(b: &Arc<dyn Backing>, len: Option<u64>, sink: &mut Sink) -> Result<()> {
    let path = b.path();
    let file_len = b.len()?;
    let hb = cowd::HEADER_BYTES;
    if file_len < hb as u64 {
        sink.problem(path, 0, format!("file of {file_len} bytes is shorter than the {hb}-byte COWD header"));
        return Ok(());
    }
    let mut raw = vec![0u8; hb];
    b.read_exact_at(&mut raw, 0)?;
    let Some(h) = sink.result(CowdHeader::parse(&raw, path))? else { return Ok(()) };
    check_capacity(path, "COWD", h.num_sectors as u64, len, sink);
    let at = cowd::UNCLEAN_OFFSET as usize;
    if h.unclean_shutdown {
        unclean(path, at as u64, &raw[at..at + 4], hb as u64, sink);
    }
    if h.gd_offset < 4 {
        sink.problem(path, 20, format!("COWD grain directory at sector {} overlaps the 4-sector header", h.gd_offset));
    }
    let shape = Shape {
        path,
        rule: EntryRule { grain_sectors: h.grain_size as u64, overhead: h.overhead(), one_is_zero: true, file_len },
        gtes: h.gtes,
        count: h.num_gdes as u64,
        fixed: vec![(0, 4, "the COWD header".to_string())],
    };
    let Some(gd) = read_dir(b, &shape, h.gd_offset as u64, 20, "COWD grain directory", sink)? else {
        return Ok(());
    };
    let end = check_tables(b, &shape, gd, None, sink)?.max(h.overhead());
    let free = h.free_sector as u64;
    let file_end = file_len.div_ceil(512);
    let what = if free < end {
        format!("free sector {free} lies before the end of the allocated grain tables and grains (sector {end}): the next grain written there would overwrite them")
    } else if free > file_end {
        format!("free sector {free} lies past the end of the file (sector {file_end})")
    } else {
        return Ok(());
    };
    let id = sink.problem(path, cowd::FREE_SECTOR_OFFSET, what);
    if let Ok(end32) = u32::try_from(end) {
        let change = Change {
            file: path.to_path_buf(),
            offset: cowd::FREE_SECTOR_OFFSET,
            before: raw[28..32].to_vec(),
            after: end32.to_le_bytes().to_vec(),
            what: "COWD free sector".into(),
            block: (0, hb as u64),
            last: false,
        };
        sink.fix(
            &[id],
            &format!("set to sector {end}, the end of the allocated grain tables and grains"),
            vec![change],
        );
    }
    Ok(())
}

/// The reader's capacity rule: an extent maps at most its capacity.
fn check_capacity(path: &Path, kind: &str, sectors: u64, len: Option<u64>, sink: &mut Sink) {
    let capacity = sectors.saturating_mul(512);
    if let Some(len) = len.filter(|l| *l > capacity) {
        sink.problem(path, 12, format!("{kind} capacity is {capacity} bytes but the descriptor maps {len}"));
    }
}

/// The unclean-shutdown flag (`bytes` as found at `offset`, in a header of `header_bytes`): a
/// finding, whose repair clears it after every other change.
fn unclean(path: &Path, offset: u64, bytes: &[u8], header_bytes: u64, sink: &mut Sink) {
    let id = sink.problem(path, offset, "unclean-shutdown flag is set: the disk was not closed cleanly");
    let change = Change {
        file: path.to_path_buf(),
        offset,
        before: bytes.to_vec(),
        after: vec![0; bytes.len()],
        what: "unclean-shutdown flag".into(),
        block: (0, header_bytes),
        last: true,
    };
    sink.fix(&[id], "cleared the flag", vec![change]);
}

/// How a header lays its grain tables out.
struct Shape<'a> {
    path: &'a Path,
    rule: EntryRule,
    gtes: u32,
    /// Directory entries.
    count: u64,
    /// Metadata before the directories (header, embedded descriptor): sector ranges and names.
    fixed: Vec<(u64, u64, String)>,
}

impl Shape<'_> {
    fn gt_sectors(&self) -> u64 {
        table_sectors(self.gtes)
    }

    fn dir_sectors(&self) -> u64 {
        (self.count * 4).div_ceil(512)
    }
}

/// A grain directory as read, with what the check learned about each entry.
struct Dir {
    what: &'static str,
    sector: u64,
    /// Byte offset of the first entry.
    start: u64,
    entries: Vec<u32>,
    /// The entry names no table or a table the reader accepts, overlapping nothing else.
    sound: Vec<bool>,
    /// Problems found per entry (only entries that have some).
    ids: HashMap<usize, Vec<ProblemId>>,
}

impl Dir {
    fn entry_at(&self, i: usize) -> u64 {
        self.start + i as u64 * 4
    }

    fn note(&mut self, i: usize, id: ProblemId) {
        self.ids.entry(i).or_default().push(id);
    }
}

/// Reads the directory of `shape.count` entries at `sector` (named by the header field at byte
/// `field_at`), checking where it lies and every entry as the reader does.
fn read_dir(
    b: &Arc<dyn Backing>,
    shape: &Shape<'_>,
    sector: u64,
    field_at: u64,
    what: &'static str,
    sink: &mut Sink,
) -> Result<Option<Dir>> {
    let file_len = shape.rule.file_len;
    let Some((start, bytes)) =
        sink.result(GrainDir::directory_bytes(b, sector, shape.count, file_len, what, field_at))?
    else {
        return Ok(None);
    };
    let mut raw = vec![0u8; bytes as usize];
    b.read_exact_at(&mut raw, start)?;
    let entries: Vec<u32> = raw.chunks_exact(4).map(LE::read_u32).collect();
    let mut dir = Dir { what, sector, start, sound: vec![true; entries.len()], entries, ids: HashMap::new() };
    for i in 0..dir.entries.len() {
        let e = dir.entries[i];
        if let Err(err) = GrainDir::check_directory_entry(shape.path, what, i, e, dir.entry_at(i), shape.gtes, file_len)
        {
            let id = sink.error(err)?;
            dir.sound[i] = false;
            dir.note(i, id);
        }
    }
    Ok(Some(dir))
}

/// Who owns a range of metadata sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Fixed(usize),
    Dir(usize),
    Table(usize, usize),
}

/// Checks the directories' tables and every entry of them (see the module text); returns the
/// sector where the sound tables and grains end (0 when there are none).
fn check_tables(b: &Arc<dyn Backing>, shape: &Shape<'_>, gd: Dir, rgd: Option<Dir>, sink: &mut Sink) -> Result<u64> {
    let mut dirs: Vec<Dir> = std::iter::once(gd).chain(rgd).collect();
    let intervals = check_overlaps(shape, &mut dirs, sink);
    check_set_in_one(shape, &mut dirs, sink);
    // The tables each entry's copies are read from (None: unusable).
    let mut eff: Vec<Vec<Option<u32>>> =
        dirs.iter().map(|d| d.entries.iter().zip(&d.sound).map(|(&e, &s)| s.then_some(e)).collect()).collect();
    if sink.repairing() {
        decide_directories(b, shape, &dirs, &intervals, &mut eff, sink)?;
    }
    let tables = Tables::new(b, shape, eff);
    let mut end = 0u64;
    let conflicts = grain_conflicts(b, shape, &tables, &intervals, &mut end)?;
    check_entries(b, shape, &tables, &conflicts, sink)?;
    Ok(end)
}

/// The tables each directory entry's copies are read from, and which of them lie wholly in holes
/// of the file: those read as zeros (every grain unallocated), so an entry whose every table does
/// needs no reading and no checking — the walk costs the tables written, not the capacity.
struct Tables {
    /// Per directory, per entry: the table's sector (None: unusable).
    eff: Vec<Vec<Option<u32>>>,
    /// Per directory, per entry: the table lies in a hole.
    unwritten: Vec<Vec<bool>>,
}

impl Tables {
    fn new(b: &Arc<dyn Backing>, shape: &Shape<'_>, eff: Vec<Vec<Option<u32>>>) -> Tables {
        let unwritten = eff
            .iter()
            .map(|d| {
                let sectors: Vec<u64> = d.iter().map(|e| e.unwrap_or(0) as u64).collect();
                super::sparse::tables_in_holes(&**b, &sectors, shape.gtes as u64 * 4)
                    .unwrap_or_else(|| vec![false; sectors.len()])
            })
            .collect();
        Tables { eff, unwritten }
    }

    fn len(&self) -> usize {
        self.eff[0].len()
    }

    /// Entry `i`'s table and its redundant copy ([`tables_of`]).
    fn of(&self, i: usize) -> (Option<u32>, Option<u32>) {
        tables_of(&self.eff, i)
    }

    /// True when entry `i` has no table to read: none at all, or only tables in holes.
    fn nothing_written(&self, i: usize) -> bool {
        let (p, r) = self.of(i);
        let unwritten = |d: usize, t: Option<u32>| t.is_none() || self.unwritten[d][i];
        unwritten(0, p) && unwritten(1.min(self.eff.len() - 1), r)
    }
}

/// Finds metadata that overlaps: fixed ranges, the directories, the tables of sound entries.
/// Tables that overlap anything become unsound. Returns every range, sorted by start.
fn check_overlaps(shape: &Shape<'_>, dirs: &mut [Dir], sink: &mut Sink) -> Vec<(u64, u64, Owner)> {
    let gts = shape.gt_sectors();
    let mut v: Vec<(u64, u64, Owner)> =
        shape.fixed.iter().enumerate().map(|(k, f)| (f.0, f.1, Owner::Fixed(k))).collect();
    for (d, dir) in dirs.iter().enumerate() {
        v.push((dir.sector, dir.sector + shape.dir_sectors(), Owner::Dir(d)));
        for (i, (&e, &s)) in dir.entries.iter().zip(&dir.sound).enumerate() {
            if s && e != 0 {
                v.push((e as u64, e as u64 + gts, Owner::Table(d, i)));
            }
        }
    }
    v.sort_unstable_by_key(|x| (x.0, x.1));
    let name = |o: Owner, dirs: &[Dir]| match o {
        Owner::Fixed(k) => shape.fixed[k].2.clone(),
        Owner::Dir(d) => {
            format!("the {} (sectors {}..{})", dirs[d].what, dirs[d].sector, dirs[d].sector + shape.dir_sectors())
        }
        Owner::Table(d, i) => format!("the grain table of {} entry {i} (sector {})", dirs[d].what, dirs[d].entries[i]),
    };
    let mut top: Option<usize> = None; // the range reaching furthest so far
    let mut hits: Vec<(usize, usize)> = Vec::new();
    for k in 0..v.len() {
        if let Some(t) = top {
            if v[k].0 < v[t].1 {
                hits.push((k, t));
            }
        }
        if top.is_none_or(|t| v[k].1 > v[t].1) {
            top = Some(k);
        }
    }
    for (k, t) in hits {
        let (x, y) = (v[k].2, v[t].2);
        match (x, y) {
            (Owner::Table(d, i), other) | (other, Owner::Table(d, i)) => {
                let what = format!(
                    "{} entry {i} names a grain table at sector {} ({gts} sectors), which overlaps {}: a table may be used only once",
                    dirs[d].what,
                    dirs[d].entries[i],
                    name(other, dirs)
                );
                let id = sink.problem(shape.path, dirs[d].entry_at(i), what);
                dirs[d].sound[i] = false;
                dirs[d].note(i, id);
                if let Owner::Table(d2, i2) = other {
                    dirs[d2].sound[i2] = false;
                    dirs[d2].note(i2, id);
                }
            }
            _ => {
                let at = match x {
                    Owner::Dir(d) => dirs[d].start,
                    _ => v[k].0 * 512,
                };
                let what = format!("{} overlaps {}", name(x, dirs), name(y, dirs));
                sink.problem(shape.path, at, what);
            }
        }
    }
    v
}

/// Entries set in one directory and 0 in the other.
fn check_set_in_one(shape: &Shape<'_>, dirs: &mut [Dir], sink: &mut Sink) {
    let [gd, rgd] = dirs else { return };
    for i in 0..gd.entries.len() {
        let (p, r) = (gd.entries[i], rgd.entries[i]);
        if gd.sound[i] && rgd.sound[i] && (p == 0) != (r == 0) {
            let what = format!("grain directory entry {i} is set in only one of the two directories ({p} vs {r})");
            let id = sink.problem(shape.path, rgd.entry_at(i), what);
            gd.note(i, id);
            rgd.note(i, id);
        }
    }
}

/// Where the layout puts the table of entry `i` of `dir`: the tables after a directory follow each
/// other, `gt_sectors` apart, as every other sound entry does (without any, right after the
/// directory). `None` when the sound entries follow no such pattern.
fn layout_table(shape: &Shape<'_>, dir: &Dir, i: usize) -> Option<u64> {
    let step = shape.gt_sectors() as i128;
    let known: Vec<(i128, i128)> = (0..dir.entries.len())
        .filter(|&k| k != i && dir.sound[k] && dir.entries[k] != 0)
        .map(|k| (k as i128, dir.entries[k] as i128))
        .collect();
    let (k0, e0) = known.first().copied().unwrap_or((0, (dir.sector + shape.dir_sectors()) as i128));
    if known.iter().any(|&(k, e)| e != e0 + (k - k0) * step) {
        return None;
    }
    let t = e0 + (i as i128 - k0) * step;
    (t > 1 && t <= u32::MAX as i128).then_some(t as u64)
}

/// Repair of directory entries (see the module text): plans the changes and updates `eff`, the
/// tables the entries' copies are read from.
fn decide_directories(
    b: &Arc<dyn Backing>,
    shape: &Shape<'_>,
    dirs: &[Dir],
    intervals: &[(u64, u64, Owner)],
    eff: &mut [Vec<Option<u32>>],
    sink: &mut Sink,
) -> Result<()> {
    let gt_bytes = shape.gtes as usize * 4;
    let table = |sector: u64| -> Result<Vec<u8>> {
        let mut t = vec![0u8; gt_bytes];
        b.read_exact_at(&mut t, sector * 512)?;
        Ok(t)
    };
    let entries: Vec<usize> = dirs
        .iter()
        .flat_map(|d| d.ids.keys().copied())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for i in entries {
        let ids: Vec<ProblemId> = dirs.iter().flat_map(|d| d.ids.get(&i).cloned().unwrap_or_default()).collect();
        if dirs.len() < 2 {
            sink.cannot(&ids, "there is no redundant grain directory to restore it from");
            continue;
        }
        let (p, r) = (eff[0][i], eff[1][i]);
        let bad_p = p.is_none() || (p == Some(0) && r.is_some_and(|r| r != 0));
        let bad_r = r.is_none() || (r == Some(0) && p.is_some_and(|p| p != 0));
        let (bad, good) = match (bad_p, bad_r) {
            (false, false) => continue,
            (true, true) => {
                sink.cannot(&ids, "neither grain directory names a usable grain table for this entry");
                continue;
            }
            (true, false) => (0, 1),
            (false, true) => (1, 0),
        };
        let other = eff[good][i].unwrap_or(0);
        let old = dirs[bad].entries[i];
        let found = if other == 0 {
            // The other directory names no table: neither does this one.
            Some(0)
        } else {
            match layout_table(shape, &dirs[bad], i) {
                Some(t)
                    if t * 512 + gt_bytes as u64 <= shape.rule.file_len
                        && !overlaps_other(intervals, t, t + shape.gt_sectors(), Owner::Table(bad, i))
                        && table(t)? == table(other as u64)? =>
                {
                    Some(t)
                }
                _ => None,
            }
        };
        let Some(t) = found else {
            sink.cannot(
                &ids,
                &format!(
                    "the {} names no usable table, and none identical to the other directory's is where the layout puts it",
                    dirs[bad].what
                ),
            );
            continue;
        };
        if t == old as u64 {
            sink.cannot(
                &ids,
                "the table is where the layout puts it, yet overlaps other metadata: cannot tell which is right",
            );
            continue;
        }
        eff[bad][i] = Some(t as u32);
        let change = Change {
            file: shape.path.to_path_buf(),
            offset: dirs[bad].entry_at(i),
            before: old.to_le_bytes().to_vec(),
            after: (t as u32).to_le_bytes().to_vec(),
            what: format!("{} entry {i}", dirs[bad].what),
            block: (dirs[bad].start, shape.count * 4),
            last: false,
        };
        let note = if t == 0 {
            "set to 0, as in the other directory".to_string()
        } else {
            format!("pointed at the grain table at sector {t}, identical to the other directory's")
        };
        sink.fix(&ids, &note, vec![change]);
    }
    Ok(())
}

/// True when `[s, e)` overlaps a range in `intervals` (sorted by start) other than `me`'s.
fn overlaps_other(intervals: &[(u64, u64, Owner)], s: u64, e: u64, me: Owner) -> bool {
    intervals.iter().take_while(|x| x.0 < e).any(|x| x.1 > s && x.2 != me)
}

/// Reads a table of `gtes` entries at `sector`.
fn read_table(b: &Arc<dyn Backing>, sector: u32, gtes: u32) -> Result<Vec<u32>> {
    let mut raw = vec![0u8; gtes as usize * 4];
    b.read_exact_at(&mut raw, sector as u64 * 512)?;
    Ok(raw.chunks_exact(4).map(LE::read_u32).collect())
}

/// The tables of entry `i`: `(primary, redundant)`, the redundant one only when it is another
/// table than the primary one.
fn tables_of(eff: &[Vec<Option<u32>>], i: usize) -> (Option<u32>, Option<u32>) {
    let p = eff[0][i].filter(|&t| t != 0);
    let r = eff.get(1).and_then(|d| d[i]).filter(|&t| t != 0 && Some(t) != p);
    (p, r)
}

/// Pass 1 over every entry: the grain pointers the reader accepts whose grain overlaps another
/// grain or metadata, with what they overlap. `end` becomes the sector where the tables and those
/// grains end.
fn grain_conflicts(
    b: &Arc<dyn Backing>,
    shape: &Shape<'_>,
    tables: &Tables,
    intervals: &[(u64, u64, Owner)],
    end: &mut u64,
) -> Result<HashMap<u32, String>> {
    let g = shape.rule.grain_sectors;
    let at = |v: u32| matches!(shape.rule.classify(shape.path, "", v as u64, 0, 0), Ok(Grain::At(_)));
    let mut ptrs: Vec<u32> = Vec::new();
    for i in 0..tables.len() {
        let (tp, tr) = tables.of(i);
        for t in [tp, tr].into_iter().flatten() {
            *end = (*end).max(t as u64 + shape.gt_sectors());
        }
        if tables.nothing_written(i) {
            continue;
        }
        let p = tp.map(|t| read_table(b, t, shape.gtes)).transpose()?;
        let r = tr.map(|t| read_table(b, t, shape.gtes)).transpose()?;
        for j in 0..shape.gtes as usize {
            let pv = p.as_ref().map(|t| t[j]);
            let rv = r.as_ref().map(|t| t[j]).filter(|&v| Some(v) != pv);
            ptrs.extend([pv, rv].into_iter().flatten().filter(|&v| at(v)));
        }
    }
    ptrs.sort_unstable();
    let mut out: HashMap<u32, String> = HashMap::new();
    for w in ptrs.windows(2) {
        let (a, c) = (w[0], w[1]);
        if (c as u64) < a as u64 + g {
            let (da, dc) = if a == c {
                (
                    "the grain another grain table entry points to".to_string(),
                    "the grain another grain table entry points to".to_string(),
                )
            } else {
                (format!("the grain at sector {c}"), format!("the grain at sector {a}"))
            };
            out.entry(a).or_insert(da);
            out.entry(c).or_insert(dc);
        }
    }
    ptrs.dedup();
    for &v in &ptrs {
        *end = (*end).max(v as u64 + g);
        let (s, e) = (v as u64, v as u64 + g);
        let k = intervals.partition_point(|x| x.0 < e);
        if let Some(x) = intervals[..k].iter().rev().find(|x| x.1 > s) {
            let what = match x.2 {
                Owner::Table(..) => format!("the grain table at sector {}", x.0),
                Owner::Dir(_) => format!("a grain directory (sectors {}..{})", x.0, x.1),
                Owner::Fixed(k) => shape.fixed[k].2.clone(),
            };
            out.entry(v).or_insert(what);
        }
    }
    Ok(out)
}

/// Pass 2 over every entry: findings, and (when repairing) the decision per entry.
fn check_entries(
    b: &Arc<dyn Backing>,
    shape: &Shape<'_>,
    tables: &Tables,
    conflicts: &HashMap<u32, String>,
    sink: &mut Sink,
) -> Result<()> {
    let path = shape.path;
    let gtes = shape.gtes as u64;
    let rule = &shape.rule;
    // First entry met for each pointer used twice (to name both grains).
    let mut first_use: HashMap<u32, u64> = HashMap::new();
    for i in 0..tables.len() {
        let (tp, tr) = tables.of(i);
        if tables.nothing_written(i) {
            continue;
        }
        let p = tp.map(|t| read_table(b, t, shape.gtes)).transpose()?;
        let r = tr.map(|t| read_table(b, t, shape.gtes)).transpose()?;
        for j in 0..gtes {
            let g = i as u64 * gtes + j;
            let pv = p.as_ref().map(|t| t[j as usize]);
            let rv = r.as_ref().map(|t| t[j as usize]);
            let at_p = tp.map(|t| t as u64 * 512 + j * 4);
            let at_r = tr.map(|t| t as u64 * 512 + j * 4);
            let mut ids: Vec<ProblemId> = Vec::new();
            let mut sound = [true, true];
            for (k, (v, at, what)) in
                [(pv, at_p, "grain table entry"), (rv, at_r, "redundant grain table entry")].into_iter().enumerate()
            {
                let (Some(v), Some(at)) = (v, at) else { continue };
                match rule.classify(path, what, v as u64, g, at) {
                    Err(e) => {
                        ids.push(sink.error(e)?);
                        sound[k] = false;
                    }
                    Ok(Grain::At(_)) if conflicts.contains_key(&v) && (k == 0 || Some(v) != pv) => {
                        let other = match first_use.get(&v) {
                            Some(&h) if h != g => format!("grain {h}'s ({})", conflicts[&v]),
                            _ => conflicts[&v].clone(),
                        };
                        first_use.entry(v).or_insert(g);
                        ids.push(sink.problem(
                            path,
                            at,
                            format!("{what} for grain {g} points to sector {v}, whose grain overlaps {other}: a grain may be used only once"),
                        ));
                        sound[k] = false;
                    }
                    Ok(_) => {}
                }
            }
            if let (Some(p), Some(r), Some(at)) = (pv, rv, at_p) {
                if p != r && sound == [true, true] {
                    ids.push(sink.problem(
                        path,
                        at,
                        format!(
                            "grain table entry for grain {g} (entry {j} of table {i}) differs from its redundant copy at byte {}: {p} vs {r}",
                            at_r.unwrap_or(0)
                        ),
                    ));
                }
            }
            if ids.is_empty() || !sink.repairing() {
                continue;
            }
            decide_entry(shape, g, (pv, tp), (rv, tr), sound, &ids, sink);
        }
    }
    Ok(())
}

/// What one copy of an entry is, for deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pointer,
    Empty,
}

/// Decides the repair of the entry of grain `g` whose copies are `p` and `r` (value and table),
/// `sound` saying which copies are consistent (see the module text).
fn decide_entry(
    shape: &Shape<'_>,
    g: u64,
    (pv, tp): (Option<u32>, Option<u32>),
    (rv, tr): (Option<u32>, Option<u32>),
    sound: [bool; 2],
    ids: &[ProblemId],
    sink: &mut Sink,
) {
    let (Some(p), Some(tp)) = (pv, tp) else {
        sink.cannot(ids, "the primary grain table is not usable");
        return;
    };
    let (Some(r), Some(tr)) = (rv, tr) else {
        sink.cannot(ids, "there is no redundant grain table entry to restore it from");
        return;
    };
    if p == r {
        sink.cannot(ids, "both copies hold the same unusable entry");
        return;
    }
    let kind = |v: u32| match shape.rule.classify(shape.path, "", v as u64, 0, 0) {
        Ok(Grain::At(_)) => Kind::Pointer,
        _ => Kind::Empty,
    };
    let winner = match sound {
        [true, true] => match (kind(p), kind(r)) {
            (Kind::Pointer, Kind::Empty) => 0,
            (Kind::Empty, Kind::Pointer) => 1,
            (Kind::Pointer, Kind::Pointer) => {
                sink.cannot(
                    ids,
                    &format!("both copies point to valid grains ({p} and {r}): cannot tell which is right"),
                );
                return;
            }
            (Kind::Empty, Kind::Empty) => {
                sink.cannot(
                    ids,
                    &format!("one copy says {p}, the other {r}, and both are valid: cannot tell which is right"),
                );
                return;
            }
        },
        [true, false] => 0,
        [false, true] => 1,
        [false, false] => {
            sink.cannot(ids, "neither copy is usable");
            return;
        }
    };
    let (to, table, new, old, note) = if winner == 0 {
        ("redundant", tr, p, r, format!("set the redundant copy to the primary entry ({p})"))
    } else {
        ("primary", tp, r, p, format!("restored from the redundant grain table ({r})"))
    };
    let change = Change {
        file: shape.path.to_path_buf(),
        offset: table as u64 * 512 + (g % shape.gtes as u64) * 4,
        before: old.to_le_bytes().to_vec(),
        after: new.to_le_bytes().to_vec(),
        what: format!("{to} grain table entry for grain {g}"),
        block: (table as u64 * 512, shape.gtes as u64 * 4),
        last: false,
    };
    sink.fix(ids, &note, vec![change]);
}
