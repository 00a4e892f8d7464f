#!/usr/bin/env python3
"""Event reader throughput: records a real BPF program wrote, consumed from one thread.

A sched_cls program run with BPF_PROG_TEST_RUN (repeat=N) writes N 16-byte
records; we time only the draining: raw (bytes per record) and decoded
(construct layout through pybpf.layout's fast codec). Targets: 1M raw
records/s, 300k decoded events/s. No peer tool reads our maps, so no peer
figure is printed.

Also the monitor's own step after the reader: a 136-byte EVENT decoded to the
dict every consumer (report, JSON, Prometheus) takes (bpfhook.records.decode_event),
in process: what a streaming monitor pays per event before its output.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernel"))

RECORDS = 1_000_000


def _drain_rate(make_reader, events, prog, counter):
    counter.update(0, 0)
    with make_reader(events) as reader:
        for _ in range(RECORDS // 250_000):
            prog.test_run(data_in=bytes(42), repeat=250_000)
        start = time.perf_counter()
        got = 0
        while got < RECORDS:
            batch = reader.read(0)
            if not batch:
                break
            got += len(batch)
        elapsed = time.perf_counter() - start
    assert got == RECORDS, f"expected {RECORDS} records, read {got}"
    return got / elapsed


def _decode_event_rate(count=200_000):
    from bpfhook import records

    sample = records.EVENT_CODEC.encode(dict(
        records.EVENT_CODEC.decode(bytes(records.EVENT.sizeof())), ts_ns=10**12, kind=records.EV_CLOSE, pid=1234,
        tid=1235, comm=b"curl".ljust(16, b"\0"), cgroup_id=4242, family=2, protocol=6, saddr=bytes([10, 77, 1, 2]) + bytes(12),
        daddr=bytes([10, 77, 1, 1]) + bytes(12), sport=43210, dport=80, oldstate=9, newstate=7, bytes_sent=10**6))
    start = time.perf_counter()
    for _ in range(count):
        records.decode_event(sample)
    return count / (time.perf_counter() - start)


def run():
    from pybpf.maps import Map
    from pybpf.perfbuf import PerfBuffer
    from pybpf.ringbuf import RingBuffer
    from pybpf.uapi import MapType
    from test_events import Record, producer

    figures = {"monitor EVENT decoded to dicts/s": (_decode_event_rate(), None, "ev/s", ">= 100000")}
    with Map(MapType.ARRAY, key=4, value=8, max_entries=1, name="seq") as counter, \
            Map(MapType.RINGBUF, max_entries=1 << 26, name="rb") as rb, producer(counter, rb) as prog:
        figures["ringbuf raw records/s"] = (_drain_rate(RingBuffer, rb, prog, counter), None, "rec/s", ">= 1000000")
        figures["ringbuf decoded events/s"] = (
            _drain_rate(lambda m: RingBuffer(m, layout=Record), rb, prog, counter), None, "ev/s", ">= 300000")
    global RECORDS
    saved, RECORDS = RECORDS, 250_000  # perf rings are per CPU and smaller: drain one burst that fits
    try:
        with Map(MapType.ARRAY, key=4, value=8, max_entries=1, name="seq") as counter, \
                Map(MapType.PERF_EVENT_ARRAY, name="pb") as pb, producer(counter, pb) as prog:
            figures["perfbuf raw records/s"] = (
                _drain_rate(lambda m: PerfBuffer(m, pages=2048), pb, prog, counter), None, "rec/s", None)
    finally:
        RECORDS = saved
    return figures


if __name__ == "__main__":
    for name, (ours, _, unit, target) in run().items():
        print(f"{name:28} {ours:>14,.0f} {unit:6} target {target or '-'}")
