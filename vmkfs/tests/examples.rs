//! The `examples/` programs, run as functions: each is built into this test (`#[path]`) and run on
//! disks made here, and what it reports is checked against the `vmkfs` command and qemu-img.

mod common;

#[path = "../examples/read_disk.rs"]
mod read_disk;

#[path = "../examples/clone_progress.rs"]
mod clone_progress;

#[path = "../examples/changed_blocks.rs"]
mod changed_blocks;

use std::sync::atomic::AtomicBool;

use common::{create_disk, disk_digest, have_tool, qemu_img, skip, snapshot, write_pattern, MIB};
use vmkfs::DiskFormat;

#[test]
fn read_disk_reports_facts_data_and_the_content_hash() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    create_disk(d, "a.vmdk", "monosparse", 8 * MIB);
    write_pattern(d, "a.vmdk", MIB, 128 << 10, 1);
    write_pattern(d, "a.vmdk", 5 * MIB, 64 << 10, 2);
    let top = snapshot(d, "a.vmdk", false);
    write_pattern(d, &top, 3 * MIB, 64 << 10, 3);
    let mut out = Vec::new();
    read_disk::run(d.join(&top).to_str().unwrap(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let want = disk_digest(d, &top, &[]).unwrap().sha256;
    assert!(text.contains(&format!("sha256 {want}\n")), "{text}");
    assert!(text.contains("capacity 8388608\nlinks 2\n"), "{text}");
    assert!(text.contains("format vmfsSparse") || text.contains("format monolithicSparse"), "{text}");
    let cid = common::cid_of(d, &top);
    assert!(text.contains(&format!("cid {cid}\n")), "{text}");
    let data: Vec<&str> = text.lines().filter(|l| l.starts_with("data ")).collect();
    assert_eq!(data, ["data 1048576 131072", "data 3145728 65536", "data 5242880 65536"], "{text}");
}

#[test]
fn clone_progress_clones_with_rising_progress_and_cancels() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    create_disk(d, "src.vmdk", "monosparse", 64 * MIB);
    for i in 0..8 {
        write_pattern(d, "src.vmdk", i * 8 * MIB, 1 << 20, i);
    }
    let (src, dst) = (d.join("src.vmdk"), d.join("dst.vmdk"));
    let seen =
        clone_progress::run(src.to_str().unwrap(), dst.to_str().unwrap(), DiskFormat::TwoGbSparse, None).unwrap();
    assert!(!seen.is_empty());
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "{seen:?}");
    let (done, total) = *seen.last().unwrap();
    assert_eq!(done, total);
    assert_eq!(disk_digest(d, "src.vmdk", &[]).unwrap().sha256, disk_digest(d, "dst.vmdk", &[]).unwrap().sha256);
    if have_tool("qemu-img") {
        let o = qemu_img(d, &["compare", "src.vmdk", "dst.vmdk"]);
        assert!(o.success(), "{o:?}");
    } else {
        skip("qemu-img missing: the clone is not compared with it");
    }
    let stop = AtomicBool::new(true);
    let never = d.join("never.vmdk");
    let r = clone_progress::run(src.to_str().unwrap(), never.to_str().unwrap(), DiskFormat::Thin, Some(&stop));
    assert!(matches!(r, Err(vmkfs::Error::Interrupted)), "{r:?}");
    assert!(!never.exists());
}

#[test]
fn changed_blocks_lists_what_the_command_lists() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    create_disk(d, "b.vmdk", "monosparse", 16 * MIB);
    write_pattern(d, "b.vmdk", 0, 1 << 20, 1);
    let s1 = snapshot(d, "b.vmdk", false);
    write_pattern(d, &s1, 2 * MIB + 104, 5000, 2);
    let s2 = snapshot(d, &s1, false);
    write_pattern(d, &s2, 9 * MIB, 70_000, 3);
    for since in [None, Some(s1.as_str())] {
        let mut out = Vec::new();
        let since_path = since.map(|s| d.join(s).to_str().unwrap().to_string());
        let ranges = changed_blocks::run(d.join(&s2).to_str().unwrap(), since_path.as_deref(), &mut out).unwrap();
        let mut args = vec!["--changed-blocks", "--json"];
        if let Some(s) = since {
            args.extend(["--since", s]);
        }
        args.push(&s2);
        let v: serde_json::Value = serde_json::from_str(&common::vmkfs_ok(d, &args)).unwrap();
        let want: Vec<(u64, u64)> = v["ranges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["start"].as_u64().unwrap(), r["length"].as_u64().unwrap()))
            .collect();
        assert_eq!(ranges, want, "since {since:?}: {}", String::from_utf8_lossy(&out));
        let expect = if since.is_none() { 2 } else { 1 };
        assert_eq!(ranges.len(), expect, "{ranges:?}");
    }
}
