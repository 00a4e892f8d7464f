#!/usr/bin/env python3
"""Run the project's benchmarks and print one table.

    python tests/perf/run.py [NAME ...] [--json]

Each tests/perf/bench_NAME.py exposes run() -> {figure: (ours, peer, unit, target)}:
`peer` is the same measurement taken from a peer tool in the same run (None
when the peer is missing on this machine: reported, never faked); `target`
is a string such as ">= 500000" or "< 0.2", or None.
"""
import argparse
import importlib.util
import json
import operator
import os
import sys
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


def meets(value, target):
    """True/False when the target can be judged, None otherwise."""
    if value is None or not target:
        return None
    op, _, number = target.partition(" ")
    compare = _COMPARE.get(op)
    return compare(value, float(number)) if compare else None


def fmt(value):
    if value is None:
        return "missing"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {', '.join(available())})")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    names = args.names or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    sys.path.insert(0, ROOT)

    rows = []
    for name in names:
        try:
            figures = load(name).run()
        except Exception as err:  # one benchmark failing must not hide the others
            rows.append(dict(bench=name, figure="(error)", ours=None, peer=None, unit="",
                             target=None, ratio=None, ok=False, error=f"{type(err).__name__}: {err}"))
            traceback.print_exc(file=sys.stderr)
            continue
        for figure, (ours, peer, unit, target) in figures.items():
            ratio = ours / peer if isinstance(ours, (int, float)) and isinstance(peer, (int, float)) and peer else None
            rows.append(dict(bench=name, figure=figure, ours=ours, peer=peer, unit=unit, target=target,
                             ratio=ratio, ok=meets(ours, target)))

    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return 0
    header = ("benchmark", "figure", "ours", "peer", "unit", "ours/peer", "target", "met")
    table = [header] + [(r["bench"], r["figure"], fmt(r["ours"]), fmt(r["peer"]), r["unit"],
                         "" if r["ratio"] is None else f"{r['ratio']:.2f}", r["target"] or "",
                         {True: "yes", False: "NO", None: ""}[r["ok"]]) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * width for width in widths))
    for r in rows:
        if r.get("error"):
            print(f"{r['bench']}: {r['error']}", file=sys.stderr)
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
