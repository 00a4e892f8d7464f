"""Lab containers: a network namespace, a veth pair and a cgroup, nothing more.

Container NAME is
  netns   bpfhook-NAME (bind-mounted at /run/netns/bpfhook-NAME)
  veth    bh-NAME on the host (10.77.N.1/30, fd77::N:1/126)
          <-> eth0 inside (10.77.N.2/30, fd77::N:2/126, default route to the host side)
  cgroup  /bpfhook.lab/NAME on the cgroup2 hierarchy
with N a slot unique among running containers. Containers reach each other
through the host: IPv4 forwarding on their host-side veths, and one iptables
FORWARD rule each where iptables is installed (bpfhook.forwarding: Docker's DROP
policy and chains stay as they are). Processes started through
Container.spawn/exec join both the netns and the cgroup, so BPF sees the
container's cgroup id and netns on their traffic.

State lives in /run/bpfhook/lab/NAME.json. `up` undoes its own work when a
step fails; `down` removes what `up` made, also when a killed `up` left parts
behind without a state file (the names are derived from NAME).
All netlink work goes through pyroute2.
"""
import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
from socket import AF_INET6

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns

from bpfhook import cgroups, forwarding, guest
from pybpf.errors import BpfError, FeatureUnavailable

STATE_DIR = "/run/bpfhook/lab"
NETNS_DIR = "/run/netns"  # where pyroute2 and iproute2 bind-mount named netns
NETNS_PREFIX = "bpfhook-"
HOST_IF_PREFIX = "bh-"
CGROUP_PARENT = "/bpfhook.lab"
LAB_IFS = HOST_IF_PREFIX + "+"  # iptables' wildcard for every lab veth
IFNAMSIZ = 16  # including the NUL
SLOTS = range(1, 256)  # N in 10.77.N.0/30 and fd77::N:0/126
IFA_F_NODAD = 0x02  # the addresses are ours alone: skip IPv6 duplicate detection
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}\Z")


class LabError(BpfError):
    """A lab container cannot be created, found or removed."""


def check_name(name):
    if not NAME_RE.match(name):
        raise LabError(
            f"bad container name {name!r}: use 1-32 of a-z 0-9 _ -, starting with a letter or digit"
        )


def host_ifname(name):
    """bh-NAME, or bh-<7 chars>-<4 hex of a hash> when that exceeds IFNAMSIZ."""
    ifname = HOST_IF_PREFIX + name
    if len(ifname) < IFNAMSIZ:
        return ifname
    digest = hashlib.sha256(name.encode()).hexdigest()[:4]
    return f"{HOST_IF_PREFIX}{name[:7]}-{digest}"


def _addresses(slot):
    """(host, container) IPv4 and IPv6 addresses of a slot."""
    return (f"10.77.{slot}.1", f"10.77.{slot}.2"), (f"fd77::{slot}:1", f"fd77::{slot}:2")


@dataclasses.dataclass(frozen=True)
class Container:
    name: str
    slot: int
    netns: str  # name under /run/netns
    netns_path: str
    netns_ino: int  # what /proc/PID/ns/net of a process inside points to
    host_if: str
    ifindex: int  # host side of the veth
    peer_ifindex: int  # eth0, inside the netns
    cgroup_path: str  # as /proc/PID/cgroup shows it
    cgroup_id: int
    ipv4: str
    host_ipv4: str
    ipv6: str | None = None
    host_ipv6: str | None = None

    @property
    def cgroup_dir(self):
        return cgroups.directory(self.cgroup_path)

    def pids(self):
        return cgroups.pids(self.cgroup_path)

    @contextlib.contextmanager
    def _running(self):
        try:
            yield
        except guest.GuestError:
            raise LabError(f"container {self.name!r} is not running (bpfhook lab up {self.name})") from None

    def spawn(self, argv, **popen):
        """subprocess.Popen(argv) running in the container's netns and cgroup."""
        with self._running():
            return guest.spawn(argv, self.cgroup_path, self.netns_path, f"container {self.name!r}", **popen)

    def exec(self, argv):
        """Replace the calling process with argv, inside the container."""
        with self._running():
            _nsfd, enter = guest.entry(self.cgroup_path, self.netns_path, f"container {self.name!r}")
        enter()
        os.execvp(argv[0], argv)

    def down(self):
        Lab.down(self.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.down()


class Lab:
    """Creates, finds and removes lab containers (state under state_dir)."""

    state_dir = STATE_DIR

    @classmethod
    def _state_path(cls, name):
        return os.path.join(cls.state_dir, name + ".json")

    @classmethod
    @contextlib.contextmanager
    def _locked(cls):
        """Serialise up/down across processes: slots and names must stay unique."""
        os.makedirs(cls.state_dir, exist_ok=True)
        fd = os.open(os.path.join(cls.state_dir, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @classmethod
    def get(cls, name):
        check_name(name)
        try:
            with open(cls._state_path(name)) as f:
                return Container(**json.load(f))
        except FileNotFoundError:
            raise LabError(f"no container {name!r}") from None

    @classmethod
    def list(cls):
        try:
            files = sorted(os.listdir(cls.state_dir))
        except FileNotFoundError:
            return []
        return [cls.get(f[: -len(".json")]) for f in files if f.endswith(".json")]

    @classmethod
    def up(cls, name, ipv6=False):
        """Create container `name`; returns its Container. Undone on failure."""
        check_name(name)
        if ipv6 and not os.path.isdir("/proc/sys/net/ipv6"):
            raise FeatureUnavailable("IPv6 is disabled on this host")
        nsname = NETNS_PREFIX + name
        host_if = host_ifname(name)
        cgroup = f"{CGROUP_PARENT}/{name}"
        with cls._locked(), IPRoute() as ipr, contextlib.ExitStack() as undo:
            parts = cls._parts(name, ipr)
            if os.path.exists(cls._state_path(name)) or parts:
                found = f" ({', '.join(parts)})" if parts else ""
                raise LabError(f"container {name!r} exists{found}; remove it with: bpfhook lab down {name}")
            slot = cls._free_slot(ipr)
            (host4, inside4), (host6, inside6) = _addresses(slot)

            cgroup_id = cgroups.create(cgroup)
            undo.callback(cgroups.remove, cgroup)

            netns_path = os.path.join(NETNS_DIR, nsname)
            pyroute2_netns.create(netns_path)
            undo.callback(pyroute2_netns.remove, netns_path)

            ipr.link("add", ifname=host_if, kind="veth", peer={"ifname": "eth0", "net_ns_fd": netns_path})
            undo.callback(_delete_link, ipr, host_if)
            (ifindex,) = ipr.link_lookup(ifname=host_if)
            _configure(ipr, ifindex, host4, ipv6 and host6)
            undo.callback(forwarding.revoke, name, host_if, LAB_IFS)
            forwarding.allow(name, host_if, LAB_IFS)
            with IPRoute(netns=netns_path, flags=0) as ns:
                ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
                (peer_ifindex,) = ns.link_lookup(ifname="eth0")
                _configure(ns, peer_ifindex, inside4, ipv6 and inside6)
                ns.route("add", dst="default", gateway=host4)
                if ipv6:
                    ns.route("add", dst="default", gateway=host6, family=AF_INET6)

            container = Container(
                name=name,
                slot=slot,
                netns=nsname,
                netns_path=netns_path,
                netns_ino=os.stat(netns_path).st_ino,
                host_if=host_if,
                ifindex=ifindex,
                peer_ifindex=peer_ifindex,
                cgroup_path=cgroup,
                cgroup_id=cgroup_id,
                ipv4=inside4,
                host_ipv4=host4,
                ipv6=inside6 if ipv6 else None,
                host_ipv6=host6 if ipv6 else None,
            )
            _write_atomically(cls._state_path(name), json.dumps(dataclasses.asdict(container), indent=1))
            undo.pop_all()
        return container

    @classmethod
    def _free_slot(cls, ipr):
        taken = {c.slot for c in cls.list()}
        for msg in ipr.get_addr(family=2):
            parts = msg.get("address", "").split(".")
            if parts[:2] == ["10", "77"]:
                taken.add(int(parts[2]))
        for slot in SLOTS:
            if slot not in taken:
                return slot
        raise LabError(f"all {len(SLOTS)} lab slots (10.77.N.0/30) are in use")

    @classmethod
    def _parts(cls, name, ipr):
        """What exists of container `name`, by derived names."""
        parts = []
        if os.path.exists(os.path.join(NETNS_DIR, NETNS_PREFIX + name)):
            parts.append(f"netns {NETNS_PREFIX + name}")
        if ipr.link_lookup(ifname=host_ifname(name)):
            parts.append(f"link {host_ifname(name)}")
        if os.path.isdir(cgroups.directory(f"{CGROUP_PARENT}/{name}")):
            parts.append(f"cgroup {CGROUP_PARENT}/{name}")
        return parts

    @classmethod
    def down(cls, name):
        """Kill the container's processes and remove all it is made of."""
        check_name(name)
        with cls._locked(), IPRoute() as ipr:
            state = cls._state_path(name)
            if not os.path.exists(state) and not cls._parts(name, ipr):
                raise LabError(f"no container {name!r}")
            cgroups.remove(f"{CGROUP_PARENT}/{name}")
            forwarding.revoke(name, host_ifname(name), LAB_IFS)  # before the link: a leftover rule has a leftover link
            _delete_link(ipr, host_ifname(name))  # takes eth0 inside with it
            netns_path = os.path.join(NETNS_DIR, NETNS_PREFIX + name)
            if os.path.exists(netns_path):
                pyroute2_netns.remove(netns_path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(state)
            with contextlib.suppress(OSError):  # only once the last container is gone
                os.rmdir(cgroups.directory(CGROUP_PARENT))

    @classmethod
    def down_all(cls):
        """Remove every container, also ones whose state file is lost. Returns their names."""
        names = {c.name for c in cls.list()}
        with contextlib.suppress(FileNotFoundError):
            names.update(n[len(NETNS_PREFIX) :] for n in os.listdir(NETNS_DIR) if n.startswith(NETNS_PREFIX))
        with contextlib.suppress(FileNotFoundError):
            parent = cgroups.directory(CGROUP_PARENT)
            names.update(n for n in os.listdir(parent) if os.path.isdir(os.path.join(parent, n)))
        names = sorted(n for n in names if NAME_RE.match(n))
        for name in names:
            cls.down(name)
        return names


def _configure(ipr, index, ipv4, ipv6):
    """Address one end of the veth (/30, and /126 when ipv6) and bring it up."""
    ipr.addr("add", index=index, address=ipv4, prefixlen=30)
    if ipv6:
        ipr.addr("add", index=index, address=ipv6, prefixlen=126, flags=IFA_F_NODAD)
    ipr.link("set", index=index, state="up")


def _delete_link(ipr, ifname):
    for index in ipr.link_lookup(ifname=ifname):
        ipr.link("del", index=index)


def _write_atomically(path, text):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# Command line: bpfhook lab ...

NEEDS_ROOT = True
POLLS_SHUTDOWN = True  # up and down finish whole (a half-made container is worse than a late stop)


def add_arguments(parser):
    sub = parser.add_subparsers(dest="lab_command", required=True, metavar="COMMAND")
    p = sub.add_parser("up", help="create a container")
    p.add_argument("name")
    p.add_argument("--ipv6", action="store_true", help="also give it IPv6 addresses (fd77::N:2/126)")
    p = sub.add_parser("down", help="remove a container and kill what runs in it")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("name", nargs="?")
    which.add_argument("--all", action="store_true", help="every container")
    p = sub.add_parser("exec", help="run a command inside a container")
    p.add_argument("name")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    sub.add_parser("list", help="show containers")


def run(args):
    if args.lab_command == "up":
        c = Lab.up(args.name, ipv6=args.ipv6)
        print(_describe(c))
    elif args.lab_command == "down":
        if args.all:
            names = Lab.down_all()
        else:
            Lab.down(args.name)
            names = [args.name]
        print(f"removed: {' '.join(names) or 'nothing'}")
    elif args.lab_command == "exec":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not argv:
            raise LabError("lab exec: no command given (bpfhook lab exec NAME -- CMD ...)")
        container = Lab.get(args.name)
        if not args.shutdown.hand_over():  # told to stop before the command could take the signal
            return 128 + args.shutdown.signal
        container.exec(argv)
    else:
        for c in Lab.list():
            print(_describe(c))
    return 0


def _describe(c):
    v6 = f" {c.ipv6}/126" if c.ipv6 else ""
    return (
        f"{c.name}: netns {c.netns} {c.ipv4}/30{v6} via {c.host_if} ({c.host_ipv4}), "
        f"cgroup {c.cgroup_path} id {c.cgroup_id}"
    )
