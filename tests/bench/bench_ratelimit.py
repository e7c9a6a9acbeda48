"""The cost of one API rate-limit hit: in memory (SQLite, one instance) vs in PostgreSQL.

    .venv/bin/python -m tests.bench.bench_ratelimit [--hits 5000] [--threads 4]

Several instances on one PostgreSQL count each token's requests in the table
``rate_windows`` (one upsert per request, orchestrator/api/deps.py ``SharedWindows``).
This measures a hit on a throwaway PostgreSQL (labs/postgres.py): one caller, then
``--threads`` callers hitting the same token at once (they contend for one row, as the
requests of one detector through several instances do), against the in-memory sliding
window a single instance uses. Prints microseconds per hit and the load average.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import text

from labs.postgres import ThrowawayPostgres
from orchestrator.api.deps import RateLimiter
from orchestrator.store.db import make_engine, migrate


def per_hit(limiter: RateLimiter, hits: int, threads: int) -> float:
    def run(k: int) -> None:
        for _ in range(hits // threads):
            limiter.hit("token")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, range(threads)))
    return (time.perf_counter() - t0) / (hits // threads * threads) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hits", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args()
    big = 10**9  # never refused: every hit is counted
    memory = per_hit(RateLimiter(big), args.hits, 1)
    with ThrowawayPostgres() as pg:
        engine = make_engine(pg.create_database("ratelimit"))
        migrate(engine)
        shared = RateLimiter.for_engine(big, engine, "api")
        assert shared.windows is not None
        per_hit(shared, 200, 1)  # warm the pool
        one = per_hit(shared, args.hits, 1)
        many = per_hit(shared, args.hits, args.threads)
        shared.close()
        with engine.connect() as conn:  # the floor: one round trip to this server
            conn.execute(text("SELECT 1"))
            t0 = time.perf_counter()
            for _ in range(args.hits):
                conn.execute(text("SELECT 1"))
            trip = (time.perf_counter() - t0) / args.hits * 1e6
        engine.dispose()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"rate-limit hit: in memory {memory:.1f} us; PostgreSQL windows {one:.0f} us "
        f"(1 caller), {many:.0f} us wall per hit with {args.threads} callers on one token "
        f"({args.hits} hits each); one SELECT 1 round trip {trip:.0f} us "
        f"(load average {load})"
    )


if __name__ == "__main__":
    main()
