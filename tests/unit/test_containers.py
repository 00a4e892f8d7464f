"""cgroup path -> container, finding a container by what the user wrote, the id resolver's cache and
the names it asks runtimes for."""
import pytest

from bpfhook import cgroups
from bpfhook.containers import Container, ContainerError, Resolver, classify, find
from bpfhook.runtimes import Names

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
    names = {"docker": {ID3: Names("api")}.get}
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
        return Names("web-1") if cid == ID else None

    r = Resolver(path_of_id={1: f"/docker/{ID}", 2: f"/docker/{ID2}", 3: "/bpfhook.lab/x"}.get,
                 names={"docker": docker_names})
    assert (r(1).name, r(1).id) == ("web-1", ID)
    assert (r(2).name, r(2).id, r(2).label) == ("", ID2, ID2[:12])
    assert r(3).name == "x"
    assert calls == [ID, ID2]  # lab containers never ask Docker; answers are cached


def test_a_pod_container_carries_namespace_pod_and_container():
    """Runtime "" is the cgroupfs kubepods layout, which names no runtime: runtimes.sources() asks each."""
    pod_level = f"/kubepods/besteffort/pod{UID}"
    r = Resolver(path_of_id={1: f"{pod_level}/{ID}", 2: f"{pod_level}/{ID2}", 3: pod_level}.get,
                 names={"": {ID: Names("web", "shop", "prod"), ID2: Names("", "shop", "prod")}.get})
    web, sandbox, pod = r(1), r(2), r(3)
    assert (web.kind, web.name, web.pod, web.namespace, web.label) == ("pod", "web", "shop", "prod", "prod/shop/web")
    assert sandbox.label == "prod/shop" and (pod.label, pod.pod) == (UID, "")  # no runtime knows a pod uid
    for spec in ("prod/shop", "prod/shop/web", "web", ID[:12]):
        assert web.matches(spec), spec
    for spec in ("prod/shop/db", "prod/other", "prod", "shop/web", "prod/shop/web/x", "/prod/shop"):
        assert not web.matches(spec), spec
    assert sandbox.matches("prod/shop") and not sandbox.matches("prod/shop/web")


# ---- find(): one lookup for every tool, on a cgroup tree laid out in a temporary directory ----

POD_ID, PODMAN_ID = "c" * 64, "d" * 64


@pytest.fixture
def kube_tree(tmp_path, monkeypatch):
    for path in (f"docker/{ID}", "bpfhook.lab/web", "bpfhook.lab/db", f"kubepods/besteffort/pod{UID}/{ID2}",
                 f"kubepods/besteffort/pod{UID}/{POD_ID}", f"libpod_parent/libpod-{PODMAN_ID}/container"):
        (tmp_path / path).mkdir(parents=True)
    monkeypatch.setattr(cgroups, "mount", lambda: str(tmp_path))
    names = {"docker": {ID: Names("web")}.get, "podman": {PODMAN_ID: Names("cache")}.get,
             "": {ID2: Names("api", "shop", "prod"), POD_ID: Names("", "shop", "prod")}.get}
    return lambda spec: find(spec, names)


@pytest.mark.parametrize("spec, path", [
    ("db", "/bpfhook.lab/db"),
    (ID[:4], f"/docker/{ID}"),
    (ID, f"/docker/{ID}"),
    ("cache", f"/libpod_parent/libpod-{PODMAN_ID}"),  # its top cgroup, not the one below
    ("api", f"/kubepods/besteffort/pod{UID}/{ID2}"),
    ("prod/shop/api", f"/kubepods/besteffort/pod{UID}/{ID2}"),
    ("prod/shop", f"/kubepods/besteffort/pod{UID}"),  # the pod: its cgroup holds the sandbox and api
    (f"/kubepods/besteffort/pod{UID}/{POD_ID}", f"/kubepods/besteffort/pod{UID}/{POD_ID}"),
])
def test_find_each_way_of_naming(kube_tree, spec, path):
    assert kube_tree(spec).cgroup_path == path


def test_find_names_the_pod_and_its_containers(kube_tree):
    pod = kube_tree("prod/shop")
    assert (pod.kind, pod.id, pod.pod, pod.namespace, pod.label) == ("pod", UID, "shop", "prod", "prod/shop")
    api = kube_tree("prod/shop/api")
    assert (api.name, api.label, api.id) == ("api", "prod/shop/api", ID2)


def test_find_an_ambiguous_name_lists_the_candidates_in_one_line(kube_tree):
    with pytest.raises(ContainerError) as e:
        kube_tree("web")  # a docker container and a lab container
    message = str(e.value)
    assert "\n" not in message and message.startswith("'web' names 2 containers: ")
    assert f"web (docker /docker/{ID})" in message and "web (lab /bpfhook.lab/web)" in message
    assert {c.cgroup_path for c in e.value.candidates} == {f"/docker/{ID}", "/bpfhook.lab/web"}


@pytest.mark.parametrize("spec", ["nope", ID[:3], "prod/other", "prod/shop/db", "/no/such/cgroup", "prod"])
def test_find_nothing_is_one_line_saying_what_it_takes(kube_tree, spec):
    with pytest.raises(ContainerError) as e:
        kube_tree(spec)
    assert str(e.value).startswith(f"no container {spec!r} (a lab name, a cgroup path") and not e.value.candidates


def test_find_an_empty_name():
    with pytest.raises(ContainerError, match="empty container name"):
        find("")
