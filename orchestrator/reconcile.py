"""Reconciliation: make each backend hold exactly what the store says is active.

For an adapter that can be read back, the store's live rules are compared with the keys
the backend holds:

* a ``pending`` rule the backend already holds is confirmed ``active`` without sending it
  again (after a crash between the announce and the write-back);
* an ``active`` rule the backend lacks (a speaker restarted, a session reset) is
  re-announced - drift, logged and counted;
* a key the backend holds whose rule the store has ended is withdrawn - drift too; a key
  the store never issued is left alone and reported as foreign.

For an adapter without read-back, every active (and suspended) rule is re-sent at
start-up and whenever ``check()`` shows a BGP session come back up; announces are
idempotent.

Off the wire (:func:`suspend_off_wire`): when no BGP session of a speaker is established,
its ``active`` rules become ``suspended`` (the session watch calls it as soon as it sees
the last session go down; reconciliation too when its own session check finds none up).
After a session is back, a ``suspended`` rule whose route the speaker holds is confirmed
``active``; one the speaker lacks is re-sent and becomes ``active`` when the speaker takes
it with a session up.

A failed rule is never on the wire (:mod:`orchestrator.lifecycle`):

* a ``failed`` rule that is still wanted (its TTL has not passed) whose route the backend
  holds, while a session to its peers is established (any time, for a backend that is no
  BGP speaker), is confirmed ``active`` - the speaker sent the route once a session came
  back, after the announce had been counted as failed;
* a failed rule whose retries are exhausted stays wanted while its TTL lasts: when the
  backend lacks its route and a session is up, it is announced again (failed -> pending);
* a failed rule whose TTL has passed is not wanted: the expiry job moves it to
  ``withdrawing`` and its route is withdrawn from the speaker; reconciliation never
  confirms it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter
from sqlalchemy import Connection, Engine, and_, select

from adapters.base import BgpSpeaker, RuleRef
from orchestrator.dispatcher import Dispatcher
from orchestrator.hub import AdapterHub
from orchestrator.lifecycle import LIVE, State
from orchestrator.rulestore import RuleStore
from orchestrator.sessions import SessionTracker
from orchestrator.store.models import rules
from policies.intents import parse_canonical

log = logging.getLogger("sluice.reconcile")

DRIFT = Counter("sluice_reconcile_drift_total", "Drift found and repaired", ["adapter", "kind"])


@dataclass
class ReconcileReport:
    adapter_id: int
    readback: bool
    missing: int = 0
    orphans: int = 0
    foreign: int = 0
    confirmed: int = 0
    resent: int = 0
    revived: int = 0  # failed rules confirmed by read-back or announced again
    error: str | None = None


@dataclass(frozen=True)
class Reconciler:
    """What reconciliation needs, and nothing else (it does not know the service)."""

    engine: Engine
    hub: AdapterHub
    dispatcher: Dispatcher
    store: RuleStore
    sessions: SessionTracker
    clock: Callable[[], datetime]

    async def run(self, adapter_id: int, *, startup: bool = False) -> ReconcileReport:
        return await reconcile_adapter(self, adapter_id, startup=startup)


async def reconcile_adapter(
    service: Reconciler, adapter_id: int, *, startup: bool = False
) -> ReconcileReport:
    adapter = service.hub.live(adapter_id)
    name = service.hub.name_of(adapter_id)
    report = ReconcileReport(adapter_id=adapter_id, readback=False)
    if adapter is None:
        report.error = "adapter is not available"
        return report
    engine, dispatcher = service.engine, service.dispatcher
    with engine.connect() as conn:
        snapshot = conn.execute(
            select(
                rules.c.id,
                rules.c.key,
                rules.c.state,
                rules.c.intent,
                rules.c.attempts,
                rules.c.next_attempt_at,
                rules.c.expires_at,
            ).where(
                and_(
                    rules.c.adapter_id == adapter_id,
                    rules.c.state.in_([s.value for s in LIVE]),
                    rules.c.dry_run.is_(False),
                )
            )
        ).all()
    try:
        held = await adapter.active()
    except Exception as exc:
        report.error = f"read-back failed: {exc}"
        log.warning("reconcile %s: %s", name, report.error)
        return report

    now = service.clock()
    if held is None:
        came_up = await _sessions_came_up(service, adapter_id)
        await suspend_off_wire(service, adapter_id)
        if startup or came_up:
            ids = [r.id for r in snapshot if r.state in _ON_AIR]
            report.resent = dispatcher.submit(adapter_id, "reannounce", ids)
        pending = [r.id for r in snapshot if r.state == State.PENDING]
        dispatcher.submit(adapter_id, "announce", pending)
        if startup or came_up:
            wire = _wire_check(service, adapter_id, True)
            again = [r for r in _exhausted(service, snapshot, now) if wire(r)]
            report.revived = _announce_again(service, adapter_id, again, now)
        return report

    report.readback = True
    sessions_known = await _check_sessions(service, adapter_id)
    _revive_failed(
        service,
        adapter_id,
        snapshot=snapshot,
        held=held,
        now=now,
        report=report,
        sessions_known=sessions_known,
    )
    if sessions_known:
        await suspend_off_wire(service, adapter_id)
        _resume_suspended(service, adapter_id, snapshot=snapshot, held=held, now=now, report=report)
    confirm = [
        r.id
        for r in snapshot
        if r.state == State.PENDING and r.key in held and not dispatcher.is_queued("announce", r.id)
    ]
    if confirm and startup:
        with dispatcher.writing(adapter_id) as conn:
            report.confirmed = len(
                service.store.move(
                    conn,
                    confirm,
                    frm=State.PENDING,
                    to=State.ACTIVE,
                    now=now,
                    event="announced",
                    why="confirmed by read-back after restart",
                    values={"activated_at": now},
                )
            )
    unsent = [r.id for r in snapshot if r.state == State.PENDING and r.key not in held]
    dispatcher.submit(adapter_id, "announce", unsent)

    # a suspended rule the speaker lacks is expected (it restarted empty), not drift
    lost = [r.id for r in snapshot if r.state == State.SUSPENDED and r.key not in held]
    report.resent += dispatcher.submit(adapter_id, "reannounce", lost)
    missing = [r.id for r in snapshot if r.state == State.ACTIVE and r.key not in held]
    if missing:
        report.missing = dispatcher.submit(adapter_id, "reannounce", missing)
        if report.missing:
            DRIFT.labels(name, "missing").inc(report.missing)
            log.warning(
                "reconcile %s: %d active rules missing from the backend; re-announcing",
                name,
                report.missing,
            )
            with dispatcher.writing(adapter_id) as conn:
                service.store.note(
                    conn,
                    [(rid, "not held by the backend; re-announcing") for rid in missing],
                    "drift_missing",
                    now,
                )

    _withdraw_orphans(service, adapter_id, snapshot=snapshot, held=held, report=report)
    return report


# rules meant to be on the wire: re-sent when the backend lacks them
_ON_AIR = (State.ACTIVE, State.SUSPENDED)


async def suspend_off_wire(service: Reconciler, adapter_id: int) -> int:
    """``active`` -> ``suspended`` for every rule of a speaker with no session established.

    Uses what the session tracker last saw: nothing happens when no session state is
    known (not a speaker, or its check failed) or when one session is up. Rules move
    :data:`CHUNK` per transaction, the loop served between chunks (10,000 rules do not
    hold up the API), and the move stops when a session is seen up again meanwhile.
    Returns how many rules were suspended.
    """
    seen = service.sessions.get(adapter_id)
    if seen is None or not seen.states or seen.up:
        return 0
    listed = ", ".join(f"{p} {s}" for p, s in sorted(seen.states.items()))
    why = (
        f"no BGP session of the speaker is established ({listed}): the rule is kept but on "
        "no wire; it is sent again when a session is back"
    )
    with service.engine.connect() as conn:
        ids = [
            int(i)
            for i in conn.execute(
                select(rules.c.id).where(
                    and_(
                        rules.c.adapter_id == adapter_id,
                        rules.c.state == State.ACTIVE,
                        rules.c.dry_run.is_(False),
                    )
                )
            ).scalars()
        ]
    moved = 0
    for i in range(0, len(ids), CHUNK):
        now = service.clock()
        with service.dispatcher.writing(adapter_id) as conn:
            moved += len(
                service.store.move(
                    conn,
                    ids[i : i + CHUNK],
                    frm=State.ACTIVE,
                    to=State.SUSPENDED,
                    now=now,
                    event="suspended",
                    why=why,
                )
            )
        await asyncio.sleep(0)  # let the API and the watches run
        seen = service.sessions.get(adapter_id)
        if seen is not None and seen.up:
            break  # a session is back: reconciliation takes it from here
    if moved:
        log.warning(
            "adapter %s: no BGP session established; %d active rules suspended",
            service.hub.name_of(adapter_id),
            moved,
        )
    return moved


CHUNK = 1000  # ids per statement (SQLite allows 32,766 bound parameters)


def _move_chunked(
    service: Reconciler, conn: Connection, ids: Sequence[int], **move: Any
) -> list[int]:
    """:meth:`RuleStore.move` in chunks of :data:`CHUNK` ids, in the caller's transaction."""
    moved: list[int] = []
    for i in range(0, len(ids), CHUNK):
        moved += service.store.move(conn, ids[i : i + CHUNK], **move)
    return moved


def _resume_suspended(
    service: Reconciler,
    adapter_id: int,
    *,
    snapshot: Sequence[Any],
    held: frozenset[str],
    now: datetime,
    report: ReconcileReport,
) -> None:
    """Suspended rules whose route the speaker holds, with a session up: active again."""
    seen = service.sessions.get(adapter_id)
    if seen is None or not seen.up:
        return
    wire = _wire_check(service, adapter_id, True)
    back = [int(r.id) for r in snapshot if r.state == State.SUSPENDED and r.key in held and wire(r)]
    if not back:
        return
    with service.dispatcher.writing(adapter_id) as conn:
        moved = _move_chunked(
            service,
            conn,
            back,
            frm=State.SUSPENDED,
            to=State.ACTIVE,
            now=now,
            event="announced",
            why="on the wire again: the speaker holds the route and a session is up",
            values={"error": None},
        )
    report.confirmed += len(moved)


def _wanted(row: Any, now: datetime) -> bool:
    """A rule is wanted while its TTL lasts (failed or not)."""
    if row.expires_at is None:
        return True
    at = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
    return bool(at > now)


def _exhausted(service: Reconciler, snapshot: Sequence[Any], now: datetime) -> list[Any]:
    """Failed rules whose retries ran out but whose TTL has not passed."""
    limit = service.dispatcher.max_attempts
    return [
        r
        for r in snapshot
        if r.state == State.FAILED
        and r.next_attempt_at is None
        and int(r.attempts or 0) >= limit
        and _wanted(r, now)
    ]


def _wire_check(service: Reconciler, adapter_id: int, known: bool) -> Callable[[Any], bool]:
    """Whether a rule's route can be on the wire now (a session to its peers is up)."""

    cache = service.dispatcher.intents

    def check(row: Any) -> bool:
        if not known:
            return False
        intent = cache.get(int(row.id)) or parse_canonical(row.intent)
        ref = RuleRef(int(row.id), intent, row.key, {})
        return service.dispatcher.off_the_wire(adapter_id, ref) is None

    return check


def _revive_failed(
    service: Reconciler,
    adapter_id: int,
    *,
    snapshot: Sequence[Any],
    held: frozenset[str],
    now: datetime,
    report: ReconcileReport,
    sessions_known: bool,
) -> None:
    """Failed rules that are wanted: confirm the ones on the wire, re-send exhausted ones."""
    wire = _wire_check(service, adapter_id, sessions_known)
    held_failed = [
        r for r in snapshot if r.state == State.FAILED and r.key in held and _wanted(r, now)
    ]
    confirm = [int(r.id) for r in held_failed if wire(r)]
    if confirm:
        with service.dispatcher.writing(adapter_id) as conn:
            moved = service.store.move(
                conn,
                confirm,
                frm=State.FAILED,
                to=State.ACTIVE,
                now=now,
                event="announced",
                why="confirmed by read-back: the speaker holds the route and a session is up",
                values={"activated_at": now, "error": None, "next_attempt_at": None},
            )
        report.revived += len(moved)
        if moved:
            log.info(
                "reconcile %s: %d failed rules are on the wire; now active",
                service.hub.name_of(adapter_id),
                len(moved),
            )
    again = [r for r in _exhausted(service, snapshot, now) if r.key not in held and wire(r)]
    report.revived += _announce_again(service, adapter_id, again, now)


def _announce_again(
    service: Reconciler, adapter_id: int, rows: Sequence[Any], now: datetime
) -> int:
    """Failed rules whose retries ran out, still wanted: failed -> pending, announced."""
    if not rows:
        return 0
    with service.dispatcher.writing(adapter_id) as conn:
        moved = service.store.move(
            conn,
            [int(r.id) for r in rows],
            frm=State.FAILED,
            to=State.PENDING,
            now=now,
            event="retry",
            why="retries were exhausted but the rule is wanted while its TTL lasts and "
            "a session is up: announcing again",
            values={"next_attempt_at": None},
        )
    service.dispatcher.submit(adapter_id, "announce", moved)
    return len(moved)


async def _check_sessions(service: Reconciler, adapter_id: int) -> bool:
    """Look at a BGP speaker's sessions; False when a speaker could not tell."""
    adapter = service.hub.live(adapter_id)
    if adapter is None:
        return False
    if not isinstance(adapter, BgpSpeaker):
        return True  # not a speaker: holding the route is being on the wire
    try:
        health = await adapter.check()
    except Exception:
        log.warning("reconcile %s: session check failed", service.hub.name_of(adapter_id))
        service.sessions.forget(adapter_id)
        return False
    if not health.sessions:
        service.sessions.forget(adapter_id)
        return False
    service.sessions.observe(adapter_id, health.sessions)
    return True


def _withdraw_orphans(
    service: Reconciler,
    adapter_id: int,
    *,
    snapshot: Sequence[Any],
    held: frozenset[str],
    report: ReconcileReport,
) -> None:
    """Withdraw keys the backend holds whose rules the store has ended."""
    engine, dispatcher = service.engine, service.dispatcher
    name = service.hub.name_of(adapter_id)
    live_keys = {r.key for r in snapshot}
    candidates = set(held) - live_keys
    if candidates:
        with engine.connect() as conn:
            rows = conn.execute(
                select(rules.c.id, rules.c.key, rules.c.intent, rules.c.state)
                .where(and_(rules.c.adapter_id == adapter_id, rules.c.key.in_(candidates)))
                .order_by(rules.c.id.desc())
            ).all()
        latest: dict[str, tuple[int, str, str]] = {}
        for r in rows:
            latest.setdefault(r.key, (r.id, r.intent, r.state))
        for key in sorted(candidates):
            if key not in latest:
                report.foreign += 1
                continue
            rid, text, state = latest[key]
            if state in LIVE:  # became live after the snapshot
                continue
            dispatcher.submit_orphan(
                adapter_id, RuleRef(rid, parse_canonical(text), key, {"event": "withdraw"})
            )
            report.orphans += 1
        if report.orphans:
            DRIFT.labels(name, "orphan").inc(report.orphans)
            log.warning(
                "reconcile %s: withdrawing %d routes whose rules have ended", name, report.orphans
            )
        if report.foreign:
            log.info(
                "reconcile %s: %d routes on the backend were not issued by Sluice; left alone",
                name,
                report.foreign,
            )


async def _sessions_came_up(service: Reconciler, adapter_id: int) -> bool:
    """True when a session of the adapter came up since the last look (by anyone)."""
    adapter = service.hub.live(adapter_id)
    if adapter is None:
        return False
    try:
        health = await adapter.check()
    except Exception:
        return False
    service.sessions.observe(adapter_id, health.sessions)
    return service.sessions.take_came_up(adapter_id)
