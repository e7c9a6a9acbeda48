"""A bounded packet capture when an attack opens: AF_PACKET into a libpcap file on disk.

The capture runs only while an incident is new and stops at the first of ``max_packets``,
``max_bytes`` (file size) or ``max_seconds``; each packet is cut to ``snaplen`` bytes
(headers are what the analysis needs). Outgoing packets are skipped. Files wait in the
agent's state directory until the service has them (:class:`PcapSpool`), at most
``MAX_PENDING`` of them: the oldest goes first when a new one needs room.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
LINKTYPE_ETHERNET = 1
MAX_PENDING = 5


@dataclass(frozen=True)
class Captured:
    path: Path
    packets: int
    size: int
    seconds: float


def capture(
    interface: str,
    out: Path,
    *,
    max_packets: int = 20_000,
    max_bytes: int = 8 << 20,
    max_seconds: float = 10.0,
    snaplen: int = 256,
) -> Captured:
    """Capture incoming packets on ``interface`` into ``out`` (pcap), within the bounds."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((interface, 0))
    tmp = out.with_suffix(".part")
    start = time.monotonic()
    count = 0
    size = 24
    try:
        with tmp.open("wb") as fh:
            fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))
            while count < max_packets:
                left = max_seconds - (time.monotonic() - start)
                if left <= 0:
                    break
                sock.settimeout(min(left, 0.5))
                try:
                    data, addr = sock.recvfrom(65535)
                except TimeoutError:
                    continue
                if addr[2] == PACKET_OUTGOING:
                    continue
                cut = data[:snaplen]
                if size + 16 + len(cut) > max_bytes:
                    break
                now = time.time()
                sec = int(now)
                fh.write(struct.pack("<IIII", sec, int((now - sec) * 1e6), len(cut), len(data)))
                fh.write(cut)
                size += 16 + len(cut)
                count += 1
    finally:
        sock.close()
    tmp.replace(out)
    return Captured(out, count, size, time.monotonic() - start)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class PcapSpool:
    """Captures waiting for upload, one file per incident (``<incident id>.pcap``)."""

    directory: Path

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path_for(self, incident_id: str) -> Path:
        safe = "".join(c for c in incident_id if c.isalnum() or c == "-")[:64]
        self.make_room()
        return self.directory / f"{safe}.pcap"

    def pending(self) -> list[Path]:
        return sorted(self.directory.glob("*.pcap"), key=lambda p: p.stat().st_mtime)

    def make_room(self) -> None:
        files = self.pending()
        for old in files[: max(0, len(files) - MAX_PENDING + 1)]:
            old.unlink(missing_ok=True)
