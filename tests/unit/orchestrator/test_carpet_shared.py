"""The carpet-bombing window and covered events live in the store (issue 14).

A restart in the middle of an attack window keeps the count (SQLite and PostgreSQL); two
instances on one PostgreSQL, each receiving half of an attack's signals, see one attack
and form exactly one covering rule; a detector's unban of an event that attached to a
covering incident is acknowledged and ends the cover once every attached event is
unbanned.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from orchestrator.store.models import carpet_window, rules
from tests.unit.orchestrator.conftest import settings_for
from tests.unit.orchestrator.test_carpet import (
    ADMIN,
    Clock,
    Sluice,
    boot,
    hosts,
    signal,
    stop,
    write_policy,
)

pytestmark = pytest.mark.postgresql
COVER = "198.51.100.0/24"


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start a service (API in-process) on a data directory, store and clock."""
    started: list[Sluice] = []
    pdir = write_policy(tmp_path / "policy")

    async def make(data: Path, url: str | None, clock: Clock) -> Sluice:
        settings = settings_for(
            data,
            admin_token=ADMIN,
            policy_dir=pdir,
            database_url=url,
            rate_limit_per_minute=100_000,
            lease_seconds=3.0,
        )
        s = await boot(settings, clock)
        started.append(s)
        return s

    yield make
    for s in started:
        await stop(s)


def covers(s: Sluice) -> list[dict[str, Any]]:
    return [
        i
        for i in s.app.state.runtime.list_incidents(status=None, limit=100, offset=0)
        if "/" in i["target_ip"]
    ]


def covering_rules(s: Sluice) -> int:
    with s.svc.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(rules).where(rules.c.target == COVER)
            ).scalar_one()
        )


async def test_a_restart_in_the_middle_of_the_window_keeps_the_count(
    start: Callable[..., Any], tmp_path: Path, store_url: str | None
) -> None:
    clock = Clock()
    first: Sluice = await start(tmp_path / "data", store_url, clock)
    await first.signals(hosts("198.51.100", 1, 20))
    assert not covers(first)
    await stop(first)

    clock.advance(4)  # still inside the 10 s window
    second: Sluice = await start(tmp_path / "data", store_url, clock)
    await second.signals(hosts("198.51.100", 21, 11))
    assert not covers(second)  # 31 distinct targets in the window
    answers = await second.signals(["198.51.100.40"])
    found = covers(second)
    assert len(found) == 1, found
    details = found[0]["raw_details"]["carpet_bombing"]
    assert details["attacked"] == 32 and details["prefix"] == COVER
    # the first process's 20 count, oldest first
    assert details["targets"][:20] == hosts("198.51.100", 1, 20)
    assert any(COVER in line for line in answers[0]["decision"]["explanation"])
    assert covering_rules(second) == 1

    # the counts inside were spent by the covering incident; later rows age out and the
    # periodic job deletes them
    await second.signals(["203.0.113.9"])
    with second.svc.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(carpet_window)).scalar_one() == 2
    clock.advance(11)
    assert await second.app.state.runtime.intake.carpet.prune() == 2
    with second.svc.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(carpet_window)).scalar_one() == 0


async def test_targets_of_a_previous_process_outside_the_window_do_not_count(
    start: Callable[..., Any], tmp_path: Path, store_url: str | None
) -> None:
    clock = Clock()
    first: Sluice = await start(tmp_path / "data", store_url, clock)
    await first.signals(hosts("198.51.100", 1, 20))
    await stop(first)
    clock.advance(11)  # the window (10 s) has passed
    second: Sluice = await start(tmp_path / "data", store_url, clock)
    await second.signals(hosts("198.51.100", 21, 31))
    assert not covers(second)
    await second.signals(["198.51.100.60"])
    assert len(covers(second)) == 1


async def test_two_instances_each_receiving_half_form_exactly_one_cover(
    start: Callable[..., Any], tmp_path: Path, postgres_url: str
) -> None:
    clock = Clock()
    a: Sluice = await start(tmp_path / "a", postgres_url, clock)
    b: Sluice = await start(tmp_path / "b", postgres_url, clock)
    targets = hosts("198.51.100", 1, 60)
    # interleaved and concurrent: even targets through A, odd ones through B (each
    # instance alone sees 30, under min_targets 32)
    answers = await asyncio.gather(a.signals(targets[0::2]), b.signals(targets[1::2]))
    assert all(len(x) == 30 for x in answers)
    found = covers(a)
    assert len(found) == 1, found
    assert found == covers(b)
    assert found[0]["raw_details"]["carpet_bombing"]["attacked"] == 32
    assert covering_rules(a) == 1
    # the later signals, through either instance, attached to that one covering incident
    later = [x for half in answers for x in half if x["decision"]["status"] == "covered"]
    assert len(later) == 60 - 32
    assert {x["incident"]["id"] for x in later} == {found[0]["id"]}


async def test_an_unban_of_a_covered_event_is_acknowledged_and_the_last_one_ends_the_cover(
    start: Callable[..., Any], tmp_path: Path, store_url: str | None
) -> None:
    clock = Clock()
    s: Sluice = await start(tmp_path / "data", store_url, clock)
    for t in hosts("198.51.100", 1, 32):
        r = await s.call("POST", "/incidents", json=signal(t, source="fnm", event_id=f"e-{t}"))
        assert r.status_code == 200, r.text
    (cover,) = covers(s)
    inside = hosts("198.51.100", 101, 3)
    for t in inside:
        r = await s.call("POST", "/incidents", json=signal(t, source="fnm", event_id=f"c-{t}"))
        assert r.json()["decision"]["status"] == "covered"
        assert r.json()["incident"]["id"] == cover["id"]

    def unban(event_id: str) -> Any:
        return s.call(
            "POST", "/incidents", json={"action": "unban", "source": "fnm", "event_id": event_id}
        )

    r = await unban(f"c-{inside[0]}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["covered_by"] == cover["id"] and body["covered_events_left"] == 2
    assert body["withdrawn"] == [] and body["incident"]["status"] == "mitigating"
    r = await unban(f"c-{inside[0]}")  # again: nothing changes
    assert r.json()["covered_events_left"] == 2
    assert (await unban(f"c-{inside[1]}")).json()["covered_events_left"] == 1
    last = (await unban(f"c-{inside[2]}")).json()
    assert last["covered_events_left"] == 0
    assert last["incident"]["id"] == cover["id"] and last["incident"]["status"] == "resolved"
    assert len(last["withdrawn"]) == 1  # the covering rule
    # once ended, a repeated unban is still acknowledged
    again = (await unban(f"c-{inside[2]}")).json()
    assert again["incident"]["status"] == "resolved" and again["withdrawn"] == []
    # an event nobody sent is still unknown
    r = await unban("never-sent")
    assert r.status_code == 404 and r.json()["error"]["code"] == "event_not_found"
    # a /32 incident's own event still resolves that incident
    own = (await unban("e-198.51.100.1")).json()
    assert own["incident"]["target_ip"] == "198.51.100.1" and "covered_by" not in own
    # a day after the cover ended, its covered events are forgotten
    clock.advance(86_400 - 60)
    await s.app.state.runtime.intake.carpet.prune()
    assert (await unban(f"c-{inside[2]}")).status_code == 200
    clock.advance(120)
    await s.app.state.runtime.intake.carpet.prune()
    assert (await unban(f"c-{inside[2]}")).status_code == 404


# FastAPI builds a route's parameter models at the route's first request; for a header
# parameter pydantic then warns about the alias FastAPI itself sets (a library warning,
# not ours). It turned into an error once in a full run, when that first request happened
# on one of this test's threads; it is ignored here.
@pytest.mark.filterwarnings("ignore::pydantic.warnings.UnsupportedFieldAttributeWarning")
def test_two_instances_writing_at_the_same_time_form_exactly_one_cover(
    tmp_path: Path, postgres_url: str
) -> None:
    """As above, each instance on its own thread and event loop, so their batches really
    overlap on the server (the writer lock's generation check makes a batch that read the
    window before the other instance's write read it again)."""
    pdir = write_policy(tmp_path / "policy")
    clock = Clock()
    start = threading.Barrier(2)
    answers: list[list[dict[str, Any]]] = [[], []]
    errors: list[BaseException] = []
    found: list[list[dict[str, Any]]] = [[], []]
    rules_seen: list[int] = [0, 0]
    done = threading.Barrier(2)
    turn = [threading.Event(), threading.Event()]
    turn[0].set()

    async def instance(k: int) -> None:
        settings = settings_for(
            tmp_path / f"i{k}",
            admin_token=ADMIN,
            policy_dir=pdir,
            database_url=postgres_url,
            rate_limit_per_minute=100_000,
            lease_seconds=3.0,
        )
        await asyncio.to_thread(turn[k].wait, 60)  # one start (migration) at a time
        s = await boot(settings, clock)
        if k == 0:
            turn[1].set()
        try:
            await asyncio.to_thread(start.wait, 60)
            mine = hosts("198.51.100", 1, 80)[k::2]
            for chunk in range(0, 40, 8):  # bursts of 8 concurrent signals
                answers[k] += await s.signals(mine[chunk : chunk + 8])
            await asyncio.to_thread(done.wait, 60)
            found[k] = covers(s)
            rules_seen[k] = covering_rules(s)
            await asyncio.to_thread(done.wait, 60)
        finally:
            await stop(s)

    def run(k: int) -> None:
        try:
            asyncio.run(instance(k))
        except BaseException as exc:
            errors.append(exc)
            start.abort()
            done.abort()

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(found[0]) == 1, found[0]
    assert found[0] == found[1]
    assert rules_seen == [1, 1]
    cover_id = found[0][0]["id"]
    statuses = [a["decision"]["status"] for half in answers for a in half]
    assert len(statuses) == 80
    covered = [a for half in answers for a in half if a["decision"]["status"] == "covered"]
    assert {a["incident"]["id"] for a in covered} == {cover_id}
    # every target got a rule or the cover: no signal inside was lost between instances
    assert len(covered) + statuses.count("announce") == 80
