"""Lab containers route to each other through the host, also on a Docker host.

dockerd (and podman's CNI plugins) set iptables' FORWARD policy to DROP, which
drops what the host routes from one lab veth to another. Each lab container
therefore gets one rule of its own, first in FORWARD and named by its comment:

    -i bh-NAME -o bh-+ -m comment --comment "bpfhook lab NAME" -j ACCEPT

(lab to lab only; replies go through the peer's own rule), and IPv4 forwarding
on its host-side veth alone (the sysctl goes away with the veth). No policy,
chain or rule of anyone else's is touched, so Docker's stay exactly as they
were. The rule is made with the `iptables` that dockerd itself uses; without
one, or where the kernel has no iptables filter table, nothing filters
forwarding and no rule is made.
"""
import shutil
import subprocess

from pybpf.errors import BpfError

CHAIN = "FORWARD"
COMMENT = "bpfhook lab {name}"
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"  # sudo's PATH has them, a plain root shell may not
_TIMEOUT = 30


class ForwardingError(BpfError):
    """iptables refused a rule."""


def iptables():
    """Path of the iptables command, or None."""
    return shutil.which("iptables") or shutil.which("iptables", path=_SBIN)


def rule(name, host_if, lab_ifs):
    """The rule's match and target for container `name` (host_if: its veth; lab_ifs: e.g. "bh-+")."""
    return ["-i", host_if, "-o", lab_ifs, "-m", "comment", "--comment", COMMENT.format(name=name), "-j", "ACCEPT"]


def _run(binary, *args):
    return subprocess.run([binary, "-w", "5", *args], capture_output=True, text=True, timeout=_TIMEOUT)


def allow(name, host_if, lab_ifs):
    """Forward from host_if to the other lab veths: the sysctl, and the rule when iptables is here."""
    with open(f"/proc/sys/net/ipv4/conf/{host_if}/forwarding", "w") as f:
        f.write("1")
    binary = iptables()
    if binary is None:
        return
    spec = rule(name, host_if, lab_ifs)
    if _run(binary, "-C", CHAIN, *spec).returncode == 0:
        return  # already there (an earlier up of this name was killed after making it)
    done = _run(binary, "-I", CHAIN, "1", *spec)
    if done.returncode and _run(binary, "-S", CHAIN).returncode == 0:
        raise ForwardingError(f"iptables -I {CHAIN} for lab container {name}: {_last_line(done)}")


def revoke(name, host_if, lab_ifs):
    """Remove the container's rule (every copy, should a killed run have left two); no error when absent."""
    binary = iptables()
    if binary is None:
        return
    spec = rule(name, host_if, lab_ifs)
    for _ in range(16):  # a bound: each pass removes one copy
        if _run(binary, "-C", CHAIN, *spec).returncode:
            return
        done = _run(binary, "-D", CHAIN, *spec)
        if done.returncode:
            raise ForwardingError(f"iptables -D {CHAIN} for lab container {name}: {_last_line(done)}")


def present(name, host_if, lab_ifs):
    """Whether the container's rule is in FORWARD (False without iptables)."""
    binary = iptables()
    return binary is not None and _run(binary, "-C", CHAIN, *rule(name, host_if, lab_ifs)).returncode == 0


def _last_line(done):
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {done.returncode}"

