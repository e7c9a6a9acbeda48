"""Intents: the vocabulary every layer of Sluice speaks.

An intent says *what* should be on the wire, independent of any backend:

* :class:`BlackholeIntent` - RTBH for a prefix (RFC 7999 BLACKHOLE community by default,
  plus standard and RFC 8092 large communities, an optional next hop and peer selection);
* :class:`FlowSpecIntent` - an RFC 8955 / RFC 8956 match and one action (discard,
  rate-limit in bytes/s, redirect to a route target, DSCP mark);
* :class:`ScrubbingIntent` - divert a prefix through a scrubbing integration.

Intents are frozen and validated. Each has a canonical text form (:func:`canonical`) that
:func:`parse_canonical` reads back, and a stable :func:`intent_key` derived from it, so
the same intent written two ways is one rule.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from policies.errors import IntentInvalid
from policies.flowmatch import (
    ByteMatch,
    DscpMatch,
    FlowLabelMatch,
    FragmentMatch,
    LengthMatch,
    PortMatch,
    ProtocolMatch,
    TcpFlagsMatch,
)


class FieldProblem(ValueError):
    """A cross-field validation problem that names the field to blame."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ICMP = {4: 1, 6: 58}
PORT_PROTOCOLS = (6, 17, 132)  # TCP, UDP, SCTP
TCP = 6


def parse_prefix(value: object) -> IPNetwork:
    """An address or CIDR prefix; a bare address becomes a host route (/32 or /128).

    Host bits set under the mask are an error, not silently cleared: ``10.0.0.1/24`` is
    more likely a typo than a wish to blackhole 256 addresses.
    """
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return ipaddress.ip_network(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected an IP address or CIDR prefix")
    text = value.strip()
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address or CIDR prefix") from exc
        raise ValueError(
            f"{text!r} has host bits set; the prefix is {loose.with_prefixlen}"
        ) from exc
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None:
        raise ValueError(f"{text!r} is an IPv4-mapped IPv6 prefix; write the IPv4 prefix")
    return net


def parse_address(value: object) -> IPAddress:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    if not isinstance(value, str):
        raise ValueError("expected an IP address")
    # detectors name the same targets again and again: parsed once (addresses are
    # immutable); only short texts are kept, so the cache stays small
    return _address(value) if len(value) <= 64 else _parse_address(value)


def _parse_address(value: str) -> IPAddress:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


_address = functools.lru_cache(maxsize=4096)(_parse_address)

_TEXTS: dict[tuple[int, int], str] = {}


def address_text(address: IPAddress) -> str:
    """``str(address)``, remembered: formatting an address (IPv6 above all) costs more
    than a look-up, and signals name the same targets again and again."""
    key = (address.version, int(address))
    text = _TEXTS.get(key)
    if text is None:
        if len(_TEXTS) >= 100_000:
            _TEXTS.clear()
        text = _TEXTS[key] = str(address)
    return text


def _serialize(v: object) -> str:
    return str(v)


Prefix = Annotated[IPNetwork, BeforeValidator(parse_prefix), PlainSerializer(_serialize)]
Address = Annotated[IPAddress, BeforeValidator(parse_address), PlainSerializer(_serialize)]


Protocol = Annotated[
    ProtocolMatch, BeforeValidator(ProtocolMatch.parse), PlainSerializer(_serialize)
]
Ports = Annotated[PortMatch, BeforeValidator(PortMatch.parse), PlainSerializer(_serialize)]
Bytes = Annotated[ByteMatch, BeforeValidator(ByteMatch.parse), PlainSerializer(_serialize)]
Lengths = Annotated[LengthMatch, BeforeValidator(LengthMatch.parse), PlainSerializer(_serialize)]
Dscps = Annotated[DscpMatch, BeforeValidator(DscpMatch.parse), PlainSerializer(_serialize)]
FlowLabels = Annotated[
    FlowLabelMatch, BeforeValidator(FlowLabelMatch.parse), PlainSerializer(_serialize)
]
TcpFlags = Annotated[
    TcpFlagsMatch, BeforeValidator(TcpFlagsMatch.parse), PlainSerializer(_serialize)
]
Fragments = Annotated[
    FragmentMatch, BeforeValidator(FragmentMatch.parse), PlainSerializer(_serialize)
]


# ---------------------------------------------------------------- communities

_COMMUNITY = re.compile(r"^(\d+):(\d+)$")
_LARGE = re.compile(r"^(\d+):(\d+):(\d+)$")
WELL_KNOWN = {"blackhole": "65535:666", "no-export": "65535:65281", "no-advertise": "65535:65282"}
BLACKHOLE = "65535:666"


def parse_community(value: object) -> str:
    """A standard community ``ASN:VALUE`` (each 0-65535) or a well-known name."""
    if not isinstance(value, str):
        raise ValueError(f"community {value!r} must be a string like '65535:666'")
    text = WELL_KNOWN.get(value.strip().lower(), value.strip())
    m = _COMMUNITY.match(text)
    if not m or int(m.group(1)) > 0xFFFF or int(m.group(2)) > 0xFFFF:
        raise ValueError(f"community {value!r} is not ASN:VALUE with both parts 0-65535")
    return f"{int(m.group(1))}:{int(m.group(2))}"


def parse_large_community(value: object) -> str:
    """An RFC 8092 large community ``GLOBAL:LOCAL1:LOCAL2`` (each 0-4294967295)."""
    if not isinstance(value, str):
        raise ValueError(f"large community {value!r} must be a string like '64500:1:2'")
    m = _LARGE.match(value.strip())
    if not m or any(int(p) > 0xFFFFFFFF for p in m.groups()):
        raise ValueError(f"large community {value!r} is not A:B:C with each part 0-4294967295")
    return ":".join(str(int(p)) for p in m.groups())


def _community_key(c: str) -> tuple[int, ...]:
    return tuple(int(p) for p in c.split(":"))


def _sorted_unique(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(set(items), key=_community_key))


Community = Annotated[str, BeforeValidator(parse_community)]
LargeCommunity = Annotated[str, BeforeValidator(parse_large_community)]


# ---------------------------------------------------------------- intents

_FROZEN = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


class BlackholeIntent(BaseModel):
    """Remote-triggered blackhole of ``prefix``."""

    model_config = _FROZEN
    kind: Literal["blackhole"] = "blackhole"
    prefix: Prefix
    communities: tuple[Community, ...] = (BLACKHOLE,)
    large_communities: tuple[LargeCommunity, ...] = ()
    next_hop: Address | None = None
    peers: tuple[Address, ...] = ()

    @field_validator("communities", "large_communities")
    @classmethod
    def _canon_communities(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _sorted_unique(v)

    @field_validator("peers")
    @classmethod
    def _canon_peers(cls, v: tuple[IPAddress, ...]) -> tuple[IPAddress, ...]:
        return tuple(sorted(set(v), key=lambda a: (a.version, int(a))))

    @model_validator(mode="after")
    def _families(self) -> BlackholeIntent:
        if self.next_hop is not None and self.next_hop.version != self.prefix.version:
            raise FieldProblem(
                "next_hop",
                f"next_hop {self.next_hop} is IPv{self.next_hop.version} "
                f"but prefix {self.prefix} is IPv{self.prefix.version}",
            )
        return self

    @property
    def target(self) -> IPNetwork:
        return self.prefix


class Discard(BaseModel):
    model_config = _FROZEN
    type: Literal["discard"] = "discard"

    def __str__(self) -> str:
        return "discard"


class RateLimit(BaseModel):
    """Rate-limit matching traffic to ``bytes_per_second`` (RFC 8955 traffic-rate-bytes)."""

    model_config = _FROZEN
    type: Literal["rate-limit"] = "rate-limit"
    bytes_per_second: Annotated[float, Field(gt=0, le=3.4e38)]

    @field_validator("bytes_per_second")
    @classmethod
    def _whole(cls, v: float) -> float:
        return float(round(v))

    def __str__(self) -> str:
        return f"rate-limit {int(self.bytes_per_second)}"


_RT = re.compile(r"^(\d+):(\d+)$")
_RT_IP = re.compile(r"^(\d+\.\d+\.\d+\.\d+):(\d+)$")


def parse_route_target(value: object) -> str:
    """A route target for redirect: ``ASN2:NN32``, ``ASN4:NN16`` or ``IPv4:NN16``."""
    if not isinstance(value, str):
        raise ValueError("route target must be a string such as '64500:100'")
    text = value.strip()
    m = _RT_IP.match(text)
    if m:
        ipaddress.IPv4Address(m.group(1))
        if int(m.group(2)) > 0xFFFF:
            raise ValueError(f"route target {text!r}: local part of an IP target is 0-65535")
        return f"{m.group(1)}:{int(m.group(2))}"
    m = _RT.match(text)
    if not m:
        raise ValueError(f"route target {text!r} is not ASN:NN or IPv4:NN")
    asn, local = int(m.group(1)), int(m.group(2))
    if asn <= 0xFFFF and local <= 0xFFFFFFFF:
        return f"{asn}:{local}"
    if asn <= 0xFFFFFFFF and local <= 0xFFFF:
        return f"{asn}:{local}"
    raise ValueError(f"route target {text!r} does not fit a 2- or 4-octet-AS extended community")


class Redirect(BaseModel):
    """Redirect matching traffic to the VRF importing ``route_target``."""

    model_config = _FROZEN
    type: Literal["redirect"] = "redirect"
    route_target: Annotated[str, BeforeValidator(parse_route_target)]

    def __str__(self) -> str:
        return f"redirect {self.route_target}"


class Mark(BaseModel):
    """Re-mark matching traffic with DSCP ``dscp``."""

    model_config = _FROZEN
    type: Literal["mark"] = "mark"
    dscp: Annotated[int, Field(ge=0, le=63)]

    def __str__(self) -> str:
        return f"mark {self.dscp}"


FlowSpecAction = Annotated[Discard | RateLimit | Redirect | Mark, Field(discriminator="type")]

# Match components in canonical order: (attribute, text keyword).
MATCH_FIELDS: tuple[tuple[str, str], ...] = (
    ("destination", "dst"),
    ("source", "src"),
    ("protocol", "proto"),
    ("port", "port"),
    ("destination_port", "dport"),
    ("source_port", "sport"),
    ("icmp_type", "icmp-type"),
    ("icmp_code", "icmp-code"),
    ("tcp_flags", "tcp-flags"),
    ("packet_length", "length"),
    ("dscp", "dscp"),
    ("fragment", "fragment"),
    ("flow_label", "flow-label"),
)


class FlowSpecIntent(BaseModel):
    """An RFC 8955/8956 flow: match components and one action.

    ``destination`` is required: a rule without one would match traffic to every host
    behind the peers. ``protocol`` is the IPv6 next header for IPv6 flows.
    """

    model_config = _FROZEN
    kind: Literal["flowspec"] = "flowspec"
    destination: Prefix
    source: Prefix | None = None
    protocol: Protocol | None = None
    port: Ports | None = None
    destination_port: Ports | None = None
    source_port: Ports | None = None
    icmp_type: Bytes | None = None
    icmp_code: Bytes | None = None
    tcp_flags: TcpFlags | None = None
    packet_length: Lengths | None = None
    dscp: Dscps | None = None
    fragment: Fragments | None = None
    flow_label: FlowLabels | None = None
    action: FlowSpecAction = Discard()

    @model_validator(mode="after")
    def _consistent(self) -> FlowSpecIntent:
        v = self.destination.version
        if self.source is not None and self.source.version != v:
            raise FieldProblem(
                "source",
                f"source {self.source} is IPv{self.source.version} "
                f"but destination {self.destination} is IPv{v}",
            )
        if self.flow_label is not None and v == 4:
            raise FieldProblem("flow_label", "flow_label exists only in IPv6 flows (RFC 8956)")
        if self.fragment is not None and v == 6 and self.fragment.uses(0x01):
            raise FieldProblem("fragment", "dont-fragment does not exist in IPv6 (RFC 8956)")
        has_ports = any(p is not None for p in (self.port, self.destination_port, self.source_port))
        has_icmp = self.icmp_type is not None or self.icmp_code is not None
        if has_ports and has_icmp:
            raise FieldProblem("icmp_type", "port and icmp components together match no packet")
        proto = self.protocol
        if proto is not None:
            if has_ports and not proto.overlaps(PORT_PROTOCOLS):
                raise FieldProblem(
                    "protocol",
                    f"protocol {proto} has no ports: port components need TCP, UDP or SCTP",
                )
            if has_icmp and ICMP[v] not in proto:
                raise FieldProblem(
                    "protocol", f"icmp components need protocol ={ICMP[v]} in IPv{v} flows"
                )
            if self.tcp_flags is not None and TCP not in proto:
                raise FieldProblem(
                    "tcp_flags", "tcp_flags needs a protocol match that includes TCP (6)"
                )
        if has_icmp and self.tcp_flags is not None:
            raise FieldProblem(
                "tcp_flags", "tcp_flags and icmp components together match no packet"
            )
        return self

    @property
    def target(self) -> IPNetwork:
        return self.destination

    def components(self) -> list[tuple[str, str, Any]]:
        """The set match components as (attribute, keyword, value), in canonical order."""
        return [
            (attr, kw, getattr(self, attr))
            for attr, kw in MATCH_FIELDS
            if getattr(self, attr) is not None
        ]


class ScrubbingIntent(BaseModel):
    """Divert ``prefix`` through the scrubbing integration the rule's adapter stands for."""

    model_config = _FROZEN
    kind: Literal["scrubbing"] = "scrubbing"
    prefix: Prefix

    @property
    def target(self) -> IPNetwork:
        return self.prefix


Intent = Annotated[BlackholeIntent | FlowSpecIntent | ScrubbingIntent, Field(discriminator="kind")]
AnyIntent = BlackholeIntent | FlowSpecIntent | ScrubbingIntent
INTENT_TYPES = ("blackhole", "flowspec", "scrubbing")
_ADAPTER: TypeAdapter[AnyIntent] = TypeAdapter(Intent)


# ---------------------------------------------------------------- building, text, keys


def _field_name(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if not str(p).startswith(("function-", "tagged-union"))]
    # drop the discriminator tag pydantic puts first ("blackhole", "flowspec", ...)
    if parts and parts[0] in INTENT_TYPES:
        parts = parts[1:]
    return ".".join(parts) or "intent"


def build_intent(data: Mapping[str, Any]) -> AnyIntent:
    """Validate a mapping (with ``kind``) into an intent, or raise :class:`IntentInvalid`."""
    if "kind" not in data:
        raise IntentInvalid("intent kind is required", field="kind")
    if data["kind"] not in INTENT_TYPES:
        raise IntentInvalid(
            f"unknown intent type {data['kind']!r} (expected one of {', '.join(INTENT_TYPES)})",
            code="unknown_intent_type",
            field="kind",
        )
    try:
        return _ADAPTER.validate_python(dict(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        field = _field_name(tuple(err["loc"]))
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, FieldProblem):
            field = cause.field
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise IntentInvalid(f"{field}: {msg}", field=field) from None


def canonical(intent: AnyIntent) -> str:
    """The canonical text of an intent; :func:`parse_canonical` reads it back."""
    if isinstance(intent, BlackholeIntent):
        parts = [f"blackhole {intent.prefix}"]
        parts.append("community " + (" ".join(intent.communities) or "none"))
        if intent.large_communities:
            parts.append("large-community " + " ".join(intent.large_communities))
        if intent.next_hop is not None:
            parts.append(f"next-hop {intent.next_hop}")
        if intent.peers:
            parts.append("peers " + " ".join(str(p) for p in intent.peers))
        return "; ".join(parts)
    if isinstance(intent, FlowSpecIntent):
        parts = ["flowspec"] + [f"{kw} {value}" for _, kw, value in intent.components()]
        parts.append(f"then {intent.action}")
        return "; ".join([parts[0] + " " + parts[1], *parts[2:]])
    return f"scrubbing {intent.prefix}"


_KEYWORD_TO_FIELD = {kw: attr for attr, kw in MATCH_FIELDS}


def parse_canonical(text: str) -> AnyIntent:
    """Read an intent from its text form (canonical or hand-written in the same grammar)."""
    clauses = [c.strip() for c in text.strip().split(";") if c.strip()]
    if not clauses:
        raise IntentInvalid("empty intent text", field="intent")
    head, _, rest = clauses[0].partition(" ")
    data: dict[str, Any] = {"kind": head}
    if head in ("blackhole", "scrubbing"):
        data["prefix"] = rest.strip()
        for clause in clauses[1:]:
            key, _, value = clause.partition(" ")
            words = value.split()
            if head != "blackhole":
                raise IntentInvalid(f"unexpected clause {clause!r}", field=key)
            if key == "community":
                data["communities"] = [] if words == ["none"] else words
            elif key == "large-community":
                data["large_communities"] = words
            elif key == "next-hop":
                data["next_hop"] = value.strip()
            elif key == "peers":
                data["peers"] = words
            else:
                raise IntentInvalid(f"unknown blackhole clause {key!r}", field=key)
    elif head == "flowspec":
        for clause in [rest, *clauses[1:]]:
            key, _, value = clause.strip().partition(" ")
            value = value.strip()
            if key == "then":
                action, _, arg = value.partition(" ")
                data["action"] = _action_from_text(action, arg.strip())
            elif key in _KEYWORD_TO_FIELD:
                data[_KEYWORD_TO_FIELD[key]] = value
            else:
                raise IntentInvalid(f"unknown flowspec component {key!r}", field=key)
    return build_intent(data)


def _action_from_text(action: str, arg: str) -> dict[str, Any]:
    if action == "discard":
        return {"type": "discard"}
    if action == "rate-limit":
        return {"type": "rate-limit", "bytes_per_second": arg}
    if action == "redirect":
        return {"type": "redirect", "route_target": arg}
    if action == "mark":
        return {"type": "mark", "dscp": arg}
    raise IntentInvalid(f"unknown flowspec action {action!r}", field="action")


def intent_key(intent: AnyIntent) -> str:
    """A stable key: equal intents (however written) have equal keys."""
    return key_of(canonical(intent))


def key_of(canonical_text: str) -> str:
    """The key of an intent given its canonical text (saves rendering it twice)."""
    return hashlib.sha256(canonical_text.encode()).hexdigest()[:32]


def intent_to_dict(intent: AnyIntent) -> dict[str, Any]:
    """JSON-ready form (prefixes and matches as their canonical strings)."""
    return intent.model_dump(mode="json", exclude_none=True)
