#!/usr/bin/env bash
# Regenerates the committed fixtures in testdata/ (see testdata/README.md):
#   sample.vmdk        monolithicSparse (qemu-img) of a deterministic 16 MiB patterned raw disk
#   sample.raw.sha256  sha256 of that 16 MiB raw content
# Needs python3 and qemu-img. The output is byte-for-byte reproducible with the same qemu-img
# version: the raw content is derived from fixed seeds, and the random CID qemu-img writes is
# replaced by a fixed one.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

command -v qemu-img >/dev/null || { echo "make-samples.sh: qemu-img is required (Debian: qemu-utils)" >&2; exit 1; }

# The raw disk. 16 MiB = 256 grains of 64 KiB; about 6 MiB of it is non-zero:
#   - text-like blocks (log lines drawn from a small vocabulary: compresses well, so the committed
#     file packs small), some starting or ending in the middle of a grain, one with 4 KiB holes;
#   - pseudo-random blocks (SHA-256 counter stream: incompressible, catches byte-order mistakes);
#   - an MBR-like first sector and a marker in the very last sector;
#   - zero gaps between them (unallocated grains in the sparse file).
python3 - "$work/sample.raw" <<'EOF'
import hashlib, sys

MiB, KiB = 1 << 20, 1 << 10
size = 16 * MiB
raw = bytearray(size)

def prng_bytes(seed, n):
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"%s:%d" % (seed, i)).digest()
        i += 1
    return bytes(out[:n])

WORDS = ("vmdk grain table directory sector extent flat sparse stream thin thick eager zeroed "
         "redo delta parent child chain capacity descriptor header footer marker cluster block "
         "write read clone copy allocate punch hole offset length adapter geometry cylinder head").split()

def text_bytes(seed, n):
    state = int.from_bytes(hashlib.sha256(seed).digest()[:8], "little") | 1
    out = bytearray()
    line = 0
    while len(out) < n:
        words = []
        for _ in range(8):
            state = (state * 6364136223846793005 + 1442695040888963407) & ((1 << 64) - 1)
            words.append(WORDS[(state >> 33) % len(WORDS)])
        out += b"%08d %s: %s lba=%d\n" % (line, seed, " ".join(words).encode(), (state >> 20) & 0xFFFFF)
        line += 1
    return bytes(out[:n])

def put(at, data):
    raw[at:at + len(data)] = data

put(0, text_bytes(b"boot", 2 * MiB))                               # grains 0-31
raw[446:510] = bytes(range(64))                                     # MBR-like partition area
raw[510:512] = b"\x55\xaa"
put(3 * MiB, prng_bytes(b"random-a", 512 * KiB))                    # grains 48-55
put(3 * MiB + 512 * KiB, text_bytes(b"tail", 612 * KiB))            # ends mid-grain
put(6 * MiB, text_bytes(b"holes", 1536 * KiB))                      # with 4 KiB holes:
for off in range(6 * MiB + 60 * KiB, 6 * MiB + 1536 * KiB, 64 * KiB):
    raw[off:off + 4 * KiB] = bytes(4 * KiB)
put(10 * MiB, prng_bytes(b"random-b", 512 * KiB))                   # grains 160-167
put(12 * MiB + 512, text_bytes(b"unaligned", 700 * KiB))            # starts mid-grain
put(15 * MiB + 512 * KiB, text_bytes(b"end", 512 * KiB))            # the last 8 grains
put(size - 512, b"END OF SAMPLE DISK".ljust(512, b"\xee"))         # last sector

nonzero_grains = sum(any(raw[g:g + 64 * KiB]) for g in range(0, size, 64 * KiB))
nonzero_bytes = size - raw.count(0)
print("sample.raw: %d bytes, %d non-zero bytes, %d of %d grains allocated"
      % (size, nonzero_bytes, nonzero_grains, size // (64 * KiB)))
open(sys.argv[1], "wb").write(raw)
EOF

qemu-img convert -q -f raw -O vmdk -o subformat=monolithicSparse,adapter_type=lsilogic \
    "$work/sample.raw" "$work/sample.vmdk"

# qemu-img writes a random CID; pin it (the embedded descriptor is NUL-padded in sectors 1-20).
python3 - "$work/sample.vmdk" <<'EOF'
import re, struct, sys
path = sys.argv[1]
with open(path, "r+b") as f:
    head = f.read(512)
    desc_off, desc_size = struct.unpack_from("<QQ", head, 28)
    f.seek(desc_off * 512)
    area = f.read(desc_size * 512)
    text = area.rstrip(b"\0")
    text, n = re.subn(rb"(?m)^CID=[0-9a-fA-F]+$", b"CID=5a3c0f17", text)
    assert n == 1, "no CID line in the embedded descriptor"
    f.seek(desc_off * 512)
    f.write(text.ljust(len(area), b"\0"))
EOF

qemu-img compare -q -f raw -F vmdk "$work/sample.raw" "$work/sample.vmdk"
cp "$work/sample.vmdk" "$here/sample.vmdk"
(cd "$work" && sha256sum sample.raw) >"$here/sample.raw.sha256"

echo "testdata/sample.vmdk: $(stat -c %s "$here/sample.vmdk") bytes," \
    "$(gzip -9c "$here/sample.vmdk" | wc -c) bytes gzipped"
echo "testdata/sample.raw.sha256: $(cat "$here/sample.raw.sha256")"
