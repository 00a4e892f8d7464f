"""deploy/kubernetes: the DaemonSet asks for what `bpfhook doctor` says the monitor uses, and no
more: a capability list (not privileged), hostPID, the mounts, scrape annotations that match the
port it serves, the node name. (The image cannot be built here: no registry for its base.)"""
import os
import re

import yaml

from bpfhook import doctor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy", "kubernetes")


def _docs():
    with open(os.path.join(DEPLOY, "bpfhook.yaml")) as f:
        return {doc["kind"]: doc for doc in yaml.safe_load_all(f)}


def test_namespace_serviceaccount_and_daemonset_parse_and_belong_together():
    docs = _docs()
    assert set(docs) == {"Namespace", "ServiceAccount", "DaemonSet"}
    namespace = docs["Namespace"]["metadata"]["name"]
    assert docs["ServiceAccount"]["metadata"]["namespace"] == docs["DaemonSet"]["metadata"]["namespace"] == namespace
    pod = docs["DaemonSet"]["spec"]["template"]
    assert pod["spec"]["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    assert docs["DaemonSet"]["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()


def test_capabilities_are_doctors_list_and_nothing_is_privileged():
    pod = _docs()["DaemonSet"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {f"CAP_{c}" for c in security["capabilities"]["add"]} == set(doctor.MONITOR)
    assert pod["hostPID"] is True and not pod.get("hostNetwork")


def test_mounts_are_cgroup2_tracefs_the_runtime_state_and_the_offsets_cache_read_only_where_they_can_be():
    pod = _docs()["DaemonSet"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert set(host.values()) == {"/sys/fs/cgroup", "/sys/kernel/tracing", "/run/containerd"}
    assert all(m.get("readOnly") for m in mounts.values() if m["name"] in host)
    assert set(mounts) == {"/sys/fs/cgroup", "/sys/kernel/tracing", "/run/containerd", "/run/bpfhook"}


def test_scrape_annotations_match_the_port_served_and_series_carry_the_node():
    pod = _docs()["DaemonSet"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    annotations = pod["metadata"]["annotations"]
    served = container["args"][container["args"].index("--prometheus") + 1]
    assert annotations["prometheus.io/scrape"] == "true" and served == f":{annotations['prometheus.io/port']}"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert container["ports"][0]["containerPort"] == int(annotations["prometheus.io/port"])
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    limit = container["resources"]["limits"]["memory"]
    assert re.fullmatch(r"\d+Mi", limit) and int(limit[:-2]) >= 40 * 2  # twice the measured ceiling


def test_dockerfile_installs_the_wheel_on_a_slim_python():
    with open(os.path.join(DEPLOY, "Dockerfile")) as f:
        lines = [line for line in f.read().splitlines() if line and not line.startswith("#")]
    assert re.fullmatch(r"ARG BASE=python:3\.\d+-slim", lines[0]) and lines[1] == "FROM ${BASE}"
    assert any(re.search(r"pip install .*bpfhook-\*\.whl", line) for line in lines)
    assert lines[-2:] == ['ENTRYPOINT ["bpfhook"]', 'CMD ["monitor", "--prometheus", ":9433"]']
