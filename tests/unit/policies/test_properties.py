"""Property tests: invariants that must hold for any input."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.engine import evaluate
from policies.geo import aggregate, merge_spans, subtract
from policies.intents import FlowSpecIntent
from policies.netindex import LpmIndex, addr_net, contains, parse_net
from policies.schema import Policy, load_policy
from policies.signals import Signal
from policies.state import EngineState
from tests.unit.policies.helpers import policy_data

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

v4_nets = st.builds(
    lambda a, p: ipaddress.IPv4Network((a >> (32 - p) << (32 - p), p)),
    st.integers(0, 2**32 - 1),
    st.integers(8, 32),
)
v6_nets = st.builds(
    lambda a, p: ipaddress.IPv6Network((a >> (128 - p) << (128 - p), p)),
    st.integers(0, 2**128 - 1).filter(lambda a: (a >> 32) != 0xFFFF),
    st.integers(16, 128),
)
nets = st.one_of(v4_nets, v6_nets)


def _disjoint(items: list[Any]) -> list[Any]:
    out: list[Any] = []
    for n in items:
        if all(n.version != o.version or not n.overlaps(o) for o in out):
            out.append(n)
    return out


def _policy(**sections: Any) -> Policy:
    return Policy.model_validate(policy_data(**sections))


def _address_in(net: Any, offset: int) -> str:
    return str(net.network_address + offset % net.num_addresses)


@FAST
@given(
    allow=st.lists(nets, min_size=1, max_size=6).map(_disjoint),
    pick=st.integers(0, 5),
    offset=st.integers(0, 2**64),
    bps=st.floats(0, 1e11),
    family=st.sampled_from(["udp_flood", "syn_flood", "icmp_flood", "multi_vector", "unknown"]),
)
def test_allowlisted_target_never_gets_a_rule(
    allow: list[Any], pick: int, offset: int, bps: float, family: str
) -> None:
    policy = _policy(allowlist=[{"ip_address": str(n)} for n in allow])
    target = _address_in(allow[pick % len(allow)], offset)
    state = EngineState()
    for t in range(3):
        d = evaluate(
            Signal(target_ip=target, bps=bps * (t + 1), attack_family=family), policy, state, t
        )
        assert d.rules == ()
        assert d.status == "allowlisted"


@FAST
@given(
    allow=st.lists(v4_nets, min_size=1, max_size=5).map(_disjoint),
    sources=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=10),
)
def test_allowlisted_sources_never_appear_as_flowspec_sources(
    allow: list[Any], sources: list[int]
) -> None:
    tiers = [
        {
            "name": "t1",
            "bps": "1M",
            "intents": [{"type": "flowspec_drop", "per_source": True, "max_sources": 10}],
            "adapters": ["log"],
        }
    ]
    policy = _policy(escalation={"tiers": tiers}, allowlist=[{"ip_address": str(n)} for n in allow])
    addresses = [str(ipaddress.IPv4Address(s)) for s in sources]
    addresses += [_address_in(n, s) for n, s in zip(allow, sources, strict=False)]
    target = "198.51.100.1"
    if any(ipaddress.ip_address(target) in n for n in allow):
        return
    d = evaluate(Signal(target_ip=target, bps=5e6, top_sources=addresses), policy, EngineState(), 0)
    for rule in d.rules:
        assert isinstance(rule.intent, FlowSpecIntent)
        src = rule.intent.source
        assert src is not None
        assert not any(src.overlaps(n) for n in allow)


@FAST
@given(
    bps=st.lists(st.floats(0, 1e11), min_size=2, max_size=2).map(sorted),
    pps=st.lists(st.floats(0, 1e9), min_size=2, max_size=2).map(sorted),
    host=st.integers(0, 255),
)
def test_more_traffic_never_yields_a_lower_tier(
    bps: list[float], pps: list[float], host: int
) -> None:
    policy = PPS_POLICY
    order = [None, *[t.name for t in policy.escalation.tiers]]
    target = f"198.51.100.{host}"
    low = evaluate(Signal(target_ip=target, bps=bps[0], pps=pps[0]), policy, EngineState(), 0)
    high = evaluate(Signal(target_ip=target, bps=bps[1], pps=pps[1]), policy, EngineState(), 0)
    assert order.index(high.tier) >= order.index(low.tier)


_TIERS_PPS = [
    {
        "name": "t1",
        "bps": "100M",
        "pps": "50k",
        "intents": [{"type": "flowspec_drop"}],
        "adapters": ["log"],
    },
    {"name": "t2", "bps": "1G", "intents": [{"type": "flowspec_drop"}], "adapters": ["log"]},
    {"name": "t3", "pps": "1M", "intents": [{"type": "blackhole"}], "adapters": ["log"]},
    {
        "name": "t4",
        "bps": "10G",
        "pps": "5M",
        "intents": [{"type": "blackhole"}],
        "adapters": ["log"],
    },
]
PPS_POLICY = _policy(
    escalation={"tiers": _TIERS_PPS},
    thresholds=[
        {"target_ip": "198.51.100.0/25", "thresholds": {"t1_bps": "10M", "t2_bps": "20M"}},
        {"target_ip": "198.51.100.64/26", "thresholds": {"t1_pps": "1k"}},
    ],
)


@FAST
@given(
    net=v4_nets.filter(lambda n: n.prefixlen >= 16),
    offset=st.integers(0, 2**32),
    t1=st.integers(1_000, 10**9),
    bps=st.floats(0, 2e10),
)
def test_per_host_override_wins_inside_its_prefix(
    net: Any, offset: int, t1: int, bps: float
) -> None:
    policy = _policy(
        thresholds=[
            {"target_ip": "0.0.0.0/8", "thresholds": {"tier1_bps": "90M"}},
            {
                "target_ip": str(net),
                "label": "o",
                "thresholds": {"tier1_bps": min(t1, 499_999_999)},
            },
        ]
    )
    target = _address_in(net, offset)
    d = evaluate(Signal(target_ip=target, bps=bps), policy, EngineState(), 0)
    assert f"per-host thresholds {net} ('o') apply" in d.explanation
    expected_t1 = min(t1, 499_999_999)
    assert (d.tier is not None) == (bps >= expected_t1)


@FAST
@given(
    wanted=st.lists(
        st.tuples(st.integers(0, 2**20), st.integers(0, 2**12)), min_size=1, max_size=30
    ),
    holes=st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 2**8)), max_size=10),
    budget=st.integers(1, 12),
)
def test_geo_aggregation_never_covers_forbidden_space(
    wanted: list[tuple[int, int]], holes: list[tuple[int, int]], budget: int
) -> None:
    spans = [(a, a + n) for a, n in wanted]
    forbidden = merge_spans((a, a + n) for a, n in holes)
    agg = aggregate(spans, forbidden, 4, budget)
    assert len(agg.prefixes) <= budget
    covered = 0
    for _, value, plen in agg.prefixes:
        lo, hi = value, value + (1 << (32 - plen)) - 1
        covered += hi - lo + 1
        assert plen > 0
        for h_lo, h_hi in forbidden:
            assert hi < h_lo or lo > h_hi
    wanted_total = sum(hi - lo + 1 for lo, hi in subtract(merge_spans(spans), forbidden))
    assert covered == wanted_total - agg.uncovered + agg.collateral


@FAST
@given(st.lists(nets, min_size=1, max_size=30), st.lists(st.integers(0, 2**128), max_size=20))
def test_lpm_matches_brute_force(members: list[Any], probes: list[int]) -> None:
    index: LpmIndex[str] = LpmIndex()
    for n in members:
        index.add(parse_net(str(n)), str(n))
    for n in members:
        for p in probes:
            address = n.network_address + p % n.num_addresses
            version = address.version
            candidates = [m for m in members if m.version == version and address in m]
            best = max(candidates, key=lambda m: m.prefixlen)
            hit = index.lookup(version, int(address))
            assert hit is not None and hit[0] == best.prefixlen
            assert contains(parse_net(str(best)), addr_net(address))


@FAST
@given(nets)
def test_parse_net_agrees_with_ipaddress(net: Any) -> None:
    assert parse_net(str(net)) == (net.version, int(net.network_address), net.prefixlen)
    assert parse_net(net.with_prefixlen) == parse_net(str(net))


_EXAMPLES = Path(__file__).resolve().parents[3] / "policies" / "examples"
_EXAMPLE_POLICIES = [load_policy(_EXAMPLES / n) for n in ("default", "game-server")]
addresses = st.one_of(
    st.integers(0, 2**32 - 1).map(lambda a: str(ipaddress.IPv4Address(a))),
    st.integers(0, 2**128 - 1)
    .filter(lambda a: (a >> 32) != 0xFFFF)
    .map(lambda a: str(ipaddress.IPv6Address(a))),
)
signals = st.fixed_dictionaries(
    {
        "target_ip": addresses,
        "bps": st.floats(0, 1e11),
        "pps": st.floats(0, 1e9),
        "attack_family": st.sampled_from(
            [
                "udp_flood",
                "syn_flood",
                "http_flood",
                "icmp_flood",
                "dns_flood",
                "multi_vector",
                "unknown",
            ]
        ),
    },
    optional={
        "node": st.sampled_from(["edge-1", "fra-1", "x"]),
        "tcp_pct": st.floats(0, 100),
        "udp_pct": st.floats(0, 100),
        "icmp_pct": st.floats(0, 100),
        "top_source_ports": st.lists(st.integers(0, 65535), max_size=5),
        "top_destination_ports": st.lists(st.integers(0, 65535), max_size=5),
        "top_sources": st.lists(addresses, max_size=5),
    },
)


@FAST
@given(which=st.integers(0, 1), raw=st.lists(signals, min_size=1, max_size=5))
def test_any_signal_gives_a_decision_about_its_own_host(
    which: int, raw: list[dict[str, Any]]
) -> None:
    policy = _EXAMPLE_POLICIES[which]
    state = EngineState()
    for t, data in enumerate(raw):
        signal = Signal.model_validate(data)
        d = evaluate(signal, policy, state, t * 3.0)
        assert d.explanation
        host = ipaddress.ip_address(data["target_ip"])
        for rule in d.rules:
            assert host in rule.intent.target
            if isinstance(rule.intent, FlowSpecIntent):
                assert rule.intent.destination.prefixlen == (32 if host.version == 4 else 128)
