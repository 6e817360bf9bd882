//! The C ABI from C: `tests/c/test.c` is compiled with gcc against `include/vmkfs.h` and
//! `libvmkfs.so` and run (under valgrind with `--leak-check=full --error-exitcode=1` where
//! valgrind is installed: no leak, no invalid access); then the clone it made is compared with the
//! disk it committed, by qemu-img. The Python ctypes example runs on the same library.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/<profile>`, from this test's path (`target/<profile>/deps/c_abi-HASH`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps").to_path_buf()
}

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

fn skip(what: &str) {
    println!("SKIP: {what}");
    eprintln!("SKIP: {what}");
}

/// Builds the cdylib (cargo builds it for no test target, as it is no Rust library; a no-op when
/// it is up to date) and returns the folder holding `libvmkfs.so`.
fn library_dir() -> PathBuf {
    let dir = profile_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "vmkfs-capi", "--lib"]);
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let st = cmd.current_dir(env!("CARGO_MANIFEST_DIR")).status().expect("run cargo build -p vmkfs-capi");
    assert!(st.success(), "cargo build -p vmkfs-capi failed");
    assert!(dir.join("libvmkfs.so").exists(), "no libvmkfs.so in {}", dir.display());
    dir
}

/// Compiles `tests/c/test.c` into `out` with gcc, warnings as errors.
fn compile_c_test(lib: &Path, out: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = Command::new("gcc")
        .args(["-std=c11", "-D_DEFAULT_SOURCE", "-Wall", "-Wextra", "-Werror", "-g", "-pthread"])
        .arg("-I")
        .arg(src.join("include"))
        .arg(src.join("tests/c/test.c"))
        .arg("-L")
        .arg(lib)
        .arg("-lvmkfs")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(out)
        .output()
        .expect("run gcc");
    assert!(o.status.success(), "gcc failed:\n{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn c_program_clones_with_progress_and_reads_changed_blocks() {
    if !have("gcc") {
        return skip("gcc missing: the C ABI test program is not built");
    }
    let lib = library_dir();
    let t = tempfile::tempdir().unwrap();
    let exe = t.path().join("test");
    compile_c_test(&lib, &exe);
    let work = t.path().join("disks");
    std::fs::create_dir(&work).unwrap();
    let mut cmd = if have("valgrind") {
        let mut c = Command::new("valgrind");
        c.args(["--error-exitcode=1", "--leak-check=full", "--errors-for-leak-kinds=definite,possible", "-q"]);
        c.arg(format!("--suppressions={}/tests/c/valgrind.supp", env!("CARGO_MANIFEST_DIR")));
        c.arg(&exe);
        c
    } else {
        skip("valgrind missing: the C test runs without it");
        Command::new(&exe)
    };
    let o = cmd.arg(&work).output().expect("run the C test");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "C test failed ({:?}):\n{stdout}\n{stderr}", o.status);
    assert!(stdout.contains("ok clone with") && stdout.ends_with("ok all 0\n"), "{stdout}");
    assert!(stdout.contains("changed 5242880 65536\nchanged 12582912 65536\n"), "{stdout}");
    if have("qemu-img") {
        let q =
            Command::new("qemu-img").arg("compare").arg(work.join("clone.vmdk")).arg(work.join("base.vmdk")).output();
        let q = q.expect("run qemu-img");
        assert!(q.status.success(), "qemu-img compare: {}", String::from_utf8_lossy(&q.stdout));
    } else {
        skip("qemu-img missing: the clone is not compared with it");
    }
}

#[test]
fn python_ctypes_example_reads_and_clones() {
    if !have("python3") {
        return skip("python3 missing: the ctypes example is not run");
    }
    let lib = library_dir();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let base = d.join("py.vmdk");
    vmkfs_rs::create(&base, vmkfs_rs::DiskFormat::MonoSparse, 8 << 20).unwrap();
    let w = vmkfs_rs::Disk::open_writable(&base).unwrap();
    w.write_at(&[0x11; 512], 0).unwrap();
    w.write_at(&[0x22; 65536], 2 << 20).unwrap();
    w.close().unwrap();
    let top = vmkfs_rs::snapshot(&base).unwrap();
    let w = vmkfs_rs::Disk::open_writable(&top).unwrap();
    w.write_at(&[0x33; 4096], 6 << 20).unwrap();
    w.close().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vmkfs_ctypes.py");
    let dst = d.join("copy.vmdk");
    let o = Command::new("python3")
        .arg(&example)
        .arg(lib.join("libvmkfs.so"))
        .arg(&top)
        .arg(&base)
        .arg("--clone")
        .arg(&dst)
        .arg("2gbsparse")
        .output()
        .expect("run python3");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    let disk = vmkfs_rs::Disk::open(&top).unwrap();
    let want_info = format!("info capacity={} allocated=196608 links=2 cid={:08x}", 8 << 20, disk.cid());
    assert!(out.contains(&want_info), "{out}");
    assert!(out.contains("allocated 0 65536\nallocated 2097152 65536\nallocated 6291456 65536\n"), "{out}");
    assert!(out.contains("changed 6291456 65536\n") && !out.contains("changed 0 "), "{out}");
    let mut sector = [0u8; 512];
    disk.read_at(&mut sector, 0).unwrap();
    assert!(sector.iter().all(|b| *b == 0x11));
    let last = out.lines().rfind(|l| l.starts_with("progress ")).expect("progress lines");
    let nums: Vec<u64> = last.split(' ').skip(1).map(|n| n.parse().unwrap()).collect();
    assert!(nums[0] == nums[1] && nums[1] >= 3 * 65536, "{out}");
    assert!(out.contains(&format!("cloned {}", dst.display())), "{out}");
    drop(disk);
    if have("qemu-img") {
        let q = Command::new("qemu-img").arg("compare").arg(&dst).arg(&top).output().expect("run qemu-img");
        assert!(q.status.success(), "qemu-img compare: {}", String::from_utf8_lossy(&q.stdout));
    } else {
        skip("qemu-img missing: the clone is not compared with it");
    }
}
