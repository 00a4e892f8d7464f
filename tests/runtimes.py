"""Real container engines for the tests: Docker, containerd in a pod's place, podman.

An engine is started only when it is not running, and stopped only when the test run started
it. Before anything starts, the host's firewall (iptables-save, ip6tables-save, nft tables),
its IP forwarding switches, links and cgroup parents are saved; afterwards they are put back
exactly and the bridges an engine added (docker0, cni-podman0) are removed. Rules of lab
containers that exist at that moment are kept (bpfhook.forwarding).

No registry: the image is empty (`docker import` / `podman import` of an empty tar, or a
directory for ctr's --rootfs) and the host's /usr /lib /lib64 /bin /etc are bind-mounted
read-only; the container runs /usr/bin/python3 (APP below).

    with runtimes.docker_engine() as engine:
        c = engine.run("web1")              # a Running: name, id, pid, ip, host_ip, specs
"""
import contextlib
import dataclasses
import io
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid

import pytest

from bpfhook import cgroups, runtimes
from bpfhook.lab import Lab
from tests import oracles
from tests.conftest import slow_factor

HOST_DIRS = ("/usr", "/lib", "/lib64", "/bin", "/etc")
IMAGE = "bpfhook-test-empty:latest"
DOCKER_SOCKET = "/var/run/docker.sock"
ENGINE_BRIDGES = ("docker0", "cni-podman0", "podman0", "cni0")
ENGINE_CGROUPS = ("/docker", "/libpod_parent", "/kubepods")
FORWARDING = ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding")
LAB_RULE = '--comment "bpfhook lab '
CTR_NAMESPACE = "bpfhook-test"
KUBE_NAMESPACE = "bpfhook-ns"
START_SECONDS = 60

# Inside the container: a TCP server on PORT for SECONDS. A connection that sends
# "CONNECT HOST PORT" makes the container connect out there; any other gets "ok " + its bytes.
APP = r"""
import socket, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", port)); s.listen(8)
print("ready", flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    s.settimeout(max(0.1, end - time.monotonic()))
    try:
        c, peer = s.accept()
    except OSError:
        break
    with c:
        c.settimeout(5)
        try:
            data = c.recv(65536)
            if data.startswith(b"CONNECT "):
                host, out_port = data.split()[1:3]
                with socket.create_connection((host.decode(), int(out_port)), timeout=5) as out:
                    out.sendall(b"hello from inside")
            c.sendall(b"ok " + data[:64])
        except OSError:
            pass
"""
APP_PORT = 8080
APP_SECONDS = 900  # a bound: the container ends by itself


def _run(argv, timeout=120, check=True, **kw):
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout * slow_factor(), **kw)
    if check and done.returncode:
        raise RuntimeError(f"{shlex.join(argv)}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
    return done


# -- the host, as found ------------------------------------------------------------------------

def _iptables_save(family):
    binary = shutil.which(f"{family}-save")
    return _run([binary]).stdout if binary else None


def _nft_tables():
    nft = shutil.which("nft")
    return set(_run([nft, "list", "tables"]).stdout.split("\n")) - {""} if nft else set()


def _links():
    """The engines' links in this netns: their bridges and veths (others' come and go meanwhile)."""
    return {link["ifname"] for link in json.loads(_run(["ip", "-j", "link", "show"]).stdout)
            if link["ifname"] in ENGINE_BRIDGES or link["ifname"].startswith("veth")}


def _cgroup_dirs():
    """Engine cgroup parents that exist, in every hierarchy (this host is hybrid: v1 controllers too)."""
    found = set()
    for hierarchy in sorted(os.listdir("/sys/fs/cgroup")):
        for parent in ENGINE_CGROUPS:
            path = os.path.join("/sys/fs/cgroup", hierarchy, parent.lstrip("/"))
            if os.path.isdir(path):
                found.add(path)
    return found


def rules_without_counters(text):
    """iptables-save output to compare: no comments, no packet counters, and no table that holds
    nothing (built-in chains at ACCEPT, no rule: what a table made and emptied again looks like)."""
    tables, current = [], None
    for line in (text or "").splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = [line]
            tables.append(current)
        elif current is not None:
            current.append(line.split(" [")[0] if line.startswith(":") else line)
    empty = lambda t: all(x.startswith("*") or x == "COMMIT" or (x.startswith(":") and x.endswith(" ACCEPT"))
                          for x in t)  # noqa: E731
    return [line for table in tables if not empty(table) for line in table]


@dataclasses.dataclass
class HostState:
    """What container engines change on a host, saved so that it can be put back."""

    rules: dict  # family -> iptables-save text (None: no such command)
    nft: set
    forwarding: dict
    links: set
    cgroups: set

    @classmethod
    def save(cls):
        forwarding = {}
        for path in FORWARDING:
            with contextlib.suppress(OSError), open(path) as f:
                forwarding[path] = f.read().strip()
        return cls({family: _iptables_save(family) for family in ("iptables", "ip6tables")}, _nft_tables(),
                   forwarding, _links(), _cgroup_dirs())

    def restore(self):
        """Put the firewall, forwarding, links and cgroup parents back as saved."""
        lab_rules = {family: [line for line in rules_without_counters(_iptables_save(family)) if LAB_RULE in line]
                     for family in self.rules if self.rules[family] is not None}
        for family, saved in self.rules.items():
            if saved is None:
                continue
            kept = "\n".join(line for line in saved.splitlines() if LAB_RULE not in line) + "\n"
            if kept.strip():
                _run([f"{family}-restore"], input=kept)
        for table in sorted(_nft_tables() - self.nft):  # tables an engine made: iptables-restore leaves them
            _run(["nft", "delete", *table.split()])
        for family, lines in lab_rules.items():  # lab containers running now keep their rules, first in FORWARD
            for line in reversed(lines):
                _run([family, "-w", "5", "-I", "FORWARD", "1", *shlex.split(line)[2:]])
        for path, value in self.forwarding.items():
            with open(path, "w") as f:
                f.write(value)
        for lab in Lab.list():  # writing ip_forward set every interface's forwarding: the lab's back on
            with contextlib.suppress(OSError), open(f"/proc/sys/net/ipv4/conf/{lab.host_if}/forwarding", "w") as f:
                f.write("1")
        for link in sorted((_links() - self.links) & set(ENGINE_BRIDGES)):
            _run(["ip", "link", "delete", link])
        for path in sorted(_cgroup_dirs() - self.cgroups):
            for directory, _dirs, _files in os.walk(path, topdown=False):  # children first
                with contextlib.suppress(OSError):  # only empty ones: a busy cgroup is someone's
                    os.rmdir(directory)

    def differences(self):
        """What differs from the saved state now (empty when the host is as found)."""
        now = HostState.save()
        out = []
        for family in self.rules:
            before = [line for line in rules_without_counters(self.rules[family]) if LAB_RULE not in line]
            after = [line for line in rules_without_counters(now.rules[family]) if LAB_RULE not in line]
            if before != after:
                out.append(f"{family}: {sorted(set(before) ^ set(after))}")
        for what in ("forwarding", "links", "cgroups"):
            if getattr(self, what) != getattr(now, what):
                out.append(f"{what}: {getattr(self, what)} -> {getattr(now, what)}")
        return out


@contextlib.contextmanager
def host_kept():
    """The host as found afterwards; raises AssertionError when it could not be put back."""
    saved = HostState.save()
    try:
        yield saved
    finally:
        saved.restore()
    left = saved.differences()
    assert not left, f"the host is not as found: {left}"


# -- daemons ----------------------------------------------------------------------------------

def skip_in_kernel_matrix():
    """Engines run on the host only: in the matrix's guests (vagrant/matrix.py sets BPFHOOK_SLOW:
    the host's files read-only, TCG emulation) dockerd did not start, and would take minutes if it did."""
    if os.environ.get("BPFHOOK_SLOW"):
        pytest.skip("container engines are tested on the host, not in the kernel matrix")


def _answers(socket_path):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(1)
        try:
            s.connect(socket_path)
            return True
        except OSError:
            return False


@contextlib.contextmanager
def daemon(argv, socket_path, log_name, ready=None):
    """Start argv unless something answers on socket_path; stop it afterwards only if we started it.
    ready(): true once the daemon serves (default: its socket takes connections)."""
    ready = ready or (lambda: _answers(socket_path))
    skip_in_kernel_matrix()
    if _answers(socket_path):
        yield False
        return
    log = open(os.path.join(tempfile.gettempdir(), f"bpfhook-test-{log_name}-{os.getpid()}.log"), "w")
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        deadline = time.monotonic() + START_SECONDS * slow_factor()
        while not ready():
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} did not start (exit {p.poll()}); see {log.name}")
            time.sleep(0.1)
        yield True
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30 * slow_factor())
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.close()


def dockerd(dockerd_path):
    """daemon() for dockerd: ready once its API answers (its socket takes connections before it has
    made its bridge and firewall rules, and only then serves)."""
    api = runtimes.DockerApi(DOCKER_SOCKET, timeout=5, retry_after=0)
    return daemon([dockerd_path], DOCKER_SOCKET, "dockerd", ready=lambda: api.get("/info") is not None)


def _empty_tar():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w"):
        pass
    return buf.getvalue()


# -- containers -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Running:
    """A container running APP."""

    runtime: str  # docker, containerd, podman
    name: str  # what a user would write: docker/podman name, namespace/pod/container for a pod
    id: str  # full container id
    pid: int  # APP's pid on the host
    ip: str  # the container's address
    host_ip: str  # the host's address on the container's network (the container connects out there)
    cgroup: str  # its cgroup2 path
    pod: str = ""
    namespace: str = ""
    short_name: str = ""  # the container's own name (in a pod: the container's, without pod and namespace)

    def request(self, payload, timeout=10):
        """Send payload to APP, return its answer."""
        with socket.create_connection((self.ip, APP_PORT), timeout=timeout) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            out = b""
            while chunk := s.recv(4096):
                out += chunk
        return out


def _wait_for_app(pid_of, ip, what):
    """Poll until APP answers on ip:APP_PORT; returns its pid."""
    deadline = time.monotonic() + START_SECONDS * slow_factor()
    while True:
        with contextlib.suppress(OSError):
            with socket.create_connection((ip, APP_PORT), timeout=1) as s:
                s.sendall(b"ping")
                s.shutdown(socket.SHUT_WR)
                if s.recv(16).startswith(b"ok"):
                    return pid_of()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: the app in the container did not answer on {ip}:{APP_PORT}")
        time.sleep(0.2)


class _CliEngine:
    """docker and podman: one CLI, the same verbs."""

    runtime = ""

    def __init__(self, cli, run_flags=()):
        self.cli, self.run_flags, self.made = cli, tuple(run_flags), []

    def __call__(self, *args, **kw):
        return _run([self.cli, *args], **kw)

    def import_image(self):
        with tempfile.NamedTemporaryFile(suffix=".tar") as tar:
            tar.write(_empty_tar())
            tar.flush()
            self("import", tar.name, IMAGE)

    def run(self, name, argv=None):
        argv = argv or ["/usr/bin/python3", "-c", APP, str(APP_PORT), str(APP_SECONDS)]
        mounts = [flag for d in HOST_DIRS if os.path.exists(d) for flag in ("-v", f"{d}:{d}:ro")]
        self.made.append(name)
        cid = self("run", "-d", "--name", name, *self.run_flags, *mounts, IMAGE, *argv).stdout.strip()
        info = json.loads(self("inspect", cid).stdout)[0]
        net = info["NetworkSettings"]
        ip, gateway = net.get("IPAddress"), net.get("Gateway")
        if not ip:  # podman names its networks
            ip, gateway = next((n["IPAddress"], n["Gateway"]) for n in net["Networks"].values())
        pid = _wait_for_app(lambda: json.loads(self("inspect", cid).stdout)[0]["State"]["Pid"], ip, name)
        return Running(self.runtime, name, cid, pid, ip, gateway, cgroups.of_pid(pid), short_name=name)

    def remove_all(self):
        for name in self.made:
            self("rm", "-f", name, check=False)
        self.made.clear()


class Docker(_CliEngine):
    runtime = "docker"


class Podman(_CliEngine):
    runtime = "podman"
    # crun refuses this hybrid cgroup host; podman's default rlimits exceed the sandbox's
    FLAGS = ("--runtime", "runc", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")


def docker_cli(dockerd):
    """The docker client of the same install as dockerd (another one earlier on PATH may be newer)."""
    for directory in (os.path.dirname(dockerd), "/usr/bin"):  # Debian: /usr/sbin/dockerd, /usr/bin/docker
        cli = os.path.join(directory, "docker")
        if os.access(cli, os.X_OK):
            return cli
    return shutil.which("docker")


@contextlib.contextmanager
def _with_image(engine):
    """engine with IMAGE imported; its containers, and IMAGE when we imported it, removed after."""
    present = engine("images", "-q", IMAGE).stdout.strip()
    engine.import_image()
    try:
        yield engine
    finally:
        engine.remove_all()
        if not present:
            engine("rmi", IMAGE, check=False)


@contextlib.contextmanager
def docker_engine():
    """Docker with its default bridge and firewall, on the default cgroupfs driver."""
    dockerd_path = oracles.require("dockerd")
    with host_kept(), dockerd(dockerd_path), _with_image(Docker(docker_cli(dockerd_path))) as engine:
        yield engine


@contextlib.contextmanager
def podman_engine():
    """podman (no daemon) with runc, its CNI bridge and firewall rules."""
    oracles.require("runc")
    with host_kept(), _with_image(Podman(oracles.require("podman"), Podman.FLAGS)) as engine:
        yield engine


class Containerd:
    """ctr run in a Kubernetes pod's place: cgroupfs layout /kubepods/besteffort/pod<uid>/<id>,
    the annotations kubelet's CRI sets, and a pod network namespace with a routed veth (a lab
    container's netns: Calico's layout), shared by the pod's sandbox and its container."""

    runtime = "containerd"

    def __init__(self, ctr, rootfs):
        self.ctr, self.rootfs, self.made, self.pods = ctr, rootfs, [], []

    def __call__(self, *args, **kw):
        return _run([self.ctr, "-n", CTR_NAMESPACE, *args], **kw)

    def _start(self, cid, cgroup, netns, annotations, argv):
        mounts = [flag for d in HOST_DIRS if os.path.exists(d)
                  for flag in ("--mount", f"type=bind,src={d},dst={d},options=rbind:ro")]
        notes = [flag for k, v in annotations.items() for flag in ("--annotation", f"{k}={v}")]
        self.made.append(cid)
        self("run", "-d", "--rootfs", "--cgroup", cgroup, "--with-ns", f"network:{netns}", *mounts, *notes,
             self.rootfs, cid, *argv)

    def run(self, name, pod=None, namespace=KUBE_NAMESPACE):
        """A pod `pod` (default name-pod) with a sandbox and one container `name` running APP."""
        pod = pod or f"{name}-pod"
        uid = str(uuid.uuid4())
        lab = Lab.up(f"p{secrets.token_hex(4)}", ipv6=False)
        self.pods.append(lab.name)
        sandbox_id, cid = secrets.token_hex(32), secrets.token_hex(32)
        common = {"io.kubernetes.cri.sandbox-id": sandbox_id, "io.kubernetes.cri.sandbox-name": pod,
                  "io.kubernetes.cri.sandbox-namespace": namespace}
        parent = f"/kubepods/besteffort/pod{uid}"
        self._start(sandbox_id, f"{parent}/{sandbox_id}", lab.netns_path,
                    dict(common, **{"io.kubernetes.cri.container-type": "sandbox"}),
                    ["/usr/bin/python3", "-c", f"import time; time.sleep({APP_SECONDS})"])
        self._start(cid, f"{parent}/{cid}", lab.netns_path,
                    dict(common, **{"io.kubernetes.cri.container-type": "container",
                                    "io.kubernetes.cri.container-name": name}),
                    ["/usr/bin/python3", "-c", APP, str(APP_PORT), str(APP_SECONDS)])
        cgroup = f"{parent}/{cid}"
        pid = _wait_for_app(lambda: cgroups.pids(cgroup)[0], lab.ipv4, name)
        return Running(self.runtime, f"{namespace}/{pod}/{name}", cid, pid, lab.ipv4, lab.host_ipv4, cgroup,
                       pod=pod, namespace=namespace, short_name=name)

    def remove_all(self):
        for cid in reversed(self.made):
            self("task", "kill", "-s", "SIGKILL", cid, check=False)
            deadline = time.monotonic() + 30 * slow_factor()
            while self("task", "delete", cid, check=False).returncode and time.monotonic() < deadline:
                time.sleep(0.1)  # the task is still exiting
            self("container", "delete", cid, check=False)
        self.made.clear()
        for name in self.pods:
            Lab.down(name)
        self.pods.clear()


@contextlib.contextmanager
def containerd_engine():
    containerd = oracles.require("containerd")
    ctr = oracles.require("ctr")
    oracles.require("runc")
    with host_kept(), daemon([containerd], "/run/containerd/containerd.sock", "containerd"), \
            tempfile.TemporaryDirectory(prefix="bpfhook-rootfs-") as rootfs:
        for d in (*HOST_DIRS, "/proc", "/sys", "/dev", "/tmp"):
            os.makedirs(rootfs + d, exist_ok=True)
        engine = Containerd(ctr, rootfs)
        try:
            yield engine
        finally:
            engine.remove_all()
            engine("namespace", "remove", CTR_NAMESPACE, check=False)


ENGINES = {"docker": docker_engine, "containerd": containerd_engine, "podman": podman_engine}


def host_server(address):
    """A one-connection TCP server on the host at address: (listening socket, port); the caller accepts."""
    s = socket.socket()
    s.bind((address, 0))
    s.listen(4)
    s.settimeout(15 * slow_factor())
    return s, s.getsockname()[1]


if __name__ == "__main__":  # a manual look: python -m tests.runtimes docker|containerd|podman
    with ENGINES[sys.argv[1]]() as eng:
        running = eng.run("manual1")
        print(running)
        print(running.request(b"hello"))
