"""The policy engine wired to the service: signals in, decisions applied and recorded.

* A signal (from ``POST /incidents``, an agent's incident or its metrics) opens or updates
  an incident, is evaluated against the policy in force, and the decision is applied: new
  rules go through the service (guardrails, dedupe, quotas, dry-run all hold), rules the
  decision no longer wants are withdrawn. The decision, with its explanation, the rules it
  created and what guardrails refused, is stored with the incident.
* The engine's state (tiers per target, hold-down and cooldown clocks, learned baselines)
  is kept in the store, so a restart forgets neither baselines nor ongoing attacks.
* Hot reload: when the service runs from a policy directory, a changed directory is
  validated and put in force; an invalid one is logged and the previous policy stays.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, insert, select, update

from orchestrator.lifecycle import HELD
from orchestrator.policy_check import adapter_check
from orchestrator.service import RuleRequest, Service
from orchestrator.store.models import decisions, incidents, kv, rules
from policies.engine import Decision, evaluate
from policies.errors import NotFound, SluiceError
from policies.intents import canonical
from policies.schema import Policy
from policies.signals import Signal
from policies.state import EngineState
from policies.watch import PolicyWatcher

log = logging.getLogger("sluice.runtime")

STATE_KEY = "engine_state"
MAX_BATCH = 256  # signals handled in one group commit
_INCIDENT_FIELDS = (
    "id",
    "target",
    "node",
    "signals",
    "peak_bps",
    "peak_pps",
    "last_signal",
    "attack_family",
    "severity",
)


@dataclass
class _Pending:
    signal: Signal
    actor: str
    incident_id: str | None
    future: asyncio.Future[dict[str, Any]]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class ReloadStatus:
    ok: bool = True
    at: datetime | None = None
    error: str | None = None
    digest: str | None = None


class PolicyRuntime:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.state = EngineState()
        self.watcher: PolicyWatcher | None = None
        # the policy in force is the files with the API's layer over them (policy_doc)
        self.layer: Callable[[Policy], Policy] = lambda files: files
        if service.settings.policy_dir is not None:
            self.watcher = PolicyWatcher(
                service.settings.policy_dir,
                service.policy,
                check=adapter_check(service.registry),
            )
        self.reload_status = ReloadStatus(digest=self.watcher.digest if self.watcher else None)
        self._pending: list[_Pending] = []
        self._worker: asyncio.Task[None] | None = None

    @property
    def from_directory(self) -> bool:
        return self.watcher is not None

    # ------------------------------------------------------------ engine state

    def load_state(self) -> None:
        with self.service.engine.connect() as conn:
            value = conn.execute(select(kv.c.value).where(kv.c.key == STATE_KEY)).scalar()
        if value:
            try:
                self.state = EngineState.from_dict(value)
            except (KeyError, TypeError, ValueError):
                log.exception("stored engine state is unreadable; starting with an empty one")

    def save_state(self) -> None:
        snapshot = self.state.to_dict()
        now = utcnow()
        with self.service.engine.begin() as conn:
            res = conn.execute(
                update(kv).where(kv.c.key == STATE_KEY).values(value=snapshot, updated_at=now)
            )
            if not res.rowcount:
                conn.execute(insert(kv).values(key=STATE_KEY, value=snapshot, updated_at=now))

    # ------------------------------------------------------------ hot reload

    async def reload(self) -> ReloadStatus | None:
        """Poll the policy directory; returns the new status when something changed."""
        if self.watcher is None:
            return None
        try:
            change = self.watcher.poll()
        except Exception as exc:  # never leave a status that says ok about unread files
            log.exception("reading the policy directory %s", self.watcher.directory)
            message = f"the policy directory could not be read: {type(exc).__name__}"
            self.reload_status = ReloadStatus(False, utcnow(), message, None)
            return self.reload_status
        if change is None:
            return None
        now = utcnow()
        if change.restored:  # the files are back to the policy in force
            log.info("policy files in %s are back to the policy in force", self.watcher.directory)
            self.reload_status = ReloadStatus(True, now, None, change.digest)
            return self.reload_status
        if change.policy is None:
            message = change.error.message if change.error else "policy refused"
            log.error("policy change refused; the previous policy stays in force: %s", message)
            self.reload_status = ReloadStatus(False, now, message, change.digest)
            return self.reload_status
        try:
            self.service.set_policy(self.layer(change.policy))
        except SluiceError as exc:  # e.g. an adapter that cannot be built
            log.error(  # noqa: TRY400  # the message says it all; no traceback
                "policy change refused; the previous policy stays in force: %s", exc
            )
            self.watcher.reject()
            self.reload_status = ReloadStatus(False, now, str(exc), change.digest)
            return self.reload_status
        with self.service.engine.begin() as conn:
            self.service.audit.append(
                conn,
                actor="system",
                action="policy.reload",
                target=str(self.watcher.directory),
                detail={"digest": change.digest},
            )
        log.info("policy reloaded from %s", self.watcher.directory)
        self.reload_status = ReloadStatus(True, now, None, change.digest)
        return self.reload_status

    # ------------------------------------------------------------ signals

    async def handle(
        self, signal: Signal, *, actor: str, incident_id: str | None = None
    ) -> dict[str, Any]:
        """Evaluate one signal and apply the decision; returns incident + decision.

        Signals that arrive together are handled as one batch (group commit): evaluated
        one after the other, in arrival order, then written with one transaction for the
        rules and one for the incidents and decisions, instead of three per signal.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending.append(_Pending(signal, actor, incident_id, fut))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain(), name="signal-intake")
        return await fut

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[:MAX_BATCH]
            del self._pending[:MAX_BATCH]
            try:
                results = self._handle_batch(batch)
            except Exception as exc:  # a database error: every signal of the batch fails
                log.exception("handling %d signals", len(batch))
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
            else:
                for p, res in zip(batch, results, strict=True):
                    if p.future.done():
                        continue
                    if isinstance(res, Exception):
                        p.future.set_exception(res)
                    else:
                        p.future.set_result(res)
            await asyncio.sleep(0)  # let the next signals in

    def _handle_batch(self, batch: list[_Pending]) -> list[dict[str, Any] | Exception]:
        svc = self.service
        now = utcnow()
        open_incidents: dict[str, dict[str, Any]] = {}  # target -> incident, batch-local
        by_target, by_id = self._incident_rows(batch, now)
        known: dict[str, dict[str, Any]] = {}  # incident id -> its state in this batch
        items: list[tuple[_Pending, dict[str, Any], Decision] | Exception] = []
        for p in batch:
            target = str(p.signal.target_ip)
            if p.incident_id is None and target in open_incidents:
                incident = open_incidents[target]
            elif p.incident_id is None:
                incident = _incident_state(by_target.get(target), known)
            elif p.incident_id in by_id:
                incident = _incident_state(by_id[p.incident_id], known)
            else:
                items.append(
                    NotFound(
                        f"incident {p.incident_id} does not exist",
                        code="incident_not_found",
                        field="incident_id",
                    )
                )
                continue
            open_incidents.setdefault(target, incident)
            decision = evaluate(p.signal, svc.policy, self.state, time.time())
            incident.update(
                signals=incident["signals"] + 1,
                peak_bps=max(incident["peak_bps"], p.signal.bps),
                peak_pps=max(incident["peak_pps"], p.signal.pps),
                last_signal=p.signal.model_dump(mode="json"),
                attack_family=p.signal.attack_family,
                severity=p.signal.severity,
                target=target,
                node=p.signal.node,
            )
            items.append((p, incident, decision))

        done = [x for x in items if not isinstance(x, Exception)]
        applied = self._apply_all(done)
        if done:
            self._record(done, applied, now)

        out: list[dict[str, Any] | Exception] = []
        k = 0
        for item in items:
            if isinstance(item, Exception):
                out.append(item)
                continue
            _p, inc, d = item
            view = {
                **inc.get("row", {}),
                **{key: inc[key] for key in _INCIDENT_FIELDS},
                "updated_at": now,
            }
            if inc["new"]:
                view.update(status="open", opened_at=now, resolved_at=None)
            planned = d.to_dict()
            out.append(
                {
                    "incident": _incident_view(_Row(view)),
                    # "planned": what the policy asked for; "rules": the rules it made (ids);
                    # "refused": what guardrails stopped; "withdrawn": rule ids taken down
                    "decision": {**planned, "planned": planned["rules"], **applied[k]},
                }
            )
            k += 1
        return out

    def _apply_all(
        self, done: list[tuple[_Pending, dict[str, Any], Decision]]
    ) -> list[dict[str, Any]]:
        """Rules of every decision in one transaction, then withdrawals in decision order
        (make before break: a tier's new rules exist before the old ones go)."""
        svc = self.service
        requests = [
            (
                k,
                RuleRequest(
                    intent=r.intent,
                    adapter=r.adapter,
                    ttl=r.ttl,
                    reason=r.reason,
                    origin="policy",
                    dry_run=d.dry_run,
                    explanation=d.explanation,
                    incident_id=inc["id"],
                    actor=p.actor,
                ),
            )
            for k, (p, inc, d) in enumerate(done)
            for r in d.rules
        ]
        results = svc.create_rules_sync([r for _, r in requests]) if requests else []
        applied: list[dict[str, Any]] = [
            {"rules": [], "refused": [], "withdrawn": []} for _ in done
        ]
        for (k, req), res in zip(requests, results, strict=True):
            if isinstance(res, SluiceError):
                applied[k]["refused"].append(
                    {
                        "intent": canonical(req.intent),
                        "adapter": req.adapter,
                        "code": res.code,
                        "message": res.message,
                    }
                )
            else:
                applied[k]["rules"].append(
                    {
                        "rule_id": res.rule["id"],
                        "intent": res.rule["intent"],
                        "adapter": req.adapter,
                        "deduplicated": res.deduplicated,
                    }
                )
        for k, (p, _inc, d) in enumerate(done):
            if d.withdraw:
                applied[k]["withdrawn"] = svc.withdraw_keys(
                    d.withdraw, actor=p.actor, reason=f"policy: {d.status}"
                )

        return applied

    def _record(
        self,
        done: list[tuple[_Pending, dict[str, Any], Decision]],
        applied: list[dict[str, Any]],
        now: datetime,
    ) -> None:
        """Each incident once (its last state), and one decision row per signal."""
        svc = self.service
        with svc.engine.begin() as conn:
            written: set[str] = set()
            new: list[dict[str, Any]] = []
            updated: list[dict[str, Any]] = []
            for _p, inc, _d in reversed(done):  # the last state of each incident wins
                if inc["id"] in written:
                    continue
                written.add(inc["id"])
                values = {key: inc[key] for key in _INCIDENT_FIELDS}
                values["updated_at"] = now
                if inc["new"]:
                    new.append({**values, "status": "open", "opened_at": now, "resolved_at": None})
                else:
                    updated.append(
                        {"b_id": values["id"], **{f"b_{k}": values[k] for k in _UPDATED_FIELDS}}
                    )
            if new:
                conn.execute(insert(incidents), new)
            if updated:
                conn.execute(_UPDATE_INCIDENT, updated)
            conn.execute(
                insert(decisions),
                [
                    {
                        "incident_id": inc["id"],
                        "at": now,
                        "status": d.status,
                        "tier": d.tier,
                        "explanation": list(d.explanation),
                        **applied[k],
                    }
                    for k, (_p, inc, d) in enumerate(done)
                ],
            )

    def _incident_rows(
        self, batch: list[_Pending], now: datetime
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The incidents a batch of signals updates, in two queries for the whole batch.

        Returns ``(open incident by target, incident by id)``: a signal without an incident
        id updates its target's latest incident that is open and was updated within the
        episode timeout; one with an id updates that incident.
        """
        targets = {str(p.signal.target_ip) for p in batch if p.incident_id is None}
        ids = {p.incident_id for p in batch if p.incident_id is not None}
        by_target: dict[str, Any] = {}
        by_id: dict[str, Any] = {}
        with self.service.engine.connect() as conn:
            if targets:
                quiet = timedelta(seconds=self.service.policy.escalation.episode_timeout_seconds)
                rows = conn.execute(
                    select(incidents)
                    .where(
                        and_(
                            incidents.c.target.in_(sorted(targets)),
                            incidents.c.status == "open",
                            incidents.c.updated_at >= now - quiet,
                        )
                    )
                    .order_by(incidents.c.updated_at)
                ).all()
                by_target = {row.target: row for row in rows}  # the latest one wins
            if ids:
                rows = conn.execute(select(incidents).where(incidents.c.id.in_(sorted(ids)))).all()
                by_id = {row.id: row for row in rows}
        return by_target, by_id

    # ------------------------------------------------------------ queries

    def get_incident(self, incident_id: str, *, with_decisions: bool = True) -> dict[str, Any]:
        with self.service.engine.connect() as conn:
            row = conn.execute(select(incidents).where(incidents.c.id == incident_id)).first()
            if row is None:
                raise NotFound(f"incident {incident_id} does not exist", code="incident_not_found")
            out = _incident_view(row)
            if with_decisions:
                rows = conn.execute(
                    select(decisions)
                    .where(decisions.c.incident_id == incident_id)
                    .order_by(decisions.c.id)
                ).all()
                out["decisions"] = [
                    {
                        "at": d.at.isoformat(),
                        "status": d.status,
                        "tier": d.tier,
                        "explanation": d.explanation,
                        "rules": d.rules,
                        "refused": d.refused,
                        "withdrawn": d.withdrawn,
                    }
                    for d in rows
                ]
                live = (
                    conn.execute(
                        select(rules.c.id).where(
                            and_(
                                rules.c.incident_id == incident_id,
                                rules.c.state.in_([s.value for s in HELD]),
                            )
                        )
                    )
                    .scalars()
                    .all()
                )
                out["live_rules"] = list(live)
        return out

    def list_incidents(
        self, *, status: str | None, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        q = select(incidents).order_by(incidents.c.opened_at.desc()).limit(limit).offset(offset)
        if status is not None:
            q = q.where(incidents.c.status == status)
        with self.service.engine.connect() as conn:
            return [_incident_view(r) for r in conn.execute(q).all()]

    def open_incident_for(self, target: str) -> dict[str, Any] | None:
        with self.service.engine.connect() as conn:
            row = conn.execute(
                select(incidents)
                .where(and_(incidents.c.target == target, incidents.c.status == "open"))
                .order_by(incidents.c.updated_at.desc())
                .limit(1)
            ).first()
        return _incident_view(row) if row is not None else None

    def resolve(self, incident_id: str, *, actor: str) -> dict[str, Any]:
        now = utcnow()
        with self.service.engine.begin() as conn:
            res = conn.execute(
                update(incidents)
                .where(and_(incidents.c.id == incident_id, incidents.c.status == "open"))
                .values(status="resolved", resolved_at=now, updated_at=now)
            )
            if not res.rowcount:
                self.get_incident(incident_id)  # 404 if it does not exist
            self.service.audit.append(
                conn, actor=actor, action="incident.resolve", target=f"incident:{incident_id}"
            )
        return self.get_incident(incident_id)


class _Row:
    """Attribute access over a dict, so a view can be built without reading the row back."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


_UPDATED_FIELDS = (
    "updated_at",
    "last_signal",
    "signals",
    "peak_bps",
    "peak_pps",
    "attack_family",
    "severity",
)
_UPDATE_INCIDENT = (
    update(incidents)
    .where(incidents.c.id == bindparam("b_id"))
    .values(**{c: bindparam(f"b_{c}") for c in _UPDATED_FIELDS})
)


def _incident_state(row: Any, known: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The running state of the incident a signal updates (a new one when ``row`` is None).

    ``known`` holds the states already taken in this batch, so two signals for one
    incident both count.
    """
    if row is None:
        return {
            "id": str(uuid.uuid4()),
            "new": True,
            "signals": 0,
            "peak_bps": 0.0,
            "peak_pps": 0.0,
        }
    state = known.get(row.id)
    if state is None:
        state = known[row.id] = {
            "id": row.id,
            "new": False,
            "signals": row.signals,
            "peak_bps": row.peak_bps,
            "peak_pps": row.peak_pps,
            "row": row._asdict(),
        }
    return state


def _incident_view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "target_ip": row.target,
        "node": row.node,
        "status": row.status,
        "attack_family": row.attack_family,
        "severity": row.severity,
        "peak_bps": row.peak_bps,
        "peak_pps": row.peak_pps,
        "signals": row.signals,
        "last_signal": row.last_signal,
        "opened_at": row.opened_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "resolved_at": row.resolved_at.isoformat() if row.resolved_at else None,
    }
