#!/usr/bin/env python3
"""Writes a realistic sparse raw disk image for benchmarks.

The image is SIZE bytes of virtual disk in which a fraction FILL holds data: runs (64 KiB to 8 MiB)
of pseudo-random bytes (incompressible), text-like bytes (compressible) and explicitly written zeros
(as a guest that zeroed a file leaves them), separated by holes. Deterministic for a given seed.
`data(rng, source, n)` makes N bytes of the same mix, holes left out (a block a guest rewrote
whole); scripts/bench_restic.py uses it.

usage: gen_image.py OUT SIZE_MIB FILL [SEED]
"""
import random
import sys

RUNS = [64, 128, 256, 1024, 2048, 4096, 8192]  # KiB
WORDS = b"the quick brown fox jumps over the lazy dog; lorem ipsum dolor sit amet 0123456789 \n"


class Source:
    """The bytes runs are cut from: 8 MiB of text, 8 MiB of noise drawn from `rng`, zeros."""

    def __init__(self, rng):
        self.text = (WORDS * (1 + (8 << 20) // len(WORDS)))[: 8 << 20]
        self.noise = rng.randbytes(8 << 20)
        self.zeros = bytes(8 << 20)


def data_run(rng, src, run):
    """One run of data of RUN bytes (at most 8 MiB): noise half the time, text 40 %, zeros 10 %."""
    kind = rng.random()
    if kind < 0.5:
        start = rng.randrange(0, len(src.noise) - run + 1, 4096)
        return src.noise[start : start + run]
    if kind < 0.9:
        start = rng.randrange(0, len(src.text) - run + 1)
        return src.text[start : start + run]
    return src.zeros[:run]


def run_length(rng, left):
    return min(rng.choice(RUNS) << 10, left)


def data(rng, src, n):
    """N bytes made of data runs as the image holds them, without holes."""
    out = bytearray()
    while len(out) < n:
        out += data_run(rng, src, run_length(rng, n - len(out)))
    return bytes(out)


def main():
    out, size_mib, fill = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    rng = random.Random(seed)
    size = size_mib << 20
    src = Source(rng)
    with open(out, "wb") as f:
        f.truncate(size)
        pos = 0
        while pos < size:
            run = run_length(rng, size - pos)
            if rng.random() < fill:
                f.seek(pos)
                f.write(data_run(rng, src, run))
            pos += run


if __name__ == "__main__":
    main()
