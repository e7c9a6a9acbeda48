"""Traffic observation in the kernel: an nftables ``netdev`` table on the ingress hook.

The kernel counts every packet that arrives on the interface (before any firewall rule):
named counters per protocol and for the shapes the detector classifies (TCP SYN, UDP from
port 53, fragments), and dynamic sets with a counter per element for destinations,
sources and source/destination ports (bounded in size; when a set is full new keys are
not added but the totals still count). Python reads the table once per second (``nft -j
list table``) and turns two readings into rates: its cost does not grow with the packet
rate, so it holds at rates where a per-packet loop in Python would not.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policies.errors import SluiceError

TABLE = "sluice_obs"
COUNTERS = ("all", "tcp", "udp", "icmp", "syn", "dns", "frag", "web")
SET_SIZES = {"dst4": 1024, "dst6": 1024, "src4": 4096, "src6": 4096, "sport": 1024, "dport": 1024}


class ObserveError(SluiceError):
    code = "observe_failed"


def render_observer(interface: str) -> str:
    """The ``nft -f`` text that (re)creates the observation table on ``interface``."""
    if not interface.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ObserveError(f"invalid interface name {interface!r}")
    sets = []
    for name, size in SET_SIZES.items():
        typ = {
            "dst4": "ipv4_addr",
            "src4": "ipv4_addr",
            "dst6": "ipv6_addr",
            "src6": "ipv6_addr",
        }.get(name, "inet_proto . inet_service")
        sets.append(
            f"  set {name} {{ type {typ}; size {size}; flags dynamic,timeout; timeout 120s; "
            "counter; }"
        )
    counters = [f"  counter c_{c} {{}}" for c in COUNTERS]  # "tcp" alone is a keyword
    rules = [
        'counter name "c_all"',
        'meta l4proto tcp counter name "c_tcp"',
        'meta l4proto udp counter name "c_udp"',
        'meta l4proto { icmp, ipv6-icmp } counter name "c_icmp"',
        'tcp flags & (syn|ack) == syn counter name "c_syn"',
        'udp sport 53 counter name "c_dns"',
        'ip frag-off & 0x1fff != 0 counter name "c_frag"',
        'tcp dport { 80, 443 } counter name "c_web"',
        "update @dst4 { ip daddr }",
        "update @dst6 { ip6 daddr }",
        "update @src4 { ip saddr }",
        "update @src6 { ip6 saddr }",
        "meta l4proto { tcp, udp } update @sport { meta l4proto . th sport }",
        "meta l4proto { tcp, udp } update @dport { meta l4proto . th dport }",
    ]
    return "\n".join(
        [
            f"table netdev {TABLE}",
            f"delete table netdev {TABLE}",
            f"table netdev {TABLE} {{",
            *counters,
            *sets,
            "  chain ingress {",
            f'    type filter hook ingress device "{interface}" priority -500; policy accept;',
            *(f"    {r}" for r in rules),
            "  }",
            "}",
            "",
        ]
    )


@dataclass
class Reading:
    """Cumulative kernel counts at one moment: counters and per-key set counts."""

    at: float
    counters: dict[str, tuple[int, int]]
    sets: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)


def _key(elem: Any) -> str:
    if isinstance(elem, dict) and "concat" in elem:
        return "/".join(str(x) for x in elem["concat"])
    return str(elem)


def parse_reading(doc: dict[str, Any], at: float) -> Reading:
    """A :class:`Reading` from ``nft -j list table netdev sluice_obs`` output."""
    counters: dict[str, tuple[int, int]] = {}
    sets: dict[str, dict[str, tuple[int, int]]] = {}
    for item in doc.get("nftables", []):
        if "counter" in item:
            c = item["counter"]
            counters[str(c["name"]).removeprefix("c_")] = (int(c["packets"]), int(c["bytes"]))
        elif "set" in item:
            s = item["set"]
            elems: dict[str, tuple[int, int]] = {}
            for e in s.get("elem", []):
                inner = e.get("elem", e) if isinstance(e, dict) else e
                if isinstance(inner, dict) and "val" in inner:
                    ctr = inner.get("counter", {})
                    elems[_key(inner["val"])] = (
                        int(ctr.get("packets", 0)),
                        int(ctr.get("bytes", 0)),
                    )
            sets[s["name"]] = elems
    return Reading(at, counters, sets)


@dataclass(frozen=True)
class Sample:
    """Rates over one interval: what the agent reports and the detector judges."""

    at: float
    pps: float
    bps: float  # bits per second
    rates: dict[str, float]  # packets/s per counter name
    top_dst: list[tuple[str, float]]
    top_src: list[tuple[str, float]]
    top_sport: list[tuple[str, float]]
    top_dport: list[tuple[str, float]]

    def pct(self, name: str) -> float:
        return round(100.0 * self.rates.get(name, 0.0) / self.pps, 1) if self.pps else 0.0


def _top(
    prev: dict[str, tuple[int, int]], cur: dict[str, tuple[int, int]], dt: float, n: int
) -> list[tuple[str, float]]:
    out = []
    for key, (pk, _b) in cur.items():
        before = prev.get(key, (0, 0))[0]
        delta = pk - before if pk >= before else pk  # an expired element started again
        if delta > 0:
            out.append((key, delta / dt))
    out.sort(key=lambda kv: -kv[1])
    return out[:n]


def rates(prev: Reading, cur: Reading, top: int = 5) -> Sample:
    """Rates between two readings (pure)."""
    dt = max(cur.at - prev.at, 1e-3)

    def delta(name: str) -> tuple[float, float]:
        p0, b0 = prev.counters.get(name, (0, 0))
        p1, b1 = cur.counters.get(name, (0, 0))
        return max(p1 - p0, 0) / dt, max(b1 - b0, 0) * 8 / dt

    pps, bps = delta("all")
    per = {name: delta(name)[0] for name in COUNTERS}

    def tops(*names: str) -> list[tuple[str, float]]:
        merged: list[tuple[str, float]] = []
        for name in names:
            merged += _top(prev.sets.get(name, {}), cur.sets.get(name, {}), dt, top)
        return sorted(merged, key=lambda kv: -kv[1])[:top]

    return Sample(
        at=cur.at,
        pps=pps,
        bps=bps,
        rates=per,
        top_dst=tops("dst4", "dst6"),
        top_src=tops("src4", "src6"),
        top_sport=tops("sport"),
        top_dport=tops("dport"),
    )


@dataclass
class Observer:
    """Installs the observation table and reads it; ``prefix`` runs nft elsewhere."""

    interface: str
    prefix: Sequence[str] = ()

    def _nft(self, argv: Sequence[str], stdin: str | None = None) -> str:
        res = subprocess.run(
            [*self.prefix, "nft", *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if res.returncode != 0:
            raise ObserveError(f"nft {' '.join(argv)}: {res.stderr.strip()[:300]}")
        return res.stdout

    def install(self) -> None:
        self._nft(["-f", "-"], render_observer(self.interface))

    def uninstall(self) -> None:
        self._nft(["-f", "-"], f"table netdev {TABLE}\ndelete table netdev {TABLE}\n")

    def read(self, at: float) -> Reading:
        return parse_reading(json.loads(self._nft(["-j", "list", "table", "netdev", TABLE])), at)


def conn_count(proc: Path = Path("/proc")) -> int:
    """Connections the host tracks: conntrack's count, else established TCP sockets."""
    ct = proc / "sys/net/netfilter/nf_conntrack_count"
    try:
        return int(ct.read_text().strip())
    except (OSError, ValueError):
        pass
    total = 0
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        total += sum(1 for ln in lines if ln.split()[3:4] == ["01"])
    return total
