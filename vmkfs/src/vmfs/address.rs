//! Block addresses. The low three bits give the kind; the rest depends on the kind and on the
//! generation (32-bit on VMFS3/5, 64-bit on VMFS6).
//!
//! | kind | VMFS3/5 (u32) | VMFS6 (u64) |
//! |---|---|---|
//! | 1 FB / SFB | COW bit 4, TBZ bit 5, block bits 6–31 | COW bit 5, TBZ map bits 7–14, cluster bits 15–45, resource bits 51–63 |
//! | 2 SB | cluster bits 6–27, resource bits 28–31 (+ bits 3–4 as resource bits 4–5 when dense) | cluster bits 6–41, resource bits 56–63 |
//! | 3 PB, 5 PB2 | cluster bits 6–27, resource bits 28–31 | cluster bits 6–41, resource bits 56–63 |
//! | 4 FD | cluster bits 6–21, resource bits 22–31 | (FD addresses stay 32-bit) |
//! | 7 LFB | — | COW bit 5, TBZ map bits 7–14, block bits 15–45 |

/// Kind numbers (low three bits).
pub mod kind {
    /// File block (small file block on VMFS6).
    pub const FB: u8 = 1;
    /// Sub-block.
    pub const SB: u8 = 2;
    /// Pointer block.
    pub const PB: u8 = 3;
    /// File descriptor.
    pub const FD: u8 = 4;
    /// Second-level pointer block.
    pub const PB2: u8 = 5;
    /// Journal block (VMFS6).
    pub const JB: u8 = 6;
    /// Large file block (VMFS6).
    pub const LFB: u8 = 7;
}

/// A decoded block address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addr {
    /// The null address: a hole.
    Null,
    /// VMFS3/5 file block `block` (volume offset `block × file block size`).
    Fb {
        /// Block number.
        block: u64,
        /// To be zeroed: reads as zeros.
        tbz: bool,
    },
    /// VMFS6 small file block.
    Sfb {
        /// Cluster.
        cluster: u64,
        /// Resource in the cluster.
        resource: u64,
        /// Any to-be-zeroed bit set: reads as zeros.
        tbz: bool,
    },
    /// VMFS6 large file block.
    Lfb {
        /// Block number (volume offset `block × large block size`).
        block: u64,
        /// Any to-be-zeroed bit set.
        tbz: bool,
    },
    /// A resource of a resource file: sub-block, pointer block, PB2 or file descriptor.
    Res {
        /// [`kind::SB`], [`kind::PB`], [`kind::PB2`] or [`kind::FD`].
        kind: u8,
        /// Cluster.
        cluster: u64,
        /// Resource in the cluster.
        resource: u64,
    },
    /// Any other kind (journal blocks, invalid kinds).
    Other {
        /// The kind bits.
        kind: u8,
        /// The raw value.
        raw: u64,
    },
}

impl Addr {
    /// Decodes a VMFS3/5 address; `dense` is the FS descriptor's `DENSE_SBPC` flag.
    pub fn decode32(raw: u32, dense: bool) -> Addr {
        if raw == 0 {
            return Addr::Null;
        }
        let r = raw as u64;
        match (raw & 7) as u8 {
            kind::FB => Addr::Fb { block: r >> 6, tbz: r & 0x20 != 0 },
            kind::SB => {
                let mut resource = (r >> 28) & 0xF;
                if dense {
                    resource |= (r & 0x18) << 1;
                }
                Addr::Res { kind: kind::SB, cluster: (r >> 6) & 0x3F_FFFF, resource }
            }
            k @ (kind::PB | kind::PB2) => {
                Addr::Res { kind: k, cluster: (r >> 6) & 0x3F_FFFF, resource: (r >> 28) & 0xF }
            }
            kind::FD => Addr::fd(raw),
            k => Addr::Other { kind: k, raw: r },
        }
    }

    /// Decodes a VMFS6 address.
    pub fn decode64(raw: u64) -> Addr {
        if raw == 0 {
            return Addr::Null;
        }
        match (raw & 7) as u8 {
            kind::FB => Addr::Sfb {
                cluster: (raw >> 15) & 0x7FFF_FFFF,
                resource: (raw >> 51) & 0x1FFF,
                tbz: (raw >> 7) & 0xFF != 0,
            },
            kind::LFB => Addr::Lfb { block: (raw >> 15) & 0x7FFF_FFFF, tbz: (raw >> 7) & 0xFF != 0 },
            k @ (kind::SB | kind::PB | kind::PB2) => {
                Addr::Res { kind: k, cluster: (raw >> 6) & 0xF_FFFF_FFFF, resource: (raw >> 56) & 0xFF }
            }
            kind::FD if raw >> 32 == 0 => Addr::fd(raw as u32),
            k => Addr::Other { kind: k, raw },
        }
    }

    /// Decodes a file-descriptor address (the same on every generation).
    pub fn fd(raw: u32) -> Addr {
        let r = raw as u64;
        Addr::Res { kind: kind::FD, cluster: (r >> 6) & 0xFFFF, resource: (r >> 22) & 0x3FF }
    }
}

/// Encodes a file-descriptor address.
pub fn fd_addr(cluster: u32, resource: u32) -> u32 {
    kind::FD as u32 | ((cluster & 0xFFFF) << 6) | ((resource & 0x3FF) << 22)
}

/// A short text for an address in messages.
pub fn describe(raw: u64) -> String {
    format!("address {raw:#x} (kind {})", raw & 7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_real_images_addresses() {
        assert_eq!(Addr::decode32(0x141, false), Addr::Fb { block: 5, tbz: false });
        assert_eq!(Addr::decode32(0x96e1, false), Addr::Fb { block: 0x25b, tbz: true });
        assert_eq!(Addr::decode32(0x1000_0102, true), Addr::Res { kind: kind::SB, cluster: 4, resource: 1 });
        assert_eq!(Addr::decode32(0x10a, true), Addr::Res { kind: kind::SB, cluster: 4, resource: 0x10 });
        assert_eq!(Addr::decode32(0x0080_0004, false), Addr::Res { kind: kind::FD, cluster: 0, resource: 2 });
        assert_eq!(Addr::decode64(0x0008_0000_0000_0001), Addr::Sfb { cluster: 0, resource: 1, tbz: false });
        assert_eq!(Addr::decode64(0x0100_0000_0000_0002), Addr::Res { kind: kind::SB, cluster: 0, resource: 1 });
        assert_eq!(Addr::decode64(5), Addr::Res { kind: kind::PB2, cluster: 0, resource: 0 });
        assert_eq!(Addr::decode64((3 << 15) | (1 << 7) | 7), Addr::Lfb { block: 3, tbz: true });
        assert_eq!(fd_addr(0, 2), 0x0080_0004);
        assert_eq!(Addr::decode32(0, true), Addr::Null);
    }
}
