//! `vmkfs --mount DIR DISK`: the image file in the FUSE mount reads what the disk reads (sha256 of
//! a three-link chain), writes through a `--writable` mount land in the top link under its lock,
//! SIGINT and SIGTERM unmount cleanly and release the disk, and a loop mount of the image lists the
//! files of an ext4 file system made in the test.
//!
//! Skipped with a message where `/dev/fuse` cannot be opened or `fusermount3` is missing (Debian:
//! `fuse3`); the loop-mount part also where loop devices cannot be set up.

mod common;
mod vmfs_common;

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    bin, create_disk, disk_digest, have_tool, pattern, read_at, sha256_file, sha256_hex, sha256_reader, skip, snapshot,
    vmkfs, write_pattern, KIB, MIB,
};

/// Why FUSE cannot be used here, if it cannot.
fn fuse_missing() -> Option<String> {
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        return Some(format!("/dev/fuse cannot be opened ({e})"));
    }
    if !have_tool("fusermount3") {
        return Some("fusermount3 missing (Debian: fuse3)".into());
    }
    None
}

/// A running `vmkfs --mount`, unmounted (by SIGTERM) if the test fails before it stops it.
struct Mounted {
    child: Option<Child>,
    dir: PathBuf,
    image: PathBuf,
}

impl Mounted {
    /// Starts `vmkfs [extra…] --mount MNT DISK` in `dir` and waits until the image is there.
    fn start(dir: &Path, disk: &str, extra: &[&str]) -> Mounted {
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let mut args = extra.to_vec();
        args.extend(["--mount", "mnt", disk]);
        let child = Command::new(bin())
            .args(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vmkfs --mount");
        let stem = Path::new(disk).file_stem().unwrap().to_string_lossy().into_owned();
        let mut m = Mounted { child: Some(child), dir: mnt.clone(), image: mnt.join(format!("{stem}.img")) };
        let t0 = Instant::now();
        while !is_mounted(&mnt) || !m.image.exists() {
            if let Some(st) = m.child.as_mut().unwrap().try_wait().unwrap() {
                let (out, err) = m.output();
                panic!("vmkfs --mount ended early ({st}):\n{out}\n{err}");
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "the mount did not appear in 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    fn output(&mut self) -> (String, String) {
        let c = self.child.as_mut().unwrap();
        let (mut out, mut err) = (String::new(), String::new());
        if let Some(mut s) = c.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        if let Some(mut s) = c.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        (out, err)
    }

    /// Sends `signal` (`INT`, `TERM`), waits for the exit and returns its code and output; the
    /// mount must be gone by then.
    fn stop(mut self, signal: &str) -> (Option<i32>, String, String) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap().success());
        let t0 = Instant::now();
        let status = loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                break st;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "vmkfs --mount did not end 30 s after SIG{signal}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let (out, err) = self.output();
        self.child = None;
        assert!(!is_mounted(&self.dir), "still mounted after SIG{signal}");
        (status.code(), out, err)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
            let _ = Command::new("fusermount3").arg("-u").arg(&self.dir).status();
        }
    }
}

/// True when `dir` is a mount point in /proc/mounts.
fn is_mounted(dir: &Path) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts.lines().any(|l| l.split(' ').nth(1).is_some_and(|m| Path::new(m) == dir))
}

/// A three-link chain with data in each link, some of it overwritten above; returns the top.
fn three_link_chain(d: &Path) -> String {
    create_disk(d, "base.vmdk", "monosparse", 32 * MIB);
    write_pattern(d, "base.vmdk", 0, 2 * MIB as usize, 1);
    write_pattern(d, "base.vmdk", 20 * MIB, MIB as usize, 2);
    let s1 = snapshot(d, "base.vmdk", false);
    write_pattern(d, &s1, MIB, 64 * KIB as usize, 3);
    write_pattern(d, &s1, 31 * MIB, MIB as usize, 4);
    let s2 = snapshot(d, &s1, false);
    write_pattern(d, &s2, 1536 * KIB, 4 * KIB as usize, 5);
    write_pattern(d, &s2, 10 * MIB + 512, 8 * KIB as usize, 6);
    s2
}

#[test]
fn read_only_mount_reads_the_chain_and_sigint_unmounts() {
    if let Some(why) = fuse_missing() {
        return skip(&format!("{why}: --mount is not tested"));
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let top = three_link_chain(d);
    let want = disk_digest(d, &top, &[]).unwrap().sha256;
    let m = Mounted::start(d, &top, &[]);
    assert_eq!(std::fs::metadata(&m.image).unwrap().len(), 32 * MIB);
    assert_eq!(sha256_file(&m.image), want, "the mounted image reads what the chain reads");
    let mut part = vec![0u8; 8 * KIB as usize];
    std::fs::File::open(&m.image).unwrap().read_exact_at(&mut part, 10 * MIB + 512).unwrap();
    assert_eq!(part, pattern(10 * MIB + 512, 8 * KIB as usize, 6));
    let w = OpenOptions::new().write(true).open(&m.image);
    assert!(w.is_err(), "a read-only mount refuses opening the image for writing");
    // The mount holds shared locks: readers may come, a writer is refused as locked.
    assert_eq!(read_at(d, &top, MIB, 16), pattern(MIB, 16, 3));
    let o = vmkfs(d, &["--write-at", "0", &top]);
    assert_eq!(o.code(), Some(5), "{o:?}");
    let (code, out, err) = m.stop("INT");
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("Mounted: mnt/"), "{out}");
    assert_eq!(disk_digest(d, &top, &[]).unwrap().sha256, want, "the chain is unchanged");
}

#[test]
fn writable_mount_writes_into_the_top_link_and_sigterm_flushes() {
    if let Some(why) = fuse_missing() {
        return skip(&format!("{why}: --mount --writable is not tested"));
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let top = three_link_chain(d);
    let base_before = disk_digest(d, "base.vmdk", &[]).unwrap().sha256;
    let m = Mounted::start(d, &top, &["--writable"]);
    let data = vec![0xabu8; 64 * KIB as usize];
    {
        let f = OpenOptions::new().write(true).open(&m.image).unwrap();
        f.write_all_at(&data, 5 * MIB).unwrap();
        f.write_all_at(b"tail", 32 * MIB - 4).unwrap();
        f.sync_all().unwrap();
        let past = f.write_at(b"x", 32 * MIB);
        assert!(past.is_err() || past.unwrap() == 0, "no write past the capacity");
    }
    // The top link is held exclusively while mounted writable.
    let o = vmkfs(d, &["--info", &top]);
    assert_eq!(o.code(), Some(5), "{o:?}");
    let (code, out, err) = m.stop("TERM");
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_eq!(read_at(d, &top, 5 * MIB, 64 * KIB), data);
    assert_eq!(read_at(d, &top, 32 * MIB - 4, 4), b"tail");
    let changed = common::vmkfs_ok(d, &["--changed-blocks", "--json", "--since", "base-000001.vmdk", &top]);
    assert!(changed.contains("\"start\":5242880"), "the write is in the top link: {changed}");
    assert_eq!(disk_digest(d, "base.vmdk", &[]).unwrap().sha256, base_before, "links below are untouched");
    let o = vmkfs(d, &["-x", "check", &top]);
    assert!(o.success(), "{o:?}");
    if have_tool("qemu-img") {
        let o = common::qemu_img(d, &["check", &top]);
        assert!(o.success(), "{o:?}");
    }
}

#[test]
fn loop_mount_of_the_image_lists_the_guest_files() {
    if let Some(why) = fuse_missing() {
        return skip(&format!("{why}: the loop mount of a --mount image is not tested"));
    }
    if !have_tool("mkfs.ext4") || !have_tool("mount") {
        return skip("mkfs.ext4 or mount missing: the loop mount is not tested");
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // An ext4 file system holding a few files, made without mounting anything (mkfs.ext4 -d).
    let tree = d.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/hostname"), b"guest01\n").unwrap();
    std::fs::write(tree.join("big.bin"), pattern(0, 3 * MIB as usize, 7)).unwrap();
    let raw = d.join("fs.raw");
    std::fs::File::create(&raw).unwrap().set_len(32 * MIB).unwrap();
    let o = Command::new("mkfs.ext4").args(["-q", "-F", "-d"]).arg(&tree).arg(&raw).output().unwrap();
    assert!(o.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&o.stderr));
    let img = std::fs::read(&raw).unwrap();
    let o = common::vmkfs_stdin(d, &["-i", "-", "-d", "monosparse", "--size", &(32 * MIB).to_string(), "g.vmdk"], &img);
    assert!(o.success(), "{o:?}");
    let top = snapshot(d, "g.vmdk", false);
    let m = Mounted::start(d, &top, &[]);
    assert_eq!(sha256_file(&m.image), sha256_hex(&img));
    let guest = d.join("guest");
    std::fs::create_dir(&guest).unwrap();
    let o = Command::new("mount").args(["-o", "loop,ro", "-t", "ext4"]).arg(&m.image).arg(&guest).output().unwrap();
    if !o.status.success() {
        let (code, _, err) = m.stop("INT");
        assert_eq!(code, Some(0), "{err}");
        return skip(&format!("loop mounts are not allowed here ({})", String::from_utf8_lossy(&o.stderr).trim()));
    }
    let listed: Result<Vec<String>, _> =
        std::fs::read_dir(&guest).map(|r| r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect());
    let hostname = std::fs::read(guest.join("etc/hostname"));
    let big = std::fs::read(guest.join("big.bin"));
    let u = Command::new("umount").arg(&guest).output().unwrap();
    assert!(u.status.success(), "umount: {}", String::from_utf8_lossy(&u.stderr));
    let mut listed = listed.unwrap();
    listed.sort();
    assert_eq!(listed, ["big.bin", "etc", "lost+found"]);
    assert_eq!(hostname.unwrap(), b"guest01\n");
    assert!(big.unwrap() == pattern(0, 3 * MIB as usize, 7), "big.bin reads back");
    let (code, out, err) = m.stop("INT");
    assert_eq!(code, Some(0), "{out}\n{err}");
}

#[test]
fn a_disk_inside_a_vmfs_volume_mounts_read_only() {
    if let Some(why) = fuse_missing() {
        return skip(&format!("{why}: --volume --mount is not tested"));
    }
    let Some(img) = vmfs_common::real_image("vmfs3.img") else { return };
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let vol = img.to_str().unwrap();
    let mut read = Command::new(bin())
        .args(["--volume", vol, "--read-at", "0", "/thin.vmdk"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let want = sha256_reader(read.stdout.as_mut().unwrap());
    assert!(read.wait().unwrap().success());
    let m = Mounted::start(d, "/thin.vmdk", &["--volume", vol]);
    assert_eq!(m.image, d.join("mnt/thin.img"));
    assert_eq!(std::fs::metadata(&m.image).unwrap().len(), 200 * MIB);
    assert_eq!(sha256_file(&m.image), want, "the mounted image reads what --read-at reads");
    let (code, out, err) = m.stop("TERM");
    assert_eq!(code, Some(0), "{out}\n{err}");
    let o = Command::new(bin())
        .args(["--volume", vol, "--writable", "--mount", "mnt", "/thin.vmdk"])
        .current_dir(d)
        .output();
    let o = o.unwrap();
    assert_ne!(o.status.code(), Some(0), "a volume is read-only: --writable is refused");
    assert!(!is_mounted(&d.join("mnt")));
}
