"""Lab containers on the real kernel: netns, veth, cgroup, and their cleanup."""
import os
import socket
import subprocess
import sys

import pytest
from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns

from pybpf import mounts
from bpfhook import cgroups, forwarding
from bpfhook.lab import CGROUP_PARENT, LAB_IFS, Lab, LabError, host_ifname
from tests import oracles
from tests.conftest import slow_factor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Prints the cgroup2 path and the netns inode of the process that runs it.
WHOAMI = "import os; print(open('/proc/self/cgroup').read().split('0::')[1].strip()); print(os.stat('/proc/self/ns/net').st_ino)"

# A one-shot TCP echo server: prints "ready" once listening, echoes one message.
ECHO_SERVER = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
with socket.socket(family, socket.SOCK_STREAM) as s:
    s.settimeout(10)
    s.bind((sys.argv[1], 0))
    s.listen(1)
    print(s.getsockname()[1], flush=True)
    conn, peer = s.accept()
    with conn:
        conn.sendall(conn.recv(100) + b" from " + peer[0].encode())
"""


def _leftovers(name):
    """Names of what still exists of container `name` on the host."""
    with IPRoute() as ipr:
        links = ipr.link_lookup(ifname=host_ifname(name))
    found = []
    if links:
        found.append("link")
    if f"bpfhook-{name}" in pyroute2_netns.listnetns():
        found.append("netns")
    if os.path.exists(cgroups.directory(f"{CGROUP_PARENT}/{name}")):
        found.append("cgroup")
    if os.path.exists(os.path.join(Lab.state_dir, name + ".json")):
        found.append("state")
    if forwarding.present(name, host_ifname(name), LAB_IFS):
        found.append("rule")
    return found


def _run_inside(container, argv, timeout=10):
    p = container.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def _echo_roundtrip(container, address):
    server = container.spawn([sys.executable, "-c", ECHO_SERVER, address], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        with socket.create_connection((address, port), timeout=5) as s:
            s.sendall(b"hello")
            reply = s.recv(100)
        assert server.wait(timeout=5) == 0
        return reply.decode()
    finally:
        server.kill()
        server.wait()


# --- cgroups -----------------------------------------------------------------


def test_cgroup2_mount_is_the_unified_hierarchy():
    root = cgroups.mount()
    assert os.path.exists(os.path.join(root, "cgroup.procs"))
    assert os.path.exists(os.path.join(root, "cgroup.subtree_control"))  # cgroup2 only
    assert os.path.isdir(cgroups.directory(cgroups.of_pid()))


def test_mountinfo_parsing_prefers_the_root_mount_and_unescapes():
    tmpfs = "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw"
    bind = "50 31 0:38 /sub /mnt/bind\\040mount rw - cgroup2 cgroup2 rw"
    root = "41 31 0:38 / /sys/fs/cgroup/with\\040space rw,relatime shared:9 - cgroup2 cgroup2 rw"
    def find_cgroup2(lines):
        return mounts.cgroup2_root(mounts.parse(lines))

    assert find_cgroup2([tmpfs, bind, root]) == "/sys/fs/cgroup/with space"
    assert find_cgroup2([tmpfs, bind]) == "/mnt/bind mount"
    with pytest.raises(cgroups.FeatureUnavailable, match="no cgroup2"):
        find_cgroup2([tmpfs])


def test_cgroup_ids_and_paths_round_trip():
    cg = f"{CGROUP_PARENT}-unit-{os.getpid()}/child"
    cgid = cgroups.create(cg)
    try:
        assert cgid == cgroups.cgroup_id(cg)
        assert cgroups.path_of_id(cgid) == cg
        assert cgroups.path_of_id(cgroups.cgroup_id("/")) == "/"
        sleeper = subprocess.Popen(["sleep", "30"])
        cgroups.move(sleeper.pid, cg)
        assert cgroups.of_pid(sleeper.pid) == cg
        assert cgroups.pids(cg) == [sleeper.pid]
    finally:
        cgroups.remove(os.path.dirname(cg))
    assert sleeper.wait(timeout=5) == -9
    assert not os.path.exists(cgroups.directory(cg))
    assert cgroups.path_of_id(cgid) is None


# --- containers --------------------------------------------------------------


def test_process_inside_has_the_container_cgroup_and_netns(lab):
    c = lab()
    rc, out, err = _run_inside(c, [sys.executable, "-c", WHOAMI])
    assert rc == 0, err
    cgroup, netns_ino = out.split()
    assert cgroup == c.cgroup_path == f"{CGROUP_PARENT}/{c.name}"
    assert cgroups.cgroup_id(cgroup) == c.cgroup_id != cgroups.cgroup_id(cgroups.of_pid())
    assert cgroups.path_of_id(c.cgroup_id) == c.cgroup_path
    assert int(netns_ino) == c.netns_ino != os.stat("/proc/self/ns/net").st_ino
    with IPRoute() as ipr:
        (link,) = ipr.get_links(c.ifindex)
    assert link.get("ifname") == c.host_if


def test_container_pings_its_host_side_over_v4_and_v6(lab):
    ping = oracles.require("ping")
    c = lab(ipv6=True)
    for address in (c.host_ipv4, c.host_ipv6):
        rc, out, err = _run_inside(c, [ping, "-n", "-c", "2", "-i", "0.2", "-W", "2", address])
        assert rc == 0, out + err
        assert " 0% packet loss" in out


def test_host_reaches_a_tcp_server_inside(lab):
    c = lab(ipv6=True)
    assert _echo_roundtrip(c, c.ipv4) == f"hello from {c.host_ipv4}"
    assert _echo_roundtrip(c, c.ipv6) == f"hello from {c.host_ipv6}"


def test_down_kills_processes_and_leaves_nothing(lab):
    c = lab()
    sleeper = c.spawn(["sleep", "60"])
    assert c.pids() == [sleeper.pid]
    assert set(_leftovers(c.name)) == {"link", "netns", "cgroup", "state"} | ({"rule"} if forwarding.iptables() else set())
    c.down()
    assert sleeper.wait(timeout=5) == -9
    assert _leftovers(c.name) == []
    with IPRoute() as ipr:
        assert not [a for a in ipr.get_addr(family=socket.AF_INET) if a.get("address") == c.host_ipv4]
    with pytest.raises(LabError, match="no container"):
        Lab.down(c.name)
    with pytest.raises(LabError, match="not running"):
        c.spawn(["true"])


def test_context_manager_takes_the_container_down(lab):
    with lab(ipv6=False) as c:
        assert c.ipv6 is None and c.host_ipv6 is None
        assert Lab.get(c.name) == c
    assert _leftovers(c.name) == []


def test_bad_names_are_refused_before_anything_is_made():
    for name in ("", "UPPER", "a/b", "-lead", "x" * 33, "dot.ted"):
        with pytest.raises(LabError, match="bad container name"):
            Lab.up(name)


def test_failing_up_rolls_back(lab, tmp_path):
    class Unwritable(Lab):
        state_dir = str(tmp_path)

    name = f"rb{os.getpid()}"
    # The state file is the last step: make its temporary file impossible to create.
    os.mkdir(tmp_path / f"{name}.json.{os.getpid()}.tmp")
    with pytest.raises(IsADirectoryError):
        Unwritable.up(name, ipv6=True)
    assert _leftovers(name) == []
    assert not (tmp_path / f"{name}.json").exists()


def test_up_refuses_an_existing_container(lab):
    c = lab()
    with pytest.raises(LabError, match="exists"):
        Lab.up(c.name)
    assert Lab.get(c.name) == c  # untouched


def test_down_cleans_up_after_an_up_that_was_killed(lab):
    c = lab()
    os.unlink(os.path.join(Lab.state_dir, c.name + ".json"))  # as if up died before writing it
    with pytest.raises(LabError, match="exists .*netns"):
        Lab.up(c.name)
    Lab.down(c.name)
    assert _leftovers(c.name) == []


def test_two_containers_at_once(lab):
    a, b = lab(), lab()
    assert len({a.slot, b.slot}) == 2
    assert len({a.netns_ino, b.netns_ino}) == 2
    assert len({a.cgroup_id, b.cgroup_id}) == 2
    assert {x.name for x in Lab.list()} >= {a.name, b.name}
    assert _echo_roundtrip(a, a.ipv4) == f"hello from {a.host_ipv4}"
    assert _echo_roundtrip(b, b.ipv4) == f"hello from {b.host_ipv4}"
    a.down()
    assert _leftovers(a.name) == []
    rc, out, _ = _run_inside(b, [sys.executable, "-c", WHOAMI])
    assert rc == 0 and out.split()[0] == b.cgroup_path


def _cli(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "bpfhook", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=60 * slow_factor(), **kw
    )


def test_cli_up_exec_list_down():
    name = f"cli{os.getpid()}"
    up = _cli("lab", "up", name, "--ipv6")
    try:
        assert up.returncode == 0, up.stderr
        c = Lab.get(name)
        assert c.ipv6 in up.stdout
        assert name in _cli("lab", "list").stdout
        ran = _cli("lab", "exec", name, "--", sys.executable, "-c", WHOAMI + "; raise SystemExit(3)")
        assert ran.returncode == 3, ran.stderr
        assert ran.stdout.split() == [c.cgroup_path, str(c.netns_ino)]
        again = _cli("lab", "up", name)
        assert again.returncode == 1
        assert again.stderr.startswith(f"bpfhook: error: container '{name}' exists")
        assert len(again.stderr.splitlines()) == 1
    finally:
        down = _cli("lab", "down", name)
    assert down.returncode == 0, down.stderr
    assert _leftovers(name) == []
    gone = _cli("lab", "down", name)
    assert (gone.returncode, gone.stderr) == (1, f"bpfhook: error: no container '{name}'\n")


# --- on a Docker host: FORWARD policy DROP ------------------------------------------

# What dockerd does to the filter table: FORWARD's policy DROP, its chains jumped to first.
DOCKER_LIKE = (["-P", "FORWARD", "DROP"], ["-N", "DOCKER-USER"], ["-A", "DOCKER-USER", "-j", "RETURN"],
               ["-N", "DOCKER-ISOLATION-STAGE-1"], ["-A", "DOCKER-ISOLATION-STAGE-1", "-j", "RETURN"],
               ["-I", "FORWARD", "-j", "DOCKER-ISOLATION-STAGE-1"], ["-I", "FORWARD", "-j", "DOCKER-USER"])

FIREWALLED = r"""
import json, subprocess, sys
from bpfhook import demo, forwarding
from bpfhook.lab import LAB_IFS, Lab

def iptables(*args):
    return subprocess.run(["iptables", "-w", "5", *args], capture_output=True, text=True, check=True).stdout

for args in json.loads(sys.argv[2]):
    iptables(*args)
before = iptables("-S")
a, b = Lab.up(sys.argv[1] + "a", ipv6=False), Lab.up(sys.argv[1] + "b", ipv6=False)
reach = lambda: a.spawn(["ping", "-n", "-q", "-c", "1", "-W", "1", b.ipv4], stdout=subprocess.DEVNULL).wait() == 0
try:
    during = iptables("-S")
    reached = reach()
    forwarding.revoke(a.name, a.host_if, LAB_IFS)
    dropped = not reach()  # the control: this firewall really drops what the rules let through
    forwarding.allow(a.name, a.host_if, LAB_IFS)
    with demo.server(b):
        sent, _ = demo.client(a, b.ipv4, nbytes=256 << 10, datagrams=5)
finally:
    a.down()
    b.down()
print(json.dumps({"before": before, "during": during, "after": iptables("-S"), "reached": reached,
                  "dropped": dropped, "sent": sent}))
"""


def _in_own_netns(argv, timeout):
    """argv in a network namespace of its own: its iptables rules are its own, the host's stay untouched."""
    unshare = oracles.require("unshare")
    iptables = oracles.require("iptables")
    probe = subprocess.run([unshare, "--net", iptables, "-w", "5", "-S"], capture_output=True, text=True, timeout=60)
    if probe.returncode:
        pytest.skip(f"iptables cannot run here: {(probe.stderr.strip().splitlines() or ['?'])[-1]}")
    return subprocess.run([unshare, "--net", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout * slow_factor(), env=dict(os.environ, PYTHONPATH=ROOT))


def test_containers_reach_each_other_through_a_docker_firewall():
    """FORWARD at DROP behind Docker's chains: each container's one rule lets lab traffic through,
    and down leaves the table exactly as it was."""
    import json

    oracles.require("ping")
    name = f"fw{os.getpid() % 100000}"
    done = _in_own_netns([sys.executable, "-c", FIREWALLED, name, json.dumps(DOCKER_LIKE)], timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["reached"] and result["dropped"] and result["sent"] == 256 << 10
    assert result["after"] == result["before"]
    added = [line for line in result["during"].splitlines() if line not in result["before"].splitlines()]
    assert added == [f'-A FORWARD -i {host_ifname(name + x)} -o bh-+ -m comment --comment "bpfhook lab {name + x}" '
                     "-j ACCEPT" for x in "ba"]  # first in FORWARD, newest first
    during = result["during"].splitlines()
    assert all(during.index(rule) < during.index("-A FORWARD -j DOCKER-USER") for rule in added)
    assert _leftovers(name + "a") == [] and _leftovers(name + "b") == []


def test_sigterm_to_the_demo_leaves_the_firewall_as_found():
    import json

    script = (
        "import json, signal, subprocess, sys\n"
        "run = lambda *a: subprocess.run(['iptables', '-w', '5', *a], capture_output=True, text=True, check=True).stdout\n"
        "for args in json.loads(sys.argv[1]): run(*args)\n"
        "before = run('-S')\n"
        "demo = subprocess.Popen([sys.executable, '-m', 'bpfhook', 'demo', 'mirror', '--seconds', '60'],\n"
        "                        stdout=subprocess.PIPE, text=True)\n"
        "lines = [demo.stdout.readline() for _ in range(2)]\n"
        "during = run('-S')\n"
        "demo.send_signal(signal.SIGTERM)\n"
        "out = demo.communicate(timeout=60)[0]\n"
        "print(json.dumps({'before': before, 'during': during, 'after': run('-S'), 'lines': lines, "
        "'out': out, 'rc': demo.returncode}))\n")
    done = _in_own_netns([sys.executable, "-c", script, json.dumps(DOCKER_LIKE)], timeout=180)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["lines"][1].startswith("mirroring"), result
    assert len(result["during"].splitlines()) == len(result["before"].splitlines()) + 3  # client, server, observer
    assert result["rc"] == 0 and "removed containers" in result["out"]
    assert result["after"] == result["before"]
