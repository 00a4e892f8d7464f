"""cgroup id -> cgroup path -> container.

A cgroup v2 path says which runtime made a cgroup and for which container:

  docker      /system.slice/docker-<64hex>.scope        (systemd driver)
              /docker/<64hex>                           (cgroupfs driver)
  kubernetes  /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/
                  cri-containerd-<64hex>.scope | crio-<64hex>.scope | docker-<64hex>.scope
              /kubepods/besteffort/pod<uid>/<64hex>     (cgroupfs driver)
              (the systemd driver writes the pod uid with '_' for '-')
  podman      /machine.slice/libpod-<64hex>.scope, .../user.slice/libpod-<64hex>.scope,
              /libpod_parent/libpod-<64hex>; libpod-conmon-<id>.scope is its monitor
  cri-o       crio-<64hex>.scope, crio-conmon-<id>.scope is its monitor
  lab         /bpfhook.lab/NAME                         (bpfhook lab containers)
  service     /system.slice/foo.service (also user@UID.service/app.slice/foo.service)
  session     /user.slice/user-UID.slice/session-N.scope
  host        /, /init.scope and anything unrecognised

Components are read innermost first, so a container nested in another
(kind-in-docker, a pod in a VM slice) is attributed to the innermost one.
Container names (and a pod's name and namespace) come from where the runtime
keeps them (bpfhook.runtimes); ids always come from the path.
"""
import collections
import dataclasses
import os
import re

from bpfhook import cgroups, runtimes
from pybpf.errors import BpfError

_HEX64 = r"([0-9a-f]{64})"
# (regex on one path component, kind, runtime); first match wins.
_CONTAINER_COMPONENTS = [
    (re.compile(rf"cri-containerd[-:]{_HEX64}(?:\.scope)?\Z"), "pod", "containerd"),
    (re.compile(rf"crio-{_HEX64}(?:\.scope)?\Z"), "pod", "cri-o"),
    (re.compile(rf"docker-{_HEX64}\.scope\Z"), "docker", "docker"),
    (re.compile(rf"libpod-{_HEX64}(?:\.scope)?\Z"), "podman", "podman"),
]
_BARE_ID = re.compile(rf"{_HEX64}\Z")  # cgroupfs drivers: docker's /docker/<id>, kubelet's pod<uid>/<id>
_MONITOR = re.compile(rf"(?:libpod|crio)-conmon-{_HEX64}(?:\.scope)?\Z")
# kubepods-burstable-pod<uid>.slice, kubepods-pod<uid>.slice (guaranteed), pod<uid> (cgroupfs)
_POD = re.compile(r"(?:kubepods-(?:[a-z]+-)?)?pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?\Z")
_SESSION = re.compile(r"session-([^/]+)\.scope\Z")
_USER_SLICE = re.compile(r"user-(\d+)\.slice\Z")

LAB_PARENT = "bpfhook.lab"


@dataclasses.dataclass(frozen=True)
class Container:
    """What a cgroup belongs to."""

    kind: str  # docker, pod, podman, lab, monitor, service, session, host
    id: str  # full container id (64 hex), unit / lab name, "" for the host
    cgroup_path: str
    runtime: str = ""  # docker, containerd, cri-o, podman, bpfhook-lab, systemd, ""
    name: str = ""  # runtime's name when known (a pod's: Kubernetes' container name), else what the path gives
    pod_uid: str = ""  # kubernetes pod uid, with dashes
    pod: str = ""  # kubernetes pod name and namespace, from the runtime (bpfhook.runtimes)
    namespace: str = ""

    @property
    def short_id(self):
        """12 characters for hex container ids, like `docker ps`; other ids unchanged."""
        return self.id[:12] if re.fullmatch(r"[0-9a-f]{13,}", self.id) else self.id

    @property
    def is_container(self):
        return self.kind in ("docker", "pod", "podman", "lab")

    @property
    def label(self):
        """Short human name: namespace/pod/container in a pod, else the name, the short id, the kind."""
        if self.pod:
            return "/".join(x for x in (self.namespace, self.pod, self.name) if x)
        return self.name or self.short_id or self.kind

    def matches(self, text):
        """True when text names this container: its name, id, an id prefix of 4+ characters, or
        namespace/pod (any container of the pod) or namespace/pod/container."""
        if not text:
            return False
        if "/" in text and not text.startswith("/"):
            parts = text.split("/")
            return bool(self.pod) and len(parts) in (2, 3) and parts == [self.namespace, self.pod, self.name][:len(parts)]
        return text in (self.name, self.id, self.short_id) or (len(text) >= 4 and self.id.startswith(text))


def _unescape_unit(name):
    r"""systemd escapes '-' inside unit names as \x2d."""
    return re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m[1], 16)), name)


def classify(cgroup_path):
    """The Container a cgroup path (kernel view, "/..." on cgroup2) belongs to."""
    if cgroup_path is None:
        return Container("host", "", "")
    parts = [p for p in cgroup_path.split("/") if p]
    if len(parts) == 2 and parts[0] == LAB_PARENT:
        return Container("lab", parts[1], cgroup_path, runtime="bpfhook-lab", name=parts[1])
    pod_uid = ""
    for part in parts:
        m = _POD.match(part)
        if m:
            pod_uid = m[1].replace("_", "-")
    for part in reversed(parts):
        for regex, kind, runtime in _CONTAINER_COMPONENTS:
            m = regex.match(part)
            if m:
                kind = "pod" if pod_uid else kind  # any runtime under kubepods runs a pod's container
                return Container(kind, m[1], cgroup_path, runtime=runtime, pod_uid=pod_uid)
        m = _BARE_ID.match(part)
        if m:  # under a pod the runtime is not in the path
            if pod_uid:
                return Container("pod", m[1], cgroup_path, pod_uid=pod_uid)
            return Container("docker", m[1], cgroup_path, runtime="docker")
        m = _MONITOR.match(part)
        if m:
            runtime = "podman" if part.startswith("libpod") else "cri-o"
            return Container("monitor", m[1], cgroup_path, runtime=runtime, pod_uid=pod_uid)
        if pod_uid and _POD.match(part):  # the pod's own cgroup (sandbox level)
            return Container("pod", pod_uid, cgroup_path, pod_uid=pod_uid)
        if part.endswith(".service"):
            unit = _unescape_unit(part)
            return Container("service", unit, cgroup_path, runtime="systemd", name=unit)
        m = _SESSION.match(part)
        if m:
            users = [u[1] for u in map(_USER_SLICE.match, parts) if u]
            name = f"user {users[0]} session {m[1]}" if users else f"session {m[1]}"
            return Container("session", f"session-{m[1]}", cgroup_path, runtime="systemd", name=name)
    return Container("host", "", cgroup_path)


# Where each runtime keeps its containers' names: {runtime: lookup(container id) -> runtimes.Names, or None
# when unknown}, one row per runtime (bpfhook.runtimes; the lab's names are in its cgroup paths).
NAME_SOURCES = runtimes.sources()


def named(container, names=NAME_SOURCES):
    """`container` with what its runtime calls it (name, and a pod's name and namespace), when its
    path gave no name and `names` has a lookup."""
    lookup = names.get(container.runtime)
    if lookup is None or container.name or not container.id or container.id == container.pod_uid \
            or container.kind not in ("docker", "pod", "podman"):
        return container
    found = lookup(container.id)
    if found is None:
        return container
    return dataclasses.replace(container, name=found.name, pod=found.pod, namespace=found.namespace)


class ContainerError(BpfError):
    """No container, or several, fits what the user wrote; `candidates` names the several."""

    def __init__(self, message, candidates=()):
        super().__init__(message)
        self.candidates = tuple(candidates)


def all_containers(names=NAME_SOURCES):
    """Every container on this host, named, at its top cgroup; a pod's own cgroup with the
    namespace and pod its containers carry."""
    found, seen = [], set()
    for path, _directory in cgroups.walk():
        c = classify(path)
        if c.is_container and (c.kind, c.id) not in seen:  # (a container's own cgroups below its top one)
            seen.add((c.kind, c.id))
            found.append(named(c, names))
    pods = {c.pod_uid: c for c in found if c.pod and c.pod_uid}
    return [dataclasses.replace(c, pod=pods[c.pod_uid].pod, namespace=pods[c.pod_uid].namespace)
            if c.id == c.pod_uid and c.pod_uid in pods else c for c in found]


def _within(path, parent):
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def find(spec, names=NAME_SOURCES):
    """The container `spec` names: a cgroup path (also as a directory under the cgroup2 mount), a lab
    name, a runtime's container name, an id or a unique id prefix of 4+ characters, a Kubernetes
    namespace/pod (the pod's cgroup) or namespace/pod/container. A whole name beats a prefix; a
    match holding all the others (a pod and its containers) beats them; else several is an error
    naming each. names: as NAME_SOURCES."""
    if not spec:
        raise ContainerError("empty container name")
    if spec.startswith("/"):
        root = cgroups.mount()
        path = "/" + os.path.relpath(spec, root) if spec.startswith(root + "/") else spec
        if os.path.isdir(cgroups.directory(path)):
            return named(classify(path), names)
    whole, prefixed = [], []
    for c in all_containers(names):
        if spec in (c.name, c.id, c.short_id, c.label):
            whole.append(c)
        elif c.matches(spec):
            prefixed.append(c)
    found = sorted(whole or prefixed, key=lambda c: c.cgroup_path)
    outer = [c for c in found if all(_within(o.cgroup_path, c.cgroup_path) for o in found)]
    if len(outer) == 1:
        return outer[0]
    if len(found) > 1:
        listed = ", ".join(f"{c.label} ({c.kind} {c.cgroup_path})" for c in found)
        raise ContainerError(f"{spec!r} names {len(found)} containers: {listed}", found)
    raise ContainerError(f"no container {spec!r} (a lab name, a cgroup path, a container name, id or id prefix, "
                         "or a Kubernetes namespace/pod[/container])")


class Resolver:
    """cgroup id -> Container, LRU-cached.

    path_of_id: cgroup id -> path or None (bpfhook.cgroups.path_of_id, which
                finds the cgroup2 mount itself, also on hybrid hosts)
    names:      as NAME_SOURCES (the default)
    Cgroup ids are never reused, so cached answers stay right; a cgroup that
    no longer exists resolves to the host with an empty path.
    """

    def __init__(self, path_of_id=None, names=None, maxsize=4096):
        self.path_of_id = path_of_id or cgroups.path_of_id
        self.names = NAME_SOURCES if names is None else names
        self.maxsize = maxsize
        self._cache = collections.OrderedDict()

    def __call__(self, cgroup_id):
        cache = self._cache
        container = cache.get(cgroup_id)
        if container is not None:
            cache.move_to_end(cgroup_id)
            return container
        container = self.by_path(self.path_of_id(cgroup_id))
        cache[cgroup_id] = container
        if len(cache) > self.maxsize:
            cache.popitem(last=False)
        return container

    def by_path(self, cgroup_path):
        return named(classify(cgroup_path), self.names)

    def cached(self):
        """Number of cached ids."""
        return len(self._cache)
