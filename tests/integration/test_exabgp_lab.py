"""The exabgp adapter against real ExaBGP 4.2 (running our bridge) peered with BIRD and FRR."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator

import pytest

from adapters.base import RuleRef
from labs.exabgp import ExaBgpNode, ExaBgpSpeaker
from labs.netns import wait_for
from labs.topology import Topology, running
from policies.intents import build_intent
from tests.integration.conftest import RECEIVER_BINARIES, require_lab
from tests.integration.test_gobgp_lab import (
    CASES,
    _check,
    check_actions,
    check_case,
    check_restart,
    check_unreachable,
    make_adapter,
    once,
    read_back,
    run,
)

pytestmark = [pytest.mark.root, pytest.mark.lab]

HTTP = "127.0.0.1:5000"
TOKEN = "lab-token-not-secret"


@pytest.fixture(scope="module")
def exabgp_topology() -> Iterator[Topology]:
    require_lab("exabgp", *RECEIVER_BINARIES)
    with running(ExaBgpSpeaker(http=HTTP, token=TOKEN)) as topo:
        yield topo


def node_of(topo: Topology) -> ExaBgpNode:
    node = topo.speaker
    assert isinstance(node, ExaBgpNode)
    return node


@pytest.mark.parametrize("receiver", ["bird", "frr"])
@pytest.mark.parametrize("case", list(CASES))
def test_announce_reaches_receiver_and_withdraw_removes_it(
    exabgp_topology: Topology, case: str, receiver: str
) -> None:
    check_case(exabgp_topology, receiver, case)


def test_every_action_reaches_both_receivers(exabgp_topology: Topology) -> None:
    check_actions(
        exabgp_topology,
        {
            "discard": {"type": "discard"},
            "rate-limit 9600": {"type": "rate-limit", "bytes_per_second": 9600},
            "redirect 64500:100": {"type": "redirect", "route_target": "64500:100"},
            "redirect 4200000000:7": {"type": "redirect", "route_target": "4200000000:7"},
            "mark 10": {"type": "mark", "dscp": 10},
        },
    )


def test_check_reports_sessions(exabgp_topology: Topology) -> None:
    health = run(_check(make_adapter(exabgp_topology)))
    assert health.ok, health.detail
    assert set(health.sessions.values()) == {"established"}
    assert len(health.sessions) == 4


def test_per_peer_blackhole_reaches_only_that_peer(exabgp_topology: Topology) -> None:
    bird, frr = exabgp_topology.receivers["bird"], exabgp_topology.receivers["frr"]
    bird_v4 = bird.neighbors[0].address
    ref = RuleRef(1, build_intent({**CASES["blackhole-v4"], "peers": [bird_v4]}))
    assert run(once(make_adapter(exabgp_topology), "announce", [ref]))[0].ok
    wait_for(lambda: "203.0.113.1/32" in bird.prefixes(4), timeout=15, what="route in BIRD")
    assert "203.0.113.1/32" not in frr.prefixes(4)
    assert run(read_back(make_adapter(exabgp_topology))) == {ref.key}
    assert run(once(make_adapter(exabgp_topology), "withdraw", [ref]))[0].ok
    wait_for(lambda: "203.0.113.1/32" not in bird.prefixes(4), timeout=15, what="route gone")


def test_done_but_not_in_rib_is_not_active(exabgp_topology: Topology) -> None:
    """ExaBGP answers done for an IPv6 route aimed at an IPv4-only session, then holds it
    for no one: read-back checks ExaBGP's adj-rib-out and does not count it."""
    bird_v4 = exabgp_topology.receivers["bird"].neighbors[0].address
    orphan = RuleRef(1, build_intent({**CASES["blackhole-v6"], "peers": [bird_v4]}))
    normal = RuleRef(2, build_intent(CASES["blackhole-v4"]))
    outcomes = run(once(make_adapter(exabgp_topology), "announce", [orphan, normal]))
    assert [o.ok for o in outcomes] == [True, True]
    assert run(read_back(make_adapter(exabgp_topology))) == {normal.key}
    unverified = make_adapter(exabgp_topology, verify_rib=False)
    assert run(read_back(unverified)) == {orphan.key, normal.key}
    assert all(o.ok for o in run(once(make_adapter(exabgp_topology), "withdraw", [orphan, normal])))
    assert run(read_back(make_adapter(exabgp_topology, verify_rib=False))) == frozenset()


def test_refusals_are_not_retryable(exabgp_topology: Topology) -> None:
    unknown_peer = RuleRef(1, build_intent({**CASES["blackhole-v4"], "peers": ["192.0.2.99"]}))
    ip_target = RuleRef(
        2,
        build_intent(
            {
                "kind": "flowspec",
                "destination": "203.0.113.5",
                "action": {"type": "redirect", "route_target": "192.0.2.9:5"},
            }
        ),
    )
    fine = RuleRef(3, build_intent(CASES["blackhole-v6"]))
    outcomes = run(once(make_adapter(exabgp_topology), "announce", [unknown_peer, ip_target, fine]))
    assert [o.ok for o in outcomes] == [False, False, True]
    assert not outcomes[0].retryable
    assert "ExaBGP answered error to: neighbor 192.0.2.99 announce route" in (
        outcomes[0].error or ""
    )
    assert not outcomes[1].retryable
    assert run(read_back(make_adapter(exabgp_topology))) == {fine.key}
    assert run(once(make_adapter(exabgp_topology), "withdraw", [fine]))[0].ok


def test_grouped_blackholes_reach_bird(exabgp_topology: Topology) -> None:
    refs = [
        RuleRef(n, build_intent({"kind": "blackhole", "prefix": f"198.51.100.{n}"}))
        for n in range(1, 251)
    ]
    bird = exabgp_topology.receivers["bird"]
    assert all(o.ok for o in run(once(make_adapter(exabgp_topology), "announce", refs)))
    wait_for(lambda: len(bird.prefixes(4)) == 250, timeout=20, what="250 routes in BIRD")
    assert run(read_back(make_adapter(exabgp_topology))) == {r.key for r in refs}
    assert all(o.ok for o in run(once(make_adapter(exabgp_topology), "withdraw", refs)))
    wait_for(lambda: not bird.prefixes(4), timeout=20, what="BIRD empty")


HTTP_CLIENT = """
import asyncio, json, sys
from pydantic import SecretStr
from adapters.access import HostAccess
from adapters.base import AdapterConfig, RuleRef
from adapters.egress import EgressPolicy
from adapters.exabgp import ExaBgpAdapter
from policies.intents import build_intent

async def main():
    op, token, prefix, endpoint = sys.argv[1:5]
    adapter = ExaBgpAdapter.from_config(AdapterConfig(
        name="http", adapter_type="exabgp", endpoint=endpoint, auth_token=SecretStr(token),
        # the bridge listens on the namespace's loopback: allowed on purpose
        access=HostAccess(egress=EgressPolicy.from_entries(["loopback"]))))
    ref = RuleRef(1, build_intent({"kind": "blackhole", "prefix": prefix}))
    (o,) = await getattr(adapter, op)([ref])
    await adapter.close()
    print(json.dumps({"ok": o.ok, "retryable": o.retryable, "error": o.error, "key": ref.key}))

asyncio.run(main())
"""


def test_http_listener_with_token(exabgp_topology: Topology) -> None:
    """Flowtriq-style HTTP access, from inside the speaker namespace where it listens."""
    ns = exabgp_topology.speaker_ns
    lab = exabgp_topology.lab

    def http(op: str, token: str) -> dict[str, object]:
        res = lab.run(
            ns, [sys.executable, "-c", HTTP_CLIENT, op, token, "203.0.113.80", f"http://{HTTP}"]
        )
        data: dict[str, object] = json.loads(res.stdout)
        return data

    refused = http("announce", "wrong-token")
    assert refused["ok"] is False
    assert refused["retryable"] is False
    assert "401" in str(refused["error"])
    assert "wrong-token" not in str(refused["error"])
    done = http("announce", TOKEN)
    assert done["ok"] is True, done
    bird = exabgp_topology.receivers["bird"]
    wait_for(lambda: "203.0.113.80/32" in bird.prefixes(4), timeout=15, what="route in BIRD")
    assert run(read_back(make_adapter(exabgp_topology))) == {done["key"]}
    assert http("withdraw", TOKEN)["ok"] is True
    wait_for(lambda: "203.0.113.80/32" not in bird.prefixes(4), timeout=15, what="route gone")


def test_respawned_bridge_resumes_its_routes(exabgp_topology: Topology) -> None:
    node = node_of(exabgp_topology)
    refs = [RuleRef(n, build_intent(data)) for n, data in enumerate(CASES.values(), 1)]
    assert all(o.ok for o in run(once(make_adapter(exabgp_topology), "announce", refs)))
    old = node.bridge({"op": "status"})["pid"]
    os.kill(
        int(old), signal.SIGKILL
    )  # the bridge dies; ExaBGP (still holding the routes) respawns it
    wait_for(
        lambda: node.bridge({"op": "status"}).get("pid") not in (None, old),
        timeout=15,
        what="ExaBGP to respawn the bridge",
    )
    # the new bridge took over its predecessor's list: read-back still tells the truth
    assert run(read_back(make_adapter(exabgp_topology))) == {r.key for r in refs}
    # and it asked ExaBGP which sessions are up (neighbor-changes only reports changes)
    wait_for(
        lambda: run(_check(make_adapter(exabgp_topology))).ok,
        timeout=10,
        what="check() healthy after the respawn",
    )
    health = run(_check(make_adapter(exabgp_topology)))
    assert set(health.sessions.values()) == {"established"}
    assert len(health.sessions) == 4
    assert all(o.ok for o in run(once(make_adapter(exabgp_topology), "withdraw", refs)))
    assert run(read_back(make_adapter(exabgp_topology))) == frozenset()


def test_speaker_restart_then_reannounce(exabgp_topology: Topology) -> None:
    node = node_of(exabgp_topology)
    check_restart(exabgp_topology, node.restart)


def test_unreachable_is_retryable(exabgp_topology: Topology) -> None:
    node = node_of(exabgp_topology)
    check_unreachable(exabgp_topology, node, f"unix://{node.socket}.missing")
