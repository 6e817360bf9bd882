#!/usr/bin/env python3
"""Whole-VM backup speed: `vmkfs-backup` against the clone times of its disks, and an incremental
pass with a tracking link against the full pass.

A VM with DISKS thin ESX disks of SIZE MiB, FILL of each holding data (scripts/gen_image.py), is
built once. Then, ROUNDS times, interleaved:
  A: `vmkfs -i DISK -d 2gbsparse` for every disk, one after another (the sum of the clone times);
  B: `vmkfs-backup -a vm.vmx -r DEST` (a full backup, default 2gbsparse exports).
Ratio B/A per round; the median is reported (target: at most 1.2).

Then, ROUNDS times: a full pass with --keep-tracking (F), 1 % of every disk's capacity rewritten
in 1 MiB runs at scattered offsets, and an incremental pass --since that full one with
--keep-tracking (I). Ratio I/F per round, median (target: at most 0.10).

Every command flushes its output (vmkfs always does), and `sync` runs after each so the next
starts clean. usage: bench_vm_backup.py [--disks 2] [--size 4096] [--fill 0.25] [--rounds 3]
"""
import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REL = os.path.join(HERE, "..", "target", "release")


def run(cmd, **kw):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)


def timed(cmd):
    subprocess.run(["sync"], check=True)
    t0 = time.monotonic()
    run(cmd)
    return time.monotonic() - t0


def vmx_top(vmx, key):
    for line in open(vmx):
        k, _, v = line.partition("=")
        if k.strip().lower() == f"{key}.filename":
            return v.strip().strip('"')
    raise SystemExit(f"{vmx}: no {key}.fileName")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--disks", type=int, default=2)
    ap.add_argument("--size", type=int, default=4096, help="MiB per disk")
    ap.add_argument("--fill", type=float, default=0.25)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default="/tmp/vmkfs-bench-vm")
    a = ap.parse_args()
    vmkfs, backup = os.path.join(REL, "vmkfs"), os.path.join(REL, "vmkfs-backup")
    shutil.rmtree(a.work, ignore_errors=True)
    vm = os.path.join(a.work, "vm")
    os.makedirs(vm)
    vmx = os.path.join(vm, "vm.vmx")
    lines = ['displayName = "bench"', 'scsi0.present = "TRUE"']
    for i in range(a.disks):
        raw = os.path.join(a.work, f"d{i}.raw")
        run([sys.executable, os.path.join(HERE, "gen_image.py"), raw, str(a.size), str(a.fill), str(i + 1)])
        run([vmkfs, "-i", "-", "-d", "thin", "--size", str(a.size << 20), os.path.join(vm, f"d{i}.vmdk")], stdin=open(raw, "rb"))
        os.remove(raw)
        lines += [f'scsi0:{i}.present = "TRUE"', f'scsi0:{i}.fileName = "d{i}.vmdk"']
    open(vmx, "w").write("\n".join(lines) + "\n")
    disks = [os.path.join(vm, f"d{i}.vmdk") for i in range(a.disks)]
    ratios, rows = [], []
    for r in range(a.rounds):
        clone = 0.0
        for i, d in enumerate(disks):
            dst = os.path.join(a.work, f"clone{i}.vmdk")
            clone += timed([vmkfs, "-i", d, "-d", "2gbsparse", dst])
            for f in os.listdir(a.work):
                if f.startswith(f"clone{i}"):
                    os.remove(os.path.join(a.work, f))
        dest = os.path.join(a.work, "full")
        full = timed([backup, "-a", vmx, "-r", dest])
        shutil.rmtree(dest)
        ratios.append(full / clone)
        rows.append((r, clone, full))
    print(f"full backup vs clones: {a.disks} disks of {a.size} MiB, {a.fill:.0%} data")
    for r, c, f in rows:
        print(f"  round {r}: sum of clone times {c:.2f} s, backup {f:.2f} s, ratio {f / c:.3f}")
    print(f"  median ratio {statistics.median(ratios):.3f} (target <= 1.2)")
    rng = random.Random(7)
    inc_ratios = []
    for r in range(a.rounds):
        vmr = os.path.join(a.work, f"vm{r}")
        shutil.copytree(vm, vmr)
        vmxr = os.path.join(vmr, "vm.vmx")
        fulld, incd = os.path.join(a.work, f"tf{r}"), os.path.join(a.work, f"ti{r}")
        tf = timed([backup, "-a", vmxr, "-r", fulld, "--keep-tracking"])
        changed = 0
        for i in range(a.disks):
            top = os.path.join(vmr, vmx_top(vmxr, f"scsi0:{i}"))
            runs = max(1, (a.size << 20) // 100 // (1 << 20))
            for _ in range(runs):
                off = rng.randrange(0, (a.size << 20) - (1 << 20), 1 << 16)
                run([vmkfs, "--write-at", str(off), top], input=rng.randbytes(1 << 20))
                changed += 1 << 20
        ti = timed([backup, "-a", vmxr, "-r", incd, "--since", fulld, "--keep-tracking"])
        inc_ratios.append(ti / tf)
        print(f"  round {r}: full (tracking) {tf:.2f} s, incremental after {changed >> 20} MiB changed {ti:.2f} s, ratio {ti / tf:.3f}")
        shutil.rmtree(vmr)
        shutil.rmtree(fulld)
        shutil.rmtree(incd)
    print(f"  median incremental/full {statistics.median(inc_ratios):.3f} (target <= 0.10)")
    shutil.rmtree(a.work)


if __name__ == "__main__":
    main()
