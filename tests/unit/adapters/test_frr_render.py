"""Golden cases: blackhole intents -> FRR commands, and running-config read-back."""

from __future__ import annotations

from typing import Any

from adapters.frr.render import (
    Config,
    Defaults,
    Group,
    held_intents,
    parse_running,
    plan_announce,
    plan_withdraw,
)
from policies.intents import BlackholeIntent, build_intent

KW: dict[str, Any] = {"asn": 65001, "route_map": "RTBH", "tag_base": 666000}


def bh(**kw: Any) -> BlackholeIntent:
    intent = build_intent({"kind": "blackhole", **kw})
    assert isinstance(intent, BlackholeIntent)
    return intent


def test_announce_plan_groups_attributes_into_route_map_entries() -> None:
    a = bh(prefix="203.0.113.5/32", large_communities=["64500:1:2"])
    b = bh(prefix="203.0.113.6/32", large_communities=["64500:1:2"])
    c = bh(
        prefix="2001:db8:1::5/128", communities=["64500:100", "blackhole"], next_hop="2001:db8::3"
    )
    plan = plan_announce(Config(), [a, None, b, c], defaults=Defaults(("64500:666",)), **KW)
    assert plan.refused == {}
    assert plan.tags == {0: 666001, 2: 666001, 3: 666002}
    assert plan.commands == [
        "configure terminal",
        "router bgp 65001",
        "address-family ipv4 unicast",
        "redistribute static route-map RTBH",
        "exit-address-family",
        "address-family ipv6 unicast",
        "redistribute static route-map RTBH",
        "exit-address-family",
        "exit",
        "route-map RTBH permit 1",
        "description sluice v4 community 65535:666; large-community 64500:1:2",
        "match tag 666001",
        "set community 64500:666 65535:666",
        "set large-community 64500:1:2",
        "exit",
        "route-map RTBH permit 2",
        "description sluice v6 community 64500:100 65535:666; next-hop 2001:db8::3",
        "match tag 666002",
        "set community 64500:100 64500:666 65535:666",
        "set ipv6 next-hop global 2001:db8::3",
        "exit",
        "ip route 203.0.113.5/32 blackhole tag 666001",
        "ip route 203.0.113.6/32 blackhole tag 666001",
        "ipv6 route 2001:db8:1::5/128 blackhole tag 666002",
        "end",
    ]


def test_no_communities_and_default_next_hop() -> None:
    g = Group.of(bh(prefix="203.0.113.5/32", communities=[]))
    assert g.description() == "sluice v4 community none"
    assert g.set_lines(Defaults(next_hop_v4="192.0.2.3")) == ["set ip next-hop 192.0.2.3"]


RUNNING = """\
frr version 8.4.4
!
ip route 198.51.100.0/24 Null0
ip route 203.0.113.5/32 blackhole tag 666001
ip route 203.0.113.7/32 blackhole tag 5
ipv6 route 2001:db8:1::5/128 blackhole tag 666002
!
router bgp 65001
 bgp router-id 192.0.2.1
 !
 address-family ipv4 unicast
  redistribute static route-map RTBH
  neighbor 192.0.2.2 activate
 exit-address-family
 !
 address-family ipv6 unicast
  neighbor 2001:db8::2 activate
 exit-address-family
exit
!
route-map RTBH permit 1
 description sluice v4 community 65535:666; large-community 64500:1:2
 match tag 666001
 set community blackhole
 set large-community 64500:1:2
exit
!
route-map RTBH permit 2
 description sluice v6 community 65535:666
 match tag 666002
 set community blackhole
exit
!
route-map OTHER permit 1
 description sluice v4 community 1:1
exit
!
end
"""


def test_parse_running_config() -> None:
    cfg = parse_running(RUNNING, "RTBH", 666000)
    assert cfg.routes == {"203.0.113.5/32": 666001, "2001:db8:1::5/128": 666002}
    assert set(cfg.groups) == {1, 2}
    assert cfg.redistributed == {4}
    held = held_intents(cfg, 666000)
    # IPv6 is not redistributed, so its route is not on the wire and not held
    assert held == {"203.0.113.5/32": bh(prefix="203.0.113.5/32", large_communities=["64500:1:2"])}


def test_same_prefix_other_attributes_is_refused_and_reuses_existing_entries() -> None:
    cfg = parse_running(RUNNING, "RTBH", 666000)
    same = bh(prefix="203.0.113.5/32", large_communities=["64500:1:2"])
    other = bh(prefix="203.0.113.5/32")
    fresh = bh(prefix="203.0.113.9/32", large_communities=["64500:1:2"])
    plan = plan_announce(cfg, [same, other, fresh], defaults=Defaults(), **KW)
    assert list(plan.refused) == [1]
    assert "withdraw that rule first" in plan.refused[1]
    assert "route-map RTBH permit 1" not in plan.commands  # entry 1 already exists
    assert "ip route 203.0.113.9/32 blackhole tag 666001" in plan.commands


def test_withdraw_plan_removes_routes_and_unused_entries() -> None:
    cfg = parse_running(RUNNING, "RTBH", 666000)
    a = bh(prefix="203.0.113.5/32", large_communities=["64500:1:2"])
    wrong = bh(prefix="2001:db8:1::5/128", communities=["64500:1"])
    gone = bh(prefix="203.0.113.99/32")
    plan = plan_withdraw(cfg, [a, wrong, gone], route_map="RTBH", tag_base=666000)
    assert plan.tags == {0: 666001}
    assert plan.commands == [
        "configure terminal",
        "no ip route 203.0.113.5/32 blackhole tag 666001",
        "no route-map RTBH permit 1",
        "end",
    ]
    assert plan_withdraw(cfg, [gone], route_map="RTBH", tag_base=666000).commands == []
