"""Integer prefixes and a longest-prefix-match index that scales to 100,000s of entries.

Large policy tables (per-host thresholds, the allowlist) are held as plain integers, not
``ipaddress`` objects: a prefix is ``(version, value, length)``. :func:`parse_net` reads
one in about a microsecond through ``socket.inet_pton`` and falls back to
:func:`policies.intents.parse_prefix` for its precise error messages.

:class:`LpmIndex` keeps one dict per (family, prefix length) mapping the network's
integer to a payload; a lookup probes the lengths present, longest first, so it costs a
handful of dict lookups whatever the table size.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

from policies.intents import IPAddress, IPNetwork, parse_prefix

Net = tuple[int, int, int]  # (version 4|6, network integer, prefix length)
BITS = {4: 32, 6: 128}
_MAPPED_LO = 0xFFFF << 32
_MAPPED_HI = _MAPPED_LO | 0xFFFFFFFF

T = TypeVar("T")


def parse_net(text: object) -> Net:
    """An address or CIDR prefix as ``(version, value, length)``; errors as :func:`parse_prefix`."""
    if isinstance(text, str):
        addr, slash, plen_text = text.partition("/")
        try:
            if ":" in addr:
                version, value = 6, int.from_bytes(socket.inet_pton(socket.AF_INET6, addr))
            else:
                version, value = 4, int.from_bytes(socket.inet_pton(socket.AF_INET, addr))
        except OSError:
            return net_of(parse_prefix(text))
        bits = BITS[version]
        if slash:
            if not plen_text.isdigit() or len(plen_text) > 3:
                return net_of(parse_prefix(text))
            plen = int(plen_text)
            if plen > bits:
                return net_of(parse_prefix(text))
        else:
            plen = bits
        if value & ((1 << (bits - plen)) - 1) or (
            version == 6 and _MAPPED_LO <= value <= _MAPPED_HI
        ):
            return net_of(parse_prefix(text))  # raises with the precise reason
        return version, value, plen
    return net_of(parse_prefix(text))


def net_of(net: IPNetwork) -> Net:
    return net.version, int(net.network_address), net.prefixlen


def addr_net(addr: IPAddress) -> Net:
    return addr.version, int(addr), BITS[addr.version]


def to_network(net: Net) -> IPNetwork:
    version, value, plen = net
    if version == 4:
        return ipaddress.IPv4Network((value, plen))
    return ipaddress.IPv6Network((value, plen))


def net_text(net: Net) -> str:
    return str(to_network(net))


def span(net: Net) -> tuple[int, int]:
    """The first and last address of ``net`` as integers."""
    version, value, plen = net
    return value, value | ((1 << (BITS[version] - plen)) - 1)


def contains(outer: Net, inner: Net) -> bool:
    if outer[0] != inner[0] or outer[2] > inner[2]:
        return False
    shift = BITS[outer[0]] - outer[2]
    return (inner[1] >> shift) == (outer[1] >> shift)


class LpmIndex(Generic[T]):
    """Longest-prefix match over IPv4 and IPv6 prefixes, each carrying a payload."""

    def __init__(self, items: Iterable[tuple[Net, T]] = ()) -> None:
        self._tables: dict[int, dict[int, dict[int, T]]] = {4: {}, 6: {}}
        self._lengths: dict[int, tuple[int, ...]] = {}
        self._count = 0
        for net, payload in items:
            self.add(net, payload)

    def add(self, net: Net, payload: T) -> T | None:
        """Insert; returns the payload already stored for exactly this prefix, if any."""
        version, value, plen = net
        tables = self._tables[version]
        table = tables.get(plen)
        if table is None:
            table = tables[plen] = {}
            self._lengths.pop(version, None)
        key = value >> ((32 if version == 4 else 128) - plen)
        previous = table.get(key)
        if previous is None:
            self._count += 1
        table[key] = payload
        return previous

    def add_many(self, items: Iterable[tuple[Net, T]]) -> None:
        """Insert many (later duplicates replace earlier ones, as :meth:`add`)."""
        tables = self._tables
        for (version, value, plen), payload in items:
            family = tables[version]
            table = family.get(plen)
            if table is None:
                table = family[plen] = {}
                self._lengths.pop(version, None)
            key = value >> ((32 if version == 4 else 128) - plen)
            if key not in table:
                self._count += 1
            table[key] = payload

    def __len__(self) -> int:
        return self._count

    def lengths(self, version: int) -> tuple[int, ...]:
        cached = self._lengths.get(version)
        if cached is None:
            cached = tuple(sorted(self._tables[version], reverse=True))
            self._lengths[version] = cached
        return cached

    def lookup(self, version: int, value: int) -> tuple[int, T] | None:
        """The longest prefix containing address ``value``: ``(length, payload)`` or None."""
        tables = self._tables[version]
        bits = 32 if version == 4 else 128
        lengths = self._lengths.get(version)
        if lengths is None:
            lengths = self.lengths(version)
        for plen in lengths:
            hit = tables[plen].get(value >> (bits - plen))
            if hit is not None:
                return plen, hit
        return None

    def lookup_net(self, net: Net) -> tuple[int, T] | None:
        """The longest member prefix that contains all of ``net``."""
        version, value, plen = net
        tables = self._tables[version]
        bits = BITS[version]
        for length in self.lengths(version):
            if length > plen:
                continue
            hit = tables[length].get(value >> (bits - length))
            if hit is not None:
                return length, hit
        return None

    def items(self) -> Iterator[tuple[Net, T]]:
        for version, tables in self._tables.items():
            for plen, table in tables.items():
                shift = BITS[version] - plen
                for key, payload in table.items():
                    yield (version, key << shift, plen), payload


def first_overlap(nets: list[Net]) -> tuple[int, int] | None:
    """Indexes ``(i, j)`` of two overlapping prefixes in ``nets`` (equal counts), or None."""
    order = sorted(zip(nets, range(len(nets)), strict=True))
    prev_version = -1
    prev_end = -1
    prev_index = -1
    for (version, value, plen), i in order:
        if version == prev_version and value <= prev_end:
            return prev_index, i
        hi = value | ((1 << ((32 if version == 4 else 128) - plen)) - 1)
        if version != prev_version or hi > prev_end:
            prev_version, prev_end, prev_index = version, hi, i
    return None
