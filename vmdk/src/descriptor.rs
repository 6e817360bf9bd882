//! The text descriptor: parsed leniently, written canonically.
//!
//! Reading follows VMware's rule that the contents are not case-sensitive: keys, `createType` values
//! and extent types match in any case, lines may end in CRLF, comments may appear anywhere, `=` may
//! have spaces around it and values may be quoted or not. Unknown keys are kept in order.
//!
//! Writing produces the one layout that qemu-img, VirtualBox and VMware all accept (see the fact
//! sheet's qemu parser traps): a `# Disk DescriptorFile` first line, `version=` first, header keys with
//! no spaces around `=`, `CID=` directly before `parentCID=`, `# Extent description` directly before
//! the extent lines (never a blank line), then the disk database with `ddb.key = "value"` lines.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{Error, Result};

/// What kind of file a link was opened from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// A text descriptor naming extent files.
    Descriptor,
    /// A hosted sparse or streamOptimized file with its descriptor embedded.
    Embedded,
    /// A bare sparse, COWD or seSparse extent with no descriptor.
    BareExtent,
    /// A plain raw image.
    Raw,
}

/// Largest descriptor we read (qemu's limit for separate descriptors is 1 MiB − 1).
pub const MAX_DESCRIPTOR_BYTES: usize = 1 << 20;
/// Largest number of extent lines we accept.
pub const MAX_EXTENTS: usize = 4096;
/// Largest capacity a descriptor may declare: 2^55 − 1 sectors keeps every byte count in a `u64`
/// (2^55 sectors would be exactly 2^64 bytes).
pub const MAX_SECTORS: u64 = (1 << 55) - 1;

/// The `createType` of a descriptor. Every value in the fact sheet is recognized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateType {
    /// One hosted sparse extent with the descriptor embedded.
    MonolithicSparse,
    /// One flat extent plus a separate descriptor.
    MonolithicFlat,
    /// Hosted sparse extents of at most 2 GB.
    TwoGbMaxExtentSparse,
    /// Flat extents of at most 2 GB.
    TwoGbMaxExtentFlat,
    /// Compressed sparse extent with markers (OVF).
    StreamOptimized,
    /// Any mix of extents.
    Custom,
    /// Backed by a whole host disk.
    FullDevice,
    /// Backed by selected partitions of a host disk.
    PartitionedDevice,
    /// ESXi flat disk (thin, zeroedthick or eagerzeroedthick).
    Vmfs,
    /// ESXi preallocated (spec name).
    VmfsPreallocated,
    /// ESXi eager-zeroed thick (spec name).
    VmfsEagerZeroedThick,
    /// ESXi thin (spec name).
    VmfsThin,
    /// ESXi non-zeroed preallocated (deprecated).
    VmfsThick,
    /// ESXi COWD delta (redo log).
    VmfsSparse,
    /// ESXi space-efficient sparse delta.
    SeSparse,
    /// Virtual-mode RDM (`vmfsRawDeviceMap`, short form `vmfsRDM`).
    VmfsRawDeviceMap,
    /// Physical-mode RDM (`vmfsPassthroughRawDeviceMap`, short form `vmfsRDMP`).
    VmfsPassthroughRawDeviceMap,
    /// Raw ESXi device.
    VmfsRaw,
    /// A value not in the fact sheet, kept as written.
    Other(String),
}

impl CreateType {
    const NAMES: &'static [(&'static str, CreateType)] = &[
        ("monolithicSparse", CreateType::MonolithicSparse),
        ("monolithicFlat", CreateType::MonolithicFlat),
        ("twoGbMaxExtentSparse", CreateType::TwoGbMaxExtentSparse),
        ("2GbMaxExtentSparse", CreateType::TwoGbMaxExtentSparse),
        ("twoGbMaxExtentFlat", CreateType::TwoGbMaxExtentFlat),
        ("2GbMaxExtentFlat", CreateType::TwoGbMaxExtentFlat),
        ("streamOptimized", CreateType::StreamOptimized),
        ("custom", CreateType::Custom),
        ("fullDevice", CreateType::FullDevice),
        ("partitionedDevice", CreateType::PartitionedDevice),
        ("vmfs", CreateType::Vmfs),
        ("vmfsPreallocated", CreateType::VmfsPreallocated),
        ("vmfsEagerZeroedThick", CreateType::VmfsEagerZeroedThick),
        ("vmfsThin", CreateType::VmfsThin),
        ("vmfsThick", CreateType::VmfsThick),
        ("vmfsSparse", CreateType::VmfsSparse),
        ("seSparse", CreateType::SeSparse),
        ("vmfsSeSparse", CreateType::SeSparse),
        ("vmfsRawDeviceMap", CreateType::VmfsRawDeviceMap),
        ("vmfsRDM", CreateType::VmfsRawDeviceMap),
        ("vmfsPassthroughRawDeviceMap", CreateType::VmfsPassthroughRawDeviceMap),
        ("vmfsRDMP", CreateType::VmfsPassthroughRawDeviceMap),
        ("vmfsRaw", CreateType::VmfsRaw),
    ];

    /// Parses a value, ignoring case.
    pub fn parse(s: &str) -> CreateType {
        Self::NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| CreateType::Other(s.to_string()))
    }

    /// The canonical spelling.
    pub fn as_str(&self) -> &str {
        match self {
            CreateType::Other(s) => s,
            t => Self::NAMES.iter().find(|(_, x)| x == t).map(|(n, _)| *n).unwrap_or("custom"),
        }
    }
}

impl std::fmt::Display for CreateType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Access mode of an extent line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `RW`
    ReadWrite,
    /// `RDONLY`
    ReadOnly,
    /// `NOACCESS`
    NoAccess,
}

impl Access {
    fn parse(s: &str) -> Option<Access> {
        match s.to_ascii_uppercase().as_str() {
            "RW" => Some(Access::ReadWrite),
            "RDONLY" => Some(Access::ReadOnly),
            "NOACCESS" => Some(Access::NoAccess),
            _ => None,
        }
    }

    /// The canonical spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::ReadWrite => "RW",
            Access::ReadOnly => "RDONLY",
            Access::NoAccess => "NOACCESS",
        }
    }
}

/// The type of an extent line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtentType {
    /// Raw file or device, with an optional sector offset.
    Flat,
    /// Hosted sparse (`KDMV`; qemu also accepts COWD here).
    Sparse,
    /// No file; reads return zeros.
    Zero,
    /// Flat file on VMFS.
    Vmfs,
    /// COWD redo log.
    VmfsSparse,
    /// seSparse delta.
    SeSparse,
    /// RDM mapping file (both modes).
    VmfsRdm,
    /// Raw ESXi device.
    VmfsRaw,
    /// A type not in the fact sheet, kept as written.
    Other(String),
}

impl ExtentType {
    /// Parses a value, ignoring case.
    pub fn parse(s: &str) -> ExtentType {
        match s.to_ascii_uppercase().as_str() {
            "FLAT" => ExtentType::Flat,
            "SPARSE" => ExtentType::Sparse,
            "ZERO" => ExtentType::Zero,
            "VMFS" => ExtentType::Vmfs,
            "VMFSSPARSE" => ExtentType::VmfsSparse,
            "SESPARSE" => ExtentType::SeSparse,
            "VMFSRDM" => ExtentType::VmfsRdm,
            "VMFSRAW" => ExtentType::VmfsRaw,
            _ => ExtentType::Other(s.to_string()),
        }
    }

    /// The canonical spelling.
    pub fn as_str(&self) -> &str {
        match self {
            ExtentType::Flat => "FLAT",
            ExtentType::Sparse => "SPARSE",
            ExtentType::Zero => "ZERO",
            ExtentType::Vmfs => "VMFS",
            ExtentType::VmfsSparse => "VMFSSPARSE",
            ExtentType::SeSparse => "SESPARSE",
            ExtentType::VmfsRdm => "VMFSRDM",
            ExtentType::VmfsRaw => "VMFSRAW",
            ExtentType::Other(s) => s,
        }
    }
}

/// One extent line: `ACCESS SIZE TYPE ["FILENAME" [OFFSET]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLine {
    /// Access mode.
    pub access: Access,
    /// Size in sectors.
    pub sectors: u64,
    /// Extent type.
    pub kind: ExtentType,
    /// File name as written (relative to the descriptor's folder unless absolute); `None` for ZERO.
    pub file: Option<String>,
    /// Sector offset inside the file (FLAT and device extents).
    pub offset: Option<u64>,
    /// Further fields some writers add (partition UUID, device identifier), kept as written.
    pub extra: Vec<String>,
}

/// A header or database entry as read: the key as written, the value unquoted, and whether it was
/// quoted (so unknown keys are written back the way they came).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Key as written.
    pub key: String,
    /// Value without quotes.
    pub value: String,
    /// Whether the value was quoted.
    pub quoted: bool,
}

/// A parsed descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// `version=` (1, or 3 with change tracking).
    pub version: u32,
    /// `encoding=`, if present.
    pub encoding: Option<String>,
    /// Content ID.
    pub cid: u32,
    /// Parent content ID (`0xffffffff` = no parent).
    pub parent_cid: u32,
    /// `createType`.
    pub create_type: CreateType,
    /// `parentFileNameHint`, for delta links.
    pub parent_file_name_hint: Option<String>,
    /// Other header keys (`isNativeSnapshot`, `changeTrackPath`, unknown ones), in order.
    pub header_extra: Vec<Entry>,
    /// Extent lines in disk order.
    pub extents: Vec<ExtentLine>,
    /// `ddb.*` entries in order; look up with [`Descriptor::ddb`].
    pub ddb: Vec<Entry>,
}

/// `parentCID` value meaning "no parent".
pub const NO_PARENT_CID: u32 = 0xffff_ffff;

impl Descriptor {
    /// A new descriptor with no extents and no database entries.
    pub fn new(create_type: CreateType, cid: u32) -> Descriptor {
        Descriptor {
            version: 1,
            encoding: Some("UTF-8".into()),
            cid,
            parent_cid: NO_PARENT_CID,
            create_type,
            parent_file_name_hint: None,
            header_extra: Vec::new(),
            extents: Vec::new(),
            ddb: Vec::new(),
        }
    }

    /// Total size of all extents, in sectors.
    pub fn total_sectors(&self) -> u64 {
        self.extents.iter().map(|e| e.sectors).sum()
    }

    /// Looks up a `ddb.` entry by name (with or without the `ddb.` prefix), ignoring case.
    pub fn ddb(&self, name: &str) -> Option<&str> {
        let name = name.strip_prefix("ddb.").unwrap_or(name);
        self.ddb.iter().find(|e| e.key.len() > 4 && e.key[4..].eq_ignore_ascii_case(name)).map(|e| e.value.as_str())
    }

    /// Sets (or adds) a `ddb.` entry.
    pub fn set_ddb(&mut self, name: &str, value: impl Into<String>) {
        let name = name.strip_prefix("ddb.").unwrap_or(name);
        let value = value.into();
        if let Some(e) = self.ddb.iter_mut().find(|e| e.key.len() > 4 && e.key[4..].eq_ignore_ascii_case(name)) {
            e.value = value;
        } else {
            self.ddb.push(Entry { key: format!("ddb.{name}"), value, quoted: true });
        }
    }

    /// Removes a `ddb.` entry.
    pub fn remove_ddb(&mut self, name: &str) {
        let name = name.strip_prefix("ddb.").unwrap_or(name);
        self.ddb.retain(|e| !(e.key.len() > 4 && e.key[4..].eq_ignore_ascii_case(name)));
    }

    /// Looks up an extra header key, ignoring case.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.header_extra.iter().find(|e| e.key.eq_ignore_ascii_case(key)).map(|e| e.value.as_str())
    }

    /// Sets the CID and keeps `ddb.longContentID` (whose last 8 characters are the CID) in step.
    pub fn set_cid(&mut self, cid: u32) {
        self.cid = cid;
        if let Some(long) = self.ddb("longContentID") {
            let keep: String = long.chars().take(24).collect();
            let new = if keep.len() == 24 && keep.chars().all(|c| c.is_ascii_hexdigit()) {
                format!("{keep}{cid:08x}")
            } else {
                format!("{:024x}{cid:08x}", 0)
            };
            self.set_ddb("longContentID", new);
        }
    }

    /// Parses descriptor text. `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Descriptor> {
        if text.len() > MAX_DESCRIPTOR_BYTES {
            return Err(Error::Descriptor {
                path: path.into(),
                line: 0,
                what: format!("descriptor is {} bytes; at most {MAX_DESCRIPTOR_BYTES} are accepted", text.len()),
            });
        }
        let err = |line: usize, what: String| Error::Descriptor { path: path.into(), line, what };
        // Descriptors are often NUL-padded to a sector (qemu) or to their embedded area.
        let text = text.split('\0').next().unwrap_or("");
        // Windows editors may put a UTF-8 byte-order mark in front.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut d = Descriptor::new(CreateType::Other(String::new()), 0);
        d.encoding = None;
        let mut saw_version = false;
        let mut saw_cid = false;
        let mut saw_create_type = false;
        for (i, raw) in text.split('\n').enumerate() {
            let lineno = i + 1;
            let line = raw.trim_end_matches('\r').trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // Extent line?
            let mut words = line.split_ascii_whitespace();
            let first = words.next().unwrap_or("");
            if let Some(access) = Access::parse(first) {
                if d.extents.len() >= MAX_EXTENTS {
                    return Err(err(lineno, format!("more than {MAX_EXTENTS} extents")));
                }
                d.extents.push(parse_extent(access, line[first.len()..].trim_start()).map_err(|w| err(lineno, w))?);
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(err(lineno, format!("expected `key=value` or an extent line, found {:?}", clip(line))));
            };
            let key = k.trim();
            let (value, quoted) = unquote(v.trim());
            if key.is_empty() {
                return Err(err(lineno, "empty key".into()));
            }
            let lower = key.to_ascii_lowercase();
            if lower.starts_with("ddb.") {
                // Database values are always written quoted, so record them that way (keeps the
                // canonical writer's output parsing back to an equal descriptor).
                d.ddb.push(Entry { key: key.to_string(), value: value.to_string(), quoted: true });
                continue;
            }
            match lower.as_str() {
                "version" => {
                    d.version = value.parse().map_err(|_| err(lineno, format!("version {value:?} is not a number")))?;
                    saw_version = true;
                }
                "encoding" => d.encoding = Some(value.to_string()),
                "cid" => {
                    d.cid = parse_hex(value).ok_or_else(|| err(lineno, format!("CID {value:?} is not hexadecimal")))?;
                    saw_cid = true;
                }
                "parentcid" => {
                    d.parent_cid = parse_hex(value)
                        .ok_or_else(|| err(lineno, format!("parentCID {value:?} is not hexadecimal")))?
                }
                "createtype" => {
                    d.create_type = CreateType::parse(value);
                    saw_create_type = true;
                }
                "parentfilenamehint" => d.parent_file_name_hint = Some(value.to_string()),
                _ => {
                    if let Some(known) = damaged_key(key) {
                        return Err(err(
                            lineno,
                            format!("key {key:?} looks like a damaged {known:?} (expected `{known}=`); refusing to guess what it meant"),
                        ));
                    }
                    d.header_extra.push(Entry { key: key.to_string(), value: value.to_string(), quoted })
                }
            }
        }
        if !saw_version {
            return Err(err(0, "no `version=` line: not a VMDK descriptor".into()));
        }
        if !saw_create_type {
            return Err(err(0, "no `createType=` line".into()));
        }
        if !saw_cid {
            // Tolerated: some hand-written descriptors leave it out. A fresh one is made on first write.
            d.cid = NO_PARENT_CID;
        }
        let mut total: u64 = 0;
        for e in &d.extents {
            total = total
                .checked_add(e.sectors)
                .filter(|t| *t <= MAX_SECTORS)
                .ok_or_else(|| err(0, format!("extents add up to more than {MAX_SECTORS} sectors")))?;
        }
        Ok(d)
    }

    /// Writes the canonical text.
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(1024);
        s.push_str("# Disk DescriptorFile\n");
        let _ = writeln!(s, "version={}", self.version);
        if let Some(enc) = &self.encoding {
            let _ = writeln!(s, "encoding=\"{enc}\"");
        }
        let _ = writeln!(s, "CID={:08x}", self.cid);
        let _ = writeln!(s, "parentCID={:08x}", self.parent_cid);
        let (native, rest): (Vec<&Entry>, Vec<&Entry>) =
            self.header_extra.iter().partition(|e| e.key.eq_ignore_ascii_case("isNativeSnapshot"));
        for e in native {
            write_header_entry(&mut s, e);
        }
        let _ = writeln!(s, "createType=\"{}\"", self.create_type.as_str());
        if let Some(h) = &self.parent_file_name_hint {
            let _ = writeln!(s, "parentFileNameHint=\"{h}\"");
        }
        for e in rest {
            write_header_entry(&mut s, e);
        }
        s.push_str("\n# Extent description\n");
        for e in &self.extents {
            let _ = write!(s, "{} {} {}", e.access.as_str(), e.sectors, e.kind.as_str());
            if let Some(f) = &e.file {
                let _ = write!(s, " \"{f}\"");
                if let Some(off) = e.offset {
                    let _ = write!(s, " {off}");
                }
                for x in &e.extra {
                    let _ = write!(s, " {x}");
                }
            }
            s.push('\n');
        }
        s.push_str("\n# The Disk Data Base\n#DDB\n\n");
        for e in &self.ddb {
            let _ = writeln!(s, "{} = \"{}\"", e.key, e.value);
        }
        s
    }
}

fn write_header_entry(s: &mut String, e: &Entry) {
    if e.quoted {
        let _ = writeln!(s, "{}=\"{}\"", e.key, e.value);
    } else {
        let _ = writeln!(s, "{}={}", e.key, e.value);
    }
}

fn clip(s: &str) -> String {
    s.chars().take(60).collect()
}

fn unquote(v: &str) -> (&str, bool) {
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        (&v[1..v.len() - 1], true)
    } else if let Some(rest) = v.strip_prefix('"') {
        // Unterminated quote: take the rest as the value.
        (rest, true)
    } else {
        (v, false)
    }
}

fn parse_hex(v: &str) -> Option<u32> {
    let v = v.trim();
    let v = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")).unwrap_or(v);
    if v.is_empty() || v.len() > 8 {
        return None;
    }
    u32::from_str_radix(v, 16).ok()
}

fn parse_u64(s: &str, what: &str) -> std::result::Result<u64, String> {
    s.parse::<u64>().map_err(|_| format!("{what} {s:?} is not a number"))
}

fn parse_extent(access: Access, rest: &str) -> std::result::Result<ExtentLine, String> {
    let mut it = rest.splitn(2, |c: char| c.is_ascii_whitespace());
    let size = it.next().unwrap_or("");
    let sectors = parse_u64(size, "extent size")?;
    if sectors > MAX_SECTORS {
        return Err(format!("extent size {sectors} sectors is too large"));
    }
    let rest = it.next().unwrap_or("").trim_start();
    let mut it = rest.splitn(2, |c: char| c.is_ascii_whitespace());
    let kind_s = it.next().unwrap_or("");
    if kind_s.is_empty() {
        return Err("extent line has no type".into());
    }
    let kind = ExtentType::parse(kind_s);
    let rest = it.next().unwrap_or("").trim();
    let (file, tail) = if rest.is_empty() {
        (None, "")
    } else if let Some(q) = rest.strip_prefix('"') {
        let end = q.find('"').ok_or("extent file name has no closing quote")?;
        (Some(q[..end].to_string()), q[end + 1..].trim())
    } else {
        let mut it = rest.splitn(2, |c: char| c.is_ascii_whitespace());
        let name = it.next().unwrap_or("");
        if name.contains('"') {
            // Nothing escapes a quote in a file name, so such a name could not be written back.
            return Err(format!("extent file name {name:?} contains a quote"));
        }
        (Some(name.to_string()), it.next().unwrap_or("").trim())
    };
    let mut tail_words = tail.split_ascii_whitespace();
    let offset = match tail_words.next() {
        Some(w) => Some(parse_u64(w, "extent offset")?),
        None => None,
    };
    if offset.is_some_and(|o| o > MAX_SECTORS) {
        return Err("extent offset is too large".into());
    }
    let extra = tail_words.map(str::to_string).collect();
    if kind != ExtentType::Zero && file.is_none() {
        return Err(format!("{} extent line has no file name", kind.as_str()));
    }
    Ok(ExtentLine { access, sectors, kind, file, offset, extra })
}

/// Largest byte offset a file can have (`off_t` is a signed 64-bit count): a disk's capacity, and
/// so every flat extent, must fit below it.
pub const MAX_FILE_BYTES: u64 = i64::MAX as u64;

/// Refuses a disk file name that a descriptor cannot carry, before anything is created.
///
/// The descriptor names a disk's files by the disk's own name (`"NAME-flat.vmdk"`,
/// `"NAME-s001.vmdk"`, `"NAME-rdm.vmdk"`, the file itself for an embedded descriptor), in double
/// quotes on one line, with nothing to escape a quote; so the name must be valid UTF-8 and hold no
/// `"` and no control character (a newline would split the line). A path without a file name
/// (`.`, `..`, `/`) names no disk file. Errors are [`Error::InvalidArgument`] naming the character.
pub fn check_file_name(path: &Path) -> Result<()> {
    let Some(os) = path.file_name() else {
        return Err(Error::InvalidArgument(format!("{} is not a file path (it names no disk file)", path.display())));
    };
    let name = os.to_str().ok_or_else(|| {
        use std::os::unix::ffi::OsStrExt;
        let bytes = os.as_bytes();
        let at = std::str::from_utf8(bytes).err().map_or(0, |e| e.valid_up_to());
        Error::InvalidArgument(format!(
            "file name {:?} is not valid UTF-8 (byte {:#04x} at position {at}): a descriptor could not name it",
            os.to_string_lossy(),
            bytes.get(at).copied().unwrap_or(0)
        ))
    })?;
    match name.char_indices().find(|&(_, c)| c == '"' || c.is_control()) {
        None => Ok(()),
        Some((at, c)) => Err(Error::InvalidArgument(format!(
            "file name {name:?} contains {} at position {at}: a descriptor names its files in double quotes on one line and could not be read back",
            describe_char(c)
        ))),
    }
}

/// `'"' (U+0022)`, `a newline (U+000A)`, `a control character (U+0007)`.
fn describe_char(c: char) -> String {
    match c {
        '"' => "a double quote '\"' (U+0022)".to_string(),
        '\n' => "a newline (U+000A)".to_string(),
        '\r' => "a carriage return (U+000D)".to_string(),
        '\t' => "a tab (U+0009)".to_string(),
        c => format!("a control character (U+{:04X})", c as u32),
    }
}

/// The header keys VMware writes, in their canonical spelling.
pub const KNOWN_HEADER_KEYS: &[&str] = &[
    "version",
    "encoding",
    "CID",
    "parentCID",
    "createType",
    "parentFileNameHint",
    "isNativeSnapshot",
    "changeTrackPath",
];

/// The known header key that `key` is a damaged spelling of, if any: one changed character for the
/// short `CID` (same length), one edit for keys up to 5 characters, up to two (a transposition
/// counts as one) for longer ones. An exact match (any case) is not damage.
pub fn damaged_key(key: &str) -> Option<&'static str> {
    let k = key.trim().to_ascii_lowercase();
    if KNOWN_HEADER_KEYS.iter().any(|n| n.eq_ignore_ascii_case(&k)) {
        return None;
    }
    KNOWN_HEADER_KEYS.iter().copied().find(|n| {
        let n = n.to_ascii_lowercase();
        let d = edit_distance(k.as_bytes(), n.as_bytes());
        match n.len() {
            0..=3 => d == 1 && k.chars().count() == n.len(),
            4..=5 => d == 1,
            _ => d <= 2,
        }
    })
}

/// Optimal-string-alignment distance (insertions, deletions, substitutions and adjacent
/// transpositions); inputs are short keys.
fn edit_distance(a: &[u8], b: &[u8]) -> usize {
    if a.len().abs_diff(b.len()) > 2 {
        return 3; // more than any threshold used
    }
    let (n, m) = (a.len(), b.len());
    let mut d = vec![vec![0usize; m + 1]; n + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=n {
        for j in 1..=m {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[n][m]
}

/// How many distinct marks of a text descriptor the start of `bytes` (up to the first NUL, at most
/// 4096 bytes) carries: the `# Disk DescriptorFile` comment, a `version` key, a `createType` key
/// (either possibly damaged), a `CID` or `parentCID` key, an extent line (`RW 2048 SPARSE …`), a
/// `ddb.` key. Two or more mean the text is a descriptor even when [`looks_like_descriptor`] says
/// no (its first key is damaged): it is then parsed, and the parser names the damaged line.
pub fn descriptor_evidence(bytes: &[u8]) -> usize {
    let head = &bytes[..bytes.len().min(4096)];
    let end = head.iter().position(|&b| b == 0).unwrap_or(head.len());
    let text = String::from_utf8_lossy(&head[..end]);
    let mut marks = [false; 6];
    for raw in text.split('\n') {
        let line = raw.trim_end_matches('\r').trim();
        if let Some(c) = line.strip_prefix('#') {
            let squeezed: String = c.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase();
            marks[0] |= squeezed.starts_with("diskdescriptorfile");
            continue;
        }
        let mut words = line.split_ascii_whitespace();
        if let (Some(a), Some(n), Some(t)) = (words.next(), words.next(), words.next()) {
            if Access::parse(a).is_some()
                && n.parse::<u64>().is_ok()
                && !matches!(ExtentType::parse(t), ExtentType::Other(_))
            {
                marks[4] = true;
                continue;
            }
        }
        let Some((k, _)) = line.split_once('=') else { continue };
        let k = k.trim();
        let known = |n: &str| k.eq_ignore_ascii_case(n) || damaged_key(k) == Some(n);
        marks[1] |= known("version");
        marks[2] |= known("createType");
        marks[3] |= k.eq_ignore_ascii_case("CID") || k.eq_ignore_ascii_case("parentCID");
        marks[5] |= k.len() > 4 && k.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("ddb."));
    }
    marks.iter().filter(|&&m| m).count()
}

/// True if `bytes` look like a text descriptor: after comment and blank lines, the first line is
/// `version=…` (any case, spaces allowed).
pub fn looks_like_descriptor(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(4096)];
    let end = head.iter().position(|&b| b == 0).unwrap_or(head.len());
    first_line_is_version(&String::from_utf8_lossy(&head[..end]))
}

fn first_line_is_version(text: &str) -> bool {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for raw in text.split('\n') {
        let line = raw.trim_end_matches('\r').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        return line.split_once('=').is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("version"));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const ESX: &str = "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=fffffffe\nparentCID=ffffffff\nisNativeSnapshot=\"no\"\ncreateType=\"vmfs\"\n\n# Extent description\nRW 83886080 VMFS \"VM-flat.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = \"lsilogic\"\nddb.thinProvisioned = \"1\"\n";

    #[test]
    fn parses_esx_descriptor() {
        let d = Descriptor::parse(ESX, Path::new("x")).unwrap();
        assert_eq!(d.cid, 0xfffffffe);
        assert_eq!(d.create_type, CreateType::Vmfs);
        assert_eq!(d.extents.len(), 1);
        assert_eq!(d.extents[0].kind, ExtentType::Vmfs);
        assert_eq!(d.extents[0].file.as_deref(), Some("VM-flat.vmdk"));
        assert_eq!(d.ddb("thinprovisioned"), Some("1"));
        assert_eq!(d.header("isnativesnapshot"), Some("no"));
        // Canonical output parses back to the same thing and keeps the ESX key order.
        let t = d.to_text();
        assert_eq!(Descriptor::parse(&t, Path::new("x")).unwrap(), d);
        assert!(t.contains("CID=fffffffe\nparentCID=ffffffff\nisNativeSnapshot=\"no\"\ncreateType=\"vmfs\"\n"));
        assert!(t.contains("# Extent description\nRW 83886080 VMFS \"VM-flat.vmdk\"\n"));
    }

    #[test]
    fn lenient_shapes() {
        let text = "# comment\r\nVERSION = 1\r\ncid = 5523cf8\r\n  # indented comment\r\nParentCID= FFFFFFFF\r\nCreateType = MONOLITHICFLAT\r\nrw 100 flat \"a b.img\" 7\r\nRDONLY 50 zero\r\nNOACCESS 10 Flat c.img\r\nDDB.AdapterType=ide\r\nunknownKey = \"kept\"\r\n";
        let d = Descriptor::parse(text, Path::new("x")).unwrap();
        assert_eq!(d.cid, 0x5523cf8);
        assert_eq!(d.parent_cid, NO_PARENT_CID);
        assert_eq!(d.create_type, CreateType::MonolithicFlat);
        assert_eq!(d.extents.len(), 3);
        assert_eq!(d.extents[0].file.as_deref(), Some("a b.img"));
        assert_eq!(d.extents[0].offset, Some(7));
        assert_eq!(d.extents[1].kind, ExtentType::Zero);
        assert_eq!(d.extents[1].access, Access::ReadOnly);
        assert_eq!(d.extents[2].file.as_deref(), Some("c.img"));
        assert_eq!(d.ddb("adapterType"), Some("ide"));
        assert_eq!(d.header("unknownkey"), Some("kept"));
        assert!(d.to_text().contains("unknownKey=\"kept\"\n"));
        assert_eq!(d.total_sectors(), 160);
    }

    #[test]
    fn every_fact_sheet_type_is_recognized() {
        for n in [
            "monolithicSparse",
            "monolithicFlat",
            "twoGbMaxExtentSparse",
            "twoGbMaxExtentFlat",
            "streamOptimized",
            "custom",
            "fullDevice",
            "partitionedDevice",
            "vmfs",
            "vmfsPreallocated",
            "vmfsEagerZeroedThick",
            "vmfsThin",
            "vmfsThick",
            "vmfsSparse",
            "seSparse",
            "vmfsRDM",
            "vmfsRawDeviceMap",
            "vmfsRDMP",
            "vmfsPassthroughRawDeviceMap",
            "vmfsRaw",
            "2GbMaxExtentFlat",
        ] {
            assert!(!matches!(CreateType::parse(&n.to_uppercase()), CreateType::Other(_)), "{n}");
        }
        for n in ["FLAT", "SPARSE", "ZERO", "VMFS", "VMFSSPARSE", "SESPARSE", "VMFSRDM", "VMFSRAW"] {
            assert!(!matches!(ExtentType::parse(&n.to_lowercase()), ExtentType::Other(_)), "{n}");
        }
    }

    #[test]
    fn bad_lines_are_errors_with_line_numbers() {
        let e =
            Descriptor::parse("version=1\ncreateType=\"vmfs\"\nRW x VMFS \"a\"\n", Path::new("d.vmdk")).unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = Descriptor::parse("version=1\ncreateType=\"vmfs\"\nRW 5 VMFS\n", Path::new("d.vmdk")).unwrap_err();
        assert!(e.to_string().contains("no file name"), "{e}");
        assert!(Descriptor::parse("createType=\"vmfs\"\n", Path::new("d")).is_err());
        let e = Descriptor::parse(
            "version=1\ncreateType=\"vmfs\"\nRW 36028797018963968 VMFS \"a\"\nRW 36028797018963968 VMFS \"a\"\n",
            Path::new("d"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("too large") || e.to_string().contains("more than"), "{e}");
    }

    #[test]
    fn long_content_id_follows_cid() {
        let mut d = Descriptor::new(CreateType::Vmfs, 1);
        d.set_ddb("longContentID", "0123456789abcdef0123456700000001");
        d.set_cid(0xdeadbeef);
        assert_eq!(d.ddb("longContentID"), Some("0123456789abcdef01234567deadbeef"));
    }

    #[test]
    fn file_names_a_descriptor_cannot_carry_are_refused() {
        use std::os::unix::ffi::OsStrExt;
        for ok in ["disk.vmdk", "a b.vmdk", "dir/ünï.vmdk", "/abs/x.vmdk", "it's.vmdk"] {
            check_file_name(Path::new(ok)).unwrap();
        }
        for (bad, says) in [
            ("a\"b.vmdk", "double quote"),
            ("a\nb.vmdk", "newline"),
            ("a\rb.vmdk", "carriage return"),
            ("a\u{7}b.vmdk", "U+0007"),
            ("a\u{85}b.vmdk", "U+0085"),
            (".", "not a file path"),
            ("/", "not a file path"),
            ("x/..", "not a file path"),
        ] {
            let e = check_file_name(Path::new(bad)).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad:?}: {e:?}");
            assert!(e.to_string().contains(says), "{bad:?}: {e}");
        }
        let e = check_file_name(Path::new(std::ffi::OsStr::from_bytes(b"ab\xffc.vmdk"))).unwrap_err();
        assert!(e.to_string().contains("not valid UTF-8") && e.to_string().contains("0xff at position 2"), "{e}");
        // A name that passes makes a descriptor that reads back.
        let mut d = Descriptor::new(CreateType::Vmfs, 1);
        d.extents.push(ExtentLine {
            access: Access::ReadWrite,
            sectors: 8,
            kind: ExtentType::Vmfs,
            file: Some("it's ünï-flat.vmdk".into()),
            offset: None,
            extra: vec![],
        });
        assert_eq!(Descriptor::parse(&d.to_text(), Path::new("x")).unwrap(), d);
    }

    #[test]
    fn damaged_keys_are_named() {
        for (bad, known) in [
            ("versoin", "version"),
            ("vers1on", "version"),
            ("createTpye", "createType"),
            ("CreateTyp", "createType"),
            ("CJD", "CID"),
            ("parentCIT", "parentCID"),
            ("parentFileNameHnit", "parentFileNameHint"),
        ] {
            assert_eq!(damaged_key(bad), Some(known), "{bad}");
            let text = format!("version=1\nCID=1\ncreateType=\"vmfs\"\n{bad}=1\nRW 8 ZERO\n");
            let e = Descriptor::parse(&text, Path::new("d.vmdk")).unwrap_err();
            assert!(e.to_string().contains("line 4") && e.to_string().contains(known), "{e}");
        }
        for fine in ["version", "VERSION", "cid", "uuid", "ID", "CIDs2", "changeTrackPath", "myKey", "adapter"] {
            assert_eq!(damaged_key(fine), None, "{fine}");
        }
    }

    #[test]
    fn evidence_of_a_descriptor() {
        let good =
            b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\ncreateType=\"vmfs\"\nRW 8 VMFS \"x\"\nddb.a = \"b\"\n";
        assert_eq!(descriptor_evidence(good), 6);
        let damaged = b"# Disk DescriptorFile\nversoin=1\nCID=fffffffe\n";
        assert!(!looks_like_descriptor(damaged));
        assert_eq!(descriptor_evidence(damaged), 3);
        assert!(descriptor_evidence(b"hello world\nRW is a word\nkey=value\n") < 2);
        assert!(descriptor_evidence(&[0u8; 512]) == 0);
    }

    #[test]
    fn detects_descriptors() {
        assert!(looks_like_descriptor(b"# Disk DescriptorFile\nversion=1\n"));
        assert!(looks_like_descriptor(b"\r\n# x\r\nVersion = 1\r\n"));
        assert!(looks_like_descriptor("\u{feff}# Disk DescriptorFile\r\nversion=1\r\n".as_bytes()));
        assert!(!looks_like_descriptor(b"\x00\x01garbage"));
        assert!(!looks_like_descriptor(b"hello=1\nversion=1\n"));
    }
}
