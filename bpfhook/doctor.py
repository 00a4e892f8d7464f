"""`bpfhook doctor`: what this host or pod lets each tool do, one line per missing piece.

It checks the capabilities the tools use, the kernel features they probe (pybpf.features),
the mounts (cgroup2, bpffs, tracefs, the host's /proc), the cgroup layout, and the container
runtimes whose names it can read. Each missing piece is one line naming which feature of which
tool it costs; the tools' start-up refusals use the same table (refusal()), so a refusal names
the missing capability, not just EPERM.

Capabilities, as measured on Linux 6.18 (docs/benchmarks.md, tests/kernel/test_least_privilege.py):
CAP_SYS_ADMIN stands in for CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN where those are missing
(and before Linux 5.8, where CAP_BPF and CAP_PERFMON do not exist).
"""
import errno
import os

from bpfhook import containers, netns, runtimes
from pybpf import features, mounts

NEEDS_ROOT = False  # (it says what is missing: it runs as anyone)

# name: (capability number, what each tool loses without it)
CAPABILITIES = {
    "CAP_BPF": (39, "monitor, capture, mirror --method bpf cannot start: no BPF maps or programs"),
    "CAP_PERFMON": (38, "monitor cannot start: no tracing programs (connection states, health tracepoints, "
                        "socket walks); capture loses Unix-socket tracing"),
    "CAP_NET_ADMIN": (12, "monitor cannot start: no cgroup connect/getpeername hooks; capture and mirror "
                          "cannot add tc filters"),
    "CAP_SYS_ADMIN": (21, "monitor: connections in other network namespaces (other containers) keep the bytes "
                          "and RTT of their close only, and their missed closes stay listed (setns into "
                          "each namespace for the live walk)"),
    "CAP_SYS_PTRACE": (19, "monitor: connections open before it started keep no owner until they close "
                           "(/proc/PID/fd of other users' processes)"),
    "CAP_IPC_LOCK": (14, "capture of Unix sockets cannot start (and the monitor where the kernel has no ring "
                         "buffer): perf buffers beyond perf_event_mlock_kb cannot be mapped"),
}
# What the monitor uses where the kernel has a ring buffer: the DaemonSet's list
MONITOR = ("CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE")
SUBSTITUTE = "CAP_SYS_ADMIN"  # the kernel accepts it in place of these
SUBSTITUTED = ("CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN")
# What each tool cannot start without
REQUIRED = {"monitor": ("CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"),
            "capture": ("CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_IPC_LOCK"),
            "mirror": ("CAP_NET_ADMIN",)}

# (pybpf.features name, what its absence costs)
FEATURES = [
    ("btf_vmlinux", "monitor cannot start: it reads kernel struct offsets from /sys/kernel/btf/vmlinux"),
    ("map_type.ringbuf", "monitor: events through a perf buffer instead of a ring buffer (slower)"),
    ("tp_btf", "monitor: connection states through a raw tracepoint instead of tp_btf (slower)"),
    ("raw_tracepoint", "monitor: no connection states unless tp_btf is there"),
    ("attach_type.cgroup_inet4_connect", "monitor cannot start: no cgroup connect hook"),
    ("attach_type.cgroup_inet4_getpeername", "monitor: accepted connections take their owner at close only, "
                                             "where fexit is missing too"),
    ("fexit", "monitor: accept attribution through getpeername (accept() calls that ask the peer's address)"),
    ("link.tcx", "mirror, capture: tc through netlink (clsact + cls_bpf) instead of tcx links"),
]
MOUNTS = [
    ("cgroup2", "monitor cannot start (no cgroup hooks); no tool can name containers"),
    ("bpf", "mirror --keep cannot pin its links (bpffs at /sys/fs/bpf)"),
    ("tracefs", "capture and the monitor's tracepoint fallbacks mount it themselves (needs CAP_SYS_ADMIN)"),
]


def capabilities(status="/proc/self/status"):
    """The names of CAPABILITIES this process has (effective set)."""
    with open(status) as f:
        eff = int(next(line.split()[1] for line in f if line.startswith("CapEff:")), 16)
    return {name for name, (bit, _) in CAPABILITIES.items() if eff >> bit & 1}


def missing_capabilities(held=None, among=None):
    """[(capability, what is lost)] of the capabilities missing (of `among`, names; None: all),
    CAP_SYS_ADMIN standing in."""
    held = capabilities() if held is None else held
    out = []
    for name, (_bit, lost) in CAPABILITIES.items():
        if name in held or (name in SUBSTITUTED and SUBSTITUTE in held) or (among and name not in among):
            continue
        out.append((name, lost))
    return out


def refusal(tool, error, held=None):
    """The one-line message of a tool's start-up failure `error`: when it is a permission error
    and capabilities the tool needs are missing, it names them first."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if getattr(error, "errno", None) not in (errno.EPERM, errno.EACCES):
        return text
    missing = [name for name, _ in missing_capabilities(held) if name in REQUIRED.get(tool, ())]
    if not missing:
        return text
    return f"{tool} needs {', '.join(missing)} (missing here; see bpfhook doctor): {text}"


def checks(held=None):
    """[(ok, subject, line)]: every check, in report order."""
    out = []
    held = capabilities() if held is None else held
    missing = dict(missing_capabilities(held))
    for name in CAPABILITIES:
        out.append((name not in missing, name, missing.get(name, "present" if name in held else
                                                          f"{SUBSTITUTE} stands in")))
    can_probe = "CAP_BPF" not in missing
    for name, lost in FEATURES:
        if not can_probe:
            out.append((False, f"kernel {name}", "not probed: loading a probe needs CAP_BPF"))
            continue
        found = features.probe(name)
        out.append((bool(found.available), f"kernel {name}", found.detail if found.available else lost))
    if can_probe:
        out.append(_iterator_check())
    for fstype, lost in MOUNTS:
        point = mounts.find(fstype)
        out.append((point is not None, f"mount {fstype}", f"at {point}" if point else lost))
    host_pids = netns.in_initial_pid_namespace()
    out.append((host_pids, "host /proc", "this process sees the host's pids" if host_pids else
                "monitor: no pids or owners from /proc, and other namespaces are found slower "
                "(run with hostPID: true, docker --pid host)"))
    out += _cgroup_layout()
    out += _runtimes()
    return out


def _iterator_check():
    """The TCP socket iterator (bpf_iter_tcp, 5.9) the monitor's walks use, from BTF."""
    from bpfhook.programs.conn_common import KernelOffsets  # (a BTF parse, cached per boot)

    try:
        found = KernelOffsets.load().funcs.get("bpf_iter_tcp")
    except (OSError, ValueError) as e:
        found, why = None, str(e)
    else:
        why = "vmlinux BTF has no bpf_iter_tcp"
    return (found is not None, "kernel bpf_iter_tcp", "in BTF" if found else
            f"monitor: connections open before it started are not listed, live ones count their bytes at "
            f"close ({why})")


def _cgroup_layout():
    root = mounts.cgroup2_root()
    if root is None:
        return []
    hybrid = os.path.basename(root) == "unified"
    layout = f"cgroup2 at {root} ({'hybrid: v1 controllers beside it' if hybrid else 'unified'})"
    own = os.path.exists(os.path.join(root, "cgroup.procs"))
    return [(own, "cgroup layout", layout if own else f"{layout}: its root is not readable here")]


def _runtimes():
    """One line per runtime whose state is here: how names are read, or why they are not."""
    out = []
    kinds = {}
    for c in containers.all_containers():
        kinds[c.runtime or c.kind] = kinds.get(c.runtime or c.kind, 0) + 1
    places = {"docker": (runtimes.docker_root(), runtimes.DOCKER_SOCKET),
              "containerd": runtimes.CONTAINERD_STATES,
              "podman": (runtimes.STORAGE_GRAPHROOT,),
              "cri-o": (runtimes.STORAGE_RUNROOT,)}
    for runtime, paths in places.items():
        present = [p for p in paths if os.path.exists(p)]
        if not present and not kinds.get(runtime):
            continue
        readable = [p for p in present if os.access(p, os.R_OK)]
        count = kinds.get(runtime, 0)
        if readable:
            out.append((True, f"runtime {runtime}", f"{count} container(s); names from {', '.join(readable)}"))
        else:
            out.append((False, f"runtime {runtime}", f"{count} container(s) shown by id only: mount "
                        f"{' or '.join(paths)} to read their names"))
    return out


def add_arguments(parser):
    parser.add_argument("--quiet", "-q", action="store_true", help="print only what is missing")


def run(args):
    """Print the checks; exit 1 when a tool cannot start here, else 0."""
    blocking = False
    for ok, subject, line in checks():
        if not ok:
            blocking |= "cannot start" in line
        if ok and args.quiet:
            continue
        print(f"{'ok     ' if ok else 'MISSING'} {subject}: {line}")
    return 1 if blocking else 0
