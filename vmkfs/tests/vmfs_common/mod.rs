//! Shared pieces of the VMFS tests: the real images from `../shared/testdata/vmfs` (decompressed
//! once into sparse files), the oracles (dissect.vmfs, debugvmfs, debugvmfs6) run as separate
//! processes, and a recursive walk through our reader.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::common::hex;
use vmkfs::vmfs::{FileKind, Volume};

/// `../shared/testdata/vmfs` of the repository, if present.
pub fn shared_dir() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/vmfs");
    if d.is_dir() {
        Some(d)
    } else {
        eprintln!("SKIP: {} is absent; the real-image VMFS checks need ../shared", d.display());
        None
    }
}

static DECOMPRESS: Mutex<()> = Mutex::new(());

/// The real image `name` (`vmfs3.img`, `vmfs5.bin`, `vmfs6.bin`) as a sparse file, decompressed once
/// per build into the target's temporary folder; `None` (with a message) without `../shared`.
pub fn real_image(name: &str) -> Option<PathBuf> {
    let src = shared_dir()?.join(format!("{name}.gz"));
    let len = std::fs::metadata(&src).ok()?.len();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vmfs-images");
    std::fs::create_dir_all(&dir).unwrap();
    let dst = dir.join(format!("{len}-{name}"));
    let _g = DECOMPRESS.lock().unwrap_or_else(|p| p.into_inner());
    if dst.exists() {
        return Some(dst);
    }
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let t0 = std::time::Instant::now();
    gunzip_sparse(&src, &tmp);
    std::fs::rename(&tmp, &dst).unwrap();
    eprintln!("decompressed {name} in {:.2}s", t0.elapsed().as_secs_f64());
    Some(dst)
}

/// Streams a gzip file into `dst`, writing only non-zero 64 KiB blocks (the rest stays a hole).
pub fn gunzip_sparse(src: &Path, dst: &Path) {
    let f = std::fs::File::open(src).unwrap();
    let mut gz = flate2::read::GzDecoder::new(std::io::BufReader::with_capacity(1 << 20, f));
    let out = std::fs::File::create(dst).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            let r = gz.read(&mut buf[n..]).unwrap();
            if r == 0 {
                break;
            }
            n += r;
        }
        if n == 0 {
            break;
        }
        for (i, c) in buf[..n].chunks(64 << 10).enumerate() {
            if c.iter().any(|&b| b != 0) {
                out.write_all_at(c, pos + (i as u64) * (64 << 10)).unwrap();
            }
        }
        pos += n as u64;
    }
    out.set_len(pos).unwrap();
}

/// Copies a sparse file, data runs only (for tests that change an image).
pub fn copy_sparse(src: &Path, dst: &Path) {
    let d = vmkfs::rdm::Device::open(src, vmkfs::rdm::OpenMode::Read).unwrap();
    let len = d.size().unwrap();
    let out = std::fs::File::create(dst).unwrap();
    for (s, l) in d.data_runs(0, len).unwrap() {
        let mut buf = vec![0u8; l as usize];
        d.read_exact_at(&mut buf, s).unwrap();
        out.write_all_at(&buf, s).unwrap();
    }
    out.set_len(len).unwrap();
}

fn have(cmd: &str, args: &[&str], what: &str) -> bool {
    let ok = Command::new(cmd).args(args).output().is_ok();
    if !ok {
        eprintln!("SKIP: {what} ({cmd}) is not installed; skipping that oracle (.ci/run installs it)");
    }
    ok
}

/// True when `python3 -c 'import dissect.vmfs'` works.
pub fn have_dissect() -> bool {
    let ok = Command::new("python3").args(["-c", "import dissect.vmfs"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP: dissect.vmfs is not installed (pip install dissect.vmfs); skipping that oracle");
    }
    ok
}

/// True when `debugvmfs` runs.
pub fn have_debugvmfs() -> bool {
    have("debugvmfs", &[], "debugvmfs (Debian vmfs-tools)")
}

/// True when `debugvmfs6` runs.
pub fn have_debugvmfs6() -> bool {
    have("debugvmfs6", &[], "debugvmfs6 (Debian vmfs6-tools)")
}

fn oracle_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vmfs_common/oracle_dissect.py")
}

/// dissect.vmfs's recursive listing: one JSON object per entry (path, type, size, mtime, fd,
/// sha256 for files up to `hash_limit` bytes, target for symlinks, error when it failed).
pub fn dissect_list(devs: &[String], hash_limit: u64) -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .arg(oracle_script())
        .args(["list", "--hash-limit", &hash_limit.to_string()])
        .args(devs)
        .output()
        .expect("run the dissect oracle");
    assert!(out.status.success(), "dissect oracle failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// dissect.vmfs's SHA-256 of each `(path, offset, length)` range (one process for all).
pub fn dissect_ranges(devs: &[String], ranges: &[(String, u64, u64)]) -> Vec<String> {
    let req = serde_json::to_string(ranges).unwrap();
    let out = Command::new("python3")
        .arg(oracle_script())
        .args(["ranges", &req])
        .args(devs)
        .output()
        .expect("run the dissect oracle");
    assert!(out.status.success(), "dissect oracle failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// dissect.vmfs's raw block pointers of `path`.
pub fn dissect_blocks(devs: &[String], path: &str) -> Vec<u64> {
    let out = Command::new("python3")
        .arg(oracle_script())
        .args(["blocks", path])
        .args(devs)
        .output()
        .expect("run the dissect oracle");
    assert!(out.status.success(), "dissect oracle failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["blocks"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

/// One line of `debugvmfs … ls -l DIR`: (name, size, first mode character).
pub fn debugvmfs_ls(tool: &str, devs: &[String], dir: &str) -> Vec<(String, u64, char)> {
    let out = Command::new(tool).args(devs).args(["ls", "-l", dir]).output().expect("run debugvmfs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| !l.starts_with("VMFS version"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let name = f[7..].join(" ");
            if name == "." || name == ".." {
                return None;
            }
            Some((name, f[4].parse().ok()?, f[0].chars().next()?))
        })
        .collect()
}

/// `debugvmfs … cat PATH` (the "VMFS version: 6" line debugvmfs6 prints first removed).
pub fn debugvmfs_cat(tool: &str, devs: &[String], path: &str) -> Vec<u8> {
    let out = Command::new(tool).args(devs).args(["cat", path]).output().expect("run debugvmfs");
    let mut v = out.stdout;
    let tag = b"VMFS version: 6\n";
    if v.starts_with(tag) {
        v.drain(..tag.len());
    }
    v
}

/// One entry of our recursive walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: String,
    pub size: u64,
    pub mtime: u32,
    pub fd: u32,
    pub sha256: Option<String>,
    pub target: Option<String>,
}

/// SHA-256 of a whole file read through our reader.
pub fn our_hash(vol: &Volume, path: &str) -> String {
    let f = vol.open_file(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut off = 0;
    while off < f.len() {
        let n = f.read_at(&mut buf, off).unwrap();
        h.update(&buf[..n]);
        off += n as u64;
    }
    hex(&h.finalize())
}

/// SHA-256 of a range read through our reader.
pub fn our_range_hash(vol: &Volume, path: &str, off: u64, len: u64) -> String {
    let f = vol.open_file(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut pos = off;
    let end = (off + len).min(f.len());
    while pos < end {
        let n = ((end - pos) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..n], pos).unwrap();
        h.update(&buf[..n]);
        pos += n as u64;
    }
    hex(&h.finalize())
}

/// Our recursive listing, in directory order, hashing files up to `hash_limit` bytes.
pub fn our_walk(vol: &Volume, hash_limit: u64) -> Vec<Entry> {
    fn walk(vol: &Volume, dir: &str, limit: u64, out: &mut Vec<Entry>, depth: usize) {
        for (e, st) in vol.list(dir).unwrap() {
            let path = format!("{}/{}", dir.trim_end_matches('/'), e.name);
            let kind = st.kind.name().to_string();
            let sha256 = (st.kind != FileKind::Directory
                && st.kind != FileKind::Symlink
                && st.kind != FileKind::Rdm
                && st.size <= limit)
                .then(|| our_hash(vol, &path));
            out.push(Entry {
                path: path.clone(),
                kind,
                size: st.size,
                mtime: st.mtime,
                fd: st.fd_address,
                sha256,
                target: st.link_target.clone(),
            });
            if st.kind == FileKind::Directory && depth < 8 {
                walk(vol, &path, limit, out, depth + 1);
            }
        }
    }
    let mut out = Vec::new();
    walk(vol, "/", hash_limit, &mut out, 0);
    out
}

/// Checks our walk against dissect's listing: the same paths in the same order, types, sizes,
/// mtimes, FD addresses, symlink targets and (where dissect could read) content hashes. Returns
/// the paths dissect could not read.
pub fn assert_same_as_dissect(ours: &[Entry], theirs: &[serde_json::Value]) -> Vec<String> {
    let mut unread = Vec::new();
    assert_eq!(
        ours.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
        theirs.iter().map(|v| v["path"].as_str().unwrap()).collect::<Vec<_>>(),
        "listing differs from dissect.vmfs"
    );
    for (o, t) in ours.iter().zip(theirs) {
        assert_eq!(o.kind, t["type"].as_str().unwrap(), "{}: type", o.path);
        assert_eq!(o.size, t["size"].as_u64().unwrap(), "{}: size", o.path);
        assert_eq!(o.mtime as u64, t["mtime"].as_u64().unwrap(), "{}: mtime", o.path);
        assert_eq!(o.fd as u64, t["fd"].as_u64().unwrap(), "{}: FD address", o.path);
        assert_eq!(o.target.as_deref(), t["target"].as_str(), "{}: symlink target", o.path);
        match (t["sha256"].as_str(), t["error"].as_str()) {
            (Some(h), _) => assert_eq!(o.sha256.as_deref(), Some(h), "{}: content differs from dissect.vmfs", o.path),
            (None, Some(_)) => unread.push(o.path.clone()),
            _ => {}
        }
    }
    unread
}
