//! The part of the harness that needs nothing but std, shared with vmdk's tests (their
//! `common/mod.rs` includes this file by path): seeded generators and the read-through of other
//! VMDK implementations (scripts/oracle_read.py).

use std::path::Path;
use std::process::Command;

/// SplitMix64, for seeded campaigns and test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, n)` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Uniform in `[lo, hi]`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
    /// True `num` times in `den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next_u64() % den < num
    }
    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
    /// Fills with random bytes, none of them zero (so "data" never accidentally looks like zeros).
    pub fn fill_nonzero(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = (self.next_u64() | 0x0101_0101_0101_0101).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Marsaglia's xorshift64 from `state` (non-zero): the cheap stream the image generators and
/// byte-flipping campaigns draw from.
#[derive(Debug, Clone)]
pub struct XorShift(pub u64);

impl XorShift {
    /// The next value of the stream.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Another implementation's read-through of each of `disks` (a delta through its parents):
/// `(bytes, sha256)` a disk. `reader` is `dissect` (dissect.hypervisor) or `pyvmdk` (libvmdk).
/// `None`, after saying so, where python3 or the reader is not installed; panics when the reader
/// fails on a disk.
pub fn oracle_read(reader: &str, disks: &[&Path]) -> Option<Vec<(u64, String)>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let script = root.join("scripts/oracle_read.py");
    let Ok(o) = Command::new("python3").arg(&script).arg(reader).args(disks).output() else {
        eprintln!("SKIP: python3 not found: no comparison with {reader}");
        return None;
    };
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{reader} on {disks:?}: {out}\n{}", String::from_utf8_lossy(&o.stderr));
    if out.trim() == "missing" {
        eprintln!("SKIP: {reader} is not installed: no comparison with it");
        return None;
    }
    let sums: Vec<(u64, String)> = out
        .lines()
        .map(|l| {
            let (n, sum) = l.split_once(' ').unwrap_or_else(|| panic!("{reader}: a line without a size: {l}"));
            (n.parse().unwrap_or_else(|e| panic!("{reader}: size {n}: {e}")), sum.to_string())
        })
        .collect();
    assert_eq!(sums.len(), disks.len(), "{reader}: one line a disk, got:\n{out}");
    Some(sums)
}
