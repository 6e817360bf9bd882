//! Heartbeats: one slot per host at volume offset 3 MiB (2048 slots of 512 bytes on VMFS3/5, 1024
//! slots of one metadata block on VMFS6). A slot whose magic says "held" belongs to a host that had
//! the volume mounted: a live LUN (or a snapshot of one) whose metadata may change under a reader.

use rdm::ReadAt;

use super::error::Result;
use super::geometry::HEARTBEAT_OFFSET;
use super::inner::Inner;
use super::le::{uuid_string, Le};

/// Magic of a free heartbeat slot.
pub const HB_FREE: u32 = 0xABCD_EF01;
/// Magic of a heartbeat held by a live host.
pub const HB_LIVE: u32 = 0xABCD_EF02;

/// A live heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Heartbeat {
    /// Volume offset of the slot.
    pub offset: u64,
    /// Generation / sequence number.
    pub generation: u64,
    /// Uptime stamp of the host.
    pub stamp: u64,
    /// UUID of the host.
    pub owner: String,
    /// The host's address, when recorded.
    pub address: String,
}

/// Parses one heartbeat slot; `None` unless it is held.
pub fn parse_slot(b: &[u8], offset: u64) -> Option<Heartbeat> {
    let l = Le(b);
    if l.u32(0)? != HB_LIVE {
        return None;
    }
    Some(Heartbeat {
        offset,
        generation: l.u64(0xC).unwrap_or(0),
        stamp: l.u64(0x14).unwrap_or(0),
        owner: uuid_string(l.bytes(0x1C, 16).unwrap_or(&[])),
        address: l.cstr(0x36, 46).unwrap_or_default(),
    })
}

pub(crate) fn live(inner: &Inner) -> Result<Vec<Heartbeat>> {
    let slot = inner.g.heartbeat_slot;
    let n = inner.g.heartbeat_slots;
    let bytes = slot * n;
    if HEARTBEAT_OFFSET + bytes > inner.lv.size {
        return Ok(Vec::new());
    }
    let mut buf = vec![0u8; bytes as usize];
    inner.lv.read_exact_at(&mut buf, HEARTBEAT_OFFSET)?;
    Ok(buf
        .chunks_exact(slot as usize)
        .enumerate()
        .filter_map(|(i, b)| parse_slot(b, HEARTBEAT_OFFSET + i as u64 * slot))
        .collect())
}
