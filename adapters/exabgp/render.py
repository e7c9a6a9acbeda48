"""Intent <-> ExaBGP 4.2 API text: pure functions, no I/O.

:func:`render` gives the ``announce`` or ``withdraw`` command for an intent; :func:`parse`
reads an ``announce`` command this module wrote back into the intent, so read-back
(the bridge's list of acknowledged announcements) yields intent keys after a restart.

    announce route 192.0.2.1/32 next-hop self community [65535:666] large-community [64500:0:666]
    neighbor 192.0.2.2, neighbor 192.0.2.6 announce route ...
    announce flow route { match { destination 192.0.2.1/32; protocol [ =17 ]; \
source-port [ =123 ]; } then { discard; } }

FlowSpec numeric values use ExaBGP's operators (``=N >N >=N <N <=N !=N``, ``&`` joins an
AND, a space an OR); bitmask values are numbers with ``=`` (all bits), ``!`` (not) and
``!=``. IPv6 flows name the protocol ``next-header`` and DSCP ``traffic-class``
(RFC 8956 keeps the type codes). ExaBGP cannot redirect to an IPv4-address route target
(it rejects that form) and caps traffic-rate at 10^12 bytes/s: both are refused here.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Literal

from policies.errors import CapabilityMissing, IntentInvalid
from policies.flowmatch import BitmaskMatch, NumericMatch
from policies.intents import (
    AnyIntent,
    BlackholeIntent,
    Discard,
    FlowSpecIntent,
    Mark,
    RateLimit,
    build_intent,
)

Op = Literal["announce", "withdraw"]
MAX_RATE = 10**12
SELF = "self"

# (intent attribute, IPv4 keyword, IPv6 keyword) in RFC 8955 type order
FLOW_KEYWORDS: tuple[tuple[str, str, str], ...] = (
    ("protocol", "protocol", "next-header"),
    ("port", "port", "port"),
    ("destination_port", "destination-port", "destination-port"),
    ("source_port", "source-port", "source-port"),
    ("icmp_type", "icmp-type", "icmp-type"),
    ("icmp_code", "icmp-code", "icmp-code"),
    ("tcp_flags", "tcp-flags", "tcp-flags"),
    ("packet_length", "packet-length", "packet-length"),
    ("dscp", "dscp", "traffic-class"),
    ("fragment", "fragment", "fragment"),
    ("flow_label", "flow-label", "flow-label"),
)
_FIELD_BY_KEYWORD = {kw: attr for attr, v4, v6 in FLOW_KEYWORDS for kw in (v4, v6)}
_BITMASK_FIELDS = ("tcp_flags", "fragment")


class Unsupported(CapabilityMissing):
    """ExaBGP cannot carry this intent as written."""

    code = "unsupported_by_adapter"


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """What the adapter's settings add to every blackhole route."""

    next_hop_v4: str = SELF
    next_hop_v6: str = SELF
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()

    def next_hop(self, version: int) -> str:
        return self.next_hop_v4 if version == 4 else self.next_hop_v6


def _sorted(items: tuple[str, ...] | list[str]) -> list[str]:
    return sorted(set(items), key=lambda c: tuple(int(p) for p in c.split(":")))


def neighbor_prefix(peers: tuple[Any, ...]) -> str:
    return ", ".join(f"neighbor {p}" for p in peers) + " " if peers else ""


def render(intent: AnyIntent, op: Op, options: RenderOptions | None = None) -> str:
    """The API command that announces or withdraws ``intent``."""
    opts = options or RenderOptions()
    if isinstance(intent, BlackholeIntent):
        return neighbor_prefix(intent.peers) + f"{op} route " + route_body(intent, opts)
    if isinstance(intent, FlowSpecIntent):
        return f"{op} flow route " + flow_body(intent)
    raise Unsupported(f"ExaBGP cannot carry {intent.kind} intents", field="kind")


def route_body(intent: BlackholeIntent, opts: RenderOptions) -> str:
    version = intent.prefix.version
    next_hop = str(intent.next_hop) if intent.next_hop is not None else opts.next_hop(version)
    parts = [str(intent.prefix), "next-hop", next_hop]
    communities = _sorted([*intent.communities, *opts.communities])
    if communities:
        parts.append("community [ " + " ".join(communities) + " ]")
    large = _sorted([*intent.large_communities, *opts.large_communities])
    if large:
        parts.append("large-community [ " + " ".join(large) + " ]")
    return " ".join(parts)


def numeric_value(match: NumericMatch) -> str:
    return "[ " + " ".join("&".join(f"{op}{v}" for op, v in conj) for conj in match.terms()) + " ]"


def bitmask_value(match: BitmaskMatch) -> str:
    groups = []
    for group in match.groups:
        terms = [
            ("!" if t.negate else "") + ("=" if t.match_all else "") + str(t.bits) for t in group
        ]
        groups.append("&".join(terms))
    return "[ " + " ".join(groups) + " ]"


def action_text(intent: FlowSpecIntent) -> str:
    action = intent.action
    if isinstance(action, Discard):
        return "discard;"
    if isinstance(action, RateLimit):
        if action.bytes_per_second > MAX_RATE:
            raise Unsupported(
                f"ExaBGP caps rate-limit at {MAX_RATE} bytes/s; "
                f"{int(action.bytes_per_second)} would be silently lowered",
                field="action.bytes_per_second",
            )
        return f"rate-limit {int(action.bytes_per_second)};"
    if isinstance(action, Mark):
        return f"mark {action.dscp};"
    if "." in action.route_target:
        raise Unsupported(
            "ExaBGP 4.2 rejects redirect to an IPv4-address route target "
            f"({action.route_target}); use an ASN:NN route target",
            field="action.route_target",
        )
    return f"redirect {action.route_target};"


def flow_body(intent: FlowSpecIntent) -> str:
    version = intent.destination.version
    match = [f"destination {intent.destination};"]
    if intent.source is not None:
        match.append(f"source {intent.source};")
    for attr, v4, v6 in FLOW_KEYWORDS:
        value = getattr(intent, attr)
        if value is None:
            continue
        text = bitmask_value(value) if isinstance(value, BitmaskMatch) else numeric_value(value)
        match.append(f"{v4 if version == 4 else v6} {text};")
    return "{ match { " + " ".join(match) + " } then { " + action_text(intent) + " } }"


# ---------------------------------------------------------------- parsing back

_SELECTOR = re.compile(r"^(neighbor [^\s,]+(?:, neighbor [^\s,]+)*) ")
_ROUTE = re.compile(r"^(announce|withdraw) route (\S+) next-hop (\S+)(.*)$")
_GROUP = re.compile(r"^(announce|withdraw) attributes (next-hop .*?) nlri (.+)$")
_FLOW = re.compile(r"^(announce|withdraw) flow route \{ match \{ (.*) \} then \{ (.*) \} \}$")
_LIST = re.compile(r"(large-community|community) \[ ([^\]]*) \]")


def split_selector(command: str) -> tuple[tuple[str, ...], str]:
    """``(peers, rest)`` of a command with an optional ``neighbor A, neighbor B`` prefix."""
    m = _SELECTOR.match(command)
    if not m:
        return (), command
    peers = tuple(p.strip().removeprefix("neighbor ").strip() for p in m.group(1).split(","))
    return peers, command[m.end() :]


def route_entries(command: str) -> tuple[str, list[tuple[str, str]]] | None:
    """``(op, [(identity, announce command), ...])`` for an announce/withdraw command.

    The identity names the route slot (peers + prefix, or peers + flow match) a later
    withdraw removes; an ``attributes ... nlri P1 P2`` command stands for one
    ``route`` command per prefix, written as :func:`render` would write it.
    """
    peers, rest = split_selector(command.strip())
    selector = ",".join(peers)
    m = _ROUTE.match(rest)
    if m:
        return m.group(1), [(f"{selector}|route {m.group(2)}", command.strip())]
    m = _GROUP.match(rest)
    if m:
        op, attrs, prefixes = m.group(1), m.group(2), m.group(3).split()
        head = neighbor_prefix(tuple(peers))
        return op, [
            (f"{selector}|route {p}", f"{head}announce route {p} {attrs}") for p in prefixes
        ]
    m = _FLOW.match(rest)
    if m:
        return m.group(1), [(f"{selector}|flow {m.group(2)}", command.strip())]
    return None


def group_key(intent: BlackholeIntent, opts: RenderOptions) -> tuple[str, int]:
    """Blackholes with equal keys can share one ``attributes ... nlri`` command."""
    body = route_body(intent, opts)
    return neighbor_prefix(intent.peers) + body.split(" ", 1)[1], intent.prefix.version


def render_group(intents: list[BlackholeIntent], op: Op, opts: RenderOptions | None = None) -> str:
    """One command for blackholes that differ only in prefix (see :func:`group_key`)."""
    o = opts or RenderOptions()
    keys = {group_key(i, o) for i in intents}
    if len(keys) != 1:
        raise ValueError("render_group needs blackholes with the same peers and attributes")
    first = intents[0]
    attrs = route_body(first, o).split(" ", 1)[1]
    prefixes = " ".join(str(i.prefix) for i in intents)
    return neighbor_prefix(first.peers) + f"{op} attributes {attrs} nlri {prefixes}"


def parse(command: str, options: RenderOptions | None = None) -> AnyIntent | None:
    """The intent an ``announce`` command written by :func:`render` stands for, else None."""
    opts = options or RenderOptions()
    peers, rest = split_selector(command.strip())
    try:
        m = _ROUTE.match(rest)
        if m:
            return _parse_route(m, peers, opts)
        m = _FLOW.match(rest)
        if m and not peers:
            return _parse_flow(m.group(2), m.group(3))
    except (IntentInvalid, ValueError):
        return None
    return None


def _parse_route(m: re.Match[str], peers: tuple[str, ...], opts: RenderOptions) -> AnyIntent:
    prefix = ipaddress.ip_network(m.group(2))
    data: dict[str, Any] = {"kind": "blackhole", "prefix": str(prefix), "peers": list(peers)}
    lists = {k: v.split() for k, v in _LIST.findall(m.group(4))}
    data["communities"] = [c for c in lists.get("community", []) if c not in opts.communities]
    data["large_communities"] = [
        c for c in lists.get("large-community", []) if c not in opts.large_communities
    ]
    next_hop = m.group(3)
    if next_hop not in (SELF, opts.next_hop(prefix.version)):
        data["next_hop"] = next_hop
    return build_intent(data)


def _parse_flow(match: str, then: str) -> AnyIntent:
    data: dict[str, Any] = {"kind": "flowspec"}
    for clause in (c.strip() for c in match.split(";")):
        if not clause:
            continue
        key, _, value = clause.partition(" ")
        value = value.strip().removeprefix("[").removesuffix("]").strip()
        if key in ("destination", "source"):
            data[key] = value
        elif key in _FIELD_BY_KEYWORD:
            field = _FIELD_BY_KEYWORD[key]
            if field in _BITMASK_FIELDS:
                value = re.sub(r"\d+", lambda d: hex(int(d.group(0))), value)
            data[field] = value
        else:
            raise IntentInvalid(f"unknown flow match {key!r}")
    action, _, arg = then.strip().removesuffix(";").partition(" ")
    if action == "discard":
        data["action"] = {"type": "discard"}
    elif action == "rate-limit":
        data["action"] = {"type": "rate-limit", "bytes_per_second": int(arg)}
    elif action == "mark":
        data["action"] = {"type": "mark", "dscp": int(arg)}
    elif action == "redirect":
        data["action"] = {"type": "redirect", "route_target": arg}
    else:
        raise IntentInvalid(f"unknown flow action {action!r}")
    return build_intent(data)


# ---------------------------------------------------------------- ExaBGP's adj-rib-out

_RIB_ROUTE = re.compile(r"^neighbor (\S+) (?:.*? )?(?:ipv4|ipv6) unicast (\S+)")
_RIB_FLOW = re.compile(
    r"^neighbor (\S+) (?:.*? )?(?:ipv4|ipv6) flow flow destination-ipv[46] (\S+)"
    r"(?: source-ipv[46] (\S+))?"
)

RibKey = tuple[str, str, str]  # ("route", prefix, "") or ("flow", destination, source)


def _net(text: str) -> str:
    """ExaBGP prints IPv6 flow prefixes with their offset (``2001:db8::/48/0``)."""
    parts = text.split("/")
    if len(parts) == 3 and parts[2] == "0":
        text = "/".join(parts[:2])
    return str(ipaddress.ip_network(text))


def rib_entries(lines: list[str]) -> set[tuple[str, RibKey]]:
    """``(neighbor, key)`` for each line of ``show adj-rib out extensive``."""
    out: set[tuple[str, RibKey]] = set()
    for line in lines:
        m = _RIB_ROUTE.match(line)
        if m:
            out.add((m.group(1), ("route", _net(m.group(2)), "")))
            continue
        m = _RIB_FLOW.match(line)
        if m:
            src = _net(m.group(3)) if m.group(3) else ""
            out.add((m.group(1), ("flow", _net(m.group(2)), src)))
    return out


def rib_key(intent: AnyIntent) -> RibKey:
    """What :func:`rib_entries` shows for ``intent`` (flows: their prefixes only)."""
    if isinstance(intent, FlowSpecIntent):
        src = str(intent.source) if intent.source is not None else ""
        return ("flow", str(intent.destination), src)
    return ("route", str(intent.target), "")


def in_rib(intent: AnyIntent, entries: set[tuple[str, RibKey]]) -> bool:
    """Whether ExaBGP's adj-rib-out holds ``intent`` (for one of its peers, if it names any)."""
    key = rib_key(intent)
    peers = {str(p) for p in intent.peers} if isinstance(intent, BlackholeIntent) else set()
    return any(k == key and (not peers or n in peers) for n, k in entries)
