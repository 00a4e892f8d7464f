"""Container names from where each runtime keeps them: files first, no daemon needed.

  docker      <data-root>/containers/<id>/config.v2.json ("Name", Kubernetes labels when
              dockershim made it); its API over /var/run/docker.sock when the file is not there
  containerd  the OCI bundle's config.json under its state directory
              (<state>/io.containerd.runtime.v2.task/<namespace>/<id>/config.json) with the
              annotations kubelet's CRI sets: io.kubernetes.cri.sandbox-name, -sandbox-namespace,
              -container-name
  cri-o       the same in its bundle (<runroot>/overlay-containers/<id>/userdata/config.json),
              spelt io.kubernetes.pod.name, -pod.namespace, -container.name
  podman      its container storage: <graphroot>/<driver>-containers/containers.json ("names")

Each source is one function in SOURCES: container id -> Names, or None when that
runtime does not know the id. Ids always come from the cgroup path (bpfhook.containers).
"""
import dataclasses
import glob
import json
import os
import socket
import time

DOCKER_ROOT = "/var/lib/docker"
DOCKER_SOCKET = "/var/run/docker.sock"
CONTAINERD_STATES = ("/run/containerd", "/run/k3s/containerd")  # containerd, and k3s's own
STORAGE_GRAPHROOT = "/var/lib/containers/storage"  # containers/storage: podman, cri-o
STORAGE_RUNROOT = "/run/containers/storage"

# Kubernetes' names, as each runtime spells them: CRI annotations (containerd), then the
# annotations and labels cri-o and dockershim write. One table, read for every source.
KUBERNETES_KEYS = {
    "pod": ("io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"),
    "namespace": ("io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace"),
    "container": ("io.kubernetes.cri.container-name", "io.kubernetes.container.name"),
}
SANDBOX_NAMES = ("POD",)  # dockershim's and cri-o's name for a pod's pause container


@dataclasses.dataclass(frozen=True)
class Names:
    name: str = ""  # the container's name: Kubernetes' container name in a pod, else the runtime's
    pod: str = ""
    namespace: str = ""


def from_metadata(runtime_name, metadata):
    """Names from a runtime's own name and a dict of annotations or labels."""
    metadata = metadata or {}
    kube = {field: next((metadata[k] for k in keys if metadata.get(k)), "") for field, keys in KUBERNETES_KEYS.items()}
    if not kube["pod"]:
        return Names(runtime_name)
    container = "" if kube["container"] in SANDBOX_NAMES else kube["container"]
    return Names(container, kube["pod"], kube["namespace"])


def _read_json(path):
    """The JSON at path, or None when it is missing, unreadable or not JSON."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# -- docker ------------------------------------------------------------------------------------

def docker_root(daemon_json="/etc/docker/daemon.json"):
    """Docker's data-root: daemon.json's "data-root" (or the older "graph"), else the default."""
    config = _read_json(daemon_json)
    config = config if isinstance(config, dict) else {}
    return config.get("data-root") or config.get("graph") or DOCKER_ROOT


class DockerApi:
    """GET requests to Docker's API over its unix socket.

    When the daemon is unreachable it is not asked again for `retry_after`
    seconds, so a host without Docker costs one failed connect.
    """

    def __init__(self, socket_path=DOCKER_SOCKET, timeout=0.25, retry_after=30.0):
        self.socket_path, self.timeout, self.retry_after = socket_path, timeout, retry_after
        self._down_until = 0.0

    def get(self, path):
        """The decoded JSON answer, or None (404, daemon down, bad answer)."""
        if time.monotonic() < self._down_until:
            return None
        try:
            status, body = self._get(path)
        except OSError:
            self._down_until = time.monotonic() + self.retry_after
            return None
        try:
            return json.loads(body) if status == 200 else None
        except ValueError:
            return None

    def _get(self, path):
        """(status, body) of a GET over the unix socket; OSError for any failure."""
        import http.client  # only when a container needs a name: keeps the monitor's start-up light

        conn = http.client.HTTPConnection("localhost", timeout=self.timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
            conn.sock = sock  # already connected: HTTPConnection skips its own connect()
            conn.request("GET", path, headers={"Host": "docker"})
            response = conn.getresponse()
            return response.status, response.read()
        except http.client.HTTPException as err:
            raise OSError(f"docker API {path}: {err!r}") from None
        finally:
            conn.close()
            sock.close()


def docker_config(container_id, root=None, api=None):
    """Docker's record of a container: config.v2.json, else GET /containers/<id>/json."""
    config = _read_json(os.path.join(root or docker_root(), "containers", container_id, "config.v2.json"))
    if config is None and api is not None:
        config = api.get(f"/containers/{container_id}/json")
    return config if isinstance(config, dict) else None


def docker(container_id, root=None, api=None):
    config = docker_config(container_id, root, api)
    if config is None:
        return None
    labels = (config.get("Config") or {}).get("Labels")
    return from_metadata(str(config.get("Name", "")).lstrip("/"), labels)


# -- containerd and cri-o: the OCI bundle's config.json ------------------------------------------

def oci_annotations(path):
    """The annotations of the OCI runtime spec at path, or None when there is none."""
    spec = _read_json(path)
    return spec.get("annotations") or {} if isinstance(spec, dict) else None


def containerd(container_id, states=CONTAINERD_STATES):
    for state in states:
        for path in glob.glob(os.path.join(glob.escape(state), "io.containerd.runtime.v2.task", "*",
                                           container_id, "config.json")):
            annotations = oci_annotations(path)
            if annotations is not None:
                return from_metadata("", annotations)  # ctr's own containers have no name but the id
    return None


def crio(container_id, runroot=STORAGE_RUNROOT):
    annotations = oci_annotations(os.path.join(runroot, "overlay-containers", container_id, "userdata", "config.json"))
    return None if annotations is None else from_metadata("", annotations)


# -- podman: containers/storage ---------------------------------------------------------------

class StorageNames:
    """Names in containers/storage's containers.json files, re-read when one changes."""

    def __init__(self, graphroot=STORAGE_GRAPHROOT):
        self.graphroot = graphroot
        self._seen = {}  # path -> (mtime_ns, {id: names})

    def __call__(self, container_id):
        for path in glob.glob(os.path.join(glob.escape(self.graphroot), "*-containers", "containers.json")):
            names = self._table(path).get(container_id)
            if names is not None:
                return Names(names[0] if names else "")
        return None

    def _table(self, path):
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            return {}
        seen = self._seen.get(path)
        if seen is None or seen[0] != mtime:
            entries = _read_json(path)
            table = {e["id"]: list(e.get("names") or ()) for e in entries if isinstance(e, dict) and "id" in e} \
                if isinstance(entries, list) else {}
            seen = self._seen[path] = (mtime, table)
        return seen[1]


# -- the table ---------------------------------------------------------------------------------

# A cgroup path under kubepods in the cgroupfs layout does not say which runtime made it: ask these.
POD_RUNTIMES = ("containerd", "cri-o", "docker")


def sources(docker_root=None, docker_socket=DOCKER_SOCKET, containerd_states=CONTAINERD_STATES,
            graphroot=STORAGE_GRAPHROOT, runroot=STORAGE_RUNROOT):
    """{runtime: container id -> Names or None}, reading the given roots (tests point them elsewhere).
    Runtime "" is a pod's container whose cgroup path names no runtime: each pod runtime is asked."""
    api = DockerApi(docker_socket)
    table = {
        "docker": lambda cid: docker(cid, docker_root, api),
        "containerd": lambda cid: containerd(cid, containerd_states),
        "cri-o": lambda cid: crio(cid, runroot),
        "podman": StorageNames(graphroot),
    }
    table[""] = lambda cid: next(filter(None, (table[r](cid) for r in POD_RUNTIMES)), None)
    return table
