"""What the ring buffer and perf buffer readers share: iterate records or take them by
callback, poll(timeout) on epoll, count what the kernel lost.

Memory ordering: the kernel publishes a record with a store-release and we consume with a
load-acquire, then hand space back with a store-release. On x86_64 (TSO) the plain loads and
stores of struct.unpack_from / pack_into are that already; elsewhere they go through
libatomic's __atomic_load_8 / __atomic_store_8 (cffi, no compiler).
"""
import os
import select
import struct

from ..errors import FeatureUnavailable
from ..fd import Closeable
from ..layout import codec

_U64 = struct.Struct("<Q")
_TSO = os.uname().machine in ("x86_64", "AMD64", "i686", "i386")


class _PlainOrdering:
    """x86_64: plain accesses are acquire loads and release stores."""

    @staticmethod
    def load_acquire(buf, offset):
        return _U64.unpack_from(buf, offset)[0]

    @staticmethod
    def store_release(buf, offset, value):
        _U64.pack_into(buf, offset, value)


class _LibatomicOrdering:
    """Weakly ordered CPUs: acquire/release through libatomic."""

    ACQUIRE, RELEASE = 2, 3  # __ATOMIC_ACQUIRE, __ATOMIC_RELEASE

    def __init__(self):
        import cffi  # aarch64 only, and only once a reader opens

        self.ffi = cffi.FFI()
        self.ffi.cdef("uint64_t __atomic_load_8(const volatile void *, int);"
                      "void __atomic_store_8(volatile void *, uint64_t, int);")
        try:
            self.lib = self.ffi.dlopen("libatomic.so.1")
        except OSError as err:
            raise FeatureUnavailable(f"event readers on {os.uname().machine} need libatomic.so.1 "
                                     f"for acquire/release ordering: {err}") from None

    def _ptr(self, buf, offset):
        return self.ffi.from_buffer(buf) + offset

    def load_acquire(self, buf, offset):
        return self.lib.__atomic_load_8(self._ptr(buf, offset), self.ACQUIRE)

    def store_release(self, buf, offset, value):
        self.lib.__atomic_store_8(self._ptr(buf, offset), value, self.RELEASE)


_ordering = None


def ordering():
    """The memory-ordering primitives for this CPU (created on first use)."""
    global _ordering
    if _ordering is None:
        _ordering = _PlainOrdering() if _TSO else _LibatomicOrdering()
    return _ordering


class EventReader(Closeable):
    """Base of RingBuffer and PerfBuffer.

    callback: called with each record (bytes, or the decoded value when a
              layout is given); records are also yielded by iteration
    layout:   construct layout / pybpf.layout codec to decode records with
    """

    def __init__(self, callback=None, layout=None):
        self.callback = callback
        self._decode = None
        if layout is not None:
            layout_codec = codec(layout)
            size = layout_codec.size
            # Records may carry tail padding (8-byte alignment): decode the layout's prefix.
            self._decode = lambda record, _d=layout_codec.decode, _n=size: _d(record[:_n])
        self.lost = 0  # records the kernel dropped (perf) or the program reported dropping
        self.received = 0
        self._epoll = select.epoll()
        self._closed = False

    # Subclasses implement _drain(sink) -> number of records handed to sink.
    def _drain(self, sink):
        raise NotImplementedError

    def _sink(self, out):
        decode, callback = self._decode, self.callback
        if decode is None and callback is None:
            return out.append
        if decode is None:
            return lambda record: (callback(record), out.append(record))
        if callback is None:
            return lambda record: out.append(decode(record))

        def both(record):
            value = decode(record)
            callback(value)
            out.append(value)
        return both

    def read(self, timeout=None):
        """Wait up to `timeout` seconds (None: forever, 0: don't wait) and return the records ready."""
        out = []
        self._drain(self._sink(out))
        if not out and timeout != 0:
            self._wait(timeout)
            self._drain(self._sink(out))
        self.received += len(out)
        return out

    def poll(self, timeout=None):
        """Wait for records and hand each to the callback; return how many were consumed."""
        if self.callback is None:
            raise TypeError("poll() needs a callback; iterate or call read() instead")
        return len(self.read(timeout))

    def drain(self):
        """Consume what is ready now, without waiting."""
        return self.read(0)

    def _wait(self, timeout):
        self._epoll.poll(-1 if timeout is None else timeout)

    def __iter__(self):
        while not self._closed:
            yield from self.read(None)

    def fileno(self):
        """An epoll fd that becomes readable when records arrive (for select loops)."""
        return self._epoll.fileno()

    def close(self):
        """Deliver what is already written (to the callback), then unmap and close."""
        if not self._closed and self.callback is not None:
            self.read(0)
        super().close()

    def _release(self):
        try:
            self._unmap()
        finally:
            self._epoll.close()

    def _unmap(self):
        """Subclasses: release their mappings and fds."""
