"""The whole path with real ExaBGP: service -> dispatcher -> exabgp adapter -> bridge -> BIRD.

Same scenario as test_gobgp_service.py: announce, survive a speaker restart through
reconciliation, expire on TTL, withdraw.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from labs.exabgp import ExaBgpSpeaker
from labs.netns import wait_for
from labs.topology import Topology, running
from orchestrator.service import RuleRequest
from policies.intents import build_intent
from policies.schema import GlobalSettings, Policy
from tests.integration.conftest import RECEIVER_BINARIES, require_lab
from tests.integration.test_gobgp_lab import CASES
from tests.integration.test_gobgp_service import lab_service, service_round_trip, state_of

pytestmark = [pytest.mark.root, pytest.mark.lab]


@pytest.fixture(scope="module")
def exabgp_topology() -> Iterator[Topology]:
    require_lab("exabgp", *RECEIVER_BINARIES)
    with running(ExaBgpSpeaker(), receivers=("bird",)) as topo:
        yield topo


def test_rule_lifecycle_through_exabgp(exabgp_topology: Topology, tmp_path: Path) -> None:
    asyncio.run(service_round_trip(exabgp_topology, tmp_path))


async def pinned_rule_round_trip(topo: Topology, data_dir: Path) -> None:
    """A rule pinned to a peer ExaBGP has a session with is active and in that peer's RIB;
    one pinned to a peer it does not know stays failed and says so."""
    bird = topo.receivers["bird"]
    bird_v4 = bird.neighbors[0].address
    policy = Policy(settings=GlobalSettings(cooldown_seconds=0, default_ttl=0))
    async with lab_service(topo, data_dir, policy) as (svc, aid):
        intent = {**CASES["blackhole-v4"], "peers": [bird_v4]}
        pinned = await svc.create_rule(RuleRequest(build_intent(intent), aid, reason="t"))
        stray = {**CASES["blackhole-v4"], "prefix": "203.0.113.2", "peers": ["192.0.2.99"]}
        lost = await svc.create_rule(RuleRequest(build_intent(stray), aid, reason="t"))
        await svc.dispatcher.drain(30)
        assert state_of(svc, pinned.rule["id"]) == "active"
        wait_for(lambda: "203.0.113.1/32" in bird.prefixes(4), timeout=15, what="route in BIRD")
        rule = svc.get_rule(lost.rule["id"], events=False)
        assert rule["state"] == "failed", rule
        await svc.withdraw_rule(pinned.rule["id"], actor="test", reason="done")
        await svc.withdraw_rule(lost.rule["id"], actor="test", reason="done")
        await svc.dispatcher.drain(30)
        wait_for(lambda: "203.0.113.1/32" not in bird.prefixes(4), timeout=15, what="withdrawn")


def test_rule_pinned_to_a_peer(exabgp_topology: Topology, tmp_path: Path) -> None:
    asyncio.run(pinned_rule_round_trip(exabgp_topology, tmp_path))
