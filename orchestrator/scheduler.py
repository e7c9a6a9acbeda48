"""Periodic jobs on APScheduler: TTL expiry, retries, reconciliation, health checks."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from orchestrator.service import Service

log = logging.getLogger("sluice.scheduler")


def _guard(name: str, job: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        try:
            await job()
        except Exception:
            log.exception("periodic job %s failed; it runs again at its next interval", name)

    return run


async def _health(service: Service) -> None:
    for rec in service.hub.records():
        await service.test_adapter(rec.id)


def build_scheduler(
    service: Service, extra: dict[str, tuple[float, Callable[[], Awaitable[Any]]]] | None = None
) -> AsyncIOScheduler:
    s = service.settings
    sched = AsyncIOScheduler(timezone="UTC")
    jobs: dict[str, tuple[float, Callable[[], Awaitable[Any]]]] = {
        "expire": (s.expiry_interval, service.expire_due),
        "retry": (s.retry_interval, service.retry_due),
        "reconcile": (s.reconcile_interval, service.reconcile_all),
        "health": (60.0, lambda: _health(service)),
        **(extra or {}),
    }
    for name, (seconds, job) in jobs.items():
        sched.add_job(
            _guard(name, job),
            "interval",
            seconds=seconds,
            id=name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
    return sched
