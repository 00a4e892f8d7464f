"""The monitor inside a Docker container given exactly the DaemonSet's capabilities, --pid host
and its mounts (deploy/kubernetes/bpfhook.yaml): it names another container's inbound and
outbound connections as on the host. With each capability dropped in turn it refuses, naming
the capability, or warns with the line `bpfhook doctor` gives. No registry: the image is the
empty one of tests/runtimes.py, the host's /usr /lib /lib64 /bin /etc and this checkout (and
its dependencies) mounted read-only; and the image deploy/kubernetes/Dockerfile builds, on a
base made here (debootstrap: a minimal Debian with python3, pip and the three dependencies
from the apt mirrors, `docker import`ed), with nothing of the host's mounted."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from bpfhook import doctor
from bpfhook import runtimes as bpfhook_runtimes
from tests import oracles, runtimes
from tests.conftest import eventually, slow_factor

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (BPF, Docker)")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFEST = os.path.join(ROOT, "deploy", "kubernetes", "bpfhook.yaml")
SETPRIV = "/usr/bin/setpriv"  # (util-linux, from the host's /usr)
DEPS = os.path.dirname(os.path.dirname(os.path.abspath(yaml.__file__)))  # this venv's site-packages
BASE, BUILT = "bpfhook-test-base:local", "bpfhook-test-built:local"
# The base's root file system, made once (minutes) and kept: a cache, not something a test made
BASE_TAR = os.path.join(os.environ.get("XDG_CACHE_HOME") or "/var/tmp", "bpfhook-test-base-bookworm.tar")
BASE_PACKAGES = ("python3", "python3-pip", "python3-cffi", "python3-construct", "python3-pyroute2")
DEBIAN_MIRROR = os.environ.get("BPFHOOK_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def manifest_container():
    """The DaemonSet's monitor container, and its pod spec."""
    for doc in yaml.safe_load_all(open(MANIFEST)):
        if doc["kind"] == "DaemonSet":
            spec = doc["spec"]["template"]["spec"]
            return spec["containers"][0], spec
    raise AssertionError("no DaemonSet in the manifest")


def manifest_capabilities():
    return set(manifest_container()[0]["securityContext"]["capabilities"]["add"])


def manifest_mounts():
    """[(host path, container path, read only)] of the DaemonSet's hostPath volumes."""
    container, spec = manifest_container()
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    return [(host[m["name"]], m["mountPath"], m.get("readOnly", False)) for m in container["volumeMounts"]
            if m["name"] in host]


def _monitor(engine, name, capabilities, seconds, image=runtimes.IMAGE):
    """`bpfhook monitor --json` in a container with these capabilities (names without CAP_), the
    manifest's hostPath mounts that exist here, --pid host; its name. image: the empty one, run
    from the host's directories and this checkout, or one with bpfhook installed (BUILT)."""
    mounts = []
    for host_path, path, read_only in manifest_mounts() + [(runtimes_root(), runtimes_root(), True)]:
        if os.path.exists(host_path):
            mounts += ["-v", f"{host_path}:{path}{':ro' if read_only else ''}"]
    if image == runtimes.IMAGE:
        for d in runtimes.HOST_DIRS + (ROOT, DEPS):
            if os.path.exists(d):
                mounts += ["-v", f"{d}:{d}:ro"]
        mounts += ["-e", f"PYTHONPATH={ROOT}:{DEPS}"]
        monitor = ["/usr/bin/python3", "-m", "bpfhook"]
    else:
        monitor = ["bpfhook"]
    # Docker 20.10 knows no CAP_BPF or CAP_PERFMON by name: the container may have every
    # capability it knows, and setpriv leaves the monitor only these (its bounding set: root's
    # exec gets no others). Where the engine cannot give CAP_BPF or CAP_PERFMON, the monitor
    # runs on CAP_SYS_ADMIN standing in, and says so when that is dropped too.
    bounding = ",".join(["-all"] + [f"+{cap.lower()}" for cap in sorted(capabilities)])
    engine.made.append(name)
    engine("run", "-d", "--name", name, "--pid", "host", "--cap-add", "ALL", *[
           flag for cap in _not_held() for flag in ("--cap-drop", cap)], *mounts,
           "-e", "NODE_NAME=test-node", "--tmpfs", "/run/bpfhook", "--entrypoint", SETPRIV,
           image, "--bounding-set", bounding, "--inh-caps", "-all", "/bin/sh", "-c",
           'grep CapEff /proc/self/status >&2; exec "$@"', "sh",
           *monitor, "monitor", "--json", "--duration", str(seconds))
    return name


def _held(err):
    """The capabilities (doctor's names) the monitor had, from the CapEff line it started with."""
    line = next(line for line in err.splitlines() if line.startswith("CapEff:"))
    eff = int(line.split()[1], 16)
    return {name for name, (bit, _) in doctor.CAPABILITIES.items() if eff >> bit & 1}


def _not_held():
    """Capabilities (Docker's names) this test process lacks: runc cannot give them (this
    sandbox has no CAP_SYS_RESOURCE)."""
    with open("/proc/self/status") as f:
        bounding = int(next(line.split()[1] for line in f if line.startswith("CapBnd:")), 16)
    names = {24: "SYS_RESOURCE", 16: "SYS_MODULE", 17: "SYS_RAWIO", 25: "SYS_TIME", 37: "AUDIT_READ"}
    return [name for bit, name in names.items() if not bounding >> bit & 1]


def runtimes_root():
    """Docker's container configs: where the monitor reads names (the manifest mounts
    containerd's; a Docker host's is this)."""
    return os.path.join(bpfhook_runtimes.docker_root(), "containers")


def _logs(engine, name):
    done = engine("logs", name, check=False)
    return done.stdout, done.stderr


def _wait_exit(engine, name, timeout=120):
    deadline = time.monotonic() + timeout * slow_factor()
    while time.monotonic() < deadline:
        state = json.loads(engine("inspect", name).stdout)[0]["State"]
        if not state["Running"]:
            return state["ExitCode"]
        time.sleep(0.5)
    raise AssertionError(f"{name} still running")


@pytest.fixture(scope="module")
def engine():
    with runtimes.docker_engine() as running:
        yield running


def test_monitor_with_the_manifests_capabilities_names_another_containers_connections(engine):
    _names_another_containers_connections(engine, runtimes.IMAGE)


def test_the_dockerfiles_image_built_here_does_the_same_with_nothing_of_the_hosts(engine, built_image):
    _names_another_containers_connections(engine, built_image)


def _names_another_containers_connections(engine, image):
    tag = "b" if image == BUILT else ""
    web = engine.run(f"lpweb{tag}{os.getpid() % 100000}")
    name = _monitor(engine, f"lpmon{tag}{os.getpid() % 100000}", manifest_capabilities(), 25, image)
    assert eventually(lambda: "attached" in _logs(engine, name)[1], timeout=60), _logs(engine, name)
    server, port = runtimes.host_server(web.host_ip)
    with server:
        assert web.request(f"CONNECT {web.host_ip} {port}".encode()).startswith(b"ok")  # in, then out
        server.accept()[0].close()
    assert _wait_exit(engine, name) == 0, _logs(engine, name)
    out, err = _logs(engine, name)
    assert "warning: CAP_" not in err, err  # nothing degraded
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    mine = [e for e in events if e.get("container") == web.name and e["event"] in ("connect", "accept", "close")]
    assert {(e["direction"], e["container_kind"]) for e in mine} >= {("in", "docker"), ("out", "docker")}, mine
    outbound = [e for e in mine if e["direction"] == "out" and e["event"] == "close" and e["dport"] == port]
    assert outbound and outbound[0]["connect_us"] > 0


@pytest.fixture(scope="module")
def built_image(engine, tmp_path_factory):
    """deploy/kubernetes/Dockerfile built on BASE (FROM its BASE argument) with this checkout's
    wheel; both images removed after."""
    base = _base_tar()
    # Debian's pip installs beside its python3-* packages only when told to, and needs no
    # index: the wheel's three dependencies are installed
    engine("import", "--change", "ENV PIP_BREAK_SYSTEM_PACKAGES=1", "--change", "ENV PIP_NO_INDEX=1", base, BASE)
    try:
        context = str(tmp_path_factory.mktemp("image") / "source")
        shutil.copytree(ROOT, context, ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis"))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        os.path.join(context, "dist"), context], check=True, capture_output=True, timeout=300)
        engine("build", "-q", "-f", os.path.join(context, "deploy", "kubernetes", "Dockerfile"),
               "--build-arg", f"BASE={BASE}", "-t", BUILT, context, timeout=600)
        yield BUILT
    finally:
        engine("rmi", "-f", BUILT, check=False)
        engine("rmi", "-f", BASE, check=False)


def _base_tar():
    """BASE_TAR, made when missing: debootstrap's minimal Debian (the host's release, from
    DEBIAN_MIRROR) with BASE_PACKAGES, as a tar for `docker import`. Skips with one line
    without debootstrap."""
    if os.path.exists(BASE_TAR):
        return BASE_TAR
    debootstrap = oracles.require("debootstrap")
    release = "bookworm"
    with open("/etc/os-release") as f:
        for line in f:
            if line.startswith("VERSION_CODENAME=") and line.strip().split("=", 1)[1]:
                release = line.strip().split("=", 1)[1]
    with tempfile.TemporaryDirectory(dir=os.path.dirname(BASE_TAR)) as root:
        steps = ([debootstrap, "--variant=minbase", release, root, DEBIAN_MIRROR],
                 # (not --include: debootstrap resolves no virtual packages, which python3-cffi needs)
                 ["chroot", root, "apt-get", "install", "-y", "-q", "--no-install-recommends", *BASE_PACKAGES],
                 ["chroot", root, "apt-get", "clean"],
                 ["tar", "-C", root, "-cf", BASE_TAR + ".partial", "."])
        try:
            for argv in steps:
                subprocess.run(argv, check=True, capture_output=True, timeout=900)
        except BaseException:
            if os.path.exists(BASE_TAR + ".partial"):
                os.unlink(BASE_TAR + ".partial")
            raise
    os.rename(BASE_TAR + ".partial", BASE_TAR)
    return BASE_TAR


@pytest.mark.parametrize("dropped", sorted(doctor.MONITOR))
def test_each_capability_dropped_refuses_or_degrades_with_doctors_line(engine, dropped):
    """What the monitor held is read from inside (CapEff): the expectation is doctor's for it."""
    capability = dropped.removeprefix("CAP_")
    assert capability in manifest_capabilities()
    name = _monitor(engine, f"lp{capability.lower()}{os.getpid() % 100000}", manifest_capabilities() - {capability}, 3)
    code = _wait_exit(engine, name)
    _out, err = _logs(engine, name)
    held = _held(err)
    assert dropped not in held
    missing = dict(doctor.missing_capabilities(held, among=doctor.MONITOR))
    blocking = [c for c in missing if c in doctor.REQUIRED["monitor"]]
    if blocking:
        assert code == 1 and f"bpfhook: error: monitor needs {', '.join(blocking)} (missing here" in err, err
    else:
        assert code == 0, err
        for capability, lost in missing.items():
            assert f"warning: {capability} is missing: {lost.removeprefix('monitor: ')}" in err, err
        assert err.count("warning: CAP_") == len(missing), err


@pytest.mark.parametrize("dropped", sorted(doctor.MONITOR))
def test_on_the_host_exactly_the_manifests_capabilities_less_one(dropped):
    """The same with setpriv on the host, where CAP_BPF and CAP_PERFMON can be given by name:
    without CAP_SYS_ADMIN standing in, each of the first three is needed to start."""
    keep = {f"CAP_{c}" for c in manifest_capabilities()} - {dropped, "CAP_SYS_ADMIN"}
    bounding = ",".join(["-all"] + [f"+{c.removeprefix('CAP_').lower()}" for c in sorted(keep)])
    done = subprocess.run([SETPRIV, "--bounding-set", bounding, "--inh-caps", "-all", sys.executable, "-m", "bpfhook",
                           "monitor", "--duration", "1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120 * slow_factor())
    missing = dict(doctor.missing_capabilities(keep, among=doctor.MONITOR))
    if dropped in doctor.REQUIRED["monitor"]:
        assert done.returncode == 1 and f"monitor needs {dropped} (missing here" in done.stderr, done.stderr
    else:
        assert done.returncode == 0, done.stderr
        assert {line.split(" is missing")[0].rsplit(" ", 1)[1] for line in done.stderr.splitlines()
                if " is missing: " in line} == set(missing), done.stderr
