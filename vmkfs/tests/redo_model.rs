//! REDO chains against an in-memory model: random writes to the top of a chain, snapshots in all
//! three shapes (ESX delta on an ESX base, hosted child on a hosted base, ESX 2 `.REDO`), commits of
//! the top link and of middle links, discards; after every step every link of the chain reads what
//! the model says, and the changed blocks above every link are exactly the blocks written above it.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::fill;
use proptest::prelude::*;
use vmkfs::redo::{self, Chain};
use vmkfs::redo_ops;
use vmkfs::vmdk::create::{create, CreateOptions};
use vmkfs::vmdk::{DiskFormat, Link, OpenOptions};

const CAP: u64 = 3 << 20;
const BLOCK: u64 = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An ESX disk: a vmfs base or a vmfsSparse delta (descriptor + COWD).
    Esx,
    /// A hosted disk: a sparse base or a monolithicSparse child.
    Hosted,
    /// An ESX 2 `.REDO` log (a bare COWD file).
    Legacy,
}

#[derive(Debug, Clone)]
enum Step {
    Write { at: u64, len: u64, zero: bool, seed: u64 },
    Snapshot { legacy: bool },
    Commit { middle: bool, pick: usize },
    Discard { pick: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => (0..CAP, 1..300_000u64, prop::bool::weighted(0.2), any::<u64>())
            .prop_map(|(at, len, zero, seed)| Step::Write { at, len: len.min(CAP - at), zero, seed }),
        4 => prop::bool::weighted(0.3).prop_map(|legacy| Step::Snapshot { legacy }),
        3 => (any::<bool>(), any::<usize>()).prop_map(|(middle, pick)| Step::Commit { middle, pick }),
        1 => any::<usize>().prop_map(|pick| Step::Discard { pick }),
    ]
}

#[derive(Debug)]
struct MLink {
    path: PathBuf,
    kind: Kind,
    /// What the chain opened at this link reads.
    data: Vec<u8>,
    /// Blocks written into this link itself (empty for the base).
    own: BTreeSet<u64>,
}

struct Model {
    /// Base first.
    links: Vec<MLink>,
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn ranges(blocks: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &b in blocks {
        let (s, l) = (b * BLOCK, BLOCK.min(CAP - b * BLOCK));
        match out.last_mut() {
            Some((ps, pl)) if *ps + *pl == s => *pl += l,
            _ => out.push((s, l)),
        }
    }
    out
}

impl Model {
    fn new(dir: &Path, fmt: DiskFormat, seed: u64) -> Model {
        let path = dir.join("disk.vmdk");
        let d = create(&path, &CreateOptions::new(fmt, CAP)).unwrap();
        // Some data in the base, so reads that fall through to it are not all zeros.
        let mut data = vec![0u8; CAP as usize];
        fill(&mut data[(512 << 10)..(1536 << 10)], seed);
        d.link().write_at(&data[(512 << 10)..(1536 << 10)], 512 << 10).unwrap();
        d.commit().unwrap();
        let kind = if fmt.is_esx() { Kind::Esx } else { Kind::Hosted };
        Model { links: vec![MLink { path, kind, data, own: BTreeSet::new() }] }
    }

    fn top(&self) -> &MLink {
        self.links.last().unwrap()
    }

    fn apply(&mut self, s: &Step) {
        let n = self.links.len();
        match *s {
            Step::Write { at, len, zero, seed } => {
                let mut buf = vec![0u8; len as usize];
                if !zero {
                    fill(&mut buf, seed);
                }
                let chain = Chain::open(&self.top().path, &OpenOptions::write()).unwrap();
                chain.write_at(&buf, at).unwrap();
                chain.close().unwrap();
                let top = self.links.last_mut().unwrap();
                top.data[at as usize..(at + len) as usize].copy_from_slice(&buf);
                if n > 1 {
                    top.own.extend(at / BLOCK..=(at + len - 1) / BLOCK);
                }
            }
            Step::Snapshot { legacy } => {
                let top = self.top();
                let new = redo::snapshot(&top.path, &OpenOptions::read(), legacy).unwrap();
                let kind = match (legacy, top.kind) {
                    (true, _) => Kind::Legacy,
                    (false, Kind::Hosted) => Kind::Hosted,
                    (false, _) => Kind::Esx,
                };
                match kind {
                    Kind::Legacy => assert_eq!(new, top.path.with_file_name(format!("{}.REDO", name(&top.path)))),
                    Kind::Esx => {
                        let n = name(&new);
                        assert!(n.ends_with(".vmdk"), "{n}");
                        let delta = new.with_file_name(format!("{}-delta.vmdk", n.trim_end_matches(".vmdk")));
                        assert!(delta.exists(), "an ESX delta has a -delta.vmdk COWD file: {}", delta.display());
                        let l = Link::open(&new, &OpenOptions::read()).unwrap();
                        assert_eq!(l.descriptor().create_type, vmkfs::vmdk::CreateType::VmfsSparse);
                    }
                    Kind::Hosted => {
                        let l = Link::open(&new, &OpenOptions::read()).unwrap();
                        assert_eq!(l.descriptor().create_type, vmkfs::vmdk::CreateType::MonolithicSparse);
                        assert_eq!(l.files(), vec![new.clone()], "a hosted child is one file");
                    }
                }
                let data = top.data.clone();
                self.links.push(MLink { path: new, kind, data, own: BTreeSet::new() });
            }
            Step::Commit { middle, pick } => {
                if n == 1 {
                    let r = redo_ops::commit(&self.top().path, &OpenOptions::read(), &mut |_, _| {}, None);
                    assert!(r.is_err(), "committing a base disk must be refused");
                    return;
                }
                // Index of the link committed: the top, or a link with a parent and a child.
                let i = if middle && n >= 3 { 1 + pick % (n - 2) } else { n - 1 };
                let path = self.links[i].path.clone();
                let r = redo_ops::commit(&path, &OpenOptions::read(), &mut |_, _| {}, None);
                // An ESX 2 child is re-pointed by renaming it PARENT.REDO; one with links of its own
                // cannot be renamed without orphaning them, so that commit is refused.
                if n > i + 2 && self.links[i + 1].kind == Kind::Legacy {
                    let e = r.expect_err("committing under an ESX 2 log that has children must be refused");
                    assert!(matches!(e, vmkfs::Error::Redo(redo::RedoError::Refused { .. })), "{e}");
                    return;
                }
                let rep = r.unwrap_or_else(|e| panic!("commit {}: {e}", path.display()));
                assert_eq!(name(&rep.parent), name(&self.links[i - 1].path));
                let gone = self.links.remove(i);
                let parent = &mut self.links[i - 1];
                parent.data = gone.data;
                if i > 1 {
                    parent.own.extend(gone.own);
                }
                let parent_path = parent.path.clone();
                if let Some(child) = self.links.get_mut(i) {
                    if child.kind == Kind::Legacy {
                        child.path = parent_path.with_file_name(format!("{}.REDO", name(&parent_path)));
                    }
                    assert_eq!(rep.children, vec![child.path.clone()]);
                } else {
                    assert!(rep.children.is_empty());
                }
                assert_eq!(path.exists(), self.links.iter().any(|l| l.path == path), "{} after commit", path.display());
            }
            Step::Discard { pick } => {
                let i = pick % n;
                let path = self.links[i].path.clone();
                let r = redo::discard(&path, &OpenOptions::read());
                if i == 0 || i != n - 1 {
                    let e = r.expect_err("discarding a base or a link with a child must be refused");
                    let refused = matches!(e, redo::RedoError::Refused { .. })
                        || matches!(e, redo::RedoError::Link(vmkfs::vmdk::Error::HasChildren { .. }));
                    assert!(refused, "{e}");
                } else {
                    let files = r.unwrap();
                    assert!(files.iter().all(|f| !f.exists()));
                    self.links.pop();
                }
            }
        }
    }

    /// Every link of the chain reads what the model says, and the changed blocks above every link
    /// are the blocks written above it.
    fn check(&self, dir: &Path) {
        let mut buf = vec![0u8; CAP as usize];
        for (i, l) in self.links.iter().enumerate() {
            let chain = Chain::open(&l.path, &OpenOptions::read())
                .unwrap_or_else(|e| panic!("open chain at {}: {e}", l.path.display()));
            let got: Vec<String> = chain.links().iter().rev().map(|x| name(x.path())).collect();
            let want: Vec<String> = self.links[..=i].iter().map(|x| name(&x.path)).collect();
            assert_eq!(got, want, "links of the chain at {}", l.path.display());
            chain.read_at(&mut buf, 0).unwrap();
            if buf != l.data {
                let first = buf.iter().zip(&l.data).position(|(a, b)| a != b).unwrap();
                panic!("chain at {} differs from the model at byte {first}", l.path.display());
            }
        }
        let top = &self.top().path;
        for since in 0..self.links.len() {
            let mut want = BTreeSet::new();
            for l in &self.links[since + 1..] {
                want.extend(l.own.iter().copied());
            }
            let mut args = vec![Some(self.links[since].path.as_path())];
            if since == 0 {
                args.push(None); // The default: above the base (a differential).
            }
            for arg in args {
                let m = redo_ops::changed_blocks(top, arg, BLOCK, &OpenOptions::read()).unwrap();
                assert_eq!(
                    m.ranges().collect::<Vec<_>>(),
                    ranges(&want),
                    "changed blocks above link {since} ({arg:?})"
                );
            }
        }
        // Nothing but the chain's files (and no temporaries) is left in the folder.
        let mut files: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        files.sort();
        let mut want: Vec<String> = Vec::new();
        for l in &self.links {
            let link = Link::open(&l.path, &OpenOptions::read()).unwrap();
            want.extend(link.files().iter().map(|f| name(f)));
        }
        want.sort();
        assert_eq!(files, want, "files in the folder");
    }
}

fn run(fmt: DiskFormat, seed: u64, steps: &[Step]) {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Model::new(dir.path(), fmt, seed);
    m.check(dir.path());
    for (k, s) in steps.iter().enumerate() {
        if std::env::var_os("REDO_MODEL_TRACE").is_some() {
            let shape: Vec<String> = m.links.iter().map(|l| name(&l.path)).collect();
            eprintln!("step {k}: {s:?} on {shape:?}");
        }
        m.apply(s);
        m.check(dir.path());
    }
}

fn base() -> impl Strategy<Value = DiskFormat> {
    prop::sample::select(vec![
        DiskFormat::Thin,
        DiskFormat::ZeroedThick,
        DiskFormat::MonoSparse,
        DiskFormat::TwoGbSparse,
    ])
}

proptest! {
    // REDO_MODEL_CASES=N runs more cases (for soak runs); REDO_MODEL_TRACE=1 prints every step.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("REDO_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn chain_matches_model(fmt in base(), seed in any::<u64>(), steps in prop::collection::vec(step(), 16..24)) {
        run(fmt, seed, &steps);
    }
}

/// Deterministic cases that always exercise every shape, mixed shapes, and middle commits.
#[test]
fn every_shape_with_middle_commits() {
    let w = |at: u64, len: u64, seed: u64| Step::Write { at, len, zero: false, seed };
    let z = |at: u64, len: u64| Step::Write { at, len, zero: true, seed: 0 };
    let c = |middle: bool, pick: usize| Step::Commit { middle, pick };
    for fmt in [DiskFormat::Thin, DiskFormat::MonoSparse, DiskFormat::TwoGbSparse] {
        // Snapshot shapes: native only, ESX 2 only, and the two alternating both ways.
        for legacy in [[false, false, false], [true, true, true], [false, true, false], [true, false, true]] {
            let snap = |k: usize| Step::Snapshot { legacy: legacy[k % 3] };
            let steps = vec![
                w(1000, 70_000, 1),
                snap(0),
                w(65_536 * 3 - 7, 131_072 + 9, 2),
                z(600_000, 100_000),
                snap(1),
                w(0, 4096, 3),
                z(1 << 20, 65_536),
                snap(2),
                w(CAP - 5000, 5000, 4),
                c(true, 0), // link 1 (refused when link 2 is an ESX 2 log with a child)
                c(true, 1), // link 2 of 4, or link 1 of 3
                snap(0),
                w(2 << 20, 300_000, 5),
                c(true, 0),
                Step::Discard { pick: 0 },
                Step::Discard { pick: 1 },
                c(false, 0),
                Step::Discard { pick: 1 },
                c(false, 0),
                c(false, 0),
                c(false, 0),
            ];
            run(fmt, 7, &steps);
        }
    }
}

/// A COWD grain table entry of 1 (ESXi's "emptied grain", which hides the parent) reads as zeros;
/// committing such a link keeps it reading as zeros, into a middle link and into the base.
#[test]
fn zeroed_cowd_grains_survive_commits() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut m = Model::new(d, DiskFormat::Thin, 11);
    // Data everywhere in the base.
    m.apply(&Step::Write { at: 0, len: CAP, zero: false, seed: 12 });
    m.apply(&Step::Snapshot { legacy: false });
    m.apply(&Step::Write { at: 4096, len: 512, zero: false, seed: 13 });
    m.apply(&Step::Snapshot { legacy: false });
    m.apply(&Step::Write { at: 8192, len: 512, zero: false, seed: 14 });
    m.check(d);
    // Mark grains 20..=23 of the top delta as emptied (entry 1), by hand.
    let top = m.top().path.clone();
    let delta = top.with_file_name(format!("{}-delta.vmdk", name(&top).trim_end_matches(".vmdk")));
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&delta).unwrap();
    let mut b = [0u8; 4];
    f.read_exact_at(&mut b, 20).unwrap();
    let gd = u32::from_le_bytes(b) as u64;
    f.read_exact_at(&mut b, gd * 512).unwrap();
    let gt = u32::from_le_bytes(b) as u64;
    assert!(gt > 0, "the grain table of the first 2 MiB exists");
    for g in 20..24u64 {
        f.write_all_at(&1u32.to_le_bytes(), gt * 512 + g * 4).unwrap();
    }
    drop(f);
    m.links.last_mut().unwrap().data[20 * 512..24 * 512].fill(0);
    m.links.last_mut().unwrap().own.insert(0);
    m.check(d);
    // Into the middle delta (which has a parent below it), then into the base.
    m.apply(&Step::Commit { middle: false, pick: 0 });
    m.check(d);
    m.apply(&Step::Commit { middle: false, pick: 0 });
    m.check(d);
}

/// Committing an ESX 2 log whose ESX 2 child takes its name: the child is renamed last, so a commit
/// interrupted just before that rename (the parent already holds the link's data) is finished by a
/// rerun that commits the link again, never the child.
#[test]
fn legacy_commit_interrupted_before_the_rename_is_finished_by_a_rerun() {
    for fmt in [DiskFormat::Thin, DiskFormat::MonoSparse] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut m = Model::new(d, fmt, 21);
        m.apply(&Step::Snapshot { legacy: true });
        m.apply(&Step::Write { at: 70_000, len: 200_000, zero: false, seed: 22 });
        m.apply(&Step::Snapshot { legacy: true });
        m.apply(&Step::Write { at: 150_000, len: 100_000, zero: false, seed: 23 });
        m.check(d);
        // The state a crash right before the final rename leaves: the link's data is in the parent.
        let link = m.links[1].path.clone();
        {
            let data = &m.links[1].data;
            let o = OpenOptions { allow_children: true, ..OpenOptions::write() };
            let base = Chain::open(&m.links[0].path, &o).unwrap();
            base.write_at(&data[70_000..270_000], 70_000).unwrap();
            base.close().unwrap();
        }
        m.links[0].data = m.links[1].data.clone();
        m.check(d);
        // The rerun.
        let rep = redo_ops::commit(&link, &OpenOptions::read(), &mut |_, _| {}, None).unwrap();
        assert_eq!(rep.children, vec![link.clone()]);
        let child = m.links.pop().unwrap();
        m.links.pop();
        m.links.push(MLink { path: link.clone(), ..child });
        m.check(d);
        // The base alone holds what the committed link held.
        let base = Link::open(&m.links[0].path, &OpenOptions::read()).unwrap();
        let mut buf = vec![0u8; CAP as usize];
        base.read_at(&mut buf, 0).unwrap();
        assert!(buf == m.links[0].data);
    }
}
