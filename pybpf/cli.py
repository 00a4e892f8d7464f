"""The command lines of pybpf: pybpf-disasm, pybpf-asm and `python -m pybpf.features`.

Each command imports what it needs when it runs, so that one does not pay for the others'
modules at start-up (tests/unit/test_import_light.py measures `import pybpf.cli`).
"""
import argparse
import importlib
import json
import re
import sys
import time

from .errors import BpfError

_HEX_CHARS = frozenset("0123456789abcdefABCDEF")


def parse_hex(text):
    """Bytes from hex text: whitespace, commas, "0x" prefixes and "\\x" escapes are tolerated."""
    cleaned = re.sub(r"0[xX]|\\x|[\s,;:]", "", text)
    if not cleaned or not set(cleaned) <= _HEX_CHARS or len(cleaned) % 2:
        bad = next((c for c in cleaned if c not in _HEX_CHARS), None)
        why = f"unexpected character {bad!r}" if bad else f"odd number of hex digits ({len(cleaned)})"
        raise BpfError(f"bad hex input: {why}" if cleaned else "bad hex input: no hex digits")
    return bytes.fromhex(cleaned)


def _looks_hex(data):
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return False
    return bool(text.strip()) and re.fullmatch(r"(?:\s|,|0[xX]|\\x|[0-9a-fA-F])*", text) is not None


def _dsl_code(spec):
    """The bytecode of MODULE:ATTR: a DSL program, a function returning one, or a list of Insn."""
    from .asm.insn import encode
    from .asm.link import link

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise BpfError(f"--dsl wants MODULE:ATTR, got {spec!r}")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise BpfError(f"--dsl: cannot import {module_name}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BpfError(f"--dsl: {module_name} has no attribute {attr}")
        obj = getattr(obj, part)
    if callable(obj) and not hasattr(obj, "link") and not isinstance(obj, (list, tuple)):
        obj = obj()
    insns = obj.link() if hasattr(obj, "link") else link(list(obj))
    return encode(insns)


def disasm_main(argv=None):
    """pybpf-disasm [FILE|-] [--hex] [--syntax kernel|llvm|ubpf] [--json] [--no-pc]
    [--prog-id ID | --pinned PATH | --dsl MODULE:ATTR]"""
    from .asm.disasm import RAW, SYNTAXES, disassemble, disassemble_json

    parser = argparse.ArgumentParser(prog="pybpf-disasm", description="Disassemble eBPF bytecode.")
    parser.add_argument("file", nargs="?", help="raw bytecode or hex text file; - for stdin")
    parser.add_argument("--hex", action="store_true", help="input is hex text (auto-detected otherwise)")
    parser.add_argument("--syntax", choices=SYNTAXES, default="kernel")
    parser.add_argument("--json", action="store_true", help="one JSON object per instruction")
    parser.add_argument("--no-pc", action="store_true", help="leave out the pc column")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prog-id", type=int, help="a loaded program, by id")
    source.add_argument("--pinned", metavar="PATH", help="a loaded program pinned in bpffs")
    source.add_argument("--dsl", metavar="MODULE:ATTR", help="a DSL program or list of Insn")
    args = parser.parse_args(argv)

    try:
        symbols, map_names = RAW, None
        if args.prog_id is not None or args.pinned:
            from .prog import read_loaded

            if args.file:
                raise BpfError("give either a file or --prog-id/--pinned, not both")
            loaded = read_loaded(prog_id=args.prog_id, path=args.pinned)
            code, symbols, map_names = loaded.code, loaded.symbols, loaded.map_names
        elif args.dsl:
            code = _dsl_code(args.dsl)
        else:
            if args.file in (None, "-"):
                data = sys.stdin.buffer.read()
            else:
                try:
                    with open(args.file, "rb") as f:
                        data = f.read()
                except OSError as e:
                    raise BpfError(f"{args.file}: {e.strerror}") from None
            code = parse_hex(data.decode("ascii", "replace")) if args.hex or _looks_hex(data) else data
        if args.json:
            for entry in disassemble_json(code, args.syntax, symbols=symbols, map_names=map_names):
                print(json.dumps(entry))
        else:
            sys.stdout.write(disassemble(code, args.syntax, symbols=symbols, pcs=False if args.no_pc else None))
    except BpfError as e:
        print(f"pybpf-disasm: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    return 0


def asm_main(argv=None):
    """pybpf-asm [FILE|-] [-o OUT] [--syntax auto|llvm|ubpf] [--hex]"""
    from .asm.text import SYNTAXES, assemble

    parser = argparse.ArgumentParser(prog="pybpf-asm", description="Assemble eBPF text (LLVM/kernel or ubpf syntax).")
    parser.add_argument("file", nargs="?", default="-", help="input file, - for stdin (default)")
    parser.add_argument("-o", "--output", help="output file (default: stdout)")
    parser.add_argument("--syntax", choices=SYNTAXES, default="auto")
    parser.add_argument("--hex", action="store_true", help="write hex text, one instruction slot per line")
    args = parser.parse_args(argv)
    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8") as f:
                text = f.read()
        code = assemble(text, args.syntax)
    except (BpfError, OSError, UnicodeDecodeError) as err:
        name = "stdin" if args.file == "-" else args.file
        print(f"pybpf-asm: {name}: {err}", file=sys.stderr)
        return 1
    if args.hex:
        data = "".join(code[i:i + 8].hex(" ") + "\n" for i in range(0, len(code), 8)).encode()
    else:
        data = code
    if args.output:
        with open(args.output, "wb") as f:
            f.write(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


def _feature_table(rows):
    mark = {True: "yes", False: "no", None: "?"}
    width = max(len(name) for name in rows)
    return "\n".join(f"{name:<{width}}  {mark[row['available']]:<3}  {row['detail']}" for name, row in rows.items())


def features_main(argv=None):
    """python -m pybpf.features [--json] [--helpers] [NAME ...]"""
    from . import features

    parser = argparse.ArgumentParser(prog="python -m pybpf.features",
                                     description="Probe what this kernel's BPF can do.")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--helpers", action="store_true", help="also probe every helper for every program type")
    parser.add_argument("names", nargs="*", help="probe only these features")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        if args.names:
            rows = {n: {"available": features.probe(n).available, "detail": features.probe(n).detail}
                    for n in args.names}
        else:
            rows = features.report(include_helpers=args.helpers)
    except BpfError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=False))
    else:
        print(_feature_table(rows))
        print(f"\n{sum(r['available'] is True for r in rows.values())} of {len(rows)} available; "
              f"probed in {time.monotonic() - start:.2f} s")
    return 0
