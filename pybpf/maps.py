"""BPF maps from user space: create, read, write, walk, dump in batches, pin.

Keys and values go through pybpf.layout codecs, so a map can speak ints,
raw bytes or construct Structs:

    with Map(MapType.HASH, key=Int32ul, value=Counters, max_entries=1024, name="counts") as m:
        m[7] = dict(packets=1, bytes=60)
        for key, value in m.lookup_batch():
            ...

Per-CPU maps read and write lists with one value per possible CPU. Maps
holding fds (prog/perf/cgroup arrays, maps of maps, sockmaps) take fds, or
objects with .fd or .fileno(), as values. A Map is not thread-safe.
"""
import errno
import mmap as _mmap
import os
import re
from dataclasses import dataclass

import construct

from . import syscall
from .btf_build import load_btf, map_btf
from .errors import ENOTSUPP, BpfError, LayoutError, MapError, SyscallError, syscall_error
from .fd import FdOwner
from .layout import codec, size_of
from .uapi import Cmd, MapFlags, MapType, UpdateFlags, member

ffi = syscall.ffi

PERCPU_TYPES = frozenset({MapType.PERCPU_HASH, MapType.PERCPU_ARRAY, MapType.LRU_PERCPU_HASH,
                          MapType.PERCPU_CGROUP_STORAGE})
# Values are fds on update (the kernel turns them into ids or cookies on lookup).
FD_VALUE_TYPES = frozenset({MapType.PROG_ARRAY, MapType.PERF_EVENT_ARRAY, MapType.CGROUP_ARRAY,
                            MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS, MapType.SOCKMAP,
                            MapType.SOCKHASH, MapType.REUSEPORT_SOCKARRAY, MapType.XSKMAP,
                            MapType.DEVMAP, MapType.CPUMAP})
KEYLESS_TYPES = frozenset({MapType.QUEUE, MapType.STACK, MapType.BLOOM_FILTER, MapType.RINGBUF,
                           MapType.USER_RINGBUF})
# Keyed by an fd (socket, inode, task, cgroup); need BTF and BPF_F_NO_PREALLOC, max_entries 0.
LOCAL_STORAGE_TYPES = frozenset({MapType.SK_STORAGE, MapType.INODE_STORAGE, MapType.TASK_STORAGE,
                                 MapType.CGRP_STORAGE})
_NO_PREALLOC_TYPES = LOCAL_STORAGE_TYPES | {MapType.LPM_TRIE}
# Errors that mean "this kernel/map has no batch ops", not "your call was wrong".
_NO_BATCH = (errno.EINVAL, errno.EOPNOTSUPP, ENOTSUPP)

_BATCH_SIZE = 4096
_NOT_IDENTIFIER = re.compile(r"\W")


def possible_cpus():
    """Number of possible CPUs: the count per-CPU map values carry."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def _round8(n):
    return (n + 7) & ~7


def _fd_of(obj):
    if isinstance(obj, int):
        return obj
    if hasattr(obj, "fd"):
        return obj.fd
    if hasattr(obj, "fileno"):
        return obj.fileno()
    raise MapError(f"expected an fd or an object with .fd/.fileno(), got {type(obj).__name__}")


@dataclass(frozen=True)
class MapInfo:
    """struct bpf_map_info, as the kernel reports it."""

    type: MapType
    id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: MapFlags
    name: str
    ifindex: int
    btf_id: int
    btf_key_type_id: int
    btf_value_type_id: int
    btf_vmlinux_value_type_id: int
    map_extra: int


class Map(FdOwner):
    """A BPF map owned through its fd. Close it, or use it as a context manager."""

    def __init__(self, type, key=None, value=None, max_entries=None, flags=None, name="",
                 inner_map=None, numa_node=None, map_extra=0, ifindex=0, btf_fd=0,
                 btf_key_type_id=0, btf_value_type_id=0, btf_vmlinux_value_type_id=0, btf=True):
        """btf: when key or value is a construct Struct and no btf_fd is given, describe both
        in BTF so `bpftool map dump` shows field names (and local storage maps get the BTF
        they need). Best effort: a layout BTF cannot express, or a kernel that refuses it,
        gives the same map without BTF. btf=False never tries."""
        type = member(MapType, type, "map type")
        if not isinstance(type, MapType):
            raise MapError(f"unknown map type {type!r}")
        if key is None:
            key = 0 if type in KEYLESS_TYPES else 4
        if value is None:
            value = 0 if type == MapType.RINGBUF else 4 if type in FD_VALUE_TYPES else 8
        if max_entries is None:
            if type == MapType.PERF_EVENT_ARRAY:
                max_entries = possible_cpus()
            elif type in LOCAL_STORAGE_TYPES:
                max_entries = 0
            else:
                raise MapError(f"{type.name} map {name!r} needs max_entries")
        if flags is None:
            flags = MapFlags.NO_PREALLOC if type in _NO_PREALLOC_TYPES else 0
        encoded_name = name.encode()
        if len(encoded_name) > 15 or not all(c.isalnum() or c in "_." for c in name):
            raise MapError(f"map name {name!r}: at most 15 characters of [A-Za-z0-9_.]")

        attr = syscall.new_attr()
        attr.map_type = type
        attr.key_size = size_of(key)
        attr.value_size = size_of(value)
        attr.max_entries = max_entries
        attr.map_flags = flags
        attr.map_name = encoded_name
        attr.map_ifindex = ifindex
        attr.map_extra = map_extra
        if inner_map is not None:
            attr.inner_map_fd = _fd_of(inner_map)
        if numa_node is not None:
            attr.numa_node = numa_node
            attr.map_flags |= MapFlags.NUMA_NODE
        attr.btf_fd = btf_fd
        attr.btf_key_type_id = btf_key_type_id
        attr.btf_value_type_id = btf_value_type_id
        attr.btf_vmlinux_value_type_id = btf_vmlinux_value_type_id
        own_btf = _layout_btf(type, key, value, name) if btf and not btf_fd else None
        try:
            if own_btf is not None:
                attr.btf_fd, attr.btf_key_type_id, attr.btf_value_type_id = own_btf
                try:
                    fd = syscall.bpf(Cmd.MAP_CREATE, attr)
                except SyscallError:
                    # Without it, as asked: the kernel may refuse BTF for this map type.
                    attr.btf_fd = attr.btf_key_type_id = attr.btf_value_type_id = 0
                    fd = syscall.bpf(Cmd.MAP_CREATE, attr)
            else:
                fd = syscall.bpf(Cmd.MAP_CREATE, attr)
        except SyscallError as e:
            shape = (f"{type.name} map {name!r}: key {attr.key_size} value {attr.value_size} "
                     f"max_entries {max_entries} flags {MapFlags(attr.map_flags)!r}")
            raise syscall_error("BPF_MAP_CREATE", e.errno, _create_hint(type, e.errno, shape)) from None
        finally:
            if own_btf is not None:
                os.close(own_btf[0])  # the map holds its own reference
        self._setup(fd, type, key, value, attr.key_size, attr.value_size, max_entries,
                    MapFlags(attr.map_flags), name)

    def _setup(self, fd, type, key, value, key_size, value_size, max_entries, flags, name):
        self._own(fd)
        self.type = type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.flags = flags
        self.name = name
        self._mmap = None
        self.key_codec = codec(key) if key_size else None
        self.value_codec = codec(value) if value_size else None
        self.ncpus = possible_cpus() if type in PERCPU_TYPES else 1
        # Per-CPU values sit 8-byte aligned, one slot per possible CPU.
        self._value_stride = _round8(value_size) if type in PERCPU_TYPES else value_size
        self._value_buf_size = self._value_stride * self.ncpus

    # ---- opening existing maps ------------------------------------------------

    @classmethod
    def from_fd(cls, fd, key=None, value=None):
        """Wrap (and own) an existing map fd; key/value layouts default to ints or bytes of the map's sizes."""
        try:
            info = _map_info(fd)
        except BaseException:
            os.close(fd)
            raise
        self = cls.__new__(cls)
        key = info.key_size if key is None else key
        value = info.value_size if value is None else value
        for what, layout, want in (("key", key, info.key_size), ("value", value, info.value_size)):
            if want and size_of(layout) != want:
                os.close(fd)
                raise LayoutError(f"{what} layout is {size_of(layout)} bytes, map {info.name!r} has {want}")
        self._setup(fd, info.type, key, value, info.key_size, info.value_size, info.max_entries,
                    info.flags, info.name)
        return self

    @classmethod
    def from_id(cls, map_id, key=None, value=None):
        """Open the map with this kernel id."""
        return cls.from_fd(syscall.get_fd_by_id("map", map_id), key, value)

    @classmethod
    def open_pinned(cls, path, key=None, value=None, flags=0):
        """Open a map pinned on bpffs."""
        self = cls.from_fd(syscall.obj_get(path, flags), key, value)
        self.pinned = os.fspath(path)
        return self

    # ---- encoding ---------------------------------------------------------------

    @property
    def what(self):
        return f"map {self.name!r}"

    def _key(self, key):
        if self.key_codec is None:
            raise MapError(f"{self.type.name} map {self.name!r} has no keys: use push/pop/peek")
        if self.type in LOCAL_STORAGE_TYPES and not isinstance(key, (int, bytes, bytearray, memoryview)):
            key = _fd_of(key)
        return self._encode("key", self.key_codec, self.key_size, key)

    def _value(self, value):
        if self.type in FD_VALUE_TYPES and not isinstance(value, (bytes, bytearray, memoryview)):
            value = _fd_of(value)
        if self.type in PERCPU_TYPES:
            if not isinstance(value, (list, tuple)) or len(value) != self.ncpus:
                raise LayoutError(f"per-CPU map {self.name!r} wants a list of {self.ncpus} values "
                                  f"(one per possible CPU)")
            pad = bytes(self._value_stride - self.value_size)
            return b"".join(self._one_value(v) + pad for v in value)
        return self._one_value(value)

    def _one_value(self, value):
        return self._encode("value", self.value_codec, self.value_size, value)

    def _encode(self, what, field_codec, size, obj):
        """Bytes of a key or value: raw bytes pass as they are, anything else through the codec;
        either way exactly `size` bytes."""
        if isinstance(obj, (bytes, bytearray, memoryview)):
            raw = bytes(obj)
        else:
            try:
                raw = field_codec.encode(obj)
            except LayoutError as e:
                raise LayoutError(f"{what} for map {self.name!r}: {e}") from None
        if len(raw) != size:
            raise LayoutError(f"{what} is {len(raw)} bytes, map {self.name!r} wants {size}")
        return raw

    def _decode_value(self, buf):
        if self.type not in PERCPU_TYPES:
            return self.value_codec.decode(buf)
        stride, size, dec = self._value_stride, self.value_size, self.value_codec.decode
        return [dec(buf[i * stride:i * stride + size]) for i in range(self.ncpus)]

    # ---- single elements ----------------------------------------------------------

    def _elem(self, cmd, key, value, flags=0):
        attr = syscall.new_attr()
        attr.map_fd = self._live_fd()
        attr.key = syscall.address(key) if key is not None else 0
        attr.value = syscall.address(value) if value is not None else 0
        attr.flags = flags
        return syscall.bpf(cmd, attr)

    def lookup(self, key, flags=0):
        """The value at key, or None when absent."""
        k = ffi.from_buffer(self._key(key))
        buf = ffi.new("char[]", self._value_buf_size)
        try:
            self._elem(Cmd.MAP_LOOKUP_ELEM, k, buf, flags)
        except SyscallError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return self._decode_value(ffi.buffer(buf)[:])

    def __getitem__(self, key):
        value = self.lookup(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key):
        return self.lookup(key) is not None

    def update(self, key, value, flags=UpdateFlags.ANY):
        """Insert or replace; flags NOEXIST/EXIST/F_LOCK as in BPF_MAP_UPDATE_ELEM."""
        k = ffi.from_buffer(self._key(key))
        v = ffi.from_buffer(self._value(value))
        try:
            self._elem(Cmd.MAP_UPDATE_ELEM, k, v, flags)
        except SyscallError as e:
            raise self._update_error(e, flags) from None

    __setitem__ = update

    def _update_error(self, e, flags):
        detail = {
            errno.E2BIG: f"map {self.name!r} is full (max_entries={self.max_entries})"
                         if self.type not in (MapType.ARRAY, MapType.PERCPU_ARRAY)
                         else f"index past the end of array {self.name!r} (max_entries={self.max_entries})",
            errno.EEXIST: "key already exists (flags=NOEXIST)",
            errno.ENOENT: "no such key (flags=EXIST)",
            errno.EPERM: f"map {self.name!r} is frozen or read-only",
        }.get(e.errno)
        if e.errno == errno.EPERM:
            return SyscallError(e.command, e.errno, detail)
        return syscall_error(e.command, e.errno, detail)

    def delete(self, key):
        """Delete key; True if it was there, False if it was not."""
        k = ffi.from_buffer(self._key(key))
        try:
            self._elem(Cmd.MAP_DELETE_ELEM, k, None)
        except SyscallError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True

    def __delitem__(self, key):
        if not self.delete(key):
            raise KeyError(key)

    def lookup_and_delete(self, key):
        """Atomically read and remove key (hash maps); None when absent."""
        k = ffi.from_buffer(self._key(key))
        buf = ffi.new("char[]", self._value_buf_size)
        try:
            self._elem(Cmd.MAP_LOOKUP_AND_DELETE_ELEM, k, buf)
        except SyscallError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return self._decode_value(ffi.buffer(buf)[:])

    # ---- queue / stack ----------------------------------------------------------

    def push(self, value, flags=UpdateFlags.ANY):
        """Queue/stack/bloom filter: add value (flags=EXIST overwrites the oldest when full)."""
        v = ffi.from_buffer(self._value(value))
        try:
            self._elem(Cmd.MAP_UPDATE_ELEM, None, v, flags)
        except SyscallError as e:
            raise self._update_error(e, flags) from None

    def _take(self, cmd):
        buf = ffi.new("char[]", self._value_buf_size)
        try:
            self._elem(cmd, None, buf)
        except SyscallError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return self._decode_value(ffi.buffer(buf)[:])

    def pop(self):
        """Queue/stack: remove and return the next value, or None when empty."""
        return self._take(Cmd.MAP_LOOKUP_AND_DELETE_ELEM)

    def peek(self):
        """Queue/stack: the next value without removing it, or None when empty."""
        return self._take(Cmd.MAP_LOOKUP_ELEM)

    # ---- walking ------------------------------------------------------------------

    def _raw_keys(self):
        # A key deleted under us makes GET_NEXT_KEY restart from the first key,
        # so bound the walk: a stable map never yields more than max_entries.
        limit = max(self.max_entries, 1) * 2
        prev = None
        nxt = ffi.new("char[]", self.key_size)
        for _ in range(limit):
            attr = syscall.new_attr()
            attr.map_fd = self._live_fd()
            attr.key = syscall.address(prev) if prev is not None else 0
            attr.next_key = syscall.address(nxt)
            try:
                syscall.bpf(Cmd.MAP_GET_NEXT_KEY, attr)
            except SyscallError as e:
                if e.errno == errno.ENOENT:
                    return
                raise
            raw = ffi.buffer(nxt)[:]
            yield raw
            prev = ffi.new("char[]", raw)

    def keys(self):
        """Iterate keys with BPF_MAP_GET_NEXT_KEY (one syscall per key)."""
        dec = self.key_codec.decode
        for raw in self._raw_keys():
            yield dec(raw)

    __iter__ = keys

    def items(self):
        """Iterate (key, value) pairs, two syscalls each; keys deleted meanwhile are skipped."""
        for raw in self._raw_keys():
            value = self.lookup(raw)
            if value is not None:
                yield self.key_codec.decode(raw), value

    def values(self):
        for _, value in self.items():
            yield value

    def count(self):
        """Number of keys, by walking the whole map (there is no O(1) count in the uapi)."""
        return sum(1 for _ in self._raw_keys())

    # ---- batches ------------------------------------------------------------------

    def lookup_batch(self, batch_size=_BATCH_SIZE):
        """Every (key, value) pair, read BPF_MAP_LOOKUP_BATCH chunk by chunk;
        falls back to a key walk when the kernel or map type has no batch ops."""
        return self._dump(Cmd.MAP_LOOKUP_BATCH, batch_size)

    def lookup_and_delete_batch(self, batch_size=_BATCH_SIZE):
        """Every (key, value) pair, removing them as they are read."""
        return self._dump(Cmd.MAP_LOOKUP_AND_DELETE_BATCH, batch_size)

    def _dump(self, cmd, batch_size):
        out = []
        # The batch cursor is opaque: a bucket index for hashes, a key for arrays.
        token = max(self.key_size, 8)
        in_batch, out_batch = ffi.new("char[]", token), ffi.new("char[]", token)
        first = True
        limit = self.max_entries + 2
        for _ in range(limit):
            keys = ffi.new("char[]", self.key_size * batch_size)
            values = ffi.new("char[]", self._value_buf_size * batch_size)
            attr = syscall.new_attr()
            attr.batch.map_fd = self._live_fd()
            attr.batch.in_batch = 0 if first else syscall.address(in_batch)
            attr.batch.out_batch = syscall.address(out_batch)
            attr.batch.keys = syscall.address(keys)
            attr.batch.values = syscall.address(values)
            attr.batch.count = batch_size
            done = False
            try:
                syscall.bpf(cmd, attr)
            except SyscallError as e:
                if e.errno == errno.ENOSPC and attr.batch.count == 0:
                    batch_size *= 2          # one hash bucket holds more than batch_size keys
                    continue
                if e.errno in _NO_BATCH and first:
                    return self._dump_by_walk(cmd)
                if e.errno != errno.ENOENT:
                    raise
                done = True
            n = attr.batch.count
            out.extend(zip(self.key_codec.decode_many(ffi.buffer(keys), n),
                           self._decode_values(ffi.buffer(values), n)))
            if done:
                return out
            first = False
            in_batch, out_batch = out_batch, in_batch
        raise BpfError(f"batch dump of map {self.name!r} did not finish in {limit} rounds")

    def _decode_values(self, buf, count):
        if self.type not in PERCPU_TYPES:
            return self.value_codec.decode_many(buf, count)
        ncpus, size, stride = self.ncpus, self.value_size, self._value_stride
        if size == stride:
            flat = self.value_codec.decode_many(buf, count * ncpus)
            return [flat[i * ncpus:(i + 1) * ncpus] for i in range(count)]
        view = memoryview(buf)
        return [self._decode_value(view[i * self._value_buf_size:(i + 1) * self._value_buf_size])
                for i in range(count)]

    def _dump_by_walk(self, cmd):
        pairs = []
        for raw in list(self._raw_keys()):
            value = self.lookup_and_delete(raw) if cmd == Cmd.MAP_LOOKUP_AND_DELETE_BATCH else self.lookup(raw)
            if value is not None:
                pairs.append((self.key_codec.decode(raw), value))
        return pairs

    def update_batch(self, items, flags=UpdateFlags.ANY):
        """Write many pairs (a dict or (key, value) iterable) with BPF_MAP_UPDATE_BATCH."""
        pairs = list(items.items() if hasattr(items, "items") else items)
        if not pairs:
            return
        keys = b"".join(self._key(k) for k, _ in pairs)
        values = b"".join(self._value(v) for _, v in pairs)
        try:
            self._batch_write(Cmd.MAP_UPDATE_BATCH, keys, values, len(pairs), flags)
        except SyscallError as e:
            if e.errno not in _NO_BATCH or e.done:
                raise self._update_error(e, flags) from None
            for k, v in pairs:
                self.update(k, v, flags)

    def delete_batch(self, keys):
        """Delete many keys with BPF_MAP_DELETE_BATCH; every key must exist (KeyError otherwise)."""
        raws = [self._key(k) for k in keys]
        if not raws:
            return
        try:
            self._batch_write(Cmd.MAP_DELETE_BATCH, b"".join(raws), None, len(raws), 0)
        except SyscallError as e:
            if e.errno == errno.ENOENT:
                raise KeyError(self.key_codec.decode(raws[e.done])) from None
            if e.errno not in _NO_BATCH or e.done:
                raise
            for raw in raws:
                del self[raw]

    def _batch_write(self, cmd, keys, values, count, flags):
        k = ffi.from_buffer(keys)
        v = ffi.from_buffer(values) if values is not None else None
        attr = syscall.new_attr()
        attr.batch.map_fd = self._live_fd()
        attr.batch.keys = syscall.address(k)
        attr.batch.values = syscall.address(v) if v is not None else 0
        attr.batch.count = count
        attr.batch.elem_flags = flags
        try:
            syscall.bpf(cmd, attr)
        except SyscallError as e:
            # Elements processed before the failure; a kernel that refused the
            # command outright leaves count untouched.
            e.done = attr.batch.count if attr.batch.count < count else 0
            raise

    # ---- whole-map operations ----------------------------------------------------

    def info(self):
        """The kernel's view of this map (struct bpf_map_info)."""
        return _map_info(self._live_fd())

    @property
    def id(self):
        return self.info().id

    def freeze(self):
        """Make the map read-only for user space from now on (BPF_MAP_FREEZE)."""
        attr = syscall.new_attr()
        attr.map_fd = self._live_fd()
        syscall.bpf(Cmd.MAP_FREEZE, attr)

    def mmap(self, writable=True):
        """A memoryview over a BPF_F_MMAPABLE array's values (value_size rounded to 8 per element)."""
        if self.type != MapType.ARRAY or not self.flags & MapFlags.MMAPABLE:
            raise MapError(f"map {self.name!r} is not an ARRAY created with MapFlags.MMAPABLE")
        if self._mmap is None:
            size = _round8(self.value_size) * self.max_entries
            size = (size + _mmap.PAGESIZE - 1) // _mmap.PAGESIZE * _mmap.PAGESIZE
            prot = _mmap.PROT_READ | (_mmap.PROT_WRITE if writable else 0)
            try:
                self._mmap = _mmap.mmap(self._live_fd(), size, _mmap.MAP_SHARED, prot)
            except OSError as e:
                raise syscall_error(f"mmap of map {self.name!r}", e.errno) from None
        return memoryview(self._mmap)

    def _release(self):
        """Close the fd, and the mmap view if no one still holds it."""
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                pass   # a memoryview still uses it; it unmaps when collected
            self._mmap = None
        super()._release()

    def __repr__(self):
        state = f"fd={self.fd}" if self.fd >= 0 else "closed"
        type_name = getattr(self, "type", None)
        type_name = type_name.name.lower() if type_name is not None else "?"
        return (f"<Map {type_name} {getattr(self, 'name', '')!r} key={getattr(self, 'key_size', '?')} "
                f"value={getattr(self, 'value_size', '?')} max_entries={getattr(self, 'max_entries', '?')} {state}>")


def _layout_btf(type, key, value, name):
    """(btf_fd, key_type_id, value_type_id) describing key and value, or None when neither is a
    construct Struct (nothing worth naming), the map has no key or holds fds, or BTF fails."""
    if not any(isinstance(layout, construct.Struct) for layout in (key, value)):
        return None
    if type in KEYLESS_TYPES or type in FD_VALUE_TYPES:
        return None
    base = _NOT_IDENTIFIER.sub("_", name) or "map"
    try:
        data, key_id, value_id = map_btf(_as_layout(key), _as_layout(value), f"{base}_key", f"{base}_value")
        return load_btf(data), key_id, value_id
    except BpfError:  # a layout BTF cannot say, or a kernel without BTF: the map works without
        return None


def _as_layout(layout):
    """A construct layout for a key/value given as a size: a native int, else bytes."""
    if isinstance(layout, int):
        code = {1: "B", 2: "H", 4: "L", 8: "Q"}.get(layout)
        return construct.FormatField("=", code) if code else construct.Bytes(layout)
    return layout


def _map_info(fd):
    raw = syscall.obj_get_info_by_fd(fd, "map")
    try:
        map_type = MapType(raw.type)
    except ValueError:
        map_type = raw.type   # a type newer than this module
    return MapInfo(type=map_type, id=raw.id, key_size=raw.key_size, value_size=raw.value_size,
                   max_entries=raw.max_entries, flags=MapFlags(raw.map_flags),
                   name=ffi.string(raw.name).decode(), ifindex=raw.ifindex, btf_id=raw.btf_id,
                   btf_key_type_id=raw.btf_key_type_id, btf_value_type_id=raw.btf_value_type_id,
                   btf_vmlinux_value_type_id=raw.btf_vmlinux_value_type_id, map_extra=raw.map_extra)


def _create_hint(type, err, shape):
    if err == errno.EINVAL:
        if type in LOCAL_STORAGE_TYPES:
            return f"{shape} (local storage maps need btf_fd with an int key type and flags NO_PREALLOC)"
        if type == MapType.RINGBUF:
            return f"{shape} (ringbuf max_entries must be a power-of-2 multiple of the page size)"
        return f"{shape} (sizes, flags or max_entries invalid for this type, or type unknown to this kernel)"
    if err == errno.E2BIG:
        return f"{shape} (too large)"
    return shape
