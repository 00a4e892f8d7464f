"""Where replay and trafficgen send: any HOST:PORT, a hostname, a Unix path, or a container with a port.

A name is looked up as a container first (its address read inside the
container's network namespace), then in DNS. Nothing is refused: the tool
sends where its user points it (tests keep their own traffic on this machine).
"""
import dataclasses
import ipaddress
import socket

from bpfhook import containers, guest
from bpfhook.containers import ContainerError
from bpfhook.lab import Lab
from pybpf.errors import BpfError


class TargetError(BpfError):
    """A target that cannot be parsed or resolved."""


FORMS = "HOST:PORT, [IPv6]:PORT, HOSTNAME:PORT, CONTAINER:PORT, NAMESPACE/POD:PORT or a Unix socket path (@name: abstract)"


@dataclasses.dataclass(frozen=True)
class Target:
    family: int
    address: object  # (ip, port), or a path (str; abstract names start with NUL)
    text: str  # as the user wrote it
    via: str = ""  # how a name was resolved: "container web (10.77.1.2)", "dns"

    @property
    def unix(self):
        return self.family == socket.AF_UNIX

    def __str__(self):
        if self.unix:
            return self.text
        host, port = self.address
        return f"[{host}]:{port}" if self.family == socket.AF_INET6 else f"{host}:{port}"


def is_unix_path(text):
    return text.startswith(("/", ".", "@"))


def split_host_port(text, what="target"):
    """(host, port) of HOST:PORT or [IPv6]:PORT; TargetError with the accepted forms otherwise."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address needs its brackets
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TargetError(f"bad {what} {text!r}: use {FORMS}")
    return host, int(port)


def _ip(host):
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def parse(text, what="target"):
    """A Target from its text; names are resolved now, once."""
    if is_unix_path(text):
        if "\0" in text or len(text) < 2:
            raise TargetError(f"bad {what} {text!r}: use {FORMS}")
        return Target(socket.AF_UNIX, "\0" + text[1:] if text.startswith("@") else text, text)
    host, port = split_host_port(text, what)
    addr = _ip(host)
    if addr is not None:
        return Target(_family(addr), (str(addr), port), text)
    container = find_container(host) if host != "localhost" else None
    if container is not None:
        label, ipv4, ipv6 = container
        if not (ipv4 or ipv6):
            raise TargetError(f"bad {what} {text!r}: container {label!r} has no global address in its network namespace")
        addr = ipaddress.ip_address(ipv4 or ipv6)
        return Target(_family(addr), (str(addr), port), text, f"container {label} ({addr})")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise TargetError(f"bad {what} {text!r}: {host!r} is no container here and no host name "
                          f"DNS knows ({err.strerror})") from None
    family, _type, _proto, _name, sockaddr = infos[0]
    return Target(family, sockaddr[:2], text, f"dns ({sockaddr[0]})")


def _family(addr):
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


# -- containers ----------------------------------------------------------------------------------

def find_container(spec):
    """(label, IPv4, IPv6) of the container `spec` names (containers.find), or None when none does.
    Its addresses are read inside its network namespace (None where it has none). A name several
    containers answer to is an error, not a host name to look up in DNS."""
    try:
        found = containers.find(spec)
    except ContainerError as err:
        if err.candidates:
            raise TargetError(str(err)) from None
        return None
    except OSError:
        return None
    if found.kind == "lab":
        lab = Lab.get(found.id)
        return lab.name, lab.ipv4, lab.ipv6
    try:
        inside = guest.Guest.of(found)
    except guest.GuestError as err:
        raise TargetError(f"container {found.label!r}: {err}") from None
    return inside.name, inside.ipv4, inside.ipv6
