"""How ``sluice serve`` runs the API: uvicorn, with a header timeout and a header size limit.

The HTTP parser is httptools (llhttp, in C) and the event loop uvloop when they are
installed (both are dependencies; the ``http_parser`` and ``event_loop`` settings choose
h11 and asyncio's own loop instead): with them (and one write per answer, below) the
service answered 1.6 times the requests per second under ``hey`` on the same machine.

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive``, but nothing
closes a connection that has sent part of its request headers: 2,000 such connections
stayed open for minutes. The protocols :func:`protocol` returns add a timer: from the
moment a connection opens, or from the first byte of a new request on a kept-alive one,
the request line and headers must be complete within ``http_header_timeout_seconds``, or
the connection is closed. The timer is absolute: a client that sends one header byte a
second gains nothing.

The request line and headers together are bounded by ``http_max_header_bytes``: h11 has
the limit itself (its incomplete-event buffer); httptools has none, so its protocol
counts what arrives until the headers are complete. Past the limit both answer
``431 headers_too_large`` (the error envelope) and close the connection. The body's
deadline and size are the request guard's (:mod:`orchestrator.api.guard`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import Callable
from typing import Any, Literal

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from orchestrator.api.envelope import error_body
from orchestrator.settings import Settings
from policies.errors import SluiceError

Parser = Literal["httptools", "h11"]
Loop = Literal["uvloop", "asyncio"]


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def choices(settings: Settings) -> tuple[Parser, Loop]:
    """(HTTP parser, event loop) for these settings: ``auto`` takes httptools and uvloop
    when they are installed; naming one that is not installed is an error."""
    parser: Parser
    loop: Loop
    if settings.http_parser == "auto":
        parser = "httptools" if installed("httptools") else "h11"
    else:
        parser = settings.http_parser
    if settings.event_loop == "auto":
        loop = "uvloop" if installed("uvloop") else "asyncio"
    else:
        loop = settings.event_loop
    for name, setting in ((parser, "http_parser"), (loop, "event_loop")):
        if name in ("httptools", "uvloop") and not installed(name):
            raise SluiceError(
                f"{setting} is {name!r} but the Python package {name} is not installed",
                code="invalid_setting",
            )
    return parser, loop


def refusal(status: bytes, code: str, message: str) -> bytes:
    """A whole answer in the error envelope for a request the parser refused (the
    connection is closed after it: what follows on it cannot be trusted)."""
    body = json.dumps(error_body(code, message)).encode()
    return (
        b"HTTP/1.1 " + status + b"\r\n"
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n\r\n" + body
    )


def too_large(max_header_bytes: int) -> bytes:
    """The whole 431 answer (headers too large)."""
    return refusal(
        b"431 Request Header Fields Too Large",
        "headers_too_large",
        f"the request line and headers are larger than {max_header_bytes} bytes",
    )


def malformed(msg: str) -> bytes:
    """The whole 400 answer for a request that is not valid HTTP/1.1 (both parsers; uvicorn
    answers these in plain text)."""
    return refusal(
        b"400 Bad Request", "malformed_request", f"the request is not valid HTTP/1.1: {msg}"
    )


class HeaderTimer:
    """The header timer of both protocols: armed from a connection's opening and from the
    first byte of each request, disarmed once the headers are complete; when it fires with
    the headers still incomplete, the connection is closed. Absolute: a client that sends
    one header byte a second gains nothing."""

    header_timeout: float
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    _header_timer: asyncio.TimerHandle | None = None

    def _in_headers(self) -> bool:
        """Whether a request line or headers are still being received."""
        raise NotImplementedError

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if self._in_headers() and not self.transport.is_closing():
            self.transport.close()


def h11_protocol(header_timeout: float, max_header_bytes: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing connections whose headers do not arrive in time."""
    timeout = header_timeout

    class HeaderTimeoutProtocol(HeaderTimer, H11Protocol):
        header_timeout = timeout

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.transport.is_closing():
                self._disarm()
            elif self._in_headers():
                self._arm()  # (part of) a request line or headers: the clock runs
            else:
                self._disarm()  # headers complete

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            # h11 refuses a header block past its limit as a protocol error: say which
            large = len(self.conn.trailing_data[0]) > max_header_bytes
            self.transport.write(too_large(max_header_bytes) if large else malformed(msg))
            self.transport.close()

        def _in_headers(self) -> bool:
            return self.conn.their_state is h11.IDLE

    return HeaderTimeoutProtocol


def httptools_protocol(header_timeout: float, max_header_bytes: int) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with the header timer and a header size limit."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    timeout = header_timeout

    class LimitedHttpToolsProtocol(HeaderTimer, HttpToolsProtocol):
        header_timeout = timeout
        # True from the first byte of a request (and from the connection's opening) until
        # its headers are complete
        _headers_pending = True
        # bytes received while in the headers, and whether a request ended within the
        # data being parsed (its bytes are then not counted: they were a request's)
        _header_bytes = 0
        _ended = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            self._headers_pending = True
            super().on_message_begin()

        # why the last request was refused, when this protocol refused it (not httptools)
        _refused: str | None = None

        def send_400_response(self, msg: str) -> None:
            self.transport.write(malformed(self._refused or msg))
            self.transport.close()

        def on_header(self, name: bytes, value: bytes) -> None:
            # after the headers come a chunked body's trailers: dropped, as h11 does (they
            # would join the request's headers: an X-Forwarded-For after the proxy's own)
            if self._headers_pending:
                super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._headers_pending = False
            self._header_bytes = 0
            # what h11 refuses and llhttp lets through: HTTP/0.9 and other versions, an
            # HTTP/1.1 request without its one Host header, two Host headers. Raised here,
            # the error ends the parse and uvicorn answers through send_400_response.
            version = self.parser.get_http_version()
            hosts = sum(1 for name, _ in self.headers if name == b"host")
            if version not in ("1.0", "1.1"):
                self._refused = f"HTTP/{version} is not served"
            elif hosts > 1 or (version == "1.1" and hosts == 0):
                self._refused = f"{hosts} Host headers: HTTP/1.1 wants one (1.0: at most one)"
            if self._refused is not None:
                raise ValueError(self._refused)
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None and cycle.transport is self.transport:
                one = OneWrite(self.transport, cycle)
                cycle.transport = one  # type: ignore[assignment]
                cycle.on_response = one.done

        def on_message_complete(self) -> None:
            self._ended = True
            super().on_message_complete()

        def data_received(self, data: bytes) -> None:
            self._ended = False
            super().data_received(data)
            if self.transport.is_closing():
                self._disarm()
            elif self._headers_pending:  # (part of) a request line or headers: the clock runs
                if not self._ended:
                    self._header_bytes += len(data)
                if self._header_bytes > max_header_bytes:
                    self._refuse_headers()
                else:
                    self._arm()
            else:
                self._disarm()  # headers complete

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _refuse_headers(self) -> None:
            self._disarm()
            if self.cycle is not None and not self.cycle.response_complete:
                # a (pipelined) request before it is still being answered: nothing more is
                # read, and the connection closes once that answer is sent
                self.flow.pause_reading()
                self.cycle.keep_alive = False
                return
            self.transport.write(too_large(max_header_bytes))
            self.transport.close()

        def _in_headers(self) -> bool:
            return self._headers_pending

    return LimitedHttpToolsProtocol


class OneWrite:
    """The transport as one request's response cycle (httptools) sees it: the status line
    and headers are held until the first piece of the body and go out with it, in one
    write. uvicorn writes them separately: two system calls and two segments for every
    answer, a quarter of the service's CPU under ``hey`` (each wakes the client). A
    ``100 Continue`` (written before the response starts) is never held; the end of the
    response and whatever closes the connection send what is held first."""

    __slots__ = ("_cycle", "_held", "_on_response", "_started", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: Any) -> None:
        self._transport = transport
        self._cycle = cycle
        self._on_response: Callable[[], None] = cycle.on_response
        self._held: bytes | None = None
        self._started = False

    def write(self, data: bytes) -> None:
        if not self._started and self._cycle.response_started:
            self._started = True  # the status line and headers: held
            self._held = data
            return
        if self._held is not None:
            data = self._held + data
            self._held = None
        self._transport.write(data)

    def flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._transport.write(held)

    def done(self) -> None:
        """The response is complete (the cycle's ``on_response``): what is held goes out
        (a response without a body: HEAD, 204, 304) before a pipelined request starts."""
        self.flush()
        self._on_response()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


def protocol(settings: Settings, parser: Parser) -> type[asyncio.Protocol]:
    """The HTTP protocol class for ``parser``, with these settings' header limits."""
    make = httptools_protocol if parser == "httptools" else h11_protocol
    return make(settings.http_header_timeout_seconds, settings.http_max_header_bytes)


def config(app: Any, settings: Settings, *, log_level: str) -> uvicorn.Config:
    parser, loop = choices(settings)
    # log_config=None: uvicorn keeps our logging set-up (one format, quiet APScheduler)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        lifespan="on",
        log_config=None,
        http=protocol(settings, parser),
        loop=loop,
        timeout_keep_alive=settings.http_keep_alive_seconds,
        h11_max_incomplete_event_size=settings.http_max_header_bytes,
    )
