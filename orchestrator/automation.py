"""Runbooks and alert channels wired together: both follow the event log from the Core."""

from __future__ import annotations

from typing import Any

from adapters.egress import EgressPolicy
from orchestrator.channels.service import ChannelService
from orchestrator.channels.transports import Egress
from orchestrator.jobs import JobStore
from orchestrator.runbooks.consumer import Batch, Consumer
from orchestrator.runbooks.engine import RunbookEngine


class Automation:
    def __init__(
        self, svc: Any, jobs: JobStore, *, lease: float = 15.0, retry_base: float = 0.5
    ) -> None:
        settings = svc.settings
        self.egress = Egress(EgressPolicy.from_entries(settings.egress_allow))
        self.channels = ChannelService(
            svc.engine, svc.audit, self.egress, box=getattr(svc, "box", None), retry_base=retry_base
        )
        self.runbooks = RunbookEngine(svc, jobs, self.channels, self.egress, lease=lease)

        async def notify(batch: Batch) -> None:
            await self.channels.on_events(batch)

        self.channel_consumer = Consumer(
            "channels", svc.events, notify, wants=self.channels.any_enabled
        )

    async def start(self) -> None:
        await self.channels.start()  # seals clear-text secrets, resumes open deliveries
        self.channel_consumer.start()
        await self.runbooks.start()

    async def stop(self) -> None:
        await self.runbooks.stop()
        await self.channel_consumer.stop()
        await self.channels.stop()
        await self.egress.aclose()
