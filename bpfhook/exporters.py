"""Machine-readable output: JSON lines per event, Prometheus text exposition.

JSON lines: one object per event, written as it arrives (`--json`).
Prometheus: per-container series rendered from a report Snapshot and served
on /metrics by bpfhook.metrics_http.PrometheusServer (`--prometheus`); http.server
is imported only then.
"""
import json

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
        # health: why a connect() failed ("refused", "timeout", "other"), segments retransmitted,
        # smoothed RTT at the close, handshake time (0: not measured)
        "failure": event["failure"],
        "retransmits": event["retransmits"],
        "srtt_us": event["srtt_us"],
        "connect_us": event["connect_us"],
    }


class JsonLines:
    """Writes one compact JSON object per line and flushes (a pipe reader sees events at once)."""

    # One encoder for every line (json.dumps with options builds a new one per call, a quarter of
    # a line's cost); an event object holds no cycle to check for.
    _encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode

    def __init__(self, stream):
        self.stream = stream

    def write(self, event, container):
        self.stream.write(self._encode(event_object(event, container)) + "\n")
        self.stream.flush()


# ---- Prometheus ---------------------------------------------------------------

# (name, type, help, CgroupTotals attribute)
PER_CGROUP_METRICS = [
    ("bpfhook_connections_opened_total", "counter", "TCP connections opened.", "opened"),
    ("bpfhook_connections_closed_total", "counter", "TCP connections closed.", "closed"),
    ("bpfhook_connections_active", "gauge", "TCP connections open now.", "active"),
    ("bpfhook_bytes_sent_total", "counter",
     "Bytes sent on closed connections and on open ones so far.", "bytes_sent"),
    ("bpfhook_bytes_received_total", "counter",
     "Bytes received on closed connections and on open ones so far.", "bytes_received"),
    ("bpfhook_udp_flows_total", "counter", "UDP flows seen.", "udp"),
]


def _escape(value):
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(totals):
    c = totals.container
    pairs = (("container", (c.name or c.short_id) if c.is_container else ""), ("pod", c.pod),
             ("namespace", c.namespace), ("container_id", c.id), ("cgroup", c.cgroup_path),
             ("cgroup_id", str(totals.cgroup_id)), ("kind", c.kind))
    return ",".join(f'{key}="{_escape(value)}"' for key, value in pairs)


def exposition(snapshot, shown=None):
    """Prometheus text format (0.0.4) for a report Snapshot.

    shown: a dict the caller keeps from one scrape to the next, so that a counter never goes
    back. The opened and bytes counters include live connections (their bytes so far), which
    drop out when a connection vanishes with its close uncounted (an LRU eviction; in a filtered
    view, a lost close event: both reported as lost; a skipped close is counted as closed
    instead: Monitor.lost); Prometheus would read that dip as a reset and count the whole
    value again. A counter shows the most it showed before until its count passes that."""
    before = dict(shown or {})
    if shown is not None:
        shown.clear()
    out = []
    for name, kind, text, attr in PER_CGROUP_METRICS:
        out.append(f"# HELP {name} {text}")
        out.append(f"# TYPE {name} {kind}")
        for totals in snapshot.cgroups:
            value = getattr(totals, attr)
            if kind == "counter" and shown is not None:
                key = (name, totals.cgroup_id)
                value = shown[key] = max(value, before.get(key, 0))
            out.append(f"{name}{{{_labels(totals)}}} {value}")
    out += ["# HELP bpfhook_lost_events_total Events the kernel could not deliver.",
            "# TYPE bpfhook_lost_events_total counter",
            f"bpfhook_lost_events_total {snapshot.lost}",
            "# HELP bpfhook_events_total Events received from the kernel.",
            "# TYPE bpfhook_events_total counter",
            f"bpfhook_events_total {snapshot.events}"]
    return "\n".join(out) + "\n"

