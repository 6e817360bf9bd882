//! The three real VMFS images of `../shared/testdata/vmfs` (VMFS3 from ESX 3, VMFS5 and VMFS6 from
//! ESXi) read through our reader and checked against independent readers run as separate processes:
//! dissect.vmfs, debugvmfs (VMFS3/5) and debugvmfs6 (VMFS6). Each check skips with a message when its
//! image or oracle is absent.

mod common;
mod vmfs_common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{sha256_hex, vmkfs};
use vmfs_common::*;
use vmkfs::vmfs::{DeviceRunKind, FileKind, Volume};

const IMAGES: [&str; 3] = ["vmfs3.img", "vmfs5.bin", "vmfs6.bin"];
/// Files up to this size are hashed by dissect.vmfs; bigger system files are checked by debugvmfs.
const HASH_LIMIT: u64 = 160 << 20;

fn dev(p: &Path) -> Vec<String> {
    vec![p.display().to_string()]
}

#[test]
fn listings_and_contents_match_dissect() {
    if !have_dissect() {
        return;
    }
    for name in IMAGES {
        let Some(img) = real_image(name) else { return };
        let vol = Volume::open(&[&img]).unwrap();
        let ours = our_walk(&vol, HASH_LIMIT);
        let theirs = dissect_list(&dev(&img), HASH_LIMIT);
        let unread = assert_same_as_dissect(&ours, &theirs);
        // dissect.vmfs cannot read VMFS3 files in file blocks (it expects VMFS5's blockOffsetShift);
        // debugvmfs checks those below.
        if name == "vmfs3.img" {
            assert!(unread.iter().all(|p| p.ends_with("-flat.vmdk") || p.ends_with(".sf")), "{unread:?}");
        } else {
            assert!(unread.is_empty(), "{name}: dissect could not read {unread:?}");
        }
        eprintln!("{name}: {} entries agree with dissect.vmfs ({} it could not read)", ours.len(), unread.len());
    }
}

#[test]
fn listings_and_contents_match_debugvmfs() {
    for name in IMAGES {
        let tool = if name == "vmfs6.bin" { "debugvmfs6" } else { "debugvmfs" };
        let ok = if tool == "debugvmfs6" { have_debugvmfs6() } else { have_debugvmfs() };
        if !ok {
            continue;
        }
        let Some(img) = real_image(name) else { return };
        let devs = dev(&img);
        let vol = Volume::open(&[&img]).unwrap();
        let ours = our_walk(&vol, u64::MAX);
        let mut dirs = vec!["/".to_string()];
        dirs.extend(ours.iter().filter(|e| e.kind == "dir" && !e.path.ends_with(".sdd.sf")).map(|e| e.path.clone()));
        for d in &dirs {
            let theirs = debugvmfs_ls(tool, &devs, d);
            let mine: Vec<(String, u64, char)> = vol
                .list(d)
                .unwrap()
                .into_iter()
                .map(|(e, s)| {
                    let c = match s.kind {
                        FileKind::Directory => 'd',
                        FileKind::Symlink => 'l',
                        _ => '-',
                    };
                    (e.name, s.size, c)
                })
                .collect();
            assert_eq!(mine, theirs, "{name}: {tool} ls -l {d}");
        }
        // Every user file in full; system files up to HASH_LIMIT (the big VMFS6 ones are hashed by
        // dissect.vmfs above only in part, so they are checked here in full once).
        for e in ours
            .iter()
            .filter(|e| e.sha256.is_some() && (e.kind != "sysfile" || e.size <= HASH_LIMIT || name == "vmfs6.bin"))
        {
            let data = debugvmfs_cat(tool, &devs, &e.path);
            assert_eq!(data.len() as u64, e.size, "{name}: {tool} cat {} length", e.path);
            assert_eq!(Some(sha256_hex(&data)), e.sha256, "{name}: {tool} cat {} differs from ours", e.path);
        }
        eprintln!(
            "{name}: {} directories and {} files agree with {tool}",
            dirs.len(),
            ours.iter().filter(|e| e.sha256.is_some()).count()
        );
    }
}

#[test]
fn what_the_images_hold() {
    let Some(img) = real_image("vmfs5.bin") else { return };
    let vol = Volume::open(&[&img]).unwrap();
    assert_eq!(vol.descriptor().version_text(), "VMFS-5.81");
    assert_eq!(vol.descriptor().label, "VMFS5 Test");
    assert_eq!(vol.read_link("/directory/symlink").unwrap(), "file4");
    let f = vol.open_file("/directory/symlink").unwrap();
    let mut b = vec![0u8; 8];
    f.read_exact_at(&mut b, 0).unwrap();
    assert_eq!(&b, b"content\n");
    assert!(vol.read_dir("/directory/file4").is_err());
    assert!(matches!(vol.stat("/nope"), Err(vmkfs::vmfs::VmfsError::NotFound { .. })));
    assert_eq!(vol.stat("/directory/../directory/./file5").unwrap().size, 8193);
    assert_eq!(vol.heartbeats().unwrap().len(), 1, "the VMFS5 image was taken from a live host");

    let Some(img) = real_image("vmfs3.img") else { return };
    let vol = Volume::open(&[&img]).unwrap();
    let u = vol.usage().unwrap();
    assert_eq!((u.blocks, u.free_blocks), (1024, 350), "debugvmfs df says 1024 blocks, 350 free");
    let st = vol.stat("/zeroedthick-flat.vmdk").unwrap();
    assert_eq!(st.tbz_blocks, 199);
    let map = vol.extent_map("/zeroedthick-flat.vmdk").unwrap();
    let zero: u64 = map.iter().filter(|e| e.kind == DeviceRunKind::Zero).map(|e| e.len).sum();
    assert_eq!(zero, 199 << 20, "199 to-be-zeroed blocks of 1 MiB");
    let thin = vol.extent_map("/thin-flat.vmdk").unwrap();
    let data: u64 = thin.iter().filter(|e| matches!(e.kind, DeviceRunKind::Data { .. })).map(|e| e.len).sum();
    assert_eq!(data, 1 << 20, "the thin disk has one block allocated");
    let mut pos = 0;
    for e in &thin {
        assert_eq!(e.offset, pos);
        pos += e.len;
    }
    assert_eq!(pos, 200 << 20);
}

/// The ESX 3 image's four disks clone through the command to thin disks that read as 200 MiB of
/// zeros, and to-be-zeroed blocks never leak: the test plants a pattern in the blocks
/// `zeroedthick-flat.vmdk` marks to be zeroed (located by dissect.vmfs, not by us) and checks that
/// neither our reads nor the clone see it, while a pattern planted in an ordinary block of
/// `thick-flat.vmdk` does show (so the planting hits real data).
#[test]
fn esx3_disks_clone_to_thin_zeros_and_tbz_never_leaks() {
    let Some(img) = real_image("vmfs3.img") else { return };
    let dir = tempfile::tempdir().unwrap();
    let planted = dir.path().join("planted.img");
    copy_sparse(&img, &planted);
    let mut checked_tbz = false;
    if have_dissect() {
        let devs = dev(&planted);
        let data_start = 0x110_0000u64; // the single device's first PE (from its PE table)
        let f = std::fs::OpenOptions::new().write(true).open(&planted).unwrap();
        let mut tbz = 0;
        for raw in dissect_blocks(&devs, "/zeroedthick-flat.vmdk") {
            if raw & 7 == 1 && raw & 0x20 != 0 {
                f.write_all_at(&vec![0xA5; 1 << 20], data_start + (raw >> 6) * (1 << 20)).unwrap();
                tbz += 1;
            }
        }
        assert_eq!(tbz, 199);
        let thick0 = dissect_blocks(&devs, "/thick-flat.vmdk")[0];
        assert_eq!(thick0 & 0x27, 1, "an ordinary file block");
        f.write_all_at(&vec![0x5A; 1 << 20], data_start + (thick0 >> 6) * (1 << 20)).unwrap();
        drop(f);
        let vol = Volume::open(&[&planted]).unwrap();
        let thick = vol.open_file("/thick-flat.vmdk").unwrap();
        let mut b = vec![0u8; 1 << 20];
        thick.read_exact_at(&mut b, 0).unwrap();
        assert!(b.iter().all(|&x| x == 0x5A), "the planted pattern must show in thick-flat.vmdk");
        checked_tbz = true;
    } else {
        eprintln!("SKIP: without dissect.vmfs the to-be-zeroed blocks are not planted");
    }
    let vol = Volume::open(&[&planted]).unwrap();
    let zt = vol.open_file("/zeroedthick-flat.vmdk").unwrap();
    let mut b = vec![0u8; 4 << 20];
    let mut off = 0;
    while off < zt.len() {
        let n = zt.read_at(&mut b, off).unwrap();
        assert!(b[..n].iter().all(|&x| x == 0), "zeroedthick-flat.vmdk leaks data at {off}");
        off += n as u64;
    }
    let vol_arg = planted.display().to_string();
    for disk in ["thin", "thick", "zeroedthick", "eagerzeroedthick"] {
        let out = dir.path().join(format!("{disk}.vmdk"));
        let o = vmkfs(
            Path::new("."),
            &["--volume", &vol_arg, "-i", &format!("/{disk}.vmdk"), "-d", "thin", out.to_str().unwrap()],
        );
        assert!(
            o.status.success(),
            "clone {disk}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let link = vmkfs::vmdk::Link::open(&out, &vmkfs::vmdk::OpenOptions::read()).unwrap();
        assert_eq!(link.capacity(), 200 << 20, "{disk}");
        let mut buf = vec![0u8; 8 << 20];
        let mut pos = 0;
        while pos < link.capacity() {
            link.read_at(&mut buf, pos).unwrap();
            if disk == "thick" && pos == 0 && checked_tbz {
                assert!(buf[..1 << 20].iter().all(|&x| x == 0x5A), "thick's planted block is copied");
                assert!(buf[1 << 20..].iter().all(|&x| x == 0));
            } else {
                assert!(buf.iter().all(|&x| x == 0), "{disk}: clone holds non-zero bytes near {pos}");
            }
            pos += buf.len() as u64;
        }
        let stored: u64 = link
            .map(0, link.capacity())
            .unwrap()
            .runs()
            .iter()
            .filter(|r| r.state == vmkfs::vmdk::State::Data)
            .map(|r| r.len)
            .sum();
        assert!(stored <= 1 << 20, "{disk}: the thin clone stores {stored} bytes");
    }
}

/// A whole-disk image with an MBR partition of type 0xFB and one with a GPT partition of the VMFS
/// type, each holding the VMFS5 image at LBA 2048: both open like the bare partition.
#[test]
fn whole_disk_images_with_mbr_and_gpt() {
    let Some(img) = real_image("vmfs5.bin") else { return };
    let dir = tempfile::tempdir().unwrap();
    let part_len = std::fs::metadata(&img).unwrap().len();
    let start = 2048 * 512u64;
    let bare = Volume::open(&[&img]).unwrap();
    let want = our_walk(&bare, u64::MAX);
    for gpt in [false, true] {
        let disk = dir.path().join(if gpt { "gpt.img" } else { "mbr.img" });
        copy_sparse(&img, &dir.path().join("p"));
        let src = std::fs::read(dir.path().join("p")).ok();
        drop(src);
        let out = std::fs::File::create(&disk).unwrap();
        let d = vmkfs::rdm::Device::open(&img, vmkfs::rdm::OpenMode::Read).unwrap();
        for (s, l) in d.data_runs(0, part_len).unwrap() {
            let mut buf = vec![0u8; l as usize];
            d.read_exact_at(&mut buf, s).unwrap();
            out.write_all_at(&buf, start + s).unwrap();
        }
        let total = start + part_len + (1 << 20);
        out.set_len(total).unwrap();
        let sectors = part_len / 512;
        let mut mbr = vec![0u8; 512];
        mbr[446 + 4] = if gpt { 0xEE } else { 0xFB };
        mbr[446 + 8..446 + 12].copy_from_slice(&(if gpt { 1u32 } else { 2048 }).to_le_bytes());
        mbr[446 + 12..446 + 16]
            .copy_from_slice(&(if gpt { (total / 512 - 1) as u32 } else { sectors as u32 }).to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        out.write_all_at(&mbr, 0).unwrap();
        if gpt {
            let mut h = vec![0u8; 512];
            h[..8].copy_from_slice(b"EFI PART");
            h[72..80].copy_from_slice(&2u64.to_le_bytes());
            h[80..84].copy_from_slice(&128u32.to_le_bytes());
            h[84..88].copy_from_slice(&128u32.to_le_bytes());
            out.write_all_at(&h, 512).unwrap();
            let mut e = vec![0u8; 128];
            e[..16].copy_from_slice(&vmkfs::vmfs::partition::GPT_TYPE_VMFS);
            e[32..40].copy_from_slice(&2048u64.to_le_bytes());
            e[40..48].copy_from_slice(&(2048 + sectors - 1).to_le_bytes());
            out.write_all_at(&e, 1024 + 128).unwrap(); // the second entry: partition 2
        }
        drop(out);
        let vol = Volume::open(&[&disk]).unwrap();
        assert_eq!(our_walk(&vol, u64::MAX), want);
        let devs = vol.devices();
        assert_eq!(devs[0].partition_offset, start);
        assert_eq!(devs[0].partition, if gpt { 2 } else { 1 });
        if have_dissect() {
            let theirs = dissect_list(&[format!("{}@{start}", disk.display())], u64::MAX);
            assert!(assert_same_as_dissect(&want, &theirs).is_empty());
        }
    }
}

#[test]
fn queryfs_list_and_read_at_through_the_command() {
    let Some(img) = real_image("vmfs5.bin") else { return };
    let v = img.display().to_string();
    let o = vmkfs(Path::new("."), &["--volume", &v, "-P"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    for want in [
        "VMFS-5.81 (Raw Major Version: 14) file system spanning 1 partitions.",
        "File system label (if any): VMFS5 Test",
        "Mode: public",
        "Capacity 268435456 (256 file blocks * 1048576), 252706816 (241 blocks) avail",
        "UUID: 61137dd5-df6bc2c8-f0e7-000c29801686",
        "Partitions spanned (on \"lvm\"):",
        "Warning: live heartbeat of host 61137d5a-a2df8778-7ed5-000c29801686 (10.199.5.140)",
    ] {
        assert!(text.contains(want), "-P lacks {want:?}:\n{text}");
    }
    let o = vmkfs(Path::new("."), &["-P", "-h", &v]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("Capacity 256 MB, 241 MB available, file block size 1 MB"));
    let o = vmkfs(Path::new("."), &["--volume", &v, "-P", "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["label"], "VMFS5 Test");
    assert_eq!(j["free_blocks"], 241);
    assert_eq!(j["live_heartbeats"].as_array().unwrap().len(), 1);

    let o = vmkfs(Path::new("."), &["--volume", &v, "-l", "/directory"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("symlink") && text.contains("-> file4") && text.contains("8193"), "{text}");
    let o = vmkfs(Path::new("."), &["--volume", &v, "-l", "/directory", "-h"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("8.0 KiB"));
    let o = vmkfs(Path::new("."), &["--volume", &v, "-l", "/directory", "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = j.as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["file1", "file2", "file3", "file4", "file5", "symlink"]);

    let o = vmkfs(Path::new("."), &["--volume", &v, "--read-at", "0", "--length", "8193", "/directory/file5"]);
    assert!(o.status.success());
    assert_eq!(sha256_hex(&o.stdout), "227c62ef44ec9d9d4dbda23feaf622078a496368e919980afcd786acd9f455c4");
    let o = vmkfs(Path::new("."), &["--volume", &v, "--read-at", "2", "--length", "5", "/directory/symlink"]);
    assert_eq!(o.stdout, b"ntent");

    // Writes are refused; help stays on -h alone and --help.
    let o = vmkfs(Path::new("."), &["--volume", &v, "--write-at", "0", "/directory/file5"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("read-only"), "{}", String::from_utf8_lossy(&o.stderr));
    for h in ["-h", "--help"] {
        let o = vmkfs(Path::new("."), &[h]);
        assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("--queryfs"), "{h}");
    }
    let o = vmkfs(Path::new("."), &["--volume", "/nonexistent.img", "-l", "/"]);
    assert_eq!(o.status.code(), Some(4), "{}", String::from_utf8_lossy(&o.stderr));
}
