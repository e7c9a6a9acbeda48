"""Incident events from the event log, followed by an id cursor kept in the store.

Each consumer (runbooks, channels) keeps its own cursor in ``kv`` (``consumer.<name>``).
On its first start it begins at the log's current end (a new deployment does not replay
history). The cursor is saved after each handled page; what a handler does must be
idempotent per event (the runbook executions and channel deliveries are unique rows), so
a crash between the handling and the cursor update, or a second instance reading the
same events, never does anything twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from orchestrator.cluster import write
from orchestrator.events import EventLog
from orchestrator.runbooks.steps import SEVERITY_RANK
from orchestrator.store.models import incidents, kv

log = logging.getLogger("sluice.consumer")
KINDS = ("incident.opened", "incident.escalated", "incident.resolved")
PAGE = 200  # incident events handled per read
SAVE_EVERY = 2.0  # seconds between cursor saves while no event is acted on
# One page of incident events: (kind, incident id, context, event id), in log order.
Batch = list[tuple[str, str, dict[str, Any], int]]
Handler = Callable[[Batch], Awaitable[None]]


def insert_new_rows(conn: Any, table: Any, rows: list[dict[str, Any]], *cols: Any) -> list[Any]:
    """Insert rows, skipping those a unique constraint already holds (one statement).

    Returns ``cols`` of the rows this call inserted (RETURNING names only those)."""
    if not rows:
        return []
    name = conn.dialect.name
    if name not in ("sqlite", "postgresql"):  # pragma: no cover - the store's two databases
        raise RuntimeError(f"unsupported database {name}")
    out: list[Any] = []
    for start in range(0, len(rows), 200):  # bound the statement's parameters
        stmt: Any = (sqlite_insert if name == "sqlite" else pg_insert)(table).values(
            rows[start : start + 200]
        )
        out.extend(conn.execute(stmt.on_conflict_do_nothing().returning(*cols)).all())
    return out


def insert_new(conn: Any, table: Any, rows: list[dict[str, Any]]) -> list[Any]:
    """Insert rows, skipping those a unique constraint already holds.

    Returns the primary keys of the rows this call inserted."""
    pk = next(iter(table.primary_key.columns))
    return [r[0] for r in insert_new_rows(conn, table, rows, pk)]


def incident_contexts(conn: Any, wanted: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """The variables conditions, templates and triggers see, per incident id (one query)."""
    ids = sorted({iid for iid, _ in wanted})
    found = {}
    for start in range(0, len(ids), 500):
        for row in conn.execute(
            select(incidents).where(incidents.c.id.in_(ids[start : start + 500]))
        ).all():
            last = row.last_signal or {}
            found[row.id] = {
                "incident_id": row.id,
                "target_ip": row.target,
                "node": row.node,
                "attack_family": row.attack_family,
                "severity": row.severity,
                "severity_rank": float(SEVERITY_RANK.get(row.severity, 0)),
                "pps": float(max(row.peak_pps or 0.0, float(last.get("pps") or 0.0))),
                "bps": float(max(row.peak_bps or 0.0, float(last.get("bps") or 0.0))),
                "status": row.status,
                "sources": [str(s) for s in last.get("top_sources") or []],
            }
    return found


class Consumer:
    def __init__(
        self,
        name: str,
        log_: EventLog,
        handler: Handler,
        *,
        idle: float = 2.0,
        wants: Callable[[], bool] = lambda: True,
    ) -> None:
        self.key = f"consumer.{name}"
        self.events = log_
        self.handler = handler
        self.wants = wants  # False: nothing is configured that could act on an event
        self._unsaved: int | None = None  # a cursor moved past events nobody acted on
        self._saved_at = 0.0
        self.idle = idle
        self._task: asyncio.Task[None] | None = None

    def cursor(self) -> int:
        with write(self.events.engine) as conn:
            row = conn.execute(select(kv.c.value).where(kv.c.key == self.key)).first()
            if row is not None:
                return int(row.value)
            start = self.events.last_id()
            with contextlib.suppress(IntegrityError):
                conn.execute(
                    insert(kv).values(key=self.key, value=start, updated_at=datetime.now(UTC))
                )
            return start

    def save(self, value: int) -> None:
        with write(self.events.engine) as conn:
            conn.execute(
                update(kv)
                .where(kv.c.key == self.key)
                .values(value=value, updated_at=datetime.now(UTC))
            )

    async def step(self, after: int) -> int:
        """Handle one page of incident events after ``after``; returns the new cursor."""
        return (await self._page(after))[0]

    async def _page(self, after: int) -> tuple[int, bool]:
        """Handle one page of incident events after ``after``: the new cursor, and whether
        the page was full (more may follow before the head the page was read up to).

        Only the incident events are read (a storm of rule events is skipped in the
        query); when ``wants`` says nothing could act on them (no runbook active, no
        channel enabled), the page is passed over without reading the incidents.
        """
        items, last = self.events.kinds_after(after, KINDS, PAGE)
        if last == after:
            return after, False
        wanted = [(str(iid), kind) for _id, kind, iid in items if iid]
        batch: Batch = []
        if wanted and self.wants():
            with self.events.engine.connect() as conn:
                ctxs = incident_contexts(conn, wanted)
            for event_id, kind, iid in items:
                ctx = ctxs.get(str(iid))
                if ctx is not None:
                    batch.append((kind, str(iid), {**ctx, "event": kind}, event_id))
        if batch:
            try:
                await self.handler(batch)
            except Exception:
                log.exception("%s: events up to %s failed", self.key, last)
        # The cursor is saved after a page that did something, else at most every
        # SAVE_EVERY seconds (a storm of events nobody acts on is not a write per commit):
        # a cursor left behind only means a page read again, handled idempotently.
        self._unsaved = last
        now = time.monotonic()
        if batch or now - self._saved_at >= SAVE_EVERY:
            self._flush()
        return last, len(items) == PAGE

    def _flush(self) -> None:
        if self._unsaved is not None:
            self.save(self._unsaved)
            self._unsaved = None
        self._saved_at = time.monotonic()

    async def run(self) -> None:
        last = self.cursor()
        while True:
            armed = self.events.arm()  # before reading: a commit in between still wakes us
            last, more = await self._page(last)
            if more:  # a full page: the next one is read at once
                armed.cancel()
                continue
            # Read up to the log's head: wait for the next commit (at once if one came
            # while reading). The cursor is saved at most every SAVE_EVERY seconds: under
            # a stream of small commits every pause would otherwise be a write of its own.
            if self._unsaved is not None and time.monotonic() - self._saved_at >= SAVE_EVERY:
                self._flush()
            await self.events.wait(armed, self.idle)

    def start(self) -> None:
        self.cursor()  # fixed before anything can be written after the start
        self._task = asyncio.get_running_loop().create_task(self.run(), name=self.key)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            self._flush()
        except Exception:  # the store may be gone already; the cursor is only behind
            log.exception("%s: saving the cursor on stop", self.key)
