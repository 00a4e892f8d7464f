"""Perf event array reader (BPF_MAP_TYPE_PERF_EVENT_ARRAY), for kernels without ring buffers.

One PERF_COUNT_SW_BPF_OUTPUT event per online CPU, stored in the map at its index, each with
its own mmapped ring (data_head written by the kernel, data_tail by us). Records are
PERF_RECORD_SAMPLE (raw bytes) or PERF_RECORD_LOST (a count); one that wraps the ring is
copied in two pieces.
"""
import mmap
import os
import select
import struct

from .. import syscall
from ..errors import BpfError
from .base import EventReader, ordering

PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9
DATA_HEAD, DATA_TAIL = 1024, 1032  # offsets in struct perf_event_mmap_page
_HEADER = struct.Struct("<IHH")
_U32 = struct.Struct("<I")
_LOST = struct.Struct("<QQ")


def online_cpus():
    """CPU numbers from /sys/devices/system/cpu/online ("0-3,5")."""
    with open("/sys/devices/system/cpu/online") as f:
        text = f.read().strip()
    cpus = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


class _Ring:
    __slots__ = ("cpu", "fd", "mm", "data", "size")

    def __init__(self, cpu, fd, pages):
        page = mmap.PAGESIZE
        self.cpu, self.fd, self.size = cpu, fd, pages * page
        self.mm = mmap.mmap(fd, page + self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.data = memoryview(self.mm)[page:]

    def close(self):
        self.data.release()
        self.mm.close()
        os.close(self.fd)


class PerfBuffer(EventReader):
    """Records from a perf event array map; `pages` per CPU must be a power of two."""

    def __init__(self, bpf_map, callback=None, layout=None, pages=64, lost_callback=None):
        super().__init__(callback, layout)
        if pages <= 0 or pages & (pages - 1):
            raise BpfError(f"perf buffer pages per CPU must be a power of two, not {pages}")
        self._map = bpf_map
        self.lost_callback = lost_callback
        self._order = ordering()
        self._rings = []
        try:
            for cpu in online_cpus():
                if cpu >= bpf_map.max_entries:
                    break
                self._open_ring(cpu, pages)
        except BaseException:
            self._unmap()
            raise

    def _open_ring(self, cpu, pages):
        attr = syscall.new_perf_attr()
        attr.type = syscall.PERF_TYPE_SOFTWARE
        attr.config = syscall.PERF_COUNT_SW_BPF_OUTPUT
        attr.sample_type = syscall.PERF_SAMPLE_RAW
        attr.sample_period = 1
        attr.wakeup_events = 1
        fd = syscall.perf_event_open(attr, -1, cpu)
        try:
            ring = _Ring(cpu, fd, pages)
        except BaseException:
            os.close(fd)
            raise
        self._rings.append(ring)
        self._map.update(cpu, fd)
        syscall.ioctl(fd, syscall.PERF_EVENT_IOC_ENABLE)
        self._epoll.register(fd, select.EPOLLIN)

    def _drain(self, sink):
        load, store = self._order.load_acquire, self._order.store_release
        count = 0
        for ring in self._rings:
            mm, data, size = ring.mm, ring.data, ring.size
            head = load(mm, DATA_HEAD)
            tail = _U32.unpack_from(mm, DATA_TAIL)[0] | (_U32.unpack_from(mm, DATA_TAIL + 4)[0] << 32)
            while tail < head:
                offset = tail % size
                if offset + 8 <= size:
                    kind, _, length = _HEADER.unpack_from(data, offset)
                else:
                    kind, _, length = _HEADER.unpack(self._copy(data, offset, 8))
                if offset + length <= size:
                    record = data[offset:offset + length]
                else:
                    record = memoryview(self._copy(data, offset, length))
                if kind == PERF_RECORD_SAMPLE:
                    raw_size = _U32.unpack_from(record, 8)[0]
                    sink(bytes(record[12:12 + raw_size]))
                    count += 1
                elif kind == PERF_RECORD_LOST:
                    lost = _LOST.unpack_from(record, 8)[1]
                    self.lost += lost
                    if self.lost_callback:
                        self.lost_callback(ring.cpu, lost)
                tail += length
            store(mm, DATA_TAIL, tail)
        return count

    @staticmethod
    def _copy(data, offset, length):
        """A record that wraps the end of the ring, made contiguous."""
        first = len(data) - offset
        return bytes(data[offset:]) + bytes(data[:length - first])

    def _unmap(self):
        for ring in self._rings:
            try:
                self._map.delete(ring.cpu)
            except BpfError:
                pass  # the map may already be closed
            ring.close()
        self._rings = []
