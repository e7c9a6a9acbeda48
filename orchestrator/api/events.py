"""The event log over HTTP: a page after an id, and a live Server-Sent Events stream.

``GET /events?after=ID&limit=N`` returns events with ids above ``ID`` in order.
``GET /events/stream`` sends each event as ``id: N`` / ``event: <kind>`` / ``data: <json>``;
a client that reconnects with ``Last-Event-ID`` (or ``?after=``) gets everything after it,
also across a restart of the service: the log is in the store, not in memory.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse

from orchestrator.api.deps import require, service_of
from orchestrator.api.envelope import ok
from orchestrator.api.schemas import MAX_ID, Offset
from orchestrator.service import Service
from orchestrator.tokens import TokenInfo
from policies.errors import ValidationFailed

router = APIRouter(tags=["events"])
Reader = Annotated[TokenInfo, Depends(require("read"))]
Svc = Annotated[Service, Depends(service_of)]

KEEPALIVE_SECONDS = 15.0
PAGE = 500


@router.get("/events")
async def list_events(
    svc: Svc,
    _: Reader,
    after: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    items = svc.events.after(after, limit)
    last = items[-1]["id"] if items else after
    return ok(events=items, last_id=last)


def _resume_point(last_event_id: str | None, after: int | None) -> int:
    if last_event_id is None:
        return after or 0
    try:
        value = int(last_event_id)
    except ValueError:
        raise ValidationFailed(
            "Last-Event-ID must be an event id (a whole number)",
            code="invalid_parameter",
            field="Last-Event-ID",
        ) from None
    if not 0 <= value <= MAX_ID:
        raise ValidationFailed(
            f"Last-Event-ID must be 0 to {MAX_ID}",
            code="invalid_parameter",
            field="Last-Event-ID",
        )
    return value


def frame(item: dict[str, Any]) -> str:
    return f"id: {item['id']}\nevent: {item['kind']}\ndata: {json.dumps(item)}\n\n"


@router.get("/events/stream")
async def stream_events(
    request: Request,
    svc: Svc,
    _: Reader,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Offset | None = None,
) -> StreamingResponse:
    start = _resume_point(last_event_id, after)

    async def body() -> AsyncIterator[str]:
        last = start
        yield "retry: 1000\n\n"
        while True:
            armed = svc.events.arm()  # before reading: a commit in between still wakes us
            items = svc.events.after(last, PAGE)
            for item in items:
                last = item["id"]
                yield frame(item)
            if items:
                armed.cancel()
                continue
            if await request.is_disconnected():
                armed.cancel()
                return
            if not await svc.events.wait(armed, KEEPALIVE_SECONDS):
                yield ": keep-alive\n\n"

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
