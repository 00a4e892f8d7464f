"""Every tool on real container engines: Docker, containerd in a Kubernetes pod's place, podman.

Each engine (tests/runtimes.py) runs a container by name, with no registry; monitor, capture and
mirror are run as a user would, naming it; afterwards nothing of ours is left (no qdisc, state
file, pin, container) and the host's firewall, forwarding, links and cgroups are as found.
Without the engine's package the engine's tests skip with one line.
"""
import collections
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

from bpfhook import mirror
from tests import oracles, runtimes
from tests.conftest import slow_factor
from tests.kernel.test_capture import tshark
from tests.kernel.test_mirror import mirrored, tc_dump

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KIND = {"docker": "docker", "podman": "podman", "containerd": "pod"}
CLI_SECONDS = 120  # a bound, not a wait


@pytest.fixture(scope="module", params=sorted(runtimes.ENGINES))
def engine(request):
    runtimes.skip_in_kernel_matrix()
    with runtimes.ENGINES[request.param]() as running:
        yield running


@pytest.fixture(scope="module")
def app(engine):
    return engine.run(f"web{os.getpid() % 100000}")


def _tool(*args):
    return subprocess.Popen([sys.executable, "-m", "bpfhook", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT))


def _wait_line(stream, text, p):
    """Read lines until one holds text; a tool that says nothing for CLI_SECONDS is killed."""
    deadline = time.monotonic() + CLI_SECONDS * slow_factor()
    seen = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 1)
        if ready:
            line = stream.readline()
            seen.append(line)
            if text in line:
                return line
            if not line:
                break
    p.kill()
    raise AssertionError(f"no line with {text!r}: {seen}")


def _stop(p):
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=CLI_SECONDS * slow_factor())
    assert p.returncode == 0, err
    return out, err


def _host_side(app):
    """ifindex and name of the host end of the container's eth0, read with iproute2 inside its netns."""
    ip, nsenter = oracles.require("ip"), oracles.require("nsenter")
    done = subprocess.run([nsenter, "-t", str(app.pid), "-n", ip, "-j", "link", "show", "eth0"],
                          capture_output=True, text=True, timeout=30, check=True)
    index = json.loads(done.stdout)[0]["link_index"]
    return index, socket.if_indextoname(index)


def _expected_label(app):
    return f"{app.namespace}/{app.pod}/{app.short_name}" if app.pod else app.short_name


def test_monitor_names_the_accept_and_the_outbound_connect(app):
    p = _tool("monitor", "--json", "--container", app.name)
    try:
        _wait_line(p.stderr, "attached", p)
        listener, port = runtimes.host_server(app.host_ip)
        with listener:
            assert app.request(f"CONNECT {app.host_ip} {port}".encode()).startswith(b"ok")
            conn, _peer = listener.accept()
            with conn:
                assert conn.recv(100) == b"hello from inside"
        time.sleep(0.5)  # the close events
    finally:
        out, _err = _stop(p)
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    accepts = [e for e in events if e["event"] == "accept" and e["sport"] == runtimes.APP_PORT]
    connects = [e for e in events if e["event"] == "connect" and e["dport"] == port]
    assert accepts and connects, events
    for e in (accepts[0], connects[0]):
        assert (e["pid"], e["container"], e["container_kind"]) == (app.pid, app.short_name, KIND[app.runtime]), e
        assert e["container_id"] == app.id and e["cgroup"] == app.cgroup
        assert (e["pod"], e["namespace"]) == ((app.pod, app.namespace) if app.pod else (None, None))
    assert (accepts[0]["saddr"], connects[0]["daddr"]) == (app.ip, app.host_ip)
    assert {e["container_id"] for e in events if e["event"] != "summary"} == {app.id}  # --container kept it to ours


def test_capture_by_name_has_the_request_and_the_name(app, tmp_path):
    out = tmp_path / "cap.pcapng"
    p = _tool("capture", "--container", app.name, "-w", str(out), "--quiet")
    try:
        _wait_line(p.stderr, "capturing", p)
        token = f"GET /bpfhook-{app.runtime}-{os.getpid()} HTTP/1.0\r\n\r\n".encode()
        assert app.request(token) == b"ok " + token[:64]
        time.sleep(0.5)
    finally:
        _stop(p)
    rows = tshark(out, "tcp.payload", "frame.comment", filter="tcp.payload")
    mine = [comment for payload, comment in rows if bytes.fromhex(payload.replace(":", "")) == token]
    assert mine, rows
    assert f"container={_expected_label(app)}" in mine[0].split() and f"pid={app.pid}" in mine[0].split()


def test_mirror_from_the_name_delivers_every_packet(app, lab):
    observer = lab(ipv6=False)
    index, host_if = _host_side(app)
    p = _tool("mirror", "--from", app.name, "--to", observer.name)
    try:
        line = _wait_line(p.stdout, "mirroring", p)
        assert host_if in line, line
        seen, copies = mirrored(host_if, observer, app.ip, lambda: [
            app.request(b"m" * (100 + 50 * i)) for i in range(20)])
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=CLI_SECONDS * slow_factor())
    assert p.returncode == 0 and "mirror removed" in out, err
    assert len(seen["ingress"]) >= 20 * 3 and len(seen["egress"]) >= 20 * 3
    assert collections.Counter(copies) == collections.Counter(seen["ingress"] + seen["egress"])
    assert mirror.read_state(host_if) is None
    qdiscs, filters = tc_dump(index)
    assert not filters and "clsact" not in [kind for kind, _handle, _parent in qdiscs]


def test_every_way_to_name_it_finds_its_cgroup(app):
    from bpfhook import containers

    specs = [app.name, app.id, app.id[:12], app.id[:7], app.cgroup]
    if app.pod:
        specs += [f"{app.namespace}/{app.pod}/{app.short_name}", app.short_name]
    for spec in specs:
        assert containers.find(spec).cgroup_path == app.cgroup, spec
    if app.pod:  # the pod: its own cgroup, holding the sandbox and the container
        assert containers.find(f"{app.namespace}/{app.pod}").cgroup_path == os.path.dirname(app.cgroup)


def test_an_ambiguous_name_is_one_line_naming_the_candidates(app, lab):
    twin = lab(ipv6=False, name=app.short_name)  # a lab container of the same name
    for tool in (("capture", "--container", app.short_name, "-w", "/nonexistent/x.pcapng"),
                 ("mirror", "--from", app.short_name, "--to", "lo"),
                 ("monitor", "--container", app.short_name, "--duration", "1")):
        p = _tool(*tool)
        _out, err = p.communicate(timeout=CLI_SECONDS * slow_factor())
        assert p.returncode == 1 and err.count("\n") == 1, err
        assert f"'{app.short_name}' names 2 containers: " in err and app.cgroup in err and twin.cgroup_path in err, err


def test_trafficgen_runs_its_server_inside_it_by_name(app):
    from bpfhook import cgroups, containers, guest, trafficgen

    inside = guest.Guest.of(containers.find(app.name))
    assert (inside.ipv4, inside.cgroup_path) == (app.ip, app.cgroup)
    before = set(cgroups.pids(app.cgroup))
    with trafficgen.server_in_container("tcp", inside) as target:
        (server,) = set(cgroups.pids(app.cgroup)) - before
        assert os.stat(f"/proc/{server}/ns/net").st_ino == os.stat(f"/proc/{app.pid}/ns/net").st_ino
        assert target.startswith(f"{app.ip}:")
    assert set(cgroups.pids(app.cgroup)) == before
    p = _tool("trafficgen", "--auto", "--type", "http", "--requests", "4", "--container", app.name)
    out, err = p.communicate(timeout=CLI_SECONDS * slow_factor())
    assert p.returncode == 0 and out.startswith(f"http {app.ip}:") and ": 4 requests, 0 errors" in out, out + err
