"""A small HTTP/1.1 server on asyncio streams for the ExaBGP bridge.

The bridge runs inside ExaBGP with stdout reserved for API commands, so it avoids a web
framework's logging and start-up machinery. Supported: keep-alive, ``Content-Length``
bodies (no chunked uploads), one handler coroutine for every request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

MAX_HEADER = 64 * 1024
MAX_BODY = 64 * 1024 * 1024
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 413: "Too Large"}


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, data: Any) -> HttpResponse:
        return cls(status, json.dumps(data).encode())

    @classmethod
    def text(cls, status: int, text: str) -> HttpResponse:
        return cls(status, text.encode(), "text/plain; charset=utf-8")

    def encode(self, keep_alive: bool) -> bytes:
        head = [
            f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Status')}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
            *(f"{k}: {v}" for k, v in self.headers.items()),
        ]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + self.body


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


async def read_request(reader: asyncio.StreamReader) -> HttpRequest | None:
    """The next request on the connection, or None when the client closed it."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError as exc:
        raise ValueError("request header too large") from exc
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError(f"bad request line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise ValueError("chunked request bodies are not supported; send Content-Length")
    length = int(headers.get("content-length", "0") or 0)
    if not 0 <= length <= MAX_BODY:
        raise ValueError("request body too large")
    body = await reader.readexactly(length) if length else b""
    path = parts[1].split("?", 1)[0]
    return HttpRequest(parts[0].upper(), path, headers, body)


async def serve_http(handler: Handler, host: str, port: int) -> asyncio.Server:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    req = await read_request(reader)
                except ValueError as exc:
                    err = {"ok": False, "error": {"code": "invalid_request", "message": str(exc)}}
                    writer.write(HttpResponse.json(400, err).encode(keep_alive=False))
                    await writer.drain()
                    return
                if req is None:
                    return
                keep = req.headers.get("connection", "").lower() != "close"
                writer.write((await handler(req)).encode(keep_alive=keep))
                await writer.drain()
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    return await asyncio.start_server(client, host, port, limit=MAX_HEADER)
