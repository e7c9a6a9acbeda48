"""bird2 adapter against a real BIRD 2 speaker, read back from BIRD and FRR receivers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.base import AdapterConfig, RuleRef, SessionState
from adapters.bird2 import Bird2Adapter
from adapters.bird2.render import display_network
from labs.bird import BirdNode
from labs.rib import FlowRoute
from labs.topology import Receiver, Topology, spare_next_hop
from policies.errors import AdapterUnavailable
from policies.intents import AnyIntent, FlowSpecIntent, build_intent
from tests.integration.helpers import (
    assert_communities,
    wait_flow,
    wait_flow_gone,
    wait_unicast,
    wait_unicast_gone,
)

pytestmark = [pytest.mark.root, pytest.mark.lab]

RECEIVERS = ["bird", "frr"]


@pytest.fixture
async def adapter(bird_topology: Topology) -> AsyncIterator[Bird2Adapter]:
    ad = Bird2Adapter.from_config(
        AdapterConfig(**bird_topology.speaker.adapter_config(), access=bird_topology.access)
    )
    yield ad
    await ad.close()


def speaker(topo: Topology) -> BirdNode:
    node = topo.speaker
    assert isinstance(node, BirdNode)
    return node


def blackhole(rx: Receiver, version: int, index: int) -> AnyIntent:
    prefix = f"203.0.113.{10 + index}/32" if version == 4 else f"2001:db8:ff::{10 + index:x}/128"
    return build_intent(
        {
            "kind": "blackhole",
            "prefix": prefix,
            "communities": ["65535:666", "64500:666"],
            "large_communities": ["64500:1:2"],
            "next_hop": spare_next_hop(rx.link, version),
        }
    )


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("receiver", RECEIVERS)
async def test_blackhole_reaches_receiver_and_goes_away(
    bird_topology: Topology, adapter: Bird2Adapter, receiver: str, version: int
) -> None:
    rx = bird_topology.receivers[receiver]
    intent = blackhole(rx, version, RECEIVERS.index(receiver))
    ref = RuleRef(1, intent)
    [out] = await adapter.announce([ref])
    assert out.ok, out.error
    assert await adapter.active() == frozenset({ref.key})
    prefix = str(intent.target)
    route = wait_unicast(rx, version, prefix)
    assert_communities(route.communities, {"65535:666", "64500:666"}, receiver)
    assert route.large_communities == {"64500:1:2"}
    assert route.next_hop == spare_next_hop(rx.link, version)

    [out] = await adapter.withdraw([ref])
    assert out.ok and out.detail["held"] is True
    wait_unicast_gone(rx, version, prefix)
    assert await adapter.active() == frozenset()


FLOWS: dict[int, dict[str, Any]] = {
    4: {
        "destination": "203.0.113.40/32",
        "source": "198.51.100.0/24",
        "protocol": "udp",
        "source_port": 123,
        "destination_port": ">=1024",
        "packet_length": ">=500",
        "action": {"type": "discard"},
    },
    6: {
        "destination": "2001:db8:ff::40/128",
        "protocol": "tcp",
        "destination_port": "443",
        "tcp_flags": "syn",
        "action": {"type": "rate-limit", "bytes_per_second": 125000},
    },
}
# what each receiver shows for the components after dst/src
SHOWN = {
    ("bird", 4): "proto 17; dport >= 1024; sport 123; length >= 500;",
    ("bird", 6): "next header 6; dport 443; tcp flags !0x0/0x2;",
    ("frr", 4): "proto = 17; dstp >= 1024; srcp = 123; pktlen >= 500",
    ("frr", 6): "proto = 6; dstp = 443; tcp ∋ 2",
}
ACTION = {4: "discard", 6: "rate-limit 125000"}


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("receiver", RECEIVERS)
async def test_flowspec_reaches_receiver_and_goes_away(
    bird_topology: Topology, adapter: Bird2Adapter, receiver: str, version: int
) -> None:
    rx = bird_topology.receivers[receiver]
    intent = build_intent({"kind": "flowspec", **FLOWS[version]})
    ref = RuleRef(2, intent)
    [out] = await adapter.announce([ref])
    assert out.ok, out.error
    assert await adapter.active() == frozenset({ref.key})
    dst = str(intent.target)
    flow = wait_flow(rx, version, lambda f: f.destination == dst, f"flow to {dst}")
    assert flow.source == FLOWS[version].get("source")
    assert flow.text == SHOWN[(receiver, version)]
    assert flow.actions == {ACTION[version]}

    [out] = await adapter.withdraw([ref])
    assert out.ok
    wait_flow_gone(rx, version, dst)
    assert await adapter.active() == frozenset()


MANY: list[dict[str, Any]] = [
    {
        "destination": "203.0.113.50/32",
        "protocol": "tcp",
        "destination_port": "<=10 =20 >=1000",
        "tcp_flags": "=syn+ack !=fin+rst",
        "fragment": "!dont-fragment&!is-fragment",
        "action": {"type": "redirect", "route_target": "64500:100"},
    },
    {
        "destination": "203.0.113.51/32",
        "protocol": "icmp",
        "icmp_type": 8,
        "icmp_code": 0,
        "dscp": "10 46",
        "action": {"type": "mark", "dscp": 46},
    },
    {
        "destination": "203.0.113.52/32",
        "port": "53 5353",
        "protocol": "udp",
        "fragment": "is-fragment+last-fragment",
        "action": {"type": "redirect", "route_target": "4200000000:7"},
    },
    {
        "destination": "2001:db8:ff::52/128",
        "source": "2001:db8:fe::/48",
        "protocol": "udp",
        "flow_label": "5-7",
        "fragment": "first-fragment",
        "action": {"type": "redirect", "route_target": "192.0.2.1:7"},
    },
]


async def test_every_component_and_action_round_trips_through_bird(
    bird_topology: Topology, adapter: Bird2Adapter
) -> None:
    """BIRD prints each rule exactly as display_network() predicts; actions decode back."""
    intents = [build_intent({"kind": "flowspec", **d}) for d in MANY]
    refs = [RuleRef(10 + i, x) for i, x in enumerate(intents)]
    outs = await adapter.announce(refs)
    assert all(o.ok for o in outs), [o.error for o in outs]
    assert await adapter.active() == frozenset({r.key for r in refs})
    held = speaker(bird_topology).flows(4) + speaker(bird_topology).flows(6)
    assert {r.network for r in held} == {display_network(i) for i in intents}
    for rx in bird_topology.receivers.values():
        for intent in intents:
            assert isinstance(intent, FlowSpecIntent)
            v = intent.destination.version
            dst = str(intent.destination)

            def match(f: FlowRoute, d: str = dst) -> bool:
                return f.destination == d

            flow = wait_flow(rx, v, match, f"flow to {dst}")
            assert flow.actions == {str(intent.action)}, rx.kind
    assert all(o.ok for o in await adapter.withdraw(refs))
    assert await adapter.active() == frozenset()


async def test_same_network_other_attributes_is_refused(adapter: Bird2Adapter) -> None:
    a = RuleRef(20, build_intent({"kind": "blackhole", "prefix": "203.0.113.60/32"}))
    b = RuleRef(
        21,
        build_intent({"kind": "blackhole", "prefix": "203.0.113.60/32", "communities": ["1:1"]}),
    )
    outs = await adapter.announce([a, b])
    assert outs[0].ok and not outs[1].ok and not outs[1].retryable
    assert "already carries rule" in (outs[1].error or "")
    assert await adapter.active() == frozenset({a.key})
    await adapter.withdraw([a])


async def test_refused_configure_restores_the_previous_file(
    bird_topology: Topology, adapter: Bird2Adapter
) -> None:
    node = speaker(bird_topology)
    keep = RuleRef(30, build_intent({"kind": "blackhole", "prefix": "203.0.113.70/32"}))
    assert (await adapter.announce([keep]))[0].ok
    before = node.include.read_text() if node.include else ""
    good_conf = node.conf.read_text()
    node.conf.write_text(good_conf + "\nthis is not bird syntax;\n")
    try:
        ref = RuleRef(31, build_intent({"kind": "blackhole", "prefix": "203.0.113.71/32"}))
        [out] = await adapter.announce([ref])
    finally:
        node.conf.write_text(good_conf)
    assert not out.ok and not out.retryable
    assert "BIRD refused the configuration" in (out.error or "")
    assert "syntax error" in (out.error or "")
    assert node.include is not None and node.include.read_text() == before
    assert await adapter.active() == frozenset({keep.key})
    await adapter.withdraw([keep])


async def test_speaker_restart_active_tells_the_truth(
    bird_topology: Topology, adapter: Bird2Adapter
) -> None:
    node = speaker(bird_topology)
    rx = bird_topology.receivers["bird"]
    bh = RuleRef(40, build_intent({"kind": "blackhole", "prefix": "203.0.113.80/32"}))
    fs = RuleRef(41, build_intent({"kind": "flowspec", "destination": "203.0.113.81/32"}))
    assert all(o.ok for o in await adapter.announce([bh, fs]))
    wait_unicast(rx, 4, "203.0.113.80/32")

    node.stop()
    with pytest.raises(AdapterUnavailable):
        await adapter.active()
    [down] = await adapter.announce([bh])
    assert not down.ok and down.retryable
    assert not (await adapter.check()).ok

    # BIRD restarts with the include file in place: it loads the rules again
    node.start()
    assert await adapter.active() == frozenset({bh.key, fs.key})
    node.wait_established()
    wait_unicast(rx, 4, "203.0.113.80/32", timeout=20)

    # BIRD restarts with an empty include file: nothing is held, and active() says so
    node.stop()
    assert node.include is not None
    node.include.write_text("")
    node.start()
    assert await adapter.active() == frozenset()
    node.wait_established()
    wait_unicast_gone(rx, 4, "203.0.113.80/32")

    # the reconciler's re-announce brings them back
    assert all(o.ok for o in await adapter.announce([bh, fs]))
    assert await adapter.active() == frozenset({bh.key, fs.key})
    wait_unicast(rx, 4, "203.0.113.80/32")
    assert all(o.ok for o in await adapter.withdraw([bh, fs]))
    wait_unicast_gone(rx, 4, "203.0.113.80/32")
    bird_topology.wait_established()


async def test_check_reports_sessions(adapter: Bird2Adapter) -> None:
    health = await adapter.check()
    assert health.ok and health.latency_ms is not None
    assert set(health.sessions.values()) == {SessionState.ESTABLISHED} and len(health.sessions) == 4


async def test_concurrent_batches_are_serialised(adapter: Bird2Adapter) -> None:
    refs = [
        RuleRef(100 + i, build_intent({"kind": "blackhole", "prefix": f"198.51.100.{i}/32"}))
        for i in range(20)
    ]
    results = await asyncio.gather(*(adapter.announce([r]) for r in refs))
    assert all(o.ok for [o] in results)
    fresh = Bird2Adapter.from_config(
        AdapterConfig(
            name="again",
            adapter_type="bird2",
            config=adapter.settings.model_dump(mode="json", exclude={"endpoint"}),
            access=adapter.settings.access,
        )
    )
    assert await fresh.active() == frozenset(r.key for r in refs)  # read back from file + BIRD
    assert all(o.ok for o in await fresh.withdraw(refs))
    assert await adapter.active() == frozenset()  # re-reads the file the other one changed
