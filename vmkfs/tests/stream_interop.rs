//! streamOptimized files: ours read identically in qemu-img, dissect.hypervisor and libvmdk
//! (pyvmdk), are no more than 5 % larger than qemu's, and have VMware's shape; we read what qemu,
//! open-vmdk and VMware write (and unknown markers); a truncated stream is an error naming the
//! offset, through random access and through a pipe. Tools that are missing are skipped with a
//! message.

mod common;

use common::*;

use std::path::{Path, PathBuf};

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// A disk image like a real one: runs of random bytes (incompressible), text, explicit zeros and
/// holes, with unaligned edges; `mib` MiB, data only in the first `data_mib` MiB.
fn image(dir: &Path, name: &str, mib: usize, data_mib: usize, seed: u64) -> PathBuf {
    let text = b"lorem ipsum dolor sit amet ";
    let mix = Mix { state: seed | 1, run_kib: 1024, edge: 700, kinds: 5, random: 2, text };
    let p = dir.join(name);
    std::fs::write(&p, mixed_image(mib << 20, data_mib << 20, &mix)).unwrap();
    p
}

#[test]
fn our_streams_read_identically_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = image(d, "src.raw", 40, 40, 7);
    let want = std::fs::read(&raw).unwrap();
    for level in ["0", "1", "6", "9"] {
        let name = format!("s{level}.vmdk");
        let o = vmkfs(d, &["-i", "src.raw", "-d", "streamoptimized", "--compress-level", level, &name]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
        // Our own reader, random access.
        let o = vmkfs(d, &["--compare", "src.raw", &name]);
        assert!(o.status.success(), "level {level}: {}", String::from_utf8_lossy(&o.stdout));
        if have_qemu() {
            let c = qemu_img(d, &["compare", &name, "src.raw"]);
            assert!(c.status.success(), "level {level}: qemu-img compare: {}", String::from_utf8_lossy(&c.stdout));
        }
        for reader in ["dissect", "pyvmdk"] {
            if let Some(got) = oracle_read(reader, &[&d.join(&name)]) {
                assert_eq!(got, [(want.len() as u64, sha256_hex(&want))], "{reader} reads level {level} differently");
            }
        }
    }
    // Level 0 stores, so it is larger than level 9.
    let size = |n: &str| std::fs::metadata(d.join(n)).unwrap().len();
    assert!(size("s0.vmdk") > size("s9.vmdk"), "{} vs {}", size("s0.vmdk"), size("s9.vmdk"));
    assert!(std::fs::read_dir(d).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));
}

#[test]
fn no_more_than_five_percent_larger_than_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    image(d, "src.raw", 64, 48, 99);
    assert!(vmkfs(d, &["-i", "src.raw", "-d", "streamoptimized", "ours.vmdk"]).status.success());
    let q = qemu_img(d, &["convert", "-O", "vmdk", "-o", "subformat=streamOptimized", "src.raw", "qemu.vmdk"]);
    assert!(q.status.success());
    let ours = std::fs::metadata(d.join("ours.vmdk")).unwrap().len() as f64;
    let theirs = std::fs::metadata(d.join("qemu.vmdk")).unwrap().len() as f64;
    eprintln!("streamOptimized of 64 MiB: ours {ours} bytes, qemu's {theirs} bytes ({:.3})", ours / theirs);
    assert!(ours <= theirs * 1.05, "ours {ours} bytes, qemu's {theirs}");
}

#[test]
fn vmware_shape() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 96 MiB: three grain tables' worth; data only in the first 20 MiB, so tables 1 and 2 are empty.
    image(d, "src.raw", 96, 20, 3);
    assert!(vmkfs(d, &["-i", "src.raw", "-d", "streamoptimized", "-a", "ide", "v.vmdk"]).status.success());
    assert!(vmkfs(d, &["-i", "src.raw", "-d", "streamoptimized", "w.vmdk"]).status.success());
    let f = std::fs::read(d.join("w.vmdk")).unwrap();
    let n = f.len();
    assert_eq!(n % 512, 0);
    let h = &f[..512];
    assert_eq!(&h[..4], b"KDMV");
    assert_eq!(le32(h, 4), 3, "version");
    assert_eq!(le32(h, 8), 0x30001, "flags: newline test, compressed, markers; no redundant directory");
    assert_eq!(le64(h, 12), 96 * 2048, "capacity");
    assert_eq!(le64(h, 20), 128, "grain");
    assert_eq!((le64(h, 28), le64(h, 36)), (1, 20), "descriptor at sector 1, 20 sectors");
    assert_eq!(le32(h, 44), 512);
    assert_eq!(le64(h, 48), 0, "no redundant directory");
    assert_eq!(le64(h, 56), u64::MAX, "gdOffset GD_AT_END");
    assert_eq!(u16::from_le_bytes([h[77], h[78]]), 1, "deflate");
    assert_eq!(&h[73..77], b"\n \r\n");
    // EOS: the last sector is all zero; footer at EOF-1024 after its marker at EOF-1536.
    assert!(f[n - 512..].iter().all(|&b| b == 0), "end-of-stream marker");
    let fm = &f[n - 1536..n - 1024];
    assert_eq!((le64(fm, 0), le32(fm, 8), le32(fm, 12)), (1, 0, 3), "footer marker");
    let footer = &f[n - 1024..n - 512];
    let gd = le64(footer, 56);
    assert_ne!(gd, u64::MAX);
    assert_eq!(&footer[..56], &h[..56], "the footer is the header...");
    assert_eq!(&footer[64..], &h[64..], "...except for gdOffset");
    // GD marker right before the directory; tables 1 and 2 left out (entry 0).
    let gm = &f[(gd as usize - 1) * 512..gd as usize * 512];
    assert_eq!((le64(gm, 0), le32(gm, 8), le32(gm, 12)), (1, 0, 2), "GD marker");
    let gde: Vec<u32> = (0..3).map(|i| le32(&f, gd as usize * 512 + 4 * i)).collect();
    assert!(gde[0] != 0 && gde[1] == 0 && gde[2] == 0, "{gde:?}");
    let tm = &f[(gde[0] as usize - 1) * 512..gde[0] as usize * 512];
    assert_eq!((le64(tm, 0), le32(tm, 8), le32(tm, 12)), (4, 0, 1), "GT marker");
    // The first grain: a marker with the LBA, a zlib stream.
    let first = (0..512).map(|i| le32(&f, gde[0] as usize * 512 + 4 * i)).find(|&e| e != 0).unwrap() as usize * 512;
    assert!(first >= 128 * 512);
    assert!(le32(&f, first + 8) > 0);
    // Embedded descriptor.
    let text = String::from_utf8_lossy(&f[512..21 * 512]).trim_end_matches('\0').to_string();
    for key in [
        "createType=\"streamOptimized\"",
        "RW 196608 SPARSE \"w.vmdk\"",
        "ddb.adapterType = \"lsilogic\"",
        "ddb.toolsVersion = \"2147483647\"",
        "ddb.virtualHWVersion = \"4\"",
        "ddb.geometry.cylinders",
        "ddb.uuid",
        "ddb.longContentID",
    ] {
        assert!(text.contains(key), "{key} missing from\n{text}");
    }
    let v = String::from_utf8_lossy(&std::fs::read(d.join("v.vmdk")).unwrap()[512..21 * 512]).to_string();
    assert!(v.contains("ddb.adapterType = \"ide\""), "{v}");
    // All-zero grains are not stored: the file holds fewer grains than the disk has.
    let o = vmkfs(d, &["--info", "--json", "w.vmdk"]);
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(info["allocated"].as_u64().unwrap() <= 21 << 20, "{info}");
}

/// Walks the records of one of our streams: (LBA, record bytes) of each grain.
fn grain_records(f: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let overhead = le64(f, 64) as usize * 512;
    let mut pos = overhead;
    let mut out = Vec::new();
    while pos + 512 <= f.len() {
        let (val, size, kind) = (le64(f, pos), le32(f, pos + 8), le32(f, pos + 12));
        if size != 0 {
            let len = (12 + size as usize).div_ceil(512) * 512;
            out.push((val, f[pos..pos + len].to_vec()));
            pos += len;
        } else if kind == 0 {
            return out;
        } else {
            pos += 512 + val as usize * 512;
        }
    }
    out
}

/// Rewrites one of our streams in open-vmdk's shape: gdOffset real, the directory and every table
/// right after the descriptor (overHead not grain aligned), no GT/GD markers, no footer, an
/// end-of-stream marker. With `gaps`, a zero sector (which reads like an end-of-stream marker) is
/// put before every third grain, as padding.
fn open_vmdk_shape(ours: &[u8], gaps: bool) -> Vec<u8> {
    let cap = le64(ours, 12);
    let gt_count = cap.div_ceil(128).div_ceil(512) as usize;
    let gd_sectors = (gt_count * 4).div_ceil(512);
    let gd_at = 21;
    let overhead = gd_at + gd_sectors + gt_count * 4;
    let mut head = ours[..21 * 512].to_vec();
    head[56..64].copy_from_slice(&(gd_at as u64).to_le_bytes());
    head[64..72].copy_from_slice(&(overhead as u64).to_le_bytes());
    let mut meta = vec![0u8; (overhead - 21) * 512];
    let mut grains = Vec::new();
    let mut sector = overhead;
    for (i, (lba, rec)) in grain_records(ours).into_iter().enumerate() {
        if gaps && i % 3 == 1 {
            grains.extend_from_slice(&[0u8; 512]);
            sector += 1;
        }
        let g = (lba / 128) as usize;
        let at = (gd_sectors + (g / 512) * 4) * 512 + (g % 512) * 4;
        meta[at..at + 4].copy_from_slice(&(sector as u32).to_le_bytes());
        sector += rec.len() / 512;
        grains.extend_from_slice(&rec);
    }
    for t in 0..gt_count {
        let gt = (gd_at + gd_sectors + t * 4) as u32;
        meta[t * 4..t * 4 + 4].copy_from_slice(&gt.to_le_bytes());
    }
    let mut f = head;
    f.extend_from_slice(&meta);
    f.extend_from_slice(&grains);
    f.extend_from_slice(&[0u8; 512]);
    f
}

#[test]
fn we_read_what_others_write() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = image(d, "src.raw", 70, 70, 11);
    let want = std::fs::read(&raw).unwrap();
    assert!(vmkfs(d, &["-i", "src.raw", "-d", "streamoptimized", "ours.vmdk"]).status.success());
    let ours = std::fs::read(d.join("ours.vmdk")).unwrap();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    // open-vmdk: tables up front, no markers for them, EOS, no footer.
    files.push(("openvmdk.vmdk".into(), open_vmdk_shape(&ours, false)));
    // The same with zero sectors between grains: padding, not the end, as the tables point further.
    files.push(("padded.vmdk".into(), open_vmdk_shape(&ours, true)));
    // GD_AT_END without a footer, with type-4 and unknown (type 9) markers among the grains: opened
    // by walking the markers.
    let recs = grain_records(&ours);
    let mut f = ours[..128 * 512].to_vec();
    for (i, (_, rec)) in recs.iter().enumerate() {
        if i % 5 == 0 {
            let mut m = [0u8; 512];
            m[0..8].copy_from_slice(&(if i % 10 == 0 { 0u64 } else { 2 }).to_le_bytes());
            m[12..16].copy_from_slice(&(if i % 10 == 0 { 4u32 } else { 9 }).to_le_bytes());
            f.extend_from_slice(&m);
            f.extend_from_slice(&vec![0x5a; if i % 10 == 0 { 0 } else { 1024 }]);
        }
        f.extend_from_slice(rec);
    }
    f.extend_from_slice(&[0u8; 512]);
    files.push(("nofooter.vmdk".into(), f));
    if have_qemu() {
        let q = qemu_img(d, &["convert", "-O", "vmdk", "-o", "subformat=streamOptimized", "src.raw", "qemu.vmdk"]);
        assert!(q.status.success());
        files.push(("qemu.vmdk".into(), std::fs::read(d.join("qemu.vmdk")).unwrap()));
    }
    for (name, bytes) in &files {
        std::fs::write(d.join(name), bytes).unwrap();
        // Random access.
        let o = vmkfs(d, &["--compare", "src.raw", name]);
        assert!(
            o.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        // Sequential, through a pipe.
        let out = format!("{name}.thin.vmdk");
        let o = vmkfs_stdin(d, &["-i", "-", "-d", "thin", &out], bytes);
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stdout));
        let back = std::fs::read(d.join(format!("{name}.thin-flat.vmdk"))).unwrap();
        assert!(back == want, "{name} through a pipe reads differently");
    }
    if have_qemu() {
        // qemu reads the open-vmdk and footer-less shapes as we built them (a check of the test).
        let c = qemu_img(d, &["compare", "openvmdk.vmdk", "src.raw"]);
        assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stdout));
    }
}

#[test]
fn truncated_streams_are_errors_naming_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    image(d, "src.raw", 40, 40, 5);
    assert!(vmkfs(d, &["-i", "src.raw", "-d", "streamoptimized", "s.vmdk"]).status.success());
    let full = std::fs::read(d.join("s.vmdk")).unwrap();
    let recs = grain_records(&full);
    // Inside a grain record, exactly at a record boundary, and just before the end-of-stream marker.
    let mid = 128 * 512 + recs[..recs.len() / 2].iter().map(|r| r.1.len()).sum::<usize>();
    for cut in [mid + 700, mid, full.len() - 512, full.len() - 1000] {
        let t = &full[..cut];
        std::fs::write(d.join("t.vmdk"), t).unwrap();
        // Random access (opening indexes by walking markers, as the footer is gone).
        let o = vmkfs(d, &["-i", "t.vmdk", "-d", "thin", "out.vmdk"]);
        let msg = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "cut at {cut}: {msg}");
        assert!(
            msg.contains(&format!("corrupt at byte offset {cut}:")) && msg.contains("truncated"),
            "cut at {cut}: {msg}"
        );
        assert!(!d.join("out.vmdk").exists() && !d.join("out-flat.vmdk").exists());
        // Sequential, from a pipe.
        let o = vmkfs_stdin(d, &["-i", "-", "-d", "thin", "out.vmdk"], t);
        let msg = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "pipe, cut at {cut}: {msg}");
        assert!(
            msg.contains(&format!("corrupt at byte offset {cut}:")) && msg.contains("truncated"),
            "pipe, cut at {cut}: {msg}"
        );
        assert!(!d.join("out.vmdk").exists() && !d.join("out-flat.vmdk").exists());
    }
    // A qemu stream (tables up front) cut short: the tables point past the end.
    if have_qemu() {
        assert!(qemu_img(d, &["convert", "-O", "vmdk", "-o", "subformat=streamOptimized", "src.raw", "q.vmdk"])
            .status
            .success());
        let q = std::fs::read(d.join("q.vmdk")).unwrap();
        // At a record boundary (no marker is cut): only qemu's tables tell that grains are missing.
        let overhead = le64(&q, 64) as usize * 512;
        let recs = grain_records(&q);
        let cut = overhead + recs[..recs.len() / 2].iter().map(|r| r.1.len()).sum::<usize>();
        for cut in [cut, cut + 100] {
            let o = vmkfs_stdin(d, &["-i", "-", "-d", "thin", "out.vmdk"], &q[..cut]);
            let msg = String::from_utf8_lossy(&o.stderr).to_string();
            assert_eq!(o.status.code(), Some(3), "{msg}");
            assert!(msg.contains(&format!("corrupt at byte offset {cut}:")), "{msg}");
        }
    }
}

#[test]
fn streams_stay_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    image(d, "src.raw", 4, 4, 1);
    assert!(vmkfs(d, &["-i", "src.raw", "-d", "streamoptimized", "s.vmdk"]).status.success());
    let before = std::fs::read(d.join("s.vmdk")).unwrap();
    let o = vmkfs_stdin(d, &["--write-at", "0", "s.vmdk"], b"hello");
    assert!(!o.status.success());
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(msg.contains("streamOptimized") && msg.contains("read-only"), "{msg}");
    assert_eq!(std::fs::read(d.join("s.vmdk")).unwrap(), before);
}
