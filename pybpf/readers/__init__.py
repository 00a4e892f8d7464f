"""Readers of the records BPF programs send to user space: ring buffers and perf buffers,
one API for both (pybpf.readers.base)."""
from ..uapi import MapType
from .perfbuf import PerfBuffer
from .ringbuf import RingBuffer


def open_reader(bpf_map, callback=None, layout=None, **options):
    """A RingBuffer or PerfBuffer for `bpf_map`, chosen by its type."""
    if bpf_map.type == MapType.RINGBUF:
        return RingBuffer(bpf_map, callback=callback, layout=layout, **options)
    if bpf_map.type == MapType.PERF_EVENT_ARRAY:
        return PerfBuffer(bpf_map, callback=callback, layout=layout, **options)
    raise TypeError(f"map {bpf_map!r} is neither a ring buffer nor a perf event array")
