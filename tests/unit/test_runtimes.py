"""Runtime name sources on files laid out as each runtime lays them out (trimmed copies of what
docker 20.10, containerd 1.6 with CRI annotations and podman 4.3 wrote on the test machine; cri-o's
as its documentation and source give it: no cri-o runs here). tests/kernel/test_runtimes.py reads
the real engines' files."""
import http.server
import json
import os
import socketserver
import threading

import pytest

from bpfhook import runtimes
from bpfhook.runtimes import Names

ID = "45022ae7fece" + "a" * 52
OTHER = "b" * 64


def _write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def test_docker_config_file_gives_the_name(tmp_path):
    _write(tmp_path / "containers" / ID / "config.v2.json",
           {"ID": ID, "Name": "/web1", "Config": {"Hostname": ID[:12], "Labels": {}}, "State": {"Pid": 42}})
    assert runtimes.docker(ID, str(tmp_path)) == Names("web1")
    assert runtimes.docker(OTHER, str(tmp_path)) is None


def test_dockershim_labels_give_pod_namespace_and_container(tmp_path):
    labels = {"io.kubernetes.pod.name": "shop-7d9f", "io.kubernetes.pod.namespace": "prod",
              "io.kubernetes.container.name": "web", "io.kubernetes.pod.uid": "0f0e"}
    _write(tmp_path / "containers" / ID / "config.v2.json",
           {"Name": "/k8s_web_shop-7d9f_prod_0f0e_0", "Config": {"Labels": labels}})
    _write(tmp_path / "containers" / OTHER / "config.v2.json",
           {"Name": "/k8s_POD_shop-7d9f_prod_0f0e_0", "Config": {"Labels": dict(labels, **{
               "io.kubernetes.container.name": "POD"})}})
    assert runtimes.docker(ID, str(tmp_path)) == Names("web", "shop-7d9f", "prod")
    assert runtimes.docker(OTHER, str(tmp_path)) == Names("", "shop-7d9f", "prod")  # the sandbox


class _FakeDockerd(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == f"/containers/{ID}/json":
            body, status = json.dumps({"Id": ID, "Name": "/api-named"}).encode(), 200
        else:
            body, status = b'{"message":"No such container"}', 404
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_docker_api_over_the_socket_when_the_file_is_not_there(tmp_path):
    """A real HTTP server on a unix socket, answering as dockerd's /containers/ID/json does."""
    sock = str(tmp_path / "docker.sock")
    server = _FakeDockerd(sock, _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = runtimes.DockerApi(sock)
        assert runtimes.docker(ID, str(tmp_path / "no-root"), api) == Names("api-named")
        assert runtimes.docker(OTHER, str(tmp_path / "no-root"), api) is None  # 404
    finally:
        server.shutdown()
        server.server_close()
    down = runtimes.DockerApi(str(tmp_path / "nobody.sock"), retry_after=60)
    assert down.get("/version") is None and down._down_until > 0  # not asked again for a while


@pytest.mark.parametrize("config, root", [
    (None, runtimes.DOCKER_ROOT), ({"data-root": "/srv/docker"}, "/srv/docker"), ({"graph": "/old"}, "/old"),
    ({"debug": True}, runtimes.DOCKER_ROOT), ([], runtimes.DOCKER_ROOT)])
def test_docker_root_from_daemon_json(tmp_path, config, root):
    path = tmp_path / "daemon.json"
    if config is not None:
        _write(path, config)
    assert runtimes.docker_root(str(path)) == root


def _bundle(state, namespace, cid, annotations):
    _write(state / "io.containerd.runtime.v2.task" / namespace / cid / "config.json",
           {"ociVersion": "1.0.2-dev", "process": {"args": ["/usr/bin/python3"]},
            "linux": {"cgroupsPath": f"/kubepods/besteffort/pod0f0e/{cid}"}, "annotations": annotations})


def test_containerd_cri_annotations(tmp_path):
    _bundle(tmp_path, "k8s.io", ID, {
        "io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.container-name": "web",
        "io.kubernetes.cri.sandbox-name": "shop-7d9f", "io.kubernetes.cri.sandbox-namespace": "prod",
        "io.kubernetes.cri.sandbox-id": OTHER})
    _bundle(tmp_path, "k8s.io", OTHER, {
        "io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-name": "shop-7d9f",
        "io.kubernetes.cri.sandbox-namespace": "prod", "io.kubernetes.cri.sandbox-id": OTHER})
    states = (str(tmp_path / "absent"), str(tmp_path))
    assert runtimes.containerd(ID, states) == Names("web", "shop-7d9f", "prod")
    assert runtimes.containerd(OTHER, states) == Names("", "shop-7d9f", "prod")
    assert runtimes.containerd("c" * 64, states) is None


def test_containerd_without_annotations_is_known_but_unnamed(tmp_path):
    _write(tmp_path / "io.containerd.runtime.v2.task" / "default" / ID / "config.json", {"ociVersion": "1.0.2"})
    assert runtimes.containerd(ID, (str(tmp_path),)) == Names()


def test_crio_annotations(tmp_path):
    _write(tmp_path / "overlay-containers" / ID / "userdata" / "config.json", {"annotations": {
        "io.kubernetes.pod.name": "shop-7d9f", "io.kubernetes.pod.namespace": "prod",
        "io.kubernetes.container.name": "web", "io.container.manager": "cri-o"}})
    assert runtimes.crio(ID, str(tmp_path)) == Names("web", "shop-7d9f", "prod")
    assert runtimes.crio(OTHER, str(tmp_path)) is None


def test_podman_storage_names_and_a_changed_file(tmp_path):
    table = tmp_path / "overlay-containers" / "containers.json"
    entry = {"id": ID, "names": ["web1"], "image": "c" * 64, "layer": "d" * 64,
             "metadata": json.dumps({"image-name": "localhost/bpfhook-test-empty:latest", "name": "web1"})}
    _write(table, [entry])
    names = runtimes.StorageNames(str(tmp_path))
    assert names(ID) == Names("web1") and names(OTHER) is None
    _write(table, [entry, dict(entry, id=OTHER, names=["web2"])])
    os.utime(table, ns=(1, 1))  # a new mtime, whatever the clock's resolution
    assert names(OTHER) == Names("web2")
    _write(table, {"not": "a list"})
    os.utime(table, ns=(2, 2))
    assert names(ID) is None


def test_sources_ask_the_pod_runtimes_when_the_path_names_none(tmp_path):
    _bundle(tmp_path / "containerd", "k8s.io", ID, {"io.kubernetes.cri.sandbox-name": "p",
                                                   "io.kubernetes.cri.sandbox-namespace": "ns",
                                                   "io.kubernetes.cri.container-name": "c"})
    _write(tmp_path / "docker" / "containers" / OTHER / "config.v2.json", {"Name": "/plain"})
    sources = runtimes.sources(docker_root=str(tmp_path / "docker"), docker_socket=str(tmp_path / "none.sock"),
                               containerd_states=(str(tmp_path / "containerd"),),
                               graphroot=str(tmp_path / "storage"), runroot=str(tmp_path / "run"))
    assert sources[""](ID) == Names("c", "p", "ns")
    assert sources[""](OTHER) == Names("plain")  # dockershim's pods: docker is asked last
    assert sources["docker"](ID) is None and sources["podman"](ID) is None and sources["cri-o"](ID) is None
    assert set(sources) == {"", "docker", "containerd", "cri-o", "podman"}


@pytest.mark.parametrize("bad", ["{", "[]", '"x"', "null"])
def test_unreadable_files_are_no_answer(tmp_path, bad):
    path = tmp_path / "containers" / ID / "config.v2.json"
    os.makedirs(path.parent)
    path.write_text(bad)
    assert runtimes.docker(ID, str(tmp_path)) is None
