"""Forensic analysis of one capture: vectors, sources, sizes and ready FlowSpec rules.

One streaming pass over the file (:func:`analyze`) counts every packet into a small set
of bounded tables, then :func:`summarize` turns them into the report. The report is
deterministic: the same file (and geo database) gives the same JSON, every ordering has a
tie-break, and nothing in it depends on when or how fast it was computed.

Vectors (one per packet, first match wins):

=====================  =========================================================
``ip_fragment``        a non-first IP fragment (no transport header to look at)
``udp_reflection``     UDP from a well-known reflector source port (DNS 53, NTP 123,
                       memcached 11211, SSDP 1900, CLDAP 389, chargen 19, ...)
``udp``                other UDP
``syn`` / ``synack``   TCP with SYN (and ACK) set
``rst`` / ``fin``      TCP with RST / FIN set (and no SYN)
``ack``                TCP with only ACK (and PSH/URG) set
``tcp_other``          TCP with no flags or a header too short to read them
``icmp``               ICMP or ICMPv6
``gre``                GRE (protocol 47)
``ip_protocol``        any other IP protocol
``non_ip``             not IP (ARP, LLDP, ...): counted, never mitigated
=====================  =========================================================

Every vector carrying at least :data:`SIGNIFICANT_PCT` of the packets gets a
recommendation: a FlowSpec rule toward the attacked address, written as the body of
``POST /mitigation/rules`` (without ``adapter_id``), plus its canonical text.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator.pcaps.reader import address, fields, open_capture, protocol_name
from policies.errors import GuardrailViolation
from policies.intents import AnyIntent, build_intent, canonical
from policies.signals import REFLECTION_PORTS
from policies.tables import Allowlist

ANALYSIS_VERSION = 1
SIGNIFICANT_PCT = 10.0  # a vector below this share of packets gets no rule of its own
MAX_TRACKED = 100_000  # distinct keys per table (sources, prefixes, destinations, seconds)
TOP = 10
RATE_LIMIT_BYTES = 1_250_000  # 10 Mbit/s: what rate-limit recommendations let through
SOURCE_RULE_PCT = 50.0  # one source prefix carrying this share gets its own drop rule
SIZE_BUCKETS = ((0, 64), (65, 127), (128, 255), (256, 511), (512, 1023), (1024, 1499))

Geo = Callable[[str], str | None]

_TCP_VECTORS = {
    "syn": ("TCP SYN flood", "syn&!ack"),
    "synack": ("TCP SYN-ACK flood (reflected handshakes)", "syn&ack"),
    "rst": ("TCP RST flood", "rst&!syn"),
    "fin": ("TCP FIN flood", "fin&!syn&!rst"),
    "ack": ("TCP ACK flood", "ack&!syn&!rst&!fin"),
}


class _Capped(Counter[Any]):
    """A counter that stops taking new keys at ``MAX_TRACKED``; the rest is counted apart."""

    def __init__(self) -> None:
        super().__init__()
        self.untracked = 0

    def hit(self, key: Any, n: int = 1) -> None:
        if key in self or len(self) < MAX_TRACKED:
            self[key] += n
        else:
            self.untracked += n


@dataclass
class _Vector:
    packets: int = 0
    bytes: int = 0
    dports: Counter[int] = field(default_factory=Counter)
    icmp_types: Counter[int] = field(default_factory=Counter)


@dataclass
class Tally:
    """Everything the pass counts; bounded whatever the capture's size."""

    packets: int = 0
    bytes: int = 0
    non_ip: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    vectors: dict[tuple[str, int], _Vector] = field(default_factory=dict)
    protocols: Counter[tuple[int, int]] = field(default_factory=Counter)
    sources: _Capped = field(default_factory=_Capped)
    prefixes: _Capped = field(default_factory=_Capped)
    destinations: _Capped = field(default_factory=_Capped)
    seconds: _Capped = field(default_factory=_Capped)
    sizes: Counter[int] = field(default_factory=Counter)


def _vector_of(
    proto: int, sport: int | None, flags: int | None, frag: str | None
) -> tuple[str, int]:
    if frag in {"middle", "last"}:
        return ("ip_fragment", 0)
    if proto == 17:
        if sport is not None and sport in REFLECTION_PORTS:
            return ("udp_reflection", sport)
        return ("udp", 0)
    if proto == 6:
        if flags is None or not flags & 0x17:
            return ("tcp_other", 0)
        if flags & 0x02:
            return ("synack", 0) if flags & 0x10 else ("syn", 0)
        if flags & 0x04:
            return ("rst", 0)
        if flags & 0x01:
            return ("fin", 0)
        return ("ack", 0)
    if proto in {1, 58}:
        return ("icmp", 0)
    if proto == 47:
        return ("gre", 0)
    return ("ip_protocol", proto)


def analyze(path: Path) -> Tally:  # noqa: PLR0915 - one loop, written out for speed
    """One streaming pass: every packet counted into bounded tables.

    The loop is written out (no helper calls, tables in locals): it runs once per packet
    and a 100 MB capture of small packets holds 1.4 million of them.
    """
    t = Tally()
    vectors = t.vectors
    kinds: dict[tuple[int, int | None, int | None, str | None], _Vector] = {}
    sources, prefixes, destinations = t.sources, t.prefixes, t.destinations
    sizes, protocols = t.sizes, t.protocols
    limit = MAX_TRACKED
    packets = byte_count = non_ip = 0
    lost_src = lost_prefix = lost_dst = 0
    second, in_second = -1, 0
    first_ts: float | None = None
    ts = 0.0
    with open_capture(path) as cap:
        link = cap.link_type
        for _, ts, data in cap.walk():
            if first_ts is None:
                first_ts = ts
            packets += 1
            sec = int(ts)
            if sec != second:
                if in_second:
                    t.seconds.hit(second, in_second)
                second, in_second = sec, 0
            in_second += 1
            f = fields(link, data)
            if f is None:
                non_ip += 1
                byte_count += len(data)
                sizes[len(data)] += 1
                continue
            version, src, dst, proto, length, sport, dport, flags, frag, itype, _ = f
            byte_count += length
            sizes[length] += 1
            protocols[(version, proto)] += 1
            n = sources.get(src)
            if n is not None:
                sources[src] = n + 1
            elif len(sources) < limit:
                sources[src] = 1
            else:
                lost_src += 1
            prefix = src[:3] if version == 4 else src[:6]
            n = prefixes.get(prefix)
            if n is not None:
                prefixes[prefix] = n + 1
            elif len(prefixes) < limit:
                prefixes[prefix] = 1
            else:
                lost_prefix += 1
            n = destinations.get(dst)
            if n is not None:
                destinations[dst] = n + 1
            elif len(destinations) < limit:
                destinations[dst] = 1
            else:
                lost_dst += 1
            ck = (proto, sport if proto == 17 else None, flags, frag)
            v = kinds.get(ck)
            if v is None:
                key = _vector_of(proto, sport, flags, frag)
                v = vectors.get(key)
                if v is None:
                    v = vectors[key] = _Vector()
                kinds[ck] = v
            v.packets += 1
            v.bytes += length
            if dport is not None:
                v.dports[dport] += 1
            if itype is not None:
                v.icmp_types[itype] += 1
    if in_second:
        t.seconds.hit(second, in_second)
    t.packets, t.bytes, t.non_ip = packets, byte_count, non_ip
    t.first_ts, t.last_ts = first_ts, (ts if first_ts is not None else None)
    sources.untracked += lost_src
    prefixes.untracked += lost_prefix
    destinations.untracked += lost_dst
    return t


# ---------------------------------------------------------------- the report


def _pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


def _top(counter: Counter[Any], n: int = TOP) -> list[tuple[Any, int]]:
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def _prefix_text(key: bytes) -> str:
    if len(key) == 3:
        return f"{address(key + bytes(1))}/24"
    return f"{address(key + bytes(10))}/48"


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def _percentile(sizes: Counter[int], total: int, q: float) -> int:
    rank = max(1, -(-total * q // 100))  # ceil, nearest-rank
    seen = 0
    for size, n in sorted(sizes.items()):
        seen += n
        if seen >= rank:
            return size
    return 0


def _size_report(sizes: Counter[int], total: int) -> dict[str, Any]:
    if not total:
        return {"min": 0, "max": 0, "mean": 0.0, "p50": 0, "p90": 0, "p99": 0, "buckets": []}
    buckets = []
    for lo, hi in (*SIZE_BUCKETS, (1500, 65535)):
        n = sum(c for s, c in sizes.items() if lo <= s <= hi)
        label = f"{lo}-{hi}" if hi < 65535 else f"{lo}+"
        buckets.append({"range": label, "packets": n, "share_pct": _pct(n, total)})
    return {
        "min": min(sizes),
        "max": max(sizes),
        "mean": round(sum(s * c for s, c in sizes.items()) / total, 2),
        "p50": _percentile(sizes, total, 50),
        "p90": _percentile(sizes, total, 90),
        "p99": _percentile(sizes, total, 99),
        "most_common": [{"length": s, "packets": n} for s, n in _top(sizes, 5)],
        "buckets": buckets,
    }


def _vector_name(kind: str, param: int) -> str:
    if kind == "udp_reflection":
        return f"{REFLECTION_PORTS[param]} reflection (UDP source port {param})"
    if kind in _TCP_VECTORS:
        return _TCP_VECTORS[kind][0]
    return {
        "ip_fragment": "IP fragments (non-first)",
        "udp": "UDP flood",
        "tcp_other": "TCP without SYN/ACK/RST/FIN",
        "icmp": "ICMP flood",
        "gre": "GRE flood",
        "non_ip": "non-IP frames",
    }.get(kind, f"IP protocol {param} ({protocol_name(param)})")


def _vector_id(kind: str, param: int) -> str:
    """A stable machine name: ``udp_reflection_dns``, ``syn``, ``ip_protocol_50``..."""
    if kind == "udp_reflection":
        return f"udp_reflection_{REFLECTION_PORTS[param].lower().replace(' ', '_')}"
    if kind == "ip_protocol":
        return f"ip_protocol_{param}"
    return kind


def _concentrated(counter: Counter[int], packets: int) -> list[int]:
    """At most four values carrying 80% of ``packets``, else nothing."""
    top = _top(counter, 4)
    if top and sum(n for _, n in top) * 100 >= 80 * packets:
        # keep only those needed to reach 80%
        out, acc = [], 0
        for value, n in top:
            out.append(value)
            acc += n
            if acc * 100 >= 80 * packets:
                break
        return sorted(out)
    return []


def _rule_for(kind: str, param: int, v: _Vector, target: str, version: int) -> dict[str, Any]:
    """The ``POST /mitigation/rules`` body (without adapter_id) that stops one vector."""
    rule: dict[str, Any] = {"target_ip": target, "intent_type": "flowspec"}
    rate = {"action": "rate-limit", "rate_limit": RATE_LIMIT_BYTES}
    dports = _concentrated(v.dports, v.packets)
    if kind == "udp_reflection":
        rule.update(protocol="udp", source_port=param, action="discard")
    elif kind == "udp":
        rule.update(protocol="udp", **rate)
        if dports:
            rule["destination_port"] = dports
    elif kind in _TCP_VECTORS:
        rule.update(protocol="tcp", tcp_flags=_TCP_VECTORS[kind][1], **rate)
        if dports:
            rule["destination_port"] = dports
    elif kind == "tcp_other":
        rule.update(protocol="tcp", **rate)
        if dports:
            rule["destination_port"] = dports
    elif kind == "icmp":
        rule.update(protocol="icmp" if version == 4 else 58, **rate)
        types = _concentrated(v.icmp_types, v.packets)
        if len(types) == 1:
            rule["icmp_type"] = types[0]
    elif kind == "ip_fragment":
        rule.update(fragment="is-fragment", **rate)
    elif kind == "gre":
        rule.update(protocol=47, action="discard")
    else:
        rule.update(protocol=param, action="discard")
    return rule


def intent_data(rule: dict[str, Any]) -> dict[str, Any]:
    """A recommendation's rule body as :func:`policies.intents.build_intent` input."""
    data = {k: v for k, v in rule.items() if k not in ("target_ip", "intent_type", "rate_limit")}
    data["kind"] = rule["intent_type"]
    data["destination"] = rule["target_ip"]
    action = data.pop("action", "discard")
    data["action"] = (
        {"type": "rate-limit", "bytes_per_second": rule["rate_limit"]}
        if action == "rate-limit"
        else {"type": action}
    )
    return data


def _recommendation(
    n: int, vid: str, text: str, rule: dict[str, Any], *, packets: int, total: int
) -> dict[str, Any]:
    return {
        "n": n,
        "vector": vid,
        "description": text,
        "rule": rule,
        "canonical": canonical(build_intent(intent_data(rule))),
        "packets": packets,
        "share_pct": _pct(packets, total),
    }


def _family(significant: list[tuple[str, int]]) -> str:
    """The reference's ``attack_family`` closest to what the capture shows."""
    kinds = [k for k, _ in significant if k != "ip_fragment"] or [k for k, _ in significant]
    if not kinds:
        return "unknown"
    if len(kinds) > 1:
        return "multi_vector"
    kind, param = next(kv for kv in significant if kv[0] == kinds[0])
    if kind == "udp_reflection":
        return "dns_flood" if param == 53 else "udp_flood"
    return {"udp": "udp_flood", "syn": "syn_flood", "icmp": "icmp_flood"}.get(kind, "unknown")


def _target(t: Tally, hint: str | None) -> bytes | None:
    """The attacked address: the incident's target when the capture has traffic to it."""
    if hint is not None:
        try:
            packed = ipaddress.ip_address(hint).packed
        except ValueError:
            packed = b""
        if packed in t.destinations:
            return packed
    return _top(t.destinations, 1)[0][0] if t.destinations else None


def _vectors(t: Tally) -> tuple[list[dict[str, Any]], list[tuple[str, int]]]:
    """The vectors, largest first, and the keys of the significant ones."""
    ordered = list(t.vectors.items())
    if t.non_ip:
        ordered.append((("non_ip", 0), _Vector(packets=t.non_ip, bytes=0)))
    ordered.sort(key=lambda kv: (-kv[1].packets, kv[0]))
    out = []
    significant: list[tuple[str, int]] = []
    for (kind, param), v in ordered:
        share = _pct(v.packets, t.packets)
        item: dict[str, Any] = {
            "vector": _vector_id(kind, param),
            "name": _vector_name(kind, param),
            "packets": v.packets,
            "bytes": v.bytes,
            "share_pct": share,
            "top_destination_ports": [{"port": p, "packets": n} for p, n in _top(v.dports, 5)],
        }
        if kind == "udp_reflection":
            item.update(service=REFLECTION_PORTS[param], source_port=param)
        if kind == "icmp":
            item["icmp_types"] = [{"type": p, "packets": n} for p, n in _top(v.icmp_types, 5)]
        out.append(item)
        if share >= SIGNIFICANT_PCT and kind != "non_ip":
            significant.append((kind, param))
    return out, significant


def _recommendations(
    t: Tally, target_key: bytes, significant: list[tuple[str, int]]
) -> list[dict[str, Any]]:
    target = address(target_key)
    version = 4 if len(target_key) == 4 else 6
    out: list[dict[str, Any]] = []
    for kind, param in significant:
        v = t.vectors[(kind, param)]
        rule = _rule_for(kind, param, v, target, version)
        verb = "drop it" if rule["action"] == "discard" else "rate-limit it"
        text = f"{_vector_name(kind, param)}: {verb} toward {target}"
        out.append(
            _recommendation(
                len(out) + 1,
                _vector_id(kind, param),
                text,
                rule,
                packets=v.packets,
                total=t.packets,
            )
        )
    ip_packets = t.packets - t.non_ip
    top_prefix = _top(t.prefixes, 1)
    if top_prefix and _pct(top_prefix[0][1], ip_packets) >= SOURCE_RULE_PCT:
        key, n = top_prefix[0]
        src = _prefix_text(key)
        if (len(key) == 3) == (version == 4):
            rule = {"target_ip": target, "intent_type": "flowspec", "source": src}
            rule["action"] = "discard"
            text = f"{_pct(n, ip_packets)}% of the packets come from {src}: drop it toward {target}"
            out.append(
                _recommendation(
                    len(out) + 1, "source_prefix", text, rule, packets=n, total=t.packets
                )
            )
    return out


def _sources(t: Tally, geo: Geo | None) -> dict[str, Any]:
    ip_packets = t.packets - t.non_ip
    top: list[dict[str, Any]] = []
    for a, n in _top(t.sources):
        text = address(a)
        entry: dict[str, Any] = {"address": text, "packets": n, "share_pct": _pct(n, ip_packets)}
        if geo is not None:
            entry["country"] = geo(text)
        top.append(entry)
    countries: list[dict[str, Any]] | None = None
    if geo is not None:
        by_country: Counter[str] = Counter()
        for a, n in t.sources.items():
            by_country[geo(address(a)) or "unknown"] += n
        if t.sources.untracked:
            by_country["untracked"] += t.sources.untracked
        countries = [
            {"country": c, "packets": n, "share_pct": _pct(n, ip_packets)}
            for c, n in _top(by_country)
        ]
    per_prefix: Counter[bytes] = Counter()
    for a in t.sources:
        per_prefix[a[:3] if len(a) == 4 else a[:6]] += 1
    return {
        "unique": len(t.sources),
        "tracked_limit_reached": bool(t.sources.untracked),
        "top": top,
        "prefixes": [
            {
                "prefix": _prefix_text(k),
                "packets": n,
                "sources": per_prefix[k],
                "share_pct": _pct(n, ip_packets),
            }
            for k, n in _top(t.prefixes)
        ],
        "countries": countries,
    }


def summarize(
    t: Tally, *, target_hint: str | None = None, geo: Geo | None = None
) -> dict[str, Any]:
    """The report for one tally (pure: the same tally gives the same report)."""
    target_key = _target(t, target_hint)
    vectors, significant = _vectors(t)
    duration = t.last_ts - t.first_ts if t.first_ts is not None and t.last_ts is not None else 0.0
    peak = _top(t.seconds, 1)
    ip_packets = t.packets - t.non_ip
    return {
        "version": ANALYSIS_VERSION,
        "packets": t.packets,
        "bytes": t.bytes,
        "first_packet_at": _iso(t.first_ts),
        "last_packet_at": _iso(t.last_ts),
        "duration_seconds": round(duration, 6),
        "peak_pps": peak[0][1] if peak else 0,
        "target": address(target_key) if target_key is not None else None,
        "attack_family": _family(significant),
        "primary_vector": vectors[0]["vector"] if vectors else None,
        "vectors": vectors,
        "protocols": [
            {
                "protocol": protocol_name(p),
                "number": p,
                "ip_version": ver,
                "packets": n,
                "share_pct": _pct(n, t.packets),
            }
            for (ver, p), n in _top(t.protocols, 20)
        ],
        "sources": _sources(t, geo),
        "destinations": [
            {"address": address(a), "packets": n, "share_pct": _pct(n, ip_packets)}
            for a, n in _top(t.destinations, 5)
        ],
        "packet_sizes": _size_report(t.sizes, t.packets),
        "recommendations": (
            _recommendations(t, target_key, significant) if target_key is not None else []
        ),
    }


def refuse_allowlisted_target(intent: AnyIntent, allowlist: Allowlist, node: str | None) -> None:
    """A recommendation is the mitigation the capture calls for, and the policy never
    mitigates an allowlisted target (workspace-wide or for the capture's node): applying
    one whose destination touches an allowlisted address is refused as ``allowlisted``,
    as the guardrails refuse a blackhole of it (they let an operator's own FlowSpec rule
    match traffic to such an address)."""
    allowed = allowlist.prefix_set(node)
    if allowed.overlaps(intent.target):
        hits = ", ".join(str(p) for p in allowed.overlapping(intent.target)[:3])
        raise GuardrailViolation(
            f"the recommendation's destination {intent.target} touches allowlisted {hits}: "
            "the policy never mitigates it",
            code="allowlisted",
            field="target_ip",
        )
