"""Reconciliation: make each backend hold exactly what the store says is active.

For an adapter that can be read back, the store's live rules are compared with the keys
the backend holds:

* a ``pending`` rule the backend already holds is confirmed ``active`` without sending it
  again (after a crash between the announce and the write-back);
* an ``active`` rule the backend lacks (a speaker restarted, a session reset) is
  re-announced - drift, logged and counted;
* a key the backend holds whose rule the store has ended is withdrawn - drift too; a key
  the store never issued is left alone and reported as foreign.

For an adapter without read-back, every active rule is re-sent at start-up and whenever
``check()`` shows a BGP session come back up; announces are idempotent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import Counter
from sqlalchemy import Engine, and_, select

from adapters.base import RuleRef
from orchestrator.cluster import write
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
            select(rules.c.id, rules.c.key, rules.c.state).where(
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

    if held is None:
        resend = startup or await _sessions_came_up(service, adapter_id)
        if resend:
            ids = [r.id for r in snapshot if r.state == State.ACTIVE]
            report.resent = dispatcher.submit(adapter_id, "reannounce", ids)
        pending = [r.id for r in snapshot if r.state == State.PENDING]
        dispatcher.submit(adapter_id, "announce", pending)
        return report

    report.readback = True
    now = service.clock()
    confirm = [
        r.id
        for r in snapshot
        if r.state == State.PENDING and r.key in held and not dispatcher.is_queued("announce", r.id)
    ]
    if confirm and startup:
        with write(engine) as conn:
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
            with write(engine) as conn:
                service.store.note(
                    conn,
                    [(rid, "not held by the backend; re-announcing") for rid in missing],
                    "drift_missing",
                    now,
                )

    _withdraw_orphans(service, adapter_id, snapshot=snapshot, held=held, report=report)
    return report


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
