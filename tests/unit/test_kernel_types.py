"""pybpf.kernel_types without the kernel: BTF made here by BtfBuilder, read as DSL layouts."""
import pytest

from pybpf.asm import Program
from pybpf.btf import INT_SIGNED, Btf, BtfBuilder
from pybpf.errors import AssemblerError
from pybpf.kernel_types import BtfStruct, RawTracepointArgs


@pytest.fixture(scope="module")
def btf():
    b = BtfBuilder()
    i32, u64, char = b.add_int("int", 4, encoding=INT_SIGNED), b.add_int("u64", 8), b.add_int("char", 1)
    ptask = b.add_ptr(b.add_struct("task_struct", 48, []))  # what real_parent points at
    inner = b.add_struct("", 8, [("tgid", i32, 0), ("flags", i32, 32, 3)])
    members = [("pid", i32, 0), ("", inner, 32), ("real_parent", ptask, 128), ("comm", b.add_array(char, 16), 192),
               ("start", u64, 320)]
    task2 = b.add_struct("task_struct2", 48, members)
    proto = b.add_func_proto(0, [("__data", b.add_ptr(0)), ("", b.add_ptr(task2)), ("", i32)])
    b.add_typedef("btf_trace_demo", b.add_ptr(proto))
    named = b.add_func_proto(0, [("__data", b.add_ptr(0)), ("p", b.add_ptr(task2)), ("old_pid", i32)])
    b.add_func("__bpf_trace_demo", named)
    return Btf.from_bytes(b.encode())


def test_fields_nested_anonymous_arrays_and_pointers(btf):
    task = BtfStruct.named("task_struct2", btf)
    assert task.sizeof() == 48
    pid, tgid, comm3 = task.field("pid"), task.field("tgid"), task.field("comm[3]")
    assert (pid.offset, pid.size, pid.signed, pid.scalar) == (0, 4, True, True)
    assert (tgid.offset, tgid.size) == (4, 4)  # through the anonymous struct, as in C
    assert (comm3.offset, comm3.size) == (27, 1)
    assert task.field("comm").scalar is False and task.field("comm").size == 16
    parent = task.field("real_parent")
    assert parent.scalar and parent.pointee.name == "task_struct"
    assert task.field("flags").bitfield
    with pytest.raises(Exception, match="no field 'nope'"):
        task.field("nope")


def test_raw_tracepoint_arguments_are_named_and_chain(btf):
    args = RawTracepointArgs("demo", btf)
    assert list(args.args) == ["p", "old_pid"] and args.field("old_pid").offset == 8
    assert args.field("p").pointee.name == "task_struct2"
    p = Program(cpu="v4")
    p._ctx_layout = args  # what Program(raw_tracepoint="demo") finds in the kernel's BTF
    p.r6 = p.ctx.p.start
    with pytest.raises(AssemblerError, match=r"test_kernel_types.py:\d+: .*task_struct has no field 'pid'"):
        p.r1 = p.ctx.p.real_parent.pid  # real_parent points at the other (empty) task_struct
    p.r7 = p.ctx.old_pid
    text = [line.split(": ", 1)[1] for line in str(p).splitlines()]
    assert text[0] == "(79) r6 = *(u64 *)(r1 +0)"  # the argument: a plain load from the context
    assert "(85) call bpf_probe_read_kernel#113" in text and text[-1] == "(79) r7 = *(u64 *)(r1 +8)"
    with pytest.raises(AssemblerError, match="no argument 'nope'"):
        p.r1 = p.ctx.nope
