"""Run benchmarks on purpose: ``make bench`` or ``python -m tests.bench.run [NAME ...]``.

Each benchmark is a module ``tests/bench/bench_NAME.py`` run in its own process (so one
cannot skew another's memory figures); with no names, all of them run, in turn. The BGP
ones need root and the lab daemons. Extra options after ``--`` go to every benchmark.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    names = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run (default all: {', '.join(names)})",
    )
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="options passed to each one")
    args = ap.parse_args()
    unknown = sorted(set(args.names) - set(names))
    if unknown:
        ap.error(f"unknown benchmark {', '.join(unknown)} (known: {', '.join(names)})")
    failed = []
    for name in args.names or names:
        print(f"\n=== bench_{name} ===", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call(  # our own modules, fixed interpreter
            [sys.executable, "-m", f"tests.bench.bench_{name}", *args.extra]
        )
        print(f"=== bench_{name}: exit {rc} after {time.monotonic() - t0:.0f} s ===", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
