"""The single-signal path (``POST /incidents``): concurrent signals share one commit, and
the lean route authorizes exactly as the dependency does."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest.mock import ANY

import pytest
from fastapi.routing import APIRoute
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import event, func, select, update
from starlette.routing import Match

from orchestrator import intake as intake_module
from orchestrator.api import signals
from orchestrator.api.deps import LeanRoute, _lean_plan
from orchestrator.incidents import Incident, IncidentStore, Status
from orchestrator.runtime import PolicyRuntime
from orchestrator.service import Service
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
    post = route(signals.intake_router, "/incidents", "POST")
    assert isinstance(post, LeanRoute)
    assert _lean_plan(post.dependant) == ("request", [("who", "write")])
    # query parameters: FastAPI's own handler
    assert _lean_plan(route(signals.router, "/incidents", "GET").dependant) is None
    # a body model and other dependencies
    assert _lean_plan(route(signals.router, "/nodes", "POST").dependant) is None


async def test_health_and_the_signal_intake_are_routed_first(make_api: Any) -> None:
    """Routing tries the routes in order: /health first, POST /incidents second, the
    OpenAPI document (which FastAPI puts first) last."""
    app = (await make_api()).app
    routes = app.router.routes

    def tried(method: str, path: str) -> int:
        scope = {"type": "http", "method": method, "path": path, "root_path": "", "app": app}
        scope.update(headers=[], query_string=b"")
        for n, r in enumerate(routes, 1):
            if r.matches(scope)[0] is Match.FULL:
                return n
        raise AssertionError(f"no route for {method} {path}")

    assert tried("GET", "/api/v1/health") == 1
    assert tried("POST", "/api/v1/incidents") == 2
    assert tried("GET", "/api/v1/incidents") > 2
    assert tried("GET", "/api/v1/openapi.json") == len(routes)
    assert tried("GET", "/api/v1/docs") < len(routes)


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
    require = route(signals.intake_router, "/incidents", "POST").dependant.dependencies[0].call
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


# ---------------------------------------------------------------- the incident index


def incident_selects(engine: Any) -> list[str]:
    """Every statement that reads the incidents table, from now on."""
    seen: list[str] = []

    def before(_c: Any, _cur: Any, sql: str, *_a: Any) -> None:
        if sql.lstrip().upper().startswith("SELECT") and "FROM incidents" in sql:
            seen.append(sql)

    event.listen(engine, "before_cursor_execute", before)
    return seen


def sig(target: str = "198.51.100.20", **kw: Any) -> Signal:
    return Signal.model_validate({"target_ip": target, "bps": "1M", **kw})


async def test_repeated_signals_read_no_incident_from_the_store(make_api: Any) -> None:
    api = await make_api()
    rt: PolicyRuntime = api.app.state.runtime
    first = await rt.handle(sig(), actor="test")
    reads = incident_selects(api.svc.engine)
    answers = [await rt.handle(sig(), actor="test") for _ in range(3)]
    assert reads == []
    assert {a["incident"]["id"] for a in answers} == {first["incident"]["id"]}
    assert [a["incident"]["signals"] for a in answers] == [2, 3, 4]
    stored = rt.get_incident(first["incident"]["id"])  # the store has what was answered
    assert stored["signals"] == 4 and len(stored["decisions"]) == 4


async def test_an_ended_incident_is_not_updated_from_memory(make_api: Any) -> None:
    api = await make_api()
    rt: PolicyRuntime = api.app.state.runtime
    first = (await rt.handle(sig(), actor="test"))["incident"]
    rt.resolve(first["id"], actor="operator")  # not a batch of signals: the index forgets
    second = (await rt.handle(sig(), actor="test"))["incident"]
    assert second["id"] != first["id"] and second["signals"] == 1
    assert rt.get_incident(first["id"])["signals"] == 1  # the resolved one untouched
    # an unban by event id: the same
    named = (await rt.handle(sig("198.51.100.21"), actor="d", source="d", event_id="e"))["incident"]
    await rt.unban(actor="d", source="d", event_id="e")
    again = (await rt.handle(sig("198.51.100.21"), actor="d", source="d", event_id="e"))["incident"]
    assert again["id"] != named["id"] and again["signals"] == 1


async def test_a_failed_batch_leaves_memory_as_the_store_is(
    make_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = await make_api()
    rt: PolicyRuntime = api.app.state.runtime
    await rt.handle(sig(), actor="test")
    real = intake_module.Intake._write

    def broken(self: Any, *a: Any, **kw: Any) -> Any:
        raise RuntimeError("the disk is gone")

    monkeypatch.setattr(intake_module.Intake, "_write", broken)
    with pytest.raises(RuntimeError):
        await rt.handle(sig(), actor="test")
    monkeypatch.setattr(intake_module.Intake, "_write", real)
    assert (await rt.handle(sig(), actor="test"))["incident"]["signals"] == 2


async def test_an_event_id_that_feeds_an_incident_is_stored_and_remembered(
    make_api: Any,
) -> None:
    """A live incident without an event id takes the first one a signal names; each
    event that feeds it is recorded with it, and the index answers as the store does."""
    api = await make_api()
    rt: PolicyRuntime = api.app.state.runtime
    await rt.handle(sig(), actor="test")  # no event id
    a = (await rt.handle(sig(), actor="d", source="d", event_id="e1"))["incident"]
    b = (await rt.handle(sig(), actor="d", source="d", event_id="e2"))["incident"]
    reads = incident_selects(api.svc.engine)
    c = (await rt.handle(sig(), actor="d", source="d", event_id="e2"))["incident"]
    assert reads == []  # known from memory
    with api.svc.engine.connect() as conn:
        live, by_event = IncidentStore.for_signals(
            conn, ["198.51.100.20"], [("d", "e1"), ("d", "e2")]
        )
        stored = live["198.51.100.20"]
    assert (a["event_id"], b["event_id"]) == ("e1", "e1")
    assert stored.event_id == "e1" and c["signals"] == 4
    assert {p: i.id for p, i in by_event.items()} == {("d", "e1"): a["id"], ("d", "e2"): a["id"]}


async def test_another_instances_writes_reach_this_instances_index(
    tmp_path: Any, postgres_url: str
) -> None:
    """Two instances on one PostgreSQL (SQLite has one service per data directory): what
    one writes, the other's index does not hide."""
    from orchestrator.api.app import bootstrap_token, create_app
    from tests.unit.orchestrator.conftest import ADMIN, policy, settings_for

    apps = []
    for k in range(2):
        data = tmp_path / f"i{k}"
        data.mkdir()
        svc = Service(
            settings_for(data, database_url=postgres_url, admin_token=ADMIN, audit_key="5a" * 32),
            policy=policy(),
        )
        await svc.start()
        app = create_app(svc, run_scheduler=False)
        bootstrap_token(svc, app.state.tokens)
        apps.append(app)
    a, b = (app.state.runtime for app in apps)
    try:
        x = (await a.handle(sig(), actor="a"))["incident"]
        misses = a.intake.index.misses
        assert (await a.handle(sig(), actor="a"))["incident"]["signals"] == 2
        assert a.intake.index.misses == misses  # answered from memory
        b.resolve(x["id"], actor="operator-on-b")
        y = (await a.handle(sig(), actor="a"))["incident"]
        assert y["id"] != x["id"] and y["signals"] == 1
        assert a.get_incident(x["id"])["status"] == "resolved"
        # "no live incident" remembered by a, then b opens one: a's index sees it
        other = "198.51.100.30"
        with a.service.engine.connect() as conn:
            assert a.intake.index.read(conn, [other], []).live == {}
        opened = (await b.handle(sig(other), actor="b"))["incident"]
        with a.service.engine.connect() as conn:
            found = a.intake.index.read(conn, [other], []).live
        assert found[other].id == opened["id"]
        assert (await a.handle(sig(other), actor="a"))["incident"] == {
            **opened,
            "signals": 2,
            "updated_at": ANY,
            "last_signal": ANY,
        }
    finally:
        for app in apps:
            await app.state.service.stop()


async def test_the_index_is_bounded(make_api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator import incident_index

    monkeypatch.setattr(incident_index, "MAX_ENTRIES", 10)
    api = await make_api()
    rt: PolicyRuntime = api.app.state.runtime
    for round_ in (1, 2):
        for k in range(8):
            answer = await rt.handle(sig(f"198.51.100.{40 + k}"), actor="test")
            assert answer["incident"]["signals"] == round_
            index = rt.intake.index
            assert len(index._rows) + len(index._targets) + len(index._events) <= 10


def test_answers_render_with_orjson_and_fall_back_to_json() -> None:
    from orchestrator.api.signals import answer

    fast = answer({"ok": True, "n": 1.5, "s": "é"})
    assert fast.body == '{"ok":true,"n":1.5,"s":"é"}'.encode()
    assert fast.headers["content-type"] == "application/json"
    big = answer({"ok": True, "raw": 2**70})  # beyond orjson's 64-bit integers
    assert big.body == b'{"ok":true,"raw":1180591620717411303424}'


# ---------------------------------------------------------------- the body, read


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def _same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (1 is not 1.0), NaN equal to NaN."""
    return repr(a) == repr(b) and type(a) is type(b)


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_bodies_read_exactly_as_json_reads_them(value: Any) -> None:
    raw = json.dumps(value).encode()
    assert _same(signals.parse_json(raw), json.loads(raw))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": 123456789012345678901234567890}',  # orjson: a float
        b'{"a": -9223372036854775809}',  # orjson: a float
        b'{"a": 18446744073709551615}',
        b'{"a": NaN, "b": -Infinity}',  # orjson refuses
        b'{"a": "\\ud800"}',  # a lone surrogate: orjson refuses
        '{"a": "\u00e9"}'.encode("utf-16"),  # not UTF-8: json detects it
        b'{"a": 1, "a": 2}',
        b'{"a": 1.5e400}',
    ],
)
def test_what_orjson_reads_otherwise_goes_to_json(raw: bytes) -> None:
    assert _same(signals.parse_json(raw), json.loads(raw))


@pytest.mark.parametrize("raw", [b"{", b"", b"\xff", b"[" * 100_000, b'{"a": 1} x'])
def test_what_neither_reads_is_refused(raw: bytes) -> None:
    with pytest.raises((ValueError, RecursionError)):
        json.loads(raw)
    with pytest.raises((ValueError, RecursionError)):
        signals.parse_json(raw)
