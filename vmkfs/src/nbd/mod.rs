//! An NBD server for any disk or chain: `vmkfs --serve-nbd SOCKET [--writable] DISK`.
//!
//! NBD is the hand-off that qemu-img, qemu-nbd, nbdcopy, nbdkit, virt-v2v and the Kubernetes CDI
//! importer speak. The server does the fixed-newstyle handshake (`NBD_OPT_GO`, `INFO`, `LIST`,
//! `ABORT`, `STRUCTURED_REPLY`, `LIST_META_CONTEXT`, `SET_META_CONTEXT`) and serves `READ`,
//! `BLOCK_STATUS` and `FLUSH`, and with `writable` also `WRITE`, `WRITE_ZEROES` and `TRIM`, into the
//! top link (opened for writing under the lock protocol). Two metadata contexts answer
//! `BLOCK_STATUS`:
//!
//! - `base:allocation`, from the chain's allocation map (one walk in runs, [`vmdk::map::runs`]):
//!   data is `0`, known zeros and ranges no link holds are `NBD_STATE_HOLE | NBD_STATE_ZERO`;
//! - `qemu:dirty-bitmap:since-LINK` for every link of the chain (`LINK` its file name): the 64 KiB
//!   blocks changed above that link ([`redo::ChangeMap`], as `vmkfs --changed-blocks --since`),
//!   `1` (dirty) or `0`, named as qemu names its bitmaps so qemu and libnbd clients read it as is.
//!
//! A read-only export advertises `NBD_FLAG_CAN_MULTI_CONN` (nothing changes, so every connection
//! reads the same bytes); a writable one does not. `FLUSH` and `FUA` flush the top link (data,
//! grain tables, descriptor) to stable storage before the reply, so a write acknowledged before an
//! acknowledged flush survives the server being killed. Requests longer than
//! [`server::MAX_REQUEST`] are refused; malformed messages end the connection, never the server.
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//! use vmkfs::nbd::{serve_disk, Address, NbdOptions};
//!
//! let stop = AtomicBool::new(false); // set from a signal handler to end cleanly
//! let opts = NbdOptions { cancel: Some(&stop), ..NbdOptions::default() };
//! let addr = Address::parse("/tmp/vm.sock")?;
//! serve_disk("vm.vmdk".as_ref(), &addr, &opts, |uri| eprintln!("serving on {uri}"))?;
//! # Ok::<(), vmkfs::Error>(())
//! ```

pub mod proto;
pub mod server;

use std::path::Path;
use std::sync::atomic::AtomicBool;

pub use server::{serve, serve_stream, Address, Export, Listener, ServeOptions, ServeReport};
use vmdk::OpenOptions;

use crate::error::Result;

/// How [`serve_disk`] opens and serves a disk.
#[derive(Debug, Clone, Default)]
pub struct NbdOptions<'a> {
    /// How the chain is opened (storage, `allow_outside`, lock wait); `write` is set from
    /// `writable`.
    pub open: OpenOptions,
    /// Serve writes into the top link.
    pub writable: bool,
    /// Set to stop serving (see [`ServeOptions::cancel`]).
    pub cancel: Option<&'a AtomicBool>,
    /// Most connections at once (0: 16).
    pub max_connections: usize,
}

/// Opens the disk or chain at `path`, binds `address`, calls `ready` with the NBD URI clients
/// connect to, and serves until `opts.cancel` is set; then every acknowledged write is flushed and
/// the chain closed cleanly.
pub fn serve_disk(path: &Path, address: &Address, opts: &NbdOptions, ready: impl FnOnce(&str)) -> Result<ServeReport> {
    let export = Export::open(path, &opts.open, opts.writable)?;
    let listener = Listener::bind(address)?;
    ready(&listener.address().uri());
    let so = ServeOptions { cancel: opts.cancel, max_connections: opts.max_connections, connections_limit: 0 };
    let report = serve(&listener, &export, &so);
    drop(listener);
    let closed = export.close();
    let report = report?;
    closed?;
    Ok(report)
}
