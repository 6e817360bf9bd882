"""What the benchmark scripts share: where the release binaries are, running a command quietly,
reading a `.vmx`, and building a VM of thin disks from scripts/gen_image.py images."""
import os
import subprocess
import sys

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
