"""The event log's Server-Sent Events stream over a real HTTP server on loopback.

A client reads part of the log, disconnects, and resumes with ``Last-Event-ID``: after a
plain reconnect and after the service itself was restarted on the same store, it gets
every event exactly once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from adapters.base import AdapterConfig
from orchestrator.api.app import bootstrap_token, create_app
from orchestrator.service import RuleRequest, Service
from policies.intents import build_intent
from tests.unit.orchestrator.conftest import policy, settings_for

# the store itself is under test here: these run on SQLite and on PostgreSQL
pytestmark = pytest.mark.postgresql

ADMIN = "d" * 64
H = {"Authorization": f"Bearer {ADMIN}"}


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, url: str | None) -> AsyncIterator[tuple[Service, str]]:
    """The service behind uvicorn on a free loopback port; stopped on the way out."""
    settings = settings_for(tmp_path, admin_token=ADMIN, database_url=url)
    svc = Service(settings, policy=policy(cooldown_seconds=0))
    app = create_app(svc, run_scheduler=False)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_config=None)
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        bootstrap_token(svc, app.state.tokens)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield svc, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def make_rules(svc: Service, first: int, n: int) -> None:
    """n rules, each created then active: 2n events."""
    adapter = svc.hub.records()[0].id if svc.hub.records() else None
    if adapter is None:
        rec, _ = await svc.upsert_adapter(
            AdapterConfig(name="edge", adapter_type="fake"), adapter_id=None, actor="t"
        )
        adapter = rec["id"]
    for i in range(first, first + n):
        intent = build_intent({"kind": "blackhole", "prefix": f"203.0.113.{i}"})
        await svc.create_rule(RuleRequest(intent, adapter, ttl=0))
    await svc.dispatcher.drain()


async def read(url: str, want: int, last_event_id: int | None = None) -> list[dict[str, Any]]:
    """Read ``want`` events from the stream, then hang up."""
    headers = dict(H)
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    got: list[dict[str, Any]] = []
    fields: dict[str, str] = {}
    async with (
        asyncio.timeout(30),
        httpx.AsyncClient(timeout=30) as client,
        client.stream("GET", url + "/api/v1/events/stream", headers=headers) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        async for line in resp.aiter_lines():
            if line == "":
                if "data" in fields:
                    item = json.loads(fields["data"])
                    assert int(fields["id"]) == item["id"]
                    assert fields["event"] == item["kind"]
                    got.append(item)
                    if len(got) == want:
                        break
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
    return got


def ids(items: list[dict[str, Any]]) -> list[int]:
    return [int(e["id"]) for e in items]


async def test_stream_resumes_without_loss(tmp_path: Path, store_url: str | None) -> None:
    async with serving(tmp_path, store_url) as (svc, url):
        await make_rules(svc, 1, 3)  # 6 events
        first = await read(url, 4)
        assert ids(first) == ids(svc.events.after(0, 4))

        await make_rules(svc, 4, 2)  # 4 more while nobody listens
        second = await read(url, 6, last_event_id=first[-1]["id"])
        assert ids(first + second) == ids(svc.events.after(0, 100))

        # live: the stream waits at the end of the log and gets what happens next
        parked = set(svc.events._waiters)  # other readers of the log (automation), if any
        reader = asyncio.create_task(read(url, 2, last_event_id=second[-1]["id"]))
        # the stream is parked at the end of the log (armed for the next commit) before
        # anything more happens: counted, so the events below cannot be read as a backlog
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not set(svc.events._waiters) - parked:
            assert loop.time() < deadline and not reader.done(), "the stream never waited"
            await asyncio.sleep(0.01)
        assert not reader.done()
        await make_rules(svc, 6, 1)
        live = await reader
        assert ids(live) == ids(svc.events.after(second[-1]["id"], 100))
        seen = first + second + live

    await make_rules_offline(tmp_path, store_url)  # the log grows while the service is down
    async with serving(tmp_path, store_url) as (svc, url):
        await make_rules(svc, 9, 1)
        everything = svc.events.after(0, 1000)
        rest = await read(url, len(everything) - len(seen), last_event_id=seen[-1]["id"])
        assert ids(seen + rest) == ids(everything)
        assert [e["kind"] for e in rest[-2:]] == ["rule.created", "rule.active"]

        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.get(url + "/api/v1/events/stream", headers={**H, "Last-Event-ID": "x"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameter"


async def make_rules_offline(tmp_path: Path, url: str | None) -> None:
    settings = settings_for(tmp_path, admin_token=ADMIN, database_url=url)
    svc = Service(settings, policy=policy(cooldown_seconds=0))
    await svc.start()
    try:
        await make_rules(svc, 7, 2)
    finally:
        await svc.stop()
