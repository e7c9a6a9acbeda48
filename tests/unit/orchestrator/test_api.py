"""The REST API over a real service: every endpoint, the envelope, auth and rate limit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.fake import FakeAdapter
from orchestrator.api.app import bootstrap_token, create_app
from orchestrator.service import Service
from tests.unit.orchestrator.conftest import ADMIN, settings_for


def error(r: httpx.Response) -> tuple[int, str]:
    body = r.json()
    assert body["ok"] is False
    return r.status_code, body["error"]["code"]


async def test_rule_lifecycle_over_http(make_api: Any) -> None:
    api = await make_api()
    aid = await api.fake()
    r = await api.call(
        "POST",
        "/mitigation/rules",
        json={
            "target_ip": "203.0.113.10",
            "intent_type": "flowspec",
            "adapter_id": aid,
            "ttl": 120,
            "reason": "NTP amplification",
            "protocol": "udp",
            "source_port": 123,
            "action": "rate-limit",
            "rate_limit": 125000,
        },
    )
    assert r.status_code == 201, r.text
    rule = r.json()["rule"]
    assert rule["state"] == "active"  # the API waited for the adapter's answer
    assert rule["intent"] == (
        "flowspec dst 203.0.113.10/32; proto =17; sport =123; then rate-limit 125000"
    )
    assert rule["created_by"] == "admin"
    r = await api.call("GET", "/mitigation/rules")
    assert r.json()["ok"] and [x["id"] for x in r.json()["rules"]] == [rule["id"]]
    assert int(r.headers["X-RateLimit-Remaining"]) < 1000
    # same rule again: deduplicated, 200
    r = await api.call(
        "POST",
        "/mitigation/rules",
        json={
            "target_ip": "203.0.113.10/32",
            "intent_type": "flowspec",
            "adapter_id": "edge",
            "protocol": 17,
            "source_port": "=123",
            "action": "rate_limit",
            "rate_limit": 125000,
        },
    )
    assert r.status_code == 200 and r.json()["deduplicated"] is True
    r = await api.call("GET", f"/mitigation/rules/{rule['id']}")
    assert [e["event"] for e in r.json()["rule"]["events"]] == ["announced", "extended"]
    r = await api.call("DELETE", f"/mitigation/rules/{rule['id']}", json={"reason": "attack over"})
    assert r.status_code == 200 and r.json()["rule"]["state"] == "withdrawn"
    r = await api.call("GET", "/mitigation/rules")
    assert r.json()["rules"] == []
    r = await api.call("GET", "/mitigation/rules/history", params={"limit": 1})
    assert r.json()["rules"][0]["state"] == "withdrawn" and r.json()["total"] == 1
    r = await api.call("DELETE", f"/mitigation/rules/{rule['id']}")
    assert error(r) == (409, "rule_not_active")


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"intent_type": "blackhole", "adapter_id": 1}, 422, "missing_parameter", "target_ip"),
        ({"target_ip": "203.0.113.1", "adapter_id": 1}, 422, "missing_parameter", "intent_type"),
        (
            {"target_ip": "203.0.113.1", "intent_type": "nullroute", "adapter_id": 1},
            422,
            "unknown_intent_type",
            "intent_type",
        ),
        (
            {"target_ip": "203.0.113.1/24", "intent_type": "blackhole", "adapter_id": 1},
            422,
            "invalid_intent",
            "target_ip",
        ),
        (
            {"target_ip": "not-an-ip", "intent_type": "blackhole", "adapter_id": 1},
            422,
            "invalid_intent",
            "target_ip",
        ),
        (
            {"target_ip": "0.0.0.0/0", "intent_type": "blackhole", "adapter_id": 1},
            422,
            "default_route",
            "target_ip",
        ),
        (
            {"target_ip": "203.0.113.1", "intent_type": "blackhole", "adapter_id": 99},
            422,
            "adapter_not_found",
            "adapter_id",
        ),
        (
            {"target_ip": "203.0.113.1", "intent_type": "blackhole", "adapter_id": 1, "ttl": -5},
            422,
            "invalid_ttl",
            "ttl",
        ),
        (
            {"target_ip": "203.0.113.1", "intent_type": "blackhole", "adapter_id": 1, "ttl": 10**8},
            422,
            "invalid_ttl",
            "ttl",
        ),
        (
            {
                "target_ip": "203.0.113.1",
                "intent_type": "flowspec",
                "adapter_id": 1,
                "source_port": ">9&<3",
            },
            422,
            "invalid_intent",
            "source_port",
        ),
        (
            {
                "target_ip": "203.0.113.1",
                "intent_type": "flowspec",
                "adapter_id": 1,
                "protocol": "icmp",
                "destination_port": 80,
            },
            422,
            "invalid_intent",
            "protocol",
        ),
        (
            {
                "target_ip": "203.0.113.1",
                "intent_type": "flowspec",
                "adapter_id": 1,
                "action": "rate-limit",
            },
            422,
            "invalid_intent",
            "rate_limit",
        ),
        (
            {
                "target_ip": "203.0.113.1",
                "intent_type": "blackhole",
                "adapter_id": 1,
                "tcp_flags": "syn",
            },
            422,
            "invalid_intent",
            "tcp_flags",
        ),
        (
            {
                "target_ip": "203.0.113.1",
                "intent_type": "blackhole",
                "adapter_id": 1,
                "colour": "red",
            },
            422,
            "unknown_parameter",
            "colour",
        ),
        (
            {"target_ip": "203.0.113.1", "intent_type": "flowspec", "adapter_id": 2},
            422,
            "capability_missing",
            "intent_type",
        ),
    ],
)
async def test_bad_rules_get_specific_errors_and_store_nothing(
    make_api: Any, body: dict[str, Any], status: int, code: str, field: str
) -> None:
    api = await make_api()
    await api.fake()
    r = await api.call(
        "POST",
        "/mitigation/adapters",
        json={"adapter_type": "fake", "name": "bh-only", "capabilities": ["blackhole"]},
    )
    assert r.status_code == 201
    r = await api.call("POST", "/mitigation/rules", json=body)
    assert error(r) == (status, code), r.text
    assert r.json()["error"]["field"] == field
    assert field in r.json()["error"]["message"] or code in (
        "capability_missing",
        "adapter_not_found",
        "default_route",
        "invalid_ttl",
    )
    assert api.svc.history()[1] == 0
    fake = api.svc.hub.live(1)
    assert isinstance(fake, FakeAdapter) and fake.calls == []


async def test_envelope_for_framework_errors(make_api: Any) -> None:
    api = await make_api()
    assert error(await api.call("GET", "/no/such/thing")) == (404, "not_found")
    assert error(await api.call("PUT", "/mitigation/rules")) == (405, "method_not_allowed")
    assert error(await api.call("GET", "/mitigation/rules/424242")) == (404, "rule_not_found")
    r = await api.call(
        "POST",
        "/mitigation/rules",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert error(r) == (422, "invalid_json")
    assert error(await api.call("GET", "/mitigation/rules/history", params={"limit": 501})) == (
        422,
        "invalid_parameter",
    )
    assert error(await api.call("GET", "/mitigation/rules/history", params={"limit": 0})) == (
        422,
        "invalid_parameter",
    )


async def test_auth(make_api: Any) -> None:
    api = await make_api()
    assert error(await api.call("GET", "/mitigation/rules", token=None)) == (401, "missing_token")
    assert error(await api.call("GET", "/mitigation/rules", token="nope")) == (401, "invalid_token")
    reader = await api.token("read")
    assert (await api.call("GET", "/mitigation/rules", token=reader)).status_code == 200
    r = await api.call(
        "POST",
        "/mitigation/rules",
        token=reader,
        json={"target_ip": "203.0.113.1", "intent_type": "blackhole", "adapter_id": 1},
    )
    assert error(r) == (403, "insufficient_scope")
    assert error(await api.call("POST", "/workspace/tokens", token=reader, json={"name": "x"})) == (
        403,
        "insufficient_scope",
    )
    short = await api.token("write", expires_in=1)
    import asyncio

    await asyncio.sleep(1.1)
    assert error(await api.call("GET", "/mitigation/rules", token=short)) == (401, "token_expired")
    listed = (await api.call("GET", "/workspace/tokens")).json()["tokens"]
    assert all("hash" not in str(t) and reader not in str(t) for t in listed)
    rid = next(t["id"] for t in listed if t["name"] == "read")
    assert (await api.call("DELETE", f"/workspace/tokens/{rid}")).status_code == 200
    assert error(await api.call("GET", "/mitigation/rules", token=reader)) == (401, "invalid_token")


async def test_rate_limit(make_api: Any) -> None:
    api = await make_api(rate_limit_per_minute=5)
    reader = await api.token("read")  # the admin token's first request of five
    for i in range(4):
        r = await api.call("GET", "/mitigation/rules")
        assert r.status_code == 200
        assert r.headers["X-RateLimit-Limit"] == "5"
        assert r.headers["X-RateLimit-Remaining"] == str(3 - i)
    r = await api.call("GET", "/mitigation/rules")
    assert error(r) == (429, "rate_limited")
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert r.headers["X-RateLimit-Remaining"] == "0"
    # the budget is per token
    r = await api.call("GET", "/mitigation/rules", token=reader)
    assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == "4"
    # a minute later (the limiters' clock, frozen by the fixture, moved) the budget is back
    api.clock.advance(60)
    r = await api.call("GET", "/mitigation/rules")
    assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == "4"


async def test_adapters_endpoints(make_api: Any) -> None:
    api = await make_api()
    r = await api.call(
        "POST",
        "/mitigation/adapters",
        json={
            "adapter_type": "fake",
            "name": "edge",
            "endpoint": "unix:///run/x.sock",
            "auth_token": "s3cret-token-value",
            "config": {"latency_ms": 1},
        },
    )
    assert r.status_code == 201
    adapter = r.json()["adapter"]
    assert "s3cret" not in r.text and adapter["has_auth_token"] is True
    assert set(adapter["capabilities"]) == {"blackhole", "flowspec", "scrubbing"}
    r = await api.call("GET", "/mitigation/adapters")
    assert "s3cret" not in r.text and "fake" in r.json()["adapter_types"]
    # update by id keeps the token when none is given
    r = await api.call(
        "POST",
        "/mitigation/adapters",
        json={"id": adapter["id"], "adapter_type": "fake", "name": "edge2", "config": {}},
    )
    assert r.status_code == 200 and r.json()["adapter"]["name"] == "edge2"
    assert r.json()["adapter"]["has_auth_token"] is True
    r = await api.call("POST", f"/mitigation/adapters/{adapter['id']}/test")
    assert r.json()["test"]["ok"] is True and r.json()["test"]["latency_ms"] is not None
    # bad adapters
    r = await api.call(
        "POST", "/mitigation/adapters", json={"adapter_type": "juniper", "name": "x"}
    )
    assert error(r) == (422, "unknown_adapter_type")
    r = await api.call(
        "POST",
        "/mitigation/adapters",
        json={"adapter_type": "fake", "name": "x", "config": {"latency_ms": "slow"}},
    )
    assert error(r) == (422, "invalid_adapter_config")
    assert "config.latency_ms" in r.json()["error"]["message"]
    r = await api.call(
        "POST",
        "/mitigation/adapters",
        json={"adapter_type": "fake", "name": "x", "capabilities": ["teleport"]},
    )
    assert error(r) == (422, "invalid_parameter")
    r = await api.call("POST", "/mitigation/adapters", json={"adapter_type": "fake"})
    assert error(r) == (422, "missing_parameter")
    assert len(api.svc.hub.records()) == 1
    # delete withdraws its rules first
    r = await api.call(
        "POST",
        "/mitigation/rules",
        json={"target_ip": "203.0.113.10", "intent_type": "blackhole", "adapter_id": adapter["id"]},
    )
    rule_id = r.json()["rule"]["id"]
    r = await api.call("DELETE", f"/mitigation/adapters/{adapter['id']}")
    assert r.status_code == 200 and r.json()["deleted"]["withdrawn_rules"] == [rule_id]
    r = await api.call("GET", f"/mitigation/rules/{rule_id}")
    assert r.json()["rule"]["state"] == "withdrawn"
    assert error(await api.call("DELETE", f"/mitigation/adapters/{adapter['id']}")) == (
        404,
        "adapter_not_found",
    )


async def test_policy_adapters_are_read_only(tmp_path: Path) -> None:
    pdir = tmp_path / "policy"
    pdir.mkdir()
    (pdir / "adapters.yaml").write_text("adapters:\n  - name: log\n    adapter_type: log\n")
    svc = Service(settings_for(tmp_path, policy_dir=pdir, admin_token=ADMIN))
    await svc.start()
    try:
        app = create_app(svc, run_scheduler=False)
        bootstrap_token(svc, app.state.tokens)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://s"
        ) as c:
            h = {"Authorization": f"Bearer {ADMIN}"}
            r = await c.get("/api/v1/mitigation/adapters", headers=h)
            assert r.json()["adapters"][0]["managed_by"] == "policy"
            r = await c.post(
                "/api/v1/mitigation/adapters",
                headers=h,
                json={"adapter_type": "log", "name": "log", "config": {}},
            )
            assert error(r) == (409, "read_only")
            r = await c.delete("/api/v1/mitigation/adapters/1", headers=h)
            assert error(r) == (409, "read_only")
    finally:
        await svc.stop()


async def test_openapi_audit_health(make_api: Any) -> None:
    api = await make_api()
    r = await api.client.get("/api/v1/openapi.json")
    assert r.status_code == 200 and "/api/v1/mitigation/rules" in r.json()["paths"]
    r = await api.call("GET", "/audit/verify")
    assert r.json()["valid"] is True and r.json()["entries"] >= 1
    r = await api.client.get("/api/v1/health")
    assert r.json()["ready"] is True
    r = await api.call("GET", "/metrics")
    assert "sluice_adapter_operations_total" in r.text


def test_secret_sounding_config_keys_are_hidden() -> None:
    from orchestrator.hub import secret_keys

    assert secret_keys(None, {"consumer_key": "x", "api_password": "y", "region": "z"}) == {
        "consumer_key",
        "api_password",
    }
