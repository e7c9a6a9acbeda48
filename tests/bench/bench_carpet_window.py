"""The cost of the shared carpet-bombing window per intake batch (SQLite and PostgreSQL).

    .venv/bin/python -m tests.bench.bench_carpet_window [--signals 5000] [--per-prefix 20]

With a ``carpet_bombing`` section in force, each intake batch reads the window of its
targets' candidate prefixes (one query) and writes what it added (one bulk upsert), see
orchestrator/carpet.py ``StoredWindow``. This times both for a batch of ``--signals``
distinct targets, ``--per-prefix`` of them in each /24 (so no prefix qualifies), three
batches in a row (the second and third read back what the earlier ones wrote), on a
SQLite file and on a throwaway PostgreSQL (labs/postgres.py). Prints milliseconds per
batch and the load average.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from ipaddress import IPv4Address

from labs.postgres import ThrowawayPostgres
from orchestrator.carpet import StoredWindow
from orchestrator.store.db import make_engine, migrate
from policies.aggregation import CarpetBombing


def run(url: str, label: str, signals: int, per_prefix: int) -> None:
    cfg = CarpetBombing(min_targets=256, tier="t1", prefix_lengths={"ipv4": [24]})
    base = int(IPv4Address("198.18.0.0"))
    targets = [IPv4Address(base + (i // per_prefix) * 256 + i % per_prefix) for i in range(signals)]
    engine = make_engine(url)
    migrate(engine)
    now = 1_800_000_000.0
    for batch in range(3):
        t0 = time.perf_counter()
        with engine.connect() as conn:
            window = StoredWindow.read(conn, cfg, targets, now + batch)
        t1 = time.perf_counter()
        for t in targets:
            window.add(cfg, 4, int(t), now + batch)
        t2 = time.perf_counter()
        with engine.begin() as conn:
            window.store(conn)
        t3 = time.perf_counter()
        print(
            f"{label} batch {batch + 1}: read {(t1 - t0) * 1e3:.0f} ms, count "
            f"{(t2 - t1) * 1e3:.0f} ms, write {(t3 - t2) * 1e3:.0f} ms "
            f"({signals} signals, {len(window)} prefixes)"
        )
    engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--signals", type=int, default=5000)
    ap.add_argument("--per-prefix", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(f"sqlite:///{tmp}/sluice.db", "SQLite", args.signals, args.per_prefix)
    with ThrowawayPostgres() as pg:
        run(pg.create_database("carpet"), "PostgreSQL", args.signals, args.per_prefix)
    print("load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
