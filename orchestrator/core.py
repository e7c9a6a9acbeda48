"""The one place that wires and starts everything: service, policy runtime, periodic jobs.

``sluice serve`` runs it behind the HTTP API; tests and commands without the API run it
alone, and rules still expire, failed sends are retried, backends are reconciled, held
signals are evaluated again and quiet incidents expire::

    async with Core(Service(settings)) as core:
        await core.runtime.handle(signal, actor="cli")
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from orchestrator.runtime import PolicyRuntime
from orchestrator.scheduler import build_scheduler
from orchestrator.service import Service

log = logging.getLogger("sluice.core")

Jobs = dict[str, tuple[float, Callable[[], Awaitable[Any]]]]


class Core:
    def __init__(self, service: Service, *, run_scheduler: bool = True) -> None:
        self.service = service
        self.runtime = PolicyRuntime(service)
        self.run_scheduler = run_scheduler
        self.scheduler: AsyncIOScheduler | None = None
        # long-running consumers of the event log (runbooks, alert channels)
        self.consumers: list[Any] = []

    def jobs(self) -> Jobs:
        async def save_state() -> None:
            self.runtime.save_state()

        return {**self.runtime.jobs(), "engine-state": (30.0, save_state)}

    async def start(self, extra_jobs: Jobs | None = None) -> None:
        if not self.service.started:
            await self.service.start()
        self.runtime.load_state()
        for consumer in self.consumers:
            await consumer.start()
        if self.run_scheduler:
            self.scheduler = build_scheduler(self.service, {**self.jobs(), **(extra_jobs or {})})
            self.scheduler.start()

    async def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
        self.runtime.intake.cancel_timers()
        for consumer in reversed(self.consumers):
            await consumer.stop()
        if self.service.started:
            self.runtime.save_state()
            await self.service.stop()

    async def __aenter__(self) -> Core:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
