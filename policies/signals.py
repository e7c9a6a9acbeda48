"""Attack signals (what a detector reports) and their FlowSpec signature.

:func:`signature` turns what is known about an attack into FlowSpec match components for
the attacked host: reflection/amplification by its well-known source port (NTP 123,
DNS 53, memcached 11211, SSDP 1900, chargen 19, ...), a SYN flood as TCP with SYN set
and ACK clear, an ICMP flood as ICMP, and otherwise the dominant protocol and the
destination ports under attack. The destination (/32 or /128) is always added by the
engine, so a signature can never match traffic to other hosts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from policies.intents import Address
from policies.tiers import Country, parse_rate

AttackFamily = Literal[
    "udp_flood", "syn_flood", "http_flood", "icmp_flood", "dns_flood", "multi_vector", "unknown"
]
Severity = Literal["low", "medium", "high", "critical"]
Port = Annotated[int, Field(ge=0, le=65535)]
Pct = Annotated[float, Field(ge=0, le=100)]

# UDP services abused for reflection/amplification, by source port.
REFLECTION_PORTS: dict[int, str] = {
    17: "QOTD",
    19: "chargen",
    53: "DNS",
    69: "TFTP",
    111: "portmap",
    123: "NTP",
    137: "NetBIOS",
    161: "SNMP",
    389: "CLDAP",
    520: "RIP",
    1900: "SSDP",
    3283: "ARD",
    3702: "WS-Discovery",
    5353: "mDNS",
    5683: "CoAP",
    10001: "Ubiquiti discovery",
    11211: "memcached",
    37810: "DVR",
}


def _rate(value: object) -> object:
    if isinstance(value, str):
        # every signal of a detector says "3G" the same way: parsed once (short texts)
        return _text_rate(value) if len(value) <= 32 else parse_rate(value)
    return value


_text_rate = functools.lru_cache(maxsize=1024)(parse_rate)


Rate = Annotated[float, BeforeValidator(_rate), Field(ge=0)]


def _countries(value: object) -> object:
    """``["CN", "RU"]`` or ``{"CN": 60, "RU": 25}`` (percent of sources) -> mapping."""
    if isinstance(value, list | tuple):
        return dict.fromkeys(value, 0.0)
    return value


class Signal(BaseModel):
    """One report of an attack on ``target_ip`` (as the incident/agent APIs carry it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    target_ip: Address
    node: Annotated[str, Field(max_length=100)] | None = None
    bps: Rate = 0.0
    pps: Rate = 0.0
    attack_family: AttackFamily = "unknown"
    severity: Severity = "low"
    tcp_pct: Pct | None = None
    udp_pct: Pct | None = None
    icmp_pct: Pct | None = None
    # bounded, as every list an API body carries
    top_source_ports: Annotated[tuple[Port, ...], Field(max_length=64)] = ()
    top_destination_ports: Annotated[tuple[Port, ...], Field(max_length=64)] = ()
    top_sources: Annotated[tuple[Address, ...], Field(max_length=64)] = ()
    # a factory: pydantic deep-copies a mutable default on every validation
    source_countries: Annotated[
        dict[Country, Pct], BeforeValidator(_countries), Field(max_length=300)
    ] = Field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signal:
        return cls.model_validate(data)


@dataclass(frozen=True, slots=True)
class Signature:
    """FlowSpec match components (without destination) and why they were chosen."""

    components: tuple[tuple[str, Any], ...]
    why: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.components)


def _dominant(signal: Signal) -> str | None:
    shares = {"tcp": signal.tcp_pct, "udp": signal.udp_pct, "icmp": signal.icmp_pct}
    known = {k: v for k, v in shares.items() if v is not None}
    if not known:
        return None
    name, share = max(known.items(), key=lambda kv: kv[1])
    return name if share >= 80 else None


def _icmp(signal: Signal) -> int:
    return 1 if signal.target_ip.version == 4 else 58


def _ports(ports: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(sorted({p for p in ports if p > 0})[:8])


def signature(signal: Signal) -> list[Signature]:
    """The FlowSpec matches that describe this attack, most specific first."""
    family = signal.attack_family
    reflection = tuple(p for p in _ports(signal.top_source_ports) if p in REFLECTION_PORTS)
    dports = _ports(signal.top_destination_ports)
    out: list[Signature] = []
    if reflection and family in ("udp_flood", "dns_flood", "multi_vector", "unknown"):
        names = ", ".join(f"{REFLECTION_PORTS[p]} ({p})" for p in reflection)
        out.append(
            Signature(
                (("protocol", "udp"), ("source_port", reflection)),
                f"UDP reflection from source port {names}",
            )
        )
        if family != "multi_vector":
            return out
    if family == "syn_flood":
        comps: list[tuple[str, Any]] = [("protocol", "tcp"), ("tcp_flags", "syn&!ack")]
        if dports:
            comps.append(("destination_port", dports))
        where = f" to port {', '.join(map(str, dports))}" if dports else ""
        return [Signature(tuple(comps), f"TCP SYN flood (syn set, ack clear){where}")]
    if family == "icmp_flood":
        return [Signature((("protocol", _icmp(signal)),), "ICMP flood")]
    if family == "http_flood":
        ports = dports or (80, 443)
        return [
            Signature(
                (("protocol", "tcp"), ("destination_port", ports)),
                f"HTTP flood to TCP port {', '.join(map(str, ports))}",
            )
        ]
    if family == "dns_flood":
        return [
            Signature(
                (("protocol", "udp"), ("destination_port", (53,))), "DNS query flood to UDP 53"
            )
        ]
    if family == "udp_flood":
        if dports:
            return [
                Signature(
                    (("protocol", "udp"), ("destination_port", dports)),
                    f"UDP flood to port {', '.join(map(str, dports))}",
                )
            ]
        return [Signature((("protocol", "udp"),), "UDP flood")]
    if family == "multi_vector":
        shares = {"tcp": signal.tcp_pct, "udp": signal.udp_pct, "icmp": signal.icmp_pct}
        seen = [k for k, v in shares.items() if v is not None and v >= 10 and k != "udp"]
        if not reflection and signal.udp_pct is not None and signal.udp_pct >= 10:
            seen.append("udp")
        if seen:
            protos = sorted(
                _icmp(signal) if k == "icmp" else {"tcp": 6, "udp": 17}[k] for k in seen
            )
            out.append(
                Signature((("protocol", protos),), f"multi-vector: {', '.join(sorted(seen))}")
            )
        return out or [Signature((), "multi-vector with no protocol breakdown")]
    dominant = _dominant(signal)
    if dominant == "icmp":
        return [Signature((("protocol", _icmp(signal)),), "mostly ICMP")]
    if dominant is not None:
        return [Signature((("protocol", dominant),), f"mostly {dominant.upper()}")]
    return [Signature((), "no signature known: all traffic to the target")]
