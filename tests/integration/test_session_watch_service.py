"""A speaker dies and returns under a running service; nothing is called by the test.

The service watches the speaker's sessions (GoBGP's event stream, BIRD's 1 s poll): when
the speaker is killed its status turns ``disconnected`` within seconds, and when it is
started again the session comes up, the service reconciles the adapter at once and the
route is back in the receiver's RIB. A bare :class:`Service` runs no periodic
reconciliation (that is the scheduler's job), so without the session watch the GoBGP
route (gobgpd forgets its RIB when killed) would not come back at all here, nor would the
status change. BIRD re-reads its include file when it starts, so for bird2 the route's
return shows the speaker's own persistence and the status part is the watch's work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from labs.gobgp import GoBgpSpeaker
from labs.topology import BirdSpeaker, Topology, running
from orchestrator.service import RuleRequest, Service
from policies.intents import build_intent
from policies.schema import GlobalSettings, Policy
from tests.integration.conftest import RECEIVER_BINARIES, require_lab
from tests.integration.test_gobgp_service import lab_service, state_of

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.slow]

SPEAKERS: dict[str, tuple[Callable[[], Any], tuple[str, ...]]] = {
    "gobgp": (GoBgpSpeaker, ("gobgpd", "gobgp")),
    "bird2": (BirdSpeaker, ()),
}
PREFIX = "203.0.113.77/32"


@pytest.fixture(scope="module", params=sorted(SPEAKERS))
def topo(request: pytest.FixtureRequest) -> Iterator[Topology]:
    make, binaries = SPEAKERS[request.param]
    require_lab(*binaries, *RECEIVER_BINARIES)
    with running(make(), receivers=("bird",)) as t:
        t.wait_established(60)
        yield t


async def until(check: Callable[[], bool], seconds: float, what: str) -> float:
    """Wait (without blocking the service's loop) until ``check()``; the time it took."""
    start = time.monotonic()
    while not await asyncio.to_thread(check):
        if time.monotonic() - start > seconds:
            raise AssertionError(f"{what}: not within {seconds} s")
        await asyncio.sleep(0.1)
    return time.monotonic() - start


def status(svc: Service, adapter_id: int) -> str:
    return str(svc.hub.get(adapter_id).to_api()["status"])


async def test_speaker_death_and_return_without_any_call(topo: Topology, tmp_path: Path) -> None:
    bird = topo.receivers["bird"]
    node: Any = topo.speaker
    policy = Policy(settings=GlobalSettings(cooldown_seconds=0, default_ttl=0))
    async with lab_service(topo, tmp_path, policy) as (svc, aid):
        res = await svc.create_rule(
            RuleRequest(
                build_intent({"kind": "blackhole", "prefix": PREFIX}), aid, ttl=0, reason="t"
            )
        )
        rule_id = res.rule["id"]
        await svc.dispatcher.drain(30)
        assert state_of(svc, rule_id) == "active"
        await until(lambda: PREFIX in bird.prefixes(4), 30, "route in BIRD")
        await until(lambda: status(svc, aid) == "connected", 10, "adapter connected")

        await asyncio.to_thread(node.process.stop, 0.0)  # kill -9
        took = await until(lambda: status(svc, aid) == "disconnected", 10, "status shows the death")
        print(f"status disconnected {took:.2f} s after the kill")
        health = svc.hub.get(aid).health or {}
        assert "no BGP session established" in str(health.get("detail")), health
        await until(lambda: PREFIX not in bird.prefixes(4), 60, "route gone with the speaker")

        started = time.monotonic()
        await asyncio.to_thread(node.start)
        await until(lambda: status(svc, aid) == "connected", 60, "session back")
        back = await until(lambda: PREFIX in bird.prefixes(4), 60, "route back without any call")
        print(
            f"route back in BIRD {time.monotonic() - started:.2f} s after the restart "
            f"({back:.2f} s after the session was seen up)"
        )
        assert state_of(svc, rule_id) == "active"
        await svc.withdraw_rule(rule_id, actor="test", reason="done")
        await svc.dispatcher.drain(30)
        await until(lambda: PREFIX not in bird.prefixes(4), 30, "withdrawn")
