"""Machine-readable output: JSON lines per event, Prometheus text exposition.

JSON lines: one object per event, written as it arrives (`--json`).
Prometheus: per-container series rendered from a report Snapshot and served
on /metrics by bpfhook.metrics_http.PrometheusServer (`--prometheus`); http.server
is imported only then.
"""
import json
import os

from bpfhook import records

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def event_object(event, container, cgroup_path=None):
    """The JSON object of one decoded event (records.decode_event) and its Container."""
    return {
        "ts": event["ts_ns"] / 1e9,
        "event": event["event"],
        "pid": event["pid"],
        "tid": event["tid"],
        "comm": event["comm"],
        "cgroup_id": event["cgroup_id"],
        "cgroup": container.cgroup_path if cgroup_path is None else cgroup_path,
        "container": (container.name or container.short_id) if container.is_container else None,
        "container_id": container.id or None,
        "container_kind": container.kind,
        "pod": container.pod or None,  # Kubernetes' names, from the runtime
        "namespace": container.namespace or None,
        "netns": event["netns"],
        "family": event["family"],
        "protocol": event["protocol"],
        "saddr": event["saddr"],
        "sport": event["sport"],
        "daddr": event["daddr"],
        "dport": event["dport"],
        "oldstate": event["oldstate"] or None,
        "newstate": event["newstate"] or None,
        "bytes_sent": event["bytes_sent"],
        "bytes_received": event["bytes_received"],
        "duration_ns": event["duration_ns"],
        # where pid/comm came from when not the task the event ran in: the accepting or closing task,
        # or the process /proc showed holding a connection open before the monitor started
        "owner_from": ("accept" if event["owner_from_accept"] else "close" if event["owner_from_close"]
                       else "proc" if event["owner_from_proc"] else None),
        "direction": records.direction(event),  # "in", "out", or null: not known
        # a close the kernel skipped the program for, sent when a new socket took the connection's
        # address: bytes as of the last walk, no duration
        "close_unseen": event["close_unseen"],
        # health: why a connect() failed ("refused", "timeout", "other"), segments retransmitted
        # after the handshake, smoothed RTT at the close, handshake time (0: not measured), resets
        "failure": event["failure"],
        "retransmits": event["retransmits"],
        "srtt_us": event["srtt_us"],
        "connect_us": event["connect_us"],
        "resets_sent": event["resets_sent"],
        "resets_received": event["resets_received"],
    }


class JsonLines:
    """Writes one compact JSON object per event (event_object's, byte for byte as json.dumps
    writes it), a batch at a time: one write and one flush per batch (a pipe reader sees events
    as they come). A busy stream writes tens of thousands a second: a line is filled into a
    template, its strings encoded by json's C function, and what repeats from one event to the
    next (the container's part, a comm, an address) kept, not encoded again."""

    _CONTAINER_KEYS = ("cgroup", "container", "container_id", "container_kind", "pod", "namespace")
    _CACHE_MAX = 4096  # texts kept (comms, addresses, containers); emptied when full

    def __init__(self, stream):
        self.stream = stream
        self._containers = {}  # cgroup id -> (Container, its keys' JSON text)
        self._texts = {}  # str or None -> its JSON text

    def write(self, event, container):
        self.write_many(((event, container),))

    def write_many(self, pairs):
        """pairs: (records.decode_event dict, its Container) of each event."""
        line = self._line
        self.stream.write("".join([line(event, container) for event, container in pairs]))
        self.stream.flush()

    def _text(self, value):
        texts = self._texts
        found = texts.get(value)
        if found is None:
            if len(texts) >= self._CACHE_MAX:
                texts.clear()
            found = texts[value] = _JSON(value)
        return found

    def _container_text(self, cgroup_id, container):
        kept = self._containers.get(cgroup_id)
        if kept is None or kept[0] is not container:
            if len(self._containers) >= self._CACHE_MAX:
                self._containers.clear()
            obj = event_object(_NO_EVENT, container)
            kept = self._containers[cgroup_id] = (container, ",".join(
                f'"{key}":{_JSON(obj[key])}' for key in self._CONTAINER_KEYS))
        return kept[1]

    def _line(self, e, container):
        text = self._text
        owner = ("accept" if e["owner_from_accept"] else "close" if e["owner_from_close"]
                 else "proc" if e["owner_from_proc"] else None)
        return (f'{{"ts":{e["ts_ns"] / 1e9!r},"event":{text(e["event"])},"pid":{e["pid"]:d},"tid":{e["tid"]:d},'
                f'"comm":{text(e["comm"])},"cgroup_id":{e["cgroup_id"]:d},'
                f'{self._container_text(e["cgroup_id"], container)},"netns":{e["netns"]:d},'
                f'"family":{text(e["family"])},"protocol":{text(e["protocol"])},"saddr":{text(e["saddr"])},'
                f'"sport":{e["sport"]:d},"daddr":{text(e["daddr"])},"dport":{e["dport"]:d},'
                f'"oldstate":{text(e["oldstate"] or None)},"newstate":{text(e["newstate"] or None)},'
                f'"bytes_sent":{e["bytes_sent"]:d},"bytes_received":{e["bytes_received"]:d},'
                f'"duration_ns":{e["duration_ns"]:d},"owner_from":{text(owner)},'
                f'"direction":{text(records.direction(e))},'
                f'"close_unseen":{"true" if e["close_unseen"] else "false"},"failure":{text(e["failure"])},'
                f'"retransmits":{e["retransmits"]:d},"srtt_us":{e["srtt_us"]:d},"connect_us":{e["connect_us"]:d},'
                f'"resets_sent":{e["resets_sent"]:d},"resets_received":{e["resets_received"]:d}}}\n')


_JSON = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
# An event's fields for event_object() when only its container's part is wanted
_NO_EVENT = dict.fromkeys(("ts_ns", "pid", "tid", "cgroup_id", "netns", "sport", "dport", "bytes_sent",
                           "bytes_received", "duration_ns", "retransmits", "srtt_us", "connect_us",
                           "resets_sent", "resets_received"), 0)
_NO_EVENT.update(dict.fromkeys(("event", "comm", "family", "protocol", "saddr", "daddr", "oldstate",
                                "newstate"), ""))
_NO_EVENT.update(dict.fromkeys(("owner_from_accept", "owner_from_close", "owner_from_proc", "close_unseen"), False))
_NO_EVENT["failure"] = None


# ---- Prometheus ---------------------------------------------------------------

# (name, type, help, CgroupTotals attribute, or a health field) per container
PER_CGROUP_METRICS = [
    ("bpfhook_connections_opened_total", "counter", "TCP connections opened.", "opened"),
    ("bpfhook_connections_closed_total", "counter", "TCP connections closed.", "closed"),
    ("bpfhook_connections_active", "gauge", "TCP connections open now.", "active"),
    ("bpfhook_bytes_sent_total", "counter",
     "Bytes sent on closed connections and on open ones so far.", "bytes_sent"),
    ("bpfhook_bytes_received_total", "counter",
     "Bytes received on closed connections and on open ones so far.", "bytes_received"),
    ("bpfhook_udp_flows_total", "counter", "UDP flows seen.", "udp"),
    ("bpfhook_connects_total", "counter", "TCP connect()s that reached ESTABLISHED.", "connects"),
    ("bpfhook_connects_refused_total", "counter", "TCP connect()s answered by a reset.", "failed_refused"),
    ("bpfhook_connects_timed_out_total", "counter", "TCP connect()s whose SYN retries ran out.",
     "failed_timeout"),
    ("bpfhook_connects_failed_other_total", "counter",
     "TCP connect()s that failed otherwise (an ICMP error, closed while connecting).", "failed_other"),
    ("bpfhook_retransmits_total", "counter", "TCP segments retransmitted after the handshake (not SYNs).",
     "retransmits"),
    ("bpfhook_resets_sent_total", "counter", "TCP resets sent by the container's connections.", "resets_sent"),
    ("bpfhook_resets_received_total", "counter", "TCP resets received by the container's connections.",
     "resets_received"),
]
# (name, help, buckets field, sum field, upper bounds in microseconds)
HISTOGRAMS = [
    ("bpfhook_connect_duration_seconds", "TCP connect() time, SYN sent to ESTABLISHED.", "connect_buckets",
     "connect_sum_us", records.CONNECT_BUCKETS_US),
    ("bpfhook_rtt_seconds", "Smoothed round-trip time of TCP connections at their close.", "rtt_buckets",
     "rtt_sum_us", records.RTT_BUCKETS_US),
]
LABELS = ("container", "container_kind", "namespace", "pod", "node")
# Series per container: one per metric above, and per histogram its buckets, _sum and _count
SERIES_PER_CONTAINER = len(PER_CGROUP_METRICS) + len(HISTOGRAMS) * (records.HISTOGRAM_BUCKETS + 2)


def node_name():
    """The `node` label: $NODE_NAME (a DaemonSet's pod gets its node's name there through the
    downward API), else this host's name."""
    return os.environ.get("NODE_NAME") or os.uname().nodename


def _escape(value):
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_values(container, node):
    """The label values of a cgroup's series: a container's names; every cgroup that is no
    container (a service, a session, the host) shares its kind's series, container ""."""
    c = container
    name = (c.name or c.short_id) if c.is_container else ""
    return (name, c.kind, c.namespace, c.pod, node)


def _label_text(values, extra=""):
    text = ",".join(f'{key}="{_escape(value)}"' for key, value in zip(LABELS, values))
    return text + extra


def _rows(snapshot, node):
    """{label values: {attribute or health field: value}}: the snapshot's cgroups summed by
    their labels (the cgroups of one container, and the non-container ones of one kind, fold)."""
    rows = {}
    for t in snapshot.cgroups:
        row = rows.setdefault(_label_values(t.container, node), {})
        values = [(attr, getattr(t, attr)) for attr in ("opened", "closed", "active", "bytes_sent",
                                                         "bytes_received", "udp")]
        for name, value in values + [(k, v) for k, v in t.health.items()]:
            if isinstance(value, list):
                row[name] = [a + b for a, b in zip(row.get(name, [0] * len(value)), value)]
            else:
                row[name] = row.get(name, 0) + value
    return rows


def _seconds(us):
    return f"{us / 1e6:.6f}".rstrip("0").rstrip(".") if us else "0"


def exposition(snapshot, shown=None, node=""):
    """Prometheus text format (0.0.4) for a report Snapshot; `node`: this host's name, a label
    of every series (what a DaemonSet's NODE_NAME says).

    shown: a dict the caller keeps from one scrape to the next, so that a counter never goes
    back. The opened and bytes counters include live connections (their bytes so far), which
    drop out when a connection vanishes with its close uncounted (an LRU eviction; in a filtered
    view, a lost close event: both reported as lost; a skipped close is counted as closed
    instead: Monitor.lost); Prometheus would read that dip as a reset and count the whole
    value again. A counter shows the most it showed before until its count passes that."""
    before = dict(shown or {})
    if shown is not None:
        shown.clear()
    rows = _rows(snapshot, node)
    out = []
    for name, kind, text, attr in PER_CGROUP_METRICS:
        out.append(f"# HELP {name} {text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, row in rows.items():
            value = row.get(attr, 0)
            if kind == "counter" and shown is not None:
                key = (name, labels)
                value = shown[key] = max(value, before.get(key, 0))
            out.append(f"{name}{{{_label_text(labels)}}} {value}")
    for name, text, buckets, total, bounds in HISTOGRAMS:
        out.append(f"# HELP {name} {text}")
        out.append(f"# TYPE {name} histogram")
        for labels, row in rows.items():
            counts = row.get(buckets) or [0] * records.HISTOGRAM_BUCKETS
            cumulative = 0
            for bound, count in zip([*(_seconds(b) for b in bounds), "+Inf"], counts):
                cumulative += count
                le = f',le="{bound}"'
                out.append(f"{name}_bucket{{{_label_text(labels, le)}}} {cumulative}")
            out.append(f"{name}_sum{{{_label_text(labels)}}} {_seconds(row.get(total, 0))}")
            out.append(f"{name}_count{{{_label_text(labels)}}} {cumulative}")
    host = f'{{node="{_escape(node)}"}}'
    out += ["# HELP bpfhook_lost_events_total Events the kernel could not deliver.",
            "# TYPE bpfhook_lost_events_total counter",
            f"bpfhook_lost_events_total{host} {snapshot.lost}",
            "# HELP bpfhook_events_total Events received from the kernel.",
            "# TYPE bpfhook_events_total counter",
            f"bpfhook_events_total{host} {snapshot.events}"]
    return "\n".join(out) + "\n"
