"""Disassembly speed: pybpf.disasm beside llvm-objdump on the same bytes, same run.

    python tests/perf/bench_disasm.py [instructions]

Two corpora of valid instructions drawn from every row of isa.OPS:
  typical  operands from the small sets compilers use (registers, stack offsets, small
           constants), so many slots repeat as in real programs;
  distinct every slot different (random 32-bit immediates): no slot repeats, so no cache helps.
llvm-objdump reads the same instructions from an ELF .text (process start included;
its figure is for the whole run of the tool, as a user would see it). Ours is
pybpf.disassemble(bytes) -> text (pc column for kernel and llvm), in-process, and (the
"whole process" rows) `python -m pybpf.disasm FILE`, start-up included. Both are the
best of ROUNDS runs, in wall-clock time and (", CPU" rows) in CPU time, ours and
llvm-objdump's own. The target of each row is llvm-objdump's figure in the same run.

run() returns {name: (ours, peer, unit, target)} for tests/perf/run.py.
"""
import os
import random
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from tests.perf.timing import rate  # noqa: E402
from pybpf import disasm, isa  # noqa: E402
from pybpf.insn import Insn, encode  # noqa: E402
from tests.elfutil import bpf_elf  # noqa: E402

LLVM_OBJDUMP = next((p for p in ("/usr/lib/llvm-19/bin/llvm-objdump", "/usr/bin/llvm-objdump-19")
                     if os.path.exists(p)), None)
FLOOR = ">= 500000"  # the target where llvm-objdump is missing


def _target(peer):
    """At least llvm-objdump's rate in the same run (ours/peer >= 1.0, issue 27)."""
    return f">= {round(peer)}" if peer else FLOOR
ROUNDS = 5  # best of, for ours and the peer alike: the machine is shared


def corpus(count, distinct, seed=1):
    rnd = random.Random(seed)
    rows = [row for row in isa.OPS if not row.wide]
    wide = [row for row in isa.OPS if row.wide]
    out, slots = [], 0
    while slots < count:
        row = rnd.choice(wide) if rnd.random() < 0.03 else rnd.choice(rows)
        fields = {
            "dst": rnd.randrange(11) if distinct else rnd.choice((0, 1, 2, 6, 7, 10)),
            "src": rnd.randrange(11) if distinct else rnd.choice((1, 2, 6, 10)),
            "off": rnd.randrange(-32768, 32768) if distinct else rnd.choice((-8, -16, 0, 4, 8, 2)),
            "imm": rnd.randrange(-(1 << 31), 1 << 31) if distinct else rnd.choice((0, 1, 8, 14, 255)),
        }
        kw = {k: v for k, v in fields.items() if k in row.uses}
        out.append(Insn(row, **kw))
        slots += row.slots
    return encode(out)


def _llvm_rate(code):
    if not LLVM_OBJDUMP:
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".o") as obj:
        obj.write(bpf_elf(code))
        obj.flush()
        cmd = [LLVM_OBJDUMP, "-d", "--mcpu=v4", "--no-show-raw-insn", obj.name]

        def go():
            subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True, timeout=300)
        return rate(go, len(code) // 8, ROUNDS)


def _whole_process(code):
    """(ours, ours in CPU time) instructions a second of `python -m pybpf.disasm FILE` on the raw
    bytes (start-up, imports and writing the text included, as llvm-objdump's figure has them),
    best of ROUNDS; checked to print what pybpf.disassemble does."""
    with tempfile.TemporaryDirectory() as tmp:
        raw, out = os.path.join(tmp, "in.bin"), os.path.join(tmp, "out.txt")
        with open(raw, "wb") as f:
            f.write(code)

        def go():
            with open(out, "w") as f:
                subprocess.run([sys.executable, "-m", "pybpf.disasm", raw], stdout=f, check=True, timeout=300, cwd=ROOT)
        figures = rate(go, len(code) // 8, ROUNDS)
        with open(out) as f:
            assert f.read() == disasm.disassemble(code), "python -m pybpf.disasm printed other text"
    return figures


def run(count=200_000):
    figures = {}
    for name in ("typical", "distinct"):
        code = corpus(count, distinct=name == "distinct")
        slots = len(code) // 8
        peer, peer_cpu = _llvm_rate(code)
        for syntax in disasm.SYNTAXES:
            ours, ours_cpu = rate(lambda: disasm.disassemble(code, syntax), slots, ROUNDS)
            figures[f"disasm {name} {syntax} insns/s"] = (round(ours), round(peer) if peer else None,
                                                          "insn/s", _target(peer))
            if syntax == "kernel":
                figures[f"disasm {name} {syntax}, CPU insns/s"] = (
                    round(ours_cpu), round(peer_cpu) if peer_cpu else None, "insn/s", _target(peer_cpu))
        if name == "distinct":
            ours, ours_cpu = _whole_process(code)
            figures["disasm distinct kernel, whole process (python -m pybpf.disasm FILE) insns/s"] = (
                round(ours), round(peer) if peer else None, "insn/s", None)
            figures["disasm distinct kernel, whole process, CPU insns/s"] = (
                round(ours_cpu), round(peer_cpu) if peer_cpu else None, "insn/s", None)
    return figures


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    figures = run(count)
    print(f"{'figure':40} {'pybpf':>12} {'llvm-objdump':>14}  target")
    for name, (ours, peer, unit, target) in figures.items():
        print(f"{name:40} {ours:>12,} {peer if peer is None else format(peer, ','):>14}  {target or ''}")


if __name__ == "__main__":
    main()
