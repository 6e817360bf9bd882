//! Every source format × every target format clones byte-identical (checked by `qemu-img compare`
//! and by our own reader), and each target's allocation is what its format promises.

mod common;

use common::*;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// 12 MiB: random, text and explicit-zero runs between holes, unaligned edges.
fn pattern(dir: &Path) {
    let mix =
        Mix { state: 0x1234_5678_9abc_def1, run_kib: 700, edge: 512, kinds: 4, random: 1, text: b"lorem ipsum dolor " };
    std::fs::write(dir.join("src.raw"), mixed_image(12 << 20, 12 << 20, &mix)).unwrap();
}

fn data_bytes(dir: &Path, disk: &str) -> u64 {
    let o = vmkfs(dir, &["--info", "--json", disk]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["allocated"].as_u64().unwrap()
}

#[test]
fn every_source_to_every_target() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pattern(d);
    let have_qemu = have_qemu();
    let targets = ["thin", "zeroedthick", "eagerzeroedthick", "monosparse", "2gbsparse", "monoflat", "2gbflat"];
    let mut sources = vec!["src.raw".to_string()];
    for t in targets {
        let name = format!("s-{t}.vmdk");
        assert!(vmkfs(d, &["-i", "src.raw", "-d", t, &name]).status.success());
        sources.push(name);
    }
    if have_qemu {
        let o = qemu_img(d, &["convert", "-O", "vmdk", "-o", "subformat=streamOptimized", "src.raw", "s-stream.vmdk"]);
        assert!(o.status.success());
        sources.push("s-stream.vmdk".into());
    } else {
        eprintln!("qemu-img not found: streamOptimized source and qemu comparisons skipped");
    }
    for (si, src) in sources.iter().enumerate() {
        for t in targets {
            let dst = format!("d{si}-{t}.vmdk");
            let o = vmkfs(d, &["-i", src, "-d", t, &dst]);
            assert!(o.status.success(), "{src} -> {t}: {}", String::from_utf8_lossy(&o.stdout));
            let c = vmkfs(d, &["--compare", &dst, "src.raw"]);
            assert!(c.status.success(), "{src} -> {t}: {}", String::from_utf8_lossy(&c.stdout));
            if have_qemu {
                let c = qemu_img(d, &["compare", &dst, "src.raw"]);
                assert!(c.status.success(), "qemu: {src} -> {t}: {}", String::from_utf8_lossy(&c.stdout));
            }
            let stored = data_bytes(d, &dst);
            match t {
                // Thin and sparse targets hold no all-zero block (4 KiB for flat files, 64 KiB grains).
                "thin" | "monosparse" | "2gbsparse" => {
                    let o = vmkfs(d, &["--read-at", "0", &dst]);
                    let all = o.stdout;
                    let block = if t == "thin" { 4096 } else { 65536 };
                    let o = vmkfs(d, &["--map", "--json", &dst]);
                    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
                    for r in runs.as_array().unwrap().iter().filter(|r| r["data"] == true) {
                        let (s, l) = (r["start"].as_u64().unwrap() as usize, r["length"].as_u64().unwrap() as usize);
                        for b in (s..s + l).step_by(block) {
                            let e = (b + block).min(s + l);
                            assert!(all[b..e].iter().any(|&x| x != 0), "{src} -> {t}: zero block stored at {b}");
                        }
                    }
                }
                "eagerzeroedthick" => {
                    assert_eq!(stored, 12 << 20, "{src} -> {t}: eager-zeroed disk must be fully allocated");
                    let m = std::fs::metadata(d.join(format!("d{si}-{t}-flat.vmdk"))).unwrap();
                    assert!(m.blocks() * 512 >= 12 << 20);
                }
                _ => {}
            }
        }
    }
}

/// Direct I/O (`--direct-io on`, what large copies into flat files choose by themselves) writes the
/// same disks: every flat target, from a source whose size is not a multiple of 4 KiB (so the last
/// piece goes through the page cache), read back by qemu-img and by us; sparse targets, written in
/// order, stay buffered.
#[test]
fn direct_io_writes_the_same_disks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pattern(d);
    let mut data = std::fs::read(d.join("src.raw")).unwrap();
    data.extend_from_slice(&[0x77u8; 1536]);
    std::fs::write(d.join("odd.raw"), &data).unwrap();
    let have_qemu = have_qemu();
    for (t, direct) in [
        ("thin", true),
        ("zeroedthick", true),
        ("eagerzeroedthick", true),
        ("monoflat", true),
        ("2gbflat", true),
        ("monosparse", false),
    ] {
        let dst = format!("direct-{t}.vmdk");
        let o = vmkfs(d, &["-i", "odd.raw", "-d", t, "--direct-io", "on", "-v", "1", &dst]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{t}: {err}");
        let how = if direct { "direct writes" } else { "buffered writes" };
        if direct && err.contains("buffered writes") {
            eprintln!("skipped for {t}: the file system of {} refuses O_DIRECT", d.display());
        } else {
            assert!(err.contains(how), "{t}: expected {how}: {err}");
        }
        let c = vmkfs(d, &["--compare", &dst, "odd.raw"]);
        assert!(c.status.success(), "{t}: {}", String::from_utf8_lossy(&c.stdout));
        if have_qemu {
            let c = qemu_img(d, &["compare", &dst, "odd.raw"]);
            assert!(c.status.success(), "qemu: {t}: {}", String::from_utf8_lossy(&c.stdout));
        }
    }
}
