//! Synthetic VMFS5 and VMFS6 volumes from the test-only writer (`vmfs_synth`), covering what the real
//! images do not: pointer blocks and double-indirect files, files over 256 GiB (VMFS5) and 2.5 TiB
//! (VMFS6) in sparse images, VMFS6 large file blocks, to-be-zeroed blocks, directories with
//! thousands of entries, a two-device spanned volume and RDM descriptors. An image is accepted only
//! when our reader, the writer's intent and dissect.vmfs agree on listings and contents;
//! debugvmfs/debugvmfs6 are checked where they can read (their known gaps are printed).

mod common;
mod vmfs_common;
mod vmfs_synth;

use std::path::PathBuf;

use common::sha256_hex;
use vmfs_common::*;
use vmfs_synth::{expected, pattern, Builder, FileSpec, Gen, Layout};
use vmkfs::vmfs::{DeviceRunKind, FileKind, Volume};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// A temporary folder, kept (and printed) when `VMFS_SYNTH_KEEP` is set, to look at an image.
fn workdir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    if std::env::var_os("VMFS_SYNTH_KEEP").is_some() {
        let p = d.keep();
        eprintln!("keeping {}", p.display());
        return tempfile::TempDir::new_in(p).unwrap();
    }
    d
}

fn spec(size: u64, layout: Layout, chunks: Vec<(u64, Vec<u8>)>, sparse: bool, tbz: Vec<u64>) -> FileSpec {
    FileSpec { size, layout, chunks, sparse, tbz }
}

fn strs(p: &[PathBuf]) -> Vec<String> {
    p.iter().map(|x| x.display().to_string()).collect()
}

/// Files every volume gets; `huge` is the double-indirect file's size, `single` the single-indirect one's.
fn common_tree(b: &mut Builder, gen: Gen, many: usize) {
    let fbs = MIB;
    b.file("/small", spec(100, Layout::Resident, vec![(0, pattern(1, 100))], false, vec![]));
    b.file("/empty", spec(0, Layout::Resident, vec![], false, vec![]));
    let sbs = if gen == Gen::V5 { 8192 } else { 65536 };
    b.file("/sub", spec(2 * sbs + 1234, Layout::Sub, vec![(0, pattern(2, (2 * sbs + 1234) as usize))], false, vec![]));
    b.file(
        "/direct",
        spec(3 * fbs + 4321, Layout::Direct, vec![(0, pattern(3, (3 * fbs + 4321) as usize))], false, vec![]),
    );
    b.file(
        "/lazy-zeroed",
        spec(
            4 * fbs,
            Layout::Direct,
            vec![(0, pattern(4, fbs as usize)), (3 * fbs, pattern(5, fbs as usize))],
            false,
            vec![1, 2],
        ),
    );
    b.file(
        "/holes",
        spec(10 * fbs, Layout::Direct, vec![(5, pattern(6, 1000)), (7 * fbs - 10, pattern(7, 20))], true, vec![]),
    );
    b.dir("/dir");
    b.dir("/dir/sub");
    b.symlink("/dir/link", "../small");
    b.symlink("/dir/sub/abs", "/direct");
    b.rdm("/dir/lun-rdmp.vmdk", 10 * GIB, "NETAPP", "LUN C-Mode", 3);
    b.dir("/many");
    for i in 0..many {
        let c = format!("file number {i}\n").into_bytes();
        b.file(&format!("/many/f{i:05}.txt"), spec(c.len() as u64, Layout::Resident, vec![(0, c)], false, vec![]));
    }
}

/// Checks a built volume: our listing equals dissect's (types, sizes, mtimes, FD addresses, targets,
/// hashes of files up to 64 MiB), every regular file reads as the writer meant at chosen ranges
/// (and dissect agrees on each range), and the debugvmfs tool agrees where it can.
fn check(devs: &[PathBuf], files: &[(String, FileSpec)], gen: Gen) -> Volume {
    let vol = Volume::open(devs).unwrap();
    let ours = our_walk(&vol, 64 * MIB);
    // The writer's intent.
    for (path, f) in files {
        let st = vol.stat(path).unwrap();
        assert_eq!(st.size, f.size, "{path}");
        let file = vol.open_file(path).unwrap();
        let mut ranges = vec![(0, f.size.min(4 * MIB)), (f.size.saturating_sub(MIB), MIB)];
        for (o, d) in &f.chunks {
            ranges.push((o.saturating_sub(100), d.len() as u64 + 200));
        }
        for (o, l) in ranges {
            let l = l.min(f.size.saturating_sub(o));
            let mut buf = vec![0u8; l as usize];
            file.read_exact_at(&mut buf, o).unwrap();
            assert!(buf == expected(f, o, l), "{path}: bytes {o}..{} differ from what the writer wrote", o + l);
        }
        // The extent map covers the file; to-be-zeroed blocks are Zero, never Data.
        let map = file.extents(0, f.size).unwrap();
        assert_eq!(map.iter().map(|e| e.len).sum::<u64>(), f.size, "{path}");
        for &t in &f.tbz {
            let bs = st.block_size;
            assert!(
                map.iter()
                    .any(|e| e.kind == DeviceRunKind::Zero && e.offset <= t * bs && e.offset + e.len >= (t + 1) * bs),
                "{path}: block {t}"
            );
        }
    }
    let d = strs(devs);
    if have_dissect() {
        let theirs = dissect_list(&d, 64 * MIB);
        let unread = assert_same_as_dissect(&ours, &theirs);
        assert!(unread.is_empty(), "dissect could not read {unread:?}");
        let mut ranges = Vec::new();
        for (path, f) in files.iter().filter(|(_, f)| f.size > 64 * MIB) {
            let mut r = vec![(0, MIB), (f.size - MIB, MIB)];
            for (o, dd) in &f.chunks {
                r.push((o.saturating_sub(4096), dd.len() as u64 + 8192));
            }
            for (o, l) in r {
                ranges.push((path.clone(), o, l.min(f.size - o)));
            }
        }
        let theirs = dissect_ranges(&d, &ranges);
        for ((path, o, l), h) in ranges.iter().zip(theirs) {
            assert_eq!(our_range_hash(&vol, path, *o, *l), h, "{path}: {o}+{l} differs from dissect.vmfs");
        }
        eprintln!(
            "{gen:?}: {} entries and {} large files agree with dissect.vmfs",
            ours.len(),
            files.iter().filter(|(_, f)| f.size > 64 * MIB).count()
        );
    }
    let (tool, ok) = if gen == Gen::V5 { ("debugvmfs", have_debugvmfs()) } else { ("debugvmfs6", have_debugvmfs6()) };
    if ok {
        let mut differ = Vec::new();
        for dir in ["/", "/dir", "/dir/sub", "/many"] {
            let theirs = debugvmfs_ls(tool, &d, dir);
            let mine: Vec<(String, u64, char)> = vol
                .list(dir)
                .unwrap()
                .into_iter()
                .map(|(e, s)| {
                    (
                        e.name,
                        s.size,
                        match s.kind {
                            FileKind::Directory => 'd',
                            FileKind::Symlink => 'l',
                            _ => '-',
                        },
                    )
                })
                .collect();
            if mine != theirs {
                differ.push(format!("ls {dir}: {} entries, {tool} {}", mine.len(), theirs.len()));
            }
        }
        for e in ours.iter().filter(|e| e.sha256.is_some() && e.kind == "file" && !e.path.starts_with("/many/")) {
            let data = debugvmfs_cat(tool, &d, &e.path);
            if Some(sha256_hex(&data)) != e.sha256 {
                differ.push(format!("cat {} ({} bytes from {tool})", e.path, data.len()));
            }
        }
        for e in ours.iter().filter(|e| e.path.starts_with("/many/")).step_by(500) {
            let data = debugvmfs_cat(tool, &d, &e.path);
            if Some(sha256_hex(&data)) != e.sha256 {
                differ.push(format!("cat {}", e.path));
            }
        }
        if differ.is_empty() {
            eprintln!("{gen:?}: {tool} agrees on listings and contents");
        } else {
            eprintln!("{gen:?}: {tool} disagrees (dissect.vmfs and the writer agree with us): {differ:?}");
        }
        // Its known gaps: debugvmfs 0.2.5 reads nothing through .pb2.sf pointer blocks; debugvmfs6
        // returns the stale bytes of to-be-zeroed blocks and misreads holes. Anything else fails.
        let known: &[&str] = if gen == Gen::V5 { &["cat /pb2 "] } else { &["cat /lazy-zeroed ", "cat /holes "] };
        let unexpected: Vec<&String> = differ.iter().filter(|d| !known.iter().any(|k| d.starts_with(k))).collect();
        assert!(unexpected.is_empty(), "{tool} disagrees beyond its known gaps: {unexpected:?}");
    }
    vol
}

#[test]
fn vmfs5_pointer_blocks_double_indirect_tbz_rdm_big_directory() {
    let dir = workdir();
    let mut b = Builder::new(Gen::V5, "synthetic VMFS5", 512 * MIB);
    common_tree(&mut b, Gen::V5, 2500);
    b.file(
        "/pb",
        spec(
            300 * MIB + 17,
            Layout::Indirect { pb2: false },
            vec![
                (0, pattern(8, 5000)),
                (256 * MIB + 5, pattern(9, 3 * MIB as usize)),
                (300 * MIB + 7, pattern(10, 10)),
            ],
            true,
            vec![],
        ),
    );
    b.file("/pb2", spec(20 * MIB, Layout::Indirect { pb2: true }, vec![(MIB - 3, pattern(11, 6))], false, vec![5]));
    b.file(
        "/huge",
        spec(
            300 * GIB,
            Layout::Double,
            vec![
                (0, pattern(12, 4096)),
                (256 * GIB + 123, pattern(13, 2 * MIB as usize)),
                (300 * GIB - 4096, pattern(14, 4096)),
            ],
            true,
            vec![],
        ),
    );
    let built =
        b.build(dir.path().parent().filter(|_| std::env::var_os("VMFS_SYNTH_KEEP").is_some()).unwrap_or(dir.path()));
    let vol = check(&built.devices, &built.files, Gen::V5);
    assert_eq!(vol.stat("/huge").unwrap().zla, 0x10D0);
    assert_eq!(vol.read_link("/dir/link").unwrap(), "../small");
    assert_eq!(vol.stat("/dir/link").unwrap().link_target.as_deref(), Some("../small"));
    let mut b4 = [0u8; 4];
    vol.open_file("/dir/sub/abs").unwrap().read_exact_at(&mut b4, 0).unwrap();
    assert_eq!(b4[..], pattern(3, 4)[..]);
    let rdm = vol.stat("/dir/lun-rdmp.vmdk").unwrap();
    assert_eq!(rdm.kind, FileKind::Rdm);
    assert_eq!(rdm.rdm.as_ref().unwrap().vendor.trim(), "NETAPP");
    assert!(matches!(vol.open_file("/dir/lun-rdmp.vmdk"), Err(vmkfs::vmfs::VmfsError::Rdm { .. })));
    assert_eq!(vol.read_dir("/many").unwrap().len(), 2500);
}

#[test]
fn vmfs6_large_file_blocks_huge_file_hashed_directories() {
    let dir = workdir();
    let mut b = Builder::new(Gen::V6, "synthetic VMFS6", 3 * GIB);
    common_tree(&mut b, Gen::V6, 3000);
    b.file(
        "/pb2",
        spec(
            400 * MIB,
            Layout::Indirect { pb2: true },
            vec![(0, pattern(20, 100)), (330 * MIB + 1, pattern(21, 2 * MIB as usize))],
            true,
            vec![],
        ),
    );
    b.file(
        "/huge",
        spec(
            3 * TIB,
            Layout::Double,
            vec![
                (0, pattern(22, 4096)),
                (5 * TIB / 2 + 77, pattern(23, MIB as usize)),
                (3 * TIB - 100, pattern(24, 100)),
            ],
            true,
            vec![],
        ),
    );
    b.file(
        "/lfb",
        spec(
            GIB,
            Layout::Large,
            vec![(0, pattern(25, 4096)), (512 * MIB - 10, pattern(26, 20)), (GIB - 4096, pattern(27, 4096))],
            false,
            vec![],
        ),
    );
    b.file("/lfb-tbz", spec(512 * MIB + 1, Layout::Large, vec![], false, vec![0]));
    let built =
        b.build(dir.path().parent().filter(|_| std::env::var_os("VMFS_SYNTH_KEEP").is_some()).unwrap_or(dir.path()));
    let vol = check(&built.devices, &built.files, Gen::V6);
    let lfb = vol.open_file("/lfb").unwrap();
    let data: Vec<_> =
        lfb.extents(0, GIB).unwrap().into_iter().filter(|e| matches!(e.kind, DeviceRunKind::Data { .. })).collect();
    assert!(data.iter().all(|e| e.len == 512 * MIB), "large file blocks map in 512 MiB runs: {data:?}");
    assert_eq!(vol.stat("/lfb-tbz").unwrap().zla, 1);
    assert_eq!(vol.read_dir("/many").unwrap().len(), 3000);
    let u = vol.usage().unwrap();
    assert_eq!(u.capacity, 3 * GIB);
}

#[test]
fn two_device_spanned_volume() {
    let dir = workdir();
    let mut b = Builder::new(Gen::V5, "spanned", 512 * MIB);
    b.devices = 2;
    common_tree(&mut b, Gen::V5, 10);
    // A thick filler pushes the next file across the first device's end (logical 256 MiB).
    b.file("/filler", spec(230 * MIB, Layout::Indirect { pb2: false }, vec![], false, vec![]));
    let chunks: Vec<(u64, Vec<u8>)> = (0..40).map(|i| (i * MIB + 1000, pattern(100 + i, 5000))).collect();
    b.file("/across", spec(40 * MIB, Layout::Direct, chunks, false, vec![]));
    let built =
        b.build(dir.path().parent().filter(|_| std::env::var_os("VMFS_SYNTH_KEEP").is_some()).unwrap_or(dir.path()));
    assert_eq!(built.devices.len(), 2);
    // Both devices, in either order.
    let rev: Vec<PathBuf> = built.devices.iter().rev().cloned().collect();
    let vol = check(&rev, &built.files, Gen::V5);
    let map = vol.extent_map("/across").unwrap();
    let devs: std::collections::BTreeSet<usize> = map
        .iter()
        .filter_map(|e| match e.kind {
            DeviceRunKind::Data { device, .. } => Some(device),
            _ => None,
        })
        .collect();
    assert_eq!(devs.len(), 2, "the file spans both devices: {map:?}");
    assert_eq!(vol.devices().len(), 2);
    // One device alone is refused with a clear message.
    let e = Volume::open(&built.devices[..1]).unwrap_err().to_string();
    assert!(e.contains("spans 2 device(s)"), "{e}");
    let e = Volume::open(&built.devices[1..]).unwrap_err().to_string();
    assert!(e.contains("spans 2 device(s)") || e.contains("first extent"), "{e}");
}
