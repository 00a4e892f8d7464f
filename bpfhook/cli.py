"""bpfhook command line: the command table, and the argument types every tool's options share.

A command's module provides
  NEEDS_ROOT           True when it loads BPF, changes namespaces, ...
  add_arguments(p)     fills its argparse (sub)parser
  run(args) -> int     does the work; raises BpfError/OSError on failure
  POLLS_SHUTDOWN       optional, True when run() watches args.shutdown and stops in its own
                       order on SIGINT/SIGTERM; other tools get a KeyboardInterrupt (shutdown.py)
Only the chosen command's module is imported: its imports are that tool's start-up time.
"""
import argparse
import importlib
import ipaddress
import os
import signal
import sys

from bpfhook.shutdown import Shutdown
from pybpf.errors import BpfError

# name: (module, one-line help)
COMMANDS = {
    "lab": ("bpfhook.lab", "throwaway containers (netns + veth + cgroup) to run traffic in"),
    "capture": ("bpfhook.capture", "capture a container's incoming network and Unix-socket traffic to pcapng"),
    "mirror": ("bpfhook.mirror",
               "copy an interface's or container's packets to an observer interface (tc mirred or BPF)"),
    "demo": ("bpfhook.demo", "demos without Docker: `bpfhook demo mirror` (three lab containers, one mirror)"),
    "monitor": ("bpfhook.monitor_cli", "watch TCP connections (and UDP flows) per process, cgroup and container"),
    "trafficgen": ("bpfhook.trafficgen",
                   "generate bounded HTTP, TCP, UDP or Unix socket traffic to a server (or one it starts)"),
    "analyze": ("bpfhook.analyze",
                "flows, Unix-socket conversations, talkers, processes and HTTP requests of a pcapng capture"),
    "replay": ("bpfhook.replay", "replay captured client traffic (HTTP/1.1, h2c/gRPC, TCP, UDP, Unix sockets) "
               "to a server and diff the answers"),
    "doctor": ("bpfhook.doctor", "check this host or pod: capabilities, kernel features, mounts, cgroups, runtimes"),
}


# ---- argument types ------------------------------------------------------------

def positive_float(text):
    """Seconds: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _int_in(low, high, what):
    """A decimal integer low..high, named `what` in its errors."""
    def parse(text):
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {what}: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be {low}..{high}, got {value}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


pid_number = _int_in(1, 2**22, "pid")
port_number = _int_in(1, 65535, "port")


def ring_megabytes(text):
    """--ring-size: a power of two of megabytes, 1 to 1024; in bytes."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of megabytes: {text!r}") from None
    if not 1 <= value <= 1024 or value & (value - 1):
        raise argparse.ArgumentTypeError(f"must be a power of two from 1 to 1024 (megabytes), got {text!r}")
    return value << 20


def host_port(text):
    """'HOST:PORT', '[v6]:PORT' or ':PORT' (all interfaces) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad IPv6 address in {text!r}") from None
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"write IPv6 addresses in brackets: [{host}]:{port}")
    if not host:
        host = "0.0.0.0"
    try:
        number = _int_in(0, 65535, "port")(port)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{e} in {text!r}") from None
    return host, number


# ---- the command line ----------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """Usage mistakes print one line, not the whole usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(commands=None):
    """The parser, with the options of `commands` (names; None: every one), whose modules it imports."""
    parser = _Parser(prog="bpfhook", description="eBPF tools for containers, in pure Python")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, text) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        if commands is None or name in commands:
            module = importlib.import_module(module_name)
            p.set_defaults(module=module)
            module.add_arguments(p)
    return parser


def main(argv=None):
    # Signals first: one arriving while a tool sets up must not cut its clean-up short either. The
    # handler stays to the end of the process (no restore): a signal while it exits only says so.
    shutdown = Shutdown(raise_first=True).install()
    try:
        return _main(sys.argv[1:] if argv is None else argv, shutdown)
    except KeyboardInterrupt:
        return 128 + (shutdown.signal or signal.SIGINT)
    finally:
        shutdown.raise_first = False


def _main(argv, shutdown):
    # The top level has no option taking a value: its first non-option word names the command.
    chosen = next((word for word in argv if not word.startswith("-")), None)
    args = build_parser([chosen]).parse_args(argv)
    if args.module.NEEDS_ROOT and os.geteuid() != 0:
        print(f"bpfhook: error: '{args.command}' needs root (run it with sudo)", file=sys.stderr)
        return 1
    shutdown.raise_first = not getattr(args.module, "POLLS_SHUTDOWN", False)
    args.shutdown = shutdown
    try:
        return args.module.run(args) or 0
    except (BpfError, OSError) as e:
        from bpfhook.doctor import refusal  # (only on failure: doctor imports the runtimes' readers)

        print(f"bpfhook: error: {refusal(args.command, e)}", file=sys.stderr)
        return 1
