"""Every layout the monitor's BPF programs and its user side share, defined once in construct:
integers in host byte order (BPF stores native words), every field at its natural alignment
with explicit padding, each size asserted below. The programs name their fields
(pybpf's named-field API reads these definitions); user space decodes with codecs derived
from them.

The per-CPU maps hold one element each, the whole table: the lookup the verifier inlines
loads the element's per-CPU pointer before the value, and with one element that is the same
word at every run; user space reads a whole table in one system call.

A connection is keyed by its struct sock's address (CONN_KEY.sock, EVENT.sock): the one value
every hook sees for a TCP socket without kprobes, unique while the socket lives (the next
socket at that address writes over an ended entry: programs/conn_state.py). A 5-tuple could
not key a connect() (no source port yet) and repeats across network namespaces.
EVENT.cookie is the socket cookie where the hook has one, for correlating with other tools.
"""
import socket

from construct import Array, Bytes, Int8un, Int16un, Int32un, Int64sn, Int64un, Padding, Struct

from pybpf.layout import codec

# ---- values the records carry ------------------------------------------------

# EVENT.kind ("existing": a connection open before the monitor started, newstate its state then)
EVENT_KINDS = {1: "connect", 2: "accept", 3: "state", 4: "close", 5: "udp", 6: "existing"}
EV_CONNECT, EV_ACCEPT, EV_STATE, EV_CLOSE, EV_UDP, EV_EXISTING = 1, 2, 3, 4, 5, 6

# TCP states as in the kernel's enum (include/net/tcp_states.h).
TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
    11: "CLOSING", 12: "NEW_SYN_RECV", 13: "BOUND_INACTIVE",
}
TCP_STATE_IDS = {name: number for number, name in TCP_STATES.items()}
NSTATES = 16  # state numbers fit 4 bits: STAT_TRANSITIONS has NSTATES * NSTATES slots

# EVENT.flags / CONN.flags bits
F_NETNS_INODE = 1 << 0  # .netns is the namespace's inode, not its cookie (hook had no netns cookie)
F_OWNER_FROM_ACCEPT = 1 << 1  # pid/tid/comm/cgroup are the accept()ing task's, not the current one
F_OWNER_FROM_CLOSE = 1 << 2  # ... the closing task's: a passive connection no accept hook saw
F_PASSIVE = 1 << 3  # the connection was accepted from a listener (its first state SYN_RECV), not connect()ed
F_OLDER = 1 << 4  # open before the monitor started, found by programs/existing.py: start_ns is when it was
# found, the kernel knows no owner until it is accepted or closed (Monitor looks in /proc), and the
# direction unless F_PASSIVE
F_ACCEPTED_BEFORE = 1 << 5  # with F_OLDER | F_PASSIVE: accept()ed before the monitor started (its local
# port is a listener's in its netns): the acceptor is unknown, and no later getpeername() is an accept
F_FOUND_LATE = 1 << 6  # followed from a later transition, its opening unseen (a run the kernel skipped, an
# LRU eviction: programs/conn_state._found_late): start_ns is when it was found, the owner is its closer or
# unknown, and the direction unknown
F_CLOSE_UNSEEN = 1 << 7  # a close event the state program sent for a connection whose close run the kernel
# skipped, when a new socket took its entry (programs/conn_state._count_unseen_close): its bytes as of the
# last walk, no duration

# EVENT.failure: why a connect() ended before ESTABLISHED (the socket's sk_err at the close)
FAIL_REASONS = {1: "refused", 2: "timeout", 3: "other"}  # refused: an RST answered the SYN (ECONNREFUSED);
# timeout: the SYN retries ran out (ETIMEDOUT); other: an ICMP error, or closed by its owner first
FAIL_REFUSED, FAIL_TIMEOUT, FAIL_OTHER = 1, 2, 3

# Histogram upper bounds (le), microseconds, fixed: the same buckets on every host, so that
# Prometheus can sum them across a fleet. One more bucket counts what exceeds the last.
CONNECT_BUCKETS_US = (100, 500, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000, 5_000_000, 10_000_000)
RTT_BUCKETS_US = (10, 50, 100, 500, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000)
HISTOGRAM_BUCKETS = len(CONNECT_BUCKETS_US) + 1
assert len(RTT_BUCKETS_US) + 1 == HISTOGRAM_BUCKETS

AF_NAMES = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}
PROTOCOLS = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp"}

# Slots of the "lost" array (BPF_MAP_TYPE_PERCPU_ARRAY: user space sums the CPUs).
LOST_SLOTS = {
    0: "events",  # the ring buffer was full (more than half full at the refusal), or perf output failed
    1: "conns",  # a close or state change found no conn entry (evicted from the LRU): bytes/duration unknown
}
LOST_EVENTS, LOST_CONNS = 0, 1
# An event the ring buffer refused while under half full (the kernel failed the reservation itself;
# why is not established: perhaps its lock, since 6.15 a resilient spin lock that can give up) goes
# to the "spill" map, a RECENT per CPU: lost only when written over before user space read it

# Slots of STATS, the "stats" map's value (u64s per CPU; user space sums the CPUs, or takes the max
# for *_MAX): the summaries the report needs when events are not streamed to user space one by one.
STAT_EVENTS = 0  # records the connect and accept programs produced (streamed or only summarized);
# the state program's are its transitions, already counted below
STAT_DURATION_TOTAL = 1  # sum of closed connections' durations, ns
STAT_DURATION_MAX = 2  # longest closed connection on this CPU, ns
STAT_CLOSED_KEPT = 4  # ended connections' entries kept in "conns": +1 at a close, -1 when an opening
# reuses one; an entry often closes on one CPU and is reused on another, so the CPUs' values drift
# apart, but their sum (mod 2**64) is exact
STAT_CLOSED_UNSEEN = 5  # connections whose close the state program never saw (a run the kernel
# skipped), counted closed without a duration when a new socket takes their entry (user space
# adds those the live walks find gone first: monitor._Gone)
STAT_CLOSED_AT_DESTROY = 6  # closes the state program's skipped runs missed, ended with their exact
# bytes and duration when the socket was destroyed (programs/conn_destroy.py)
STAT_RESETS_UNOWNED = 7  # resets sent with no socket we follow (a SYN to a closed port, ...)
STAT_TRANSITIONS = 16  # + old * NSTATES + new: count of each TCP state transition
NSTATS = STAT_TRANSITIONS + 16 * 16
RECENT_SLOTS = 16  # RECENT: the last closes / UDP flows of a CPU, a ring
METRICS_CACHE_SLOTS = 64  # METRICS_CACHE: per CPU and key kind; a power of two (fib_index), and
# 64 METRICS_CACHED (19 KiB) stay within the 32 KiB a per-CPU map value may have

# ---- layouts -----------------------------------------------------------------

u8, u16, u32, u64, s64 = Int8un, Int16un, Int32un, Int64un, Int64sn

# A connection event: one ring buffer (or perf buffer) record
EVENT = Struct(
    "ts_ns" / u64,  # bpf_ktime_get_ns() (CLOCK_MONOTONIC)
    "cgroup_id" / u64,  # cgroup v2 id of the owning task
    "netns" / u64,  # netns cookie, or inode when flags has F_NETNS_INODE
    "sock" / u64,  # struct sock address: the CONN_KEY of this connection
    "cookie" / u64,  # socket cookie, 0 when the hook has none
    "bytes_sent" / u64,  # tcp_sock.bytes_acked (TCP) / payload bytes (UDP); on close and state events
    "bytes_received" / u64,  # tcp_sock.bytes_received
    "duration_ns" / u64,  # close: now - CONN.start_ns; else 0
    "pid" / u32,  # tgid
    "tid" / u32,
    "comm" / Bytes(16),  # NUL-padded task comm
    "saddr" / Bytes(16),  # network order; IPv4 in the first 4 bytes, rest zero
    "daddr" / Bytes(16),
    "sport" / u16,  # host order
    "dport" / u16,  # host order
    "family" / u16,  # AF_INET 2, AF_INET6 10
    "protocol" / u8,  # IPPROTO_TCP 6, IPPROTO_UDP 17
    "kind" / u8,  # EV_*
    "oldstate" / u8,  # TCP state numbers; 0 when the event is no state change
    "newstate" / u8,
    "flags" / u8,  # F_* bits
    "failure" / u8,  # close of a connect() that never reached ESTABLISHED: FAIL_* (0: none)
    "retransmits" / u32,  # segments retransmitted after the handshake (tcp:tcp_retransmit_skb), so far
    "srtt_us" / u32,  # close: tcp_sock's smoothed RTT, microseconds (0: no sample)
    "connect_us" / u32,  # handshake time: SYN_SENT (client) or SYN_RECV (server) to ESTABLISHED
    "resets_sent" / u16,  # TCP resets this connection sent (tcp:tcp_send_reset) and received, so far;
    "resets_received" / u16,  # an abort's reset, sent just after its close, is in the close event
    Padding(4),
)

CONN_KEY = Struct("sock" / u64)

# What every state transition reads or writes (state, flags, pid) comes first: in a slot it
# shares the first cache line with the slot's sock word.
CONN = Struct(
    "state" / u8,  # current TCP state; CLOSE: ended, the entry kept for the next socket at this address
    "flags" / u8,  # F_* bits, as in EVENT
    "family" / u16,
    "sport" / u16,
    "dport" / u16,
    "pid" / u32,
    "tid" / u32,
    "start_ns" / u64,  # first sight (connect / SYN_SENT / accept)
    "cgroup_id" / u64,
    "netns" / u64,
    "bytes_sent" / u64,  # so far, as of the last Monitor.refresh_live walk (programs/live_conns.py)
    "bytes_received" / u64,
    "comm" / Bytes(16),
    "saddr" / Bytes(16),
    "daddr" / Bytes(16),
    "resets_sent" / u16,  # as EVENT's (a CONN is TCP's: no protocol field)
    "resets_received" / u16,
    "retransmits" / u32,  # as EVENT's
    "connect_us" / u32,
    "srtt_us" / u32,  # as of the last live walk (programs/live_conns.py)
)

# conn_slots: a socket's slot is fixed by its address (conn_common.slot_of); it holds its CONN
# unless another live connection holds the slot (then the CONN is in "conns"). 128 bytes, and the
# mmapable array's values start on a page: each slot is two whole cache lines, and a transition
# of a followed connection touches only the first.
CONN_SLOT = Struct(
    "sock" / u64,  # 0: never used; bit SLOT_ENDED set: the connection ended, the slot is free
    "conn" / CONN,
)
SLOT_ENDED = 1  # struct sock addresses are aligned: bit 0 is free to mark an ended slot

CGROUP_KEY = Struct("cgroup_id" / u64)
NETNS_KEY = Struct("netns" / u64)

METRICS = Struct(  # totals of what ended; what is live is in "conns" (opened = closed + live)
    "closed" / u64,  # transitions to TCP_CLOSE of known connections
    "bytes_sent" / u64,  # summed at close from tcp_sock counters
    "bytes_received" / u64,
    "udp" / u64,  # UDP flows (connected UDP sockets / first datagram)
    # health: counted as it happens, not at the close
    "connects" / u64,  # connect()s that reached ESTABLISHED
    "failed_refused" / u64,  # connect()s ended by FAIL_* (the order of FAIL_REASONS)
    "failed_timeout" / u64,
    "failed_other" / u64,
    "retransmits" / u64,  # tcp:tcp_retransmit_skb of followed connections
    "resets_sent" / u64,  # tcp:tcp_send_reset, tcp:tcp_receive_reset of followed connections
    "resets_received" / u64,
    "connect_sum_us" / u64,  # connect time of the connects: the histogram's sum
    "connect_buckets" / Array(HISTOGRAM_BUCKETS, u64),  # ... by CONNECT_BUCKETS_US (last: +Inf)
    "rtt_sum_us" / u64,  # smoothed RTT at the close of each connection that had one
    "rtt_buckets" / Array(HISTOGRAM_BUCKETS, u64),  # ... by RTT_BUCKETS_US (last: +Inf)
)

# cache_cgroup, cache_netns: this CPU's entry for a key is at a slot fixed by the
# key (conn_common.cached_metrics); a key whose slot another key holds goes to the hash map.
METRICS_CACHED = Struct(
    "key" / u64,  # the cgroup id or netns cookie; 0 with zero metrics: never used
    "metrics" / METRICS,
)

METRICS_CACHE = Array(METRICS_CACHE_SLOTS, METRICS_CACHED)
STATS = Array(NSTATS, u64)
RECENT = Struct(
    "next" / u64,  # the slot the next one goes to (mod RECENT_SLOTS)
    "events" / Array(RECENT_SLOTS, EVENT),
)

LOST_KEY = u32
LOST_VALUE = u64

# `listeners` (programs/existing.py): a listening port and its namespace
LISTENER_KEY = Struct(
    "netns" / u64,  # as EVENT.netns
    "port" / u16,  # host order
    Padding(6),
)

# What the walk writes (bpf_seq_write) for each connection it entered: user space finds its
# owner by the socket's inode, as ss -p does (bpfhook.procfs)
OLDER_ENTERED = Struct(
    "sock" / u64,  # the struct sock's address: the connection's key (decode_conn's sock)
    "inode" / u64,  # its socket inode, 0 while it waits in an accept queue (no process holds it)
)

# What the task walk (programs/task_netns.py) writes for each process (and each thread in
# another namespace than its process's): where the monitor finds every network namespace in
# use without a /proc scan
TASK_NETNS = Struct(
    "netns_ino" / u32,  # its network namespace's inode number (what stat() of /proc/PID/ns/net says)
    "pid" / u32,  # the kernel's pid (a thread's own id: /proc/TID/ns/net is its namespace)
)

_SIZES = {"EVENT": (EVENT, 152), "CONN_KEY": (CONN_KEY, 8), "CONN": (CONN, 120),
          "CONN_SLOT": (CONN_SLOT, 128),
          "CGROUP_KEY": (CGROUP_KEY, 8), "NETNS_KEY": (NETNS_KEY, 8), "METRICS": (METRICS, 296),
          "METRICS_CACHED": (METRICS_CACHED, 304), "METRICS_CACHE": (METRICS_CACHE, 304 * METRICS_CACHE_SLOTS),
          "STATS": (STATS, 8 * NSTATS), "RECENT": (RECENT, 8 + 152 * RECENT_SLOTS),
          "LISTENER_KEY": (LISTENER_KEY, 16), "OLDER_ENTERED": (OLDER_ENTERED, 16),
          "TASK_NETNS": (TASK_NETNS, 8)}


# ---- offsets, derived from the layouts ---------------------------------------

def fields(layout):
    """[(name, offset, size)] of a Struct's named fields, padding left out (an Array has none: its
    element is a layout of its own)."""
    out, offset = [], 0
    for sub in getattr(layout, "subcons", ()):
        size = sub.sizeof()
        if sub.name is not None:
            out.append((sub.name, offset, size))
        offset += size
    return out


def sizeof(layout, name=None):
    """Size of a layout, or of one of its fields."""
    if name is None:
        return layout.sizeof()
    for field, _offset, size in fields(layout):
        if field == name:
            return size
    raise KeyError(f"layout has no field {name!r}")


def flat_struct(layout):
    """The one struct.Struct that pybpf.layout.codec flattens `layout` into: for hot paths that
    unpack a record's head in place (unpack_from) or pack one from values, without a dict."""
    segments = getattr(codec(layout), "segments", ())
    if len(segments) != 1:
        raise ValueError(f"{layout} does not flatten into one struct (byte orders mixed, or not flat)")
    return segments[0][0]


def _check(name, layout, size):
    """The size the C side expects, and every scalar at its natural alignment."""
    assert layout.sizeof() == size, f"{name} is {layout.sizeof()} bytes, want {size}"
    assert size % 8 == 0, f"{name}: size {size} is not a multiple of 8"
    for field, offset, field_size in fields(layout):
        align = 1 if field_size == 16 else min(field_size, 8)  # 16 = byte arrays
        assert offset % align == 0, f"{name}.{field} at {offset} is not {align}-aligned"


for _name, (_layout, _size) in _SIZES.items():
    _check(_name, _layout, _size)


# ---- decoding ---------------------------------------------------------------

EVENT_CODEC = codec(EVENT)  # flattened to struct.Struct: the ring buffer hot path
CONN_KEY_CODEC = codec(CONN_KEY)
CONN_CODEC = codec(CONN)
METRICS_CODEC = codec(METRICS)
OLDER_ENTERED_CODEC = codec(OLDER_ENTERED)
TASK_NETNS_CODEC = codec(TASK_NETNS)


def address(family, raw):
    """An address field (16 bytes) as text; '' for unknown families."""
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return ""


def pack_address(text):
    """Text address -> (family, 16-byte field), the inverse of address()."""
    if ":" in text:
        return socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text)
    return socket.AF_INET, socket.inet_pton(socket.AF_INET, text) + bytes(12)


def comm(raw):
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def state_name(number):
    """'ESTABLISHED' for 1, '' for 0 (no state), 'STATE_99' for unknown numbers."""
    if not number:
        return ""
    return TCP_STATES.get(number, f"STATE_{number}")


_STATE_NAMES = [state_name(n) for n in range(256)]
# EVENT.flags as decode_event's booleans, a dict per flags value (owner_from_proc: set by Monitor)
_FLAG_NAMES = (("netns_is_inode", F_NETNS_INODE), ("owner_from_accept", F_OWNER_FROM_ACCEPT),
               ("owner_from_close", F_OWNER_FROM_CLOSE), ("passive", F_PASSIVE), ("older", F_OLDER),
               ("accepted_before", F_ACCEPTED_BEFORE), ("found_late", F_FOUND_LATE), ("close_unseen", F_CLOSE_UNSEEN))
_FLAGS = [dict({name: bool(flags & bit) for name, bit in _FLAG_NAMES}, owner_from_proc=False) for flags in range(256)]
_TEXTS_MAX = 4096  # comms and addresses kept decoded (a busy stream repeats them); emptied when full
_comms, _addresses = {}, {}


def decode_event(record):
    """An EVENT (bytes, at the start of a record, or the codec's Container) as a plain dict: every
    field of the layout by its name (a field added there comes through as its number), those with
    meanings as names and text (kind as "event", flags as booleans, addresses). The stream's hot
    path: comms and addresses decoded once while they repeat."""
    if isinstance(record, (bytes, bytearray, memoryview)):
        values = EVENT_CODEC.values_from(record)
    else:
        values = [record[name] for name in EVENT_CODEC.names]
    e = dict(zip(EVENT_CODEC.names, values))
    kind, family = e.pop("kind"), e["family"]
    e.update(_FLAGS[e.pop("flags")])
    raw_comm = e["comm"]
    text = _comms.get(raw_comm)
    if text is None:
        if len(_comms) >= _TEXTS_MAX:
            _comms.clear()
        text = _comms[raw_comm] = comm(raw_comm)
    e["comm"] = text
    e["event"] = EVENT_KINDS.get(kind) or f"kind_{kind}"
    e["family"] = AF_NAMES.get(family) or str(family)
    e["protocol"] = PROTOCOLS.get(e["protocol"]) or str(e["protocol"])
    e["saddr"] = _address(family, e["saddr"])
    e["daddr"] = _address(family, e["daddr"])
    e["oldstate"] = _STATE_NAMES[e["oldstate"]]
    e["newstate"] = _STATE_NAMES[e["newstate"]]
    e["failure"] = FAIL_REASONS.get(e["failure"])
    return e


def _address(family, raw):
    """address(), kept while it repeats."""
    key = (family, raw)
    text = _addresses.get(key)
    if text is None:
        if len(_addresses) >= _TEXTS_MAX:
            _addresses.clear()
        text = _addresses[key] = address(family, raw)
    return text


def direction(event):
    """"in" (the server's end of an accepted connection), "out" (a connect()ed one), or None
    (not known: open before the monitor, no listener port to tell; found late; a listener): from a
    decoded event or connection (decode_event, decode_conn)."""
    if event.get("passive") or event.get("owner_from_accept") or event.get("event") == "accept":
        return "in"
    if event.get("older") or event.get("found_late") or "LISTEN" in (event.get("oldstate"), event.get("newstate")):
        return None
    return "out"


def decode_conn(sock, c):
    """A CONN map value (codec Container) of socket `sock` as an event-shaped dict (see decode_event),
    plus its current `state` and `start_ns`: a live connection as the report shows it."""
    family, flags = c["family"], c["flags"]
    passive = bool(flags & (F_PASSIVE | F_OWNER_FROM_ACCEPT))
    return {
        "ts_ns": c["start_ns"], "event": "accept" if passive else "connect", "pid": c["pid"], "tid": c["tid"],
        "comm": comm(c["comm"]), "cgroup_id": c["cgroup_id"], "netns": c["netns"],
        "netns_is_inode": bool(flags & F_NETNS_INODE), "owner_from_accept": bool(flags & F_OWNER_FROM_ACCEPT),
        "owner_from_close": bool(flags & F_OWNER_FROM_CLOSE), "passive": passive,
        "older": bool(flags & F_OLDER), "accepted_before": bool(flags & F_ACCEPTED_BEFORE),
        "found_late": bool(flags & F_FOUND_LATE), "close_unseen": False, "owner_from_proc": False,
        "family": AF_NAMES.get(family, str(family)), "protocol": "tcp",
        "saddr": address(family, c["saddr"]), "sport": c["sport"], "daddr": address(family, c["daddr"]),
        "dport": c["dport"], "oldstate": "", "newstate": "", "bytes_sent": c["bytes_sent"],
        "bytes_received": c["bytes_received"], "duration_ns": 0, "sock": sock, "cookie": 0,
        "state": state_name(c["state"]), "start_ns": c["start_ns"], "failure": None,
        "retransmits": c["retransmits"], "srtt_us": c["srtt_us"], "connect_us": c["connect_us"],
        "resets_sent": c["resets_sent"], "resets_received": c["resets_received"],
    }


METRICS_FIELDS = tuple(name for name, _offset, _size in fields(METRICS))
HISTOGRAMS = ("connect_buckets", "rtt_buckets")  # the METRICS fields that are arrays of buckets


def zero_metrics():
    """A METRICS dict of zeros (a list of zeros for each histogram's buckets)."""
    return {name: [0] * HISTOGRAM_BUCKETS if name in HISTOGRAMS else 0 for name in METRICS_FIELDS}


def add_metrics(total, m):
    """total += m, field by field (bucket by bucket): METRICS dicts or Containers."""
    for name in METRICS_FIELDS:
        if name in HISTOGRAMS:
            total[name] = [a + b for a, b in zip(total[name], m[name])]
        else:
            total[name] += m[name]
    return total


def decode_metrics(value):
    """A METRICS value as a dict: bytes or a Container, or a list of them (a per-CPU map's
    value, one per CPU), summed."""
    total = zero_metrics()
    for v in value if isinstance(value, list) else [value]:
        add_metrics(total, METRICS_CODEC.decode(v) if isinstance(v, (bytes, bytearray, memoryview)) else v)
    return total


def histogram_quantile(q, buckets, bounds):
    """The q-quantile (0..1) of a histogram (counts per bucket, the last +Inf; `bounds` the
    others' upper bounds), interpolated within its bucket as Prometheus' histogram_quantile
    does; None without observations. In +Inf: the last bound."""
    total = sum(buckets)
    if not total:
        return None
    rank, seen = q * total, 0
    for i, count in enumerate(buckets):
        if count and seen + count >= rank:
            if i == len(bounds):
                return bounds[-1]
            low = bounds[i - 1] if i else 0
            return low + (bounds[i] - low) * (rank - seen) / count
        seen += count
    return bounds[-1]


def describe():
    """The layouts as C-like text with offsets: what the BPF side codes against."""
    lines = []
    for name, (layout, size) in _SIZES.items():
        if not hasattr(layout, "subcons"):  # an Array of a struct or an integer
            lines.append(f"{name.lower()}[{layout.count}]: {layout.subcon.sizeof()} bytes each  /* {size} bytes */")
            continue
        lines.append(f"struct {name.lower()} {{  /* {size} bytes */")
        for field, offset, field_size in fields(layout):
            lines.append(f"    /* {offset:3d} */ {field}: {field_size} bytes")
        lines.append("};")
    return "\n".join(lines)
