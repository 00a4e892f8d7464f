"""pybpf.prog without the kernel: input checks, linking, map patching, log parsing."""
import pytest

from pybpf import isa, prog
from pybpf.errors import AssemblerError, BpfError
from pybpf.insn import Insn
from pybpf.uapi import AttachType, ProgType

FAILED_LOG = """\
func#0 @0
0: R1=ctx() R10=fp0
0: (b7) r0 = 2                        ; R0=2
1: (b7) r1 = 2                        ; R1=2
2: (bf) r0 = r3
R3 !read_ok
processed 3 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0
"""


class FakeMap:
    """Stands in for pybpf.maps.Map: only the fd matters to the loader."""

    def __init__(self, fd):
        self.fd = fd


def test_failing_insn_is_the_last_insn_line():
    idx, line = prog.failing_insn_index(FAILED_LOG)
    assert idx == 2
    assert line == "2: (bf) r0 = r3"


@pytest.mark.parametrize("log, idx", [
    ("unreachable insn 4\nprocessed 0 insns\n", 4),
    ("jump out of range from insn 1 to 9\n", 1),
    ("last insn is not an exit or jmp\n", None),
    ("", None),
])
def test_failing_insn_from_message(log, idx):
    assert prog.failing_insn_index(log)[0] == idx


def test_stats_line():
    assert prog.stats_line(FAILED_LOG).startswith("processed 3 insns (limit 1000000)")
    assert prog.stats_line("nothing here") is None
    assert prog.stats_line(None) is None


@pytest.mark.parametrize("value, expected", [
    ("xdp", ProgType.XDP), ("XDP", ProgType.XDP), ("BPF_PROG_TYPE_SCHED_CLS", ProgType.SCHED_CLS),
    ("socket_filter", ProgType.SOCKET_FILTER), (6, ProgType.XDP), (ProgType.SK_LOOKUP, ProgType.SK_LOOKUP),
    (999, 999),
])
def test_prog_type_of(value, expected):
    assert prog.prog_type_of(value) == expected


def test_unknown_prog_type_name_lists_known_ones():
    with pytest.raises(BpfError, match="unknown program type 'xdpp'.*socket_filter"):
        prog.prog_type_of("xdpp")
    with pytest.raises(BpfError, match="not float"):
        prog.prog_type_of(1.5)


def test_attach_type_of():
    assert prog.attach_type_of("cgroup_inet4_connect") == AttachType.CGROUP_INET4_CONNECT
    assert prog.attach_type_of("BPF_SK_LOOKUP") == AttachType.SK_LOOKUP


@pytest.mark.parametrize("name, expected", [
    ("count", "count"), ("with-dash", "with_dash"), ("a" * 20, "a" * 15), ("x.y_z", "x.y_z"), ("", ""),
])
def test_object_name(name, expected):
    assert prog.object_name(name) == expected


def test_instructions_links_labels():
    insns = [Insn("mov", 0, 0, 0, 0), Insn("jeq", 0, 0, 0, 0, ref="out"), Insn("lddw", 1, imm=1 << 40),
             Insn("exit", label="out")]
    linked = prog.instructions(insns)
    assert linked[1].off == 2  # lddw takes two slots


def test_instructions_accepts_dsl_programs():
    class Dsl:
        def link(self):
            return [Insn("mov", 0, 0, 0, 7), Insn("exit")]

    assert [i.op.name for i in prog.instructions(Dsl())] == ["mov", "exit"]


def test_instructions_rejects_bad_input():
    with pytest.raises(AssemblerError, match="not int"):
        prog.instructions(42)
    with pytest.raises(AssemblerError, match="element 1 is str"):
        prog.instructions([Insn("exit"), "exit"])
    assert prog.instructions(b"\x95" + bytes(7)) is None


def test_patch_maps_writes_fds_and_keeps_value_offset():
    m = FakeMap(17)
    insns = prog.patch_maps([Insn("ld_map_fd", 1, ref=m), Insn("ld_map_value", 2, imm=24 << 32, ref=m),
                             Insn("ld_map_fd", 3, imm=5), Insn("exit")])
    assert insns[0].imm == 17
    assert insns[1].imm == 17 | (24 << 32)
    assert insns[2].imm == 5  # no ref: the user's raw fd stays
    assert insns[1].ref is m


def test_patch_maps_rejects_closed_map():
    with pytest.raises(AssemblerError, match="no open fd"):
        prog.patch_maps([Insn("ld_map_fd", 1, ref=FakeMap(-1), source="p.py:3")])


def test_slot_table_counts_ld_imm64_twice():
    a, b, c = Insn("mov", 0, 0, 0, 0), Insn("lddw", 1, imm=1), Insn("exit")
    assert prog._slot_table([a, b, c]) == [a, b, b, c]


@pytest.mark.parametrize("program, match", [
    ([], "empty program"),
    (b"", "empty program"),
    (b"\x95" + bytes(8), "not a multiple of 8"),
    ({"insns": 1}, "not dict"),
])
def test_load_rejects_before_any_syscall(program, match):
    with pytest.raises(AssemblerError, match=match):
        prog.load(program, "xdp")


def test_load_rejects_sharing_attach_fields():
    with pytest.raises(BpfError, match="share one field"):
        prog.load([Insn("exit")], "ext", attach_prog_fd=3, attach_btf_obj_fd=4)


def test_insn_text_falls_back_to_kernel_line():
    insn = Insn(isa.lookup("mov", "reg"), 0, 3)
    text = prog._insn_text(insn, "2: (bf) r0 = r3")
    assert "r0 = r3" in text


# -- BTF func_info / line_info --------------------------------------------------------------------

def test_function_slots_follow_calls_and_ld_func():
    insns = prog.instructions([
        Insn("call_local", ref="sub"), Insn("ld_func", 2, ref="cb"), Insn("exit"),
        Insn("mov", 0, imm=1, label="sub"), Insn("exit"),
        Insn("mov", 0, imm=0), Insn("exit", label="cb")])  # a label on a later insn of a function
    assert prog.function_slots(insns) == [("main", 0), ("sub", 4), ("cb", 7)]


def test_function_slots_backward_call_and_unnamed_target():
    insns = [Insn("exit"), Insn("mov", 0, imm=0), Insn("call_local", imm=-3), Insn("exit")]
    assert prog.function_slots(insns) == [("main", 0)]  # a call back to main adds no function
    insns = [Insn("call_local", imm=1), Insn("exit"), Insn("mov", 0, imm=0), Insn("exit")]
    assert prog.function_slots(insns) == [("main", 0), ("func_2", 2)]


def test_source_lines_one_per_change_and_at_each_function():
    from pybpf.asm import Program

    p = Program("lines")
    p.r0 = 1  # line A
    p.r1 = 1 << 40  # line B: ld_imm64, two slots
    p.call_local("sub")
    p.exit()
    with p.function("sub"):
        p.exit()  # a function start
    insns = prog.instructions(p)
    lines = prog.source_lines(insns, [slot for _, slot in p.functions])
    assert [entry[0] for entry in lines] == [0, 1, 3, 4, 5]
    assert [entry[1] for entry in lines] == [__file__] * 5  # the full path, from pybpf.asm's table
    assert lines[0][3] == "p.r0 = 1  # line A" and lines[1][3] == "p.r1 = 1 << 40  # line B: ld_imm64, two slots"
    assert lines[1][2] == lines[0][2] + 1 and lines[4][3] == "p.exit()  # a function start"


def test_source_lines_continue_through_insns_without_source():
    insns = [Insn("mov", 0, imm=1, source="x.py:1"), Insn("mov", 2, imm=1), Insn("exit", source="x.py:1"),
             Insn("exit")]
    assert prog.source_lines(insns, [0, 3]) == [(0, "x.py", 1, ""), (3, "", 0, "")]


def test_source_lines_skip_sources_that_are_not_file_lines():
    insns = [Insn("mov", 0, imm=1, source="line 3, column 7"), Insn("exit", source="p.py:x")]
    assert prog.source_lines(insns, [0]) == [(0, "", 0, "")]
    assert prog.program_btf(prog.instructions(insns)) is None


def test_program_btf_describes_functions_and_lines():
    from pybpf.btf import Btf

    where = "x.py:3"
    insns = prog.instructions([Insn("ld_func", 2, ref="cb", source=where), Insn("exit", source=where),
                               Insn("mov", 0, imm=0, label="cb"), Insn("exit")])
    info = prog.program_btf(insns, [("my prog", 0), ("9cb", 3)])
    assert (info.func_info_cnt, info.line_info_cnt) == (2, 2)
    back = Btf.from_bytes(info.data)
    assert back.func_id("my_prog") and back.func_id("_9cb")  # made identifiers
    assert prog.program_btf([Insn("mov", 0, imm=0), Insn("exit")]) is None  # nothing to say


def test_load_without_prog_type_is_one_line():
    with pytest.raises(BpfError, match="no prog_type given"):
        prog.load([Insn("mov", 0, imm=0), Insn("exit")])


# -- errors ----------------------------------------------------------------------------------------

def test_verifier_error_message_skips_statistics():
    from pybpf.errors import VerifierError

    log = FAILED_LOG + "verification time 23 usec\nstack depth 0+0\n"
    err = VerifierError(13, log, 2, "r0 = r3", "p.py:3", "bad")
    first = str(err).splitlines()[0]
    assert first.endswith("1: (b7) r1 = 2                        ; R1=2 | 2: (bf) r0 = r3 | R3 !read_ok")
    assert "processed" not in str(err) and "verification time" not in str(err)
    assert err.log == log  # the whole log stays on .log
    assert str(VerifierError(13, "processed 0 insns (limit 1000000)\n")).endswith("no verifier log")


def test_invalid_argument_is_the_base_of_input_errors():
    from pybpf.errors import InvalidArgument
    from pybpf.maps import MapError

    for cls in (AssemblerError, MapError):
        assert issubclass(cls, InvalidArgument) and issubclass(cls, ValueError) and issubclass(cls, BpfError)
    with pytest.raises(InvalidArgument):
        prog.instructions(42)
