"""The monitor's aggregation and its periodic text report.

Aggregator takes decoded events (records.decode_event dicts) and the per-cgroup metrics and
keeps what the report shows: active connections, state transitions, durations, recent
connections, per-cgroup totals. snapshot() freezes that into a Snapshot; render() and
render_final() are pure functions of a Snapshot, so the layout is tested without a kernel.
"""
import bisect
import collections
import dataclasses
import time

from bpfhook import records
from bpfhook.containers import Container

HOST = Container("host", "", "")
HEALTH_FIELDS = records.METRICS_FIELDS[records.METRICS_FIELDS.index("connects"):]
ARROWS = {"in": "<-", "out": "->", None: "--"}  # records.direction: inbound shows the server's end
RULE = "=" * 100
_OPENING_STATES = ("SYN_SENT", "SYN_RECV", "ESTABLISHED")


@dataclasses.dataclass
class CgroupTotals:
    cgroup_id: int
    container: Container
    opened: int = 0
    closed: int = 0
    active: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    udp: int = 0
    health: dict = dataclasses.field(default_factory=dict)  # the METRICS health fields (HEALTH_FIELDS)

    def failed(self):
        return sum(self.health.get(f"failed_{reason}", 0) for reason in records.FAIL_REASONS.values())

    def connect_quantile(self, q):
        """The q-quantile of this cgroup's connect times, microseconds (None: no connects)."""
        return records.histogram_quantile(q, self.health.get("connect_buckets") or [0], records.CONNECT_BUCKETS_US)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    time: float  # wall clock, seconds
    active: list  # connection dicts, oldest first
    by_state: dict  # state name -> active connections in it
    recent: list  # connection dicts, newest last
    cgroups: list  # CgroupTotals, busiest first
    transitions: dict  # (oldstate, newstate) -> count
    events: int
    lost: int
    closed: int
    duration_total_ns: int
    duration_max_ns: int
    closed_unseen: int = 0  # of `closed`: closes the kernel skipped, counted when found (no duration)
    lost_missed: int = 0  # of `lost`: runs the kernel skipped (the program already running on that CPU)
    lost_made_good: int = 0  # not in `lost`: skipped runs that were closes, made good at the socket's destroy

    @property
    def container_active(self):
        return sum(1 for c in self.active if c["container"].is_container)

    @property
    def host_active(self):
        return len(self.active) - self.container_active


class Aggregator:
    """Folds events and map snapshots into what the report shows.

    resolve: cgroup id -> Container (bpfhook.containers.Resolver); host by default
    recent:  how many finished or new connections to remember
    health:  fold the closes' and live connections' health figures (add_health); not needed
             (a cost per close) where the maps' figures are set for every cgroup
    """

    def __init__(self, resolve=None, recent=10, clock=time.time, health=True):
        self.resolve = resolve or (lambda cgroup_id: HOST)
        self.clock = clock
        self.health = health
        self.active = {}  # sock -> connection dict
        self.recent = collections.deque(maxlen=recent)
        self.transitions = collections.Counter()
        self.totals = {}  # cgroup id -> CgroupTotals, from events
        self.map_totals = {}  # cgroup id -> metrics dict from the BPF map (wins over events)
        self._closed = collections.OrderedDict()  # socks closed lately: a close seen twice counts once
        self.events = 0
        self.lost = self.lost_missed = self.lost_made_good = 0
        self.closed = self.closed_unseen = 0
        self.duration_total_ns = 0
        self.duration_max_ns = 0

    def _totals(self, cgroup_id, container):
        t = self.totals.get(cgroup_id)
        if t is None:
            t = self.totals[cgroup_id] = CgroupTotals(cgroup_id, container)
        return t

    def add(self, event):
        """Take one decoded event; returns its Container."""
        self.events += 1
        container = self.resolve(event["cgroup_id"])
        totals = self._totals(event["cgroup_id"], container)
        kind, sock = event["event"], event["sock"]
        if (event["oldstate"] or event["newstate"]) and kind != "existing":  # (a state, not a transition)
            self.transitions[(event["oldstate"], event["newstate"])] += 1
        if kind == "udp":
            totals.udp += 1
            totals.bytes_sent += event["bytes_sent"]
            totals.bytes_received += event["bytes_received"]
            self.recent.append(dict(event, container=container, state="UDP"))
        elif kind == "close" or event["newstate"] == "CLOSE":
            self._close(event, container, totals)
        else:
            conn = self.active.get(sock)
            if conn is None:
                state = event["newstate"] or ("ESTABLISHED" if kind == "accept" else "SYN_SENT")
                if state not in _OPENING_STATES and kind != "existing":
                    return container  # mid-life transition of a connection opened before we started
                self._closed.pop(sock, None)  # the kernel reuses a freed sock's address for new sockets
                conn = self.active[sock] = dict(event, container=container, state=state, start_ns=event["ts_ns"])
                totals.opened += 1
                totals.active += 1
                if kind != "existing":  # (a start on a busy host would flood the recent list)
                    self.recent.append(conn)
            elif kind == "accept":  # the accepting task owns it, not the softirq that saw the handshake
                before = self._totals(conn["cgroup_id"], conn["container"])
                before.opened -= 1
                before.active -= 1
                totals.opened += 1
                totals.active += 1
                conn.update(pid=event["pid"], tid=event["tid"], comm=event["comm"], cgroup_id=event["cgroup_id"],
                            container=container)
            if event["newstate"]:
                conn["state"] = event["newstate"]
            if event["sport"] and event["dport"] and not (conn["sport"] and conn["dport"]):
                # connect() sees no source port yet and a passive child at SYN_RECV no peer: later events do
                conn.update(saddr=event["saddr"], sport=event["sport"], daddr=event["daddr"], dport=event["dport"])
        return container

    def _close(self, event, container, totals):
        sock = event["sock"]
        conn = self.active.pop(sock, None)
        seen = self._closed.get(sock)
        if seen is not None:  # the second record of one close (state CLOSE + close event): merge
            conn, totals = seen
            self._account(conn, totals, event)
            return
        if conn is not None:
            totals = self._totals(conn["cgroup_id"], conn["container"])  # the owner's, e.g. the acceptor
            totals.active -= 1
        else:
            conn = dict(event, container=container, start_ns=None)
        totals.closed += 1
        self.closed += 1
        self.closed_unseen += event["close_unseen"]
        conn.update(state="CLOSE", bytes_sent=0, bytes_received=0, duration_ns=0)
        self._account(conn, totals, event)
        if self.health:
            add_health(totals.health, event, closed=True)
        self._closed[sock] = (conn, totals)
        if len(self._closed) > 4096:
            self._closed.popitem(last=False)
        if not any(c is conn for c in self.recent):
            self.recent.append(conn)

    def _account(self, conn, totals, event):
        """Fold a close record into its connection: bytes, duration.

        Byte counters are cumulative per socket, so only what is new since the
        connection's last record is added to the totals.
        """
        for field in ("bytes_sent", "bytes_received"):
            new = event[field] - conn[field]
            if new > 0:
                setattr(totals, field, getattr(totals, field) + new)
                conn[field] = event[field]
        start = conn["start_ns"]
        if event["close_unseen"]:  # found after the close, whose time is unknown
            return
        duration = event["duration_ns"] or (event["ts_ns"] - start if start is not None else 0)
        if duration and not conn["duration_ns"]:
            conn["duration_ns"] = duration
            self.duration_total_ns += duration
            self.duration_max_ns = max(self.duration_max_ns, duration)

    def set_cgroup_metrics(self, metrics):
        """The metrics-by-cgroup map: {cgroup id: records.decode_metrics dict}."""
        self.map_totals = dict(metrics)

    def set_live(self, connections):
        """The live connections (Monitor.connections() after refresh_live). Their bytes so far go
        into the active ones this aggregator lists, and snapshot() adds them to their cgroup's
        bytes from closes. An active one no longer among them is dropped: its close was lost (a full
        buffer, a run the kernel skipped), or is still on its way and counts when it comes;
        kept, it would be listed, and held in memory, for good."""
        live = {c["sock"]: c for c in connections}
        for sock, conn in list(self.active.items()):
            now = live.get(sock)
            if now is None:
                del self.active[sock]
                self._totals(conn["cgroup_id"], conn["container"]).active -= 1
            else:
                conn.update({field: now[field] for field in _LIVE_FIELDS if field in now})

    def set_lost(self, lost, missed=0, made_good=0):
        """Total events lost so far (Monitor.lost()'s "events"), of them the runs the kernel
        skipped ("missed"), and the skipped closes made good, not lost ("made_good")."""
        self.lost, self.lost_missed, self.lost_made_good = lost, missed, made_good

    def set_transitions(self, transitions):
        """The transition counts from the maps ({(old, new): count}), when the events do not
        carry every transition."""
        self.transitions = collections.Counter(transitions)

    def snapshot(self):
        rows = {cgid: dataclasses.replace(t, health=_copy_health(t.health)) for cgid, t in self.totals.items()}
        for cgid, m in self.map_totals.items():
            row = rows.get(cgid) or CgroupTotals(cgid, self.resolve(cgid))
            rows[cgid] = dataclasses.replace(
                row, opened=m["opened"], closed=m["closed"], active=m["active"], bytes_sent=m["bytes_sent"],
                bytes_received=m["bytes_received"], udp=m.get("udp", row.udp), health=_health(m))
        for conn in self.active.values():  # live figures so far (set_live); the maps' figures have them
            if conn["cgroup_id"] not in self.map_totals:
                row = rows[conn["cgroup_id"]]
                row.bytes_sent += conn["bytes_sent"]
                row.bytes_received += conn["bytes_received"]
                if self.health:
                    add_health(row.health, conn, closed=False)
        active = sorted(self.active.values(), key=lambda c: c["start_ns"])
        return Snapshot(
            time=self.clock(),
            active=active,
            by_state=dict(collections.Counter(c["state"] for c in active).most_common()),
            recent=list(self.recent),
            cgroups=sorted(rows.values(), key=lambda t: (-t.opened, -t.bytes_sent, t.cgroup_id)),
            transitions=dict(self.transitions),
            events=self.events,
            lost=self.lost,
            lost_missed=self.lost_missed,
            lost_made_good=self.lost_made_good,
            closed=self.closed,
            closed_unseen=self.closed_unseen,
            duration_total_ns=self.duration_total_ns,
            duration_max_ns=self.duration_max_ns,
        )


def _health(metrics):
    return {name: metrics[name] for name in HEALTH_FIELDS if name in metrics}


def _copy_health(health):
    """A copy of a health dict to add live connections to, its buckets' lists too."""
    return {name: list(value) if name in records.HISTOGRAMS else value for name, value in health.items()}


# What set_live takes from a live connection: its figures so far
_LIVE_FIELDS = ("bytes_sent", "bytes_received", "state", "retransmits", "connect_us", "resets_sent",
                "resets_received")


def add_health(health, conn, closed):
    """Add to `health` (HEALTH_FIELDS, filled in as needed) what one connection counts in its
    container's METRICS as the kernel counts them (programs/conn_state.py, tcp_health.py): at
    its close (closed: a close event) or so far (a live connection). A report that keeps only
    some connections (a filter) sums these, and shows what the maps show for them."""
    if not health:
        health.update(_health(records.zero_metrics()))
    for name in ("retransmits", "resets_sent", "resets_received"):
        health[name] += conn[name]
    state = conn["oldstate"] if closed else conn["state"]
    if closed and conn["failure"]:
        health["failed_" + conn["failure"]] += 1
    elif records.direction(conn) == "out" and state not in ("", "SYN_SENT"):  # a connect() that worked
        health["connects"] += 1
        health["connect_sum_us"] += conn["connect_us"]
        health["connect_buckets"][bisect.bisect_left(records.CONNECT_BUCKETS_US, conn["connect_us"])] += 1
    if closed and conn["srtt_us"]:
        health["rtt_sum_us"] += conn["srtt_us"]
        health["rtt_buckets"][bisect.bisect_left(records.RTT_BUCKETS_US, conn["srtt_us"])] += 1


def summary_snapshot(connections, recent, stats, cgroup_metrics, resolve, lost, keep=10, clock=time.time):
    """A Snapshot straight from the kernel's maps, for a monitor that streams no events.

    connections: Monitor.connections(); recent: Monitor.recent(); stats: Monitor.stats();
    cgroup_metrics: {cgroup id: records.decode_metrics dict}; resolve: cgroup id -> Container;
    lost: Monitor.lost()."""
    active = sorted((dict(c, container=resolve(c["cgroup_id"])) for c in connections), key=lambda c: c["start_ns"])
    finished = [dict(e, container=resolve(e["cgroup_id"]), state="UDP" if e["event"] == "udp" else "CLOSE")
                for e in recent]
    latest = sorted([(c["start_ns"], c) for c in active] + [(e["ts_ns"], e) for e in finished],
                    key=lambda pair: pair[0])
    cgroups = [CgroupTotals(cgid, resolve(cgid), opened=m["opened"], closed=m["closed"], active=m["active"],
                            bytes_sent=m["bytes_sent"], bytes_received=m["bytes_received"], udp=m["udp"],
                            health=_health(m))
               for cgid, m in cgroup_metrics.items()]
    return Snapshot(
        time=clock(),
        active=active,
        by_state=dict(collections.Counter(c["state"] for c in active).most_common()),
        recent=[c for _, c in latest[-keep:]],
        cgroups=sorted(cgroups, key=lambda t: (-t.opened, -t.bytes_sent, t.cgroup_id)),
        transitions=stats["transitions"],
        events=stats["events"],
        lost=lost["events"],
        lost_missed=lost["missed"],
        lost_made_good=lost["made_good"],
        closed=sum(m["closed"] for m in cgroup_metrics.values()),
        duration_total_ns=stats["duration_total_ns"],
        duration_max_ns=stats["duration_max_ns"],
        closed_unseen=stats["closed_unseen"],
    )


# ---- formatting -------------------------------------------------------------

def human_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_duration(ns):
    if not ns:
        return "-"
    if ns < 1_000_000:
        return f"{ns / 1000:.0f}us"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f}ms"
    return f"{ns / 1e9:.2f}s"


def _us(us):
    """A quantile in microseconds as human_duration text ("-" for none)."""
    return "-" if us is None else human_duration(max(int(us * 1000), 1))


def endpoint(addr, port):
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def label_width(containers, narrowest=16, widest=48):
    """Width of a container column: its longest label (a pod's namespace/pod/container), within bounds."""
    return min(widest, max([narrowest] + [len(c.label) for c in containers]))


def connection_line(conn, width=16):
    """One recent connection: [CTR] mark, owner, addresses, state, bytes, duration."""
    c = conn["container"]
    mark = "[CTR]" if c.is_container else "     "
    arrow = ARROWS[records.direction(conn)]
    return (f"  {mark} {c.label[:width]:<{width}} pid {conn['pid']:<7} {conn['comm'][:15]:<15} "
            f"{endpoint(conn['saddr'], conn['sport']):>22} {arrow} {endpoint(conn['daddr'], conn['dport']):<22} "
            f"{conn['state']:<12} sent {human_bytes(conn['bytes_sent']):>8} "
            f"recv {human_bytes(conn['bytes_received']):>8} {human_duration(conn.get('duration_ns', 0)):>8}")


def _body(s, show_containers, recent):
    out = [f"Active connections: {len(s.active)} (host: {s.host_active}, container: {s.container_active})", ""]
    out.append("By state:")
    out += [f"  {state:<16} {count}" for state, count in s.by_state.items()] or ["  (none)"]
    out.append("")
    shown = s.recent[-recent:] if recent else []
    out.append(f"Recent connections (last {len(shown)}):")
    width = label_width(c["container"] for c in shown)
    out += [connection_line(c, width) for c in shown] or ["  (none)"]
    out.append("")
    out.append("Cgroup-based metrics:")
    if s.cgroups:
        width = label_width(t.container for t in s.cgroups)
        who = f"{'CONTAINER':<{width}} {'KIND':<8} {'ID':<12} " if show_containers else ""
        out.append(f"        {who}{'OPENED':>7} {'CLOSED':>7} {'ACTIVE':>7} {'SENT':>10} {'RECEIVED':>10} "
                   f"{'FAILED':>6} {'RETRANS':>7} {'CONN p50':>8} {'p99':>8}  CGROUP")
        for t in s.cgroups:
            c = t.container
            mark = "[CTR]" if c.is_container else "     "
            who = f"{c.label[:width]:<{width}} {c.kind:<8} {c.short_id[:12] or '-':<12} " if show_containers else ""
            p50, p99 = (_us(t.connect_quantile(q)) for q in (0.5, 0.99))
            out.append(f"  {mark} {who}{t.opened:>7} {t.closed:>7} {t.active:>7} {human_bytes(t.bytes_sent):>10} "
                       f"{human_bytes(t.bytes_received):>10} {t.failed():>6} {t.health.get('retransmits', 0):>7} "
                       f"{p50:>8} {p99:>8}  {c.cgroup_path or '?'} (id {t.cgroup_id})")
    else:
        out.append("  (none)")
    out.append("")
    out.append(_lost_line(s))
    return out


def _lost_line(s):
    causes = ((s.lost_missed, "skipped by the kernel: the program was already running on that CPU"),
              (s.lost - s.lost_missed, "dropped: the ring buffer was full"))
    why = "; ".join(f"{n} {cause}" for n, cause in causes if n)
    made_good = f"  (closes the kernel skipped, made good at the socket's destroy: {s.lost_made_good})" \
        if s.lost_made_good else ""
    return f"Lost events: {s.lost}" + (f"  ({why}): the figures above may be incomplete" if why else "") + made_good


def render(snapshot, show_containers=False, recent=10):
    """The periodic report."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snapshot.time))
    head = [RULE, f"CONNECTION METRICS REPORT  {stamp}", RULE]
    return "\n".join(head + _body(snapshot, show_containers, recent) + [RULE]) + "\n"


def render_final(snapshot, show_containers=False, recent=10):
    """The report printed on exit: the periodic one plus totals and state transitions."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snapshot.time))
    head = [RULE, f"FINAL CONNECTION METRICS REPORT  {stamp}", RULE]
    timed = snapshot.closed - snapshot.closed_unseen
    mean = snapshot.duration_total_ns // timed if timed > 0 else 0
    unseen = f" ({snapshot.closed_unseen} whose close was missed)" if snapshot.closed_unseen else ""
    tail = ["", f"Events: {snapshot.events}  closed connections: {snapshot.closed}{unseen}  "
                f"duration mean {human_duration(mean)} max {human_duration(snapshot.duration_max_ns)}",
            "State transitions:"]
    tail += [f"  {old or '-':<12} -> {new:<12} {count}"
             for (old, new), count in sorted(snapshot.transitions.items(), key=lambda kv: -kv[1])] or ["  (none)"]
    return "\n".join(head + _body(snapshot, show_containers, recent) + tail + [RULE]) + "\n"
