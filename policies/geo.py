"""Geo lockdown: country prefixes from an MMDB file, aggregated to a rule budget.

:class:`GeoDB` reads a GeoLite2-Country or DB-IP country MMDB with ``maxminddb`` and
collects each country's address ranges. :func:`aggregate` turns a set of ranges to block
into at most ``budget`` CIDR prefixes: first the exact prefixes (minus every forbidden
range: allowlisted and protected space), then, while over budget, greedy supernetting
that adds the fewest collateral addresses per rule saved, never onto a supernet that
touches forbidden space and never to /0. What the budget costs is reported: collateral
(addresses covered that were not asked for) and uncovered (addresses asked for that did
not fit).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import maxminddb

from policies.errors import PolicyInvalid
from policies.netindex import BITS, Net, span

Span = tuple[int, int]


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    out: list[list[int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def subtract(spans: Sequence[Span], holes: Sequence[Span]) -> list[Span]:
    """``spans`` minus ``holes`` (both merged and sorted)."""
    out: list[Span] = []
    j = 0
    for lo, hi in spans:
        cur = lo
        while j < len(holes) and holes[j][1] < cur:
            j += 1
        k = j
        while k < len(holes) and holes[k][0] <= hi:
            if holes[k][0] > cur:
                out.append((cur, holes[k][0] - 1))
            cur = max(cur, holes[k][1] + 1)
            k += 1
        if cur <= hi:
            out.append((cur, hi))
    return out


def complement(spans: Sequence[Span], version: int) -> list[Span]:
    return subtract([(0, (1 << BITS[version]) - 1)], spans)


def to_cidrs(spans: Iterable[Span], version: int) -> list[Net]:
    """The fewest CIDR prefixes covering exactly ``spans``."""
    bits = BITS[version]
    out: list[Net] = []
    for lo, hi in spans:
        cur = lo
        while cur <= hi:
            size = (cur & -cur).bit_length() - 1 if cur else bits
            while size > 0 and cur + (1 << size) - 1 > hi:
                size -= 1
            out.append((version, cur, bits - size))
            cur += 1 << size
    return out


@dataclass(frozen=True, slots=True)
class Aggregate:
    prefixes: tuple[Net, ...]
    collateral: int  # addresses covered that were not asked for
    uncovered: int  # addresses asked for that did not fit the budget
    exact: int  # how many prefixes blocking exactly what was asked would take


def _supernet(a: Net, b: Net) -> Net:
    bits = BITS[a[0]]
    lo = min(a[1], b[1])
    hi = max(span(a)[1], span(b)[1])
    plen = bits - (lo ^ hi).bit_length()
    return a[0], (lo >> (bits - plen)) << (bits - plen), plen


def aggregate(  # noqa: PLR0915 - one greedy loop, clearer in one piece
    spans: Sequence[Span], forbidden: Sequence[Span], version: int, budget: int
) -> Aggregate:
    """At most ``budget`` prefixes covering ``spans`` and nothing in ``forbidden``."""
    holes = merge_spans(forbidden)
    wanted = subtract(merge_spans(spans), holes)
    current = to_cidrs(wanted, version)
    exact = len(current)
    if exact <= budget:
        return Aggregate(tuple(current), 0, 0, exact)
    starts = [n[1] for n in current]
    blocked = {n: span(n)[1] - n[1] + 1 for n in current}
    hole_starts = [h[0] for h in holes]

    def touches_hole(net: Net) -> bool:
        lo, hi = span(net)
        i = bisect.bisect_right(hole_starts, hi) - 1
        return i >= 0 and holes[i][1] >= lo

    def members(net: Net) -> tuple[int, int]:
        lo, hi = span(net)
        return bisect.bisect_left(starts, lo), bisect.bisect_right(starts, hi)

    def cost(net: Net) -> tuple[float, int] | None:
        i, j = members(net)
        if j - i < 2 or net[2] == 0 or touches_hole(net):
            return None
        size = span(net)[1] - net[1] + 1
        inside = sum(span(current[k])[1] - current[k][1] + 1 for k in range(i, j))
        return (size - inside) / (j - i - 1), j - i

    heap: list[tuple[float, int, Net]] = []

    def push(a: Net, b: Net) -> None:
        sup = _supernet(a, b)
        c = cost(sup)
        if c is not None:
            heapq.heappush(heap, (c[0], -c[1], sup))

    for a, b in itertools.pairwise(current):
        push(a, b)
    collateral = 0
    while len(current) > budget and heap:
        ratio, neg, sup = heapq.heappop(heap)
        c = cost(sup)
        if c is None:
            continue
        if (c[0], -c[1]) != (ratio, neg):
            heapq.heappush(heap, (c[0], -c[1], sup))
            continue
        i, j = members(sup)
        size = span(sup)[1] - sup[1] + 1
        covered = sum(span(current[k])[1] - current[k][1] + 1 for k in range(i, j))
        blocked[sup] = sum(blocked.pop(current[k]) for k in range(i, j))
        collateral += size - covered
        current[i:j] = [sup]
        starts[i:j] = [sup[1]]
        if i > 0:
            push(current[i - 1], sup)
        if i + 1 < len(current):
            push(sup, current[i + 1])
    uncovered = 0
    if len(current) > budget:
        keep = sorted(current, key=lambda n: blocked[n], reverse=True)[:budget]
        kept = set(keep)
        for n in current:
            if n not in kept:
                uncovered += blocked[n]
                collateral -= (span(n)[1] - n[1] + 1) - blocked[n]
        current = sorted(keep)
    return Aggregate(tuple(current), collateral, uncovered, exact)


class GeoDB:
    """Country lookups and per-country ranges from one MMDB file."""

    def __init__(self, path: Path) -> None:
        try:
            self._reader = maxminddb.open_database(str(path))
        except (OSError, ValueError) as exc:
            raise PolicyInvalid(f"cannot read MMDB file {path}: {exc}") from None
        self.path = path
        self._ranges: dict[str, dict[int, list[Span]]] | None = None

    @staticmethod
    def _code(record: Any) -> str | None:
        if not isinstance(record, dict):
            return None
        for key in ("country", "registered_country"):
            value = record.get(key)
            if isinstance(value, dict) and isinstance(value.get("iso_code"), str):
                return str(value["iso_code"]).upper()
        return None

    def country(self, address: str) -> str | None:
        return self._code(self._reader.get(address))

    def ranges(self) -> dict[str, dict[int, list[Span]]]:
        """Country -> version -> merged address ranges (read once, then cached)."""
        if self._ranges is None:
            raw: dict[str, dict[int, list[Span]]] = {}
            for network, record in self._reader:
                code = self._code(record)
                if code is None:
                    continue
                lo = int(network.network_address)
                raw.setdefault(code, {4: [], 6: []})[network.version].append(
                    (lo, int(network.broadcast_address))
                )
            self._ranges = {
                code: {v: merge_spans(s) for v, s in fams.items()} for code, fams in raw.items()
            }
        return self._ranges

    def spans(self, countries: Iterable[str], version: int) -> list[Span]:
        table = self.ranges()
        return merge_spans(s for c in countries for s in table.get(c, {}).get(version, []))

    def close(self) -> None:
        self._reader.close()
