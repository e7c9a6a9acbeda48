"""What half-open connections and oversized bodies cost the real ``sluice serve``.

Starts the service on a free loopback port with its default limits, then:

* opens ``--connections`` connections that each send part of a request's headers, and
  measures when the service has closed them all (header timeout, 10 s by default);
* sends a 30 MB chunked body with no token and reports how much was taken before the
  401 and how the service's memory moved.

``python -m tests.bench.bench_http_limits [--connections 2000]``
"""

from __future__ import annotations

import argparse
import resource
import socket
import tempfile
import time
from pathlib import Path

import psutil

from tests.integration.test_crash import Server

MIB = 1024 * 1024


def half_open(port: int, count: int) -> None:
    socks = []
    t0 = time.monotonic()
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Partial")
        s.setblocking(False)
        socks.append(s)
    opened = time.monotonic() - t0
    remaining = set(range(count))
    while remaining and time.monotonic() - t0 < 120:
        for i in list(remaining):
            try:
                if socks[i].recv(16) == b"":
                    remaining.discard(i)
            except BlockingIOError:
                pass
            except ConnectionResetError:
                remaining.discard(i)
        time.sleep(0.2)
    for s in socks:
        s.close()
    print(
        f"{count} connections with partial headers opened in {opened:.1f} s; "
        f"{count - len(remaining)} closed by the service within "
        f"{time.monotonic() - t0:.1f} s of the first ({len(remaining)} still open)"
    )


def big_body(port: int, proc: psutil.Process) -> None:
    before = proc.memory_info().rss
    chunk = b"10000\r\n" + b"[" * 65536 + b"\r\n"
    sent = 0
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(
            b"POST /api/v1/mitigation/rules HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        try:
            while sent < 30 * MIB:
                s.sendall(chunk)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = s.recv(12)
        except OSError as exc:
            answer = repr(exc).encode()
    print(
        f"30 MB body without a token: {sent / MIB:.1f} MiB written before the service closed; "
        f"answer {answer!r} after {time.monotonic() - t0:.2f} s; "
        f"service RSS {before / MIB:.0f} -> {proc.memory_info().rss / MIB:.0f} MiB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=2000)
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.connections + 256), hard))
    with tempfile.TemporaryDirectory() as tmp:
        srv = Server(Path(tmp), None)  # the default limits, no policy
        srv.stop_timeout = 20
        try:
            srv.start()
            assert srv.proc is not None
            half_open(srv.port, args.connections)
            big_body(srv.port, psutil.Process(srv.proc.pid))
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
