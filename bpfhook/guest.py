"""Processes inside a running container of any runtime: in its cgroup and network namespace.

What `bpfhook lab` does for its own containers, for a Docker, podman or Kubernetes container
found by bpfhook.containers.find: a host program runs with the container's cgroup and the
network namespace of a process in it, so BPF sees the container on its traffic (trafficgen
--container). Its files and other namespaces stay the host's.
"""
import dataclasses
import os
import socket
import subprocess

from bpfhook import cgroups, netns
from pybpf.errors import BpfError


class GuestError(BpfError):
    """A container that cannot be entered."""


def entry(cgroup_path, netns_path, what):
    """(nsfd, enter): enter() moves the calling process into the cgroup and the network namespace.

    Everything that could fail or allocate (opening the netns, loading pyroute2) happens here,
    before any fork; the caller closes nsfd once the child runs."""
    from pyroute2 import netns as pyroute2_netns

    procs = os.path.join(cgroups.directory(cgroup_path), "cgroup.procs")
    if not os.path.exists(procs) or not os.path.exists(netns_path):
        raise GuestError(f"{what} is not running")
    nsfd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)

    def enter():
        with open(procs, "w") as f:
            f.write("0")  # 0 = the writing process
        pyroute2_netns.setns(nsfd, flags=0)

    return nsfd, enter


def spawn(argv, cgroup_path, netns_path, what, **popen):
    """subprocess.Popen(argv) running in the cgroup and the network namespace."""
    if "preexec_fn" in popen:
        raise TypeError("spawn() sets preexec_fn itself")
    nsfd, enter = entry(cgroup_path, netns_path, what)
    try:
        return subprocess.Popen(argv, preexec_fn=enter, **popen)
    finally:
        os.close(nsfd)


@dataclasses.dataclass(frozen=True)
class Guest:
    name: str  # the container's label
    cgroup_path: str  # the cgroup of a process in it (a leaf: a pod's own cgroup takes no process)
    netns_path: str
    ipv4: str | None
    ipv6: str | None

    @classmethod
    def of(cls, container):
        """The Guest of a bpfhook.containers.Container."""
        pids = cgroups.pids_below(container.cgroup_path)
        if not pids:
            raise GuestError(f"no process runs in {container.label} ({container.cgroup_path})")
        pid = pids[0]
        path = f"/proc/{pid}/ns/net"
        return cls(container.label, cgroups.of_pid(pid), path, *_addresses(path))

    def spawn(self, argv, **popen):
        return spawn(argv, self.cgroup_path, self.netns_path, f"container {self.name!r}", **popen)


def _addresses(netns_path):
    """The first global IPv4 and IPv6 addresses in a network namespace (None where there is none)."""
    from pyroute2 import IPRoute

    with netns.entered(netns_path):
        ipr = IPRoute()
    with ipr:
        found = {family: next((a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=family) if a["scope"] == 0),
                              None) for family in (socket.AF_INET, socket.AF_INET6)}
    return found[socket.AF_INET], found[socket.AF_INET6]
