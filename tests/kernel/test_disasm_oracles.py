"""pybpf.disasm against the real oracles, line by line.

- kernel syntax vs the 6.18 verifier log at log_level 2 (it prints each
  instruction as loaded, before the verifier's rewrites);
- kernel syntax of xlated code vs `bpftool prog dump xlated id N`;
- llvm syntax vs `llvm-objdump -d --mcpu=v4` on an ELF holding every row of isa.OPS.
"""
import os
import re
import subprocess
import sys

import pytest

from pybpf import isa, prog
from pybpf.asm import disasm, spelling
from pybpf.insn import Insn, decode, encode
from pybpf.maps import Map
from pybpf.uapi import MapType, ProgType
from tests import oracles
from tests.conftest import require, uses_cpu_v4
from tests.elfutil import bpf_elf

BPFTOOL = oracles.find("bpftool").path

# -- programs covering every instruction class the verifier accepts -------------------------------

PRANDOM, LOOKUP, LOOP = 7, 1, 181  # helper ids: get_prandom_u32, map_lookup_elem, loop


def _unknown(reg):
    """reg = an unknown scalar (r0-r5 are clobbered by the call)."""
    return [Insn("call", imm=PRANDOM), Insn(isa.lookup("mov", "reg"), reg, 0)]


def alu_stack_jumps():
    """Every ALU/ALU32 op (imm and reg), neg, movsx, le/be/bswap, every store/load size,
    sign-extending loads, all atomics on the stack, every jump condition 64/32 imm/reg."""
    mov_reg = isa.lookup("mov", "reg")
    out = _unknown(7) + _unknown(8)
    out.append(Insn("or", 8, imm=1))  # never zero: keeps div/mod by r8 free of the verifier's patching doubt
    for suffix in ("", "32"):
        for alu in isa.ALU_OPS:
            out.append(Insn(isa.lookup(alu.name + suffix, "imm"), 7, imm=3))
            out.append(Insn(isa.lookup(alu.name + suffix, "reg"), 7, 8))
        out.append(Insn("neg" + suffix, 7))
    out += [Insn(f"movsx{w}64", 7, 8) for w in (8, 16, 32)] + [Insn(f"movsx{w}32", 7, 8) for w in (8, 16)]
    out += [Insn(f"{kind}{w}", 7) for kind in ("le", "be", "bswap") for w in (16, 32, 64)]
    out += [Insn("mov", 7, imm=-1), Insn("mov32", 8, imm=0x7FFFFFFF), Insn("mov", 9, imm=-2147483648)]
    # Stack: stores of each size (imm and reg), loads of each size, sign-extending loads.
    out += [Insn("stdw", 10, off=-8, imm=-5), Insn("stxdw", 10, 7, off=-16), Insn("stw", 10, off=-20, imm=7),
            Insn("stxw", 10, 7, off=-24), Insn("sth", 10, off=-26, imm=-2), Insn("stxh", 10, 7, off=-28),
            Insn("stb", 10, off=-29, imm=1), Insn("stxb", 10, 7, off=-30)]
    out += [Insn("ldxdw", 1, 10, off=-8), Insn("ldxw", 2, 10, off=-20), Insn("ldxh", 3, 10, off=-26),
            Insn("ldxb", 4, 10, off=-29), Insn("ldxsw", 1, 10, off=-24), Insn("ldxsh", 2, 10, off=-28),
            Insn("ldxsb", 3, 10, off=-30)]
    out += [Insn("stxdw", 10, 7, off=-40), Insn("stxdw", 10, 7, off=-48)]
    for op in isa.ATOMIC_OPS:
        out.append(Insn(mov_reg, 0, 7))
        out.append(Insn(f"lock_{op.name}", 10, 9, off=-40))
        out.append(Insn(f"lock_{op.name}32", 10, 9, off=-48))
    # Jumps: two fresh unknowns before each, so the verifier's states merge again right after.
    n = 0
    for suffix in ("", "32"):
        for cond in isa.JMP_CONDS:
            for source in ("imm", "reg"):
                out += _unknown(6) + _unknown(9)
                fields = dict(imm=5) if source == "imm" else dict(src=6)
                out.append(Insn(isa.lookup(cond.name + suffix, source), 9, off=1, **fields))
                out.append(Insn("mov", 0, imm=n))
                n += 1
    out += [Insn("ja", off=0), Insn("gotol", imm=0), Insn("may_goto", off=1), Insn("mov", 0, imm=3),
            Insn("mov", 0, imm=0), Insn("exit")]
    return out


def calls_and_loads(array):
    """Map fd and map value loads, a helper call, a bpf-to-bpf call, lddw."""
    return [
        Insn("lddw", 6, imm=0x1122334455667788),
        Insn("stw", 10, off=-4, imm=0),
        Insn("ld_map_fd", 1, imm=array.fd),
        Insn(isa.lookup("mov", "reg"), 2, 10),
        Insn("add", 2, imm=-4),
        Insn("call", imm=LOOKUP),
        Insn("ld_map_value", 1, imm=array.fd | (8 << 32)),
        Insn("ldxdw", 0, 1, off=0),
        Insn("call_local", ref="sub"),
        Insn("mov", 0, imm=0),
        Insn("exit"),
        Insn("mov", 0, imm=7, label="sub"),
        Insn("exit"),
    ]


def callback_load():
    """ld_func for bpf_loop: the verifier wants BTF func_info for the callback and refuses,
    but its log has printed the instruction by then."""
    return [Insn("mov", 1, imm=3), Insn("ld_func", 2, ref="callback"), Insn("mov", 3, imm=0),
            Insn("mov", 4, imm=0), Insn("call", imm=LOOP), Insn("exit"),
            Insn("mov", 0, imm=0, label="callback"), Insn("exit")]


def packet_loads():
    """ld_abs / ld_ind (socket filters only, and never beside bpf-to-bpf calls)."""
    mov_reg = isa.lookup("mov", "reg")
    return [Insn(mov_reg, 6, 1), Insn("mov", 7, imm=1),
            Insn("ldabsb", imm=12), Insn("ldabsh", imm=12), Insn("ldabsw", imm=12),
            Insn("ldindb", src=7, imm=2), Insn("ldindh", src=7, imm=2), Insn("ldindw", src=7, imm=-1),
            Insn("mov", 0, imm=0), Insn("exit")]


@pytest.fixture
def array():
    with Map(MapType.ARRAY, key=4, value=16, max_entries=1, name="disasm_t") as m:
        yield m


@pytest.fixture
def corpus(array):
    return {"alu_stack_jumps": alu_stack_jumps(), "calls_and_loads": calls_and_loads(array),
            "packet_loads": packet_loads()}


def _load(insns, name):
    return prog.load(insns, ProgType.SOCKET_FILTER, name=name, log_level=2)


# -- verifier log ---------------------------------------------------------------------------------

_LOG_INSN = re.compile(r"^(\d+): (\([0-9a-f]{2}\) .*?)(?:\s+; .*)?$")

# Lines where the log shows what the verifier made of an instruction before printing it:
# resolve_pseudo_ldimm64 has put the map's kernel address into ld_imm64 map loads.
_LOG_ADDRESS = re.compile(r"^\(18\) r\d+ = 0x[0-9a-f]+$")


def _log_lines(log):
    seen = {}
    for line in log.splitlines():
        m = _LOG_INSN.match(line)
        if m:
            pc, text = int(m.group(1)), m.group(2)
            assert seen.setdefault(pc, text) == text, f"log prints insn {pc} two ways"
    return seen


def _ours(code):
    out = {}
    for line in disasm.disassemble(code).splitlines():
        pc, text = line.split(": ", 1)
        out[int(pc)] = text
    return out


@pytest.mark.parametrize("name", ["alu_stack_jumps", "calls_and_loads", "packet_loads"])
def test_kernel_syntax_matches_verifier_log(corpus, name):
    from pybpf.link import link

    insns = link(corpus[name])
    if uses_cpu_v4(insns):
        require("isa.v4")
    code = encode(insns)
    with _load(insns, name) as p:
        logged = _log_lines(p.log)
    ours = _ours(code)
    slots = len(code) // 8
    starts = set(ours)
    # Every instruction start was visited and printed (a program that skips some proves less).
    assert set(logged) == starts, f"log covers {sorted(starts - set(logged))} not"
    for pc, text in logged.items():
        if _LOG_ADDRESS.match(text) and ours[pc].split(" = ", 1)[1].startswith(("map[", "subprog[")):
            continue
        assert ours[pc] == text, f"insn {pc}/{slots}"


def test_kernel_syntax_pseudo_loads_in_log(corpus):
    """The log's ld_imm64 map lines are addresses; ours name the fd. Check the pairing is the only gap."""
    from pybpf.link import link

    insns = link(corpus["calls_and_loads"])
    with _load(insns, "pseudo") as p:
        logged = _log_lines(p.log)
    ours = _ours(encode(insns))
    pseudo = {pc for pc, text in ours.items() if re.search(r"= (map|subprog)\[", text)}
    assert len(pseudo) == 2
    for pc in pseudo:
        assert _LOG_ADDRESS.match(logged[pc]), (pc, logged[pc], ours[pc])


def test_kernel_syntax_ld_func_in_log():
    """The log prints ld_func's imm raw ("r2 = 0x5"); pybpf prints bpftool's subprog[+5]."""
    from pybpf.errors import VerifierError
    from pybpf.link import link

    insns = link(callback_load())
    with pytest.raises(VerifierError) as err:
        _load(insns, "callback")
    logged = _log_lines(err.value.log)
    ours = _ours(encode(insns))
    assert logged[0] == ours[0] == "(b7) r1 = 3"
    assert logged[1] == "(18) r2 = 0x5" and ours[1] == "(18) r2 = subprog[+5]"


# -- bpftool prog dump xlated ---------------------------------------------------------------------

_BPFTOOL_INSN = re.compile(r"^ *\d+: ")

# bpftool v7.1 carries an older disasm.c: for instructions newer than it, the 6.18 verifier log
# (tested above) is the oracle, and these rows are left out of the bpftool comparison.
_NEWER_THAN_BPFTOOL = {"sdiv", "smod", "sdiv32", "smod32", "bswap16", "bswap32", "bswap64",
                       "ldxsb", "ldxsh", "ldxsw", "gotol", "may_goto"} | {
    row.name for row in isa.OPS if row.kind == "movsx"}


def _bpftool_xlated(prog_id):
    out = subprocess.run([BPFTOOL, "prog", "dump", "xlated", "id", str(prog_id)],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return [line for line in out.splitlines() if _BPFTOOL_INSN.match(line)]


@oracles.skip_unless("bpftool")
@pytest.mark.parametrize("name", ["alu_stack_jumps", "calls_and_loads", "packet_loads"])
def test_xlated_matches_bpftool(corpus, name):
    from pybpf.link import link

    if uses_cpu_v4(link(corpus[name])):
        require("isa.v4")
    with _load(corpus[name], name) as p:
        loaded = prog.read_loaded(prog_id=p.id)
        theirs = _bpftool_xlated(p.id)
    ours = disasm.disassemble(loaded.code, symbols=loaded.symbols).splitlines()
    rows = {int(line.split(":")[0]): insn for line, insn in zip(ours, decode(loaded.code))}
    assert len(ours) == len(theirs)
    compared = 0
    for mine, bpftool in zip(ours, theirs):
        insn = rows[int(mine.split(":")[0])]
        if insn.op is not None and insn.op.name in _NEWER_THAN_BPFTOOL:
            continue
        assert mine == bpftool
        compared += 1
    assert compared >= len(ours) * 0.8


@oracles.skip_unless("bpftool")
def test_xlated_names_maps_and_calls(corpus, array):
    with _load(corpus["calls_and_loads"], "names") as p:
        loaded = prog.read_loaded(prog_id=p.id)
    text = disasm.disassemble(loaded.code, symbols=loaded.symbols)
    map_id = array.info().id if hasattr(array, "info") else loaded.map_ids[0]
    assert f"map[id:{map_id}]" in text
    assert f"map[id:{map_id}][0]+8" in text
    entries = disasm.disassemble_json(loaded.code, symbols=loaded.symbols, map_names=loaded.map_names)
    assert any(e.get("map", {}).get("name") == "disasm_t" for e in entries)


# -- llvm-objdump ---------------------------------------------------------------------------------

def _llvm_corpus():
    """Every row of the table, twice: small operands and edge operands (negative, extreme)."""
    out = []
    for dst, src, off, imm in ((1, 2, -4, 5), (10, 9, 32767, -2147483648), (0, 0, 0, 0)):
        for op in isa.OPS:
            fields = {"dst": dst, "src": src, "off": off, "imm": imm}
            kw = {k: v for k, v in fields.items() if k in op.uses}
            if op.kind == "ld_imm64":
                kw["imm"] = -imm * 0x100000001 if op.operation == "lddw" else imm & 0xFFFFFFFF
            if op.kind == "ld_ind":
                kw["imm"] = 0  # llvm prints skb[rN] and drops imm
            out.append(Insn(op, **kw))
    return out


# Rows llvm-objdump prints ambiguously or not at all; pybpf prints an extension there (module doc).
_LLVM_EXTENDED = {"call_local", "call_kfunc"}


@oracles.skip_unless("llvm-objdump")
def test_llvm_syntax_matches_llvm_objdump(tmp_path):
    insns = _llvm_corpus()
    code = encode(insns)
    obj = tmp_path / "corpus.o"
    obj.write_bytes(bpf_elf(code))
    out = subprocess.run([oracles.require("llvm-objdump"), "-d", "--mcpu=v4", "--no-show-raw-insn", str(obj)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    theirs = [re.sub(r" <prog\+0x[0-9a-f]+>$", "", line) for line in out.splitlines()
              if re.match(r"^\s+\d+:\t", line)]
    ours = disasm.disassemble(code, "llvm").splitlines()
    assert len(ours) == len(theirs) == len(insns)
    for insn, mine, llvm in zip(insns, ours, theirs):
        if insn.op.name in _LLVM_EXTENDED:
            assert llvm.endswith(f"call {spelling.shex(insn.imm)}")
            continue
        assert mine == llvm, insn


def test_llvm_round_trips_through_llvm_mc(tmp_path):
    """What llvm-mc assembles from our llvm text is the same bytes (rows llvm-mc can express)."""
    mc = oracles.require("llvm-mc")
    objdump = oracles.require("llvm-objdump")
    insns = [i for i in _llvm_corpus()
             if i.op.kind not in ("jmp", "ja", "gotol", "may_goto", "call", "ld_imm64")]
    src = tmp_path / "t.s"
    src.write_text(disasm.disassemble(encode(insns), "llvm", pcs=False))
    obj = tmp_path / "t.o"
    subprocess.run([mc, "-triple", "bpfel", "-mcpu=v4", "-filetype=obj", str(src), "-o", str(obj)],
                   check=True, capture_output=True, timeout=60)
    out = subprocess.run([objdump, "-d", "--mcpu=v4", str(obj)],
                         capture_output=True, text=True, timeout=60).stdout
    raw = b"".join(bytes.fromhex("".join(line.split("\t")[1].split()))
                   for line in out.splitlines() if re.match(r"^\s+\d+:\t", line))
    assert raw == encode(insns)


# -- the CLI on a program pybpf did not load --------------------------------------------------------

_LOADER = """
import sys, time
from pybpf import prog
from pybpf.insn import Insn
from pybpf.uapi import ProgType
p = prog.load([Insn("mov", 0, imm=42), Insn("call", imm=5), Insn("exit")], ProgType.SOCKET_FILTER, name="foreign")
print(p.id, flush=True)
sys.stdin.readline()
"""


def test_cli_reads_a_program_loaded_by_another_process():
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    loader = subprocess.Popen([sys.executable, "-c", _LOADER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        prog_id = int(loader.stdout.readline())
        out = subprocess.run([sys.executable, "-m", "pybpf.disasm", "--prog-id", str(prog_id)],
                             capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0] == "   0: (b7) r0 = 42"
        assert lines[1].startswith("   1: (85) call ")  # ktime_get_ns, named by kallsyms as bpftool does
        assert lines[-1] == "   2: (95) exit"
        if BPFTOOL:
            assert lines == _bpftool_xlated(prog_id)
    finally:
        loader.stdin.close()
        loader.wait(timeout=30)


def test_cli_no_such_prog_id():
    out = subprocess.run([sys.executable, "-m", "pybpf.disasm", "--prog-id", "4000000000"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert len(out.stderr.strip().splitlines()) == 1
