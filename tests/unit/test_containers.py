"""cgroup path -> container, finding a container by what the user wrote, the id resolver's cache, and
Docker names over a unix socket."""
import http.server
import json
import socketserver
import threading

import pytest

from bpfhook import cgroups
from bpfhook.containers import Container, ContainerError, DockerNames, Resolver, classify, find

ID = "4f1c0a9e2b7d" + "0123456789abcdef" * 3 + "0123"  # 64 hex
ID2 = "a" * 64
UID = "6a1f3c2e-9b7d-4e1a-8c3f-2d5e6f7a8b9c"


@pytest.mark.parametrize(
    "path, kind, cid, runtime, pod_uid, name",
    [
        (f"/system.slice/docker-{ID}.scope", "docker", ID, "docker", "", ""),
        (f"/docker/{ID}", "docker", ID, "docker", "", ""),
        (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice/"
         f"cri-containerd-{ID}.scope", "pod", ID, "containerd", UID, ""),
        (f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-{ID}.scope", "pod", ID, "cri-o", UID, ""),
        (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice/"
         f"docker-{ID}.scope", "pod", ID, "docker", UID, ""),
        (f"/kubepods/besteffort/pod{UID}/{ID}", "pod", ID, "", UID, ""),
        (f"/kubepods/burstable/pod{UID}", "pod", UID, "", UID, ""),
        (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice/"
         f"crio-conmon-{ID}.scope", "monitor", ID, "cri-o", UID, ""),
        (f"/machine.slice/libpod-{ID}.scope", "podman", ID, "podman", "", ""),
        (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope", "podman", ID, "podman", "", ""),
        (f"/machine.slice/libpod-conmon-{ID}.scope", "monitor", ID, "podman", "", ""),
        (f"/libpod_parent/libpod-{ID}", "podman", ID, "podman", "", ""),
        (f"/docker/{ID2}/kubepods/besteffort/pod{UID}/{ID}", "pod", ID, "", UID, ""),  # kind-in-docker: innermost
        ("/bpfhook.lab/web", "lab", "web", "bpfhook-lab", "", "web"),
        ("/system.slice/nginx.service", "service", "nginx.service", "systemd", "", "nginx.service"),
        ("/system.slice/system-getty.slice/getty@tty1.service", "service", "getty@tty1.service", "systemd", "",
         "getty@tty1.service"),
        ("/system.slice/foo\\x2dbar.service", "service", "foo-bar.service", "systemd", "", "foo-bar.service"),
        ("/user.slice/user-1000.slice/user@1000.service/app.slice/app-x.service", "service", "app-x.service",
         "systemd", "", "app-x.service"),
        ("/user.slice/user-1000.slice/session-3.scope", "session", "session-3", "systemd", "", "user 1000 session 3"),
        ("/", "host", "", "", "", ""),
        ("/init.scope", "host", "", "", "", ""),
        ("/bpfhook.lab", "host", "", "", "", ""),
        ("/system.slice/docker-notanid.scope", "host", "", "", "", ""),
    ],
)
def test_classify(path, kind, cid, runtime, pod_uid, name):
    c = classify(path)
    assert (c.kind, c.id, c.runtime, c.pod_uid, c.name, c.cgroup_path) == (kind, cid, runtime, pod_uid, name, path)
    assert c.is_container == (kind in ("docker", "pod", "podman", "lab"))


def test_short_id_and_matching():
    c = classify(f"/system.slice/docker-{ID}.scope")
    assert c.short_id == ID[:12] and len(c.short_id) == 12
    assert c.label == ID[:12]
    assert c.matches(ID) and c.matches(ID[:12]) and c.matches(ID[:4])
    assert not c.matches(ID[:3]) and not c.matches("") and not c.matches("web")
    lab = classify("/bpfhook.lab/web")
    assert lab.short_id == "web" and lab.matches("web") and not lab.matches("we")
    assert classify("/").label == "host"


# ---- find(): a cgroup tree of directories, as the cgroup2 mount holds them ----------------------

ID3 = ID[:6] + "f" * 58  # shares a 6-character prefix with ID


@pytest.fixture
def tree(tmp_path, monkeypatch):
    for path in (f"docker/{ID}/inner", f"system.slice/docker-{ID3}.scope", "bpfhook.lab/webapp", "bpfhook.lab/webapp2",
                 "bpfhook.lab/demo-a", "bpfhook.lab/demo-b", "system.slice/nginx.service"):
        (tmp_path / path).mkdir(parents=True)
    monkeypatch.setattr(cgroups, "mount", lambda: str(tmp_path))
    return tmp_path


def test_find_by_name_id_prefix_and_path(tree):
    names = {"docker": {ID3: "api"}.get}
    assert find("webapp", names).cgroup_path == "/bpfhook.lab/webapp"  # a whole name beats a prefix
    assert find(ID, names).cgroup_path == f"/docker/{ID}"  # the container's top cgroup, not its child
    assert find(ID[:12], names).id == ID and find(ID[:7], names).id == ID
    assert find("api", names).id == ID3  # the runtime's name
    assert find(f"{tree}/system.slice/nginx.service", names).kind == "service"  # a path: any cgroup
    assert find("/bpfhook.lab/webapp2", names).name == "webapp2"


def test_find_refuses_in_one_line_naming_the_candidates(tree):
    with pytest.raises(ContainerError) as err:
        find(ID[:6], names={})
    assert len(err.value.candidates) == 2 and "\n" not in str(err.value)
    assert str(err.value).startswith(f"'{ID[:6]}' names 2 containers: {ID[:12]} (docker /docker/{ID}), ")
    with pytest.raises(ContainerError, match="names 2 containers: demo-a .*, demo-b"):
        find("demo", names={})
    for spec in ("nope", "nginx.service", "/bpfhook.lab/nope", "", ID[:3]):  # a service is no container
        with pytest.raises(ContainerError, match="no container|empty") as err:
            find(spec, names={})
        assert err.value.candidates == ()


def test_unknown_cgroup_id_is_the_host():
    c = Resolver(path_of_id=lambda cgid: None, names={})(12345)
    assert c == Container("host", "", "") and not c.is_container


def test_resolver_on_this_process_cgroup():
    """The real hierarchy: our own cgroup's id resolves back to our cgroup path."""
    path = cgroups.of_pid()
    c = Resolver(names={})(cgroups.cgroup_id(path))
    assert c.cgroup_path == path
    assert c == classify(path)


def test_resolver_cache_is_lru_and_bounded():
    asked = []

    def path_of_id(cgid):
        asked.append(cgid)
        return f"/bpfhook.lab/c{cgid}"

    r = Resolver(path_of_id=path_of_id, names={}, maxsize=2)
    assert r(1).name == "c1" and r(2).name == "c2"
    assert r(1).name == "c1"  # cached, and now most recent
    r(3)  # evicts 2, the least recently used
    assert r.cached() == 2
    r(1)
    r(2)
    assert asked == [1, 2, 3, 2]


def test_names_come_from_the_runtime_lookup_ids_always():
    calls = []

    def docker_names(cid):
        calls.append(cid)
        return "web-1" if cid == ID else ""

    r = Resolver(path_of_id={1: f"/docker/{ID}", 2: f"/docker/{ID2}", 3: "/bpfhook.lab/x"}.get,
                 names={"docker": docker_names})
    assert (r(1).name, r(1).id) == ("web-1", ID)
    assert (r(2).name, r(2).id, r(2).label) == ("", ID2, ID2[:12])
    assert r(3).name == "x"
    assert calls == [ID, ID2]  # lab containers never ask Docker; answers are cached


# ---- Docker API ---------------------------------------------------------------
# MOCK: there is no Docker daemon on this machine (and none can be started here),
# so DockerNames talks to a tiny HTTP server on a unix socket that answers like
# Docker's GET /containers/<id>/json. Only the transport and parsing are tested.

class _FakeDocker(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path, containers):
        self.containers = containers
        self.requests = []
        super().__init__(path, _FakeDockerHandler)


class _FakeDockerHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        cid = self.path.split("/")[2] if self.path.startswith("/containers/") else ""
        if cid in self.server.containers:
            body = json.dumps({"Id": cid, "Name": "/" + self.server.containers[cid]}).encode()
            self.send_response(200)
        else:
            body = b'{"message":"No such container"}'
            self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self):
        return "unix"

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_docker(tmp_path):
    path = str(tmp_path / "docker.sock")
    server = _FakeDocker(path, {ID: "web-1"})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path, server
    server.shutdown()
    server.server_close()


def test_docker_names_over_unix_socket(fake_docker):
    path, server = fake_docker
    names = DockerNames(socket_path=path)
    assert names(ID) == "web-1"
    assert names(ID2) == ""  # 404: not a Docker container
    assert names(ID) == "web-1" and names(ID2) == ""
    assert server.requests == [f"/containers/{ID}/json", f"/containers/{ID2}/json"]  # cached after


def test_docker_unreachable_is_asked_once_per_retry_period(tmp_path):
    attempts = []

    class Counting(DockerNames):
        def _get(self, path):
            attempts.append(path)
            return super()._get(path)

    names = Counting(socket_path=str(tmp_path / "absent.sock"), retry_after=60)
    assert names(ID) == "" and names(ID2) == ""
    assert len(attempts) == 1  # the failed connect holds further requests back
    names._down_until = 0  # retry period over
    assert names(ID) == ""
    assert len(attempts) == 2


def test_resolver_with_fake_docker(fake_docker):
    path, _server = fake_docker
    r = Resolver(path_of_id={7: f"/system.slice/docker-{ID}.scope"}.get, names={"docker": DockerNames(path)})
    c = r(7)
    assert (c.kind, c.name, c.short_id, c.label) == ("docker", "web-1", ID[:12], "web-1")
