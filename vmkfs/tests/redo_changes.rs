//! `--changed-blocks` through the command: the ranges cover exactly the blocks written (rounded to
//! the block size) above the base (differential) and above the previous snapshot (incremental), for
//! several block sizes, ESX, hosted and ESX 2 links; `--save-map` writes a map that
//! `redo::ChangeMap::from_bytes` reads back to the same ranges.

mod common;

use common::*;

use std::collections::BTreeSet;
use std::path::Path;

use vmkfs::redo::{Chain, ChangeMap};
use vmkfs::vmdk::create::{create, CreateOptions};
use vmkfs::vmdk::{DiskFormat, OpenOptions};

const CAP: u64 = (16 << 20) + 4096; // not a multiple of the larger block sizes: the last block is clipped

/// Writes (pattern, or zeros for an even `seed`) to the top of the chain at `top`.
fn write(dir: &Path, top: &str, writes: &[(u64, u64)], seed: u8) {
    let chain = Chain::open(dir.join(top), &OpenOptions::write()).unwrap();
    for &(at, len) in writes {
        let b = if seed.is_multiple_of(2) { 0 } else { seed };
        chain.write_at(&vec![b; len as usize], at).unwrap();
    }
    chain.close().unwrap();
}

/// The byte ranges of the blocks of `block` bytes that `writes` touch, merged, clipped to CAP.
fn expected(writes: &[&[(u64, u64)]], block: u64) -> Vec<(u64, u64)> {
    let mut blocks = BTreeSet::new();
    for w in writes {
        for &(at, len) in *w {
            blocks.extend(at / block..=(at + len - 1) / block);
        }
    }
    let mut out: Vec<(u64, u64)> = Vec::new();
    for b in blocks {
        let (s, l) = (b * block, block.min(CAP - b * block));
        match out.last_mut() {
            Some((ps, pl)) if *ps + *pl == s => *pl += l,
            _ => out.push((s, l)),
        }
    }
    out
}

/// Runs `--changed-blocks --json` (with `extra` options) and returns (block, changed, ranges).
fn changed(dir: &Path, top: &str, extra: &[&str]) -> (u64, u64, Vec<(u64, u64)>) {
    let mut args = vec!["--changed-blocks", "--json"];
    args.extend_from_slice(extra);
    args.push(top);
    let v: serde_json::Value = serde_json::from_str(&vmkfs_ok(dir, &args)).unwrap();
    let ranges = v["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["start"].as_u64().unwrap(), r["length"].as_u64().unwrap()))
        .collect();
    (v["block"].as_u64().unwrap(), v["changed"].as_u64().unwrap(), ranges)
}

fn check(dir: &Path, top: &str, since: Option<&str>, writes: &[&[(u64, u64)]], blocks: &[u64]) {
    for &block in blocks {
        let mut extra = Vec::new();
        let bs = block.to_string();
        if block != 64 << 10 {
            extra.extend(["--block-size", bs.as_str()]);
        }
        if let Some(s) = since {
            extra.extend(["--since", s]);
        }
        let (b, total, ranges) = changed(dir, top, &extra);
        let want = expected(writes, block);
        assert_eq!(b, block);
        assert_eq!(ranges, want, "{top} since {since:?}, {block}-byte blocks");
        assert_eq!(total, want.iter().map(|r| r.1).sum::<u64>());
    }
}

// Writes: unaligned, across 64 KiB and 1 MiB boundaries, one in the clipped last block.
const W1: &[(u64, u64)] = &[(1000, 10), (65_536 - 1, 2), (3 << 20, 200_000), (CAP - 100, 100)];
const W2: &[(u64, u64)] = &[(512, 512), ((1 << 20) - 4096, 8192), (3 << 20, 100)];
const W3: &[(u64, u64)] = &[(10 << 20, 1), ((12 << 20) + 777, 70_000)];

#[test]
fn esx_chain_differential_and_incremental() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create(d.join("base.vmdk"), &CreateOptions::new(DiskFormat::Thin, CAP)).unwrap().commit().unwrap();
    write(d, "base.vmdk", &[(0, CAP)], 9); // the base's own data never counts
    let s1 = snapshot(d, "base.vmdk", false);
    // Nothing written yet: no changes.
    check(d, &s1, None, &[], &[64 << 10]);
    write(d, &s1, W1, 1);
    let blocks = [512, 4096, 64 << 10, 1 << 20];
    check(d, &s1, None, &[W1], &blocks);
    let s2 = snapshot(d, &s1, false);
    write(d, &s2, W2, 2); // zeros count as changes too
    check(d, &s2, None, &[W1, W2], &blocks); // differential
    check(d, &s2, Some("base.vmdk"), &[W1, W2], &blocks); // the same, named
    check(d, &s2, Some(&s1), &[W2], &blocks); // incremental
    check(d, &s2, Some(&s2), &[], &[64 << 10]);
    // An ESX 2 link on top.
    let s3 = snapshot(d, &s2, true);
    assert_eq!(s3, format!("{s2}.REDO"));
    write(d, &s3, W3, 3);
    check(d, &s3, None, &[W1, W2, W3], &blocks);
    check(d, &s3, Some(&s2), &[W3], &blocks);
    check(d, &s3, Some(&s1), &[W2, W3], &blocks);
    // --save-map round-trips.
    for (since, want) in [(None, vec![W1, W2, W3]), (Some(s1.as_str()), vec![W2, W3])] {
        let mut extra = vec!["--save-map", "map.bin", "--block-size", "4k"];
        if let Some(s) = since {
            extra.extend(["--since", s]);
        }
        let (block, total, ranges) = changed(d, &s3, &extra);
        let m = ChangeMap::from_bytes(&std::fs::read(d.join("map.bin")).unwrap()).unwrap();
        assert_eq!((m.block(), m.capacity()), (block, CAP));
        assert_eq!(m.ranges().collect::<Vec<_>>(), ranges);
        assert_eq!(m.changed_bytes(), total);
        assert_eq!(ranges, expected(&want, 4096));
        // A damaged map is refused, not misread.
        let mut bytes = std::fs::read(d.join("map.bin")).unwrap();
        let i = bytes.len() / 2;
        bytes[i] ^= 0x40;
        assert!(ChangeMap::from_bytes(&bytes).is_err());
        // An existing map file is never replaced without --force; the next pass writes a new one.
        let o = vmkfs(d, &["--changed-blocks", "--save-map", "map.bin", &s3]);
        assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::remove_file(d.join("map.bin")).unwrap();
    }
    // After committing s1 into the base, its writes are part of the base: no longer changes.
    vmkfs_ok(d, &["-m", &s1]);
    check(d, &s3, None, &[W2, W3], &blocks);
    check(d, &s3, Some(&s2), &[W3], &blocks);
    // A --since that is not a link of the chain is a usage error.
    let o = vmkfs(d, &["--changed-blocks", "--since", &s1, &s3]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    // Plain output: one "start length" line per range.
    let text = vmkfs_ok(d, &["--changed-blocks", "--since", &s2, &s3]);
    let lines: Vec<(u64, u64)> = text
        .lines()
        .map(|l| {
            let mut it = l.split_whitespace().map(|x| x.parse::<u64>().unwrap());
            (it.next().unwrap(), it.next().unwrap())
        })
        .collect();
    assert_eq!(lines, expected(&[W3], 64 << 10));
}

#[test]
fn hosted_chain_differential_and_incremental() {
    for fmt in [DiskFormat::MonoSparse, DiskFormat::TwoGbSparse] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        create(d.join("base.vmdk"), &CreateOptions::new(fmt, CAP)).unwrap().commit().unwrap();
        write(d, "base.vmdk", &[(5000, 1 << 20)], 9);
        let s1 = snapshot(d, "base.vmdk", false);
        write(d, &s1, W1, 1);
        let s2 = snapshot(d, &s1, false);
        write(d, &s2, W2, 3);
        write(d, &s2, &[(8 << 20, 65_536)], 4); // a whole zero grain
        let w2: Vec<(u64, u64)> = W2.iter().copied().chain([(8 << 20, 65_536)]).collect();
        // Hosted grains are 64 KiB: exact at 64 KiB and above.
        let blocks = [64 << 10, 1 << 20];
        check(d, &s2, None, &[W1, &w2], &blocks);
        check(d, &s2, Some(&s1), &[&w2], &blocks);
        check(d, &s2, Some("base.vmdk"), &[W1, &w2], &blocks);
    }
}

#[test]
fn bad_block_sizes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create(d.join("base.vmdk"), &CreateOptions::new(DiskFormat::Thin, CAP)).unwrap().commit().unwrap();
    let s1 = snapshot(d, "base.vmdk", false);
    for bs in ["256", "3000", "0"] {
        let o = vmkfs(d, &["--changed-blocks", "--block-size", bs, &s1]);
        assert!(!o.status.success(), "block size {bs} must be refused");
        assert!(String::from_utf8_lossy(&o.stderr).contains("block size"), "{}", String::from_utf8_lossy(&o.stderr));
    }
}
