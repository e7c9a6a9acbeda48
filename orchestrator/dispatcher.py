"""The dispatcher: sends committed rule changes to adapters and writes the outcomes back.

One worker per adapter drains an ordered queue of operations, so an announce and a later
withdrawal of the same rule reach the backend in that order. Consecutive operations of
one kind are sent as one batch. Every outcome is written back in one transaction per
batch, guarded by the state the rule must still be in (a late "announced" answer for a
rule an operator has since withdrawn changes nothing).

Operations:

* ``announce``   pending -> active | failed (retry scheduled with backoff when it helps)
* ``reannounce`` re-send an active or suspended rule the backend lost (reconciliation); a
  suspended rule becomes active when the speaker takes it with a session up; on failure
  the rule becomes failed with a retry, so it is announced again as soon as it can
* ``withdraw``   withdrawing -> withdrawn | expired; on failure it stays withdrawing and is
  retried without limit
* ``orphan``     withdraw an intent the backend holds but the store has ended
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from prometheus_client import Counter, Histogram
from sqlalchemy import Connection, Engine, select

from adapters.base import Adapter, BgpSpeaker, LargeBatches, Outcome, RuleRef
from orchestrator.cluster import Fenced, write
from orchestrator.lifecycle import State, backoff
from orchestrator.rulestore import Failure, RuleStore
from orchestrator.sessions import SessionTracker, peer_key
from orchestrator.store.models import rules
from policies.intents import AnyIntent, parse_canonical

log = logging.getLogger("sluice.dispatcher")

Op = Literal["announce", "reannounce", "withdraw", "orphan"]

OPS_TOTAL = Counter(
    "sluice_adapter_operations_total",
    "Rule operations sent to adapters, by outcome",
    ["adapter", "op", "result"],
)
BATCH_SECONDS = Histogram(
    "sluice_adapter_batch_seconds", "Time an adapter took for one batch", ["adapter", "op"]
)


@dataclass
class Job:
    op: Op
    rule_id: int
    ref: RuleRef | None = None  # given for orphans (no live rule to load)


POLL_OUTCOME_S = 0.1  # how often a waiter looks for an outcome another instance writes


@dataclass
class _Lane:
    queue: asyncio.Queue[Job] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    carry: Job | None = None


def utcnow() -> datetime:
    return datetime.now(UTC)


class Dispatcher:
    def __init__(
        self,
        engine: Engine,
        adapter_for: Callable[[int], Adapter | None],
        adapter_name: Callable[[int], str],
        *,
        batch_size: int = 1000,
        retry_base: float = 1.0,
        retry_max: float = 60.0,
        max_attempts: int = 8,
        store: RuleStore | None = None,
        sessions: SessionTracker | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.engine = engine
        self.store = store or RuleStore()
        self.sessions = sessions or SessionTracker(engine)
        self.clock = clock or utcnow
        self.adapter_for = adapter_for
        self.adapter_name = adapter_name
        self.batch_size = batch_size
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.max_attempts = max_attempts
        self._lanes: dict[int, _Lane] = {}
        self._queued: set[tuple[Op, int]] = set()
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        self.intents: dict[int, AnyIntent] = {}  # rule id -> intent, for live rules
        self._running = False
        # several instances (orchestrator/cluster.py): only an adapter's lease holder
        # sends to it. ``drives`` says whether jobs for an adapter are queued at all,
        # ``fence`` is checked before every send, ``check`` inside the transaction that
        # records the outcomes (it raises cluster.Fenced when another instance took over)
        self.drives: Callable[[int], bool] = lambda _adapter_id: True
        self.fence: Callable[[int], bool] = lambda _adapter_id: True
        self.check: Callable[[Connection, int], None] = lambda _conn, _adapter_id: None
        self.shared = False  # set with ``drives``: outcomes may be written by another instance

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._running = True

    async def stop(self) -> None:
        self._running = False
        for lane in self._lanes.values():
            if lane.task is not None:
                lane.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lane.task
        self._lanes.clear()
        self._queued.clear()

    async def drop(self, adapter_id: int) -> None:
        """Stop driving one adapter (its lease went to another instance): its queued jobs
        are forgotten, the store keeps the rows for the new holder."""
        lane = self._lanes.pop(adapter_id, None)
        if lane is None:
            return
        if lane.task is not None:
            lane.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lane.task
        jobs = [lane.carry] if lane.carry is not None else []
        while not lane.queue.empty():
            jobs.append(lane.queue.get_nowait())
        for job in jobs:
            self._queued.discard((job.op, job.rule_id))
            self._wake(job.rule_id)

    @contextmanager
    def writing(self, adapter_id: int) -> Iterator[Connection]:
        """A write transaction recording what ``adapter_id`` did, fenced by its lease."""
        with write(self.engine) as conn:
            self.check(conn, adapter_id)
            yield conn

    def submit(self, adapter_id: int, op: Op, rule_ids: Iterable[int]) -> int:
        """Queue operations; returns how many were new (not already queued)."""
        if not self.drives(adapter_id):
            return 0  # the adapter's lease holder picks the rows up from the store
        jobs = []
        for rid in rule_ids:
            if (op, rid) not in self._queued:
                self._queued.add((op, rid))
                jobs.append(Job(op, rid))
        self._enqueue(adapter_id, jobs)
        return len(jobs)

    def submit_orphan(self, adapter_id: int, ref: RuleRef) -> None:
        self._enqueue(adapter_id, [Job("orphan", ref.rule_id, ref)])

    def _enqueue(self, adapter_id: int, jobs: Iterable[Job]) -> None:
        """Put jobs on the adapter's lane and make sure its worker runs."""
        lane = self._lanes.setdefault(adapter_id, _Lane())
        for job in jobs:
            lane.queue.put_nowait(job)
        if self._running and (lane.task is None or lane.task.done()):
            lane.task = asyncio.get_running_loop().create_task(
                self._work(adapter_id, lane), name=f"dispatch-{adapter_id}"
            )

    def is_queued(self, op: Op, rule_id: int) -> bool:
        return (op, rule_id) in self._queued

    def pending_jobs(self) -> int:
        return sum(lane.queue.qsize() for lane in self._lanes.values())

    async def wait_for(self, rule_id: int, seconds: float) -> bool:
        """Wait until the next outcome for ``rule_id`` is written; False on timeout."""
        if self.shared:
            with self.engine.connect() as conn:
                row = conn.execute(
                    select(rules.c.adapter_id, rules.c.state, rules.c.attempts).where(
                        rules.c.id == rule_id
                    )
                ).first()
            if row is not None and not self.drives(row.adapter_id):
                return await self._poll_outcome(rule_id, (row.state, row.attempts), seconds)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(rule_id, []).append(fut)
        try:
            await asyncio.wait_for(fut, seconds)
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(rule_id)
            if waiters and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._waiters[rule_id]
        return True

    async def _poll_outcome(self, rule_id: int, was: tuple[str, int], seconds: float) -> bool:
        """Another instance drives the rule's adapter: watch the store for its outcome."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            await asyncio.sleep(min(POLL_OUTCOME_S, max(0.0, deadline - loop.time())))
            with self.engine.connect() as conn:
                row = conn.execute(
                    select(rules.c.state, rules.c.attempts).where(rules.c.id == rule_id)
                ).first()
            if row is None or (row.state, row.attempts) != was:
                return True
        return False

    async def drain(self, seconds: float = 30.0) -> None:
        """Wait until every queue is empty and no batch is in flight (tests, shutdown)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while self._queued or any(not lane.queue.empty() for lane in self._lanes.values()):
            if loop.time() > deadline:
                raise TimeoutError(f"dispatcher still has {len(self._queued)} jobs")
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------ worker

    async def _work(self, adapter_id: int, lane: _Lane) -> None:
        while True:
            first = lane.carry
            lane.carry = None
            if first is None:
                if lane.queue.empty():
                    return
                first = lane.queue.get_nowait()
            batch = [first]
            limit = self.batch_limit(adapter_id)
            while len(batch) < limit and not lane.queue.empty():
                nxt = lane.queue.get_nowait()
                if nxt.op != first.op:
                    lane.carry = nxt
                    break
                batch.append(nxt)
            try:
                if not self.fence(adapter_id):  # the lease lapsed: the rows stay in the store
                    log.warning("not the lease holder: %d %s jobs left", len(batch), first.op)
                    continue
                await self._run_batch(adapter_id, first.op, batch)
            except Fenced as exc:  # another instance took the adapter over meanwhile
                log.warning("%s; %d %s outcomes not recorded", exc, len(batch), first.op)
            except Exception:  # a bug or a database error must not kill the lane
                log.exception(
                    "dispatching %d %s jobs to adapter %d", len(batch), first.op, adapter_id
                )
            finally:
                for job in batch:
                    self._queued.discard((job.op, job.rule_id))
                    self._wake(job.rule_id)

    def batch_limit(self, adapter_id: int) -> int:
        """The most jobs one call hands this adapter (see adapters.base.LargeBatches)."""
        adapter = self.adapter_for(adapter_id)
        if isinstance(adapter, LargeBatches):
            return max(self.batch_size, adapter.batch_limit)
        return self.batch_size

    def _wake(self, rule_id: int) -> None:
        for fut in self._waiters.pop(rule_id, []):
            if not fut.done():
                fut.set_result(None)

    def _refs(self, op: Op, batch: Sequence[Job]) -> list[RuleRef]:
        if op == "orphan":
            return [j.ref for j in batch if j.ref is not None]
        wanted = {
            "announce": [State.PENDING],
            "reannounce": [State.ACTIVE, State.SUSPENDED],
            "withdraw": [State.WITHDRAWING],
        }[op]
        ids = [j.rule_id for j in batch]
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    rules.c.id,
                    rules.c.key,
                    rules.c.intent,
                    rules.c.dry_run,
                    rules.c.reason,
                    rules.c.origin,
                    rules.c.ttl,
                    rules.c.expires_at,
                    rules.c.explanation,
                    rules.c.incident_id,
                    rules.c.end_state,
                ).where(rules.c.id.in_(ids), rules.c.state.in_(wanted))
            ).all()
        refs = []
        for row in rows:
            if row.dry_run:
                continue
            intent = self.intents.get(row.id)
            if intent is None:
                intent = parse_canonical(row.intent)
                if op != "withdraw":  # a live rule: keep it parsed for the next send
                    self.intents[row.id] = intent
            refs.append(RuleRef(row.id, intent, row.key, _context(op, row)))
        return refs

    async def _run_batch(self, adapter_id: int, op: Op, batch: Sequence[Job]) -> None:
        refs = self._refs(op, batch)
        if not refs:
            return
        adapter = self.adapter_for(adapter_id)
        name = self.adapter_name(adapter_id)
        if adapter is None:
            outcomes = [
                Outcome.failure(r, f"adapter {name!r} is not available", retryable=True)
                for r in refs
            ]
        else:
            send = adapter.announce if op in ("announce", "reannounce") else adapter.withdraw
            # The session check runs beside the announce, so it adds no latency.
            probe = (
                asyncio.ensure_future(self._check_sessions(adapter_id, adapter))
                if op == "announce" and self._session_unknown(adapter_id, adapter)
                else None
            )
            with BATCH_SECONDS.labels(name, op).time():
                try:
                    outcomes = await send(refs)
                except Exception as exc:  # adapters should not raise; treat as unreachable
                    log.exception("adapter %s raised on %s", name, op)
                    outcomes = [
                        Outcome.failure(r, f"adapter error: {exc}", retryable=True) for r in refs
                    ]
                except BaseException:  # cancelled: do not leave the check running
                    if probe is not None:
                        probe.cancel()
                    raise
            if len(outcomes) != len(refs):
                log.error(
                    "adapter %s returned %d outcomes for %d rules", name, len(outcomes), len(refs)
                )
                got = {o.rule_id: o for o in outcomes}
                outcomes = [
                    got.get(r.rule_id)
                    or Outcome.failure(r, "adapter returned no outcome", retryable=True)
                    for r in refs
                ]
            if probe is not None:
                await probe
            if op == "announce" and self.sessions.get(adapter_id) is not None:
                by_id = {r.rule_id: r for r in refs}
                checked = []
                for o in outcomes:
                    down = self._off_the_wire(adapter_id, by_id[o.rule_id]) if o.ok else None
                    if down is None:
                        checked.append(o)
                        continue
                    checked.append(Outcome(o.rule_id, False, down, retryable=True))
                    # the retry looks at the sessions again, not at this answer
                    self.sessions.stale(adapter_id)
                outcomes = checked
        for o in outcomes:
            OPS_TOTAL.labels(name, op, "ok" if o.ok else "failed").inc()
        self._apply(op, refs, outcomes, adapter_id)

    def _session_unknown(self, adapter_id: int, adapter: Adapter) -> bool:
        """Whether a BGP speaker's sessions need a check (none seen up recently)."""
        if not isinstance(adapter, BgpSpeaker):
            return False
        return self.sessions.needs_check(adapter_id)

    async def _check_sessions(self, adapter_id: int, adapter: Adapter) -> None:
        """Ask the speaker for its sessions and record them in the shared tracker."""
        try:
            health = await adapter.check()
        except Exception:  # the announce itself succeeded; do not fail it on a bad check
            log.exception("adapter %s raised on check", self.adapter_name(adapter_id))
            self.sessions.forget(adapter_id)
            return
        self.sessions.observe(adapter_id, health.sessions)

    def off_the_wire(self, adapter_id: int, ref: RuleRef) -> str | None:
        """Why a route the speaker holds reaches no peer (None: it can be on the wire)."""
        return self._off_the_wire(adapter_id, ref)

    def _off_the_wire(self, adapter_id: int, ref: RuleRef) -> str | None:
        """Why a route a BGP speaker accepted reaches no peer yet, or None.

        A speaker takes routes into its RIB whether or not a session is up. With no
        session established (or none to the peers a rule is pinned to) the rule is not
        on the wire, so it is not reported active: its announce counts as a retryable
        failure naming the sessions' states. The speaker keeps the route and sends it
        when a session comes up; the retry then finds the session established. A check
        that found a session up is trusted for :data:`SESSIONS_TRUSTED_SECONDS`.
        """
        seen = self.sessions.get(adapter_id)
        if seen is None or not seen.states:
            return None  # not a speaker, no sessions reported, or the check failed
        states = seen.states
        pinned = [peer_key(str(p)) for p in getattr(ref.intent, "peers", ())]
        relevant = {p: states.get(p, "not configured") for p in pinned} if pinned else states
        if any(s == "established" for s in relevant.values()):
            return None
        listed = ", ".join(f"{peer} {state}" for peer, state in sorted(relevant.items()))
        which = "to the rule's peers " if pinned else ""
        return (
            f"the speaker holds the route but no BGP session {which}is established "
            f"({listed}): not on the wire yet"
        )

    # ------------------------------------------------------------ outcomes

    def _on_wire(self, adapter_id: int, ref: RuleRef) -> bool:
        """Whether a route the speaker took reaches a peer (a session is seen up; True when
        no session state is known: not a speaker, or the backend's word is all there is)."""
        return self._off_the_wire(adapter_id, ref) is None

    def _apply(
        self,
        op: Op,
        refs: Sequence[RuleRef],
        outcomes: Sequence[Outcome],
        adapter_id: int,
    ) -> None:
        now = self.clock()
        ok_ids = [o.rule_id for o in outcomes if o.ok]
        failed = [o for o in outcomes if not o.ok]
        released: list[int] = []
        store = self.store
        with self.writing(adapter_id) as conn:
            if op == "orphan":
                store.note(
                    conn, [(o.rule_id, o.error) for o in outcomes if o.ok], "orphan_withdrawn", now
                )
                store.note(
                    conn,
                    [(o.rule_id, o.error) for o in outcomes if not o.ok],
                    "orphan_withdraw_failed",
                    now,
                )
            elif op == "announce":
                store.move(
                    conn,
                    ok_ids,
                    frm=State.PENDING,
                    to=State.ACTIVE,
                    now=now,
                    event="announced",
                    values={"activated_at": now, "error": None, "next_attempt_at": None},
                )
                store.fail(
                    conn,
                    self._failures(conn, failed, now, announce=True),
                    frm=State.PENDING,
                    now=now,
                )
            elif op == "reannounce":
                by_id = {r.rule_id: r for r in refs}
                wire = self._on_wire
                back = [o.rule_id for o in outcomes if o.ok and wire(adapter_id, by_id[o.rule_id])]
                resumed = set(
                    store.move(
                        conn,
                        back,
                        frm=State.SUSPENDED,
                        to=State.ACTIVE,
                        now=now,
                        event="announced",
                        why="sent again after a session came back: on the wire",
                        values={"error": None},
                    )
                )
                store.note(
                    conn, [(rid, None) for rid in ok_ids if rid not in resumed], "reannounced", now
                )
                failures = self._failures(conn, failed, now, announce=True)
                for frm in (State.ACTIVE, State.SUSPENDED):  # guarded: each moves its own
                    store.fail(conn, failures, frm=frm, now=now)
            else:
                if ok_ids:
                    ends = conn.execute(
                        select(rules.c.id, rules.c.end_state).where(rules.c.id.in_(ok_ids))
                    ).all()
                    for final in {State(e.end_state or State.WITHDRAWN) for e in ends}:
                        ids = [e.id for e in ends if State(e.end_state or State.WITHDRAWN) == final]
                        released += store.move(
                            conn,
                            ids,
                            frm=State.WITHDRAWING,
                            to=final,
                            now=now,
                            event=str(final),
                            values={"ended_at": now, "error": None, "next_attempt_at": None},
                        )
                store.withdraw_failed(conn, self._failures(conn, failed, now, announce=False), now)
        for rid in released:
            self.intents.pop(rid, None)

    def _failures(
        self, conn: Any, failed: Sequence[Outcome], now: datetime, *, announce: bool
    ) -> list[Failure]:
        """Attempt counts and retry times of failed sends (announces give up at max_attempts;
        withdrawals never do)."""
        if not failed:
            return []
        attempts = self.store.attempts(conn, [o.rule_id for o in failed])
        out = []
        for o in failed:
            n = attempts.get(o.rule_id, 0) + 1
            retry = not announce or (o.retryable and n < self.max_attempts)
            wait = backoff(n, self.retry_base, self.retry_max) if retry else None
            note = f" (retry in {wait:.0f} s)" if wait is not None else " (not retried)"
            nxt = now + timedelta(seconds=wait) if wait is not None else None
            out.append(Failure(o.rule_id, o.error, n, nxt, note))
        return out


def _context(op: Op, row: Any) -> dict[str, Any]:
    if op in ("announce", "reannounce"):
        event = "announce"
    else:
        event = "expire" if row.end_state == State.EXPIRED else "withdraw"
    return {
        "event": event,
        "reason": row.reason,
        "origin": row.origin,
        "ttl": row.ttl,
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "explanation": list(row.explanation or []),
        "incident": {"id": row.incident_id} if row.incident_id else None,
    }
