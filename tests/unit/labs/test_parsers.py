"""Read-back parsers of the lab: BIRD's show route, FRR's flowspec JSON, action decoding."""

from __future__ import annotations

from pathlib import Path

import pytest

from labs.bird import parse_routes, render_config
from labs.frr import community_numbers, parse_flows, render_bgpd
from labs.netns import Link, Namespace
from labs.peers import Neighbor
from labs.rib import bird_action, frr_actions
from labs.topology import _addresses, spare_next_hop

SHOW_ROUTE = """\
BIRD 2.0.12 ready.
Table master4:
203.0.113.5/32       unicast [spk4 18:45:28.452] * (100) [AS65001i]
\tvia 192.0.2.1 on sv0b
\tType: BGP univ
\tBGP.next_hop: 192.0.2.1
\tBGP.community: (65535,666) (64500,1)
\tBGP.large_community: (64500, 1, 2)
                     unicast [spk6 18:45:28.452] (100) [AS65001i]
\tvia 192.0.2.9 on sv1b
\tBGP.next_hop: 192.0.2.9
Table flowtab4:
flow4 { dst 203.0.113.5/32; proto 17; sport 123; }  [spk4 18:45:28.496 from 192.0.2.1] * (100)
\tType: BGP univ
\tBGP.ext_community: (generic, 0x80060000, 0x0) (rt, 64500, 100)
"""


def test_parse_show_route_all() -> None:
    a, b, flow = parse_routes(SHOW_ROUTE)
    assert a.network == "203.0.113.5/32" and a.protocol == "spk4" and a.kind == "unicast"
    assert a.next_hop == "192.0.2.1"
    assert a.communities == {"65535:666", "64500:1"}
    assert a.large_communities == {"64500:1:2"}
    assert b.network == "203.0.113.5/32" and b.protocol == "spk6" and b.next_hop == "192.0.2.9"
    assert flow.network == "flow4 { dst 203.0.113.5/32; proto 17; sport 123; }"
    assert flow.ext_communities == {"generic, 0x80060000, 0x0", "rt, 64500, 100"}


FRR_FLOWS = """\
[
  {"to":"203.0.113.5/32", "proto":"= 17 ", "srcp":"= 123 "},
  {"ecomlist":"FS:rate 0.000000"},
  {"time":"00:00:03"}
]
[
  {"to":"2001:db8:1::5/128/off 0", "from":"2001:db8:2::/48/off 0"},
  {"ecomlist":"FS:rate 125000.000000"},
  {"time":"00:00:00"}
]
"""


def test_parse_frr_flowspec_detail_json() -> None:
    a, b = parse_flows(FRR_FLOWS)
    assert a.destination == "203.0.113.5/32" and a.source == ""
    assert a.components == {"to": "203.0.113.5/32", "proto": "= 17", "srcp": "= 123"}
    assert frr_actions(a.actions) == {"discard"}
    assert b.destination == "2001:db8:1::5/128" and b.source == "2001:db8:2::/48"
    assert frr_actions(b.actions) == {"rate-limit 125000"}
    assert parse_flows("") == []


@pytest.mark.parametrize(
    ("ext", "action"),
    [
        ("generic, 0x80060000, 0x0", "discard"),
        ("generic, 0x80060000, 0x47f42400", "rate-limit 125000"),
        ("generic, 0x8008fbf4, 0x64", "redirect 64500:100"),
        ("generic, 0x8208fa56, 0xea000007", "redirect 4200000000:7"),
        ("generic, 0x8108c000, 0x2010007", "redirect 192.0.2.1:7"),
        ("generic, 0x80090000, 0x2e", "mark 46"),
        ("rt, 64500, 100", "ext rt, 64500, 100"),
    ],
)
def test_bird_action_decoding(ext: str, action: str) -> None:
    assert bird_action(ext) == action


def test_frr_action_and_community_decoding() -> None:
    assert frr_actions("FS:marking 46 FS:redirect VRF RT:64500:100") == {
        "mark 46",
        "redirect 64500:100",
    }
    assert community_numbers("blackhole no-export 64500:1") == {
        "65535:666",
        "65535:65281",
        "64500:1",
    }


def test_addressing_and_spare_next_hops() -> None:
    assert _addresses(0) == (
        ("192.0.2.1/29", "192.0.2.2/29"),
        ("2001:db8:0:0::1/64", "2001:db8:0:0::2/64"),
    )
    assert _addresses(1)[0] == ("192.0.2.9/29", "192.0.2.10/29")
    ns = Namespace("a", "sl0-a")
    link = Link(
        ns,
        ns,
        "x",
        "y",
        ("192.0.2.9/29", "192.0.2.10/29"),
        ("2001:db8:0:1::1/64", "2001:db8:0:1::2/64"),
    )
    assert (link.a_v4, link.b_v4, link.b_v6) == ("192.0.2.9", "192.0.2.10", "2001:db8:0:1::2")
    assert spare_next_hop(link, 4) == "192.0.2.11"
    assert spare_next_hop(link, 6) == "2001:db8:0:1::3"


def test_rendered_configs() -> None:
    nbs = [
        Neighbor("p-4", "192.0.2.2", 65010, "192.0.2.1"),
        Neighbor("p6", "2001:db8::2", 65010, "2001:db8::1"),
    ]
    rx = render_config("192.0.2.1", 65001, nbs)
    assert "protocol bgp p_4 {" in rx
    assert "  ipv4 { import all; export none; };" in rx
    assert "  flow6 { table flowtab6; import all; export none; };" in rx
    assert "include" not in rx
    spk = render_config("192.0.2.1", 65001, nbs, include=Path("/x/r.conf"))
    assert 'include "/x/r.conf";' in spk
    assert "  ipv4 { import none; export all; next hop keep; };" in spk
    frr = render_bgpd("r", "192.0.2.1", 65001, nbs)
    assert " address-family ipv6 flowspec\n  neighbor 2001:db8::2 activate\n" in frr
    assert " neighbor 192.0.2.2 advertisement-interval 0" in frr
