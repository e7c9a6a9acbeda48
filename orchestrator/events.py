"""The event log: what happened, in order, written in the transaction of the change.

Kinds (:class:`Kind`): ``rule.created``, ``rule.pending`` (a retry), ``rule.active``,
``rule.failed``, ``rule.suspended`` (its speaker has no session up), ``rule.withdrawing``,
``rule.withdrawn``, ``rule.expired``;
``incident.opened``, ``incident.escalated`` (a tier's rules planned: the first one moves
the incident to mitigating), ``incident.resolved``, ``incident.expired``,
``incident.aggregated`` (a carpet-bombing covering incident formed: targets, window,
collateral);
``adapter.session_up``, ``adapter.session_down``; ``policy.reloaded``.

Writers call :func:`record` with the connection of their own transaction, so an event
exists exactly when its change does. Readers page with ``after`` (ids only increase);
:class:`EventLog` also wakes live streams in this process when something was committed.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, String, event, func, insert, literal, null, select

from orchestrator.store.models import events, rules
from orchestrator.store.rows import insert_rows


class Kind(enum.StrEnum):
    RULE_CREATED = "rule.created"
    RULE_PENDING = "rule.pending"
    RULE_ACTIVE = "rule.active"
    RULE_FAILED = "rule.failed"
    RULE_SUSPENDED = "rule.suspended"
    RULE_WITHDRAWING = "rule.withdrawing"
    RULE_WITHDRAWN = "rule.withdrawn"
    RULE_EXPIRED = "rule.expired"
    INCIDENT_OPENED = "incident.opened"
    INCIDENT_ESCALATED = "incident.escalated"
    INCIDENT_RESOLVED = "incident.resolved"
    INCIDENT_EXPIRED = "incident.expired"
    INCIDENT_AGGREGATED = "incident.aggregated"
    SESSION_UP = "adapter.session_up"
    SESSION_DOWN = "adapter.session_down"
    POLICY_RELOADED = "policy.reloaded"


@dataclass(frozen=True, slots=True)
class Event:
    kind: Kind
    at: datetime
    rule_id: int | None = None
    incident_id: str | None = None
    adapter_id: int | None = None
    detail: dict[str, Any] | None = None

    def row(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "kind": str(self.kind),
            "rule_id": self.rule_id,
            "incident_id": self.incident_id,
            "adapter_id": self.adapter_id,
            "detail": self.detail,
        }


_DIRTY = "sluice_events_written"


def record(conn: Connection, items: Iterable[Event]) -> int:
    """Append events inside the caller's transaction; returns how many."""
    rows = [e.row() for e in items]
    if rows:
        insert_rows(conn, events, rows)
        conn.info[_DIRTY] = True
    return len(rows)


def record_for_rules(
    conn: Connection,
    kind: Kind,
    at: datetime,
    rule_ids: Sequence[int],
    detail: dict[str, Any] | None,
) -> int:
    """One event of ``kind`` per rule of ``rule_ids``, in rule id order, with the same
    ``detail``: one ``INSERT .. SELECT`` over ``rules`` (a rule's incident and adapter
    are read there), so 10,000 rules cost one statement instead of 10,000 rows bound in
    Python. Returns how many ids were given."""
    if not rule_ids:
        return 0
    sel = (
        select(
            literal(at, events.c.at.type),
            literal(str(kind), String(40)),
            rules.c.id,
            rules.c.incident_id,
            rules.c.adapter_id,
            null() if detail is None else literal(detail, events.c.detail.type),
        )
        .where(rules.c.id.in_(list(rule_ids)))
        .order_by(rules.c.id)
    )
    conn.execute(
        insert(events).from_select(
            ["at", "kind", "rule_id", "incident_id", "adapter_id", "detail"], sel
        )
    )
    conn.info[_DIRTY] = True
    return len(rule_ids)


def view(row: Any) -> dict[str, Any]:
    return {
        "id": int(row.id),
        "at": row.at.isoformat(),
        "kind": row.kind,
        "rule_id": row.rule_id,
        "incident_id": row.incident_id,
        "adapter_id": row.adapter_id,
        "detail": row.detail,
    }


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class EventLog:
    """Reads the log and wakes this process's live streams after a commit that wrote to it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._waiters: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        event.listen(engine, "commit", self._on_commit)

    def close(self) -> None:
        if event.contains(self.engine, "commit", self._on_commit):
            event.remove(self.engine, "commit", self._on_commit)

    def _on_commit(self, conn: Connection) -> None:
        if conn.info.pop(_DIRTY, False):
            self.wake()

    def wake(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._release()
        else:
            loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def arm(self) -> asyncio.Future[None]:
        """A future set at the next commit that writes events (arm it before reading)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.add(fut)
        return fut

    async def wait(self, fut: asyncio.Future[None], seconds: float) -> bool:
        """Wait for an armed future, at most ``seconds`` (other processes write too);
        True when a commit woke it.

        The future is awaited directly (a timer settles it at the limit): the waiting task
        is then resumed in the loop turn right after the commit's wake-up, before a busy
        writer (the intake's next group commit) gets the loop again; ``wait_for`` over a
        ``shield`` took three turns."""
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            _settle(fut)

        timer = asyncio.get_running_loop().call_later(seconds, expire)
        try:
            await fut
        finally:
            timer.cancel()
            self._waiters.discard(fut)
        return not expired

    def after(self, after_id: int, limit: int) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(events).where(events.c.id > after_id).order_by(events.c.id).limit(limit)
            ).all()
        return [view(r) for r in rows]

    def kinds_after(
        self, after_id: int, kinds: Collection[str], limit: int
    ) -> tuple[list[tuple[int, str, str | None]], int]:
        """The events of ``kinds`` after ``after_id`` (id, kind, incident id), at most
        ``limit``, and the cursor a reader that wants only those kinds moves to.

        The log's head is read first and the page bounded by it, so the cursor never
        passes an event of ``kinds`` it did not return (events are committed in id order:
        one writer at a time, see :mod:`orchestrator.cluster`). A reader of a few kinds thus
        skips a storm of rule events without decoding them.
        """
        with self.engine.connect() as conn:
            head = int(conn.execute(select(func.max(events.c.id))).scalar() or 0)
            if head <= after_id:
                return [], after_id
            rows = conn.execute(
                select(events.c.id, events.c.kind, events.c.incident_id)
                .where(events.c.id > after_id, events.c.id <= head, events.c.kind.in_(kinds))
                .order_by(events.c.id)
                .limit(limit)
            ).all()
        found = [(int(r.id), str(r.kind), r.incident_id) for r in rows]
        return found, found[-1][0] if len(found) == limit else head

    def last_id(self) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(select(events.c.id).order_by(events.c.id.desc()).limit(1)).scalar()
        return int(value or 0)
