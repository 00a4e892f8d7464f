"""TLS plaintext from uprobes on the TLS library's read and write calls.

Three programs (no kprobes, no fentry):

  tls_enter   uprobe on SSL_read, SSL_write, SSL_read_ex, SSL_write_ex,
              gnutls_record_recv, gnutls_record_send: a task of the
              container's cgroup subtree (bpf_current_task_under_cgroup)
              leaves {handle, buffer, result pointer, what was called} in
              `calls`, keyed by pid_tgid. What was called comes from the bpf
              cookie (CALLS below), so one program serves every function.
  tls_socket  sys_enter of read, write, readv, writev, recvfrom, sendto,
              recvmsg, sendmsg: when that thread is inside a TLS call, the
              fd's socket (current->files->fdt->fd[fd]->private_data->sk,
              checked by socket->file pointing back at the file) of family
              AF_INET/AF_INET6 and protocol TCP is the call's connection.
              The library writes and reads the ciphertext itself, on the
              caller's thread, whatever BIO it uses (a socket BIO, curl's
              own BIO on its connection filters): this ties the plaintext
              to the connection it travels on, not to an fd number that
              may have been reused.
  tls_return  uretprobe on the same functions: how many bytes the call
              moved (the return value, or *readbytes / *written for the _ex
              calls), then the header (pid, comm, cgroup, handle, socket and
              its addresses from sock_common) and the bytes themselves, read
              from the caller's buffer with bpf_probe_read_user in CHUNK-byte
              records, one bpf_loop iteration each, into the ring buffer.

A call the library answers from its own buffer (the rest of a record a
smaller read left behind) makes no syscall: its record has sk = 0 and user
space finds its connection by (pid, handle), from the calls before it. The
ring buffer keeps the order calls returned in, across CPUs.

Needs bpf_loop (Linux 5.17), which brings ring buffers, BPF_PERF_EVENT
links and bpf cookies with it. Built for cpu v3 (what 5.17 takes).
"""
import os
import socket

import construct

from pybpf.asm import Program
from pybpf.errors import FeatureUnavailable
from pybpf.maps import Map
from pybpf.uapi import MapType

from .capture import count_stat
from .conn_common import (AF_INET, AF_INET6, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, IPPROTO_TCP,
                          WAKEUP_BYTES, current_in_cgroup, fd_file, kread, sock_addresses, sock_field)

CHUNK = 16384  # payload bytes per record
MAX_CHUNKS = 4096  # records per call: 64 MiB; the rest of a larger call is counted truncated
SENT, RECEIVED = 0, 1
# How a function says how many bytes it moved: its int return value (> 0), its ssize_t return
# value (> 0), or (the _ex calls) a return value of 1 and the count in *arg4.
RESULT_INT, RESULT_SSIZE, RESULT_EX = 0, 1, 2
# symbol -> (number in records, direction, result)
CALLS = {
    "SSL_write": (1, SENT, RESULT_INT),
    "SSL_read": (2, RECEIVED, RESULT_INT),
    "SSL_write_ex": (3, SENT, RESULT_EX),
    "SSL_read_ex": (4, RECEIVED, RESULT_EX),
    "gnutls_record_send": (5, SENT, RESULT_SSIZE),
    "gnutls_record_recv": (6, RECEIVED, RESULT_SSIZE),
}
CALL_NAMES = {number: name for name, (number, _, _) in CALLS.items()}
# The syscalls a TLS library moves its ciphertext with; each takes the fd first.
SYSCALLS = ("read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg")
STAT = {"calls": 0, "lost": 1, "truncated": 2, "faults": 3, "no_socket": 4}
RINGBUF_SIZE = 16 << 20

# struct pt_regs as user space sees it (asm/ptrace.h, what PTRACE_GETREGS returns): the
# first four arguments and the return value of a call, per architecture.
PT_REGS = {
    "x86_64": {"args": (112, 104, 96, 88), "ret": 80},  # di, si, dx, cx; ax
    "aarch64": {"args": (0, 8, 16, 24), "ret": 0},  # regs[0..3]; regs[0]
}


def cookie(symbol, library):
    """The bpf cookie of a probe on `symbol` of library number `library`: what tls_enter
    stores, and the record carries, so user space names the function and the file."""
    number, direction, result = CALLS[symbol]
    return number | direction << 8 | result << 12 | library << 16


Call = construct.Struct(
    "handle" / construct.Int64ul,  # the SSL * or gnutls_session_t
    "buf" / construct.Int64ul,
    "count_ptr" / construct.Int64ul,  # size_t *readbytes / *written (the _ex calls)
    "sk" / construct.Int64ul,  # struct sock * of the call's syscall; 0: none yet
    "cookie" / construct.Int64ul,
)

TlsEvent = construct.Struct(
    "ts_ns" / construct.Int64ul,  # bpf_ktime_get_ns at the return: also names the call
    "pid_tgid" / construct.Int64ul,
    "handle" / construct.Int64ul,
    "sk" / construct.Int64ul,  # 0: the call made no syscall (its bytes were buffered already)
    "cgroup_id" / construct.Int64ul,
    "cookie" / construct.Int64ul,  # cookie(): function, direction, library
    "total" / construct.Int32ul,  # bytes the call moved
    "offset" / construct.Int32ul,  # of this record's bytes in the call's
    "len" / construct.Int32ul,  # payload bytes that follow the header
    construct.Padding(4),
    "family" / construct.Int16ul,  # of sk: AF_INET, AF_INET6; 0 when sk is 0
    "sport" / construct.Int16ul,  # local port
    "dport" / construct.Int16ul,  # remote port
    construct.Padding(2),
    "saddr" / construct.Bytes(16),  # local address (IPv4: the first 4 bytes)
    "daddr" / construct.Bytes(16),  # remote address
    "comm" / construct.Bytes(16),
)
HDR = TlsEvent.sizeof()
assert HDR == 120

# The loop state tls_return hands its bpf_loop callback (on tls_return's stack).
LoopState = construct.Struct("buf" / construct.Int64ul, "size" / construct.Int64ul)


def _this_call(p, maps, key):
    """r0 = the TLS call this thread is in (its `calls` entry), or the program ends; key.u64[0] =
    pid_tgid."""
    p.call("get_current_pid_tgid")
    key.u64[0] = p.r0
    p.call("map_lookup_elem", maps["calls"], key)
    with p.If(p.r0 == 0):
        p.exit(0)


def build_enter(maps, pid=0):
    """tls_enter: remember the call of a task of the container (optionally only process pid)."""
    regs = PT_REGS[_machine()]["args"]
    p = Program("tls_enter", cpu="v3", prog_type="kprobe")
    p.r6 = p.r1
    key = p.stack.alloc(8)
    call = p.stack.alloc(Call)
    current_in_cgroup(p, maps["cgroups"], key, pid)
    call.zero()
    for name, reg in (("handle", 0), ("buf", 1), ("count_ptr", 3)):
        p.r1 = p.r6.u64[regs[reg]]
        call[name] = p.r1
    p.call("get_attach_cookie", p.r6)
    call.cookie = p.r0
    p.call("map_update_elem", maps["calls"], key, call, 0)
    p.exit(0)
    return p


def build_socket(maps, kernel, fd_offset):
    """tls_socket: the socket of a syscall made inside a TLS call (fd at `fd_offset` of the
    tracepoint's record)."""
    p = Program("tls_socket", cpu="v3", prog_type="tracepoint")
    p.r9 = p.r1
    key = p.stack.alloc(8)
    buf = p.stack.alloc(32)
    scratch = p.stack.alloc(8)
    _this_call(p, maps, key)
    p.r8 = p.r0
    this = p.ptr(p.r8, Call)
    p.r1 = this.sk
    with p.If(p.r1 != 0):  # found by an earlier syscall of this call
        p.exit(0)
    p.r7 = p.r9.u64[fd_offset]
    fd_file(p, kernel, buf, scratch, p.r7)
    p.r7 = scratch.u64[0]  # struct file *
    kread(p, scratch, 0, 8, p.r7, kernel.file_private_data)
    p.r9 = scratch.u64[0]  # struct socket *, if the file is a socket's
    kread(p, scratch, 0, 8, p.r9, kernel.socket_file)
    p.r1 = scratch.u64[0]
    with p.If(p.r1 != p.r7):  # no socket: its private data is something else
        p.exit(0)
    kread(p, scratch, 0, 8, p.r9, kernel.socket_sk)
    p.r6 = scratch.u64[0]
    sock_field(p, kernel, scratch, p.r6, "sk_family")
    with p.If(p.r1 != AF_INET):
        with p.If(p.r1 != AF_INET6):
            p.exit(0)
    sock_field(p, kernel, scratch, p.r6, "sk_protocol")
    with p.If(p.r1 != IPPROTO_TCP):
        p.exit(0)
    this.sk = p.r6
    p.exit(0)
    return p


def build_return(maps, kernel):
    """tls_return: the bytes the call moved, with who moved them and on which connection."""
    arch = PT_REGS[_machine()]
    p = Program("tls_return", cpu="v3", prog_type="kprobe")
    p.r6 = p.r1
    key = p.stack.alloc(8)
    call = p.stack.alloc(Call)
    loop = p.stack.alloc(LoopState)
    buf = p.stack.alloc(32)
    slot = p.stack.alloc(8)
    _this_call(p, maps, key)
    entry = p.ptr(p.r0, Call)
    for name in ("handle", "buf", "count_ptr", "sk", "cookie"):
        p.r1 = entry[name]
        call[name] = p.r1
    p.call("map_delete_elem", maps["calls"], key)

    # r7 = bytes moved; the call failed or moved nothing: nothing to say
    p.r7 = p.r6.u64[arch["ret"]]
    p.r1 = call.cookie
    p.r1 >>= 12
    p.r1 &= 0xF
    with p.If(p.r1 == RESULT_INT):
        p.movsx(p.r7, p.r7, 32)  # an int's upper half in the register is undefined
    with p.Elif(p.r1 == RESULT_EX):
        with p.If(p.w7 != 1):  # an int: 1 is success
            p.exit(0)
        p.r3 = call.count_ptr
        p.call("probe_read_user", slot, 8, p.r3)
        with p.If(p.r0 != 0):
            p.exit(0)
        p.r7 = slot.u64[0]
    with p.If(p.r7.s <= 0):
        p.exit(0)

    count_stat(p, maps["stats"], slot, STAT["calls"])
    slot.u32[0] = 0
    p.call("map_lookup_elem", maps["scratch"], slot)
    with p.If(p.r0 == 0):
        p.exit(0)
    p.r9 = p.r0
    ev = p.ptr(p.r9, TlsEvent)
    p.call("ktime_get_ns")
    ev.ts_ns = p.r0
    p.r1 = key.u64[0]
    ev.pid_tgid = p.r1
    for name in ("handle", "sk", "cookie"):
        p.r1 = call[name]
        ev[name] = p.r1
    p.call("get_current_cgroup_id")
    ev.cgroup_id = p.r0
    ev.total = p.r7
    p.r1 = ev.addr("comm")
    p.call("get_current_comm", p.r1, 16)
    for off in range(ev.offsetof("family"), ev.offsetof("comm"), 8):  # family, ports, padding, addresses
        p.r9.u64[off] = 0
    p.r6 = call.sk
    with p.If(p.r6 != 0):
        sock_addresses(p, kernel, ev, buf, p.r6)
    with p.Else():
        count_stat(p, maps["stats"], slot, STAT["no_socket"])

    # the bytes, CHUNK by CHUNK
    with p.If(p.r7 > MAX_CHUNKS * CHUNK):
        p.r7 = MAX_CHUNKS * CHUNK
        count_stat(p, maps["stats"], slot, STAT["truncated"])
    p.r1 = call.buf
    loop.buf = p.r1
    loop["size"] = p.r7  # (loop.size is the stack slot's own size)
    p.r7 += CHUNK - 1
    p.r7 >>= CHUNK.bit_length() - 1
    p.bpf_loop(p.r7, "tls_chunk", loop, 0)
    p.exit(0)

    @p.subprogram
    def tls_chunk():  # (u32 index, struct LoopState *state) -> 0: go on, 1: stop
        p.r6 = p.r1
        p.r6 <<= CHUNK.bit_length() - 1  # the chunk's offset in the call's bytes
        p.r7 = p.r2
        state = p.ptr(p.r7, LoopState)
        p.r8 = state["size"]
        p.r8 -= p.r6
        with p.If(p.r8 > CHUNK):
            p.r8 = CHUNK
        stat = p.stack.alloc(8)
        stat.u32[0] = 0
        p.call("map_lookup_elem", maps["scratch"], stat)
        with p.If(p.r0 == 0):
            p.exit(1)
        p.r9 = p.r0
        record = p.ptr(p.r9, TlsEvent)
        record["offset"] = p.r6
        record.len = p.r8
        p.r3 = state.buf
        p.r3 += p.r6
        p.r1 = p.r9
        p.r1 += HDR
        p.call("probe_read_user", p.r1, p.r8, p.r3)
        with p.If(p.r0 != 0):
            count_stat(p, maps["stats"], stat, STAT["faults"])
            p.exit(1)
        p.call("ringbuf_query", maps["events"], BPF_RB_AVAIL_DATA)
        p.r4 = BPF_RB_NO_WAKEUP
        with p.If(p.r0 >= WAKEUP_BYTES):
            p.r4 = BPF_RB_FORCE_WAKEUP
        p.r3 = p.r8
        p.r3 += HDR
        p.call("ringbuf_output", maps["events"], p.r9, p.r3, p.r4)
        with p.If(p.r0 != 0):
            count_stat(p, maps["stats"], stat, STAT["lost"])
        p.exit(0)

    return p


def _machine():
    machine = os.uname().machine
    if machine not in PT_REGS:
        raise FeatureUnavailable(f"TLS uprobes: no register layout known for {machine} "
                                 f"(known: {', '.join(PT_REGS)})")
    return machine


def new_maps(cgroup_fd, ringbuf_size=RINGBUF_SIZE):
    """The maps of one capture; the cgroup array holds the container's cgroup (an open dir fd)."""
    maps = {}
    try:
        maps["cgroups"] = Map(MapType.CGROUP_ARRAY, key=4, value=4, max_entries=1, name="tls_cgroup")
        maps["cgroups"].update(0, cgroup_fd)
        maps["calls"] = Map(MapType.LRU_HASH, key=8, value=Call, max_entries=16384, name="tls_calls")
        maps["scratch"] = Map(MapType.PERCPU_ARRAY, key=4, value=HDR + CHUNK, max_entries=1, name="tls_scratch")
        maps["stats"] = Map(MapType.PERCPU_ARRAY, key=4, value=8, max_entries=len(STAT), name="tls_stats")
        maps["events"] = Map(MapType.RINGBUF, max_entries=ringbuf_size, name="tls_events")
    except BaseException:
        for m in maps.values():
            m.close()
        raise
    return maps


def family_name(family):
    return {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}.get(family, "none")
