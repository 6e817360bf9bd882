#!/usr/bin/env python3
"""The restic repository's cost goals (issue 14), measured with the release binaries.

1. Incremental cost. A VM of DISKS thin disks of SIZE MiB, FILL of each holding data
   (scripts/gen_image.py), is built once. ROUNDS times, into a fresh repository: a full backup
   (`--init --keep-tracking`, F), 1 % of every disk's 1 MiB blocks changed at scattered places,
   a second backup (`--since latest --keep-tracking`, I). Reported: I/F (goal <= 0.15) and the
   repository's growth (goal <= 3 %), medians over the rounds, and the bytes the growth holds
   beyond the changed blocks' (index, trees, snapshot); and replication of the same change:
   `vmkfs -i restic:…` of the first disk after the full backup (C) against `vmkfs --apply
   restic:…@latest` onto that replica after the second (A). Run three times, by how a changed
   block changes: rewritten whole with fresh data of the disk's own kind (gen_image.data: runs of
   noise, text and zeros from a new noise source, so it compresses as the disk's data does; the
   case the goals are read from); given one 64 KiB random write (the rest of the block keeps its
   data); and, as the worst case, rewritten whole with random bytes, which cannot compress while
   the disks' data compresses about 3:1, so that growth is about three times the share changed.
2. Two VMs copied from the template, changed 1 % each (different blocks), backed up into one
   repository: its size against one VM's repository (goal <= 1.1x).
3. A 1 TiB thin disk holding 100 MiB (ten 10 MiB pieces spread over it): backup time and
   repository size (goal < 120 MiB), against the same 100 MiB on a 1 GiB disk (time goes with the
   data, not the capacity: the ratio should be near 1). Medians over BIG_ROUNDS.

`sync` runs before each timed command and is timed with it, so what a command left in the page
cache is on disk when its time is taken (vmkfs syncs its own files too). The password is fixed in
RESTIC_PASSWORD; every backup pays one scrypt key derivation (about 0.1-0.5 s) and process start.

usage: bench_restic.py [--disks 2] [--size 2048] [--fill 0.5] [--rounds 3] [--big-rounds 5]
                       [--only 1,2,3] [--work DIR]
"""
import argparse
import os
import random
import shutil
import statistics
import subprocess
import time

import gen_image
from benchlib import BACKUP, MIB, VMKFS, make_vm, run, vmx_top


def timed(cmd):
    subprocess.run(["sync"], check=True)
    t0 = time.monotonic()
    run(cmd)
    subprocess.run(["sync"], check=True)
    return time.monotonic() - t0


def du(path):
    n = 0
    for root, _, files in os.walk(path):
        n += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return n


def copy_vm(src, dst):
    run(["cp", "-a", "--sparse=always", src, dst])
    return dst


# How a changed block changes (see the module's doc).
SAME_KIND, WRITE_64K, RANDOM = "same-kind", "64k", "random"
HOW = {
    SAME_KIND: "rewritten whole with fresh data of the disk's kind",
    WRITE_64K: "each given a 64 KiB random write",
    RANDOM: "rewritten whole with random bytes",
}


def change_1pct(vm, disks, size, rng, how=RANDOM):
    """Changes 1 % of every disk's 1 MiB blocks (distinct), as `how` says: SAME_KIND, each
    rewritten with data made as gen_image.py makes the disk's (noise from a new source); WRITE_64K,
    each given one random 64 KiB write at a 64 KiB-aligned place inside it (the rest of the block
    keeps its data); RANDOM, each rewritten with random bytes. Returns the bytes written."""
    vmx = os.path.join(vm, "vm.vmx")
    fresh = gen_image.Source(random.Random(rng.randrange(1 << 30))) if how == SAME_KIND else None
    done = 0
    for i in range(disks):
        top = os.path.join(vm, vmx_top(vmx, f"scsi0:{i}"))
        for b in rng.sample(range(size), max(1, size // 100)):
            if how == WRITE_64K:
                off = b * MIB + rng.randrange(16) * (64 << 10)
                run([VMKFS, "--write-at", str(off), top], input=rng.randbytes(64 << 10))
                done += 64 << 10
            else:
                new = gen_image.data(rng, fresh, MIB) if how == SAME_KIND else rng.randbytes(MIB)
                run([VMKFS, "--write-at", str(b * MIB), top], input=new)
                done += MIB
    return done


def repo(path):
    return f"restic:{path}"


def incremental(a, template, how):
    rng = random.Random(11)
    ratios, growths, applies, rows = [], [], [], []
    for r in range(a.rounds):
        vm = copy_vm(template, os.path.join(a.work, f"inc-vm{r}"))
        vmx = os.path.join(vm, "vm.vmx")
        rp = os.path.join(a.work, f"inc-repo{r}")
        tf = timed([BACKUP, "-a", vmx, "-r", repo(rp), "--init", "--keep-tracking"])
        s1 = du(rp)
        # The VM's folder in its snapshots is its display name.
        file = "/tpl/scsi0-0-d0.raw"
        replica = os.path.join(a.work, f"replica{r}.vmdk")
        tc = timed([VMKFS, "-i", f"{repo(rp)}@latest:{file}", "-d", "thin", replica])
        changed = change_1pct(vm, a.disks, a.size, rng, how)
        ti = timed([BACKUP, "-a", vmx, "-r", repo(rp), "--since", "latest", "--keep-tracking"])
        s2 = du(rp)
        ta = timed([VMKFS, "--apply", f"{repo(rp)}@latest:{file}", replica])
        ratios.append(ti / tf)
        growths.append((s2 - s1) / s1)
        applies.append(ta / tc)
        rows.append((r, tf, s1, changed, ti, s2 - s1, tc, ta))
        shutil.rmtree(vm)
        shutil.rmtree(rp)
        for f in os.listdir(a.work):
            if f.startswith(f"replica{r}"):
                os.remove(os.path.join(a.work, f))
    print(f"1. incremental cost: {a.disks} thin disks of {a.size} MiB, {a.fill:.0%} data, 1 % of blocks {HOW[how]}")
    for r, tf, s1, ch, ti, grow, tc, ta in rows:
        print(f"  round {r}: full {tf:.2f} s, repository {s1} bytes; second ({ch >> 20} MiB changed) {ti:.2f} s "
              f"(ratio {ti / tf:.3f}), +{grow} bytes ({grow / s1:.2%}; {grow - ch} beyond the changed bytes); "
              f"replica: -i {tc:.2f} s, --apply {ta:.2f} s")
    print(f"  median second/full {statistics.median(ratios):.3f} (goal <= 0.15), "
          f"median growth {statistics.median(growths):.2%} (goal <= 3 %), "
          f"median apply/clone {statistics.median(applies):.3f}")


def template_pair(a, template):
    rng = random.Random(12)
    one_vm = copy_vm(template, os.path.join(a.work, "tpl-a"))
    change_1pct(one_vm, a.disks, a.size, rng)
    other = copy_vm(template, os.path.join(a.work, "tpl-b"))
    change_1pct(other, a.disks, a.size, rng)
    solo, shared = os.path.join(a.work, "tpl-solo"), os.path.join(a.work, "tpl-shared")
    run([BACKUP, "-a", os.path.join(one_vm, "vm.vmx"), "-r", repo(solo), "--init"])
    run([BACKUP, "-a", os.path.join(one_vm, "vm.vmx"), "-r", repo(shared), "--init"])
    run([BACKUP, "-a", os.path.join(other, "vm.vmx"), "-r", repo(shared)])
    one, both = du(solo), du(shared)
    print("2. two VMs from one template, 1 % changed each, one repository")
    print(f"  one VM {one} bytes, both {both} bytes: {both / one:.3f}x (goal <= 1.1)")
    for p in (one_vm, other, solo, shared):
        shutil.rmtree(p)


def sparse_vm(work, name, cap_mib):
    vm = os.path.join(work, name)
    os.makedirs(vm)
    disk = os.path.join(vm, "big.vmdk")
    run([VMKFS, "-c", f"{cap_mib}m", "-d", "thin", disk])
    rng = random.Random(13)
    step = cap_mib * MIB // 10
    for i in range(10):
        run([VMKFS, "--write-at", str(i * step + 3 * MIB), disk], input=rng.randbytes(10 * MIB))
    open(os.path.join(vm, "vm.vmx"), "w").write(
        f'displayName = "{name}"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "big.vmdk"\n')
    return vm


def big_thin(a):
    rows = {}
    for name, cap in (("tib", 1 << 20), ("gib", 1024)):
        vm = sparse_vm(a.work, name, cap)
        times, size = [], 0
        for r in range(a.big_rounds):
            rp = os.path.join(a.work, f"big-repo-{name}{r}")
            times.append(timed([BACKUP, "-a", os.path.join(vm, "vm.vmx"), "-r", repo(rp), "--init"]))
            size = du(rp)
            shutil.rmtree(rp)
        rows[name] = (statistics.median(times), size)
        shutil.rmtree(vm)
    (tt, ts), (gt, gs) = rows["tib"], rows["gib"]
    print(f"3. 100 MiB of data on a thin disk of 1 TiB against 1 GiB (medians of {a.big_rounds})")
    print(f"  1 TiB: backup {tt:.2f} s, repository {ts} bytes ({ts / MIB:.1f} MiB, goal < 120 MiB)")
    print(f"  1 GiB: backup {gt:.2f} s, repository {gs} bytes; time ratio 1 TiB / 1 GiB {tt / gt:.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--disks", type=int, default=2)
    ap.add_argument("--size", type=int, default=2048, help="MiB per disk")
    ap.add_argument("--fill", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--big-rounds", type=int, default=5, help="rounds of section 3")
    ap.add_argument("--only", default="1,2,3", help="sections to run")
    ap.add_argument("--work", default="/tmp/vmkfs-bench-restic")
    a = ap.parse_args()
    only = {int(x) for x in a.only.split(",")}
    os.environ["RESTIC_PASSWORD"] = "bench"
    os.environ.pop("RESTIC_PASSWORD_FILE", None)
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    print(f"load average {os.getloadavg()[0]:.1f} at start")
    if only & {1, 2}:
        template = make_vm(a.work, "tpl", a.disks, a.size, a.fill)
    if 1 in only:
        for how in (SAME_KIND, WRITE_64K, RANDOM):
            incremental(a, template, how)
    if 2 in only:
        template_pair(a, template)
    if 3 in only:
        big_thin(a)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    shutil.rmtree(a.work)


if __name__ == "__main__":
    main()
