"""Intent <-> GoBGP ``apipb.Path``: pure functions, no I/O.

:func:`render_path` turns a blackhole or FlowSpec intent into the protobuf ``Path`` that
``AddPath``/``DeletePath`` take; :func:`parse_path` reads a ``Path`` from ``ListPath`` back
into the intent it stands for, so that read-back yields intent keys even after the
orchestrator restarted and lost the ``AddPath`` uuids.

Encodings follow GoBGP's ``pkg/apiutil`` and ``pkg/packet/bgp``:

* IPv4 unicast: ``IPAddressPrefix`` NLRI + ``NextHopAttribute``; IPv6 unicast and both
  FlowSpec families: ``MpReachNLRIAttribute`` carrying the NLRI and the next hop.
* FlowSpec NLRI: ``FlowSpecIPPrefix`` (types 1, 2) and ``FlowSpecComponent`` items. Each
  item's ``op`` is the RFC 8955 operator byte without the end-of-list and length bits
  (GoBGP sets those): numeric ``a=0x40 lt=0x04 gt=0x02 eq=0x01``, bitmask
  ``a=0x40 not=0x02 m=0x01``.
* Actions are extended communities: traffic-rate (0 = discard), redirect (2-octet AS,
  4-octet AS or IPv4 route target) and traffic-marking.

A next hop of ``0.0.0.0`` / ``::`` makes GoBGP put the session's local address on the
wire, which is what an eBGP receiver on a shared link accepts.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import any_pb2

from adapters.gobgp.proto import api, attr
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

ORIGIN_IGP = 0
AFI = {4: api.Family.AFI_IP, 6: api.Family.AFI_IP6}
UNSPECIFIED = {4: "0.0.0.0", 6: "::"}  # noqa: S104 - a next hop, not a bind address

# FlowSpec component types (RFC 8955 section 4.2.2, RFC 8956 section 3).
FS_DST, FS_SRC = 1, 2
FS_TYPES: dict[str, int] = {
    "protocol": 3,
    "port": 4,
    "destination_port": 5,
    "source_port": 6,
    "icmp_type": 7,
    "icmp_code": 8,
    "tcp_flags": 9,
    "packet_length": 10,
    "dscp": 11,
    "fragment": 12,
    "flow_label": 13,
}
FS_FIELDS = {t: name for name, t in FS_TYPES.items()}

OP_AND = 0x40
NUM_OPS = {"=": 0x01, ">": 0x02, ">=": 0x03, "<": 0x04, "<=": 0x05, "!=": 0x06}
NUM_TEXT = {bits: text for text, bits in NUM_OPS.items()}
BIT_NOT, BIT_MATCH = 0x02, 0x01


class Unsupported(CapabilityMissing):
    """The intent cannot be expressed through this adapter (e.g. per-peer selection)."""

    code = "unsupported_by_adapter"


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """What the adapter's settings add to every route."""

    next_hop_v4: str = UNSPECIFIED[4]
    next_hop_v6: str = UNSPECIFIED[6]
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()

    def next_hop(self, version: int) -> str:
        return self.next_hop_v4 if version == 4 else self.next_hop_v6


def pack(message: Any) -> Any:
    box = any_pb2.Any()
    box.Pack(message)
    return box


@functools.lru_cache(maxsize=8)
def _family(version: int, flowspec: bool) -> Any:
    safi = api.Family.SAFI_FLOW_SPEC_UNICAST if flowspec else api.Family.SAFI_UNICAST
    return api.Family(afi=AFI[version], safi=safi)


def family(version: int, flowspec: bool) -> Any:
    """A fresh ``apipb.Family`` (callers may modify it)."""
    out = api.Family()
    out.CopyFrom(_family(version, flowspec))
    return out


def community_value(text: str) -> int:
    high, low = (int(p) for p in text.split(":"))
    return (high << 16) | low


def community_text(value: int) -> str:
    return f"{value >> 16}:{value & 0xFFFF}"


def _merged(first: tuple[str, ...], second: tuple[str, ...]) -> list[str]:
    if not second:
        return list(first)  # intents keep their communities sorted and unique
    out: list[str] = []
    for c in (*first, *second):
        if c not in out:
            out.append(c)
    return sorted(out, key=lambda c: tuple(int(p) for p in c.split(":")))


# ---------------------------------------------------------------- rendering


def render_path(intent: AnyIntent, options: RenderOptions | None = None) -> Any:
    """The ``apipb.Path`` for ``intent`` (raises :class:`Unsupported` when it cannot be)."""
    opts = options or RenderOptions()
    if isinstance(intent, BlackholeIntent):
        return _render_blackhole(intent, opts)
    if isinstance(intent, FlowSpecIntent):
        return _render_flowspec(intent)
    raise Unsupported(f"GoBGP cannot carry {intent.kind} intents", field="kind")


def _render_blackhole(intent: BlackholeIntent, opts: RenderOptions) -> Any:
    if intent.peers:
        raise Unsupported(
            "the GoBGP adapter announces to every configured neighbour; per-peer selection "
            "(peers) is not supported: use a GoBGP adapter whose gobgpd peers only with "
            "those routers",
            field="peers",
        )
    version = intent.prefix.version
    nlri = pack(
        attr.IPAddressPrefix(
            prefix=str(intent.prefix.network_address), prefix_len=intent.prefix.prefixlen
        )
    )
    next_hop = str(intent.next_hop) if intent.next_hop is not None else opts.next_hop(version)
    shared = _shared_attrs(
        version,
        next_hop,
        tuple(_merged(intent.communities, opts.communities)),
        tuple(_merged(intent.large_communities, opts.large_communities)),
    )
    pattrs = list(shared)
    if version == 6:
        mp = attr.MpReachNLRIAttribute(family=family(6, False), next_hops=[next_hop], nlris=[nlri])
        pattrs.insert(1, pack(mp))
    return api.Path(nlri=nlri, pattrs=pattrs, family=family(version, flowspec=False))


@functools.lru_cache(maxsize=1024)
def _shared_attrs(
    version: int, next_hop: str, communities: tuple[str, ...], large: tuple[str, ...]
) -> tuple[Any, ...]:
    """The packed attributes every blackhole with these settings carries (cached: a storm
    of 10,000 routes shares one set). IPv6's MP_REACH holds the NLRI, so it is not here."""
    pattrs = [pack(attr.OriginAttribute(origin=ORIGIN_IGP))]
    if version == 4:
        pattrs.append(pack(attr.NextHopAttribute(next_hop=next_hop)))
    if communities:
        values = [community_value(c) for c in communities]
        pattrs.append(pack(attr.CommunitiesAttribute(communities=values)))
    if large:
        items = []
        for c in large:
            g, l1, l2 = (int(p) for p in c.split(":"))
            items.append(attr.LargeCommunity(global_admin=g, local_data1=l1, local_data2=l2))
        pattrs.append(pack(attr.LargeCommunitiesAttribute(communities=items)))
    return tuple(pattrs)


def numeric_items(match: NumericMatch) -> list[Any]:
    items = []
    for conj in match.terms():
        for i, (op, value) in enumerate(conj):
            bits = NUM_OPS[op] | (OP_AND if i else 0)
            items.append(attr.FlowSpecComponentItem(op=bits, value=value))
    return items


def bitmask_items(match: BitmaskMatch) -> list[Any]:
    items = []
    for group in match.groups:
        for i, term in enumerate(group):
            bits = (BIT_NOT if term.negate else 0) | (BIT_MATCH if term.match_all else 0)
            bits |= OP_AND if i else 0
            items.append(attr.FlowSpecComponentItem(op=bits, value=term.bits))
    return items


def flowspec_rules(intent: FlowSpecIntent) -> list[Any]:
    """The NLRI components, in RFC 8955 type order."""
    rules = []
    for kind, net in ((FS_DST, intent.destination), (FS_SRC, intent.source)):
        if net is not None:
            rules.append(
                pack(
                    attr.FlowSpecIPPrefix(
                        type=kind, prefix=str(net.network_address), prefix_len=net.prefixlen
                    )
                )
            )
    for name, kind in FS_TYPES.items():
        value = getattr(intent, name)
        if value is None:
            continue
        items = bitmask_items(value) if isinstance(value, BitmaskMatch) else numeric_items(value)
        rules.append(pack(attr.FlowSpecComponent(type=kind, items=items)))
    return rules


def action_community(intent: FlowSpecIntent) -> Any:
    action = intent.action
    if isinstance(action, Discard):
        return attr.TrafficRateExtended(asn=0, rate=0.0)
    if isinstance(action, RateLimit):
        return attr.TrafficRateExtended(asn=0, rate=action.bytes_per_second)
    if isinstance(action, Mark):
        return attr.TrafficRemarkExtended(dscp=action.dscp)
    global_part, local = action.route_target.rsplit(":", 1)
    if "." in global_part:
        return attr.RedirectIPv4AddressSpecificExtended(address=global_part, local_admin=int(local))
    asn = int(global_part)
    if asn <= 0xFFFF:
        return attr.RedirectTwoOctetAsSpecificExtended(asn=asn, local_admin=int(local))
    return attr.RedirectFourOctetAsSpecificExtended(asn=asn, local_admin=int(local))


def _render_flowspec(intent: FlowSpecIntent) -> Any:
    version = intent.destination.version
    fam = family(version, flowspec=True)
    nlri = pack(attr.FlowSpecNLRI(rules=flowspec_rules(intent)))
    pattrs = [
        pack(attr.OriginAttribute(origin=ORIGIN_IGP)),
        pack(attr.MpReachNLRIAttribute(family=fam, next_hops=[UNSPECIFIED[version]], nlris=[nlri])),
        pack(attr.ExtendedCommunitiesAttribute(communities=[pack(action_community(intent))])),
    ]
    return api.Path(nlri=nlri, pattrs=pattrs, family=fam)


def withdraw_path(path: Any) -> Any:
    """The same path marked as a withdrawal (what ``DeletePath`` takes)."""
    out = api.Path()
    out.CopyFrom(path)
    out.is_withdraw = True
    return out


def nlri_fingerprint(path: Any) -> bytes:
    """An identity of a path's NLRI: family and the encoded NLRI (both GoBGP and protobuf
    for Python encode fields in number order, so ListPath's bytes match ours)."""
    encoded: bytes = path.nlri.value
    return bytes([path.family.afi & 0xFF, path.family.safi & 0xFF]) + encoded


# ---------------------------------------------------------------- parsing back

_ATTR_TYPES: dict[str, Any] = {
    m.DESCRIPTOR.full_name: m
    for m in (
        attr.IPAddressPrefix,
        attr.FlowSpecNLRI,
        attr.FlowSpecIPPrefix,
        attr.FlowSpecComponent,
        attr.OriginAttribute,
        attr.NextHopAttribute,
        attr.MpReachNLRIAttribute,
        attr.CommunitiesAttribute,
        attr.LargeCommunitiesAttribute,
        attr.ExtendedCommunitiesAttribute,
        attr.TrafficRateExtended,
        attr.TrafficRemarkExtended,
        attr.RedirectTwoOctetAsSpecificExtended,
        attr.RedirectFourOctetAsSpecificExtended,
        attr.RedirectIPv4AddressSpecificExtended,
    )
}


def unpack(box: Any) -> Any:
    """The message inside an ``Any``, or ``None`` for types this module does not read."""
    name = box.TypeName()
    cls = _ATTR_TYPES.get(name)
    if cls is None:
        return None
    msg = cls()
    box.Unpack(msg)
    return msg


def numeric_text(items: Sequence[Any]) -> str:
    conjs: list[list[str]] = []
    for item in items:
        cmp = item.op & 0x07
        if cmp == 0x07:
            term = ">=0"
        elif cmp == 0:
            raise IntentInvalid("numeric FlowSpec term that matches nothing")
        else:
            term = f"{NUM_TEXT[cmp]}{item.value}"
        if item.op & OP_AND and conjs:
            conjs[-1].append(term)
        else:
            conjs.append([term])
    return " ".join("&".join(c) for c in conjs)


def bitmask_text(items: Sequence[Any]) -> str:
    groups: list[list[str]] = []
    for item in items:
        term = ("!" if item.op & BIT_NOT else "") + ("=" if item.op & BIT_MATCH else "")
        term += hex(item.value)
        if item.op & OP_AND and groups:
            groups[-1].append(term)
        else:
            groups.append([term])
    return " ".join("&".join(g) for g in groups)


def _action(communities: Iterable[Any]) -> dict[str, Any] | None:
    for box in communities:
        ext = unpack(box)
        if isinstance(ext, attr.TrafficRateExtended):
            if ext.rate == 0:
                return {"type": "discard"}
            return {"type": "rate-limit", "bytes_per_second": round(ext.rate)}
        if isinstance(ext, attr.TrafficRemarkExtended):
            return {"type": "mark", "dscp": ext.dscp}
        if isinstance(
            ext,
            attr.RedirectTwoOctetAsSpecificExtended | attr.RedirectFourOctetAsSpecificExtended,
        ):
            return {"type": "redirect", "route_target": f"{ext.asn}:{ext.local_admin}"}
        if isinstance(ext, attr.RedirectIPv4AddressSpecificExtended):
            return {"type": "redirect", "route_target": f"{ext.address}:{ext.local_admin}"}
    return None


def parse_path(path: Any, options: RenderOptions | None = None) -> AnyIntent | None:
    """The intent a ``ListPath`` path stands for, or ``None`` when it is not one of ours.

    Communities the settings add to every route and the settings' default next hop are
    left out again, so a rendered intent parses back to itself.
    """
    opts = options or RenderOptions()
    nlri = unpack(path.nlri)
    attrs = [a for a in (unpack(p) for p in path.pattrs) if a is not None]
    try:
        if isinstance(nlri, attr.IPAddressPrefix):
            return _parse_blackhole(nlri, attrs, opts)
        if isinstance(nlri, attr.FlowSpecNLRI):
            return _parse_flowspec(nlri, attrs)
    except IntentInvalid:
        return None
    return None


def _parse_blackhole(nlri: Any, attrs: list[Any], opts: RenderOptions) -> AnyIntent:
    prefix = ipaddress.ip_network(f"{nlri.prefix}/{nlri.prefix_len}")
    data: dict[str, Any] = {"kind": "blackhole", "prefix": str(prefix)}
    communities: list[str] = []
    large: list[str] = []
    next_hop: str | None = None
    for a in attrs:
        if isinstance(a, attr.NextHopAttribute):
            next_hop = a.next_hop
        elif isinstance(a, attr.MpReachNLRIAttribute) and a.next_hops:
            next_hop = a.next_hops[0]
        elif isinstance(a, attr.CommunitiesAttribute):
            communities = [community_text(c) for c in a.communities]
        elif isinstance(a, attr.LargeCommunitiesAttribute):
            large = [f"{c.global_admin}:{c.local_data1}:{c.local_data2}" for c in a.communities]
    data["communities"] = [c for c in communities if c not in opts.communities]
    data["large_communities"] = [c for c in large if c not in opts.large_communities]
    if next_hop is not None:
        nh = ipaddress.ip_address(next_hop)
        default = ipaddress.ip_address(opts.next_hop(prefix.version))
        if not nh.is_unspecified and nh != default:
            data["next_hop"] = str(nh)
    return build_intent(data)


def _parse_flowspec(nlri: Any, attrs: list[Any]) -> AnyIntent:
    data: dict[str, Any] = {"kind": "flowspec"}
    for box in nlri.rules:
        rule = unpack(box)
        if isinstance(rule, attr.FlowSpecIPPrefix):
            if rule.offset:
                raise IntentInvalid("IPv6 prefix offsets are not used by Sluice")
            net = ipaddress.ip_network(f"{rule.prefix}/{rule.prefix_len}")
            data["destination" if rule.type == FS_DST else "source"] = str(net)
        elif isinstance(rule, attr.FlowSpecComponent):
            name = FS_FIELDS.get(rule.type)
            if name is None:
                raise IntentInvalid(f"unknown FlowSpec component type {rule.type}")
            if name in ("tcp_flags", "fragment"):
                data[name] = bitmask_text(rule.items)
            else:
                data[name] = numeric_text(rule.items)
        else:
            raise IntentInvalid("FlowSpec rule Sluice does not use")
    action = None
    for a in attrs:
        if isinstance(a, attr.ExtendedCommunitiesAttribute):
            action = _action(a.communities)
    if action is None:
        raise IntentInvalid("FlowSpec path without an action Sluice renders")
    data["action"] = action
    return build_intent(data)
