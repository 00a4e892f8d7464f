"""Which processes hold which sockets, from /proc: each /proc/<pid>/fd link to a socket reads
"socket:[<inode>]" (what `ss -p` reads). For a socket no hook saw being opened."""
import contextlib
import os


def all_pids():
    """Every process's pid, lowest first (the host's pid namespace, as /proc shows it)."""
    return sorted(int(name) for name in os.listdir("/proc") if name.isdigit())


def socket_holders(pids, wanted=None):
    """{socket inode: pid} of the sockets the processes `pids` hold open, each with the first of
    `pids` that holds it (a forked child shares its parent's sockets). wanted: a set of inodes to
    look for; the scan stops once every one is found. Processes that exit meanwhile, or whose fds
    we may not read, are passed over."""
    holders = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            fd_dir = f"/proc/{pid}/fd"
            for fd in os.listdir(fd_dir):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"{fd_dir}/{fd}")
                    if link.startswith("socket:["):
                        inode = int(link[8:-1])
                        if wanted is None or inode in wanted:
                            holders.setdefault(inode, pid)
        if wanted is not None and len(holders) == len(wanted):
            break
    return holders


def comm(pid):
    """The process's name (/proc/<pid>/comm), or "?" once it is gone."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


TCP_LISTEN = "0A"  # the st column of /proc/net/tcp for a listening socket


def listening_ports(pid):
    """The TCP ports something listens on in the network namespace of process `pid`
    (/proc/<pid>/net/tcp and tcp6), empty once it is gone."""
    ports = set()
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/net/{name}") as f:
                next(f, None)
                for line in f:
                    fields = line.split(None, 4)
                    if len(fields) > 3 and fields[3] == TCP_LISTEN:
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
