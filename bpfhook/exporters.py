"""Machine-readable output: JSON lines per event, Prometheus text exposition.

JSON lines: one object per event, written as it arrives (`--json`).
Prometheus: per-container series rendered from a report Snapshot and served
on /metrics by a ThreadingHTTPServer in a daemon thread (`--prometheus`).
"""
import http.server
import json
import socket
import socketserver
import threading

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
        "container": container.label if container.is_container else None,
        "container_id": container.id or None,
        "container_kind": container.kind,
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
    }


class JsonLines:
    """Writes one compact JSON object per line and flushes (a pipe reader sees events at once)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, event, container):
        self.stream.write(json.dumps(event_object(event, container), separators=(",", ":")) + "\n")
        self.stream.flush()


# ---- Prometheus ---------------------------------------------------------------

# (name, type, help, CgroupTotals attribute)
PER_CGROUP_METRICS = [
    ("bpfhook_connections_opened_total", "counter", "TCP connections opened.", "opened"),
    ("bpfhook_connections_closed_total", "counter", "TCP connections closed.", "closed"),
    ("bpfhook_connections_active", "gauge", "TCP connections open now.", "active"),
    ("bpfhook_bytes_sent_total", "counter", "Bytes sent on closed connections.", "bytes_sent"),
    ("bpfhook_bytes_received_total", "counter", "Bytes received on closed connections.", "bytes_received"),
    ("bpfhook_udp_flows_total", "counter", "UDP flows seen.", "udp"),
]


def _escape(value):
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(totals):
    c = totals.container
    pairs = (("container", c.label if c.is_container else ""), ("container_id", c.id), ("cgroup", c.cgroup_path),
             ("cgroup_id", str(totals.cgroup_id)), ("kind", c.kind))
    return ",".join(f'{key}="{_escape(value)}"' for key, value in pairs)


def exposition(snapshot):
    """Prometheus text format (0.0.4) for a report Snapshot."""
    out = []
    for name, kind, text, attr in PER_CGROUP_METRICS:
        out.append(f"# HELP {name} {text}")
        out.append(f"# TYPE {name} {kind}")
        for totals in snapshot.cgroups:
            out.append(f"{name}{{{_labels(totals)}}} {getattr(totals, attr)}")
    out += ["# HELP bpfhook_lost_events_total Events the kernel could not deliver.",
            "# TYPE bpfhook_lost_events_total counter",
            f"bpfhook_lost_events_total {snapshot.lost}",
            "# HELP bpfhook_events_total Events received from the kernel.",
            "# TYPE bpfhook_events_total counter",
            f"bpfhook_events_total {snapshot.events}"]
    return "\n".join(out) + "\n"


class PrometheusServer:
    """Serves render() on http://HOST:PORT/metrics from a daemon thread.

    render: callable returning the exposition text (called per scrape, in the
            server thread: it must be safe to call there)
    Port 0 picks a free port; `address` tells which.
    """

    def __init__(self, host, port, render):
        handler = type("Handler", (_MetricsHandler,), {"render": staticmethod(render)})
        server = _HTTPServer6 if ":" in host else _HTTPServer
        self.httpd = server((host, port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                       name="prometheus", daemon=True)  # short poll: quick close()
        self.thread.start()

    @property
    def address(self):
        return self.httpd.server_address[:2]

    def close(self):
        """Stop serving and release the port; waits for the serving thread."""
        if self.thread is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=5)
            self.thread = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _HTTPServer(http.server.ThreadingHTTPServer):
    def server_bind(self):
        """Like HTTPServer's, without its reverse DNS lookup (getfqdn): a host without DNS would stall."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _MetricsHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    render = None

    def do_GET(self):
        if self.path.split("?", 1)[0] != "/metrics":
            self._reply(404, "text/plain; charset=utf-8", b"not found: try /metrics\n")
            return
        self._reply(200, CONTENT_TYPE, self.render().encode())

    def _reply(self, status, content_type, body):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # scrapes are not news
        pass
