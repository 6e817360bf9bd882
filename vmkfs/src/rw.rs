//! A chain's bytes at an offset, streamed: `--read-at` (to any sink) and `--write-at` (from any
//! reader), in 1 MiB steps so memory stays bounded whatever the length.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};
use crate::size::range_end;
use redo::Chain;

/// Bytes read or written per step.
const STEP: usize = 1 << 20;

/// Hands `[offset, offset+len)` of `chain` (to the end of the disk when `len` is `None`) to `sink`
/// in order, a step at a time; returns the bytes handed over. A range past the end is refused
/// before anything is read.
pub fn read_range(
    chain: &Chain,
    offset: u64,
    len: Option<u64>,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    let cap = chain.capacity();
    let end = range_end(offset, len.unwrap_or(cap.saturating_sub(offset)), cap)?;
    let mut buf = vec![0u8; STEP.min((end - offset) as usize)];
    let mut pos = offset;
    while pos < end {
        let n = (end - pos).min(buf.len() as u64) as usize;
        chain.read_at(&mut buf[..n], pos)?;
        sink(&buf[..n])?;
        pos += n as u64;
    }
    Ok(end - offset)
}

/// Writes everything `input` (named `name` in errors) yields into the top of `chain` from
/// `offset` on, then flushes the top link; returns the bytes written. Input that runs past the end
/// of the disk is an error saying how much was written before it.
pub fn write_from(chain: &Chain, offset: u64, mut input: impl Read, name: &Path) -> Result<u64> {
    let cap = chain.capacity();
    range_end(offset, 0, cap)?;
    let mut buf = vec![0u8; STEP];
    let mut pos = offset;
    loop {
        let n = vmdk::extent::stream::sequential::read_full(&mut input, &mut buf, name)?;
        if n == 0 {
            break;
        }
        range_end(pos, n as u64, cap).map_err(|e| {
            Error::Usage(format!(
                "{} runs past the end of the disk: {e} ({} bytes were written)",
                name.display(),
                pos - offset
            ))
        })?;
        chain.write_at(&buf[..n], pos)?;
        pos += n as u64;
        if n < buf.len() {
            break;
        }
    }
    chain.top().flush()?;
    Ok(pos - offset)
}
