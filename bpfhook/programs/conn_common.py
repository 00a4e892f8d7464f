"""What the monitor's programs share: their maps, kernel struct offsets, DSL pieces.

Maps (layouts from bpfhook.records):
    conn_slots       array  u32 -> CONN_SLOT             TCP connections, one slot per socket address
                                                         hash (slot_of), read in place (mmap)
    conns            LRU hash  CONN_KEY -> CONN          ... those whose slot another one holds
                                                         (state CLOSE: ended, memory for the next)
    metrics_cgroup   per-CPU hash  CGROUP_KEY -> METRICS  per cgroup id
    metrics_netns    per-CPU hash  NETNS_KEY -> METRICS   per netns cookie
    cache_cgroup     per-CPU array  0 -> METRICS_CACHE    ... this CPU's entry of a cgroup id, when
    cache_netns                                          its slot is free or its own (cached_metrics)
    zero_metrics     array  0 -> METRICS                 zeros, what metrics_getter inserts
    events           ring buffer of EVENT (a perf event array where the kernel has no ring buffer)
    lost             per-CPU array, LOST_* slots
    stats            per-CPU array  0 -> STATS           event count, durations, state transitions
    recent           per-CPU array  0 -> RECENT          the latest closes and UDP flows

A slot table before the hash map: every transition looks its connection up, and the verifier
inlines an array lookup (a multiply, a shift, a load) where a hash lookup is a chain of calls
into the kernel. A socket claims its slot at its opening with a compare-and-swap (BPF atomics,
5.12); when another live connection holds it, or the kernel has no atomics, it goes to conns.

The metrics are per CPU, summed by user space: a connection's two ends run on different CPUs,
and one shared counter would bounce its cache line between them. A key's metrics sit first in
a per-CPU array slot fixed by the key (one writer, preemption off: no atomics), in the hash
map only when another key holds that slot. Unstreamed (the default), the programs send nothing
one by one: user space reads the maps when it reports.

Kernel struct offsets come from the running kernel's BTF when the programs are built (CO-RE
done in Python): no program carries a hard-coded offset of a kernel-internal struct.
"""
import dataclasses
import itertools
import json
import os
import socket
import sys

from bpfhook import records
from bpfhook.records import EVENT, METRICS
from pybpf import features
from pybpf.btf import Btf
from pybpf.errors import FeatureUnavailable
from pybpf.features import TP_BTF_PREFIX
from pybpf.layout import offsetof
from pybpf.maps import Map
from pybpf.uapi import MapFlags, MapType

IPPROTO_TCP, IPPROTO_UDP = int(socket.IPPROTO_TCP), int(socket.IPPROTO_UDP)
AF_INET, AF_INET6 = int(socket.AF_INET), int(socket.AF_INET6)
BPF_NOEXIST = 1
BPF_RB_NO_WAKEUP, BPF_RB_FORCE_WAKEUP = 1, 2
BPF_RB_AVAIL_DATA, BPF_RB_RING_SIZE = 0, 1
BPF_F_CURRENT_CPU = 0xFFFFFFFF

CONNS_MAX = 32768
CONN_SLOTS = 16384  # 2 MB; a power of two (slot_of takes the top bits of a product)
SLOT_HASH = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: Fibonacci hashing spreads slab addresses
SLOT_SIZE = records.CONN_SLOT.sizeof()
CONN_IN_SLOT = offsetof(records.CONN_SLOT, "conn")  # where user space finds a slot's CONN
CONN_SIZE = records.CONN.sizeof()
METRICS_MAX = 4096
CACHE_BITS = records.METRICS_CACHE_SLOTS.bit_length() - 1
# 8 MB: ~60,000 events, most of a second of the churn benchmark's highest rate (~75,000 events/s
# with openings and closes only, docs/benchmarks.md): a burst the reader catches up on
RINGBUF_SIZE = 8 << 20
IDLE_RINGBUF_SIZE = 4096  # not streaming, nothing is sent: the smallest ring (a page), no memory mapped for it
# Wake the reader when it has caught up (the ring was empty: it may be asleep; its first event
# of a batch then comes at once, not at its next poll) and once this much is waiting (small: the
# reader decodes a batch at once, and its peak memory follows the batch size). In between, the
# events batch up while the reader is awake anyway: at a high rate, a wakeup per batch, not per event.
WAKEUP_BYTES = 64 << 10

# (struct, field path) the programs read; the attribute names of KernelOffsets
_KERNEL_FIELDS = {
    "sk_family": ("sock", "__sk_common.skc_family"),
    "sk_num": ("sock", "__sk_common.skc_num"),
    "sk_dport": ("sock", "__sk_common.skc_dport"),
    "sk_rcv_saddr": ("sock", "__sk_common.skc_rcv_saddr"),
    "sk_daddr": ("sock", "__sk_common.skc_daddr"),
    "sk_v6_rcv_saddr": ("sock", "__sk_common.skc_v6_rcv_saddr"),
    "sk_v6_daddr": ("sock", "__sk_common.skc_v6_daddr"),
    "sk_net": ("sock", "__sk_common.skc_net"),
    "sk_protocol": ("sock", "sk_protocol"),
    "sk_state": ("sock", "__sk_common.skc_state"),
    "sk_socket": ("sock", "sk_socket"),
    "sk_cgroup": ("sock", "sk_cgrp_data.cgroup"),
    "cgroup_kn": ("cgroup", "kn"),
    "kn_id": ("kernfs_node", "id"),
    "net_cookie": ("net", "net_cookie"),
    "bytes_sent": ("tcp_sock", "bytes_sent"),
    "bytes_received": ("tcp_sock", "bytes_received"),
    "srtt_us": ("tcp_sock", "srtt_us"),  # smoothed RTT << 3, microseconds
    "sk_err": ("sock", "sk_err"),  # why a connect() ended: ECONNREFUSED, ETIMEDOUT, ...
    "task_files": ("task_struct", "files"),
    "task_pid": ("task_struct", "pid"),
    "task_tgid": ("task_struct", "tgid"),
    "task_group_leader": ("task_struct", "group_leader"),
    "task_nsproxy": ("task_struct", "nsproxy"),
    "nsproxy_net": ("nsproxy", "net_ns"),
    "net_inum": ("net", "ns.inum"),
    "task_comm": ("task_struct", "comm"),
    "files_fdt": ("files_struct", "fdt"),
    "fdt_max_fds": ("fdtable", "max_fds"),
    "fdt_fd": ("fdtable", "fd"),
    "file_private_data": ("file", "private_data"),
    "socket_sk": ("socket", "sk"),
    "socket_file": ("socket", "file"),
    "file_inode": ("file", "f_inode"),
    "inode_ino": ("inode", "i_ino"),
    # the cgroup_sock_addr context (uapi, but read like the rest)
    "ctx_user_ip4": ("bpf_sock_addr", "user_ip4"),
    "ctx_user_ip6": ("bpf_sock_addr", "user_ip6"),
    "ctx_user_port": ("bpf_sock_addr", "user_port"),
    "ctx_family": ("bpf_sock_addr", "family"),
    "ctx_protocol": ("bpf_sock_addr", "protocol"),
    "ctx_sk": ("bpf_sock_addr", "sk"),
}
# PT_REGS_RC: where a kretprobe finds the return value in struct pt_regs, per architecture
_RETURN_REGISTER = {"x86_64": ("pt_regs", "ax"), "aarch64": ("pt_regs", "regs")}  # arm64: regs[0]
if os.uname().machine in _RETURN_REGISTER:
    _KERNEL_FIELDS["regs_rc"] = _RETURN_REGISTER[os.uname().machine]
# Kernel functions and tracepoints the programs hook by BTF id (fexit, tp_btf); their prototypes
# vary between kernels
_KERNEL_FUNCS = ("inet_csk_accept", TP_BTF_PREFIX + "inet_sock_set_state", TP_BTF_PREFIX + "tcp_destroy_sock",
                 "bpf_iter_tcp", "bpf_iter_task",
                 "bpf_get_current_task_btf")  # (the helper's function: in BTF where the helper is)

# Parsing vmlinux BTF costs most of the monitor's start-up time and memory, and its answers
# cannot change until the next boot: they are kept in a file on tmpfs keyed by boot id.
CACHE_PATH = "/run/bpfhook/kernel-offsets.json"
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
BOOT_ID = "/proc/sys/kernel/random/boot_id"


@dataclasses.dataclass(frozen=True)
class KernelOffsets:
    """Byte offsets (and sizes) of the kernel fields the programs read, and the BTF id and
    argument count of the functions they hook, from BTF."""

    offsets: dict  # name -> (byte offset, size)
    funcs: dict = dataclasses.field(default_factory=dict)  # name -> (btf id, nargs), or None: not in BTF

    @classmethod
    def from_btf(cls, btf=None):
        if btf is None:
            btf = Btf.vmlinux()
        out = {}
        for name, (struct, path) in _KERNEL_FIELDS.items():
            f = btf.field(struct, path)
            out[name] = (f.byte_offset, f.size)
        funcs = {}
        for name in _KERNEL_FUNCS:
            # a tracepoint's typedef btf_trace_<name>: pointer to (void *data, args...)
            kind = "typedef" if name.startswith(TP_BTF_PREFIX) else "func"
            try:
                func = btf.find(name, kind)
            except FeatureUnavailable:
                funcs[name] = None  # inlined or renamed on this kernel: only fexit/tp_btf need it
                continue
            proto = btf.type_by_id(btf.type_by_id(func.type).type) if kind == "typedef" else btf.type_by_id(func.type)
            funcs[name] = (func.id, len(proto.params) - (kind == "typedef"))
        return cls(out, funcs)

    @classmethod
    def load(cls, cache_path=CACHE_PATH):
        """From the boot's cache when it answers for these very fields, else from BTF (and cached)."""
        try:
            key = _cache_key()
        except OSError:
            return cls.from_btf()
        try:
            with open(cache_path) as f:
                cached = json.load(f)
            if cached.get("key") == key:
                return cls({name: tuple(v) for name, v in cached["offsets"].items()},
                           {name: v and tuple(v) for name, v in cached["funcs"].items()})
        except (OSError, ValueError, KeyError, AttributeError):
            pass
        found = cls.from_btf()
        try:
            os.makedirs(os.path.dirname(cache_path), mode=0o700, exist_ok=True)
            tmp = f"{cache_path}.{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump({"key": key, "offsets": found.offsets, "funcs": found.funcs}, f)
            os.replace(tmp, cache_path)
        except OSError:
            pass  # a read-only /run only costs the next start its BTF parse
        return found

    def __getattr__(self, name):
        try:
            return self.offsets[name][0]
        except KeyError:
            raise AttributeError(name) from None

    def size(self, name):
        return self.offsets[name][1]

    def func(self, name):
        """(BTF type id, number of arguments) of kernel function `name`: what an fexit program
        attaches to, and where its ctx holds the return value (after the arguments)."""
        found = self.funcs.get(name)
        if found is None:
            raise FeatureUnavailable(f"vmlinux BTF has no function {name}")
        return found


def _cache_key():
    with open(BOOT_ID) as f:
        boot = f.read().strip()
    return {"boot_id": boot, "btf_size": os.stat(VMLINUX_BTF).st_size,
            "fields": {name: list(spec) for name, spec in _KERNEL_FIELDS.items()}, "funcs": list(_KERNEL_FUNCS)}


class Maps:
    """The monitor's maps, created together and closed together."""

    def __init__(self, ringbuf=True, conns_max=CONNS_MAX, stream=True, slots=CONN_SLOTS, transitions=True,
                 ringbuf_size=RINGBUF_SIZE):
        """slots: conn_slots' size, a power of two, or 0 for none (a kernel without BPF atomics).
        transitions: streaming, every TCP state transition is sent; False: a connection's opening
        and its close only (the close carries its bytes and duration, as tcplife's line does),
        about half the events of a short connection; the maps count every transition alike."""
        if slots & (slots - 1):
            raise ValueError(f"slots={slots}: expected a power of two or 0")
        self.stream = stream  # every event to the ring buffer, or summaries in maps only
        self.transitions = transitions
        self.slots = slots
        self.conn_slots = None
        self._all = []
        try:
            if slots:
                self.conn_slots = self._add(MapType.ARRAY, 4, records.CONN_SLOT, slots, "conn_slots",
                                            flags=MapFlags.MMAPABLE)
            self.conns = self._add(MapType.LRU_HASH, records.CONN_KEY, records.CONN, conns_max, "conns")
            # Elements allocated as keys come (a new cgroup or netns, behind the caches): preallocating
            # 4,096 per-CPU ones costs start-up time, more with every CPU (docs/benchmarks.md)
            self.metrics_cgroup = self._add(MapType.PERCPU_HASH, records.CGROUP_KEY, METRICS, METRICS_MAX,
                                            "metrics_cgroup", flags=MapFlags.NO_PREALLOC)
            self.metrics_netns = self._add(MapType.PERCPU_HASH, records.NETNS_KEY, METRICS, METRICS_MAX,
                                           "metrics_netns", flags=MapFlags.NO_PREALLOC)
            self.zero_metrics = self._add(MapType.ARRAY, 4, METRICS, 1, "zero_metrics")  # (metrics_getter)
            self.cache_cgroup, self.cache_netns = (
                self._add(MapType.PERCPU_ARRAY, 4, records.METRICS_CACHE, 1, name)
                for name in ("cache_cgroup", "cache_netns"))
            if ringbuf:
                self.events = self._add(MapType.RINGBUF, None, None, ringbuf_size if stream else IDLE_RINGBUF_SIZE,
                                        "events")
            else:
                self.events = self._add(MapType.PERF_EVENT_ARRAY, 4, 4, None, "events")
            self.lost = self._add(MapType.PERCPU_ARRAY, records.LOST_KEY, records.LOST_VALUE,
                                  len(records.LOST_SLOTS), "lost")
            self.stats = self._add(MapType.PERCPU_ARRAY, 4, records.STATS, 1, "stats")
            self.recent = self._add(MapType.PERCPU_ARRAY, 4, records.RECENT, 1, "recent")
            # What the ring buffer refused with room left (emit), for Monitor.spilled() to read
            self.spill = self._add(MapType.PERCPU_ARRAY, 4, records.RECENT, 1, "spill") if ringbuf and stream \
                else None
        except BaseException:
            self.close()
            raise

    def _add(self, type, key, value, max_entries, name, flags=None):
        m = Map(type, key=key, value=value, max_entries=max_entries, name=name, flags=flags)
        self._all.append(m)
        return m

    @property
    def ringbuf(self):
        return self.events.type == MapType.RINGBUF

    @property
    def all(self):
        """Every map, in the order made."""
        return tuple(self._all)

    @property
    def slot_bits(self):
        """log2 of the slot count: how many top bits of sk * SLOT_HASH pick a slot (slot_of)."""
        return max(self.slots.bit_length() - 1, 0)

    def slot_index(self, sock):
        """The conn_slots index of a struct sock address (what slot_of computes)."""
        return fib_hash(sock, self.slot_bits)

    @staticmethod
    def cache_index(key):
        """The slot of a cgroup id or netns cookie in cache_cgroup / cache_netns (cached_metrics)."""
        return fib_hash(key, CACHE_BITS)

    def slot_entries(self, ended=False):
        """[(sock, CONN)] of the slots holding a live connection (and, with ended=True, those
        whose connection ended: sock has SLOT_ENDED set), read in place: the slots are mapped
        into our memory, and only those are decoded."""
        if not self.slots:
            return []
        view = self.conn_slots.mmap(writable=False)
        socks = view.cast("Q")[:self.slots * SLOT_SIZE // 8:SLOT_SIZE // 8].tolist()
        return [(sock, records.CONN_CODEC.decode(view[i * SLOT_SIZE + CONN_IN_SLOT:][:CONN_SIZE]))
                for i, sock in enumerate(socks) if sock and (ended or not sock & records.SLOT_ENDED)]

    def entry(self, sock):
        """(CONN, ended) of the socket at this address, from its slot or from conns, or None."""
        if self.slots:
            raw = self.conn_slots.mmap(writable=False)[self.slot_index(sock) * SLOT_SIZE:][:SLOT_SIZE]
            held = int.from_bytes(raw[:8], sys.byteorder)
            if held & ~records.SLOT_ENDED == sock:
                return records.CONN_CODEC.decode(raw[CONN_IN_SLOT:][:CONN_SIZE]), bool(held & records.SLOT_ENDED)
        conn = self.conns.lookup({"sock": sock})
        return None if conn is None else (conn, conn.state == records.TCP_STATE_IDS["CLOSE"])

    def metric_totals(self, table, cache, field):
        """{key: records.decode_metrics dict}: a metrics hash map (its key's `field`) and the
        cache before it (cache_cgroup before metrics_cgroup, cache_netns before metrics_netns),
        every CPU summed."""
        totals = {}
        cached = ((e.key, e.metrics) for per_cpu in cache.lookup(0) for e in per_cpu)
        held = ((k[field], v) for k, v in table.items())
        for key, value in itertools.chain(held, cached):
            m = records.decode_metrics(value)
            if key or m != records.zero_metrics():  # (an unused slot is all zero)
                totals[key] = records.add_metrics(totals[key], m) if key in totals else m
        return totals

    def lost_counts(self):
        """{slot name: total over CPUs}."""
        return {name: sum(self.lost.lookup(slot) or [0]) for slot, name in records.LOST_SLOTS.items()}

    def close(self):
        for m in self._all:
            m.close()
        self._all = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- DSL pieces ------------------------------------------------------------------

def conn_at(p, reg):
    """The CONN register `reg` points at, its fields by name."""
    return p.ptr(reg, records.CONN)


def kread(p, dst_slot, dst_off, size, src, src_off):
    """*(dst_slot + dst_off) = size bytes at kernel address src + src_off (bpf_probe_read_kernel).

    src is a callee-saved register (r6..r9) or stack memory holding the address.
    On a fault the helper zeroes the destination: a NULL pointer reads as zeros."""
    p.r3 = src
    if src_off:
        p.r3 += src_off
    p.r1 = p.r10
    p.r1 += dst_slot.offset + dst_off
    p.call("probe_read_kernel", p.r1, size, p.r3)


# The sock_common fields of an address pair; each group usually lies within one read
SOCK_V4_FIELDS = ("sk_family", "sk_num", "sk_dport", "sk_rcv_saddr", "sk_daddr")
SOCK_V6_FIELDS = ("sk_v6_rcv_saddr", "sk_v6_daddr")
SPAN_MAX = 64  # fields closer than this share one bpf_probe_read_kernel
_LOAD = {1: "u8", 2: "u16", 4: "u32", 8: "u64"}


def kread_fields(p, k, buf, src, names):
    """Kernel fields `names` (KernelOffsets names) of the struct at `src` (r6..r9) into stack
    slot `buf`, with one bpf_probe_read_kernel per run of fields within SPAN_MAX bytes rather than
    one per field: each call costs more than the bytes it copies. Returns {name: offset in buf}.

    A run starts 8-aligned, so every field keeps its natural alignment in `buf` (the verifier
    wants aligned stack loads)."""
    spans = []  # [start, end, names]
    for name in sorted(names, key=lambda n: k.offsets[n][0]):
        off, size = k.offsets[name]
        if spans and off + size - spans[-1][0] <= SPAN_MAX:
            spans[-1][1] = max(spans[-1][1], off + size)
            spans[-1][2].append(name)
        else:
            spans.append([off & ~7, off + size, [name]])
    at, placed = {}, 0
    for start, end, members in spans:
        if placed + end - start > buf.size:
            raise ValueError(f"fields {', '.join(names)} need {placed + end - start} bytes; the slot has {buf.size}")
        kread(p, buf, placed, end - start, src, start)
        for name in members:
            at[name] = placed + k.offsets[name][0] - start
        placed += (end - start + 7) & ~7
    return at


def field_in(buf, at, k, name, type=None, extra=0):
    """The memory of field `name` read into `buf` by kread_fields (`at` is what it returned);
    or a `type` at `extra` bytes into it."""
    return buf.mem(at[name] + extra, type or _LOAD[k.size(name)])


def without_fin(p, received, state, fin_states):
    """`received` (a register holding tcp_sock.bytes_received, which counts the peer's FIN as
    one sequence number) less that FIN when `state` (a register) is one of the states whose
    bits `fin_states` sets: those the FIN arrived in. r1 clobbered; neither argument is r1."""
    p.r1 = fin_states
    p.r1 >>= state
    p.r1 &= 1
    with p.If(received >= p.r1):
        received -= p.r1


def typed_field(sk, k, name, type=None, extra=0):
    """The memory of kernel field `name` (or a `type` at `extra` bytes into it) of the struct a
    BTF-typed pointer register points at: a plain load, which the verifier checks against BTF
    and makes fault-safe (a NULL or stale pointer reads as zero)."""
    return sk.mem(k.offsets[name][0] + extra, type or _LOAD[k.size(name)])


def sock_addresses(p, k, dst, buf, sk, typed=False):
    """family, sport, dport, saddr, daddr of the struct sock at `sk` into `dst`, an EVENT or a
    CONN (a stack slot, or conn_at a register). IPv4 writes the first 4 bytes of each address,
    so the rest must be zero already.

    typed: `sk` is a BTF-typed pointer (tp_btf, fexit), read with plain loads; else with
    bpf_probe_read_kernel: one read for IPv4 (the sock_common fields lie together), two for
    IPv6, into `buf`."""
    if typed:
        def field(name, type=None, extra=0):
            return typed_field(sk, k, name, type, extra)
    else:
        got = kread_fields(p, k, buf, sk, SOCK_V4_FIELDS)  # rebound for IPv6 below

        def field(name, type=None, extra=0):
            return field_in(buf, got, k, name, type, extra)
    p.r1 = field("sk_num")  # host order
    dst.sport = p.r1
    p.r1 = field("sk_dport")  # network order
    p.be(p.r1, 16)
    dst.dport = p.r1
    p.r1 = field("sk_rcv_saddr")
    dst.saddr.u32[0] = p.r1
    p.r1 = field("sk_daddr")
    dst.daddr.u32[0] = p.r1
    p.r1 = field("sk_family")
    dst.family = p.r1
    with p.If(p.r1 == AF_INET6):
        if not typed:
            got = kread_fields(p, k, buf, sk, SOCK_V6_FIELDS)
        for addr, name in (("saddr", "sk_v6_rcv_saddr"), ("daddr", "sk_v6_daddr")):
            for half in (0, 8):
                p.r1 = field(name, "u64", half)
                dst[addr].u64[half] = p.r1


def fd_file(p, k, buf, scratch, fd, ret=0):
    """scratch.u64[0] = the struct file * of the current task's fd in register `fd` (r7..r9;
    clobbered): current->files->fdt->fd[fd], read with bpf_probe_read_kernel; the program
    ends (returning `ret`) for an fd past the table. buf: 32 spare stack bytes; r6 clobbered."""
    p.call("get_current_task")
    p.r6 = p.r0
    kread(p, scratch, 0, 8, p.r6, k.task_files)
    kread(p, scratch, 0, 8, scratch.u64[0], k.files_fdt)
    p.r6 = scratch.u64[0]
    at = kread_fields(p, k, buf, p.r6, ("fdt_max_fds", "fdt_fd"))
    p.r1 = field_in(buf, at, k, "fdt_max_fds")
    with p.If(fd >= p.r1):  # closed and reused by another thread already: nothing to trust
        p.exit(ret)
    p.r6 = field_in(buf, at, k, "fdt_fd")  # struct file **fd
    fd <<= 3
    p.r6 += fd
    kread(p, scratch, 0, 8, p.r6, 0)  # struct file *


def current_in_cgroup(p, cgroups, key, pid=0):
    """Leave the program unless the current task is in the cgroup held at slot 0 of the cgroup
    array `cgroups`, or below it (and, with `pid`, belongs to that process); key.u64[0] = its
    pid_tgid."""
    p.call("current_task_under_cgroup", cgroups, 0)
    with p.If(p.r0 != 1):
        p.exit(0)
    p.call("get_current_pid_tgid")
    key.u64[0] = p.r0
    if pid:
        p.r0 >>= 32
        with p.If(p.r0 != pid):
            p.exit(0)


def sock_field(p, k, scratch, sk, name, typed=False):
    """r1 = kernel field `name` (its width from BTF) of the struct sock in register `sk`.
    scratch: 8 spare stack bytes (untyped: bpf_probe_read_kernel lands there); typed: see
    sock_addresses."""
    if typed:
        p.r1 = typed_field(sk, k, name)
    else:
        size = k.size(name)
        kread(p, scratch, 0, size, sk, k.offsets[name][0])
        p.r1 = scratch.mem(0, _LOAD[size])


def exit_unless_tcp(p, k, scratch, sk, typed=False):
    """Leave the program unless the struct sock at `sk` is a TCP one (sk_protocol, whose width
    changed in 5.6). scratch: 8 spare stack bytes; typed: see sock_addresses."""
    sock_field(p, k, scratch, sk, "sk_protocol", typed)
    with p.If(p.r1 != IPPROTO_TCP):
        p.exit(0)


def sock_owner(p, k, ev, scratch, sk, typed=False):
    """ev.cgroup_id and ev.netns from the struct sock in register `sk` (typed: see
    sock_addresses).

    The cgroup is the one the socket was created in (sk_cgrp_data; a passive
    child inherits its listener's), the netns is its namespace's cookie: both
    right in softirq context, where the current task is unrelated."""
    if typed:
        p.r1 = typed_field(sk, k, "sk_cgroup")
        p.r1 = typed_field(p.r1, k, "cgroup_kn")
        p.r1 = typed_field(p.r1, k, "kn_id")
        ev.cgroup_id = p.r1
    else:
        kread(p, scratch, 0, 8, sk, k.sk_cgroup)
        kread(p, scratch, 0, 8, scratch.u64[0], k.cgroup_kn)
        kread(p, ev, ev.offsetof("cgroup_id"), 8, scratch.u64[0], k.kn_id)
    sock_netns(p, k, ev, scratch, sk, typed)


def sock_netns(p, k, ev, scratch, sk, typed=False):
    """ev.netns: the cookie of the network namespace of the struct sock in register `sk`."""
    if typed:
        p.r1 = typed_field(sk, k, "sk_net")
        p.r1 = typed_field(p.r1, k, "net_cookie")
        ev.netns = p.r1
    else:
        kread(p, scratch, 0, 8, sk, k.sk_net)
        kread(p, ev, ev.offsetof("netns"), 8, scratch.u64[0], k.net_cookie)


# Fields an EVENT and a CONN share (each the same type in both; a CONN is TCP's: no protocol)
SHARED_FIELDS = ("cgroup_id", "netns", "pid", "tid", "sport", "dport", "family", "flags",
                 "retransmits", "connect_us", "resets_sent", "resets_received")
SHARED_ARRAYS = ("comm", "saddr", "daddr")  # 16 bytes each: two u64 moves


def copy_shared(p, src, dst):
    """Every field EVENT and CONN share, from one to the other (stack slots, or conn_at a
    register)."""
    for name in SHARED_FIELDS:
        p.r1 = src[name]
        dst[name] = p.r1
    for name in SHARED_ARRAYS:
        for half in (0, 8):
            p.r1 = src[name].u64[half]
            dst[name].u64[half] = p.r1


def sock_number(p, sk, key, sk_type):
    """r1 = the address in register `sk` as a number (what slot_of multiplies); key gets the
    address (8 stack bytes). sk_type says what `sk` is:

    "scalar"   a number already: a raw tracepoint's argument, a kprobe register, a probe read
    "pointer"  a pointer the verifier allows no arithmetic on (a tp_btf or fexit argument, a
               cgroup hook's ctx->sk): added atomically to a zeroed stack word, which the
               verifier then takes for plain bytes (privileged programs may store pointers).
               No helper call, and no per-CPU word another task's run could overwrite"""
    if sk_type == "scalar":
        key.u64[0] = sk
        p.r1 = sk
    elif sk_type == "pointer":
        key.u64[0] = 0
        key.u64[0] += sk
        p.r1 = key.u64[0]
    else:
        raise ValueError(f"sk_type {sk_type!r}: expected scalar or pointer")


def slot_of(p, maps, scratch):
    """r0 = the conn_slots slot of the socket address in r1 (a number): the top bits of
    r1 * SLOT_HASH (NULL only as far as the verifier knows). scratch: 4 spare stack bytes."""
    fib_index(p, maps.slot_bits, scratch)
    p.call("map_lookup_elem", maps.conn_slots, scratch)


def fib_hash(value, bits):
    """The top `bits` bits of value * SLOT_HASH (mod 2**64), or 0 for bits=0: what fib_index computes."""
    return (value * SLOT_HASH % 2**64) >> (64 - bits) if bits else 0


def fib_index(p, bits, scratch):
    """scratch (u32) = fib_hash(r1, bits) (r1, r2 clobbered)."""
    if bits:
        fib_in_r1(p, bits)
        scratch.u32[0] = p.r1
    else:
        scratch.u32[0] = 0


def fib_in_r1(p, bits):
    """r1 = fib_hash(r1, bits), bits > 0 (r2 clobbered)."""
    p.r2 = SLOT_HASH
    p.r1 *= p.r2
    p.r1 >>= 64 - bits


def find_conn(p, maps, sk, key, scratch, sk_type, slot=None, then_conns=True):
    """r7 = the map entry (CONN) of the struct sock in register `sk`, or 0: in its slot when the
    slot holds it, else in conns (there it may be an ended one: state CLOSE). key: 8 stack
    bytes (conns' key, left set); scratch: 4; sk_type: see sock_number; slot: 8 stack bytes
    that get the slot's address (for claim_slot and end_slot), or None. then_conns=False: the
    slot only; the caller may then look in conns with lookup_conns."""
    p.r7 = 0
    if maps.slots:
        sock_number(p, sk, key, sk_type)
        with p.If(p.r1 != 0):
            slot_of(p, maps, scratch)
            with p.If(p.r0 != 0):
                if slot is not None:
                    slot.u64[0] = p.r0
                p.r1 = p.r0.u64[0]
                with p.If(p.r1 == sk):
                    p.r7 = p.ptr(p.r0, records.CONN_SLOT).addr("conn")
    else:
        key.u64[0] = sk
    if then_conns:
        lookup_conns(p, maps, key)


def store_conn(p, maps, dst, conn, key):
    """The CONN in stack slot `conn` into the slot register `dst` points at (one the socket
    claimed), or, when dst is 0, into conns at `key` (over an ended entry there). r2 clobbered."""
    with p.If(dst != 0):
        for off in range(0, CONN_SIZE, 8):
            p.r2 = conn.u64[off]
            dst.u64[off] = p.r2
    with p.Else():
        p.call("map_update_elem", maps.conns, key, conn, 0)


def lookup_conns(p, maps, key):
    """r7 = the conns entry at `key` (find_conn's), or 0, unless r7 already is an entry."""
    with p.If(p.r7 == 0):
        p.call("map_lookup_elem", maps.conns, key)
        p.r7 = p.r0


def claim_slot(p, slot, sk):
    """r4 = the CONN in the slot at `slot` (8 stack bytes from find_conn, 0 for none), now the
    socket in register `sk`'s, or 0 when another live connection holds it. Free is unused (0)
    or ended (SLOT_ENDED); the swap fails if another CPU claimed the slot since we read it."""
    p.r4 = 0
    p.r1 = slot.u64[0]
    with p.If(p.r1 != 0):
        p.r3 = p.r1.u64[0]  # what we expect to replace
        p.r2 = p.r3
        p.r2 &= records.SLOT_ENDED
        with p.If(p.r3 == 0):
            p.r2 = 1
        with p.If(p.r2 != 0):
            p.r0 = p.r3
            p.r2 = sk
            p.cmpxchg(p.r1.u64[0], p.r2)
            with p.If(p.r0 == p.r3):
                p.r4 = p.ptr(p.r1, records.CONN_SLOT).addr("conn")


def end_slot(p, slot, sk):
    """r0 = 1 if the slot at `slot` held the socket in register `sk`, now marked ended (free for
    the next socket there), else 0 (the connection is in conns)."""
    p.r0 = 0
    p.r1 = slot.u64[0]
    with p.If(p.r1 != 0):
        p.r2 = p.r1.u64[0]
        with p.If(p.r2 == sk):
            p.r2 |= records.SLOT_ENDED
            p.r1.u64[0] = p.r2
            p.r0 = 1


def mark_conn(p, conn, flag):
    """flags |= flag in the CONN that register `conn` points at."""
    conn = conn_at(p, conn)
    p.r1 = conn.flags
    p.r1 |= flag
    conn.flags = p.r1


def task_reader(kernel, prog_type):
    """`kernel` when programs of `prog_type` may call bpf_get_current_task_btf (Linux 5.11;
    cgroup programs later: probed), for current_task; else None."""
    if kernel.funcs.get("bpf_get_current_task_btf") is None:
        return None
    if prog_type == "tracing":  # (a tracing program has every tracing helper; it cannot be probed
        return kernel           # without a target)
    return kernel if features.has(f"helper.{prog_type}.get_current_task_btf") else None


def current_task(p, dst, cgroup=True, task=None):
    """pid, tid, comm (and cgroup_id) of the current task into `dst`, an EVENT or a CONN (a
    stack slot, or conn_at r6..r9 pointing at map memory). r0-r5 clobbered.

    task: task_reader()'s answer. Given, comm is two loads from bpf_get_current_task_btf's
    task_struct (NUL-padded there, as the helper's copy is), where bpf_get_current_comm runs a
    strscpy (docs/benchmarks.md). A char array is a scalar to the verifier: the loads cost it
    nothing, unlike a pointer field of a trusted pointer (conn_state._event_from_sock)."""
    p.call("get_current_pid_tgid")
    dst.tid = p.r0
    p.r0 >>= 32
    dst.pid = p.r0
    if task is not None:
        p.call("get_current_task_btf")
        for half in (0, 8):
            p.r1 = typed_field(p.r0, task, "task_comm", "u64", half)
            dst.comm.u64[half] = p.r1
    else:
        p.r1 = dst.addr("comm")
        p.call("get_current_comm", p.r1, 16)
    if cgroup:
        p.call("get_current_cgroup_id")
        dst.cgroup_id = p.r0


def metrics_getter(p, map, zeros, name):
    """Subprogram `name`(r1 = key) -> r0 = its METRICS value in `map`, created zeroed if absent
    (or NULL). The zeros come from `zeros` (a METRICS no program writes): on the stack they
    would take more than half of what a program and its calls may use."""
    with p.function(name):
        key = p.stack.alloc(8)
        key.u64[0] = p.r1
        p.call("map_lookup_elem", map, key)
        with p.If(p.r0 != 0):
            p.exit()
        this_cpu(p, zeros, p.stack.alloc(4))  # (the one element)
        with p.If(p.r0 == 0):
            p.exit()
        p.call("map_update_elem", map, key, p.r0, BPF_NOEXIST)
        p.call("map_lookup_elem", map, key)
        p.exit()


def define_metrics(p, maps, netns=True):
    """The getter subprograms `account` calls (the verifier rejects one that is never called)."""
    metrics_getter(p, maps.metrics_cgroup, maps.zero_metrics, "cgroup_metrics")
    if netns:
        metrics_getter(p, maps.metrics_netns, maps.zero_metrics, "netns_metrics")


def add_u64(p, counter, value, atomic):
    """counter (u64 memory: a field) += r1 (value moved there first: int, register or memory).

    atomic=False is a plain load, add, store: for per-CPU memory whose only writer is a
    program the kernel never runs twice at once on one CPU (a raw tracepoint's: preemption
    is off and a nested run is skipped, counted in recursion_misses). Cheaper than a locked
    add, which costs tens of nanoseconds in a VM. atomic=True otherwise: a cgroup hook runs
    preemptibly, another task's run of it can interleave on the same CPU."""
    p.r1 = value
    if atomic:
        p.atomic_add(counter, p.r1)
    else:
        p.r2 = counter
        p.r2 += p.r1
        counter.set(p.r2)


def account(p, keys, updates, getters=("cgroup_metrics", "netns_metrics"), atomic=True, caches=(), scratch=None,
            bump=None):
    """Add to METRICS fields of this CPU's entries keyed by `keys` (memory or registers, one per
    getter). updates: [(METRICS field, int or memory to add)]; atomic: see add_u64 (each field
    has one writer program). caches: the per-CPU arrays before the getters' maps (one per getter,
    see cached_metrics: only for a program that runs with preemption off), with scratch: 4 spare
    stack bytes. bump: (field, index in memory, count): the index-th of `count` u64s from
    `field` += 1 (a histogram's bucket_index; one of several reasons' counters), nothing when
    the index is past them."""
    for getter, k, cache in itertools.zip_longest(getters, keys, caches):
        if cache is None:
            p.r1 = k
            p.call_local(getter)
        else:
            cached_metrics(p, cache, getter, k, scratch)
        with p.If(p.r0 != 0):
            metrics = p.ptr(p.r0, METRICS)
            for field, value in updates:
                add_u64(p, metrics[field], value, atomic)
            if bump is not None:
                field, index, count = bump
                p.r2 = index
                with p.If(p.r2 < count):  # (bounds the offset for the verifier)
                    p.r2 <<= 3
                    p.r0 += p.r2
                    add_u64(p, metrics.u64[metrics.offsetof(field)], 1, atomic)  # (r0 moved on to the one)


def bucket_index(p, value, bounds, dst):
    """dst (memory) = how many of the ascending `bounds` `value` (memory or register, not
    r1-r3; below 2**63, as microseconds are) exceeds: its histogram bucket (Prometheus' le: a
    value on a bound counts in that bucket). Branchless: value > bound is the sign bit of
    bound - value, so the verifier follows one path with the index in [0, len(bounds)], not
    one path per bucket through the rest of the program (a compare per bound tripled the
    state program's verification: docs/benchmarks.md)."""
    p.r1 = value
    p.r2 = 0
    for bound in bounds:
        p.r3 = bound
        p.r3 -= p.r1
        p.r3 >>= 63
        p.r2 += p.r3
    dst.u64[0] = p.r2


def cached_metrics(p, cache, getter, key, scratch):
    """r0 = this CPU's METRICS of `key` (memory): in its slot of `cache` (a per-CPU METRICS_CACHE,
    the lookup inlined: no call) when the slot is free (taken now) or holds the key, else
    through `getter` from the hash map (or NULL). Taking a slot is a plain store: on its CPU
    the slot's one writer is a program that runs with preemption off."""
    this_cpu(p, cache, scratch)
    with p.If(p.r0 != 0):
        p.r1 = key
        fib_in_r1(p, CACHE_BITS)
        p.r1 *= records.METRICS_CACHED.sizeof()
        p.r0 += p.r1
        p.r1 = p.r0.u64[0]
        p.r2 = key
        with p.If(p.r1 == 0):
            p.r0.u64[0] = p.r2
            p.r1 = p.r2
        with p.If(p.r1 == p.r2):
            p.r0 = p.ptr(p.r0, records.METRICS_CACHED).addr("metrics")
        with p.Else():
            p.r1 = p.r2
            p.call_local(getter)


def this_cpu(p, table, scratch):
    """r0 = this CPU's value of `table`, a per-CPU array of one element (or NULL); scratch: 4
    spare stack bytes (the key)."""
    scratch.u32[0] = 0
    p.call("map_lookup_elem", table, scratch)


def _stat_at(p, slot):
    """The offset of STATS[slot] from r0 (this CPU's STATS): slot an int, or a register (bounded
    below NSTATS) added to r0 (r2 clobbered)."""
    if isinstance(slot, int):
        return slot * 8
    p.r2 = slot
    p.r2 <<= 3
    p.r0 += p.r2
    return 0


def stat_add(p, maps, scratch, slot, value, atomic=True):
    """stats[slot] += value on this CPU. slot: int or register; value: int, register or memory
    (read after the lookup: not r0..r5); scratch: 4 spare stack bytes (clobbered); atomic: see
    add_u64."""
    this_cpu(p, maps.stats, scratch)
    with p.If(p.r0 != 0):
        add_u64(p, p.r0.u64[_stat_at(p, slot)], value, atomic)


def stat_max(p, maps, scratch, slot, value):
    """stats[slot] = max(stats[slot], value) on this CPU (slot: int; value: memory)."""
    this_cpu(p, maps.stats, scratch)
    with p.If(p.r0 != 0):
        p.r1 = p.r0.u64[slot * 8]
        p.r2 = value
        with p.If(p.r2 > p.r1):
            p.r0.u64[slot * 8] = p.r2


def remember(p, maps, ev, scratch, table=None):
    """Copy the EVENT in stack slot `ev` into this CPU's next slot of `table` (a RECENT; "recent" by
    default: what the report lists), in place: the verifier inlines an array lookup, where
    map_update_elem is a helper call, an indirect call and a memcpy (on each close)."""
    this_cpu(p, maps.recent if table is None else table, scratch)
    with p.If(p.r0 != 0):
        recent = p.ptr(p.r0, records.RECENT)
        p.r1 = recent.next
        p.r2 = p.r1
        p.r2 += 1
        recent.next = p.r2
        p.r1 &= records.RECENT_SLOTS - 1
        p.r1 *= EVENT.sizeof()
        p.r0 += p.r1  # recent.events[0] is now the slot's event
        for off in range(0, EVENT.sizeof(), 8):
            p.r1 = ev.u64[off]
            recent.events[0].u64[off] = p.r1


def emit(p, maps, ev, ctx, scratch, count=True):
    """Count the EVENT in stack slot `ev` (in stats[STAT_EVENTS], unless count=False: the state
    program's events are its transitions) and, when streaming, send it; a failure counts in
    lost[LOST_EVENTS]. ctx: the context register (the perf buffer path needs it); scratch: 4 spare
    stack bytes.

    A refused event counts in lost[LOST_EVENTS] when the ring is over half full then (full at the
    refusal: the reader had fallen behind, a larger ring or a faster reader keeps it); else the
    kernel failed the reservation with room left (a few a second under load), and the event goes
    to this CPU's "spill" ring, where Monitor.spilled() finds it."""
    if count:
        stat_add(p, maps, scratch, records.STAT_EVENTS, 1)
    if not maps.stream:
        return
    size = EVENT.sizeof()
    if maps.ringbuf:
        p.call("ringbuf_query", maps.events, BPF_RB_AVAIL_DATA)
        p.r4 = BPF_RB_NO_WAKEUP
        with p.If(p.r0 == 0):
            p.r4 = BPF_RB_FORCE_WAKEUP
        with p.If(p.r0 >= WAKEUP_BYTES):
            p.r4 = BPF_RB_FORCE_WAKEUP
        p.call("ringbuf_output", maps.events, ev, size, p.r4)
        with p.If(p.r0 != 0):
            p.call("ringbuf_query", maps.events, BPF_RB_RING_SIZE)
            p.r0 >>= 1
            scratch.u32[0] = p.r0  # (a ring is at most 1 GB: half of it fits)
            p.call("ringbuf_query", maps.events, BPF_RB_AVAIL_DATA)
            p.r1 = scratch.u32[0]
            with p.If(p.r0 < p.r1):
                remember(p, maps, ev, scratch, table=maps.spill)
            with p.Else():
                count_lost(p, maps, scratch, records.LOST_EVENTS)
    else:
        p.call("perf_event_output", ctx, maps.events, BPF_F_CURRENT_CPU, ev, size)
        with p.If(p.r0 != 0):
            count_lost(p, maps, scratch, records.LOST_EVENTS)


def count_lost(p, maps, slot, which):
    """lost[which] += 1 on this CPU; `slot` is 4 spare stack bytes (clobbered)."""
    slot.u32[0] = which
    p.call("map_lookup_elem", maps.lost, slot)
    with p.If(p.r0 != 0):
        p.r1 = 1
        p.r0.u64[0] += p.r1
