"""Readers of a few event kinds (runbooks, channels) skip the rest of the log in the query.

``EventLog.kinds_after`` returns only the kinds asked for, and a cursor that never passes
an event of those kinds it did not return; a consumer with nothing configured moves its
cursor without handing anything to its handler.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from orchestrator import events as ev
from orchestrator.cluster import write
from orchestrator.runbooks import consumer as consumer_module
from orchestrator.runbooks.consumer import KINDS, Batch, Consumer
from orchestrator.service import Service
from orchestrator.store.db import migrate
from tests.unit.orchestrator.conftest import policy, settings_for

pytestmark = pytest.mark.postgresql  # the cursor's bound depends on the store's ids

AT = datetime(2026, 12, 2, tzinfo=UTC)


def service(tmp_path: Path, store_url: str | None) -> Service:
    svc = Service(settings_for(tmp_path, database_url=store_url), policy=policy())
    migrate(svc.engine)
    return svc


async def until(check: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds} s")
        await asyncio.sleep(0.001)


def log(svc: Service, *kinds: ev.Kind) -> None:
    with write(svc.engine) as conn:
        ev.record(conn, [ev.Event(kind, AT) for kind in kinds])


async def test_kinds_after_skips_other_kinds(tmp_path: Path, store_url: str | None) -> None:
    svc = service(tmp_path, store_url)
    start = svc.events.last_id()
    log(svc, *[ev.Kind.POLICY_RELOADED] * 5, ev.Kind.INCIDENT_OPENED)
    log(svc, *[ev.Kind.RULE_CREATED] * 3, ev.Kind.INCIDENT_RESOLVED, ev.Kind.RULE_ACTIVE)
    head = svc.events.last_id()
    assert head == start + 11

    found, cursor = svc.events.kinds_after(start, KINDS, 200)
    assert [k for _, k, _ in found] == ["incident.opened", "incident.resolved"]
    assert [i for i, _, _ in found] == [start + 6, start + 10]
    assert cursor == head  # past the rule events after the last incident event

    first, cursor = svc.events.kinds_after(start, KINDS, 1)  # a full page: stop at it
    assert [i for i, _, _ in first] == [start + 6] and cursor == start + 6
    rest, cursor = svc.events.kinds_after(cursor, KINDS, 1)
    assert [i for i, _, _ in rest] == [start + 10] and cursor == start + 10
    assert svc.events.kinds_after(cursor, KINDS, 1) == ([], head)
    assert svc.events.kinds_after(head, KINDS, 1) == ([], head)


async def test_consumer_with_nothing_configured_only_moves(
    tmp_path: Path, store_url: str | None
) -> None:
    svc = service(tmp_path, store_url)
    handled: list[Batch] = []

    async def handler(batch: Batch) -> None:
        handled.append(batch)

    wanted = [False]
    consumer = Consumer("test", svc.events, handler, wants=lambda: wanted[0])
    start = consumer.cursor()
    log(svc, ev.Kind.RULE_CREATED, ev.Kind.INCIDENT_OPENED, ev.Kind.RULE_ACTIVE)
    assert await consumer.step(start) == start + 3
    assert handled == []
    assert consumer.cursor() == start + 3  # saved
    assert await consumer.step(start + 3) == start + 3  # nothing new


async def test_a_stream_of_small_commits_costs_one_read_each_and_no_cursor_writes(
    tmp_path: Path, store_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running consumer reads once per commit (a page short of full reached the head:
    it waits for the next commit) and writes its cursor at most every SAVE_EVERY seconds
    (the clock is frozen here: one save, the first). Before, each commit cost two reads
    and a cursor write."""
    svc = service(tmp_path, store_url)
    reads: list[int] = []
    saves: list[int] = []
    real_kinds_after = svc.events.kinds_after

    def counting(after: int, kinds: Any, limit: int) -> Any:
        reads.append(after)
        return real_kinds_after(after, kinds, limit)

    monkeypatch.setattr(svc.events, "kinds_after", counting)
    # the consumer's clock alone is frozen (the loop's and the deadlines' run on)
    monkeypatch.setattr(consumer_module, "time", SimpleNamespace(monotonic=lambda: 1000.0))

    async def handler(batch: Batch) -> None:
        raise AssertionError("nothing is configured to act")

    consumer = Consumer("test", svc.events, handler, wants=lambda: False, idle=60)
    real_save = consumer.save

    def save(value: int) -> None:
        saves.append(value)
        real_save(value)

    monkeypatch.setattr(consumer, "save", save)
    consumer.start()
    try:
        await until(lambda: len(reads) >= 1, "the first read")
        for n in range(20):
            log(svc, ev.Kind.INCIDENT_OPENED)
            await until(partial(lambda want: len(reads) >= want, n + 2), f"read {n + 2}")
            for _ in range(20):  # room for a second read, which should not happen
                await asyncio.sleep(0)
    finally:
        await consumer.stop()
    assert len(reads) == 21, reads  # the first, then one per commit
    assert len(saves) <= 2, saves  # the first read's, and the one on stop
