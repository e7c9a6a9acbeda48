"""Watch every BGP speaker's sessions and act on changes at once.

For each live adapter that is a :class:`~adapters.base.BgpSpeaker`, one task reads its
``watch_sessions()`` stream (GoBGP's event stream, ExaBGP's neighbour messages through
the bridge, BIRD/FRR polled about once a second). Each change is recorded in the shared
:class:`~orchestrator.sessions.SessionTracker` (which logs session up/down events). When a
session comes up the adapter is reconciled at once, so its routes are back without
waiting for the periodic reconciliation (reconciliation also makes its ``suspended``
rules ``active`` again once they are on the wire); when no session is established any
more the adapter's health says so (status ``disconnected``) and its ``active`` rules
become ``suspended`` at once (kept, on no wire), and the status is ``connected`` again
when one returns. Watches follow the hub: an adapter created, replaced or deleted is picked up by
:meth:`SessionWatcher.sync`, which the service runs every :data:`SYNC_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from adapters.base import Adapter, BgpSpeaker, Health, SessionState
from orchestrator.hub import AdapterHub
from orchestrator.reconcile import ReconcileReport
from orchestrator.sessions import SessionTracker

log = logging.getLogger("sluice.sessions")

SYNC_SECONDS = 1.0
# a speaker whose session just came up may not answer read-back yet (ExaBGP still starting)
RECONCILE_ATTEMPTS = 10
RECONCILE_PAUSE_S = 1.0


class SessionWatcher:
    def __init__(
        self,
        hub: AdapterHub,
        tracker: SessionTracker,
        reconcile: Callable[[int], Coroutine[Any, Any, ReconcileReport]],
        suspend: Callable[[int], Coroutine[Any, Any, int]] | None = None,
    ) -> None:
        self.hub = hub
        self.tracker = tracker
        self.reconcile = reconcile
        self.suspend = suspend
        self._tasks: dict[int, tuple[Adapter, asyncio.Task[None]]] = {}
        self._reconciles: set[asyncio.Task[object]] = set()
        self._suspends: dict[int, asyncio.Task[None]] = {}
        self._loop: asyncio.Task[None] | None = None
        # several instances: only the adapters this instance drives are watched
        self.drives: Callable[[int], bool] = lambda _adapter_id: True

    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.sync()
            await asyncio.sleep(SYNC_SECONDS)

    def sync(self) -> None:
        """One watch per live speaker: start new ones, stop those of replaced or gone adapters."""
        wanted: dict[int, Adapter] = {}
        for rec in self.hub.records():
            adapter_id = rec.id
            adapter = self.hub.live(adapter_id)
            if isinstance(adapter, BgpSpeaker) and self.drives(adapter_id):
                wanted[adapter_id] = adapter
        for adapter_id, (adapter, task) in list(self._tasks.items()):
            if wanted.get(adapter_id) is not adapter or task.done():
                task.cancel()
                del self._tasks[adapter_id]
        for adapter_id, adapter in wanted.items():
            if adapter_id not in self._tasks and isinstance(adapter, BgpSpeaker):
                task = asyncio.get_running_loop().create_task(self._watch(adapter_id, adapter))
                self._tasks[adapter_id] = (adapter, task)

    def watched(self) -> list[int]:
        """The ids of the adapters whose sessions are being watched."""
        return sorted(self._tasks)

    async def _watch(self, adapter_id: int, adapter: BgpSpeaker) -> None:
        states: dict[str, SessionState] = {}
        was_up: bool | None = None
        watch = adapter.watch_sessions()
        try:
            async for change in watch:
                states[change.peer] = change.state
                came_up = self.tracker.observe(adapter_id, states)
                up = any(s == SessionState.ESTABLISHED for s in states.values())
                if up != was_up:
                    self._health(adapter_id, up, states)
                    was_up = up
                    if not up:
                        self._start_suspend(adapter_id)
                if came_up:
                    log.info("adapter %s: session up (%s), reconciling", adapter_id, came_up)
                    task = asyncio.get_running_loop().create_task(self._reconcile(adapter_id))
                    self._reconciles.add(task)
                    task.add_done_callback(self._reconciles.discard)
        except asyncio.CancelledError:
            raise
        except Exception:  # a watch must never take the service down; sync restarts it
            log.exception("session watch of adapter %s failed", adapter_id)
        finally:
            with contextlib.suppress(Exception):
                await watch.aclose()

    def _start_suspend(self, adapter_id: int) -> None:
        """Suspend the adapter's active rules in a task (the watch reads on meanwhile)."""
        running = self._suspends.get(adapter_id)
        if self.suspend is None or (running is not None and not running.done()):
            return
        self._suspends[adapter_id] = asyncio.get_running_loop().create_task(
            self._suspend(adapter_id)
        )

    async def _suspend(self, adapter_id: int) -> None:
        assert self.suspend is not None  # noqa: S101  # checked by _start_suspend
        try:
            await self.suspend(adapter_id)
        except Exception:  # the database is busy or gone; reconciliation suspends later
            log.exception("adapter %s: rules not suspended", adapter_id)

    async def _reconcile(self, adapter_id: int) -> object:
        """Reconcile now; again a few times while the speaker cannot be read back yet."""
        report = await self.reconcile(adapter_id)
        for _ in range(RECONCILE_ATTEMPTS - 1):
            if report.error is None:
                break
            await asyncio.sleep(RECONCILE_PAUSE_S)
            report = await self.reconcile(adapter_id)
        return report

    def _health(self, adapter_id: int, up: bool, states: dict[str, SessionState]) -> None:
        listed = ", ".join(f"{p} {s}" for p, s in sorted(states.items()))
        detail = (
            f"BGP session established ({listed})"
            if up
            else f"no BGP session established ({listed})"
        )
        try:
            self.hub.record_health(adapter_id, Health(up, None, detail, dict(states)))
        except Exception:  # the adapter was deleted meanwhile
            log.debug("adapter %s: health not recorded", adapter_id, exc_info=True)

    async def stop(self) -> None:
        tasks = [t for _, t in self._tasks.values()] + list(self._reconciles)
        tasks += list(self._suspends.values())
        if self._loop is not None:
            tasks.append(self._loop)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._suspends.clear()
        self._loop = None
