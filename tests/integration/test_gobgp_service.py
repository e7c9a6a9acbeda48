"""The whole path with a real gobgpd: service -> dispatcher -> gobgp adapter -> BIRD.

A rule is announced, survives a speaker restart (the session watch reconciles when the
session is up: read-back says the routes are missing, so they are re-announced), expires
on its TTL and is withdrawn.
``service_round_trip`` is shared with test_exabgp_service.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from adapters.base import AdapterConfig
from labs.gobgp import ESTABLISHED, GoBgpNode, GoBgpSpeaker
from labs.netns import wait_for
from labs.topology import Topology, running
from orchestrator.service import RuleRequest, Service
from orchestrator.settings import Settings
from policies.guardrails import Guardrails
from policies.intents import build_intent
from policies.schema import GlobalSettings, Policy
from tests.integration.conftest import RECEIVER_BINARIES, require_lab
from tests.integration.test_gobgp_lab import CASES, flow

pytestmark = [pytest.mark.root, pytest.mark.lab]


def state_of(svc: Service, rule_id: int) -> str:
    return str(svc.get_rule(rule_id, events=False)["state"])


@asynccontextmanager
async def lab_service(
    topo: Topology, data_dir: Path, policy: Policy, **settings: Any
) -> AsyncIterator[tuple[Service, int]]:
    """A started service on ``data_dir`` with the lab speaker as its adapter: (service, id)."""
    # the speaker's socket is in the lab directory: the service allows it explicitly
    settings.setdefault("adapter_dirs", topo.access.allowed_dirs)
    svc = Service(Settings(data_dir=data_dir, api_wait_seconds=5, **settings), policy=policy)
    await svc.start()
    try:
        rec, _ = await svc.upsert_adapter(
            AdapterConfig(**topo.speaker.adapter_config("lab")), adapter_id=None, actor="test"
        )
        yield svc, rec["id"]
    finally:
        await svc.stop()


async def service_round_trip(topo: Topology, data_dir: Path) -> None:
    bird = topo.receivers["bird"]
    policy = Policy(
        settings=GlobalSettings(cooldown_seconds=0, default_ttl=0),
        guardrails=Guardrails(
            max_active_rules=100, max_new_rules_per_minute=100, flowspec_budget_per_adapter=100
        ),
    )
    async with lab_service(topo, data_dir, policy) as (svc, aid):
        short = await svc.create_rule(
            RuleRequest(build_intent(CASES["blackhole-v4"]), aid, ttl=4, reason="test")
        )
        lasting = await svc.create_rule(
            RuleRequest(build_intent(CASES["flowspec-v4"]), aid, ttl=0, reason="test")
        )
        bh_id, fs_id = short.rule["id"], lasting.rule["id"]
        await svc.dispatcher.drain(30)
        assert state_of(svc, bh_id) == "active"
        assert state_of(svc, fs_id) == "active"
        wait_for(
            lambda: (
                "203.0.113.1/32" in bird.prefixes(4) and flow(bird, "203.0.113.5/32", 4) is not None
            ),
            timeout=15,
            what="both rules in BIRD",
        )

        await asyncio.to_thread(topo.speaker.restart)
        await asyncio.to_thread(topo.speaker.wait_established, None, 30)
        # the service's session watch reconciles as soon as a session is up: no call here
        # (waited for in a thread, so the service's loop keeps running)
        await asyncio.to_thread(
            wait_for,
            lambda: (
                "203.0.113.1/32" in bird.prefixes(4) and flow(bird, "203.0.113.5/32", 4) is not None
            ),
            timeout=30,
            what="both rules back in BIRD after the session came up",
        )
        report = await svc.reconcile(aid)
        assert report.readback and report.missing == 0, report

        deadline = time.monotonic() + 15
        while state_of(svc, bh_id) != "expired" and time.monotonic() < deadline:
            await svc.expire_due()
            await svc.dispatcher.drain(30)
            await asyncio.sleep(0.2)
        assert state_of(svc, bh_id) == "expired"
        wait_for(lambda: "203.0.113.1/32" not in bird.prefixes(4), timeout=15, what="expired")
        assert flow(bird, "203.0.113.5/32", 4) is not None

        await svc.withdraw_rule(fs_id, actor="test", reason="done")
        await svc.dispatcher.drain(30)
        assert state_of(svc, fs_id) == "withdrawn"
        wait_for(lambda: not bird.flows(4), timeout=15, what="flow withdrawn")


@pytest.fixture(scope="module")
def gobgp_topology() -> Iterator[Topology]:
    require_lab("gobgpd", "gobgp", *RECEIVER_BINARIES)
    with running(GoBgpSpeaker(), receivers=("bird",)) as topo:
        yield topo


def test_rule_lifecycle_through_gobgp(gobgp_topology: Topology, tmp_path: Path) -> None:
    asyncio.run(service_round_trip(gobgp_topology, tmp_path))


async def sessions_down_round_trip(topo: Topology, data_dir: Path) -> None:
    """With every session down a rule is not active; it becomes active once one is up."""
    speaker = topo.speaker
    assert isinstance(speaker, GoBgpNode)
    bird = topo.receivers["bird"]
    policy = Policy(settings=GlobalSettings(cooldown_seconds=0, default_ttl=0))
    neighbors = [nb.address for nb in speaker.spec.neighbors]
    service = lab_service(topo, data_dir, policy, retry_base=0.2, retry_max=0.5)
    try:
        async with service as (svc, aid):
            for address in neighbors:
                assert speaker.gobgp("neighbor", address, "disable").returncode == 0
            wait_for(
                lambda: not any(s == ESTABLISHED for s in speaker.sessions().values()),
                timeout=15,
                what="every gobgpd session down",
            )
            res = await svc.create_rule(
                RuleRequest(build_intent(CASES["blackhole-v4"]), aid, ttl=0, reason="test")
            )
            rule_id = res.rule["id"]
            await svc.dispatcher.drain(30)
            rule = svc.get_rule(rule_id, events=False)
            assert rule["state"] == "failed", rule
            assert "no BGP session is established" in rule["error"], rule["error"]
            assert "not on the wire" in rule["error"]

            for address in neighbors:
                assert speaker.gobgp("neighbor", address, "enable").returncode == 0
            await asyncio.to_thread(speaker.wait_established, None, 30)
            wait_for(lambda: "203.0.113.1/32" in bird.prefixes(4), timeout=15, what="route in BIRD")
            deadline = time.monotonic() + 15
            while state_of(svc, rule_id) != "active" and time.monotonic() < deadline:
                await svc.retry_due()
                await svc.dispatcher.drain(30)
                await asyncio.sleep(0.2)
            assert state_of(svc, rule_id) == "active"
            await svc.withdraw_rule(rule_id, actor="test", reason="done")
            await svc.dispatcher.drain(30)
            wait_for(lambda: "203.0.113.1/32" not in bird.prefixes(4), timeout=15, what="withdrawn")
    finally:
        for address in neighbors:
            speaker.gobgp("neighbor", address, "enable")


def test_no_established_session_means_not_active(gobgp_topology: Topology, tmp_path: Path) -> None:
    asyncio.run(sessions_down_round_trip(gobgp_topology, tmp_path))


async def retries_exhausted_round_trip(topo: Topology, data_dir: Path) -> None:
    """Sessions down past the retry budget, then back: the rule becomes active and stays.

    gobgpd keeps the route in its RIB while no session is up and sends it when one comes
    back; reconciliation sees it held with a session established and confirms the rule
    (it used to stay ``failed`` for good while its route was on the wire).
    """
    speaker = topo.speaker
    assert isinstance(speaker, GoBgpNode)
    bird = topo.receivers["bird"]
    policy = Policy(settings=GlobalSettings(cooldown_seconds=0, default_ttl=0))
    neighbors = [nb.address for nb in speaker.spec.neighbors]
    service = lab_service(topo, data_dir, policy, retry_base=0.2, retry_max=0.5, max_attempts=3)
    try:
        async with service as (svc, aid):
            for address in neighbors:
                assert speaker.gobgp("neighbor", address, "disable").returncode == 0
            wait_for(
                lambda: not any(s == ESTABLISHED for s in speaker.sessions().values()),
                timeout=15,
                what="every gobgpd session down",
            )
            res = await svc.create_rule(
                RuleRequest(build_intent(CASES["blackhole-v4"]), aid, ttl=0, reason="test")
            )
            rule_id = res.rule["id"]
            # retry until the budget is spent (counted by attempts, not by time)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                await svc.retry_due()
                await svc.dispatcher.drain(30)
                rule = svc.get_rule(rule_id, events=False)
                if rule["state"] == "failed" and rule["next_attempt_at"] is None:
                    break
                await asyncio.sleep(0.2)
            rule = svc.get_rule(rule_id, events=False)
            assert rule["state"] == "failed" and rule["next_attempt_at"] is None, rule
            assert rule["attempts"] == 3, rule
            assert "not on the wire" in rule["error"], rule
            report = await svc.reconcile(aid)  # still down: nothing changes, nothing removed
            await svc.dispatcher.drain(30)
            assert report.orphans == 0, report
            assert state_of(svc, rule_id) == "failed"

            for address in neighbors:
                assert speaker.gobgp("neighbor", address, "enable").returncode == 0
            await asyncio.to_thread(speaker.wait_established, None, 30)
            wait_for(lambda: "203.0.113.1/32" in bird.prefixes(4), timeout=15, what="route in BIRD")
            deadline = time.monotonic() + 15
            while state_of(svc, rule_id) != "active" and time.monotonic() < deadline:
                await svc.reconcile(aid)
                await svc.dispatcher.drain(30)
                await asyncio.sleep(0.2)
            rule = svc.get_rule(rule_id)
            assert rule["state"] == "active", rule
            assert rule["error"] is None
            assert "confirmed by read-back" in (rule["events"][-1]["detail"] or "")

            # it stays: further reconciliations and expiry runs leave it and its route alone
            for _ in range(2):
                report = await svc.reconcile(aid)
                await svc.expire_due()
                await svc.dispatcher.drain(30)
                assert (report.orphans, report.missing) == (0, 0), report
            assert state_of(svc, rule_id) == "active"
            assert "203.0.113.1/32" in bird.prefixes(4)

            await svc.withdraw_rule(rule_id, actor="test", reason="done")
            await svc.dispatcher.drain(30)
            wait_for(lambda: "203.0.113.1/32" not in bird.prefixes(4), timeout=15, what="withdrawn")
    finally:
        for address in neighbors:
            speaker.gobgp("neighbor", address, "enable")


def test_retries_exhausted_rule_becomes_active_when_sessions_return(
    gobgp_topology: Topology, tmp_path: Path
) -> None:
    asyncio.run(retries_exhausted_round_trip(gobgp_topology, tmp_path))
