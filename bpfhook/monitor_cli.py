"""`bpfhook monitor`: options, their validation, and the per-event filter.

The work itself is bpfhook.monitor.run(options), given a validated
MonitorOptions. Bad syntax (numbers, HOST:PORT) is a usage error (exit 2,
from argparse); a cgroup path that does not exist is a runtime error (exit 1).
"""
import dataclasses
import os

from bpfhook.cli import host_port, pid_number, port_number, positive_float
from pybpf import mounts
from pybpf.errors import BpfError

# programs/accept.py HOOKS, best first (a test holds them equal): importing it here would load the
# whole BPF side for every `bpfhook ... --help`
ACCEPT_HOOKS = ("fexit", "kretprobe", "getpeername", "tracepoint")
NEEDS_ROOT = True
POLLS_SHUTDOWN = True  # the final report, then detach


class MonitorError(BpfError):
    """Options that parse but cannot be used on this system."""


@dataclasses.dataclass(frozen=True)
class MonitorOptions:
    cgroup: str  # filesystem directory of the cgroup the cgroup hooks attach to
    metrics_interval: float
    show_containers: bool = False
    show_events: bool = False
    json: bool = False
    prometheus: tuple = None  # (host, port)
    container: str = None
    pid: int = None
    port: int = None
    duration: float = None
    accept: str = "auto"  # accept attribution hook: auto or one of programs.accept.HOOKS


def add_arguments(parser):
    parser.add_argument("-c", "--cgroup", metavar="PATH",
                        help="cgroup2 directory to attach the cgroup hooks to (default: the cgroup2 mount)")
    parser.add_argument("-m", "--metrics-interval", metavar="SEC", type=positive_float, default=5.0,
                        help="seconds between reports (default 5)")
    parser.add_argument("-s", "--show-containers", action="store_true", help="name containers in the report")
    parser.add_argument("-e", "--show-events", action="store_true", help="print every connection event")
    parser.add_argument("--json", action="store_true", help="one JSON object per event on stdout, no text report")
    parser.add_argument("--prometheus", metavar="HOST:PORT", type=host_port,
                        help="serve Prometheus metrics on http://HOST:PORT/metrics")
    parser.add_argument("--container", metavar="NAME|ID", help="only connections of this container")
    parser.add_argument("--pid", type=pid_number, help="only connections of this process")
    parser.add_argument("--port", type=port_number, help="only connections with this local or remote port")
    parser.add_argument("--duration", metavar="SEC", type=positive_float, help="stop after SEC seconds")
    parser.add_argument("--accept", choices=("auto",) + ACCEPT_HOOKS, default="auto",
                        help="how accepted connections get their process (default auto: the first of "
                        f"{', '.join(ACCEPT_HOOKS)} this kernel allows; tracepoint sees every accept() but slows "
                        "every system call on the host)")


def options_from(args):
    """Check what argparse cannot (the cgroup exists) and freeze the options."""
    cgroup = args.cgroup
    if cgroup is None:
        from bpfhook import cgroups

        cgroup = cgroups.mount()
    if not os.path.isdir(cgroup):
        raise MonitorError(f"cgroup path {cgroup!r} does not exist (or is not a directory)")
    if mounts.containing(cgroup, "cgroup2") is None:  # (a v1 hierarchy has cgroup.procs too)
        v1 = mounts.containing(cgroup, "cgroup") is not None
        raise MonitorError(f"{cgroup!r} is {'in a cgroup v1 hierarchy' if v1 else 'not a cgroup2 directory'}: "
                           f"the hooks attach to cgroup2, mounted at {mounts.cgroup2_root()}")
    return MonitorOptions(
        cgroup=cgroup, metrics_interval=args.metrics_interval, show_containers=args.show_containers,
        show_events=args.show_events, json=args.json, prometheus=args.prometheus, container=args.container,
        pid=args.pid, port=args.port, duration=args.duration, accept=args.accept,
    )


def run(args):
    options = options_from(args)
    from bpfhook import monitor  # here: `bpfhook --help` and bad options stay quick

    return monitor.run(options, stop=args.shutdown)


@dataclasses.dataclass(frozen=True)
class EventFilter:
    """Which decoded events to keep: all given conditions must hold."""

    container: str = None  # name, id, short id or id prefix (Container.matches)
    pid: int = None
    port: int = None

    @classmethod
    def from_options(cls, options):
        return cls(container=options.container, pid=options.pid, port=options.port)

    @property
    def passes_everything(self):
        return self.container is None and self.pid is None and self.port is None

    def __call__(self, event, container):
        """event: records.decode_event dict; container: its bpfhook.containers.Container."""
        if self.pid is not None and event["pid"] != self.pid:
            return False
        if self.port is not None and self.port not in (event["sport"], event["dport"]):
            return False
        if self.container is not None and not container.matches(self.container):
            return False
        return True
