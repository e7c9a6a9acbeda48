"""frr adapter against a real FRR speaker (bgpd network statements), read back from BIRD and FRR."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from adapters.base import AdapterConfig, RuleRef, SessionState
from adapters.frr import FrrAdapter
from labs.frr import FrrNode
from labs.topology import Topology, spare_next_hop
from policies.intents import build_intent
from tests.integration.helpers import assert_communities, wait_unicast, wait_unicast_gone

pytestmark = [pytest.mark.root, pytest.mark.lab]

RECEIVERS = ["bird", "frr"]


@pytest.fixture
async def adapter(frr_topology: Topology) -> AsyncIterator[FrrAdapter]:
    ad = FrrAdapter.from_config(
        AdapterConfig(**frr_topology.speaker.adapter_config(), access=frr_topology.access)
    )
    yield ad
    await ad.close()


def speaker(topo: Topology) -> FrrNode:
    node = topo.speaker
    assert isinstance(node, FrrNode)
    return node


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("receiver", RECEIVERS)
async def test_blackhole_reaches_receiver_and_goes_away(
    frr_topology: Topology, adapter: FrrAdapter, receiver: str, version: int
) -> None:
    rx = frr_topology.receivers[receiver]
    i = 10 + RECEIVERS.index(receiver)
    prefix = f"203.0.113.{i}/32" if version == 4 else f"2001:db8:ff::{i:x}/128"
    nh = spare_next_hop(rx.link, version)
    intent = build_intent(
        {
            "kind": "blackhole",
            "prefix": prefix,
            "communities": ["65535:666", "64500:666"],
            "large_communities": ["64500:1:2"],
            "next_hop": nh,
        }
    )
    ref = RuleRef(1, intent)
    [out] = await adapter.announce([ref])
    assert out.ok, out.error
    assert await adapter.active() == frozenset({ref.key})
    route = wait_unicast(rx, version, prefix)
    assert_communities(route.communities, {"65535:666", "64500:666"}, receiver)
    assert route.large_communities == {"64500:1:2"}
    assert route.next_hop == nh

    [out] = await adapter.withdraw([ref])
    assert out.ok and out.detail["held"] is True
    wait_unicast_gone(rx, version, prefix)
    assert await adapter.active() == frozenset()
    assert "route-map SLUICE-RTBH-" not in speaker(frr_topology).vtysh("show running-config")


@pytest.mark.parametrize("version", [4, 6])
async def test_flowspec_is_refused_not_dropped(adapter: FrrAdapter, version: int) -> None:
    dst = "203.0.113.40/32" if version == 4 else "2001:db8:ff::40/128"
    ref = RuleRef(2, build_intent({"kind": "flowspec", "destination": dst, "protocol": "udp"}))
    [out] = await adapter.announce([ref])
    assert not out.ok and not out.retryable
    assert "cannot carry flowspec" in (out.error or "")
    assert await adapter.active() == frozenset()


async def test_defaults_from_the_adapter_config(frr_topology: Topology) -> None:
    cfg = frr_topology.speaker.adapter_config("defaults")
    cfg["config"] |= {"communities": ["64500:9999"], "large_communities": ["64500:0:9"]}
    ad = FrrAdapter.from_config(AdapterConfig(**cfg, access=frr_topology.access))
    ref = RuleRef(3, build_intent({"kind": "blackhole", "prefix": "203.0.113.30/32"}))
    assert (await ad.announce([ref]))[0].ok
    route = wait_unicast(frr_topology.receivers["bird"], 4, "203.0.113.30/32")
    assert route.communities == {"65535:666", "64500:9999"}
    assert route.large_communities == {"64500:0:9"}
    assert await ad.active() == frozenset({ref.key})  # the key is the intent's, not the wire's
    assert (await ad.withdraw([ref]))[0].ok
    wait_unicast_gone(frr_topology.receivers["bird"], 4, "203.0.113.30/32")


async def test_wrong_asn_is_refused_with_frrs_message(frr_topology: Topology) -> None:
    cfg = frr_topology.speaker.adapter_config("wrong-asn")
    cfg["config"]["asn"] = 64999
    ad = FrrAdapter.from_config(AdapterConfig(**cfg, access=frr_topology.access))
    ref = RuleRef(4, build_intent({"kind": "blackhole", "prefix": "203.0.113.31/32"}))
    [out] = await ad.announce([ref])
    assert not out.ok and not out.retryable
    assert "FRR refused" in (out.error or "") and "65001" in (out.error or "")
    assert await ad.active() == frozenset()
    # nothing half-applied is left behind: the ASN is checked before anything is added
    running = speaker(frr_topology).vtysh("show running-config")
    assert "203.0.113.31" not in running and "route-map SLUICE-RTBH-" not in running


async def test_speaker_restart_active_tells_the_truth(
    frr_topology: Topology, adapter: FrrAdapter
) -> None:
    node = speaker(frr_topology)
    rx = frr_topology.receivers["bird"]
    ref = RuleRef(5, build_intent({"kind": "blackhole", "prefix": "203.0.113.50/32"}))
    assert (await adapter.announce([ref]))[0].ok
    wait_unicast(rx, 4, "203.0.113.50/32")

    node.stop()
    [down] = await adapter.announce([ref])
    assert not down.ok and down.retryable
    assert "unreachable" in (down.error or "")
    health = await adapter.check()
    assert not health.ok

    node.start()  # FRR comes back from its startup config: our rules are gone
    assert await adapter.active() == frozenset()
    node.wait_established(timeout=30)
    wait_unicast_gone(rx, 4, "203.0.113.50/32")

    assert (await adapter.announce([ref]))[0].ok  # the reconciler's re-announce
    assert await adapter.active() == frozenset({ref.key})
    wait_unicast(rx, 4, "203.0.113.50/32")
    assert (await adapter.withdraw([ref]))[0].ok
    wait_unicast_gone(rx, 4, "203.0.113.50/32")
    frr_topology.wait_established()


async def test_check_reports_sessions(adapter: FrrAdapter) -> None:
    health = await adapter.check()
    assert health.ok and health.latency_ms is not None
    assert set(health.sessions.values()) == {SessionState.ESTABLISHED} and len(health.sessions) == 4


async def test_restart_behind_the_cache_is_repaired(frr_topology: Topology) -> None:
    """The adapter plans from the config its last call read back; after FRR restarts (and
    loses the route-maps) that plan is stale: the read-back catches it and the batch is
    applied again from a fresh read, with the attributes on the wire."""
    node = speaker(frr_topology)
    rx = frr_topology.receivers["bird"]
    ad = FrrAdapter.from_config(
        AdapterConfig(**node.adapter_config("cache"), access=frr_topology.access)
    )
    comm = {"kind": "blackhole", "communities": ["64500:61"], "large_communities": ["64500:6:1"]}
    a = RuleRef(6, build_intent({**comm, "prefix": "203.0.113.61/32"}))
    b = RuleRef(7, build_intent({**comm, "prefix": "203.0.113.62/32"}))
    assert (await ad.announce([a]))[0].ok
    wait_unicast(rx, 4, "203.0.113.61/32")
    node.restart()
    node.wait_established(timeout=30)
    [out] = await ad.announce([b])  # no active() in between: the cache is stale
    assert out.ok, out.error
    route = wait_unicast(rx, 4, "203.0.113.62/32")
    assert route.communities == {"64500:61"} and route.large_communities == {"64500:6:1"}
    assert await ad.active() == frozenset({b.key})
    assert (await ad.withdraw([b]))[0].ok
    wait_unicast_gone(rx, 4, "203.0.113.62/32")
    frr_topology.wait_established()


async def test_one_route_per_prefix_and_operator_networks_are_left_alone(
    frr_topology: Topology, adapter: FrrAdapter
) -> None:
    node = speaker(frr_topology)
    asn = node.asn
    node.vtysh(
        "configure terminal",
        f"router bgp {asn}",
        "address-family ipv4 unicast",
        "network 203.0.113.70/32",
        "end",
    )
    try:
        x = RuleRef(8, build_intent({"kind": "blackhole", "prefix": "203.0.113.71/32"}))
        y = RuleRef(
            9,
            build_intent(
                {"kind": "blackhole", "prefix": "203.0.113.71/32", "communities": ["64500:9"]}
            ),
        )
        z = RuleRef(10, build_intent({"kind": "blackhole", "prefix": "203.0.113.70/32"}))
        ox, oy, oz = await adapter.announce([x, y, z])
        assert ox.ok, ox.error
        assert not oy.ok and not oy.retryable and "other attributes" in (oy.error or "")
        assert not oz.ok and not oz.retryable and "not placed by sluice" in (oz.error or "")
        [again] = await adapter.announce([y])  # a later batch: still refused
        assert not again.ok and not again.retryable
        assert await adapter.active() == frozenset({x.key})
        [wz] = await adapter.withdraw([z])
        assert wz.ok and wz.detail["held"] is False
        assert "network 203.0.113.70/32\n" in node.vtysh("show running-config")
        assert (await adapter.withdraw([x]))[0].ok
        assert await adapter.active() == frozenset()
    finally:
        node.vtysh(
            "configure terminal",
            f"router bgp {asn}",
            "address-family ipv4 unicast",
            "no network 203.0.113.70/32",
            "end",
        )


async def test_large_batches_are_chunked(
    frr_topology: Topology, adapter: FrrAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("adapters.frr.adapter.CHUNK", 3)
    prefixes = [f"203.0.113.{80 + i}/32" for i in range(4)]
    prefixes += [f"2001:db8:ff::{0x80 + i:x}/128" for i in range(3)]
    refs = [
        RuleRef(20 + i, build_intent({"kind": "blackhole", "prefix": p, "communities": [c]}))
        for i, (p, c) in enumerate(zip(prefixes, ["64500:1", "64500:2"] * 4, strict=False))
    ]
    assert all(o.ok for o in await adapter.announce(refs))
    assert await adapter.active() == frozenset(r.key for r in refs)
    for p in prefixes:
        wait_unicast(frr_topology.receivers["bird"], 6 if ":" in p else 4, p)
    assert all(o.ok and o.detail["held"] for o in await adapter.withdraw(refs))
    assert await adapter.active() == frozenset()
    assert "route-map SLUICE-RTBH-" not in speaker(frr_topology).vtysh("show running-config")


async def test_partial_refusal_reports_what_frr_holds(
    frr_topology: Topology, adapter: FrrAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bgpd refuses a link-local prefix; vtysh stops there, after applying the chunks and
    lines before it: those rules are ok, the refused one carries FRR's message."""
    monkeypatch.setattr("adapters.frr.adapter.CHUNK", 2)
    good = [
        RuleRef(30 + i, build_intent({"kind": "blackhole", "prefix": f"203.0.113.{90 + i}/32"}))
        for i in range(3)
    ]
    bad = RuleRef(33, build_intent({"kind": "blackhole", "prefix": "fe80::5/128"}))
    outs = await adapter.announce([*good, bad])
    assert [o.ok for o in outs] == [True, True, True, False], outs
    assert not outs[3].retryable and "FRR refused" in (outs[3].error or "")
    assert "link-local" in (outs[3].error or "")
    assert await adapter.active() == frozenset(r.key for r in good)
    for r in good:
        wait_unicast(frr_topology.receivers["bird"], 4, str(r.intent.target))
    assert [o.detail["held"] for o in await adapter.withdraw([*good, bad])] == [True] * 3 + [False]
    assert await adapter.active() == frozenset()
