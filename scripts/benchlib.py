"""What the benchmark scripts share: where the release binaries are, running a command quietly,
reading a `.vmx`, building a VM of thin disks from scripts/gen_image.py images, and a memory
cgroup that gives every command reclaimed page cache (`SteadyMemory`)."""
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REL = os.path.join(HERE, "..", "target", "release")
VMKFS, BACKUP = os.path.join(REL, "vmkfs"), os.path.join(REL, "vmkfs-backup")
MIB = 1 << 20


def run(cmd, **kw):
    """Runs `cmd` (its standard output discarded); a failure ends the script."""
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)


def vmx_top(vmx, key):
    """The `fileName` the `.vmx` at `vmx` gives disk `key` (`scsi0:1`): the link the VM writes."""
    for line in open(vmx):
        k, _, v = line.partition("=")
        if k.strip().lower() == f"{key}.filename":
            return v.strip().strip('"')
    raise SystemExit(f"{vmx}: no {key}.fileName")


def make_vm(work, name, disks, size, fill):
    """A VM folder `work/name` with `vm.vmx` and `disks` thin disks `d0.vmdk`… (`scsi0:0`…) of
    `size` MiB, each a gen_image.py image holding data in `fill` of it (seeded 1, 2, …)."""
    vm = os.path.join(work, name)
    os.makedirs(vm)
    lines = [f'displayName = "{name}"', 'scsi0.present = "TRUE"']
    for i in range(disks):
        raw = os.path.join(work, f"d{i}.raw")
        run([sys.executable, os.path.join(HERE, "gen_image.py"), raw, str(size), str(fill), str(i + 1)])
        with open(raw, "rb") as f:
            run([VMKFS, "-i", "-", "-d", "thin", "--size", str(size * MIB), os.path.join(vm, f"d{i}.vmdk")], stdin=f)
        os.remove(raw)
        lines += [f'scsi0:{i}.present = "TRUE"', f'scsi0:{i}.fileName = "d{i}.vmdk"']
    with open(os.path.join(vm, "vm.vmx"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return vm


class SteadyMemory:
    """Runs the rest of the script (this process and every command it starts) in a memory cgroup
    of `gib` GiB that it first fills with page cache, so that every page a timed command gets
    comes from reclaiming an older page, as on a machine that has been up a while.

    Why: on a VM whose free memory goes back to the hypervisor (free page reporting, balloon), a
    page taken from the free pool costs microseconds more than a reclaimed one; which of the two a
    command gets depends on what ran seconds before it: a buffered write of 512 MiB and its fsync
    took 0.37–0.45 s in a filled cgroup and 1.5–2.7 s while it was filling, on the same machine
    (README, VM backup speed). Files removed by
    the script would hand their cached pages back to the free pool, so `retire` keeps the last
    `keep` removed trees (by then evicted) and deletes older ones. Without root or a cgroup memory
    controller it says so and changes nothing (`retire` deletes at once)."""

    def __init__(self, work, gib, keep=3):
        self.work, self.gib, self.keep = work, gib, keep
        self.group, self.parent, self.trash, self.n = None, None, os.path.join(work, ".trash"), 0
        self.note = "page cache as the machine has it (no memory cgroup)"

    def _own_group(self):
        for line in open("/proc/self/cgroup"):
            _, ctrl, path = line.rstrip("\n").split(":", 2)
            if "memory" in ctrl.split(","):
                return os.path.join("/sys/fs/cgroup/memory", path.lstrip("/")), "memory.limit_in_bytes"
        if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            for line in open("/proc/self/cgroup"):
                if line.startswith("0::"):
                    return os.path.join("/sys/fs/cgroup", line[3:].strip().lstrip("/")), "memory.max"
        return None, None

    def __enter__(self):
        if self.gib <= 0:
            return self
        try:
            parent, limit_file = self._own_group()
            if parent is None:
                raise OSError("no memory cgroup")
            group = os.path.join(parent, f"vmkfs-bench-{os.getpid()}")
            os.mkdir(group)
            with open(os.path.join(group, limit_file), "w") as f:
                f.write(str(self.gib << 30))
            with open(os.path.join(group, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            self.group, self.parent = group, parent
        except OSError as e:
            self.note = f"page cache as the machine has it (no memory cgroup: {e})"
            return self
        os.makedirs(self.trash, exist_ok=True)
        filler = os.path.join(self.trash, "filler")
        t0 = time.monotonic()
        buf = os.urandom(MIB)
        with open(filler, "wb") as f:
            for _ in range(self.gib << 10):
                f.write(buf)
            os.fsync(f.fileno())
        self.note = (f"in a memory cgroup of {self.gib} GiB, filled with page cache first "
                     f"({time.monotonic() - t0:.1f} s)")
        return self

    def retire(self, path):
        """Removes the file or tree at `path` (see the class text)."""
        if self.group is None:
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            return
        self.n += 1
        os.rename(path, os.path.join(self.trash, f"{self.n:05d}"))
        for name in sorted(os.listdir(self.trash)):
            if name != "filler" and int(name) <= self.n - self.keep:
                p = os.path.join(self.trash, name)
                shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)

    def __exit__(self, *exc):
        shutil.rmtree(self.trash, ignore_errors=True)
        if self.group is not None:
            with open(os.path.join(self.parent, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            os.rmdir(self.group)
        return False
