"""Attack profiles and the agent job channel through the REST API (in-process)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from orchestrator.agent.profiles import PROFILES
from tests.unit.orchestrator.conftest import Api

EXPECTED = {
    "game_server",
    "hosting_provider",
    "isp",
    "saas",
    "ecommerce",
    "fintech",
    "small_operator",
    "msp",
    "edge_node",
    "router",
    "game_studio",
}


async def node(api: Api, name: str, ip: str) -> tuple[str, dict[str, str]]:
    body = await api.ok("POST", "/nodes", 201, json={"name": name, "ip": ip})
    nid = body["node"]["id"]
    return nid, {"Authorization": f"Bearer {body['api_key']}", "X-Node-UUID": nid}


async def test_profiles_listed_with_rules_and_purpose(make_api: Callable[..., Any]) -> None:
    api: Api = await make_api()
    body = await api.ok("GET", "/attack-profiles")
    assert {p["id"] for p in body["profiles"]} == EXPECTED == set(PROFILES)
    assert body["suites"] == ["nftables", "iptables", "ufw", "firewalld"]
    for p in body["profiles"]:
        assert p["optimized_for"] and p["rules"]
        for r in p["rules"]:
            assert r["title"] and len(r["why"]) > 30, r
    assert (await api.call("GET", "/attack-profiles", token=None)).status_code == 401


async def test_apply_queues_one_job_per_node_and_results_are_queryable(
    make_api: Callable[..., Any],
) -> None:
    api: Api = await make_api()
    n1, h1 = await node(api, "edge-1", "203.0.113.10")
    n2, h2 = await node(api, "edge-2", "203.0.113.11")
    body = await api.ok(
        "POST",
        "/attack-profiles/apply",
        201,
        json={
            "profile_id": "game_server",
            "suite": "nftables",
            "node_ids": ["all"],
            "rules": [{"cmd": "udp dport 27015 udp sport {19,123} drop", "title": "x;y"}],
        },
    )
    assert {j["node_id"] for j in body["jobs"]} == {n1, n2}
    ids = body["job_ids"]
    # the agent of node 1 sees only its job, with the canonical custom rule
    got = (await api.ok("GET", "/agent/jobs", token=None, headers=h1, params={"wait": 0}))["jobs"]
    assert len(got) == 1 and got[0]["id"] in ids and got[0]["kind"] == "firewall.apply"
    payload = got[0]["payload"]
    assert payload["profile_id"] == "game_server" and payload["suite"] == "nftables"
    assert payload["rules"] == [
        {"cmd": "udp dport 27015 udp sport { 19 , 123 } drop", "title": "xy"}
    ]
    # delivered once: a second poll has nothing (until the redelivery lease runs out)
    again = await api.ok("GET", "/agent/jobs", token=None, headers=h1, params={"wait": 0})
    assert again["jobs"] == []
    jid = got[0]["id"]
    r = await api.ok(
        "POST",
        f"/agent/jobs/{jid}/result",
        token=None,
        headers=h1,
        json={"status": "succeeded", "detail": "applied"},
    )
    assert r["recorded"] is True and r["job"]["status"] == "succeeded"
    # a repeated report (the agent's retry) changes nothing
    r = await api.ok(
        "POST",
        f"/agent/jobs/{jid}/result",
        token=None,
        headers=h1,
        json={"status": "failed", "detail": "late duplicate"},
    )
    assert r["recorded"] is False and r["job"]["result"]["detail"] == "applied"
    # node 2 may not report node 1's job
    r2 = await api.call(
        "POST", f"/agent/jobs/{jid}/result", token=None, headers=h2, json={"status": "failed"}
    )
    assert r2.status_code == 404 and r2.json()["error"]["code"] == "job_not_found"
    job = (await api.ok("GET", f"/jobs/{jid}"))["job"]
    assert job["status"] == "succeeded" and job["deliveries"] == 1
    listed = await api.ok("GET", "/jobs", params={"node_id": n1})
    assert listed["total"] == 1 and listed["jobs"][0]["id"] == jid


async def test_long_poll_wakes_when_a_job_is_queued(make_api: Callable[..., Any]) -> None:
    api: Api = await make_api()
    n1, h1 = await node(api, "edge-1", "203.0.113.10")
    poll = asyncio.create_task(
        api.call("GET", "/agent/jobs", token=None, headers=h1, params={"wait": 20})
    )
    # the poll is parked (it looked for jobs and found none) before one is queued: counted
    # on the store's side, not guessed with a sleep, so the job cannot be there already
    store = api.app.state.jobs
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while n1 not in store._wakeups:
        assert loop.time() < deadline and not poll.done(), "the long poll never started"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert not poll.done()
    await api.ok(
        "POST",
        "/attack-profiles/apply",
        201,
        json={"profile_id": "isp", "suite": "iptables", "node_ids": [n1]},
    )
    r = await asyncio.wait_for(poll, timeout=10)
    assert r.status_code == 200 and len(r.json()["jobs"]) == 1


async def test_allowlist_goes_into_the_job(make_api: Callable[..., Any]) -> None:
    api: Api = await make_api()
    n1, h1 = await node(api, "edge-1", "203.0.113.10")
    await api.ok("POST", "/allowlist", 201, json={"ip_address": "198.51.100.0/24"})
    await api.ok(
        "POST",
        "/attack-profiles/apply",
        201,
        json={"profile_id": "saas", "suite": "nftables", "node_ids": [n1]},
    )
    got = (await api.ok("GET", "/agent/jobs", token=None, headers=h1, params={"wait": 0}))["jobs"]
    assert got[0]["payload"]["protected"] == ["198.51.100.0/24"]


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        (
            {"profile_id": "nope", "suite": "nftables", "node_ids": ["all"]},
            422,
            "unknown_profile",
            "profile_id",
        ),
        ({"profile_id": "isp", "suite": "pf", "node_ids": ["all"]}, 422, "unknown_suite", "suite"),
        (
            {"profile_id": "isp", "suite": "nftables", "node_ids": []},
            422,
            "empty_node_list",
            "node_ids",
        ),
        (
            {"profile_id": "isp", "suite": "nftables", "node_ids": ["0000"]},
            422,
            "unknown_node",
            "node_ids",
        ),
        (
            {
                "profile_id": "isp",
                "suite": "iptables",
                "node_ids": ["all"],
                "rules": [{"cmd": "-p udp --dport 53 -j DROP; rm -rf /", "title": "t"}],
            },
            422,
            "shell_syntax",
            "rules.0.cmd",
        ),
        (
            {
                "profile_id": "isp",
                "suite": "iptables",
                "node_ids": ["all"],
                "rules": [{"cmd": "-p udp -j DROP && reboot", "title": "t"}],
            },
            422,
            "shell_syntax",
            "rules.0.cmd",
        ),
        (
            {
                "profile_id": "isp",
                "suite": "nftables",
                "node_ids": ["all"],
                "rules": [{"cmd": "udp dport 53 drop $(id)", "title": "t"}],
            },
            422,
            "shell_syntax",
            "rules.0.cmd",
        ),
        (
            {
                "profile_id": "isp",
                "suite": "nftables",
                "node_ids": ["all"],
                "rules": [{"cmd": "-p udp --dport 53 -j DROP", "title": "t"}],
            },
            422,
            "invalid_rule",
            "rules.0.cmd",
        ),
        (
            {
                "profile_id": "isp",
                "suite": "iptables",
                "node_ids": ["all"],
                "rules": [{"cmd": "-p udp --dport 53 -j LOG", "title": "t"}],
            },
            422,
            "invalid_rule",
            "rules.0.cmd",
        ),
        (
            {
                "profile_id": "isp",
                "suite": "ufw",
                "node_ids": ["all"],
                "rules": [{"cmd": "-t nat -A PREROUTING -j DNAT", "title": "t"}],
            },
            422,
            "invalid_rule",
            "rules.0.cmd",
        ),
        ({"profile_id": "isp", "suite": "nftables"}, 422, "missing_parameter", "node_ids"),
    ],
)
async def test_bad_apply_is_refused_and_queues_nothing(
    make_api: Callable[..., Any], body: dict[str, Any], status: int, code: str, field: str
) -> None:
    api: Api = await make_api()
    await node(api, "edge-1", "203.0.113.10")
    r = await api.call("POST", "/attack-profiles/apply", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err.get("field") == field, err
    assert (await api.ok("GET", "/jobs"))["total"] == 0


async def test_agent_endpoints_need_the_node_key(make_api: Callable[..., Any]) -> None:
    api: Api = await make_api()
    n1, _ = await node(api, "edge-1", "203.0.113.10")
    bad = {"Authorization": "Bearer " + "0" * 64, "X-Node-UUID": n1}
    r = await api.call("GET", "/agent/jobs", token=None, headers=bad)
    assert r.status_code == 401
    r = await api.call("GET", "/agent/jobs", params={"wait": 0})  # an API token is not a node
    assert r.status_code == 401
