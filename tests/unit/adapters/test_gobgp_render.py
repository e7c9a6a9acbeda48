"""Golden tests: intent -> GoBGP apipb.Path, and the path read back into the same intent."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import text_format

from adapters.gobgp.proto import api, attr
from adapters.gobgp.render import (
    RenderOptions,
    Unsupported,
    bitmask_text,
    numeric_text,
    parse_path,
    render_path,
    unpack,
    withdraw_path,
)
from policies.intents import AnyIntent, build_intent, intent_key

BLACKHOLE = 0xFFFF029A  # 65535:666


def one_line(msg: Any) -> str:
    return str(text_format.MessageToString(msg, as_one_line=True))


def intent(**data: Any) -> AnyIntent:
    return build_intent(data)


def pattr(path: Any, cls: Any) -> Any:
    found = [a for a in (unpack(p) for p in path.pattrs) if isinstance(a, cls)]
    assert len(found) == 1, f"expected one {cls.__name__}"
    return found[0]


def components(path: Any) -> list[tuple[int, Any]]:
    """The NLRI as (type, prefix string | [(op, value), ...]) pairs."""
    out: list[tuple[int, Any]] = []
    for box in unpack(path.nlri).rules:
        rule = unpack(box)
        if isinstance(rule, attr.FlowSpecIPPrefix):
            out.append((rule.type, f"{rule.prefix}/{rule.prefix_len}"))
        else:
            out.append((rule.type, [(i.op, i.value) for i in rule.items]))
    return out


# ---------------------------------------------------------------- full goldens

GOLDEN_BH4 = (
    'nlri { [type.googleapis.com/apipb.IPAddressPrefix] { prefix_len: 32 prefix: "192.0.2.1" } } '
    "pattrs { [type.googleapis.com/apipb.OriginAttribute] { } } "
    'pattrs { [type.googleapis.com/apipb.NextHopAttribute] { next_hop: "0.0.0.0" } } '
    "pattrs { [type.googleapis.com/apipb.CommunitiesAttribute] { communities: 4294902426 } } "
    "family { afi: AFI_IP safi: SAFI_UNICAST }"
)

GOLDEN_FS4 = (
    "nlri { [type.googleapis.com/apipb.FlowSpecNLRI] { "
    "rules { [type.googleapis.com/apipb.FlowSpecIPPrefix] { "
    'type: 1 prefix_len: 32 prefix: "192.0.2.1" } } '
    "rules { [type.googleapis.com/apipb.FlowSpecComponent] { type: 3 items { op: 1 value: 17 } } } "
    "rules { [type.googleapis.com/apipb.FlowSpecComponent] { "
    "type: 6 items { op: 1 value: 123 } } } "
    "} } "
    "pattrs { [type.googleapis.com/apipb.OriginAttribute] { } } "
    "pattrs { [type.googleapis.com/apipb.MpReachNLRIAttribute] { "
    'family { afi: AFI_IP safi: SAFI_FLOW_SPEC_UNICAST } next_hops: "0.0.0.0" '
    "nlris { [type.googleapis.com/apipb.FlowSpecNLRI] { "
    "rules { [type.googleapis.com/apipb.FlowSpecIPPrefix] { "
    'type: 1 prefix_len: 32 prefix: "192.0.2.1" } } '
    "rules { [type.googleapis.com/apipb.FlowSpecComponent] { type: 3 items { op: 1 value: 17 } } } "
    "rules { [type.googleapis.com/apipb.FlowSpecComponent] { "
    "type: 6 items { op: 1 value: 123 } } } "
    "} } } } "
    "pattrs { [type.googleapis.com/apipb.ExtendedCommunitiesAttribute] { communities { "
    "[type.googleapis.com/apipb.TrafficRateExtended] { } } } } "
    "family { afi: AFI_IP safi: SAFI_FLOW_SPEC_UNICAST }"
)


def test_blackhole_ipv4_golden() -> None:
    assert one_line(render_path(intent(kind="blackhole", prefix="192.0.2.1"))) == GOLDEN_BH4


def test_flowspec_ipv4_discard_golden() -> None:
    path = render_path(
        intent(kind="flowspec", destination="192.0.2.1/32", protocol="udp", source_port="123")
    )
    assert one_line(path) == GOLDEN_FS4


# ---------------------------------------------------------------- blackhole attributes


def test_blackhole_ipv6_uses_mp_reach_with_next_hop_and_communities() -> None:
    path = render_path(
        intent(
            kind="blackhole",
            prefix="2001:db8:1::/48",
            communities=["64500:1", "blackhole"],
            large_communities=["64500:0:666", "64500:1:2"],
            next_hop="2001:db8::1",
        )
    )
    assert path.family == api.Family(afi=api.Family.AFI_IP6, safi=api.Family.SAFI_UNICAST)
    mp = pattr(path, attr.MpReachNLRIAttribute)
    assert list(mp.next_hops) == ["2001:db8::1"]
    assert unpack(mp.nlris[0]) == attr.IPAddressPrefix(prefix="2001:db8:1::", prefix_len=48)
    assert list(pattr(path, attr.CommunitiesAttribute).communities) == [
        (64500 << 16) | 1,
        BLACKHOLE,
    ]
    large = pattr(path, attr.LargeCommunitiesAttribute).communities
    assert [(c.global_admin, c.local_data1, c.local_data2) for c in large] == [
        (64500, 0, 666),
        (64500, 1, 2),
    ]
    assert not [a for a in (unpack(p) for p in path.pattrs) if isinstance(a, attr.NextHopAttribute)]


def test_settings_add_communities_and_default_next_hop() -> None:
    opts = RenderOptions(
        next_hop_v4="192.0.2.254", communities=("64500:666",), large_communities=("64500:9:9",)
    )
    path = render_path(intent(kind="blackhole", prefix="198.51.100.7"), opts)
    assert pattr(path, attr.NextHopAttribute).next_hop == "192.0.2.254"
    assert list(pattr(path, attr.CommunitiesAttribute).communities) == [
        (64500 << 16) | 666,
        BLACKHOLE,
    ]
    assert len(pattr(path, attr.LargeCommunitiesAttribute).communities) == 1


def test_no_communities_means_no_attribute() -> None:
    path = render_path(intent(kind="blackhole", prefix="192.0.2.1", communities=[]))
    kinds = {type(unpack(p)).__name__ for p in path.pattrs}
    assert kinds == {"OriginAttribute", "NextHopAttribute"}


def test_peers_and_scrubbing_are_refused() -> None:
    with pytest.raises(Unsupported, match="per-peer selection"):
        render_path(intent(kind="blackhole", prefix="192.0.2.1", peers=["192.0.2.9"]))
    with pytest.raises(Unsupported, match="scrubbing"):
        render_path(intent(kind="scrubbing", prefix="192.0.2.0/24"))


# ---------------------------------------------------------------- FlowSpec operators (RFC 8955)

# numeric: and=0x40 lt=0x04 gt=0x02 eq=0x01; bitmask: and=0x40 not=0x02 match=0x01
NUMERIC_CASES = [
    ("=53", [(0x01, 53)]),
    ("=53 =123", [(0x01, 53), (0x01, 123)]),
    (">=1024", [(0x03, 1024)]),
    ("<=1023", [(0x05, 1023)]),
    (">=1000&<=2000", [(0x03, 1000), (0x45, 2000)]),
    ("!=80", [(0x05, 79), (0x03, 81)]),  # canonical ranges: <=79 or >=81
    ("=22 >=1000&<=2000 >=60000", [(0x01, 22), (0x03, 1000), (0x45, 2000), (0x03, 60000)]),
]


@pytest.mark.parametrize(("text", "items"), NUMERIC_CASES)
def test_numeric_operator_bytes(text: str, items: list[tuple[int, int]]) -> None:
    path = render_path(
        intent(kind="flowspec", destination="192.0.2.0/24", protocol="tcp", destination_port=text)
    )
    assert components(path)[2] == (5, items)


BITMASK_CASES = [
    ("syn", [(0x00, 0x02)]),
    ("=syn+ack", [(0x01, 0x12)]),
    ("syn&!ack", [(0x00, 0x02), (0x42, 0x10)]),
    ("!=syn+ack", [(0x03, 0x12)]),
    ("fin rst", [(0x00, 0x01), (0x00, 0x04)]),
]


@pytest.mark.parametrize(("text", "items"), BITMASK_CASES)
def test_tcp_flag_operator_bytes(text: str, items: list[tuple[int, int]]) -> None:
    path = render_path(
        intent(kind="flowspec", destination="192.0.2.0/24", protocol="tcp", tcp_flags=text)
    )
    assert components(path)[2] == (9, items)


def test_every_component_type_in_rfc_order() -> None:
    fs = intent(
        kind="flowspec",
        destination="192.0.2.0/24",
        source="198.51.100.0/24",
        protocol="tcp",
        port="80",
        destination_port="443",
        source_port=">=1024",
        tcp_flags="syn",
        packet_length=">1400",
        dscp="46",
        fragment="is-fragment",
    )
    assert components(render_path(fs)) == [
        (1, "192.0.2.0/24"),
        (2, "198.51.100.0/24"),
        (3, [(0x01, 6)]),
        (4, [(0x01, 80)]),
        (5, [(0x01, 443)]),
        (6, [(0x03, 1024)]),
        (9, [(0x00, 0x02)]),
        (10, [(0x03, 1401)]),
        (11, [(0x01, 46)]),
        (12, [(0x00, 0x02)]),
    ]
    icmp = intent(
        kind="flowspec", destination="2001:db8::/32", protocol="icmpv6", icmp_type="128",
        icmp_code="0", flow_label="12345",
    )  # fmt: skip
    path = render_path(icmp)
    assert components(path) == [
        (1, "2001:db8::/32"),
        (3, [(0x01, 58)]),
        (7, [(0x01, 128)]),
        (8, [(0x01, 0)]),
        (13, [(0x01, 12345)]),
    ]
    assert path.family == api.Family(afi=api.Family.AFI_IP6, safi=api.Family.SAFI_FLOW_SPEC_UNICAST)
    assert list(pattr(path, attr.MpReachNLRIAttribute).next_hops) == ["::"]


# ---------------------------------------------------------------- actions


def action_of(action: dict[str, Any]) -> Any:
    path = render_path(intent(kind="flowspec", destination="192.0.2.1", action=action))
    (box,) = pattr(path, attr.ExtendedCommunitiesAttribute).communities
    return unpack(box)


def test_actions_as_extended_communities() -> None:
    assert action_of({"type": "discard"}) == attr.TrafficRateExtended(asn=0, rate=0.0)
    assert action_of({"type": "rate-limit", "bytes_per_second": 125000}) == (
        attr.TrafficRateExtended(asn=0, rate=125000.0)
    )
    assert action_of({"type": "mark", "dscp": 10}) == attr.TrafficRemarkExtended(dscp=10)
    assert action_of({"type": "redirect", "route_target": "64500:100"}) == (
        attr.RedirectTwoOctetAsSpecificExtended(asn=64500, local_admin=100)
    )
    assert action_of({"type": "redirect", "route_target": "4200000000:7"}) == (
        attr.RedirectFourOctetAsSpecificExtended(asn=4200000000, local_admin=7)
    )
    assert action_of({"type": "redirect", "route_target": "192.0.2.9:7"}) == (
        attr.RedirectIPv4AddressSpecificExtended(address="192.0.2.9", local_admin=7)
    )


# ---------------------------------------------------------------- read-back

ROUND_TRIP = [
    {"kind": "blackhole", "prefix": "192.0.2.1"},
    {"kind": "blackhole", "prefix": "192.0.2.0/28", "communities": []},
    {
        "kind": "blackhole",
        "prefix": "2001:db8::/64",
        "communities": ["64500:1", "blackhole"],
        "large_communities": ["64500:1:2"],
        "next_hop": "2001:db8::1",
    },
    {
        "kind": "flowspec",
        "destination": "192.0.2.0/24",
        "source": "198.51.100.0/24",
        "protocol": "tcp",
        "tcp_flags": "syn&!ack =fin+rst",
        "packet_length": "<100 >1400",
        "dscp": "46",
        "fragment": "is-fragment !first-fragment",
        "action": {"type": "redirect", "route_target": "64500:100"},
    },
    {
        "kind": "flowspec",
        "destination": "192.0.2.1",
        "protocol": "udp tcp",
        "port": "!=80",
        "source_port": "=123 >=1000&<=2000",
        "action": {"type": "rate-limit", "bytes_per_second": 1000},
    },
    {
        "kind": "flowspec",
        "destination": "2001:db8::/48",
        "protocol": "icmpv6",
        "icmp_type": "128",
        "flow_label": "5",
        "action": {"type": "mark", "dscp": 10},
    },
    {"kind": "flowspec", "destination": "2001:db8::/48", "action": {"type": "discard"}},
    {
        "kind": "flowspec",
        "destination": "192.0.2.1",
        "action": {"type": "redirect", "route_target": "192.0.2.9:5"},
    },
    {
        "kind": "flowspec",
        "destination": "2001:db8::1",
        "action": {"type": "redirect", "route_target": "4200000000:5"},
    },
]


@pytest.mark.parametrize("data", ROUND_TRIP, ids=lambda d: f"{d['kind']}")
def test_rendered_path_parses_back_to_the_same_key(data: dict[str, Any]) -> None:
    opts = RenderOptions(next_hop_v4="192.0.2.254", communities=("64500:666",))
    original = build_intent(data)
    back = parse_path(render_path(original, opts), opts)
    assert back == original
    assert back is not None
    assert intent_key(back) == intent_key(original)


def test_parse_ignores_paths_sluice_does_not_render() -> None:
    no_action = render_path(intent(kind="flowspec", destination="192.0.2.1"))
    del no_action.pattrs[2]
    assert parse_path(no_action) is None
    odd = api.Path(nlri=render_path(intent(kind="blackhole", prefix="192.0.2.1")).pattrs[0])
    assert parse_path(odd) is None


def test_wire_bits_from_gobgp_are_masked_when_reading_back() -> None:
    # ListPath returns items with the end-of-list (0x80) and length (0x30) bits set.
    items = [
        attr.FlowSpecComponentItem(op=0x01, value=22),
        attr.FlowSpecComponentItem(op=0x13, value=1000),
        attr.FlowSpecComponentItem(op=0xD5, value=2000),
    ]
    assert numeric_text(items) == "=22 >=1000&<=2000"
    flags = [
        attr.FlowSpecComponentItem(op=0x00, value=0x02),
        attr.FlowSpecComponentItem(op=0xC2, value=0x10),
    ]
    assert bitmask_text(flags) == "0x2&!0x10"


def test_withdraw_path_marks_a_copy() -> None:
    path = render_path(intent(kind="blackhole", prefix="192.0.2.1"))
    gone = withdraw_path(path)
    assert gone.is_withdraw
    assert not path.is_withdraw
    assert gone.nlri == path.nlri
