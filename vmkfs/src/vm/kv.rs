//! The `key = "value"` text format that `.vmx` files and backup catalogs share.
//!
//! Read leniently, as VMware reads a `.vmx` and as the descriptor parser reads a descriptor: blank
//! lines and `#` comments are kept, spaces around `=` are optional, values may be quoted or not,
//! keys compare without regard to case, a key given twice takes its last value, CRLF line ends
//! and a UTF-8 byte-order mark are accepted. Inside quotes VMware writes `|XX` (two hex digits)
//! for a byte that cannot stand there (`|22` is `"`, `|7C` is `|`); [`unescape`] and [`quote`]
//! undo and redo that. A line that is none of these is an error naming the file and line.
//!
//! [`Lines`] keeps the file as written, so changing one value ([`Lines::set`]) rewrites that line
//! only and leaves every other byte of the file alone.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Largest file of this format read (a `.vmx` is a few KiB; a catalog of a VM with many disks and
/// logs stays far below).
pub const MAX_BYTES: u64 = 4 << 20;

/// One line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    /// The line as written (without its line end).
    raw: String,
    /// `(key as written, value unescaped)` for setting lines.
    kv: Option<(String, String)>,
}

/// A file of `key = "value"` lines, kept as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lines {
    path: PathBuf,
    lines: Vec<Line>,
    crlf: bool,
}

impl Lines {
    /// Parses `text` (read from `path`, named in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Lines> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let crlf = text.contains("\r\n");
        let mut lines = Vec::new();
        let body = text.strip_suffix('\n').unwrap_or(text);
        for (i, raw) in body.split('\n').enumerate() {
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            let t = raw.trim();
            if t.is_empty() || t.starts_with('#') {
                lines.push(Line { raw: raw.to_string(), kv: None });
                continue;
            }
            let Some((k, v)) = t.split_once('=') else {
                return Err(Error::Config {
                    path: path.into(),
                    line: i + 1,
                    what: format!("expected `key = \"value\"` or a `#` comment, found {:?}", clip(t)),
                });
            };
            let key = k.trim();
            if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c == '"') {
                return Err(Error::Config {
                    path: path.into(),
                    line: i + 1,
                    what: format!("{key:?} is not a key (a key is one word before `=`)"),
                });
            }
            let value = parse_value(v.trim()).map_err(|what| Error::Config { path: path.into(), line: i + 1, what })?;
            lines.push(Line { raw: raw.to_string(), kv: Some((key.to_string(), value)) });
        }
        Ok(Lines { path: path.into(), lines, crlf })
    }

    /// An empty file that will be written at `path`.
    pub fn new(path: &Path) -> Lines {
        Lines { path: path.into(), lines: Vec::new(), crlf: false }
    }

    /// The file the lines came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value of `key` (case-insensitive; the last of duplicates).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.lines
            .iter()
            .rev()
            .filter_map(|l| l.kv.as_ref())
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// Every `(key, value)` in file order, duplicates included (keys as written).
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lines.iter().filter_map(|l| l.kv.as_ref()).map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The 1-based line number of the last setting of `key` (0 when absent), for messages.
    pub fn line_of(&self, key: &str) -> usize {
        self.lines
            .iter()
            .rposition(|l| l.kv.as_ref().is_some_and(|(k, _)| k.eq_ignore_ascii_case(key)))
            .map(|i| i + 1)
            .unwrap_or(0)
    }

    /// Sets `key` to `value`: every line setting it is rewritten (keeping the key's spelling), or
    /// one line is appended when none does.
    pub fn set(&mut self, key: &str, value: &str) {
        let mut found = false;
        for l in &mut self.lines {
            if let Some((k, v)) = &mut l.kv {
                if k.eq_ignore_ascii_case(key) {
                    l.raw = format!("{k} = {}", quote(value));
                    *v = value.to_string();
                    found = true;
                }
            }
        }
        if !found {
            self.push(key, value);
        }
    }

    /// Appends a `key = "value"` line.
    pub fn push(&mut self, key: &str, value: &str) {
        self.lines.push(Line { raw: format!("{key} = {}", quote(value)), kv: Some((key.into(), value.into())) });
    }

    /// Appends a comment line (`# text`).
    pub fn comment(&mut self, text: &str) {
        self.lines.push(Line { raw: format!("# {text}"), kv: None });
    }

    /// The file's text (line ends as the original had them; a final line end).
    pub fn to_text(&self) -> String {
        let end = if self.crlf { "\r\n" } else { "\n" };
        let mut s = String::new();
        for l in &self.lines {
            s.push_str(&l.raw);
            s.push_str(end);
        }
        s
    }
}

/// Parses a value: `"quoted"` (with `|XX` escapes) or bare text (up to a `#` comment).
fn parse_value(v: &str) -> std::result::Result<String, String> {
    if let Some(rest) = v.strip_prefix('"') {
        let Some(end) = rest.find('"') else {
            return Err(format!("the value {:?} has no closing quote", clip(v)));
        };
        let tail = rest[end + 1..].trim();
        if !tail.is_empty() && !tail.starts_with('#') {
            return Err(format!("unexpected {:?} after the quoted value", clip(tail)));
        }
        return unescape(&rest[..end]);
    }
    let bare = v.split_once(" #").map(|(a, _)| a).unwrap_or(v).trim();
    Ok(bare.to_string())
}

/// Undoes VMware's `|XX` escapes.
pub fn unescape(s: &str) -> std::result::Result<String, String> {
    if !s.contains('|') {
        return Ok(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'|' {
            let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(x) => {
                    out.push(x);
                    i += 3;
                    continue;
                }
                None => return Err(format!("`|` at byte {i} of {:?} is not followed by two hex digits", clip(s))),
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("the escapes in {:?} do not decode to UTF-8", clip(s)))
}

/// A value quoted the way VMware writes it (`"`, `|` and control characters as `|XX`).
pub fn quote(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        if c == '"' || c == '|' || (c as u32) < 0x20 {
            s.push_str(&format!("|{:02X}", c as u32));
        } else {
            s.push(c);
        }
    }
    s.push('"');
    s
}

fn clip(s: &str) -> String {
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s.to_string()
    }
}

/// True for the values VMware reads as "yes" (`TRUE`, `true`, `yes`, `1`, in any case).
pub fn truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "yes" | "1" | "on")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_reading_and_exact_rewriting() {
        let text = "\u{feff}.encoding = \"UTF-8\"\r\n# a comment\r\n\r\ndisplayName=\"My |22VM|22\"\r\nSCSI0:0.FileName = vm.vmdk\r\nscsi0:0.fileName = \"second.vmdk\"  # later wins\r\nmemsize = 1024 # MB\r\n";
        let mut l = Lines::parse(text, Path::new("vm.vmx")).unwrap();
        assert_eq!(l.get("displayname"), Some("My \"VM\""));
        assert_eq!(l.get("scsi0:0.filename"), Some("second.vmdk"));
        assert_eq!(l.get("memsize"), Some("1024"));
        assert_eq!(l.line_of("scsi0:0.fileName"), 6);
        assert_eq!(l.to_text(), text.trim_start_matches('\u{feff}'));
        l.set("scsi0:0.fileName", "new|disk.vmdk");
        let out = l.to_text();
        assert!(out.contains("SCSI0:0.FileName = \"new|7Cdisk.vmdk\"\r\n"), "{out}");
        assert!(out.contains("memsize = 1024 # MB\r\n"), "{out}");
        let back = Lines::parse(&out, Path::new("vm.vmx")).unwrap();
        assert_eq!(back.get("scsi0:0.filename"), Some("new|disk.vmdk"));
    }

    #[test]
    fn bad_lines_name_the_line() {
        for (text, line) in [("a = 1\njunk line\n", 2), ("x = \"open\n", 1), ("a b = 1\n", 1), ("v = \"|zz\"\n", 1)] {
            match Lines::parse(text, Path::new("c")) {
                Err(Error::Config { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }
}
