"""A speaker is killed (SIGKILL) and returns under a running service; nothing is called by
the test. For every BGP speaker adapter: gobgp, exabgp, bird2 and frr.

The service watches the speaker's sessions (GoBGP's event stream, ExaBGP's neighbour
messages through the bridge, BIRD's and FRR's 1 s polls). When the speaker is killed, the
adapter's status turns ``disconnected`` and its rules ``suspended`` (kept, on no wire);
they stay suspended, not failed nor withdrawn, while it is
down. When it is started again with an empty RIB, the session comes up, the service
reconciles the adapter at once, the routes are back in the receiver's RIB and the rules
``active``. A bare :class:`Service` runs no periodic reconciliation (that is the
scheduler's job), so without the session watch none of this would happen here.

An empty RIB for every speaker: gobgpd and ExaBGP hold routes in memory only, the lab's
FRR writes a fresh config at start, and BIRD's include file (BIRD's copy of what Sluice
gave it, which it re-reads at start) is emptied while BIRD is down, so the routes' return
is Sluice's work for all four.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from labs.bird import BirdNode
from labs.exabgp import ExaBgpSpeaker
from labs.gobgp import GoBgpSpeaker
from labs.peers import crash
from labs.topology import BirdSpeaker, FrrSpeaker, Topology, running
from orchestrator.service import RuleRequest, Service
from policies.intents import build_intent
from policies.schema import GlobalSettings, Policy
from tests.integration.conftest import RECEIVER_BINARIES, require_lab
from tests.integration.test_gobgp_service import lab_service

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.slow]

SPEAKERS: dict[str, tuple[Callable[[], Any], tuple[str, ...]]] = {
    "gobgp": (GoBgpSpeaker, ("gobgpd", "gobgp")),
    "exabgp": (ExaBgpSpeaker, ("exabgp",)),
    "bird2": (BirdSpeaker, ()),
    "frr": (FrrSpeaker, ()),
}
PREFIXES = ("203.0.113.77/32", "203.0.113.78/32", "203.0.113.79/32")
# A failure deadline, not a speed claim: the target (a dead speaker shown within
# 2 s of its death) is measured by tests/bench/bench_recovery.py. Nothing but the session
# watch can get there here (a bare Service runs no periodic reconciliation), so a generous
# deadline keeps the test meaningful on a loaded machine.
DEAD_DEADLINE_S = 30.0


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
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def status(svc: Service, adapter_id: int) -> str:
    return str(svc.hub.get(adapter_id).to_api()["status"])


def states(svc: Service, ids: list[int]) -> set[str]:
    return {str(svc.get_rule(i, events=False)["state"]) for i in ids}


async def test_speaker_killed_and_back_without_any_call(topo: Topology, tmp_path: Path) -> None:
    bird = topo.receivers["bird"]
    node: Any = topo.speaker
    policy = Policy(settings=GlobalSettings(cooldown_seconds=0, default_ttl=0))
    async with lab_service(topo, tmp_path, policy) as (svc, aid):
        ids = []
        for prefix in PREFIXES:
            res = await svc.create_rule(
                RuleRequest(
                    build_intent({"kind": "blackhole", "prefix": prefix}), aid, ttl=0, reason="t"
                )
            )
            ids.append(int(res.rule["id"]))
        await svc.dispatcher.drain(30)
        await until(lambda: set(PREFIXES) <= bird.prefixes(4), 30, "routes in BIRD")
        await until(lambda: states(svc, ids) == {"active"}, 30, "rules active")
        await until(lambda: status(svc, aid) == "connected", 30, "adapter connected")

        await asyncio.to_thread(crash, node)  # kill -9
        # counted from the daemons' death: status and rules tell (the time is printed)
        took = await until(
            lambda: status(svc, aid) == "disconnected" and states(svc, ids) == {"suspended"},
            DEAD_DEADLINE_S,
            "status disconnected and every rule suspended",
        )
        print(f"disconnected and rules suspended {took:.2f} s after the kill")
        health = svc.hub.get(aid).health or {}
        assert "no BGP session established" in str(health.get("detail")), health
        view = svc.get_rule(ids[0])
        assert view["on_the_wire"] is False and view["off_the_wire"], view
        assert view["events"][-1]["event"] == "suspended", view["events"]
        assert svc.list_active(adapter_id=aid, state="suspended")[1] == len(ids)
        await until(lambda: not set(PREFIXES) & bird.prefixes(4), 60, "routes gone with it")
        # while it is down the rules stay suspended (kept, not failed, not withdrawn)
        assert states(svc, ids) == {"suspended"}
        if isinstance(node, BirdNode):
            include = Path(node.adapter_config("lab")["config"]["include_file"])
            await asyncio.to_thread(include.write_text, "")  # BIRD restarts holding nothing

        started = time.monotonic()
        await asyncio.to_thread(node.start)
        await until(lambda: status(svc, aid) == "connected", 60, "session back")
        back = await until(
            lambda: set(PREFIXES) <= bird.prefixes(4), 60, "routes back without any call"
        )
        await until(lambda: states(svc, ids) == {"active"}, 30, "rules active again")
        print(
            f"routes back in BIRD {time.monotonic() - started:.2f} s after the restart "
            f"({back:.2f} s after the session was seen up)"
        )
        assert svc.get_rule(ids[0])["on_the_wire"] is True
        for rid in ids:
            await svc.withdraw_rule(rid, actor="test", reason="done")
        await svc.dispatcher.drain(30)
        await until(lambda: not set(PREFIXES) & bird.prefixes(4), 30, "withdrawn")
