"""DSL programs against the real verifier, run with BPF_PROG_TEST_RUN."""
import json
import os
import subprocess
import sys

import construct as c
import pytest

from pybpf.asm import Program
from pybpf.errors import VerifierError
from pybpf.maps import Map
from pybpf.prog import load
from pybpf.uapi import MapType
from tests import oracles
from tests.conftest import require

PACKET = bytes(range(64))  # socket filters want at least an Ethernet header


def run(p, data=PACKET):
    """Load `p` as a socket filter, run it once, return r0 (u32)."""
    with load(p, "socket_filter", name=p.name or "asm_test") as prog:
        return prog.test_run(data).retval


def test_if_else_on_packet_length():
    p = Program("iflen")
    p.r0 = p.r1.u32[0]  # __sk_buff.len
    with p.If(p.r0 > 100):
        p.r0 = 1
    with p.Elif(p.r0 > 40):
        p.r0 = 2
    with p.Else():
        p.r0 = 3
    p.exit()
    assert run(p, bytes(200)) == 1
    assert run(p, bytes(64)) == 2
    assert run(p, bytes(20)) == 3


def test_signed_compares_and_cpu_v4_alu():
    require("isa.v4")
    p = Program("signed")
    p.r0 = 0
    p.r1 = -5
    with p.If(p.r1.s < 0):
        p.r0 |= 1
    with p.If(p.r1 > 10):  # unsigned: -5 is huge
        p.r0 |= 2
    with p.If(p.w1.s < 0):  # 32-bit signed compare
        p.r0 |= 4
    with p.If(p.r1 & 1):  # jset
        p.r0 |= 8
    with p.If(~(p.r1 & 4)):  # -5 = ...1011: bit 2 clear
        p.r0 |= 16
    p.r2 = -20
    p.r2.s /= 3  # sdiv
    with p.If(p.r2 == -6):
        p.r0 |= 32
    p.r3 = 0x80
    p.movsx(p.r4, p.r3, 8)
    with p.If(p.r4.s == -128):
        p.r0 |= 64
    p.r5 = 0x1234
    p.bswap(p.r5, 16)
    with p.If(p.r5 == 0x3412):
        p.r0 |= 128
    p.r6 = -7
    p.r6.s %= 3  # smod: -1
    p.r6.s >>= 1  # arsh: still -1
    with p.If(p.r6 == -1):
        p.r0 |= 256
    p.exit()
    assert run(p) == 511


def test_bounded_loop_sums_1_to_100():
    p = Program("sum")
    p.r0 = 0
    with p.For(p.r6, 1, 101):
        p.r0 += p.r6
    p.exit()
    assert run(p) == 5050


def test_while_with_break_and_continue():
    p = Program("while")
    p.r0 = 0
    p.r6 = 0
    with p.While(p.r6 < 1000):
        p.r6 += 1
        with p.If(p.r6 & 1):
            p.Continue()  # odd numbers skipped
        p.r0 += p.r6
        with p.If(p.r6 >= 10):
            p.Break()
    p.exit()
    assert run(p) == 2 + 4 + 6 + 8 + 10


def test_bpf_to_bpf_call():
    p = Program("calls")
    p.r1 = 7
    p.r2 = 3
    p.call_local("square_plus")
    p.r1 = p.r0
    p.r2 = 0
    p.call_local("square_plus")
    p.exit()

    with p.function("square_plus"):
        p.r0 = p.r1 * p.r1
        p.r0 += p.r2
        p.exit()

    assert run(p) == 52 * 52


def bpf_loop_program():
    p = Program("bpfloop", prog_type="socket_filter")
    acc = p.stack.alloc(8)
    acc.zero()
    p.bpf_loop(10, "add_index", acc, 0)
    p.r0 = acc.u64[0]
    p.exit()

    @p.subprogram
    def add_index():  # (u32 index, void *ctx) -> 0 continues
        p.r3 = p.r2.u64[0]
        p.r3 += p.r1
        p.r2.u64[0] = p.r3
        p.exit(0)

    return p


def test_bpf_loop_callback_sums_indices():
    assert run(bpf_loop_program()) == 45


def test_callbacks_need_the_btf_func_info():
    with pytest.raises(VerifierError, match="missing btf func_info"):
        load(bpf_loop_program(), btf=False)


def _bpftool_xlated(prog_id):
    out = subprocess.run([oracles.require("bpftool"), "-j", "prog", "dump", "xlated", "id", str(prog_id), "linum"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return json.loads(out)


def test_bpftool_shows_the_python_source_lines():
    p = bpf_loop_program()
    with load(p) as prog:
        dump = _bpftool_xlated(prog.id)
        info = prog.info()
    here = os.path.abspath(__file__)
    lines = {(insn["src"], insn["file"], insn["line_num"]) for insn in dump if "src" in insn}
    source = open(here).read().splitlines()
    for text in ("acc.zero()", 'p.bpf_loop(10, "add_index", acc, 0)', "p.r3 += p.r1", "p.exit(0)"):
        number = next(i for i, line in enumerate(source, 1) if line.strip() == text)
        assert (text, here, number) in lines, text
    # Function names come from the DSL: the program's and the subprogram's.
    assert [insn["proto"] for insn in dump if "proto" in insn] == ["int bpfloop()", "int add_index()"]
    assert info.btf_id > 0


def test_verifier_log_shows_the_python_line_of_a_rejected_insn():
    p = Program("badread", prog_type="socket_filter")
    p.r0 = 1
    p.r0 += p.r3  # r3 is never written: rejected
    p.exit()
    with pytest.raises(VerifierError) as err:
        load(p)
    assert "; p.r0 += p.r3  # r3 is never written: rejected" in err.value.log
    if " @ " in err.value.log:  # newer kernels (not 6.1) add each source line's file:line
        assert "; p.r0 += p.r3  # r3 is never written: rejected @ test_asm_kernel.py:" in err.value.log


def test_btf_false_loads_no_btf():
    p = Program("nobtf", prog_type="socket_filter")
    p.r0 = 7
    p.exit()
    with load(p, btf=False) as bare, load(p) as described:
        assert bare.info().btf_id == 0 and described.info().btf_id > 0
        assert bare.test_run(PACKET).retval == described.test_run(PACKET).retval == 7


def test_helper_calls():
    p = Program("helpers")
    p.r6 = p.call("ktime_get_ns")
    p.r7 = 0
    with p.For(p.r8, 8):
        p.call("get_prandom_u32")
        p.r7 |= p.r0
    p.call("bpf_ktime_get_ns")
    p.r0 -= p.r6  # elapsed
    with p.If(p.r6 == 0):
        p.exit(100)
    with p.If(p.r7 == 0):  # eight zero draws: 2**-256
        p.exit(101)
    with p.If(p.r0.s < 0):
        p.exit(102)
    p.exit(1)
    assert run(p) == 1


def test_map_lookup_update_and_atomics():
    with Map(MapType.ARRAY, key=4, value=8, max_entries=4, name="asm_t") as counters:
        p = Program("maps")
        key = p.stack.alloc(4)
        value = p.stack.alloc(8)
        key.u32[0] = 0
        p.call("map_lookup_elem", counters, key)
        with p.If(p.r0 == 0):
            p.exit(0)
        p.r1 = 5
        p.r0.u64[0] += p.r1  # lock add
        p.r1 = 1
        p.atomic_add(p.r0.u64[0], p.r1, fetch=True)  # r1 = old value
        p.r6 = p.r1
        key.u32[0] = 1
        value.u64[0] = p.r6
        p.call("map_update_elem", counters, key, value, 0)
        p.exit(p.r0)
        assert p.maps == [counters]
        assert run(p) == 0
        assert run(p) == 0
        assert counters.lookup(0) == 12
        assert counters.lookup(1) == 11  # the value before the second run's +1


def test_xchg_and_cmpxchg_on_the_stack():
    p = Program("xchg")
    slot = p.stack.alloc(8)
    slot.u64[0] = 10
    p.r1 = 20
    p.xchg(slot.u64[0], p.r1)  # r1 = 10, slot = 20
    p.r0 = 20
    p.r2 = 30
    p.cmpxchg(slot.u64[0], p.r2)  # slot == r0: slot = 30, r0 = 20
    p.r3 = slot.u64[0]
    p.r0 += p.r3  # 50
    p.r0 += p.r1  # 60
    p.exit()
    assert run(p) == 60


EVENT = c.Struct("pid" / c.Int32ul, "delta" / c.Int16sl, c.Padding(2), "ts" / c.Int64ul)


def test_stack_struct_fields():
    require("isa.v4")  # the signed field reads as a sign-extending load
    p = Program("struct")
    ev = p.stack.alloc(EVENT)
    ev.zero()
    p.r1 = 1000
    p.r10.u32[ev.offset] = p.r1
    p.r1 = -3
    p.r10.u16[ev.offset + 4] = p.r1
    p.r6 = ev  # address of the struct
    ptr = p.ptr(p.r6, EVENT)
    p.r1 = 7
    p.r6.u64[8] = p.r1
    p.r0 = ptr.field("pid")
    p.r2 = ptr.field("delta")  # sign-extended: -3
    p.r0 += p.r2
    p.r3 = ev.field("ts")
    p.r0 += p.r3
    p.exit()
    assert run(p) == 1004


def test_verifier_error_names_the_dsl_line():
    p = Program("bad")
    p.r1 = 0
    line = f"test_asm_kernel.py:{sys._getframe().f_lineno + 1}"
    p.r0 = p.r1.u64[0]  # dereferences a scalar
    p.exit()
    with pytest.raises(VerifierError) as err:
        run(p)
    assert err.value.source == line


def test_cpu_auto_follows_the_running_kernel():
    from pybpf import features

    assert Program(cpu="auto").cpu == ("v4" if features.has("isa.v4") else "v3")
