"""PCAP analysis on captures generated with dpkt: vectors, sources, sizes, recommendations."""

from __future__ import annotations

import itertools
import json
import random
import tracemalloc
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.pcaps import GeoSource, analysis
from orchestrator.pcaps.analysis import analyze, intent_data, summarize
from policies.intents import build_intent, canonical
from tests import pcapgen as g
from tests.unit.policies.mmdb_writer import write_country_mmdb

T = "203.0.113.10"


def report(tmp_path: Path, frames: Iterable[bytes], **kw: Any) -> dict[str, Any]:
    fmt = kw.pop("fmt", "pcap")
    path = g.write(tmp_path / f"c.{fmt}", frames, fmt=fmt)
    return summarize(analyze(path), **kw)


def rules(rep: dict[str, Any]) -> list[dict[str, Any]]:
    return [r["rule"] for r in rep["recommendations"]]


def test_dns_reflection_is_classified_and_dropped_by_source_port_53(tmp_path: Path) -> None:
    rep = report(tmp_path, g.dns_reflection(3000), target_hint=T)
    assert rep["attack_family"] == "dns_flood"
    assert rep["primary_vector"] == "udp_reflection_dns"
    dns = rep["vectors"][0]
    assert (dns["service"], dns["source_port"], dns["share_pct"]) == ("DNS", 53, 100.0)
    assert rep["target"] == T
    assert rep["packets"] == 3000
    assert len(rep["recommendations"]) == 1
    rec = rep["recommendations"][0]
    assert rec["n"] == 1 and rec["vector"] == "udp_reflection_dns"
    assert rec["rule"] == {
        "target_ip": T,
        "intent_type": "flowspec",
        "protocol": "udp",
        "source_port": 53,
        "action": "discard",
    }
    assert rec["canonical"] == f"flowspec dst {T}/32; proto =17; sport =53; then discard"
    # three /24s of reflectors, none dominant: no source rule
    prefixes = {p["prefix"] for p in rep["sources"]["prefixes"]}
    assert prefixes == {"198.51.100.0/24", "192.0.2.0/24", "100.64.7.0/24"}
    assert rep["sources"]["unique"] <= 50
    assert rep["packet_sizes"]["min"] == rep["packet_sizes"]["max"] == 20 + 8 + 512


@pytest.mark.parametrize(
    ("port", "service", "vector"),
    [
        (123, "NTP", "udp_reflection_ntp"),
        (11211, "memcached", "udp_reflection_memcached"),
        (1900, "SSDP", "udp_reflection_ssdp"),
        (389, "CLDAP", "udp_reflection_cldap"),
        (19, "chargen", "udp_reflection_chargen"),
        (161, "SNMP", "udp_reflection_snmp"),
    ],
)
def test_reflection_vectors_by_source_port(
    tmp_path: Path, port: int, service: str, vector: str
) -> None:
    rng = random.Random(port)
    frames = (
        g.udp(g.source(rng), T, port, rng.randrange(1024, 65535), b"\x00" * 400) for _ in range(200)
    )
    rep = report(tmp_path, frames)
    assert rep["primary_vector"] == vector
    assert rep["vectors"][0]["service"] == service
    assert rep["attack_family"] == "udp_flood"
    assert rules(rep)[0] == {
        "target_ip": T,
        "intent_type": "flowspec",
        "protocol": "udp",
        "source_port": port,
        "action": "discard",
    }


def test_syn_flood_is_rate_limited_on_syn_without_ack_to_its_port(tmp_path: Path) -> None:
    rep = report(tmp_path, g.syn_flood(2000, dport=443))
    assert rep["attack_family"] == "syn_flood"
    assert rep["primary_vector"] == "syn"
    assert rep["sources"]["unique"] > 1900  # spoofed: every packet a new source
    [rec] = rep["recommendations"]  # spread over 10/8: no source rule
    assert rec["rule"] == {
        "target_ip": T,
        "intent_type": "flowspec",
        "protocol": "tcp",
        "tcp_flags": "syn&!ack",
        "action": "rate-limit",
        "rate_limit": analysis.RATE_LIMIT_BYTES,
        "destination_port": [443],
    }
    assert "tcp-flags syn&!ack" in rec["canonical"]
    assert "dport =443" in rec["canonical"]


@pytest.mark.parametrize(
    ("flags", "vector", "match"), [(0x10, "ack", "ack&!syn&!rst&!fin"), (0x04, "rst", "rst&!syn")]
)
def test_ack_and_rst_floods(tmp_path: Path, flags: int, vector: str, match: str) -> None:
    rng = random.Random(flags)
    frames = (
        g.tcp(g.source(rng, "10.0.0.0/8"), T, rng.randrange(1024, 65535), 80, flags=flags)
        for _ in range(500)
    )
    rep = report(tmp_path, frames)
    assert rep["primary_vector"] == vector
    assert rules(rep)[0]["tcp_flags"] == match
    assert rules(rep)[0]["destination_port"] == [80]


def test_fragments_are_their_own_vector_and_rate_limited(tmp_path: Path) -> None:
    rng = random.Random(5)
    frames = (
        g.fragment(g.source(rng, "10.0.0.0/8"), T, 185 * (i % 3 + 1), i % 3 != 2, size=1200)
        for i in range(600)
    )
    rep = report(tmp_path, frames)
    assert rep["primary_vector"] == "ip_fragment"
    assert rep["vectors"][0]["share_pct"] == 100.0
    [rule] = rules(rep)
    assert rule["fragment"] == "is-fragment"
    assert rule["action"] == "rate-limit"


def test_icmp_flood_matches_the_echo_type(tmp_path: Path) -> None:
    rng = random.Random(7)
    rep = report(tmp_path, (g.icmp_echo(g.source(rng, "10.0.0.0/8"), T) for _ in range(300)))
    assert rep["attack_family"] == "icmp_flood"
    assert rep["vectors"][0]["icmp_types"] == [{"type": 8, "packets": 300}]
    [rule] = rules(rep)
    assert (rule["protocol"], rule["icmp_type"], rule["action"]) == ("icmp", 8, "rate-limit")


def test_gre_flood_is_dropped(tmp_path: Path) -> None:
    rng = random.Random(8)
    rep = report(tmp_path, (g.gre(g.source(rng, "10.0.0.0/8"), T) for _ in range(300)))
    assert rep["primary_vector"] == "gre"
    [rule] = rules(rep)
    assert (rule["protocol"], rule["action"]) == (47, "discard")


def _mixed() -> list[bytes]:
    rng = random.Random(9)
    return list(
        itertools.chain(
            g.syn_flood(400),
            g.dns_reflection(300),
            (g.icmp_echo(g.source(rng, "10.0.0.0/8"), T) for _ in range(200)),
            (g.fragment(g.source(rng, "10.0.0.0/8"), T, 185, False) for _ in range(50)),
            (g.gre("192.0.2.7", T) for _ in range(50)),
            [g.udp("203.0.113.99", "198.51.100.1", 5000, 5001)] * 10,  # other traffic
        )
    )


def test_mixed_capture_is_multi_vector_with_one_rule_per_significant_vector(
    tmp_path: Path,
) -> None:
    rep = report(tmp_path, _mixed())
    assert rep["attack_family"] == "multi_vector"
    shares = {v["vector"]: v["share_pct"] for v in rep["vectors"]}
    assert shares["syn"] == pytest.approx(100 * 400 / 1010, abs=0.01)
    assert set(shares) == {"syn", "udp_reflection_dns", "icmp", "ip_fragment", "gre", "udp"}
    got = [r["vector"] for r in rep["recommendations"]]
    assert got == ["syn", "udp_reflection_dns", "icmp"]  # >= 10% each, largest first
    assert rep["target"] == T
    assert rep["destinations"][0] == {"address": T, "packets": 1000, "share_pct": 99.01}
    buckets = {b["range"]: b["packets"] for b in rep["packet_sizes"]["buckets"]}
    assert buckets["0-64"] == 400 + 10  # SYNs (40 bytes) and the small UDP
    assert sum(buckets.values()) == 1010


def test_every_recommendation_is_a_valid_intent(tmp_path: Path) -> None:
    rep = report(tmp_path, _mixed())
    for rec in rep["recommendations"]:
        intent = build_intent(intent_data(rec["rule"]))
        assert canonical(intent) == rec["canonical"]
        assert str(intent.target) == f"{T}/32"


def test_a_dominant_source_prefix_gets_a_drop_rule(tmp_path: Path) -> None:
    rng = random.Random(10)
    frames = (
        g.udp(g.source(rng, "192.0.2.0/24"), T, rng.randrange(1024, 65535), 27015, b"\x00" * 64)
        for _ in range(400)
    )
    rep = report(tmp_path, frames)
    assert rep["primary_vector"] == "udp"
    udp, src = rep["recommendations"]
    assert udp["rule"]["destination_port"] == [27015]
    assert src["vector"] == "source_prefix"
    assert src["rule"] == {
        "target_ip": T,
        "intent_type": "flowspec",
        "source": "192.0.2.0/24",
        "action": "discard",
    }


def test_ipv6_reflection_targets_a_128(tmp_path: Path) -> None:
    frames = (
        g.udp(f"2001:db8:1::{i % 40 + 1:x}", "2001:db8::10", 123, 4000 + i) for i in range(100)
    )
    rep = report(tmp_path, frames)
    assert rep["primary_vector"] == "udp_reflection_ntp"
    assert rep["recommendations"][0]["canonical"].startswith("flowspec dst 2001:db8::10/128;")
    assert rep["sources"]["prefixes"][0]["prefix"] == "2001:db8:1::/48"


def test_the_incident_target_wins_over_the_busiest_destination(tmp_path: Path) -> None:
    frames = list(g.dns_reflection(100, target=T)) + list(
        g.dns_reflection(200, target="203.0.113.11")
    )
    assert report(tmp_path, frames, target_hint=T)["target"] == T
    assert report(tmp_path, frames)["target"] == "203.0.113.11"
    # a hint that the capture never saw falls back to the busiest destination
    assert report(tmp_path, frames, target_hint="198.51.100.200")["target"] == "203.0.113.11"


def test_report_is_deterministic_and_the_same_for_pcap_and_pcapng(tmp_path: Path) -> None:
    frames = _mixed()
    (tmp_path / "a").mkdir()
    a = report(tmp_path / "a", frames)
    b = report(tmp_path, frames)
    ng = report(tmp_path, frames, fmt="pcapng")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert json.dumps(a, sort_keys=True) == json.dumps(ng, sort_keys=True)


def test_source_countries_from_the_geo_database(tmp_path: Path) -> None:
    mmdb = write_country_mmdb(tmp_path / "c.mmdb", {"198.51.100.0/24": "US", "192.0.2.0/24": "DE"})
    geo = GeoSource(lambda: mmdb)()
    assert geo is not None
    rep = report(tmp_path, g.dns_reflection(900), geo=geo)
    countries = {c["country"]: c["packets"] for c in rep["sources"]["countries"]}
    prefixes = {p["prefix"]: p["packets"] for p in rep["sources"]["prefixes"]}
    assert countries == {
        "US": prefixes["198.51.100.0/24"],
        "DE": prefixes["192.0.2.0/24"],
        "unknown": prefixes["100.64.7.0/24"],
    }
    top = rep["sources"]["top"][0]
    assert top["country"] == {"198": "US", "192": "DE", "100": None}[top["address"].split(".")[0]]
    # without a database there are no countries, and no lookups
    assert report(tmp_path, g.dns_reflection(10))["sources"]["countries"] is None
    assert GeoSource(lambda: None)() is None
    assert GeoSource(lambda: tmp_path / "missing.mmdb")() is None


def test_tables_stop_growing_at_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(analysis, "MAX_TRACKED", 100)
    rep = report(tmp_path, g.syn_flood(500))
    assert rep["sources"]["unique"] == 100
    assert rep["sources"]["tracked_limit_reached"] is True
    assert rep["packets"] == 500
    assert rep["vectors"][0]["packets"] == 500  # vectors are exact whatever the cap


def test_analysis_streams_the_file(tmp_path: Path) -> None:
    """A 12 MB capture is analysed with far less memory than its size: never read whole."""
    frames = list(g.dns_reflection(500))
    path = g.write_repeated(tmp_path / "big.pcap", frames, 22_000)
    assert path.stat().st_size > 12_000_000
    tracemalloc.start()
    try:
        rep = summarize(analyze(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rep["packets"] == 22_000
    assert rep["primary_vector"] == "udp_reflection_dns"
    # bounded tables and a 1 MB read buffer, whatever the file's size
    assert peak < 2_500_000, peak
