#!/usr/bin/env python3
"""Whole-VM backup speed: `vmkfs-backup` against the clone times of its disks, and an incremental
pass with a tracking link against the full pass.

A VM with DISKS thin ESX disks of SIZE MiB, FILL of each holding data (scripts/gen_image.py), is
built once. Then, ROUNDS times, interleaved:
  A: `vmkfs -i DISK -d 2gbsparse` for every disk, one after another (the sum of the clone times;
     the clones are kept until the last is done, as the backup's exports are);
  B: `vmkfs-backup -a vm.vmx -r DEST` (a full backup, default 2gbsparse exports);
A first in even rounds, B first in odd ones. Ratio B/A per round; the median is reported
(target: at most 1.2).

Then, ROUNDS times: a full pass with --keep-tracking (F), 1 % of every disk's capacity rewritten
in 1 MiB runs at scattered offsets, and an incremental pass --since that full one with
--keep-tracking (I). Ratio I/F per round, median (target: at most 0.10).

Every command flushes its output (vmkfs always does), and `sync` runs before each so it starts
clean. `--cache hot` leaves the source VM's files in the page cache (as the previous command left
them: a clone reads at memory speed); `--cache cold` evicts them before every timed command, on
both sides (posix_fadvise DONTNEED after the sync, so every page is clean and goes: a backup proxy
reading a LUN); `both` (the default) runs the whole measurement hot, then cold. Besides wall time,
the CPU time (user + system, of the command and its threads) is printed, which the load of other
processes on the machine changes less. Prints a Markdown table.

Unless `--memory 0`, everything after building the VM runs in a memory cgroup of `--memory` GiB
that is filled with page cache first, so every command gets reclaimed pages (benchlib.SteadyMemory:
on a VM that hands free memory back to its hypervisor, fresh pages cost a command more the longer
the machine was idle before it); removed outputs are kept until they have been evicted.

usage: bench_vm_backup.py [--disks 2] [--size 4096] [--fill 0.25] [--rounds 3] [--cache both] [--memory 6]
"""
import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

from benchlib import BACKUP, VMKFS, SteadyMemory, make_vm, run, vmx_top


def evict(folder):
    """Drops every (clean) page of the files under `folder` from the page cache."""
    for dirpath, _, names in os.walk(folder):
        for n in names:
            fd = os.open(os.path.join(dirpath, n), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed(cmd, cold_source=None):
    """Wall and CPU seconds of `cmd`, after a sync (and, with `cold_source`, its eviction)."""
    subprocess.run(["sync"], check=True)
    if cold_source:
        evict(cold_source)
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd}: exit {os.waitstatus_to_exitcode(status)}")
    return wall, ru.ru_utime + ru.ru_stime


def full_vs_clones(a, vm, vmx, disks, cold, mem):
    """Per round: the clones of every disk, kept until the last is done (the backup's exports also
    all exist at its end, so both sides fill as much new page cache), then removed; and the full
    backup, then removed. The side that goes first turns every round: what the previous command
    freed changes what the next one pays for new pages (on a VM whose idle memory the hypervisor
    takes back, a lot)."""
    vmkfs, backup = VMKFS, BACKUP
    src = vm if cold else None

    def clones():
        wall, cpu = 0.0, 0.0
        for i, d in enumerate(disks):
            w, c = timed([vmkfs, "-i", d, "-d", "2gbsparse", os.path.join(a.work, f"clone{i}.vmdk")], src)
            wall, cpu = wall + w, cpu + c
        for f in os.listdir(a.work):
            if f.startswith("clone"):
                mem.retire(os.path.join(a.work, f))
        return wall, cpu

    def full():
        dest = os.path.join(a.work, "full")
        w, c = timed([backup, "-a", vmx, "-r", dest], src)
        mem.retire(dest)
        return w, c

    rows = []
    for r in range(a.rounds):
        if r % 2 == 0:
            (clone, clone_cpu), (f, f_cpu) = clones(), full()
        else:
            (f, f_cpu), (clone, clone_cpu) = full(), clones()
        rows.append((clone, clone_cpu, f, f_cpu))
    return rows


def incremental_vs_full(a, vm, cold, rng, mem):
    vmkfs, backup = VMKFS, BACKUP
    rows = []
    for r in range(a.rounds):
        vmr = os.path.join(a.work, f"vm{r}")
        # A copy that keeps the holes (shutil.copytree would write them as zeros: a denser source
        # than the full-vs-clones rounds read, and gigabytes of dirty pages to flush).
        run(["cp", "-r", "--sparse=always", vm, vmr])
        src = vmr if cold else None
        vmxr = os.path.join(vmr, "vm.vmx")
        fulld, incd = os.path.join(a.work, f"tf{r}"), os.path.join(a.work, f"ti{r}")
        tf, tf_cpu = timed([backup, "-a", vmxr, "-r", fulld, "--keep-tracking"], src)
        changed = 0
        for i in range(a.disks):
            top = os.path.join(vmr, vmx_top(vmxr, f"scsi0:{i}"))
            runs = max(1, (a.size << 20) // 100 // (1 << 20))
            for _ in range(runs):
                off = rng.randrange(0, (a.size << 20) - (1 << 20), 1 << 16)
                run([vmkfs, "--write-at", str(off), top], input=rng.randbytes(1 << 20))
                changed += 1 << 20
        ti, ti_cpu = timed([backup, "-a", vmxr, "-r", incd, "--since", fulld, "--keep-tracking"], src)
        rows.append((tf, tf_cpu, ti, ti_cpu, changed))
        for d in (vmr, fulld, incd):
            mem.retire(d)
    return rows


def cells(pairs):
    return " | ".join(f"{n:.2f} / {d:.2f} s" for n, d in pairs)


def table(a, cache, full_rows, inc_rows):
    rounds = " | ".join(f"round {r}" for r in range(a.rounds))
    print(f"\n{cache} source ({a.disks} disks of {a.size} MiB, {a.fill:.0%} data; {a.rounds} rounds)\n")
    print(f"| measure | {rounds} | median | target |")
    print("|---|" + "---|" * a.rounds + "---|---|")
    fr = [f / c for c, _, f, _ in full_rows]
    print(f"| full backup / sum of the disks' `vmkfs -i -d 2gbsparse`, wall | "
          f"{cells([(f, c) for c, _, f, _ in full_rows])} | **{statistics.median(fr):.2f}** | ≤ 1.2 |")
    frc = [fc / cc for _, cc, _, fc in full_rows]
    print(f"| the same, CPU (user + system) | "
          f"{cells([(fc, cc) for _, cc, _, fc in full_rows])} | {statistics.median(frc):.2f} | |")
    ir = [i / f for f, _, i, _, _ in inc_rows]
    mib = inc_rows[0][4] >> 20
    print(f"| incremental (tracking link, {mib} MiB rewritten) / full (tracking), wall | "
          f"{cells([(i, f) for f, _, i, _, _ in inc_rows])} | **{statistics.median(ir):.2f}** | ≤ 0.10 |")
    irc = [ic / fc for _, fc, _, ic, _ in inc_rows]
    print(f"| the same, CPU (user + system) | "
          f"{cells([(ic, fc) for _, fc, _, ic, _ in inc_rows])} | {statistics.median(irc):.2f} | |")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--disks", type=int, default=2)
    ap.add_argument("--size", type=int, default=4096, help="MiB per disk")
    ap.add_argument("--fill", type=float, default=0.25)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cache", choices=["hot", "cold", "both"], default="both")
    ap.add_argument("--work", default="/tmp/vmkfs-bench-vm")
    ap.add_argument("--memory", type=int, default=6,
                    help="GiB of the memory cgroup the timed commands run in (0: none; see benchlib.SteadyMemory)")
    a = ap.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    vm = make_vm(a.work, "vm", a.disks, a.size, a.fill)
    vmx = os.path.join(vm, "vm.vmx")
    disks = [os.path.join(vm, f"d{i}.vmdk") for i in range(a.disks)]
    print(f"load average before: {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f}")
    with SteadyMemory(a.work, a.memory) as mem:
        print(f"memory: {mem.note}")
        for cache in (["hot", "cold"] if a.cache == "both" else [a.cache]):
            cold = cache == "cold"
            full_rows = full_vs_clones(a, vm, vmx, disks, cold, mem)
            inc_rows = incremental_vs_full(a, vm, cold, random.Random(7), mem)
            table(a, cache, full_rows, inc_rows)
    print(f"\nload average after: {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f}")
    shutil.rmtree(a.work)


if __name__ == "__main__":
    main()
