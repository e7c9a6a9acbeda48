"""Runbooks: the API, validation, triggering from the event log, durable executions.

Everything runs for real: the service on a temporary SQLite store, incidents opened by
signals through ``POST /incidents``, the event log consumer, and HTTP receivers on
loopback for webhooks and channels.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from orchestrator.api.app import bootstrap_token, create_app
from orchestrator.automation import Automation
from orchestrator.runbooks import expr
from orchestrator.service import Service
from orchestrator.store.models import runbook_executions, runbook_step_results, runbooks
from tests.unit.orchestrator.conftest import policy, settings_for
from tests.unit.orchestrator.receivers import WEBHOOK_SECRET, Receivers, http_receivers

# the store itself is under test here: these run on SQLite and on PostgreSQL
pytestmark = pytest.mark.postgresql

ADMIN = "r" * 64
H = {"Authorization": f"Bearer {ADMIN}"}


class Env:
    def __init__(self, tmp: Path, rec: Receivers, url: str | None = None) -> None:
        self.tmp = tmp
        self.rec = rec
        self.url = url
        self.svc: Service
        self.http: httpx.AsyncClient
        self.auto: Automation

    async def start(self) -> None:
        settings = settings_for(self.tmp, admin_token=ADMIN, egress_allow=("127.0.0.1",))
        self.svc = Service(settings, policy=policy(cooldown_seconds=0))
        app = create_app(self.svc, run_scheduler=False)
        await self.svc.start()
        bootstrap_token(self.svc, app.state.tokens)
        app.state.runtime.load_state()
        app.state.policy_doc.load()
        self.auto = app.state.automation
        self.auto.channels.retry_base = 0.05
        await self.auto.start()
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s")

    async def stop(self) -> None:
        await self.auto.stop()
        await self.http.aclose()
        await self.svc.stop()

    async def __call__(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return await self.http.request(method, "/api/v1" + path, headers=H, **kw)

    async def ok(self, method: str, path: str, status: int = 200, **kw: Any) -> dict[str, Any]:
        r = await self(method, path, **kw)
        assert r.status_code == status, r.text
        body: dict[str, Any] = r.json()
        return body

    async def signal(self, **kw: Any) -> str:
        base = {
            "target_ip": "203.0.113.20",
            "bps": "800M",
            "pps": 2_000_000,
            "attack_family": "udp_flood",
            "severity": "high",
            "node": "edge-1",
        }
        body = await self.ok("POST", "/incidents", json={**base, **kw})
        return str(body["incident"]["id"])

    async def until(self, check: Any, seconds: float = 20.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            got = check()
            if got:
                return got
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}")

    def executions(self, rid: str) -> list[Any]:
        with self.svc.engine.connect() as conn:
            return list(
                conn.execute(
                    select(runbook_executions).where(runbook_executions.c.runbook_id == rid)
                ).all()
            )

    def execution_status(self, eid: str) -> str:
        with self.svc.engine.connect() as conn:
            return str(
                conn.execute(
                    select(runbook_executions.c.status).where(runbook_executions.c.id == eid)
                ).scalar()
            )

    def steps(self, eid: str) -> list[Any]:
        with self.svc.engine.connect() as conn:
            return list(
                conn.execute(
                    select(runbook_step_results)
                    .where(runbook_step_results.c.execution_id == eid)
                    .order_by(runbook_step_results.c.step_index)
                ).all()
            )


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with http_receivers() as rec:
        e = Env(tmp_path, rec)
        await e.start()
        try:
            yield e
        finally:
            await e.stop()


@pytest.fixture
async def store_env(tmp_path: Path, store_url: str | None) -> AsyncIterator[Env]:
    """The same, on SQLite and on PostgreSQL (the once-only inserts differ per database)."""
    async with http_receivers() as rec:
        e = Env(tmp_path, rec, store_url)
        await e.start()
        try:
            yield e
        finally:
            await e.stop()


def runbook(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "udp response",
        "description": "log and check",
        "trigger_conditions": {"min_severity": "medium", "attack_family": "udp_flood"},
        "steps": [{"action_type": "log", "action_config": {"message": "{attack_family} {pps}"}}],
    }
    return {**base, **kw}


# ---------------------------------------------------------------- the expression language


def test_expressions() -> None:
    ctx = {"pps": 2e6, "attack_family": "udp_flood", "severity": "high", "node": "a"}
    assert expr.evaluate('pps > 1e6 and attack_family == "udp_flood"', ctx)
    assert not expr.evaluate("pps > 1e7 or not (severity == 'high')", ctx)
    assert expr.evaluate('node in ["a", "b"] and pps >= 2000000', ctx)
    assert not expr.evaluate('pps > "x"', ctx)  # mixed types: false, never an error
    for bad, code in [
        ("pps >", "invalid_expression"),
        ("pps > 1 and", "invalid_expression"),
        ("__import__('os')", "unknown_variable"),
        ("bogus == 1", "unknown_variable"),
        ("pps > 1 ; 2", "invalid_expression"),
        ("(" * 30 + "pps" + ")" * 30, "invalid_expression"),
        ("", "invalid_expression"),
    ]:
        with pytest.raises(expr.ExpressionInvalid) as err:
            expr.parse(bad)
        assert err.value.code == code, bad


# ---------------------------------------------------------------- the API


async def test_crud_toggle_delete(env: Env) -> None:
    created = (await env.ok("POST", "/runbooks", 201, json=runbook()))["runbook"]
    rid = created["id"]
    assert created["active"] is True and created["execution_count"] == 0
    assert created["trigger_conditions"]["nodes"] == "all"
    listed = (await env.ok("GET", "/runbooks"))["runbooks"]
    assert [r["id"] for r in listed] == [rid]
    got = (await env.ok("GET", f"/runbooks/{rid}"))["runbook"]
    assert got["steps"][0]["action_config"]["message"] == "{attack_family} {pps}"
    # partial update: the steps are left alone when not given, replaced whole when given
    upd = (await env.ok("PATCH", f"/runbooks/{rid}", json={"name": "renamed"}))["runbook"]
    assert upd["name"] == "renamed" and upd["steps"] == got["steps"]
    new_steps = [{"action_type": "wait", "action_config": {"seconds": 0}}]
    upd = (await env.ok("PATCH", f"/runbooks/{rid}", json={"steps": new_steps}))["runbook"]
    assert [s["action_type"] for s in upd["steps"]] == ["wait"]
    off = (await env.ok("POST", f"/runbooks/{rid}/toggle"))["runbook"]
    assert off["active"] is False
    # a positive control: an active runbook with the same trigger runs for the same signal,
    # so once it has, the inactive one was passed over (not merely not reached yet)
    control = (await env.ok("POST", "/runbooks", 201, json=runbook(name="control")))["runbook"]
    await env.signal()
    await env.until(lambda: env.executions(control["id"]), 30, "the active runbook's run")
    await env.auto.runbooks.drain()
    assert env.executions(rid) == []  # inactive: not triggered
    await env.ok("DELETE", f"/runbooks/{control['id']}")
    assert (await env.ok("POST", f"/runbooks/{rid}/toggle"))["runbook"]["active"] is True
    await env.ok("DELETE", f"/runbooks/{rid}")
    r = await env("GET", f"/runbooks/{rid}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "runbook_not_found"
    assert (await env.ok("GET", "/runbooks"))["runbooks"] == []
    r = await env("GET", "/runbooks/nope/executions")
    assert r.status_code == 404


BAD: list[tuple[dict[str, Any], str, str]] = [
    (
        {"steps": [{"action_type": "reboot", "action_config": {}}]},
        "unknown_action_type",
        "steps.0.action_type",
    ),
    (
        {"steps": [{"action_type": "wait", "action_config": {"seconds": 99999}}]},
        "wait_too_long",
        "steps.0.action_config.seconds",
    ),
    (
        {"steps": [{"action_type": "wait", "action_config": {"minutes": 1}}]},
        "invalid_step",
        "steps.0.action_config.minutes",
    ),
    (
        {
            "steps": [
                {"action_type": "log", "action_config": {"message": "ok"}},
                {"action_type": "condition", "action_config": {"expression": "pps >"}},
            ]
        },
        "invalid_expression",
        "steps.1.action_config.expression",
    ),
    (
        {"steps": [{"action_type": "condition", "action_config": {"expression": "cpu > 1"}}]},
        "unknown_variable",
        "steps.0.action_config.expression",
    ),
    (
        {
            "steps": [
                {
                    "action_type": "notify_channel",
                    "action_config": {"channel": "nope", "message": "x"},
                }
            ]
        },
        "unknown_channel",
        "steps.0.action_config.channel",
    ),
    (
        {"steps": [{"action_type": "scrubbing_enable", "action_config": {"integration_id": 42}}]},
        "unknown_integration",
        "steps.0.action_config.integration_id",
    ),
    (
        {
            "steps": [
                {
                    "action_type": "cloudflare_uam",
                    "action_config": {"adapter_id": 42, "zone_id": "z"},
                }
            ]
        },
        "unknown_integration",
        "steps.0.action_config.adapter_id",
    ),
    (
        {
            "steps": [
                {
                    "action_type": "iptables",
                    "action_config": {
                        "action": "apply",
                        "profile_id": "game_server",
                        "rules": [{"cmd": "-A INPUT -j DROP; rm -rf /"}],
                    },
                }
            ]
        },
        "shell_syntax",
        "steps.0.action_config.rules.0.cmd",
    ),
    (
        {"steps": [{"action_type": "webhook", "action_config": {"url": "file:///etc/passwd"}}]},
        "invalid_step",
        "steps.0.action_config.url",
    ),
    (
        {"steps": [{"action_type": "log", "action_config": {"message": "{secret}"}}]},
        "unknown_variable",
        "steps.0.action_config.message",
    ),
    (
        {"trigger_conditions": {"min_severity": "apocalyptic"}},
        "unknown_severity",
        "trigger_conditions.min_severity",
    ),
    (
        {"trigger_conditions": {"attack_family": "smurf"}},
        "unknown_family",
        "trigger_conditions.attack_family",
    ),
]


@pytest.mark.parametrize(("change", "code", "fld"), BAD)
async def test_bad_input_saves_nothing(
    env: Env, change: dict[str, Any], code: str, fld: str
) -> None:
    r = await env("POST", "/runbooks", json=runbook(**change))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert (err["code"], err["field"]) == (code, fld), err
    with env.svc.engine.connect() as conn:
        assert conn.execute(select(runbooks)).all() == []
    # the same bad change on an update leaves the stored runbook as it was
    rid = (await env.ok("POST", "/runbooks", 201, json=runbook()))["runbook"]["id"]
    before = (await env.ok("GET", f"/runbooks/{rid}"))["runbook"]
    r = await env("PATCH", f"/runbooks/{rid}", json=change)
    assert r.status_code == 422 and r.json()["error"]["code"] == code
    assert (await env.ok("GET", f"/runbooks/{rid}"))["runbook"] == before


# ---------------------------------------------------------------- triggering and executing


async def test_incident_triggers_matching_runbooks_once(store_env: Env) -> None:
    env = store_env
    hit = (await env.ok("POST", "/runbooks", 201, json=runbook()))["runbook"]["id"]
    miss_family = (
        await env.ok(
            "POST",
            "/runbooks",
            201,
            json=runbook(trigger_conditions={"attack_family": "syn_flood"}),
        )
    )["runbook"]["id"]
    miss_pps = (
        await env.ok("POST", "/runbooks", 201, json=runbook(trigger_conditions={"min_pps": 1e9}))
    )["runbook"]["id"]
    miss_node = (
        await env.ok(
            "POST", "/runbooks", 201, json=runbook(trigger_conditions={"nodes": ["edge-9"]})
        )
    )["runbook"]["id"]
    # a second engine on the same store (another instance) races for the same events
    other = Automation(env.svc, env.auto.runbooks.jobs)
    await other.start()
    try:
        iid = await env.signal()
        await env.signal(pps=2_500_000)  # the same incident again: no second run
        rows = await env.until(lambda: [e for e in env.executions(hit) if e.status == "succeeded"])
        await env.auto.runbooks.drain()
        await other.runbooks.drain()
        await asyncio.sleep(0.3)
    finally:
        await other.stop()
    assert len(env.executions(hit)) == 1 and rows[0].incident_id == iid
    assert rows[0].trigger == "incident.opened"
    for rid in (miss_family, miss_pps, miss_node):
        assert env.executions(rid) == []
    hist = (await env.ok("GET", f"/runbooks/{hit}/executions"))["executions"]
    assert hist[0]["status"] == "succeeded" and hist[0]["steps"][0]["output"]["message"].startswith(
        "udp_flood 2"
    )
    assert hist[0]["steps"][0]["duration_ms"] is not None
    assert (await env.ok("GET", f"/runbooks/{hit}"))["runbook"]["execution_count"] == 1


async def test_restart_in_a_wait_neither_loses_nor_repeats(store_env: Env) -> None:
    env = store_env
    steps = [
        {
            "action_type": "webhook",
            "action_config": {"url": env.rec.base + "/hook/a", "secret": WEBHOOK_SECRET},
        },
        {"action_type": "wait", "action_config": {"seconds": 1.5}},
        {
            "action_type": "webhook",
            "action_config": {"url": env.rec.base + "/hook/b", "secret": WEBHOOK_SECRET},
        },
    ]
    rid = (await env.ok("POST", "/runbooks", 201, json=runbook(steps=steps)))["runbook"]["id"]
    await env.signal()
    ex = (await env.until(lambda: env.executions(rid)))[0]
    await env.until(lambda: len(env.steps(ex.id)) == 2, what="the wait step to start")
    assert env.steps(ex.id)[1].status == "running"
    began = env.steps(ex.id)[1].started_at
    await env.auto.stop()  # the service goes down in the middle of the wait
    assert env.executions(rid)[0].status == "running"
    fresh = Automation(env.svc, env.auto.runbooks.jobs)
    env.auto = fresh
    await fresh.start()
    done = await env.until(
        lambda: [e for e in env.executions(rid) if e.status != "running"],
        what="the execution to end",
    )
    assert done[0].status == "succeeded", done[0].error
    rows = env.steps(ex.id)
    assert [(r.step_index, r.status) for r in rows] == [
        (0, "succeeded"),
        (1, "succeeded"),
        (2, "succeeded"),
    ]
    assert rows[1].started_at == began  # resumed, not restarted
    assert (rows[1].finished_at - began).total_seconds() >= 1.5
    assert [g.path for g in env.rec.at("/hook")] == ["/hook/a", "/hook/b"]  # each once
    assert env.rec.errors == []


async def test_side_effect_step_cut_off_is_marked_interrupted(env: Env) -> None:
    rid = (
        await env.ok(
            "POST",
            "/runbooks",
            201,
            json=runbook(
                steps=[
                    {
                        "action_type": "webhook",
                        "action_config": {
                            "url": env.rec.base + "/hook/x",
                            "secret": WEBHOOK_SECRET,
                        },
                    }
                ]
            ),
        )
    )["runbook"]["id"]
    eng = env.auto.runbooks
    # an execution whose webhook step started but whose result never got committed (crash)
    with env.svc.engine.connect() as conn:
        row = conn.execute(select(runbooks).where(runbooks.c.id == rid)).one()
    eid = eng._new_execution(
        row, incident_id=None, trigger="incident.opened", mode="live", ctx={}, event_id=None
    )
    assert eid is not None
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import insert, update

    with env.svc.engine.begin() as conn:
        conn.execute(
            insert(runbook_step_results).values(
                execution_id=eid,
                step_index=0,
                action_type="webhook",
                status="running",
                started_at=datetime.now(UTC),
            )
        )
        conn.execute(
            update(runbook_executions)
            .where(runbook_executions.c.id == eid)
            .values(lease_until=datetime.now(UTC) - timedelta(seconds=5))
        )
    await env.until(lambda: env.executions(rid)[0].status != "running")
    assert env.executions(rid)[0].status == "interrupted"
    assert env.steps(eid)[0].status == "interrupted"
    await asyncio.sleep(0.3)
    assert env.rec.at("/hook") == []  # never sent a second time


async def test_test_run_plans_side_effects_unless_asked(env: Env) -> None:
    steps = [
        {
            "action_type": "condition",
            "action_config": {"expression": 'pps > 1e6 and attack_family == "udp_flood"'},
        },
        {
            "action_type": "webhook",
            "action_config": {
                "url": env.rec.base + "/hook/t",
                "secret": WEBHOOK_SECRET,
                "body": '{{"t": "{target_ip}"}}',
            },
        },
        {"action_type": "wait", "action_config": {"seconds": 600}},
        {"action_type": "condition", "action_config": {"expression": "severity == 'critical'"}},
        {"action_type": "log", "action_config": {"message": "never"}},
    ]
    rid = (await env.ok("POST", "/runbooks", 201, json=runbook(steps=steps)))["runbook"]["id"]
    dry = (await env.ok("POST", f"/runbooks/{rid}/test", json={}))["execution"]
    assert dry["mode"] == "dry_run" and dry["status"] == "succeeded"
    st = [(s["action_type"], s["status"]) for s in dry["steps"]]
    assert st == [
        ("condition", "succeeded"),
        ("webhook", "planned"),
        ("wait", "planned"),
        ("condition", "succeeded"),
        ("log", "skipped"),
    ]
    assert dry["steps"][1]["output"]["body"] == '{"t": "192.0.2.10"}'
    assert env.rec.at("/hook") == []
    # with execute the webhook really goes out (signed), shorter wait
    steps[2] = {"action_type": "wait", "action_config": {"seconds": 0.1}}
    await env.ok("PATCH", f"/runbooks/{rid}", json={"steps": steps})
    run = (await env.ok("POST", f"/runbooks/{rid}/test", json={"execute": True}))["execution"]
    got = await env.rec.wait("/hook/t")
    assert got[0].body == {"t": "192.0.2.10"}
    await env.until(lambda: env.execution_status(run["id"]) == "succeeded")
    assert env.rec.errors == []
    r = await env("POST", f"/runbooks/{rid}/test", json={"node": "no-such-node"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_node"


async def test_failing_step_stops_unless_continue_and_timeouts(env: Env) -> None:
    steps = [
        {
            "action_type": "webhook",
            "action_config": {"url": env.rec.base + "/fail"},
            "continue_on_failure": True,
        },
        {"action_type": "wait", "action_config": {"seconds": 5}, "timeout_seconds": 0.2},
        {"action_type": "log", "action_config": {"message": "not reached"}},
    ]
    rid = (await env.ok("POST", "/runbooks", 201, json=runbook(steps=steps)))["runbook"]["id"]
    run = (await env.ok("POST", f"/runbooks/{rid}/test", json={"execute": True}))["execution"]
    await env.until(lambda: env.execution_status(run["id"]) == "failed")
    rows = env.steps(run["id"])
    assert [r.status for r in rows] == ["failed", "failed"]
    assert "HTTP 503" in rows[0].error and "timed out" in rows[1].error


async def test_iptables_and_notify_steps_on_the_incident_node(env: Env) -> None:
    """The firewall step becomes an agent job for the incident's node (the node answers
    through the job channel's agent side); the notify step reaches a real channel."""
    from orchestrator.nodes import NodeRegistry

    node, _ = NodeRegistry(env.svc.engine, env.svc.audit).register(
        name="edge-1", ip="198.51.100.1", location=None, os=None, interface="eth0", actor="t"
    )
    await env.ok(
        "POST",
        "/channels",
        201,
        json={
            "name": "ops",
            "channel_type": "discord",
            "secrets": {"webhook_url": env.rec.base + "/discord"},
        },
    )
    steps = [
        {
            "action_type": "iptables",
            "action_config": {
                "action": "apply",
                "profile_id": "game_server",
                "rules": [{"cmd": "-A INPUT -p udp --dport 27015 -j DROP", "title": "srcds"}],
            },
        },
        {
            "action_type": "notify_channel",
            "action_config": {
                "channel": "ops",
                "message": "{attack_family} on {target_ip} at {node}",
            },
        },
        {"action_type": "iptables", "action_config": {"action": "remove"}},
    ]
    rid = (await env.ok("POST", "/runbooks", 201, json=runbook(steps=steps)))["runbook"]["id"]
    jobs = env.auto.runbooks.jobs
    await env.signal(node="edge-1")
    for expect in ("firewall.apply", "firewall.remove"):
        taken = await env.until(lambda: jobs.take(node["id"]), what=f"the {expect} job")
        assert [j["kind"] for j in taken] == [expect]
        if expect == "firewall.apply":
            payload = taken[0]["payload"]
            assert payload["profile_id"] == "game_server" and payload["suite"] == "iptables"
            assert payload["rules"][0]["cmd"] == "-p udp --dport 27015 -j DROP"  # normalised
        jobs.report(node["id"], taken[0]["id"], status="succeeded", detail="applied", output=None)
    ex = (await env.until(lambda: [e for e in env.executions(rid) if e.status != "running"]))[0]
    assert ex.status == "succeeded", ex.error
    msgs = [g.body["content"] for g in env.rec.at("/discord")]  # + the channel's own alert
    assert sum("udp_flood on 203.0.113.20 at edge-1" in m for m in msgs) == 1
    outs = [s.output for s in env.steps(ex.id)]
    assert outs[0]["node_id"] == node["id"] and outs[0]["result"]["status"] == "succeeded"


async def test_scrubbing_and_cloudflare_uam_steps_against_the_cloudflare_fake(env: Env) -> None:
    """``scrubbing_enable`` creates a scrubbing rule through the rule path (the provider
    advertises the prefix); ``cloudflare_uam`` sets the zone's security level."""
    from labs.vendors.cloudflare import CloudflareServer

    fast = {"timeout": 2.0, "retries": 1, "backoff": 0.0}
    with CloudflareServer(prefixes={"pfx1": "203.0.113.0/24"}, zones=("zone1",)) as srv:
        sid = (
            await env.ok(
                "POST",
                "/scrubbing",
                201,
                json={
                    "type": "cloudflare_magic_transit",
                    "name": "mt",
                    "endpoint": srv.url,
                    "auth_token": "cf-test-token",
                    "config": {
                        **fast,
                        "account_id": "acc1",
                        "prefixes": [{"prefix": "203.0.113.0/24", "prefix_id": "pfx1"}],
                    },
                },
            )
        )["integration"]["id"]
        cf = (
            await env.ok(
                "POST",
                "/mitigation/adapters",
                201,
                json={
                    "adapter_type": "cloudflare",
                    "name": "cf-zone",
                    "endpoint": srv.url,
                    "auth_token": "cf-test-token",
                    "config": {
                        **fast,
                        "account_id": "acc1",
                        "prefixes": [{"prefix": "203.0.113.0/24", "prefix_id": "pfx1"}],
                        "zones": [{"zone_id": "zone1"}],
                    },
                },
            )
        )["adapter"]["id"]
        steps = [
            {
                "action_type": "scrubbing_enable",
                "action_config": {"integration_id": sid, "ttl": 600},
            },
            {
                "action_type": "cloudflare_uam",
                "action_config": {"adapter_id": cf, "zone_id": "zone1"},
            },
        ]
        rid = (await env.ok("POST", "/runbooks", 201, json=runbook(steps=steps)))["runbook"]["id"]
        await env.signal()
        ex = (await env.until(lambda: [e for e in env.executions(rid) if e.status != "running"]))[0]
        assert ex.status == "succeeded", ex.error
        assert srv.prefixes["pfx1"]["advertised"] is True
        assert srv.zones["zone1"]["value"] == "under_attack"
        rows = env.steps(ex.id)
        assert rows[1].output["security_level"] == "under_attack"
        # the scrubbing rule is an ordinary rule, origin manual, made by the execution
        rules = (await env.ok("GET", "/mitigation/rules"))["rules"]
        scrub = [r for r in rules if r["intent_type"] == "scrubbing"]
        assert len(scrub) == 1 and scrub[0]["adapter_id"] == sid
        assert scrub[0]["state"] == "active" and scrub[0]["ttl"] == 600
        assert scrub[0]["created_by"] == f"runbook-exec:{ex.id}"
