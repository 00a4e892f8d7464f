"""pybpf.disasm without a kernel: exact text per syntax, garbage, JSON, the CLI.

The kernel and LLVM texts below were checked against the verifier log, bpftool and
llvm-objdump by tests/kernel/test_disasm_oracles.py; here they pin the format down.
"""
import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pybpf
from pybpf import disasm, isa
from pybpf.errors import BpfError
from pybpf.insn import Insn, decode, encode

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MOV_REG = isa.lookup("mov", "reg")

KERNEL = [
    (Insn("mov", 0, imm=0), "(b7) r0 = 0"),
    (Insn(MOV_REG, 1, 2), "(bf) r1 = r2"),
    (Insn("add", 1, imm=5), "(07) r1 += 5"),
    (Insn("mov32", 0, imm=1), "(b4) w0 = 1"),
    (Insn("add", 1, imm=-1), "(07) r1 += -1"),
    (Insn("call", imm=1), "(85) call bpf_map_lookup_elem#1"),
    (Insn("call", imm=99999), "(85) call unknown#99999"),
    (Insn("call_local", imm=-3), "(85) call pc-3"),
    (Insn("call_kfunc", imm=1234), "(85) call kernel-function#1234"),
    (Insn("exit"), "(95) exit"),
    (Insn("ja", off=3), "(05) goto pc+3"),
    (Insn("jeq", 1, off=2, imm=0), "(15) if r1 == 0x0 goto pc+2"),
    (Insn("jeq", 1, off=-2, imm=-1), "(15) if r1 == 0xffffffff goto pc-2"),
    (Insn(isa.lookup("jgt32", "reg"), 1, 2, off=1), "(2e) if w1 > w2 goto pc+1"),
    (Insn("ldxw", 0, 1, off=4), "(61) r0 = *(u32 *)(r1 +4)"),
    (Insn("stxw", 10, 1, off=-4), "(63) *(u32 *)(r10 -4) = r1"),
    (Insn("stdw", 10, off=-8, imm=7), "(7a) *(u64 *)(r10 -8) = 7"),
    (Insn("ldxsb", 1, 2, off=0), "(91) r1 = *(s8 *)(r2 +0)"),
    (Insn("lock_add", 1, 2), "(db) lock *(u64 *)(r1 +0) += r2"),
    (Insn("lock_fetch_add32", 1, 2, off=8), "(c3) r2 = atomic_fetch_add((u32 *)(r1 +8), r2)"),
    (Insn("lock_xchg", 1, 2), "(db) r2 = atomic64_xchg((u64 *)(r1 +0), r2)"),
    (Insn("lock_cmpxchg", 1, 2), "(db) r0 = atomic64_cmpxchg((u64 *)(r1 +0), r0, r2)"),
    (Insn(isa.lookup("sdiv", "reg"), 1, 2), "(3f) r1 s/= r2"),
    (Insn(isa.lookup("smod32", "imm"), 1, imm=3), "(94) w1 s%= 3"),
    (Insn("movsx864", 1, 2), "(bf) r1 = (s8)r2"),
    (Insn("movsx1632", 1, 2), "(bc) w1 = (s16)w2"),
    (Insn("neg32", 3), "(84) w3 = -w3"),
    (Insn("be16", 1), "(dc) r1 = be16 r1"),
    (Insn("le64", 1), "(d4) r1 = le64 r1"),
    (Insn("bswap32", 1), "(d7) r1 = bswap32 r1"),
    (Insn("gotol", imm=70000), "(06) gotol pc+70000"),
    (Insn("may_goto", off=4), "(e5) may_goto pc+4"),
    (Insn("ldabsb", imm=12), "(30) r0 = *(u8 *)skb[12]"),
    (Insn("ldindh", src=7, imm=2), "(48) r0 = *(u16 *)skb[r7 + 2]"),
    (Insn("lddw", 1, imm=0x1122334455667788), "(18) r1 = 0x1122334455667788"),
    (Insn("ld_map_fd", 1, imm=5), "(18) r1 = map[fd:5]"),
    (Insn("ld_map_value", 1, imm=5 | (8 << 32)), "(18) r1 = map[fd:5][0]+8"),
    (Insn("ld_func", 2, imm=5), "(18) r2 = subprog[+5]"),
    (Insn("ld_map_idx", 1, imm=0), "(18) r1 = map[idx:0]"),
    (Insn("ld_btf_id", 1, imm=77), "(18) r1 = btf_id[77]"),
]


@pytest.mark.parametrize("insn,text", KERNEL, ids=[t for _, t in KERNEL])
def test_kernel_syntax(insn, text):
    assert disasm.format_insn(insn) == text
    assert disasm.format_insn(insn.encode()) == text


def test_pc_column_is_bpftools():
    code = encode([Insn("mov", 0, imm=0), Insn("lddw", 1, imm=1), Insn("exit")])
    assert pybpf.disassemble(code) == "   0: (b7) r0 = 0\n   1: (18) r1 = 0x1\n   3: (95) exit\n"
    assert disasm.format_insn(Insn("exit"), pc=1234) == " 1234: (95) exit"


def test_xlated_symbols_name_maps_by_id():
    xlated = disasm.Symbols(xlated=True)
    assert disasm.format_insn(Insn("ld_map_fd", 1, imm=5), symbols=xlated) == "(18) r1 = map[id:5]"
    assert disasm.format_insn(Insn("ld_map_value", 1, imm=5 | (4 << 32)), symbols=xlated) == \
        "(18) r1 = map[id:5][0]+4"


LLVM = [
    (Insn("add", 1, imm=5), "r1 += 0x5"),
    (Insn("mov", 1, imm=-2147483648), "r1 = -0x80000000"),
    (Insn("ldxw", 1, 10, off=0), "w1 = *(u32 *)(r10 + 0x0)"),
    (Insn("ldxdw", 1, 10, off=-8), "r1 = *(u64 *)(r10 - 0x8)"),
    (Insn("jsgt32", 1, off=3, imm=-5), "if w1 s> -0x5 goto +0x3"),
    (Insn("lddw", 1, imm=-1), "r1 = -0x1 ll"),
    (Insn("ld_map_fd", 1, imm=3), "ld_pseudo\tr1, 0x1, 0x3"),
    (Insn("lock_xchg32", 1, 2, off=-4), "w2 = xchg32_32(r1 - 0x4, w2)"),
    (Insn("call_local", imm=2), "call pc+0x2"),
    (Insn("ldindw", src=3, imm=0), "r0 = *(u32 *)skb[r3]"),
]

UBPF = [
    (Insn("mov", 0, imm=0), "mov %r0, 0x0"),
    (Insn("add32", 1, imm=5), "add32 %r1, 0x5"),
    (Insn("add", 1, imm=-1), "add %r1, 0xffffffff"),
    (Insn("ldxw", 1, 2, off=4), "ldxw %r1, [%r2+4]"),
    (Insn("stxdw", 10, 1, off=-8), "stxdw [%r10-8], %r1"),
    (Insn("sth", 1, off=0, imm=3), "sth [%r1], 0x3"),
    (Insn(isa.lookup("jgt", "reg"), 1, 2, off=3), "jgt %r1, %r2, +3"),
    (Insn("jeq32", 1, off=-1, imm=7), "jeq32 %r1, 0x7, -1"),
    (Insn("lddw", 0, imm=0x1122334455667788), "lddw %r0, 0x1122334455667788"),
    (Insn("call", imm=1), "call 0x1"),
    (Insn("call_local", imm=3), "call local +3"),
    (Insn("le16", 1), "le16 %r1"),
    (Insn("lock_fetch_add", 1, 2), "lock_fetch_add [%r1], %r2"),
    (Insn("ld_map_value", 1, imm=3 | (8 << 32)), "ld_map_value %r1, 0x3, 0x8"),
    (Insn("ja", off=-2), "ja -2"),
    (Insn("exit"), "exit"),
]


@pytest.mark.parametrize("insn,text", LLVM, ids=[t for _, t in LLVM])
def test_llvm_syntax(insn, text):
    assert disasm.format_insn(insn, "llvm") == text


@pytest.mark.parametrize("insn,text", UBPF, ids=[t for _, t in UBPF])
def test_ubpf_syntax(insn, text):
    assert disasm.format_insn(insn, "ubpf") == text


def test_unknown_syntax_is_one_line_error():
    with pytest.raises(BpfError, match="unknown syntax 'intel'"):
        disasm.disassemble(b"", "intel")


def _every_row(seed_fields):
    out = []
    for dst, src, off, imm in seed_fields:
        for row in isa.OPS:
            fields = {"dst": dst, "src": src, "off": off, "imm": imm}
            if row.operation in ("ld_map_fd", "ld_func", "ld_map_idx"):
                fields["imm"] = imm & 0xFFFFFFFF  # the kernel requires their second imm to be 0
            out.append(Insn(row, **{k: v for k, v in fields.items() if k in row.uses}))
    return out


@pytest.mark.parametrize("syntax", disasm.SYNTAXES)
def test_distinct_instructions_print_distinct_text(syntax):
    """Text is invertible: no two encodings share a line (the kernel's "(xx)" column aside)."""
    insns = _every_row([(1, 2, -4, 5), (10, 9, 7, -1), (0, 0, 0, 0), (3, 4, 1, 1 << 20)])
    seen = {}
    for insn in insns:
        text = disasm.format_insn(insn, syntax)
        if syntax == "kernel":
            text = text.split(") ", 1)[1]
        raw = insn.encode()
        assert seen.setdefault(text, raw) == raw, f"{text!r} is two instructions"


def test_garbage_prints_as_invalid_and_goes_on():
    code = bytes.fromhex("ff00000000000000") + Insn("exit").encode() + bytes.fromhex("18010000") + b"\x07"
    assert pybpf.disassemble(code).splitlines() == [
        "   0: (ff) invalid: unknown opcode 0xff [ff 00 00 00 00 00 00 00]",
        "   1: (95) exit",
        "   2: (18) invalid: truncated instruction: 5 bytes [18 01 00 00 07]",
    ]
    # A reserved field set: the instruction is not what its opcode alone says.
    bad_exit = bytes.fromhex("9501000000000000")
    assert "invalid: exit: reserved field dst" in pybpf.disassemble(bad_exit)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(disasm.SYNTAXES))
def test_any_bytes_disassemble(data, syntax):
    text = disasm.disassemble(data, syntax, pcs=True)
    starts = len(decode(data))
    assert text.count("\n") == starts
    assert len(disasm.disassemble_json(data, syntax)) == starts


def test_json_annotations():
    code = encode([Insn("ld_map_value", 1, imm=3 | (16 << 32)), Insn("call", imm=1),
                   Insn("jeq", 0, off=1, imm=0), Insn("call_local", imm=-5), Insn("exit")]) + b"\xff" * 8
    entries = disasm.disassemble_json(code)
    assert entries[0]["map"] == {"fd": 3, "offset": 16} and entries[0]["raw"] == code[:16].hex()
    assert entries[1]["helper"] == "bpf_map_lookup_elem" and entries[1]["pc"] == 2
    assert entries[2]["target"] == 5 and entries[2]["name"] == "jeq" and entries[2]["off"] == 1
    assert entries[3]["target"] == 0
    assert entries[-1]["invalid"] == "unknown opcode 0xff" and entries[-1]["opcode"] == 0xFF
    json.dumps(entries)


def test_lists_of_insn_are_accepted():
    insns = [Insn("mov", 0, imm=1), Insn("exit")]
    assert disasm.disassemble(insns) == disasm.disassemble(encode(insns))


def test_text_assembler_reads_every_syntax_back():
    text = pytest.importorskip("pybpf.text")
    # ld_func's offset is 32 bits in the low half of its 64-bit immediate (the second slot's imm is 0)
    insns = [i for i in _every_row([(1, 2, -4, 5), (10, 9, 7, -1)]) if i.op.name != "ld_func"]
    insns += [Insn("ld_func", 1, imm=3), Insn("ld_func", 1, imm=-1 & 0xFFFFFFFF)]
    code = encode(insns)
    for syntax in disasm.SYNTAXES:
        assert text.assemble(disasm.disassemble(code, syntax)) == code, syntax


# -- command line -----------------------------------------------------------------------------

def _cli(*args, stdin=b"", as_user=False):
    argv = [sys.executable, "-m", "pybpf.disasm", *args]
    if as_user and os.geteuid() == 0:
        argv = ["unshare", "--user", *argv]  # root's uid, none of its capabilities
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=60, cwd=ROOT)


def test_cli_hex_from_stdin_tolerates_noise():
    out = _cli("-", stdin=b"0xb7 00 00 00 2a 00 00 00,\n95 00 00 00 00 00 00 00\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode() == "   0: (b7) r0 = 42\n   1: (95) exit\n"


def test_cli_raw_file_and_syntaxes(tmp_path):
    path = tmp_path / "prog.bin"
    path.write_bytes(encode([Insn("mov", 0, imm=1), Insn("exit")]))
    assert _cli(str(path), "--syntax", "ubpf").stdout.decode() == "mov %r0, 0x1\nexit\n"
    assert _cli(str(path), "--syntax", "llvm").stdout.decode() == "       0:\tr0 = 0x1\n       1:\texit\n"
    lines = _cli(str(path), "--json").stdout.decode().splitlines()
    assert [json.loads(line)["text"] for line in lines] == ["(b7) r0 = 1", "(95) exit"]


def test_cli_dsl(tmp_path):
    (tmp_path / "dslprog.py").write_text(
        "from pybpf.insn import Insn\n"
        "PROG = [Insn('jeq', 1, imm=0, ref='out'), Insn('mov', 0, imm=1), Insn('exit', label='out')]\n")
    out = subprocess.run([sys.executable, "-m", "pybpf.disasm", "--dsl", "dslprog:PROG"], capture_output=True,
                         timeout=60, env=dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().splitlines()[0] == "   0: (15) if r1 == 0x0 goto pc+1"


@pytest.mark.parametrize("args,stdin,message", [
    (("/nonexistent/prog.bin",), b"", "No such file"),
    (("--hex", "-"), b"b7 00 zz", "bad hex input"),
    (("--hex", "-"), b"b7 0", "odd number of hex digits"),
    (("--dsl", "no_such_module_xyz:PROG"), b"", "cannot import"),
    (("--dsl", "nocolon"), b"", "MODULE:ATTR"),
])
def test_cli_errors_are_one_line(args, stdin, message):
    out = _cli(*args, stdin=stdin)
    assert out.returncode != 0
    err = out.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_cli_prog_id_needs_root():
    out = _cli("--prog-id", "1", as_user=True)
    assert out.returncode == 1 and out.stdout == b""
    assert out.stderr.decode() == ("pybpf-disasm: BPF_PROG_GET_FD_BY_ID: Operation not permitted (EPERM): "
                                   "are you root? (needs CAP_BPF/CAP_SYS_ADMIN)\n")
