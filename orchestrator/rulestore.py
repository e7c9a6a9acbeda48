"""The rule store: the only code that writes ``rules`` and ``rule_events``.

Every state change is checked against :data:`orchestrator.lifecycle.TRANSITIONS` before
it is written; a move the table forbids raises :class:`~policies.errors.Conflict`
(``invalid_state``), is logged, and changes nothing. Updates are guarded by the state
the caller expects (a late "announced" answer for a rule an operator withdrew since
matches no row). Each change writes, in the caller's transaction, a line of the rule's
own history (``rule_events``, with its cause) and an entry of the event log
(:mod:`orchestrator.events`).

The store holds no connection: callers own the transaction, so a rule and the incident
or audit entry that caused it commit together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    String,
    Text,
    bindparam,
    insert,
    literal,
    null,
    select,
    update,
)

from orchestrator import events as ev
from orchestrator.lifecycle import State, check_move
from orchestrator.store.models import rule_events, rules
from orchestrator.store.rows import insert_returning_ids

log = logging.getLogger("sluice.rules")

_KIND = {
    State.PENDING: ev.Kind.RULE_PENDING,
    State.ACTIVE: ev.Kind.RULE_ACTIVE,
    State.FAILED: ev.Kind.RULE_FAILED,
    State.SUSPENDED: ev.Kind.RULE_SUSPENDED,
    State.WITHDRAWING: ev.Kind.RULE_WITHDRAWING,
    State.WITHDRAWN: ev.Kind.RULE_WITHDRAWN,
    State.EXPIRED: ev.Kind.RULE_EXPIRED,
}

Why = str | None | Callable[[int], str | None]


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed send of one rule: the error, the new attempt count, when to retry."""

    rule_id: int
    error: str | None
    attempts: int
    next_attempt_at: datetime | None
    note: str


def _check(rule_id: int, current: State, new: State) -> None:
    try:
        check_move(rule_id, current, new)
    except Exception:
        log.error("refused rule transition: rule %d %s -> %s", rule_id, current, new)  # noqa: TRY400
        raise


def _detail(why: Why, rule_id: int) -> str | None:
    return why(rule_id) if callable(why) else why


class RuleStore:
    """Rule writes; every method works inside the caller's transaction."""

    # ------------------------------------------------------------ creation

    def insert(
        self, conn: Connection, values: Sequence[dict[str, Any]], now: datetime
    ) -> list[Any]:
        """Insert new rules (pending, or active for dry-run); rows of (id, key, adapter_id,
        dry_run, incident_id) in no particular order."""
        for v in values:
            if State(v["state"]) not in (State.PENDING, State.ACTIVE):
                raise ValueError(f"a new rule starts pending or active, not {v['state']}")
        rows = insert_returning_ids(
            conn,
            rules,
            values,
            rules.c.key,
            rules.c.adapter_id,
            rules.c.dry_run,
            rules.c.incident_id,
        )
        dry = [r.id for r in rows if r.dry_run]
        if dry:
            conn.execute(
                insert(rule_events),
                [
                    {
                        "rule_id": rid,
                        "at": now,
                        "event": "dry_run",
                        "detail": "stored as dry-run; nothing is sent to the adapter",
                    }
                    for rid in dry
                ],
            )
        ev.record(
            conn,
            (
                ev.Event(
                    ev.Kind.RULE_CREATED,
                    now,
                    rule_id=int(r.id),
                    incident_id=r.incident_id,
                    adapter_id=int(r.adapter_id),
                    detail={"key": r.key, "dry_run": bool(r.dry_run)},
                )
                for r in sorted(rows, key=lambda r: int(r.id))
            ),
        )
        ev.record(  # a dry-run rule is active at once (nothing is sent)
            conn,
            (
                ev.Event(
                    ev.Kind.RULE_ACTIVE,
                    now,
                    rule_id=int(r.id),
                    incident_id=r.incident_id,
                    adapter_id=int(r.adapter_id),
                    detail={"cause": "dry-run: nothing is sent to the adapter"},
                )
                for r in sorted(rows, key=lambda r: int(r.id))
                if r.dry_run
            ),
        )
        return list(rows)

    # ------------------------------------------------------------ state changes

    def move(
        self,
        conn: Connection,
        ids: Iterable[int],
        *,
        frm: State | Iterable[State],
        to: State,
        now: datetime,
        event: str,
        why: Why = None,
        values: dict[str, Any] | None = None,
    ) -> list[int]:
        """Move the rules among ``ids`` that are in ``frm`` to ``to``; returns those moved."""
        wanted = [frm] if isinstance(frm, State) else list(frm)
        id_list = list(ids)
        for s in wanted:
            _check(id_list[0] if id_list else 0, s, to)
        if not id_list:
            return []
        vals = {"state": to, "updated_at": now, **(values or {})}
        moved = sorted(
            int(i)
            for i in conn.execute(
                update(rules)
                .where(rules.c.id.in_(id_list), rules.c.state.in_([str(s) for s in wanted]))
                .values(**vals)
                .returning(rules.c.id)
            ).scalars()
        )
        self._write(conn, moved, to, now=now, event=event, why=why)
        return moved

    def move_rows(
        self,
        conn: Connection,
        rows: Sequence[Any],
        *,
        to: State,
        now: datetime,
        event: str,
        why: Why = None,
        values: dict[str, Any] | None = None,
    ) -> list[int]:
        """Move rules read in this transaction (each checked from its own state)."""
        for row in rows:
            _check(int(row.id), State(row.state), to)
        if not rows:
            return []
        ids = [int(r.id) for r in rows]
        conn.execute(
            update(rules)
            .where(rules.c.id.in_(ids))
            .values(state=to, updated_at=now, **(values or {}))
        )
        self._write(conn, sorted(ids), to, now=now, event=event, why=why)
        return ids

    def fail(
        self, conn: Connection, failures: Sequence[Failure], *, frm: State, now: datetime
    ) -> list[int]:
        """Announces that failed: ``frm`` -> failed with attempts and the next retry."""
        if not failures:
            return []
        _check(failures[0].rule_id, frm, State.FAILED)
        moved = []
        for f in failures:
            res = conn.execute(
                _ANNOUNCE_FAILED,
                {
                    "b_id": f.rule_id,
                    "b_from": frm,
                    "b_error": f.error,
                    "b_attempts": f.attempts,
                    "b_next": f.next_attempt_at,
                    "b_now": now,
                },
            )
            if res.rowcount:
                moved.append(f)
        notes = {f.rule_id: (f.error or "") + f.note for f in moved}
        failed = [f.rule_id for f in moved]
        self._write(conn, failed, State.FAILED, now=now, event="failed", why=notes.get)
        return [f.rule_id for f in moved]

    def withdraw_failed(self, conn: Connection, failures: Sequence[Failure], now: datetime) -> None:
        """Withdrawals that failed stay withdrawing; the retry is scheduled."""
        for f in failures:
            conn.execute(
                _WITHDRAW_FAILED,
                {
                    "b_id": f.rule_id,
                    "b_error": f.error,
                    "b_attempts": f.attempts,
                    "b_next": f.next_attempt_at,
                    "b_now": now,
                },
            )
        self.note(
            conn, [(f.rule_id, f"{f.error}{f.note}") for f in failures], "withdraw_failed", now
        )

    def extend(
        self,
        conn: Connection,
        row: Any,
        values: dict[str, Any],
        *,
        retry: bool,
        detail: str,
        now: datetime,
    ) -> None:
        """A live rule asked for again: a later expiry; a failed one is retried at once."""
        if retry:
            _check(int(row.id), State(row.state), State.PENDING)
            values = {**values, "state": State.PENDING, "next_attempt_at": None, "attempts": 0}
        conn.execute(update(rules).where(rules.c.id == row.id).values(**values))
        self.note(conn, [(int(row.id), detail)], "extended", now)
        if retry:
            self._write(
                conn, [int(row.id)], State.PENDING, now=now, event="retry", why="asked again"
            )

    def clear_retry(self, conn: Connection, ids: Sequence[int]) -> None:
        """A withdrawal retry is being sent: it is no longer due."""
        if ids:
            conn.execute(
                update(rules).where(rules.c.id.in_(list(ids))).values(next_attempt_at=None)
            )

    def note(
        self, conn: Connection, items: Sequence[tuple[int, str | None]], event: str, now: datetime
    ) -> None:
        """History lines that change no state (extended, reannounced, drift, orphans)."""
        if items:
            conn.execute(
                insert(rule_events),
                [{"rule_id": rid, "at": now, "event": event, "detail": d} for rid, d in items],
            )

    # ------------------------------------------------------------ helpers

    def _write(
        self,
        conn: Connection,
        ids: Sequence[int],
        to: State,
        *,
        now: datetime,
        event: str,
        why: Why,
    ) -> None:
        if not ids:
            return
        if not callable(why):  # one cause for all: set-based, no row bound in Python
            conn.execute(
                insert(rule_events).from_select(
                    ["rule_id", "at", "event", "detail"],
                    select(
                        rules.c.id,
                        literal(now, rule_events.c.at.type),
                        literal(event, String(32)),
                        null() if why is None else literal(why, Text),
                    )
                    .where(rules.c.id.in_(list(ids)))
                    .order_by(rules.c.id),
                )
            )
            ev.record_for_rules(conn, _KIND[to], now, ids, {"cause": why} if why else None)
            return
        details = {rid: _detail(why, rid) for rid in ids}
        conn.execute(
            insert(rule_events),
            [{"rule_id": rid, "at": now, "event": event, "detail": details[rid]} for rid in ids],
        )
        meta = {
            int(r.id): r
            for r in conn.execute(
                select(rules.c.id, rules.c.incident_id, rules.c.adapter_id).where(
                    rules.c.id.in_(list(ids))
                )
            )
        }
        ev.record(
            conn,
            (
                ev.Event(
                    _KIND[to],
                    now,
                    rule_id=rid,
                    incident_id=meta[rid].incident_id,
                    adapter_id=int(meta[rid].adapter_id),
                    detail={"cause": details[rid]} if details[rid] else None,
                )
                for rid in ids
            ),
        )

    @staticmethod
    def attempts(conn: Connection, ids: list[int]) -> dict[int, int]:
        rows = conn.execute(select(rules.c.id, rules.c.attempts).where(rules.c.id.in_(ids)))
        return {int(r.id): int(r.attempts) for r in rows}


# Per-rule statements with bound parameters: compiled once, cached by SQLAlchemy.
_ANNOUNCE_FAILED = (
    update(rules)
    .where(rules.c.id == bindparam("b_id"), rules.c.state == bindparam("b_from"))
    .values(
        state=State.FAILED,
        error=bindparam("b_error"),
        attempts=bindparam("b_attempts"),
        next_attempt_at=bindparam("b_next"),
        updated_at=bindparam("b_now"),
    )
)
_WITHDRAW_FAILED = (
    update(rules)
    .where(rules.c.id == bindparam("b_id"), rules.c.state == State.WITHDRAWING)
    .values(
        error=bindparam("b_error"),
        attempts=bindparam("b_attempts"),
        next_attempt_at=bindparam("b_next"),
        updated_at=bindparam("b_now"),
    )
)
