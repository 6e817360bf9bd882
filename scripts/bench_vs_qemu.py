#!/usr/bin/env python3
"""Times `vmkfs -i` against `qemu-img convert -m 8 -W` (default cache, and `-t none`) and, for raw-like
outputs, against `dd bs=1M conv=sparse,fsync oflag=direct` of the same image (the rate this machine
writes the data at; images up to 4 GiB), side by side, interleaved (A B C D, B C D A, ...).

Every command is followed by `sync` (vmkfs flushes its output itself; qemu-img and dd are given the
same flush), so the flushed times compare like with like; qemu's unflushed time is reported too.
Before each command the outputs of the others are deleted and the deletion flushed, untimed, so no
command pays for freeing another's output (on a `discard` mount that is a journal commit full of
discards), and the source's data is read once, untimed, so each command starts with it in the page
cache (see `warm`).
Peak memory (max RSS) comes from wait4(). Per round the ratios vmkfs / the better qemu-img of that
round and vmkfs / dd are taken; the table gives their medians (medians of pairwise ratios).

Output sizes (all files of the destination) are reported too. Cases: raw-thin, raw-zeroedthick,
sparse-2gbsparse, raw-monosparse, sparse-thin, raw-stream (streamOptimized; `raw-stream@N` passes
`--compress-level N` to vmkfs, qemu always uses zlib's default level). `CASE+ARG` passes the
hidden engine option `--ARG` to vmkfs, e.g. `raw-thin+direct-io=off` (buffered writes).

A size may name its own cases: `--sizes 2048:0.5,16384:0.1:raw-thin/raw-monosparse` runs --cases at
2 GiB and only those two at 16 GiB.

usage: bench_vs_qemu.py [--rounds N] [--sizes 2048:0.5,16384:0.1] [--cases raw-thin,raw-stream@1]
                        [--work DIR] [--vmkfs PATH] [--verbose]
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


def warm(path):
    """Reads the data of `path` (its holes skipped: reading a hole fills the page cache with zeros),
    so the file is in the page cache when the next command starts, whatever ran before it: the VM
    this was written on pages out page cache untouched for about a minute (DAMON `pageout`), and
    after long commands (qemu-img -t none takes 12-15 s) "hot" must still mean hot for each side."""
    fd = os.open(path, os.O_RDONLY)
    buf = bytearray(1 << 20)  # one small buffer, so this process (whose memory a forked child
    # counts in its peak RSS until it executes the command) stays small
    try:
        end = os.fstat(fd).st_size
        pos = 0
        while pos < end:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            stop = os.lseek(fd, start, os.SEEK_HOLE)
            while start < stop:
                n = os.preadv(fd, [memoryview(buf)[:min(len(buf), stop - start)]], start)
                if n <= 0:
                    break
                start += n
            pos = stop
    finally:
        os.close(fd)


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


def machine():
    """One line about the machine: CPU model, cores, memory, the file system of the work folder."""
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes", default="2048:0.5")
    ap.add_argument("--work", default="/tmp/vmkfs-bench")
    ap.add_argument("--vmkfs", default=os.path.join(HERE, "..", "target", "release", "vmkfs"))
    ap.add_argument("--cases", default="raw-thin,sparse-2gbsparse")
    ap.add_argument("--verbose", action="store_true", help="print every timed run on stderr")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}; load average "
          f"{os.getloadavg()[0]:.2f} at the start", flush=True)
    rows = []
    for spec in a.sizes.split(","):
        mib, fill, *only = spec.split(":")
        raw = os.path.join(a.work, f"src-{mib}m-{fill}.raw")
        sparse = os.path.join(a.work, f"src-{mib}m-{fill}.vmdk")
        if not os.path.exists(raw):
            subprocess.check_call([sys.executable, os.path.join(HERE, "gen_image.py"), raw, mib, fill])
        if not os.path.exists(sparse):
            subprocess.check_call(["qemu-img", "convert", "-O", "vmdk", "-o", "subformat=monolithicSparse", raw, sparse])
        out = os.path.join(a.work, "out")
        # (source, vmkfs arguments, qemu-img -o, whether dd of the raw image is the same output)
        cases = {
            "raw-thin": (raw, ["-d", "thin"], ["-o", "subformat=monolithicFlat"], True),
            "raw-zeroedthick": (raw, ["-d", "zeroedthick"], ["-o", "subformat=monolithicFlat,preallocation=falloc"],
                                False),
            "sparse-2gbsparse": (sparse, ["-d", "2gbsparse"], ["-o", "subformat=twoGbMaxExtentSparse"], False),
            "raw-monosparse": (raw, ["-d", "monosparse"], ["-o", "subformat=monolithicSparse"], False),
            "sparse-thin": (sparse, ["-d", "thin"], ["-o", "subformat=monolithicFlat"], False),
            "raw-stream": (raw, ["-d", "streamoptimized"], ["-o", "subformat=streamOptimized"], False),
        }
        for case in (only[0].split("/") if only else a.cases.split(",")):
            case_name, _, extra = case.partition("+")
            name, _, level = case_name.partition("@")
            src, vargs, qargs, with_dd = cases[name]
            if level:
                vargs = vargs + ["--compress-level", level]
            if extra:
                vargs = vargs + ["--" + extra]
            cmds = {
                "vmkfs": ([a.vmkfs, "-i", src] + vargs + [out + "-v.vmdk"], out + "-v"),
                "qemu": (["qemu-img", "convert", "-m", "8", "-W", "-O", "vmdk"] + qargs + [src, out + "-q.vmdk"],
                         out + "-q"),
                "qemu-t-none": (["qemu-img", "convert", "-m", "8", "-W", "-t", "none", "-O", "vmdk"] + qargs +
                                [src, out + "-n.vmdk"], out + "-n"),
            }
            # dd reads the holes too, and each read of a hole leaves a page of zeros in the page
            # cache: on a large sparse image that evicts what the next command reads, so dd runs
            # on images of at most 4 GiB only.
            with_dd = with_dd and int(mib) <= 4096
            if with_dd:
                cmds["dd"] = (["dd", f"if={src}", f"of={out}-d.raw", "bs=1M", "conv=sparse,fsync", "oflag=direct",
                               "status=none"], out + "-d")
            # Warm the page cache with the source, then one untimed run of each.
            for cmd, pre in cmds.values():
                clean(pre)
                run(cmd)
                clean(pre)
            t = {k: [] for k in cmds}
            q_un, vs_qemu, vs_dd, v_rss, q_rss = [], [], [], [], []
            v_size = q_size = 0
            for r in range(a.rounds):
                # The order turns by one each round (A B C D, B C D A, ...), so that no command
                # always comes first.
                keys = list(cmds)
                for k in keys[r % len(keys):] + keys[:r % len(keys)]:
                    cmd, pre = cmds[k]
                    # The previous command's output is deleted and the deletion flushed before the
                    # clock starts: on a file system mounted with `discard`, freeing a fragmented
                    # file (qemu-img -t none writes its grains one by one) costs seconds of discards
                    # in the next journal commit, which the next command's fsync would otherwise pay.
                    clean(pre)
                    os.sync()
                    warm(src)
                    tk, tk_un, rss = run(cmd)
                    if a.verbose:
                        print(f"  {mib} MiB {case} round {r}: {k} {tk:.2f} s", file=sys.stderr, flush=True)
                    if k == "vmkfs":
                        v_size = size_of(pre)
                        v_rss.append(rss)
                    elif k == "qemu":
                        q_size = size_of(pre)
                        q_rss.append(rss)
                        q_un.append(tk_un)
                    clean(pre)
                    t[k].append(tk)
                vs_qemu.append(t["vmkfs"][-1] / min(t["qemu"][-1], t["qemu-t-none"][-1]))
                if with_dd:
                    vs_dd.append(t["vmkfs"][-1] / t["dd"][-1])
            med = {k: statistics.median(v) for k, v in t.items()}
            rows.append((f"{int(mib) // 1024} GiB, {int(float(fill) * 100)}% data", case, med["vmkfs"], med["qemu"],
                         med["qemu-t-none"], statistics.median(q_un), statistics.median(vs_qemu),
                         med.get("dd"), statistics.median(vs_dd) if vs_dd else None,
                         max(v_rss) / 1024, max(q_rss) / 1024, v_size / 2**20, q_size / 2**20))
    print(f"load average {os.getloadavg()[0]:.2f} at the end; rounds {a.rounds}")
    print()
    print("| image | conversion | vmkfs (s) | qemu-img (s) | qemu-img -t none (s) | qemu-img unflushed (s) "
          "| vmkfs / better qemu-img (median of pairs) | dd oflag=direct (s) | vmkfs / dd (median of pairs) "
          "| vmkfs peak RSS (MiB) | qemu peak RSS (MiB) | vmkfs output (MiB) | qemu output (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    opt = lambda x: "—" if x is None else f"{x:.2f}"
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.2f} | {opt(r[7])} "
              f"| {opt(r[8])} | {r[9]:.0f} | {r[10]:.0f} | {r[11]:.1f} | {r[12]:.1f} |")


if __name__ == "__main__":
    main()
