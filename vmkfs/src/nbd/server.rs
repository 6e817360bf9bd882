//! The NBD server: the listener, one thread per connection, and the export over a chain.
//!
//! A connection goes through the fixed-newstyle handshake (options answered one by one, errors as
//! option error replies) and then serves requests in order, one at a time, each answered before
//! the next is read; several connections run in parallel over the one open chain (a link is
//! `Sync`). A structured `READ` reply comes in pieces: holes as `OFFSET_HOLE` chunks, data stored
//! as is in a host file sent from the file to the socket inside the kernel (`sendfile`: no copy
//! through the server), the rest read into the buffer. Memory per connection is one buffer of at
//! most [`MAX_REQUEST`] bytes, one read plan (a piece per 4 KiB of the request at most) and one
//! block-status reply of at most [`MAX_EXTENTS`] extents. Sockets are read with a short timeout so
//! that a cancellation flag set by a signal handler is seen between requests; the request in hand
//! is finished and answered first.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redo::changemap::DEFAULT_BLOCK;
use redo::{Chain, ChangeMap};
use vmdk::{OpenOptions, State};

use super::proto::{self, cflags, errno, opt, rep, tflags, Command, ProtoError, Request};
use crate::error::{Error, Result};

/// Longest `READ` or `WRITE` served (also the maximum block size advertised); longer requests are
/// refused with `EOVERFLOW` (reads) or `EINVAL` (writes, whose data is read and dropped).
pub const MAX_REQUEST: u32 = 32 << 20;
/// Most extents in one block-status chunk; a longer answer is cut (the client asks again from
/// where it ends, as the protocol allows).
pub const MAX_EXTENTS: usize = 16384;
/// The preferred block size advertised.
const PREFERRED_BLOCK: u32 = 4096;
/// The socket send buffer asked for: a few 256 KiB replies (nbdcopy's request size) queue
/// without waiting for the client to take each.
const SEND_BUFFER: usize = 2 << 20;
/// How often a waiting read, and the listener waiting for a client, look at the cancellation flag.
const POLL: Duration = Duration::from_millis(100);
/// How long a reply may wait for the client to take any of it before the connection is dropped.
const WRITE_STALL: Duration = Duration::from_secs(30);
/// How long a client may stall in the middle of a message once shutdown has begun.
const STALL_AFTER_CANCEL: u32 = 50;
/// The `base:allocation` context.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// The prefix of the changed-blocks contexts: `qemu:dirty-bitmap:since-LINK`.
pub const SINCE_PREFIX: &str = "qemu:dirty-bitmap:since-";

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP address (`tcp:127.0.0.1:PORT`, `tcp:[::1]:PORT`).
    Tcp(SocketAddr),
}

impl Address {
    /// Parses `tcp:HOST:PORT` (an IP address: `127.0.0.1:10809`, `[::1]:10809`) or a Unix socket
    /// path (anything else).
    pub fn parse(s: &str) -> Result<Address> {
        match s.strip_prefix("tcp:") {
            Some(a) => a.parse().map(Address::Tcp).map_err(|_| {
                Error::Usage(format!("{s:?}: expected tcp:IP:PORT, as tcp:127.0.0.1:10809 or tcp:[::1]:10809"))
            }),
            None if s.is_empty() => Err(Error::Usage("empty NBD socket path".into())),
            None => Ok(Address::Unix(PathBuf::from(s))),
        }
    }

    /// The NBD URI of the default export at this address (`nbd+unix:///?socket=S`, with `S`
    /// absolute and percent-encoded; `nbd://H:P`).
    pub fn uri(&self) -> String {
        match self {
            Address::Unix(p) => {
                let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone());
                format!("nbd+unix:///?socket={}", percent_encode(abs.as_os_str().as_encoded_bytes()))
            }
            Address::Tcp(a) => format!("nbd://{a}"),
        }
    }
}

/// `b` with every byte but unreserved URI characters and `/` as `%XX`.
fn percent_encode(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for &c in b {
        if c.is_ascii_alphanumeric() || b"-._~/".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// A bound listening socket. A Unix socket's file is removed when it is dropped.
#[derive(Debug)]
pub struct Listener {
    inner: ListenerKind,
    address: Address,
}

#[derive(Debug)]
enum ListenerKind {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    /// Binds `address`. A Unix socket path that exists is refused unless it is a socket no server
    /// answers on (a stale one, which is replaced); a TCP port `0` picks a free port (see
    /// [`Listener::address`]).
    pub fn bind(address: &Address) -> Result<Listener> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        let (inner, address) = match address {
            Address::Unix(p) => {
                if let Ok(m) = std::fs::symlink_metadata(p) {
                    if !m.file_type().is_socket() {
                        return Err(Error::Usage(format!("{}: exists and is not a socket", p.display())));
                    }
                    if UnixStream::connect(p).is_ok() {
                        return Err(Error::Usage(format!("{}: another server is listening there", p.display())));
                    }
                    std::fs::remove_file(p).map_err(io_err(p))?;
                }
                (ListenerKind::Unix(UnixListener::bind(p).map_err(io_err(p))?), address.clone())
            }
            Address::Tcp(a) => {
                let name = PathBuf::from(format!("tcp:{a}"));
                let l = TcpListener::bind(a).map_err(io_err(&name))?;
                let local = l.local_addr().map_err(io_err(&name))?;
                (ListenerKind::Tcp(l), Address::Tcp(local))
            }
        };
        match &inner {
            ListenerKind::Unix(l) => l.set_nonblocking(true),
            ListenerKind::Tcp(l) => l.set_nonblocking(true),
        }
        .map_err(|source| Error::Io { path: "<nbd listener>".into(), source })?;
        Ok(Listener { inner, address })
    }

    /// The address bound (for TCP, with the port chosen).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Waits up to `timeout` for a connection to accept.
    fn wait(&self, timeout: Duration) -> io::Result<bool> {
        use std::os::fd::AsFd;
        match &self.inner {
            ListenerKind::Unix(l) => rdm::device::wait_readable(l.as_fd(), timeout),
            ListenerKind::Tcp(l) => rdm::device::wait_readable(l.as_fd(), timeout),
        }
    }

    fn accept(&self) -> io::Result<Conn> {
        let c = match &self.inner {
            ListenerKind::Unix(l) => Conn::Unix(l.accept()?.0),
            ListenerKind::Tcp(l) => {
                let s = l.accept()?.0;
                s.set_nodelay(true)?;
                Conn::Tcp(s)
            }
        };
        c.setup()?;
        Ok(c)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Address::Unix(p) = &self.address {
            if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// One client connection.
enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    /// Blocking I/O with timeouts: reads wake up every [`POLL`] to look at the cancellation flag;
    /// a client that takes no reply bytes for [`WRITE_STALL`] is dropped.
    fn setup(&self) -> io::Result<()> {
        self.set_nonblocking(false)?;
        self.set_read_timeout(Some(POLL))?;
        // Only a request: the kernel caps it (net.core.wmem_max), and the default works too.
        let _ = rdm::device::set_send_buffer(self.fd(), SEND_BUFFER);
        match self {
            Conn::Unix(s) => s.set_write_timeout(Some(WRITE_STALL)),
            Conn::Tcp(s) => s.set_write_timeout(Some(WRITE_STALL)),
        }
    }
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Conn::Unix(s) => s.as_fd(),
            Conn::Tcp(s) => s.as_fd(),
        }
    }
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_nonblocking(on),
            Conn::Tcp(s) => s.set_nonblocking(on),
        }
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_read_timeout(t),
            Conn::Tcp(s) => s.set_read_timeout(t),
        }
    }
}

impl Conn {
    /// Sends `len` bytes of `dev` at `at` to the client without copying them through user space.
    fn send_file(&self, dev: &rdm::Device, at: u64, len: u64) -> io::Result<()> {
        if dev.send_to(self.fd(), at, len)? < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: ends before {len} bytes at {at}", dev.path().display()),
            ));
        }
        Ok(())
    }
}

impl Read for Conn {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(b),
            Conn::Tcp(s) => s.read(b),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(b),
            Conn::Tcp(s) => s.write(b),
        }
    }
    fn write_vectored(&mut self, b: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write_vectored(b),
            Conn::Tcp(s) => s.write_vectored(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.flush(),
            Conn::Tcp(s) => s.flush(),
        }
    }
}

/// What a metadata context reports.
#[derive(Debug)]
enum ContextKind {
    /// `base:allocation`: holes and known zeros from the chain's allocation map.
    Allocation,
    /// The blocks changed above link `stop` (its index in the chain, top first): the union of the
    /// change maps of the links above it. The links below the top do not change while the export
    /// is open, so their union is built once, when first asked for.
    Since { stop: usize, below: Mutex<Option<Arc<ChangeMap>>> },
}

#[derive(Debug)]
struct Context {
    name: String,
    kind: ContextKind,
}

/// A disk or chain opened for serving.
#[derive(Debug)]
pub struct Export {
    chain: Chain,
    name: String,
    writable: bool,
    contexts: Vec<Context>,
}

impl Export {
    /// Opens the chain at `path` (its top link for writing when `writable`, under the lock
    /// protocol; every link below read-only with shared locks). The export is named after the
    /// disk's file name; the empty (default) name selects it too.
    pub fn open(path: &Path, opts: &OpenOptions, writable: bool) -> Result<Export> {
        let chain = Chain::open(path, &OpenOptions { write: writable, ..opts.clone() })?;
        let file_name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut contexts = vec![Context { name: BASE_ALLOCATION.into(), kind: ContextKind::Allocation }];
        for (stop, l) in chain.links().iter().enumerate() {
            contexts.push(Context {
                name: format!("{SINCE_PREFIX}{}", file_name(l.path())),
                kind: ContextKind::Since { stop, below: Mutex::new(None) },
            });
        }
        Ok(Export { name: file_name(path), chain, writable, contexts })
    }

    /// The export's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The chain served.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// The names of the metadata contexts offered: `base:allocation`, then one
    /// `qemu:dirty-bitmap:since-LINK` per link of the chain (top first).
    pub fn context_names(&self) -> Vec<&str> {
        self.contexts.iter().map(|c| c.name.as_str()).collect()
    }

    /// Flushes the top link (when writable) and closes the chain, clearing unclean-shutdown flags.
    pub fn close(self) -> Result<()> {
        Ok(self.chain.close()?)
    }

    fn has_name(&self, name: &str) -> bool {
        name.is_empty() || name == self.name
    }

    fn transmission_flags(&self, structured: bool) -> u16 {
        let mut f = tflags::HAS_FLAGS | tflags::SEND_FLUSH | tflags::SEND_FUA;
        if structured {
            f |= tflags::SEND_DF;
        }
        if self.writable {
            f |= tflags::SEND_TRIM | tflags::SEND_WRITE_ZEROES;
        } else {
            // Nothing changes, so every connection sees the same bytes.
            f |= tflags::READ_ONLY | tflags::CAN_MULTI_CONN;
        }
        f
    }

    /// The IDs (index + 1) of the contexts the queries select: an exact name, or a namespace prefix
    /// ending in `:` (`base:`, `qemu:`, `qemu:dirty-bitmap:`). No queries list every context, and
    /// select none.
    fn matching(&self, queries: &[String], list: bool) -> Vec<u32> {
        let hit = |name: &str| {
            (list && queries.is_empty())
                || queries.iter().any(|q| name == q || (q.ends_with(':') && name.starts_with(q.as_str())))
        };
        self.contexts.iter().enumerate().filter(|(_, c)| hit(&c.name)).map(|(i, _)| i as u32 + 1).collect()
    }

    fn context(&self, id: u32) -> Option<&Context> {
        id.checked_sub(1).and_then(|i| self.contexts.get(i as usize))
    }

    /// The `(length, flags)` extents of context `ctx` over `[offset, end)`, at most `max` of them
    /// (they cover a prefix of the range).
    fn extents(&self, ctx: &Context, offset: u64, end: u64, max: usize) -> Result<Vec<(u32, u32)>> {
        let mut out = Extents { v: Vec::new(), max, pos: offset };
        match &ctx.kind {
            ContextKind::Allocation => {
                for r in vmdk::map::runs(&self.chain, offset, end) {
                    let r = r?;
                    let flags = if r.state == State::Data { 0 } else { proto::state::HOLE | proto::state::ZERO };
                    if !out.push(r.end(), flags) {
                        break;
                    }
                }
            }
            ContextKind::Since { stop, below } => {
                let changes = self.changes_in(*stop, below, offset, end)?;
                let complete =
                    changes.ranges_in(offset, end).all(|(s, l)| out.push(s, 0) && out.push(s + l, proto::state::DIRTY));
                if complete {
                    out.push(end, 0);
                }
            }
        }
        Ok(out.v)
    }

    /// The change map above link `stop`, complete over `[offset, end)` rounded out to blocks: the
    /// links below the top from the cached union, the top link (which may be written while the
    /// export is open) from its map over the range.
    fn changes_in(
        &self,
        stop: usize,
        below: &Mutex<Option<Arc<ChangeMap>>>,
        offset: u64,
        end: u64,
    ) -> Result<ChangeMap> {
        let links = self.chain.links();
        let cap = self.chain.capacity();
        let below = {
            let mut g = below.lock().unwrap_or_else(|p| p.into_inner());
            match &*g {
                Some(m) => m.clone(),
                None => {
                    let m = Arc::new(crate::redo_ops::union_of_links(&links[1.min(stop)..stop], cap, DEFAULT_BLOCK)?);
                    *g = Some(m.clone());
                    m
                }
            }
        };
        let (a, b) = (
            offset / DEFAULT_BLOCK * DEFAULT_BLOCK,
            end.div_ceil(DEFAULT_BLOCK).saturating_mul(DEFAULT_BLOCK).min(cap),
        );
        let mut m = ChangeMap::new(cap, DEFAULT_BLOCK)?;
        for (s, l) in below.ranges_in(a, b) {
            m.mark(s, l);
        }
        if stop > 0 {
            for r in vmdk::map::runs(&**self.chain.top(), a, b) {
                let r = r?;
                if r.state != State::Absent {
                    m.mark(r.offset, r.len);
                }
            }
        }
        Ok(m)
    }
}

/// Extents being collected: coalesced by flags, at most `max`.
struct Extents {
    v: Vec<(u32, u32)>,
    max: usize,
    pos: u64,
}

impl Extents {
    /// Extends the extents to `to` with `flags`; false once `max` extents are complete.
    fn push(&mut self, to: u64, flags: u32) -> bool {
        if to <= self.pos {
            return true;
        }
        let len = (to - self.pos) as u32; // ranges are within one request: under 4 GiB
        let full = self.v.len() >= self.max;
        match self.v.last_mut() {
            Some(last) if last.1 == flags => last.0 += len,
            _ if full => return false,
            _ => self.v.push((len, flags)),
        }
        self.pos = to;
        true
    }
}

/// Shortest stored run sent from its file on its own (with its own chunk and system call);
/// shorter ones are read with their neighbours.
const MIN_SEND: u64 = 16 << 10;
/// Shortest hole sent as an `OFFSET_HOLE` chunk; shorter ones are read (as zeros) with their
/// neighbours.
const MIN_HOLE: u64 = 4 << 10;

/// How the bytes of one chunk of a read reply are sent.
#[derive(Debug, Clone, Copy)]
enum How<'a> {
    /// From the file `dev` at `at`, in the kernel (`sendfile`).
    File { dev: &'a rdm::Device, at: u64 },
    /// Zeros: an `OFFSET_HOLE` chunk.
    Hole,
    /// Read through the chain and sent from the buffer.
    Read,
}

/// One chunk of a read reply (a piece of its plan): `len` bytes at `offset` of the disk.
#[derive(Debug, Clone, Copy)]
struct ReplyChunk<'a> {
    offset: u64,
    len: u64,
    how: How<'a>,
}

/// The pieces of a read of `[offset, offset+len)` of `chain`, in order, into `plan` (empty): runs
/// that no link holds or that read as zeros are holes, a link's data stored as is in a host file
/// (flat extents, uncompressed sparse and COWD grains) is sent from that file, one piece per
/// stretch contiguous in it, and the rest (compressed grains, other kinds, pieces too short to be
/// worth their own chunk) is read. A request is at most [`MAX_REQUEST`] bytes and every piece but
/// a read one at least [`MIN_HOLE`], so the plan stays small.
fn plan_read<'a>(chain: &'a Chain, offset: u64, len: u64, plan: &mut Vec<ReplyChunk<'a>>) -> vmdk::Result<()> {
    let links = chain.links();
    for r in vmdk::map::runs(chain, offset, offset + len) {
        let r = r?;
        let link = match (r.state, links.get(r.depth as usize)) {
            (State::Data, Some(l)) => l,
            // The read says what is wrong with such a run.
            (State::Data, None) => {
                push_chunk(plan, ReplyChunk { offset: r.offset, len: r.len, how: How::Read });
                continue;
            }
            _ => {
                push_chunk(plan, ReplyChunk { offset: r.offset, len: r.len, how: How::Hole });
                continue;
            }
        };
        let mut pos = r.offset;
        while pos < r.end() {
            let (n, how) = match link.locate_own(pos, r.end() - pos)? {
                Some((file, at, n)) => match file.device() {
                    Some(dev) => (n, How::File { dev, at }),
                    None => (n, How::Read),
                },
                None => (r.end() - pos, How::Read),
            };
            push_chunk(plan, ReplyChunk { offset: pos, len: n, how });
            pos += n;
        }
    }
    Ok(())
}

/// Appends `p` to `plan`, joining it to the last piece where they continue each other (the same
/// file, contiguous; two reads; two holes) and reading pieces too short to go on their own.
fn push_chunk<'a>(plan: &mut Vec<ReplyChunk<'a>>, mut p: ReplyChunk<'a>) {
    match p.how {
        How::File { .. } if p.len < MIN_SEND => p.how = How::Read,
        How::Hole if p.len < MIN_HOLE => p.how = How::Read,
        _ => {}
    }
    if let Some(last) = plan.last_mut() {
        let joins = match (last.how, p.how) {
            (How::File { dev: a, at: x }, How::File { dev: b, at: y }) => std::ptr::eq(a, b) && x + last.len == y,
            (How::Read, How::Read) | (How::Hole, How::Hole) => true,
            _ => false,
        };
        if joins {
            last.len += p.len;
            return;
        }
    }
    plan.push(p);
}

/// How to serve.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServeOptions<'a> {
    /// Set (by a signal handler) to stop: no new connections, each connection ends after the
    /// request in hand, and the export is flushed.
    pub cancel: Option<&'a AtomicBool>,
    /// Most connections served at once (0: 16); more are closed at once.
    pub max_connections: usize,
    /// Stop after this many connections have ended (0: never; for tests and one-shot exports).
    pub connections_limit: u64,
}

/// What a [`serve`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeReport {
    /// Connections accepted.
    pub connections: u64,
    /// Requests answered.
    pub requests: u64,
    /// Connections ended because the client broke the protocol (a bad magic, bad flags, a
    /// truncated message) or the socket failed.
    pub broken: u64,
    /// Why the last of those connections ended.
    pub last_broken: Option<String>,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    ended: AtomicU64,
    requests: AtomicU64,
    broken: AtomicU64,
    last_broken: Mutex<Option<String>>,
}

impl Counters {
    /// Runs one connection to its end, counting it.
    fn session(&self, conn: Conn, export: &Export, cancelled: &impl Fn() -> bool) {
        let mut s = Session::new(conn, export, cancelled);
        let r = s.run();
        self.requests.fetch_add(s.requests, Ordering::Relaxed);
        if let Err(e) = r {
            self.broken.fetch_add(1, Ordering::Relaxed);
            *self.last_broken.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        }
        self.ended.fetch_add(1, Ordering::Relaxed);
    }

    fn report(self) -> ServeReport {
        ServeReport {
            connections: self.connections.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            broken: self.broken.load(Ordering::Relaxed),
            last_broken: self.last_broken.into_inner().unwrap_or_else(|p| p.into_inner()),
        }
    }
}

/// Serves one client already connected on `stream` (a socket handed over by a supervisor, one end
/// of a socket pair) until it disconnects or `cancel` is set. The export is not flushed at the end
/// (a client's `FLUSH` is; [`Export::close`] flushes the rest).
pub fn serve_stream(stream: UnixStream, export: &Export, cancel: Option<&AtomicBool>) -> Result<ServeReport> {
    let conn = Conn::Unix(stream);
    conn.setup().map_err(|source| Error::Io { path: "<nbd connection>".into(), source })?;
    let cancelled = || cancel.is_some_and(|c| c.load(Ordering::Relaxed));
    let n = Counters::default();
    n.connections.store(1, Ordering::Relaxed);
    n.session(conn, export, &cancelled);
    Ok(n.report())
}

/// Serves `export` on `listener` until `opts.cancel` is set (or the connection limit is reached),
/// then waits for every connection to finish its request and flushes the export.
pub fn serve(listener: &Listener, export: &Export, opts: &ServeOptions) -> Result<ServeReport> {
    let stop = AtomicBool::new(false);
    let cancelled = || stop.load(Ordering::Relaxed) || opts.cancel.is_some_and(|c| c.load(Ordering::Relaxed));
    let max = if opts.max_connections == 0 { 16 } else { opts.max_connections };
    let n = Counters::default();
    std::thread::scope(|scope| {
        let mut running: Vec<std::thread::ScopedJoinHandle<'_, ()>> = Vec::new();
        while !cancelled() {
            running.retain(|h| !h.is_finished());
            if opts.connections_limit > 0 && n.ended.load(Ordering::Relaxed) >= opts.connections_limit {
                break;
            }
            match listener.accept() {
                Ok(conn) if running.len() < max => {
                    n.connections.fetch_add(1, Ordering::Relaxed);
                    let (n, cancelled) = (&n, &cancelled);
                    running.push(scope.spawn(move || n.session(conn, export, cancelled)));
                }
                Ok(conn) => drop(conn),
                // Nothing waiting: sleep in poll until a client connects (accepted at once, with
                // no polling delay) or the next look at the cancellation flag is due.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                    if listener.wait(POLL).is_err() {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                // A failed accept (the client went away first, no descriptors left) ends nothing.
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        stop.store(true, Ordering::Relaxed);
        for h in running {
            let _ = h.join();
        }
    });
    if export.writable {
        export.chain.top().flush()?;
    }
    Ok(n.report())
}

/// Why a connection ended early.
#[derive(Debug)]
enum End {
    /// The socket failed or closed mid-message.
    Io(io::Error),
    /// The client broke the protocol; the connection is dropped (a hard disconnect).
    Proto(ProtoError),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Io(e) => write!(f, "connection failed: {e}"),
            End::Proto(e) => write!(f, "protocol error: {e}"),
        }
    }
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> End {
        End::Io(e)
    }
}

impl From<ProtoError> for End {
    fn from(e: ProtoError) -> End {
        End::Proto(e)
    }
}

/// What reading a whole message gave.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    /// The buffer is full.
    Full,
    /// The client closed the connection between messages.
    Closed,
    /// Shutdown began between messages.
    Cancelled,
}

/// One connection's state.
struct Session<'a, C: Fn() -> bool> {
    conn: Conn,
    export: &'a Export,
    cancelled: &'a C,
    structured: bool,
    no_zeroes: bool,
    contexts: Vec<u32>,
    buf: Vec<u8>,
    /// The pieces of the read in hand (kept to reuse its allocation).
    plan: Vec<ReplyChunk<'a>>,
    requests: u64,
}

type Step<T> = std::result::Result<T, End>;

impl<'a, C: Fn() -> bool> Session<'a, C> {
    fn new(conn: Conn, export: &'a Export, cancelled: &'a C) -> Self {
        Session {
            conn,
            export,
            cancelled,
            structured: false,
            no_zeroes: false,
            contexts: Vec::new(),
            buf: Vec::new(),
            plan: Vec::new(),
            requests: 0,
        }
    }

    fn run(&mut self) -> Step<()> {
        if self.handshake()? {
            self.transmission()?;
        }
        Ok(())
    }

    /// Fills `buf`, waiting through read timeouts; between messages (nothing read yet) a
    /// cancellation or a closed connection ends it quietly.
    fn read_full(conn: &mut Conn, buf: &mut [u8], cancelled: &C) -> Step<Got> {
        let mut n = 0;
        let mut stalls = 0;
        while n < buf.len() {
            match conn.read(&mut buf[n..]) {
                Ok(0) if n == 0 => return Ok(Got::Closed),
                Ok(0) => return Err(End::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(k) => n += k,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    if cancelled() {
                        if n == 0 {
                            return Ok(Got::Cancelled);
                        }
                        stalls += 1;
                        if stalls > STALL_AFTER_CANCEL {
                            return Err(End::Io(e));
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(End::Io(e)),
            }
        }
        Ok(Got::Full)
    }

    fn read_msg(&mut self, buf: &mut [u8]) -> Step<Got> {
        Self::read_full(&mut self.conn, buf, self.cancelled)
    }

    /// Reads and drops `len` bytes (the data of an option or write that is refused).
    fn skip(&mut self, mut len: u64) -> Step<()> {
        let mut scratch = [0u8; 8192];
        while len > 0 {
            let n = len.min(scratch.len() as u64) as usize;
            if self.read_msg(&mut scratch[..n])? != Got::Full {
                return Err(End::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            len -= n as u64;
        }
        Ok(())
    }

    /// Reads a write's `len` bytes of data into `buf`, growing it only as the data arrives (a
    /// header alone never makes the connection allocate).
    fn read_payload(&mut self, len: usize) -> Step<()> {
        const STEP: usize = 1 << 20;
        self.buf.clear();
        while self.buf.len() < len {
            let at = self.buf.len();
            self.buf.resize(at + STEP.min(len - at), 0);
            if Self::read_full(&mut self.conn, &mut self.buf[at..], self.cancelled)? != Got::Full {
                return Err(End::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        }
        Ok(())
    }

    fn reply_option(&mut self, option: u32, kind: u32, data: &[u8]) -> Step<()> {
        Ok(self.conn.write_all(&proto::option_reply(option, kind, data))?)
    }

    /// The handshake; true when the client chose the export (transmission follows).
    fn handshake(&mut self) -> Step<bool> {
        let offered = proto::handshake::FIXED_NEWSTYLE | proto::handshake::NO_ZEROES;
        self.conn.write_all(&proto::greeting(offered))?;
        let mut flags = [0u8; 4];
        if self.read_msg(&mut flags)? != Got::Full {
            return Ok(false);
        }
        self.no_zeroes = proto::check_client_flags(u32::from_be_bytes(flags), offered)?;
        loop {
            let mut h = [0u8; proto::OPTION_HEADER_LEN];
            if self.read_msg(&mut h)? != Got::Full {
                return Ok(false);
            }
            let h = proto::parse_option_header(&h)?;
            if h.length > proto::MAX_OPTION_DATA {
                self.skip(h.length.into())?;
                if h.option == opt::EXPORT_NAME {
                    return Ok(false);
                }
                let msg = format!("option data of {} bytes exceeds {}", h.length, proto::MAX_OPTION_DATA);
                self.reply_option(h.option, rep::ERR_TOO_BIG, msg.as_bytes())?;
                continue;
            }
            let mut data = vec![0u8; h.length as usize];
            if self.read_msg(&mut data)? != Got::Full && !data.is_empty() {
                return Ok(false);
            }
            if (self.cancelled)() && h.option != opt::ABORT {
                self.reply_option(h.option, rep::ERR_SHUTDOWN, b"the server is shutting down")?;
                continue;
            }
            match self.option(h.option, &data) {
                Ok(Some(go)) => return Ok(go),
                Ok(None) => {}
                Err(End::Proto(e)) if h.option != opt::EXPORT_NAME => {
                    self.reply_option(h.option, rep::ERR_INVALID, e.to_string().as_bytes())?
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Answers one option: `Some(true)` to start transmission, `Some(false)` to end, `None` to go
    /// on haggling. A malformed option's data is an `Err(End::Proto)`, answered by the caller.
    fn option(&mut self, option: u32, data: &[u8]) -> Step<Option<bool>> {
        let export = self.export;
        let size = export.chain.capacity();
        match option {
            opt::EXPORT_NAME => {
                // This option cannot be refused with a reply: an unknown name ends the connection.
                if !export.has_name(&proto::parse_export_name(data)?) {
                    return Ok(Some(false));
                }
                let flags = export.transmission_flags(self.structured);
                self.conn.write_all(&proto::export_name_reply(size, flags, self.no_zeroes))?;
                Ok(Some(true))
            }
            opt::ABORT => {
                self.reply_option(option, rep::ACK, &[])?;
                Ok(Some(false))
            }
            opt::LIST if !data.is_empty() => {
                self.reply_option(option, rep::ERR_INVALID, b"NBD_OPT_LIST takes no data")?;
                Ok(None)
            }
            opt::LIST => {
                self.reply_option(option, rep::SERVER, &proto::server_entry(&export.name))?;
                self.reply_option(option, rep::ACK, &[])?;
                Ok(None)
            }
            opt::INFO | opt::GO => {
                let r = proto::parse_info_request(data)?;
                if !export.has_name(&r.name) {
                    let msg = format!("no export named {:?} (this server has {:?})", r.name, export.name);
                    self.reply_option(option, rep::ERR_UNKNOWN, msg.as_bytes())?;
                    return Ok(None);
                }
                let flags = export.transmission_flags(self.structured);
                self.reply_option(option, rep::INFO, &proto::info_export(size, flags))?;
                if r.requests.contains(&proto::info::NAME) {
                    self.reply_option(option, rep::INFO, &proto::info_string(proto::info::NAME, &export.name))?;
                }
                if r.requests.contains(&proto::info::DESCRIPTION) {
                    let d = format!("{} ({} links)", export.chain.top().path().display(), export.chain.links().len());
                    self.reply_option(option, rep::INFO, &proto::info_string(proto::info::DESCRIPTION, &d))?;
                }
                let bs = proto::info_block_size(1, PREFERRED_BLOCK, MAX_REQUEST);
                self.reply_option(option, rep::INFO, &bs)?;
                self.reply_option(option, rep::ACK, &[])?;
                Ok((option == opt::GO).then_some(true))
            }
            opt::STRUCTURED_REPLY if !data.is_empty() => {
                self.reply_option(option, rep::ERR_INVALID, b"NBD_OPT_STRUCTURED_REPLY takes no data")?;
                Ok(None)
            }
            opt::STRUCTURED_REPLY => {
                self.structured = true;
                self.reply_option(option, rep::ACK, &[])?;
                Ok(None)
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                if !self.structured {
                    self.reply_option(option, rep::ERR_INVALID, b"negotiate structured replies first")?;
                    return Ok(None);
                }
                let q = proto::parse_meta_query(data)?;
                if !export.has_name(&q.export) {
                    let msg = format!("no export named {:?}", q.export);
                    self.reply_option(option, rep::ERR_UNKNOWN, msg.as_bytes())?;
                    return Ok(None);
                }
                let set = option == opt::SET_META_CONTEXT;
                let ids = export.matching(&q.queries, !set);
                for &id in &ids {
                    let name = &export.context(id).expect("matched context").name;
                    self.reply_option(option, rep::META_CONTEXT, &proto::meta_context(if set { id } else { 0 }, name))?;
                }
                if set {
                    self.contexts = ids;
                }
                self.reply_option(option, rep::ACK, &[])?;
                Ok(None)
            }
            _ => {
                let msg = format!("option {option} is not supported");
                self.reply_option(option, rep::ERR_UNSUP, msg.as_bytes())?;
                Ok(None)
            }
        }
    }

    fn transmission(&mut self) -> Step<()> {
        loop {
            let mut h = [0u8; proto::REQUEST_LEN];
            match self.read_msg(&mut h)? {
                Got::Full => {}
                Got::Closed | Got::Cancelled => return Ok(()),
            }
            let req = proto::parse_request(&h)?;
            if req.command == Command::Disconnect {
                return Ok(());
            }
            self.request(&req)?;
            self.requests += 1;
        }
    }

    fn reply_error(&mut self, handle: u64, error: u32, message: &str) -> Step<()> {
        if self.structured {
            self.conn.write_all(&proto::error_chunk(handle, error, message))?;
        } else {
            self.conn.write_all(&proto::simple_reply(error, handle))?;
        }
        Ok(())
    }

    fn reply_ok(&mut self, handle: u64) -> Step<()> {
        Ok(self.conn.write_all(&proto::simple_reply(0, handle))?)
    }

    /// Serves one request (a `WRITE`'s data is read first, whatever the answer).
    fn request(&mut self, req: &Request) -> Step<()> {
        let (offset, len) = (req.offset, u64::from(req.length));
        let in_range = offset.checked_add(len).is_some_and(|e| e <= self.export.chain.capacity());
        if req.command == Command::Write {
            if req.length > MAX_REQUEST {
                self.skip(len)?;
                let msg = format!("write of {len} bytes exceeds the maximum of {MAX_REQUEST}");
                return self.reply_error(req.handle, errno::EINVAL, &msg);
            }
            self.read_payload(req.length as usize)?;
        }
        if let Some((e, msg)) = self.refusal(req, in_range) {
            return self.reply_error(req.handle, e, &msg);
        }
        let top = self.export.chain.top();
        let done = match req.command {
            Command::Write | Command::WriteZeroes | Command::Trim if len == 0 => Ok(()),
            Command::Read => return self.read(req),
            Command::BlockStatus => return self.block_status(req),
            Command::Write => top.write_at(&self.buf[..req.length as usize], offset),
            Command::WriteZeroes => top.zero_range(offset, len),
            Command::Trim => top.discard(offset, len).map(|_| ()),
            Command::Flush => top.flush(),
            Command::Disconnect | Command::Other(_) => unreachable!("refused above"),
        };
        let done = done.and_then(|()| if req.flags & cflags::FUA != 0 { top.flush() } else { Ok(()) });
        match done {
            Ok(()) => self.reply_ok(req.handle),
            Err(e) => self.reply_error(req.handle, errno_of(&e), &e.to_string()),
        }
    }

    /// Why a request is refused before any I/O (`None`: it is served).
    fn refusal(&self, req: &Request, in_range: bool) -> Option<(u32, String)> {
        let writing = matches!(req.command, Command::Write | Command::WriteZeroes | Command::Trim);
        let allowed = match req.command {
            Command::Read => cflags::DF,
            Command::Write => cflags::FUA,
            Command::WriteZeroes => cflags::FUA | cflags::NO_HOLE,
            Command::Trim => cflags::FUA,
            Command::BlockStatus => cflags::REQ_ONE,
            _ => 0,
        };
        if let Command::Other(t) = req.command {
            return Some((errno::EINVAL, format!("command {t} is not supported")));
        }
        if req.flags & !allowed != 0 || (req.flags & cflags::DF != 0 && !self.structured) {
            return Some((errno::EINVAL, format!("command flags {:#x} are not allowed here", req.flags)));
        }
        if writing && !self.export.writable {
            return Some((errno::EPERM, "the export is read-only (serve it with --writable)".into()));
        }
        if req.command == Command::Flush {
            return (req.offset != 0 || req.length != 0).then(|| (errno::EINVAL, "flush takes no range".into()));
        }
        if req.command == Command::Read && req.length > MAX_REQUEST {
            let e = if self.structured { errno::EOVERFLOW } else { errno::EINVAL };
            return Some((e, format!("read of {} bytes exceeds the maximum of {MAX_REQUEST}", req.length)));
        }
        if req.command == Command::BlockStatus && (!self.structured || self.contexts.is_empty()) {
            return Some((errno::EINVAL, "no metadata context was negotiated".into()));
        }
        if !in_range || (req.length == 0 && !writing) {
            let cap = self.export.chain.capacity();
            let e = if writing { errno::ENOSPC } else { errno::EINVAL };
            return Some((e, format!("{} bytes at {} is outside the export of {cap} bytes", req.length, req.offset)));
        }
        None
    }

    /// Serves a `READ`. With structured replies (and no `DF` flag) the reply is one chunk per
    /// piece of the range ([`plan_read`]): data stored as is goes from its file to the socket in
    /// the kernel, holes are `OFFSET_HOLE` chunks, the rest is read and sent; otherwise the range
    /// is read whole and sent in one piece.
    fn read(&mut self, req: &Request) -> Step<()> {
        if self.structured && req.flags & cflags::DF == 0 {
            return self.read_in_pieces(req);
        }
        self.buf.resize(req.length as usize, 0);
        let data = &mut self.buf[..req.length as usize];
        if let Err(e) = self.export.chain.read_at(data, req.offset) {
            return self.reply_error(req.handle, errno_of(&e), &e.to_string());
        }
        let header: Vec<u8> = if self.structured {
            proto::offset_data_header(req.handle, true, req.offset, req.length).to_vec()
        } else {
            proto::simple_reply(0, req.handle).to_vec()
        };
        self.send_with_header(&header, req.length as usize)
    }

    /// Writes `header` then the first `len` bytes of `buf`, in one system call where the socket
    /// takes them.
    fn send_with_header(&mut self, header: &[u8], len: usize) -> Step<()> {
        let mut parts = [io::IoSlice::new(header), io::IoSlice::new(&self.buf[..len])];
        let mut parts = &mut parts[..];
        while !parts.is_empty() {
            match self.conn.write_vectored(parts) {
                Ok(0) => return Err(End::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => io::IoSlice::advance_slices(&mut parts, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(End::Io(e)),
            }
        }
        Ok(())
    }

    /// A structured read reply, one chunk per piece. A piece that fails to read is answered with
    /// an error chunk (which ends the reply); a file that fails under `sendfile` once its chunk
    /// header is out cannot be answered, and ends the connection.
    fn read_in_pieces(&mut self, req: &Request) -> Step<()> {
        let export: &'a Export = self.export;
        let mut plan = std::mem::take(&mut self.plan);
        let planned = plan_read(&export.chain, req.offset, u64::from(req.length), &mut plan);
        let sent = match planned {
            Ok(()) => self.send_chunks(req.handle, &plan),
            Err(e) => self.reply_error(req.handle, errno_of(&e), &e.to_string()),
        };
        plan.clear();
        self.plan = plan;
        sent
    }

    fn send_chunks(&mut self, handle: u64, plan: &[ReplyChunk<'_>]) -> Step<()> {
        for (i, p) in plan.iter().enumerate() {
            let done = i + 1 == plan.len();
            let len = p.len as u32; // a piece is within one request: under 4 GiB
            match p.how {
                How::Hole => self.conn.write_all(&proto::offset_hole_chunk(handle, done, p.offset, len))?,
                How::File { dev, at } => {
                    self.conn.write_all(&proto::offset_data_header(handle, done, p.offset, len))?;
                    self.conn.send_file(dev, at, p.len)?;
                }
                How::Read => {
                    self.buf.resize(len as usize, 0);
                    if let Err(e) = self.export.chain.read_at(&mut self.buf[..len as usize], p.offset) {
                        return self.reply_error(handle, errno_of(&e), &e.to_string());
                    }
                    self.send_with_header(&proto::offset_data_header(handle, done, p.offset, len), len as usize)?;
                }
            }
        }
        Ok(())
    }

    fn block_status(&mut self, req: &Request) -> Step<()> {
        let end = req.offset + u64::from(req.length);
        let max = if req.flags & cflags::REQ_ONE != 0 { 1 } else { MAX_EXTENTS };
        let mut chunks = Vec::with_capacity(self.contexts.len());
        for &id in &self.contexts {
            let ctx = self.export.context(id).expect("negotiated context");
            match self.export.extents(ctx, req.offset, end, max) {
                Ok(x) => chunks.push((id, x)),
                Err(e) => return self.reply_error(req.handle, errno::EIO, &e.to_string()),
            }
        }
        let last = chunks.len() - 1;
        for (i, (id, x)) in chunks.iter().enumerate() {
            self.conn.write_all(&proto::block_status_chunk(req.handle, i == last, *id, x))?;
        }
        Ok(())
    }
}

/// The protocol error value for a failed disk operation.
fn errno_of(e: &vmdk::Error) -> u32 {
    match e {
        vmdk::Error::OutOfRange { .. } | vmdk::Error::InvalidArgument(_) => errno::EINVAL,
        vmdk::Error::ReadOnly { .. } => errno::EPERM,
        vmdk::Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => errno::ENOSPC,
        _ => errno::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_coalesce_by_flags_and_stop_at_the_cap() {
        let mut e = Extents { v: Vec::new(), max: 2, pos: 100 };
        assert!(e.push(100, 0), "an empty step is no extent");
        assert!(e.push(200, 3));
        assert!(e.push(300, 3), "same flags extend the extent");
        assert!(e.push(400, 0));
        assert!(!e.push(500, 3), "a third extent does not fit");
        assert!(e.push(450, 0) && e.push(600, 0), "the last one still grows");
        assert_eq!(e.v, vec![(200, 3), (300, 0)]);
        assert_eq!(e.pos, 600);
    }

    #[test]
    fn reads_plan_stored_grains_from_their_file_and_the_rest_as_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.vmdk");
        crate::create(&path, vmdk::DiskFormat::MonoSparse, 16 << 20).unwrap();
        let chain = Chain::open(&path, &OpenOptions::write()).unwrap();
        chain.top().write_at(&[7u8; 1 << 20], 4 << 20).unwrap();
        chain.top().write_at(&[8u8; 4096], 8 << 20).unwrap();
        let mut plan = Vec::new();
        plan_read(&chain, 0, 16 << 20, &mut plan).unwrap();
        let shape: Vec<(u64, u64, &str)> = plan
            .iter()
            .map(|p| {
                (
                    p.offset,
                    p.len,
                    match p.how {
                        How::File { .. } => "file",
                        How::Hole => "hole",
                        How::Read => "read",
                    },
                )
            })
            .collect();
        // The 1 MiB went into sixteen grains written one after another (one piece); the 4 KiB
        // into a grain of its own (the rest of the grain is stored zeros).
        let want =
            [(0, 4 << 20, "hole"), (4 << 20, 1 << 20, "file"), (5 << 20, 3 << 20, "hole"), (8 << 20, 64 << 10, "file")];
        assert_eq!(&shape[..4], &want);
        assert_eq!(shape[4], ((8 << 20) + (64 << 10), (8 << 20) - (64 << 10), "hole"));
        for (p, byte) in [(plan[1], 7u8), (plan[3], 8u8)] {
            let How::File { dev, at } = p.how else { unreachable!() };
            let mut b = vec![0u8; 4096];
            dev.read_exact_at(&mut b, at).unwrap();
            assert!(b.iter().all(|&x| x == byte), "the piece names where its bytes are in the file");
        }
        // A short stored piece is read with its neighbours, not sent on its own.
        plan.clear();
        plan_read(&chain, (4 << 20) + (60 << 10), 8 << 10, &mut plan).unwrap();
        assert!(matches!(&plan[..], [ReplyChunk { how: How::Read, len: 8192, .. }]), "{plan:?}");
    }

    #[test]
    fn addresses_parse_and_name_their_uri() {
        assert_eq!(Address::parse("tcp:127.0.0.1:10809").unwrap(), Address::Tcp("127.0.0.1:10809".parse().unwrap()));
        assert_eq!(Address::parse("tcp:[::1]:10809").unwrap().uri(), "nbd://[::1]:10809");
        assert!(matches!(Address::parse("tcp:localhost:1"), Err(Error::Usage(_))));
        assert!(matches!(Address::parse(""), Err(Error::Usage(_))));
        let a = Address::parse("/run/my vm&.sock").unwrap();
        assert_eq!(a.uri(), "nbd+unix:///?socket=/run/my%20vm%26.sock");
    }
}
