#!/usr/bin/env python3
"""DSL assembly throughput beside llvm-mc assembling the same program as text.

A realistic block (context loads, a stack key, a map lookup, If/Else, atomics,
a 64-bit constant, a bounded loop) is repeated. Ours is building the Program
(every DSL statement, each instruction with its file:line) then
Program.bytes() (link + validate + encode), as a user gets bytecode; the
peer is llvm-mc turning the equivalent LLVM-syntax text into an object,
measured in the same run (its process start, timed on an empty file, is
subtracted). Best of ROUNDS for both. The two outputs are checked to be the
same bytes.

    python tests/perf/bench_dsl.py
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from pybpf.asm import Program  # noqa: E402
from pybpf.disasm import disassemble  # noqa: E402

BLOCKS = 1500
ROUNDS = 5
TARGET = ">= 500000"
LLVM_BINS = ("/usr/lib/llvm-19/bin", "/usr/bin")


class _Map:
    """A map reference; llvm-mc sees the same ld_imm64 pseudo with fd 3."""

    fd = 3


def build(blocks=BLOCKS):
    m = _Map()
    p = Program("bench")
    key = p.stack.alloc(8)
    for _ in range(blocks):
        p.r6 = p.r1
        p.r2 = p.r6.u32[0]
        key.u32[0] = p.r2
        key.u32[4] = 0
        p.call("map_lookup_elem", m, key)
        with p.If(p.r0 == 0):
            p.r7 = 0
        with p.Else():
            p.r1 = 1
            p.r0.u64[0] += p.r1
            p.atomic_add(p.r0.u64[8], p.r1, fetch=True)
            p.r7 = p.r1
        p.r3 = 1 << 40
        p.r3.s >>= 3
        with p.For(p.r8, 4):
            p.r7 += p.r8
        p.w7 &= 0xFFFF
    p.exit(p.r7)
    return p


def ours(rounds=ROUNDS):
    """(insn/s emit only, insn/s emit+link+encode, the bytes)."""
    best_emit = best_all = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        p = build()
        t1 = time.perf_counter()
        code = p.bytes()
        t2 = time.perf_counter()
        best_emit, best_all = min(best_emit, t1 - t0), min(best_all, t2 - t0)
    n = len(p.insns)
    return n / best_emit, n / best_all, code, p


def _tool(name):
    for directory in LLVM_BINS:
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return shutil.which(name)


def peer(text, n, rounds=ROUNDS):
    """(insn/s of llvm-mc, its .text bytes) or (None, None) when llvm-mc is missing."""
    mc, objcopy = _tool("llvm-mc"), _tool("llvm-objcopy")
    if mc is None or objcopy is None:
        return None, None
    with tempfile.TemporaryDirectory() as tmp:
        src, empty, obj, raw = (os.path.join(tmp, f) for f in ("p.s", "e.s", "p.o", "p.bin"))
        with open(src, "w") as f:
            f.write(text)
        open(empty, "w").close()

        def timed(path):
            t0 = time.perf_counter()
            subprocess.run([mc, "-triple", "bpfel", "-mcpu=v4", "-filetype=obj", "-o", obj, path],
                           check=True, timeout=120)
            return time.perf_counter() - t0

        # Empty and real runs alternate, so a burst of load on the shared machine skews neither.
        start = work = float("inf")
        for _ in range(rounds):
            start, work = min(start, timed(empty)), min(work, timed(src))
        subprocess.run([objcopy, "-O", "binary", "--only-section=.text", obj, raw], check=True, timeout=60)
        with open(raw, "rb") as f:
            code = f.read()
    return n / max(work - start, 1e-9), code


def run():
    emit_rate, total_rate, code, p = ours()
    text = disassemble(p.link(), syntax="llvm", pcs=False)
    peer_rate, peer_code = peer(text, len(p.insns))
    if peer_code is not None and peer_code != code:
        raise AssertionError("llvm-mc assembled different bytes from the same program")
    return {
        "DSL emit+link+encode (insn/s)": (round(total_rate), round(peer_rate) if peer_rate else None, "insn/s", TARGET),
        "DSL emit only (insn/s)": (round(emit_rate), round(peer_rate) if peer_rate else None, "insn/s", TARGET),
    }


if __name__ == "__main__":
    for name, (value, other, unit, target) in run().items():
        print(f"{name:34s} ours {value:>10,} {unit}   llvm-mc {other if other is None else f'{other:,}':>10} "
              f"  target {target}")
