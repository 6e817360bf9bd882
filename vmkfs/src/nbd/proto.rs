//! The NBD wire format, as pure functions over bytes: no I/O.
//!
//! What the server needs of the fixed-newstyle protocol (NetworkBlockDevice `doc/proto.md`): the
//! greeting, option headers and the data of the options it answers (`NBD_OPT_GO`/`INFO`,
//! `LIST_META_CONTEXT`/`SET_META_CONTEXT`), option replies, transmission requests, simple replies
//! and structured reply chunks. Every integer is big-endian. Parsers take the bytes a header
//! announced and check every length inside them against what is there and against the limits
//! below, so nothing is allocated from an unchecked field; a bad input is a [`ProtoError`] saying
//! which field, where, and what was expected.

/// `NBDMAGIC`: the first 8 bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle magic, also the magic of every option the client sends.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of option replies.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of transmission requests.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of simple replies.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of structured reply chunks.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Size of a transmission request header.
pub const REQUEST_LEN: usize = 28;
/// Size of an option header (magic, option, length).
pub const OPTION_HEADER_LEN: usize = 16;
/// Longest string (export name, context name, query) accepted, as the protocol allows.
pub const MAX_STRING: usize = 4096;
/// Largest option payload the server reads into memory; longer ones are skipped and refused.
pub const MAX_OPTION_DATA: u32 = 64 << 10;

/// Handshake flags (server).
pub mod handshake {
    /// `NBD_FLAG_FIXED_NEWSTYLE`.
    pub const FIXED_NEWSTYLE: u16 = 1 << 0;
    /// `NBD_FLAG_NO_ZEROES`.
    pub const NO_ZEROES: u16 = 1 << 1;
}

/// Client flags.
pub mod client {
    /// `NBD_FLAG_C_FIXED_NEWSTYLE`.
    pub const FIXED_NEWSTYLE: u32 = 1 << 0;
    /// `NBD_FLAG_C_NO_ZEROES`.
    pub const NO_ZEROES: u32 = 1 << 1;
}

/// Transmission flags.
pub mod tflags {
    /// `NBD_FLAG_HAS_FLAGS` (always set).
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// `NBD_FLAG_READ_ONLY`.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_FLAG_SEND_FLUSH`.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_FLAG_SEND_FUA`.
    pub const SEND_FUA: u16 = 1 << 3;
    /// `NBD_FLAG_SEND_TRIM`.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `NBD_FLAG_SEND_WRITE_ZEROES`.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// `NBD_FLAG_SEND_DF`.
    pub const SEND_DF: u16 = 1 << 7;
    /// `NBD_FLAG_CAN_MULTI_CONN`.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
}

/// Option types.
pub mod opt {
    /// `NBD_OPT_EXPORT_NAME`.
    pub const EXPORT_NAME: u32 = 1;
    /// `NBD_OPT_ABORT`.
    pub const ABORT: u32 = 2;
    /// `NBD_OPT_LIST`.
    pub const LIST: u32 = 3;
    /// `NBD_OPT_INFO`.
    pub const INFO: u32 = 6;
    /// `NBD_OPT_GO`.
    pub const GO: u32 = 7;
    /// `NBD_OPT_STRUCTURED_REPLY`.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// `NBD_OPT_LIST_META_CONTEXT` (9 in the protocol as qemu and libnbd speak it; early drafts
    /// of the document numbered it 10).
    pub const LIST_META_CONTEXT: u32 = 9;
    /// `NBD_OPT_SET_META_CONTEXT`.
    pub const SET_META_CONTEXT: u32 = 10;
}

/// Option reply types.
pub mod rep {
    /// `NBD_REP_ACK`.
    pub const ACK: u32 = 1;
    /// `NBD_REP_SERVER`.
    pub const SERVER: u32 = 2;
    /// `NBD_REP_INFO`.
    pub const INFO: u32 = 3;
    /// `NBD_REP_META_CONTEXT`.
    pub const META_CONTEXT: u32 = 4;
    /// `NBD_REP_ERR_UNSUP`.
    pub const ERR_UNSUP: u32 = (1 << 31) + 1;
    /// `NBD_REP_ERR_POLICY`.
    pub const ERR_POLICY: u32 = (1 << 31) + 2;
    /// `NBD_REP_ERR_INVALID`.
    pub const ERR_INVALID: u32 = (1 << 31) + 3;
    /// `NBD_REP_ERR_UNKNOWN` (no such export).
    pub const ERR_UNKNOWN: u32 = (1 << 31) + 6;
    /// `NBD_REP_ERR_SHUTDOWN`.
    pub const ERR_SHUTDOWN: u32 = (1 << 31) + 7;
    /// `NBD_REP_ERR_TOO_BIG`.
    pub const ERR_TOO_BIG: u32 = (1 << 31) + 9;
}

/// `NBD_REP_INFO` types.
pub mod info {
    /// `NBD_INFO_EXPORT`: size and transmission flags.
    pub const EXPORT: u16 = 0;
    /// `NBD_INFO_NAME`.
    pub const NAME: u16 = 1;
    /// `NBD_INFO_DESCRIPTION`.
    pub const DESCRIPTION: u16 = 2;
    /// `NBD_INFO_BLOCK_SIZE`.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Command flags.
pub mod cflags {
    /// `NBD_CMD_FLAG_FUA`.
    pub const FUA: u16 = 1 << 0;
    /// `NBD_CMD_FLAG_NO_HOLE`.
    pub const NO_HOLE: u16 = 1 << 1;
    /// `NBD_CMD_FLAG_DF`.
    pub const DF: u16 = 1 << 2;
    /// `NBD_CMD_FLAG_REQ_ONE`.
    pub const REQ_ONE: u16 = 1 << 3;
}

/// Structured reply chunk types and flags.
pub mod chunk {
    /// `NBD_REPLY_FLAG_DONE`.
    pub const FLAG_DONE: u16 = 1 << 0;
    /// `NBD_REPLY_TYPE_NONE`.
    pub const NONE: u16 = 0;
    /// `NBD_REPLY_TYPE_OFFSET_DATA`.
    pub const OFFSET_DATA: u16 = 1;
    /// `NBD_REPLY_TYPE_OFFSET_HOLE`.
    pub const OFFSET_HOLE: u16 = 2;
    /// `NBD_REPLY_TYPE_BLOCK_STATUS`.
    pub const BLOCK_STATUS: u16 = 5;
    /// `NBD_REPLY_TYPE_ERROR`.
    pub const ERROR: u16 = (1 << 15) + 1;
}

/// `base:allocation` states.
pub mod state {
    /// `NBD_STATE_HOLE`.
    pub const HOLE: u32 = 1 << 0;
    /// `NBD_STATE_ZERO`.
    pub const ZERO: u32 = 1 << 1;
    /// `NBD_STATE_DIRTY` (qemu's dirty-bitmap contexts).
    pub const DIRTY: u32 = 1 << 0;
}

/// Error values of replies (the protocol's, which are Linux's errno numbers).
pub mod errno {
    /// `EPERM`: a write to a read-only export.
    pub const EPERM: u32 = 1;
    /// `EIO`.
    pub const EIO: u32 = 5;
    /// `ENOMEM`.
    pub const ENOMEM: u32 = 12;
    /// `EINVAL`.
    pub const EINVAL: u32 = 22;
    /// `ENOSPC`: a write past the end.
    pub const ENOSPC: u32 = 28;
    /// `EOVERFLOW`: a read longer than the server serves in one reply.
    pub const EOVERFLOW: u32 = 75;
    /// `ENOTSUP`.
    pub const ENOTSUP: u32 = 95;
    /// `ESHUTDOWN`: the server is going away.
    pub const ESHUTDOWN: u32 = 108;
}

/// A transmission command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `NBD_CMD_READ` (0).
    Read,
    /// `NBD_CMD_WRITE` (1): `length` bytes of data follow the header.
    Write,
    /// `NBD_CMD_DISC` (2).
    Disconnect,
    /// `NBD_CMD_FLUSH` (3).
    Flush,
    /// `NBD_CMD_TRIM` (4).
    Trim,
    /// `NBD_CMD_WRITE_ZEROES` (6).
    WriteZeroes,
    /// `NBD_CMD_BLOCK_STATUS` (7).
    BlockStatus,
    /// Anything else (`CACHE`, `RESIZE`, unknown): answered with `EINVAL`.
    Other(u16),
}

impl Command {
    /// The command of a type number.
    pub fn from_type(t: u16) -> Command {
        match t {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disconnect,
            3 => Command::Flush,
            4 => Command::Trim,
            6 => Command::WriteZeroes,
            7 => Command::BlockStatus,
            other => Command::Other(other),
        }
    }

    /// The type number.
    pub fn to_type(self) -> u16 {
        match self {
            Command::Read => 0,
            Command::Write => 1,
            Command::Disconnect => 2,
            Command::Flush => 3,
            Command::Trim => 4,
            Command::WriteZeroes => 6,
            Command::BlockStatus => 7,
            Command::Other(t) => t,
        }
    }
}

/// A transmission request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags ([`cflags`]).
    pub flags: u16,
    /// What is asked.
    pub command: Command,
    /// The client's handle, echoed in the reply.
    pub handle: u64,
    /// Byte offset in the export.
    pub offset: u64,
    /// Length in bytes (for `WRITE`, the data that follows).
    pub length: u32,
}

/// An option header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option ([`opt`]).
    pub option: u32,
    /// Length of the option data that follows.
    pub length: u32,
}

/// The data of `NBD_OPT_INFO` and `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// Export name.
    pub name: String,
    /// Information types asked for ([`info`]).
    pub requests: Vec<u16>,
}

/// The data of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaQuery {
    /// Export name.
    pub export: String,
    /// The queries (context names or, for a list, namespace prefixes).
    pub queries: Vec<String>,
}

/// A malformed message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// A magic number is not the one the protocol puts there.
    #[error("{what} at byte {offset}: magic {found:#x}, expected {expected:#x}")]
    BadMagic {
        /// Which message.
        what: &'static str,
        /// Byte offset of the magic in the message.
        offset: usize,
        /// What was found.
        found: u64,
        /// What the protocol requires.
        expected: u64,
    },
    /// A message or a field inside it ends before its stated length.
    #[error("{what} at byte {offset}: {need} bytes needed, {have} present")]
    Truncated {
        /// Which field.
        what: &'static str,
        /// Byte offset of the field.
        offset: usize,
        /// Bytes the field needs.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// A length beyond what the server accepts.
    #[error("{what} at byte {offset}: length {len} exceeds the limit of {max}")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// Byte offset of the length field.
        offset: usize,
        /// The length found.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A string that is not UTF-8 or contains NUL.
    #[error("{what} at byte {offset}: not a NUL-free UTF-8 string")]
    BadString {
        /// Which field.
        what: &'static str,
        /// Byte offset of the string.
        offset: usize,
    },
    /// Bytes left over after the last field.
    #[error("{what}: {extra} bytes after the last field at byte {offset}")]
    Trailing {
        /// Which message.
        what: &'static str,
        /// Where the extra bytes start.
        offset: usize,
        /// How many.
        extra: usize,
    },
    /// The client set flags the server did not offer.
    #[error("client flags {0:#x} include flags the server did not offer")]
    ClientFlags(u32),
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("four bytes"))
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("eight bytes"))
}

/// Parses a request header.
pub fn parse_request(b: &[u8; REQUEST_LEN]) -> Result<Request, ProtoError> {
    let magic = be_u32(b, 0);
    if magic != REQUEST_MAGIC {
        return Err(ProtoError::BadMagic {
            what: "request",
            offset: 0,
            found: magic.into(),
            expected: REQUEST_MAGIC.into(),
        });
    }
    Ok(Request {
        flags: be_u16(b, 4),
        command: Command::from_type(be_u16(b, 6)),
        handle: be_u64(b, 8),
        offset: be_u64(b, 16),
        length: be_u32(b, 24),
    })
}

impl Request {
    /// The request header as a client sends it.
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.to_type().to_be_bytes());
        b[8..16].copy_from_slice(&self.handle.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// Parses an option header.
pub fn parse_option_header(b: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, ProtoError> {
    let magic = be_u64(b, 0);
    if magic != IHAVEOPT {
        return Err(ProtoError::BadMagic { what: "option", offset: 0, found: magic, expected: IHAVEOPT });
    }
    Ok(OptionHeader { option: be_u32(b, 8), length: be_u32(b, 12) })
}

/// Checks the client flags against what the server offered (`handshake` flags).
pub fn check_client_flags(flags: u32, offered: u16) -> Result<bool, ProtoError> {
    let allowed = client::FIXED_NEWSTYLE | if offered & handshake::NO_ZEROES != 0 { client::NO_ZEROES } else { 0 };
    if flags & !allowed != 0 {
        return Err(ProtoError::ClientFlags(flags));
    }
    Ok(flags & client::NO_ZEROES != 0)
}

/// A cursor over option data: every read is checked against what is left.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtoError> {
        let have = self.b.len() - self.at;
        if n > have {
            return Err(ProtoError::Truncated { what, offset: self.at, need: n, have });
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, ProtoError> {
        Ok(be_u16(self.take(2, what)?, 0))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, ProtoError> {
        Ok(be_u32(self.take(4, what)?, 0))
    }

    /// A string preceded by its 32-bit length.
    fn string(&mut self, what: &'static str) -> Result<String, ProtoError> {
        let at = self.at;
        let len = self.u32(what)? as usize;
        if len > MAX_STRING {
            return Err(ProtoError::TooLong { what, offset: at, len: len as u64, max: MAX_STRING as u64 });
        }
        let at = self.at;
        let raw = self.take(len, what)?;
        match std::str::from_utf8(raw) {
            Ok(s) if !s.contains('\0') => Ok(s.to_string()),
            _ => Err(ProtoError::BadString { what, offset: at }),
        }
    }

    fn end(&self, what: &'static str) -> Result<(), ProtoError> {
        match self.b.len() - self.at {
            0 => Ok(()),
            extra => Err(ProtoError::Trailing { what, offset: self.at, extra }),
        }
    }
}

/// The export name of `NBD_OPT_EXPORT_NAME` (the whole option data).
pub fn parse_export_name(b: &[u8]) -> Result<String, ProtoError> {
    if b.len() > MAX_STRING {
        return Err(ProtoError::TooLong {
            what: "export name",
            offset: 0,
            len: b.len() as u64,
            max: MAX_STRING as u64,
        });
    }
    match std::str::from_utf8(b) {
        Ok(s) if !s.contains('\0') => Ok(s.to_string()),
        _ => Err(ProtoError::BadString { what: "export name", offset: 0 }),
    }
}

/// Parses the data of `NBD_OPT_INFO` / `NBD_OPT_GO`: name, count, information types.
pub fn parse_info_request(b: &[u8]) -> Result<InfoRequest, ProtoError> {
    let mut c = Cursor { b, at: 0 };
    let name = c.string("export name")?;
    let n = c.u16("number of information requests")? as usize;
    let raw = c.take(n * 2, "information requests")?;
    c.end("NBD_OPT_GO/INFO data")?;
    Ok(InfoRequest { name, requests: raw.chunks_exact(2).map(|x| be_u16(x, 0)).collect() })
}

/// Parses the data of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`: export name, query
/// count, queries.
pub fn parse_meta_query(b: &[u8]) -> Result<MetaQuery, ProtoError> {
    let mut c = Cursor { b, at: 0 };
    let export = c.string("export name")?;
    let at = c.at;
    let n = c.u32("number of queries")? as usize;
    // Each query takes at least its 4-byte length: a count beyond that cannot be honest.
    let left = b.len() - c.at;
    if n > left / 4 {
        return Err(ProtoError::TooLong {
            what: "number of queries",
            offset: at,
            len: n as u64,
            max: (left / 4) as u64,
        });
    }
    let mut queries = Vec::with_capacity(n);
    for _ in 0..n {
        queries.push(c.string("query")?);
    }
    c.end("meta context data")?;
    Ok(MetaQuery { export, queries })
}

/// The server's greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn greeting(flags: u16) -> [u8; 18] {
    let mut b = [0u8; 18];
    b[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..18].copy_from_slice(&flags.to_be_bytes());
    b
}

/// An option reply: magic, option, reply type, length, data.
pub fn option_reply(option: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// The data of `NBD_REP_SERVER`: the export name.
pub fn server_entry(name: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len());
    b.extend_from_slice(&(name.len() as u32).to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b
}

/// The data of `NBD_REP_INFO` / `NBD_INFO_EXPORT`: size and transmission flags.
pub fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(12);
    b.extend_from_slice(&info::EXPORT.to_be_bytes());
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b
}

/// The data of `NBD_REP_INFO` with a string (`NBD_INFO_NAME`, `NBD_INFO_DESCRIPTION`).
pub fn info_string(kind: u16, s: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(2 + s.len());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(s.as_bytes());
    b
}

/// The data of `NBD_REP_INFO` / `NBD_INFO_BLOCK_SIZE`: minimum, preferred, maximum.
pub fn info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(14);
    b.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    for v in [min, preferred, max] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b
}

/// The data of `NBD_REP_META_CONTEXT`: the context ID and its name.
pub fn meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len());
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, transmission flags and (unless the client set
/// `NO_ZEROES`) 124 zero bytes.
pub fn export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(134);
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        b.resize(b.len() + 124, 0);
    }
    b
}

/// A simple reply header (its data, for a successful simple `READ`, follows).
pub fn simple_reply(error: u32, handle: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b
}

/// A structured reply chunk header for a payload of `len` bytes.
pub fn chunk_header(flags: u16, kind: u16, handle: u64, len: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b[16..20].copy_from_slice(&len.to_be_bytes());
    b
}

/// A whole `NBD_REPLY_TYPE_ERROR` chunk (final): error, message length, message (cut to fit the
/// protocol's string limit).
pub fn error_chunk(handle: u64, error: u32, message: &str) -> Vec<u8> {
    let mut end = message.len().min(MAX_STRING);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let msg = &message.as_bytes()[..end];
    let mut b = Vec::with_capacity(26 + msg.len());
    b.extend_from_slice(&chunk_header(chunk::FLAG_DONE, chunk::ERROR, handle, (6 + msg.len()) as u32));
    b.extend_from_slice(&error.to_be_bytes());
    b.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    b.extend_from_slice(msg);
    b
}

/// A whole `NBD_REPLY_TYPE_BLOCK_STATUS` chunk: the context ID and its `(length, flags)` extents.
pub fn block_status_chunk(handle: u64, done: bool, context: u32, extents: &[(u32, u32)]) -> Vec<u8> {
    let len = 4 + 8 * extents.len();
    let mut b = Vec::with_capacity(20 + len);
    let flags = if done { chunk::FLAG_DONE } else { 0 };
    b.extend_from_slice(&chunk_header(flags, chunk::BLOCK_STATUS, handle, len as u32));
    b.extend_from_slice(&context.to_be_bytes());
    for &(l, f) in extents {
        b.extend_from_slice(&l.to_be_bytes());
        b.extend_from_slice(&f.to_be_bytes());
    }
    b
}

/// The header and offset of an `NBD_REPLY_TYPE_OFFSET_DATA` chunk carrying `len` bytes of data
/// (which follow).
pub fn offset_data_header(handle: u64, done: bool, offset: u64, len: u32) -> [u8; 28] {
    let mut b = [0u8; 28];
    let flags = if done { chunk::FLAG_DONE } else { 0 };
    b[..20].copy_from_slice(&chunk_header(flags, chunk::OFFSET_DATA, handle, len + 8));
    b[20..28].copy_from_slice(&offset.to_be_bytes());
    b
}

/// A whole `NBD_REPLY_TYPE_OFFSET_HOLE` chunk: `len` bytes at `offset` read as zeros.
pub fn offset_hole_chunk(handle: u64, done: bool, offset: u64, len: u32) -> [u8; 32] {
    let mut b = [0u8; 32];
    let flags = if done { chunk::FLAG_DONE } else { 0 };
    b[..20].copy_from_slice(&chunk_header(flags, chunk::OFFSET_HOLE, handle, 12));
    b[20..28].copy_from_slice(&offset.to_be_bytes());
    b[28..32].copy_from_slice(&len.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn string(s: &str) -> Vec<u8> {
        let mut b = (s.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(s.as_bytes());
        b
    }

    #[test]
    fn a_request_names_its_fields_and_a_bad_magic_is_refused() {
        let r = Request { flags: cflags::FUA, command: Command::Write, handle: 7, offset: 1 << 20, length: 65536 };
        let mut b = r.encode();
        assert_eq!(parse_request(&b), Ok(r));
        b[0] ^= 1;
        assert!(matches!(parse_request(&b), Err(ProtoError::BadMagic { what: "request", offset: 0, .. })));
    }

    #[test]
    fn info_requests_parse_and_lengths_are_checked() {
        let mut b = string("disk.vmdk");
        b.extend_from_slice(&2u16.to_be_bytes());
        b.extend_from_slice(&info::NAME.to_be_bytes());
        b.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
        let r = parse_info_request(&b).unwrap();
        assert_eq!(r, InfoRequest { name: "disk.vmdk".into(), requests: vec![info::NAME, info::BLOCK_SIZE] });
        // One information type short.
        assert!(matches!(
            parse_info_request(&b[..b.len() - 2]),
            Err(ProtoError::Truncated { what: "information requests", need: 4, have: 2, .. })
        ));
        // A name length beyond the data.
        let mut bad = b.clone();
        bad[3] = 200;
        assert!(matches!(parse_info_request(&bad), Err(ProtoError::Truncated { what: "export name", .. })));
        // A name length beyond the protocol's limit.
        let mut huge = b.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(parse_info_request(&huge), Err(ProtoError::TooLong { what: "export name", .. })));
        let mut extra = b.clone();
        extra.push(0);
        assert!(matches!(parse_info_request(&extra), Err(ProtoError::Trailing { extra: 1, .. })));
    }

    #[test]
    fn meta_queries_parse_and_an_impossible_count_is_refused() {
        let mut b = string("");
        b.extend_from_slice(&2u32.to_be_bytes());
        b.extend_from_slice(&string("base:allocation"));
        b.extend_from_slice(&string("qemu:dirty-bitmap:since-base.vmdk"));
        let q = parse_meta_query(&b).unwrap();
        assert_eq!(q.queries, vec!["base:allocation", "qemu:dirty-bitmap:since-base.vmdk"]);
        let mut lie = string("");
        lie.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(parse_meta_query(&lie), Err(ProtoError::TooLong { what: "number of queries", .. })));
        let mut nul = string("");
        nul.extend_from_slice(&1u32.to_be_bytes());
        nul.extend_from_slice(&string("base\0x"));
        assert!(matches!(parse_meta_query(&nul), Err(ProtoError::BadString { what: "query", offset: 12 })));
    }

    #[test]
    fn client_flags_must_be_offered() {
        let offered = handshake::FIXED_NEWSTYLE | handshake::NO_ZEROES;
        assert_eq!(check_client_flags(client::FIXED_NEWSTYLE | client::NO_ZEROES, offered), Ok(true));
        assert_eq!(check_client_flags(client::FIXED_NEWSTYLE, offered), Ok(false));
        assert!(check_client_flags(client::NO_ZEROES, handshake::FIXED_NEWSTYLE).is_err());
        assert!(check_client_flags(1 << 5, offered).is_err());
    }

    #[test]
    fn replies_have_the_documented_layout() {
        let r = option_reply(opt::GO, rep::ACK, &[]);
        assert_eq!(r.len(), 20);
        assert_eq!(be_u64(&r, 0), REPLY_MAGIC);
        assert_eq!(be_u32(&r, 12), rep::ACK);
        let e = error_chunk(9, errno::EINVAL, "bad");
        assert_eq!(be_u32(&e, 0), STRUCTURED_REPLY_MAGIC);
        assert_eq!(be_u16(&e, 6), chunk::ERROR);
        assert_eq!(be_u32(&e, 16), 9);
        assert_eq!(&e[26..], b"bad");
        let s = block_status_chunk(1, true, 3, &[(4096, 0), (8192, 3)]);
        assert_eq!(be_u32(&s, 16), 4 + 16);
        assert_eq!(be_u32(&s, 20), 3);
        assert_eq!((be_u32(&s, 32), be_u32(&s, 36)), (8192, 3));
        assert_eq!(export_name_reply(1, 3, false).len(), 134);
        assert_eq!(export_name_reply(1, 3, true).len(), 10);
    }

    proptest! {
        #[test]
        fn requests_round_trip(flags: u16, t: u16, handle: u64, offset: u64, length: u32) {
            let r = Request { flags, command: Command::from_type(t), handle, offset, length };
            prop_assert_eq!(parse_request(&r.encode()), Ok(r));
            prop_assert_eq!(r.command.to_type(), t);
        }

        #[test]
        fn option_parsers_never_panic_and_never_claim_more_than_given(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(r) = parse_info_request(&data) {
                prop_assert_eq!(4 + r.name.len() + 2 + 2 * r.requests.len(), data.len());
            }
            if let Ok(q) = parse_meta_query(&data) {
                let used: usize = 4 + q.export.len() + 4 + q.queries.iter().map(|s| 4 + s.len()).sum::<usize>();
                prop_assert_eq!(used, data.len());
            }
            let _ = parse_export_name(&data);
        }
    }
}
