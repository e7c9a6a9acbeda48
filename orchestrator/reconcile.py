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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter
from sqlalchemy import and_, insert, select, update

from adapters.base import RuleRef
from orchestrator.lifecycle import LIVE, State
from orchestrator.store.models import rule_events, rules
from policies.intents import parse_canonical

if TYPE_CHECKING:
    from orchestrator.service import ReconcileReport, Service

log = logging.getLogger("sluice.reconcile")

DRIFT = Counter("sluice_reconcile_drift_total", "Drift found and repaired", ["adapter", "kind"])


async def reconcile_adapter(
    service: Service, adapter_id: int, *, startup: bool = False
) -> ReconcileReport:
    from orchestrator.service import ReconcileReport, utcnow

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
    now = utcnow()
    confirm = [
        r.id
        for r in snapshot
        if r.state == State.PENDING and r.key in held and not dispatcher.is_queued("announce", r.id)
    ]
    if confirm and startup:
        with engine.begin() as conn:
            res = conn.execute(
                update(rules)
                .where(and_(rules.c.id.in_(confirm), rules.c.state == State.PENDING))
                .values(state=State.ACTIVE, activated_at=now, updated_at=now)
            )
            conn.execute(
                insert(rule_events),
                [
                    {
                        "rule_id": rid,
                        "at": now,
                        "event": "announced",
                        "detail": "confirmed by read-back after restart",
                    }
                    for rid in confirm
                ],
            )
            report.confirmed = res.rowcount
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
            with engine.begin() as conn:
                conn.execute(
                    insert(rule_events),
                    [
                        {
                            "rule_id": rid,
                            "at": now,
                            "event": "drift_missing",
                            "detail": "not held by the backend; re-announcing",
                        }
                        for rid in missing
                    ],
                )

    _withdraw_orphans(service, adapter_id, snapshot=snapshot, held=held, report=report)
    return report


def _withdraw_orphans(
    service: Service,
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


async def _sessions_came_up(service: Service, adapter_id: int) -> bool:
    """True when ``check()`` shows a session established that was not before."""
    adapter = service.hub.live(adapter_id)
    if adapter is None:
        return False
    try:
        health = await adapter.check()
    except Exception:
        return False
    before = service._sessions.get(adapter_id)  # the service owns this cache
    now = {k: v.lower() for k, v in health.sessions.items()}
    service._sessions[adapter_id] = now
    if before is None:
        return False
    return any(
        state == "established" and before.get(peer) != "established" for peer, state in now.items()
    )
