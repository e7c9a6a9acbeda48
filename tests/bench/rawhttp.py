"""A lean HTTP/1.1 keep-alive client for benchmarks that post many small requests.

httpx spends milliseconds of CPU per request with a few dozen concurrent connections (its
pool scans every connection, asking each whether it expired, for every request): in
``bench_intake``'s single-signal mode the client used as much CPU as the service and
capped the figure near 130 signals/s. Here each connection is a plain asyncio stream; a
request is one write, an answer is read by its Content-Length (the service always sends
one). Only what a benchmark of our own service needs: no TLS, no redirects, no chunked
answers (refused loudly).
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


class Connection:
    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"plain http URLs only, not {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.prefix = parts.path.rstrip("/")
        fixed = {"Host": f"{self.host}:{self.port}", **headers}
        self.fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()
            self.reader = self.writer = None

    async def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        """(status, body) of one request; reconnects when the service closed the last."""
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST {self.prefix}{path} HTTP/1.1\r\n".encode()
            + self.fixed
            + f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        self.writer.write(head + body)
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length: int | None = None
        close = False
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                raise RuntimeError("chunked answers are not read by this client")
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if length is None:
            raise RuntimeError(f"an answer without Content-Length (status {status})")
        payload = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, payload
