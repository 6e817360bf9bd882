//! Interrupting a clone: a signal stops it cleanly and leaves no destination; `kill -9` leaves no
//! destination either, and the next clone to the same name clears the dead process's leftovers.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// A 4 GiB raw image with a little data: cloning it to eagerzeroedthick writes every byte, which
/// takes long enough to interrupt.
fn big_source(dir: &Path) {
    let f = std::fs::File::create(dir.join("big.raw")).unwrap();
    f.set_len(4 << 30).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[7u8; 65536], 1 << 20).unwrap();
}

fn start_clone(dir: &Path) -> std::process::Child {
    vmkfs_cmd(dir, &["-i", "big.raw", "-d", "eagerzeroedthick", "out.vmdk"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for_temp(dir: &Path) -> bool {
    for _ in 0..200 {
        if names(dir).iter().any(|n| n.ends_with(".tmp")) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    big_source(d);
    let child = start_clone(d);
    assert!(wait_for_temp(d), "clone never started writing");
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: sending SIGTERM to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        eprintln!("clone finished before the signal arrived; nothing to check ({text})");
        return;
    }
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(text.contains("Failed to clone disk: interrupted."), "{text}");
    assert_eq!(names(d), vec!["big.raw".to_string()], "nothing but the source may remain");
}

#[test]
fn kill_9_leaves_no_destination_and_next_clone_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    big_source(d);
    let mut child = start_clone(d);
    assert!(wait_for_temp(d), "clone never started writing");
    std::thread::sleep(Duration::from_millis(100));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    if status.success() {
        eprintln!("clone finished before the kill; nothing to check");
        return;
    }
    assert!(!d.join("out.vmdk").exists() && !d.join("out-flat.vmdk").exists());
    assert!(names(d).iter().any(|n| n.ends_with(".tmp")), "the killed clone's temporary files are expected");
    // A new clone (small format this time) succeeds and removes the dead process's temporaries.
    ok(&vmkfs(d, &["-i", "big.raw", "-d", "thin", "out.vmdk"]));
    assert_eq!(names(d), vec!["big.raw", "out-flat.vmdk", "out.vmdk"]);
}

#[test]
fn sigterm_ends_an_export_blocked_on_a_pipe_nobody_reads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    big_source(d);
    let mut child = vmkfs_cmd(d, &["-e", "-", "big.raw", "-d", "raw"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // 4 GiB into a pipe of a few pages that is never read: the writer is soon blocked in write(2).
    let _unread = child.stdout.take();
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "the export ended with nobody reading its output");
    // SAFETY: sending SIGTERM to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(5) {
            child.kill().unwrap();
            panic!("vmkfs -e - still blocked 5 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(4), "the interrupted exit code: {err}");
    assert!(err.contains("interrupted"), "{err}");
}
