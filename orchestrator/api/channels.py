"""Alert channels over HTTP: list, create/update (``POST``; with ``id`` to update), delete,
test. Secrets are write-only: answers list only which secrets are set."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, Response

from orchestrator.api.deps import require
from orchestrator.api.envelope import ok
from orchestrator.automation import Automation
from orchestrator.channels.service import ChannelService
from orchestrator.channels.transports import DeliveryFailed, Message
from orchestrator.tokens import TokenInfo
from policies.errors import SluiceError

router = APIRouter(tags=["alert channels"])
Reader = Annotated[TokenInfo, Depends(require("read"))]
Writer = Annotated[TokenInfo, Depends(require("write"))]


class ChannelTestFailed(SluiceError):
    code = "channel_test_failed"
    status = 502


class ChannelEgressRefused(ChannelTestFailed):
    """The service's egress policy refused the channel's destination."""

    code = "egress_refused"


async def channels_of(request: Request) -> ChannelService:
    auto: Automation = request.app.state.automation
    return auto.channels


Channels = Annotated[ChannelService, Depends(channels_of)]


@router.get("/channels")
async def list_channels(ch: Channels, _: Reader) -> dict[str, Any]:
    items = ch.list_all()
    return ok(channels=items, total=len(items))


@router.post("/channels")
async def upsert_channel(
    body: Annotated[dict[str, Any], Body()], ch: Channels, who: Writer, response: Response
) -> dict[str, Any]:
    view, created = ch.upsert(body, actor=who.name)
    response.status_code = 201 if created else 200
    return ok(channel=view)


@router.put("/channels/{channel_id}")
async def update_channel(
    channel_id: str, body: Annotated[dict[str, Any], Body()], ch: Channels, who: Writer
) -> dict[str, Any]:
    view, _ = ch.upsert({**body, "id": channel_id}, actor=who.name)
    return ok(channel=view)


@router.delete("/channels/{channel_id}")
async def delete_channel(channel_id: str, ch: Channels, who: Writer) -> dict[str, Any]:
    return ok(**ch.delete(channel_id, actor=who.name))


@router.post("/channels/{channel_id}/test")
async def test_channel(channel_id: str, ch: Channels, _: Writer) -> dict[str, Any]:
    ch.get(channel_id)  # channel_not_found before anything is sent
    ctx = {
        "incident_id": "test",
        "target_ip": "192.0.2.10",
        "attack_family": "udp_flood",
        "severity": "low",
        "pps": 0.0,
        "node": None,
    }
    msg = Message(
        "test",
        f"sluice-test-{channel_id}",
        "Sluice test message",
        "This is a test of the alert channel.",
        "low",
        ctx,
    )
    try:
        out = await ch.send_now(channel_id, msg)
    except DeliveryFailed as exc:
        if exc.code == "egress_refused":
            raise ChannelEgressRefused(f"the test message was not sent: {exc}") from None
        raise ChannelTestFailed(f"the channel did not take the test message: {exc}") from None
    return ok(delivered=True, detail=out)
