"""Threshold detection on one-second samples: open, update and resolve incidents (pure).

An attack opens after ``open_after`` consecutive samples at or above a threshold (PPS or
BPS), is updated every ``update_every`` seconds while it lasts (peaks, family, severity),
and resolves after ``resolve_after`` seconds below the thresholds. Time comes from the
samples, so tests drive it without sleeping.

Family, by the traffic's mix (the reference's values): most packets TCP SYN ->
``syn_flood``; UDP from port 53 -> ``dns_flood``; UDP -> ``udp_flood``; ICMP ->
``icmp_flood``; TCP to 80/443 without a SYN majority -> ``http_flood``; two protocols with
a quarter each or more -> ``multi_vector``; anything else -> ``unknown``. Severity by how
far over the threshold the peak is: < 2x low, < 5x medium, < 20x high, else critical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.agent.traffic import Sample

Family = Literal[
    "udp_flood", "syn_flood", "http_flood", "icmp_flood", "dns_flood", "multi_vector", "unknown"
]


def classify(s: Sample) -> Family:
    if s.pps <= 0:
        return "unknown"
    share = {k: s.rates.get(k, 0.0) / s.pps for k in ("tcp", "udp", "icmp", "syn", "dns", "web")}
    if share["syn"] >= 0.5:
        return "syn_flood"
    if share["dns"] >= 0.5:
        return "dns_flood"
    if sum(1 for k in ("tcp", "udp", "icmp") if share[k] >= 0.25) >= 2:
        return "multi_vector"
    if share["udp"] >= 0.6:
        return "udp_flood"
    if share["icmp"] >= 0.6:
        return "icmp_flood"
    if share["tcp"] >= 0.6 and share["web"] >= 0.5:
        return "http_flood"
    return "unknown"


def severity(ratio: float) -> str:
    if ratio < 2:
        return "low"
    if ratio < 5:
        return "medium"
    if ratio < 20:
        return "high"
    return "critical"


@dataclass
class Thresholds:
    pps: float = 50_000.0
    bps: float = 500_000_000.0
    open_after: int = 2
    update_every: float = 5.0
    resolve_after: float = 15.0


@dataclass
class Event:
    kind: Literal["open", "update", "resolve"]
    body: dict[str, Any]


@dataclass
class Detector:
    thresholds: Thresholds
    target_ip: str
    _above: int = 0
    _active: bool = False
    _last_above: float = 0.0
    _last_update: float = 0.0
    _peak_pps: float = 0.0
    _peak_bps: float = 0.0
    _family: Family = "unknown"
    _severity: str = "low"
    history: list[Event] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self._active

    def _body(self, s: Sample) -> dict[str, Any]:
        ratio = max(self._peak_pps / self.thresholds.pps, self._peak_bps / self.thresholds.bps)
        self._severity = severity(ratio)
        return {
            "attack_family": self._family,
            "severity": self._severity,
            "peak_pps": round(self._peak_pps, 1),
            "peak_bps": round(self._peak_bps, 1),
            "target_ip": self.target_ip,
            "tcp_pct": s.pct("tcp"),
            "udp_pct": s.pct("udp"),
            "icmp_pct": s.pct("icmp"),
            "top_source_ports": _ports(s.top_sport),
            "top_destination_ports": _ports(s.top_dport),
            "top_sources": [k for k, _ in s.top_src],
        }

    def feed(self, s: Sample) -> Event | None:
        t = self.thresholds
        above = s.pps >= t.pps or s.bps >= t.bps
        if above:
            self._above += 1
            self._last_above = s.at
        else:
            self._above = 0
        if not self._active:
            if self._above < t.open_after:
                return None
            self._active = True
            self._peak_pps, self._peak_bps = s.pps, s.bps
            self._family = classify(s)
            self._last_update = s.at
            return self._emit(Event("open", self._body(s)))
        if above:
            self._peak_pps = max(self._peak_pps, s.pps)
            self._peak_bps = max(self._peak_bps, s.bps)
            family = classify(s)
            if family not in {self._family, "unknown"}:
                self._family = family
            if s.at - self._last_update >= t.update_every:
                self._last_update = s.at
                return self._emit(Event("update", self._body(s)))
            return None
        if s.at - self._last_above >= t.resolve_after:
            self._active = False
            self._above = 0
            return self._emit(Event("resolve", {"peak_pps": self._peak_pps}))
        return None

    def _emit(self, ev: Event) -> Event:
        self.history.append(ev)
        del self.history[:-100]
        return ev


def _ports(items: list[tuple[str, float]]) -> list[int]:
    out = []
    for key, _ in items:
        port = key.rsplit("/", 1)[-1]
        if port.isdigit():
            out.append(int(port))
    return out
