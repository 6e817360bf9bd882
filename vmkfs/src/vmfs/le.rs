//! Bounds-checked little-endian field access on byte slices. Out-of-range reads return `None`, so a
//! short or hostile buffer can never panic a parser.

/// A byte slice read as little-endian fields.
#[derive(Clone, Copy)]
pub(crate) struct Le<'a>(pub &'a [u8]);

impl<'a> Le<'a> {
    pub fn u8(&self, at: usize) -> Option<u8> {
        self.0.get(at).copied()
    }
    pub fn u16(&self, at: usize) -> Option<u16> {
        self.bytes(at, 2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    pub fn u32(&self, at: usize) -> Option<u32> {
        self.bytes(at, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&self, at: usize) -> Option<u64> {
        self.bytes(at, 8).map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }
    pub fn bytes(&self, at: usize, n: usize) -> Option<&'a [u8]> {
        self.0.get(at..at.checked_add(n)?)
    }
    /// A NUL-terminated string field of `n` bytes (lossy UTF-8).
    pub fn cstr(&self, at: usize, n: usize) -> Option<String> {
        let b = self.bytes(at, n)?;
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        Some(String::from_utf8_lossy(&b[..end]).into_owned())
    }
}

/// The VMware UUID layout (time low, time high, random, MAC) as `xxxxxxxx-xxxxxxxx-xxxx-xxxxxxxxxxxx`.
pub(crate) fn uuid_string(b: &[u8]) -> String {
    let l = Le(b);
    match (l.u32(0), l.u32(4), l.u16(8), l.bytes(10, 6)) {
        (Some(lo), Some(hi), Some(r), Some(mac)) => {
            let m: String = mac.iter().map(|x| format!("{x:02x}")).collect();
            format!("{lo:08x}-{hi:08x}-{r:04x}-{m}")
        }
        _ => String::new(),
    }
}

/// True for a power of two within `[lo, hi]`.
pub(crate) fn pow2_in(v: u64, lo: u64, hi: u64) -> bool {
    v.is_power_of_two() && v >= lo && v <= hi
}
