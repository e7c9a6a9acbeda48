"""frr adapter against a real FRR speaker (bgpd network statements), read back from BIRD and FRR."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from adapters.base import AdapterConfig, RuleRef
from adapters.frr import FrrAdapter
from labs.frr import FrrNode
from labs.topology import Topology, spare_next_hop
from policies.intents import build_intent
from tests.integration.helpers import assert_communities, wait_unicast, wait_unicast_gone

pytestmark = [pytest.mark.root, pytest.mark.lab]

RECEIVERS = ["bird", "frr"]


@pytest.fixture
async def adapter(frr_topology: Topology) -> AsyncIterator[FrrAdapter]:
    ad = FrrAdapter.from_config(AdapterConfig(**frr_topology.speaker.adapter_config()))
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
    ad = FrrAdapter.from_config(AdapterConfig(**cfg))
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
    ad = FrrAdapter.from_config(AdapterConfig(**cfg))
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
    assert set(health.sessions.values()) == {"Established"} and len(health.sessions) == 4
