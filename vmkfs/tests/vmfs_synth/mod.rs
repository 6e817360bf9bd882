//! A test-only VMFS image writer: builds VMFS5 and VMFS6 volumes (on one or two devices) with the
//! layouts the real images do not cover — pointer blocks, double-indirect files, huge sparse files,
//! large file blocks, to-be-zeroed blocks, directories with thousands of entries, RDM descriptors.
//! Written from the same format notes as the reader, and trusted only when the independent readers
//! (dissect.vmfs, debugvmfs, debugvmfs6) agree with the reader on what it built.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;
const PE: u64 = 256 * MIB;
const DATA_OFFSET: u64 = 0x110_0000;
const T0: u32 = 1_700_000_000;

/// Which generation to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gen {
    V5,
    V6,
}

/// How a file's blocks are addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Data in the descriptor.
    Resident,
    /// Direct sub-blocks.
    Sub,
    /// Direct file blocks.
    Direct,
    /// Single indirect through `.pbc.sf` (VMFS5) or `.pb2.sf` (`pb2`).
    Indirect { pb2: bool },
    /// Pointer block → pointer block → block.
    Double,
    /// VMFS6 large file blocks, direct.
    Large,
}

/// A regular file.
#[derive(Debug, Clone)]
pub struct FileSpec {
    pub size: u64,
    pub layout: Layout,
    /// Data written at these offsets; everything else is zeros.
    pub chunks: Vec<(u64, Vec<u8>)>,
    /// Only blocks holding chunks (or to-be-zeroed) are allocated; the rest are holes.
    pub sparse: bool,
    /// File-block indexes marked to be zeroed (their device bytes are filled with 0xEE, which must
    /// never be read back).
    pub tbz: Vec<u64>,
}

#[derive(Debug, Clone)]
enum Kind {
    Dir(Vec<usize>),
    File(FileSpec),
    Symlink(String),
    Rdm { size: u64, vendor: String, model: String, lun: u16 },
}

#[derive(Debug, Clone)]
struct Node {
    name: String,
    parent: usize,
    kind: Kind,
    fd: u32,
    fd_index: u64,
    mtime: u32,
}

/// A volume to build.
pub struct Builder {
    pub gen: Gen,
    pub label: String,
    /// Logical volume size (a multiple of 256 MiB).
    pub size: u64,
    /// Devices the volume spans (1 or 2); the PEs are split between them.
    pub devices: usize,
    nodes: Vec<Node>,
}

/// What was built, for the tests.
pub struct Built {
    pub devices: Vec<PathBuf>,
    /// Path → expected content pieces (size, chunks) of every regular file.
    pub files: Vec<(String, FileSpec)>,
}

struct Geo {
    fbs: u64,
    sbs: u64,
    md: u64,
    fd_size: u64,
    fd_meta: u64,
    fd_data: u64,
    fd_addrs: u64,
    fd_addr_count: u64,
    width: u64,
    ppb: u64,
    hdr: u64,
    fdc_start: u64,
    lfbs: u64,
}

/// Resource-file geometry: resources per cluster, clusters per group, bytes per resource.
#[derive(Clone, Copy)]
struct Res {
    rpc: u64,
    cpg: u64,
    rs: u64,
    hdr: u64,
}

impl Res {
    fn cgs(&self) -> u64 {
        self.cpg * self.hdr + self.cpg * self.rpc * self.rs
    }
    fn offset(&self, k: u64) -> u64 {
        let (c, r) = (k / self.rpc, k % self.rpc);
        0x10000 + (c / self.cpg) * self.cgs() + self.cpg * self.hdr + (c % self.cpg) * self.rpc * self.rs + r * self.rs
    }
    /// File length holding `n` resources (at least one cluster group's headers).
    fn len_for(&self, n: u64) -> u64 {
        let n = n.max(1);
        let clusters = n.div_ceil(self.rpc);
        let groups = clusters.div_ceil(self.cpg);
        let last = self.offset(clusters * self.rpc - 1) + self.rs;
        last.max(0x10000 + groups * self.cpg * self.hdr)
    }
}

fn put(b: &mut [u8], at: u64, v: &[u8]) {
    b[at as usize..at as usize + v.len()].copy_from_slice(v);
}
fn p16(b: &mut [u8], at: u64, v: u16) {
    put(b, at, &v.to_le_bytes());
}
fn p32(b: &mut [u8], at: u64, v: u32) {
    put(b, at, &v.to_le_bytes());
}
fn p64(b: &mut [u8], at: u64, v: u64) {
    put(b, at, &v.to_le_bytes());
}

fn uuid(seed: u32) -> [u8; 16] {
    let mut u = [0u8; 16];
    u[..4].copy_from_slice(&(0x6500_0000 + seed).to_le_bytes());
    u[4..8].copy_from_slice(&(0x1234_5678u32 ^ seed).to_le_bytes());
    u[8..10].copy_from_slice(&(seed as u16).to_le_bytes());
    u[10..].copy_from_slice(&[0x00, 0x0c, 0x29, 0xaa, 0xbb, seed as u8]);
    u
}

/// Deterministic pseudo-random bytes.
pub fn pattern(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

impl Builder {
    pub fn new(gen: Gen, label: &str, size: u64) -> Builder {
        let root = Node { name: String::new(), parent: 0, kind: Kind::Dir(Vec::new()), fd: 4, fd_index: 0, mtime: T0 };
        Builder { gen, label: label.into(), size, devices: 1, nodes: vec![root] }
    }

    fn add(&mut self, path: &str, kind: Kind) -> usize {
        let (dir, name) = path.rsplit_once('/').unwrap();
        let parent = self.dir_index(dir);
        let i = self.nodes.len();
        self.nodes.push(Node { name: name.into(), parent, kind, fd: 0, fd_index: 0, mtime: T0 + i as u32 * 7 });
        match &mut self.nodes[parent].kind {
            Kind::Dir(c) => c.push(i),
            _ => panic!("{dir} is not a directory"),
        }
        i
    }

    fn dir_index(&self, dir: &str) -> usize {
        let mut cur = 0;
        for c in dir.split('/').filter(|c| !c.is_empty()) {
            let Kind::Dir(ch) = &self.nodes[cur].kind else { panic!() };
            cur = *ch.iter().find(|&&i| self.nodes[i].name == c).unwrap_or_else(|| panic!("no directory {dir}"));
        }
        cur
    }

    pub fn dir(&mut self, path: &str) {
        self.add(path, Kind::Dir(Vec::new()));
    }
    pub fn file(&mut self, path: &str, spec: FileSpec) {
        self.add(path, Kind::File(spec));
    }
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.add(path, Kind::Symlink(target.into()));
    }
    pub fn rdm(&mut self, path: &str, size: u64, vendor: &str, model: &str, lun: u16) {
        self.add(path, Kind::Rdm { size, vendor: vendor.into(), model: model.into(), lun });
    }

    fn geo(&self) -> Geo {
        match self.gen {
            Gen::V5 => Geo {
                fbs: MIB,
                sbs: 8192,
                md: 512,
                fd_size: 2048,
                fd_meta: 512,
                fd_data: 1024,
                fd_addrs: 1024,
                fd_addr_count: 256,
                width: 4,
                ppb: 1024,
                hdr: 1024,
                fdc_start: 4 * MIB,
                lfbs: MIB,
            },
            Gen::V6 => Geo {
                fbs: MIB,
                sbs: 64 << 10,
                md: 4096,
                fd_size: 8192,
                fd_meta: 4096,
                fd_data: 4608,
                fd_addrs: 8192 - 2560,
                fd_addr_count: 320,
                width: 8,
                ppb: 8192,
                hdr: 8192,
                fdc_start: 7 * MIB,
                lfbs: 512 * MIB,
            },
        }
    }

    /// Writes the volume into `dir` (sparse files `dev0.img`, `dev1.img`, …).
    pub fn build(&self, dir: &Path) -> Built {
        Writer::new(self, dir).run()
    }
}

struct Writer<'a> {
    b: &'a Builder,
    g: Geo,
    v6: bool,
    devs: Vec<File>,
    paths: Vec<PathBuf>,
    nodes: Vec<Node>,
    /// Next free file block (small file block on VMFS6).
    next_fb: u64,
    /// Next free large file block, counted down from the top of the volume.
    next_lfb: u64,
    sb_res: Res,
    pb_res: Res,
    pb2_res: Res,
    fdc_res: Res,
    next_sb: u64,
    next_pb: u64,
    next_pb2: u64,
    /// Pointer blocks to write: (in .pb2.sf?, index) → pointers.
    pbs: HashMap<(bool, u64), Vec<u64>>,
    /// (start block, blocks) of the system files.
    sys: HashMap<&'static str, (u64, u64, u64)>,
    used_blocks: u64,
}

impl<'a> Writer<'a> {
    fn new(b: &'a Builder, dir: &Path) -> Writer<'a> {
        let g = b.geo();
        let v6 = b.gen == Gen::V6;
        assert!(b.size.is_multiple_of(PE) && b.size >= PE);
        let pes = b.size / PE;
        let mut devs = Vec::new();
        let mut paths = Vec::new();
        for i in 0..b.devices {
            let p = dir.join(format!("dev{i}.img"));
            let f = File::create(&p).unwrap();
            let n = Self::pes_on(pes, b.devices, i).1;
            f.set_len(DATA_OFFSET + n * PE + MIB).unwrap();
            devs.push(f);
            paths.push(p);
        }
        let hdr = g.hdr;
        let (sb_res, pb_res, pb2_res, fdc_res) = if v6 {
            (
                Res { rpc: 256, cpg: 8, rs: g.sbs, hdr },
                // debugvmfs6 insists on 16 pointer blocks per cluster in .pbc.sf.
                Res { rpc: 16, cpg: 8, rs: 0x10000, hdr },
                Res { rpc: 32, cpg: 8, rs: 0x10000, hdr },
                Res { rpc: 256, cpg: 8, rs: g.fd_size, hdr },
            )
        } else {
            (
                Res { rpc: 32, cpg: 64, rs: g.sbs, hdr },
                Res { rpc: 16, cpg: 64, rs: 4096, hdr },
                Res { rpc: 16, cpg: 64, rs: 4096, hdr },
                Res { rpc: 32, cpg: 64, rs: g.fd_size, hdr },
            )
        };
        let next_lfb = b.size / g.lfbs;
        Writer {
            b,
            v6,
            devs,
            paths,
            nodes: b.nodes.clone(),
            next_fb: 0,
            next_lfb,
            sb_res,
            pb_res,
            pb2_res,
            fdc_res,
            next_sb: 0,
            next_pb: 0,
            next_pb2: 0,
            pbs: HashMap::new(),
            sys: HashMap::new(),
            used_blocks: 0,
            g,
        }
    }

    /// (first PE, count) on device `i`.
    fn pes_on(pes: u64, devices: usize, i: usize) -> (u64, u64) {
        let d = devices as u64;
        let per = pes / d;
        let first = per * i as u64;
        let n = if i as u64 == d - 1 { pes - first } else { per };
        (first, n)
    }

    /// Writes `data` at logical volume offset `at`, across devices.
    fn wvol(&self, at: u64, data: &[u8]) {
        let pes = self.b.size / PE;
        let mut done = 0usize;
        while done < data.len() {
            let pos = at + done as u64;
            let pe = pos / PE;
            let (mut dev, mut first) = (0, 0);
            for i in 0..self.b.devices {
                let (f, n) = Self::pes_on(pes, self.b.devices, i);
                if pe >= f && pe < f + n {
                    dev = i;
                    first = f;
                }
            }
            let n = ((PE - pos % PE) as usize).min(data.len() - done);
            let off = DATA_OFFSET + (pe - first) * PE + pos % PE;
            self.devs[dev].write_all_at(&data[done..done + n], off).unwrap();
            done += n;
        }
    }

    fn alloc_fbs(&mut self, n: u64) -> u64 {
        let b = self.next_fb;
        self.next_fb += n;
        assert!(
            self.next_fb * self.g.fbs <= self.next_lfb * self.g.lfbs,
            "synthetic volume too small: {} small blocks, large blocks from {}",
            self.next_fb,
            self.next_lfb
        );
        self.used_blocks += n;
        b
    }

    fn fb_addr(&self, block: u64, tbz: bool) -> u64 {
        if self.v6 {
            let (c, r) = (block / 512, block % 512);
            1 | ((tbz as u64 * 0xFF) << 7) | (c << 15) | (r << 51)
        } else {
            1 | ((tbz as u64) << 5) | (block << 6)
        }
    }

    fn res_addr(&self, kind: u64, k: u64, res: &Res) -> u64 {
        let (c, r) = (k / res.rpc, k % res.rpc);
        if self.v6 {
            kind | (c << 6) | (r << 56)
        } else if kind == 2 {
            // Dense sub-block addresses: resource bits 4–5 in address bits 3–4.
            kind | (((r >> 4) & 3) << 3) | (c << 6) | ((r & 0xF) << 28)
        } else {
            kind | (c << 6) | (r << 28)
        }
    }

    fn fd_addr(&self, k: u64) -> u32 {
        let (c, r) = (k / self.fdc_res.rpc, k % self.fdc_res.rpc);
        (4 | (c << 6) | (r << 22)) as u32
    }

    fn fd_vol(&self, k: u64) -> u64 {
        self.g.fdc_start + self.fdc_res.offset(k)
    }

    fn run(mut self) -> Built {
        let g_fbs = self.g.fbs;
        // System files first, at fixed places.
        let vh_blocks = if self.v6 { 7 } else { 4 };
        let vh = self.alloc_fbs(vh_blocks);
        let sys_names: Vec<&str> = if self.v6 {
            vec![".fbb.sf", ".fdc.sf", ".pbc.sf", ".sbc.sf", ".vh.sf", ".pb2.sf", ".sdd.sf", ".jbc.sf"]
        } else {
            vec![".fbb.sf", ".fdc.sf", ".pbc.sf", ".sbc.sf", ".vh.sf", ".pb2.sf", ".sdd.sf"]
        };
        let nsys = sys_names.len() as u64 + 1;
        // FD numbering: root 0, system files 1.., then everything else.
        let mut k = nsys;
        for i in 1..self.nodes.len() {
            self.nodes[i].fd_index = k;
            k += 1;
        }
        let total_fds = k;
        for i in 0..self.nodes.len() {
            let a = self.fd_addr(self.nodes[i].fd_index);
            self.nodes[i].fd = a;
        }
        let fdc_len = self.fdc_res.len_for(total_fds).div_ceil(g_fbs) * g_fbs;
        let fdc = self.alloc_fbs(fdc_len / g_fbs);
        assert_eq!(fdc * g_fbs, self.g.fdc_start);
        // Capacities of the other resource files: enough for every file of this volume.
        let mut sbs_needed = 64u64;
        let mut pbs_needed = 16u64;
        for n in &self.nodes {
            match &n.kind {
                Kind::File(f) => {
                    if f.layout == Layout::Sub {
                        sbs_needed += f.size.div_ceil(self.g.sbs) + 1;
                    }
                    if matches!(f.layout, Layout::Indirect { .. } | Layout::Double) {
                        pbs_needed += 2 * (f.chunks.len() as u64 + f.tbz.len() as u64) + 4;
                        if !f.sparse {
                            pbs_needed += f.size.div_ceil(self.g.fbs * self.g.ppb);
                        }
                    }
                }
                Kind::Dir(c) => sbs_needed += (c.len() as u64 * 300).div_ceil(self.g.sbs) + 2,
                _ => sbs_needed += 1,
            }
        }
        let sbc_len = self.sb_res.len_for(sbs_needed).div_ceil(g_fbs) * g_fbs;
        let sbc = self.alloc_fbs(sbc_len / g_fbs);
        let pbc_len = self.pb_res.len_for(pbs_needed).div_ceil(g_fbs) * g_fbs;
        let pbc = self.alloc_fbs(pbc_len / g_fbs);
        let pb2_len = self.pb2_res.len_for(pbs_needed).div_ceil(g_fbs) * g_fbs;
        let pb2 = self.alloc_fbs(pb2_len / g_fbs);
        let fbb = self.alloc_fbs(1);
        let sdd = self.alloc_fbs(1);
        let jbc = if self.v6 { self.alloc_fbs(1) } else { 0 };
        self.sys.insert(".vh.sf", (vh, vh_blocks, vh_blocks * g_fbs));
        self.sys.insert(".fdc.sf", (fdc, fdc_len / g_fbs, fdc_len));
        self.sys.insert(".sbc.sf", (sbc, sbc_len / g_fbs, sbc_len));
        self.sys.insert(".pbc.sf", (pbc, pbc_len / g_fbs, pbc_len));
        self.sys.insert(".pb2.sf", (pb2, pb2_len / g_fbs, pb2_len));
        self.sys.insert(".fbb.sf", (fbb, 1, if self.v6 { 0x24000 } else { 0x20000 }));
        self.sys.insert(".sdd.sf", (sdd, 1, if self.v6 { 0x11000 } else { 280 }));
        if self.v6 {
            self.sys.insert(".jbc.sf", (jbc, 1, 0x20000));
        }

        // Regular files, symlinks, RDMs; then directories (children first, so sizes are known).
        let mut files = Vec::new();
        for i in 1..self.nodes.len() {
            let n = self.nodes[i].clone();
            let fdv = self.fd_vol(n.fd_index);
            match &n.kind {
                Kind::File(f) => {
                    self.write_file(&n, f, fdv);
                    files.push((self.path_of(i), f.clone()));
                }
                Kind::Symlink(t) => {
                    let f = FileSpec {
                        size: t.len() as u64,
                        layout: Layout::Resident,
                        chunks: vec![(0, t.as_bytes().to_vec())],
                        sparse: false,
                        tbz: vec![],
                    };
                    self.write_fd_for(&n, &f, fdv, 4, 0o777);
                }
                Kind::Rdm { size, vendor, model, lun } => self.write_rdm(&n, *size, vendor, model, *lun, fdv),
                Kind::Dir(_) => {}
            }
        }
        for i in (0..self.nodes.len()).rev() {
            if let Kind::Dir(_) = self.nodes[i].kind {
                self.write_dir(i, &sys_names);
            }
        }
        self.write_system(&sys_names);
        self.write_lvm();
        Built { devices: self.paths.clone(), files }
    }

    fn path_of(&self, mut i: usize) -> String {
        let mut parts = Vec::new();
        while i != 0 {
            parts.push(self.nodes[i].name.clone());
            i = self.nodes[i].parent;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    /// Pointers for file-block indexes `idx → addr`, laid out for `layout`; returns the
    /// descriptor's pointer array.
    fn pointer_tree(&mut self, layout: Layout, ptrs: &[(u64, u64)]) -> Vec<u64> {
        let ppb = self.g.ppb;
        let mut top = vec![0u64; self.g.fd_addr_count as usize];
        match layout {
            Layout::Direct | Layout::Sub | Layout::Large => {
                for &(i, a) in ptrs {
                    top[i as usize] = a;
                }
            }
            Layout::Indirect { pb2 } => {
                let mut pbs: HashMap<u64, u64> = HashMap::new();
                for &(i, a) in ptrs {
                    let t = i / ppb;
                    let k = *pbs.entry(t).or_insert_with(|| self.new_pb(pb2));
                    self.pbs.get_mut(&(pb2, k)).unwrap()[(i % ppb) as usize] = a;
                    top[t as usize] = self.pb_addr(pb2, k);
                }
            }
            Layout::Double => {
                let mut l1: HashMap<u64, u64> = HashMap::new();
                let mut l2: HashMap<u64, u64> = HashMap::new();
                for &(i, a) in ptrs {
                    let t = i / (ppb * ppb);
                    let m = i / ppb;
                    // The first level in .pb2.sf, the second in .pbc.sf (VMFS6: both in .pb2.sf).
                    let k1 = *l1.entry(t).or_insert_with(|| self.new_pb(true));
                    let pb2_second = self.v6;
                    let k2 = *l2.entry(m).or_insert_with(|| self.new_pb(pb2_second));
                    let a2 = self.pb_addr(pb2_second, k2);
                    self.pbs.get_mut(&(true, k1)).unwrap()[(m % ppb) as usize] = a2;
                    self.pbs.get_mut(&(pb2_second, k2)).unwrap()[(i % ppb) as usize] = a;
                    top[t as usize] = self.pb_addr(true, k1);
                }
            }
            Layout::Resident => {}
        }
        top
    }

    fn new_pb(&mut self, pb2: bool) -> u64 {
        let k = if pb2 { &mut self.next_pb2 } else { &mut self.next_pb };
        let v = *k;
        *k += 1;
        self.pbs.insert((pb2, v), vec![0; self.g.ppb as usize]);
        v
    }

    fn pb_addr(&self, pb2: bool, k: u64) -> u64 {
        if pb2 {
            self.res_addr(5, k, &self.pb2_res)
        } else {
            self.res_addr(3, k, &self.pb_res)
        }
    }

    fn write_file(&mut self, n: &Node, f: &FileSpec, fdv: u64) {
        self.write_fd_for(n, f, fdv, 3, 0o644);
    }

    /// Lays out the data of `f`, writes it, and writes its descriptor (`ty` 3 file, 4 symlink).
    fn write_fd_for(&mut self, n: &Node, f: &FileSpec, fdv: u64, ty: u32, mode: u32) {
        let g = &self.g;
        let (bs, resident) = match f.layout {
            Layout::Resident => (g.sbs, true),
            Layout::Sub => (g.sbs, false),
            Layout::Large => (g.lfbs, false),
            _ => (g.fbs, false),
        };
        let nblocks = f.size.div_ceil(bs);
        let wanted: Vec<u64> = (0..nblocks)
            .filter(|&i| {
                !f.sparse
                    || f.tbz.contains(&i)
                    || f.chunks.iter().any(|(o, d)| *o < (i + 1) * bs && o + d.len() as u64 > i * bs)
            })
            .collect();
        let mut ptrs = Vec::new();
        let mut data_at: Vec<(u64, u64)> = Vec::new(); // (file block, volume offset)
        if !resident {
            for &i in &wanted {
                let tbz = f.tbz.contains(&i);
                let (addr, vol) = match f.layout {
                    Layout::Sub => {
                        let k = self.next_sb;
                        self.next_sb += 1;
                        let (sbc, _, _) = self.sys[".sbc.sf"];
                        (self.res_addr(2, k, &self.sb_res), sbc * self.g.fbs + self.sb_res.offset(k))
                    }
                    Layout::Large => {
                        self.next_lfb -= 1;
                        let blk = self.next_lfb;
                        assert!(blk * self.g.lfbs >= self.next_fb * self.g.fbs, "synthetic volume too small for LFBs");
                        (7 | ((tbz as u64 * 0xFF) << 7) | (blk << 15), blk * self.g.lfbs)
                    }
                    _ => {
                        let blk = self.alloc_fbs(1);
                        (self.fb_addr(blk, tbz), blk * self.g.fbs)
                    }
                };
                if tbz {
                    // Stale bytes a reader must never return.
                    self.wvol(vol, &vec![0xEE; bs.min(4 * MIB) as usize]);
                } else {
                    data_at.push((i, vol));
                }
                ptrs.push((i, addr));
            }
        }
        for (o, d) in &f.chunks {
            if resident {
                continue;
            }
            let mut done = 0u64;
            while done < d.len() as u64 {
                let pos = o + done;
                let i = pos / bs;
                let n = (bs - pos % bs).min(d.len() as u64 - done);
                if let Some(&(_, vol)) = data_at.iter().find(|(b, _)| *b == i) {
                    self.wvol(vol + pos % bs, &d[done as usize..(done + n) as usize]);
                }
                done += n;
            }
        }
        let top = self.pointer_tree(f.layout, &ptrs);
        let zla = match f.layout {
            Layout::Resident => 0x10D1,
            Layout::Sub => 2,
            Layout::Direct | Layout::Large => 1,
            Layout::Indirect { pb2 } => {
                if pb2 {
                    5
                } else {
                    3
                }
            }
            Layout::Double => 0x10D0,
        };
        let mut fd = self.fd_base(n.fd, fdv, ty, mode, f.size, bs, wanted.len() as u64, zla, n.mtime, n.parent);
        let g = &self.g;
        if resident {
            let mut buf = vec![0u8; f.size as usize];
            for (o, d) in &f.chunks {
                buf[*o as usize..*o as usize + d.len()].copy_from_slice(d);
            }
            put(&mut fd, g.fd_data, &buf);
        } else {
            for (i, a) in top.iter().enumerate() {
                if g.width == 8 {
                    p64(&mut fd, g.fd_addrs + i as u64 * 8, *a);
                } else {
                    p32(&mut fd, g.fd_addrs + i as u64 * 4, *a as u32);
                }
            }
        }
        p32(&mut fd, g.fd_meta + 0x48, f.tbz.len() as u32);
        if f.layout == Layout::Large {
            p32(&mut fd, g.fd_meta + 0x8C, wanted.len() as u32);
        }
        self.wvol(fdv, &fd);
    }

    #[allow(clippy::too_many_arguments)]
    fn fd_base(
        &self,
        addr: u32,
        fdv: u64,
        ty: u32,
        mode: u32,
        len: u64,
        bs: u64,
        nblocks: u64,
        zla: u32,
        mtime: u32,
        parent: usize,
    ) -> Vec<u8> {
        let g = &self.g;
        let mut fd = vec![0u8; g.fd_size as usize];
        p32(&mut fd, 0, 0x10C0_0001);
        p64(&mut fd, 4, fdv);
        let m = g.fd_meta;
        p32(&mut fd, m, addr);
        p32(&mut fd, m + 4, 1);
        p32(&mut fd, m + 8, if ty == 2 { 2 } else { 1 });
        p32(&mut fd, m + 0xC, ty);
        p64(&mut fd, m + 0x14, len);
        p64(&mut fd, m + 0x1C, bs);
        p64(&mut fd, m + 0x24, nblocks);
        p32(&mut fd, m + 0x2C, mtime);
        p32(&mut fd, m + 0x30, mtime);
        p32(&mut fd, m + 0x34, mtime);
        p32(&mut fd, m + 0x40, mode);
        p32(&mut fd, m + 0x44, zla);
        if self.v6 {
            p32(&mut fd, m + 0x64, 0x6664_6D64);
            p32(&mut fd, m + 0x68, addr);
            p32(&mut fd, m + 0x6C, 20);
            if addr != 4 {
                p32(&mut fd, m + 0x70, self.nodes.get(parent).map(|n| n.fd).unwrap_or(4));
            }
        }
        fd[(m + 0x89) as usize] = bs.trailing_zeros() as u8;
        fd
    }

    fn write_rdm(&mut self, n: &Node, size: u64, vendor: &str, model: &str, lun: u16, fdv: u64) {
        let mut fd = self.fd_base(n.fd, fdv, 6, 0o600, size, self.g.fbs, 0, 1, n.mtime, n.parent);
        let d = self.g.fd_data;
        fd[d as usize] = 2;
        fd[d as usize + 1] = 78;
        p16(&mut fd, d + 2, lun);
        let mut v = [b' '; 8];
        v[..vendor.len().min(8)].copy_from_slice(&vendor.as_bytes()[..vendor.len().min(8)]);
        put(&mut fd, d + 6, &v);
        let mut mo = [b' '; 16];
        mo[..model.len().min(16)].copy_from_slice(&model.as_bytes()[..model.len().min(16)]);
        put(&mut fd, d + 14, &mo);
        put(&mut fd, d + 34, b"naa.600000000000000000000000000000a1");
        self.wvol(fdv, &fd);
    }

    /// Directory file bytes for node `i` (entries: `.`, `..`, then children; the root also lists the
    /// system files first).
    fn dir_bytes(&self, i: usize, sys: &[&str]) -> Vec<u8> {
        let node = &self.nodes[i];
        let Kind::Dir(children) = &node.kind else { unreachable!() };
        let mut ents: Vec<(u32, u32, String)> = Vec::new();
        if i == 0 {
            for (j, s) in sys.iter().enumerate() {
                let ty = 5;
                ents.push((ty, self.fd_addr(j as u64 + 1), s.to_string()));
            }
        }
        for &c in children {
            let n = &self.nodes[c];
            let ty = match n.kind {
                Kind::Dir(_) => 2,
                Kind::File(_) => 3,
                Kind::Symlink(_) => 4,
                Kind::Rdm { .. } => 6,
            };
            ents.push((ty, n.fd, n.name.clone()));
        }
        let parent_fd = self.nodes[node.parent].fd;
        if !self.v6 {
            let mut out = Vec::new();
            let mut rec = |ty: u32, a: u32, name: &str| {
                let mut r = vec![0u8; 0x8C];
                p32(&mut r, 0, ty);
                p32(&mut r, 4, a);
                p32(&mut r, 8, 1);
                put(&mut r, 0xC, name.as_bytes());
                out.extend_from_slice(&r);
            };
            rec(2, node.fd, ".");
            rec(2, parent_fd, "..");
            for (ty, a, name) in &ents {
                rec(*ty, *a, name);
            }
            return out;
        }
        self.dir6_bytes(node.fd, parent_fd, &ents)
    }

    fn dir6_bytes(&self, me: u32, parent: u32, ents: &[(u32, u32, String)]) -> Vec<u8> {
        let bs = self.g.md as usize;
        let per = (bs - 0x40) / 0x120;
        let nblocks = ents.len().div_ceil(per);
        let mut d = vec![0u8; 0x10000 + (nblocks + 1) * bs];
        p32(&mut d, 0, 0xF5_0001);
        p32(&mut d, 4, ents.len() as u32 + 2);
        p32(&mut d, 8, ents.len() as u32 + 2);
        p32(&mut d, 0xC, 1);
        p32(&mut d, 0x10, 0);
        let entry = |d: &mut Vec<u8>, at: usize, ty: u32, a: u32, name: &str| {
            p32(d, at as u64, ty);
            p32(d, at as u64 + 4, a);
            p32(d, at as u64 + 8, 1);
            p64(d, at as u64 + 0x10, at as u64);
            put(d, at as u64 + 0x18, name.as_bytes());
        };
        entry(&mut d, 0x3B8, 2, me, ".");
        entry(&mut d, 0x4D8, 2, parent, "..");
        // Block 0: the allocation map; blocks 1..: directory entries.
        let map = 0x10000;
        p16(&mut d, map as u64, 0);
        p16(&mut d, map as u64 + 2, 3);
        let mut nib = vec![3u8];
        for b in 0..nblocks {
            let used = (ents.len() - b * per).min(per);
            nib.push(if used < per { 1 | 4 } else { 1 });
        }
        for (j, n) in nib.iter().enumerate() {
            let at = map + 0x40 + j / 2;
            d[at] |= if j % 2 == 0 { n << 4 } else { *n };
        }
        for b in 0..nblocks {
            let blk = 0x10000 + (b + 1) * bs;
            let used = (ents.len() - b * per).min(per);
            p16(&mut d, blk as u64, 1);
            p16(&mut d, blk as u64 + 2, 1);
            p16(&mut d, blk as u64 + 4, per as u16);
            p16(&mut d, blk as u64 + 6, (per - used) as u16);
            for s in used..per {
                d[blk + 8 + s / 8] |= 1 << (s % 8);
            }
            for s in 0..used {
                let (ty, a, name) = &ents[b * per + s];
                entry(&mut d, blk + 0x40 + s * 0x120, *ty, *a, name);
            }
        }
        d
    }

    fn write_dir(&mut self, i: usize, sys: &[&str]) {
        let data = self.dir_bytes(i, sys);
        let n = self.nodes[i].clone();
        let fdv = self.fd_vol(n.fd_index);
        // Small directories in sub-blocks (the root in file blocks), large ones in file blocks.
        let layout = if i != 0 && (data.len() as u64) <= 8 * self.g.sbs { Layout::Sub } else { Layout::Direct };
        let f = FileSpec { size: data.len() as u64, layout, chunks: vec![(0, data)], sparse: false, tbz: vec![] };
        let mut tmp = n.clone();
        tmp.kind = Kind::File(f.clone());
        self.write_fd_for(&tmp, &f, fdv, 2, 0o755);
    }

    fn write_system(&mut self, sys: &[&str]) {
        self.write_resource_headers(sys.len() as u64);
        self.write_pointer_blocks();
        self.write_fbb();
        self.write_sdd_and_heartbeats();
        self.write_system_fds(sys);
        self.write_fs_descriptor();
    }

    /// Where system file `name` starts on the volume.
    fn sys_start(&self, name: &str) -> u64 {
        self.sys[name].0 * self.g.fbs
    }

    /// The resource files' headers (file descriptors, sub-blocks, pointer blocks; VMFS6 journal).
    fn write_resource_headers(&mut self, system_files: u64) {
        let v6 = self.v6;
        let total_fds = self.nodes.len() as u64 + system_files + 1;
        self.wvol(self.sys_start(".fdc.sf"), &res_meta(&self.fdc_res, total_fds, 4, v6));
        self.wvol(self.sys_start(".sbc.sf"), &res_meta(&self.sb_res, self.next_sb.max(1), 4, v6));
        self.wvol(self.sys_start(".pbc.sf"), &res_meta(&self.pb_res, self.next_pb.max(1), 4, v6));
        self.wvol(self.sys_start(".pb2.sf"), &res_meta(&self.pb2_res, self.next_pb2.max(1), 4, v6));
        if v6 {
            let jb = Res { rpc: 8, cpg: 4, rs: 0x1000, hdr: self.g.hdr };
            self.wvol(self.sys_start(".jbc.sf"), &res_meta(&jb, 0, 0, v6));
        }
    }

    fn write_pointer_blocks(&mut self) {
        let pbs: Vec<((bool, u64), Vec<u64>)> = self.pbs.iter().map(|(k, v)| (*k, v.clone())).collect();
        for ((pb2, k), v) in pbs {
            let (res, file) = if pb2 { (self.pb2_res, ".pb2.sf") } else { (self.pb_res, ".pbc.sf") };
            let mut b = Vec::with_capacity(v.len() * self.g.width as usize);
            for p in v {
                if self.g.width == 8 {
                    b.extend_from_slice(&p.to_le_bytes());
                } else {
                    b.extend_from_slice(&(p as u32).to_le_bytes());
                }
            }
            b.truncate(res.rs as usize);
            self.wvol(self.sys_start(file) + res.offset(k), &b);
        }
    }

    /// .fbb.sf: file-block allocation (VMFS5: one header; VMFS6: large blocks, then small ones).
    fn write_fbb(&mut self) {
        let (g_fbs, v6) = (self.g.fbs, self.v6);
        let total_blocks = self.b.size / g_fbs;
        let fbb = self.sys_start(".fbb.sf");
        if v6 {
            let lfb = Res { rpc: 16, cpg: 8, rs: 0x2000, hdr: self.g.hdr };
            let nlfb = self.b.size / self.g.lfbs;
            let mut m = res_meta(&lfb, nlfb, 0x35, v6);
            p32(&mut m, 0x34, 0x1000);
            self.wvol(fbb, &m);
            let sfb = Res { rpc: 512, cpg: 8, rs: 0, hdr: self.g.hdr };
            let mut m = res_meta(&sfb, total_blocks, 0x2A, v6);
            p32(&mut m, 0x38, 16);
            p32(&mut m, 0x3C, 8);
            p32(&mut m, 0x40, lfb.cgs() as u32);
            self.wvol(fbb + 0x1000, &m);
            // Large blocks in use by small blocks or files: all of them except the free top ones.
            let sfb_lfbs = (self.next_fb * g_fbs).div_ceil(self.g.lfbs);
            let free_lfb = self.next_lfb.saturating_sub(sfb_lfbs);
            let mut h = vec![0u8; 0x24];
            p32(&mut h, 0x10, 0x7263_6D64);
            p16(&mut h, 0x20, nlfb as u16);
            p16(&mut h, 0x22, free_lfb as u16);
            self.wvol(fbb + 0x10000 + self.g.md, &h);
            for r in 0..sfb_lfbs {
                let used = (self.next_fb - r * 512).min(512);
                let mut h = vec![0u8; 0x24];
                p32(&mut h, 0x10, 0x7263_6D64);
                p16(&mut h, 0x20, 512);
                p16(&mut h, 0x22, (512 - used) as u16);
                self.wvol(fbb + lfb.offset(r) + self.g.md, &h);
            }
        } else {
            let res = Res { rpc: 200, cpg: 64, rs: 0, hdr: 1024 };
            self.wvol(fbb, &res_meta(&res, total_blocks, 0, v6));
            let clusters = total_blocks.div_ceil(200);
            for c in 0..clusters {
                let total = (total_blocks - c * 200).min(200);
                let used = self.next_fb.saturating_sub(c * 200).min(total);
                let mut h = vec![0u8; 1024];
                p32(&mut h, 0, 0x10C0_0002);
                p64(&mut h, 4, fbb + 0x10000 + c * 1024);
                p32(&mut h, 512, c as u32);
                p32(&mut h, 516, total as u32);
                p32(&mut h, 520, (total - used) as u32);
                p32(&mut h, 524, used as u32);
                for j in used..total {
                    h[528 + j as usize / 8] |= 1 << (j % 8);
                }
                self.wvol(fbb + 0x10000 + (c / 64) * res.cgs() + (c % 64) * 1024, &h);
            }
        }
    }

    /// .sdd.sf (an empty system directory) and the heartbeat region (every slot free).
    fn write_sdd_and_heartbeats(&mut self) {
        let v6 = self.v6;
        // .sdd.sf: an empty system directory.
        let sdd_fd = self.fd_addr(7);
        let sdd_data = if v6 {
            let mut d = self.dir6_bytes(sdd_fd, 4, &[]);
            d.truncate(0x11000);
            d
        } else {
            let mut d = vec![0u8; 280];
            p32(&mut d, 0, 2);
            p32(&mut d, 4, sdd_fd);
            put(&mut d, 0xC, b".");
            p32(&mut d, 0x8C, 2);
            p32(&mut d, 0x90, 4);
            put(&mut d, 0x98, b"..");
            d
        };
        self.wvol(self.sys_start(".sdd.sf"), &sdd_data);
        // Heartbeats: every slot free.
        let (slot, n) = if v6 { (self.g.md, 1024) } else { (512, 2048) };
        let mut hb = vec![0u8; (slot * n) as usize];
        for i in 0..n {
            p32(&mut hb, i * slot, 0xABCD_EF01);
            p64(&mut hb, i * slot + 4, 0x30_0000 + i * slot);
        }
        self.wvol(0x30_0000, &hb);
    }

    fn write_system_fds(&mut self, sys: &[&str]) {
        let g_fbs = self.g.fbs;
        for (j, name) in sys.iter().enumerate() {
            let (blk, nb, len) = self.sys[name];
            let k = j as u64 + 1;
            let a = self.fd_addr(k);
            let fdv = self.fd_vol(k);
            let mode = if *name == ".sdd.sf" { 0o40700 } else { 0o400 };
            let mut fd = self.fd_base(a, fdv, 5, mode, len, g_fbs, nb, 1, T0, 0);
            for i in 0..nb {
                let p = self.fb_addr(blk + i, false);
                if self.g.width == 8 {
                    p64(&mut fd, self.g.fd_addrs + i * 8, p);
                } else {
                    p32(&mut fd, self.g.fd_addrs + i * 4, p as u32);
                }
            }
            self.wvol(fdv, &fd);
        }
    }

    fn write_fs_descriptor(&mut self) {
        let (g_fbs, v6) = (self.g.fbs, self.v6);
        let mut sd = vec![0u8; 512];
        p32(&mut sd, 0, 0x2FAB_F15E);
        p32(&mut sd, 4, if v6 { 24 } else { 14 });
        sd[8] = if v6 { 82 } else { 81 };
        put(&mut sd, 9, &uuid(1));
        p32(&mut sd, 0x19, 0x6); // dense sub-blocks
        put(&mut sd, 0x1D, self.b.label.as_bytes());
        p32(&mut sd, 0x9D, 512);
        p64(&mut sd, 0xA1, g_fbs);
        p32(&mut sd, 0xA9, T0);
        p32(&mut sd, 0xAD, 1);
        put(&mut sd, 0xB1, &uuid(2));
        p32(&mut sd, 0xB1 + 16, 1);
        p32(&mut sd, 0xD1, 0x10000);
        p32(&mut sd, 0xD5, self.fdc_res.cpg as u32);
        p32(&mut sd, 0xD9, self.g.sbs as u32);
        p64(&mut sd, 0xE1, self.fd_vol(6));
        p32(&mut sd, 0xE9, self.fd_addr(6));
        p64(&mut sd, 0x105, self.fd_vol(7));
        p32(&mut sd, 0x10D, self.fd_addr(7));
        if v6 {
            p32(&mut sd, 0x130, 512);
            p32(&mut sd, 0x134, self.g.md as u32);
            p16(&mut sd, 0x138, 9);
            p16(&mut sd, 0x13E, 16);
            p16(&mut sd, 0x140, 44);
            p32(&mut sd, 0x144, g_fbs as u32);
            p32(&mut sd, 0x148, 2 * g_fbs as u32);
        }
        self.wvol(0x20_0000, &sd);
    }

    fn write_lvm(&self) {
        let v6 = self.v6;
        let md: u64 = if v6 { 4096 } else { 512 };
        let pes = self.b.size / PE;
        for (i, f) in self.devs.iter().enumerate() {
            let (first, n) = Self::pes_on(pes, self.b.devices, i);
            let h0 = 0x10_0000u64;
            let mut h = vec![0u8; 512];
            p32(&mut h, 0, 0xC001_D00D);
            p32(&mut h, 4, if v6 { 6 } else { 5 });
            p32(&mut h, 8, 0x15);
            p32(&mut h, 0x5A, 512);
            p64(&mut h, 0x5E, DATA_OFFSET + n * PE);
            p32(&mut h, 0x66, 1);
            p32(&mut h, 0x6A, n as u32);
            p32(&mut h, 0x6E, (n - 1) as u32);
            p64(&mut h, 0x7A, DATA_OFFSET);
            put(&mut h, 0x82, &uuid(10 + i as u32));
            p32(&mut h, 0xBE, 1);
            if v6 {
                p32(&mut h, 0xCA, md as u32);
                p32(&mut h, 0xCE, n as u32);
            }
            f.write_all_at(&h, h0).unwrap();
            let mut v = vec![0u8; 512];
            p64(&mut v, 0, self.b.size);
            p64(&mut v, 8, 2);
            p32(&mut v, 0x10, 1);
            put(&mut v, 0x14, b"synthetic-volume");
            put(&mut v, 0x54, &uuid(2));
            p32(&mut v, 0x64, 1);
            p32(&mut v, 0x70, 0);
            p32(&mut v, 0x74, n as u32);
            p64(&mut v, 0x78, first);
            p64(&mut v, 0x80, first + n - 1);
            p32(&mut v, 0x90, self.b.devices as u32);
            f.write_all_at(&v, h0 + md).unwrap();
            if i == 0 {
                for d in 0..self.b.devices {
                    let name = format!("synthetic.dev{d}:1");
                    f.write_all_at(name.as_bytes(), h0 + md + 0x7E000 + d as u64 * 256).unwrap();
                }
            }
            let bitmap = if v6 { md.max(1024) } else { 1024 };
            let maps = h0 + md + 0x7E000 + 0x2000;
            let mut bm = vec![0u8; bitmap as usize];
            for j in 0..n {
                bm[(j / 8) as usize] |= 1 << (j % 8);
            }
            f.write_all_at(&bm, maps).unwrap();
            for j in 0..n {
                let mut e = vec![0u8; 128];
                e[0] = 1;
                p32(&mut e, 1, (first + j) as u32);
                p32(&mut e, 5, 0);
                p64(&mut e, 9, DATA_OFFSET + j * PE);
                p64(&mut e, 0x11, (first + j) * PE);
                p64(&mut e, 0x19, PE);
                p32(&mut e, 0x21, 1);
                f.write_all_at(&e, maps + bitmap + j * 128).unwrap();
            }
        }
    }
}

/// The expected bytes of `[off, off+len)` of a file built from `spec` (to-be-zeroed blocks and
/// holes are zeros).
pub fn expected(spec: &FileSpec, off: u64, len: u64) -> Vec<u8> {
    let end = (off + len).min(spec.size);
    let mut v = vec![0u8; end.saturating_sub(off) as usize];
    for (o, d) in &spec.chunks {
        let s = (*o).max(off);
        let e = (o + d.len() as u64).min(end);
        if s < e {
            v[(s - off) as usize..(e - off) as usize].copy_from_slice(&d[(s - o) as usize..(e - o) as usize]);
        }
    }
    v
}

/// A resource file's header: `n` resources of `res`'s shape (VMFS6 adds its signature and flags).
fn res_meta(res: &Res, n: u64, flags: u32, v6: bool) -> Vec<u8> {
    let mut m = vec![0u8; 0x58];
    p32(&mut m, 0, res.rpc as u32);
    p32(&mut m, 4, res.cpg as u32);
    p32(&mut m, 8, 0x10000);
    p32(&mut m, 0xC, res.rs as u32);
    p32(&mut m, 0x10, res.cgs() as u32);
    p32(&mut m, 0x14, n as u32);
    p32(&mut m, 0x18, n.div_ceil(res.rpc.max(1)).div_ceil(res.cpg).max(1) as u32);
    if v6 {
        p32(&mut m, 0x20, 0x7266_6D64);
        p32(&mut m, 0x24, 1);
        p32(&mut m, 0x28, flags);
    }
    m
}
