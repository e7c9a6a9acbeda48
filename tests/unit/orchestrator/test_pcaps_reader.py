"""Capture reading: the record walk and the fast decoder agree with dpkt; bad files refused."""

from __future__ import annotations

import struct
from pathlib import Path

import dpkt
import pytest

from orchestrator.pcaps.reader import (
    PcapCorrupt,
    decode,
    fields,
    fields_dpkt,
    open_capture,
)
from orchestrator.pcaps.store import STRIDE, scan
from tests import pcapgen as g

A, B = "198.51.100.7", "203.0.113.10"
A6, B6 = "2001:db8::7", "2001:db8::10"


def _vlan(frame: bytes, *tags: int) -> bytes:
    """Insert 802.1Q tags after the MAC addresses."""
    out = frame[:12]
    for tpid in tags:
        out += struct.pack("!HH", tpid, 100)
    return out + frame[12:]


def _ip6_with(ext: bytes, nxt_ext: int, upper: bytes, proto: int) -> bytes:
    """An IPv6 frame whose first header is ``ext`` (type ``nxt_ext``), then ``upper``."""
    body = bytes([proto]) + ext[1:] + upper
    ip6 = dpkt.ip6.IP6(src=bytes(16), dst=bytes(15) + b"\x01", nxt=nxt_ext, hlim=64)
    ip6.plen = len(body)
    return bytes(ip6)[:40] + body


def _frames() -> dict[str, tuple[int, bytes]]:
    """Frame shapes: (link type, bytes)."""
    udp = g.udp(A, B, 53, 40000, b"x" * 100)
    tcp = g.syn(A, B, 40000, 443)
    ip_of = {k: v[14:] for k, v in {"udp": udp, "tcp": tcp}.items()}
    frag6_first = struct.pack("!BBHI", 17, 0, 1, 9)  # offset 0, more fragments
    frag6_last = struct.pack("!BBHI", 17, 0, 185 << 3, 9)
    hop_by_hop = bytes([17, 0, 1, 4, 0, 0, 0, 0])  # padding option
    udp_hdr = struct.pack("!HHHH", 123, 5000, 8, 0)
    short_tcp = bytearray(ip_of["tcp"][:20] + ip_of["tcp"][20:32])  # 12-byte TCP header
    short_tcp[2:4] = struct.pack("!H", 32)
    ip_opts = bytearray(ip_of["udp"])
    ip_opts = bytearray(bytes([0x46]) + ip_opts[1:20] + b"\x01\x01\x01\x00" + ip_opts[20:])
    ip_opts[2:4] = struct.pack("!H", len(ip_opts))
    arp = bytes(
        dpkt.ethernet.Ethernet(src=g.MAC_A, dst=g.MAC_B, type=0x0806, data=bytes(dpkt.arp.ARP()))
    )
    sll = struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 8, 0x0800) + ip_of["udp"]
    sll2 = struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, b"\x02" * 8) + ip_of["tcp"]
    return {
        "udp": (1, udp),
        "tcp_syn": (1, tcp),
        "tcp_ack_psh": (1, g.tcp(A, B, 443, 40000, flags=0x18, payload=b"y" * 10)),
        "icmp": (1, g.icmp_echo(A, B)),
        "gre": (1, g.gre(A, B)),
        "frag_first": (1, g._ip(A, B, 17, udp[34:], more=True)),
        "frag_middle": (1, g.fragment(A, B, 100, True)),
        "frag_last": (1, g.fragment(A, B, 185, False)),
        "vlan": (1, _vlan(udp, 0x8100)),
        "qinq": (1, _vlan(tcp, 0x88A8, 0x8100)),
        "udp6": (1, g.udp(A6, B6, 123, 5000, b"z" * 48)),
        "tcp6": (1, g.syn(A6, B6, 5000, 80)),
        "icmp6": (1, g._ip(A6, B6, 58, b"\x80\x00\x00\x00\x00\x01\x00\x01")),
        "frag6_first": (101, _ip6_with(frag6_first, 44, udp_hdr, 17)),
        "frag6_last": (101, _ip6_with(frag6_last, 44, b"\x00" * 40, 17)),
        "hop_by_hop6": (101, _ip6_with(hop_by_hop, 0, udp_hdr, 17)),
        "short_tcp": (101, bytes(short_tcp)),
        "ip_options": (101, bytes(ip_opts)),
        "arp": (1, arp),
        "raw_ip": (101, ip_of["udp"]),
        "ipv4_link": (228, ip_of["tcp"]),
        "sll": (113, sll),
        "sll2": (276, sll2),
        "truncated_eth": (1, udp[:10]),
        "garbage_ip": (101, b"\x45\x00\x00"),
    }


@pytest.mark.parametrize("name", list(_frames()))
def test_fast_decoder_agrees_with_dpkt(name: str) -> None:
    link, frame = _frames()[name]
    assert fields(link, frame) == fields_dpkt(link, frame)


def test_decoded_fields_are_the_ones_sent() -> None:
    f = _frames()
    syn = fields(*f["tcp_syn"])
    assert syn is not None
    assert syn[0] == 4 and syn[3] == 6 and (syn[5], syn[6], syn[7]) == (40000, 443, 0x02)
    udp6 = fields(*f["udp6"])
    assert udp6 is not None and udp6[0] == 6 and (udp6[5], udp6[6]) == (123, 5000)
    assert udp6[4] == 40 + 8 + 48  # IP length, not the frame's
    middle = fields(*f["frag_middle"])
    assert middle is not None and middle[8] == "middle" and middle[5] is None
    first6 = fields(*f["frag6_first"])
    assert first6 is not None and first6[8] == "first" and first6[5] == 123
    assert fields(*f["arp"]) is None
    short = fields(*f["short_tcp"])
    assert short is not None and (short[5], short[6], short[7]) == (40000, 443, None)
    qinq = fields(*f["qinq"])
    assert qinq is not None and qinq[6] == 443


def _pcap_bytes(frames: list[bytes], *, nano: bool = False) -> bytes:
    path_bytes = bytearray()

    class Sink:
        def write(self, b: bytes) -> None:
            path_bytes.extend(b)

    w = dpkt.pcap.Writer(Sink(), snaplen=65535, nano=nano)
    for i, fr in enumerate(frames):
        w.writepkt(fr, ts=1_700_000_000 + i * 0.25)
    return bytes(path_bytes)


def _big_endian(data: bytes) -> bytes:
    """The same little-endian pcap rewritten big-endian (file and record headers)."""
    out = bytearray(struct.pack(">IHHiIII", *struct.unpack("<IHHiIII", data[:24])))
    pos = 24
    while pos < len(data):
        sec, frac, cap, wire = struct.unpack_from("<IIII", data, pos)
        out += struct.pack(">IIII", sec, frac, cap, wire) + data[pos + 16 : pos + 16 + cap]
        pos += 16 + cap
    return bytes(out)


@pytest.mark.parametrize("variant", ["le-us", "le-ns", "be-us", "pcapng"])
def test_record_walk_matches_dpkt_reader(tmp_path: Path, variant: str) -> None:
    frames = [fr for _, fr in _frames().values()]
    path = tmp_path / "c.cap"
    if variant == "pcapng":
        g.write(path, frames, fmt="pcapng", step=0.25)
    else:
        data = _pcap_bytes(frames, nano=variant == "le-ns")
        path.write_bytes(_big_endian(data) if variant == "be-us" else data)
    with path.open("rb") as f:
        reader = dpkt.pcapng.Reader(f) if variant == "pcapng" else dpkt.pcap.Reader(f)
        expected = [(float(ts), buf) for ts, buf in reader]
    with open_capture(path) as cap:
        got = [(r.ts, r.data) for r in cap.records()]
        assert cap.format == ("pcapng" if variant == "pcapng" else "pcap")
        assert cap.link_type == 1
    assert got == expected
    assert len(got) == len(frames)


def test_seeking_to_a_kept_offset_resumes_the_walk(tmp_path: Path) -> None:
    path = g.write(tmp_path / "s.pcap", (g.udp(A, B, 53, 1024 + i) for i in range(2 * STRIDE + 7)))
    result = scan(path)
    assert result.packets == 2 * STRIDE + 7
    assert len(result.checkpoints) == 3
    with open_capture(path) as cap:
        for k, offset in enumerate(result.checkpoints):
            rec = next(iter(cap.records(offset)))
            pkt = decode(cap.link_type, rec).to_api(k * STRIDE)
            assert pkt["dst_port"] == 1024 + k * STRIDE


def test_scan_of_pcapng_gives_format_span_and_count(tmp_path: Path) -> None:
    path = g.write(tmp_path / "n.pcapng", g.dns_reflection(10), fmt="pcapng", step=0.5)
    result = scan(path)
    assert (result.format, result.link_type, result.packets) == ("pcapng", 1, 10)
    assert result.last_ts - result.first_ts == pytest.approx(4.5)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("text", b"GET / HTTP/1.1\r\n\r\n" * 4, "unknown magic"),
        ("short header", b"\xd4\xc3\xb2\xa1\x02\x00", "truncated"),
        ("png", b"\x89PNG\r\n\x1a\n" + bytes(40), "unknown magic"),
    ],
)
def test_foreign_files_are_refused(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / "x"
    path.write_bytes(content)
    with pytest.raises(PcapCorrupt, match=message) as exc, open_capture(path) as cap:
        list(cap.records())
    assert exc.value.code == "not_a_pcap"


def test_truncated_and_absurd_records_are_refused(tmp_path: Path) -> None:
    good = _pcap_bytes([g.udp(A, B, 53, 1000, b"x" * 200)] * 3)
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(good[:-50])
    with pytest.raises(PcapCorrupt, match="truncated"):
        scan(cut)
    half_header = tmp_path / "half.pcap"
    half_header.write_bytes(good + b"\x00" * 7)
    with pytest.raises(PcapCorrupt, match="truncated"):
        scan(half_header)
    huge = bytearray(good)
    struct.pack_into("<I", huge, 24 + 8, 0x7FFFFFFF)  # first record's caplen
    absurd = tmp_path / "absurd.pcap"
    absurd.write_bytes(bytes(huge))
    with pytest.raises(PcapCorrupt, match="claims"):
        scan(absurd)
    ng = g.write(tmp_path / "n.pcapng", [g.udp(A, B, 53, 1000)] * 3, fmt="pcapng")
    cut_ng = tmp_path / "cut.pcapng"
    cut_ng.write_bytes(ng.read_bytes()[:-10])
    with pytest.raises(PcapCorrupt):
        scan(cut_ng)


def test_unsupported_link_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "usb.pcap"
    with path.open("wb") as f:
        w = dpkt.pcap.Writer(f, linktype=189)  # USB
        w.writepkt(b"\x00" * 20, ts=1.0)
    with pytest.raises(PcapCorrupt, match="link type 189"):
        scan(path)
