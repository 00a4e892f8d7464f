"""Text assembly speed: pybpf.assemble beside llvm-mc on the same LLVM-syntax text, same run.

    python tests/perf/bench_text.py [instructions]

The text is a valid program of every non-pseudo row of isa.OPS, written in
LLVM syntax (pybpf.disasm's llvm output with its "N:" columns removed), in two
flavours:
  typical  operands from the small sets compilers use, so statements repeat
  distinct every statement different (random offsets and 32-bit immediates)
and a ubpf-syntax version of the typical program. llvm-mc assembles the same
LLVM text to an object (process start included: the figure is the whole run of
the tool, as a user sees it). Ours is pybpf.assemble(text) -> bytes: parse,
link, validate, encode (in-process). Both are the best of ROUNDS runs, in
wall-clock time and (", CPU" rows) in CPU time, ours and llvm-mc's own. The
"ours / llvm-mc" rows carry issue 27's target: distinct input at llvm-mc's rate.

run() returns {name: (ours, peer, unit, target)} for tests/perf/run.py.
"""
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from tests.perf.timing import rate  # noqa: E402
from pybpf import disasm, isa  # noqa: E402
from pybpf.insn import Insn, encode  # noqa: E402
from pybpf.text import assemble  # noqa: E402

LLVM_MC = next((p for p in ("/usr/lib/llvm-19/bin/llvm-mc", shutil.which("llvm-mc") or "") if p and os.access(p, os.X_OK)),
               None)
TARGET = ">= 500000"
DISTINCT_TARGET = ">= 1.0"  # ours / llvm-mc in CPU time, distinct input
ROUNDS = 5  # best of, for ours and the peer alike: the machine is shared
# llvm-mc has no spelling for these: kfunc calls, map/BTF pseudo loads with a
# 64-bit value, ld_ind with an offset (LLVM's LD_IND takes a register only).
_SKIP_KINDS = ("ld_imm64", "ld_ind")
_SKIP_NAMES = ("call_kfunc",)


def corpus(count, distinct, seed=1):
    rnd = random.Random(seed)
    rows = [row for row in isa.OPS if row.kind not in _SKIP_KINDS and row.name not in _SKIP_NAMES]
    lddw = isa.lookup("lddw")
    out, slots = [], 0
    while slots < count:
        row = lddw if rnd.random() < 0.03 else rnd.choice(rows)
        fields = {
            "dst": rnd.randrange(11) if distinct else rnd.choice((0, 1, 2, 6, 7, 10)),
            "src": rnd.randrange(11) if distinct else rnd.choice((1, 2, 6, 10)),
            "off": rnd.randrange(-32768, 32768) if distinct else rnd.choice((-8, -16, 0, 4, 8, 2)),
            "imm": rnd.randrange(-(1 << 31), 1 << 31) if distinct else rnd.choice((0, 1, 8, 14, 255)),
        }
        if row.kind == "gotol":  # llvm-mc reads a numeric gotol target as 16 bits only
            fields["imm"] = fields["off"]
        out.append(Insn(row, **{k: v for k, v in fields.items() if k in row.uses}))
        slots += row.slots
    return encode(out)


_COLUMN = re.compile(r"^\s*\d+:\t", re.M)


def text_of(code, syntax):
    text = disasm.disassemble(code, syntax)
    return _COLUMN.sub("", text) if syntax == "llvm" else text


def _llvm_mc_rate(text, slots):
    if not LLVM_MC:
        return None, None
    with tempfile.TemporaryDirectory() as tmp:
        src, obj = os.path.join(tmp, "in.s"), os.path.join(tmp, "out.o")
        with open(src, "w") as f:
            f.write(text)
        cmd = [LLVM_MC, "-triple", "bpfel", "-mcpu=v4", "-filetype=obj", src, "-o", obj]

        def go():
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True, timeout=300)
        return rate(go, slots, ROUNDS)


def _whole_process(code):
    """(ours, llvm-mc's) instructions a second, best of ROUNDS wall-clock runs of each command on
    the same LLVM text file, start-up included: `python -m pybpf.asm FILE -o OUT` (byte-compiled,
    as installed) against `llvm-mc ... FILE -o OUT.o`."""
    slots = len(code) // 8
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "in.s")
        with open(src, "w") as f:
            f.write(text_of(code, "llvm"))
        ours_cmd = [sys.executable, "-m", "pybpf.asm", src, "-o", os.path.join(tmp, "out.bin"), "--syntax", "llvm"]

        def go(cmd):
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True, timeout=300, cwd=ROOT)
        ours, _ = rate(lambda: go(ours_cmd), slots, ROUNDS)
        with open(os.path.join(tmp, "out.bin"), "rb") as f:
            assert f.read() == code, "pybpf.asm wrote other bytes"
        peer = None
        if LLVM_MC:
            peer, _ = rate(lambda: go([LLVM_MC, "-triple", "bpfel", "-mcpu=v4", "-filetype=obj", src, "-o",
                                        os.path.join(tmp, "out.o")]), slots, ROUNDS)
    return ours, peer


def run(count=200_000):
    figures = {}
    for name in ("typical", "distinct"):
        code = corpus(count, distinct=name == "distinct")
        slots = len(code) // 8
        text = text_of(code, "llvm")
        assert assemble(text, "llvm") == code, "benchmark text does not assemble back to its bytes"
        peer, peer_cpu = _llvm_mc_rate(text, slots)
        ours, ours_cpu = rate(lambda: assemble(text, "llvm"), slots, ROUNDS)
        figures[f"asm {name} llvm insns/s"] = (round(ours), round(peer) if peer else None, "insn/s",
                                               TARGET if name == "typical" else None)
        figures[f"asm {name} llvm, CPU insns/s"] = (round(ours_cpu), round(peer_cpu) if peer_cpu else None,
                                                    "insn/s", None)
        if name == "distinct":  # issue 27's target: at least llvm-mc's rate on text that does not repeat
            figures["asm distinct llvm, CPU: ours / llvm-mc"] = (
                round(ours_cpu / peer_cpu, 3) if peer_cpu else None, None, "ratio", DISTINCT_TARGET)
    for name in ("typical", "distinct"):
        ours, peer = _whole_process(corpus(count, distinct=name == "distinct"))
        figures[f"asm {name} llvm, whole process (python -m pybpf.asm FILE -o OUT) insns/s"] = (
            round(ours), round(peer) if peer else None, "insn/s", None)
        if name == "distinct":
            figures["asm distinct llvm, whole process: ours / llvm-mc"] = (
                round(ours / peer, 3) if peer else None, None, "ratio", None)
    code = corpus(count, distinct=False)
    text = text_of(code, "ubpf")
    assert assemble(text, "ubpf") == code
    ours, _ = rate(lambda: assemble(text, "ubpf"), len(code) // 8, ROUNDS)
    figures["asm typical ubpf insns/s"] = (round(ours), None, "insn/s", None)
    return figures


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    figures = run(count)
    print(f"{'figure':34} {'pybpf':>12} {'llvm-mc':>12}  target")
    for name, (ours, peer, unit, target) in figures.items():
        print(f"{name:34} {ours:>12,} {'missing' if peer is None else format(peer, ','):>12}  {target or ''}")


if __name__ == "__main__":
    main()
