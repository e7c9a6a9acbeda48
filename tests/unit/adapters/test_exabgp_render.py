"""Golden tests: intent -> ExaBGP 4.2 API text, and the text read back into the intent."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.exabgp.render import (
    RenderOptions,
    Unsupported,
    group_key,
    in_rib,
    parse,
    render,
    render_group,
    rib_entries,
    route_entries,
    split_selector,
)
from policies.intents import AnyIntent, BlackholeIntent, build_intent

GOLDEN: list[tuple[dict[str, Any], str]] = [
    (
        {"kind": "blackhole", "prefix": "192.0.2.1"},
        "announce route 192.0.2.1/32 next-hop self community [ 65535:666 ]",
    ),
    (
        {
            "kind": "blackhole",
            "prefix": "2001:db8::/64",
            "communities": ["64500:1", "blackhole"],
            "large_communities": ["64500:1:2"],
            "next_hop": "2001:db8::1",
        },
        "announce route 2001:db8::/64 next-hop 2001:db8::1 community [ 64500:1 65535:666 ] "
        "large-community [ 64500:1:2 ]",
    ),
    (
        {
            "kind": "blackhole",
            "prefix": "192.0.2.0/28",
            "communities": [],
            "peers": ["192.0.2.6", "192.0.2.2"],
        },
        "neighbor 192.0.2.2, neighbor 192.0.2.6 announce route 192.0.2.0/28 next-hop self",
    ),
    (
        {"kind": "flowspec", "destination": "192.0.2.1", "protocol": "udp", "source_port": "123"},
        "announce flow route { match { destination 192.0.2.1/32; protocol [ =17 ]; "
        "source-port [ =123 ]; } then { discard; } }",
    ),
    (
        {
            "kind": "flowspec",
            "destination": "192.0.2.0/24",
            "source": "198.51.100.0/24",
            "protocol": "tcp",
            "destination_port": ">=1000&<=2000 =80",
            "tcp_flags": "syn&!ack =fin+rst",
            "packet_length": "<100 >1400",
            "dscp": "46",
            "fragment": "is-fragment !first-fragment",
            "action": {"type": "rate-limit", "bytes_per_second": 125000},
        },
        "announce flow route { match { destination 192.0.2.0/24; source 198.51.100.0/24; "
        "protocol [ =6 ]; destination-port [ =80 >=1000&<=2000 ]; tcp-flags [ 2&!16 =5 ]; "
        "packet-length [ <=99 >=1401 ]; dscp [ =46 ]; fragment [ 2 !4 ]; } "
        "then { rate-limit 125000; } }",
    ),
    (
        {
            "kind": "flowspec",
            "destination": "2001:db8::/48",
            "protocol": "icmpv6",
            "icmp_type": "128",
            "icmp_code": "0",
            "dscp": "10",
            "flow_label": "5",
            "action": {"type": "mark", "dscp": 10},
        },
        "announce flow route { match { destination 2001:db8::/48; next-header [ =58 ]; "
        "icmp-type [ =128 ]; icmp-code [ =0 ]; traffic-class [ =10 ]; flow-label [ =5 ]; } "
        "then { mark 10; } }",
    ),
    (
        {
            "kind": "flowspec",
            "destination": "2001:db8::1",
            "port": "!=80",
            "protocol": "tcp udp",
            "action": {"type": "redirect", "route_target": "4200000000:7"},
        },
        "announce flow route { match { destination 2001:db8::1/128; next-header [ =6 =17 ]; "
        "port [ <=79 >=81 ]; } then { redirect 4200000000:7; } }",
    ),
]


def ids(case: tuple[dict[str, Any], str]) -> str:
    return case[1][:40]


@pytest.mark.parametrize(("data", "expected"), GOLDEN, ids=[ids(c) for c in GOLDEN])
def test_golden_announce(data: dict[str, Any], expected: str) -> None:
    assert render(build_intent(data), "announce") == expected


@pytest.mark.parametrize(("data", "expected"), GOLDEN, ids=[ids(c) for c in GOLDEN])
def test_withdraw_is_the_same_text(data: dict[str, Any], expected: str) -> None:
    assert render(build_intent(data), "withdraw") == expected.replace("announce", "withdraw", 1)


@pytest.mark.parametrize(("data", "expected"), GOLDEN, ids=[ids(c) for c in GOLDEN])
def test_parse_reads_back_the_same_intent(data: dict[str, Any], expected: str) -> None:
    assert parse(expected) == build_intent(data)


def test_settings_add_communities_and_next_hop_and_parse_removes_them() -> None:
    opts = RenderOptions(
        next_hop_v4="192.0.2.1", communities=("64500:666",), large_communities=("64500:0:666",)
    )
    intent = build_intent({"kind": "blackhole", "prefix": "198.51.100.7"})
    text = render(intent, "announce", opts)
    assert text == (
        "announce route 198.51.100.7/32 next-hop 192.0.2.1 community [ 64500:666 65535:666 ] "
        "large-community [ 64500:0:666 ]"
    )
    assert parse(text, opts) == intent
    explicit = build_intent(
        {"kind": "blackhole", "prefix": "198.51.100.7", "next_hop": "192.0.2.9"}
    )
    assert parse(render(explicit, "announce", opts), opts) == explicit


def test_refused_intents() -> None:
    with pytest.raises(Unsupported, match="IPv4-address route target"):
        render(
            build_intent(
                {
                    "kind": "flowspec",
                    "destination": "192.0.2.1",
                    "action": {"type": "redirect", "route_target": "192.0.2.9:5"},
                }
            ),
            "announce",
        )
    with pytest.raises(Unsupported, match="caps rate-limit"):
        render(
            build_intent(
                {
                    "kind": "flowspec",
                    "destination": "192.0.2.1",
                    "action": {"type": "rate-limit", "bytes_per_second": 2e12},
                }
            ),
            "announce",
        )
    with pytest.raises(Unsupported, match="scrubbing"):
        render(build_intent({"kind": "scrubbing", "prefix": "192.0.2.0/24"}), "announce")


def test_parse_refuses_foreign_text() -> None:
    assert parse("announce route 192.0.2.1/32") is None
    assert parse("announce flow route { match { destination 192.0.2.1/32; colour red; } "
                 "then { discard; } }") is None  # fmt: skip
    assert parse("show neighbor summary") is None


def bh(prefix: str, **extra: Any) -> BlackholeIntent:
    intent = build_intent({"kind": "blackhole", "prefix": prefix, **extra})
    assert isinstance(intent, BlackholeIntent)
    return intent


def test_group_command_and_its_route_entries() -> None:
    intents = [bh("192.0.2.1", peers=["192.0.2.2"]), bh("192.0.2.9", peers=["192.0.2.2"])]
    text = render_group(intents, "announce")
    assert text == (
        "neighbor 192.0.2.2 announce attributes next-hop self community [ 65535:666 ] "
        "nlri 192.0.2.1/32 192.0.2.9/32"
    )
    entries = route_entries(text)
    assert entries is not None
    op, routes = entries
    assert op == "announce"
    # each entry is exactly what render() writes for that intent, so keys line up
    assert [r[1] for r in routes] == [render(i, "announce") for i in intents]
    assert [r[0] for r in routes] == [
        "192.0.2.2|route 192.0.2.1/32",
        "192.0.2.2|route 192.0.2.9/32",
    ]
    gone = route_entries(render_group(intents, "withdraw"))
    assert gone is not None
    assert gone[0] == "withdraw"
    assert [r[0] for r in gone[1]] == [r[0] for r in routes]


def test_group_key_separates_what_cannot_share_a_command() -> None:
    opts = RenderOptions()
    a, b = bh("192.0.2.1"), bh("192.0.2.2")
    assert group_key(a, opts) == group_key(b, opts)
    assert group_key(a, opts) != group_key(bh("192.0.2.3", communities=["64500:1"]), opts)
    assert group_key(a, opts) != group_key(bh("192.0.2.3", peers=["192.0.2.6"]), opts)
    assert group_key(a, opts) != group_key(bh("2001:db8::1"), opts)
    with pytest.raises(ValueError, match="same peers"):
        render_group([a, bh("192.0.2.3", communities=[])], "announce")


def test_route_entries_identity_ignores_attributes_and_action() -> None:
    a = route_entries("announce route 192.0.2.1/32 next-hop self community [ 65535:666 ]")
    b = route_entries("withdraw route 192.0.2.1/32 next-hop self")
    assert a is not None
    assert b is not None
    assert a[1][0][0] == b[1][0][0]
    flow = "flow route { match { destination 192.0.2.1/32; } then { discard; } }"
    c = route_entries("announce " + flow)
    d = route_entries("withdraw " + flow.replace("discard", "rate-limit 9600"))
    assert c is not None
    assert d is not None
    assert c[1][0][0] == d[1][0][0]
    assert route_entries("show adj-rib out") is None


def test_split_selector() -> None:
    assert split_selector("neighbor 192.0.2.2, neighbor 2001:db8::2 announce route x") == (
        ("192.0.2.2", "2001:db8::2"),
        "announce route x",
    )
    assert split_selector("announce route x") == ((), "announce route x")


def round_trip(data: dict[str, Any]) -> AnyIntent | None:
    return parse(render(build_intent(data), "announce"))


def test_every_bitmask_form_round_trips() -> None:
    for flags in ("syn", "=syn+ack", "!rst", "!=fin+psh", "syn&!ack fin"):
        data = {
            "kind": "flowspec",
            "destination": "192.0.2.1",
            "protocol": "tcp",
            "tcp_flags": flags,
        }
        assert round_trip(data) == build_intent(data)


# ---------------------------------------------------------------- adj-rib-out

# lines as ExaBGP 4.2.21 printed them for `show adj-rib out extensive` (captured here)
HEAD = (
    "neighbor 127.0.0.9 local-ip 127.0.0.1 local-as 65001 peer-as 65010 router-id 192.0.2.250 "
    "family-allowed in-open "
)
RIB_LINES = [
    HEAD + "ipv4 unicast 192.0.2.1/32 next-hop self community blackhole",
    HEAD + "ipv6 unicast 2001:db8::/64 next-hop 2001:db8::1 community [ 64500:1 blackhole ] "
    "large-community 64500:1:2",
    HEAD + "ipv4 flow flow destination-ipv4 192.0.2.0/24 source-ipv4 198.51.100.0/24 "
    "protocol =tcp tcp-flags [ syn&!ack =fin+rst ] extended-community redirect:64500:100",
    HEAD + "ipv6 flow flow destination-ipv6 2001:db8::/48/0 next-header =unknown protocol type "
    "58 icmp-type =unknown icmp type type 128 extended-community mark 10",
    "Peer            AS        up/down state       |     #sent     #recvd",
]


def test_rib_entries_from_exabgp_lines() -> None:
    assert rib_entries(RIB_LINES) == {
        ("127.0.0.9", ("route", "192.0.2.1/32", "")),
        ("127.0.0.9", ("route", "2001:db8::/64", "")),
        ("127.0.0.9", ("flow", "192.0.2.0/24", "198.51.100.0/24")),
        ("127.0.0.9", ("flow", "2001:db8::/48", "")),
    }


def test_in_rib_matches_prefix_flow_prefixes_and_peers() -> None:
    entries = rib_entries(RIB_LINES)
    assert in_rib(bh("192.0.2.1"), entries)
    assert in_rib(bh("192.0.2.1", peers=["127.0.0.9"]), entries)
    assert not in_rib(bh("192.0.2.1", peers=["192.0.2.2"]), entries)
    assert not in_rib(bh("192.0.2.2"), entries)
    flow = {"kind": "flowspec", "destination": "192.0.2.0/24"}
    assert in_rib(build_intent({**flow, "source": "198.51.100.0/24"}), entries)
    assert not in_rib(build_intent(flow), entries)  # same destination, no source: another flow
    assert in_rib(build_intent({"kind": "flowspec", "destination": "2001:db8::/48"}), entries)
