"""Ring buffer and perf buffer readers against records a real BPF program writes.

The producer is a sched_cls program run with BPF_PROG_TEST_RUN: each run
takes a sequence number from an array map with an atomic fetch-add and emits
a 16-byte record {u64 seq; u64 magic}. Every record must arrive, in order,
exactly once.
"""
import os
import struct
import threading
import time

import construct
import pytest

from pybpf import isa
from pybpf.readers import open_reader
from pybpf.insn import Insn
from pybpf.maps import Map
from pybpf.perfbuf import PerfBuffer
from pybpf.prog import load
from pybpf.ringbuf import RingBuffer
from pybpf.uapi import MapType, ProgType

MAGIC = 0x5EC0DE
Record = construct.Struct("seq" / construct.Int64ul, "magic" / construct.Int64ul)
BPF_F_CURRENT_CPU = 0xFFFFFFFF
MOV_REG = isa.lookup("mov", "reg")


def producer(counter, events, discard_every=0):
    """seq = counter[0]++ ; emit {seq, MAGIC} to `events`; optionally discard some (ringbuf reserve path)."""
    ringbuf = events.type == MapType.RINGBUF
    insns = [
        Insn(MOV_REG, dst=6, src=1),
        Insn("stw", dst=10, off=-4, imm=0),
        Insn("ld_map_fd", dst=1, ref=counter),
        Insn(MOV_REG, dst=2, src=10),
        Insn("add", dst=2, imm=-4),
        Insn("call", imm=1),  # map_lookup_elem
        Insn("jne", dst=0, imm=0, ref="found"),
        Insn("mov", dst=0, imm=0),
        Insn("exit"),
        Insn("mov", dst=1, imm=1, label="found"),
        Insn("lock_fetch_add", dst=0, src=1, off=0),  # r1 = old counter
        Insn("stxdw", dst=10, src=1, off=-24),
        Insn("lddw", dst=2, imm=MAGIC),
        Insn("stxdw", dst=10, src=2, off=-16),
    ]
    if ringbuf and discard_every:
        # Reserve, copy, then submit or discard by seq % discard_every.
        insns += [
            Insn("ld_map_fd", dst=1, ref=events),
            Insn("mov", dst=2, imm=16),
            Insn("mov", dst=3, imm=0),
            Insn("call", imm=131),  # ringbuf_reserve
            Insn("jne", dst=0, imm=0, ref="reserved"),
            Insn("mov", dst=0, imm=0),
            Insn("exit"),
            Insn("ldxdw", dst=1, src=10, off=-24, label="reserved"),
            Insn("stxdw", dst=0, src=1, off=0),
            Insn("ldxdw", dst=2, src=10, off=-16),
            Insn("stxdw", dst=0, src=2, off=8),
            Insn(MOV_REG, dst=1, src=0),
            Insn("mov", dst=2, imm=0),
            Insn("ldxdw", dst=3, src=10, off=-24),
            Insn("mod", dst=3, imm=discard_every),
            Insn("jeq", dst=3, imm=0, ref="discard"),
            Insn("call", imm=132),  # ringbuf_submit
            Insn("ja", ref="done"),
            Insn("call", imm=133, label="discard"),  # ringbuf_discard
        ]
    elif ringbuf:
        insns += [
            Insn("ld_map_fd", dst=1, ref=events),
            Insn(MOV_REG, dst=2, src=10),
            Insn("add", dst=2, imm=-24),
            Insn("mov", dst=3, imm=16),
            Insn("mov", dst=4, imm=0),
            Insn("call", imm=130),  # ringbuf_output
        ]
    else:
        insns += [
            Insn(MOV_REG, dst=1, src=6),
            Insn("ld_map_fd", dst=2, ref=events),
            Insn("lddw", dst=3, imm=BPF_F_CURRENT_CPU),
            Insn(MOV_REG, dst=4, src=10),
            Insn("add", dst=4, imm=-24),
            Insn("mov", dst=5, imm=16),
            Insn("call", imm=25),  # perf_event_output
        ]
    insns += [Insn("mov", dst=0, imm=0, label="done"), Insn("exit")]
    return load(insns, ProgType.SCHED_CLS, name="events_test")


PACKET = bytes(14 + 20 + 8)  # test_run on sched_cls needs at least an Ethernet header


@pytest.fixture
def counter():
    with Map(MapType.ARRAY, key=4, value=8, max_entries=1, name="seq") as m:
        yield m


def run(prog, times):
    # repeat runs the program `times` times in one syscall
    result = prog.test_run(data_in=PACKET, repeat=times)
    assert result.retval == 0


def assert_sequence(records, first, count):
    assert [r.seq for r in records] == list(range(first, first + count))
    assert all(r.magic == MAGIC for r in records)


def test_ringbuf_delivers_every_record_in_order(counter):
    with Map(MapType.RINGBUF, max_entries=1 << 16, name="rb") as rb, producer(counter, rb) as prog, \
            RingBuffer(rb, layout=Record) as reader:
        run(prog, 1000)
        records = reader.read(0)
        assert_sequence(records, 0, 1000)
        assert reader.read(0) == []  # consumed records are not seen twice
        run(prog, 5)
        assert_sequence(reader.read(1.0), 1000, 5)


def test_ringbuf_wraps_around_many_times(counter):
    # 4 KiB ring, 24 bytes a record: 170 fit; 20 rounds of 150 wrap the ring 17 times.
    with Map(MapType.RINGBUF, max_entries=4096, name="rb") as rb, producer(counter, rb) as prog, \
            RingBuffer(rb, layout=Record) as reader:
        seen = []
        for _ in range(20):
            run(prog, 150)
            seen += reader.read(0)
        assert_sequence(seen, 0, 3000)


def test_ringbuf_skips_discarded_records(counter):
    with Map(MapType.RINGBUF, max_entries=1 << 14, name="rb") as rb, \
            producer(counter, rb, discard_every=3) as prog, RingBuffer(rb, layout=Record) as reader:
        run(prog, 90)
        seqs = [r.seq for r in reader.read(0)]
        assert seqs == [s for s in range(90) if s % 3]


def test_ringbuf_full_drops_in_kernel_not_in_reader(counter):
    # Without a reader draining, a 4 KiB ring holds 170 records; the rest fail in the kernel
    # (bpf_ringbuf_output returns -EAGAIN), and what did fit arrives intact.
    with Map(MapType.RINGBUF, max_entries=4096, name="rb") as rb, producer(counter, rb) as prog, \
            RingBuffer(rb, layout=Record) as reader:
        run(prog, 500)
        records = reader.read(0)
        assert_sequence(records, 0, 4096 // 24)


def test_ringbuf_wakes_a_waiting_reader(counter):
    with Map(MapType.RINGBUF, max_entries=1 << 16, name="rb") as rb, producer(counter, rb) as prog, \
            RingBuffer(rb, layout=Record) as reader:
        timer = threading.Timer(0.2, run, (prog, 3))
        timer.start()
        records = []
        deadline = time.monotonic() + 5
        try:
            while len(records) < 3 and time.monotonic() < deadline:
                records += reader.read(1.0)  # blocks in epoll until the program writes
        finally:
            timer.join()
        assert_sequence(records, 0, 3)


def test_callback_and_drain_on_close(counter):
    got = []
    with Map(MapType.RINGBUF, max_entries=1 << 16, name="rb") as rb, producer(counter, rb) as prog:
        reader = RingBuffer(rb, callback=got.append, layout=Record)
        run(prog, 7)
        reader.close()  # records already written reach the callback
    assert_sequence(got, 0, 7)


def test_raw_records_are_bytes(counter):
    with Map(MapType.RINGBUF, max_entries=1 << 16, name="rb") as rb, producer(counter, rb) as prog, \
            open_reader(rb) as reader:
        run(prog, 2)
        assert reader.read(0) == [struct.pack("<QQ", i, MAGIC) for i in range(2)]


def test_perfbuf_delivers_every_record_in_order(counter):
    with Map(MapType.PERF_EVENT_ARRAY, name="pb") as pb, producer(counter, pb) as prog, \
            PerfBuffer(pb, layout=Record, pages=16) as reader:
        run(prog, 1000)  # 1000 records of 32 bytes fill half of a 64 KiB ring
        assert_sequence(reader.read(1.0), 0, 1000)
        assert reader.lost == 0


def test_perfbuf_wraps_and_counts_lost_records(counter):
    lost = []
    with Map(MapType.PERF_EVENT_ARRAY, name="pb") as pb, producer(counter, pb) as prog, \
            PerfBuffer(pb, layout=Record, pages=1, lost_callback=lambda cpu, n: lost.append(n)) as reader:
        seen = []
        for _ in range(10):  # wrap-around: 4 KiB ring, 100 records of 32 bytes per round
            run(prog, 100)
            seen += reader.read(0)
        assert_sequence(seen, 0, 1000)
        run(prog, 1000)  # overflow: the kernel drops and then reports how many
        overflow = reader.read(0)
        run(prog, 1)  # the LOST record is written when space frees up
        overflow += reader.read(0)
        assert reader.lost > 0 and sum(lost) == reader.lost
        assert len(overflow) + reader.lost == 1001
        assert [r.seq for r in overflow] == sorted(r.seq for r in overflow)


def test_perfbuf_close_leaves_no_fds(counter):
    before = len(os.listdir("/proc/self/fd"))
    with Map(MapType.PERF_EVENT_ARRAY, name="pb") as pb:
        PerfBuffer(pb, pages=2).close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_open_reader_rejects_other_maps(counter):
    with pytest.raises(TypeError, match="neither a ring buffer"):
        open_reader(counter)
