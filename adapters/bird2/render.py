"""Intents as BIRD 2 static routes: pure functions, no I/O.

The bird2 adapter owns one include file. It holds four ``protocol static`` blocks (IPv4
and IPv6 blackholes, flow4 and flow6 FlowSpec rules) that BIRD's own config pulls in with
``include "<file>";`` at top level; BGP protocols then export them. Each route is preceded
by a comment carrying the rule's intent key and canonical text, so the file describes
itself (:func:`parse_file` reads the intents back)::

    # sluice-key 3f0c... blackhole 203.0.113.5/32; community 65535:666
    route 203.0.113.5/32 blackhole { bgp_community.add((65535,666)); };

Blackholes are ``route P blackhole { ... }`` with communities, large communities and
``bgp_next_hop`` set in the route's attribute block. FlowSpec rules are
``route flow4 { dst ...; proto = 17; ... } { bgp_ext_community.add(...); }`` with every
RFC 8955/8956 component our intents have and the action as an extended community:

====================  ===========================================================
discard               ``(generic, 0x80060000, 0x0)`` (traffic-rate-bytes 0)
rate-limit N          ``(generic, 0x80060000, <IEEE-754 float of N>)``
redirect AS:NN        ``(generic, 0x8008<AS>, NN)``; 4-octet AS ``0x8208``; IPv4 ``0x8108``
mark DSCP             ``(generic, 0x80090000, DSCP)`` (traffic-marking)
====================  ===========================================================

:func:`display_network` is the text BIRD itself prints for a rendered network (its
``show route`` format); read-back compares it with what BIRD holds.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from policies.errors import IntentInvalid
from policies.flowmatch import BitmaskMatch, BitTerm, FragmentMatch, NumericMatch, TcpFlagsMatch
from policies.intents import (
    AnyIntent,
    BlackholeIntent,
    Discard,
    FlowSpecIntent,
    Mark,
    RateLimit,
    Redirect,
    canonical,
    parse_canonical,
)

HEADER = "# Managed by Sluice (bird2 adapter). Rewritten on every change: do not edit.\n"
FRAGMENT_NAMES = {1: "dont_fragment", 2: "is_fragment", 4: "first_fragment", 8: "last_fragment"}
_KEY_LINE = re.compile(r"^# sluice-key ([0-9a-f]+) (.+)$")


@dataclass(frozen=True, slots=True)
class Names:
    """Protocol and table names the rendered file uses (from the adapter settings)."""

    prefix: str = "sluice"
    ipv4_table: str = "master4"
    ipv6_table: str = "master6"
    flow4_table: str = "flowtab4"
    flow6_table: str = "flowtab6"

    def protocol(self, slot: str) -> str:
        return f"{self.prefix}_{slot}"

    def channel(self, slot: str) -> str:
        return {
            "bh4": f"ipv4 {{ table {self.ipv4_table}; }}",
            "bh6": f"ipv6 {{ table {self.ipv6_table}; }}",
            "fs4": f"flow4 {{ table {self.flow4_table}; }}",
            "fs6": f"flow6 {{ table {self.flow6_table}; }}",
        }[slot]


SLOTS = ("bh4", "bh6", "fs4", "fs6")


@dataclass(frozen=True, slots=True)
class Defaults:
    """Attributes the adapter config adds to every blackhole."""

    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()
    next_hop_v4: str | None = None
    next_hop_v6: str | None = None


def slot_of(intent: AnyIntent) -> str:
    """Which static protocol carries ``intent``: ``bh4``, ``bh6``, ``fs4`` or ``fs6``."""
    if isinstance(intent, BlackholeIntent):
        return f"bh{intent.prefix.version}"
    if isinstance(intent, FlowSpecIntent):
        return f"fs{intent.destination.version}"
    raise IntentInvalid(f"BIRD cannot carry {intent.kind} intents", field="kind")


# ---------------------------------------------------------------- FlowSpec components


def numeric_input(match: NumericMatch) -> str:
    """BIRD config text of a numeric match: ``= 53 || >= 1024 && <= 2048``."""
    return " || ".join(" && ".join(f"{op} {v}" for op, v in conj) for conj in match.terms())


def numeric_display(match: NumericMatch) -> str:
    """The same match as BIRD prints it (``53,1024..2048``), following its formatter."""
    ops: list[tuple[str, int, bool]] = []  # (op, value, and-bit)
    for conj in match.terms():
        ops += [(op, v, i > 0) for i, (op, v) in enumerate(conj)]
    out = ""
    last_op = ""
    i = 0
    while i < len(ops):
        op, v, and_bit = ops[i]
        if i:
            if not and_bit and op in ("=", ">=") and last_op in ("=", "<="):
                out = out[:-1] + ","
            else:
                out += "&& " if and_bit else "|| "
        nxt = ops[i + 1] if i + 1 < len(ops) else None
        if nxt is not None and not and_bit and nxt[2] and op == ">=" and nxt[0] == "<=":
            out += f"{v}..{nxt[1]}"
            i += 1
            op = nxt[0]
        elif op == "=":
            out += str(v)
        else:
            out += f"{op} {v}"
        out += " "
        last_op = op
        i += 1
    return out.rstrip()


def _bit_term_text(t: BitTerm) -> str:
    """One TCP-flags term; BIRD's value/mask with ``!`` (input and display agree)."""
    if t.match_all and not t.negate:
        return f"0x{t.bits:x}/0x{t.bits:x}"  # all bits set
    if t.negate and not t.match_all:
        return f"0x0/0x{t.bits:x}"  # none set
    if t.negate:
        return f"!0x{t.bits:x}/0x{t.bits:x}"  # not all set
    return f"!0x0/0x{t.bits:x}"  # any set


def tcp_flags_text(match: TcpFlagsMatch) -> str:
    return " || ".join(" && ".join(_bit_term_text(t) for t in g) for g in match.groups)


def _fragment_alternatives(t: BitTerm) -> list[list[tuple[bool, int]]]:
    """A fragment term as OR of AND-ed single-bit atoms (negated, bit): BIRD names one bit."""
    bits = [b for b in (1, 2, 4, 8) if t.bits & b]
    if len(bits) == 1:  # for one bit, "any" is "all" and "none" is "not all"
        return [[(t.negate, bits[0])]]
    if t.match_all and not t.negate:  # all set
        return [[(False, b) for b in bits]]
    if t.negate and not t.match_all:  # none set
        return [[(True, b) for b in bits]]
    if t.negate:  # not all set: one of them is clear
        return [[(True, b)] for b in bits]
    return [[(False, b)] for b in bits]  # any set


def fragment_text(match: FragmentMatch) -> str:
    alternatives: list[list[tuple[bool, int]]] = []
    for group in match.groups:
        per_term = [_fragment_alternatives(t) for t in group]
        for combo in itertools.product(*per_term):
            atoms = sorted({a for part in combo for a in part}, key=lambda a: (a[1], a[0]))
            if len({bit for _, bit in atoms}) < len(atoms):
                continue  # wants a bit both set and clear: matches nothing
            if atoms not in alternatives:
                alternatives.append(atoms)
    return " || ".join(
        " && ".join(("!" if neg else "") + FRAGMENT_NAMES[bit] for neg, bit in alt)
        for alt in alternatives
    )


def _bitmask(match: BitmaskMatch) -> str:
    if isinstance(match, TcpFlagsMatch):
        return tcp_flags_text(match)
    if isinstance(match, FragmentMatch):
        return fragment_text(match)
    raise IntentInvalid(f"unknown bitmask match {match!r}")


_KEYWORDS4 = {
    "protocol": "proto",
    "port": "port",
    "destination_port": "dport",
    "source_port": "sport",
    "icmp_type": "icmp type",
    "icmp_code": "icmp code",
    "tcp_flags": "tcp flags",
    "packet_length": "length",
    "dscp": "dscp",
    "fragment": "fragment",
    "flow_label": "label",
}


def _flow_parts(intent: FlowSpecIntent, *, display: bool) -> list[str]:
    v = intent.destination.version
    parts = [f"dst {intent.destination}"]
    if intent.source is not None:
        parts.append(f"src {intent.source}")
    for attr, _, value in intent.components():
        if attr in ("destination", "source"):
            continue
        kw = "next header" if attr == "protocol" and v == 6 else _KEYWORDS4[attr]
        if isinstance(value, NumericMatch):
            text = numeric_display(value) if display else numeric_input(value)
        elif isinstance(value, BitmaskMatch):
            text = _bitmask(value)
        else:  # pragma: no cover - every component is one of the two
            raise IntentInvalid(f"cannot render FlowSpec component {attr}")
        parts.append(f"{kw} {text}")
    return parts


def flow_network(intent: FlowSpecIntent) -> str:
    """The ``flowN { ... }`` network as BIRD config text."""
    return (
        f"flow{intent.destination.version} {{ "
        + "".join(f"{p}; " for p in _flow_parts(intent, display=False))
        + "}"
    )


def display_network(intent: AnyIntent) -> str:
    """The network as BIRD's ``show route`` prints it."""
    if isinstance(intent, BlackholeIntent):
        return str(intent.prefix)
    if isinstance(intent, FlowSpecIntent):
        return (
            f"flow{intent.destination.version} {{ "
            + "".join(f"{p}; " for p in _flow_parts(intent, display=True))
            + "}"
        )
    raise IntentInvalid(f"BIRD cannot carry {intent.kind} intents", field="kind")


# ---------------------------------------------------------------- actions and attributes


def _pair(c: str) -> str:
    return "(" + ",".join(c.split(":")) + ")"


def action_community(intent: FlowSpecIntent) -> str:
    """The action as BIRD's ``(generic, 0xHI, 0xLO)`` extended community."""
    a = intent.action
    if isinstance(a, Discard):
        return "(generic, 0x80060000, 0x0)"
    if isinstance(a, RateLimit):
        bits = struct.unpack(">I", struct.pack(">f", a.bytes_per_second))[0]
        return f"(generic, 0x80060000, 0x{bits:x})"
    if isinstance(a, Mark):
        return f"(generic, 0x80090000, 0x{a.dscp:x})"
    if isinstance(a, Redirect):
        head, _, local = a.route_target.rpartition(":")
        nn = int(local)
        if "." in head:
            ip = int(ipaddress.IPv4Address(head))
            return f"(generic, 0x8108{ip >> 16:04x}, 0x{((ip & 0xFFFF) << 16) | nn:x})"
        asn = int(head)
        if asn <= 0xFFFF:
            return f"(generic, 0x8008{asn:04x}, 0x{nn:x})"
        return f"(generic, 0x8208{asn >> 16:04x}, 0x{((asn & 0xFFFF) << 16) | nn:x})"
    raise IntentInvalid(f"unknown FlowSpec action {a!r}", field="action")


def render_route(intent: AnyIntent, defaults: Defaults = Defaults()) -> str:
    """One ``route ...;`` statement (without the key comment)."""
    if isinstance(intent, BlackholeIntent):
        comms = sorted(set(intent.communities) | set(defaults.communities), key=_num)
        large = sorted(set(intent.large_communities) | set(defaults.large_communities), key=_num)
        nh = intent.next_hop
        default_nh = defaults.next_hop_v4 if intent.prefix.version == 4 else defaults.next_hop_v6
        stmts = [f"bgp_community.add({_pair(c)});" for c in comms]
        stmts += [f"bgp_large_community.add({_pair(c)});" for c in large]
        if nh is not None or default_nh is not None:
            stmts.append(f"bgp_next_hop = {nh if nh is not None else default_nh};")
        body = " ".join(stmts)
        return f"route {intent.prefix} blackhole {{ {body} }};".replace("{  }", "{ }")
    if isinstance(intent, FlowSpecIntent):
        return (
            f"route {flow_network(intent)} "
            f"{{ bgp_ext_community.add({action_community(intent)}); }};"
        )
    raise IntentInvalid(f"BIRD cannot carry {intent.kind} intents", field="kind")


def _num(c: str) -> tuple[int, ...]:
    return tuple(int(p) for p in c.split(":"))


def render_file(
    entries: Mapping[str, AnyIntent], names: Names = Names(), defaults: Defaults = Defaults()
) -> str:
    """The whole include file: four static protocols (always present, maybe empty)."""
    by_slot: dict[str, list[tuple[str, AnyIntent]]] = {s: [] for s in SLOTS}
    for key, intent in sorted(entries.items(), key=lambda kv: (slot_of(kv[1]), canonical(kv[1]))):
        by_slot[slot_of(intent)].append((key, intent))
    out = [HEADER]
    for slot in SLOTS:
        out.append(f"protocol static {names.protocol(slot)} {{\n  {names.channel(slot)};\n")
        for key, intent in by_slot[slot]:
            out.append(f"  # sluice-key {key} {canonical(intent)}\n")
            out.append(f"  {render_route(intent, defaults)}\n")
        out.append("}\n")
    return "".join(out)


def parse_file(text: str) -> dict[str, AnyIntent]:
    """The intents a rendered file holds, by key (from the ``# sluice-key`` comments)."""
    out: dict[str, AnyIntent] = {}
    for line in text.splitlines():
        m = _KEY_LINE.match(line.strip())
        if m:
            out[m.group(1)] = parse_canonical(m.group(2))
    return out


def conflicts(entries: Iterable[tuple[str, AnyIntent]]) -> dict[str, str]:
    """Keys whose network another key already uses (BIRD holds one route per network).

    Returns ``{later_key: earlier_key}`` in iteration order.
    """
    seen: dict[tuple[str, str], str] = {}
    out: dict[str, str] = {}
    for key, intent in entries:
        net = (slot_of(intent), display_network(intent))
        if net in seen and seen[net] != key:
            out[key] = seen[net]
        else:
            seen[net] = key
    return out


def networks_in(reply: Sequence[str]) -> list[str]:
    """Networks in ``show route`` output lines (flow networks keep their braces)."""
    nets: list[str] = []
    for line in reply:
        if not line or line[0] in " \t":
            continue
        if line.startswith("flow"):
            end = line.find("}")
            if end > 0:
                nets.append(line[: end + 1])
            continue
        first = line.split()[0]
        if "/" in first:
            nets.append(first)
    return nets
