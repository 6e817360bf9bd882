//! `vmkfs --serve-nbd`: the NBD server read and written by real clients (qemu-img, qemu-io,
//! nbdinfo from Debian's qemu-utils and libnbd-bin), checked against vmkfs' own answers
//! (`--read-at` of the whole disk, `--map`, `--changed-blocks`), plus a small raw client of the
//! test's own for what the tools cannot do: malformed requests, and killing the server right after
//! an acknowledged flush.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vmkfs::nbd::proto::{self, cflags, errno, opt, rep, Command as Cmd, Request};

/// The clients a test needs, or a SKIP line naming the missing one.
fn have(tools: &[&str]) -> bool {
    for t in tools {
        if !have_tool(t) {
            skip(&format!("{t} not installed (Debian: qemu-utils, libnbd-bin)"));
            return false;
        }
    }
    true
}

/// A running `vmkfs --serve-nbd`.
struct Server {
    child: Child,
    uri: String,
    stopped: bool,
}

impl Server {
    /// Starts `vmkfs --serve-nbd SOCKET --json [EXTRA] DISK` in `dir` and waits for its
    /// `listening` line.
    fn start(dir: &Path, socket: &str, extra: &[&str], disk: &str) -> Server {
        let mut args = vec!["--serve-nbd", socket, "--json"];
        args.extend_from_slice(extra);
        args.push(disk);
        let mut child = vmkfs_cmd(dir, &args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("vmkfs --serve-nbd {socket} {disk}: no listening line ({e}): {line:?} {err}")
        });
        assert_eq!(v["event"], "listening", "{line}");
        Server { child, uri: v["uri"].as_str().unwrap().to_string(), stopped: false }
    }

    /// Sends `signal` and waits for the exit; returns the exit code (`None`: killed by it).
    fn stop_with(&mut self, signal: i32) -> Option<i32> {
        let pid = self.child.id() as i32;
        // Through kill(1): the test holds no unsafe code.
        let ok = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap();
        assert!(ok.success());
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                self.stopped = true;
                return s.code();
            }
            assert!(start.elapsed() < Duration::from_secs(30), "vmkfs --serve-nbd did not stop on signal {signal}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM; the server must exit 0.
    fn stop(&mut self) {
        let code = self.stop_with(15);
        let mut err = String::new();
        let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
        assert_eq!(code, Some(0), "vmkfs --serve-nbd ended badly: {err}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn sock_uri(dir: &Path, name: &str) -> String {
    format!("nbd+unix:///?socket={}", dir.join(name).display())
}

/// `nbdinfo --map[=CONTEXT] --json URI`: `(offset, length, type)` with neighbours of one type merged.
fn nbd_map(uri: &str, context: Option<&str>) -> Vec<(u64, u64, u64)> {
    let flag = match context {
        Some(c) => format!("--map={c}"),
        None => "--map".into(),
    };
    let o = tool("nbdinfo", Path::new("/"), &[&flag, "--json", uri]);
    assert!(o.success(), "{}", o.describe());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut out: Vec<(u64, u64, u64)> = Vec::new();
    for e in v.as_array().unwrap() {
        let (off, len, t) = (e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap(), e["type"].as_u64().unwrap());
        match out.last_mut() {
            Some(last) if last.2 == t && last.0 + last.1 == off => last.1 += len,
            _ => out.push((off, len, t)),
        }
    }
    out
}

/// The data ranges of `vmkfs --map --json DISK`, merged.
fn vmkfs_data_ranges(dir: &Path, disk: &str) -> Vec<(u64, u64)> {
    let v: serde_json::Value = serde_json::from_str(&vmkfs_ok(dir, &["--map", "--json", disk])).unwrap();
    merged(
        v.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["data"] == true)
            .map(|r| (r["start"].as_u64().unwrap(), r["length"].as_u64().unwrap())),
    )
}

fn merged(it: impl Iterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, l) in it {
        match out.last_mut() {
            Some(last) if last.0 + last.1 == s => last.1 += l,
            _ => out.push((s, l)),
        }
    }
    out
}

/// The ranges of an nbdinfo map whose type is `t`.
fn of_type(map: &[(u64, u64, u64)], t: u64) -> Vec<(u64, u64)> {
    merged(map.iter().filter(|e| e.2 == t).map(|e| (e.0, e.1)))
}

/// `qemu-img convert -O raw URI` of a served disk: its sha256 must be that of `vmkfs --read-at 0`.
fn check_convert(dir: &Path, uri: &str, disk: &str) {
    let out = dir.join("nbd-out.raw");
    let _ = std::fs::remove_file(&out);
    let o = qemu_img(dir, &["convert", "-O", "raw", uri, out.to_str().unwrap()]);
    assert!(o.success(), "{}", o.describe());
    let want = disk_digest(dir, disk, &[]).unwrap_or_else(|o| panic!("{}", o.describe()));
    assert_eq!(sha256_file(&out), want.sha256, "{disk}: qemu-img convert over NBD differs from vmkfs --read-at");
    std::fs::remove_file(&out).unwrap();
}

/// A three-link chain `NAME.vmdk` <- `NAME-000001.vmdk` <- `NAME-000002.vmdk` over a base of
/// `format`, with data written at every level (overlapping and not). Returns the links, base first.
fn three_links(dir: &Path, name: &str, format: &str) -> Vec<String> {
    let base = format!("{name}.vmdk");
    disk_with_data(dir, &base, format, 64 * MIB, 1);
    let mid = snapshot(dir, &base, false);
    write_pattern(dir, &mid, 2 * MIB, 512 * KIB as usize, 2);
    write_pattern(dir, &mid, 20 * MIB, 128 * KIB as usize, 3);
    let top = snapshot(dir, &mid, false);
    write_pattern(dir, &top, 2 * MIB + 256 * KIB, 512 * KIB as usize, 4);
    write_pattern(dir, &top, 40 * MIB + 4 * KIB, 8 * KIB as usize, 5);
    write_at(dir, &top, MIB, &vec![0u8; 64 * KIB as usize]);
    vec![base, mid, top]
}

#[test]
fn every_format_and_chains_read_over_nbd_as_vmkfs_reads_them() {
    if !have(&["qemu-img", "nbdinfo"]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let mut disks = Vec::new();
    for f in ["zeroedthick", "eagerzeroedthick", "thin", "monosparse", "2gbsparse", "monoflat", "2gbflat"] {
        let d = format!("{f}.vmdk");
        disk_with_data(dir, &d, f, 48 * MIB, 7);
        disks.push(d);
    }
    vmkfs_ok(dir, &["-i", "monosparse.vmdk", "-d", "streamoptimized", "stream.vmdk"]);
    disks.push("stream.vmdk".into());
    disks.push(three_links(dir, "hosted", "monosparse").pop().unwrap());
    disks.push(three_links(dir, "esx", "thin").pop().unwrap());
    for d in &disks {
        let mut s = Server::start(dir, "s.sock", &[], d);
        assert_eq!(s.uri, sock_uri(dir, "s.sock"));
        check_convert(dir, &s.uri, d);
        let data = of_type(&nbd_map(&s.uri, None), 0);
        assert_eq!(data, vmkfs_data_ranges(dir, d), "{d}: nbdinfo --map data ranges vs vmkfs --map");
        s.stop();
        assert!(!dir.join("s.sock").exists(), "the socket is removed at exit");
    }
}

#[test]
fn nbdcopy_reads_a_chain_over_several_connections() {
    if !have(&["nbdcopy"]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let top = three_links(dir, "vm", "thin").pop().unwrap();
    let mut s = Server::start(dir, "s.sock", &[], &top);
    let out = dir.join("copy.raw");
    let o = tool("nbdcopy", dir, &["--connections=4", "--requests=16", &s.uri, out.to_str().unwrap()]);
    assert!(o.success(), "{}", o.describe());
    assert_eq!(sha256_file(&out), disk_digest(dir, &top, &[]).unwrap().sha256);
    s.stop();
}

#[test]
fn dirty_bitmap_contexts_agree_with_changed_blocks() {
    if !have(&["nbdinfo"]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let links = three_links(dir, "vm", "monosparse");
    let top = &links[2];
    let mut s = Server::start(dir, "s.sock", &[], top);
    let o = tool("nbdinfo", dir, &["--list", "--content", "--json", &s.uri]);
    assert!(o.success(), "{}", o.describe());
    for l in &links {
        assert!(o.out().contains(&format!("qemu:dirty-bitmap:since-{l}")), "{l} is offered: {}", o.out());
    }
    for since in &links[..2] {
        let ctx = format!("qemu:dirty-bitmap:since-{since}");
        let dirty = of_type(&nbd_map(&s.uri, Some(&ctx)), 1);
        let v: serde_json::Value =
            serde_json::from_str(&vmkfs_ok(dir, &["--changed-blocks", "--since", since, "--json", top])).unwrap();
        let want = merged(
            v["ranges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| (r["start"].as_u64().unwrap(), r["length"].as_u64().unwrap())),
        );
        assert!(!want.is_empty());
        assert_eq!(dirty, want, "{ctx} vs vmkfs --changed-blocks --since {since}");
    }
    // Nothing changed above the top link itself.
    let ctx = format!("qemu:dirty-bitmap:since-{top}");
    assert!(of_type(&nbd_map(&s.uri, Some(&ctx)), 1).is_empty());
    s.stop();
}

#[test]
fn qemu_io_writes_land_in_the_top_link() {
    if !have(&["qemu-img", "qemu-io", "nbdinfo"]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let links = three_links(dir, "vm", "monosparse");
    let (base_before, mid_before) =
        (disk_digest(dir, &links[0], &[]).unwrap(), disk_digest(dir, &links[1], &[]).unwrap());
    // The expected content: the chain as it reads now, with the write applied.
    let mut want = read_at(dir, &links[2], 0, 64 * MIB);
    want[MIB as usize..(MIB + 64 * KIB) as usize].fill(0xab);
    std::fs::write(dir.join("want.raw"), &want).unwrap();

    let mut s = Server::start(dir, "s.sock", &["--writable"], &links[2]);
    let info = tool("nbdinfo", dir, &["--json", &s.uri]);
    assert!(
        info.out().contains("\"is_read_only\": false") && info.out().contains("\"can_multi_conn\": false"),
        "{}",
        info.out()
    );
    let o = tool("qemu-io", dir, &["-f", "raw", "-c", "write -P 0xab 1M 64k", &s.uri]);
    assert!(o.success() && o.out().contains("wrote 65536/65536"), "{}", o.describe());
    // The dirty bitmap of the live export shows the write.
    let dirty = of_type(&nbd_map(&s.uri, Some(&format!("qemu:dirty-bitmap:since-{}", links[1]))), 1);
    assert!(dirty.iter().any(|&(a, l)| a <= MIB && MIB + 64 * KIB <= a + l), "{dirty:?}");
    s.stop();

    let o = qemu_img(dir, &["compare", "-f", "vmdk", "-F", "raw", &links[2], "want.raw"]);
    assert!(o.success(), "qemu-img compare: {}", o.describe());
    assert_eq!(read_at(dir, &links[2], MIB, 64 * KIB), vec![0xab; 64 * KIB as usize]);
    // In the top link: depth 0 in the map, the links below unchanged.
    let v: serde_json::Value = serde_json::from_str(&vmkfs_ok(dir, &["--map", "--json", &links[2]])).unwrap();
    let run = v
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["start"].as_u64().unwrap() <= MIB && MIB < r["start"].as_u64().unwrap() + r["length"].as_u64().unwrap()
        })
        .unwrap();
    assert_eq!((run["data"].as_bool(), run["depth"].as_u64()), (Some(true), Some(0)), "{run}");
    assert_eq!(disk_digest(dir, &links[0], &[]).unwrap(), base_before);
    assert_eq!(disk_digest(dir, &links[1], &[]).unwrap(), mid_before);
    // Closed cleanly: no unclean-shutdown flag.
    assert!(!vmkfs_ok(dir, &["--info", &links[2]]).contains("not closed cleanly"));
}

#[test]
fn tcp_sockets_serve_and_writes_are_refused_read_only() {
    if !have(&["qemu-io", "nbdinfo"]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    disk_with_data(dir, "d.vmdk", "thin", 16 * MIB, 9);
    let mut s = Server::start(dir, "tcp:127.0.0.1:0", &[], "d.vmdk");
    assert!(s.uri.starts_with("nbd://127.0.0.1:"), "{}", s.uri);
    let info = tool("nbdinfo", dir, &["--json", &s.uri]);
    assert!(
        info.out().contains("\"is_read_only\": true") && info.out().contains("\"can_multi_conn\": true"),
        "{}",
        info.out()
    );
    let o = tool("qemu-io", dir, &["-f", "raw", "-c", "write -P 0xab 0 4k", &s.uri]);
    assert!(!o.out().contains("wrote"), "a read-only export took a write: {}", o.describe());
    s.stop();
    // A writable export holds the exclusive lock: a second writer is refused (exit 5).
    let mut w = Server::start(dir, "w.sock", &["--writable"], "d.vmdk");
    let o = vmkfs(dir, &["--write-at", "0", "d.vmdk"]);
    assert_eq!(o.code(), Some(5), "{}", o.describe());
    // A socket a server answers on is not taken over; a file that is not a socket is refused.
    create_disk(dir, "e.vmdk", "thin", MIB);
    let o = vmkfs(dir, &["--serve-nbd", "w.sock", "e.vmdk"]);
    assert!(o.code() == Some(2) && o.err().contains("another server"), "{}", o.describe());
    std::fs::write(dir.join("plain"), b"x").unwrap();
    let o = vmkfs(dir, &["--serve-nbd", "plain", "e.vmdk"]);
    assert!(o.code() == Some(2) && o.err().contains("not a socket"), "{}", o.describe());
    w.stop();
    // A stale socket (its server was killed) is replaced.
    let mut k = Server::start(dir, "k.sock", &[], "d.vmdk");
    assert_eq!(k.stop_with(9), None);
    assert!(dir.join("k.sock").exists());
    let mut again = Server::start(dir, "k.sock", &[], "d.vmdk");
    again.stop();
}

// ---------------------------------------------------------------------------------------------
// A raw client
// ---------------------------------------------------------------------------------------------

struct Raw {
    s: UnixStream,
    handle: u64,
}

impl Raw {
    /// Connects and negotiates structured replies and `NBD_OPT_GO` of the default export.
    fn connect(path: &Path) -> Raw {
        let mut s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut g = [0u8; 18];
        s.read_exact(&mut g).unwrap();
        assert_eq!(&g[..16], &proto::greeting(0)[..16]);
        s.write_all(&(proto::client::FIXED_NEWSTYLE | proto::client::NO_ZEROES).to_be_bytes()).unwrap();
        let mut r = Raw { s, handle: 0 };
        r.option(opt::STRUCTURED_REPLY, &[]);
        assert_eq!(r.option_reply().0, rep::ACK);
        let mut go = 0u32.to_be_bytes().to_vec();
        go.extend_from_slice(&0u16.to_be_bytes());
        r.option(opt::GO, &go);
        loop {
            let (kind, _) = r.option_reply();
            if kind == rep::ACK {
                break;
            }
            assert_eq!(kind, rep::INFO);
        }
        r
    }

    fn option(&mut self, option: u32, data: &[u8]) {
        let mut b = proto::IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.s.write_all(&b).unwrap();
    }

    fn option_reply(&mut self) -> (u32, Vec<u8>) {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).unwrap();
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut d = vec![0u8; len];
        self.s.read_exact(&mut d).unwrap();
        (u32::from_be_bytes(h[12..16].try_into().unwrap()), d)
    }

    fn send(&mut self, command: Cmd, flags: u16, offset: u64, length: u32, data: &[u8]) -> u64 {
        self.handle += 1;
        let r = Request { flags, command, handle: self.handle, offset, length };
        self.s.write_all(&r.encode()).unwrap();
        self.s.write_all(data).unwrap();
        self.handle
    }

    /// Reads one reply: `(handle, error)`; a structured chunk's payload is read and dropped.
    fn reply(&mut self) -> (u64, u32) {
        let mut m = [0u8; 4];
        self.s.read_exact(&mut m).unwrap();
        match u32::from_be_bytes(m) {
            proto::SIMPLE_REPLY_MAGIC => {
                let mut r = [0u8; 12];
                self.s.read_exact(&mut r).unwrap();
                (u64::from_be_bytes(r[4..12].try_into().unwrap()), u32::from_be_bytes(r[0..4].try_into().unwrap()))
            }
            proto::STRUCTURED_REPLY_MAGIC => {
                let mut r = [0u8; 16];
                self.s.read_exact(&mut r).unwrap();
                let kind = u16::from_be_bytes([r[2], r[3]]);
                let len = u32::from_be_bytes(r[12..16].try_into().unwrap()) as usize;
                let mut p = vec![0u8; len];
                self.s.read_exact(&mut p).unwrap();
                let handle = u64::from_be_bytes(r[4..12].try_into().unwrap());
                let e = if kind == proto::chunk::ERROR { u32::from_be_bytes(p[0..4].try_into().unwrap()) } else { 0 };
                (handle, e)
            }
            other => panic!("reply magic {other:#x}"),
        }
    }

    fn call(&mut self, command: Cmd, flags: u16, offset: u64, length: u32, data: &[u8]) -> u32 {
        let h = self.send(command, flags, offset, length, data);
        let (got, e) = self.reply();
        assert_eq!(got, h);
        e
    }

    /// Reads `length` bytes at `offset` (with command `flags`) and assembles the structured reply,
    /// checking that it is well formed: every chunk of this handle, each inside the range and none
    /// overlapping another, `DONE` on the last, the whole range covered. Returns the bytes and the
    /// numbers of `(OFFSET_DATA, OFFSET_HOLE)` chunks.
    fn read(&mut self, flags: u16, offset: u64, length: u32) -> (Vec<u8>, usize, usize) {
        let h = self.send(Cmd::Read, flags, offset, length, &[]);
        let end = offset + u64::from(length);
        let mut out = vec![0u8; length as usize];
        let (mut ranges, mut data, mut holes) = (Vec::new(), 0, 0);
        loop {
            let mut hd = [0u8; 20];
            self.s.read_exact(&mut hd).unwrap();
            assert_eq!(u32::from_be_bytes(hd[0..4].try_into().unwrap()), proto::STRUCTURED_REPLY_MAGIC);
            let flags = u16::from_be_bytes([hd[4], hd[5]]);
            let kind = u16::from_be_bytes([hd[6], hd[7]]);
            assert_eq!(u64::from_be_bytes(hd[8..16].try_into().unwrap()), h, "a chunk of another request");
            let mut p = vec![0u8; u32::from_be_bytes(hd[16..20].try_into().unwrap()) as usize];
            self.s.read_exact(&mut p).unwrap();
            let at = u64::from_be_bytes(p[0..8].try_into().unwrap());
            let len = match kind {
                proto::chunk::OFFSET_DATA => {
                    data += 1;
                    (p.len() - 8) as u64
                }
                proto::chunk::OFFSET_HOLE => {
                    holes += 1;
                    assert_eq!(p.len(), 12, "a hole chunk is an offset and a length");
                    u64::from(u32::from_be_bytes(p[8..12].try_into().unwrap()))
                }
                k => panic!("chunk type {k} in the reply to a read of {length} bytes at {offset}: {p:?}"),
            };
            assert!(
                len > 0 && at >= offset && at + len <= end,
                "chunk of {len} bytes at {at} outside [{offset}, {end})"
            );
            if kind == proto::chunk::OFFSET_DATA {
                out[(at - offset) as usize..(at - offset + len) as usize].copy_from_slice(&p[8..]);
            }
            ranges.push((at, len));
            if flags & proto::chunk::FLAG_DONE != 0 {
                break;
            }
        }
        ranges.sort();
        let mut pos = offset;
        for (at, len) in ranges {
            assert_eq!(at, pos, "chunks must cover [{offset}, {end}) once each");
            pos += len;
        }
        assert_eq!(pos, end, "chunks must cover [{offset}, {end})");
        (out, data, holes)
    }

    /// True when the server closed the connection.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

#[test]
fn reads_come_in_chunks_that_rebuild_every_format() {
    // Reads of odd sizes and offsets (and of the largest size) over formats whose data the server
    // sends from the file (flat, hosted sparse, COWD and seSparse chains) or reads first
    // (streamOptimized): the data and hole chunks assembled equal `vmkfs --read-at`.
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let mut disks = Vec::new();
    for f in ["monosparse", "2gbsparse", "thin", "monoflat"] {
        let d = format!("{f}.vmdk");
        disk_with_data(dir, &d, f, 48 * MIB, 9);
        disks.push((d, 48 * MIB));
    }
    vmkfs_ok(dir, &["-i", "monosparse.vmdk", "-d", "streamoptimized", "stream.vmdk"]);
    disks.push(("stream.vmdk".into(), 48 * MIB));
    disks.push((three_links(dir, "hosted", "monosparse").pop().unwrap(), 64 * MIB));
    disks.push((three_links(dir, "esx", "thin").pop().unwrap(), 64 * MIB));
    let legacy = {
        let base = "legacy.vmdk";
        disk_with_data(dir, base, "thin", 64 * MIB, 12);
        let top = snapshot(dir, base, true);
        write_pattern(dir, &top, 3 * MIB + 512, 4096 + 512, 13);
        top
    };
    disks.push((legacy, 64 * MIB));
    let (mut data, mut holes, mut most) = (0, 0, 0);
    for (d, cap) in &disks {
        let want = read_at(dir, d, 0, *cap);
        let mut s = Server::start(dir, "s.sock", &[], d);
        let mut c = Raw::connect(&dir.join("s.sock"));
        let step = 3 * MIB + 512;
        let mut requests: Vec<(u16, u64, u64)> =
            (0..*cap).step_by(step as usize).map(|o| (0, o, step.min(cap - o))).collect();
        requests.push((0, 0, 32 * MIB));
        requests.push((0, MIB - 512, 1024));
        requests.push((cflags::DF, MIB - 4096, 2 * MIB));
        for (flags, off, len) in requests {
            let (got, n_data, n_holes) = c.read(flags, off, len as u32);
            assert!(got == want[off as usize..(off + len) as usize], "{d}: {len} bytes at {off} differ from --read-at");
            if flags & cflags::DF != 0 {
                assert_eq!((n_data, n_holes), (1, 0), "{d}: DF asks for one data chunk");
            }
            data += n_data;
            holes += n_holes;
            most = most.max(n_data + n_holes);
        }
        drop(c);
        s.stop();
    }
    // Every disk has data and holes; a read over both comes as several chunks.
    assert!(data >= disks.len() && holes >= disks.len(), "{data} data chunks, {holes} hole chunks");
    assert!(most >= 3, "no reply had more than {most} chunks");
}

#[test]
fn malformed_requests_get_errors_and_the_server_keeps_serving() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    disk_with_data(dir, "d.vmdk", "monosparse", 16 * MIB, 3);
    let mut s = Server::start(dir, "s.sock", &[], "d.vmdk");
    let sock = dir.join("s.sock");
    let mut c = Raw::connect(&sock);
    assert_eq!(c.call(Cmd::Read, 0, 0, 64 << 20, &[]), errno::EOVERFLOW);
    assert_eq!(c.call(Cmd::Read, 0, 16 * MIB - 512, 1024, &[]), errno::EINVAL);
    assert_eq!(c.call(Cmd::Read, 0, u64::MAX - 10, 100, &[]), errno::EINVAL);
    assert_eq!(c.call(Cmd::Read, 0, 0, 0, &[]), errno::EINVAL);
    assert_eq!(c.call(Cmd::Write, 0, 0, 512, &[7u8; 512]), errno::EPERM);
    assert_eq!(c.call(Cmd::Trim, 0, 0, 512, &[]), errno::EPERM);
    assert_eq!(c.call(Cmd::Other(5), 0, 0, 512, &[]), errno::EINVAL);
    assert_eq!(c.call(Cmd::Read, 1 << 9, 0, 512, &[]), errno::EINVAL, "unknown command flags");
    assert_eq!(c.call(Cmd::BlockStatus, 0, 0, 512, &[]), errno::EINVAL, "no context negotiated");
    assert_eq!(c.call(Cmd::Read, cflags::DF, MIB, 4096, &[]), 0);
    assert_eq!(c.call(Cmd::Flush, 0, 0, 0, &[]), 0);
    assert_eq!(c.call(Cmd::Flush, 0, 4096, 0, &[]), errno::EINVAL, "a flush with a range");
    // A request with a bad magic ends the connection (a hard disconnect), not the server.
    c.s.write_all(&[0xde; 28]).unwrap();
    assert!(c.closed());
    // Garbage instead of an option, and an oversized option.
    let mut g = UnixStream::connect(&sock).unwrap();
    g.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut greeting = [0u8; 18];
    g.read_exact(&mut greeting).unwrap();
    g.write_all(&1u32.to_be_bytes()).unwrap();
    let mut raw = Raw { s: g, handle: 0 };
    raw.option(opt::GO, &[0xff; 3]);
    assert_eq!(raw.option_reply().0, rep::ERR_INVALID, "a truncated NBD_OPT_GO");
    raw.option(opt::SET_META_CONTEXT, &[0; 8]);
    assert_eq!(raw.option_reply().0, rep::ERR_INVALID, "meta contexts before structured replies");
    let mut unknown = 4u32.to_be_bytes().to_vec();
    unknown.extend_from_slice(b"nope");
    unknown.extend_from_slice(&0u16.to_be_bytes());
    raw.option(opt::GO, &unknown);
    assert_eq!(raw.option_reply().0, rep::ERR_UNKNOWN, "an export of another name");
    raw.option(77, &[]);
    assert_eq!(raw.option_reply().0, rep::ERR_UNSUP);
    raw.option(opt::LIST, &vec![0u8; 100 << 10]);
    assert_eq!(raw.option_reply().0, rep::ERR_TOO_BIG);
    raw.s.write_all(b"NOTIHAVEOPT.....").unwrap();
    assert!(raw.closed());
    // Unknown client flags end the handshake.
    let mut f = UnixStream::connect(&sock).unwrap();
    f.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    f.read_exact(&mut greeting).unwrap();
    f.write_all(&0x80u32.to_be_bytes()).unwrap();
    assert!(Raw { s: f, handle: 0 }.closed());
    // Still serving.
    let mut c = Raw::connect(&sock);
    assert_eq!(c.call(Cmd::Read, 0, 0, 4096, &[]), 0);
    drop(c);
    s.stop();
}

#[test]
fn writes_acknowledged_before_a_flush_survive_a_kill() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    for format in ["monosparse", "thin"] {
        let base = format!("{format}.vmdk");
        disk_with_data(dir, &base, format, 64 * MIB, 11);
        let top = snapshot(dir, &base, false);
        let mut s = Server::start(dir, "s.sock", &["--writable"], &top);
        let mut c = Raw::connect(&dir.join("s.sock"));
        let mut expect = Vec::new();
        for i in 0..24u64 {
            // Scattered, some unaligned to grains, each a new grain or a rewrite of one.
            let off = (i * 2 * MIB + i * 4096) % (60 * MIB);
            let data = pattern(off, 20 * KIB as usize + (i as usize % 3) * 4096, 100 + i);
            assert_eq!(c.call(Cmd::Write, 0, off, data.len() as u32, &data), 0);
            expect.push((off, data));
        }
        assert_eq!(c.call(Cmd::Flush, 0, 0, 0, &[]), 0);
        // More writes in flight (not flushed) while the server is killed.
        let mut more = Raw::connect(&dir.join("s.sock"));
        for i in 0..64u64 {
            let off = 62 * MIB + (i % 16) * 64 * KIB;
            let d = pattern(off, 64 * KIB as usize, 900 + i);
            more.send(Cmd::Write, 0, off, d.len() as u32, &d);
        }
        assert_eq!(s.stop_with(9), None, "killed");
        drop((c, more));
        for (off, data) in &expect {
            assert_eq!(&read_at(dir, &top, *off, data.len() as u64), data, "{format}: flushed write at {off} lost");
        }
        // What the kill leaves is what a writer's death leaves: the unclean-shutdown flag and, in a
        // COWD log (which records its free sector at close), a stale free sector. Grain tables and
        // pointers agree with the data.
        let o = vmkfs(dir, &["-x", "check", "--json", &top]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", o.describe()));
        for f in v["findings"].as_array().unwrap() {
            let p = f["problem"].as_str().unwrap();
            assert!(p.contains("unclean-shutdown") || p.contains("free sector"), "{format}: after the kill: {f}");
        }
        // The next writable open heals both: serve again, write new grains, stop cleanly.
        let mut s = Server::start(dir, "s.sock", &["--writable"], &top);
        let mut c = Raw::connect(&dir.join("s.sock"));
        let off = 50 * MIB + 4096;
        let data = pattern(off, 192 * KIB as usize, 77);
        assert_eq!(c.call(Cmd::Write, cflags::FUA, off, data.len() as u32, &data), 0);
        expect.push((off, data));
        drop(c);
        s.stop();
        let o = vmkfs(dir, &["-x", "check", &top]);
        assert!(o.success(), "{format}: after serving again: {}", o.describe());
        for (off, data) in &expect {
            assert_eq!(&read_at(dir, &top, *off, data.len() as u64), data, "{format}: write at {off} lost");
        }
    }
}

#[test]
fn sigint_during_writes_flushes_and_closes_cleanly() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    disk_with_data(dir, "d.vmdk", "monosparse", 32 * MIB, 5);
    let mut s = Server::start(dir, "s.sock", &["--writable"], "d.vmdk");
    let mut c = Raw::connect(&dir.join("s.sock"));
    let mut acked = Vec::new();
    for i in 0..16u64 {
        let off = i * MIB + 512;
        let d = pattern(off, 8 * KIB as usize, 40 + i);
        assert_eq!(c.call(Cmd::Write, 0, off, d.len() as u32, &d), 0);
        acked.push((off, d));
    }
    assert_eq!(s.stop_with(2), Some(0), "SIGINT ends the server cleanly while a client is connected");
    assert!(c.closed());
    for (off, d) in &acked {
        assert_eq!(&read_at(dir, "d.vmdk", *off, d.len() as u64), d);
    }
    assert!(!vmkfs_ok(dir, &["--info", "d.vmdk"]).contains("not closed cleanly"));
    assert!(!dir.join("s.sock").exists());
}
