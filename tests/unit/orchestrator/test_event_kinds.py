"""Readers of a few event kinds (runbooks, channels) skip the rest of the log in the query.

``EventLog.kinds_after`` returns only the kinds asked for, and a cursor that never passes
an event of those kinds it did not return; a consumer with nothing configured moves its
cursor without handing anything to its handler.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchestrator import events as ev
from orchestrator.cluster import write
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
