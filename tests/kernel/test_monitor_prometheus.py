"""`bpfhook monitor --prometheus`: per-container series, scraped while connections live."""
import re
import signal
import socket
import subprocess
import sys
import urllib.request

from tests.conftest import eventually
from tests.kernel.monitor_helpers import SERVER, spawn_monitor, wait_attached


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _scrape(port):
    """The monitor's /metrics text, or "" while it does not answer."""
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return ""


def _series(text, metric, container):
    """The line of `metric`'s series for a container (its name) in a scrape, or None."""
    lines = [line for line in text.splitlines() if line.startswith(metric + "{") and f'container="{container}"' in line]
    assert len(lines) <= 1, lines
    return lines[0] if lines else None


def _values(text, container, *metrics):
    """The values of `metrics`' series for a container in a scrape (None: no series)."""
    return [line and int(line.rsplit(" ", 1)[1]) for line in (_series(text, m, container) for m in metrics)]


def test_prometheus_scrape_has_per_container_series(lab):
    c = lab(ipv6=False)
    prom_port = _free_port()
    p = spawn_monitor("--prometheus", f"127.0.0.1:{prom_port}", "-m", "30", "--duration", "20")
    try:
        wait_attached(p)
        server = c.spawn([sys.executable, "-c", SERVER, c.ipv4, "7", "9"], stdout=subprocess.PIPE, text=True)
        port = int(server.stdout.readline())
        with socket.create_connection((c.ipv4, port), timeout=10) as s:
            s.sendall(b"p" * 7)
            s.recv(9)
        server.wait(10)
        assert eventually(lambda: _values(_scrape(prom_port), c.name, "bpfhook_bytes_sent_total") == [9])
        text = _scrape(prom_port)
        assert 'container_kind="lab"' in _series(text, "bpfhook_bytes_sent_total", c.name)
        assert _values(text, c.name, "bpfhook_connections_opened_total") == [1]
        assert re.search(r'^bpfhook_lost_events_total\{node="[^"]+"\} 0$', text, re.M)
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=15)
    assert p.returncode == 0, err
    assert "FINAL CONNECTION METRICS REPORT" in out


def test_a_filtered_view_counts_live_connections_bytes_so_far(lab):
    """With --container the report is built from events, not from the maps: a live
    connection's bytes still count before its close (from the report's socket walk), and
    once after it. The container's end is the server's, which waits for the client's close."""
    c = lab(ipv6=False)
    prom_port = _free_port()
    p = spawn_monitor("--container", c.name, "--prometheus", f"127.0.0.1:{prom_port}", "-m", "30", "--duration", "60")
    try:
        wait_attached(p)
        server = c.spawn([sys.executable, "-c", SERVER, c.ipv4, "500", "300"], stdout=subprocess.PIPE, text=True)
        port = int(server.stdout.readline())

        def counted():
            return _values(_scrape(prom_port), c.name, "bpfhook_bytes_sent_total",
                           "bpfhook_bytes_received_total", "bpfhook_connections_closed_total")
        with socket.create_connection((c.ipv4, port), timeout=10) as s:
            s.sendall(b"h" * 500)
            got = 0
            while got < 300:
                got += len(s.recv(300 - got))
            assert eventually(lambda: counted() == [300, 500, 0])  # (the server waits for our FIN)
        server.wait(10)
        assert eventually(lambda: counted() == [300, 500, 1])
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=15)
    assert p.returncode == 0, err
