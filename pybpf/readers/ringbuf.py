"""BPF ring buffer reader (BPF_MAP_TYPE_RINGBUF).

The map is mmapped as the kernel lays it out: a writable consumer_pos page, then producer_pos
and the data area, mapped twice back to back so a record that wraps stays contiguous. A
drain consumes every complete record (8-byte header: length with busy and discard bits) and
publishes consumer_pos once, not per record.
"""
import mmap
import select

from ..errors import BpfError
from .base import EventReader, ordering

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER_SIZE = 8


class RingBuffer(EventReader):
    """Records from a ring buffer map, as bytes or decoded by `layout`."""

    def __init__(self, bpf_map, callback=None, layout=None):
        super().__init__(callback, layout)
        size = bpf_map.max_entries
        if size <= 0 or size & (size - 1):
            raise BpfError(f"ring buffer size {size} is not a power of two")
        page = mmap.PAGESIZE
        self._map = bpf_map  # keep the map (and so its fd) alive while mapped
        self._mask = size - 1
        self._consumer = mmap.mmap(bpf_map.fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._producer = mmap.mmap(bpf_map.fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._data = memoryview(self._producer)[page:]
        self._order = ordering()
        self._epoll.register(bpf_map.fd, select.EPOLLIN)

    def _drain(self, sink):
        load, store = self._order.load_acquire, self._order.store_release
        consumer, producer, data, mask = self._consumer, self._producer, self._data, self._mask
        cons = load(consumer, 0)
        count = 0
        progressed = True
        while progressed:  # records may land while we drain: look again until a pass finds none
            progressed = False
            prod = load(producer, 0)
            while cons < prod:
                offset = cons & mask
                length = load(data, offset) & 0xFFFFFFFF
                if length & BUSY_BIT:
                    break  # still being written; the next wakeup brings it
                size = length & ~DISCARD_BIT
                cons += (size + HEADER_SIZE + 7) & ~7
                if not length & DISCARD_BIT:
                    start = offset + HEADER_SIZE
                    sink(bytes(data[start:start + size]))
                    count += 1
                progressed = True
            if progressed:
                store(consumer, 0, cons)
        return count

    def views(self, max_bytes=None):
        """The records ready now as memoryviews into the ring, no copy, and the position after
        them: hand it to release() once they are used (the kernel may then write over them).
        Stops at a record still being written, and after max_bytes of records."""
        consumer, data, mask = self._consumer, self._data, self._mask
        load = self._order.load_acquire
        start = cons = load(consumer, 0)
        prod = load(self._producer, 0)
        if max_bytes is not None:
            prod = min(prod, cons + max_bytes)
        out = []
        while cons < prod:
            offset = cons & mask
            length = load(data, offset) & 0xFFFFFFFF
            if length & BUSY_BIT:
                break
            size = length & ~DISCARD_BIT
            cons += (size + HEADER_SIZE + 7) & ~7
            if not length & DISCARD_BIT:
                out.append(data[offset + HEADER_SIZE:offset + HEADER_SIZE + size])
        self.received += len(out)
        return out, (cons if cons != start else None)

    def release(self, position):
        """Give the space of records up to `position` (from views()) back to the kernel."""
        if position is not None:
            self._order.store_release(self._consumer, 0, position)

    def pending(self):
        """Bytes the kernel has written that are not given back yet (headers included)."""
        return self._order.load_acquire(self._producer, 0) - self._order.load_acquire(self._consumer, 0)

    def _unmap(self):
        self._data.release()
        self._producer.close()
        self._consumer.close()
