"""How ``sluice serve`` runs the API: uvicorn over h11, with a header timeout.

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive``, but nothing
closes a connection that has sent part of its request headers: 2,000 such connections
stayed open for minutes. :func:`protocol` returns uvicorn's h11 protocol with one timer
more: from the moment a connection opens, or from the first byte of a new request on a
kept-alive one, the request line and headers must be complete within
``http_header_timeout_seconds``, or the connection is closed. The timer is absolute: a
client that sends one header byte a second gains nothing. The header size is bounded by
h11 (``http_max_header_bytes``); the body's deadline and size are the request guard's
(:mod:`orchestrator.api.guard`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from orchestrator.settings import Settings


def protocol(header_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing connections whose headers do not arrive in time."""

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.transport.is_closing():
                self._disarm()
            elif self.conn.their_state is h11.IDLE:
                self._arm()  # (part of) a request line or headers: the clock runs
            else:
                self._disarm()  # headers complete

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout, self._expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol


def config(app: Any, settings: Settings, *, log_level: str) -> uvicorn.Config:
    # log_config=None: uvicorn keeps our logging set-up (one format, quiet APScheduler)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        lifespan="on",
        log_config=None,
        http=protocol(settings.http_header_timeout_seconds),
        timeout_keep_alive=settings.http_keep_alive_seconds,
        h11_max_incomplete_event_size=settings.http_max_header_bytes,
    )
