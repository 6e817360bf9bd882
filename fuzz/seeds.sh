#!/usr/bin/env bash
# Writes seed corpora for the fuzz targets into fuzz/corpus/<target>/ (the corpus folder is not
# committed: CI runs this before fuzzing). Needs python3; uses qemu-img for the hosted sparse and
# streamOptimized seeds when it is installed. Safe to run again: it only (re)writes seed_* files.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
corpus="$here/corpus"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$corpus"/{descriptor,sparse,stream,stream_seq,cowd,sesparse,rdm_mapping}

# A 1 MiB raw disk: text at the start, a pseudo-random block at 640 KiB, zeros elsewhere.
python3 - "$work/small.raw" <<'EOF'
import random, sys
raw = bytearray(1 << 20)
text = b"".join(b"line %04d: the quick brown fox jumps over the lazy dog\n" % i for i in range(300))
raw[:len(text)] = text
rng = random.Random(7)
raw[640 << 10:(640 << 10) + 8192] = bytes(rng.getrandbits(8) for _ in range(8192))
raw[(1 << 20) - 512:] = b"\xee" * 512
open(sys.argv[1], "wb").write(raw)
EOF

if command -v qemu-img >/dev/null 2>&1; then
    qemu-img convert -q -f raw -O vmdk -o subformat=monolithicSparse "$work/small.raw" "$corpus/sparse/seed_qemu_mono.vmdk"
    qemu-img convert -q -f raw -O vmdk -o subformat=monolithicSparse,zeroed_grain=on "$work/small.raw" \
        "$corpus/sparse/seed_qemu_zeroed_grain.vmdk"
    qemu-img create -q -f vmdk -o subformat=monolithicSparse "$corpus/sparse/seed_qemu_empty.vmdk" 3M
    qemu-img convert -q -f raw -O vmdk -o subformat=streamOptimized "$work/small.raw" "$corpus/stream/seed_qemu_stream.vmdk"
    qemu-img create -q -f vmdk -o subformat=streamOptimized "$corpus/stream/seed_qemu_empty.vmdk" 2M
    # The embedded descriptor qemu writes, as a descriptor seed.
    dd if="$corpus/sparse/seed_qemu_mono.vmdk" bs=512 skip=1 count=20 status=none | tr -d '\000' \
        >"$corpus/descriptor/seed_qemu_embedded.txt"
else
    echo "seeds.sh: qemu-img not found; skipping the qemu-made sparse and stream seeds" >&2
fi

# Hand-made binary seeds: a VMware-layout streamOptimized file (footer, GT/GD markers, EOS), COWD
# and seSparse files, and short "parameter" inputs that the targets expand into valid headers.
python3 - "$corpus" <<'EOF'
import os, struct, sys, zlib
corpus = sys.argv[1]

def put(target, name, data):
    with open(os.path.join(corpus, target, "seed_" + name), "wb") as f:
        f.write(data)

def pad(b, n=512):
    return b + b"\0" * (-len(b) % n)

def kdmv_header(version, flags, capacity, grain, desc_off, desc_size, gtes, rgd, gd, overhead, compress):
    h = struct.pack("<4sIIQQQQIQQQB4sH", b"KDMV", version, flags, capacity, grain, desc_off, desc_size,
                    gtes, rgd, gd, overhead, 0, b"\n \r\n", compress)
    return pad(h)

# streamOptimized as VMware and VirtualBox write it: header says "GD at end", grains with markers,
# a GT marker and table, a GD marker and directory, footer marker, footer, end-of-stream marker.
grain = 128
capacity = 4 * 512 * grain  # 4 tables' worth, only table 0 and 2 present
desc = (b'# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="streamOptimized"\n'
        b'# Extent description\nRW %d SPARSE "disk.vmdk"\n\n# The Disk Data Base\n#DDB\n\n'
        b'ddb.adapterType = "lsilogic"\nddb.toolsVersion = "2147483647"\n' % capacity)
out = bytearray(kdmv_header(3, 0x30001, capacity, grain, 1, 1, 512, 0, 0xFFFFFFFFFFFFFFFF, 2, 1))
out += pad(desc)
gts = {}
for g, fill in [(0, b"vmdk stream seed "), (5, b"\x00\x01\x02\x03"), (1024 + 3, b"last table ")]:
    data = (fill * (grain * 512 // len(fill) + 1))[: grain * 512]
    comp = zlib.compress(data, 6)
    gts.setdefault(g // 512, {})[g % 512] = len(out) // 512
    out += pad(struct.pack("<QI", g * grain, len(comp)) + comp)
gd = [0] * 4
for t in sorted(gts):
    out += pad(struct.pack("<QII", 4, 0, 1))  # GT marker
    gd[t] = len(out) // 512
    table = [0] * 512
    for i, s in gts[t].items():
        table[i] = s
    out += struct.pack("<512I", *table)
out += pad(struct.pack("<QII", 1, 0, 2))  # GD marker
gd_at = len(out) // 512
out += pad(struct.pack("<4I", *gd))
out += pad(struct.pack("<QII", 1, 0, 3))  # footer marker
out += kdmv_header(3, 0x30001, capacity, grain, 1, 1, 512, 0, gd_at, 2, 1)
out += b"\0" * 512  # EOS
put("stream", "vmware_layout.vmdk", bytes(out))

# COWD (ESX redo log): 1-sector grains, 4096-entry tables, directory at sector 4.
def cowd(version, grain, num_sectors, gtes, grains):
    num_gdes = -(-num_sectors // (gtes * grain))
    gd_sectors = -(-num_gdes * 4 // 512)
    gt_sectors = gtes * 4 // 512
    h = bytearray(2048)
    struct.pack_into("<4sIIIIIII", h, 0, b"COWD", version, 3, num_sectors, grain, 4, num_gdes, 0)
    struct.pack_into("<I", h, 1060, 1)
    body = bytearray(gd_sectors * 512)
    tables = {}
    for g in grains:
        tables.setdefault(g // gtes, []).append(g % gtes)
    gt_at = {}
    next_sector = 4 + gd_sectors
    for t in sorted(tables):
        gt_at[t] = next_sector
        next_sector += gt_sectors
    for t, s in gt_at.items():
        struct.pack_into("<I", body, t * 4, s)
    body += bytearray(len(gt_at) * gt_sectors * 512)
    data = bytearray()
    for t in sorted(tables):
        for i in tables[t]:
            g = t * gtes + i
            struct.pack_into("<I", body, (gt_at[t] - 4) * 512 + i * 4, next_sector + len(data) // 512)
            data += pad(b"COWD grain %d " % g * (grain * 512 // 16))[: grain * 512]
    struct.pack_into("<I", h, 28, next_sector + len(data) // 512)
    return bytes(h + body + data)

put("cowd", "esx.vmdk", cowd(1, 1, 16384, 4096, [0, 1, 2, 100, 4095, 4096, 9000]))
put("cowd", "ws3.vmdk", cowd(3, 8, 8192, 512, [0, 3, 600]))

# seSparse: constant header, volatile header, directory, tables, grains.
def sesparse(capacity, grains):
    gd_off, gd_size, gt_off = 2, 1, 3
    tables = sorted({g // 4096 for g, _ in grains})
    gt_size = 64 * max(1, len(tables))
    grains_off = gt_off + gt_size
    h = bytearray(1024)
    struct.pack_into("<QQQQQ", h, 0, 0xCAFEBABE, 0x200000001, capacity, 8, 64)
    struct.pack_into("<QQ", h, 80, 1, 1)
    struct.pack_into("<QQQQ", h, 128, gd_off, gd_size, gt_off, gt_size)
    struct.pack_into("<QQ", h, 192, grains_off, 8 * len(grains))
    struct.pack_into("<Q", h, 512, 0xCAFECAFE)
    gd = bytearray(512)
    gts = bytearray(gt_size * 512)
    for slot, t in enumerate(tables):
        struct.pack_into("<Q", gd, t * 8, 0x1000000000000000 | slot)
    data = bytearray()
    for idx, (g, kind) in enumerate(grains):
        slot = tables.index(g // 4096)
        at = slot * 32768 + (g % 4096) * 8
        if kind == "data":
            e = (3 << 60) | ((idx & 0xFFF) << 48) | (idx >> 12)
        else:
            e = (2 << 60) if kind == "zero" else (1 << 60)
        struct.pack_into("<Q", gts, at, e)
        data += (b"seSparse grain %d " % g * 300)[:4096]
    return bytes(h + gd + gts + data)

put("sesparse", "esxi.vmdk", sesparse(65536, [(0, "data"), (1, "zero"), (2, "unmapped"), (7, "data"), (4097, "data")]))

# Parameter seeds (not starting with a magic): the targets build the header from these bytes.
put("sparse", "params_plain", bytes([3, 5, 0, 16, 0, 0, 0, 0]) + struct.pack("<8I", 0, 0, 24, 0, 32, 0, 0, 0))
put("sparse", "params_rgd_zeroed", bytes([7, 9, 3, 2, 0, 0, 0, 0]) + struct.pack("<4I", 1, 0, 128, 0))
put("stream", "params_footer", bytes([7, 9, 8, 2, 0, 0, 0, 0]))
put("cowd", "params", bytes([0, 0, 0, 32, 0, 0, 0, 0]) + struct.pack("<4I", 0, 40, 0, 41))
put("cowd", "params_ws3", bytes([3, 3, 0, 16, 1, 0, 0, 0]))
put("sesparse", "params", bytes([0, 0, 16, 0, 4, 0, 0, 0]) + struct.pack("<2Q", (3 << 60) | (1 << 48), 2 << 60))
EOF

# Hand-written descriptors: every createType shape the fact sheet describes, lenient spellings,
# and extent lines naming the files the descriptor target provides (flat.bin, sparse.vmdk).
d="$corpus/descriptor"
cat >"$d/seed_esx_vmfs.txt" <<'EOF'
# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=fffffffe
parentCID=ffffffff
isNativeSnapshot="no"
createType="vmfs"

# Extent description
RW 83886080 VMFS "VM-flat.vmdk"

# The Disk Data Base
#DDB

ddb.adapterType = "lsilogic"
ddb.geometry.cylinders = "5221"
ddb.geometry.heads = "255"
ddb.geometry.sectors = "63"
ddb.longContentID = "8a3b9c1d2e3f40516273849afffffffe"
ddb.thinProvisioned = "1"
ddb.uuid = "60 00 C2 99 d3 f5 dc ad-9e 25 3e 89 48 2c 3f de"
ddb.virtualHWVersion = "11"
EOF
cat >"$d/seed_flat_present.txt" <<'EOF'
# Disk DescriptorFile
version=1
CID=5523cf8
parentCID=ffffffff
createType="monolithicFlat"
# Extent description
RW 64 FLAT "flat.bin" 0
RW 32 FLAT "flat.bin" 64
RDONLY 16 ZERO
RW 136 SPARSE "sparse.vmdk"
EOF
cat >"$d/seed_split_sparse.txt" <<'EOF'
# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=0000abcd
parentCID=ffffffff
createType="twoGbMaxExtentSparse"

# Extent description
RW 4192256 SPARSE "disk-s001.vmdk"
RW 4192256 SPARSE "disk-s002.vmdk"
RW 2101248 SPARSE "disk-s003.vmdk"

# The Disk Data Base
#DDB

ddb.virtualHWVersion = "4"
ddb.geometry.cylinders = "10402"
ddb.geometry.heads = "16"
ddb.geometry.sectors = "63"
ddb.adapterType = "ide"
ddb.toolsVersion = "2147483647"
EOF
cat >"$d/seed_delta.txt" <<'EOF'
# Disk DescriptorFile
version=3
encoding="UTF-8"
CID=3a5bcd12
parentCID=9f00e1a2
isNativeSnapshot="no"
createType="vmfsSparse"
parentFileNameHint="sql-000004.vmdk"
# Change Tracking File
changeTrackPath="sql-000005-ctk.vmdk"
# Extent description
RW 16777216 VMFSSPARSE "sql-000005-delta.vmdk"

# The Disk Data Base
#DDB

ddb.longContentID = "0123456789abcdef012345673a5bcd12"
EOF
cat >"$d/seed_sesparse_rdm.txt" <<'EOF'
# Disk DescriptorFile
version=1
CID=fffffffe
parentCID=ffffffff
createType="seSparse"
parentFileNameHint="/vmfs/volumes/ds1/vm/vm.vmdk"
RW 2147483648 SESPARSE "vm-000001-sesparse.vmdk"
RW 8 VMFSRDM "vm-rdm.vmdk"
NOACCESS 8 VMFSRAW "/vmfs/devices/disks/naa.600" 0 part-uuid devid
EOF
printf '# comment\r\nVERSION = 1\r\ncid = 5523cf8\r\nParentCID= FFFFFFFF\r\nCreateType = MONOLITHICFLAT\r\nrw 64 flat flat.bin 0\r\nRDONLY 50 zero\r\nDDB.AdapterType=ide\r\nunknownKey = "kept"\r\nbare=value\r\n' \
    >"$d/seed_lenient_crlf.txt"

# RDM mapping records (rdm/FORMAT.md): a block device with every identity field, a loop device
# and a regular file.
python3 - "$corpus/rdm_mapping" <<'EOF'
import struct, sys, zlib
def record(mode, kind, size, created, fields):
    body = b"".join(struct.pack("<HH", t, len(v)) + v for t, v in fields)
    head = b"VMKFSRDM" + struct.pack("<HBBIQQIHH", 1, mode, kind, 0, size, created, len(body), len(fields), 0)
    data = head + body
    return data + struct.pack("<I", zlib.crc32(data) & 0xffffffff)
out = sys.argv[1]
open(out + "/seed_block", "wb").write(record(2, 1, 10 << 30, 1700000000, [
    (1, b"/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"), (2, b"/dev/sdb"), (4, b"naa.5000c500a1b2c3d4"),
    (5, b"ZA1B2C3D"), (7, b"2"), (3, b"scsi-35000c500a1b2c3d4"), (3, b"wwn-0x5000c500a1b2c3d4")]))
open(out + "/seed_loop", "wb").write(record(1, 1, 8 << 20, 1700000000, [
    (1, b"/dev/loop0"), (2, b"/dev/loop0"), (6, b"/tmp/lun.img")]))
open(out + "/seed_file", "wb").write(record(1, 2, 4 << 20, 0, [(1, b"/vm/lun.img"), (2, b"/vm/lun.img")]))
EOF

# The sequential stream reader takes the same files as the random-access one, plus a stream of ours.
cp "$corpus"/stream/seed_* "$corpus/stream_seq/"
if [ -x "$here/../target/release/vmkfs" ]; then
    "$here/../target/release/vmkfs" -e - "$work/small.raw" -d streamoptimized 2>/dev/null \
        >"$corpus/stream_seq/seed_vmkfs_stream.vmdk" || rm -f "$corpus/stream_seq/seed_vmkfs_stream.vmdk"
fi

# VMFS seeds, cut from the first 32 MiB of the real images in ../shared (skipped when absent).
mkdir -p "$corpus"/{vmfs_lvm,vmfs_fsdesc,vmfs_filedesc,vmfs_dir}
vmfs="$here/../../shared/testdata/vmfs"
if [ -d "$vmfs" ]; then
    python3 - "$vmfs" "$corpus" <<'EOF'
import gzip, os, struct, sys
src, corpus = sys.argv[1], sys.argv[2]
def put(t, name, data):
    open(os.path.join(corpus, t, "seed_" + name), "wb").write(data)
for name in ("vmfs3.img", "vmfs5.bin", "vmfs6.bin"):
    path = os.path.join(src, name + ".gz")
    if not os.path.exists(path):
        continue
    with gzip.open(path, "rb") as g:
        d = g.read(32 << 20)
    H = 0x100000
    major = struct.unpack_from("<I", d, H + 4)[0]
    md = struct.unpack_from("<I", d, H + 0xCA)[0] if major >= 6 else 512
    bitmap = max(md, 1024) if major >= 6 else 1024
    pe = H + md + 0x80000 + bitmap
    put("vmfs_lvm", name, d[H:H + 512] + d[H + md:H + md + 512] + d[pe:pe + 4 * 128])
    vol = struct.unpack_from("<Q", d, pe + 9)[0]
    fsd = d[vol + 0x200000:vol + 0x200200]
    put("vmfs_fsdesc", name, fsd)
    v6 = struct.unpack_from("<I", fsd, 4)[0] >= 24
    fdc = vol + (0x700000 if v6 else 0x400000)
    put("vmfs_fsdesc", name + ".fdc", d[fdc:fdc + 0x58])
    cgo, cpg = struct.unpack_from("<II", fsd, 0xD1)
    hdr, fd = (8192, 8192) if v6 else (1024, 2048)
    root = fdc + cgo + cpg * hdr
    put("vmfs_filedesc", name + ".root", bytes([1 if v6 else 0]) + d[root:root + fd])
    put("vmfs_filedesc", name + ".fdc", bytes([1 if v6 else 0]) + d[root + 2 * fd:root + 3 * fd])
    blocks = struct.unpack_from("<Q" if v6 else "<I", d, root + (fd - 2560 if v6 else 1024))[0]
    length = struct.unpack_from("<Q", d, root + (4096 if v6 else 512) + 0x14)[0]
    blk = ((blocks >> 51) & 0x1FFF) + ((blocks >> 15) & 0x7FFFFFFF) * 512 if v6 else blocks >> 6
    data = d[vol + blk * (1 << 20):vol + blk * (1 << 20) + length]
    if v6:
        put("vmfs_dir", name, bytes([3]) + data[:0x600] + data[0x10000:])
    else:
        put("vmfs_dir", name, bytes([0]) + data)
EOF
else
    echo "seeds.sh: $vmfs not found; VMFS targets start from empty corpora" >&2
fi

# NBD connections (nbd_request): a first byte of 1 puts a valid handshake before the rest, so these
# seeds are transmission requests: read, write with its data, write zeroes, trim, flush, block
# status (plain and REQ_ONE), an oversized read, then a disconnect; and a raw handshake with options.
mkdir -p "$corpus/nbd_request"
python3 - "$corpus/nbd_request" <<'EOF2'
import os, struct, sys
d = sys.argv[1]
def req(cmd, off, length, flags=0, handle=1):
    return struct.pack(">IHHQQI", 0x25609513, flags, cmd, handle, off, length)
reqs = (req(0, 0, 4096) + req(1, 4096, 512, 1) + b"\xab" * 512 + req(6, 8192, 65536) + req(4, 0, 4096)
        + req(3, 0, 0) + req(7, 0, 1 << 20) + req(7, 4096, 8192, 8) + req(0, 0, 64 << 20) + req(2, 0, 0))
open(os.path.join(d, "seed_requests"), "wb").write(b"\x01" + reqs)
def opt(o, data=b""):
    return struct.pack(">QII", 0x49484156454F5054, o, len(data)) + data
hs = (struct.pack(">I", 3) + opt(3) + opt(8) + opt(9, struct.pack(">I", 0) + struct.pack(">I", 1)
      + struct.pack(">I", 5) + b"qemu:") + opt(6, struct.pack(">IH", 0, 1) + struct.pack(">H", 3)) + opt(2))
open(os.path.join(d, "seed_options"), "wb").write(b"\x00" + hs)
EOF2

n=$(find "$corpus" -name 'seed_*' | wc -l)
echo "seeds.sh: $n seed files under $corpus"
