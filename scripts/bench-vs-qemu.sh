#!/usr/bin/env bash
# Whole-process comparison of `vmkfs -i` with `qemu-img convert -m 8 -W` (see bench_vs_qemu.py).
# usage: scripts/bench-vs-qemu.sh [--rounds N] [--sizes 2048:0.5,4096:0.5,16384:0.1] [--cases ...]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin vmkfs
exec python3 scripts/bench_vs_qemu.py "$@"
