"""The request guard waits for a body under its deadline only when there is something to
wait for: a body that came whole with its headers is read without setting a timer.

Runs the service's own HTTP protocol classes (both parsers) in this event loop, over a
real loopback socket, and watches what the guard decided for each read of the body.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest
import uvicorn

from orchestrator.api import guard, server
from tests.unit.orchestrator.conftest import ADMIN

SIGNAL = json.dumps({"target_ip": "198.51.100.9", "bps": "1M"}).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(check: Any, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds} s")
        await asyncio.sleep(0.01)


async def answer(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await asyncio.wait_for(reader.readexactly(length), 30)
    return head


@pytest.mark.parametrize("parser", ["httptools", "h11"])
async def test_a_whole_body_is_read_without_a_timer(
    make_api: Any, monkeypatch: pytest.MonkeyPatch, parser: str
) -> None:
    api = await make_api()
    seen: list[bool] = []
    real = guard._buffered

    def spy(receive: Any) -> bool:
        seen.append(real(receive))
        return seen[-1]

    monkeypatch.setattr(guard, "_buffered", spy)
    port = free_port()
    cfg = uvicorn.Config(
        api.app,
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_config=None,
        http=server.protocol(api.svc.settings, parser),  # type: ignore[arg-type]
        loop="asyncio",
    )
    srv = uvicorn.Server(cfg)
    task = asyncio.create_task(srv.serve())
    try:
        await until(lambda: srv.started, "the server listening")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (
            b"POST /api/v1/incidents HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + ADMIN.encode() + b"\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: " + str(len(SIGNAL)).encode() + b"\r\n\r\n"
        )
        # whole: headers and body in one write
        writer.write(head + SIGNAL)
        await writer.drain()
        assert (await answer(reader)).startswith(b"HTTP/1.1 200"), seen
        assert seen == [True]
        # in two parts: the first part is there at once, the rest must be waited for
        seen.clear()
        writer.write(head + SIGNAL[:5])
        await writer.drain()
        await until(lambda: len(seen) >= 2, "the guard waiting for the rest of the body")
        writer.write(SIGNAL[5:])
        await writer.drain()
        assert (await answer(reader)).startswith(b"HTTP/1.1 200"), seen
        assert seen[:2] == [True, False]
        writer.close()
    finally:
        srv.should_exit = True
        await asyncio.wait_for(task, 30)
