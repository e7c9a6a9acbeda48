"""Signals through the REST API into rules, the policy REST, hot reload and the agent API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.fake import FakeAdapter
from orchestrator.api.app import bootstrap_token, create_app
from orchestrator.service import Service
from tests.unit.orchestrator.conftest import settings_for

ADMIN = "b" * 64
H = {"Authorization": f"Bearer {ADMIN}"}

TIERS = [
    {
        "name": "tier1",
        "bps": "100M",
        "ttl": 120,
        "intents": [{"type": "flowspec_rate_limit", "rate": "10M"}],
        "adapters": ["edge"],
    },
    {"name": "tier2", "bps": "500M", "intents": [{"type": "flowspec_drop"}], "adapters": ["edge"]},
    {"name": "tier3", "bps": "2G", "intents": [{"type": "blackhole"}], "adapters": ["edge"]},
]


class Client:
    def __init__(self, app: Any, svc: Service) -> None:
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://sluice"
        )
        self.svc = svc
        self.app = app

    async def __call__(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any
    ) -> httpx.Response:
        return await self.http.request(method, "/api/v1" + path, headers=headers or H, **kw)

    def fake(self) -> FakeAdapter:
        adapter = self.svc.hub.live(self.svc.hub.by_name("edge").id)
        assert isinstance(adapter, FakeAdapter)
        return adapter


async def start(tmp_path: Path, policy_dir: Path | None = None, **settings: Any) -> Client:
    svc = Service(settings_for(tmp_path, admin_token=ADMIN, policy_dir=policy_dir, **settings))
    app = create_app(svc, run_scheduler=False)
    await svc.start()
    bootstrap_token(svc, app.state.tokens)
    app.state.runtime.load_state()
    app.state.policy_doc.load()
    return Client(app, svc)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Client]:
    c = await start(tmp_path)
    r = await c("POST", "/mitigation/adapters", json={"adapter_type": "fake", "name": "edge"})
    assert r.status_code == 201
    r = await c("PUT", "/mitigation/escalation-policy", json={"tiers": TIERS})
    assert r.status_code == 200, r.text
    yield c
    await c.svc.stop()


def signal(**kw: Any) -> dict[str, Any]:
    base = {
        "target_ip": "203.0.113.20",
        "bps": "800M",
        "pps": 90000,
        "attack_family": "udp_flood",
        "severity": "high",
        "top_source_ports": [123],
        "udp_pct": 97,
    }
    return {**base, **kw}


async def test_signal_to_rules_with_explanation(api: Client) -> None:
    r = await api("POST", "/incidents", json=signal())
    assert r.status_code == 200, r.text
    body = r.json()
    d = body["decision"]
    assert d["status"] == "announce" and d["tier"] == "tier2"
    assert any("tier2" in line for line in d["explanation"])
    assert [x["intent"] for x in d["rules"]] == [
        "flowspec dst 203.0.113.20/32; proto =17; sport =123; then discard"
    ]
    await api.svc.dispatcher.drain()
    rule = api.svc.get_rule(d["rules"][0]["rule_id"])
    assert rule["state"] == "active" and rule["origin"] == "policy"
    assert rule["incident_id"] == body["incident"]["id"]
    assert rule["explanation"] == d["explanation"]
    assert rule["key"] in api.fake().held
    # the same attack again updates the same incident; the rule is kept, not duplicated
    r = await api("POST", "/incidents", json=signal(bps="900M"))
    assert r.json()["incident"]["id"] == body["incident"]["id"]
    assert r.json()["incident"]["signals"] == 2
    r = await api("GET", f"/incidents/{body['incident']['id']}")
    inc = r.json()["incident"]
    assert inc["decisions"][0]["status"] == "announce"
    assert inc["live_rules"] == [rule["id"]]


async def test_escalation_replaces_lower_tier(api: Client) -> None:
    await api("POST", "/incidents", json=signal(bps="200M"))
    r = await api("POST", "/incidents", json=signal(bps="5G"))
    d = r.json()["decision"]
    assert d["status"] == "escalate" and d["tier"] == "tier3"
    assert d["rules"][0]["intent"].startswith("blackhole 203.0.113.20/32")
    assert len(d["withdrawn"]) == 1
    await api.svc.dispatcher.drain()
    assert {r["intent_type"] for r in api.svc.list_active()[0]} == {"blackhole"}


async def test_allowlisted_target_is_never_mitigated(api: Client) -> None:
    r = await api("POST", "/allowlist", json={"ip_address": "203.0.113.20", "label": "resolver"})
    assert r.status_code == 201, r.text
    r = await api("POST", "/incidents", json=signal(bps="10G"))
    d = r.json()["decision"]
    assert d["status"] == "allowlisted" and d["rules"] == []
    assert any("allowlist" in line for line in d["explanation"])
    assert api.svc.list_active()[1] == 0


async def test_guardrails_and_refusals_are_explained(api: Client) -> None:
    doc = api.app.state.policy_doc
    doc.change(
        lambda d: d.setdefault("guardrails", {}).update(protected_prefixes=["203.0.113.0/24"]),
        actor="test",
        what="guardrails",
    )
    r = await api("POST", "/incidents", json=signal(bps="5G"))
    d = r.json()["decision"]
    assert d["rules"] == []
    assert any("protected" in line for line in d["explanation"]), d["explanation"]
    # what only the service can know (the adapter cannot carry blackholes) is recorded too
    doc.change(lambda d: d["guardrails"].update(protected_prefixes=[]), actor="t", what="g")
    r = await api(
        "POST",
        "/mitigation/adapters",
        json={"adapter_type": "fake", "name": "edge", "capabilities": ["flowspec"]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["adapter"]["capabilities"] == ["flowspec"]
    r = await api("POST", "/incidents", json=signal(target_ip="198.51.100.8", bps="5G"))
    d = r.json()["decision"]
    assert d["rules"] == [] and d["refused"][0]["code"] == "capability_missing"
    assert d["refused"][0]["intent"].startswith("blackhole 198.51.100.8/32")
    r = await api("GET", f"/incidents/{r.json()['incident']['id']}")
    assert r.json()["incident"]["decisions"][0]["refused"][0]["code"] == "capability_missing"


async def test_bad_signals(api: Client) -> None:
    r = await api("POST", "/incidents", json={"bps": 5})
    assert r.status_code == 422 and r.json()["error"]["code"] == "missing_parameter"
    assert r.json()["error"]["field"] == "target_ip"
    r = await api("POST", "/incidents", json=signal(bps=-1))
    assert r.status_code == 422 and r.json()["error"]["field"] == "bps"
    r = await api("POST", "/incidents", json=signal(attack_family="alien"))
    assert r.status_code == 422 and r.json()["error"]["field"] == "attack_family"
    r = await api("POST", "/incidents", json=signal(incident_id="nope"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "incident_not_found"
    assert api.svc.history()[1] == 0


async def test_thresholds_and_allowlist_rest(api: Client) -> None:
    r = await api(
        "POST",
        "/mitigation/thresholds",
        json={"target_ip": "203.0.113.0/24", "label": "game", "thresholds": {"tier1_bps": "10M"}},
    )
    assert r.status_code == 200, r.text
    tid = r.json()["threshold"]["id"]
    r = await api("POST", "/incidents", json=signal(bps="50M"))
    d = r.json()["decision"]
    assert d["tier"] == "tier1" and any("203.0.113.0/24" in x for x in d["explanation"])
    # thresholds must still increase with the tier: refused, nothing changes
    r = await api(
        "POST",
        "/mitigation/thresholds",
        json={"target_ip": "198.51.100.0/24", "thresholds": {"tier2_bps": "1k"}},
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_policy"
    assert r.json()["error"]["field"] == "thresholds"
    assert len((await api("GET", "/mitigation/thresholds")).json()["thresholds"]) == 1
    r = await api(
        "POST",
        "/mitigation/thresholds",
        json={"target_ip": "198.51.100.7/24", "thresholds": {"tier1_bps": 1}},
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "target_ip"
    assert (await api("DELETE", f"/mitigation/thresholds/{tid}")).status_code == 200
    assert (await api("DELETE", f"/mitigation/thresholds/{tid}")).status_code == 404
    # allowlist: node scope needs a node; ?node= gives workspace + that node's entries
    r = await api("POST", "/allowlist", json={"ip_address": "198.51.100.9", "scope": "node"})
    assert r.json()["error"]["code"] == "missing_parameter"
    await api(
        "POST", "/allowlist", json={"ip_address": "198.51.100.9", "scope": "node", "node": "edge-1"}
    )
    await api("POST", "/allowlist", json={"ip_address": "2001:db8::53"})
    r = await api("POST", "/allowlist", json={"ip_address": "2001:db8::53"})
    assert r.status_code == 409
    # without node: every entry (workspace and node-scoped); with node: workspace + its own
    assert len((await api("GET", "/allowlist")).json()["entries"]) == 2
    assert len((await api("GET", "/allowlist", params={"node": "edge-2"})).json()["entries"]) == 1
    entries = (await api("GET", "/allowlist", params={"node": "edge-1"})).json()["entries"]
    assert len(entries) == 2
    for e in entries:
        assert (await api("DELETE", f"/allowlist/{e['id']}")).status_code == 200
    assert (await api("GET", "/allowlist", params={"node": "edge-1"})).json()["entries"] == []


async def test_escalation_policy_rest(api: Client) -> None:
    r = await api(
        "PUT",
        "/mitigation/escalation-policy",
        json={
            "thresholds": {"tier1": {"bps": "200M"}},
            "ttl": {"tier1": 60},
            "dry_run": True,
            "baseline_mode": "dynamic",
        },
    )
    p = r.json()["policy"]
    assert p["thresholds"]["tier1"]["bps"] == 200_000_000 and p["ttl"]["tier1"] == 60
    assert p["dry_run"] is True and p["baseline_mode"] == "dynamic" and p["managed_by"] == "api"
    r = await api("PUT", "/mitigation/escalation-policy", json={"thresholds": {"tier9": {}}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_tier"
    r = await api(
        "PUT", "/mitigation/escalation-policy", json={"thresholds": {"tier2": {"bps": "1k"}}}
    )
    assert r.status_code == 422
    assert (await api("GET", "/mitigation/escalation-policy")).json()["policy"]["thresholds"][
        "tier2"
    ]["bps"] == 500_000_000


async def test_policy_survives_restart_and_engine_state_too(tmp_path: Path) -> None:
    c = await start(tmp_path)
    await c("POST", "/mitigation/adapters", json={"adapter_type": "fake", "name": "edge"})
    await c("PUT", "/mitigation/escalation-policy", json={"tiers": TIERS})
    await c("POST", "/incidents", json=signal())
    c.app.state.runtime.save_state()
    await c.svc.stop()
    c2 = await start(tmp_path)
    try:
        assert len(c2.svc.policy.escalation.tiers) == 3
        r = await c2("POST", "/incidents", json=signal())
        assert r.json()["decision"]["status"] in ("steady", "refresh")
    finally:
        await c2.svc.stop()


async def test_policy_directory_is_read_only_and_hot_reloads(tmp_path: Path) -> None:
    pdir = tmp_path / "policy"
    pdir.mkdir()
    (pdir / "adapters.yaml").write_text("adapters:\n  - name: edge\n    adapter_type: fake\n")
    tiers = (
        "escalation:\n  tiers:\n    - name: tier1\n      bps: {bps}\n"
        "      intents: [{{type: blackhole}}]\n      adapters: [edge]\n"
    )
    (pdir / "escalation.yaml").write_text(tiers.format(bps="1G"))
    c = await start(tmp_path, pdir)
    rt = c.app.state.runtime
    try:
        # the tiers are declared in the files: read-only (API-created objects: see
        # test_policy_layer_api)
        r = await c("PUT", "/mitigation/escalation-policy", json={"ttl": 60})
        assert r.status_code == 409 and r.json()["error"]["code"] == "read_only"
        assert (await rt.reload()) is None  # nothing changed
        (pdir / "escalation.yaml").write_text(tiers.format(bps="2G"))
        status = await rt.reload()
        assert status is not None and status.ok
        assert c.svc.policy.escalation.tiers[0].bps == 2_000_000_000
        # an invalid change is refused and the policy in force stays
        (pdir / "escalation.yaml").write_text(tiers.format(bps="lots"))
        status = await rt.reload()
        assert status is not None and not status.ok and "escalation.yaml" in (status.error or "")
        assert c.svc.policy.escalation.tiers[0].bps == 2_000_000_000
        view = (await c("GET", "/mitigation/escalation-policy")).json()["policy"]
        assert view["managed_by"] == "policy" and view["last_reload"]["ok"] is False
    finally:
        await c.svc.stop()


async def test_agent_api(api: Client) -> None:
    r = await api("POST", "/nodes", json={"name": "edge-1", "ip": "203.0.113.30"})
    assert r.status_code == 201
    node, key = r.json()["node"], r.json()["api_key"]
    agent = {"Authorization": f"Bearer {key}", "X-Node-UUID": node["id"]}
    bad = {"Authorization": "Bearer nope", "X-Node-UUID": node["id"]}
    assert (await api("POST", "/agent/heartbeat", headers=bad, json={})).status_code == 401
    assert (await api("POST", "/agent/heartbeat", headers={}, json={})).status_code == 401
    r = await api("POST", "/agent/heartbeat", headers=agent, json={"agent_version": "1.2"})
    assert r.status_code == 200
    nodes = (await api("GET", "/nodes")).json()["nodes"]
    assert nodes[0]["status"] == "online" and nodes[0]["agent_version"] == "1.2"
    r = await api(
        "POST", "/agent/metrics", headers=agent, json={"pps": 1000, "bps": 5e6, "udp_pct": 10}
    )
    assert r.status_code == 200 and "decision" not in r.json()
    r = await api(
        "POST",
        "/agent/incidents",
        headers=agent,
        json={
            "attack_family": "syn_flood",
            "severity": "critical",
            "peak_bps": 9e8,
            "peak_pps": 2e6,
            "tcp_pct": 99,
        },
    )
    d = r.json()["decision"]
    assert d["tier"] == "tier2"
    assert "tcp-flags syn&!ack" in d["rules"][0]["intent"]
    assert r.json()["incident"]["node"] == node["id"]
    # metrics during the attack feed its decisions
    r = await api(
        "POST", "/agent/metrics", headers=agent, json={"pps": 2e6, "bps": 9.5e8, "tcp_pct": 99}
    )
    assert r.json()["decision"]["status"] in ("steady", "refresh")
    r = await api("POST", "/agent/metrics", headers=agent, json={"bps": 1})
    assert r.status_code == 422 and r.json()["error"]["code"] == "missing_parameter"


async def test_resolve_incident(api: Client) -> None:
    r = await api("POST", "/incidents", json=signal())
    iid = r.json()["incident"]["id"]
    r = await api("POST", f"/incidents/{iid}/resolve")
    assert r.json()["incident"]["status"] == "resolved"
    assert (await api("GET", "/incidents", params={"status": "open"})).json()["incidents"] == []
    await asyncio.sleep(0)


async def test_concurrent_signals_are_grouped_correctly(api: Client) -> None:
    """Signals arriving together share a group commit but keep their own answers."""
    bodies = [signal(target_ip=f"198.51.100.{i % 5 + 1}", bps="800M") for i in range(40)]
    bodies.append({"target_ip": "not-an-ip"})
    answers = await asyncio.gather(*(api("POST", "/incidents", json=b) for b in bodies))
    assert answers[-1].status_code == 422
    ok_answers = [a.json() for a in answers[:-1]]
    assert all(a["ok"] for a in ok_answers)
    incidents = {a["incident"]["target_ip"]: a["incident"]["id"] for a in ok_answers}
    assert len(incidents) == 5  # one incident per target, however the batch fell
    for a in ok_answers:
        assert a["incident"]["id"] == incidents[a["incident"]["target_ip"]]
    await api.svc.dispatcher.drain()
    active = api.svc.list_active()[0]
    assert sorted(r["target_ip"] for r in active) == [f"198.51.100.{i}/32" for i in range(1, 6)]
    listed = (await api("GET", "/incidents")).json()["incidents"]
    assert sum(i["signals"] for i in listed) == 40
    for iid in incidents.values():
        inc = (await api("GET", f"/incidents/{iid}")).json()["incident"]
        assert len(inc["decisions"]) == inc["signals"] == 8


async def test_concurrent_updates_naming_one_incident_all_count(api: Client) -> None:
    first = (await api("POST", "/incidents", json=signal(bps="800M"))).json()
    iid = first["incident"]["id"]
    bodies = [{**signal(bps=f"{900 + i}M"), "incident_id": iid} for i in range(10)]
    bodies.append({**signal(), "incident_id": "no-such-incident"})
    answers = await asyncio.gather(*(api("POST", "/incidents", json=b) for b in bodies))
    assert answers[-1].status_code == 404
    assert answers[-1].json()["error"]["code"] == "incident_not_found"
    assert {a.json()["incident"]["id"] for a in answers[:-1]} == {iid}
    inc = (await api("GET", f"/incidents/{iid}")).json()["incident"]
    assert inc["signals"] == len(inc["decisions"]) == 11
    assert inc["peak_bps"] == 909e6
