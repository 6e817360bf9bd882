//! Size, offset and length arguments: `N` or `Nb` (bytes), `Ns` (512-byte sectors), `Nk`, `Nm`, `Ng`, `Nt`
//! (case-insensitive, powers of 1024), as vmkfstools takes them.

use crate::error::{Error, Result};

/// Parses a byte count (an offset or a length, any multiple): `N`, `Nb`, `Ns`, `Nk`, `Nm`, `Ng`, `Nt`.
/// `what` names the argument in errors (`"offset"`, `"size"`).
pub fn parse_bytes(s: &str, what: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_lowercase() {
                'b' => 1,
                's' => 512,
                'k' => 1 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                't' => 1 << 40,
                _ => return Err(Error::Usage(format!("{what} {s:?}: unknown unit {c:?} (use b, s, k, m, g or t)"))),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num.parse().map_err(|_| Error::Usage(format!("{what} {s:?} is not a number")))?;
    n.checked_mul(mult).ok_or_else(|| Error::Usage(format!("{what} {s:?} is too large (more than {} bytes)", u64::MAX)))
}

/// Parses a size; it must be a positive multiple of 512 bytes.
pub fn parse_size(s: &str) -> Result<u64> {
    let bytes = parse_bytes(s, "size")?;
    if bytes == 0 || bytes % 512 != 0 {
        return Err(Error::Usage(format!("size {s:?} must be a positive multiple of 512 bytes")));
    }
    Ok(bytes)
}

/// The end of the byte range `[offset, offset + len)` of a disk of `capacity` bytes; a range that
/// overflows or reaches past the end is a usage error naming both.
pub fn range_end(offset: u64, len: u64, capacity: u64) -> Result<u64> {
    let end = offset
        .checked_add(len)
        .ok_or_else(|| Error::Usage(format!("offset {offset} + length {len} is more than {} bytes", u64::MAX)))?;
    if offset > capacity {
        return Err(Error::Usage(format!("offset {offset} is past the end of the disk ({capacity} bytes)")));
    }
    if end > capacity {
        return Err(Error::Usage(format!("bytes {offset}..{end} reach past the end of the disk ({capacity} bytes)")));
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert!(parse_size("100").is_err());
        assert!(parse_size("1x").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("99999999999t").is_err());
        assert_eq!(parse_bytes("100", "offset").unwrap(), 100);
        assert_eq!(parse_bytes("0", "offset").unwrap(), 0);
        assert_eq!(parse_bytes("3M", "offset").unwrap(), 3 << 20);
        assert!(parse_bytes("16777216t", "offset").unwrap_err().to_string().contains("too large"));
        assert!(parse_bytes("-1", "offset").is_err());
        assert_eq!(parse_size("2048s").unwrap(), 1 << 20);
        assert_eq!(parse_size("1048576b").unwrap(), 1 << 20);
        assert_eq!(parse_size("1048576B").unwrap(), 1 << 20);
        assert!(parse_size("100b").is_err());
        assert!(parse_bytes("36028797018963968s", "size").unwrap_err().to_string().contains("too large"));
        assert!(parse_bytes("1q", "size").unwrap_err().to_string().contains("use b, s, k"));
        assert!(parse_bytes("", "offset").is_err());
    }

    #[test]
    fn ranges() {
        assert_eq!(range_end(0, 10, 10).unwrap(), 10);
        assert_eq!(range_end(10, 0, 10).unwrap(), 10);
        assert!(range_end(5, 6, 10).unwrap_err().to_string().contains("past the end of the disk (10 bytes)"));
        assert!(range_end(11, 0, 10).unwrap_err().to_string().contains("offset 11 is past the end"));
        let e = range_end(u64::MAX, 1, u64::MAX).unwrap_err();
        assert!(matches!(e, Error::Usage(_)) && e.to_string().contains("more than"), "{e}");
    }
}
