"""Connections and bodies against the real ``sluice serve``, over real sockets.

Issue #10: 2,000 connections sending partial headers stayed open for 90 s and more; a
30 MB body with no token was read and parsed (the service grew from 173 to 966 MiB)
before its 401. Each wait here has a deadline that fails loudly; nothing depends on
how fast the machine is beyond those generous bounds.

Every test runs against both HTTP parsers the service can use (httptools, the default,
and h11): their limits are the service's own code on top of different parsers.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from orchestrator.api.app import DOCS_ASSETS

TOKEN = "h" * 64
HEADER_TIMEOUT = 1.0
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def healthy(self) -> bool:
        r = httpx.get(f"http://127.0.0.1:{self.port}/api/v1/health", timeout=10)
        return r.status_code == 200 and bool(r.json()["ready"])


@contextlib.contextmanager
def serve(tmp_path: Path, log_level: str = "warning", parser: str = "auto") -> Iterator[Service]:
    port = free_port()
    env = {
        **os.environ,
        "SLUICE_HTTP_PARSER": parser,
        "SLUICE_ADMIN_TOKEN": TOKEN,
        "SLUICE_HTTP_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "SLUICE_HTTP_BODY_TIMEOUT_SECONDS": "2",
    }
    log = tmp_path / "serve.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(  # our own CLI with fixed arguments
            [
                sys.executable,
                "-m",
                "orchestrator.cli",
                "serve",
                "--data-dir",
                str(tmp_path / "data"),
                "--port",
                str(port),
                "--log-level",
                log_level,
            ],
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    svc = Service(proc, port, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if svc.healthy():
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"service did not start: {log.read_text()}")
            time.sleep(0.1)
        yield svc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module", params=["httptools", "h11"])
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    with serve(tmp_path_factory.mktemp("http-limits"), parser=request.param) as svc:
        yield svc


def closed_by_server(sock: socket.socket, deadline: float) -> bool:
    """True once the server closes ``sock`` (EOF or reset), False at ``deadline``."""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        if not data:
            return True
    return False


def read_response(sock: socket.socket, timeout: float) -> bytes:
    """The status line and headers of the answer on ``sock`` (bounded wait)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_partial_headers_are_closed(service: Service) -> None:
    socks = []
    for i in range(200):
        s = service.connect()
        s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow-" + str(i).encode())
        socks.append(s)
    idle = [service.connect() for _ in range(20)]  # connected, sent nothing
    # the service still answers others meanwhile
    assert service.healthy()
    deadline = time.monotonic() + HEADER_TIMEOUT + 20
    try:
        still_open = [s for s in socks + idle if not closed_by_server(s, deadline)]
        assert not still_open, f"{len(still_open)} half-open connections still open"
    finally:
        for s in socks + idle:
            s.close()


def test_header_timeout_is_not_reset_by_dribbling(service: Service) -> None:
    """One byte every 0.2 s keeps a connection busy, but the clock started at connect."""
    request = b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n" + b"X-Drip: " + b"a" * 200
    with service.connect() as s:
        started = time.monotonic()
        closed = False
        for byte in request:
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if closed_by_server(s, time.monotonic() + 0.2):
                closed = True
                break
        # 240 bytes at 5/s would take 48 s: closed long before that
        assert closed, "the server kept a dribbling connection open"
        assert time.monotonic() - started < 30


def test_keep_alive_connection_gets_the_header_timeout_too(service: Service) -> None:
    with service.connect() as s:
        s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s, 10).startswith(b"HTTP/1.1 200")
        s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")  # never finished
        assert closed_by_server(s, time.monotonic() + HEADER_TIMEOUT + 20)


def test_big_body_without_token_is_refused_unread(service: Service) -> None:
    assert service.healthy()
    before = service.rss()
    body_size = 30 * MIB
    with service.connect() as s:
        s.sendall(
            b"POST /api/v1/mitigation/rules HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: " + str(body_size).encode() + b"\r\n\r\n" + b"[" * 65536
        )
        head = read_response(s, 20)  # answered while 30 MB are still to come
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"connection: close" in head.lower()
    # no Content-Length (chunked), no token: 401 after the first chunk, the rest unread
    with service.connect() as s:
        s.sendall(
            b"POST /api/v1/mitigation/rules HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"10000\r\n" + b"[" * 65536 + b"\r\n"
        )
        head = read_response(s, 20)
        assert head.startswith(b"HTTP/1.1 401"), head
        # push the whole 30 MB anyway: the server closed, nothing of it is kept
        sent = 0
        chunk = b"10000\r\n" + b"[" * 65536 + b"\r\n"
        try:
            while sent < body_size:
                s.sendall(chunk)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
    # with a token, a chunked body is cut off at the limit
    with service.connect() as s:
        s.sendall(
            b"POST /api/v1/mitigation/rules HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        try:
            for _ in range(40):  # 2.5 MB offered
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        head = read_response(s, 20)
        assert head.startswith(b"HTTP/1.1 413"), head
    assert service.healthy()
    grown = service.rss() - before
    assert grown < 40 * MIB, f"the service grew by {grown / MIB:.0f} MiB"


def test_slow_body_is_cut_off(service: Service) -> None:
    with service.connect() as s:
        s.sendall(
            b"POST /api/v1/mitigation/rules HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        head = read_response(s, 30)
        assert head.startswith(b"HTTP/1.1 408"), head


def test_oversized_headers_are_refused(service: Service) -> None:
    """Headers past http_max_header_bytes (16 KiB) that have not ended: 431, closed."""
    with service.connect() as s:
        s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(40):  # 40 KiB offered, a KiB at a time
                s.sendall(b"a" * 1024)
        except (BrokenPipeError, ConnectionResetError):
            pass
        head = read_response(s, 20)
        assert head.startswith(b"HTTP/1.1 431"), head
        assert b"connection: close" in head.lower()
        assert closed_by_server(s, time.monotonic() + 20)
    # an answer in the error envelope
    with service.connect() as s:
        s.sendall(b"GET /" + b"a" * 20_000)
        s.settimeout(20)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 431"), data
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "headers_too_large"
    # headers under the limit are fine
    with service.connect() as s:
        s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
        assert read_response(s, 20).startswith(b"HTTP/1.1 200")


def test_trailers_do_not_become_headers(service: Service) -> None:
    """A chunked body's trailer is not a request header: a token there is no token."""
    with service.connect() as s:
        s.sendall(
            b"POST /api/v1/incidents HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\n{}\r\n0\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"
        )
        head = read_response(s, 20)
    assert head.startswith(b"HTTP/1.1 401"), head


def test_unparsable_requests_get_400(service: Service) -> None:
    """Both parsers refuse what could smuggle a second request (conflicting lengths, a
    transfer coding other than chunked, a bad chunk size) and what is not HTTP/1.x with
    one Host header, in the error envelope."""
    for request in (
        b"POST /api/v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
        b"Content-Length: 2\r\n\r\nab",
        b"POST /api/v1/health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /api/v1/health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nab\r\n0\r\n\r\n",
        b"POST /api/v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"NOT AN HTTP REQUEST\r\n\r\n",
        # what llhttp accepts and h11 does not: refused on both
        b"GET /api/v1/health HTTP/1.1\r\n\r\n",
        b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        b"GET /api/v1/health\r\n\r\n",
    ):
        with service.connect() as s:
            s.sendall(request)
            answer = read_all(s, 20)  # the server closes the connection after it
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400"), (request, answer)
            assert b"content-type: application/json" in head.lower(), (request, answer)
            error = json.loads(body)["error"]  # the error envelope, as for every refusal
            assert error["code"] == "malformed_request", (request, answer)
            assert error["message"].startswith("the request is not valid HTTP/1.1"), error


def test_http_1_0_without_host_is_served(service: Service) -> None:
    """The control for the Host checks above: HTTP/1.0 needs no Host header (simple health
    checkers send none), and one Host header on HTTP/1.1 is what every client sends."""
    for request in (
        b"GET /api/v1/health HTTP/1.0\r\n\r\n",
        b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ):
        with service.connect() as s:
            s.sendall(request)
            answer = read_all(s, 20)
            assert answer.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")), (request, answer)


def read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_answers_go_out_whole_and_in_order(service: Service) -> None:
    """Each answer's headers and body leave together (httptools: one write); an answer
    without a body (HEAD) and pipelined requests keep their order; a 100 Continue
    still comes before the body is sent."""
    css = (DOCS_ASSETS / "swagger-ui.css").read_bytes()
    with service.connect() as s:
        s.sendall(
            b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /api/v1/docs/static/swagger-ui.css HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /api/v1/docs/static/swagger-ui.css HTTP/1.1\r\nHost: x\r\n"
            b"Connection: close\r\n\r\n"
        )
        data = read_all(s, 20)
    first, rest = data.split(b"\r\n\r\n", 1)
    assert first.startswith(b"HTTP/1.1 200")
    health = rest[
        : int(dict(line.split(b": ", 1) for line in first.split(b"\r\n")[1:])[b"content-length"])
    ]
    assert json.loads(health)["ok"] is True
    rest = rest[len(health) :]
    head, rest = rest.split(b"\r\n\r\n", 1)  # HEAD: headers only
    assert head.startswith(b"HTTP/1.1 200") and str(len(css)).encode() in head
    head, body = rest.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200")
    assert body == css
    with service.connect() as s:
        s.sendall(
            b"POST /api/v1/incidents HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        assert read_response(s, 20).startswith(b"HTTP/1.1 100")
        s.sendall(b"{}")
        head = read_response(s, 20)
    assert head.startswith(b"HTTP/1.1 422"), head
