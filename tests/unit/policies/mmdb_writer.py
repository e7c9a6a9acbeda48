"""A minimal MaxMind DB (MMDB v2) writer, for tests that need a country database.

Format (MaxMind DB spec 2.0): a binary search tree over address bits (IPv6 tree, IPv4
under ::/96), 24-bit records, then 16 zero bytes, then the data section, then
``\\xab\\xcd\\xefMaxMind.com`` and the metadata map. Records point at a node (< node
count), at "no data" (= node count) or into the data section (node count + 16 + offset).
"""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path
from typing import Any

_MARKER = b"\xab\xcd\xefMaxMind.com"


def _control(type_id: int, size: int) -> bytes:
    if type_id > 7:
        head, extended = 0, bytes([type_id - 7])
    else:
        head, extended = type_id << 5, b""
    if size < 29:
        return bytes([head | size]) + extended
    if size < 29 + 256:
        return bytes([head | 29]) + extended + bytes([size - 29])
    if size < 285 + 65536:
        return bytes([head | 30]) + extended + struct.pack(">H", size - 285)
    return bytes([head | 31]) + extended + (size - 65821).to_bytes(3, "big")


class Uint:
    """An unsigned integer of a fixed MMDB type (libmaxminddb checks metadata types)."""

    def __init__(self, value: int, type_id: int) -> None:
        self.value, self.type_id = value, type_id


def encode(value: Any) -> bytes:
    """Encode maps, strings, unsigned ints, lists and bools."""
    if isinstance(value, Uint):
        n = value.value
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
        return _control(value.type_id, len(raw)) + raw
    if isinstance(value, bool):
        return _control(14, int(value))
    if isinstance(value, str):
        raw = value.encode()
        return _control(2, len(raw)) + raw
    if isinstance(value, int):
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
        type_id = 5 if value < 1 << 16 else 6 if value < 1 << 32 else 9
        return _control(type_id, len(raw)) + raw
    if isinstance(value, dict):
        body = b"".join(encode(str(k)) + encode(v) for k, v in value.items())
        return _control(7, len(value)) + body
    if isinstance(value, list):
        return _control(11, len(value)) + b"".join(encode(v) for v in value)
    raise TypeError(f"cannot encode {value!r}")


def write_country_mmdb(path: Path, networks: dict[str, str]) -> Path:
    """Write ``{prefix: ISO code}`` as a GeoLite2-Country-shaped database at ``path``."""
    nodes: list[list[Any]] = [[None, None]]
    data = bytearray()
    offsets: dict[str, int] = {}
    for prefix, code in networks.items():
        net = ipaddress.ip_network(prefix)
        if net.version == 4:
            value, plen = int(net.network_address), net.prefixlen + 96
        else:
            value, plen = int(net.network_address), net.prefixlen
        if code not in offsets:
            offsets[code] = len(data)
            data += encode({"country": {"iso_code": code, "names": {"en": code}}})
        node = 0
        for depth in range(plen):
            bit = (value >> (127 - depth)) & 1
            if depth == plen - 1:
                nodes[node][bit] = ("data", offsets[code])
            else:
                child = nodes[node][bit]
                if not isinstance(child, int):
                    nodes.append([None, None])
                    child = nodes[node][bit] = len(nodes) - 1
                node = child
    count = len(nodes)

    def record(child: Any) -> int:
        if child is None:
            return count
        if isinstance(child, int):
            return child
        return count + 16 + int(child[1])

    tree = b"".join(
        record(left).to_bytes(3, "big") + record(right).to_bytes(3, "big") for left, right in nodes
    )
    metadata = {
        "node_count": Uint(count, 6),
        "record_size": Uint(24, 5),
        "ip_version": Uint(6, 5),
        "database_type": "GeoLite2-Country",
        "languages": ["en"],
        "binary_format_major_version": Uint(2, 5),
        "binary_format_minor_version": Uint(0, 5),
        "build_epoch": Uint(1_700_000_000, 9),
        "description": {"en": "Sluice test country database"},
    }
    path.write_bytes(tree + b"\0" * 16 + bytes(data) + _MARKER + encode(metadata))
    return path
