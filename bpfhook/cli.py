"""bpfhook command line: one subcommand per tool module.

A tool module registers itself in COMMANDS and provides
  HELP                 one-line description
  NEEDS_ROOT           True when it loads BPF, changes namespaces, ...
  add_arguments(p)     fills its argparse (sub)parser
  run(args) -> int     does the work; raises BpfError/OSError on failure
  POLLS_SHUTDOWN       optional, True when run() watches args.shutdown and stops in its own
                       order on SIGINT/SIGTERM; other tools get a KeyboardInterrupt (shutdown.py)
"""
import argparse
import importlib
import os
import signal
import sys

from bpfhook.shutdown import Shutdown
from pybpf.errors import BpfError

COMMANDS = {
    "lab": "bpfhook.lab",
    "capture": "bpfhook.capture",
    "mirror": "bpfhook.mirror",
    "demo": "bpfhook.demo",
    "monitor": "bpfhook.monitor_cli",
    "trafficgen": "bpfhook.trafficgen",
    "analyze": "bpfhook.analyze",
    "replay": "bpfhook.replay",
}


class _Parser(argparse.ArgumentParser):
    """Usage mistakes print one line, not the whole usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command=None):
    """The parser of every command; given `command`, only that command's module is imported
    (a tool's imports are its start-up time: the others stay bare entries until chosen)."""
    parser = _Parser(prog="bpfhook", description="eBPF tools for containers, in pure Python")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        if command not in (None, name):
            sub.add_parser(name)
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
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
    args = build_parser(chosen if chosen in COMMANDS else None).parse_args(argv)
    if args.module.NEEDS_ROOT and os.geteuid() != 0:
        print(f"bpfhook: error: '{args.command}' needs root (run it with sudo)", file=sys.stderr)
        return 1
    shutdown.raise_first = not getattr(args.module, "POLLS_SHUTDOWN", False)
    args.shutdown = shutdown
    try:
        return args.module.run(args) or 0
    except (BpfError, OSError) as e:
        print(f"bpfhook: error: {e}", file=sys.stderr)
        return 1
