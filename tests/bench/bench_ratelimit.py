"""The cost of one API rate-limit hit: in memory (SQLite, one instance) vs in PostgreSQL.

    .venv/bin/python -m tests.bench.bench_ratelimit [--hits 5000] [--threads 4]

Several instances on one PostgreSQL count each token's requests in the table
``rate_windows`` (one upsert per request, orchestrator/api/deps.py ``SharedWindows``).
This measures a hit on a throwaway PostgreSQL (labs/postgres.py): one caller, then
``--threads`` callers hitting the same token at once (they contend for one row, as the
requests of one detector through several instances do), against the in-memory sliding
window a single instance uses. Prints microseconds per hit and the load average.

The API counts with ``RateLimiter.ahit`` (off the event loop, concurrent hits counted
together): ``--clients`` coroutines hitting one token at once, measured as wall time per
hit, round trips per hit and the longest the event loop was kept from running.
"""

from __future__ import annotations

import argparse
import asyncio
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


async def async_hits(limiter: RateLimiter, hits: int, clients: int) -> tuple[float, float, float]:
    """(wall us per hit, round trips per hit, longest event-loop stall in us)."""
    windows = limiter.windows
    assert windows is not None
    add = windows._add
    trips = [0]

    def counting(key: str, minute: int, n: int, limit: int) -> int | None:
        trips[0] += 1
        return add(key, minute, n, limit)

    windows._add = counting  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    stall = [0.0]
    running = [True]

    async def ticker() -> None:  # how late a 1 ms sleep wakes up: the loop's longest stall
        while running[0]:
            t = loop.time()
            await asyncio.sleep(0.001)
            stall[0] = max(stall[0], loop.time() - t - 0.001)

    async def client() -> None:
        for _ in range(hits // clients):
            await limiter.ahit("token")

    tick = loop.create_task(ticker())
    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    running[0] = False
    await tick
    windows._add = add  # type: ignore[method-assign]
    n = hits // clients * clients
    return wall / n * 1e6, trips[0] / n, stall[0] * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hits", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--clients", type=int, default=50)
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
        wall, trips, stall = asyncio.run(async_hits(shared, args.hits, args.clients))
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
        f"({args.hits} hits each); one SELECT 1 round trip {trip:.0f} us (load average "
        f"{load})\nasync (the API's path): {args.clients} concurrent clients, {wall:.0f} us "
        f"wall per hit, {trips:.3f} round trips per hit, the event loop blocked at most "
        f"{stall:.0f} us (the blocking form holds it {one:.0f} us per hit)"
    )


if __name__ == "__main__":
    main()
