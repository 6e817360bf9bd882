#!/usr/bin/env bash
# Reading a disk over NBD against reading it directly: `nbdcopy URI null:` of a `vmkfs --serve-nbd`
# export (read-only, so nbdcopy uses several connections), against `vmkfs -e - SRC -d raw`, run in
# turn; prints each round and the medians of the ratios nbd/direct. The direct read is timed twice:
# into /dev/null (no process ever receives the bytes: writes to /dev/null cost nothing) and into a
# reader (`| cat >/dev/null`, which receives every byte as nbdcopy does). The goal (issue 15) is
# nbdcopy at 80 % or more of the direct speed: a median ratio of 1.25 or less.
#
# usage: scripts/bench_nbd.sh [--rounds N] [--size MIB] [--fill F] [--format FMT] [--workdir DIR]
# Needs nbdcopy (Debian: libnbd-bin) and python3 (scripts/gen_image.py). Not a test: timings on a
# shared machine vary, so nothing here passes or fails.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=5 size=2048 fill=0.5 format=monosparse work=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --fill) fill=$2; shift 2 ;;
        --format) format=$2; shift 2 ;;
        --workdir) work=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
command -v nbdcopy >/dev/null || { echo "nbdcopy not found (Debian: libnbd-bin)" >&2; exit 2; }

cargo build --release --bin vmkfs
vmkfs=$PWD/target/release/vmkfs
if [ -z "$work" ]; then
    work=$(mktemp -d)
    trap 'kill "${server:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
else
    mkdir -p "$work"
    trap 'kill "${server:-}" 2>/dev/null || true' EXIT
fi

python3 scripts/gen_image.py "$work/src.raw" "$size" "$fill"
"$vmkfs" -i "$work/src.raw" -d "$format" "$work/disk.vmdk" >/dev/null 2>&1
rm -f "$work/src.raw"

"$vmkfs" --serve-nbd "$work/nbd.sock" "$work/disk.vmdk" >"$work/server.log" &
server=$!
for _ in $(seq 100); do [ -S "$work/nbd.sock" ] && break; sleep 0.05; done
uri="nbd+unix:///?socket=$work/nbd.sock"

seconds() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }

median() { sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
null_ratios=() pipe_ratios=()
echo "round  nbdcopy(s)  vmkfs -e - -d raw >/dev/null(s)  ... | cat >/dev/null(s)  ratios"
for r in $(seq "$rounds"); do
    a=$(seconds nbdcopy "$uri" null:)
    b=$(seconds sh -c "\"$vmkfs\" -e - \"$work/disk.vmdk\" -d raw 2>/dev/null >/dev/null")
    c=$(seconds sh -c "\"$vmkfs\" -e - \"$work/disk.vmdk\" -d raw 2>/dev/null | cat >/dev/null")
    null_ratios+=("$(echo "$a / $b" | bc -l)")
    pipe_ratios+=("$(echo "$a / $c" | bc -l)")
    printf "%5d  %10.3f  %31.3f  %22.3f  %5.2f %5.2f\n" "$r" "$a" "$b" "$c" "${null_ratios[-1]}" "${pipe_ratios[-1]}"
done
printf "median ratio nbd / direct into /dev/null: %.2f\n" "$(printf "%s\n" "${null_ratios[@]}" | median)"
printf "median ratio nbd / direct into a reader:  %.2f   (goal: <= 1.25, nbdcopy at >= 80%% of the direct speed)\n" \
    "$(printf "%s\n" "${pipe_ratios[@]}" | median)"
kill -TERM "$server"
wait "$server" || true
