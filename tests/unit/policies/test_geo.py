"""Geo lockdown: MMDB lookups, aggregation to a rule budget, engine rules."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from policies.engine import evaluate
from policies.geo import GeoDB, aggregate, merge_spans, subtract, to_cidrs
from policies.intents import FlowSpecIntent
from policies.schema import Policy
from policies.state import EngineState
from tests.unit.policies.helpers import make_policy, sig
from tests.unit.policies.mmdb_writer import write_country_mmdb

NETWORKS = {
    "198.51.100.0/26": "CN",
    "198.51.100.64/26": "CN",
    "198.51.100.192/27": "CN",
    "203.0.113.0/25": "RU",
    "203.0.113.128/25": "DE",
    "192.0.2.0/24": "NO",
    "2001:db8:c0::/48": "CN",
    "2001:db8:de::/48": "DE",
}


@pytest.fixture
def mmdb(tmp_path: Path) -> Path:
    return write_country_mmdb(tmp_path / "countries.mmdb", NETWORKS)


def _span(prefix: str) -> tuple[int, int]:
    net = ipaddress.ip_network(prefix)
    return int(net.network_address), int(net.broadcast_address)


def test_country_lookup_and_ranges(mmdb: Path) -> None:
    db = GeoDB(mmdb)
    assert db.country("198.51.100.70") == "CN"
    assert db.country("198.51.100.130") is None
    assert db.country("2001:db8:de::1") == "DE"
    assert db.spans(["CN"], 4) == [_span("198.51.100.0/25"), _span("198.51.100.192/27")]
    assert db.spans(["CN"], 6) == [_span("2001:db8:c0::/48")]
    db.close()


def test_exact_prefixes_when_the_budget_allows() -> None:
    agg = aggregate([_span("198.51.100.0/25"), _span("198.51.100.192/27")], [], 4, 8)
    assert [ipaddress.IPv4Network((v, p)) for _, v, p in agg.prefixes] == [
        ipaddress.IPv4Network("198.51.100.0/25"),
        ipaddress.IPv4Network("198.51.100.192/27"),
    ]
    assert (agg.collateral, agg.uncovered, agg.exact) == (0, 0, 2)


def test_supernetting_to_fit_the_budget_reports_collateral() -> None:
    agg = aggregate([_span("198.51.100.0/25"), _span("198.51.100.192/27")], [], 4, 1)
    assert [(v, p) for _, v, p in agg.prefixes] == [(_span("198.51.100.0/24")[0], 24)]
    assert agg.collateral == 256 - 128 - 32
    assert agg.uncovered == 0


def test_aggregation_never_covers_forbidden_space() -> None:
    wanted = [_span("198.51.100.0/25"), _span("198.51.100.192/27")]
    forbidden = [_span("198.51.100.130/32")]
    agg = aggregate(wanted, forbidden, 4, 1)
    for _, value, plen in agg.prefixes:
        lo, hi = value, value + (1 << (32 - plen)) - 1
        assert hi < forbidden[0][0] or lo > forbidden[0][1]
    # One rule cannot cover both without the hole: the bigger part is kept.
    assert [(v, p) for _, v, p in agg.prefixes] == [(_span("198.51.100.0/25")[0], 25)]
    assert agg.uncovered == 32 and agg.collateral == 0


def test_forbidden_space_inside_the_wanted_range_is_cut_out() -> None:
    agg = aggregate([_span("198.51.100.0/24")], [_span("198.51.100.7/32")], 4, 100)
    covered = sum(1 << (32 - p) for _, _, p in agg.prefixes)
    assert covered == 255
    assert agg.exact == len(agg.prefixes) == 8


def test_interval_helpers() -> None:
    assert merge_spans([(5, 9), (1, 4), (20, 30)]) == [(1, 9), (20, 30)]
    assert subtract([(0, 100)], [(10, 20), (50, 60)]) == [(0, 9), (21, 49), (61, 100)]
    assert to_cidrs([(0, 255)], 4) == [(4, 0, 24)]
    assert to_cidrs([(1, 2)], 4) == [(4, 1, 32), (4, 2, 32)]


def _geo_policy(tmp_path: Path, mmdb: Path, **geo: object) -> Policy:
    return make_policy(
        tmp_path / "p",
        geo_lockdown={
            "countries": ["CN", "RU"],
            "database": str(mmdb),
            "from_tier": "tier2",
            **geo,
        },
        allowlist=[{"ip_address": "198.51.100.66", "label": "partner in CN"}],
    )


def test_block_mode_emits_source_rules_from_the_tier_on(tmp_path: Path, mmdb: Path) -> None:
    policy = _geo_policy(tmp_path, mmdb, rule_budget=16)
    state = EngineState()
    low = evaluate(sig("192.0.2.10", 150e6), policy, state, 0)
    assert all(isinstance(r.intent, FlowSpecIntent) and r.intent.source is None for r in low.rules)
    high = evaluate(sig("192.0.2.10", 600e6), policy, state, 1)
    geo_rules = [r for r in high.rules if r.reason.startswith("geo lockdown")]
    assert geo_rules
    sources = [
        ipaddress.ip_network(str(r.intent.source))
        for r in geo_rules
        if isinstance(r.intent, FlowSpecIntent)
    ]
    partner = ipaddress.ip_address("198.51.100.66")
    assert all(partner not in s for s in sources)
    covered = {a for s in sources for a in (s.network_address, s.broadcast_address)}
    assert ipaddress.ip_address("203.0.113.0") in covered  # RU
    assert all(
        str(r.intent.destination) == "192.0.2.10/32"
        for r in geo_rules
        if isinstance(r.intent, FlowSpecIntent)
    )
    assert any("geo lockdown (block) from tier tier2" in line for line in high.explanation)


def test_budget_limits_geo_rules(tmp_path: Path, mmdb: Path) -> None:
    policy = _geo_policy(tmp_path, mmdb, rule_budget=2)
    d = evaluate(sig("192.0.2.10", 600e6), policy, EngineState(), 0)
    geo_rules = [r for r in d.rules if r.reason.startswith("geo lockdown")]
    assert len(geo_rules) == 2
    assert any("collateral" in line for line in d.explanation)


def test_allow_only_drops_everyone_else(tmp_path: Path, mmdb: Path) -> None:
    policy = make_policy(
        tmp_path / "p",
        geo_lockdown={
            "mode": "allow_only",
            "countries": ["DE"],
            "database": str(mmdb),
            "from_tier": "tier1",
            "rule_budget": 64,
        },
    )
    d = evaluate(sig("2001:db8:de::5", 150e6), policy, EngineState(), 0)
    sources = [
        ipaddress.ip_network(str(r.intent.source))
        for r in d.rules
        if isinstance(r.intent, FlowSpecIntent) and r.intent.source is not None
    ]
    assert sources
    german = ipaddress.ip_network("2001:db8:de::/48")
    assert all(not s.overlaps(german) for s in sources)
    assert any(ipaddress.ip_address("2001:db8:c0::1") in s for s in sources)


def test_only_seen_countries(tmp_path: Path, mmdb: Path) -> None:
    policy = _geo_policy(tmp_path, mmdb, only_seen_countries=True)
    d = evaluate(sig("192.0.2.10", 600e6, source_countries={"DE": 90}), policy, EngineState(), 0)
    assert not [r for r in d.rules if r.reason.startswith("geo lockdown")]
    assert any("none of the blocked countries" in line for line in d.explanation)
    d = evaluate(sig("192.0.2.11", 600e6, source_countries=["RU"]), policy, EngineState(), 0)
    geo_rules = [r for r in d.rules if r.reason.startswith("geo lockdown")]
    assert [str(r.intent.source) for r in geo_rules if isinstance(r.intent, FlowSpecIntent)] == [
        "203.0.113.0/25"
    ]


def test_top_sources_are_looked_up_in_the_mmdb(tmp_path: Path, mmdb: Path) -> None:
    policy = _geo_policy(tmp_path, mmdb)
    signal = sig("192.0.2.10", 600e6, top_sources=["203.0.113.5", "203.0.113.200", "192.0.2.99"])
    d = evaluate(signal, policy, EngineState(), 0)
    assert "geo lockdown: 1 of 3 top source(s) are in the countries it drops" in d.explanation


def test_prepare_reads_the_country_ranges_up_front(tmp_path: Path, mmdb: Path) -> None:
    from policies.engine import compile_policy, prepare

    policy = _geo_policy(tmp_path, mmdb)
    prepare(policy)
    compiled = compile_policy(policy)
    assert compiled.geo()._ranges is not None
    assert "CN" in compiled.geo().ranges()
