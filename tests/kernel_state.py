"""What a tool could leave behind in the kernel, read from the outside, to compare before/after.

tc state comes from iproute2's `ip` and `tc` (not from pyroute2, which the tools use); BPF
objects from the kernel's own id lists (BPF_*_GET_NEXT_ID), and from bpftool as well where it
is installed. A snapshot is a plain dict: `assert snapshot() == before` shows the difference.
"""
import json
import os
import subprocess

from pybpf import syscall as bsys
from tests import oracles

BPFFS = "/sys/fs/bpf"
STATE_DIRS = ("/run/bpfhook/lab", "/run/bpfhook/mirror")  # what stands for kernel objects (not caches)


def _json(argv):
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    return json.loads(out) if out.strip() else []


def _ids(kind):
    ids, last = [], 0
    while (last := bsys.get_next_id(kind, last)) is not None:
        ids.append(last)
    return ids


def _tc():
    """{ifname: {"qdiscs": [...], "filters": {parent: [...]}}}, every link in this netns."""
    state = {}
    ip, tc = oracles.require("ip"), oracles.require("tc")
    for link in _json([ip, "-j", "link", "show"]):
        name = link["ifname"]
        try:
            qdiscs = _json([tc, "-j", "qdisc", "show", "dev", name])
            filters = {}
            for q in qdiscs:
                parents = ("ingress", "egress") if q["kind"] == "clsact" else (
                    ("ingress",) if q["kind"] == "ingress" else (q["handle"],))
                for parent in parents:
                    found = _json([tc, "-j", "filter", "show", "dev", name, *(
                        (parent,) if parent in ("ingress", "egress") else ("parent", parent))])
                    if found:
                        filters[parent] = found
        except subprocess.CalledProcessError:
            if os.path.exists(f"/sys/class/net/{name}"):
                raise
            continue  # the link went away while we read it (another run's lab): not part of this state
        state[name] = {"qdiscs": [{k: q.get(k) for k in ("kind", "handle", "parent")} for q in qdiscs],
                       "filters": filters}
    return state


def _files(top):
    found = []
    for directory, _dirs, files in os.walk(top):
        found += [os.path.join(directory, f) for f in files]
    return sorted(found)


def _iptables():
    """The rules of iptables-save and ip6tables-save (no counters, no comments), where installed."""
    from tests.runtimes import rules_without_counters

    found = oracles.find("iptables")
    if not found:
        return {}
    saves = {family: os.path.join(os.path.dirname(found.path), f"{family}-save") for family in ("iptables", "ip6tables")}
    return {family: rules_without_counters(subprocess.run([path], capture_output=True, text=True, timeout=30,
                                                          check=True).stdout)
            for family, path in saves.items() if os.access(path, os.X_OK)}


def snapshot():
    """The kernel state a bpfhook tool touches: links and their tc objects, BPF programs, links and
    maps, bpffs pins, named network namespaces, bpfhook's own state files (lab containers, mirrors),
    the firewall."""
    state = {
        "tc": _tc(),
        "bpf_progs": _ids("prog"),
        "bpf_links": _ids("link"),
        "bpf_maps": _ids("map"),
        "pins": _files(BPFFS),
        "netns": sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else [],
        "state_files": [f for directory in STATE_DIRS for f in _files(directory)],
        "iptables": _iptables(),
    }
    bpftool = oracles.find("bpftool")
    if bpftool:  # the independent view, where there is one
        state["bpftool_progs"] = sorted(p["id"] for p in _json([bpftool.path, "-j", "prog", "show"]))
        state["bpftool_links"] = sorted(link["id"] for link in _json([bpftool.path, "-j", "link", "show"]))
    return state


def uprobes(match="", programs=()):
    """What uprobes a tool could leave: bpftool perf's uprobes and uretprobes on files whose
    name contains `match` (pid, kind, file, offset), uprobe_multi links (bpftool 7.1 prints their
    type as 12), the loaded programs named in `programs`, and tracefs's uprobe_events (None when tracefs is not mounted:
    perf-event uprobes never appear there, but a tool writing them there would leave them)."""
    from pybpf.mounts import find

    bpftool = oracles.require("bpftool")
    perf = _json([bpftool, "-j", "perf"])
    links = _json([bpftool, "-j", "link"])
    tracefs = find("tracefs")
    events = None
    if tracefs is not None:
        with open(os.path.join(tracefs, "uprobe_events")) as f:
            events = f.read()
    return {
        "perf": sorted((p["pid"], p["fd_type"], p.get("filename", ""), p.get("offset", 0)) for p in perf
                       if p.get("fd_type") in ("uprobe", "uretprobe") and match in p.get("filename", "")),
        "uprobe_multi": sorted(link["id"] for link in links if link.get("type") in ("uprobe_multi", 12)),
        "programs": sorted(p.get("name", "") for p in _json([bpftool, "-j", "prog", "show"])
                           if p.get("name") in programs),
        "uprobe_events": events,
    }
