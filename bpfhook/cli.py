"""bpfhook command line: one subcommand per tool module.

A tool module registers itself in COMMANDS and provides
  HELP                 one-line description
  NEEDS_ROOT           True when it loads BPF, changes namespaces, ...
  add_arguments(p)     fills its argparse (sub)parser
  run(args) -> int     does the work; raises BpfError/OSError on failure
"""
import argparse
import importlib
import os
import sys

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
    argv = sys.argv[1:] if argv is None else argv
    # The top level has no option taking a value: its first non-option word names the command.
    chosen = next((word for word in argv if not word.startswith("-")), None)
    args = build_parser(chosen if chosen in COMMANDS else None).parse_args(argv)
    if args.module.NEEDS_ROOT and os.geteuid() != 0:
        print(f"bpfhook: error: '{args.command}' needs root (run it with sudo)", file=sys.stderr)
        return 1
    try:
        return args.module.run(args) or 0
    except (BpfError, OSError) as e:
        print(f"bpfhook: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
