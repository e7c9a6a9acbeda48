"""The PostgreSQL rate-limit windows counted off the event loop, in batches, exactly."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest
from sqlalchemy import select

from orchestrator.api.deps import RateLimiter
from orchestrator.api.envelope import RateLimited
from orchestrator.store.db import make_engine, migrate
from orchestrator.store.models import rate_windows

pytestmark = pytest.mark.usefixtures("postgres")
NOW = 1_800_000_000.0  # the start of a minute
Adder = Callable[[str, int, int, int], int | None]


async def test_concurrent_hits_through_two_instances_grant_exactly_the_limit(
    postgres_url: str,
) -> None:
    engine = make_engine(postgres_url)
    migrate(engine)
    limiters = [RateLimiter.for_engine(50, engine, "api") for _ in range(2)]
    loop_thread = threading.get_ident()
    used: set[int] = set()
    for lim in limiters:
        assert lim.windows is not None
        lim.clock = lambda: NOW
        add = lim.windows._add

        def spy(key: str, minute: int, n: int, limit: int, add: Adder = add) -> int | None:
            used.add(threading.get_ident())
            return add(key, minute, n, limit)

        lim.windows._add = spy  # type: ignore[method-assign]
    try:
        # 120 requests of one token at once, alternating between the two instances,
        # and another token's 10 among them
        async def one(k: int, key: str) -> int | None:
            try:
                headers = await limiters[k % 2].ahit(key)
            except RateLimited as exc:
                assert exc.headers["Retry-After"] == "60"
                return None
            return int(headers["X-RateLimit-Remaining"])

        jobs = [one(k, "token") for k in range(120)] + [one(k, "other") for k in range(10)]
        got = await asyncio.gather(*jobs)
        token, other = got[:120], got[120:]
        granted = sorted(r for r in token if r is not None)
        assert granted == list(range(50)), granted  # remaining 49..0, each exactly once
        assert sorted(r for r in other if r is not None) == list(range(40, 50))
        assert loop_thread not in used  # no round trip on the event loop
        with engine.connect() as conn:
            hits = dict(conn.execute(select(rate_windows.c.key, rate_windows.c.hits)).all())
        assert hits == {"api:token": 50, "api:other": 10}
        # the limit is reached: every later hit is refused, through either instance
        for k in range(4):
            assert await one(k, "token") is None
    finally:
        for lim in limiters:
            lim.close()
        engine.dispose()


async def test_a_batch_that_straddles_the_limit_grants_what_is_left(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    migrate(engine)
    lim = RateLimiter.for_engine(10, engine, "api")
    lim.clock = lambda: NOW
    try:
        for _ in range(7):
            lim.hit("token")  # the blocking form counts in the same window
        assert lim.windows is not None
        counts = lim.windows._count("token", int(NOW // 60), 6, 10)
        assert counts == [8, 9, 10, None, None, None]
        assert lim.windows._count("token", int(NOW // 60), 3, 10) == [None, None, None]
        assert lim.windows._count("fresh", int(NOW // 60), 12, 10) == [*range(1, 11), None, None]
    finally:
        lim.close()
        engine.dispose()
