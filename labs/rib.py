"""One view of a receiver's RIB, whatever the receiver (BIRD or FRR).

Tests compare what a speaker announced with what a receiver holds through these types:

* :class:`UnicastRoute`: prefix, next hop, communities (``"65535:666"``), large
  communities (``"64500:1:2"``);
* :class:`FlowRoute`: destination and source prefixes, the receiver's text of the other
  components (BIRD: ``"proto 17; sport 123;"``; FRR: ``"proto = 17; srcp = 123"``), and
  the actions decoded from the extended communities into Sluice's action text
  (``"discard"``, ``"rate-limit 1000"``, ``"redirect 64500:100"``, ``"mark 10"``).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class UnicastRoute:
    prefix: str
    next_hop: str | None
    communities: frozenset[str]
    large_communities: frozenset[str]


@dataclass(frozen=True, slots=True)
class FlowRoute:
    destination: str
    source: str | None
    text: str
    actions: frozenset[str]


def _rate(value: float) -> str:
    return "discard" if value == 0 else f"rate-limit {round(value)}"


def bird_action(ext: str) -> str:
    """Decode one BIRD extended community (``"generic, 0x80060000, 0x0"``) into action text.

    Unknown communities come back as ``"ext <text>"``.
    """
    parts = [p.strip() for p in ext.split(",")]
    if len(parts) == 3 and parts[0] == "generic":
        hi, lo = int(parts[1], 16), int(parts[2], 16)
        kind = hi >> 16
        if kind == 0x8006:  # traffic-rate-bytes: 2-octet id, IEEE float
            return _rate(struct.unpack(">f", struct.pack(">I", lo))[0])
        if kind == 0x8008:  # redirect, 2-octet AS
            return f"redirect {hi & 0xFFFF}:{lo}"
        if kind == 0x8009:  # traffic-marking: DSCP in the last octet
            return f"mark {lo & 0x3F}"
        if kind == 0x8208:  # redirect, 4-octet AS
            return f"redirect {((hi & 0xFFFF) << 16) | (lo >> 16)}:{lo & 0xFFFF}"
        if kind == 0x8108:  # redirect, IPv4
            ip = ".".join(str(b) for b in struct.pack(">I", ((hi & 0xFFFF) << 16) | (lo >> 16)))
            return f"redirect {ip}:{lo & 0xFFFF}"
    return f"ext {ext}"


_FRR_RATE = re.compile(r"FS:rate ([0-9.]+)")
_FRR_REDIRECT = re.compile(r"FS:redirect (?:VRF )?(?:RT:)?(\S+)")
_FRR_MARK = re.compile(r"FS:marking (\d+)")


def frr_actions(text: str) -> frozenset[str]:
    """Decode FRR's ``ecomlist`` (``"FS:rate 0.000000"``, ``"FS:redirect VRF RT:64500:100"``)."""
    out: set[str] = set()
    for m in _FRR_RATE.finditer(text):
        out.add(_rate(float(m.group(1))))
    for m in _FRR_REDIRECT.finditer(text):
        out.add(f"redirect {m.group(1)}")
    for m in _FRR_MARK.finditer(text):
        out.add(f"mark {m.group(1)}")
    return frozenset(out)
