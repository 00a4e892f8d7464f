"""What this kernel can do, found by trying (like `bpftool feature probe`): a tiny program,
map or harmless syscall per answer, never the kernel version. Answers are cached; has() runs
only the probes it needs.

    features.has("map_type.ringbuf")     features.probe("fentry")     features.names()

Names: prog_type.<type> map_type.<type> attach_type.<type> helper.<prog_type>.<helper>
link.{tcx,netkit,cgroup,xdp,netns,perf_event,sockmap,uprobe_multi} isa.v1..v4 bounded_loops
atomics btf btf_vmlinux ringbuf bpf_loop kprobe_pmu uprobe_pmu fentry fexit lsm tp_btf
raw_tracepoint perf_event_tracepoint tracefs debugfs cgroup2.
`available` is True, False, or None when a probe cannot decide (its detail says why).
"""
import errno as _errno
import os
import socket
from dataclasses import dataclass

from . import mounts, pmu, syscall, tracefs
from .asm import helpers
from .asm.insn import Insn, encode
from .asm.isa import lookup
from .btf import Btf
from .errors import BpfError, FeatureUnavailable, SyscallError, verifier_tail
from .prog import _bpf_prog_load
from .uapi import AttachType, Cmd, MapFlags, MapType, ProgFlags, ProgType

# -- results -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Feature:
    name: str
    available: object  # True, False, or None (undecided: detail says why)
    detail: str = ""

    def __bool__(self):
        return self.available is True


_cache = {}


def _errname(err):
    return _errno.errorcode.get(err, str(err))


# -- tiny programs -----------------------------------------------------------------------------------

def _asm(*rows):
    return encode([Insn(*row) if isinstance(row, tuple) else Insn(row) for row in rows])


def _returning(value):
    return _asm(("mov", 0, 0, 0, value), "exit")


RETURN_0 = _returning(0)
RETURN_MINUS_1 = _returning(-1)
# A tracepoint's BTF typedef is btf_trace_<name>: what a tp_btf program's attach_btf_id names
TP_BTF_PREFIX = "btf_trace_"

# How to load a minimal program of each type: (expected_attach_type, prog_flags).
_LOAD_AS = {
    ProgType.CGROUP_SOCK: (AttachType.CGROUP_INET_SOCK_CREATE, 0),
    ProgType.CGROUP_SOCK_ADDR: (AttachType.CGROUP_INET4_CONNECT, 0),
    ProgType.CGROUP_SOCKOPT: (AttachType.CGROUP_GETSOCKOPT, 0),
    ProgType.CGROUP_SKB: (AttachType.CGROUP_INET_INGRESS, 0),
    ProgType.SK_LOOKUP: (AttachType.SK_LOOKUP, 0),
    ProgType.SK_SKB: (AttachType.SK_SKB_VERDICT, 0),
    ProgType.SK_MSG: (AttachType.SK_MSG_VERDICT, 0),
    ProgType.NETFILTER: (AttachType.NETFILTER, 0),
    ProgType.SYSCALL: (None, ProgFlags.SLEEPABLE),
}
# Return values outside 0 that a type's verifier range check insists on (cgroup_sockopt: 1 = allow).
_RETURN = {ProgType.CGROUP_SOCKOPT: 1}
# Types that need a BTF target to load: probed by name below, or not at all.
_BTF_TARGET = {
    ProgType.TRACING: "fentry",
    ProgType.LSM: "lsm",
    ProgType.EXT: None,
    ProgType.STRUCT_OPS: None,
}


def _load_raw(ptype, code=RETURN_0, expected_attach_type=None, prog_flags=0, attach_btf_id=0, log=False):
    """(fd or None, errno, log). No exceptions: probes classify errnos."""
    code_buf = syscall.ffi.from_buffer(code)
    lic = syscall.ffi.new("char[]", b"GPL")
    attr = syscall.new_attr()
    attr.prog_type = int(ptype)
    attr.insn_cnt = len(code) // 8
    attr.insns = syscall.address(code_buf)
    attr.license = syscall.address(lic)
    attr.prog_flags = int(prog_flags)
    attr.attach_btf_id = attach_btf_id
    if expected_attach_type is not None:
        attr.expected_attach_type = int(expected_attach_type)
    return _bpf_prog_load(attr, 1 if log else 0)


def _load_minimal(ptype, code=None):
    """Load the minimal program of ptype: (fd or None, errno, log)."""
    expected, flags = _LOAD_AS.get(ptype, (None, 0))
    return _load_raw(ptype, code or _returning(_RETURN.get(ptype, 0)), expected, flags, log=True)


def _close(fd):
    if fd is not None and fd >= 0:
        os.close(fd)


def _describe_load(fd, err, log):
    if fd is not None:
        _close(fd)
        return True, "loads"
    reason = "".join(verifier_tail(log, 1))
    return False, f"{_errname(err)}" + (f": {reason}" if reason else "")


# -- program types -------------------------------------------------------------------------------------

def _probe_prog_type(ptype):
    if ptype in _BTF_TARGET:
        alias = _BTF_TARGET[ptype]
        if alias is None:
            return None, "not probed: loading needs a BTF-described target (program or struct_ops type)"
        result = probe(alias)
        return result.available, f"as {alias}: {result.detail}"
    return _describe_load(*_load_minimal(ptype))


# -- helpers ---------------------------------------------------------------------------------------------

_NO_HELPER = ("invalid func ", "unknown func ", "cannot use helper")


def _probe_helper(ptype, helper):
    base = probe(f"prog_type.{ptype.name.lower()}")
    if base.available is not True:
        return (False if base.available is False else None), f"program type {ptype.name.lower()} unavailable"
    code = encode([Insn("call", imm=helper.id), Insn("mov", 0, 0, 0, _RETURN.get(ptype, 0)), Insn("exit")])
    fd, err, log = _load_minimal(ptype, code)
    if fd is not None:
        _close(fd)
        return True, "loads"
    for marker in _NO_HELPER:
        if marker in log:
            line = next(line for line in log.splitlines() if marker in line)
            return False, line.strip()
    # Any other complaint (argument types, sleepable, ...) means the call itself was accepted.
    return True, "callable"


# -- map types -------------------------------------------------------------------------------------------

def _storage_btf():
    """A BTF blob with `int` key and `struct { int v; }` value, for local-storage maps."""
    from .btf_build import BtfBuilder, load_btf  # imports construct: only the BTF probes need it

    builder = BtfBuilder()
    int_id = builder.add_int("int", 4, 1)
    value_id = builder.add_struct("val", 4, [("v", int_id, 0)])
    return load_btf(builder.encode()), int_id, value_id


# type -> (key_size, value_size, max_entries, flags)
_MAP_SHAPE = {
    MapType.RINGBUF: (0, 0, 4096, 0),
    MapType.USER_RINGBUF: (0, 0, 4096, 0),
    MapType.QUEUE: (0, 4, 1, 0),
    MapType.STACK: (0, 4, 1, 0),
    MapType.BLOOM_FILTER: (0, 4, 1, 0),
    MapType.LPM_TRIE: (8, 4, 1, MapFlags.NO_PREALLOC),
    MapType.STACK_TRACE: (4, 8, 1, 0),
    MapType.CGROUP_STORAGE: (16, 8, 0, 0),  # key: struct bpf_cgroup_storage_key (padded to 16)
    MapType.PERCPU_CGROUP_STORAGE: (16, 8, 0, 0),
    MapType.CPUMAP: (4, 4, 1, 0),
    MapType.ARENA: (0, 0, 1, MapFlags.MMAPABLE),
}
_STORAGE_MAPS = (MapType.SK_STORAGE, MapType.INODE_STORAGE, MapType.TASK_STORAGE, MapType.CGRP_STORAGE)
_MAP_IN_MAP = (MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS)


def _map_create(mtype, key_size, value_size, max_entries, flags=0, inner_map_fd=0, btf=None):
    """fd or raises SyscallError."""
    attr = syscall.new_attr()
    attr.map_type = int(mtype)
    attr.key_size, attr.value_size, attr.max_entries = key_size, value_size, max_entries
    attr.map_flags = int(flags)
    attr.inner_map_fd = inner_map_fd
    if btf is not None:
        attr.btf_fd, attr.btf_key_type_id, attr.btf_value_type_id = btf
    return syscall.bpf(Cmd.MAP_CREATE, attr)


def _probe_map_type(mtype):
    if mtype == MapType.STRUCT_OPS:
        return None, "not probed: creating one needs a struct_ops BTF value type"
    fds = []
    try:
        if mtype in _STORAGE_MAPS:
            btf_fd, key_id, value_id = _storage_btf()
            fds.append(btf_fd)
            fds.append(_map_create(mtype, 4, 4, 0, MapFlags.NO_PREALLOC, btf=(btf_fd, key_id, value_id)))
        elif mtype in _MAP_IN_MAP:
            inner = _map_create(MapType.ARRAY, 4, 4, 1)
            fds.append(inner)
            fds.append(_map_create(mtype, 4, 4, 1, inner_map_fd=inner))
        else:
            fds.append(_map_create(mtype, *_MAP_SHAPE.get(mtype, (4, 4, 1, 0))))
        return True, "created"
    except SyscallError as e:
        return False, _errname(e.errno)
    finally:
        for fd in fds:
            _close(fd)


# -- attach types and links ------------------------------------------------------------------------------

# Attach types BPF_PROG_ATTACH does not take; they show at program load instead.
_ATTACH_AT_LOAD = {
    AttachType.XDP_DEVMAP: ProgType.XDP,
    AttachType.XDP_CPUMAP: ProgType.XDP,
    AttachType.SK_REUSEPORT_SELECT: ProgType.SK_REUSEPORT,
    AttachType.SK_REUSEPORT_SELECT_OR_MIGRATE: ProgType.SK_REUSEPORT,
    AttachType.NETFILTER: ProgType.NETFILTER,
    AttachType.TRACE_KPROBE_MULTI: ProgType.KPROBE,
    AttachType.TRACE_KPROBE_SESSION: ProgType.KPROBE,
    AttachType.TRACE_UPROBE_MULTI: ProgType.KPROBE,
    AttachType.TRACE_UPROBE_SESSION: ProgType.KPROBE,
}
BAD_FD = 0xFFFFFFFF  # (u32)-1: never an open fd


def _probe_attach_type(atype):
    if atype == AttachType.PERF_EVENT:
        result = probe("link.perf_event")
        return result.available, f"as link.perf_event: {result.detail}"
    if atype == AttachType.STRUCT_OPS:
        return None, "not probed: needs a struct_ops map"
    if atype in _ATTACH_AT_LOAD:
        ptype = _ATTACH_AT_LOAD[atype]
        fd, err, log = _load_raw(ptype, RETURN_0, atype, log=True)
        available, detail = _describe_load(fd, err, log)
        return available, f"{ptype.name.lower()} program with this expected_attach_type {detail}"
    # BPF_PROG_ATTACH checks the attach type before it looks at the (bad) program fd.
    attr = syscall.new_attr()
    attr.target_fd, attr.attach_bpf_fd, attr.attach_type = BAD_FD, BAD_FD, int(atype)
    try:
        syscall.bpf(Cmd.PROG_ATTACH, attr)
    except SyscallError as e:
        if e.errno == _errno.EINVAL:
            return False, "BPF_PROG_ATTACH does not know it (EINVAL)"
        return True, f"known to BPF_PROG_ATTACH ({_errname(e.errno)} for a bad fd)"
    return None, "BPF_PROG_ATTACH accepted a bad fd"


def _link_create(prog_fd, target, atype):
    """(fd or None, errno)."""
    attr = syscall.new_attr()
    attr.link_create.prog_fd = prog_fd
    attr.link_create.target_fd = target
    attr.link_create.attach_type = int(atype)
    try:
        return syscall.bpf(Cmd.LINK_CREATE, attr), 0
    except SyscallError as e:
        return None, e.errno


def _loopback():
    return socket.if_nametoindex("lo")


# link name -> (prog type, attach type, target, errno meaning "the kernel has this link", code)
_LINKS = {
    # A real tcx link on lo, closed at once: the program returns TCX_NEXT so traffic is untouched.
    "tcx": (ProgType.SCHED_CLS, AttachType.TCX_INGRESS, _loopback, None, RETURN_MINUS_1),
    # lo is no netkit device: a kernel with netkit says ENXIO, one without says EINVAL.
    "netkit": (ProgType.SCHED_CLS, AttachType.NETKIT_PRIMARY, _loopback, _errno.ENXIO, RETURN_0),
    "cgroup": (ProgType.CGROUP_SKB, AttachType.CGROUP_INET_INGRESS, lambda: BAD_FD, _errno.EBADF, RETURN_0),
    # A real (generic) XDP link on lo returning XDP_PASS; an existing XDP program there says EBUSY.
    "xdp": (ProgType.XDP, AttachType.XDP, _loopback, _errno.EBUSY, _returning(2)),
    "netns": (ProgType.SK_LOOKUP, AttachType.SK_LOOKUP, lambda: BAD_FD, _errno.EBADF, RETURN_0),
    "perf_event": (ProgType.TRACEPOINT, AttachType.PERF_EVENT, lambda: BAD_FD, _errno.EBADF, RETURN_0),
    "sockmap": (ProgType.SK_SKB, AttachType.SK_SKB_VERDICT, lambda: BAD_FD, _errno.EBADF, RETURN_0),
}


def _probe_link(kind):
    ptype, atype, target, telling_errno, code = _LINKS[kind]
    prog_fd, err, log = _load_raw(ptype, code, atype, log=True)
    if prog_fd is None:
        return False, f"cannot load a {ptype.name.lower()} program: {_describe_load(prog_fd, err, log)[1]}"
    try:
        link_fd, err = _link_create(prog_fd, target(), atype)
    finally:
        _close(prog_fd)
    if link_fd is not None:
        _close(link_fd)  # closing the last link fd detaches it
        return True, "created and detached a link"
    if telling_errno is not None and err == telling_errno:
        return True, f"kernel knows the link ({_errname(err)} for a bad target)"
    return False, f"BPF_LINK_CREATE: {_errname(err)}"


# -- instruction set ----------------------------------------------------------------------------------------

def _isa_programs():
    mov_reg = lookup("mov", "reg")
    return {
        "isa.v1": [Insn("mov", 0, 0, 0, 0), Insn("jeq", 0, 0, 0, 0), Insn("ja", off=0), Insn("exit")],
        "isa.v2": [Insn("mov", 0, 0, 0, 0), Insn("jlt", 0, 0, 0, 1), Insn("jsle", 0, 0, 0, 1), Insn("exit")],
        "isa.v3": [Insn("mov32", 0, 0, 0, 0), Insn("add32", 0, 0, 0, 1), Insn("jlt32", 0, 0, 0, 1),
                   Insn("mov", 0, 0, 0, 0), Insn("exit")],
        "isa.v4": [Insn("stdw", 10, 0, -8, 0), Insn("ldxsb", 0, 10, -8), Insn("sdiv", 0, 0, 0, 1),
                   Insn("smod", 0, 0, 0, 3), Insn("movsx864", 1, 0), Insn("bswap16", 1), Insn("gotol", imm=0),
                   Insn(mov_reg, 0, 1), Insn("mov", 0, 0, 0, 0), Insn("exit")],
        "bounded_loops": [Insn("mov", 0, 0, 0, 0), Insn("add", 0, 0, 0, 1), Insn("jlt", 0, 0, -2, 4),
                          Insn("mov", 0, 0, 0, 0), Insn("exit")],
        # fetching atomics and compare-and-swap (5.12); the plain atomic add is older
        "atomics": [Insn("stdw", 10, 0, -8, 0), Insn("mov", 0, 0, 0, 0), Insn("mov", 1, 0, 0, 1),
                    Insn("lock_cmpxchg", 10, 1, -8), Insn("lock_fetch_add", 10, 1, -8), Insn("mov", 0, 0, 0, 0),
                    Insn("exit")],
    }


def _probe_program(name):
    fd, err, log = _load_raw(ProgType.SOCKET_FILTER, encode(_isa_programs()[name]), log=True)
    return _describe_load(fd, err, log)


# -- BTF and tracing hooks --------------------------------------------------------------------------------

def _probe_btf():
    from .btf_build import BtfBuilder, load_btf  # imports construct: only the BTF probes need it

    builder = BtfBuilder()
    builder.add_int("int", 4, 1)
    try:
        _close(load_btf(builder.encode()))
    except BpfError as e:
        return False, f"BPF_BTF_LOAD: {e}"
    return True, "BPF_BTF_LOAD accepts a minimal blob"


def _vmlinux_id(name, tracepoint=False):
    """(btf id, None) or (None, why not) of kernel function `name`, or with tracepoint=True of
    the btf_trace_<name> typedef a tp_btf program targets."""
    btf_name = TP_BTF_PREFIX + name if tracepoint else name
    try:
        btf = Btf.vmlinux()
        return (btf.find(btf_name, "typedef").id if tracepoint else btf.func_id(name)), None
    except (BpfError, OSError, KeyError, LookupError) as e:
        return None, f"no BTF id for {btf_name}: {e}"


def _probe_btf_vmlinux():
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return False, "/sys/kernel/btf/vmlinux is absent"
    func_id, why = _vmlinux_id("bpf_fentry_test1")
    if func_id is None:
        return False, why
    return True, f"parsed; bpf_fentry_test1 is type {func_id}"


def _probe_btf_program(ptype, atype, target, tracepoint=False):
    """Load a program whose attach_btf_id is kernel function `target` (or, with tracepoint=True,
    tracepoint `target`: tp_btf, Linux 5.5)."""
    target_id, why = _vmlinux_id(target, tracepoint)
    if target_id is None:
        return None, f"not probed: {why}"
    fd, err, log = _load_raw(ptype, RETURN_0, atype, attach_btf_id=target_id, log=True)
    available, detail = _describe_load(fd, err, log)
    return available, f"{atype.name.lower()} on {target}: {detail}"


def _probe_lsm():
    try:
        with open("/sys/kernel/security/lsm") as f:
            active = f.read().strip()
    except OSError:
        active = None
    available, detail = _probe_btf_program(ProgType.LSM, AttachType.LSM_MAC, "bpf_lsm_file_open")
    if available and active is not None and "bpf" not in active.split(","):
        return False, f"loads, but the bpf LSM is not active ({active})"
    return available, detail


def _probe_kprobe_pmu():
    try:
        number = pmu.pmu_type(pmu.KPROBE_PMU, "kprobe")
    except FeatureUnavailable as e:
        return False, str(e)
    attr = syscall.new_perf_attr()
    attr.type = number
    func = syscall.ffi.new("char[]", b"do_sys_openat2")
    attr.kprobe_func = syscall.address(func)
    try:
        fd = syscall.perf_event_open(attr, -1, 0)
    except SyscallError as e:
        return False, f"perf_event_open of a kprobe: {_errname(e.errno)}"
    _close(fd)
    return True, f"PMU type {number}; opened a kprobe on do_sys_openat2"


def _uprobe_target():
    """A temporary file no process maps: a uprobe there is registered and never hit."""
    import tempfile  # (shutil, random, ...: only this probe needs them, not every start)

    target = tempfile.NamedTemporaryFile(prefix="pybpf-uprobe-probe-")
    target.write(b"\x90" * 16)
    target.flush()
    return target


def _probe_uprobe_pmu():
    try:
        number = pmu.pmu_type(pmu.UPROBE_PMU, "uprobe")
        retprobe = pmu.pmu_config_bit(pmu.UPROBE_PMU, "retprobe")
    except FeatureUnavailable as e:
        return False, str(e)
    with _uprobe_target() as target:
        path = syscall.ffi.new("char[]", target.name.encode())
        for kind, config in (("uprobe", 0), ("uretprobe", retprobe)):
            attr = syscall.new_perf_attr()
            attr.type, attr.config = number, config
            attr.uprobe_path = syscall.address(path)
            try:
                _close(syscall.perf_event_open(attr, -1, 0))
            except SyscallError as e:
                return False, f"perf_event_open of a {kind}: {_errname(e.errno)}"
    return True, f"PMU type {number}, retprobe bit {retprobe.bit_length() - 1}; opened a uprobe and a uretprobe"


def _probe_uprobe_multi():
    fd, err, log = _load_raw(ProgType.KPROBE, RETURN_0, AttachType.TRACE_UPROBE_MULTI, log=True)
    if fd is None:
        return False, f"cannot load a uprobe_multi program: {_describe_load(fd, err, log)[1]}"
    try:
        with _uprobe_target() as target:
            path = syscall.ffi.new("char[]", target.name.encode())
            offsets = syscall.ffi.new("uint64_t[]", [0])
            attr = syscall.new_attr()
            lc = attr.link_create
            lc.prog_fd, lc.attach_type = fd, int(AttachType.TRACE_UPROBE_MULTI)
            lc.uprobe_multi.path, lc.uprobe_multi.offsets = syscall.address(path), syscall.address(offsets)
            lc.uprobe_multi.cnt = 1
            try:
                _close(syscall.bpf(Cmd.LINK_CREATE, attr))
            except SyscallError as e:
                return False, f"BPF_LINK_CREATE: {_errname(e.errno)}"
    finally:
        _close(fd)
    return True, "created and detached a link on a temporary file"


def _probe_raw_tracepoint():
    fd, err, log = _load_raw(ProgType.RAW_TRACEPOINT, RETURN_0, log=True)
    if fd is None:
        return False, f"cannot load: {_describe_load(fd, err, log)[1]}"
    name = syscall.ffi.new("char[]", b"sys_enter")
    attr = syscall.new_attr()
    attr.raw_tracepoint.name = syscall.address(name)
    attr.raw_tracepoint.prog_fd = fd
    try:
        _close(syscall.bpf(Cmd.RAW_TRACEPOINT_OPEN, attr))
    except SyscallError as e:
        return False, f"BPF_RAW_TRACEPOINT_OPEN sys_enter: {_errname(e.errno)}"
    finally:
        _close(fd)
    return True, "attached to sys_enter and detached"


def _probe_perf_event_tracepoint():
    try:
        tp_id = tracefs.tracepoint_id("sched", "sched_process_exec")  # mounts tracefs when needed
    except BpfError as e:
        return False, str(e)
    fd, err, log = _load_raw(ProgType.TRACEPOINT, RETURN_0, log=True)
    if fd is None:
        return False, f"cannot load a tracepoint program: {_describe_load(fd, err, log)[1]}"
    attr = syscall.new_perf_attr()
    attr.type, attr.config = syscall.PERF_TYPE_TRACEPOINT, tp_id
    try:
        event = syscall.perf_event_open(attr, -1, 0)
        try:
            syscall.ioctl(event, syscall.PERF_EVENT_IOC_SET_BPF, fd)
        finally:
            _close(event)
    except SyscallError as e:
        return False, str(e)
    finally:
        _close(fd)
    return True, f"perf event on sched:sched_process_exec (id {tp_id}) took a program"


def _mount_probe(fstype):
    point = mounts.find(fstype)
    return (True, f"mounted at {point}") if point else (False, f"no {fstype} mount in /proc/self/mountinfo")


# -- the catalogue -----------------------------------------------------------------------------------------

def _catalogue():
    """name -> zero-argument probe, in report order. Built once."""
    table = {}
    for ptype in ProgType:
        if ptype:
            table[f"prog_type.{ptype.name.lower()}"] = lambda t=ptype: _probe_prog_type(t)
    for mtype in MapType:
        if mtype:
            table[f"map_type.{mtype.name.lower()}"] = lambda t=mtype: _probe_map_type(t)
    for atype in AttachType:
        table[f"attach_type.{atype.name.lower()}"] = lambda t=atype: _probe_attach_type(t)
    for kind in _LINKS:
        table[f"link.{kind}"] = lambda k=kind: _probe_link(k)
    table["link.uprobe_multi"] = _probe_uprobe_multi
    for name in _isa_programs():
        table[name] = lambda n=name: _probe_program(n)
    table.update({
        "btf": _probe_btf,
        "btf_vmlinux": _probe_btf_vmlinux,
        "ringbuf": lambda: _alias("map_type.ringbuf"),
        "bpf_loop": lambda: _alias("helper.kprobe.loop"),
        "kprobe_pmu": _probe_kprobe_pmu,
        "uprobe_pmu": _probe_uprobe_pmu,
        "fentry": lambda: _probe_btf_program(ProgType.TRACING, AttachType.TRACE_FENTRY, "bpf_fentry_test1"),
        "fexit": lambda: _probe_btf_program(ProgType.TRACING, AttachType.TRACE_FEXIT, "bpf_fentry_test1"),
        "lsm": _probe_lsm,
        "tp_btf": lambda: _probe_btf_program(ProgType.TRACING, AttachType.TRACE_RAW_TP, "sys_enter", tracepoint=True),
        "tracefs": lambda: _mount_probe("tracefs"),
        "debugfs": lambda: _mount_probe("debugfs"),
        "raw_tracepoint": _probe_raw_tracepoint,
        "perf_event_tracepoint": _probe_perf_event_tracepoint,
        "cgroup2": lambda: _mount_probe("cgroup2"),
    })
    return table


_CATALOGUE = None


def _table():
    global _CATALOGUE
    if _CATALOGUE is None:
        _CATALOGUE = _catalogue()
    return _CATALOGUE


def _alias(name):
    result = probe(name)
    return result.available, f"{name}: {result.detail}"


def _helper_probe(name):
    """The probe for "helper.<prog_type>.<helper>", or None when name is not one."""
    parts = name.split(".")
    if len(parts) != 3 or parts[0] != "helper":
        return None
    try:
        ptype = ProgType[parts[1].upper()]
        helper = helpers.lookup(parts[2])
    except (KeyError, BpfError):
        return None
    return lambda: _probe_helper(ptype, helper)


def names(include_helpers=False):
    """Every feature name, in report order."""
    out = list(_table())
    if include_helpers:
        out += [f"helper.{t.name.lower()}.{h.name}" for t in ProgType if t
                for h in sorted(helpers.BY_ID.values(), key=lambda h: h.id) if h.id]
    return out


def probe(name):
    """Feature(name, available, detail), probing on first use and cached after."""
    cached = _cache.get(name)
    if cached is not None:
        return cached
    fn = _table().get(name) or _helper_probe(name)
    if fn is None:
        raise BpfError(f"unknown feature {name!r} (see pybpf.features.names())")
    try:
        available, detail = fn()
    except SyscallError as e:
        if e.errno not in (_errno.EPERM, _errno.EACCES):
            raise
        available, detail = False, str(e)
    result = Feature(name, available, detail)
    _cache[name] = result
    return result


def has(name):
    """True when the feature is there; False when absent or undecided."""
    return probe(name).available is True


def report(include_helpers=False):
    """{name: {"available": True|False|None, "detail": str}} for every feature."""
    return {name: {"available": probe(name).available, "detail": probe(name).detail}
            for name in names(include_helpers)}



def main(argv=None):
    """`python -m pybpf.features`: the command line lives in pybpf.cli, which imports this module."""
    from .cli import features_main

    return features_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
