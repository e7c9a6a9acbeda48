"""Reading capture files: pcap and pcapng, streamed, never whole in memory.

:func:`open_capture` sniffs the format and yields a :class:`Capture` whose
:meth:`~Capture.records` stream one :class:`Record` at a time with the file offset each
starts at, so a later reader can seek straight to a record (the store keeps a sparse index
of them). A truncated or absurd record is :class:`PcapCorrupt`, never a short packet.

* pcap: dpkt parses the file header (magic, byte order, resolution, link type); the
  record loop is a plain ``struct`` read of the 16-byte record header, the same walk as
  ``dpkt.pcap.Reader`` without building a header object per record (that object cost
  more than everything else we do per packet; tests check both walks agree).
* pcapng: ``dpkt.pcapng.Reader`` over a :class:`StrictFile` (the link type of the first
  interface block applies to every packet).

:func:`fields` decodes one frame into a plain tuple (addresses as packed bytes) for the
analysis loop: a ``struct`` fast path for the common shapes (Ethernet with up to two VLAN
tags, Linux cooked, raw IP; IPv4, IPv6 with at most a fragment header; TCP, UDP, ICMP) and
dpkt for everything else; tests check the fast path against dpkt on every shape.
:func:`decode` gives the :class:`Packet` the API shows.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import dpkt

from policies.errors import ValidationFailed

# The largest record we accept: snaplen is at most 262,144 in libpcap; pcapng blocks add
# framing and options around the packet.
MAX_RECORD = 262_144 + 4096
READ_BUFFER = 1 << 20

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e6),  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (">", 1e6),  # big-endian, microseconds
    b"\x4d\x3c\xb2\xa1": ("<", 1e9),  # little-endian, nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1e9),  # big-endian, nanoseconds
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"

# Link types we decode (https://www.tcpdump.org/linktypes.html).
LINK_NULL = 0
LINK_ETHERNET = 1
LINK_RAW = (12, 14, 101)
LINK_LOOP = 108
LINK_SLL = 113
LINK_IPV4 = 228
LINK_IPV6 = 229
LINK_SLL2 = 276
LINK_TYPES = frozenset(
    {LINK_NULL, LINK_ETHERNET, *LINK_RAW, LINK_LOOP, LINK_SLL, LINK_IPV4, LINK_IPV6, LINK_SLL2}
)

PROTOCOL_NAMES = {
    1: "icmp",
    2: "igmp",
    4: "ipip",
    6: "tcp",
    17: "udp",
    41: "ipv6",
    47: "gre",
    50: "esp",
    51: "ah",
    58: "icmpv6",
    103: "pim",
    112: "vrrp",
    132: "sctp",
}
TCP_FLAG_NAMES = (
    (0x01, "fin"),
    (0x02, "syn"),
    (0x04, "rst"),
    (0x08, "psh"),
    (0x10, "ack"),
    (0x20, "urg"),
    (0x40, "ece"),
    (0x80, "cwr"),
)
_IP6_EXT = frozenset(dpkt.ip6.EXT_HDRS)
_DPKT_ERRORS = (dpkt.dpkt.Error, struct.error, ValueError, IndexError)


class PcapCorrupt(ValidationFailed):
    """The bytes are not a capture file we can read (bad magic, truncated or absurd records)."""

    code = "not_a_pcap"


class StrictFile:
    """A read-only file wrapper for dpkt: short or oversized reads are errors, not data.

    dpkt's readers take whatever ``read(n)`` returns, so a capture cut inside a record
    would yield a short packet, and a corrupt length field would ask for gigabytes (or,
    negative, for the rest of the file). Here a read at the very end of the file may
    return nothing (the end), but a partial record raises :class:`PcapCorrupt`.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.name = getattr(raw, "name", "<capture>")
        self.position = raw.tell()

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > MAX_RECORD:
            raise PcapCorrupt(f"a record at byte {self.position} claims {n} bytes; corrupt file")
        data = self.raw.read(n)
        if 0 < len(data) < n:
            raise PcapCorrupt(
                f"the file ends inside a record at byte {self.position + len(data)} "
                "(truncated capture)"
            )
        self.position += len(data)
        return data

    def seek(self, offset: int) -> None:
        self.raw.seek(offset)
        self.position = offset


@dataclass(frozen=True, slots=True)
class Record:
    offset: int  # file offset where the record starts
    ts: float
    data: bytes


class Capture:
    """An open capture: its format, link type and a stream of records."""

    def __init__(self, fmt: str, link_type: int, snaplen: int, file: StrictFile) -> None:
        self.format = fmt
        self.link_type = link_type
        self.snaplen = snaplen
        self._file = file
        self.first_offset = file.position
        self._reader: Any = None
        self._endian = "<"
        self._divisor = 1e6

    def records(self, start_offset: int | None = None) -> Iterator[Record]:
        """Records from ``start_offset`` (a record boundary seen earlier) or the first one."""
        for offset, ts, data in self.walk(start_offset):
            yield Record(offset, ts, data)

    def walk(self, start_offset: int | None = None) -> Iterator[tuple[int, float, bytes]]:
        """(offset, timestamp, frame) tuples: :meth:`records` for loops over every packet."""
        self._file.seek(self.first_offset if start_offset is None else start_offset)
        if self.format == "pcap":
            yield from self._pcap_walk()
            return
        f = self._file
        pos = f.position
        try:
            for ts, buf in self._reader:
                yield pos, float(ts), buf
                pos = f.position
        except PcapCorrupt:
            raise
        except _DPKT_ERRORS as exc:
            raise PcapCorrupt(f"corrupt pcapng block at byte {pos}: {exc}") from None

    def _pcap_walk(self) -> Iterator[tuple[int, float, bytes]]:
        # The StrictFile checks, inlined: this loop runs once per packet of every upload.
        unpack = struct.Struct(self._endian + "IIII").unpack
        divisor = self._divisor
        read = self._file.raw.read
        pos = self._file.position
        while True:
            head = read(16)
            if len(head) < 16:
                if head:
                    raise PcapCorrupt(
                        f"the file ends inside a record header at byte {pos} (truncated capture)"
                    )
                return
            sec, frac, caplen, _wire = unpack(head)
            if caplen > MAX_RECORD:
                raise PcapCorrupt(f"a record at byte {pos} claims {caplen} bytes; corrupt file")
            data = read(caplen)
            if len(data) < caplen:
                raise PcapCorrupt(
                    f"the file ends inside the record at byte {pos} (truncated capture)"
                )
            yield pos, sec + frac / divisor, data
            pos += 16 + caplen


def sniff(head: bytes) -> str | None:
    """``pcap``, ``pcapng`` or None, from the first four bytes of a file."""
    if head[:4] in PCAP_MAGICS:
        return "pcap"
    if head[:4] == PCAPNG_MAGIC:
        return "pcapng"
    return None


@contextmanager
def open_capture(path: Path) -> Iterator[Capture]:
    """Open ``path`` for streaming; :class:`PcapCorrupt` if it is not a readable capture."""
    with path.open("rb", buffering=READ_BUFFER) as raw:
        head = raw.read(4)
        fmt = sniff(head)
        if fmt is None:
            raise PcapCorrupt("not a pcap or pcapng file (unknown magic number)")
        raw.seek(0)
        f = StrictFile(raw)
        try:
            if fmt == "pcap":
                endian, divisor = PCAP_MAGICS[head]
                hdr_cls = dpkt.pcap.LEFileHdr if endian == "<" else dpkt.pcap.FileHdr
                hdr = hdr_cls(f.read(hdr_cls.__hdr_len__))
                link, snaplen, reader = int(hdr.linktype), int(hdr.snaplen), None
            else:
                reader = dpkt.pcapng.Reader(f)
                link, snaplen = int(reader.datalink()), int(reader.snaplen)
        except PcapCorrupt:
            raise
        except _DPKT_ERRORS as exc:
            raise PcapCorrupt(f"not a readable {fmt} file: {exc}") from None
        if link not in LINK_TYPES:
            raise PcapCorrupt(
                f"link type {link} is not supported (Ethernet, raw IP, Linux cooked, "
                "BSD loopback are)"
            )
        cap = Capture(fmt, link, snaplen, f)
        if fmt == "pcap":
            cap._endian, cap._divisor = endian, divisor
        cap._reader = reader
        yield cap


# ---------------------------------------------------------------- decoding

# (ip_version, src, dst, protocol, length, sport, dport, tcp_flags, fragment, icmp_type,
#  icmp_code); src/dst are packed bytes. None for a frame that is not IP.
Fields = tuple[
    int,
    bytes,
    bytes,
    int,
    int,
    int | None,
    int | None,
    int | None,
    str | None,
    int | None,
    int | None,
]

_ETH_VLAN = (0x8100, 0x88A8, 0x9100)
_U16 = struct.Struct("!H")
_PORTS = struct.Struct("!HH")
_V4 = struct.Struct("!BxHxxHxB")  # vhl, total length, flags+offset, protocol


def _fragment(offset: int, more: bool) -> str | None:
    if offset == 0:
        return "first" if more else None
    return "middle" if more else "last"


def _upper(
    buf: bytes, l4: int, end: int, proto: int
) -> tuple[int | None, int | None, int | None, int | None, int | None]:
    """Ports and flags (TCP/UDP) or type and code (ICMP) from the transport header."""
    have = end - l4
    if proto in {6, 17}:
        if have < 4:
            return None, None, None, None, None
        sport, dport = _PORTS.unpack_from(buf, l4)
        flags = buf[l4 + 13] if proto == 6 and have >= 20 else None
        return sport, dport, flags, None, None
    if proto in {1, 58} and have >= 4:
        return None, None, None, buf[l4], buf[l4 + 1]
    return None, None, None, None, None


def _link(link_type: int, buf: bytes) -> tuple[int, int] | None:
    """(offset of the IP header, IP version) for the shapes the fast path handles."""
    if link_type == LINK_ETHERNET:
        if len(buf) < 14:
            return None
        etype = _U16.unpack_from(buf, 12)[0]
        off = 14
        tags = 0
        while etype in _ETH_VLAN and tags < 2 and len(buf) >= off + 4:
            etype = _U16.unpack_from(buf, off + 2)[0]
            off += 4
            tags += 1
    elif link_type in LINK_RAW or link_type in {LINK_IPV4, LINK_IPV6}:
        return (0, buf[0] >> 4) if buf else None
    elif link_type == LINK_SLL and len(buf) >= 16:
        etype, off = _U16.unpack_from(buf, 14)[0], 16
    elif link_type == LINK_SLL2 and len(buf) >= 20:
        etype, off = _U16.unpack_from(buf, 0)[0], 20
    else:
        return None
    if etype == 0x0800:
        return off, 4
    if etype == 0x86DD:
        return off, 6
    return None


def _fast(link_type: int, buf: bytes) -> Fields | None:
    """The struct fast path; None when the shape is not one it handles (dpkt decides)."""
    where = _link(link_type, buf)
    if where is None:
        return None
    off, version = where
    if version == 4:
        if len(buf) < off + 20:
            return None
        vhl, total, frag, proto = _V4.unpack_from(buf, off)
        ihl = (vhl & 0x0F) * 4
        if vhl >> 4 != 4 or ihl < 20 or len(buf) < off + ihl:
            return None
        end = min(len(buf), off + total) if total else len(buf)
        fragment = _fragment(frag & 0x1FFF, bool(frag & 0x2000))
        src, dst = buf[off + 12 : off + 16], buf[off + 16 : off + 20]
        length = total or len(buf)
        l4 = off + ihl
    elif version == 6:
        if len(buf) < off + 40:
            return None
        plen = _U16.unpack_from(buf, off + 4)[0]
        proto = buf[off + 6]
        src, dst = buf[off + 8 : off + 24], buf[off + 24 : off + 40]
        end = min(len(buf), off + 40 + plen) if plen else len(buf)
        length = plen + 40 if plen else len(buf)
        l4 = off + 40
        fragment = None
        if proto == 44:
            if end < l4 + 8:
                return None
            proto = buf[l4]
            fo = _U16.unpack_from(buf, l4 + 2)[0]
            fragment = _fragment(fo >> 3, bool(fo & 1))
            l4 += 8
        if proto in _IP6_EXT:
            return None
    else:
        return None
    if fragment is None or fragment == "first":
        sport, dport, flags, itype, icode = _upper(buf, l4, end, proto)
    else:
        sport = dport = flags = itype = icode = None
    return (version, src, dst, proto, length, sport, dport, flags, fragment, itype, icode)


def _network_layer(link_type: int, buf: bytes) -> Any:
    if link_type == LINK_ETHERNET:
        return dpkt.ethernet.Ethernet(buf).data
    if link_type in LINK_RAW:
        version = buf[0] >> 4 if buf else 0
        return dpkt.ip.IP(buf) if version == 4 else dpkt.ip6.IP6(buf) if version == 6 else None
    if link_type == LINK_IPV4:
        return dpkt.ip.IP(buf)
    if link_type == LINK_IPV6:
        return dpkt.ip6.IP6(buf)
    if link_type == LINK_SLL:
        return dpkt.sll.SLL(buf).data
    if link_type == LINK_SLL2:
        return dpkt.sll2.SLL2(buf).data
    return dpkt.loopback.Loopback(buf).data  # NULL / LOOP: a 4-byte address family


def fields_dpkt(link_type: int, buf: bytes) -> Fields | None:
    """Decode with dpkt alone (the reference the fast path is tested against)."""
    try:
        net = _network_layer(link_type, buf)
    except _DPKT_ERRORS:
        return None
    if isinstance(net, dpkt.ip.IP):
        version, proto = 4, net.p
        length = net.len or len(buf)
        fragment = _fragment(net.offset, bool(net.mf))
    elif isinstance(net, dpkt.ip6.IP6):
        version, proto = 6, net.p
        length = net.plen + 40 if net.plen else len(buf)
        frag = net.extension_hdrs.get(dpkt.ip.IP_PROTO_FRAGMENT)
        fragment = _fragment(frag.frag_off, bool(frag.m_flag)) if frag is not None else None
    else:
        return None
    upper = net.data
    sport = dport = flags = itype = icode = None
    if fragment is None or fragment == "first":
        if isinstance(upper, dpkt.tcp.TCP):
            sport, dport, flags = upper.sport, upper.dport, upper.flags
        elif isinstance(upper, dpkt.udp.UDP):
            sport, dport = upper.sport, upper.dport
        elif isinstance(upper, dpkt.icmp.ICMP | dpkt.icmp6.ICMP6):
            itype, icode = upper.type, upper.code
        elif proto in (6, 17) and isinstance(upper, bytes) and len(upper) >= 4:
            sport, dport = _PORTS.unpack_from(upper)  # a header too short for dpkt
    return (
        version,
        bytes(net.src),
        bytes(net.dst),
        proto,
        length,
        sport,
        dport,
        flags,
        fragment,
        itype,
        icode,
    )


def fields(link_type: int, buf: bytes) -> Fields | None:
    """One frame's fields: the fast path where it applies, dpkt otherwise."""
    try:
        got = _fast(link_type, buf)
    except (struct.error, IndexError):
        got = None
    return got if got is not None else fields_dpkt(link_type, buf)


def address(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def protocol_name(proto: int) -> str:
    return PROTOCOL_NAMES.get(proto, str(proto))


def flag_names(flags: int | None) -> list[str]:
    if flags is None:
        return []
    return [name for bit, name in TCP_FLAG_NAMES if flags & bit]


@dataclass(frozen=True, slots=True)
class Packet:
    """One packet as the API shows it."""

    ts: float
    captured_length: int
    f: Fields | None

    def to_api(self, index: int) -> dict[str, Any]:
        from datetime import UTC, datetime

        base: dict[str, Any] = {
            "index": index,
            "timestamp": datetime.fromtimestamp(self.ts, UTC).isoformat(),
            "ts": self.ts,
            "captured_length": self.captured_length,
        }
        f = self.f
        if f is None:
            return {
                **base,
                "ip_version": None,
                "src_ip": None,
                "dst_ip": None,
                "src_port": None,
                "dst_port": None,
                "protocol": None,
                "protocol_number": None,
                "length": self.captured_length,
                "tcp_flags": [],
                "fragment": None,
                "icmp_type": None,
                "icmp_code": None,
            }
        version, src, dst, proto, length, sport, dport, flags, frag, itype, icode = f
        return {
            **base,
            "ip_version": version,
            "src_ip": address(src),
            "dst_ip": address(dst),
            "src_port": sport,
            "dst_port": dport,
            "protocol": protocol_name(proto),
            "protocol_number": proto,
            "length": length,
            "tcp_flags": flag_names(flags),
            "fragment": frag,
            "icmp_type": itype,
            "icmp_code": icode,
        }


def decode(link_type: int, record: Record) -> Packet:
    return Packet(record.ts, len(record.data), fields(link_type, record.data))
