"""The single-signal path (``POST /incidents``): concurrent signals share one commit, and
the lean route authorizes exactly as the dependency does."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.routing import APIRoute
from sqlalchemy import event, func, select, update

from orchestrator import intake as intake_module
from orchestrator.api import signals
from orchestrator.api.deps import LeanRoute, _lean_plan
from orchestrator.incidents import Incident, IncidentStore, Status
from orchestrator.runtime import PolicyRuntime
from orchestrator.store.models import decisions, incidents
from orchestrator.tokens import TokenInfo
from policies.signals import Signal


def route(router: Any, path: str, method: str) -> APIRoute:
    for r in router.routes:
        if isinstance(r, APIRoute) and r.path == path and method in (r.methods or ()):
            return r
    raise AssertionError(f"no route {method} {path}")


async def staggered(rt: PolicyRuntime, n: int) -> list[dict[str, Any]]:
    """``n`` signals from concurrent requests that reach the intake one event-loop
    iteration after another (as requests parsed from successive socket reads do)."""

    async def one(i: int) -> dict[str, Any]:
        for _ in range(i):
            await asyncio.sleep(0)
        sig = Signal.model_validate({"target_ip": f"198.51.100.{i + 1}", "bps": "1M"})
        return await rt.handle(sig, actor="test")

    return await asyncio.gather(*(one(i) for i in range(n)))


def commits(engine: Any) -> list[int]:
    seen: list[int] = []
    event.listen(engine, "commit", lambda _conn: seen.append(1))
    return seen


async def test_signals_arriving_together_share_one_transaction(make_api: Any) -> None:
    api = await make_api()
    rt: PolicyRuntime = api.app.state.runtime
    seen = commits(api.svc.engine)
    answers = await staggered(rt, 12)
    assert len(seen) == 1  # one transaction, one commit for the twelve
    assert {a["incident"]["target_ip"] for a in answers} == {
        f"198.51.100.{i}" for i in range(1, 13)
    }
    with api.svc.engine.connect() as conn:  # every signal's decision is stored
        assert conn.execute(select(func.count()).select_from(decisions)).scalar_one() == 12


async def test_without_gathering_the_same_signals_take_several_commits(
    make_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: the worker takes what is queued at once (the test above can fail)."""
    monkeypatch.setattr(intake_module, "GATHER_ROUNDS", 0)
    api = await make_api()
    seen = commits(api.svc.engine)
    await staggered(api.app.state.runtime, 12)
    assert len(seen) > 1


async def test_a_lone_signal_is_answered_without_waiting_for_company(make_api: Any) -> None:
    api = await make_api()
    body = await api.ok("POST", "/incidents", json={"target_ip": "198.51.100.7", "bps": "1M"})
    assert body["incident"]["signals"] == 1 and body["decision"]["status"]


async def test_gathering_stops_at_the_batch_limit(
    make_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake_module, "MAX_BATCH", 5)
    api = await make_api()
    seen = commits(api.svc.engine)
    await staggered(api.app.state.runtime, 12)
    assert len(seen) >= 3  # 12 signals in batches of at most 5


# ---------------------------------------------------------------- the lean route


def test_post_incidents_is_lean_and_other_endpoints_are_not() -> None:
    post = route(signals.router, "/incidents", "POST")
    assert isinstance(post, LeanRoute)
    assert _lean_plan(post.dependant) == ("request", [("who", "write")])
    # query parameters: FastAPI's own handler
    assert _lean_plan(route(signals.router, "/incidents", "GET").dependant) is None
    # a body model and other dependencies
    assert _lean_plan(route(signals.router, "/nodes", "POST").dependant) is None


async def test_lean_route_checks_credentials_scope_and_rate_limit(make_api: Any) -> None:
    api = await make_api(rate_limit_per_minute=3)
    sig = {"target_ip": "198.51.100.9", "bps": "1M"}
    r = await api.call("POST", "/incidents", token=None, json=sig)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "missing_token")
    r = await api.call("POST", "/incidents", token="x" * 64, json=sig)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_token")
    reader = await api.token("read")  # (1 of the admin's 3)
    r = await api.call("POST", "/incidents", token=reader, json=sig)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "insufficient_scope")
    writer = await api.token("write")  # (2)
    r = await api.call("POST", "/incidents", token=writer, json=sig)
    assert r.status_code == 200, r.text
    assert r.headers["X-RateLimit-Remaining"] == "2"
    with api.svc.engine.connect() as conn:  # the caller is the actor of what it did
        n = conn.execute(select(func.count()).select_from(decisions)).scalar_one()
    assert n == 1
    for left in ("1", "0"):
        r = await api.call("POST", "/incidents", token=writer, json=sig)
        assert r.headers["X-RateLimit-Remaining"] == left
    r = await api.call("POST", "/incidents", token=writer, json=sig)
    assert (r.status_code, r.json()["error"]["code"]) == (429, "rate_limited")
    assert "Retry-After" in r.headers


async def test_lean_route_honours_dependency_overrides(make_api: Any) -> None:
    api = await make_api()
    require = route(signals.router, "/incidents", "POST").dependant.dependencies[0].call
    called: list[str] = []

    def override() -> TokenInfo:
        called.append("override")
        return TokenInfo(1, "overridden", "write", "x", None)

    api.app.dependency_overrides[require] = override
    await api.ok("POST", "/incidents", json={"target_ip": "198.51.100.10", "bps": "1M"})
    assert called == ["override"]  # FastAPI's own handler ran, with the override


# ---------------------------------------------------------------- the batch's reads


@pytest.mark.postgresql
async def test_one_read_finds_what_the_two_reads_found(make_service: Any) -> None:
    """IncidentStore.for_signals == live_by_target + by_event, on SQLite and PostgreSQL."""
    svc = await make_service()
    t0 = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)

    def inc(n: int, target: str, status: Status, **kw: Any) -> tuple[Incident, Status]:
        at = t0 + timedelta(seconds=n)
        return Incident(
            id=f"00000000-0000-0000-0000-{n:012d}",
            target=target,
            node=None,
            status=Status.OPEN,
            attack_family="udp_flood",
            severity="high",
            peak_bps=0.0,
            peak_pps=0.0,
            last_signal={},
            signals=n,
            opened_at=at,
            updated_at=kw.pop("updated_at", at),
            **kw,
        ), status

    made = [
        inc(1, "198.51.100.1", Status.RESOLVED, source="d", event_id="e1"),
        inc(2, "198.51.100.1", Status.MITIGATING, source="d", event_id="e1"),  # e1's latest
        inc(3, "198.51.100.2", Status.OPEN),  # updated last: the live one for .2
        inc(4, "198.51.100.2", Status.OPEN, updated_at=t0),
        inc(5, "198.51.100.3", Status.EXPIRED, source="d", event_id="e3"),
        inc(6, "198.51.100.4", Status.OPEN, source="other", event_id="e1"),
    ]
    store = IncidentStore()
    with svc.engine.begin() as conn:
        store.open(conn, [i for i, _ in made])
        for i, status in made:
            if status is not Status.OPEN:
                conn.execute(
                    update(incidents).where(incidents.c.id == i.id).values(status=str(status))
                )
    targets = ["198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.9", "198.51.100.2"]
    pairs = [("d", "e1"), ("d", "e3"), ("d", "nope"), ("other", "e3")]
    with svc.engine.connect() as conn:
        live, by_event = store.for_signals(conn, targets, pairs)
        assert {t: i.id for t, i in live.items()} == {
            t: i.id for t, i in store.live_by_target(conn, targets).items()
        }
        assert {p: i.id for p, i in by_event.items()} == {
            p: i.id for p, i in store.by_event(conn, pairs).items()
        }
        assert {t: i.signals for t, i in live.items()} == {"198.51.100.1": 2, "198.51.100.2": 3}
        assert {p: i.signals for p, i in by_event.items()} == {("d", "e1"): 2, ("d", "e3"): 5}
        assert live["198.51.100.1"] is by_event[("d", "e1")]  # one incident, one object
        assert store.for_signals(conn, [], []) == ({}, {})
        only_pairs = store.for_signals(conn, [], [("d", "e3")])
        assert only_pairs[0] == {} and only_pairs[1][("d", "e3")].signals == 5
