"""Bounded test traffic inside a lab namespace: ``python -m labs.traffic recv|send|flood``.

* ``recv --ports 5000,7777 --ready FILE``: counts UDP datagrams (IPv4 and IPv6) per
  ``port/source`` and
  prints them as JSON when a datagram whose payload is ``END`` arrives (plus a short
  drain), or after ``--max-seconds``. It touches ``FILE`` once its sockets are bound.
* ``send --dst A --dport P --count N [--sport S] [--bind A] [--end]``: N datagrams, then
  optionally the ``END`` marker (from an ephemeral port, so a source-port rule lets it by).
* ``flood --dst A --dport P --count N --seconds T [--sport S]``: at most N datagrams in at
  most T seconds, as fast as one core sends them (``sendmmsg`` is not in Python; a tight
  ``sendto`` loop reaches tens of thousands per second). Prints what was sent.

Every run is bounded in packets and time, and only ever addresses what it is given.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time
from pathlib import Path


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def recv(ports: list[int], ready: Path | None, max_seconds: float) -> dict[str, int]:
    socks = []
    for port in ports:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)  # dual stack: v4 and v6
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind(("::", port))
        socks.append(s)
    if ready is not None:
        ready.touch()
    counts: dict[str, int] = {}
    deadline = time.monotonic() + max_seconds
    drain_until: float | None = None
    while True:
        now = time.monotonic()
        end = drain_until if drain_until is not None else deadline
        if now >= end:
            break
        readable, _, _ = select.select(socks, [], [], end - now)
        for s in readable:
            data, addr = s.recvfrom(2048)
            if data == b"END":
                drain_until = time.monotonic() + 0.3
                continue
            key = f"{s.getsockname()[1]}/{addr[0].removeprefix('::ffff:')}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def send(
    *, dst: str, dport: int, count: int, sport: int, bind: str, end: bool, payload: bytes
) -> int:
    s = socket.socket(_family(dst), socket.SOCK_DGRAM)
    if sport or bind:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        any_addr = "::" if ":" in dst else "0.0.0.0"  # noqa: S104 - inside a lab namespace
        s.bind((bind or any_addr, sport))
    for _ in range(count):
        s.sendto(payload, (dst, dport))
    if end:
        e = socket.socket(_family(dst), socket.SOCK_DGRAM)
        if bind:
            e.bind((bind, 0))
        for _ in range(3):
            e.sendto(b"END", (dst, dport))
    return count


def flood(
    *, dst: str, dport: int, count: int, seconds: float, sport: int, size: int
) -> dict[str, float]:
    s = socket.socket(_family(dst), socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    if sport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", sport))  # noqa: S104 - inside a lab namespace
    payload = b"\0" * size
    start = time.monotonic()
    deadline = start + seconds
    sent = 0
    sendto = s.sendto
    target = (dst, dport)
    while sent < count:
        for _ in range(256):
            try:  # noqa: SIM105 - contextlib.suppress costs a call per packet here
                sendto(payload, target)
            except OSError:  # ENOBUFS under pressure: the datagram is dropped, go on
                pass
            sent += 1
        if time.monotonic() >= deadline:
            break
    elapsed = time.monotonic() - start
    return {"sent": sent, "seconds": elapsed, "pps": sent / elapsed if elapsed else 0.0}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="labs.traffic")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--ports", required=True)
    r.add_argument("--ready", type=Path)
    r.add_argument("--max-seconds", type=float, default=30.0)
    s = sub.add_parser("send")
    s.add_argument("--dst", required=True)
    s.add_argument("--dport", type=int, required=True)
    s.add_argument("--count", type=int, default=1)
    s.add_argument("--sport", type=int, default=0)
    s.add_argument("--bind", default="")
    s.add_argument("--end", action="store_true")
    f = sub.add_parser("flood")
    f.add_argument("--dst", required=True)
    f.add_argument("--dport", type=int, required=True)
    f.add_argument("--count", type=int, required=True)
    f.add_argument("--seconds", type=float, required=True)
    f.add_argument("--sport", type=int, default=0)
    f.add_argument("--size", type=int, default=64)
    a = ap.parse_args(argv)
    if a.cmd == "recv":
        out: object = recv([int(p) for p in a.ports.split(",")], a.ready, a.max_seconds)
    elif a.cmd == "send":
        out = send(
            dst=a.dst,
            dport=a.dport,
            count=min(a.count, 100_000),
            sport=a.sport,
            bind=a.bind,
            end=a.end,
            payload=b"x" * 32,
        )
    else:
        out = flood(
            dst=a.dst,
            dport=a.dport,
            count=min(a.count, 10_000_000),
            seconds=min(a.seconds, 60.0),
            sport=a.sport,
            size=a.size,
        )
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
