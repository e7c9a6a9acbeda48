"""Speaker benchmark: ExaBGP adapter -> bridge -> ExaBGP -> a BIRD receiver (root).

    .venv/bin/python -m tests.bench.bench_exabgp [--visible 200] [--storm 10000] [--runs 3]

The same three measurements as :mod:`tests.bench.bench_gobgp`, with ExaBGP's targets:
time-to-visible p99 <= 250 ms; storm of 10,000 /32s in and out of BIRD <= 5 s each;
recovery after a speaker restart <= 5 s after the sessions are up.
"""

from __future__ import annotations

import argparse

from tests.bench.bench_gobgp import bench


def main() -> None:
    from labs.exabgp import ExaBgpSpeaker

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--visible", type=int, default=200)
    ap.add_argument("--storm", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3, help="storm repetitions")
    args = ap.parse_args()
    targets = {"visible_p99_ms": 250, "storm_s": 5, "recovery_s": 5}
    bench(ExaBgpSpeaker(), "exabgp", args.visible, args.storm, targets, runs=args.runs)


if __name__ == "__main__":
    main()
