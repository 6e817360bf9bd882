#!/usr/bin/env python3
"""Times `vmkfs -i` against `qemu-img convert -m 8 -W` side by side, interleaved (A B A B ...).

Both commands are followed by `sync` (vmkfs flushes its output itself; qemu-img 10 does not), so the
flushed times compare like with like; qemu's unflushed time is reported too. Peak memory (max RSS)
comes from wait4(). Prints medians and the median of the pairwise ratios.

Output sizes (all files of the destination) are reported too. Cases: raw-thin, raw-zeroedthick,
sparse-2gbsparse, raw-monosparse, sparse-thin, raw-stream (streamOptimized; `raw-stream@N` passes
`--compress-level N` to vmkfs, qemu always uses zlib's default level).

usage: bench_vs_qemu.py [--rounds N] [--sizes 2048:0.5,16384:0.1] [--cases raw-thin,raw-stream@1]
                        [--work DIR] [--vmkfs PATH]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run(cmd, sync=True):
    """Runs cmd; returns (seconds including sync, seconds of the command alone, max RSS in KiB)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    t1 = time.perf_counter()
    err = p.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{err}")
    if sync:
        os.sync()
    t2 = time.perf_counter()
    return t2 - t0, t1 - t0, ru.ru_maxrss


def size_of(prefix):
    """Total bytes of the files whose names start with prefix."""
    d = os.path.dirname(prefix)
    base = os.path.basename(prefix)
    return sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d) if n.startswith(base))


def clean(prefix):
    d = os.path.dirname(prefix)
    base = os.path.basename(prefix)
    for n in os.listdir(d):
        if n.startswith(base):
            os.remove(os.path.join(d, n))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes", default="2048:0.5")
    ap.add_argument("--work", default="/tmp/vmkfs-bench")
    ap.add_argument("--vmkfs", default=os.path.join(HERE, "..", "target", "release", "vmkfs"))
    ap.add_argument("--cases", default="raw-thin,sparse-2gbsparse")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    rows = []
    for spec in a.sizes.split(","):
        mib, fill = spec.split(":")
        raw = os.path.join(a.work, f"src-{mib}m-{fill}.raw")
        sparse = os.path.join(a.work, f"src-{mib}m-{fill}.vmdk")
        if not os.path.exists(raw):
            subprocess.check_call([sys.executable, os.path.join(HERE, "gen_image.py"), raw, mib, fill])
        if not os.path.exists(sparse):
            subprocess.check_call(["qemu-img", "convert", "-O", "vmdk", "-o", "subformat=monolithicSparse", raw, sparse])
        out = os.path.join(a.work, "out")
        cases = {
            "raw-thin": (raw, ["-d", "thin"], ["-o", "subformat=monolithicFlat"]),
            "raw-zeroedthick": (raw, ["-d", "zeroedthick"], ["-o", "subformat=monolithicFlat,preallocation=falloc"]),
            "sparse-2gbsparse": (sparse, ["-d", "2gbsparse"], ["-o", "subformat=twoGbMaxExtentSparse"]),
            "raw-monosparse": (raw, ["-d", "monosparse"], ["-o", "subformat=monolithicSparse"]),
            "sparse-thin": (sparse, ["-d", "thin"], ["-o", "subformat=monolithicFlat"]),
            "raw-stream": (raw, ["-d", "streamoptimized"], ["-o", "subformat=streamOptimized"]),
        }
        for case in a.cases.split(","):
            name, _, level = case.partition("@")
            src, vargs, qargs = cases[name]
            if level:
                vargs = vargs + ["--compress-level", level]
            v_cmd = [a.vmkfs, "-i", src] + vargs + [out + "-v.vmdk"]
            q_cmd = ["qemu-img", "convert", "-m", "8", "-W", "-O", "vmdk"] + qargs + [src, out + "-q.vmdk"]
            # Warm the page cache with the source, then one untimed run of each.
            for cmd, pre in ((v_cmd, out + "-v"), (q_cmd, out + "-q")):
                clean(pre)
                run(cmd)
                clean(pre)
            v_t, q_t, q_un, ratios, v_rss, q_rss = [], [], [], [], [], []
            v_size = q_size = 0
            for _ in range(a.rounds):
                clean(out + "-v")
                tv, _, rv = run(v_cmd)
                v_size = size_of(out + "-v")
                clean(out + "-v")
                clean(out + "-q")
                tq, tq_un, rq = run(q_cmd)
                q_size = size_of(out + "-q")
                clean(out + "-q")
                v_t.append(tv)
                q_t.append(tq)
                q_un.append(tq_un)
                ratios.append(tv / tq)
                v_rss.append(rv)
                q_rss.append(rq)
            rows.append((f"{int(mib) // 1024} GiB, {int(float(fill) * 100)}% data", case, statistics.median(v_t),
                         statistics.median(q_t), statistics.median(q_un), statistics.median(ratios),
                         max(v_rss) / 1024, max(q_rss) / 1024, v_size / 2**20, q_size / 2**20))
    print()
    print("| image | conversion | vmkfs (s, flushed) | qemu-img -m 8 -W (s, + sync) | qemu-img unflushed (s) | ratio vmkfs/qemu (median of pairs) | vmkfs peak RSS (MiB) | qemu peak RSS (MiB) | vmkfs output (MiB) | qemu output (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.0f} | {r[7]:.0f} | {r[8]:.1f} | {r[9]:.1f} |")


if __name__ == "__main__":
    main()
