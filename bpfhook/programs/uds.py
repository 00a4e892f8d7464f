"""Unix-socket payloads from syscall tracepoints (no kprobes, no fentry).

sys_enter_{write,read,sendto,recvfrom,writev,readv,sendmsg,recvmsg}: a task
of the container's cgroup subtree (bpf_current_task_under_cgroup) using an
fd whose inode is a socket (task->files->fdt->fd[fd]->f_inode->i_mode) of
family AF_UNIX (file->private_data = struct socket, ->sk->skc_family)
leaves {sk, socket, buffer or iovec array, count} in `inflight`, keyed by
pid_tgid. sys_exit_* takes it back and, when the call moved bytes (ret > 0),
emits a UdsEvent per piece of user memory: the header (pid, comm, cgroup,
socket type, own and peer path from unix_sock->addr and ->peer->addr, peer
pid from sk_peer_pid) and up to CHUNK bytes read with bpf_probe_read_user
from the buffer or the iovecs (build_pieces, which tail-calls itself per
piece). The last piece of a call has `last` set; userspace joins the
pieces into one message.

Kernel offsets come from BTF (pybpf.btf), tracepoint field offsets from the
tracepoints' format files.
"""
import collections
import contextlib
import os

import construct

from bpfhook.records import flat_struct
from pybpf import attach, tracefs
from pybpf.asm import Program
from pybpf.btf import Btf
from pybpf.maps import Map
from pybpf.prog import load
from pybpf.uapi import MapType

from .capture import count_stat
from .conn_common import current_in_cgroup

CHUNK = 16384  # bytes of payload per record
MAX_PIECES = 32  # records per call (the tail-call limit): with CHUNK, 512 KiB
MAX_PATH = 108  # sizeof(sun_path)
AF_UNIX, S_IFMT, S_IFSOCK = 1, 0o170000, 0o140000
BPF_F_CURRENT_CPU = 0xFFFFFFFF

# syscall -> (number in records, direction 0 = sent / 1 = received, argument shape)
SYSCALLS = collections.OrderedDict([
    ("write", (1, 0, "buf")), ("read", (2, 1, "buf")), ("sendto", (3, 0, "buf")), ("recvfrom", (4, 1, "buf")),
    ("writev", (5, 0, "iov")), ("readv", (6, 1, "iov")), ("sendmsg", (7, 0, "msg")), ("recvmsg", (8, 1, "msg")),
])
SYSCALL_NAMES = {number: name for name, (number, _, _) in SYSCALLS.items()}
STAT = {"seen": 0, "lost": 1, "truncated": 2, "faults": 3}

UdsEvent = construct.Struct(
    "ts_ns" / construct.Int64ul,
    "pid_tgid" / construct.Int64ul,
    "msg_id" / construct.Int64ul,  # ktime of the exit: joins the pieces of one call
    "cgroup_id" / construct.Int64ul,
    "total" / construct.Int32ul,  # bytes the call moved (its return value)
    "len" / construct.Int32ul,  # payload bytes in this record
    "fd" / construct.Int32ul,
    "peer_pid" / construct.Int32ul,
    "path_len" / construct.Int16ul,
    "peer_path_len" / construct.Int16ul,
    "syscall" / construct.Int8ul,
    "direction" / construct.Int8ul,
    "sock_type" / construct.Int8ul,
    "last" / construct.Int8ul,
    "comm" / construct.Bytes(16),
    "path" / construct.Bytes(MAX_PATH),
    "peer_path" / construct.Bytes(MAX_PATH),
)
HDR = UdsEvent.sizeof()
assert HDR == 288

Inflight = construct.Struct(
    "sk" / construct.Int64ul, "sock" / construct.Int64ul, "ptr" / construct.Int64ul,
    "count" / construct.Int64ul, "fd" / construct.Int64ul,
)

_HEAD = flat_struct(UdsEvent)


class Event(collections.namedtuple("Event", "ts_ns pid_tgid msg_id cgroup_id total len fd peer_pid syscall "
                                             "direction sock_type last comm path peer_path payload")):
    __slots__ = ()


def decode(record):
    (ts, pid_tgid, msg_id, cgid, total, length, fd, peer_pid, path_len, peer_len, syscall, direction,
     sock_type, last, comm, path, peer_path) = _HEAD.unpack_from(record)
    return Event(ts, pid_tgid, msg_id, cgid, total, length, fd, peer_pid, syscall, direction, sock_type, last,
                 comm.split(b"\0", 1)[0].decode(errors="replace"), path[:path_len], peer_path[:peer_len],
                 bytes(record[HDR:HDR + length]))


def kernel_offsets():
    """Byte offsets of the kernel fields the programs walk, from vmlinux BTF."""
    btf = Btf.vmlinux()
    names = {
        "task_files": ("task_struct", "files"), "files_fdt": ("files_struct", "fdt"),
        "fdt_max_fds": ("fdtable", "max_fds"), "fdt_fd": ("fdtable", "fd"), "file_inode": ("file", "f_inode"),
        "inode_mode": ("inode", "i_mode"), "file_private": ("file", "private_data"), "socket_sk": ("socket", "sk"),
        "socket_type": ("socket", "type"), "sk_family": ("sock", "__sk_common.skc_family"),
        "sk_peer_pid": ("sock", "sk_peer_pid"), "unix_addr": ("unix_sock", "addr"),
        "unix_peer": ("unix_sock", "peer"), "addr_len": ("unix_address", "len"),
        "addr_name": ("unix_address", "name"), "pid_numbers": ("pid", "numbers"), "upid_nr": ("upid", "nr"),
    }
    return {key: btf.field(struct_name, path).byte_offset for key, (struct_name, path) in names.items()}


def _kread(p, tmp, src, off, type="u64"):
    """r0 = *(type *)(src + off) in kernel memory; the program ends (0) on a fault. src: a register."""
    p.r3 = src
    if off:
        p.r3 += off
    size = {"u64": 8, "u32": 4, "u16": 2}[type]
    p.call("probe_read_kernel", tmp, size, p.r3)
    with p.If(p.r0 != 0):
        p.exit(0)
    p.r0 = getattr(tmp, type)[0]


def build_enter(syscall, maps, offsets, args, pid=0):
    """The sys_enter program: is this fd a Unix socket of ours? Then remember the call."""
    _number, _direction, shape = SYSCALLS[syscall]
    k = offsets
    p = Program(f"uds_in_{syscall}", prog_type="tracepoint")
    p.r6 = p.r1
    tmp = p.stack.alloc(8)
    key = p.stack.alloc(8)
    ent = p.stack.alloc(Inflight)
    current_in_cgroup(p, maps["cgroups"], key, pid)
    p.r7 = p.r6.u32[args["fd"]]
    p.call("get_current_task")
    p.r8 = p.r0
    _kread(p, tmp, p.r8, k["task_files"])
    _kread(p, tmp, p.r0, k["files_fdt"])
    p.r8 = p.r0
    _kread(p, tmp, p.r8, k["fdt_max_fds"], "u32")
    with p.If(p.r7 >= p.r0):
        p.exit(0)
    _kread(p, tmp, p.r8, k["fdt_fd"])
    p.r8 = p.r7
    p.r8 <<= 3
    p.r8 += p.r0
    _kread(p, tmp, p.r8, 0)  # struct file *
    p.r8 = p.r0
    with p.If(p.r8 == 0):
        p.exit(0)
    _kread(p, tmp, p.r8, k["file_inode"])
    _kread(p, tmp, p.r0, k["inode_mode"], "u16")
    p.r0 &= S_IFMT
    with p.If(p.r0 != S_IFSOCK):
        p.exit(0)
    _kread(p, tmp, p.r8, k["file_private"])  # struct socket *
    p.r9 = p.r0
    _kread(p, tmp, p.r9, k["socket_sk"])
    p.r8 = p.r0
    _kread(p, tmp, p.r8, k["sk_family"], "u16")
    with p.If(p.r0 != AF_UNIX):
        p.exit(0)
    ent.sk = p.r8
    ent.sock = p.r9
    ent.fd = p.r7
    p.r1 = p.r6.u64[args["ptr"]]
    p.r2 = p.r6.u64[args["count"]]
    if shape == "msg":  # struct user_msghdr: msg_iov at 16, msg_iovlen at 24
        p.r7 = p.r1
        p.r3 = p.r7
        p.r3 += 16
        p.call("probe_read_user", tmp, 8, p.r3)
        p.r1 = tmp.u64[0]
        ent.ptr = p.r1
        p.r3 = p.r7
        p.r3 += 24
        p.call("probe_read_user", tmp, 8, p.r3)
        p.r2 = tmp.u64[0]
        ent.count = p.r2
    else:
        ent.ptr = p.r1
        ent.count = p.r2
    p.call("map_update_elem", maps["inflight"], key, ent, 0)
    p.exit(0)
    return p


def _event(p):
    """The UdsEvent r9 points at (the per-CPU scratch record being built), its fields by name."""
    return p.ptr(p.r9, UdsEvent)


def _read_path(p, tmp, sk_reg, k, path_field, len_field):
    """event.<path_field> = sun_path of ((struct unix_sock *)sk)->addr; len to <len_field>. r9 = event."""
    _kread(p, tmp, sk_reg, k["unix_addr"])
    with p.If(p.r0 != 0):
        p.r8 = p.r0
        _kread(p, tmp, p.r8, k["addr_len"], "u32")
        p.r0 -= 2  # sun_family
        with p.If(p.r0.s > 0):
            with p.If(p.r0 > MAX_PATH):
                p.r0 = MAX_PATH
            _event(p)[len_field] = p.r0
            p.r2 = p.r0
            p.r3 = p.r8
            p.r3 += k["addr_name"] + 2
            p.r1 = _event(p).addr(path_field)
            p.call("probe_read_kernel", p.r1, p.r2, p.r3)


def build_exit(syscall, maps, offsets, snaplen):
    """The sys_exit program: emit what the remembered call moved, piece by piece."""
    number, direction, shape = SYSCALLS[syscall]
    k = offsets
    p = Program(f"uds_out_{syscall}", prog_type="tracepoint")
    p.r6 = p.r1
    tmp = p.stack.alloc(8)
    key = p.stack.alloc(8)
    key32 = p.stack.alloc(4)
    ent = p.stack.alloc(Inflight)

    p.call("get_current_pid_tgid")
    key.u64[0] = p.r0
    p.call("map_lookup_elem", maps["inflight"], key)
    with p.If(p.r0 == 0):
        p.exit(0)
    for name in ("sk", "sock", "ptr", "count", "fd"):
        p.r1 = p.ptr(p.r0, Inflight)[name]
        ent[name] = p.r1
    p.call("map_delete_elem", maps["inflight"], key)
    p.r7 = p.r6.u64[16]  # ret
    with p.If(p.r7.s <= 0):
        p.exit(0)
    count_stat(p, maps["stats"], key32, STAT["seen"])
    key32.u32[0] = 0
    p.call("map_lookup_elem", maps["scratch"], key32)
    with p.If(p.r0 == 0):
        p.exit(0)
    p.r9 = p.r0
    p.call("ktime_get_ns")
    _event(p).ts_ns = p.r0
    _event(p).msg_id = p.r0
    p.r1 = key.u64[0]
    _event(p).pid_tgid = p.r1
    p.call("get_current_cgroup_id")
    _event(p).cgroup_id = p.r0
    _event(p).total = p.r7
    p.r1 = ent.fd
    _event(p).fd = p.r1
    _event(p).syscall = number
    _event(p).direction = direction
    _event(p).last = 0
    for name in ("peer_pid", "path_len", "peer_path_len", "sock_type"):
        _event(p)[name] = 0
    p.r1 = _event(p).addr("comm")
    p.call("get_current_comm", p.r1, 16)
    p.r1 = ent.sock
    _kread(p, tmp, p.r1, k["socket_type"], "u16")
    _event(p).sock_type = p.r0
    p.r1 = ent.sk
    _kread(p, tmp, p.r1, k["sk_peer_pid"])
    with p.If(p.r0 != 0):
        _kread(p, tmp, p.r0, k["pid_numbers"] + k["upid_nr"], "u32")
        _event(p).peer_pid = p.r0
    p.r1 = ent.sk
    _read_path(p, tmp, p.r1, k, "path", "path_len")
    p.r1 = ent.sk
    _kread(p, tmp, p.r1, k["unix_peer"])
    with p.If(p.r0 != 0):
        p.r1 = p.r0
        _read_path(p, tmp, p.r1, k, "peer_path", "peer_path_len")

    # rem = min(ret, snaplen); the pieces come from one buffer or from the iovecs
    with p.If(p.r7 > snaplen):
        p.r7 = snaplen
        count_stat(p, maps["stats"], key32, STAT["truncated"])
    key32.u32[0] = 0
    p.call("map_lookup_elem", maps["state"], key32)
    with p.If(p.r0 == 0):
        p.exit(0)
    p.r0.u64[REM] = p.r7
    p.r0.u64[OFF] = 0
    p.r0.u64[INDEX] = 0
    p.r1 = ent.ptr
    p.r2 = ent.count
    p.r0.u64[IOV] = p.r1
    if shape == "buf":
        p.r0.u64[BASE] = p.r1
        p.r0.u64[LEN] = p.r7
        p.r0.u64[VLEN] = 0
    else:
        p.r0.u64[BASE] = 0
        p.r0.u64[LEN] = 0
        p.r0.u64[VLEN] = p.r2
    p.call("tail_call", p.r6, maps["pieces"], 0)
    p.exit(0)
    return p


REM, BASE, LEN, OFF, INDEX, VLEN, IOV = (8 * i for i in range(7))  # the per-CPU `state` value
STATE_SIZE = 8 * 7


def build_pieces(maps):
    """One piece of the call being emitted per run; it tail-calls itself for the next one.

    A loop here would make the verifier walk every path of every iteration;
    a tail call is verified once. The kernel's limit of 33 tail calls bounds
    a call to about 32 pieces (MAX_PIECES)."""
    p = Program("uds_pieces", prog_type="tracepoint")
    p.r6 = p.r1
    key32 = p.stack.alloc(4)
    iov = p.stack.alloc(16)
    key32.u32[0] = 0
    p.call("map_lookup_elem", maps["state"], key32)
    with p.If(p.r0 == 0):
        p.exit(0)
    p.r7 = p.r0
    key32.u32[0] = 0
    p.call("map_lookup_elem", maps["scratch"], key32)
    with p.If(p.r0 == 0):
        p.exit(0)
    p.r9 = p.r0
    p.r1 = p.r7.u64[REM]
    with p.If(p.r1 == 0):
        p.exit(0)
    p.r1 = p.r7.u64[OFF]
    p.r2 = p.r7.u64[LEN]
    with p.If(p.r1 >= p.r2):  # this buffer is done: the next iovec
        p.r1 = p.r7.u64[INDEX]
        p.r2 = p.r7.u64[VLEN]
        with p.If(p.r1 >= p.r2):
            p.goto("close")
        p.r1 <<= 4
        p.r3 = p.r7.u64[IOV]
        p.r3 += p.r1
        p.call("probe_read_user", iov, 16, p.r3)
        with p.If(p.r0 != 0):
            p.goto("close")
        p.r1 = iov.u64[0]
        p.r7.u64[BASE] = p.r1
        p.r1 = iov.u64[8]
        p.r7.u64[LEN] = p.r1
        p.r7.u64[OFF] = 0
        p.r1 = p.r7.u64[INDEX]
        p.r1 += 1
        p.r7.u64[INDEX] = p.r1
        p.goto("next")
    # r8 = min(len - off, rem, CHUNK)
    p.r8 = p.r2
    p.r8 -= p.r1
    p.r2 = p.r7.u64[REM]
    with p.If(p.r8 > p.r2):
        p.r8 = p.r2
    with p.If(p.r8 > CHUNK):
        p.r8 = CHUNK
    with p.If(p.r8 == 0):
        p.goto("close")
    p.r3 = p.r7.u64[BASE]
    p.r3 += p.r1
    p.r1 = p.r9
    p.r1 += HDR
    p.call("probe_read_user", p.r1, p.r8, p.r3)
    with p.If(p.r0 != 0):
        count_stat(p, maps["stats"], key32, STAT["faults"])
        p.goto("close")
    _event(p).len = p.r8
    p.r1 = p.r7.u64[OFF]
    p.r1 += p.r8
    p.r7.u64[OFF] = p.r1
    p.r1 = p.r7.u64[REM]
    p.r1 -= p.r8
    p.r7.u64[REM] = p.r1
    with p.If(p.r1 == 0):
        _event(p).last = 1
    p.r5 = p.r8
    p.r5 += HDR
    p.r3 = BPF_F_CURRENT_CPU
    p.call("perf_event_output", p.r6, maps["events"], p.r3, p.r9, p.r5)
    with p.If(p.r0 != 0):
        count_stat(p, maps["stats"], key32, STAT["lost"])
    p.r1 = p.r7.u64[REM]
    with p.If(p.r1 == 0):
        p.exit(0)
    p.label("next")
    p.call("tail_call", p.r6, maps["pieces"], 0)
    count_stat(p, maps["stats"], key32, STAT["truncated"])  # out of tail calls: the rest stays unseen
    # A call not fully copied (out of iovecs, a fault, out of tail calls) still closes its message.
    p.label("close")
    _event(p).last = 1
    _event(p).len = 0
    p.r3 = BPF_F_CURRENT_CPU
    p.call("perf_event_output", p.r6, maps["events"], p.r3, p.r9, HDR)
    p.exit(0)
    return p


class UdsPrograms:
    """The maps and the 16 tracepoint programs of one capture; attach() returns a context manager."""

    def __init__(self, cgroup_dir, pid=0, snaplen=262144):
        self._stack = contextlib.ExitStack()
        try:
            self.maps = maps = {
                "cgroups": Map(MapType.CGROUP_ARRAY, key=4, value=4, max_entries=1, name="uds_cgroup"),
                "inflight": Map(MapType.HASH, key=8, value=Inflight, max_entries=16384, name="uds_inflight"),
                "scratch": Map(MapType.PERCPU_ARRAY, key=4, value=HDR + CHUNK, max_entries=1, name="uds_scratch"),
                "stats": Map(MapType.PERCPU_ARRAY, key=4, value=8, max_entries=len(STAT), name="uds_stats"),
                "events": Map(MapType.PERF_EVENT_ARRAY, name="uds_events"),
                "state": Map(MapType.PERCPU_ARRAY, key=4, value=STATE_SIZE, max_entries=1, name="uds_state"),
                "pieces": Map(MapType.PROG_ARRAY, key=4, value=4, max_entries=1, name="uds_pieces"),
            }
            for m in maps.values():
                self._stack.callback(m.close)
            dirfd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                maps["cgroups"].update(0, dirfd)
            finally:
                os.close(dirfd)
            self.events = maps["events"]
            offsets = kernel_offsets()
            pieces = load(build_pieces(maps), "tracepoint", name="uds_pieces")
            self._stack.callback(pieces.close)
            maps["pieces"].update(0, pieces.fd)
            # The array holds the pieces program, which holds the array (it tail-calls itself):
            # emptied first, the cycle never waits on the kernel to break it (Linux 6.18 left the
            # array behind for good when `bpftool prog show` ran as this process exited).
            self._stack.callback(maps["pieces"].delete, 0)
            self.programs = []
            for syscall in SYSCALLS:
                fields = tracefs.tracepoint_fields("syscalls", f"sys_enter_{syscall}")
                names = list(fields)
                first = names.index("__syscall_nr") + 1  # fd, then the buffer, then its size
                args = {"fd": fields[names[first]].offset, "ptr": fields[names[first + 1]].offset,
                        "count": fields[names[first + 2]].offset}
                for kind, program in (("enter", build_enter(syscall, maps, offsets, args, pid)),
                                      ("exit", build_exit(syscall, maps, offsets, snaplen))):
                    loaded = load(program, "tracepoint", name=f"uds_{kind[:2]}_{syscall}")
                    self._stack.callback(loaded.close)
                    self.programs.append((f"sys_{kind}_{syscall}", loaded))
        except BaseException:
            self._stack.close()
            raise

    def attach(self):
        links = contextlib.ExitStack()
        with links:
            # exits first: an enter without its exit would leave an entry in inflight
            for name, program in sorted(self.programs, key=lambda item: "enter" in item[0]):
                links.enter_context(attach.tracepoint(program, "syscalls", name))
            return links.pop_all()

    def stats(self):
        return {name: sum(self.maps["stats"].lookup(index)) for name, index in STAT.items()}

    def close(self):
        self._stack.close()
