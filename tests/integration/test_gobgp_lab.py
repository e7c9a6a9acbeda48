"""The gobgp adapter against a real gobgpd peered with real BIRD and FRR receivers.

The ``CASES`` and helper functions here are shared with test_exabgp_lab.py: announce an
intent, read it back from each receiver's RIB (prefix, next hop, communities, or FlowSpec
components and action), withdraw it, and see it gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from adapters.base import Adapter, AdapterConfig, Registry, RuleRef
from adapters.gobgp.adapter import GoBgpAdapter
from adapters.gobgp.proto import api, attr
from adapters.gobgp.render import pack
from labs.gobgp import GoBgpNode, GoBgpSpeaker
from labs.netns import wait_for
from labs.rib import FlowRoute, UnicastRoute
from labs.topology import Receiver, Topology, running
from policies.errors import AdapterRefused
from policies.intents import build_intent
from tests.integration.conftest import RECEIVER_BINARIES, require_lab

pytestmark = [pytest.mark.root, pytest.mark.lab]

# name -> (intent, what each receiver must show)
CASES: dict[str, dict[str, Any]] = {
    "blackhole-v4": {
        "kind": "blackhole",
        "prefix": "203.0.113.1",
        "communities": ["blackhole", "64500:1"],
        "large_communities": ["64500:0:666"],
    },
    "blackhole-v6": {
        "kind": "blackhole",
        "prefix": "2001:db8:ffff::1",
        "communities": ["blackhole"],
        "large_communities": ["64500:6:666"],
    },
    "flowspec-v4": {
        "kind": "flowspec",
        "destination": "203.0.113.5",
        "source": "198.51.100.0/24",
        "protocol": "udp",
        "source_port": "123",
        "packet_length": ">=400",
        "action": {"type": "rate-limit", "bytes_per_second": 12500},
    },
    "flowspec-v6": {
        "kind": "flowspec",
        "destination": "2001:db8:ffff::/64",
        "protocol": "tcp",
        "destination_port": "80 443",
        "tcp_flags": "syn&!ack",
        "action": {"type": "discard"},
    },
}

# what each receiver prints for the flows' non-prefix components
FLOW_TEXT = {
    ("bird", "flowspec-v4"): ["proto 17", "sport 123", "length >= 400"],
    ("frr", "flowspec-v4"): ["proto = 17", "srcp = 123", "pktlen >= 400"],
    ("bird", "flowspec-v6"): ["next header 6", "dport 80,443"],
    ("frr", "flowspec-v6"): ["proto = 6", "dstp = 80 , = 443"],
}
ACTIONS = {"flowspec-v4": "rate-limit 12500", "flowspec-v6": "discard"}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def make_adapter(topo: Topology, **config: Any) -> Adapter:
    kwargs = topo.speaker.adapter_config("lab")
    kwargs["config"] = {**kwargs.get("config", {}), **config}
    return Registry(access=topo.access).create(AdapterConfig(**kwargs))


async def once(adapter: Adapter, op: str, refs: list[RuleRef]) -> list[Any]:
    try:
        return list(await getattr(adapter, op)(refs))
    finally:
        await adapter.close()


async def read_back(adapter: Adapter) -> frozenset[str] | None:
    try:
        return await adapter.active()
    finally:
        await adapter.close()


def unicast(receiver: Receiver, prefix: str, version: int) -> UnicastRoute | None:
    return receiver.unicast(version).get(prefix)


def flow(receiver: Receiver, destination: str, version: int) -> FlowRoute | None:
    return next((f for f in receiver.flows(version) if f.destination == destination), None)


def _state(topo: Topology, version: int) -> str:
    """What gobgpd and the receivers hold, for a timeout's message (seen intermittently in
    full-suite runs: a FlowSpec withdrawal that FRR did not reflect)."""
    speaker = topo.speaker
    assert isinstance(speaker, GoBgpNode)
    fam = "ipv4-flowspec" if version == 4 else "ipv6-flowspec"
    parts = [
        "gobgpd " + fam + ":\n" + speaker.gobgp("global", "rib", "-a", fam).stdout,
        "gobgpd neighbors:\n" + speaker.gobgp("neighbor").stdout,
    ]
    parts += [f"{name} flows: {rx.flows(version)}" for name, rx in topo.receivers.items()]
    return "\n".join(parts)


def check_case(topo: Topology, receiver_kind: str, case: str) -> None:
    """Announce CASES[case], find it on the receiver with its attributes, withdraw it."""
    intent = build_intent(CASES[case])
    ref = RuleRef(1, intent)
    receiver = topo.receivers[receiver_kind]
    version = intent.target.version
    target = str(intent.target)
    (outcome,) = run(once(make_adapter(topo), "announce", [ref]))
    assert outcome.ok, outcome.error
    assert ref.key in (run(read_back(make_adapter(topo))) or set())

    def present(on: Receiver = receiver) -> bool:
        if intent.kind == "blackhole":
            return unicast(on, target, version) is not None
        return flow(on, target, version) is not None

    wait_for(present, timeout=15, what=f"{case} in {receiver_kind}'s RIB")
    if intent.kind == "blackhole":
        route = unicast(receiver, target, version)
        assert route is not None
        speaker_side = receiver.neighbors[0 if version == 4 else 1].local_address
        assert route.next_hop == speaker_side
        assert set(CASES[case]["large_communities"]) == set(route.large_communities)
        expected = {"65535:666", *(c for c in CASES[case]["communities"] if ":" in c)}
        if receiver_kind == "frr":
            expected.add("65535:65281")  # FRR adds NO_EXPORT to a received BLACKHOLE route
        assert set(route.communities) == expected
    else:
        fr = flow(receiver, target, version)
        assert fr is not None
        assert fr.source == CASES[case].get("source")
        for piece in FLOW_TEXT[(receiver_kind, case)]:
            assert piece in fr.text, f"{piece!r} not in {fr.text!r}"
        assert fr.actions == {ACTIONS[case]}

    (outcome,) = run(once(make_adapter(topo), "withdraw", [ref]))
    assert outcome.ok, outcome.error
    # Gone from every receiver, not only the one under test: the speaker announced it to
    # all of them, and the next case must not start while one still holds it.
    for kind, rx in topo.receivers.items():
        wait_for(
            lambda rx=rx: not present(rx),  # type: ignore[misc]
            timeout=15,
            what=f"{case} gone from {kind}'s RIB",
            diagnose=lambda: _state(topo, version),
        )
    assert ref.key not in (run(read_back(make_adapter(topo))) or set())


def check_actions(topo: Topology, actions: dict[str, dict[str, Any]]) -> None:
    """Each FlowSpec action arrives as the receiver-decoded extended community."""
    refs = [
        RuleRef(n, build_intent({"kind": "flowspec", "destination": f"203.0.113.{n}", "action": a}))
        for n, a in enumerate(actions.values(), 1)
    ]
    outcomes = run(once(make_adapter(topo), "announce", refs))
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    for receiver in topo.receivers.values():
        wait_for(
            lambda r=receiver: len(r.flows(4)) == len(refs),  # type: ignore[misc]
            timeout=15,
            what=f"{len(refs)} flows in {receiver.kind}",
        )
        seen = {f.destination: f.actions for f in receiver.flows(4)}
        for n, text in enumerate(actions, 1):
            assert seen[f"203.0.113.{n}/32"] == {text}, (receiver.kind, text, seen)
    assert all(o.ok for o in run(once(make_adapter(topo), "withdraw", refs)))
    for receiver in topo.receivers.values():
        wait_for(
            lambda r=receiver: not r.flows(4),  # type: ignore[misc]
            timeout=15,
            what=f"flows gone from {receiver.kind}",
        )


def check_restart(topo: Topology, restart: Any) -> None:
    """After a speaker restart read-back is empty (the truth); re-announcing restores all."""
    refs = [RuleRef(n, build_intent(data)) for n, data in enumerate(CASES.values(), 1)]
    outcomes = run(once(make_adapter(topo), "announce", refs))
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    bird = topo.receivers["bird"]
    wait_for(lambda: "203.0.113.1/32" in bird.prefixes(4), timeout=15, what="route in BIRD")
    assert run(read_back(make_adapter(topo))) == {r.key for r in refs}

    restart()
    assert run(read_back(make_adapter(topo))) == frozenset()
    topo.speaker.wait_established(None, 30)
    wait_for(lambda: "203.0.113.1/32" not in bird.prefixes(4), timeout=15, what="route gone")

    outcomes = run(once(make_adapter(topo), "announce", refs))
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    assert run(read_back(make_adapter(topo))) == {r.key for r in refs}
    wait_for(
        lambda: (
            "203.0.113.1/32" in bird.prefixes(4)
            and "2001:db8:ffff::1/128" in bird.prefixes(6)
            and flow(bird, "203.0.113.5/32", 4) is not None
            and flow(bird, "2001:db8:ffff::/64", 6) is not None
        ),
        timeout=20,
        what="all four routes back in BIRD after re-announcing",
    )
    outcomes = run(once(make_adapter(topo), "withdraw", refs))
    assert all(o.ok for o in outcomes)
    wait_for(lambda: not bird.prefixes(4), timeout=15, what="BIRD empty again")


def check_unreachable(topo: Topology, node: Any, endpoint: str) -> None:
    """A wrong endpoint or a stopped daemon is a retryable outcome that says why."""
    ref = RuleRef(1, build_intent(CASES["blackhole-v4"]))
    kwargs = {**topo.speaker.adapter_config("lab"), "endpoint": endpoint}
    wrong = Registry(access=topo.access).create(AdapterConfig(**kwargs))
    (outcome,) = run(once(wrong, "announce", [ref]))
    assert not outcome.ok
    assert outcome.retryable
    assert outcome.error
    node.stop()
    try:
        (outcome,) = run(once(make_adapter(topo), "announce", [ref]))
        assert not outcome.ok
        assert outcome.retryable, outcome.error
        assert outcome.error
        health = run(_check(make_adapter(topo)))
        assert not health.ok
    finally:
        node.start()
        node.wait_established(None, 30)


async def _check(adapter: Adapter) -> Any:
    try:
        return await adapter.check()
    finally:
        await adapter.close()


# ---------------------------------------------------------------- gobgp


@pytest.fixture(scope="module")
def gobgp_topology() -> Iterator[Topology]:
    require_lab("gobgpd", "gobgp", *RECEIVER_BINARIES)
    with running(GoBgpSpeaker()) as topo:
        yield topo


@pytest.mark.parametrize("receiver", ["bird", "frr"])
@pytest.mark.parametrize("case", list(CASES))
def test_announce_reaches_receiver_and_withdraw_removes_it(
    gobgp_topology: Topology, case: str, receiver: str
) -> None:
    check_case(gobgp_topology, receiver, case)


def test_every_action_reaches_both_receivers(gobgp_topology: Topology) -> None:
    check_actions(
        gobgp_topology,
        {
            "discard": {"type": "discard"},
            "rate-limit 9600": {"type": "rate-limit", "bytes_per_second": 9600},
            "redirect 64500:100": {"type": "redirect", "route_target": "64500:100"},
            "redirect 4200000000:7": {"type": "redirect", "route_target": "4200000000:7"},
            "redirect 192.0.2.9:5": {"type": "redirect", "route_target": "192.0.2.9:5"},
            "mark 10": {"type": "mark", "dscp": 10},
        },
    )


def test_check_reports_established_sessions(gobgp_topology: Topology) -> None:
    health = run(_check(make_adapter(gobgp_topology)))
    assert health.ok, health.detail
    assert set(health.sessions.values()) == {"established"}
    assert len(health.sessions) == 4
    assert health.latency_ms is not None


def test_refusals_are_not_retryable(gobgp_topology: Topology) -> None:
    peers = RuleRef(1, build_intent({**CASES["blackhole-v4"], "peers": ["192.0.2.2"]}))
    scrub = RuleRef(2, build_intent({"kind": "scrubbing", "prefix": "203.0.113.0/24"}))
    outcomes = run(once(make_adapter(gobgp_topology), "announce", [peers, scrub]))
    assert [o.ok or o.retryable for o in outcomes] == [False, False]
    assert "per-peer" in (outcomes[0].error or "")

    async def bad_path() -> None:
        adapter = make_adapter(gobgp_topology)
        assert isinstance(adapter, GoBgpAdapter)
        nlri = pack(attr.IPAddressPrefix(prefix="203.0.113.9", prefix_len=32))
        family = api.Family(afi=api.Family.AFI_IP, safi=api.Family.SAFI_UNICAST)
        req = api.AddPathRequest(path=api.Path(nlri=nlri, family=family))  # no next hop
        stub = await adapter._api()
        try:
            with pytest.raises(AdapterRefused, match="gobgpd: nexthop not found"):
                await adapter._call(lambda: stub.AddPath(req, timeout=5))
        finally:
            await adapter.close()

    run(bad_path())


def test_read_back_survives_an_orchestrator_restart(gobgp_topology: Topology) -> None:
    refs = [RuleRef(n, build_intent(data)) for n, data in enumerate(CASES.values(), 1)]
    assert all(o.ok for o in run(once(make_adapter(gobgp_topology), "announce", refs)))
    # a new adapter object knows no uuids: it parses gobgpd's paths back into intents
    assert run(read_back(make_adapter(gobgp_topology))) == {r.key for r in refs}
    assert all(o.ok for o in run(once(make_adapter(gobgp_topology), "withdraw", refs)))
    assert run(read_back(make_adapter(gobgp_topology))) == frozenset()


def test_withdraw_of_unknown_route_is_harmless(gobgp_topology: Topology) -> None:
    keep = RuleRef(1, build_intent(CASES["blackhole-v4"]))
    ghost = RuleRef(2, build_intent({"kind": "blackhole", "prefix": "203.0.113.77"}))
    assert run(once(make_adapter(gobgp_topology), "announce", [keep]))[0].ok
    (outcome,) = run(once(make_adapter(gobgp_topology), "withdraw", [ghost]))
    assert outcome.ok
    assert run(read_back(make_adapter(gobgp_topology))) == {keep.key}
    assert run(once(make_adapter(gobgp_topology), "withdraw", [keep]))[0].ok


def test_large_batches_use_the_stream(gobgp_topology: Topology) -> None:
    refs = [
        RuleRef(n, build_intent({"kind": "blackhole", "prefix": f"198.51.100.{n}"}))
        for n in range(1, 201)
    ]
    bird = gobgp_topology.receivers["bird"]
    assert all(o.ok for o in run(once(make_adapter(gobgp_topology), "announce", refs)))
    wait_for(lambda: len(bird.prefixes(4)) == 200, timeout=15, what="200 routes in BIRD")
    assert run(read_back(make_adapter(gobgp_topology))) == {r.key for r in refs}
    assert all(o.ok for o in run(once(make_adapter(gobgp_topology), "withdraw", refs)))
    wait_for(lambda: not bird.prefixes(4), timeout=15, what="BIRD empty")


def test_speaker_restart_then_reannounce(gobgp_topology: Topology) -> None:
    node = gobgp_topology.speaker
    assert isinstance(node, GoBgpNode)
    check_restart(gobgp_topology, node.restart)


def test_unreachable_is_retryable(gobgp_topology: Topology) -> None:
    node = gobgp_topology.speaker
    assert isinstance(node, GoBgpNode)
    check_unreachable(gobgp_topology, node, f"unix://{node.socket}.missing")
