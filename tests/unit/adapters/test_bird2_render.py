"""Golden cases: intent -> BIRD 2 static route text, and the network as BIRD prints it."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.bird2.render import (
    HEADER,
    Defaults,
    Names,
    action_community,
    conflicts,
    display_network,
    networks_in,
    parse_file,
    render_file,
    render_route,
)
from policies.intents import FlowSpecIntent, build_intent, intent_key


def fs(**kw: Any) -> FlowSpecIntent:
    intent = build_intent({"kind": "flowspec", **kw})
    assert isinstance(intent, FlowSpecIntent)
    return intent


BLACKHOLES = [
    (
        {"prefix": "203.0.113.5/32"},
        "route 203.0.113.5/32 blackhole { bgp_community.add((65535,666)); };",
    ),
    (
        {
            "prefix": "203.0.113.0/24",
            "communities": ["64500:100", "blackhole"],
            "large_communities": ["64500:1:2"],
            "next_hop": "192.0.2.3",
        },
        "route 203.0.113.0/24 blackhole { bgp_community.add((64500,100)); "
        "bgp_community.add((65535,666)); bgp_large_community.add((64500,1,2)); "
        "bgp_next_hop = 192.0.2.3; };",
    ),
    (
        {"prefix": "2001:db8:1::5", "communities": []},
        "route 2001:db8:1::5/128 blackhole { };",
    ),
]


@pytest.mark.parametrize(("data", "text"), BLACKHOLES)
def test_blackhole_routes(data: dict[str, Any], text: str) -> None:
    assert render_route(build_intent({"kind": "blackhole", **data})) == text


def test_defaults_add_communities_and_next_hop_by_family() -> None:
    d = Defaults(("64500:666",), ("64500:0:666",), "192.0.2.3", "2001:db8::3")
    v4 = build_intent({"kind": "blackhole", "prefix": "203.0.113.5/32"})
    v6 = build_intent({"kind": "blackhole", "prefix": "2001:db8:1::/48", "next_hop": "2001:db8::9"})
    assert render_route(v4, d) == (
        "route 203.0.113.5/32 blackhole { bgp_community.add((64500,666)); "
        "bgp_community.add((65535,666)); bgp_large_community.add((64500,0,666)); "
        "bgp_next_hop = 192.0.2.3; };"
    )
    assert render_route(v6, d).endswith("bgp_next_hop = 2001:db8::9; };")


FLOWS = [
    (
        {"destination": "203.0.113.5/32", "protocol": "udp", "source_port": 123},
        "route flow4 { dst 203.0.113.5/32; proto = 17; sport = 123; } "
        "{ bgp_ext_community.add((generic, 0x80060000, 0x0)); };",
        "flow4 { dst 203.0.113.5/32; proto 17; sport 123; }",
    ),
    (
        {
            "destination": "203.0.113.5/32",
            "source": "198.51.100.0/24",
            "protocol": "tcp",
            "destination_port": ">=1024",
            "source_port": "<=1023 =8080",
            "packet_length": "100-200",
            "dscp": 10,
            "tcp_flags": "syn&!ack rst|fin",
            "fragment": "is-fragment first-fragment",
            "action": {"type": "rate-limit", "bytes_per_second": 1000},
        },
        "route flow4 { dst 203.0.113.5/32; src 198.51.100.0/24; proto = 6; dport >= 1024; "
        "sport <= 1023 || = 8080; tcp flags !0x0/0x1 || !0x0/0x2 && 0x0/0x10 || !0x0/0x4; "
        "length >= 100 && <= 200; dscp = 10; fragment is_fragment || first_fragment; } "
        "{ bgp_ext_community.add((generic, 0x80060000, 0x447a0000)); };",
        "flow4 { dst 203.0.113.5/32; src 198.51.100.0/24; proto 6; dport >= 1024; "
        "sport <= 1023,8080; tcp flags !0x0/0x1 || !0x0/0x2 && 0x0/0x10 || !0x0/0x4; "
        "length 100..200; dscp 10; fragment is_fragment || first_fragment; }",
    ),
    (
        {
            "destination": "2001:db8:1::5/128",
            "source": "2001:db8:2::/48",
            "protocol": "udp",
            "port": "53 5353",
            "flow_label": 5,
            "action": {"type": "redirect", "route_target": "64500:100"},
        },
        "route flow6 { dst 2001:db8:1::5/128; src 2001:db8:2::/48; next header = 17; "
        "port = 53 || = 5353; label = 5; } "
        "{ bgp_ext_community.add((generic, 0x8008fbf4, 0x64)); };",
        "flow6 { dst 2001:db8:1::5/128; src 2001:db8:2::/48; next header 17; port 53,5353; "
        "label 5; }",
    ),
    (
        {
            "destination": "203.0.113.9/32",
            "protocol": "icmp",
            "icmp_type": 8,
            "icmp_code": 0,
            "action": {"type": "mark", "dscp": 46},
        },
        "route flow4 { dst 203.0.113.9/32; proto = 1; icmp type = 8; icmp code = 0; } "
        "{ bgp_ext_community.add((generic, 0x80090000, 0x2e)); };",
        "flow4 { dst 203.0.113.9/32; proto 1; icmp type 8; icmp code 0; }",
    ),
    (
        {
            "destination": "203.0.113.9/32",
            "protocol": "tcp",
            "tcp_flags": "=syn+ack !=fin+rst",
            "fragment": "!dont-fragment&!is-fragment",
        },
        "route flow4 { dst 203.0.113.9/32; proto = 6; "
        "tcp flags 0x12/0x12 || !0x5/0x5; fragment !dont_fragment && !is_fragment; } "
        "{ bgp_ext_community.add((generic, 0x80060000, 0x0)); };",
        "flow4 { dst 203.0.113.9/32; proto 6; tcp flags 0x12/0x12 || !0x5/0x5; "
        "fragment !dont_fragment && !is_fragment; }",
    ),
    (
        {"destination": "203.0.113.9/32", "packet_length": "<=10 =20 >=1000"},
        "route flow4 { dst 203.0.113.9/32; length <= 10 || = 20 || >= 1000; } "
        "{ bgp_ext_community.add((generic, 0x80060000, 0x0)); };",
        "flow4 { dst 203.0.113.9/32; length <= 10,20,>= 1000; }",  # as BIRD's formatter does
    ),
]


@pytest.mark.parametrize(("data", "text", "shown"), FLOWS)
def test_flow_routes_and_their_display(data: dict[str, Any], text: str, shown: str) -> None:
    intent = fs(**data)
    assert render_route(intent) == text
    assert display_network(intent) == shown


@pytest.mark.parametrize(
    ("action", "community"),
    [
        ({"type": "discard"}, "(generic, 0x80060000, 0x0)"),
        ({"type": "rate-limit", "bytes_per_second": 125000}, "(generic, 0x80060000, 0x47f42400)"),
        ({"type": "redirect", "route_target": "64500:100"}, "(generic, 0x8008fbf4, 0x64)"),
        ({"type": "redirect", "route_target": "4200000000:7"}, "(generic, 0x8208fa56, 0xea000007)"),
        ({"type": "redirect", "route_target": "192.0.2.1:7"}, "(generic, 0x8108c000, 0x2010007)"),
        ({"type": "mark", "dscp": 0}, "(generic, 0x80090000, 0x0)"),
    ],
)
def test_action_communities(action: dict[str, Any], community: str) -> None:
    assert action_community(fs(destination="203.0.113.5/32", action=action)) == community


def test_fragment_any_of_two_bits_becomes_an_or() -> None:
    intent = fs(destination="203.0.113.5/32", fragment="is-fragment+last-fragment")
    assert "fragment is_fragment || last_fragment;" in render_route(intent)
    intent = fs(destination="203.0.113.5/32", fragment="=is-fragment+last-fragment")
    assert "fragment is_fragment && last_fragment;" in render_route(intent)


def test_file_round_trip_and_layout() -> None:
    a = build_intent({"kind": "blackhole", "prefix": "203.0.113.5/32"})
    b = fs(destination="2001:db8::5/128", protocol="udp")
    entries = {intent_key(a): a, intent_key(b): b}
    names = Names(prefix="rtbh", flow6_table="fs6")
    text = render_file(entries, names)
    assert text.startswith(HEADER)
    assert "protocol static rtbh_bh4 {\n  ipv4 { table master4; };\n" in text
    assert "protocol static rtbh_fs6 {\n  flow6 { table fs6; };\n" in text
    assert f"  # sluice-key {intent_key(a)} blackhole 203.0.113.5/32; community 65535:666\n" in text
    assert text.count("protocol static") == 4
    assert parse_file(text) == entries
    assert parse_file(render_file({}, names)) == {}


def test_conflicts_on_the_same_network() -> None:
    a = build_intent({"kind": "blackhole", "prefix": "203.0.113.5/32"})
    b = build_intent({"kind": "blackhole", "prefix": "203.0.113.5/32", "communities": ["64500:1"]})
    c = fs(destination="203.0.113.5/32")
    got = conflicts([("a", a), ("c", c), ("b", b), ("a", a)])
    assert got == {"b": "a"}


def test_networks_in_show_route_lines() -> None:
    lines = [
        "Table master4:",
        "203.0.113.5/32       blackhole [sluice_bh4 18:50:01.375] * (200)",
        "\tvia 192.0.2.2 on sv0",
        "flow4 { dst 203.0.113.9/32; proto 17; }  [sluice_fs4 18:50:01.375] * (200)",
    ]
    assert networks_in(lines) == [
        "203.0.113.5/32",
        "flow4 { dst 203.0.113.9/32; proto 17; }",
    ]
