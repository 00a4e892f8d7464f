"""Traffic generator: HTTP/1.1 GET (any HTTP server answers it), TCP echo, UDP echo and Unix
stream echo.

`bpfhook trafficgen --auto` starts its own server on 127.0.0.1 (or inside a
container with --container NAME: a lab container, or a Docker, podman or
Kubernetes one entered through bpfhook.guest) and runs a bounded client loop
against it: at most --requests requests and at most --duration seconds. Every
TCP, HTTP and Unix request is a fresh connection, so a monitor sees the whole
lifecycle each time. --target takes the forms bpfhook.targets reads: any
HOST:PORT, a hostname, a container with a port, or a Unix socket path (for
uds, and for http over a Unix socket).
"""
import contextlib
import dataclasses
import http.server
import os
import socket
import socketserver
import selectors
import subprocess
import sys
import tempfile
import threading
import time

from bpfhook import containers, guest, http1, targets
from bpfhook.cli import positive_float, positive_int
from bpfhook.lab import Lab
from pybpf.errors import BpfError

TYPES = ("http", "tcp", "udp", "uds")
PAYLOAD = b"bpfhook-trafficgen:" + bytes(range(48, 58)) * 4  # 59 bytes, recognisable in captures
HTTP_BODY = b"hello from bpfhook trafficgen\n"
HTTP_REQUEST = ("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bpfhook-trafficgen\r\n"
                "Connection: {connection}\r\n\r\n")
HTTP_MAX_RESPONSE = 16 << 20  # bytes: a server that never stops sending is an error, not a hang


class TrafficError(BpfError):
    """A target that does not fit the traffic type, or a server that cannot start."""


# ---- servers -------------------------------------------------------------------

class _EchoStream(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(5)
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


class _EchoDatagram(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(data, self.client_address)


class _Http(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(HTTP_BODY)))
        self.end_headers()  # the connection stays open as long as the client asks (Connection)
        self.wfile.write(HTTP_BODY)

    def log_message(self, *args):
        pass


class _HttpServer(http.server.ThreadingHTTPServer):
    def server_bind(self):
        """Like HTTPServer's, without its reverse DNS lookup (getfqdn), which stalls in a netns without DNS."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


def _server_class(base, host):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return type(base.__name__, (base,), {"address_family": family, "allow_reuse_address": True,
                                          "daemon_threads": True})


class Server:
    """One server of a type, serving from a daemon thread until close()."""

    def __init__(self, kind, host="127.0.0.1", port=0, path=None):
        self.kind = kind
        self._tmpdir = None
        if kind == "uds":
            if path is None:
                self._tmpdir = tempfile.mkdtemp(prefix="bpfhook-trafficgen-")
                path = os.path.join(self._tmpdir, "echo.sock")
            server = socketserver.ThreadingUnixStreamServer
            server = type(server.__name__, (server,), {"daemon_threads": True})
            self.server = server(path, _EchoStream)
        elif kind in ("tcp", "http", "udp"):
            base, handler = {"tcp": (socketserver.ThreadingTCPServer, _EchoStream),
                             "http": (_HttpServer, _Http),
                             "udp": (socketserver.ThreadingUDPServer, _EchoDatagram)}[kind]
            self.server = _server_class(base, host)((host, port), handler)
        else:
            raise TrafficError(f"unknown traffic type {kind!r} (choose from {', '.join(TYPES)})")
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       name=f"trafficgen-{kind}", daemon=True)
        self.thread.start()

    @property
    def target(self):
        """HOST:PORT (or the socket path) that clients use."""
        if self.kind == "uds":
            return self.server.server_address
        host, port = self.server.server_address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def close(self):
        if self.thread is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=5)
            self.thread = None
            if self.kind == "uds":
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.server.server_address)
            if self._tmpdir:
                os.rmdir(self._tmpdir)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- targets ---------------------------------------------------------------------

def parse_target(kind, text):
    """The Target of `text` for traffic of `kind`: uds needs a Unix path, tcp and udp an address."""
    target = targets.parse(text, "target")
    if target.unix != (kind == "uds") and not (kind == "http" and target.unix):
        need = "a Unix socket path" if kind == "uds" else "HOST:PORT (or a container with a port)"
        raise TrafficError(f"{kind} traffic needs {need}, got {text!r}")
    return target


# ---- clients ---------------------------------------------------------------------

def _connect(target, timeout, kind=socket.SOCK_STREAM):
    s = socket.socket(target.family, kind)
    s.settimeout(timeout)
    try:
        s.connect(target.address)
    except OSError:
        s.close()
        raise
    return s


def _echo_over(sock, payload):
    """Send payload, read the same length back; returns (sent, received)."""
    sock.sendall(payload)
    got = 0
    while got < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"echo ended after {got} of {len(payload)} bytes")
        got += len(chunk)
    return len(payload), got


def stream_request(target, timeout):
    """tcp and uds: a new connection, PAYLOAD echoed back."""
    with _connect(target, timeout) as s:
        return _echo_over(s, PAYLOAD)


def udp_request(target, timeout):
    with _connect(target, timeout, socket.SOCK_DGRAM) as s:
        s.send(PAYLOAD)
        return len(PAYLOAD), len(s.recv(65536))


def http_request(target, timeout, paths=("/",)):
    """GET each of `paths` on one connection (keep-alive; the last asks to close), each answer read
    whole. (sent, received) are the bytes on the wire each way: what a monitor counts for the
    connection. An incomplete answer, or a status of 400 or more, is an error."""
    host = "localhost" if target.unix else str(target)
    deadline = time.monotonic() + timeout
    sent = received = 0
    with _connect(target, timeout) as s:
        reader = http1.ResponseReader()
        for i, path in enumerate(paths):
            request = HTTP_REQUEST.format(path=path, host=host,
                                          connection="close" if i == len(paths) - 1 else "keep-alive").encode()
            s.sendall(request)
            sent += len(request)
            while True:
                try:
                    response = reader.next_response()
                except http1.HttpError as err:
                    raise ConnectionError(f"bad HTTP answer: {err}") from None
                if response is not None:
                    break
                s.settimeout(max(deadline - time.monotonic(), 0.001))  # the whole exchange is bounded
                reader.feed(s.recv(65536))
                if len(reader.buf) > HTTP_MAX_RESPONSE:
                    raise ConnectionError(f"response larger than {HTTP_MAX_RESPONSE} bytes")
            received += len(response.raw)
            if response.status >= 400:
                raise ConnectionError(f"HTTP {response.status}, {len(response.raw)} bytes")
    return sent, received


REQUESTS = {"http": http_request, "tcp": stream_request, "udp": udp_request, "uds": stream_request}


@dataclasses.dataclass
class Summary:
    kind: str
    target: str
    requests: int = 0
    errors: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    elapsed: float = 0.0
    last_error: str = ""

    @property
    def rate(self):
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    def line(self):
        error = f" (last: {self.last_error})" if self.errors else ""
        return (f"{self.kind} {self.target}: {self.requests} requests, {self.errors} errors{error}, "
                f"{self.bytes_sent} bytes sent, {self.bytes_received} received, "
                f"{self.elapsed:.2f}s, {self.rate:.0f} req/s")


def generate(kind, target, requests=10, duration=10.0, timeout=2.0, interval=0.0, paths=("/",), keep_alive=1):
    """Run at most `requests` requests for at most `duration` seconds; returns a Summary.
    http: GETs of `paths` in turn, `keep_alive` of them per connection."""
    if kind not in REQUESTS:
        raise TrafficError(f"unknown traffic type {kind!r} (choose from {', '.join(TYPES)})")
    where = parse_target(kind, target)
    request = REQUESTS[kind]
    summary = Summary(kind, target)
    start = time.monotonic()
    deadline = start + duration
    while summary.requests < requests and time.monotonic() < deadline:
        n = min(keep_alive if kind == "http" else 1, requests - summary.requests)
        first = summary.requests
        summary.requests += n
        extra = {"paths": [paths[(first + i) % len(paths)] for i in range(n)]} if kind == "http" else {}
        try:
            sent, received = request(where, min(timeout, max(deadline - time.monotonic(), 0.01)), **extra)
        except OSError as e:
            summary.errors += n
            summary.last_error = str(e) or type(e).__name__
        else:
            summary.bytes_sent += sent
            summary.bytes_received += received
        if interval:
            time.sleep(interval)
    summary.elapsed = time.monotonic() - start
    return summary


# ---- a server inside a container ------------------------------------------------

@contextlib.contextmanager
def server_in_container(kind, container, ipv6=False):
    """A Server of `kind` running inside `container` (a child process); yields its target.
    container: a bpfhook.lab.Container or a bpfhook.guest.Guest (a container of any runtime)."""
    host = container.ipv6 if ipv6 else container.ipv4
    if not host:
        raise TrafficError(f"container {container.name!r} has no {'IPv6' if ipv6 else 'IPv4'} address")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    # its own session: a Ctrl-C (or timeout) signalling our process group is ours to act on, not the server's
    child = container.spawn([sys.executable, "-m", "bpfhook.trafficgen", "serve", kind, host],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, start_new_session=True)
    try:
        ready = _readline(child.stdout, timeout=60)  # an upper bound: slow under emulation
        if not ready:
            raise TrafficError(f"{kind} server in container {container.name!r} did not start "
                               f"(exit status {child.poll()})")
        yield ready
    finally:
        child.stdin.close()  # the server exits on EOF
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        child.stdout.close()


def _readline(stream, timeout):
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return stream.readline().strip()


def _serve_main(kind, host):
    """Child side of server_in_container: print the target, serve until stdin closes."""
    with Server(kind, host) as server:
        print(server.target, flush=True)
        sys.stdin.read()


# ---- command line --------------------------------------------------------------------

NEEDS_ROOT = False


def add_arguments(parser):
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--auto", action="store_true", help="start a server of --type and send traffic to it")
    where.add_argument("--target", metavar="TARGET", help=f"an existing server: {targets.FORMS}")
    parser.add_argument("--type", choices=TYPES, default="http", dest="kind", help="traffic type (default http)")
    parser.add_argument("--requests", type=positive_int, default=10, metavar="N", help="requests (default 10)")
    parser.add_argument("--duration", type=positive_float, default=10.0, metavar="SEC",
                        help="stop after SEC seconds even if requests remain (default 10)")
    parser.add_argument("--path", action="append", dest="paths", metavar="PATH",
                        help="http: GET these paths in turn; repeatable (default /)")
    parser.add_argument("--keep-alive", type=positive_int, default=1, metavar="N",
                        help="http: N requests per connection (default 1: a new connection each)")
    parser.add_argument("--container", metavar="NAME",
                        help="with --auto: run the server in this container (its cgroup and network namespace): "
                             "lab/docker/podman name, id or prefix, namespace/pod[/container]")
    parser.add_argument("--ipv6", action="store_true", help="with --auto: use IPv6 (::1 or the container's)")


def _enterable(spec):
    """A lab container by its lab record, any other container as a bpfhook.guest.Guest."""
    c = containers.find(spec)
    return Lab.get(c.id) if c.kind == "lab" else guest.Guest.of(c)


def run(args):
    http = dict(paths=tuple(args.paths or ["/"]), keep_alive=args.keep_alive)
    if any(not p.startswith("/") or any(c.isspace() for c in p) for p in http["paths"]):
        raise TrafficError(f"bad --path in {' '.join(http['paths'])}: a path starts with / and has no spaces")
    if args.container and not args.auto:
        raise TrafficError("--container needs --auto")
    if args.auto and args.container:
        if os.geteuid() != 0:
            raise TrafficError("--container needs root (it enters the container)")
        with server_in_container(args.kind, _enterable(args.container), ipv6=args.ipv6) as target:
            summary = generate(args.kind, target, args.requests, args.duration, **http)
    elif args.auto:
        with Server(args.kind, "::1" if args.ipv6 else "127.0.0.1") as server:
            summary = generate(args.kind, server.target, args.requests, args.duration, **http)
    else:
        summary = generate(args.kind, args.target, args.requests, args.duration, **http)
    print(summary.line())
    return 0 if summary.errors == 0 else 1


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"] or len(sys.argv) != 4:
        sys.exit("usage: python -m bpfhook.trafficgen serve TYPE HOST   (used by server_in_container)")
    _serve_main(sys.argv[2], sys.argv[3])
