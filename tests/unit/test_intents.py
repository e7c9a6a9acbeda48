"""Intents: validation, canonical text, stable keys."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.errors import IntentInvalid
from policies.flowmatch import PortMatch, TcpFlagsMatch
from policies.intents import (
    BlackholeIntent,
    FlowSpecIntent,
    build_intent,
    canonical,
    intent_key,
    parse_canonical,
)


def flow(**kw: Any) -> FlowSpecIntent:
    intent = build_intent({"kind": "flowspec", "destination": "203.0.113.5", **kw})
    assert isinstance(intent, FlowSpecIntent)
    return intent


class TestPrefixes:
    def test_bare_address_is_a_host_route(self) -> None:
        assert str(build_intent({"kind": "blackhole", "prefix": "203.0.113.7"}).target) == (
            "203.0.113.7/32"
        )
        assert str(build_intent({"kind": "blackhole", "prefix": "2001:db8::1"}).target) == (
            "2001:db8::1/128"
        )

    def test_host_bits_are_an_error_naming_the_network(self) -> None:
        with pytest.raises(IntentInvalid, match=r"host bits set; the prefix is 203\.0\.113\.0/24"):
            build_intent({"kind": "blackhole", "prefix": "203.0.113.7/24"})

    @pytest.mark.parametrize(
        "bad", ["", "300.1.1.1", "203.0.113.0/33", "nonsense", "::ffff:1.2.3.4"]
    )
    def test_malformed(self, bad: str) -> None:
        with pytest.raises(IntentInvalid) as exc:
            build_intent({"kind": "blackhole", "prefix": bad})
        assert exc.value.field == "prefix"

    def test_unknown_kind(self) -> None:
        with pytest.raises(IntentInvalid) as exc:
            build_intent({"kind": "nullroute", "prefix": "203.0.113.1"})
        assert exc.value.code == "unknown_intent_type"


class TestBlackhole:
    def test_rfc7999_by_default_and_sorted_unique_communities(self) -> None:
        a = build_intent({"kind": "blackhole", "prefix": "203.0.113.1"})
        assert isinstance(a, BlackholeIntent)
        assert a.communities == ("65535:666",)
        b = build_intent(
            {
                "kind": "blackhole",
                "prefix": "203.0.113.1",
                "communities": ["65000:10", "blackhole", "65000:2", "65000:10"],
            }
        )
        assert isinstance(b, BlackholeIntent)
        assert b.communities == ("65000:2", "65000:10", "65535:666")

    def test_large_communities_and_next_hop_family(self) -> None:
        i = build_intent(
            {
                "kind": "blackhole",
                "prefix": "2001:db8::/64",
                "large_communities": ["64500:0:666"],
                "next_hop": "2001:db8::ff",
            }
        )
        assert canonical(i) == (
            "blackhole 2001:db8::/64; community 65535:666; "
            "large-community 64500:0:666; next-hop 2001:db8::ff"
        )
        with pytest.raises(IntentInvalid) as exc:
            build_intent({"kind": "blackhole", "prefix": "2001:db8::/64", "next_hop": "192.0.2.1"})
        assert exc.value.field == "next_hop"

    @pytest.mark.parametrize("bad", ["65536:1", "1:2:3", "x:1", "65535"])
    def test_bad_community(self, bad: str) -> None:
        with pytest.raises(IntentInvalid, match="community"):
            build_intent({"kind": "blackhole", "prefix": "203.0.113.1", "communities": [bad]})

    def test_bad_large_community(self) -> None:
        with pytest.raises(IntentInvalid, match="large community"):
            build_intent(
                {
                    "kind": "blackhole",
                    "prefix": "203.0.113.1",
                    "large_communities": ["4294967296:1:1"],
                }
            )


class TestFlowSpec:
    def test_numeric_forms_are_one_value(self) -> None:
        a = flow(protocol="udp", destination_port="=53 =123")
        b = flow(protocol=17, destination_port=[123, 53])
        c = flow(protocol="=17", destination_port="53,123")
        assert intent_key(a) == intent_key(b) == intent_key(c)
        assert str(a.destination_port) == "=53 =123"

    def test_ranges_merge(self) -> None:
        assert str(PortMatch.parse(">=1024&<=2048 2049-3000 80")) == "=80 >=1024&<=3000"
        assert str(PortMatch.parse("!=0")) == ">=1"

    def test_contradictory_and_vacuous_matches_are_refused(self) -> None:
        with pytest.raises(IntentInvalid, match="contradictory"):
            flow(source_port=">100&<50")
        with pytest.raises(IntentInvalid, match="every value"):
            flow(source_port=">=0")
        with pytest.raises(IntentInvalid, match="out of range"):
            flow(source_port=70000)

    def test_tcp_flags(self) -> None:
        m = TcpFlagsMatch.parse("!ack&syn")
        assert str(m) == "syn&!ack"
        assert m.accepts(0x02) and not m.accepts(0x12)
        with pytest.raises(ValueError, match="contradictory"):
            TcpFlagsMatch.parse("syn&!syn")
        with pytest.raises(ValueError, match="unknown tcp-flags flag"):
            TcpFlagsMatch.parse("syn&bogus")

    @pytest.mark.parametrize(
        ("kw", "field"),
        [
            ({"protocol": "icmp", "port": 80}, "protocol"),
            ({"protocol": "udp", "tcp_flags": "syn"}, "tcp_flags"),
            ({"icmp_type": 8, "source_port": 53}, "icmp_type"),
            ({"protocol": "tcp", "icmp_type": 8}, "protocol"),
            ({"source": "2001:db8::/32"}, "source"),
            ({"flow_label": 5}, "flow_label"),
        ],
    )
    def test_contradictions_name_the_field(self, kw: dict[str, Any], field: str) -> None:
        with pytest.raises(IntentInvalid) as exc:
            flow(**kw)
        assert exc.value.field == field

    def test_ipv6_flow(self) -> None:
        i = build_intent(
            {
                "kind": "flowspec",
                "destination": "2001:db8::5",
                "protocol": 58,
                "icmp_type": 128,
                "flow_label": 7,
            }
        )
        assert canonical(i) == (
            "flowspec dst 2001:db8::5/128; proto =58; icmp-type =128; flow-label =7; then discard"
        )
        with pytest.raises(IntentInvalid, match="dont-fragment"):
            build_intent(
                {"kind": "flowspec", "destination": "2001:db8::5", "fragment": "dont-fragment"}
            )

    def test_actions(self) -> None:
        assert str(flow(action={"type": "rate-limit", "bytes_per_second": 1e6}).action) == (
            "rate-limit 1000000"
        )
        assert str(flow(action={"type": "redirect", "route_target": "64500:100"}).action) == (
            "redirect 64500:100"
        )
        assert str(flow(action={"type": "mark", "dscp": 46}).action) == "mark 46"
        with pytest.raises(IntentInvalid):
            flow(action={"type": "rate-limit", "bytes_per_second": 0})
        with pytest.raises(IntentInvalid):
            flow(action={"type": "redirect", "route_target": "4294967296:1"})
        with pytest.raises(IntentInvalid):
            flow(action={"type": "mark", "dscp": 64})

    def test_unknown_component(self) -> None:
        with pytest.raises(IntentInvalid):
            flow(ttl=5)


# ------------------------------------------------------------------ properties

v4 = st.builds(
    lambda a, n: ipaddress.IPv4Network((a, n), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(1, 32),
)
v6 = st.builds(
    lambda a, n: ipaddress.IPv6Network((a, n), strict=False),
    st.integers(0, 2**128 - 1).filter(lambda a: (a >> 32) != 0xFFFF),
    st.integers(1, 128),
)
ports = st.lists(st.integers(0, 65535), min_size=1, max_size=5)
ranges = st.tuples(st.integers(0, 65535), st.integers(0, 65535)).map(sorted)


@st.composite
def flowspec_dicts(draw: st.DrawFn) -> dict[str, Any]:
    dst = draw(st.one_of(v4, v6))
    d: dict[str, Any] = {"kind": "flowspec", "destination": str(dst)}
    if draw(st.booleans()):
        src = draw(v4 if dst.version == 4 else v6)
        d["source"] = str(src)
    proto = draw(st.sampled_from([None, "tcp", "udp", 17]))
    if proto is not None:
        d["protocol"] = proto
    if proto is not None and draw(st.booleans()):
        lo, hi = draw(ranges)
        if (lo, hi) != (0, 65535):
            d["source_port"] = f"{lo}-{hi}"
    if proto is not None and draw(st.booleans()):
        d["destination_port"] = draw(ports)
    if proto == "tcp" and draw(st.booleans()):
        d["tcp_flags"] = draw(st.sampled_from(["syn&!ack", "=syn+ack", "rst fin", "!ack"]))
    if draw(st.booleans()):
        d["packet_length"] = draw(st.sampled_from([">=1000", "<=64", "100-200 1500"]))
    d["action"] = draw(
        st.sampled_from(
            [
                {"type": "discard"},
                {"type": "rate-limit", "bytes_per_second": 12500},
                {"type": "redirect", "route_target": "64500:1"},
                {"type": "mark", "dscp": 10},
            ]
        )
    )
    return d


@st.composite
def blackhole_dicts(draw: st.DrawFn) -> dict[str, Any]:
    net = draw(st.one_of(v4, v6))
    comms = draw(st.lists(st.tuples(st.integers(0, 65535), st.integers(0, 65535)), max_size=3))
    return {
        "kind": "blackhole",
        "prefix": str(net),
        "communities": [f"{a}:{b}" for a, b in comms] or ["65535:666"],
    }


intent_dicts = st.one_of(flowspec_dicts(), blackhole_dicts())


@settings(max_examples=300)
@given(intent_dicts)
def test_canonical_form_round_trips(data: dict[str, Any]) -> None:
    intent = build_intent(data)
    text = canonical(intent)
    again = parse_canonical(text)
    assert again == intent
    assert canonical(again) == text
    assert intent_key(again) == intent_key(intent)


@settings(max_examples=200)
@given(st.lists(st.integers(0, 65535), min_size=1, max_size=6), st.randoms())
def test_equal_intents_have_equal_keys(values: list[int], rnd: Any) -> None:
    shuffled = list(values)
    rnd.shuffle(shuffled)
    a = flow(protocol="udp", source_port=values)
    b = flow(protocol=17, source_port=" ".join(f"={v}" for v in shuffled + values))
    assert a == b
    assert intent_key(a) == intent_key(b)


@settings(max_examples=200)
@given(ports, ports)
def test_different_matches_give_different_keys(a: list[int], b: list[int]) -> None:
    if set(a) == set(b):
        return
    assert intent_key(flow(protocol="udp", source_port=a)) != intent_key(
        flow(protocol="udp", source_port=b)
    )


def test_parsed_addresses_and_rates_are_cached_and_exact() -> None:
    """Detectors repeat targets and rates: parsed once, the same answer every time,
    errors never cached, long texts not kept."""
    from policies import intents, signals
    from policies.intents import parse_address

    first = parse_address(" 198.18.7.7")
    assert first == ipaddress.ip_address("198.18.7.7")
    assert parse_address(" 198.18.7.7") is first  # from the cache
    assert parse_address("2001:db8::1") == ipaddress.ip_address("2001:db8::1")
    for bad in ("198.18.7.256", "host.example", ""):
        for _ in range(2):
            with pytest.raises(ValueError, match="is not an IP address"):
                parse_address(bad)
    before = intents._address.cache_info().currsize
    padded = " " * 100 + "198.18.7.8"
    assert parse_address(padded) == ipaddress.ip_address("198.18.7.8")
    assert intents._address.cache_info().currsize == before  # not kept
    sig = signals.Signal.model_validate({"target_ip": "198.18.7.7", "bps": "1.5G"})
    again = signals.Signal.model_validate({"target_ip": "198.18.7.7", "bps": "1.5G"})
    assert sig.bps == again.bps == 1_500_000_000
    assert signals._text_rate.cache_info().hits >= 1
    with pytest.raises(ValueError, match="not a rate"):
        signals.Signal.model_validate({"target_ip": "198.18.7.7", "bps": "fast"})
    # a default mapping per signal, never one shared
    assert sig.source_countries == {} and sig.source_countries is not again.source_countries
