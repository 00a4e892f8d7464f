"""pybpf.syscall against the running kernel: layouts, errors, perf events, fds."""
import errno
import fcntl
import json
import os
import subprocess
import sys

import pytest

from pybpf import syscall as bsys
from pybpf.errors import BpfError, SyscallError
from pybpf.uapi import Cmd, MapType
from tests import oracles


@pytest.fixture(scope="module")
def vmlinux_btf():
    bpftool = oracles.require("bpftool")
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        pytest.skip("the kernel has no /sys/kernel/btf/vmlinux to read its own layouts from")
    out = subprocess.run([bpftool, "-j", "btf", "dump", "file", "/sys/kernel/btf/vmlinux"],
                         check=True, capture_output=True, timeout=60).stdout
    types = json.loads(out)["types"]
    return {t["id"]: t for t in types}, {(t["kind"], t.get("name")): t for t in types}


def _btf_size(btf, type_id):
    """Byte size of BTF type `type_id`, through typedefs, qualifiers and arrays."""
    for _ in range(64):  # bounded: qualifier chains are short
        t = btf[type_id]
        if t["kind"] == "PTR":
            return 8
        if t["kind"] == "ARRAY":
            return t["nr_elems"] * _btf_size(btf, t["type_id"])
        if "size" in t:
            return t["size"]
        type_id = t["type_id"]  # TYPEDEF, CONST, VOLATILE, RESTRICT, TYPE_TAG
    raise AssertionError(f"BTF type chain from {type_id} does not end")


def _members(btf, t, path=()):
    """(field path, byte offset, byte size, is_bitfield) of every leaf member, anonymous members flattened."""
    for m in t["members"]:
        sub = btf[m["type_id"]]
        offset = m["bits_offset"] // 8
        name_path = path if m["name"] == "(anon)" else path + (m["name"],)
        if sub["kind"] in ("STRUCT", "UNION"):
            for p, off, size, bits in _members(btf, sub, name_path):
                yield p, offset + off, size, bits
        else:
            bitfield = bool(m.get("bitfield_size")) or m["bits_offset"] % 8 != 0
            yield name_path, offset, _btf_size(btf, m["type_id"]), bitfield


def _our_field(ctype, path):
    """(offset, size) of our member at `path` in `ctype` (cffi flattens anonymous members); KeyError if absent."""
    offset, t = 0, bsys.ffi.typeof(ctype)
    for name in path:
        fields = {}
        for n, f in t.fields or ():
            fields.setdefault(n, f)
        f = fields[name]
        offset, t = offset + f.offset, f.type
    return offset, bsys.ffi.sizeof(t)


@pytest.mark.parametrize("kind,name,complete", [
    ("UNION", "bpf_attr", True),
    ("STRUCT", "bpf_map_info", True),
    ("STRUCT", "bpf_prog_info", True),
    ("STRUCT", "bpf_btf_info", True),
    ("STRUCT", "perf_event_attr", True),
    ("STRUCT", "bpf_link_info", False),   # we declare only the link kinds we use
])
def test_layouts_match_running_kernel(vmlinux_btf, kind, name, complete):
    """Every member the running kernel knows sits where it puts it, with its size. The kernel may
    know fewer (older kernels have shorter structs: we pass our size and it checks that the bytes
    past what it knows are zero), so ours is at least as large, not equal."""
    by_id, by_name = vmlinux_btf
    t = by_name[(kind, name)]
    ctype = f"{kind.lower()} {name}"
    assert bsys.ffi.sizeof(ctype) >= t["size"]
    checked = 0
    for path, offset, size, bitfield in _members(by_id, t):
        if bitfield or not path:
            continue
        try:
            ours = _our_field(ctype, path)
        except KeyError:
            if path[-1].startswith("__reserved"):
                continue  # placeholder bytes a later kernel named (6.1's __reserved_3 is aux_action)
            assert not complete, f"{name}.{'.'.join(path)} missing"
            continue
        assert ours == (offset, size), f"{name}.{'.'.join(path)}: ours (offset, size) {ours}, kernel's {(offset, size)}"
        checked += 1
    assert checked > 3


def test_new_attr_is_zeroed_and_full_size():
    attr = bsys.new_attr()
    assert bsys.ATTR_SIZE == bsys.ffi.sizeof(attr[0]) >= 120
    assert bytes(bsys.ffi.buffer(attr)) == bytes(bsys.ATTR_SIZE)


def test_failing_command_names_itself():
    attr = bsys.new_attr()
    attr.map_type = MapType.HASH      # key_size 0: invalid
    with pytest.raises(SyscallError, match=r"BPF_MAP_CREATE: Invalid argument \(EINVAL\)") as info:
        bsys.bpf(Cmd.MAP_CREATE, attr)
    assert info.value.errno == errno.EINVAL
    assert isinstance(info.value, BpfError) and isinstance(info.value, OSError)


def test_bad_fd_names_command():
    with pytest.raises(SyscallError, match="BPF_OBJ_GET_INFO_BY_FD.*EBADF"):
        bsys.obj_get_info_by_fd(10**6, "map")


def test_map_fds_are_cloexec_and_info_roundtrip():
    attr = bsys.new_attr()
    attr.map_type, attr.key_size, attr.value_size, attr.max_entries = MapType.ARRAY, 4, 8, 3
    attr.map_name = b"sys_test"
    fd = bsys.bpf(Cmd.MAP_CREATE, attr)
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        info = bsys.obj_get_info_by_fd(fd, "map")
        assert (info.type, info.key_size, info.value_size, info.max_entries) == (MapType.ARRAY, 4, 8, 3)
        assert bsys.ffi.string(info.name) == b"sys_test"
        # walk ids: ours must be reachable, and get_fd_by_id reopens the same map
        start = 0
        for _ in range(100000):
            start = bsys.get_next_id("map", start)
            if start is None or start == info.id:
                break
        assert start == info.id
        fd2 = bsys.get_fd_by_id("map", info.id)
        try:
            assert bsys.obj_get_info_by_fd(fd2, "map").id == info.id
        finally:
            os.close(fd2)
    finally:
        os.close(fd)


def test_perf_event_open_software_event():
    attr = bsys.new_perf_attr()
    attr.type = bsys.PERF_TYPE_SOFTWARE
    attr.config = bsys.PERF_COUNT_SW_CPU_CLOCK
    attr.disabled = 1
    fd = bsys.perf_event_open(attr, 0, -1)
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        bsys.ioctl(fd, bsys.PERF_EVENT_IOC_ENABLE)
        sum(range(200000))
        bsys.ioctl(fd, bsys.PERF_EVENT_IOC_DISABLE)
        count = int.from_bytes(os.read(fd, 8), "little")
        assert count > 0
    finally:
        os.close(fd)


def test_perf_event_open_error_names_event():
    attr = bsys.new_perf_attr()
    attr.type = 0xFFFF       # no such PMU
    with pytest.raises(SyscallError, match=r"perf_event_open\(type=65535"):
        bsys.perf_event_open(attr, 0, -1)


def test_ioctl_error():
    r, w = os.pipe()
    try:
        with pytest.raises(SyscallError, match="ioctl"):
            bsys.ioctl(r, bsys.PERF_EVENT_IOC_ENABLE)
    finally:
        os.close(r)
        os.close(w)


def test_import_is_light():
    code = "import sys, pybpf.syscall; assert 'pyroute2' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30,
                   cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
