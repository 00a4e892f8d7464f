#!/usr/bin/env python3
"""Run the project's benchmarks and print one table.

    python tests/perf/run.py [NAME ...] [--json | --markdown]

Each tests/perf/bench_NAME.py exposes run() -> {figure: (ours, peer, unit, target)}:
`peer` is the same measurement taken from a peer tool in the same run (None
when the peer is missing on this machine: reported, never faked; a string
says why there is none); `target` is a string such as ">= 500000" or
"< 0.2", a bare number (a bound whose direction the unit tells: at most for
times and sizes, at least for rates), or None.
"""
import argparse
import datetime
import importlib.util
import json
import operator
import os
import platform
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
_COMPARE = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def available():
    return sorted(name[len("bench_"):-3] for name in os.listdir(HERE)
                  if name.startswith("bench_") and name.endswith(".py"))


def load(name):
    path = os.path.join(HERE, f"bench_{name}.py")
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def normal_target(target, unit):
    """The target as "OP NUMBER" (or as given when it is no bound), None when there is none."""
    if target is None or target == "":
        return None
    if isinstance(target, (int, float)):
        return f"{'>=' if '/' in unit else '<='} {target:g}"
    return str(target)


def meets(value, target):
    """True/False when the target can be judged, None otherwise."""
    if not isinstance(value, (int, float)) or not target:
        return None
    op, _, number = target.partition(" ")
    compare = _COMPARE.get(op)
    try:
        return compare(value, float(number.replace(",", "").replace("_", ""))) if compare else None
    except ValueError:
        return None


def fmt(value):
    if value is None:
        return "missing"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def measure(names):
    rows = []
    for name in names:
        started = time.monotonic()
        try:
            figures = load(name).run()
        except Exception as err:  # one benchmark failing must not hide the others
            rows.append(dict(bench=name, figure="(error)", ours=None, peer=None, unit="",
                             target=None, ratio=None, ok=False, error=f"{type(err).__name__}: {err}"))
            traceback.print_exc(file=sys.stderr)
            continue
        print(f"run.py: {name}: {len(figures)} figures in {time.monotonic() - started:.1f} s", file=sys.stderr)
        for figure, (ours, peer, unit, target) in figures.items():
            target = normal_target(target, unit)
            number = (int, float)
            ratio = ours / peer if isinstance(ours, number) and isinstance(peer, number) and peer else None
            rows.append(dict(bench=name, figure=figure, ours=ours, peer=peer, unit=unit, target=target,
                             ratio=ratio, ok=meets(ours, target)))
    return rows


HEADER = ("benchmark", "figure", "ours", "peer", "unit", "ours/peer", "target", "met")


def cells(rows):
    return [(r["bench"], r["figure"], fmt(r["ours"]), fmt(r["peer"]), r["unit"],
             "" if r["ratio"] is None else f"{r['ratio']:.2f}", r["target"] or "",
             {True: "yes", False: "NO", None: ""}[r["ok"]]) for r in rows]


def text_table(rows):
    table = [HEADER] + cells(rows)
    widths = [max(len(str(row[i])) for row in table) for i in range(len(HEADER))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.machine())
    # Load at the start: other work on the machine skews every figure.
    return (f"Linux {platform.release()}, {cpu} x {os.cpu_count()}, Python {platform.python_version()}, "
            f"load average {os.getloadavg()[0]:.1f} at start")


# docs/benchmarks.md from this heading on is kept by hand: --readme writes the tables above it
KEPT = "## Figures behind design choices"


def kept_section(path):
    """The hand-kept end of the page at `path` (from KEPT on), "" when it has none."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return ""
    at = text.find(KEPT)
    return "" if at < 0 else "\n" + text[at:].rstrip("\n")


def markdown(rows, names, machine_line):
    command = " ".join(["python tests/perf/run.py --markdown", *names])
    lines = ["# Benchmarks", "",
             f"Generated by `{command}` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
             "do not edit the table by hand.", "",
             f"Machine: {machine_line}.", "",
             "`peer` is the peer tool's figure measured in the same run (`missing`: no peer figure, because "
             "the tool is not installed here or no peer does this); `met` compares ours with the target.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in cells(rows)]
    errors = [f"- {r['bench']}: {r['error']}" for r in rows if r.get("error")]
    if errors:
        lines += ["", "Benchmarks that failed:", *errors]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {', '.join(available())})")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON instead of a table")
    output.add_argument("--markdown", action="store_true", help="print a Markdown page with date and machine")
    output.add_argument("--readme", action="store_true",
                        help="write that page to docs/benchmarks.md and embed it in README.md")
    args = parser.parse_args(argv)
    names = args.names or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    sys.path.insert(0, ROOT)

    machine_line = machine()
    rows = measure(names)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
    elif args.markdown:
        print(markdown(rows, args.names, machine_line))
    elif args.readme:
        sys.path.insert(0, os.path.join(ROOT, "tools"))
        import readme

        page = markdown(rows, args.names, machine_line).replace("--markdown", "--readme")
        page += kept_section(readme.SECTIONS["benchmarks"])
        with open(readme.SECTIONS["benchmarks"], "w") as f:
            f.write(page + "\n")
        readme.embed("benchmarks")
        print(text_table(rows))
        print(f"wrote {readme.SECTIONS['benchmarks']} and embedded it in README.md")
    else:
        print(text_table(rows))
    for r in rows:
        if r.get("error"):
            print(f"{r['bench']}: {r['error']}", file=sys.stderr)
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
