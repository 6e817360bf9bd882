//! CID discipline and diagnosis (`--chain [--json]`): a healthy chain exits 0; a missing parent, a
//! renamed parent (another disk in the folder has the expected CID), a CID mismatch (the parent was
//! written after the child was made), a capacity mismatch and a cycle each exit 1 with a status that
//! says what is wrong, and opening the chain fails with the matching typed error. `-E` keeps
//! children's `parentFileNameHint` valid. Refusals: `--discard` of a link with a child, commits and
//! discards of a base, `--snapshot` of a physical-mode RDM.

mod common;

use common::*;

use std::path::Path;

use vmkfs::redo::{Chain, ChainError};
use vmkfs::vmdk::{Link, OpenOptions};

/// Writes a byte pattern at `at` through the chain topped by `disk` (which changes its CID).
fn write(dir: &Path, disk: &str, at: u64, byte: u8) {
    let c = Chain::open(dir.join(disk), &OpenOptions::write()).unwrap();
    c.write_at(&[byte; 4096], at).unwrap();
    c.close().unwrap();
}

fn read_all(dir: &Path, disk: &str) -> Vec<u8> {
    let c = Chain::open(dir.join(disk), &OpenOptions::read()).unwrap();
    let mut v = vec![0u8; c.capacity() as usize];
    c.read_at(&mut v, 0).unwrap();
    v
}

/// `--chain --json`: (exit code, ok flag, statuses top first).
fn chain(dir: &Path, disk: &str) -> (i32, bool, Vec<String>, serde_json::Value) {
    let o = vmkfs(dir, &["--chain", "--json", disk]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("--chain --json {disk}: {e}: {}", String::from_utf8_lossy(&o.stdout)));
    let statuses = v["links"].as_array().unwrap().iter().map(|l| l["status"].as_str().unwrap().to_string()).collect();
    (o.status.code().unwrap(), v["ok"].as_bool().unwrap(), statuses, v)
}

/// A thin base with data and two ESX deltas with data: returns the deltas' names.
fn esx_chain(dir: &Path) -> (String, String) {
    vmkfs_ok(dir, &["-c", "4m", "-d", "thin", "base.vmdk"]);
    write(dir, "base.vmdk", 0, 1);
    let s1 = snapshot(dir, "base.vmdk", false);
    write(dir, &s1, 4096, 2);
    let s2 = snapshot(dir, &s1, false);
    write(dir, &s2, 8192, 3);
    (s1, s2)
}

#[test]
fn healthy_chains_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (s1, s2) = esx_chain(d);
    let (code, okf, st, v) = chain(d, &s2);
    assert_eq!((code, okf), (0, true), "{v}");
    assert_eq!(st, vec!["ok"; 3]);
    let links = v["links"].as_array().unwrap();
    let names: Vec<&str> = links.iter().map(|l| l["path"].as_str().unwrap()).collect();
    assert_eq!(names, vec![s2.as_str(), s1.as_str(), "base.vmdk"]);
    assert_eq!(links[0]["format"], "vmfsSparse");
    assert_eq!(links[0]["parent_cid"], links[1]["cid"], "parentCID is the parent's CID");
    assert_eq!(links[1]["parent_cid"], links[2]["cid"]);
    assert_eq!(links[2]["parent"], serde_json::Value::Null);
    // Plain output says ok for each link.
    let text = vmkfs_ok(d, &["--chain", &s2]);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(!text.contains("BROKEN"), "{text}");
    // The hosted shape and an ESX 2 log on top of it.
    vmkfs_ok(d, &["-c", "4m", "-d", "monosparse", "h.vmdk"]);
    let h1 = snapshot(d, "h.vmdk", false);
    let h2 = snapshot(d, &h1, true);
    assert_eq!(h2, format!("{h1}.REDO"));
    let (code, okf, st, v) = chain(d, &h2);
    assert_eq!((code, okf, st.len()), (0, true, 3), "{v}");
}

#[test]
fn missing_parent() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (s1, s2) = esx_chain(d);
    std::fs::remove_file(d.join("base.vmdk")).unwrap();
    std::fs::remove_file(d.join("base-flat.vmdk")).unwrap();
    let (code, okf, st, v) = chain(d, &s2);
    assert_eq!((code, okf), (1, false), "{v}");
    assert_eq!(st.len(), 2, "the walk stops at the break: {v}");
    assert_eq!(st[0], "ok");
    assert!(st[1].contains("missing parent") && st[1].contains("base.vmdk"), "{}", st[1]);
    assert!(!st[1].contains("renamed"), "{}", st[1]);
    let text = String::from_utf8(vmkfs(d, &["--chain", &s2]).stdout).unwrap();
    assert!(text.contains("BROKEN: missing parent"), "{text}");
    match Chain::open(d.join(&s1), &OpenOptions::read()) {
        Err(ChainError::MissingParent { renamed: None, hint, .. }) => assert_eq!(hint, "base.vmdk"),
        other => panic!("expected MissingParent, got {other:?}"),
    }
    // Operations on the broken chain fail with the explanation, not opaquely.
    for args in [vec!["--snapshot", s2.as_str()], vec!["-m", s1.as_str()], vec!["--changed-blocks", s2.as_str()]] {
        let o = vmkfs(d, &args);
        assert!(!o.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("does not exist"), "{args:?}: {err}");
    }
}

#[test]
fn renamed_parent_is_found_by_cid() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_s1, s2) = esx_chain(d);
    // Renamed behind vmkfs's back (the descriptor still names base-flat.vmdk, so it opens).
    std::fs::rename(d.join("base.vmdk"), d.join("moved.vmdk")).unwrap();
    let (code, okf, st, v) = chain(d, &s2);
    assert_eq!((code, okf), (1, false), "{v}");
    assert!(st[1].contains("missing parent") && st[1].contains("moved.vmdk"), "{}", st[1]);
    assert!(st[1].contains("renamed"), "{}", st[1]);
    // Hosted: a renamed monolithicSparse parent.
    vmkfs_ok(d, &["-c", "4m", "-d", "monosparse", "h.vmdk"]);
    let h1 = snapshot(d, "h.vmdk", false);
    std::fs::rename(d.join("h.vmdk"), d.join("h-renamed.vmdk")).unwrap();
    let (code, _, st, v) = chain(d, &h1);
    assert_eq!(code, 1, "{v}");
    assert!(st[0].contains("h-renamed.vmdk"), "{}", st[0]);
    match Chain::open(d.join(&h1), &OpenOptions::read()) {
        Err(ChainError::MissingParent { renamed: Some(r), .. }) => assert!(r.ends_with("h-renamed.vmdk")),
        other => panic!("expected MissingParent naming the renamed disk, got {other:?}"),
    }
}

#[test]
fn cid_mismatch_when_the_parent_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (s1, s2) = esx_chain(d);
    let before = Link::open(d.join(&s1), &OpenOptions::read()).unwrap().descriptor().cid;
    // Writing to a link that has a child is refused…
    let e = Link::open(d.join(&s1), &OpenOptions::write()).unwrap_err();
    assert!(matches!(e, vmkfs::vmdk::Error::HasChildren { .. }), "{e}");
    // …so write to it the way another tool would (ignoring its children): its CID changes under its child.
    let l = Link::open(d.join(&s1), &OpenOptions { allow_children: true, ..OpenOptions::write() }).unwrap();
    l.write_at(&[9u8; 512], 0).unwrap();
    l.close().unwrap();
    let after = Link::open(d.join(&s1), &OpenOptions::read()).unwrap().descriptor().cid;
    assert_ne!(before, after, "the first write after open changes the CID");
    let (code, okf, st, v) = chain(d, &s2);
    assert_eq!((code, okf), (1, false), "{v}");
    assert!(st[0].contains("CID mismatch") && st[0].contains(&format!("{before:08x}")), "{}", st[0]);
    assert!(st[0].contains(&format!("{after:08x}")), "{}", st[0]);
    assert_eq!(st[1..], ["ok", "ok"], "the links below are fine: {v}");
    assert!(matches!(
        Chain::open(d.join(&s2), &OpenOptions::read()),
        Err(ChainError::CidMismatch { expected, found, .. }) if expected == before && found == after
    ));
    // A commit of the child into the modified parent is refused, as VMware refuses the chain.
    let o = vmkfs(d, &["-m", &s2]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("modified"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(d.join(&s2).exists());
}

#[test]
fn capacity_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_s1, s2) = esx_chain(d);
    // `-X` refuses to grow a disk that has REDO links on it.
    let o = vmkfs(d, &["-X", "8m", "base.vmdk"]);
    assert_eq!(o.status.code(), Some(5), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is built on it"));
    // The base grown behind the chain's back (the CID kept, so only the capacity differs): move the
    // child away, grow the base, put the child back.
    let hidden = d.join("hidden");
    std::fs::create_dir(&hidden).unwrap();
    let moved: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("base-0"))
        .collect();
    for n in &moved {
        std::fs::rename(d.join(n), hidden.join(n)).unwrap();
    }
    vmkfs_ok(d, &["-X", "8m", "base.vmdk"]);
    for n in &moved {
        std::fs::rename(hidden.join(n), d.join(n)).unwrap();
    }
    let (code, okf, st, v) = chain(d, &s2);
    assert_eq!((code, okf), (1, false), "{v}");
    assert!(st[1].contains("capacity mismatch") && st[1].contains("4194304") && st[1].contains("8388608"), "{v}");
    assert!(matches!(
        Chain::open(d.join(&s2), &OpenOptions::read()),
        Err(ChainError::CapacityMismatch { child_capacity: 4194304, parent_capacity: 8388608, .. })
    ));
}

/// Hand-edits the descriptor of the link at `path` to name `hint` (with CID `cid`) as its parent.
fn set_parent(path: &Path, hint: &str, cid: u32) {
    let text = std::fs::read_to_string(path).unwrap();
    let edited: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("parentFileNameHint") {
                format!("parentFileNameHint=\"{hint}\"")
            } else if l.starts_with("parentCID") {
                format!("parentCID={cid:08x}")
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(path, edited.join("\n") + "\n").unwrap();
}

#[test]
fn cycle() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (s1, s2) = esx_chain(d);
    // Hand-edit s1 to name s2 (with s2's CID) as its parent: s2 -> s1 -> s2.
    let cid2 = Link::open(d.join(&s2), &OpenOptions::read()).unwrap().descriptor().cid;
    let text = std::fs::read_to_string(d.join(&s1)).unwrap();
    set_parent(&d.join(&s1), &s2, cid2);
    assert_ne!(text, std::fs::read_to_string(d.join(&s1)).unwrap());
    let (code, okf, st, v) = chain(d, &s2);
    assert_eq!((code, okf), (1, false), "{v}");
    assert_eq!(st.len(), 3, "{v}");
    assert_eq!(st[..2], ["ok", "ok"], "{v}");
    assert!(st[2].contains("cycle"), "{}", st[2]);
    assert!(matches!(Chain::open(d.join(&s2), &OpenOptions::read()), Err(ChainError::Cycle { .. })));
    assert!(matches!(Chain::open(d.join(&s1), &OpenOptions::read()), Err(ChainError::Cycle { .. })));
    // A link that is its own parent.
    set_parent(&d.join(&s2), &s2, cid2);
    let (code, _, st, v) = chain(d, &s2);
    assert_eq!(code, 1, "{v}");
    assert!(st.last().unwrap().contains("cycle"), "{v}");
    assert!(matches!(Chain::open(d.join(&s2), &OpenOptions::read()), Err(ChainError::Cycle { .. })));
    // Commands on a looping chain fail instead of running forever.
    let o = vmkfs(d, &["--changed-blocks", &s2]);
    assert!(!o.status.success());
}

#[test]
fn rename_keeps_child_hints_valid() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (s1, s2) = esx_chain(d);
    let before = read_all(d, &s2);
    // The base, then the middle link.
    vmkfs_ok(d, &["-E", "base.vmdk", "renamed.vmdk"]);
    assert!(!d.join("base.vmdk").exists() && d.join("renamed.vmdk").exists());
    assert_eq!(read_all(d, &s2), before);
    let (code, _, _, v) = chain(d, &s2);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["links"][2]["path"], "renamed.vmdk");
    vmkfs_ok(d, &["-E", &s1, "middle.vmdk"]);
    assert_eq!(read_all(d, &s2), before);
    let (code, _, _, v) = chain(d, &s2);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["links"][1]["path"], "middle.vmdk");
    // The renamed chain still commits.
    vmkfs_ok(d, &["-m", "middle.vmdk"]);
    assert_eq!(read_all(d, &s2), before);
    // Hosted: renaming the monolithicSparse parent rewrites the child's embedded hint.
    vmkfs_ok(d, &["-c", "4m", "-d", "monosparse", "h.vmdk"]);
    write(d, "h.vmdk", 0, 5);
    let h1 = snapshot(d, "h.vmdk", false);
    write(d, &h1, 65_536, 6);
    let before = read_all(d, &h1);
    vmkfs_ok(d, &["-E", "h.vmdk", "h2.vmdk"]);
    assert_eq!(read_all(d, &h1), before);
    assert_eq!(chain(d, &h1).0, 0);
}

/// `-E` of a disk with an ESX 2 child (`DISK.REDO`, parent implied by its name) orphans the child:
/// the rename has to carry the REDO log along (`NEW.REDO`).
#[test]
fn rename_carries_legacy_redo_children() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    vmkfs_ok(d, &["-c", "4m", "-d", "thin", "base.vmdk"]);
    let r = snapshot(d, "base.vmdk", true);
    write(d, &r, 0, 7);
    vmkfs_ok(d, &["-E", "base.vmdk", "new.vmdk"]);
    assert_eq!(chain(d, "new.vmdk.REDO").0, 0);
}

#[test]
fn refusals() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (s1, s2) = esx_chain(d);
    // --discard of a link that has a child.
    let o = vmkfs(d, &["--discard", &s1]);
    assert_eq!(o.status.code(), Some(5), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is built on it") && err.contains(&s2), "{err}");
    assert!(d.join(&s1).exists());
    // --discard and -m of a base.
    let o = vmkfs(d, &["--discard", "base.vmdk"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("base disk"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = vmkfs(d, &["-m", "base.vmdk"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("base disk"));
    assert!(d.join("base.vmdk").exists() && d.join("base-flat.vmdk").exists());
    // The top can be discarded, then the next.
    let o = vmkfs(d, &["--discard", "--json", &s2]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["files"].as_array().unwrap().len(), 2, "descriptor and delta: {v}");
    assert!(!d.join(&s2).exists());
    vmkfs_ok(d, &["--discard", &s1]);
    // An ESX 2 log in the middle cannot be discarded either.
    let r1 = snapshot(d, "base.vmdk", true);
    let _r2 = snapshot(d, &r1, true);
    let o = vmkfs(d, &["--discard", &r1]);
    assert_eq!(o.status.code(), Some(5), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A physical-mode (passthrough) RDM cannot be snapshotted: writes go straight to the LUN.
#[test]
fn snapshot_of_passthrough_rdm_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::File::create(d.join("lun.img")).unwrap().set_len(4 << 20).unwrap();
    let why = "physical-mode (passthrough) raw device mapping";
    // A mapping made by -z.
    let o = vmkfs(d, &["-z", "lun.img", "map.vmdk"]);
    if o.status.success() {
        let before: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
        for args in [vec!["--snapshot", "map.vmdk"], vec!["--snapshot", "--legacy-redo", "map.vmdk"]] {
            let o = vmkfs(d, &args);
            assert_eq!(o.status.code(), Some(3), "{args:?}");
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains(why) && err.contains("virtual-mode"), "{err}");
        }
        let after: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(before.len(), after.len(), "nothing was created");
        // A virtual-mode mapping can be snapshotted.
        vmkfs_ok(d, &["-r", "lun.img", "vmap.vmdk"]);
        let s = snapshot(d, "vmap.vmdk", false);
        assert_eq!(chain(d, &s).0, 0);
    } else {
        eprintln!(
            "-z is not available ({}); checking the hand-written descriptor only",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // A hand-written descriptor whose createType is vmfsPassthroughRawDeviceMap over a FLAT extent.
    std::fs::write(
        d.join("hand.vmdk"),
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"vmfsPassthroughRawDeviceMap\"\n\n\
         RW 8192 FLAT \"lun.img\" 0\n\nddb.adapterType = \"lsilogic\"\n",
    )
    .unwrap();
    let o = vmkfs(d, &["--snapshot", "hand.vmdk"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(why), "{err}");
    assert!(!d.join("hand-000001.vmdk").exists() && !d.join("hand.vmdk.REDO").exists());
}
