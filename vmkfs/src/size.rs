//! Size arguments: `N`, `Nk`, `Nm`, `Ng`, `Nt` (case-insensitive, powers of 1024).

use crate::error::{Error, Result};

/// Parses a size; it must be a positive multiple of 512 bytes.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_lowercase() {
                'k' => 1 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                't' => 1 << 40,
                _ => return Err(Error::Usage(format!("size {s:?}: unknown unit {c:?} (use k, m, g or t)"))),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num.parse().map_err(|_| Error::Usage(format!("size {s:?} is not a number")))?;
    let bytes = n.checked_mul(mult).ok_or_else(|| Error::Usage(format!("size {s:?} is too large")))?;
    if bytes == 0 || bytes % 512 != 0 {
        return Err(Error::Usage(format!("size {s:?} must be a positive multiple of 512 bytes")));
    }
    Ok(bytes)
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
    }
}
