//! Reads a disk (or the chain it tops) through the embedding API: what it is, where its data is,
//! and the SHA-256 of its whole content.
//!
//! ```sh
//! cargo run --example read_disk -- vm-000002.vmdk
//! ```

use std::io::Write;

use sha2::{Digest, Sha256};
use vmkfs::Disk;

/// Prints the disk's facts, its allocated ranges and the SHA-256 of its content to `out`.
pub fn run(path: &str, out: &mut dyn Write) -> vmkfs::Result<()> {
    let disk = Disk::open(path)?;
    let io = |e| vmkfs::Error::Io { path: "<output>".into(), source: e };
    writeln!(out, "format {}", disk.format()).map_err(io)?;
    writeln!(out, "capacity {}", disk.capacity()).map_err(io)?;
    writeln!(out, "links {}", disk.chain_depth()).map_err(io)?;
    writeln!(out, "cid {:08x}", disk.cid()).map_err(io)?;
    for e in disk.allocated()? {
        writeln!(out, "data {} {}", e.offset, e.len).map_err(io)?;
    }
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < disk.capacity() {
        let n = (disk.capacity() - pos).min(buf.len() as u64) as usize;
        disk.read_at(&mut buf[..n], pos)?;
        hash.update(&buf[..n]);
        pos += n as u64;
    }
    writeln!(out, "sha256 {:x}", hash.finalize()).map_err(io)?;
    Ok(())
}

#[allow(dead_code)]
fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: read_disk DISK");
        std::process::exit(2);
    };
    if let Err(e) = run(&path, &mut std::io::stdout().lock()) {
        eprintln!("read_disk: {e}");
        std::process::exit(1);
    }
}
