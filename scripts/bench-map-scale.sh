#!/usr/bin/env bash
# Metadata cost against disk size: the same 1 MiB change above a 1 GiB and a 1 TiB disk (ESX delta
# over thin, hosted child over monosparse, ESX 2 .REDO), timed for --map, --changed-blocks, -x check,
# --info and -m; plus an empty 2 TiB-class COWD, a 1-sector-grain sparse file of 2^36 sectors and a
# ZERO descriptor of 2^55-1 sectors. Whole-process wall times (GNU time), one line per command.
#
# usage: scripts/bench-map-scale.sh [--sizes 1g,1t] [--timeout SECONDS] [--bin PATH] [--keep DIR]
# Needs about 300 MiB of free space in $TMPDIR (the hosted 1 TiB disks preallocate their tables).
set -euo pipefail
cd "$(dirname "$0")/.."
sizes="1g,1t"
timeout=300
bin=""
keep=""
while [ $# -gt 0 ]; do
    case "$1" in
        --sizes) sizes="$2"; shift 2 ;;
        --timeout) timeout="$2"; shift 2 ;;
        --bin) bin="$2"; shift 2 ;;
        --keep) keep="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ -z "$bin" ]; then
    cargo build --release --bin vmkfs >&2
    bin="$PWD/target/release/vmkfs"
fi
work="${keep:-$(mktemp -d)}"
mkdir -p "$work"
[ -z "$keep" ] && trap 'rm -rf "$work"' EXIT

# t LABEL CMD...: runs CMD in $dir with a timeout, prints "LABEL seconds" (or "> timeout").
t() {
    local label="$1"; shift
    local start end rc
    start=$(date +%s.%N)
    set +e
    (cd "$dir" && timeout "$timeout" "$@" >/dev/null 2>"$work/err")
    rc=$?
    set -e
    end=$(date +%s.%N)
    if [ $rc -eq 124 ]; then
        printf '%-44s > %ss (killed)\n' "$label" "$timeout"
    elif [ $rc -ne 0 ] && [ $rc -ne 1 ]; then
        printf '%-44s failed (exit %s): %s\n' "$label" "$rc" "$(head -c 200 "$work/err")"
    else
        printf '%-44s %8.3fs\n' "$label" "$(echo "$end - $start" | bc)"
    fi
}

mib_at_half() { # offset of the 1 MiB change: the middle of the disk
    case "$1" in
        *g) echo $(( ${1%g} * 512 * 1024 * 1024 )) ;;
        *t) echo $(( ${1%t} * 512 * 1024 * 1024 * 1024 )) ;;
    esac
}

head -c 1048576 /dev/urandom >"$work/mib"
for size in ${sizes//,/ }; do
    off=$(mib_at_half "$size")
    # ESX delta (vmfsSparse, COWD) over a thin disk.
    dir="$work/esx-$size"; mkdir -p "$dir"
    (cd "$dir" && "$bin" -c "$size" -d thin base.vmdk >/dev/null && "$bin" --snapshot base.vmdk >/dev/null \
        && "$bin" --write-at "$off" base-000001.vmdk <"$work/mib" >/dev/null)
    t "esx $size --map" "$bin" --map base-000001.vmdk
    t "esx $size --changed-blocks" "$bin" --changed-blocks base-000001.vmdk
    t "esx $size --info" "$bin" --info base-000001.vmdk
    t "esx $size -x check" "$bin" -x check base-000001.vmdk
    t "esx $size -m" "$bin" -m base-000001.vmdk
    # Hosted child over monosparse.
    dir="$work/hosted-$size"; mkdir -p "$dir"
    (cd "$dir" && "$bin" -c "$size" -d monosparse base.vmdk >/dev/null && "$bin" --snapshot base.vmdk >/dev/null \
        && "$bin" --write-at "$off" base-000001.vmdk <"$work/mib" >/dev/null)
    t "hosted $size --map" "$bin" --map base-000001.vmdk
    t "hosted $size --changed-blocks" "$bin" --changed-blocks base-000001.vmdk
    t "hosted $size -x check" "$bin" -x check base-000001.vmdk
    t "hosted $size -m" "$bin" -m base-000001.vmdk
    # ESX 2 REDO log over a thin disk.
    dir="$work/redo-$size"; mkdir -p "$dir"
    (cd "$dir" && "$bin" -c "$size" -d thin base.vmdk >/dev/null && "$bin" --snapshot --legacy-redo base.vmdk >/dev/null \
        && "$bin" --write-at "$off" base.vmdk.REDO <"$work/mib" >/dev/null)
    t "redo $size --map" "$bin" --map base.vmdk.REDO
    t "redo $size --changed-blocks" "$bin" --changed-blocks base.vmdk.REDO
    t "redo $size -m" "$bin" -m base.vmdk.REDO
done

# An empty COWD of 2^32-1 sectors (2 TiB less a sector, the most 32-bit sector numbers hold).
dir="$work/cowd2t"; mkdir -p "$dir"
python3 - "$dir/empty.vmdk" <<'EOF'
import struct, sys
sectors, grain, gtes = 2**32 - 1, 1, 4096
gdes = -(-sectors // (grain * gtes))
h = bytearray(2048)
struct.pack_into("<4sIIIIII", h, 0, b"COWD", 1, 3, sectors, grain, 4, gdes)
overhead = 4 + -(-gdes * 4 // 512)
struct.pack_into("<I", h, 28, overhead)
with open(sys.argv[1], "wb") as f:
    f.write(h)
    f.truncate(overhead * 512)
EOF
t "empty 2 TiB COWD --info" "$bin" --info empty.vmdk
t "empty 2 TiB COWD --map" "$bin" --map empty.vmdk

# A hosted sparse file of 2^36 sectors with 1-sector grains and 4096-entry tables: a 64 MiB
# directory, written out (so the file holds what its header claims), every entry 0.
dir="$work/grain1"; mkdir -p "$dir"
python3 - "$dir/g1.vmdk" <<'EOF'
import struct, sys
cap, grain, gtes = 2**36, 1, 4096
gdes = cap // (grain * gtes)
gd_sectors = gdes * 4 // 512
h = bytearray(512)
struct.pack_into("<4sIIQQQQI", h, 0, b"KDMV", 1, 1, cap, grain, 0, 0, gtes)
struct.pack_into("<QQQ", h, 48, 0, 1, 1 + gd_sectors)
h[73:77] = b"\n \r\n"
with open(sys.argv[1], "wb") as f:
    f.write(h)
    zero = bytes(1 << 20)
    for _ in range(gdes * 4 // len(zero)):
        f.write(zero)
EOF
t "1-sector grains, 2^36 sectors --map" "$bin" --map g1.vmdk
t "1-sector grains, 2^36 sectors --info" "$bin" --info g1.vmdk

dir="$work/zero"; mkdir -p "$dir"
printf 'version=1\nCID=1\nparentCID=ffffffff\ncreateType="custom"\nRW 36028797018963967 ZERO\n' >"$dir/z.vmdk"
t "ZERO 2^55-1 sectors --info" "$bin" --info z.vmdk
t "ZERO 2^55-1 sectors --map" "$bin" --map z.vmdk
