"""Prefix sets with fast overlap tests.

A :class:`PrefixSet` holds prefixes of both families as merged integer intervals, so
"does this prefix touch any of them" (covers, is covered by, or equals) is a binary search.
Building from 100,000 prefixes takes a sort; a query is O(log n).
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable, Iterator

from policies.intents import IPNetwork


def interval(net: IPNetwork) -> tuple[int, int]:
    """First and last address as integers (without ipaddress's slow cached properties)."""
    lo = int(net.network_address)
    return lo, lo | ((1 << (net.max_prefixlen - net.prefixlen)) - 1)


class PrefixSet:
    """An immutable set of IPv4 and IPv6 prefixes answering overlap queries."""

    def __init__(self, prefixes: Iterable[IPNetwork] = ()) -> None:
        by_family: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        self._prefixes: list[IPNetwork] = []
        for net in prefixes:
            self._prefixes.append(net)
            by_family[net.version].append(interval(net))
        self._starts: dict[int, list[int]] = {}
        self._ends: dict[int, list[int]] = {}
        for fam, spans in by_family.items():
            spans.sort()
            starts: list[int] = []
            ends: list[int] = []
            for lo, hi in spans:
                if ends and lo <= ends[-1] + 1:
                    ends[-1] = max(ends[-1], hi)
                else:
                    starts.append(lo)
                    ends.append(hi)
            self._starts[fam] = starts
            self._ends[fam] = ends

    def __len__(self) -> int:
        return len(self._prefixes)

    def __iter__(self) -> Iterator[IPNetwork]:
        return iter(self._prefixes)

    def overlaps(self, net: IPNetwork) -> bool:
        """True if ``net`` covers, is covered by, or shares addresses with a member."""
        lo, hi = interval(net)
        starts, ends = self._starts[net.version], self._ends[net.version]
        i = bisect.bisect_right(starts, hi) - 1
        return i >= 0 and ends[i] >= lo

    def covers(self, net: IPNetwork) -> bool:
        """True if every address of ``net`` is inside the set."""
        lo, hi = interval(net)
        starts, ends = self._starts[net.version], self._ends[net.version]
        i = bisect.bisect_right(starts, lo) - 1
        return i >= 0 and ends[i] >= hi

    def overlapping(self, net: IPNetwork) -> list[IPNetwork]:
        """The members that overlap ``net`` (a linear scan: for messages, not hot paths)."""
        return [p for p in self._prefixes if p.version == net.version and p.overlaps(net)]


def parse_prefixes(values: Iterable[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(v, strict=True) for v in values]
