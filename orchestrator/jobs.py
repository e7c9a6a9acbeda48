"""Agent jobs: work the service queues for node agents, which pull it and report results.

A job belongs to one node. States: ``queued -> delivered -> succeeded | failed``. A job
delivered but not reported within ``redeliver_after`` is handed out again (the agent may
have crashed or lost the answer); the agent keeps the ids it has applied, so a second
delivery is answered from its record instead of being applied twice. A result for a job
already finished is not recorded again (the first result stands).

Attack profiles are the first kind of job (``firewall.apply``, ``firewall.remove``);
runbook firewall steps use the same channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, func, insert, or_, select, true, update

from orchestrator.agent.grammar import RuleInvalid, check_custom
from orchestrator.agent.profiles import PROFILES, SUITES
from orchestrator.cluster import write
from orchestrator.store.audit import AuditLog
from orchestrator.store.models import agent_jobs, nodes
from policies.errors import NotFound, ValidationFailed

KINDS = ("firewall.apply", "firewall.remove")
MAX_CUSTOM_RULES = 50


def _view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "node_id": row.node_id,
        "kind": row.kind,
        "payload": row.payload,
        "status": row.status,
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
        "delivered_at": row.delivered_at.isoformat() if row.delivered_at else None,
        "deliveries": row.deliveries,
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        "result": row.result,
    }


class JobStore:
    def __init__(
        self,
        engine: Engine,
        audit: AuditLog,
        protected_for: Callable[[str], list[str]],
        *,
        redeliver_after: timedelta = timedelta(seconds=60),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.engine = engine
        self.audit = audit
        self.protected_for = protected_for
        self.redeliver_after = redeliver_after
        self.clock = clock
        self._wakeups: dict[str, asyncio.Event] = {}

    # ------------------------------------------------------------ creating

    def resolve_nodes(self, node_ids: Sequence[str]) -> list[str]:
        if not node_ids:
            raise ValidationFailed(
                'node_ids must list node UUIDs or be ["all"]',
                code="empty_node_list",
                field="node_ids",
            )
        with self.engine.connect() as conn:
            known = [r.id for r in conn.execute(select(nodes.c.id).order_by(nodes.c.created_at))]
        if list(node_ids) == ["all"]:
            if not known:
                raise ValidationFailed(
                    "no node is registered", code="empty_node_list", field="node_ids"
                )
            return known
        unknown = [n for n in node_ids if n not in set(known)]
        if unknown:
            raise ValidationFailed(
                f"unknown node(s): {', '.join(map(str, unknown[:5]))}",
                code="unknown_node",
                field="node_ids",
            )
        return list(dict.fromkeys(node_ids))

    def apply_profile(
        self,
        *,
        profile_id: str,
        suite: str,
        node_ids: Sequence[str],
        rules: Sequence[dict[str, Any]],
        actor: str,
    ) -> list[dict[str, Any]]:
        """Validate everything, then queue one job per node in one transaction."""
        if profile_id not in PROFILES:
            raise ValidationFailed(
                f"unknown profile {profile_id!r}; known: {', '.join(PROFILES)}",
                code="unknown_profile",
                field="profile_id",
            )
        _check_suite(suite)
        if len(rules) > MAX_CUSTOM_RULES:
            raise ValidationFailed(
                f"at most {MAX_CUSTOM_RULES} custom rules", field="rules", code="too_many_rules"
            )
        custom = []
        for i, rule in enumerate(rules):
            try:
                checked = check_custom(suite, rule.get("cmd", ""), str(rule.get("title", "")))
            except RuleInvalid as exc:
                raise RuleInvalid(
                    f"rules[{i}]: {exc.message}", code=exc.code, field=f"rules.{i}.cmd"
                ) from None
            custom.append({"cmd": checked.text, "title": checked.title})
        targets = self.resolve_nodes(node_ids)
        payloads = {
            n: {
                "profile_id": profile_id,
                "suite": suite,
                "rules": custom,
                "protected": self.protected_for(n),
            }
            for n in targets
        }
        return self._create("firewall.apply", payloads, actor=actor)

    def remove_profile(
        self, *, suite: str, node_ids: Sequence[str], actor: str
    ) -> list[dict[str, Any]]:
        _check_suite(suite)
        targets = self.resolve_nodes(node_ids)
        return self._create("firewall.remove", {n: {"suite": suite} for n in targets}, actor=actor)

    def _create(
        self, kind: str, payloads: dict[str, dict[str, Any]], *, actor: str
    ) -> list[dict[str, Any]]:
        now = self.clock()
        ids = {n: str(uuid.uuid4()) for n in payloads}
        with write(self.engine) as conn:
            conn.execute(
                insert(agent_jobs),
                [
                    {
                        "id": ids[n],
                        "node_id": n,
                        "kind": kind,
                        "payload": p,
                        "status": "queued",
                        "created_by": actor,
                        "created_at": now,
                        "deliveries": 0,
                    }
                    for n, p in payloads.items()
                ],
            )
            first = next(iter(payloads.values()))
            self.audit.append(
                conn,
                actor=actor,
                action=f"job.{kind}",
                target="nodes:" + ",".join(payloads),
                detail={
                    "jobs": list(ids.values()),
                    **{k: first[k] for k in ("profile_id", "suite") if k in first},
                },
            )
        for n in payloads:
            self._wake(n)
        return [{"job_id": ids[n], "node_id": n, "status": "queued"} for n in payloads]

    # ------------------------------------------------------------ the agent's side

    def _wake(self, node_id: str) -> None:
        ev = self._wakeups.get(node_id)
        if ev is not None:
            ev.set()

    def take(self, node_id: str, limit: int = 10) -> list[dict[str, Any]]:
        """Hand out the node's queued jobs (and stale deliveries), oldest first."""
        now = self.clock()
        stale = now - self.redeliver_after
        cond = and_(
            agent_jobs.c.node_id == node_id,
            or_(
                agent_jobs.c.status == "queued",
                and_(agent_jobs.c.status == "delivered", agent_jobs.c.delivered_at <= stale),
            ),
        )
        with write(self.engine) as conn:
            rows = conn.execute(
                select(agent_jobs).where(cond).order_by(agent_jobs.c.created_at).limit(limit)
            ).all()
            for row in rows:
                conn.execute(
                    update(agent_jobs)
                    .where(agent_jobs.c.id == row.id)
                    .values(
                        status="delivered",
                        delivered_at=now,
                        deliveries=agent_jobs.c.deliveries + 1,
                    )
                )
        return [
            {
                "id": r.id,
                "kind": r.kind,
                "payload": r.payload,
                "created_at": r.created_at.isoformat(),
            }
            for r in rows
        ]

    async def wait_for_jobs(
        self,
        node_id: str,
        wait: float,
        gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> list[dict[str, Any]]:
        """Long poll: jobs as soon as there are some, or ``[]`` after ``wait`` seconds.

        Jobs queued by this process wake the poll at once; the store is re-read every
        second too, so jobs queued by another instance on the same database arrive. When
        ``gone()`` says the agent hung up (it restarted), nothing is handed to the dead
        connection: the job waits for the agent's next poll instead of the lease.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        ev = self._wakeups.setdefault(node_id, asyncio.Event())
        while True:
            ev.clear()
            if gone is not None and await gone():
                return []
            jobs = self.take(node_id)
            left = deadline - loop.time()
            if jobs or left <= 0:
                return jobs
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ev.wait(), timeout=min(1.0, left))

    def report(
        self, node_id: str, job_id: str, *, status: str, detail: str, output: str | None
    ) -> tuple[dict[str, Any], bool]:
        """Record a job's result; returns (job, recorded). A repeated report changes nothing."""
        if status not in ("succeeded", "failed"):
            raise ValidationFailed("status must be succeeded or failed", field="status")
        now = self.clock()
        with write(self.engine) as conn:
            row = conn.execute(
                select(agent_jobs).where(agent_jobs.c.id == job_id, agent_jobs.c.node_id == node_id)
            ).first()
            if row is None:
                raise NotFound(f"job {job_id} does not exist for this node", code="job_not_found")
            if row.status in ("succeeded", "failed"):
                return _view(row), False
            conn.execute(
                update(agent_jobs)
                .where(agent_jobs.c.id == job_id)
                .values(
                    status=status,
                    finished_at=now,
                    result={
                        "status": status,
                        "detail": detail[:2000],
                        "output": (output or "")[:8000],
                    },
                )
            )
        return self.get(job_id), True

    # ------------------------------------------------------------ reading

    def get(self, job_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(agent_jobs).where(agent_jobs.c.id == job_id)).first()
        if row is None:
            raise NotFound(f"job {job_id} does not exist", code="job_not_found")
        return _view(row)

    def list(
        self, *, node_id: str | None, status: str | None, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        conds = []
        if node_id is not None:
            conds.append(agent_jobs.c.node_id == node_id)
        if status is not None:
            conds.append(agent_jobs.c.status == status)
        where = and_(*conds) if conds else true()
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(agent_jobs)
                .where(where)
                .order_by(agent_jobs.c.created_at.desc(), agent_jobs.c.id)
                .limit(limit)
                .offset(offset)
            ).all()
            total = conn.execute(select(func.count()).select_from(agent_jobs).where(where))
            count = int(total.scalar_one())
        return [_view(r) for r in rows], count


def _check_suite(suite: str) -> None:
    if suite not in SUITES:
        raise ValidationFailed(
            f"unknown suite {suite!r}; one of {', '.join(SUITES)}",
            code="unknown_suite",
            field="suite",
        )
