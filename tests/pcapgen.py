"""Capture files built with dpkt for tests and the analysis benchmark.

Each builder returns the bytes of one Ethernet frame; :func:`write` puts frames into a
pcap or pcapng file with increasing timestamps. Nothing here is random unless a seeded
``random.Random`` is passed in, so captures (and their analyses) are reproducible.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from pathlib import Path

import dpkt

MAC_A = b"\x02\x00\x00\x00\x00\x01"
MAC_B = b"\x02\x00\x00\x00\x00\x02"


def _ip(
    src: str, dst: str, proto: int, payload: bytes, *, offset: int = 0, more: bool = False
) -> bytes:
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if a.version == 6:
        ip6 = dpkt.ip6.IP6(src=a.packed, dst=b.packed, nxt=proto, hlim=64, data=payload)
        ip6.plen = len(payload)
        return bytes(dpkt.ethernet.Ethernet(src=MAC_A, dst=MAC_B, type=0x86DD, data=ip6))
    ip = dpkt.ip.IP(src=a.packed, dst=b.packed, p=proto, ttl=64, id=7, data=payload)
    ip.offset, ip.mf = offset, int(more)
    ip.len = 20 + len(payload)
    return bytes(dpkt.ethernet.Ethernet(src=MAC_A, dst=MAC_B, type=0x0800, data=ip))


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"") -> bytes:
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    u.ulen = 8 + len(payload)
    return _ip(src, dst, 17, bytes(u))


def dns_response(src: str, dst: str, dport: int, size: int = 512) -> bytes:
    """A DNS answer (source port 53) padded to ``size`` bytes of UDP payload."""
    dns = dpkt.dns.DNS(id=0x1234, qr=dpkt.dns.DNS_R, opcode=dpkt.dns.DNS_QUERY)
    dns.qd = [dpkt.dns.DNS.Q(name="example.com", type=dpkt.dns.DNS_ANY)]
    body = bytes(dns)
    return udp(src, dst, 53, dport, body + b"\x00" * max(0, size - len(body)))


def tcp(src: str, dst: str, sport: int, dport: int, *, flags: int, payload: bytes = b"") -> bytes:
    t = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=1, win=64240, data=payload)
    return _ip(src, dst, 6, bytes(t))


def syn(src: str, dst: str, sport: int, dport: int) -> bytes:
    return tcp(src, dst, sport, dport, flags=dpkt.tcp.TH_SYN)


def icmp_echo(src: str, dst: str, size: int = 56) -> bytes:
    echo = dpkt.icmp.ICMP.Echo(id=1, seq=1, data=b"\x00" * size)
    ic = dpkt.icmp.ICMP(type=dpkt.icmp.ICMP_ECHO, code=0, data=echo)
    return _ip(src, dst, 1, bytes(ic))


def fragment(src: str, dst: str, offset_units: int, more: bool, size: int = 1000) -> bytes:
    """A non-first IPv4 fragment of a UDP datagram (no UDP header in it)."""
    return _ip(src, dst, 17, b"\x00" * size, offset=offset_units, more=more)


def gre(src: str, dst: str, size: int = 100) -> bytes:
    return _ip(src, dst, 47, b"\x00\x00\x08\x00" + b"\x00" * size)


def write(
    path: Path,
    frames: Iterable[bytes],
    *,
    fmt: str = "pcap",
    start: float = 1_700_000_000.0,
    step: float = 0.001,
) -> Path:
    with path.open("wb") as f:
        writer: dpkt.pcap.Writer | dpkt.pcapng.Writer
        writer = (
            dpkt.pcap.Writer(f, snaplen=65535)
            if fmt == "pcap"
            else dpkt.pcapng.Writer(f, snaplen=65535)
        )
        for i, frame in enumerate(frames):
            writer.writepkt(frame, ts=start + i * step)
    return path


def source(rng: random.Random, prefix: str = "198.51.100.0/24") -> str:
    net = ipaddress.ip_network(prefix)
    return str(net.network_address + rng.randrange(1, net.num_addresses - 1))


def dns_reflection(
    n: int, target: str = "203.0.113.10", *, seed: int = 1, reflectors: int = 50
) -> Iterable[bytes]:
    """``n`` DNS answers from ``reflectors`` resolvers in three /24s toward ``target``."""
    rng = random.Random(seed)
    nets = ("198.51.100.0/24", "192.0.2.0/24", "100.64.7.0/24")
    pool = [source(rng, nets[i % 3]) for i in range(reflectors)]
    for _ in range(n):
        yield dns_response(pool[rng.randrange(reflectors)], target, rng.randrange(1024, 65535))


def syn_flood(
    n: int, target: str = "203.0.113.10", dport: int = 443, *, seed: int = 2
) -> Iterable[bytes]:
    """Spoofed SYNs from random sources in 10.0.0.0/8 toward ``target``:``dport``."""
    rng = random.Random(seed)
    for _ in range(n):
        yield syn(source(rng, "10.0.0.0/8"), target, rng.randrange(1024, 65535), dport)


def write_repeated(
    path: Path,
    frames: list[bytes],
    count: int,
    *,
    start: float = 1_700_000_000.0,
    pps: int = 100_000,
) -> Path:
    """A large pcap fast: ``count`` records cycling through ``frames`` (pre-built), ``pps``
    packets per second. Same format as :func:`write`, without dpkt's per-packet cost."""
    import struct

    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    rec = struct.Struct("<IIII")
    with path.open("wb", buffering=1 << 20) as f:
        f.write(header)
        base = int(start)
        for i in range(count):
            frame = frames[i % len(frames)]
            sec, usec = divmod(i * 1_000_000 // pps, 1_000_000)
            f.write(rec.pack(base + sec, usec, len(frame), len(frame)))
            f.write(frame)
    return path
