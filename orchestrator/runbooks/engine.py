"""Runbooks: the store, triggering on incident events, and durable executions.

**Triggering.** The runbook consumer follows the event log (incident opened / escalated /
resolved). For each active runbook whose trigger matches, it inserts an execution; the
row is unique on (runbook, incident, trigger event kind), so each runbook runs at most
once per incident and trigger, across restarts and across several service instances.

**Durability.** An execution's steps are copied into its row when it starts (an edit of
the runbook never changes a running execution). Before a step runs, its start is
committed (``runbook_step_results`` row, status ``running``); its result and output are
committed when it ends; the execution's ``step_index`` moves in the same transaction.
The instance running an execution holds a lease on it (renewed while it runs).

**After a crash or restart** (the documented rule): an execution still ``running`` whose
lease has lapsed (or which this instance released when it stopped) is taken over by one
instance (an atomic update of the lease), and:

* if the step it was in is ``wait``, ``log`` or ``condition`` (:data:`RESUMABLE`), it is
  resumed at that step; a ``wait`` only waits for what is left of its duration;
* if the step it was in has side effects (``iptables``, ``notify_channel``, ``webhook``,
  ``cloudflare_uam``, ``scrubbing_enable``) and its result was not committed, that step
  is marked ``interrupted`` and the execution ``interrupted``: it is never run a second
  time without an operator;
* otherwise it continues with the next step.

**Test runs** (``POST /runbooks/{id}/test``) run on the node's context or a synthetic
one. Unless ``execute`` is true, side-effect steps and waits are not performed: their
result is ``planned`` with what they would have done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, insert, or_, select, update

from adapters.webhook.signing import headers_for
from orchestrator.channels.service import ChannelService
from orchestrator.channels.transports import DeliveryFailed, Egress, Message
from orchestrator.cluster import write
from orchestrator.jobs import JobStore
from orchestrator.runbooks import expr
from orchestrator.runbooks.consumer import Batch, Consumer, insert_new
from orchestrator.runbooks.journal import Journal
from orchestrator.runbooks.steps import (
    RESUMABLE,
    SIDE_EFFECTS,
    Lookups,
    check_steps,
    check_trigger,
    matches,
    render,
)
from orchestrator.store.audit import AuditLog
from orchestrator.store.models import nodes, runbook_executions, runbook_step_results, runbooks
from policies.errors import NotFound, SluiceError, ValidationFailed

log = logging.getLogger("sluice.runbooks")

SYNTHETIC: dict[str, Any] = {
    "incident_id": None,
    "target_ip": "192.0.2.10",
    "node": None,
    "attack_family": "udp_flood",
    "severity": "high",
    "severity_rank": 2.0,
    "pps": 1_500_000.0,
    "bps": 2e9,
    "status": "open",
    "event": "test",
    "sources": [],
}


class StepFailed(Exception):
    pass


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def _ms(a: datetime | None, b: datetime | None) -> int | None:
    return int((b - a).total_seconds() * 1000) if a and b else None


class RunbookEngine:
    def __init__(
        self,
        svc: Any,  # orchestrator.service.Service (Any: avoids an import cycle at type level)
        jobs: JobStore,
        channels: ChannelService,
        egress: Egress,
        *,
        lease: float = 15.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.svc = svc
        self.engine: Engine = svc.engine
        self.audit: AuditLog = svc.audit
        self.jobs = jobs
        self.channels = channels
        self.egress = egress
        self.lease = lease
        self.clock = clock
        self.owner = uuid.uuid4().hex
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._bg: list[asyncio.Task[None]] = []
        self.journal = Journal(self.engine)
        self.consumer = Consumer("runbooks", svc.events, self.on_events, wants=self.any_active)
        # measurement hook: (execution id, event id, first step start) per live execution
        self.first_step: dict[str, datetime] = {}

    # ------------------------------------------------------------ lookups for validation

    def lookups(self) -> Lookups:
        def integration(i: int) -> bool:
            from orchestrator import scrubbing  # the scrubbing module imports the service

            try:
                scrubbing.integration(self.svc, i)
            except SluiceError:
                return False
            return True

        def cloudflare(i: int) -> bool:
            try:
                rec = self.svc.hub.get(i)
            except SluiceError:
                return False
            return bool(rec.adapter_type == "cloudflare")

        return Lookups(self.channels.exists, integration, cloudflare)

    # ------------------------------------------------------------ the store

    def _row(self, conn: Any, rid: str) -> Any:
        row = conn.execute(
            select(runbooks).where(and_(runbooks.c.id == rid, runbooks.c.deleted_at.is_(None)))
        ).first()
        if row is None:
            raise NotFound(f"runbook {rid} does not exist", code="runbook_not_found")
        return row

    def _view(self, row: Any, counts: Mapping[str, tuple[int, datetime | None]]) -> dict[str, Any]:
        n, last = counts.get(row.id, (0, None))
        return {
            "id": row.id,
            "name": row.name,
            "description": row.description,
            "trigger_conditions": row.trigger_conditions,
            "steps": row.steps,
            "active": row.active,
            "execution_count": n,
            "last_execution_at": _iso(last),
            "created_at": _iso(row.created_at),
            "updated_at": _iso(row.updated_at),
        }

    def _counts(self, conn: Any) -> dict[str, tuple[int, datetime | None]]:
        rows = conn.execute(
            select(
                runbook_executions.c.runbook_id,
                func.count(),
                func.max(runbook_executions.c.created_at),
            ).group_by(runbook_executions.c.runbook_id)
        ).all()
        return {r[0]: (int(r[1]), r[2]) for r in rows}

    def list_all(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(runbooks)
                .where(runbooks.c.deleted_at.is_(None))
                .order_by(runbooks.c.created_at)
            ).all()
            counts = self._counts(conn)
        return [self._view(r, counts) for r in rows]

    def get(self, rid: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return self._view(self._row(conn, rid), self._counts(conn))

    @staticmethod
    def _text(body: Mapping[str, Any], key: str, *, required: bool, limit: int) -> str | None:
        v = body.get(key)
        if v is None and not required:
            return None
        if not isinstance(v, str) or (required and not v.strip()) or len(v) > limit:
            raise ValidationFailed(
                f"{key} must be a {'non-empty ' if required else ''}string of at most {limit}",
                field=key,
                code="invalid_parameter",
            )
        return v

    def create(self, body: Mapping[str, Any], *, actor: str) -> dict[str, Any]:
        for k in body:
            if k not in ("name", "description", "trigger_conditions", "steps", "active"):
                raise ValidationFailed(f"unknown field {k!r}", field=k, code="unknown_field")
        name = self._text(body, "name", required=True, limit=200)
        desc = self._text(body, "description", required=False, limit=2000) or ""
        if "trigger_conditions" not in body:
            raise ValidationFailed(
                "trigger_conditions is required", field="trigger_conditions", code="invalid_trigger"
            )
        trig = check_trigger(body["trigger_conditions"])
        steps = check_steps(body.get("steps"), self.lookups())
        active = body.get("active", True)
        if not isinstance(active, bool):
            raise ValidationFailed("active must be true or false", field="active")
        rid = str(uuid.uuid4())
        now = self.clock()
        with write(self.engine) as conn:
            conn.execute(
                insert(runbooks).values(
                    id=rid,
                    name=name,
                    description=desc,
                    trigger_conditions=trig,
                    steps=steps,
                    active=active,
                    created_at=now,
                    updated_at=now,
                )
            )
            self.audit.append(
                conn,
                actor=actor,
                action="runbook.create",
                target=f"runbook:{rid}",
                detail={"name": name},
            )
        return self.get(rid)

    def update(self, rid: str, body: Mapping[str, Any], *, actor: str) -> dict[str, Any]:
        for k in body:
            if k not in ("name", "description", "trigger_conditions", "steps", "active"):
                raise ValidationFailed(f"unknown field {k!r}", field=k, code="unknown_field")
        values: dict[str, Any] = {}
        if "name" in body:
            values["name"] = self._text(body, "name", required=True, limit=200)
        if "description" in body:
            values["description"] = (
                self._text(body, "description", required=False, limit=2000) or ""
            )
        if "trigger_conditions" in body:
            values["trigger_conditions"] = check_trigger(body["trigger_conditions"])
        if "steps" in body:
            values["steps"] = check_steps(body["steps"], self.lookups())
        if "active" in body:
            if not isinstance(body["active"], bool):
                raise ValidationFailed("active must be true or false", field="active")
            values["active"] = body["active"]
        with write(self.engine) as conn:
            self._row(conn, rid)
            values["updated_at"] = self.clock()
            conn.execute(update(runbooks).where(runbooks.c.id == rid).values(**values))
            self.audit.append(
                conn,
                actor=actor,
                action="runbook.update",
                target=f"runbook:{rid}",
                detail={"fields": sorted(k for k in values if k != "updated_at")},
            )
        return self.get(rid)

    def delete(self, rid: str, *, actor: str) -> dict[str, Any]:
        """Soft delete: history stays; running executions finish (they hold their steps)."""
        with write(self.engine) as conn:
            self._row(conn, rid)
            conn.execute(
                update(runbooks)
                .where(runbooks.c.id == rid)
                .values(deleted_at=self.clock(), active=False)
            )
            self.audit.append(
                conn, actor=actor, action="runbook.delete", target=f"runbook:{rid}", detail={}
            )
        return {"id": rid, "deleted": True}

    def toggle(self, rid: str, *, actor: str) -> dict[str, Any]:
        with write(self.engine) as conn:
            row = self._row(conn, rid)
            conn.execute(
                update(runbooks)
                .where(runbooks.c.id == rid)
                .values(active=not row.active, updated_at=self.clock())
            )
            self.audit.append(
                conn,
                actor=actor,
                action="runbook.toggle",
                target=f"runbook:{rid}",
                detail={"active": not row.active},
            )
        return self.get(rid)

    def executions(self, rid: str, limit: int = 50) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            conn.execute(
                select(runbooks.c.id).where(runbooks.c.id == rid)
            ).one_or_none() or self._row(conn, rid)
            rows = conn.execute(
                select(runbook_executions)
                .where(runbook_executions.c.runbook_id == rid)
                .order_by(runbook_executions.c.created_at.desc())
                .limit(limit)
            ).all()
            ids = [r.id for r in rows]
            steps = (
                conn.execute(
                    select(runbook_step_results)
                    .where(runbook_step_results.c.execution_id.in_(ids))
                    .order_by(runbook_step_results.c.step_index)
                ).all()
                if ids
                else []
            )
        by: dict[str, list[dict[str, Any]]] = {}
        for s in steps:
            by.setdefault(s.execution_id, []).append(
                {
                    "index": s.step_index,
                    "action_type": s.action_type,
                    "status": s.status,
                    "started_at": _iso(s.started_at),
                    "finished_at": _iso(s.finished_at),
                    "duration_ms": _ms(s.started_at, s.finished_at),
                    "output": s.output,
                    "error": s.error,
                }
            )
        return [self._exec_view(r, by.get(r.id, [])) for r in rows]

    def execution(self, eid: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(runbook_executions).where(runbook_executions.c.id == eid)
            ).first()
        if row is None:
            raise NotFound(f"execution {eid} does not exist", code="execution_not_found")
        for e in self.executions(row.runbook_id, limit=1000):
            if e["id"] == eid:
                return e
        raise NotFound(f"execution {eid} does not exist", code="execution_not_found")

    @staticmethod
    def _exec_view(r: Any, steps: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": r.id,
            "runbook_id": r.runbook_id,
            "incident_id": r.incident_id,
            "trigger": r.trigger,
            "mode": r.mode,
            "status": r.status,
            "started_at": _iso(r.started_at),
            "finished_at": _iso(r.finished_at),
            "duration_ms": _ms(r.started_at, r.finished_at),
            "error": r.error,
            "steps": steps,
        }

    # ------------------------------------------------------------ triggering

    def any_active(self) -> bool:
        """Whether a runbook could run (the consumer skips incident events otherwise)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(runbooks.c.id)
                .where(and_(runbooks.c.active.is_(True), runbooks.c.deleted_at.is_(None)))
                .limit(1)
            ).first()
        return row is not None

    async def on_events(self, batch: Batch) -> None:
        """Create the executions a page of incident events calls for (one transaction)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(runbooks).where(
                    and_(runbooks.c.active.is_(True), runbooks.c.deleted_at.is_(None))
                )
            ).all()
        if not rows:
            return
        now = self.clock()
        new: list[dict[str, Any]] = []
        for kind, incident_id, ctx, event_id in batch:
            for row in rows:
                if matches(row.trigger_conditions, kind, ctx):
                    new.append(
                        self._execution_row(
                            row,
                            incident_id=incident_id,
                            trigger=kind,
                            mode="live",
                            ctx=ctx,
                            event_id=event_id,
                            now=now,
                        )
                    )
        if not new:
            return
        with write(self.engine) as conn:
            # only the ones this consumer created (a replay or another instance may not)
            mine = set(insert_new(conn, runbook_executions, new))
        for values in new:
            if values["id"] in mine:
                self._launch(str(values["id"]), values)

    def _execution_row(
        self,
        row: Any,
        *,
        incident_id: str | None,
        trigger: str,
        mode: str,
        ctx: Mapping[str, Any],
        event_id: int | None,
        now: datetime,
    ) -> dict[str, Any]:
        return {
            "id": str(uuid.uuid4()),
            "runbook_id": row.id,
            "incident_id": incident_id,
            "trigger": trigger,
            "event_id": event_id,
            "mode": mode,
            "status": "running",
            "context": {**ctx, "event": trigger},
            "steps": row.steps,
            "step_index": 0,
            "owner": self.owner,
            "lease_until": now + timedelta(seconds=self.lease),
            "created_at": now,
            "started_at": now,
        }

    def _new_execution(
        self,
        row: Any,
        *,
        incident_id: str | None,
        trigger: str,
        mode: str,
        ctx: Mapping[str, Any],
        event_id: int | None,
    ) -> str | None:
        values = self._execution_row(
            row,
            incident_id=incident_id,
            trigger=trigger,
            mode=mode,
            ctx=ctx,
            event_id=event_id,
            now=self.clock(),
        )
        with write(self.engine) as conn:
            if not insert_new(conn, runbook_executions, [values]):
                return None  # another consumer (a replay, another instance) created it
        return str(values["id"])

    def _launch(self, eid: str, fresh: Mapping[str, Any] | None = None) -> None:
        task = asyncio.get_running_loop().create_task(
            self._run(eid, fresh), name=f"runbook-exec-{eid}"
        )
        self._tasks[eid] = task
        task.add_done_callback(lambda _t: self._tasks.pop(eid, None))

    async def test_run(
        self, rid: str, *, node: str | None, execute: bool, actor: str
    ) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = self._row(conn, rid)
            ctx = dict(SYNTHETIC)
            if node is not None:
                n = conn.execute(
                    select(nodes).where(or_(nodes.c.id == node, nodes.c.name == node))
                ).first()
                if n is None:
                    raise ValidationFailed(
                        f"unknown node {node!r}", code="unknown_node", field="node"
                    )
                ctx.update(node=n.id, target_ip=n.ip)
        mode = "test" if execute else "dry_run"
        eid = self._new_execution(
            row, incident_id=None, trigger=f"test:{uuid.uuid4()}", mode=mode, ctx=ctx, event_id=None
        )
        assert eid is not None  # noqa: S101  # a fresh test trigger is unique
        with write(self.engine) as conn:
            self.audit.append(
                conn,
                actor=actor,
                action="runbook.test",
                target=f"runbook:{rid}",
                detail={"execution": eid, "execute": execute},
            )
        if execute:
            self._launch(eid)
            return self.execution(eid)
        await self._run(eid)
        return self.execution(eid)

    # ------------------------------------------------------------ running

    def _renew(self, eid: str) -> None:
        with write(self.engine) as conn:
            conn.execute(
                update(runbook_executions)
                .where(
                    and_(runbook_executions.c.id == eid, runbook_executions.c.owner == self.owner)
                )
                .values(lease_until=self.clock() + timedelta(seconds=self.lease))
            )

    def _finish(self, eid: str, status: str, error: str | None = None) -> None:
        with write(self.engine) as conn:
            conn.execute(
                update(runbook_executions)
                .where(runbook_executions.c.id == eid)
                .values(status=status, error=error, finished_at=self.clock(), lease_until=None)
            )

    def _load(
        self, eid: str, fresh: Mapping[str, Any] | None
    ) -> tuple[list[dict[str, Any]], dict[str, Any], bool, int, dict[int, Any]]:
        if fresh is not None:
            return fresh["steps"], dict(fresh["context"]), fresh["mode"] == "dry_run", 0, {}
        with self.engine.connect() as conn:
            ex = conn.execute(
                select(runbook_executions).where(runbook_executions.c.id == eid)
            ).one()
            done = {
                r.step_index: r
                for r in conn.execute(
                    select(runbook_step_results).where(runbook_step_results.c.execution_id == eid)
                ).all()
            }
        return ex.steps, dict(ex.context), ex.mode == "dry_run", ex.step_index, done

    async def _run(self, eid: str, fresh: Mapping[str, Any] | None = None) -> None:
        """Run (or resume) one execution; ``fresh``: its just-inserted row (nothing done)."""
        steps, ctx, dry, i, done = self._load(eid, fresh)
        try:
            while i < len(steps):
                step = steps[i]
                kind = step["action_type"]
                prior = done.get(i)
                started = prior.started_at if prior is not None else self.clock()
                if prior is None:
                    # committed before the step runs: a restart knows it was begun
                    await self.journal.write(self._begin_op(eid, i, kind, started))
                    if i == 0:
                        self.first_step[eid] = started
                status, output, error = "succeeded", None, None
                try:
                    if dry and (kind in SIDE_EFFECTS or kind == "wait"):
                        status, output = "planned", self._plan(step, ctx)
                    else:
                        output = await asyncio.wait_for(
                            self._do(eid, step, ctx, started), step["timeout_seconds"]
                        )
                except TimeoutError:
                    status, error = "failed", f"timed out after {step['timeout_seconds']:g} s"
                except (StepFailed, DeliveryFailed, SluiceError) as exc:
                    status, error = "failed", str(getattr(exc, "message", None) or exc)
                end: tuple[str, str | None] | None = None  # the execution's end, if this is it
                skip_from = None
                if status == "failed" and not step["continue_on_failure"]:
                    end = ("failed", f"step {i} ({kind}): {error}")
                elif kind == "condition" and output is not None and output.get("result") is False:
                    end, skip_from = ("succeeded", None), i + 1
                elif i + 1 == len(steps):
                    end = ("succeeded", None)
                # the step's result, the skipped rest and the execution's end: one commit
                await self.journal.write(
                    self._end_op(
                        eid,
                        i,
                        status=status,
                        output=output,
                        error=error,
                        steps=steps,
                        skip_from=skip_from,
                        end=end,
                    )
                )
                if end is not None:
                    return
                i += 1
            await self.journal.write(
                self._end_op(
                    eid,
                    None,
                    status="",
                    output=None,
                    error=None,
                    steps=steps,
                    skip_from=None,
                    end=("succeeded", None),
                )
            )
        except asyncio.CancelledError:
            # stopping: give the execution back at once, a restart resumes it by the rule
            with contextlib.suppress(Exception), write(self.engine) as conn:
                conn.execute(
                    update(runbook_executions)
                    .where(
                        and_(
                            runbook_executions.c.id == eid,
                            runbook_executions.c.status == "running",
                        )
                    )
                    .values(lease_until=self.clock() - timedelta(seconds=1))
                )
            raise
        except Exception as exc:
            log.exception("runbook execution %s crashed", eid)
            self._finish(eid, "failed", f"{type(exc).__name__}: {exc}")

    def _begin_op(
        self, eid: str, i: int, kind: str, started: datetime
    ) -> Callable[[Connection], None]:
        def op(conn: Connection) -> None:
            conn.execute(
                insert(runbook_step_results).values(
                    execution_id=eid,
                    step_index=i,
                    action_type=kind,
                    status="running",
                    started_at=started,
                )
            )
            conn.execute(
                update(runbook_executions)
                .where(runbook_executions.c.id == eid)
                .values(step_index=i, lease_until=self.clock() + timedelta(seconds=self.lease))
            )

        return op

    def _end_op(
        self,
        eid: str,
        i: int | None,
        *,
        status: str,
        output: Any,
        error: str | None,
        steps: list[dict[str, Any]],
        skip_from: int | None,
        end: tuple[str, str | None] | None,
    ) -> Callable[[Connection], None]:
        def op(conn: Connection) -> None:
            now = self.clock()
            if i is not None:
                conn.execute(
                    update(runbook_step_results)
                    .where(
                        and_(
                            runbook_step_results.c.execution_id == eid,
                            runbook_step_results.c.step_index == i,
                        )
                    )
                    .values(status=status, output=output, error=error, finished_at=now)
                )
                conn.execute(
                    update(runbook_executions)
                    .where(runbook_executions.c.id == eid)
                    .values(step_index=i + 1)
                )
            if skip_from is not None:
                self._skip_rest(conn, steps, eid, skip_from, now)
            if end is not None:
                conn.execute(
                    update(runbook_executions)
                    .where(runbook_executions.c.id == eid)
                    .values(status=end[0], error=end[1], finished_at=now, lease_until=None)
                )

        return op

    @staticmethod
    def _skip_rest(
        conn: Connection, steps: list[dict[str, Any]], eid: str, start: int, now: datetime
    ) -> None:
        rows = [
            {
                "execution_id": eid,
                "step_index": j,
                "action_type": steps[j]["action_type"],
                "status": "skipped",
                "started_at": now,
                "finished_at": now,
                "output": {"reason": "the condition before it did not hold"},
            }
            for j in range(start, len(steps))
        ]
        if rows:
            conn.execute(insert(runbook_step_results), rows)

    def _plan(self, step: Mapping[str, Any], ctx: Mapping[str, Any]) -> dict[str, Any]:
        kind, cfg = step["action_type"], step["action_config"]
        would: dict[str, Any] = {"would": kind}
        if kind == "wait":
            would["seconds"] = cfg["seconds"]
        elif kind == "iptables":
            would.update(node=ctx.get("node") or "(the incident's node)", **cfg)
        elif kind == "notify_channel":
            would.update(channel=cfg["channel"], message=render(cfg["message"], ctx))
        elif kind == "webhook":
            would.update(
                method=cfg["method"],
                url=cfg["url"],
                body=render(cfg["body"], ctx) if "body" in cfg else None,
                signed="secret" in cfg,
            )
        elif kind == "cloudflare_uam":
            would.update(
                adapter_id=cfg["adapter_id"], zone_id=cfg["zone_id"], enabled=cfg["enabled"]
            )
        elif kind == "scrubbing_enable":
            would.update(
                integration_id=cfg["integration_id"], target_ip=ctx.get("target_ip"), ttl=cfg["ttl"]
            )
        return would

    async def _do(
        self, eid: str, step: Mapping[str, Any], ctx: Mapping[str, Any], started: datetime
    ) -> dict[str, Any]:
        kind, cfg = step["action_type"], step["action_config"]
        actor = f"runbook-exec:{eid}"
        if kind == "wait":
            left = float(cfg["seconds"]) - (self.clock() - started).total_seconds()
            deadline = time.monotonic() + max(0.0, left)
            while (now := time.monotonic()) < deadline:
                await asyncio.sleep(min(deadline - now, self.lease / 3))
                self._renew(eid)
            return {"waited_seconds": cfg["seconds"]}
        if kind == "log":
            message = render(cfg["message"], ctx)
            getattr(log, cfg["level"])("runbook %s: %s", eid, message)
            return {"message": message, "level": cfg["level"]}
        if kind == "condition":
            return {
                "expression": cfg["expression"],
                "result": expr.evaluate(cfg["expression"], ctx),
            }
        if kind == "notify_channel":
            title = f"Sluice runbook: {ctx.get('attack_family')} on {ctx.get('target_ip')}"
            msg = Message(
                "runbook",
                str(ctx.get("incident_id") or eid),
                title,
                render(cfg["message"], ctx),
                str(ctx.get("severity") or "medium"),
                dict(ctx),
            )
            out = await self.channels.send_now(cfg["channel"], msg)
            return {"channel": cfg["channel"], **out}
        if kind == "webhook":
            body = (
                render(cfg["body"], ctx)
                if "body" in cfg
                else json.dumps(
                    {"execution_id": eid, "incident": dict(ctx)}, default=str, sort_keys=True
                )
            ).encode()
            headers = {"Content-Type": "application/json"}
            if "secret" in cfg:
                headers.update(
                    headers_for(cfg["secret"], f"msg_{eid}_{id(step)}", int(time.time()), body)
                )
            r = await self.egress.post(
                cfg["url"], content=body, headers=headers, method=cfg["method"]
            )
            return {"status_code": r.status_code}
        if kind == "iptables":
            node = self._node_of(ctx)
            if cfg["action"] == "apply":
                made = self.jobs.apply_profile(
                    profile_id=cfg["profile_id"],
                    suite=cfg["suite"],
                    node_ids=[node],
                    rules=cfg["rules"],
                    actor=actor,
                )
            else:
                made = self.jobs.remove_profile(suite=cfg["suite"], node_ids=[node], actor=actor)
            job_id = made[0]["job_id"]
            while True:  # bounded by the step's timeout
                job = self.jobs.get(job_id)
                if job["status"] in ("succeeded", "failed"):
                    break
                await asyncio.sleep(0.2)
            if job["status"] == "failed":
                raise StepFailed(f"agent job {job_id} failed: {job['result']}")
            return {"job_id": job_id, "node_id": node, "result": job["result"]}
        if kind == "cloudflare_uam":
            adapter = self.svc.hub.live(cfg["adapter_id"])
            if adapter is None or not hasattr(adapter, "under_attack"):
                raise StepFailed(f"cloudflare adapter {cfg['adapter_id']} is not available")
            result: dict[str, Any] = await adapter.under_attack(
                cfg["zone_id"], enabled=cfg["enabled"]
            )
            return result
        if kind == "scrubbing_enable":
            from orchestrator import scrubbing

            target = ctx.get("target_ip")
            return await scrubbing.announce(
                self.svc,
                cfg["integration_id"],
                target_ip=str(target) if target else None,
                ttl=cfg["ttl"],
                reason=f"runbook execution {eid}",
                actor=actor,
            )
        raise StepFailed(f"unknown action_type {kind!r}")  # refused at save time already

    def _node_of(self, ctx: Mapping[str, Any]) -> str:
        node = ctx.get("node")
        if not node:
            raise StepFailed("the incident has no node to apply firewall rules on")
        with self.engine.connect() as conn:
            row = conn.execute(
                select(nodes.c.id).where(or_(nodes.c.id == node, nodes.c.name == node))
            ).first()
        if row is None:
            raise StepFailed(f"node {node!r} is not registered")
        return str(row.id)

    # ------------------------------------------------------------ recovery

    def recover(self) -> list[str]:
        """Take over lapsed executions by the documented rule; returns the ids resumed."""
        now = self.clock()
        with self.engine.connect() as conn:
            lapsed = conn.execute(
                select(runbook_executions.c.id).where(
                    and_(
                        runbook_executions.c.status == "running",
                        runbook_executions.c.mode != "dry_run",
                        runbook_executions.c.lease_until < now,
                    )
                )
            ).all()
        resumed = []
        for (eid,) in lapsed:
            if eid in self._tasks:
                continue
            with write(self.engine) as conn:
                got = conn.execute(
                    update(runbook_executions)
                    .where(
                        and_(
                            runbook_executions.c.id == eid,
                            runbook_executions.c.status == "running",
                            runbook_executions.c.lease_until < now,
                        )
                    )
                    .values(owner=self.owner, lease_until=now + timedelta(seconds=self.lease))
                ).rowcount
                if not got:
                    continue  # another instance took it
                ex = conn.execute(
                    select(runbook_executions).where(runbook_executions.c.id == eid)
                ).one()
                cur = conn.execute(
                    select(runbook_step_results).where(
                        and_(
                            runbook_step_results.c.execution_id == eid,
                            runbook_step_results.c.step_index == ex.step_index,
                        )
                    )
                ).first()
                if cur is not None and cur.status == "running" and cur.action_type not in RESUMABLE:
                    conn.execute(
                        update(runbook_step_results)
                        .where(runbook_step_results.c.id == cur.id)
                        .values(
                            status="interrupted",
                            finished_at=now,
                            error="the service stopped during this step; it is not run twice",
                        )
                    )
                    conn.execute(
                        update(runbook_executions)
                        .where(runbook_executions.c.id == eid)
                        .values(
                            status="interrupted",
                            finished_at=now,
                            lease_until=None,
                            error=f"interrupted in step {ex.step_index} ({cur.action_type})",
                        )
                    )
                    continue
            resumed.append(eid)
            self._launch(eid)
        return resumed

    async def _recovery_loop(self) -> None:
        while True:
            try:
                self.recover()
            except Exception:
                log.exception("runbook recovery failed")
            await asyncio.sleep(max(0.2, self.lease / 3))

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(max(0.1, self.lease / 3))
            for eid in list(self._tasks):
                with contextlib.suppress(Exception):
                    self._renew(eid)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.consumer.start()
        loop = asyncio.get_running_loop()
        self._bg = [
            loop.create_task(self._recovery_loop(), name="runbook-recovery"),
            loop.create_task(self._heartbeat(), name="runbook-heartbeat"),
        ]

    async def stop(self) -> None:
        await self.consumer.stop()
        for t in [*self._bg, *self._tasks.values()]:
            t.cancel()
        await asyncio.gather(*self._bg, *self._tasks.values(), return_exceptions=True)
        self._bg = []

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)
