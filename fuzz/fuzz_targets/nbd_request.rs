//! The NBD server's message handling: a whole connection fed with arbitrary bytes. The parsers
//! (`vmkfs::nbd::proto`) first see the input as option headers and requests; then, with the low
//! bit of the first byte set, the input follows a valid handshake (structured replies, every
//! metadata context by namespace, `NBD_OPT_GO`), so the rest is transmission requests served by a writable
//! export over a small raw disk. The connection must end (the input ends in EOF) without a
//! panic, and every reply must start with one of the protocol's magics.
#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmkfs::nbd::proto::{self, client, opt, parse_request, Request, REQUEST_LEN};
use vmkfs::nbd::{serve_stream, Export};
use vmkfs::vmdk::OpenOptions;

const DISK_BYTES: u64 = 1 << 20;

fn export() -> &'static Export {
    static EXPORT: OnceLock<Export> = OnceLock::new();
    EXPORT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vmkfs-fuzz-nbd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz folder");
        let disk = dir.join("disk.img");
        std::fs::write(&disk, vec![0x5au8; DISK_BYTES as usize]).expect("fuzz disk");
        let e = Export::open(&disk, &OpenOptions::read(), true).expect("open the fuzz disk");
        // The export keeps the file open: nothing is left behind in the temporary folder.
        let _ = std::fs::remove_dir_all(&dir);
        e
    })
}

fn option(out: &mut Vec<u8>, option: u32, data: &[u8]) {
    out.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// A valid handshake up to transmission.
fn handshake() -> Vec<u8> {
    let mut b = (client::FIXED_NEWSTYLE | client::NO_ZEROES).to_be_bytes().to_vec();
    option(&mut b, opt::STRUCTURED_REPLY, &[]);
    let mut q = 0u32.to_be_bytes().to_vec();
    q.extend_from_slice(&2u32.to_be_bytes());
    for ns in [&b"base:"[..], b"qemu:"] {
        q.extend_from_slice(&(ns.len() as u32).to_be_bytes());
        q.extend_from_slice(ns);
    }
    option(&mut b, opt::SET_META_CONTEXT, &q); // every context

    let mut go = 0u32.to_be_bytes().to_vec();
    go.extend_from_slice(&0u16.to_be_bytes());
    option(&mut b, opt::GO, &go);
    b
}

/// Walks the server's output: every message must start with a known magic and fit. Option
/// replies and structured chunks both have a 20-byte header ending in their payload length; a
/// simple reply (whose `READ` data only the request knows the length of) or the magic-less reply
/// to `NBD_OPT_EXPORT_NAME` ends the walk.
fn check_replies(out: &[u8]) {
    assert!(out.len() >= 18 && out[..8] == proto::NBDMAGIC.to_be_bytes(), "greeting");
    let mut at = 18;
    while at + 20 <= out.len() {
        let m4 = u32::from_be_bytes(out[at..at + 4].try_into().unwrap());
        let m8 = u64::from_be_bytes(out[at..at + 8].try_into().unwrap());
        if m8 != proto::REPLY_MAGIC && m4 != proto::STRUCTURED_REPLY_MAGIC {
            return;
        }
        at += 20 + u32::from_be_bytes(out[at + 16..at + 20].try_into().unwrap()) as usize;
    }
    assert!(at <= out.len(), "a reply claims {} bytes beyond the output", at - out.len());
}

fuzz_target!(|data: &[u8]| {
    // The parsers alone.
    if let Ok(h) = <&[u8; REQUEST_LEN]>::try_from(data.get(..REQUEST_LEN).unwrap_or(&[])) {
        if let Ok(r) = parse_request(h) {
            assert_eq!(parse_request(&Request::encode(&r)), Ok(r));
        }
    }
    let _ = proto::parse_info_request(data);
    let _ = proto::parse_meta_query(data);
    // A whole connection.
    let mut input = if data.first().is_some_and(|b| b & 1 == 1) { handshake() } else { Vec::new() };
    input.extend_from_slice(data.get(1..).unwrap_or(&[]));
    let (mut client, server) = UnixStream::pair().expect("socket pair");
    let feeder = std::thread::spawn(move || {
        let _ = client.write_all(&input);
        let _ = client.shutdown(std::net::Shutdown::Write);
        let mut out = Vec::new();
        let _ = client.read_to_end(&mut out);
        out
    });
    let report = serve_stream(server, export(), None).expect("serve");
    let out = feeder.join().expect("feeder");
    assert_eq!(report.connections, 1);
    check_replies(&out);
});
