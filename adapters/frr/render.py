"""Blackhole intents as FRR configuration: pure functions, no I/O.

FRR originates an RTBH route as a static blackhole route redistributed into BGP through a
route-map that sets the route's attributes. Routes with different attributes need
different route-map entries, so each distinct attribute set (a :class:`Group`) gets one
sequence number ``SEQ`` and its routes carry the tag ``tag_base + SEQ``::

    route-map SLUICE-RTBH permit 3
     description sluice v4 community 65535:666; large-community 64500:1:2
     match tag 666003
     set community 65535:666
     set large-community 64500:1:2
    exit
    ip route 203.0.113.5/32 blackhole tag 666003
    router bgp 65001
     address-family ipv4 unicast
      redistribute static route-map SLUICE-RTBH

The entry's ``description`` records the intent's own attributes (before the adapter's
default communities are merged in), so :func:`held_intents` rebuilds every intent from
``show running-config`` alone and read-back survives a restart of Sluice. Static routes
whose tag is outside ``tag_base+1 .. tag_base+65535`` are not ours and are left alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from policies.errors import SluiceError
from policies.intents import BlackholeIntent, parse_canonical

MAX_SEQ = 65535


@dataclass(frozen=True, slots=True)
class Defaults:
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()
    next_hop_v4: str | None = None
    next_hop_v6: str | None = None


@dataclass(frozen=True, slots=True)
class Group:
    """The attributes of a blackhole intent, apart from its prefix."""

    version: int
    communities: tuple[str, ...]
    large_communities: tuple[str, ...]
    next_hop: str | None

    @classmethod
    def of(cls, intent: BlackholeIntent) -> Group:
        nh = None if intent.next_hop is None else str(intent.next_hop)
        return cls(intent.prefix.version, intent.communities, intent.large_communities, nh)

    def description(self) -> str:
        parts = ["community " + (" ".join(self.communities) or "none")]
        if self.large_communities:
            parts.append("large-community " + " ".join(self.large_communities))
        if self.next_hop is not None:
            parts.append(f"next-hop {self.next_hop}")
        return f"sluice v{self.version} " + "; ".join(parts)

    def intent(self, prefix: str) -> BlackholeIntent:
        text = self.description().split(" ", 2)[2]
        intent = parse_canonical(f"blackhole {prefix}; {text}")
        if not isinstance(intent, BlackholeIntent):  # pragma: no cover - parse gives blackhole
            raise SluiceError(f"not a blackhole: {prefix}")
        return intent

    @classmethod
    def parse(cls, description: str) -> Group | None:
        m = re.match(r"^sluice v([46]) (.*)$", description.strip())
        if not m:
            return None
        try:
            probe = "0.0.0.0/0" if m.group(1) == "4" else "::/0"
            intent = parse_canonical(f"blackhole {probe}; {m.group(2)}")
        except SluiceError:
            return None
        if not isinstance(intent, BlackholeIntent):  # pragma: no cover
            return None
        return cls.of(intent)

    def set_lines(self, defaults: Defaults) -> list[str]:
        comms = sorted(set(self.communities) | set(defaults.communities), key=_num)
        large = sorted(set(self.large_communities) | set(defaults.large_communities), key=_num)
        nh = self.next_hop or (defaults.next_hop_v4 if self.version == 4 else defaults.next_hop_v6)
        lines = []
        if comms:
            lines.append("set community " + " ".join(comms))
        if large:
            lines.append("set large-community " + " ".join(large))
        if nh is not None:
            lines.append(
                f"set ip next-hop {nh}" if self.version == 4 else f"set ipv6 next-hop global {nh}"
            )
        return lines


def _num(c: str) -> tuple[int, ...]:
    return tuple(int(p) for p in c.split(":"))


@dataclass
class Config:
    """What the running config holds for us: route-map entries and tagged blackholes."""

    groups: dict[int, Group] = field(default_factory=dict)  # seq -> group
    routes: dict[str, int] = field(default_factory=dict)  # prefix -> tag
    redistributed: set[int] = field(default_factory=set)  # address families (4, 6)


_ROUTE = re.compile(r"^(ip|ipv6) route (\S+) blackhole tag (\d+)\s*$")
_ROUTER = re.compile(r"^router bgp (\d+)")


def parse_running(text: str, route_map: str, tag_base: int) -> Config:
    """Read our route-map entries, tagged blackhole routes and redistribution."""
    cfg = Config()
    seq: int | None = None
    afi: int | None = None
    in_bgp = False
    for raw in text.splitlines():
        line = raw.strip()
        m = _ROUTE.match(line)
        if m and not raw.startswith(" "):
            tag = int(m.group(3))
            if tag_base < tag <= tag_base + MAX_SEQ:
                cfg.routes[m.group(2)] = tag
            continue
        if line.startswith(f"route-map {route_map} permit "):
            seq = int(line.split()[-1])
            continue
        if seq is not None:
            if line.startswith("description "):
                group = Group.parse(line.removeprefix("description "))
                if group is not None:
                    cfg.groups[seq] = group
            elif line in ("exit", "!") or not raw.startswith(" "):
                seq = None
            continue
        if _ROUTER.match(line):
            in_bgp = True
            continue
        if in_bgp:
            if line.startswith("address-family ipv4 unicast"):
                afi = 4
            elif line.startswith("address-family ipv6 unicast"):
                afi = 6
            elif line == "exit-address-family":
                afi = None
            elif line == "exit" and not raw.startswith(" "):
                in_bgp = False
            elif afi is not None and line == f"redistribute static route-map {route_map}":
                cfg.redistributed.add(afi)
    return cfg


def held_intents(cfg: Config, tag_base: int) -> dict[str, BlackholeIntent]:
    """Prefix -> intent for every tagged route whose group is known and redistributed."""
    out: dict[str, BlackholeIntent] = {}
    for prefix, tag in cfg.routes.items():
        group = cfg.groups.get(tag - tag_base)
        if group is None or group.version not in cfg.redistributed:
            continue
        out[prefix] = group.intent(prefix)
    return out


def route_line(intent: BlackholeIntent, tag: int, *, remove: bool = False) -> str:
    cmd = "ip" if intent.prefix.version == 4 else "ipv6"
    return f"{'no ' if remove else ''}{cmd} route {intent.prefix} blackhole tag {tag}"


def group_lines(route_map: str, seq: int, tag: int, group: Group, defaults: Defaults) -> list[str]:
    return [
        f"route-map {route_map} permit {seq}",
        f"description {group.description()}",
        f"match tag {tag}",
        *group.set_lines(defaults),
        "exit",
    ]


def redistribute_lines(asn: int, route_map: str) -> list[str]:
    lines = [f"router bgp {asn}"]
    for afi in ("ipv4", "ipv6"):
        lines += [
            f"address-family {afi} unicast",
            f"redistribute static route-map {route_map}",
            "exit-address-family",
        ]
    return [*lines, "exit"]


@dataclass
class Plan:
    """vtysh commands for a batch, and the rules refused before anything is sent."""

    commands: list[str] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)  # index in the batch -> why
    tags: dict[int, int] = field(default_factory=dict)  # index -> tag used


def plan_announce(
    cfg: Config,
    intents: Sequence[BlackholeIntent | None],
    *,
    asn: int,
    route_map: str,
    tag_base: int,
    defaults: Defaults,
) -> Plan:
    """Commands that make FRR originate every intent (``None`` entries are skipped)."""
    plan = Plan()
    seq_of = {g: s for s, g in cfg.groups.items()}
    groups = dict(cfg.groups)
    new_groups: list[tuple[int, Group]] = []
    routes = dict(cfg.routes)
    route_cmds: list[str] = []
    for i, intent in enumerate(intents):
        if intent is None:
            continue
        group = Group.of(intent)
        prefix = str(intent.prefix)
        seq = seq_of.get(group)
        held_tag = routes.get(prefix)
        if held_tag is not None and (seq is None or held_tag != tag_base + seq):
            other = groups.get(held_tag - tag_base)
            what = other.description() if other is not None else f"tag {held_tag}"
            plan.refused[i] = (
                f"FRR holds one blackhole route per prefix and {prefix} is already announced "
                f"with other attributes ({what}); withdraw that rule first"
            )
            continue
        if seq is None:
            used = set(cfg.groups) | {s for s, _ in new_groups}
            seq = next((s for s in range(1, MAX_SEQ + 1) if s not in used), 0)
            if seq == 0:
                plan.refused[i] = f"route-map {route_map} has no free sequence number left"
                continue
            new_groups.append((seq, group))
            groups[seq] = group
            seq_of[group] = seq
        tag = tag_base + seq
        routes[prefix] = tag
        plan.tags[i] = tag
        route_cmds.append(route_line(intent, tag))
    if route_cmds:
        # redistribution first: a wrong ASN is refused before anything else is applied
        plan.commands = ["configure terminal", *redistribute_lines(asn, route_map)]
        for seq, group in new_groups:
            plan.commands += group_lines(route_map, seq, tag_base + seq, group, defaults)
        plan.commands += [*route_cmds, "end"]
    return plan


def plan_withdraw(
    cfg: Config, intents: Sequence[BlackholeIntent], *, route_map: str, tag_base: int
) -> Plan:
    """Commands removing the routes of ``intents`` and route-map entries left unused."""
    plan = Plan()
    routes = dict(cfg.routes)
    cmds: list[str] = []
    for i, intent in enumerate(intents):
        prefix = str(intent.prefix)
        tag = routes.get(prefix)
        if tag is None:
            continue
        group = cfg.groups.get(tag - tag_base)
        if group is not None and group != Group.of(intent):
            continue  # the prefix carries another rule; this one is not held
        cmds.append(route_line(intent, tag, remove=True))
        plan.tags[i] = tag
        del routes[prefix]
    in_use = {t - tag_base for t in routes.values()}
    unused = [
        s for s in cfg.groups if s not in in_use and s in {t - tag_base for t in plan.tags.values()}
    ]
    if cmds:
        plan.commands = ["configure terminal", *cmds]
        plan.commands += [f"no route-map {route_map} permit {s}" for s in sorted(unused)]
        plan.commands.append("end")
    return plan
