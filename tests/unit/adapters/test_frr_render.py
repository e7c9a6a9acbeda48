"""Golden cases: blackhole intents -> FRR commands, and running-config read-back."""

from __future__ import annotations

from typing import Any

from adapters.frr.render import (
    Config,
    Defaults,
    Group,
    held_intents,
    holds,
    parse_running,
    plan_announce,
    plan_withdraw,
)
from policies.intents import BlackholeIntent, build_intent

KW: dict[str, Any] = {"asn": 65001, "route_map": "RTBH"}


def bh(**kw: Any) -> BlackholeIntent:
    intent = build_intent({"kind": "blackhole", **kw})
    assert isinstance(intent, BlackholeIntent)
    return intent


def test_announce_plan_groups_attributes_into_route_maps() -> None:
    a = bh(prefix="203.0.113.5/32", large_communities=["64500:1:2"])
    b = bh(prefix="203.0.113.6/32", large_communities=["64500:1:2"])
    c = bh(
        prefix="2001:db8:1::5/128", communities=["64500:100", "blackhole"], next_hop="2001:db8::3"
    )
    plan = plan_announce(Config(), [a, None, b, c], defaults=Defaults(("64500:666",)), **KW)
    assert plan.refused == {}
    assert plan.maps == {0: "RTBH-1", 2: "RTBH-1", 3: "RTBH-2"}
    assert plan.sessions(65001, 2000) == [
        [
            "configure terminal",
            "router bgp 65001",
            "no bgp network import-check",
            "exit",
            "route-map RTBH-1 permit 1",
            "description sluice v4 community 65535:666; large-community 64500:1:2",
            "set community 64500:666 65535:666",
            "set large-community 64500:1:2",
            "exit",
            "route-map RTBH-2 permit 1",
            "description sluice v6 community 64500:100 65535:666; next-hop 2001:db8::3",
            "set community 64500:100 64500:666 65535:666",
            "set ipv6 next-hop global 2001:db8::3",
            "exit",
            "router bgp 65001",
            "address-family ipv4 unicast",
            "network 203.0.113.5/32 route-map RTBH-1",
            "network 203.0.113.6/32 route-map RTBH-1",
            "exit-address-family",
            "address-family ipv6 unicast",
            "network 2001:db8:1::5/128 route-map RTBH-2",
            "exit-address-family",
            "exit",
            "end",
        ]
    ]


def test_chunks_each_reenter_router_and_address_family() -> None:
    intents = [bh(prefix=f"203.0.113.{i}/32") for i in range(5)]
    plan = plan_announce(Config(), intents, defaults=Defaults(), **KW)
    sessions = plan.sessions(65001, 2)
    assert len(sessions) == 3
    head = ["configure terminal", "router bgp 65001", "no bgp network import-check", "exit"]
    assert sessions[0][:4] == head
    assert sessions[2] == [
        "configure terminal",
        "router bgp 65001",
        "address-family ipv4 unicast",
        "network 203.0.113.4/32 route-map RTBH-1",
        "exit-address-family",
        "exit",
        "end",
    ]
    assert sum(c.startswith("network ") for s in sessions for c in s) == 5
    assert sum(c.startswith("route-map ") for s in sessions for c in s) == 1
    assert plan_announce(Config(), [None], defaults=Defaults(), **KW).sessions(65001, 2) == []


def test_no_communities_and_default_next_hop() -> None:
    g = Group.of(bh(prefix="203.0.113.5/32", communities=[]))
    assert g.description() == "sluice v4 community none"
    assert g.set_lines(Defaults(next_hop_v4="192.0.2.3")) == ["set ip next-hop 192.0.2.3"]


RUNNING = """\
Building configuration...

Current configuration:
!
frr version 8.4.4
!
router bgp 65001
 bgp router-id 192.0.2.1
 no bgp network import-check
 !
 address-family ipv4 unicast
  network 198.51.100.0/24
  network 203.0.113.5/32 route-map RTBH-1
  network 203.0.113.6/32 route-map RTBH-2
  network 203.0.113.7/32 route-map OTHER
  neighbor 192.0.2.2 activate
 exit-address-family
 !
 address-family ipv6 unicast
  network 2001:db8:1::5/128 route-map RTBH-2
  neighbor 2001:db8::2 activate
 exit-address-family
exit
!
router bgp 65001 vrf blue
 address-family ipv4 unicast
  network 203.0.113.9/32 route-map RTBH-1
 exit-address-family
exit
!
route-map RTBH-1 permit 1
 description sluice v4 community 65535:666; large-community 64500:1:2
 set community blackhole
 set large-community 64500:1:2
exit
!
route-map RTBH-2 permit 1
 description sluice v6 community 65535:666
 set community blackhole
exit
!
route-map RTBH-3 permit 1
 description hand-made
exit
!
route-map OTHER permit 1
 description sluice v4 community 1:1
exit
!
end
"""


def test_parse_running_config() -> None:
    cfg = parse_running(RUNNING, "RTBH")
    assert cfg.networks == {
        "198.51.100.0/24": None,
        "203.0.113.5/32": "RTBH-1",
        "203.0.113.6/32": "RTBH-2",
        "203.0.113.7/32": "OTHER",
        "2001:db8:1::5/128": "RTBH-2",
    }  # the vrf instance's networks are not ours
    assert set(cfg.groups) == {1, 2} and cfg.taken == {1, 2, 3}
    held = held_intents(cfg, "RTBH")
    # 203.0.113.6/32 uses an IPv6 group, so it is not one of our intents
    assert held == {
        "203.0.113.5/32": bh(prefix="203.0.113.5/32", large_communities=["64500:1:2"]),
        "2001:db8:1::5/128": bh(prefix="2001:db8:1::5/128"),
    }


def test_same_prefix_other_attributes_is_refused_and_reuses_existing_maps() -> None:
    cfg = parse_running(RUNNING, "RTBH")
    same = bh(prefix="203.0.113.5/32", large_communities=["64500:1:2"])
    other = bh(prefix="203.0.113.5/32")
    operators = bh(prefix="198.51.100.0/24")
    foreign = bh(prefix="203.0.113.7/32")
    fresh = bh(prefix="203.0.113.9/32", large_communities=["64500:1:2"])
    new = bh(prefix="203.0.113.10/32", communities=["64500:7"])
    plan = plan_announce(
        cfg, [same, other, operators, foreign, fresh, new], defaults=Defaults(), **KW
    )
    assert sorted(plan.refused) == [1, 2, 3]
    assert "other attributes" in plan.refused[1] and "withdraw that rule first" in plan.refused[1]
    assert "not placed by sluice" in plan.refused[2]
    assert "route-map OTHER" in plan.refused[3]
    assert plan.maps == {0: "RTBH-1", 4: "RTBH-1", 5: "RTBH-4"}  # RTBH-3 exists: skipped
    [cmds] = plan.sessions(65001, 2000)
    assert "route-map RTBH-1 permit 1" not in cmds  # already exists
    assert "route-map RTBH-4 permit 1" in cmds
    assert "network 203.0.113.5/32 route-map RTBH-1" in cmds  # re-asserted, idempotent
    assert "network 203.0.113.9/32 route-map RTBH-1" in cmds


def test_withdraw_plan_removes_networks_and_unused_route_maps() -> None:
    cfg = parse_running(RUNNING, "RTBH")
    a = bh(prefix="203.0.113.5/32", large_communities=["64500:1:2"])
    wrong = bh(prefix="2001:db8:1::5/128", communities=["64500:1"])
    gone = bh(prefix="203.0.113.99/32")
    operators = bh(prefix="198.51.100.0/24")
    plan = plan_withdraw(cfg, [a, wrong, gone, operators], route_map="RTBH")
    assert plan.maps == {0: "RTBH-1"}
    assert plan.sessions(65001, 2000) == [
        [
            "configure terminal",
            "router bgp 65001",
            "address-family ipv4 unicast",
            "no network 203.0.113.5/32",
            "exit-address-family",
            "exit",
            "no route-map RTBH-1",
            "end",
        ]
    ]
    v6 = plan_withdraw(cfg, [bh(prefix="2001:db8:1::5/128")], route_map="RTBH")
    # RTBH-2 still carries 203.0.113.6/32, so it stays
    assert v6.sessions(65001, 2000)[0][-3:] == ["exit-address-family", "exit", "end"]
    assert plan_withdraw(cfg, [gone], route_map="RTBH").sessions(65001, 2000) == []


def test_our_network_without_its_route_map_is_taken_over() -> None:
    # FRR restarted behind a cached plan: the network line arrived, the route-map did not
    cfg = parse_running(
        "router bgp 65001\n address-family ipv4 unicast\n"
        "  network 203.0.113.5/32 route-map RTBH-1\n exit-address-family\nexit\n",
        "RTBH",
    )
    assert held_intents(cfg, "RTBH") == {}
    plan = plan_announce(cfg, [bh(prefix="203.0.113.5/32")], defaults=Defaults(), **KW)
    assert plan.refused == {} and plan.maps == {0: "RTBH-1"}
    assert "route-map RTBH-1 permit 1" in plan.sessions(65001, 2000)[0]


def test_holds_agrees_with_held_intents() -> None:
    cfg = parse_running(RUNNING, "RTBH")
    held = held_intents(cfg, "RTBH")
    cases = [
        bh(prefix="203.0.113.5/32", large_communities=["64500:1:2"]),
        bh(prefix="203.0.113.5/32"),
        bh(prefix="203.0.113.6/32"),
        bh(prefix="203.0.113.7/32"),
        bh(prefix="198.51.100.0/24"),
        bh(prefix="2001:db8:1::5/128"),
        bh(prefix="2001:db8:1::5/128", next_hop="2001:db8::1"),
    ]
    for intent in cases:
        assert holds(cfg, intent, "RTBH") == (held.get(str(intent.prefix)) == intent), intent
    assert [holds(cfg, i, "RTBH") for i in cases] == [True, False, False, False, False, True, False]
