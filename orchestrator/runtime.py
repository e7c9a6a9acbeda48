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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, insert, select, update

from orchestrator.lifecycle import HELD
from orchestrator.service import RuleRequest, Service
from orchestrator.store.models import decisions, incidents, kv, rules
from policies.engine import Decision, evaluate
from policies.errors import NotFound, PolicyInvalid, SluiceError
from policies.signals import Signal
from policies.state import EngineState
from policies.watch import PolicyWatcher

log = logging.getLogger("sluice.runtime")

STATE_KEY = "engine_state"


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
        if service.settings.policy_dir is not None:
            self.watcher = PolicyWatcher(service.settings.policy_dir, service.policy)
        self.reload_status = ReloadStatus(digest=self.watcher.digest if self.watcher else None)
        self._lock = asyncio.Lock()

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
        change = self.watcher.poll()
        if change is None:
            return None
        now = utcnow()
        if change.policy is None:
            message = change.error.message if change.error else "policy refused"
            log.error("policy change refused; the previous policy stays in force: %s", message)
            self.reload_status = ReloadStatus(False, now, message, change.digest)
            return self.reload_status
        try:
            self.service.set_policy(change.policy)
        except SluiceError as exc:  # e.g. an adapter that cannot be built
            log.error(  # noqa: TRY400  # the message says it all; no traceback
                "policy change refused; the previous policy stays in force: %s", exc
            )
            self.watcher.current = self.service.policy
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

    def apply_document(self, policy: Any, *, actor: str, what: str) -> None:
        """Put an API-edited policy in force (only when not running from a directory)."""
        self.service.set_policy(policy, sync_adapters=False)
        with self.service.engine.begin() as conn:
            self.service.audit.append(
                conn, actor=actor, action=f"policy.{what}", target="policy", detail={}
            )

    # ------------------------------------------------------------ signals

    async def handle(
        self, signal: Signal, *, actor: str, incident_id: str | None = None
    ) -> dict[str, Any]:
        """Evaluate one signal and apply the decision; returns incident + decision."""
        async with self._lock:
            return self._handle(signal, actor=actor, incident_id=incident_id)

    def _handle(self, signal: Signal, *, actor: str, incident_id: str | None) -> dict[str, Any]:
        svc = self.service
        now = utcnow()
        incident = self._incident_for(signal, incident_id, now)
        decision = evaluate(signal, svc.policy, self.state, time.time())
        applied = self._apply(decision, incident["id"], actor)
        values: dict[str, Any] = {
            "id": incident["id"],
            "updated_at": now,
            "last_signal": signal.model_dump(mode="json"),
            "signals": incident["signals"] + 1,
            "peak_bps": max(incident["peak_bps"], signal.bps),
            "peak_pps": max(incident["peak_pps"], signal.pps),
            "attack_family": signal.attack_family,
            "severity": signal.severity,
        }
        if incident["new"]:
            values.update(
                target=str(signal.target_ip),
                node=signal.node,
                status="open",
                opened_at=now,
                resolved_at=None,
            )
        with svc.engine.begin() as conn:
            # parameters apart from the statements, so each compiles once and is cached
            if incident["new"]:
                conn.execute(insert(incidents), values)
            else:
                conn.execute(_UPDATE_INCIDENT, {f"b_{k}": v for k, v in values.items()})
            conn.execute(
                insert(decisions),
                {
                    "incident_id": incident["id"],
                    "at": now,
                    "status": decision.status,
                    "tier": decision.tier,
                    "explanation": list(decision.explanation),
                    "rules": applied["rules"],
                    "refused": applied["refused"],
                    "withdrawn": applied["withdrawn"],
                },
            )
        view = {**incident["row"], **values} if not incident["new"] else values
        return {
            "incident": _incident_view(_Row(view)),
            # "planned": what the policy asked for; "rules": the rules it made (with ids);
            # "refused": what guardrails stopped; "withdrawn": rule ids taken down
            "decision": {**decision.to_dict(), "planned": decision.to_dict()["rules"], **applied},
        }

    def _incident_for(
        self, signal: Signal, incident_id: str | None, now: datetime
    ) -> dict[str, Any]:
        with self.service.engine.connect() as conn:
            if incident_id is not None:
                row = conn.execute(select(incidents).where(incidents.c.id == incident_id)).first()
                if row is None:
                    raise NotFound(
                        f"incident {incident_id} does not exist",
                        code="incident_not_found",
                        field="incident_id",
                    )
            else:
                quiet = timedelta(seconds=self.service.policy.escalation.episode_timeout_seconds)
                row = conn.execute(
                    select(incidents)
                    .where(
                        and_(
                            incidents.c.target == str(signal.target_ip),
                            incidents.c.status == "open",
                            incidents.c.updated_at >= now - quiet,
                        )
                    )
                    .order_by(incidents.c.updated_at.desc())
                    .limit(1)
                ).first()
        if row is None:
            return {
                "id": str(uuid.uuid4()),
                "new": True,
                "signals": 0,
                "peak_bps": 0.0,
                "peak_pps": 0.0,
            }
        return {
            "id": row.id,
            "new": False,
            "signals": row.signals,
            "peak_bps": row.peak_bps,
            "peak_pps": row.peak_pps,
            "row": row._asdict(),
        }

    def _apply(self, decision: Decision, incident_id: str, actor: str) -> dict[str, Any]:
        svc = self.service
        requests = [
            RuleRequest(
                intent=r.intent,
                adapter=r.adapter,
                ttl=r.ttl,
                reason=r.reason,
                origin="policy",
                dry_run=decision.dry_run,
                explanation=decision.explanation,
                incident_id=incident_id,
                actor=actor,
            )
            for r in decision.rules
        ]
        results = svc.create_rules_sync(requests) if requests else []
        created: list[dict[str, Any]] = []
        refused: list[dict[str, Any]] = []
        for planned, res in zip(decision.rules, results, strict=True):
            if isinstance(res, SluiceError):
                refused.append(
                    {
                        "intent": planned.to_dict()["text"],
                        "adapter": planned.adapter,
                        "code": res.code,
                        "message": res.message,
                    }
                )
            else:
                created.append(
                    {
                        "rule_id": res.rule["id"],
                        "intent": res.rule["intent"],
                        "adapter": planned.adapter,
                        "deduplicated": res.deduplicated,
                    }
                )
        withdrawn = (
            svc.withdraw_keys(decision.withdraw, actor=actor, reason=f"policy: {decision.status}")
            if decision.withdraw
            else []
        )
        return {"rules": created, "refused": refused, "withdrawn": withdrawn}

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


_UPDATE_INCIDENT = (
    update(incidents)
    .where(incidents.c.id == bindparam("b_id"))
    .values(
        **{
            c: bindparam(f"b_{c}")
            for c in (
                "updated_at",
                "last_signal",
                "signals",
                "peak_bps",
                "peak_pps",
                "attack_family",
                "severity",
            )
        }
    )
)


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


__all__ = ["PolicyInvalid", "PolicyRuntime", "ReloadStatus"]
