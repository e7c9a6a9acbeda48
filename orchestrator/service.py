"""The service layer: the one place rules are created, withdrawn and expired.

REST handlers, the CLI and the policy engine call this; they hold no business logic.
Every change is committed to the store (with its audit entry) before any adapter is
called; the dispatcher then sends it and writes the outcome back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, Connection, Engine, and_, func, select

from adapters.base import AdapterConfig, Health, Registry, require_capability
from orchestrator.cluster import AdapterLeases, Fenced, LeaseKeeper, write, writers
from orchestrator.dispatcher import Dispatcher
from orchestrator.events import EventLog
from orchestrator.hub import AdapterHub, AdapterRecord, reseal_secrets, unsealed_secrets
from orchestrator.lifecycle import HELD, LIVE, State
from orchestrator.quotas import Quotas
from orchestrator.reconcile import Reconciler, ReconcileReport, suspend_off_wire
from orchestrator.rulestore import RuleStore
from orchestrator.session_watch import SessionWatcher
from orchestrator.sessions import SessionTracker
from orchestrator.settings import Settings
from orchestrator.store.audit import AuditLog, VerifyResult, verify
from orchestrator.store.checkpoint import WalCheckpointer
from orchestrator.store.crypto import SecretBox, SecretKeyError
from orchestrator.store.db import make_engine, migrate, secure_dir, sqlite_file
from orchestrator.store.models import rule_events, rules
from orchestrator.views import rule_view
from policies.engine import prepare
from policies.errors import (
    AdapterUnavailable,
    Conflict,
    GuardrailViolation,
    NotFound,
    SluiceError,
    ValidationFailed,
)
from policies.guardrails import GuardrailChecker
from policies.intents import AnyIntent, canonical, key_of
from policies.schema import Policy, load_policy

log = logging.getLogger("sluice.service")

Origin = Literal["manual", "policy", "runbook"]


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def utcnow() -> datetime:
    return datetime.now(UTC)


# What the in-memory indexes and a withdrawal start need to know about a rule.
_HELD_COLUMNS = (
    rules.c.id,
    rules.c.key,
    rules.c.adapter_id,
    rules.c.dry_run,
    rules.c.kind,
    rules.c.state,
)


@dataclass(frozen=True)
class RuleRequest:
    """What a caller asks for; ``adapter`` is an adapter id or name."""

    intent: AnyIntent
    adapter: int | str
    ttl: int | None = None  # None: the policy's default_ttl; 0: no expiry
    reason: str = ""
    origin: Origin = "manual"
    dry_run: bool = False
    explanation: tuple[str, ...] = ()
    incident_id: str | None = None
    actor: str = "system"
    text: str = ""  # canonical(intent) when the caller already has it (policy plans)


class RuleResult:
    """The outcome of one create request; the rule's view is built when first read."""

    def __init__(
        self,
        rule: dict[str, Any] | Callable[[], dict[str, Any]],
        deduplicated: bool = False,
        *,
        brief: tuple[int, str] | None = None,
    ) -> None:
        self._rule = rule
        self.deduplicated = deduplicated
        self._brief = brief  # (rule id, canonical text) without building the view

    @property
    def rule(self) -> dict[str, Any]:
        if callable(self._rule):
            self._rule = self._rule()
        return self._rule

    @property
    def rule_id(self) -> int:
        return self._brief[0] if self._brief is not None else int(self.rule["id"])

    @property
    def text(self) -> str:
        return self._brief[1] if self._brief is not None else str(self.rule["intent"])


@dataclass
class _Plan:
    """A new rule checked and waiting for the batch insert."""

    intent: AnyIntent
    rec: AdapterRecord
    actor: str
    values: dict[str, Any]
    index: list[int] = field(default_factory=list)
    rule_id: int = 0


def _lazy_view(plan: _Plan) -> Callable[[], dict[str, Any]]:
    cache: list[dict[str, Any]] = []

    def build() -> dict[str, Any]:
        if not cache:
            cache.append(rule_view({**plan.values, "id": plan.rule_id}, plan.rec.name, plan.intent))
        return cache[0]

    return build


@dataclass
class _Live:
    """In-memory index of live rules for dedupe: (key, adapter_id, dry_run) -> rule id."""

    by_key: dict[tuple[str, int, bool], int] = field(default_factory=dict)


class Service:
    def __init__(
        self,
        settings: Settings,
        *,
        registry: Registry | None = None,
        policy: Policy | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.clock: Callable[[], datetime] = clock or utcnow
        secure_dir(settings.data_dir)
        self.engine = make_engine(settings.sqlalchemy_url(), checkpoint_thread=True)
        # SQLite: the log is checkpointed beside the event loop, not by its commits
        db_file = sqlite_file(settings.sqlalchemy_url())
        self._checkpointer = WalCheckpointer(db_file) if db_file is not None else None
        self.rule_store = RuleStore()
        self.events = EventLog(self.engine)
        self.sessions = SessionTracker(self.engine, clock=self.clock)
        self.registry = registry or Registry(access=settings.host_access())
        self.box = SecretBox.for_data_dir(settings.data_dir, _secret(settings.secret_key))
        self.hub = AdapterHub(self.engine, self.registry, self.box)
        self.audit = AuditLog.for_data_dir(settings.data_dir, _secret(settings.audit_key))
        self.audit.attach(self.engine)
        self.quotas = Quotas()
        self._live = _Live()
        self._cooldown: dict[tuple[str, str], datetime] = {}
        self.policy = policy or (
            load_policy(settings.policy_dir) if settings.policy_dir else Policy()
        )
        self.allowlist = self.policy.allowlist.prefix_set()
        self.checker = GuardrailChecker(self.policy.guardrails, self.allowlist)
        prepare(self.policy)
        self.dispatcher = Dispatcher(
            self.engine,
            self.hub.live,
            self.hub.name_of,
            batch_size=settings.batch_size,
            retry_base=settings.retry_base,
            retry_max=settings.retry_max,
            max_attempts=settings.max_attempts,
            store=self.rule_store,
            sessions=self.sessions,
            clock=self.clock,
        )
        self.reconciler = Reconciler(
            self.engine, self.hub, self.dispatcher, self.rule_store, self.sessions, self.clock
        )
        self._reconcile_locks: dict[int, asyncio.Lock] = {}
        # speakers' session changes: reconcile at once on up, health on all-down
        self.session_watcher = SessionWatcher(
            self.hub, self.sessions, self.reconcile, self.suspend_off_wire
        )
        self._retiring: set[int] = set()  # policy adapters no longer declared
        self.started = False
        # another instance wrote (PostgreSQL): what memory holds of the store is stale
        writers(self.engine).on_foreign(self.rolled_back)
        # several instances (PostgreSQL): one lease per adapter says which instance drives it
        self.leases: AdapterLeases | None = None
        # adapter id -> the lease token this instance drives it under (leases held)
        self._driving: dict[int, int] = {}
        self._keeper: LeaseKeeper | None = None
        self._lease_engine: Engine | None = None
        self._lead_pending = False  # a lease round's outcome waits for the loop
        self._lead_lock = asyncio.Lock()
        # the adapter rows the lease thread read last, with the hub's change count then
        self._followed: tuple[int, list[Any]] | None = None
        self._followers: set[asyncio.Task[ReconcileReport]] = set()
        if writers(self.engine).shared:
            holder = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
            # the rounds run on a thread of their own with connections of their own: never
            # late because the event loop is busy or the pool is held by request work
            self._lease_engine = make_engine(settings.sqlalchemy_url())
            self.leases = AdapterLeases(self._lease_engine, holder, ttl=settings.lease_seconds)
            self.dispatcher.drives = self.drives
            self.dispatcher.shared = True
            self.dispatcher.fence = self.drives
            self.dispatcher.check = self._check_lease
            self.session_watcher.drives = self.drives

    # ------------------------------------------------------------ start / stop

    async def start(self) -> None:
        migrate(self.engine)
        if self._checkpointer is not None:
            self._checkpointer.start()
        self.audit.prepare(self.engine)
        self.hub.load()
        self._seal_secrets()
        self._sync_policy_adapters()
        self._seed()
        self.dispatcher.start()
        if self.leases is None:
            await self.recover()
        else:
            loop = asyncio.get_running_loop()
            self._keeper = LeaseKeeper(
                self.leases,
                self._stored_adapter_ids,
                lambda: loop.call_soon_threadsafe(self._lead_soon),
            )
            self._keeper.start()
            await self._lead_now()
        self.session_watcher.start()
        self.started = True

    def drives(self, adapter_id: int) -> bool:
        """True when this instance drives the adapter (always, on SQLite): the loop drives
        it under the token of the lease the lease thread holds, and that lease is valid."""
        if self.leases is None:
            return True
        token = self._driving.get(adapter_id)
        return (
            token is not None
            and self.leases.tokens.get(adapter_id) == token
            and self.leases.valid(adapter_id)
        )

    def _check_lease(self, conn: Connection, adapter_id: int) -> None:
        """Inside a write transaction recording what an adapter did: the lease row still
        names this instance with the token the loop drives the adapter under."""
        assert self.leases is not None  # noqa: S101
        token = self._driving.get(adapter_id)
        if token is None:
            raise Fenced(adapter_id, f"adapter {adapter_id} is not driven here: write refused")
        self.leases.check(conn, adapter_id, token)

    @property
    def leading(self) -> bool:
        """True when this instance drives at least one adapter (always, on SQLite)."""
        return self.leases is None or any(self.drives(a) for a in self._driving)

    def driven(self) -> list[int]:
        """The adapters this instance drives now."""
        return sorted(a for a in self._driving if self.drives(a))

    def _lead_soon(self) -> None:
        """(On the loop, called by the lease thread after a round.) Apply its outcome."""
        if self._lead_pending or self._keeper is None:
            return  # one application is queued already: it reads the newest snapshot
        self._lead_pending = True
        asyncio.get_running_loop().create_task(self._lead_once(), name="driver-leases")

    async def _lead_now(self) -> None:
        """Run a lease round now (on the lease thread) and apply its outcome."""
        assert self._keeper is not None  # noqa: S101
        try:
            await asyncio.wrap_future(self._keeper.kick())
        except Exception:
            log.exception("renewing the driver leases")
        await self._lead_once()

    async def _lead_once(self) -> None:
        """Drive each adapter the lease thread won (recover it), stop driving each one it
        lost, then pick up rows other instances wrote for the adapters driven here (a
        short poll of pending and withdrawing rules, after every round)."""
        async with self._lead_lock:
            self._lead_pending = False
            if self._keeper is None:
                return
            try:
                await self._follow_adapters()
            except Exception:
                log.exception("loading the adapters other instances changed")
            try:
                await self._lead_round(self._keeper.snapshot())
            except Exception:
                log.exception("applying a driver lease round")

    def _stored_adapter_ids(self) -> list[int]:
        """(On the lease thread, each round.) The adapters the store holds, whichever
        instance made them: their leases are taken and renewed; the rows are kept for the
        loop's hub to follow (:meth:`_follow_adapters`)."""
        mark = self.hub.changes
        rows = self.hub.stored(self._lease_engine)
        self._followed = (mark, rows)
        return [int(r.id) for r in rows]

    async def _follow_adapters(self) -> None:
        """Load what other instances did to the adapters (created, changed, deleted) into
        this instance's hub, from the rows the lease thread read, so the leases can hand
        any adapter to any instance without a restart. A changed adapter this instance
        drives is reconciled (it may talk to another speaker now)."""
        followed, self._followed = self._followed, None
        if followed is None or followed[0] != self.hub.changes:
            return  # nothing read, or changed here since: the next round reads again
        added, changed, removed = self.hub.follow(followed[1])
        for adapter_id in added + changed + removed:
            how = (
                "created"
                if adapter_id in added
                else "changed"
                if adapter_id in changed
                else "deleted"
            )
            log.info("adapter %s %s through another instance", self.hub.name_of(adapter_id), how)
        await self.hub.close_retired()
        for adapter_id in changed:
            if self.drives(adapter_id):
                task = asyncio.get_running_loop().create_task(
                    self.reconcile(adapter_id, startup=True), name="reconcile-changed"
                )
                self._followers.add(task)
                task.add_done_callback(self._followers.discard)

    async def _lead_round(self, held: dict[int, int]) -> None:
        lost = sorted(a for a, t in self._driving.items() if held.get(a) != t)
        for adapter_id in lost:
            log.warning(
                "no longer driving adapter %s: its lease went to another instance",
                self.hub.name_of(adapter_id),
            )
            del self._driving[adapter_id]
            await self.dispatcher.drop(adapter_id)
        # an adapter whose lease the thread took before this hub loaded it is driven
        # (and recovered) once the hub follows the store
        known = {rec.id for rec in self.hub.records()}
        gained = sorted(a for a, t in held.items() if self._driving.get(a) != t and a in known)
        for adapter_id in gained:
            log.warning(
                "this instance drives adapter %s now (lease token %s)",
                self.hub.name_of(adapter_id),
                held[adapter_id],
            )
            await self.dispatcher.drop(adapter_id)  # re-taken after a lapse: start afresh
            self._driving[adapter_id] = held[adapter_id]
        if gained:
            await self.recover(gained)
        if self._driving:
            self._pick_up()

    def _pick_up(self) -> int:
        """Queue the pending and withdrawing rules of the adapters driven here that are not
        queued yet (any instance may have written them); returns how many were queued."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(rules.c.id, rules.c.state, rules.c.adapter_id).where(
                    rules.c.state.in_([State.PENDING.value, State.WITHDRAWING.value]),
                    rules.c.dry_run.is_(False),
                    rules.c.next_attempt_at.is_(None),
                    rules.c.adapter_id.in_(sorted(self._driving)),
                )
            ).all()
        queued = 0
        for r in rows:
            op: Literal["announce", "withdraw"] = (
                "announce" if r.state == State.PENDING else "withdraw"
            )
            if not self.dispatcher.is_queued(op, r.id):
                queued += self.dispatcher.submit(r.adapter_id, op, [r.id])
        return queued

    async def stop(self) -> None:
        await self.session_watcher.stop()
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            await asyncio.get_running_loop().run_in_executor(None, keeper.stop)
        for task in list(self._followers):
            task.cancel()
        async with self._lead_lock:  # an application under way ends first
            pass
        if self.leases is not None:
            await self.dispatcher.stop()
            self._driving.clear()
            with contextlib.suppress(Exception):
                self.leases.release()
        if self._lease_engine is not None:
            self._lease_engine.dispose()
        await self.dispatcher.stop()
        await self.hub.close_all()
        self.events.close()
        if self._checkpointer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._checkpointer.stop)
        self.engine.dispose()
        if self.audit.anchor is not None:
            self.audit.anchor.close()
        self.started = False

    def _seal_secrets(self) -> None:
        """Encrypt adapter secrets a store from before encryption still holds in clear."""
        known = {r.id: r.secret_keys for r in self.hub.records()}
        try:
            with write(self.engine) as conn:
                if unsealed_secrets(conn, self.box, known):
                    n = reseal_secrets(conn, self.box, known)
                    log.warning("encrypted the secrets of %d adapters stored in clear text", n)
        except SecretKeyError as exc:
            log.error("adapter secrets left as they are: %s", exc.message)  # noqa: TRY400

    def set_policy(self, policy: Policy, *, sync_adapters: bool = True) -> None:
        """Put a validated policy in force (adapters synced, guardrails rebuilt).

        The workspace-wide allowlist feeds the guardrails; node-scoped entries are the
        engine's business (they apply only to signals from that node).
        """
        old = self.policy
        self.policy = policy
        if sync_adapters:
            try:
                self._sync_policy_adapters()
            except Exception:
                self.policy = old
                raise
        self.allowlist = policy.allowlist.prefix_set()
        self.checker = GuardrailChecker(policy.guardrails, self.allowlist)
        prepare(policy)  # warm the engine's per-policy indexes off the signal path

    def _sync_policy_adapters(self) -> None:
        """Put the policy's adapters in place; retire the ones no longer declared.

        A retired adapter's rules are withdrawn at once; the adapter is deleted when the
        withdrawals are confirmed (:meth:`finish_retirements`, run with reconciliation),
        or by an admin with ``force`` if its backend is gone.
        """
        configs = self.hub.policy_configs(self.policy.adapters)
        stale = self.hub.sync_policy(configs)
        self._retiring &= set(stale)
        for adapter_id in stale:
            if adapter_id in self._retiring:
                continue
            name = self.hub.name_of(adapter_id)
            log.warning(
                "adapter %s is no longer declared in the policy; withdrawing its rules and "
                "retiring it",
                name,
            )
            self._retiring.add(adapter_id)
            self._start_retirement(
                adapter_id, "policy", f"adapter {name!r} was removed from the policy files"
            )

    def _seed(self) -> None:
        """Rebuild the in-memory counters and indexes from the store."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(*_HELD_COLUMNS).where(rules.c.state.in_([s.value for s in LIVE]))
            ).all()
            since = self.clock() - timedelta(seconds=self.policy.settings.cooldown_seconds)
            recent = conn.execute(
                select(rules.c.target, rules.c.kind, func.max(rules.c.created_at))
                .where(rules.c.created_at >= since)
                .group_by(rules.c.target, rules.c.kind)
            ).all()
            minute_ago = self.clock() - timedelta(seconds=self.quotas.new_rules.span)
            created = conn.execute(
                select(rules.c.created_at)
                .where(rules.c.created_at > minute_ago, rules.c.dry_run.is_(False))
                .order_by(rules.c.created_at)
            ).all()
        self.quotas = Quotas()
        self._live = _Live()
        # new rules in the last minute, whoever created them, on this process's clock
        now, mono = self.clock(), time.monotonic()
        for (at,) in created:
            stamp = at if at.tzinfo else at.replace(tzinfo=UTC)
            self.quotas.new_rules.add(mono - (now - stamp).total_seconds())
        for r in rows:
            if r.state in HELD:
                self._live.by_key[(r.key, r.adapter_id, bool(r.dry_run))] = r.id
                if not r.dry_run:
                    self.quotas.held += 1
                    if r.kind == "flowspec":
                        self.quotas.flowspec_by_adapter[r.adapter_id] += 1
        for target, kind, at in recent:
            if at is not None:
                stamp = at if at.tzinfo else at.replace(tzinfo=UTC)
                self._cooldown[(target, kind)] = stamp

    # ------------------------------------------------------------ create

    async def create_rule(self, req: RuleRequest) -> RuleResult:
        result = self.create_rules_sync([req])[0]
        if isinstance(result, SluiceError):
            raise result
        return result

    async def create_rules(self, reqs: Sequence[RuleRequest]) -> list[RuleResult | SluiceError]:
        return self.create_rules_sync(reqs)

    def create_rules_sync(self, reqs: Sequence[RuleRequest]) -> list[RuleResult | SluiceError]:
        """Validate, store and queue rules in one transaction; per-request results."""
        try:
            with write(self.engine) as conn:
                results, after = self.create_rules_in(conn, reqs, self.clock())
        except Exception:
            self.rolled_back()
            raise
        after()
        return results

    def rolled_back(self) -> None:
        """A transaction that wrote rules failed: rebuild what memory holds of the store."""
        self.audit.forget_head()
        self._seed()

    def create_rules_in(
        self, conn: Connection, reqs: Sequence[RuleRequest], now: datetime
    ) -> tuple[list[RuleResult | SluiceError], Callable[[], None]]:
        """Check and insert rules in the caller's transaction.

        Each request is checked on its own (a refusal does not stop the others); the new
        rules are inserted with one bulk statement. Returns the per-request results and
        what to run once the transaction committed (index the rules, queue them); on a
        rollback call :meth:`rolled_back` instead.
        """
        mono = time.monotonic()
        results: list[RuleResult | SluiceError | None] = [None] * len(reqs)
        plans: list[_Plan] = []
        seen: dict[tuple[str, int, bool], _Plan] = {}
        sends: list[tuple[int, int]] = []
        for i, req in enumerate(reqs):
            try:
                outcome = self._plan_one(conn, req, now=now, mono=mono, seen=seen, sends=sends)
            except SluiceError as exc:
                results[i] = exc
                continue
            if isinstance(outcome, RuleResult):
                results[i] = outcome
            else:
                outcome.index.append(i)
                if len(outcome.index) == 1:
                    plans.append(outcome)
        if plans:
            self._insert_plans(conn, plans, now)
        for plan in plans:
            view = _lazy_view(plan)
            for n, i in enumerate(plan.index):
                results[i] = RuleResult(
                    view, deduplicated=n > 0, brief=(plan.rule_id, plan.values["intent"])
                )

        def after() -> None:
            self._queue_created(plans)
            for adapter_id, rid in sends:
                self.dispatcher.submit(adapter_id, "announce", [rid])

        return [r for r in results if r is not None], after

    def _queue_created(self, plans: list[_Plan]) -> None:
        to_send: dict[int, list[int]] = {}
        for plan in plans:
            rid = plan.rule_id
            self._live.by_key[(plan.values["key"], plan.rec.id, plan.values["dry_run"])] = rid
            if not plan.values["dry_run"]:
                self.dispatcher.intents[rid] = plan.intent
                to_send.setdefault(plan.rec.id, []).append(rid)
        for adapter_id, ids in to_send.items():
            self.dispatcher.submit(adapter_id, "announce", ids)

    def _insert_plans(self, conn: Connection, plans: list[_Plan], now: datetime) -> None:
        # RETURNING without a parameter order lets SQLite insert the batch in one statement;
        # (key, adapter_id, dry_run) is unique within a batch, so rows map back by it.
        by_ident = {(p.values["key"], p.rec.id, p.values["dry_run"]): p for p in plans}
        returned = self.rule_store.insert(conn, [p.values for p in plans], now)
        for row in returned:
            by_ident[(row.key, row.adapter_id, bool(row.dry_run))].rule_id = int(row.id)
        entries = [
            {
                "rule": p.rule_id,
                "intent": p.values["intent"],
                "adapter": p.rec.name,
                "ttl": p.values["ttl"],
                "origin": p.values["origin"],
                "reason": p.values["reason"],
                "dry_run": p.values["dry_run"],
            }
            for p in plans
        ]
        if len(plans) == 1:
            self.audit.append(
                conn,
                actor=plans[0].actor,
                action="rule.create",
                target=f"rule:{plans[0].rule_id}",
                detail=entries[0],
                at=now,
            )
        else:  # one entry for a batch (a policy decision, a runbook step, a bulk import)
            actors = sorted({p.actor for p in plans})
            self.audit.append(
                conn,
                actor=",".join(actors),
                action="rule.create",
                target=f"{len(plans)} rules",
                detail={"rules": entries},
                at=now,
            )

    def _adapter_for(self, ref: int | str) -> AdapterRecord:
        try:
            return self.hub.resolve(ref)
        except NotFound as exc:
            raise ValidationFailed(
                exc.message, code="adapter_not_found", field="adapter_id"
            ) from None

    def _plan_one(
        self,
        conn: Connection,
        req: RuleRequest,
        *,
        now: datetime,
        mono: float,
        seen: dict[tuple[str, int, bool], _Plan],
        sends: list[tuple[int, int]],
    ) -> RuleResult | _Plan:
        """Check one request; an existing rule is extended now, a new one is planned."""
        intent = req.intent
        rec = self._adapter_for(req.adapter)
        adapter = self.hub.live(rec.id)
        if adapter is None:
            raise AdapterUnavailable(
                f"adapter {rec.name!r} cannot be used: {rec.error or 'not built'}",
                field="adapter_id",
            )
        require_capability(adapter, intent)
        ttl = self.policy.settings.default_ttl if req.ttl is None else req.ttl
        if ttl < 0:
            raise ValidationFailed(
                "ttl must be 0 (no expiry) or a positive number of seconds",
                code="invalid_ttl",
                field="ttl",
            )
        if ttl > self.settings.max_ttl:
            raise ValidationFailed(
                f"ttl {ttl} s exceeds the maximum of {self.settings.max_ttl} s; "
                "use 0 for a rule that stays until withdrawn",
                code="invalid_ttl",
                field="ttl",
            )
        self.checker.check(intent)
        dry_run = req.dry_run or self.policy.settings.dry_run
        text = req.text or canonical(intent)
        key = key_of(text)
        expires = now + timedelta(seconds=ttl) if ttl else None

        existing_id = self._live.by_key.get((key, rec.id, dry_run))
        if existing_id is not None:
            return self._extend(conn, existing_id, req, expires=expires, now=now, sends=sends)
        planned = seen.get((key, rec.id, dry_run))
        if planned is not None:  # the same rule twice in one batch
            return planned

        target = str(intent.target)
        # Policy rules get their cooldown from the engine, which knows escalation from
        # flapping; here it holds runbook rules (and manual ones when configured).
        automatic = req.origin == "runbook"
        cooldown = self.policy.settings.cooldown_seconds
        if cooldown and (automatic or self.policy.settings.cooldown_applies_to_manual):
            last = self._cooldown.get((target, intent.kind))
            if last is not None and (now - last).total_seconds() < cooldown:
                wait = cooldown - (now - last).total_seconds()
                raise GuardrailViolation(
                    f"a {intent.kind} rule for {target} was created "
                    f"{(now - last).total_seconds():.0f} s ago; cooldown is {cooldown} s "
                    f"(retry in {wait:.0f} s)",
                    code="cooldown_active",
                    field="target_ip",
                )
        if not dry_run:
            self.quotas.check(self.policy.guardrails, intent.kind, rec.id, mono)
            self.quotas.added(intent.kind, rec.id, mono)
        self._cooldown[(target, intent.kind)] = now
        plan = _Plan(
            intent=intent,
            rec=rec,
            actor=req.actor,
            values={
                "key": key,
                "kind": intent.kind,
                "target": target,
                "intent": text,
                "adapter_id": rec.id,
                "state": State.ACTIVE if dry_run else State.PENDING,
                "end_state": None,
                "dry_run": dry_run,
                "origin": req.origin,
                "reason": req.reason,
                "explanation": list(req.explanation) or None,
                "incident_id": req.incident_id,
                "created_by": req.actor,
                "ttl": ttl,
                "created_at": now,
                "updated_at": now,
                "expires_at": expires,
                "activated_at": now if dry_run else None,
                "ended_at": None,
                "error": None,
                "attempts": 0,
                "next_attempt_at": None,
            },
        )
        seen[(key, rec.id, dry_run)] = plan
        return plan

    def _extend(
        self,
        conn: Connection,
        rule_id: int,
        req: RuleRequest,
        *,
        expires: datetime | None,
        now: datetime,
        sends: list[tuple[int, int]],
    ) -> RuleResult:
        row = conn.execute(select(rules).where(rules.c.id == rule_id)).one()
        old = row.expires_at
        new_exp = None if (old is None or expires is None) else max(old, expires)
        values: dict[str, Any] = {"expires_at": new_exp, "updated_at": now}
        if new_exp != old:
            values["ttl"] = (
                0 if new_exp is None else int((new_exp - row.created_at).total_seconds())
            )
        retry = row.state == State.FAILED
        detail = (
            f"asked again by {req.actor} ({req.origin}); expiry "
            f"{old.isoformat() if old else 'none'} -> "
            f"{new_exp.isoformat() if new_exp else 'none'}"
        )
        self.rule_store.extend(conn, row, values, retry=retry, detail=detail, now=now)
        if retry:
            values.update(state=State.PENDING, next_attempt_at=None, attempts=0)
        self.audit.append(
            conn,
            actor=req.actor,
            action="rule.extend",
            target=f"rule:{rule_id}",
            detail={"expires_at": new_exp.isoformat() if new_exp else None, "reason": req.reason},
            at=now,
        )
        if retry:
            sends.append((row.adapter_id, rule_id))
        merged = {**row._asdict(), **values}
        return RuleResult(rule_view(merged, self.hub.name_of(row.adapter_id)), True)

    # ------------------------------------------------------------ withdraw / expire

    def _begin_withdraw(
        self,
        conn: Connection,
        rows: Sequence[Any],
        end_state: State,
        *,
        now: datetime,
        why: str | Callable[[Any], str],
    ) -> list[int]:
        """Move held rules to withdrawing (dry-run ones straight to their end).

        Returns the ids whose withdrawal must be sent.
        """
        send: list[Any] = []
        ended: list[Any] = []
        for row in rows:
            self._live.by_key.pop((row.key, row.adapter_id, bool(row.dry_run)), None)
            if row.dry_run:
                ended.append(row)
            else:
                send.append(row)
        store = self.rule_store
        by_id = {int(r.id): r for r in rows}
        detail = (lambda rid: why(by_id[rid])) if callable(why) else why
        store.move_rows(
            conn,
            [*send, *ended],
            to=State.WITHDRAWING,
            now=now,
            event="withdrawing",
            why=detail,
            values={"end_state": end_state, "attempts": 0, "next_attempt_at": None},
        )
        for row in send:
            self.quotas.released(row.kind, row.adapter_id)
        store.move(
            conn,
            [r.id for r in ended],
            frm=State.WITHDRAWING,
            to=end_state,
            now=now,
            event=str(end_state),
            why="dry-run: nothing to send",
            values={"ended_at": now},
        )
        return [int(r.id) for r in send]

    async def withdraw_rule(self, rule_id: int, actor: str, reason: str = "") -> dict[str, Any]:
        now = self.clock()
        with write(self.engine) as conn:
            row = conn.execute(select(rules).where(rules.c.id == rule_id)).first()
            if row is None:
                raise NotFound(f"rule {rule_id} does not exist", code="rule_not_found")
            if row.state == State.WITHDRAWING:
                send = not self.dispatcher.is_queued("withdraw", rule_id)
            elif row.state in (State.WITHDRAWN, State.EXPIRED):
                raise Conflict(f"rule {rule_id} is already {row.state}", code="rule_not_active")
            else:
                send = bool(
                    self._begin_withdraw(
                        conn,
                        [row],
                        State.WITHDRAWN,
                        now=now,
                        why=f"withdrawn by {actor}" + (f": {reason}" if reason else ""),
                    )
                )
                self.audit.append(
                    conn,
                    actor=actor,
                    action="rule.withdraw",
                    target=f"rule:{rule_id}",
                    detail={"reason": reason},
                    at=now,
                )
        if send:
            self.dispatcher.submit(row.adapter_id, "withdraw", [rule_id])
            if self.settings.api_wait_seconds:
                await self.dispatcher.wait_for(rule_id, self.settings.api_wait_seconds)
        return self.get_rule(rule_id)

    def withdraw_keys(self, keys: Sequence[str], *, actor: str, reason: str) -> list[int]:
        """Start withdrawing the held policy rules with these intent keys; returns rule ids."""
        try:
            with write(self.engine) as conn:
                ids, after = self.withdraw_keys_in(
                    conn, keys, actor=actor, reason=reason, now=self.clock()
                )
        except Exception:
            self.rolled_back()
            raise
        after()
        return ids

    def withdraw_keys_in(
        self, conn: Connection, keys: Sequence[str], *, actor: str, reason: str, now: datetime
    ) -> tuple[list[int], Callable[[], None]]:
        """:meth:`withdraw_keys` in the caller's transaction; run ``after`` once committed.

        A key names one intent (destination included), so no target filter is needed.
        """
        cond = [
            rules.c.key.in_(list(keys)),
            rules.c.state.in_([s.value for s in HELD]),
            rules.c.origin == "policy",
        ]
        rows = conn.execute(select(*_HELD_COLUMNS).where(and_(*cond))).all()
        return self._withdraw_rows(conn, rows, actor=actor, reason=reason, now=now)

    def withdraw_incident_in(
        self, conn: Connection, incident_id: str, *, actor: str, reason: str, now: datetime
    ) -> tuple[list[int], Callable[[], None]]:
        """Start withdrawing every held rule of an incident, in the caller's transaction."""
        rows = conn.execute(
            select(*_HELD_COLUMNS).where(
                and_(
                    rules.c.incident_id == incident_id,
                    rules.c.state.in_([s.value for s in HELD]),
                )
            )
        ).all()
        return self._withdraw_rows(conn, rows, actor=actor, reason=reason, now=now)

    def withdraw_rows_in(
        self, conn: Connection, rows: Sequence[Any], *, actor: str, reason: str, now: datetime
    ) -> tuple[list[int], Callable[[], None]]:
        """Start withdrawing held rule rows (with the columns of ``_HELD_COLUMNS``) that the
        caller selected, in its transaction; run ``after`` once committed."""
        return self._withdraw_rows(conn, rows, actor=actor, reason=reason, now=now)

    def _withdraw_rows(
        self, conn: Connection, rows: Sequence[Any], *, actor: str, reason: str, now: datetime
    ) -> tuple[list[int], Callable[[], None]]:
        if not rows:
            return [], lambda: None
        send = set(
            self._begin_withdraw(
                conn, rows, State.WITHDRAWN, now=now, why=f"withdrawn by {actor}: {reason}"
            )
        )
        self.audit.append(
            conn,
            actor=actor,
            action="rule.withdraw",
            target=f"{len(rows)} rules",
            detail={"rules": [r.id for r in rows], "reason": reason},
            at=now,
        )
        by_adapter: dict[int, list[int]] = {}
        for r in rows:
            if r.id in send:
                by_adapter.setdefault(r.adapter_id, []).append(r.id)

        def after() -> None:
            # a rule created earlier in the same transaction (a batch of signals that
            # escalates) was indexed by its creation's ``after``: not live any more
            for r in rows:
                ident = (r.key, r.adapter_id, bool(r.dry_run))
                if self._live.by_key.get(ident) == r.id:
                    del self._live.by_key[ident]
            for adapter_id, ids in by_adapter.items():
                self.dispatcher.submit(adapter_id, "withdraw", ids)

        return [r.id for r in rows], after

    async def expire_due(self, limit: int | None = None) -> int:
        """Start withdrawing every held rule whose TTL has passed."""
        now = self.clock()
        limit = limit or self.settings.batch_size * 5
        to_send: dict[int, list[int]] = {}
        with write(self.engine) as conn:
            rows = conn.execute(
                select(*_HELD_COLUMNS, rules.c.ttl)
                .where(
                    and_(
                        rules.c.state.in_([s.value for s in HELD]),
                        rules.c.expires_at.is_not(None),
                        rules.c.expires_at <= now,
                    )
                )
                .order_by(rules.c.expires_at)
                .limit(limit)
            ).all()
            sent = set(
                self._begin_withdraw(
                    conn, rows, State.EXPIRED, now=now, why=lambda r: f"TTL of {r.ttl} s expired"
                )
            )
            for row in rows:
                if row.id in sent:
                    to_send.setdefault(row.adapter_id, []).append(row.id)
            if rows:
                self.audit.append(
                    conn,
                    actor="system",
                    action="rule.expire",
                    target=f"{len(rows)} rules",
                    detail={"rules": [r.id for r in rows]},
                    at=now,
                )
        for adapter_id, ids in to_send.items():
            self.dispatcher.submit(adapter_id, "withdraw", ids)
        return len(rows)

    async def retry_due(self) -> int:
        """Re-send failed announces and withdrawals whose backoff has passed."""
        now = self.clock()
        with write(self.engine) as conn:
            rows = conn.execute(
                select(rules.c.id, rules.c.state, rules.c.adapter_id)
                .where(
                    and_(
                        rules.c.state.in_([State.FAILED.value, State.WITHDRAWING.value]),
                        rules.c.next_attempt_at.is_not(None),
                        rules.c.next_attempt_at <= now,
                    )
                )
                .limit(self.settings.batch_size * 5)
            ).all()
            self.rule_store.move(
                conn,
                [r.id for r in rows if r.state == State.FAILED],
                frm=State.FAILED,
                to=State.PENDING,
                now=now,
                event="retry",
                values={"next_attempt_at": None},
            )
            self.rule_store.clear_retry(conn, [r.id for r in rows if r.state == State.WITHDRAWING])
        for r in rows:
            if r.state == State.FAILED:
                self.dispatcher.submit(r.adapter_id, "announce", [r.id])
            else:
                self.dispatcher.submit(r.adapter_id, "withdraw", [r.id])
        return len(rows)

    # ------------------------------------------------------------ recovery / reconcile

    async def recover(self, adapter_ids: Collection[int] | None = None) -> None:
        """After a start (or taking adapters over): expire overdue rules, resume
        withdrawals, reconcile the rest; of ``adapter_ids`` only when given."""
        expired = await self.expire_due(limit=10**9)
        if expired:
            log.info("withdrawing %d rules that expired while the service was down", expired)
        cond = [rules.c.state == State.WITHDRAWING, rules.c.dry_run.is_(False)]
        if adapter_ids is not None:
            cond.append(rules.c.adapter_id.in_(sorted(adapter_ids)))
        with self.engine.connect() as conn:
            rows = conn.execute(select(rules.c.id, rules.c.adapter_id).where(and_(*cond))).all()
        by_adapter: dict[int, list[int]] = {}
        for r in rows:
            by_adapter.setdefault(r.adapter_id, []).append(r.id)
        for adapter_id, ids in by_adapter.items():
            self.dispatcher.submit(adapter_id, "withdraw", ids)
        for rec in self.hub.records():
            if adapter_ids is None or rec.id in adapter_ids:
                await self.reconcile(rec.id, startup=True)

    async def reconcile(self, adapter_id: int, *, startup: bool = False) -> ReconcileReport:
        lock = self._reconcile_locks.setdefault(adapter_id, asyncio.Lock())
        async with lock:
            return await self._reconcile(adapter_id, startup)

    async def _reconcile(self, adapter_id: int, startup: bool) -> ReconcileReport:
        if not self.drives(adapter_id):
            report = ReconcileReport(adapter_id=adapter_id, readback=False)
            report.error = "driven by another instance (its lease holder reconciles it)"
            return report
        try:
            return await self.reconciler.run(adapter_id, startup=startup)
        except Fenced as exc:  # taken over while reconciling
            report = ReconcileReport(adapter_id=adapter_id, readback=False)
            report.error = str(exc)
            return report

    async def suspend_off_wire(self, adapter_id: int) -> int:
        """A speaker with no session up: its active rules become suspended (see reconcile)."""
        return await suspend_off_wire(self.reconciler, adapter_id)

    async def reconcile_all(self) -> list[ReconcileReport]:
        if not self.leading:
            return []  # the lease holders reconcile the speakers
        reports = [
            await self.reconcile(rec.id) for rec in self.hub.records() if self.drives(rec.id)
        ]
        if self.finish_retirements():
            await self.hub.close_retired()
        return reports

    # ------------------------------------------------------------ queries

    def get_rule(self, rule_id: int, *, events: bool = True) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(rules).where(rules.c.id == rule_id)).first()
            if row is None:
                raise NotFound(f"rule {rule_id} does not exist", code="rule_not_found")
            view = self._wire(rule_view(row._asdict(), self.hub.name_of(row.adapter_id)))
            if events:
                evs = conn.execute(
                    select(rule_events)
                    .where(rule_events.c.rule_id == rule_id)
                    .order_by(rule_events.c.id)
                ).all()
                view["events"] = [
                    {"at": e.at.isoformat(), "event": e.event, "detail": e.detail} for e in evs
                ]
        return view

    def list_active(
        self,
        *,
        adapter_id: int | None = None,
        intent_type: str | None = None,
        state: str | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """Live rules (``state``: one live state only, e.g. ``suspended``)."""
        cond: list[ColumnElement[bool]] = [rules.c.state.in_([s.value for s in LIVE])]
        if state is not None:
            if state not in {s.value for s in LIVE}:
                raise ValidationFailed(
                    f"state must be one of {', '.join(sorted(s.value for s in LIVE))} "
                    f"(live rules; ended ones are in the history), not {state!r}",
                    field="state",
                )
            cond.append(rules.c.state == state)
        if adapter_id is not None:
            cond.append(rules.c.adapter_id == adapter_id)
        if intent_type is not None:
            cond.append(rules.c.kind == intent_type)
        with self.engine.connect() as conn:
            total = conn.execute(
                select(func.count()).select_from(rules).where(and_(*cond))
            ).scalar_one()
            rows = conn.execute(
                select(rules).where(and_(*cond)).order_by(rules.c.id).limit(limit).offset(offset)
            ).all()
        views = [self._wire(rule_view(r._asdict(), self.hub.name_of(r.adapter_id))) for r in rows]
        return views, int(total)

    def _wire(self, view: dict[str, Any]) -> dict[str, Any]:
        """``on_the_wire``: an active rule on a speaker whose sessions are all down is kept
        (and sent again when one comes up) but reaches no peer; None where not applicable.
        A ``suspended`` rule is on no wire by definition (its speaker had no session up)."""
        view["on_the_wire"] = None
        if view["state"] == State.SUSPENDED:
            view["on_the_wire"] = False
            seen = self.sessions.get(view["adapter_id"])
            listed = ", ".join(f"{p} {s}" for p, s in sorted((seen.states if seen else {}).items()))
            view["off_the_wire"] = f"no BGP session established ({listed or 'none seen'})"
            return view
        if view["state"] != "active" or view["dry_run"]:
            return view
        seen = self.sessions.get(view["adapter_id"])
        if seen is None or not seen.states:
            return view
        view["on_the_wire"] = seen.up
        if not seen.up:
            listed = ", ".join(f"{p} {s}" for p, s in sorted(seen.states.items()))
            view["off_the_wire"] = f"no BGP session established ({listed})"
        return view

    def history(self, *, limit: int = 100, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(rules)).scalar_one()
            rows = conn.execute(
                select(rules).order_by(rules.c.id.desc()).limit(limit).offset(offset)
            ).all()
        return [rule_view(r._asdict(), self.hub.name_of(r.adapter_id)) for r in rows], int(total)

    def state_counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(rules.c.state, func.count()).group_by(rules.c.state)).all()
        return {str(s): int(n) for s, n in rows}

    # ------------------------------------------------------------ adapters

    async def upsert_adapter(
        self, config: AdapterConfig, *, adapter_id: int | None, actor: str
    ) -> tuple[dict[str, Any], bool]:

        def audit(conn: Connection, rid: int, created: bool, public: dict[str, Any]) -> None:
            self.audit.append(  # in the adapter's own transaction
                conn,
                actor=actor,
                action="adapter.create" if created else "adapter.update",
                target=f"adapter:{rid}",
                detail={
                    "name": config.name,
                    "adapter_type": config.adapter_type,
                    "endpoint": config.endpoint,
                    "config": public,
                    "auth_token": "set" if config.auth_token else "unchanged",
                },
            )

        rec, created = self.hub.upsert(config, adapter_id=adapter_id, on_write=audit)
        await self.hub.close_retired()
        if created and self._keeper is not None:
            await self._lead_now()  # a lease for the new adapter now, not at the next round
        if not created:
            # a changed adapter may talk to another speaker: make it hold what it should
            asyncio.get_running_loop().create_task(self.reconcile(rec.id, startup=True))
        return rec.to_api(), created

    def _withdrawing_ids(self, adapter_id: int) -> list[int]:
        """Rules of the adapter whose withdrawal is not confirmed yet."""
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(rules.c.id).where(
                        and_(rules.c.adapter_id == adapter_id, rules.c.state == State.WITHDRAWING)
                    )
                ).scalars()
            )

    async def delete_adapter(
        self, adapter_id: int, actor: str, *, force: bool = False
    ) -> dict[str, Any]:
        """Withdraw an adapter's rules and delete it.

        Without ``force`` the adapter is kept (``withdraw_pending``) while any withdrawal
        is unconfirmed. With ``force`` (an admin retiring an adapter whose backend is gone
        for good) the rules whose withdrawal was not confirmed end ``withdrawn`` with that
        reason, in the transaction that writes the audit entry and retires the adapter.
        A policy adapter can be deleted only once it is no longer declared.
        """
        rec = self.hub.get(adapter_id)
        if rec.source == "policy" and adapter_id not in self._retiring:
            from policies.errors import ReadOnly

            raise ReadOnly(
                f"adapter {rec.name!r} is declared in the policy directory; remove it there"
            )
        ids = self._start_retirement(adapter_id, actor, f"adapter {rec.name!r} deleted by {actor}")
        deadline = time.monotonic() + max(self.settings.api_wait_seconds, 1.0)
        pending = self._withdrawing_ids(adapter_id)
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            pending = self._withdrawing_ids(adapter_id)
        if pending and not force:
            raise Conflict(
                f"{len(pending)} rules of adapter {rec.name!r} are still being withdrawn "
                f"(rule ids {pending[:10]}); the adapter is kept until they are gone - "
                "check its health and try again, or retire it with force=true (admin) "
                "if its backend is gone for good",
                code="withdraw_pending",
            )
        unconfirmed = self._retire(adapter_id, actor, force=force)
        await self.hub.close_retired()
        return {
            "id": adapter_id,
            "name": rec.name,
            "withdrawn_rules": ids,
            "forced": force,
            "unconfirmed_rules": unconfirmed,
        }

    def _start_retirement(self, adapter_id: int, actor: str, why: str) -> list[int]:
        """Begin withdrawing every held rule of the adapter (audited); returns their ids."""
        now = self.clock()
        try:
            with write(self.engine) as conn:
                rows = conn.execute(
                    select(rules).where(
                        and_(
                            rules.c.adapter_id == adapter_id,
                            rules.c.state.in_([s.value for s in HELD]),
                        )
                    )
                ).all()
                ids = self._begin_withdraw(conn, rows, State.WITHDRAWN, now=now, why=why)
                if rows or actor != "policy":  # a restart finds nothing new to say
                    self.audit.append(
                        conn,
                        actor=actor,
                        action="adapter.withdraw_rules",
                        target=f"adapter:{adapter_id}",
                        detail={"rules": ids, "reason": why},
                        at=now,
                    )
        except Exception:
            self.rolled_back()
            raise
        self.dispatcher.submit(adapter_id, "withdraw", ids)
        return ids

    def _retire(self, adapter_id: int, actor: str, *, force: bool) -> list[int]:
        """Delete the adapter; with ``force`` end its unconfirmed withdrawals first.

        Returns the ids of the rules ended without a confirmed withdrawal.
        """
        rec = self.hub.get(adapter_id)
        now = self.clock()
        unconfirmed: list[int] = []
        try:
            with write(self.engine) as conn:
                if force:
                    rows = conn.execute(
                        select(rules.c.id, rules.c.state).where(
                            and_(
                                rules.c.adapter_id == adapter_id,
                                rules.c.state == State.WITHDRAWING,
                            )
                        )
                    ).all()
                    unconfirmed = self.rule_store.move_rows(
                        conn,
                        rows,
                        to=State.WITHDRAWN,
                        now=now,
                        event="withdrawn",
                        why=f"withdrawal not confirmed: adapter {rec.name!r} retired by "
                        f"{actor} with force (its backend is gone)",
                        values={
                            "end_state": State.WITHDRAWN,
                            "ended_at": now,
                            "next_attempt_at": None,
                            "error": "withdrawal not confirmed (adapter retired with force)",
                        },
                    )
                self.audit.append(
                    conn,
                    actor=actor,
                    action="adapter.delete",
                    target=f"adapter:{adapter_id}",
                    detail={
                        "name": rec.name,
                        "forced": force,
                        "unconfirmed_rules": sorted(unconfirmed),
                    },
                    at=now,
                )
                self.hub.mark_deleted(adapter_id, conn)
        except Exception:
            self.audit.forget_head()
            self.hub.load()
            raise
        for rid in unconfirmed:
            self.dispatcher.intents.pop(rid, None)
        self._retiring.discard(adapter_id)
        return sorted(unconfirmed)

    def finish_retirements(self) -> list[int]:
        """Delete adapters removed from the policy once their withdrawals are confirmed."""
        done = []
        for adapter_id in sorted(self._retiring):
            if adapter_id not in {r.id for r in self.hub.records()}:
                self._retiring.discard(adapter_id)
            elif not self._withdrawing_ids(adapter_id):
                self._retire(adapter_id, "policy", force=False)
                done.append(adapter_id)
        return done

    async def test_adapter(self, adapter_id: int) -> dict[str, Any]:
        rec = self.hub.get(adapter_id)
        adapter = self.hub.live(adapter_id)
        if adapter is None:
            health = Health(False, None, rec.error or "adapter could not be built")
        else:
            try:
                health = await asyncio.wait_for(adapter.check(), timeout=15)
            except TimeoutError:
                health = Health(False, None, "no answer within 15 s")
            except Exception as exc:
                health = Health(False, None, f"check failed: {exc}")
        self.hub.record_health(adapter_id, health)
        if health.sessions:  # a failed check says nothing about the sessions
            self.sessions.observe(adapter_id, health.sessions)
        return {"adapter_id": adapter_id, **health.to_dict()}

    # ------------------------------------------------------------ audit

    def verify_audit(self) -> VerifyResult:
        with self.engine.connect() as conn:
            return verify(conn, self.audit.key, self.audit.anchor)
