"""Signal intake: signals open and update incidents, the policy decides, rules follow.

Signals (``ban``), detector ``unban``s and hold-down re-evaluations go through one queue,
in arrival order. Consecutive signals are handled as one batch (group commit): evaluated
one after the other (:meth:`Intake.evaluate`, the one place where a batch's decisions are
seen together), then written in ONE transaction (:meth:`Intake._write`) - new incidents
first, then their rules (which reference them by foreign key), withdrawals, the
incidents' new state, the decisions, the events and one audit entry for the new rules.
The rule changes go to the adapters as one batch once that transaction committed.

Single signals (``POST /incidents``) that arrive together are grouped up to
:data:`MAX_BATCH`; a bulk request (``POST /incidents/bulk``, :meth:`Intake.submit_many`)
is never split: its signals are one batch and one transaction (an ``unban`` in it is
handled on its own, in its place in the order).

* A signal names its incident by ``incident_id``, by its detector's ``source`` +
  ``event_id`` (the same pair updates the same incident), or by neither: then it updates
  its target's live incident, or opens one. A target has at most one live incident.
* A signal the policy holds down records ``held_until`` on the incident; at that time
  (:meth:`Intake.recheck_held`) the incident's last signal is evaluated again if the
  incident is still open, so a detector that reports once still gets its rule.
* Ending an incident (resolve, ``unban``, the episode timeout) withdraws its live rules
  unless ``settings.withdraw_on_resolve`` is off, and forgets the target's attack state:
  the next signal opens a new incident, judged afresh.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Connection, and_, select

from orchestrator import events as ev
from orchestrator.carpet import Carpet, CarpetBatch
from orchestrator.cluster import StaleRead, write, writers
from orchestrator.incident_index import IncidentIndex, Read
from orchestrator.incidents import (
    ENDED,
    LIVE,
    AlreadyEnded,
    Incident,
    IncidentStore,
    Status,
    feed_event,
)
from orchestrator.lifecycle import HELD
from orchestrator.service import RuleRequest, Service
from orchestrator.store.models import decisions, incident_events, incidents, rules
from orchestrator.store.rows import insert_rows
from policies.engine import Decision, evaluate
from policies.errors import Conflict, NotFound, SluiceError, ValidationFailed
from policies.intents import address_text, canonical
from policies.signals import Signal
from policies.state import snapshot

if TYPE_CHECKING:
    from policies.state import EngineState

log = logging.getLogger("sluice.intake")

MAX_BATCH = 256  # single signals grouped into one commit (a bulk request is never split)
GATHER_QUIET = 2  # loop iterations without a new signal that close a batch of single signals
GATHER_ROUNDS = 64  # and at most this many iterations spent gathering one
STALE_RETRIES = 20  # reads redone when other instances keep writing in between
ESCALATING = ("announce", "escalate")
Action = Literal["ban", "unban", "recheck"]


@dataclass
class Item:
    action: Action
    actor: str
    signal: Signal | None = None
    incident_id: str | None = None
    source: str | None = None
    event_id: str | None = None
    raw_details: dict[str, Any] | None = None
    future: asyncio.Future[Result] = field(init=False)


@dataclass(slots=True)
class Outcome:
    """What one signal did: its incident, the policy's decision, and what the store made
    of it (``applied``: the rules made, the ones refused, the ones withdrawn)."""

    incident: Incident
    decision: Decision
    applied: dict[str, Any]
    # the incident views of the outcomes of one batch, each built once: the signals of a
    # batch that update one incident share its state as the batch left it
    views: dict[str, dict[str, Any]] | None = None

    def view(self) -> dict[str, Any]:
        """The full answer (``POST /incidents``): the incident and the explained decision.

        Within a batch the views are shared (``views``): an incident's, and a decision's
        that changed nothing in the store (repeats of one decision hold the same object,
        see :meth:`Intake._decide`). Answers are rendered, never changed."""
        inc, d, views = self.incident, self.decision, self.views
        if views is None:
            return {"incident": inc.view(), "decision": self._decision()}
        shown = views.get(inc.id) or views.setdefault(inc.id, inc.view())
        if not _quiet(self.applied):
            return {"incident": shown, "decision": self._decision()}
        key = f"{inc.id} {id(d)}"
        decided = views.get(key) or views.setdefault(key, self._decision())
        return {"incident": shown, "decision": decided}

    def _decision(self) -> dict[str, Any]:
        inc, planned = self.incident, self.decision.to_dict()
        return {
            **planned,
            # "planned": what the policy asked for; "rules": the rules it made (ids);
            # "refused": what guardrails stopped; "withdrawn": rule ids taken down
            "planned": planned["rules"],
            "held_until": inc.held_until.isoformat() if inc.held_until else None,
            **self.applied,
        }

    def brief(self) -> dict[str, Any]:
        """One item of a bulk answer: ids and codes, no explanation (it is stored)."""
        inc, d = self.incident, self.decision
        return {
            "incident_id": inc.id,
            "incident_status": str(inc.status),
            "decision": d.status,
            "tier": d.tier,
            "rule_ids": [r["rule_id"] for r in self.applied["rules"]],
            "refused": [
                {"code": r["code"], "intent": r["intent"], "adapter": r["adapter"]}
                for r in self.applied["refused"]
            ],
            "withdrawn": self.applied["withdrawn"],
            "held_until": inc.held_until.isoformat() if inc.held_until else None,
        }


# An item's result: a signal's outcome, an unban's answer (a dict), or its error.
Result = Outcome | dict[str, Any]


@dataclass(slots=True)
class Evaluated:
    """A batch after the policy and before the store: per item, its incident and decision
    (or the error that stops that item alone), and the incidents the batch opens,
    updates and finds expired."""

    items: list[tuple[Item, Incident, Decision] | Exception]
    new: dict[str, Incident]
    touched: dict[str, Incident]
    stale: list[Incident]
    carpet: CarpetBatch | None = None  # covering rules formed over the batch (#14.4)
    read: Read | None = None  # what the incident index answered (learns the write)


class Intake:
    def __init__(self, service: Service, state: Callable[[], EngineState]) -> None:
        self.service = service
        self._state = state  # the runtime replaces its EngineState on load
        self.store = IncidentStore()
        self.index = IncidentIndex(service.engine)  # the incidents signals touch (#14)
        self._pending: deque[list[Item]] = deque()  # submissions, each a list of items
        self._worker: asyncio.Task[None] | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._rechecking: set[str] = set()
        self._tasks: set[asyncio.Task[int]] = set()
        self.carpet = Carpet(service, state)  # carpet bombing: covering rules (#14.4)

    @property
    def state(self) -> EngineState:
        return self._state()

    # ------------------------------------------------------------ queue

    async def submit(self, item: Item) -> dict[str, Any]:
        """Handle one item; its full answer (the error is raised)."""
        result = await self._enqueue([item])[0]
        return result.view() if isinstance(result, Outcome) else result

    def _enqueue(self, items: list[Item]) -> list[asyncio.Future[Result]]:
        """Queue a submission (one batch at most); the worker is started if idle."""
        loop = asyncio.get_running_loop()
        for item in items:
            item.future = loop.create_future()
        self._pending.append(items)
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain(), name="signal-intake")
        return [item.future for item in items]

    async def submit_many(self, items: Sequence[Item]) -> list[Result | Exception]:
        """Handle items together (a bulk request): per item, its result or its error.

        The items stay one batch: their signals are evaluated and stored in one
        transaction (each ``unban`` among them in its own, in its place in the order).
        """
        if not items:
            return []
        futures = self._enqueue(list(items))
        done = await asyncio.gather(*futures, return_exceptions=True)
        out: list[Result | Exception] = []
        for res in done:
            if isinstance(res, BaseException) and not isinstance(res, Exception):
                raise res  # cancelled
            out.append(res)
        return out

    async def _gather(self) -> None:
        """Let the signals already on their way join the next batch.

        A request whose bytes arrived in the event loop's last poll reaches
        :meth:`submit_many` one or two loop iterations later. Yielding until the queue
        stops growing for :data:`GATHER_QUIET` iterations (at most :data:`GATHER_ROUNDS`,
        never past :data:`MAX_BATCH` signals) lets concurrent requests share one
        transaction and one commit instead of each paying for its own: under load the
        loop is busy with those requests anyway; an idle service waits a few iterations.
        """
        quiet, seen = 0, -1
        for _ in range(GATHER_ROUNDS):
            queued = sum(len(s) for s in self._pending)
            if queued >= MAX_BATCH:
                return
            quiet = quiet + 1 if queued == seen else 0
            if quiet >= GATHER_QUIET:
                return
            seen = queued
            await asyncio.sleep(0)

    async def _drain(self) -> None:
        while self._pending:
            await self._gather()
            items = self._pending.popleft()
            while self._pending and len(items) + len(self._pending[0]) <= MAX_BATCH:
                items.extend(self._pending.popleft())
            for batch in _runs(items):
                try:
                    if batch[0].action == "unban":
                        results: list[Result | Exception] = [self._unban(batch[0])]
                    else:
                        results = self._handle_batch_fresh(batch)
                except Exception as exc:  # a database error: every item of the batch fails
                    if not isinstance(exc, SluiceError):
                        log.exception("handling %d signals", len(batch))
                    results = [exc] * len(batch)
                for item, res in zip(batch, results, strict=True):
                    if item.future.done():
                        continue
                    if isinstance(res, Exception):
                        item.future.set_exception(res)
                    else:
                        item.future.set_result(res)
            await asyncio.sleep(0)  # let the next signals in

    # ------------------------------------------------------------ signals

    def _handle_batch_fresh(self, batch: list[Item]) -> list[Result | Exception]:
        """Handle a batch; read again when another instance wrote between read and write."""
        for _ in range(STALE_RETRIES):
            try:
                return self._handle_batch(batch)
            except StaleRead:
                self.index.failed()
                continue
            except Exception:
                self.index.failed()  # its copies may hold what the store does not
                raise
        raise Conflict(
            "the store kept changing under this batch (other instances writing); try again",
            code="store_busy",
        )

    def _handle_batch(self, batch: list[Item]) -> list[Result | Exception]:
        """Evaluate a batch of signals, then store every decision in one transaction."""
        svc = self.service
        now = svc.clock()
        read_at = writers(svc.engine).seen()
        evaluated = self.evaluate(batch, now)
        carpet = evaluated.carpet
        done = [x for x in evaluated.items if not isinstance(x, Exception)]
        formed = carpet.formed if carpet is not None else []
        for _, inc, _ in formed:
            evaluated.new[inc.id] = inc
        applied: list[dict[str, Any]] = []
        if done or evaluated.stale:
            applied = self._write(
                [*formed, *done],  # a covering incident's decision before those it covers
                evaluated.new,
                evaluated.touched,
                evaluated.stale,
                now,
                read_at=read_at,
                events=carpet.events if carpet is not None else (),
                hooks=(carpet.store,) if carpet is not None else (),
            )
            if evaluated.read is not None:
                self.index.committed(
                    evaluated.read,
                    [*evaluated.new.values(), *evaluated.touched.values()],
                    opened=set(evaluated.new),
                )
            if carpet is not None:
                self.carpet.after_write(carpet, applied[: len(formed)])
            applied = applied[len(formed) :]
        for inc in {i.id: i for _, i, _ in done}.values():
            if inc.held_until is not None:
                self._arm(inc)
        out: list[Result | Exception] = []
        views: dict[str, dict[str, Any]] = {}
        k = 0
        for x in evaluated.items:
            if isinstance(x, Exception):
                out.append(x)
            else:
                out.append(Outcome(x[1], x[2], applied[k], views))
                k += 1
        return out

    def evaluate(self, batch: list[Item], now: datetime) -> Evaluated:
        """Evaluate a batch of signals (bans and re-checks) in arrival order; store nothing.

        Reads the incidents the batch names or targets, finds or opens each signal's
        incident and asks the policy for its decision. An item that cannot be handled
        (an unknown incident, a target mismatch) gets its error and changes nothing; the
        others go on. This is where a batch's decisions are seen together before
        :meth:`_write` stores them: carpet-bombing aggregation (:mod:`orchestrator.carpet`)
        watches each decision here and forms covering incidents and rules
        (``Evaluated.carpet``), which the write stores first.
        """
        svc = self.service
        quiet = timedelta(seconds=svc.policy.escalation.episode_timeout_seconds)
        hold = svc.policy.escalation.hold_down_seconds
        with svc.engine.connect() as conn:
            read = self.index.read(
                conn,
                [address_text(i.signal.target_ip) for i in batch if i.signal is not None],
                [(i.source, i.event_id) for i in batch if i.source and i.event_id],
            )
            live, by_event = read.live, read.by_event
            by_id = self.store.by_ids(conn, [i.incident_id for i in batch if i.incident_id])
            read.note(by_id.values())
            carpet = self.carpet.begin(
                conn, now, [i.signal.target_ip for i in batch if i.signal is not None]
            )
        out = Evaluated(items=[], new={}, touched={}, stale=[], carpet=carpet, read=read)
        last: dict[str, tuple[Incident, Signal]] = {}  # incident id -> its last signal
        repeats: dict[str, _Repeat] = {}  # incident id -> its last evaluation in the batch
        for item in batch:
            assert item.signal is not None  # noqa: S101  # bans and rechecks carry one
            covered = carpet.cover(item) if carpet is not None else None
            if carpet is not None and covered is not None:  # inside a covering prefix
                if not carpet.is_new(covered[0]):
                    out.touched[covered[0].id] = covered[0]
                out.items.append((item, *covered))
                continue
            try:
                inc = self._incident_for(
                    item,
                    now=now,
                    quiet=quiet,
                    live=live,
                    by_id=by_id,
                    by_event=by_event,
                    new=out.new,
                    stale=out.stale,
                )
            except SluiceError as exc:
                out.items.append(exc)
                continue
            if item.action == "recheck" and (inc.status is not Status.OPEN or inc.id in out.new):
                out.items.append(NotFound("nothing to re-evaluate", code="not_held"))
                continue
            decision = self._decide(item, inc, now, hold, last=last, repeats=repeats)
            if carpet is not None:
                decision = carpet.observe(item, decision)
            if inc.id not in out.new:
                out.touched[inc.id] = inc
            out.items.append((item, inc, decision))
        for inc, sig in last.values():  # each incident's last signal, rendered once
            inc.last_signal = sig.model_dump(mode="json")
        return out

    def _decide(
        self,
        item: Item,
        inc: Incident,
        now: datetime,
        hold: int,
        *,
        last: dict[str, tuple[Incident, Signal]] | None = None,
        repeats: dict[str, _Repeat] | None = None,
    ) -> Decision:
        """Evaluate one signal and bring its incident up to date.

        ``repeats`` (a batch's evaluations so far, per incident) spares the policy a
        signal that repeats the one before it on the same incident, once that one is
        known to have left the target's engine state as it found it: a batch shares one
        ``now``, and the engine's answer follows from the signal, the state and ``now``
        alone, so the repeat gets that same decision (detectors repeat a signal for as
        long as an attack lasts; under load many repeats share a batch).
        """
        sig = item.signal
        assert sig is not None  # noqa: S101
        prev = repeats.get(inc.id) if repeats is not None else None
        same = (
            prev is not None
            and prev.action == item.action
            and (prev.signal is sig or prev.signal.__dict__ == sig.__dict__)
        )
        if prev is not None and same and prev.fixed:
            decision, held_until = prev.decision, prev.held_until
        else:
            before = _engine_state(self.state, prev.decision.target) if prev and same else None
            decision, held_until = self._evaluate(sig, now, hold)
            if repeats is not None:
                fixed = before is not None and before == _engine_state(self.state, decision.target)
                repeats[inc.id] = _Repeat(item.action, sig, decision, held_until, fixed)
        if item.action != "recheck":
            inc.signals += 1
            inc.updated_at = now
            inc.peak_bps = max(inc.peak_bps, sig.bps)
            inc.peak_pps = max(inc.peak_pps, sig.pps)
            if last is None:
                inc.last_signal = sig.model_dump(mode="json")
            else:  # rendered once per incident when the batch is evaluated
                last[inc.id] = (inc, sig)
            inc.attack_family = sig.attack_family
            inc.severity = sig.severity
            inc.node = sig.node
            if item.raw_details is not None:
                inc.raw_details = item.raw_details
        inc.held_until = held_until
        if decision.tier is not None:
            inc.tier = decision.tier
        return decision

    def _evaluate(self, sig: Signal, now: datetime, hold: int) -> tuple[Decision, datetime | None]:
        """The policy's decision on a signal, and until when it holds the incident down."""
        decision = evaluate(sig, self.service.policy, self.state, now.timestamp())
        if decision.status != "held":
            return decision, None
        ts = self.state.peek(decision.target)
        since = ts.attack_since if ts is not None and ts.attack_since else now.timestamp()
        held_until = datetime.fromtimestamp(since + hold, UTC)
        decision = decision._replace(
            explanation=(
                *decision.explanation,
                f"held until {held_until:%H:%M:%S} UTC: evaluated again then "
                "if the incident is still open",
            )
        )
        return decision, held_until

    def _incident_for(
        self,
        item: Item,
        *,
        now: datetime,
        quiet: timedelta,
        live: dict[str, Incident],
        by_id: dict[str, Incident],
        by_event: dict[tuple[str, str], Incident],
        new: dict[str, Incident],
        stale: list[Incident],
    ) -> Incident:
        """The incident a signal updates (a new one when none is live)."""
        assert item.signal is not None  # noqa: S101
        target = address_text(item.signal.target_ip)
        if item.incident_id is not None:
            inc = by_id.get(item.incident_id) or new.get(item.incident_id)
            if inc is None:
                raise NotFound(
                    f"incident {item.incident_id} does not exist",
                    code="incident_not_found",
                    field="incident_id",
                )
            if inc.status in ENDED:
                raise AlreadyEnded(
                    f"incident {inc.id} is already {inc.status}; send the signal without "
                    "incident_id to open a new incident",
                    field="incident_id",
                )
            if inc.target != target:
                raise ValidationFailed(
                    f"incident {inc.id} is about {inc.target}, not {target}",
                    code="incident_target_mismatch",
                    field="target_ip",
                )
            if item.source and item.event_id:  # the event feeds it: recorded there
                feed_event(inc, (item.source, item.event_id))
            return inc
        pair = (item.source, item.event_id) if item.source and item.event_id else None
        if pair is not None:
            inc = by_event.get(pair)
            if inc is not None and inc.status in LIVE:
                if inc.target != target:
                    raise ValidationFailed(
                        f"event {pair[1]!r} of {pair[0]!r} is about {inc.target}, not {target}",
                        code="event_target_mismatch",
                        field="target_ip",
                    )
                return inc
        inc = live.get(target)
        stale_now = inc is not None and inc.id not in new and inc.updated_at < now - quiet
        if inc is not None and inc.status in LIVE and stale_now:  # expiry has not run yet
            stale.append(inc)
            inc = None
        if inc is not None and inc.status in LIVE:
            if pair is not None:  # the event feeds the target's incident: recorded there
                feed_event(inc, pair)
                by_event[pair] = inc
            return inc
        inc = Incident(
            id=str(uuid.uuid4()),
            target=target,
            node=item.signal.node,
            status=Status.OPEN,
            attack_family=item.signal.attack_family,
            severity=item.signal.severity,
            peak_bps=0.0,
            peak_pps=0.0,
            last_signal={},
            signals=0,
            opened_at=now,
            updated_at=now,
            source=pair[0] if pair else item.source,
            event_id=pair[1] if pair else None,
        )
        new[inc.id] = inc
        live[target] = inc
        if pair is not None:
            by_event[pair] = inc
        # A new incident is judged afresh, whatever attack state a previous one left
        # (e.g. restored from a snapshot taken before that one ended).
        self.state.targets.pop(target, None)
        return inc

    def _write(
        self,
        done: list[tuple[Item, Incident, Decision]],
        new: dict[str, Incident],
        touched: dict[str, Incident],
        stale: list[Incident],
        now: datetime,
        *,
        read_at: int | None = None,
        events: Sequence[ev.Event] = (),
        hooks: Sequence[Callable[[Connection], None]] = (),
    ) -> list[dict[str, Any]]:
        """Everything a batch changed, in one transaction; then queue the rule changes.

        ``hooks`` write more of the batch's state in the same transaction, last (the
        carpet-bombing window and covered events: one bulk statement each).
        """
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
                    incident_id=inc.id,
                    actor=item.actor,
                    text=r.text,
                ),
            )
            for k, (item, inc, d) in enumerate(done)
            for r in d.rules
        ]
        applied: list[dict[str, Any]] = [
            {"rules": [], "refused": [], "withdrawn": []} for _ in done
        ]
        afters: list[Callable[[], None]] = []
        try:
            with write(svc.engine, read_at) as conn:
                for inc in stale:  # first: a new incident's rules must not extend these
                    cause = "no signal for the episode timeout"
                    self.store.end(conn, inc, Status.EXPIRED, now=now, by="system", cause=cause)
                    if svc.policy.settings.withdraw_on_resolve:
                        _ids, after = svc.withdraw_incident_in(
                            conn,
                            inc.id,
                            actor="system",
                            reason=f"incident expired: {cause}",
                            now=now,
                        )
                        afters.append(after)
                self.store.open(conn, list(new.values()))
                results, after = svc.create_rules_in(conn, [r for _, r in requests], now)
                afters.append(after)
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
                                "rule_id": res.rule_id,
                                "intent": res.text,
                                "adapter": req.adapter,
                                "deduplicated": res.deduplicated,
                            }
                        )
                for k, (item, _inc, d) in enumerate(done):
                    if d.withdraw:
                        ids, after = svc.withdraw_keys_in(
                            conn,
                            d.withdraw,
                            actor=item.actor,
                            reason=f"policy: {d.status}",
                            now=now,
                        )
                        applied[k]["withdrawn"] = ids
                        afters.append(after)
                self.store.save_signals(conn, list(touched.values()))
                self.store.escalated(
                    conn,
                    [
                        (inc, d.tier, d.status)
                        for k, (_item, inc, d) in enumerate(done)
                        if d.status in ESCALATING and applied[k]["rules"]
                    ],
                    now=now,
                )
                insert_rows(conn, decisions, _decision_rows(done, applied, now))
                ev.record(conn, events)
                for hook in hooks:
                    hook(conn)
        except Exception:
            svc.rolled_back()
            raise
        for after in afters:
            after()
        return applied

    # ------------------------------------------------------------ hold-down

    def _arm(self, inc: Incident) -> None:
        """Re-evaluate the incident when its hold-down elapses (the periodic job is the
        safety net across restarts)."""
        if inc.held_until is None or inc.id in self._timers:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        delay = max(0.0, (inc.held_until - self.service.clock()).total_seconds())

        def fire() -> None:
            self._timers.pop(inc.id, None)
            task = loop.create_task(self.recheck_held(), name="hold-down")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self._timers[inc.id] = loop.call_later(delay + 0.01, fire)

    def cancel_timers(self) -> None:
        self.carpet.cancel()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    async def recheck_held(self) -> int:
        """Evaluate again every open incident whose hold-down has elapsed; returns how many."""
        now = self.service.clock()
        with self.service.engine.connect() as conn:
            due = [i for i in self.store.due_hold_down(conn, now) if i.id not in self._rechecking]
        jobs = []
        for inc in due:
            try:
                sig = Signal.model_validate(inc.last_signal)
            except ValueError:
                log.exception("incident %s: its last signal cannot be read back", inc.id)
                continue
            self._rechecking.add(inc.id)
            jobs.append(
                (
                    inc.id,
                    self.submit(
                        Item("recheck", "system:hold-down", signal=sig, incident_id=inc.id)
                    ),
                )
            )
        count = 0
        for incident_id, job in jobs:
            try:
                await job
                count += 1
            except SluiceError as exc:
                log.info("hold-down re-evaluation of %s: %s", incident_id, exc.message)
            finally:
                self._rechecking.discard(incident_id)
        return count

    # ------------------------------------------------------------ ending

    def _unban(self, item: Item) -> dict[str, Any]:
        if item.incident_id is None:
            assert item.source is not None and item.event_id is not None  # noqa: S101
            with self.service.engine.connect() as conn:
                found = self.store.by_event(conn, [(item.source, item.event_id)])
            inc = found.get((item.source, item.event_id))
            if inc is None:
                cover = self.carpet.covering_event(item.source, item.event_id)
                if cover is not None:
                    return self._unban_covered(item, cover)
                raise NotFound(
                    f"no incident of {item.source!r} has event_id {item.event_id!r}",
                    code="event_not_found",
                    field="event_id",
                )
            item.incident_id = inc.id
        return self.end(
            item.incident_id,
            Status.RESOLVED,
            actor=item.actor,
            cause=f"unban from {item.source or item.actor}",
            raw_details=item.raw_details,
        )

    def _unban_covered(self, item: Item, cover_id: str) -> dict[str, Any]:
        """An unban of an event that attached to a covering (carpet-bombing) incident.

        The event is marked unbanned. The covering incident ends (resolved, its covering
        rules withdrawn) once every event attached to it is unbanned; until then the
        answer acknowledges the unban and says how many attached events are left.
        Signals that attached without an event id are not counted: with only those left,
        the cover ends by the episode timeout like any incident.
        """
        assert item.source is not None and item.event_id is not None  # noqa: S101
        left = self.carpet.unban(item.source, item.event_id, cover_id)
        if left == 0:
            try:
                out = self.end(
                    cover_id,
                    Status.RESOLVED,
                    actor=item.actor,
                    cause=(
                        f"unban from {item.source}: every event attached to the covering "
                        "incident is unbanned"
                    ),
                )
            except AlreadyEnded:
                pass
            else:
                return {**out, "covered_by": cover_id, "covered_events_left": 0}
        with self.service.engine.connect() as conn:
            inc = self.store.get(conn, cover_id)
        return {
            "incident": inc.view(),
            "withdrawn": [],
            "rules_left_to_ttl": False,
            "covered_by": cover_id,
            "covered_events_left": left,
        }

    def end(
        self,
        incident_id: str,
        to: Status,
        *,
        actor: str,
        cause: str,
        raw_details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Resolve or expire an incident: its rules withdrawn (by default) and its target's
        attack state forgotten, in one transaction with the incident's new status."""
        svc = self.service
        now = svc.clock()
        withdraw = svc.policy.settings.withdraw_on_resolve
        after: Callable[[], None] = lambda: None  # noqa: E731
        ids: list[int] = []
        try:
            with write(svc.engine) as conn:
                inc = self.store.get(conn, incident_id)
                self.store.end(conn, inc, to, now=now, by=actor, cause=cause)
                if raw_details is not None:
                    inc.raw_details = raw_details
                    self.store.save_signals(conn, [inc])
                if withdraw:
                    ids, after = svc.withdraw_incident_in(
                        conn, incident_id, actor=actor, reason=f"incident {to}: {cause}", now=now
                    )
                svc.audit.append(
                    conn,
                    actor=actor,
                    action=f"incident.{'resolve' if to is Status.RESOLVED else 'expire'}",
                    target=f"incident:{incident_id}",
                    detail={"cause": cause, "withdrawn": ids},
                    at=now,
                )
        except SluiceError:
            raise
        except Exception:
            svc.rolled_back()
            raise
        after()
        timer = self._timers.pop(incident_id, None)
        if timer is not None:
            timer.cancel()
        self.state.targets.pop(inc.target, None)
        return {"incident": inc.view(), "withdrawn": ids, "rules_left_to_ttl": not withdraw}

    async def expire_quiet(self) -> int:
        """End every live incident whose detectors fell silent for the episode timeout."""
        svc = self.service
        before = svc.clock() - timedelta(seconds=svc.policy.escalation.episode_timeout_seconds)
        with svc.engine.connect() as conn:
            quiet = self.store.quiet(conn, before)
        n = 0
        for inc in quiet:
            try:
                self.end(
                    inc.id,
                    Status.EXPIRED,
                    actor="system",
                    cause=f"no signal for {svc.policy.escalation.episode_timeout_seconds} s",
                )
                n += 1
            except SluiceError as exc:  # resolved meanwhile
                log.info("expiring incident %s: %s", inc.id, exc.message)
        return n

    # ------------------------------------------------------------ queries

    def get(self, incident_id: str, *, with_decisions: bool = True) -> dict[str, Any]:
        with self.service.engine.connect() as conn:
            out = self.store.get(conn, incident_id).view()
            if not with_decisions:
                return out
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
            live = conn.execute(
                select(rules.c.id).where(
                    and_(
                        rules.c.incident_id == incident_id,
                        rules.c.state.in_([s.value for s in HELD]),
                    )
                )
            ).scalars()
            out["live_rules"] = list(live)
            out["detector_events"] = self._detector_events(conn, out)
        return out

    @staticmethod
    def _detector_events(conn: Connection, inc: dict[str, Any]) -> list[dict[str, Any]]:
        """Every detector event that fed the incident (source, event id, when first seen),
        in that order: the incident's own (at its opening, unless it took it later) and
        those recorded in ``incident_events``."""
        ie = incident_events
        rows = conn.execute(
            select(ie.c.source, ie.c.event_id, ie.c.at).where(ie.c.incident_id == inc["id"])
        ).all()
        first: dict[tuple[str, str], str] = {(r.source, r.event_id): r.at.isoformat() for r in rows}
        if inc["source"] and inc["event_id"]:
            first.setdefault((inc["source"], inc["event_id"]), inc["opened_at"])
        return [
            {"source": source, "event_id": event_id, "at": at}
            for (source, event_id), at in sorted(first.items(), key=lambda kv: (kv[1], kv[0]))
        ]

    def list(self, *, status: str | None, limit: int, offset: int) -> list[dict[str, Any]]:
        q = select(incidents).order_by(incidents.c.opened_at.desc()).limit(limit).offset(offset)
        if status is not None:
            q = q.where(incidents.c.status == status)
        with self.service.engine.connect() as conn:
            return [Incident.from_row(r).view() for r in conn.execute(q).all()]

    def live_for(self, target: str) -> dict[str, Any] | None:
        with self.service.engine.connect() as conn:
            row = conn.execute(
                select(incidents)
                .where(
                    and_(
                        incidents.c.target == target,
                        incidents.c.status.in_([str(s) for s in LIVE]),
                    )
                )
                .order_by(incidents.c.updated_at.desc())
                .limit(1)
            ).first()
        return Incident.from_row(row).view() if row is not None else None


def _runs(items: list[Item]) -> list[list[Item]]:
    """Split a submission into batches in order: consecutive signals together, each
    ``unban`` alone (it ends an incident in its own transaction)."""
    runs: list[list[Item]] = []
    for item in items:
        if item.action == "unban" or not runs or runs[-1][0].action == "unban":
            runs.append([item])
        else:
            runs[-1].append(item)
    return runs


def _quiet(applied: dict[str, Any]) -> bool:
    """Whether a decision changed nothing in the store: no rule made, refused or withdrawn
    (such answers and rows may be shared by repeats of the decision)."""
    return not (applied["rules"] or applied["refused"] or applied["withdrawn"])


def _decision_rows(
    done: list[tuple[Item, Incident, Decision]], applied: list[dict[str, Any]], now: datetime
) -> list[dict[str, Any]]:
    """A batch's decision rows, in order. Repeats of one decision on one incident that
    changed nothing in the store (:meth:`Intake._decide` hands repeats the same decision)
    share one row object, which :func:`~orchestrator.store.rows.insert_rows` binds once."""
    rows: list[dict[str, Any]] = []
    same: dict[tuple[str, int], dict[str, Any]] = {}
    for k, (_item, inc, d) in enumerate(done):
        a = applied[k]
        quiet = _quiet(a)
        row = same.get((inc.id, id(d))) if quiet else None
        if row is None:
            row = {
                "incident_id": inc.id,
                "at": now,
                "status": d.status,
                "tier": d.tier,
                "explanation": list(d.explanation),
                **a,
            }
            if quiet:
                same[(inc.id, id(d))] = row
        rows.append(row)
    return rows


@dataclass(slots=True)
class _Repeat:
    """An incident's last evaluation in a batch (see :meth:`Intake._decide`)."""

    action: Action
    signal: Signal
    decision: Decision
    held_until: datetime | None
    fixed: bool  # the evaluation left the target's engine state as it found it


def _engine_state(state: EngineState, key: str) -> tuple[object, ...] | None:
    """What of a target's engine state a decision can depend on, as a comparable value."""
    ts = state.peek(key)
    return None if ts is None else snapshot(ts)
