//! Resource files (`.fdc.sf`, `.sbc.sf`, `.pbc.sf`, `.pb2.sf`, `.fbb.sf`): a metadata header, then
//! cluster groups of `clustersPerGroup` cluster headers followed by the clusters' resources.
//!
//! ```text
//! offset(cluster c, resource r) = clusterGroupOffset + ⌊c / CPG⌋ · clusterGroupSize
//!                               + CPG · header + (c mod CPG) · RPC · resourceSize + r · resourceSize
//! ```

use super::error::{Result, VmfsError};
use super::le::Le;

/// VMFS6 resource metadata signature (`rfmd`).
pub const RFMD_SIGNATURE: u32 = 0x7266_6D64;
/// VMFS6 cluster metadata signature (`rcmd` / `dmcr` in byte order).
pub const RCMD_SIGNATURE: u32 = 0x7263_6D64;
/// Bytes of the metadata header read.
pub const META_LEN: usize = 0x58;

/// The metadata header of a resource file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceMeta {
    /// Resources per cluster.
    pub rpc: u64,
    /// Clusters per group.
    pub cpg: u64,
    /// Offset of the first cluster group.
    pub cg_offset: u64,
    /// Bytes per resource (0 for file blocks, which live on the volume).
    pub res_size: u64,
    /// Bytes per cluster group.
    pub cg_size: u64,
    /// Number of resources.
    pub num_resources: u64,
    /// Number of cluster groups.
    pub num_groups: u64,
    /// Flags (VMFS6).
    pub flags: u32,
    /// Offset of a child header in the same file (VMFS6 `.fbb.sf`: the small file blocks).
    pub child_meta_offset: u64,
    /// Bytes of a cluster header.
    pub header: u64,
}

impl ResourceMeta {
    /// Parses the header bytes. `vmfs6` requires the `rfmd` signature; `header` is the generation's
    /// cluster-header size. `place`/`at` locate the header for messages.
    pub fn parse(raw: &[u8], vmfs6: bool, header: u64, place: &str, at: u64) -> Result<ResourceMeta> {
        let l = Le(raw);
        let f = |o: usize| l.u32(o).unwrap_or(0) as u64;
        let m = ResourceMeta {
            rpc: f(0),
            cpg: f(4),
            cg_offset: f(8),
            res_size: f(0xC),
            cg_size: f(0x10),
            num_resources: f(0x14) | (f(0x1C) << 32),
            num_groups: f(0x18),
            flags: f(0x28) as u32,
            child_meta_offset: f(0x34),
            header,
        };
        let bad = |what: String| VmfsError::corrupt(place, at, what);
        if vmfs6 && f(0x20) as u32 != RFMD_SIGNATURE {
            return Err(bad(format!(
                "resource metadata signature is {:#010x}, expected 'rfmd' {RFMD_SIGNATURE:#010x}",
                f(0x20)
            )));
        }
        if m.cpg == 0 || m.cpg > 1 << 16 || m.rpc > 1 << 20 || m.res_size > 1 << 30 {
            return Err(bad(format!(
                "resource geometry out of range: {} resources per cluster, {} clusters per group, {} bytes each",
                m.rpc, m.cpg, m.res_size
            )));
        }
        let need =
            m.cpg.checked_mul(header).and_then(|h| m.rpc.checked_mul(m.res_size)?.checked_mul(m.cpg)?.checked_add(h));
        match need {
            Some(n) if n <= m.cg_size || m.rpc == 0 => {}
            _ => {
                return Err(bad(format!(
                "cluster group size {} is smaller than {} headers of {header} bytes plus {} × {} resources of {} bytes",
                m.cg_size, m.cpg, m.cpg, m.rpc, m.res_size
            )))
            }
        }
        Ok(m)
    }

    /// Offset in the resource file of resource `r` of cluster `c`, checked against the header.
    pub fn offset(&self, c: u64, r: u64) -> Option<u64> {
        if r >= self.rpc {
            return None;
        }
        let group = c / self.cpg;
        if self.num_groups != 0 && group >= self.num_groups {
            return None;
        }
        self.cg_offset
            .checked_add(group.checked_mul(self.cg_size)?)?
            .checked_add(self.cpg * self.header)?
            .checked_add((c % self.cpg).checked_mul(self.rpc)?.checked_mul(self.res_size)?)?
            .checked_add(r.checked_mul(self.res_size)?)
    }

    /// Offset of cluster `c`'s header.
    pub fn cluster_header_offset(&self, c: u64) -> Option<u64> {
        self.cg_offset.checked_add((c / self.cpg).checked_mul(self.cg_size)?)?.checked_add((c % self.cpg) * self.header)
    }

    /// Number of clusters.
    pub fn num_clusters(&self) -> u64 {
        if self.rpc == 0 {
            0
        } else {
            self.num_resources.div_ceil(self.rpc)
        }
    }
}
