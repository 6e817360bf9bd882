//! `ZERO` extents: no file, reads return zeros, writes are refused.

use std::path::PathBuf;

use super::{Extent, ExtentInfo, ExtentKind};
use crate::error::{Error, Result};
use crate::map::{AllocMap, State};
use rdm::ReadAt;

/// A `ZERO` extent.
#[derive(Debug)]
pub struct ZeroExtent {
    len: u64,
    descriptor: PathBuf,
}

impl ZeroExtent {
    /// A zero extent of `len` bytes, described in `descriptor`.
    pub fn new(len: u64, descriptor: PathBuf) -> ZeroExtent {
        ZeroExtent { len, descriptor }
    }
}

impl ReadAt for ZeroExtent {
    type Error = Error;
    fn read_exact_at(&self, buf: &mut [u8], _offset: u64) -> Result<()> {
        buf.fill(0);
        Ok(())
    }
}

impl Extent for ZeroExtent {
    fn len(&self) -> u64 {
        self.len
    }
    fn info(&self) -> ExtentInfo {
        ExtentInfo { kind: ExtentKind::Zero, file: None, len: self.len, grain: None, version: None, unclean: false }
    }
    fn writable(&self) -> bool {
        false
    }
    fn write_at(&self, _buf: &[u8], offset: u64, _below: Option<&dyn ReadAt<Error = Error>>) -> Result<()> {
        Err(Error::ReadOnly {
            path: self.descriptor.clone(),
            what: format!("cannot write at extent offset {offset}: ZERO extents have no storage"),
        })
    }
    fn map(&self, offset: u64, len: u64, base: u64, _budget: usize, out: &mut AllocMap) -> Result<u64> {
        out.push(base + offset, len, State::Zero, 0);
        Ok(offset + len)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
