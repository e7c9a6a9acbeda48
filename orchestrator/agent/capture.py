"""Packet captures: a sampled ring of recent packets, and a bounded capture per attack.

* :class:`SampledRing` keeps the last ``size`` incoming packets (cut to ``snaplen``) from
  an AF_PACKET socket whose classic BPF filter lets through one packet in ``n`` chosen at
  random by the kernel; the agent raises ``n`` with the packet rate so that Python sees a
  few thousand packets per second at most, whatever the flood (the rest never leaves the
  kernel). It gives a capture the moments *before* the attack was detected.
* :func:`capture` runs only while an incident is new: the ring's packets first, then every
  incoming packet, stopping at the first of ``max_packets``, ``max_bytes`` (file size) or
  ``max_seconds``. Outgoing packets are skipped.

Files wait in the agent's state directory until the service has them
(:class:`PcapSpool`), at most ``MAX_PENDING`` of them: the oldest goes first.
"""

from __future__ import annotations

import ctypes
import hashlib
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
LINKTYPE_ETHERNET = 1
MAX_PENDING = 5
SO_ATTACH_FILTER = 26
SKF_AD_RANDOM = 0xFFFFF000 + 56  # SKF_AD_OFF (-0x1000) + SKF_AD_RANDOM, as an unsigned k

Packet = tuple[float, bytes, int]  # time, bytes kept, length on the wire


def sampling_filter(n: int, snaplen: int) -> list[tuple[int, int, int, int]]:
    """cBPF: keep a packet (``snaplen`` bytes) when the kernel's random number mod n is 0."""
    return [
        (0x20, 0, 0, SKF_AD_RANDOM),  # ld [random]
        (0x94, 0, 0, max(1, n)),  # mod #n
        (0x15, 0, 1, 0),  # jeq #0, keep, drop
        (0x06, 0, 0, snaplen),  # ret #snaplen
        (0x06, 0, 0, 0),  # ret #0
    ]


def attach_filter(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw)
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class SampledRing:
    """The last ``size`` sampled incoming packets of ``interface`` (a daemon thread)."""

    def __init__(
        self, interface: str, *, size: int = 2000, snaplen: int = 256, target_pps: int = 1000
    ) -> None:
        self.interface = interface
        self.snaplen = snaplen
        self.target_pps = target_pps
        self.n = 1
        self.packets: deque[Packet] = deque(maxlen=size)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        attach_filter(self.sock, sampling_filter(1, snaplen))
        self.sock.bind((interface, 0))
        self.sock.settimeout(0.5)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="sluice-ring", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2)
        self.sock.close()

    def set_rate(self, pps: float) -> None:
        """Sample one packet in n, n chosen so ~``target_pps`` reach Python."""
        n = max(1, int(pps // self.target_pps) + 1)
        if n != self.n and (n > self.n * 1.5 or n < self.n / 1.5):
            self.n = n
            attach_filter(self.sock, sampling_filter(n, self.snaplen))

    def snapshot(self) -> list[Packet]:
        with self._lock:
            return list(self.packets)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[2] != PACKET_OUTGOING:
                with self._lock:
                    self.packets.append((time.time(), data[: self.snaplen], len(data)))


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
    before: Sequence[Packet] = (),
) -> Captured:
    """Capture incoming packets on ``interface`` into ``out`` (pcap), within the bounds.

    ``before`` (the ring's sampled packets) is written first and counts toward the bounds.
    """
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
            for ts, cut, wire in before[-max_packets:]:
                if size + 16 + len(cut) > max_bytes:
                    break
                sec = int(ts)
                fh.write(struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(cut), wire))
                fh.write(cut)
                size += 16 + len(cut)
                count += 1
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
