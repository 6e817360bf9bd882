//! Interrupts as a service of the library: [`install`] makes SIGINT, SIGTERM and SIGHUP set a flag
//! that the copy engine, the NBD server and the FUSE mount poll (their `cancel` options), so a
//! command stops cleanly (a clone removes its temporary files, a server flushes); [`Interruptible`]
//! makes a writer blocked on a full pipe give up once the flag is set. The signal plumbing itself
//! is in `rdm::device` (the one module with `unsafe`).

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Installs the handler (see the module text) and returns the flag it sets.
pub fn install() -> &'static AtomicBool {
    rdm::device::catch_interrupts()
}

/// A writer that gives up once an interrupt has arrived: a `write` blocked on a full pipe returns
/// `EINTR` (the handler is installed without `SA_RESTART`), which std's `write_all` would retry
/// forever; this fails it instead (and every later write), so the command ends with its
/// interrupted exit code.
pub struct Interruptible<W>(pub W);

impl<W: Write> Write for Interruptible<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let flag = rdm::device::interrupt_flag();
        loop {
            if flag.load(Ordering::Relaxed) {
                return Err(io::Error::other("interrupted by a signal"));
            }
            match self.0.write(b) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}
