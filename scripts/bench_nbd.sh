#!/usr/bin/env bash
# Reading a disk over NBD against reading it directly: `nbdcopy URI null:` of a `vmkfs --serve-nbd`
# export (read-only, so nbdcopy uses several connections), against `vmkfs -e - SRC -d raw`, run in
# turn; prints each round and the medians of the ratios nbd/direct. The direct read is timed twice:
# into /dev/null (no process ever receives the bytes: writes to /dev/null cost nothing) and into a
# reader (`| cat >/dev/null`, which receives every byte as nbdcopy does). The goal (issue 15) is
# nbdcopy at 80 % or more of the direct speed: a median ratio of 1.25 or less.
#
# Two source states, each timed on both sides alike: hot (the disk's files in the page cache, as
# the previous run left them) and cold (the files written back and evicted from the page cache
# with posix_fadvise(DONTNEED) before every timed run, so each reads from the device).
# Besides wall time, each run's CPU seconds (user + system) are counted: for nbdcopy its own plus
# the server's (from /proc/PID/stat, in clock ticks), for the direct read vmkfs' (and cat's) — on
# a shared machine these vary less than wall time.
#
# usage: scripts/bench_nbd.sh [--rounds N] [--size MIB] [--fill F] [--format FMT] [--workdir DIR] [--no-cold]
# Needs nbdcopy (Debian: libnbd-bin), GNU time (/usr/bin/time) and python3 (scripts/gen_image.py).
# Not a test: timings on a shared machine vary, so nothing here passes or fails.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=5 size=2048 fill=0.5 format=monosparse work="" cold=1
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --fill) fill=$2; shift 2 ;;
        --format) format=$2; shift 2 ;;
        --workdir) work=$2; shift 2 ;;
        --no-cold) cold=0; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
command -v nbdcopy >/dev/null || { echo "nbdcopy not found (Debian: libnbd-bin)" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time not found (Debian: time)" >&2; exit 2; }

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
tick=$(getconf CLK_TCK)

# The disk's files (descriptor and extents) written back and dropped from the page cache.
evict() {
    python3 - "$work"/disk*.vmdk <<'EOF'
import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
EOF
}
# The server's CPU seconds so far.
server_cpu() { awk -v t="$tick" '{print ($14 + $15) / t}' "/proc/$server/stat"; }
# Runs a command, printing "WALL CPU" (CPU: user + system of it and the children it waited for).
# The wall time comes from bash's microsecond clock: GNU time's %e has 10 ms steps, 7 % of a
# 0.14 s run.
timed() {
    local f="$work/time.out" t0 t1
    t0=$EPOCHREALTIME
    /usr/bin/time -o "$f" -f "%U %S" "$@" >/dev/null
    t1=$EPOCHREALTIME
    awk -v w="$(echo "$t1 - $t0" | bc -l)" '{printf "%.4f %.3f\n", w, $1 + $2}' "$f"
}
# nbdcopy of the export: its CPU plus the server's.
nbd_run() {
    local s0 s1 w c
    s0=$(server_cpu)
    read -r w c < <(timed nbdcopy "$uri" null:)
    s1=$(server_cpu)
    echo "$w $(echo "$c + $s1 - $s0" | bc -l)"
}
direct_null() { timed sh -c "\"$vmkfs\" -e - \"$work/disk.vmdk\" -d raw 2>/dev/null >/dev/null"; }
direct_pipe() { timed sh -c "\"$vmkfs\" -e - \"$work/disk.vmdk\" -d raw 2>/dev/null | cat >/dev/null"; }

median() { sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
ratio() { echo "$1 / $2" | bc -l; }
declare -A ratios=()
add() { ratios[$1]+="$2 "; }

states=(hot)
[ "$cold" = 1 ] && states+=(cold)
nbd_run >/dev/null # warm the page cache (and the server) once
echo "wall seconds (CPU seconds): nbdcopy = nbdcopy URI null: (+ server); null = vmkfs -e - -d raw >/dev/null;"
echo "pipe = vmkfs -e - -d raw | cat >/dev/null"
printf "%5s %5s  %-16s %-16s %-16s  %s\n" round state nbdcopy null pipe "ratios nbd/null nbd/pipe (wall)"
for r in $(seq "$rounds"); do
    for st in "${states[@]}"; do
        [ "$st" = cold ] && evict
        read -r aw ac < <(nbd_run)
        [ "$st" = cold ] && evict
        read -r bw bcpu < <(direct_null)
        [ "$st" = cold ] && evict
        read -r cw cc < <(direct_pipe)
        add "$st-wall-null" "$(ratio "$aw" "$bw")"
        add "$st-wall-pipe" "$(ratio "$aw" "$cw")"
        add "$st-cpu-null" "$(ratio "$ac" "$bcpu")"
        add "$st-cpu-pipe" "$(ratio "$ac" "$cc")"
        printf "%5d %5s  %6.3f (%6.3f)  %6.3f (%6.3f)  %6.3f (%6.3f)  %5.2f %5.2f\n" "$r" "$st" "$aw" "$ac" "$bw" "$bcpu" \
            "$cw" "$cc" "$(ratio "$aw" "$bw")" "$(ratio "$aw" "$cw")"
    done
done
for st in "${states[@]}"; do
    for m in wall cpu; do
        for d in null pipe; do
            label="/dev/null:"
            [ "$d" = pipe ] && label="a reader:"
            # shellcheck disable=SC2086 # the ratios are one word each
            printf "%-4s %-4s median ratio nbd / direct into %-10s %.2f\n" "$st" "$m" "$label" \
                "$(printf "%s\n" ${ratios[$st-$m-$d]} | median)"
        done
    done
done
echo "goal: wall ratio <= 1.25 (nbdcopy at >= 80 % of the direct speed)"
kill -TERM "$server"
wait "$server" || true
