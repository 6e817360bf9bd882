//! Small text encodings every layer shares: hex and UTC timestamps (`YYYY-MM-DDTHH:MM:SSZ`
//! written, RFC 3339 read, as restic and Go write it). Below the VM layer and the repository.

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    let mut out = vec![0u8; 2 * b.len()];
    hex_into(b, &mut out);
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// Writes the lower-case hex of `b` into `out` (`2 * b.len()` bytes), allocating nothing: IDs
/// are written a million at a time into the content list of a large disk's tree.
pub fn hex_into(b: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    assert_eq!(out.len(), 2 * b.len(), "hex needs two digits per byte");
    for (x, o) in b.iter().zip(out.chunks_exact_mut(2)) {
        o[0] = DIGITS[usize::from(x >> 4)];
        o[1] = DIGITS[usize::from(x & 15)];
    }
}

/// Now, as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn now_utc() -> String {
    let (date, time) = civil(unix_now());
    format!("{date}T{time}Z")
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of `secs` seconds since 1970, as reports print times.
pub fn utc_text(secs: u64) -> String {
    let (date, time) = civil(secs);
    format!("{date} {time}")
}

/// The civil date `YYYY-MM-DD` and time `HH:MM:SS` (UTC) of `secs` since 1970-01-01 (Howard
/// Hinnant's algorithm).
fn civil(secs: u64) -> (String, String) {
    let (days, rem) = (secs / 86400, secs % 86400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (format!("{y:04}-{m:02}-{d:02}"), format!("{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60))
}

/// Seconds since 1970-01-01 UTC.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// An RFC 3339 time (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, what restic and Go write) as seconds
/// since 1970-01-01 UTC; `None` when it is not one.
pub fn parse_utc(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, m, d, hh, mm, ss) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = &frac[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let v = rest[1..3].parse::<i64>().ok()? * 3600 + rest[4..6].parse::<i64>().ok()? * 60;
            if rest.starts_with('-') {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days since 1970-01-01 from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86400 + hh * 3600 + mm * 60 + ss - offset).ok()
}

/// A byte count for people (`1.5 GiB`).
pub fn human(n: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let (v, i) = in_units_of_1024(n);
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// `n` as a value below 1024 and the power of 1024 it is in (0 to 5).
pub fn in_units_of_1024(n: u64) -> (f64, usize) {
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < 5 {
        v /= 1024.0;
        i += 1;
    }
    (v, i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_back() {
        let now = now_utc();
        assert!(parse_utc(&now).unwrap().abs_diff(unix_now()) <= 1);
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_utc("2015-06-27T12:18:51.759239612+02:00"), Some(1435400331));
        assert_eq!(parse_utc("2024-02-29T00:00:00Z"), Some(1709164800));
        for bad in ["", "2024-13-01T00:00:00Z", "2024-01-01 00:00", "2024-01-01T00:00:00+0200"] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }

    #[test]
    fn hex_is_lower_case_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
        let all: Vec<u8> = (0..=255).collect();
        let slow: String = all.iter().map(|x| format!("{x:02x}")).collect();
        assert_eq!(hex(&all), slow);
    }

    #[test]
    fn report_times() {
        assert_eq!(utc_text(0), "1970-01-01 00:00:00");
        assert_eq!(utc_text(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(utc_text(951_782_400), "2000-02-29 00:00:00");
    }

    #[test]
    fn time_format() {
        let t = now_utc();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
