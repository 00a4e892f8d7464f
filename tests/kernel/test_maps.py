"""pybpf.maps against real kernel maps: every type, batches, per-CPU, pins, errors, fds."""
import errno
import gc
import os
import socket
import struct

import construct as c
import pytest

from pybpf.errors import InvalidArgument

from pybpf import mounts, sys as bsys
from pybpf.errors import BpfError, SyscallError
from pybpf.layout import LayoutError
from pybpf.maps import Map, MapError, possible_cpus
from pybpf.uapi import Cmd, MapFlags, MapType, ProgType, UpdateFlags
from tests import oracles

NCPUS = possible_cpus()
Pair = c.Struct("a" / c.Int64ul, "b" / c.Int32ul, c.Padding(4))


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def _load_return0():
    """A 2-instruction socket filter (r0 = 0; exit) for prog arrays."""
    insns = bsys.ffi.from_buffer(bytes.fromhex("b700000000000000" "9500000000000000"))
    license = bsys.ffi.new("char[]", b"GPL")
    attr = bsys.new_attr()
    attr.prog_type = ProgType.SOCKET_FILTER
    attr.insn_cnt = 2
    attr.insns = bsys.address(insns)
    attr.license = bsys.address(license)
    return bsys.bpf(Cmd.PROG_LOAD, attr)


def _tiny_btf():
    """BTF with [1] int (4 bytes) and [2] long (8 bytes), for local-storage maps."""
    def int_type(name_off, size):
        return struct.pack("<IIII", name_off, 1 << 24, size, (1 << 24) | size * 8)  # KIND_INT, signed
    types = int_type(1, 4) + int_type(5, 8)
    strings = b"\0int\0long\0"
    blob = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings)) + types + strings
    buf = bsys.ffi.from_buffer(blob)
    attr = bsys.new_attr()
    attr.btf = bsys.address(buf)
    attr.btf_size = len(blob)
    return bsys.bpf(Cmd.BTF_LOAD, attr)


def _cgroup2_root():
    point = mounts.find("cgroup2")
    if point is None:
        pytest.skip("no cgroup2 mount")
    return point


@pytest.fixture
def no_fd_leak():
    gc.collect()
    before = _open_fds()
    yield
    gc.collect()
    assert _open_fds() == before, "fds leaked"


# ---- plain key/value maps ---------------------------------------------------------------

@pytest.mark.parametrize("map_type", [MapType.HASH, MapType.LRU_HASH])
def test_hash_like_ops(map_type, no_fd_leak):
    with Map(map_type, key=c.Int32ul, value=Pair, max_entries=16, name="hash_ops") as m:
        assert m.lookup(1) is None
        m[1] = dict(a=10, b=20)
        m.update(2, dict(a=11, b=21), UpdateFlags.NOEXIST)
        assert m[1] == dict(a=10, b=20) and m[1].a == 10
        assert 2 in m and 3 not in m
        assert sorted(m.keys()) == [1, 2]
        assert sorted((k, v.b) for k, v in m.items()) == [(1, 20), (2, 21)]
        assert m.count() == 2
        with pytest.raises(SyscallError, match="already exists") as e:
            m.update(1, dict(a=0, b=0), UpdateFlags.NOEXIST)
        assert e.value.errno == errno.EEXIST
        with pytest.raises(SyscallError, match="no such key") as e:
            m.update(9, dict(a=0, b=0), UpdateFlags.EXIST)
        assert e.value.errno == errno.ENOENT
        assert m.lookup_and_delete(1) == dict(a=10, b=20)
        assert m.delete(2) is True and m.delete(2) is False
        with pytest.raises(KeyError):
            del m[2]
        with pytest.raises(KeyError):
            m[2]
        assert m.count() == 0
        assert m.info().type == map_type and m.info().name == "hash_ops"


def test_lru_evicts_instead_of_failing(no_fd_leak):
    with Map(MapType.LRU_HASH, key=4, value=4, max_entries=64) as m:
        for i in range(1000):
            m[i] = i
        assert 0 < m.count() <= 64
        assert m[999] == 999


def test_array_ops(no_fd_leak):
    with Map(MapType.ARRAY, key=4, value=8, max_entries=4, name="arr") as m:
        assert [m[i] for i in range(4)] == [0, 0, 0, 0]
        m[3] = 2**64 - 1
        assert m[3] == 2**64 - 1
        assert list(m.keys()) == [0, 1, 2, 3]
        with pytest.raises(SyscallError, match="past the end") as e:
            m[4] = 1
        assert e.value.errno == errno.E2BIG
        assert m.lookup(4) is None


@pytest.mark.parametrize("map_type", [MapType.PERCPU_HASH, MapType.PERCPU_ARRAY, MapType.LRU_PERCPU_HASH])
def test_percpu_values_are_lists(map_type, no_fd_leak):
    # value 12 bytes -> 16-byte stride per CPU in the kernel's buffer
    value = c.Struct("x" / c.Int32ul, "y" / c.Int64ul)
    with Map(map_type, key=4, value=value, max_entries=8) as m:
        per_cpu = [dict(x=i, y=i * 1000) for i in range(NCPUS)]
        m[1] = per_cpu
        assert m.ncpus == NCPUS
        assert m[1] == per_cpu
        assert dict(m.lookup_batch())[1] == per_cpu
        with pytest.raises(LayoutError, match=f"list of {NCPUS} values"):
            m[1] = dict(x=1, y=2)


def test_lpm_trie_longest_prefix(no_fd_leak):
    key = c.Struct("prefixlen" / c.Int32ul, "addr" / c.Bytes(4))
    with Map(MapType.LPM_TRIE, key=key, value=4, max_entries=16) as m:
        assert m.flags & MapFlags.NO_PREALLOC
        m[dict(prefixlen=8, addr=bytes([10, 0, 0, 0]))] = 1
        m[dict(prefixlen=16, addr=bytes([10, 1, 0, 0]))] = 2
        assert m[dict(prefixlen=32, addr=bytes([10, 1, 2, 3]))] == 2
        assert m[dict(prefixlen=32, addr=bytes([10, 2, 0, 0]))] == 1
        assert m.lookup(dict(prefixlen=32, addr=bytes([11, 0, 0, 0]))) is None
        assert sorted(m.lookup_batch(), key=lambda kv: kv[0].prefixlen) == sorted(
            m.items(), key=lambda kv: kv[0].prefixlen)


@pytest.mark.parametrize("map_type,order", [(MapType.QUEUE, [1, 2, 3]), (MapType.STACK, [3, 2, 1])])
def test_queue_and_stack(map_type, order, no_fd_leak):
    with Map(map_type, value=4, max_entries=3) as m:
        assert m.key_size == 0
        assert m.pop() is None and m.peek() is None
        for v in (1, 2, 3):
            m.push(v)
        with pytest.raises(SyscallError) as e:
            m.push(4)
        assert e.value.errno == errno.E2BIG
        assert m.peek() == order[0]
        assert [m.pop() for _ in range(4)] == order + [None]
        with pytest.raises(MapError, match="has no keys"):
            m.lookup(0)


def test_ringbuf(no_fd_leak):
    with Map(MapType.RINGBUF, max_entries=4096 * 4, name="events") as m:
        info = m.info()
        assert (info.type, info.key_size, info.value_size, info.max_entries) == (MapType.RINGBUF, 0, 0, 16384)
    with pytest.raises(SyscallError, match="power-of-2") as e:
        Map(MapType.RINGBUF, max_entries=4096 * 3)
    assert e.value.errno == errno.EINVAL


# ---- maps of fds --------------------------------------------------------------------------

def test_prog_array(no_fd_leak):
    prog = _load_return0()
    try:
        with Map(MapType.PROG_ARRAY, max_entries=4) as m:
            m[0] = prog
            prog_id = bsys.obj_get_info_by_fd(prog, "prog").id
            assert m[0] == prog_id
            assert m.lookup(1) is None
            # prog arrays have no batch ops (ENOTSUPP): both fall back to one element at a time
            m.update_batch({2: prog})
            assert m.lookup_batch() == [(0, prog_id), (2, prog_id)]
            assert m.delete(0) and m.lookup(0) is None
    finally:
        os.close(prog)


def test_perf_event_array(no_fd_leak):
    attr = bsys.new_perf_attr()
    attr.type = bsys.PERF_TYPE_SOFTWARE
    attr.config = bsys.PERF_COUNT_SW_BPF_OUTPUT
    attr.sample_type = bsys.PERF_SAMPLE_RAW
    event = bsys.perf_event_open(attr, -1, 0)
    try:
        with Map(MapType.PERF_EVENT_ARRAY) as m:
            assert m.max_entries == NCPUS
            m[0] = event
            assert m.delete(0) is True
    finally:
        os.close(event)


def test_cgroup_array(no_fd_leak):
    cg = os.open(_cgroup2_root(), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with Map(MapType.CGROUP_ARRAY, max_entries=2) as m:
            m[0] = cg
            assert m.delete(0) is True
            with pytest.raises(SyscallError) as e:
                m[1] = 0     # stdin is not a cgroup
            assert e.value.errno == errno.EBADF
    finally:
        os.close(cg)


@pytest.mark.parametrize("outer_type", [MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS])
def test_maps_of_maps(outer_type, no_fd_leak):
    with Map(MapType.ARRAY, key=4, value=8, max_entries=2, name="inner") as inner, \
            Map(outer_type, max_entries=2, inner_map=inner) as outer:
        outer[1] = inner
        assert outer[1] == inner.id


@pytest.mark.parametrize("map_type", [MapType.SOCKMAP, MapType.SOCKHASH])
def test_sockmap_and_sockhash(map_type, no_fd_leak):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, \
            Map(map_type, key=4, value=8, max_entries=4) as m:
        s.bind(("127.0.0.1", 0))
        m[0] = s
        cookie = int.from_bytes(s.getsockopt(socket.SOL_SOCKET, 57, 8), "little")   # SO_COOKIE
        assert m[0] == cookie
        assert m.delete(0)


def test_sk_storage_with_btf(no_fd_leak):
    btf = _tiny_btf()
    try:
        with socket.socket() as s, \
                Map(MapType.SK_STORAGE, key=4, value=8, btf_fd=btf, btf_key_type_id=1,
                    btf_value_type_id=2, name="sk_store") as m:
            assert m.max_entries == 0 and m.flags & MapFlags.NO_PREALLOC
            assert m.lookup(s) is None
            m[s] = 42
            assert m[s.fileno()] == 42
            assert m.info().btf_value_type_id == 2
        with pytest.raises(SyscallError, match="need btf_fd"):
            Map(MapType.SK_STORAGE, key=4, value=8)
    finally:
        os.close(btf)


# ---- BTF made from the layouts -------------------------------------------------------------

Conn = c.Struct("pid" / c.Int32ul, "comm" / c.Bytes(4), "dport" / c.Int16ul, c.Padding(2))
Stats = c.Struct("packets" / c.Int64ul, "last" / c.Struct("state" / c.Int8ul, c.Padding(3), "seq" / c.Int32ul))


def _bpftool_dump(m):
    import json
    import subprocess

    out = subprocess.run([oracles.require("bpftool"), "-j", "map", "dump", "id", str(m.id)], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return [entry["formatted"] for entry in json.loads(out)]


def test_struct_layouts_get_btf_so_bpftool_names_fields(no_fd_leak):
    with Map(MapType.HASH, key=Conn, value=Stats, max_entries=4, name="conn.stats") as m:
        m[dict(pid=7, comm=b"curl", dport=443)] = dict(packets=3, last=dict(state=1, seq=9))
        info = m.info()
        assert info.btf_id and info.btf_key_type_id and info.btf_value_type_id
        assert _bpftool_dump(m) == [{"key": {"pid": 7, "comm": [99, 117, 114, 108], "dport": 443},
                                     "value": {"packets": 3, "last": {"state": 1, "seq": 9}}}]
    with Map(MapType.ARRAY, key=4, value=Stats, max_entries=2, name="by_index") as m:  # an int key
        m[1] = dict(packets=5, last=dict(state=2, seq=3))
        assert _bpftool_dump(m)[1] == {"key": 1, "value": {"packets": 5, "last": {"state": 2, "seq": 3}}}


def test_btf_false_and_plain_sizes_make_no_btf(no_fd_leak):
    with Map(MapType.HASH, key=Conn, value=Stats, max_entries=4, btf=False) as m:
        assert m.info().btf_id == 0
    with Map(MapType.HASH, key=4, value=8, max_entries=4) as m:
        assert m.info().btf_id == 0


def test_layouts_btf_cannot_describe_still_make_the_map(no_fd_leak):
    flags = c.Struct("mode" / c.Int32ul, "bits" / c.BitStruct("a" / c.Flag, c.Padding(7)), c.Padding(3))
    with Map(MapType.HASH, key=4, value=flags, max_entries=4) as m:
        m[1] = dict(mode=2, bits=dict(a=True))
        assert m[1].bits.a and m.info().btf_id == 0


def test_kernel_refusing_btf_for_a_type_still_makes_the_map(no_fd_leak):
    # Stack trace maps take no BTF (map_check_no_btf): the create is retried without it.
    frames = c.Struct("ips" / c.Array(4, c.Int64ul))
    with Map(MapType.STACK_TRACE, key=4, value=frames, max_entries=4) as m:
        assert m.info().btf_id == 0 and m.value_size == 32
    with Map(MapType.QUEUE, value=Stats, max_entries=2) as m:  # keyless: not even tried
        m.push(dict(packets=1, last=dict(state=0, seq=0)))
        assert m.pop().packets == 1 and m.info().btf_id == 0


def test_sk_storage_needs_no_hand_made_btf_for_a_struct_value(no_fd_leak):
    with socket.socket() as s, Map(MapType.SK_STORAGE, key=4, value=Stats, name="sk_stats") as m:
        m[s] = dict(packets=4, last=dict(state=1, seq=2))
        assert m[s].packets == 4 and m.info().btf_value_type_id


# ---- batches ----------------------------------------------------------------------------

@pytest.mark.parametrize("map_type", [MapType.HASH, MapType.ARRAY, MapType.PERCPU_HASH])
def test_batch_equals_iteration(map_type, no_fd_leak):
    percpu = map_type == MapType.PERCPU_HASH
    with Map(map_type, key=4, value=Pair, max_entries=1000) as m:
        data = {i: dict(a=i * 3, b=i & 0xFF) for i in range(1000)}
        m.update_batch({k: [v] * NCPUS if percpu else v for k, v in data.items()})
        by_walk = sorted(m.items(), key=lambda kv: kv[0])
        by_batch = sorted(m.lookup_batch(batch_size=64), key=lambda kv: kv[0])
        assert len(by_batch) == 1000
        assert by_batch == by_walk
        assert dict(by_batch)[7] == ([data[7]] * NCPUS if percpu else data[7])
        if map_type != MapType.ARRAY:
            m.delete_batch(range(500))
            assert m.count() == 500
            with pytest.raises(KeyError):
                m.delete_batch([1])
            drained = m.lookup_and_delete_batch(batch_size=7)
            assert sorted(k for k, _ in drained) == list(range(500, 1000))
            assert m.count() == 0


# ---- pins, ids, freeze, mmap ----------------------------------------------------------------

def test_pin_open_unpin(no_fd_leak):
    path = f"/sys/fs/bpf/pybpf_test_{os.getpid()}"
    with Map(MapType.HASH, key=4, value=4, max_entries=4, name="pinned") as m:
        m.pin(path)
        try:
            assert os.path.exists(path)
            with Map.open_pinned(path) as again:
                assert again.id == m.id and again.name == "pinned"
                again[5] = 6
            assert m[5] == 6
            with pytest.raises(LayoutError, match="key layout is 8 bytes"):
                Map.open_pinned(path, key=8)
        finally:
            m.unpin()
        assert not os.path.exists(path)
    with pytest.raises(SyscallError, match="BPF_OBJ_GET /sys/fs/bpf/pybpf_test") as e:
        Map.open_pinned(path)
    assert e.value.errno == errno.ENOENT


def test_from_id(no_fd_leak):
    with Map(MapType.ARRAY, key=4, value=4, max_entries=2) as m:
        m[1] = 77
        with Map.from_id(m.id, value=c.Int32ul) as again:
            assert again[1] == 77 and again.type == MapType.ARRAY


def test_freeze_blocks_user_writes(no_fd_leak):
    with Map(MapType.ARRAY, key=4, value=4, max_entries=2) as m:
        m[0] = 1
        m.freeze()
        with pytest.raises(SyscallError, match="frozen") as e:
            m[0] = 2
        assert e.value.errno == errno.EPERM
        assert m[0] == 1


def test_mmap_array_shares_memory_with_lookup(no_fd_leak):
    with Map(MapType.ARRAY, key=4, value=8, max_entries=4, flags=MapFlags.MMAPABLE) as m:
        view = m.mmap()
        view[8:16] = struct.pack("<Q", 42)
        assert m[1] == 42
        m[2] = 7
        assert struct.unpack_from("<Q", view, 16)[0] == 7
        view.release()
    with Map(MapType.ARRAY, key=4, value=8, max_entries=4) as m, pytest.raises(MapError, match="MMAPABLE"):
        m.mmap()


# ---- errors and hygiene ------------------------------------------------------------------

def test_errors_are_clear(no_fd_leak):
    with Map(MapType.HASH, key=4, value=4, max_entries=2, name="x") as m:
        with pytest.raises(LayoutError, match="key is 3 bytes, map 'x' wants 4"):
            m.lookup(b"abc")
        with pytest.raises(LayoutError, match="value is 2 bytes, map 'x' wants 4"):
            m[1] = b"ab"
        with pytest.raises(LayoutError, match="key for map 'x'"):
            m[-1] = 1
        m[1], m[2] = 1, 2
        with pytest.raises(SyscallError, match=r"E2BIG.*map 'x' is full \(max_entries=2\)") as e:
            m[3] = 3
        assert e.value.errno == errno.E2BIG
    with pytest.raises(MapError, match="unknown map type 999"):
        Map(999, max_entries=1)
    with pytest.raises(InvalidArgument, match="unknown map type 'hashh'; known: hash, array"):
        Map("hashh", max_entries=1)
    with pytest.raises(SyscallError, match="BPF_MAP_CREATE.*EINVAL.*HASH map 'bad': key 0"):
        Map(MapType.HASH, key=0, value=4, max_entries=1, name="bad")
    with pytest.raises(MapError, match="needs max_entries"):
        Map(MapType.HASH)
    with pytest.raises(MapError, match="map name"):
        Map(MapType.HASH, max_entries=1, name="no spaces allowed")
    assert issubclass(MapError, BpfError) and issubclass(LayoutError, ValueError)


def test_close_is_idempotent_and_blocks_use(no_fd_leak):
    m = Map(MapType.HASH, key=4, value=4, max_entries=2, name="closing")
    assert "fd=" in repr(m) and "hash 'closing'" in repr(m)
    m.close()
    m.close()
    assert "closed" in repr(m)
    with pytest.raises(BpfError, match="closed"):
        m.lookup(1)


def test_dropped_maps_release_fds(no_fd_leak):
    for _ in range(50):
        m = Map(MapType.HASH, key=4, value=4, max_entries=2)
        m[1] = 1
        del m


@pytest.mark.parametrize("name", ["hash", "HASH", "BPF_MAP_TYPE_HASH", "map_type_hash"])
def test_map_types_by_name(name):
    with Map(name, key=4, value=4, max_entries=1) as m:
        assert m.type == MapType.HASH
