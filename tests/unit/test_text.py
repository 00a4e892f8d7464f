"""pybpf.text: every statement form, errors with line:column, listings pasted back, the CLI."""
import subprocess
import sys

import pytest

from pybpf import disasm, isa
from pybpf.errors import AssemblerError
from pybpf.insn import Insn, decode, encode
from pybpf.text import assemble, detect_syntax, parse


def one(text, syntax="auto"):
    insns = parse(text, syntax)
    assert len(insns) == 1, insns
    return insns[0]


def same(text, name, syntax="auto", **fields):
    got = one(text, syntax)
    want = Insn(name, **fields)
    assert got == want, f"{text!r}: {got} != {want}"
    assert assemble(text, syntax) == encode([want])


LLVM = [
    ("r1 = *(u32 *)(r2 + 4)", "ldxw", dict(dst=1, src=2, off=4)),
    ("r1 = *(u32 *)(r2 +4)", "ldxw", dict(dst=1, src=2, off=4)),  # bpftool spacing
    ("w1 = *(u32 *)(r2 + 0x4)", "ldxw", dict(dst=1, src=2, off=4)),  # llvm-objdump alu32 form
    ("r1 = *(u8 *)(r10 -1)", "ldxb", dict(dst=1, src=10, off=-1)),
    ("r1 = *(s8 *)(r2 + 1)", "ldxsb", dict(dst=1, src=2, off=1)),
    ("r3 = *(s32 *)(r2 - 8)", "ldxsw", dict(dst=3, src=2, off=-8)),
    ("*(u64 *)(r10 - 8) = r1", "stxdw", dict(dst=10, src=1, off=-8)),
    ("*(u16 *)(r10 -2) = w1", "stxh", dict(dst=10, src=1, off=-2)),
    ("*(u32 *)(r1 + 0) = 5", "stw", dict(dst=1, imm=5)),
    ("*(u8 *)(r1 + 3) = -1", "stb", dict(dst=1, off=3, imm=-1)),
    ("r1 += r2", "add", dict(dst=1, src=2)),
    ("w1 -= 7", "sub32", dict(dst=1, imm=7)),
    ("r1 s/= r2", "sdiv", dict(dst=1, src=2)),
    ("r1 s%= 3", "smod", dict(dst=1, imm=3)),
    ("w4 s>>= 3", "arsh32", dict(dst=4, imm=3)),
    ("r0 = 0", "mov", dict(dst=0, imm=0)),
    ("r1 = -0x1", "mov", dict(dst=1, imm=-1)),
    ("r1 = 0xffffffff", "mov", dict(dst=1, imm=-1)),  # llvm-mc: a u32 spelling of -1
    ("w1 = w2", "mov32", dict(dst=1, src=2)),
    ("r1 = (s8)r2", "movsx864", dict(dst=1, src=2)),
    ("w1 = (s16)w2", "movsx1632", dict(dst=1, src=2)),
    ("r1 = (s32)r2", "movsx3264", dict(dst=1, src=2)),
    ("r1 = -r1", "neg", dict(dst=1)),
    ("w3 = -w3", "neg32", dict(dst=3)),
    ("r1 = be16 r1", "be16", dict(dst=1)),
    ("r1 = le32 r1", "le32", dict(dst=1)),
    ("r1 = bswap64 r1", "bswap64", dict(dst=1)),
    ("r0 = 0x1234 ll", "lddw", dict(dst=0, imm=0x1234)),
    ("r0 = 0x1122334455667788", "lddw", dict(dst=0, imm=0x1122334455667788)),  # too wide for mov
    ("r1 = map[fd:5]", "ld_map_fd", dict(dst=1, imm=5)),
    ("r1 = map[id:5]", "ld_map_fd", dict(dst=1, imm=5)),  # bpftool
    ("r1 = map[id:5][0]+8", "ld_map_value", dict(dst=1, imm=5 | 8 << 32)),
    ("r1 = map[idx:2]", "ld_map_idx", dict(dst=1, imm=2)),
    ("r1 = map[idx:2]+16", "ld_map_idx_value", dict(dst=1, imm=2 | 16 << 32)),
    ("r2 = subprog[-4]", "ld_func", dict(dst=2, imm=-4 & 0xFFFFFFFF)),
    ("ld_pseudo r1, 1, 5", "ld_map_fd", dict(dst=1, imm=5)),
    ("lock *(u64 *)(r1 + 0) += r2", "lock_add", dict(dst=1, src=2)),
    ("lock *(u32 *)(r1 +8) |= r2", "lock_or32", dict(dst=1, src=2, off=8)),
    ("r0 = atomic_fetch_add((u64 *)(r1 + 0), r0)", "lock_fetch_add", dict(dst=1, src=0)),
    ("w2 = atomic_fetch_xor((u32 *)(r1 - 8), w2)", "lock_fetch_xor32", dict(dst=1, src=2, off=-8)),
    ("r2 = atomic64_fetch_and((u64 *)(r1 +0), r2)", "lock_fetch_and", dict(dst=1, src=2)),  # kernel
    ("r0 = xchg_64(r1 + 0, r0)", "lock_xchg", dict(dst=1, src=0)),
    ("w3 = xchg32_32(r1 + 4, w3)", "lock_xchg32", dict(dst=1, src=3, off=4)),
    ("r2 = atomic64_xchg((u64 *)(r1 +0), r2)", "lock_xchg", dict(dst=1, src=2)),  # kernel
    ("r0 = cmpxchg_64(r1 + 0, r0, r2)", "lock_cmpxchg", dict(dst=1, src=2)),
    ("w0 = cmpxchg32_32(r1 + 0, w0, w2)", "lock_cmpxchg32", dict(dst=1, src=2)),
    ("r0 = atomic_cmpxchg((u32 *)(r1 +0), r0, r2)", "lock_cmpxchg32", dict(dst=1, src=2)),  # kernel
    ("if r1 > r2 goto +3", "jgt", dict(dst=1, src=2, off=3)),
    ("if r1 s> 5 goto pc-2", "jsgt", dict(dst=1, imm=5, off=-2)),
    ("if w1 == w2 goto -1", "jeq32", dict(dst=1, src=2, off=-1)),
    ("if r1 > 0xffffffff goto pc+1", "jgt", dict(dst=1, imm=-1, off=1)),  # kernel prints (u32)imm
    ("if w9 & 0x10 goto +0x2", "jset32", dict(dst=9, imm=16, off=2)),
    ("goto +2", "ja", dict(off=2)),
    ("goto pc+2", "ja", dict(off=2)),
    ("gotol +70000", "gotol", dict(imm=70000)),
    ("may_goto pc+2", "may_goto", dict(off=2)),
    ("call 1", "call", dict(imm=1)),
    ("call bpf_map_lookup_elem", "call", dict(imm=1)),
    ("call map_lookup_elem", "call", dict(imm=1)),
    ("call bpf_map_lookup_elem#1", "call", dict(imm=1)),
    ("call unknown#5000", "call", dict(imm=5000)),
    ("call pc+3", "call_local", dict(imm=3)),
    ("call kernel-function#77 off 2", "call_kfunc", dict(imm=77, off=2)),
    ("call bpf_obj_new_impl#12345", "call_kfunc", dict(imm=12345)),  # verifier log names kfuncs
    ("exit", "exit", {}),
    ("callx r2", "callx", dict(dst=2)),
    ("r0 = *(u8 *)skb[12]", "ldabsb", dict(imm=12)),
    ("r0 = *(u16 *)skb[r1 + 2]", "ldindh", dict(src=1, imm=2)),
    ("r0 = *(u32 *)skb[r3]", "ldindw", dict(src=3)),  # llvm-mc form
]


@pytest.mark.parametrize("text,name,fields", LLVM, ids=[t for t, _, _ in LLVM])
def test_llvm_and_kernel_forms(text, name, fields):
    op = isa.lookup(name, "reg" if "src" in fields else "imm")
    got = one(text, "llvm")
    want = Insn(op, **fields)
    assert got == want, f"{got} != {want}"
    assert got.source == "line 1, column 1"


UBPF = [
    ("mov %r0, 1", "mov", "imm", dict(dst=0, imm=1)),
    ("mov r2, 1", "mov", "imm", dict(dst=2, imm=1)),  # bpf_conformance also writes bare registers
    ("add32 %r1, 5", "add32", "imm", dict(dst=1, imm=5)),
    ("sub %r1, %r2", "sub", "reg", dict(dst=1, src=2)),
    ("sdiv %r1, %r2", "sdiv", "reg", dict(dst=1, src=2)),
    ("smod32 %r1, -3", "smod32", "imm", dict(dst=1, imm=-3)),
    ("ldxw %r1, [%r2+4]", "ldxw", None, dict(dst=1, src=2, off=4)),
    ("ldxdw %r1, [%r2]", "ldxdw", None, dict(dst=1, src=2)),
    ("ldxsh %r2, [%r1+0x7eef]", "ldxsh", None, dict(dst=2, src=1, off=0x7EEF)),
    ("stxdw [%r10-8], %r1", "stxdw", None, dict(dst=10, src=1, off=-8)),
    ("stw [%r1], 5", "stw", None, dict(dst=1, imm=5)),
    ("jeq %r1, 0, +3", "jeq", "imm", dict(dst=1, off=3)),
    ("jsgt32 %r1, %r2, -1", "jsgt32", "reg", dict(dst=1, src=2, off=-1)),
    ("ja +2", "ja", None, dict(off=2)),
    ("ja32 +70000", "gotol", None, dict(imm=70000)),
    ("gotol -3", "gotol", None, dict(imm=-3)),
    ("may_goto +1", "may_goto", None, dict(off=1)),
    ("lddw %r0, 0x1122334455667788", "lddw", None, dict(dst=0, imm=0x1122334455667788)),
    ("lddw r1, map_by_fd(3)", "ld_map_fd", None, dict(dst=1, imm=3)),
    ("ld_map_value %r1, 0x5, 0x8", "ld_map_value", None, dict(dst=1, imm=5 | 8 << 32)),
    ("call 1", "call", None, dict(imm=1)),
    ("call helper 2", "call", None, dict(imm=2)),
    ("call bpf_map_lookup_elem", "call", None, dict(imm=1)),
    ("call runtime 7", "call_kfunc", None, dict(imm=7)),
    ("call_kfunc 0x7, 3", "call_kfunc", None, dict(imm=7, off=3)),
    ("call local -4", "call_local", None, dict(imm=-4)),
    ("call %r2", "callx", None, dict(dst=2)),  # bpf_conformance's callx.data
    ("call helper %r5", "callx", None, dict(dst=5)),
    ("callx %r9", "callx", None, dict(dst=9)),
    ("exit", "exit", None, {}),
    ("neg %r1", "neg", None, dict(dst=1)),
    ("neg32 %r1", "neg32", None, dict(dst=1)),
    ("le16 %r1", "le16", None, dict(dst=1)),
    ("be32 %r1", "be32", None, dict(dst=1)),
    ("bswap64 %r3", "bswap64", None, dict(dst=3)),
    ("swap16 %r3", "bswap16", None, dict(dst=3)),  # bpf_conformance's spelling
    ("movsx832 %r0, %r1", "movsx832", None, dict(dst=0, src=1)),
    ("movsx3264 %r0, %r1", "movsx3264", None, dict(dst=0, src=1)),
    ("lock add [%r1+0], %r2", "lock_add", None, dict(dst=1, src=2)),
    ("lock fetch add [%r10-8], %r1", "lock_fetch_add", None, dict(dst=10, src=1, off=-8)),
    ("lock fetch or32 [%r1+4], %r3", "lock_fetch_or32", None, dict(dst=1, src=3, off=4)),
    ("lock xchg [%r10-8], %r1", "lock_xchg", None, dict(dst=10, src=1, off=-8)),
    ("lock cmpxchg32 [%r10-8], %r1", "lock_cmpxchg32", None, dict(dst=10, src=1, off=-8)),
    ("lock_fetch_xor [%r1], %r2", "lock_fetch_xor", None, dict(dst=1, src=2)),
    ("ldabsw 12", "ldabsw", None, dict(imm=12)),
    ("ldindb %r1, 4", "ldindb", None, dict(src=1, imm=4)),
]


@pytest.mark.parametrize("text,name,source,fields", UBPF, ids=[t for t, _, _, _ in UBPF])
def test_ubpf_forms(text, name, source, fields):
    got = one(text, "ubpf")
    want = Insn(isa.lookup(name, source), **fields)
    assert got == want, f"{got} != {want}"


def test_labels_comments_and_linking():
    text = """
    ; a comment line
    # another
    // and another
    start:  r0 = 0          ; trailing comment
            r1 = 5 # hash comment
    loop:   r1 -= 1
            if r1 != 0 goto loop   // back edge
            call helper
            r2 = subprog[helper]
            exit
    helper: r0 = 1
            exit
    """
    insns = parse(text, "llvm")
    assert [i.op.name for i in insns] == ["mov", "mov", "sub", "jne", "call_local", "ld_func", "exit", "mov", "exit"]
    assert insns[0].label == "start" and insns[2].label == "loop" and insns[7].label == "helper"
    assert insns[3].ref == "loop" and insns[4].ref == "helper"
    assert insns[3].source == "line 8, column 13"
    code = decode(assemble(text, "llvm"))
    assert code[3].off == -2  # to loop
    assert code[4].imm == 3  # call helper: slots 4 -> 8 (ld_func is two)
    assert code[5].imm == 2  # subprog[helper]: slot 5 + 2 + 1 = 8, as the kernel counts it


def test_ubpf_exit_label_is_the_first_exit():
    text = "mov %r0, 0\njeq %r1, 0, exit\nmov %r0, 1\nexit\nmov %r0, 2\nexit\n"
    assert decode(assemble(text, "ubpf"))[1].off == 1


# A bpf_conformance-style .data file: "-- asm" holds the program, "-- result" the expected r0.
DATA_FILE = """\
# our own case in bpf_conformance's .data format
-- asm
mov %r0, 0
mov %r1, 0x10
stxdw [%r10-8], %r1
lock fetch add [%r10-8], %r1
ldxdw %r0, [%r10-8]
jne %r0, 0x20, fail
call local done
exit
fail:
mov %r0, -1
exit
done:
exit
-- result
0x20
"""


def data_sections(text):
    sections, name = {}, None
    for line in text.splitlines(keepends=True):
        if line.startswith("-- "):
            name = line[3:].strip()
            sections[name] = ""
        elif name:
            sections[name] += line
    return sections


def test_data_file_asm_section():
    sections = data_sections(DATA_FILE)
    assert detect_syntax(sections["asm"]) == "ubpf"
    insns = decode(assemble(sections["asm"]))
    names = [i.op.name for i in insns]
    assert names == ["mov", "mov", "stxdw", "lock_fetch_add", "ldxdw", "jne", "call_local", "exit",
                     "mov", "exit", "exit"]
    assert insns[5].off == 2 and insns[6].imm == 3
    assert int(sections["result"], 0) == 0x20


# bpf_conformance's callx.data, its program as the suite writes it: a call through a register
CALLX_DATA = """\
-- asm
mov %r1, -1
mov %r2, 5
call %r2
mov %r0, 2
exit
-- result
0x2
-- no register offset
call instruction
"""


def test_callx_assembles_and_prints_back_in_every_syntax():
    code = assemble(data_sections(CALLX_DATA)["asm"])
    assert code[16:24] == bytes([0x8D, 0x02, 0, 0, 0, 0, 0, 0])  # JMP|CALL|X, the register in dst
    printed = {syntax: disasm.disassemble(code, syntax, pcs=False).splitlines()[2]
               for syntax in ("kernel", "llvm", "ubpf")}
    assert printed == {"kernel": "(8d) callx r2", "llvm": "callx r2", "ubpf": "call %r2"}
    for syntax in printed:
        assert assemble(disasm.disassemble(code, syntax)) == code


def test_verifier_log_pastes_back():
    log = """\
func#0 @0
0: R1=ctx() R10=fp0
0: (b7) r0 = 0                        ; R0_w=0
1: (18) r1 = 0x5                      ; R1_w=5
3: (85) call bpf_ktime_get_ns#5       ; R0_w=scalar()
4: (55) if r0 != 0x0 goto pc+1        ; R0_w=scalar()
5: (95) exit
6: (b7) r0 = 1
7: (95) exit
processed 8 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0
"""
    insns = parse(log)
    assert [i.op.name for i in insns] == ["mov", "lddw", "call", "jne", "exit", "mov", "exit"]
    assert insns[1].imm == 5 and insns[2].imm == 5 and insns[3].off == 1


def test_bpftool_and_objdump_listings():
    bpftool = """\
int prog(void * ctx):
; return 0;
   0: (b7) r0 = 0
   1: (18) r1 = map[id:12]
   3: (95) exit
"""
    assert [i.op.name for i in parse(bpftool)] == ["mov", "ld_map_fd", "exit"]
    objdump = ("       0:\t61 21 04 00 00 00 00 00\tr1 = *(u32 *)(r2 + 0x4)\n"
               "       1:\t2d 21 01 00 00 00 00 00\tif r1 > r2 goto +0x1 <.text+0x18>\n"
               "       2:\t18 00 00 00 34 12 00 00 00 00 00 00 00 00 00 00\tr0 = 0x1234 ll\n")
    assert [i.op.name for i in parse(objdump)] == ["ldxw", "jgt", "lddw"]


def test_opcode_prefix_must_agree():
    with pytest.raises(AssemblerError, match=r"line 1, column 9: opcode prefix \(07\) does not match mov"):
        parse("0: (07) r0 = 1")


def test_detect_syntax():
    assert detect_syntax("r0 = 0\nexit\n") == "llvm"
    assert detect_syntax("mov %r0, 0\nexit\n") == "ubpf"
    assert detect_syntax("exit\n") == "llvm"
    assert detect_syntax("  entry:\n  add r1, 3\n") == "ubpf"
    assert detect_syntax("if r1 > 3 goto +1\nexit") == "llvm"


ERRORS = [
    ("r0 = 1\nr1 = 2\nr1 += r11", "llvm", "line 3, column 7: expected a register, got 'r11'"),
    ("r1 = *(u32 *)(r2 + )", "llvm", "line 1, column 18: expected an offset like +8 or -8, got '+'"),
    ("  frob r1", "llvm", "line 1, column 3: expected an instruction, got 'frob'"),
    ("r1 = w2", "llvm", "line 1, column 6: expected a 64-bit register (r2), got 'w2'"),
    ("r1 = *(u32 *)(r2 + 4) junk", "llvm", "line 1, column 23: expected end of statement, got 'junk'"),
    ("r1 = be16 r2", "llvm", "line 1, column 11: expected the destination register again, got 'r2'"),
    ("r1 = atomic_fetch_add((u64 *)(r1 + 0), r3)", "llvm", "line 1, column 1: expected 'r3'"),
    ("r1 = cmpxchg_64(r1 + 0, r0, r2)", "llvm", "line 1, column 1: expected r0"),
    ("r0 = *(u8 *)(r1 + 0x10000)", "llvm", "line 1, column 1: ldxb: offset 65536 out of range"),
    ("w1 = 0x100000000", "llvm", "line 1, column 1: mov32: immediate 4294967296 does not fit 32 bits"),
    ("goto nowhere", "llvm", "line 1, column 1: unknown label 'nowhere'"),
    ("a: exit\na: exit", "llvm", "line 2, column 4: label 'a' defined twice"),
    ("exit\nend:", "llvm", "line 2: label 'end' marks no instruction"),
    ("mov %r11, 1", "ubpf", "line 1, column 5: expected a register, got '%r11'"),
    ("ldxw %r1, [%r2+4", "ubpf", "line 1, column 17: expected ']', got end of line"),
    ("frob %r1", "ubpf", "line 1, column 1: expected an instruction, got 'frob'"),
    ("lock frob [%r1], %r2", "ubpf", "line 1, column 6: expected an atomic operation"),
    ("exit", "nonsense", "unknown syntax 'nonsense'"),
]


@pytest.mark.parametrize("text,syntax,message", ERRORS, ids=[e[2] for e in ERRORS])
def test_errors_name_line_and_column(text, syntax, message):
    with pytest.raises(AssemblerError) as info:
        assemble(text, syntax)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def run_cli(*args, stdin=b""):
    return subprocess.run([sys.executable, "-m", "pybpf.text", *args], input=stdin, capture_output=True, timeout=60)


def test_cli_binary_hex_and_errors(tmp_path):
    src = tmp_path / "prog.s"
    src.write_text("r0 = 0\nexit\n")
    out = tmp_path / "prog.o"
    done = run_cli(str(src), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == assemble("r0 = 0\nexit\n")
    done = run_cli("--hex", "--syntax", "ubpf", stdin=b"mov %r0, 0\nexit\n")
    assert done.stdout.decode() == "b7 00 00 00 00 00 00 00\n95 00 00 00 00 00 00 00\n"
    done = run_cli("-", stdin=b"r0 = 0\nr1 += r12\n")
    assert done.returncode == 1
    assert done.stderr.decode() == "pybpf-asm: stdin: line 2, column 7: expected a register, got 'r12'\n"
    done = run_cli(str(tmp_path / "missing.s"))
    assert done.returncode == 1 and done.stderr.decode().count("\n") == 1
