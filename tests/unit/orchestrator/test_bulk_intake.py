"""Bulk signal intake (POST /incidents/bulk) on SQLite and PostgreSQL.

One request, one rate-limit unit, one store transaction for its signals; a result per
signal; a bad signal changes nothing and does not sink the good ones.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, func, select

import orchestrator.intake as intake_module
from orchestrator.cluster import write
from orchestrator.store.models import audit_log, decisions, events, incidents, rules
from tests.unit.orchestrator.conftest import Api

# the intake writes the store: every test runs on SQLite and on PostgreSQL
pytestmark = pytest.mark.postgresql

TIERS = [
    {"name": "tier1", "bps": "100M", "intents": [{"type": "flowspec_drop"}], "adapters": ["edge"]},
    {"name": "tier2", "bps": "2G", "intents": [{"type": "blackhole"}], "adapters": ["edge"]},
]


def signal(target: str, **kw: Any) -> dict[str, Any]:
    return {
        "target_ip": target,
        "bps": "3G",
        "pps": 400_000,
        "attack_family": "udp_flood",
        "severity": "high",
        **kw,
    }


def hosts(n: int, base: str = "198.18.0.0") -> list[str]:
    start = int(ipaddress.IPv4Address(base))
    return [str(ipaddress.IPv4Address(start + i + 1)) for i in range(n)]


async def service(make_api: Any, **settings: Any) -> Api:
    api: Api = await make_api(**settings)
    await api.fake("edge")
    await api.ok("PUT", "/mitigation/escalation-policy", json={"tiers": TIERS})
    return api


async def until(check: Callable[[], bool], what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds} s")
        await asyncio.sleep(0.05)


def count(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


@contextmanager
def intake_transactions(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Count the write transactions the signal intake opens."""
    opened: list[int] = []

    @contextmanager
    def counting(engine: Engine, read_at: int | None = None) -> Iterator[Connection]:
        opened.append(1)
        with write(engine, read_at) as conn:
            yield conn

    monkeypatch.setattr("orchestrator.intake.write", counting)
    yield opened
    monkeypatch.setattr("orchestrator.intake.write", write)


async def test_bulk_stores_every_signal_in_one_transaction(
    make_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = await service(make_api)
    targets = hosts(300)  # more than the grouping of single signals (MAX_BATCH)
    assert len(targets) > intake_module.MAX_BATCH
    engine = api.svc.engine
    audit_before = count(engine, audit_log)
    with intake_transactions(monkeypatch) as opened:
        body = await api.ok(
            "POST", "/incidents/bulk", json={"signals": [signal(t) for t in targets]}
        )
    assert len(opened) == 1
    assert body["accepted"] == 300 and body["failed"] == 0
    results = body["results"]
    assert [r["index"] for r in results] == list(range(300))
    assert all(r["ok"] and r["decision"] == "announce" and r["tier"] == "tier2" for r in results)
    assert all(len(r["rule_ids"]) == 1 and r["incident_status"] == "mitigating" for r in results)
    assert len({r["incident_id"] for r in results}) == 300
    # every signal stored with its decision, its incident, its rule and their events
    assert count(engine, incidents) == 300
    assert count(engine, decisions, decisions.c.status == "announce") == 300
    assert count(engine, rules, rules.c.origin == "policy") == 300
    assert count(engine, events, events.c.kind == "incident.opened") == 300
    assert count(engine, events, events.c.kind == "incident.escalated") == 300
    assert count(engine, events, events.c.kind == "rule.created") == 300
    # the rules' audit entry is one for the batch, naming every rule
    assert count(engine, audit_log) == audit_before + 1
    with engine.connect() as conn:
        entry = conn.execute(select(audit_log).order_by(audit_log.c.id.desc()).limit(1)).one()
    assert entry.action == "rule.create" and len(json.loads(entry.detail)["rules"]) == 300
    # ... and handed to the adapter as batches, all announced (on PostgreSQL by the
    # holder of the driver lease, which a loaded machine may let lapse for a moment)
    await until(
        lambda: count(engine, rules, rules.c.state == "active") == 300, "all 300 rules active"
    )
    assert (await api.ok("GET", "/audit/verify"))["valid"] is True


async def test_a_bad_signal_changes_nothing_and_sinks_nothing(make_api: Any) -> None:
    api = await service(make_api)
    good = hosts(3)
    signals: list[Any] = [
        signal(good[0]),
        {"bps": "3G"},  # no target
        signal("198.51.100.9", bps=-5),
        "not an object",
        signal("198.51.100.10", action="shrug"),
        signal(good[1]),
        signal("198.51.100.11", incident_id="no-such-incident"),
        signal("198.51.100.12", event_id="e1"),  # event_id without source
        signal(good[2]),
    ]
    body = await api.ok("POST", "/incidents/bulk", json={"signals": signals})
    assert body["accepted"] == 3 and body["failed"] == 6
    res = body["results"]
    errors = {r["index"]: (r["error"]["code"], r["error"].get("field")) for r in res if not r["ok"]}
    assert errors == {
        1: ("missing_parameter", "target_ip"),
        2: ("invalid_parameter", "bps"),
        3: ("invalid_signal", None),
        4: ("invalid_action", "action"),
        6: ("incident_not_found", "incident_id"),
        7: ("missing_parameter", "source"),
    }
    assert [r["decision"] for r in res if r["ok"]] == ["announce"] * 3
    # only the good signals left anything behind
    engine = api.svc.engine
    with engine.connect() as conn:
        stored = set(conn.execute(select(incidents.c.target)).scalars())
        ruled = set(conn.execute(select(rules.c.target)).scalars())
    assert stored == set(good) and ruled == {f"{g}/32" for g in good}


async def test_whole_request_refusals_change_nothing(make_api: Any) -> None:
    api = await service(make_api, bulk_max_signals=5)
    cases: list[tuple[Any, int, str]] = [
        ({"signals": [signal(h) for h in hosts(6)]}, 413, "batch_too_large"),
        ({"signals": []}, 422, "empty_batch"),
        ({"signals": {"target_ip": "198.18.0.1"}}, 422, "invalid_parameter"),
        ({"signal": [signal("198.18.0.1")]}, 422, "unknown_parameter"),
        ({}, 422, "missing_parameter"),
        ([signal("198.18.0.1")], 422, "invalid_parameter"),
    ]
    for body, status, code in cases:
        r = await api.call("POST", "/incidents/bulk", json=body)
        assert r.status_code == status, r.text
        assert r.json()["ok"] is False and r.json()["error"]["code"] == code, r.text
    r = await api.call("POST", "/incidents/bulk", content=b'{"signals": [')
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_json"
    assert count(api.svc.engine, incidents) == 0
    # the maximum itself is fine
    body = await api.ok("POST", "/incidents/bulk", json={"signals": [signal(h) for h in hosts(5)]})
    assert body["accepted"] == 5


async def test_a_bulk_request_is_one_unit_of_the_rate_limit(make_api: Any) -> None:
    api = await service(make_api, rate_limit_per_minute=4)  # two went to setting up
    big = {"signals": [signal(h) for h in hosts(50)]}
    r = await api.call("POST", "/incidents/bulk", json=big)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 50
    assert r.headers["X-RateLimit-Remaining"] == "1"
    r = await api.call("POST", "/incidents/bulk", json={"signals": [signal("198.51.100.1")]})
    assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == "0"
    r = await api.call("POST", "/incidents/bulk", json=big)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
    assert "Retry-After" in r.headers
    assert count(api.svc.engine, incidents) == 51
    # the limiters' clock stands still (the fixture's): all of the above fell in one
    # window whatever the wall clock did; the next minute is a new window
    api.clock.advance(60)
    r = await api.call("POST", "/incidents/bulk", json={"signals": [signal("198.51.100.2")]})
    assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == "3"


async def test_two_signals_for_one_target_in_a_batch_update_one_incident(make_api: Any) -> None:
    api = await service(make_api)
    a, b = hosts(2)
    body = await api.ok(
        "POST",
        "/incidents/bulk",
        json={"signals": [signal(a, bps="3G"), signal(b), signal(a, bps="4G", pps=500_000)]},
    )
    first, other, second = body["results"]
    assert first["ok"] and second["ok"] and other["ok"]
    assert first["incident_id"] == second["incident_id"] != other["incident_id"]
    assert first["decision"] == "announce" and second["decision"] == "steady"
    assert len(first["rule_ids"]) == 1 and second["rule_ids"] == []
    inc = (await api.ok("GET", f"/incidents/{first['incident_id']}"))["incident"]
    assert inc["signals"] == 2 and inc["peak_bps"] == 4e9
    assert [d["status"] for d in inc["decisions"]] == ["announce", "steady"]
    engine = api.svc.engine
    assert count(engine, rules, rules.c.target == f"{a}/32") == 1
    assert count(engine, incidents, incidents.c.target == a) == 1


async def test_an_escalation_inside_one_batch(make_api: Any) -> None:
    api = await service(make_api)
    a = hosts(1)[0]
    body = await api.ok(
        "POST", "/incidents/bulk", json={"signals": [signal(a, bps="200M"), signal(a, bps="3G")]}
    )
    low, high = body["results"]
    assert low["decision"] == "announce" and high["decision"] == "escalate"
    assert high["withdrawn"] == low["rule_ids"]
    svc = api.svc
    await until(lambda: svc.get_rule(high["rule_ids"][0])["state"] == "active", "escalated")
    await until(lambda: svc.get_rule(low["rule_ids"][0])["state"] == "withdrawn", "withdrawn")
    flowspec = svc.get_rule(low["rule_ids"][0])
    # the dedupe index does not hold the withdrawn rule (it would be "extended" again)
    assert flowspec["id"] not in api.svc._live.by_key.values()
    assert high["rule_ids"][0] in api.svc._live.by_key.values()


async def test_ban_then_unban_in_one_batch(make_api: Any) -> None:
    api = await service(make_api)
    a, b = hosts(2)
    body = await api.ok(
        "POST",
        "/incidents/bulk",
        json={
            "signals": [
                signal(a, source="fnm", event_id="e-a"),
                {"action": "unban", "source": "fnm", "event_id": "e-a"},
                signal(b, source="fnm", event_id="e-b"),
                {"action": "unban", "source": "fnm", "event_id": "never-seen"},
            ]
        },
    )
    ban, unban, other, unknown = body["results"]
    assert ban["ok"] and unban["ok"] and other["ok"]
    assert unban["incident_id"] == ban["incident_id"]
    assert unban["incident_status"] == "resolved" and unban["withdrawn"] == ban["rule_ids"]
    assert other["incident_status"] == "mitigating"
    assert unknown["ok"] is False and unknown["error"]["code"] == "event_not_found"
    inc = (await api.ok("GET", f"/incidents/{ban['incident_id']}"))["incident"]
    assert inc["status"] == "resolved"


async def test_bulk_needs_write_scope(make_api: Any) -> None:
    api = await service(make_api)
    reader = await api.token("read")
    r = await api.call("POST", "/incidents/bulk", token=reader, json={"signals": [signal("x")]})
    assert r.status_code == 403
    r = await api.call("POST", "/incidents/bulk", token=None, json={"signals": []})
    assert r.status_code == 401


async def test_openapi_documents_the_bulk_contract(make_api: Any) -> None:
    api = await service(make_api)
    doc = (await api.client.get("/api/v1/openapi.json")).json()
    op = doc["paths"]["/api/v1/incidents/bulk"]["post"]
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["signals"]
    assert "batch_too_large" in op["responses"]["413"]["description"]
    assert {"200", "401", "403", "413", "422", "429"} <= set(op["responses"])


async def test_an_agent_reports_many_incidents_in_one_request(make_api: Any) -> None:
    api = await service(make_api, agent_rate_limit_per_minute=2)
    node = await api.ok("POST", "/nodes", status=201, json={"name": "edge-1", "ip": "198.18.9.1"})
    agent = {"X-Node-UUID": node["node"]["id"]}
    attack = {"attack_family": "udp_flood", "severity": "high", "peak_bps": 3e9, "peak_pps": 4e5}
    reports: list[Any] = [
        attack,  # the node's own address
        {**attack, "target_ip": "198.18.9.2"},
        {"attack_family": "udp_flood", "peak_bps": 3e9},  # no severity
        {**attack, "target_ip": "not an address"},
    ]
    r = await api.call(
        "POST", "/agent/incidents/bulk", token=node["api_key"], headers=agent,
        json={"incidents": reports},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 2 and body["failed"] == 2
    own, other, no_severity, bad_ip = body["results"]
    assert own["decision"] == "announce" and other["decision"] == "announce"
    assert no_severity["error"]["code"] == "missing_parameter"
    assert no_severity["error"]["field"] == "severity"
    assert bad_ip["error"]["field"] == "target_ip"
    inc = (await api.ok("GET", f"/incidents/{own['incident_id']}"))["incident"]
    assert inc["target_ip"] == "198.18.9.1" and inc["node"] == node["node"]["id"]
    with api.svc.engine.connect() as conn:
        targets = set(conn.execute(select(incidents.c.target)).scalars())
    assert targets == {"198.18.9.1", "198.18.9.2"}
    # one request, one unit of the node's rate limit
    assert r.headers["X-RateLimit-Remaining"] == "1"
    r = await api.call(
        "POST", "/agent/incidents/bulk", token=node["api_key"], headers=agent,
        json={"incidents": []},
    )  # fmt: skip
    assert r.status_code == 422 and r.json()["error"]["code"] == "empty_batch"
    doc = (await api.client.get("/api/v1/openapi.json")).json()
    items = doc["paths"]["/api/v1/agent/incidents/bulk"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]["properties"]["incidents"]["items"]
    assert items["$ref"].rsplit("/", 1)[-1] in doc["components"]["schemas"]


def stored(engine: Engine, incident_id: str, rule_ids: list[int]) -> tuple[int, int, int]:
    """(incidents, decisions, rules) of one answer that new connections see now."""
    return (
        count(engine, incidents, incidents.c.id == incident_id),
        count(engine, decisions, decisions.c.incident_id == incident_id),
        count(engine, rules, rules.c.id.in_(rule_ids)),
    )


async def test_every_answer_is_in_the_store_when_it_is_read(make_api: Any) -> None:
    """An answer is sent only once its signal's transaction committed: read at the moment
    each answer arrives, from a connection of its own, the store holds the incident, the
    decision and the rules it names (single signals and a bulk request, together)."""
    api = await service(make_api)
    engine = api.svc.engine
    targets = hosts(60)
    seen: list[tuple[int, int, int]] = []
    wanted: list[tuple[int, int, int]] = []

    async def single(target: str) -> None:
        r = await api.call("POST", "/incidents", json=signal(target))
        body = r.json()
        assert r.status_code == 200, r.text
        ids = [x["rule_id"] for x in body["decision"]["rules"]]
        seen.append(stored(engine, body["incident"]["id"], ids))
        wanted.append((1, 1, len(ids)))

    async def bulk(chunk: list[str]) -> None:
        r = await api.call("POST", "/incidents/bulk", json={"signals": [signal(t) for t in chunk]})
        assert r.status_code == 200, r.text
        for res in r.json()["results"]:
            seen.append(stored(engine, res["incident_id"], res["rule_ids"]))
            wanted.append((1, 1, len(res["rule_ids"])))

    await asyncio.gather(
        *(single(t) for t in targets[:30]), bulk(targets[30:45]), bulk(targets[45:])
    )
    assert len(seen) == 60 and all(w[2] == 1 for w in wanted)  # each opened a rule
    assert seen == wanted
