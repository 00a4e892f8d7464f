"""A real Prometheus (Debian's package) scrapes `bpfhook monitor --prometheus` while a lab
container and a Docker container connect out, some to a closed port; PromQL through its HTTP
API then gives each container's connects, refused connects and connect-time quantile, and
promtool finds nothing wrong in the exposition. Prometheus listens on loopback, keeps its
data in the test's temp dir, scrapes every second, and is stopped by the test."""
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import pytest

from tests import oracles, runtimes
from tests.conftest import eventually
from tests.kernel.monitor_helpers import spawn_monitor, wait_attached

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (BPF, namespaces, Docker)")

# In the lab container: argv[3] connects to argv[1]:argv[2] that work, then argv[5] to the
# closed port argv[4]
CLIENT = r"""
import socket, sys
host, port, ok, closed, refused = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
for _ in range(ok):
    socket.create_connection((host, port), timeout=10).close()
for _ in range(refused):
    try:
        socket.create_connection((host, closed), timeout=10).close()
    except ConnectionRefusedError:
        pass
"""
OK, REFUSED = 5, 3  # the lab container's second round
DOCKER_OK, DOCKER_REFUSED = 3, 1


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port, path):
    return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read().decode()


def _accepting():
    """A host server on every address that accepts and closes until the test ends: (port, stop)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))
    srv.listen(64)
    srv.settimeout(0.2)
    done = threading.Event()

    def serve():
        with srv:
            while not done.is_set():
                try:
                    srv.accept()[0].close()
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1], done.set


def _closed_port():
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


class Prometheus:
    """The server, scraping the monitor at 127.0.0.1:target every second."""

    def __init__(self, binary, target, directory):
        self.port = _free_port()
        config = os.path.join(directory, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
                    f"  - job_name: bpfhook\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n")
        self.log = open(os.path.join(directory, "prometheus.log"), "w")
        self.process = subprocess.Popen([binary, f"--config.file={config}",
                                         f"--storage.tsdb.path={os.path.join(directory, 'data')}",
                                         f"--web.listen-address=127.0.0.1:{self.port}"],
                                        stdout=self.log, stderr=subprocess.STDOUT)

    def ready(self):
        try:
            return "Ready" in _get(self.port, "/-/ready")
        except OSError:
            return False

    def query(self, promql):
        """{container: value} of an instant vector query."""
        answer = json.loads(_get(self.port, "/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
        assert answer["status"] == "success", answer
        return {r["metric"].get("container", ""): float(r["value"][1]) for r in answer["data"]["result"]}

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


def test_prometheus_gets_each_containers_connects_failures_and_connect_time(lab, tmp_path):
    binary, promtool = oracles.require("prometheus"), oracles.require("promtool")
    c = lab(ipv6=False)
    port, stop_serving = _accepting()
    closed = _closed_port()
    target = _free_port()
    with runtimes.docker_engine() as engine:
        web = engine.run(f"prom{os.getpid() % 100000}")
        monitor = spawn_monitor("--prometheus", f"127.0.0.1:{target}", "-m", "600", "--duration", "300")
        prometheus = None
        try:
            wait_attached(monitor)
            prometheus = Prometheus(binary, target, str(tmp_path))
            assert eventually(prometheus.ready, timeout=60)

            def lab_round(ok, refused):
                p = c.spawn([sys.executable, "-c", CLIENT, c.host_ipv4, str(port), str(ok), str(closed),
                             str(refused)])
                assert p.wait(60) == 0

            def docker_round(ok, refused):
                for _ in range(ok):
                    assert web.request(f"CONNECT {web.host_ip} {port}".encode()).startswith(b"ok")
                for _ in range(refused):
                    web.request(f"CONNECT {web.host_ip} {closed}".encode())

            # A first round makes each container's series; a counter's first sample is no increase
            lab_round(1, 0)
            docker_round(1, 0)
            raw = 'sum by (container) (bpfhook_connects_total{container=~"%s|%s"})' % (c.name, web.name)
            assert eventually(lambda: prometheus.query(raw) == {c.name: 1, web.name: 1}, timeout=30)
            time.sleep(3)  # a few scrapes of the first values
            lab_round(OK, REFUSED)
            docker_round(DOCKER_OK, DOCKER_REFUSED)
            assert eventually(lambda: prometheus.query(raw) == {c.name: 1 + OK, web.name: 1 + DOCKER_OK},
                              timeout=30)
            time.sleep(2)

            connects = prometheus.query("sum by (container) (increase(bpfhook_connects_total[1m]))")
            refused = prometheus.query("sum by (container) (increase(bpfhook_connects_refused_total[1m]))")
            p50 = prometheus.query("histogram_quantile(0.5, sum by (container, le) "
                                   "(increase(bpfhook_connect_duration_seconds_bucket[1m])))")
            # increase() extrapolates a little past the first and last samples: a tenth, at most a
            # half scrape interval each side
            for name, ok, bad in ((c.name, OK, REFUSED), (web.name, DOCKER_OK, DOCKER_REFUSED)):
                assert ok <= connects[name] <= ok * 1.25, (name, connects)
                assert bad <= refused[name] <= bad * 1.25, (name, refused)
                assert 0 < p50[name] <= 0.05, (name, p50)  # a connect over a veth on this host
            kinds = prometheus.query('count by (container, container_kind) (bpfhook_connects_total{container="%s"})'
                                     % web.name)
            assert kinds == {web.name: 1}
            answer = json.loads(_get(prometheus.port, "/api/v1/query?query=bpfhook_connects_total%7Bcontainer%3D%22"
                                     + web.name + "%22%7D"))
            assert answer["data"]["result"][0]["metric"]["container_kind"] == "docker"

            exposition = _get(target, "/metrics")
            check = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, text=True,
                                   timeout=60)
            assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), check.stdout + check.stderr
        finally:
            if prometheus is not None:
                prometheus.stop()
            monitor.terminate()
            monitor.communicate(timeout=30)
            stop_serving()
    assert monitor.returncode == 0
