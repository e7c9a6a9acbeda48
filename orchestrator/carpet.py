"""Carpet-bombing awareness in the intake: covering incidents and the /32s they replace.

The policy side (what qualifies, the guardrails, the covering rules) is
:mod:`policies.aggregation`; this module applies it to the intake's batches through three
narrow hooks that single and bulk intake share (:meth:`Carpet.begin` once per batch,
then per signal :meth:`CarpetBatch.cover` before the engine and
:meth:`CarpetBatch.observe` after it):

* **Forming.** A signal whose target crossed a tier counts as attacked. When its prefix
  qualifies, a *covering incident* is opened (its target is the prefix, e.g.
  ``198.51.100.0/24``; ``raw_details.carpet_bombing`` holds the attacked targets, the
  window and the collateral) with the covering rule(s), in the batch's transaction, and
  an ``incident.aggregated`` event says why.
* **Attaching.** Later signals for an address inside a live covering incident update
  that incident (counts, peaks) and make no /32 rule (decision status ``covered``). If
  its covering rules are no longer held, or expire soon, the decision asks for them again
  (status ``refresh``), so a target inside never goes without one.
* **Replacing.** /32 rules planned before the prefix qualified stay until the covering
  rule is *active* (announced; a dry-run rule at once), then :meth:`Carpet.supersede`
  withdraws them (``rule.withdrawing``: "superseded by covering rule ..."): at no moment is
  an attacked target without a rule. If the covering rule fails, they stay.

The attack window lives in the store (table ``carpet_window``), like the covering
incidents: every instance on one PostgreSQL counts the signals all of them receive, and a
restart in the middle of an attack keeps the count. Each batch reads the window of the
prefixes its targets fall in with one query (the first time a signal of the batch
reaches it), works on that copy, and writes what it changed with one bulk upsert in the
batch's own transaction (:meth:`CarpetBatch.store`); on PostgreSQL the writer lock's
generation check makes a batch that read before another instance's write read again.
Rows older than the window are skipped by reads and deleted by a periodic job
(:meth:`Carpet.prune`).

A signal that attaches to a covering incident under its detector's ``source`` +
``event_id`` is recorded (table ``covered_events``), so that the detector's ``unban`` of
that event finds the covering incident (:meth:`Carpet.unban`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, TypeDecorator, and_, delete, func, select, text, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from orchestrator import events as ev
from orchestrator.cluster import write
from orchestrator.incidents import ENDED, LIVE, Incident, IncidentStore, Status
from orchestrator.lifecycle import HELD, State
from orchestrator.store.models import carpet_window, covered_events, incidents, rules
from policies.aggregation import (
    ATTACKED,
    AttackWindow,
    CarpetBombing,
    Covering,
    Refusal,
    blocked_space,
    covering_rules,
    judge,
)
from policies.engine import Decision
from policies.errors import SluiceError
from policies.intents import IPNetwork
from policies.netindex import BITS, to_network
from policies.planning import PlannedRule, compile_policy
from policies.prefixes import PrefixSet

if TYPE_CHECKING:
    from orchestrator.intake import Item
    from orchestrator.service import Service
    from policies.schema import Policy
    from policies.signals import Signal
    from policies.state import EngineState

log = logging.getLogger("sluice.carpet")

ACTOR = "system:carpet-bombing"
SUPERSEDE_WAIT = 60.0  # seconds a formed covering rule is watched for activation
READ_BY_PREFIX = 1000  # a batch touching more candidate prefixes reads the whole window
RUN = ""  # carpet_window.addr of a prefix's own row: when its run of attacks began

Key = tuple[int, int, int]  # (IP version, prefix length, network as an integer)


class StoredWindow(AttackWindow):
    """One batch's copy of the shared attack window, with what the batch changed.

    Read from the store by :meth:`read`; :meth:`store` writes the batch's additions (one
    bulk upsert) and the prefixes it forgot, in the batch's transaction.
    """

    def __init__(self) -> None:
        super().__init__()
        self.added: dict[Key, dict[int, float]] = {}
        self.forgotten: set[Key] = set()

    def add(self, cfg: CarpetBombing, version: int, value: int, now: float) -> None:
        super().add(cfg, version, value, now)
        for plen in cfg.prefix_lengths.for_version(version):
            host = BITS[version] - plen
            self.added.setdefault((version, plen, (value >> host) << host), {})[value] = now

    def forget(self, version: int, plen: int, net_value: int) -> None:
        super().forget(version, plen, net_value)
        self.added.pop((version, plen, net_value), None)
        self.forgotten.add((version, plen, net_value))

    @classmethod
    def read(
        cls, conn: Connection, cfg: CarpetBombing, targets: list[Any], now: float
    ) -> StoredWindow:
        """The live window of every candidate prefix of ``targets`` (one query)."""
        keys: set[Key] = set()
        for target in targets:
            version, value = target.version, int(target)
            for plen in cfg.prefix_lengths.for_version(version):
                host = BITS[version] - plen
                keys.add((version, plen, (value >> host) << host))
        window = cls()
        if not keys:
            return window
        cw = carpet_window
        q = (
            select(cw.c.version, cw.c.plen, cw.c.net, cw.c.addr, cw.c.first_at, cw.c.seen_at)
            .where(cw.c.seen_at >= now - cfg.window_seconds)
            .order_by(cw.c.seen_at)
        )
        if len(keys) <= READ_BY_PREFIX:
            q = q.where(cw.c.net.in_(sorted({str(k[2]) for k in keys})))
        entries: dict[Key, list[tuple[int, float]]] = {}
        since: dict[Key, float] = {}
        for row in conn.execute(q):
            key = (int(row.version), int(row.plen), int(row.net))
            if key not in keys:
                continue
            if row.addr == RUN:
                since[key] = float(row.first_at)
            else:
                entries.setdefault(key, []).append((int(row.addr), float(row.seen_at)))
        for key, found in entries.items():
            window.restore(*key, found)
            if key in since:
                window.restore_since(*key, since[key])
        return window

    def store(self, conn: Connection) -> None:
        """Write what the batch changed (in the batch's transaction)."""
        cw = carpet_window
        by_length: dict[tuple[int, int], list[str]] = {}
        for version, plen, net in self.forgotten:
            by_length.setdefault((version, plen), []).append(str(net))
        for (version, plen), nets in by_length.items():
            conn.execute(
                delete(cw).where(cw.c.version == version, cw.c.plen == plen, cw.c.net.in_(nets))
            )
        rows: list[dict[str, Any]] = []
        for key, found in self.added.items():
            version, plen, net = key
            last = max(found.values())
            began = self.since(*key)
            rows.append(
                {
                    "version": version,
                    "plen": plen,
                    "net": str(net),
                    "addr": RUN,
                    "first_at": last if began is None else began,
                    "seen_at": last,
                }
            )
            rows.extend(
                {
                    "version": version,
                    "plen": plen,
                    "net": str(net),
                    "addr": str(value),
                    "first_at": at,
                    "seen_at": at,
                }
                for value, at in found.items()
            )
        if rows:
            _upsert(conn, cw, rows, ["version", "plen", "net", "addr"], ["first_at", "seen_at"])


def _upsert(
    conn: Connection, table: Any, rows: list[dict[str, Any]], keys: list[str], cols: list[str]
) -> None:
    """One INSERT .. ON CONFLICT DO UPDATE for all ``rows`` (unique by ``keys``).

    On PostgreSQL one statement over arrays (``unnest``): one execution however many
    rows, not one per row as an executemany would be. SQLite runs the executemany in
    process, which is as fast.
    """
    if conn.dialect.name != "postgresql":
        stmt: Any = sqlite_insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=keys, set_={c: getattr(stmt.excluded, c) for c in cols}
        )
        conn.execute(stmt, rows)
        return
    quote = conn.dialect.identifier_preparer.quote
    names = list(rows[0])
    arrays: dict[str, list[Any]] = {}
    casts = []
    for name in names:
        col = table.c[name]
        values = [r[name] for r in rows]
        if isinstance(col.type, TypeDecorator):
            values = [col.type.process_bind_param(v, conn.dialect) for v in values]
        arrays[name] = values
        casts.append(f"CAST(:{name} AS {col.type.compile(dialect=conn.dialect)}[])")
    # identifiers and types from the table's metadata; every value is bound
    sql = (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in names)}) "  # noqa: S608
        f"SELECT * FROM unnest({', '.join(casts)}) "
        f"ON CONFLICT ({', '.join(quote(k) for k in keys)}) DO UPDATE SET "
        + ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in cols)
    )
    conn.execute(text(sql), arrays)


@dataclass
class LiveCover:
    """A live covering incident and its held covering rules."""

    incident: Incident
    network: IPNetwork
    rules: list[Any] = field(default_factory=list)  # rows: id, state, expires_at
    planned: bool = False  # its covering rules were (re)asked for in this batch


def _prefix_of(target: str) -> IPNetwork | None:
    if "/" not in target:
        return None
    try:
        return ip_network(target)
    except ValueError:
        return None


class CarpetBatch:
    """One intake batch's view of carpet bombing (see the module docstring)."""

    def __init__(
        self,
        carpet: Carpet,
        cfg: CarpetBombing,
        covers: list[LiveCover],
        now: datetime,
        targets: list[Any] | None = None,
    ) -> None:
        self.carpet = carpet
        self.cfg = cfg
        self.covers = covers
        self.now = now
        self._targets = targets or []  # the batch's target addresses: the window to read
        self._window: StoredWindow | None = None
        # signals attached to a covering incident under source + event_id (for unbans)
        self.covered: dict[tuple[str, str], dict[str, Any]] = {}
        # covering incidents formed in this batch: (item, incident, decision) to write
        self.formed: list[tuple[Item, Incident, Decision]] = []
        self.events: list[ev.Event] = []

    @property
    def window(self) -> StoredWindow:
        """The shared attack window of the batch's prefixes, read on first use."""
        if self._window is None:
            with self.carpet.service.engine.connect() as conn:
                self._window = StoredWindow.read(
                    conn, self.cfg, self._targets, self.now.timestamp()
                )
        return self._window

    def store(self, conn: Connection) -> None:
        """Inside the batch's transaction: the window's changes and the covered events."""
        if self._window is not None:
            self._window.store(conn)
        if self.covered:
            _upsert(
                conn,
                covered_events,
                list(self.covered.values()),
                ["source", "event_id"],
                ["incident_id", "target", "at", "unbanned_at"],
            )

    def is_new(self, inc: Incident) -> bool:
        """Whether ``inc`` is a covering incident formed in this batch (not yet stored)."""
        return any(f[1] is inc for f in self.formed)

    def _find(self, signal: Signal) -> LiveCover | None:
        addr = signal.target_ip
        for cover in self.covers:
            if cover.network.version == addr.version and addr in cover.network:
                return cover
        return None

    # ------------------------------------------------------------ attaching

    def cover(self, item: Item) -> tuple[Incident, Decision] | None:
        """The covering incident and decision for a signal inside a live covering prefix."""
        sig = item.signal
        if sig is None or item.incident_id is not None or item.action != "ban":
            return None
        cover = self._find(sig)
        if cover is None:
            return None
        inc = cover.incident
        now = self.now
        if item.source and item.event_id:
            self.covered[(item.source, item.event_id)] = {
                "source": item.source,
                "event_id": item.event_id,
                "incident_id": inc.id,
                "target": str(sig.target_ip),
                "at": now,
                "unbanned_at": None,
            }
        inc.signals += 1
        inc.updated_at = now
        inc.peak_bps = max(inc.peak_bps, sig.bps)
        inc.peak_pps = max(inc.peak_pps, sig.pps)
        inc.last_signal = sig.model_dump(mode="json")
        policy = self.carpet.service.policy
        dry = policy.settings.dry_run
        why = [f"{sig.target_ip} is inside {cover.network}, covered by incident {inc.id}"]
        live = [r for r in cover.rules if r.state in (State.PENDING, State.ACTIVE)]
        due = [
            r
            for r in live
            if r.expires_at is not None
            and r.ttl
            and _as_utc(r.expires_at) - now <= timedelta(seconds=min(30.0, r.ttl / 5))
        ]
        status = "covered"
        rules_: tuple[PlannedRule, ...] = ()
        if cover.planned:
            why.append("its covering rule was asked for in this batch")
        elif not live or due:
            why.append(
                "its covering rule expires soon: refreshing"
                if live
                else "its covering rule is not held: asking for it again"
            )
            rules_ = tuple(self.carpet.plan(self.cfg, cover.network, sig, why))
            cover.planned = True
            status = "refresh"
        else:
            why.append(f"no /{cover.network.max_prefixlen} rule: the covering rule mitigates it")
        return inc, Decision(str(sig.target_ip), status, inc.tier, rules_, (), tuple(why), dry)

    # ------------------------------------------------------------ forming

    def observe(self, item: Item, decision: Decision) -> Decision:
        """Count an evaluated signal; when its prefix qualifies, form a covering incident.

        Returns the signal's decision with what carpet bombing made of it explained.
        """
        sig = item.signal
        if sig is None or decision.status not in ATTACKED:
            return decision
        inside = self._find(sig)
        if inside is not None:  # a signal naming its incident, or a hold-down recheck
            return self._strip(decision, inside)
        carpet = self.carpet
        now = self.now.timestamp()
        target = sig.target_ip
        window = self.window
        window.add(self.cfg, target.version, int(target), now)
        found = judge(
            self.cfg,
            window,
            target,
            now,
            protected=carpet.protected(),
            allowed=carpet.allowed(),
            hold_down=carpet.service.policy.escalation.hold_down_seconds,
        )
        if found is None:
            return decision
        if isinstance(found, Refusal):
            return decision._replace(explanation=(*decision.explanation, found.explain()))
        return self._form(item, decision, found)

    def _strip(self, decision: Decision, cover: LiveCover) -> Decision:
        """No /32 inside a live covering prefix: the covering rule mitigates the target.

        What the engine planned is dropped, its withdrawals too (the covering rule
        replaces those rules once active), and the target's engine state is forgotten so
        that it is judged afresh if it is ever attacked outside a cover.
        """
        if not decision.rules and not decision.withdraw:
            return decision
        self.carpet.forget_target(decision.target)
        line = (
            f"carpet bombing: {decision.target} is inside {cover.network}, covered by incident "
            f"{cover.incident.id}: no /{cover.network.max_prefixlen} rule"
        )
        return decision._replace(
            status="covered", rules=(), withdraw=(), explanation=(*decision.explanation, line)
        )

    def _form(self, item: Item, decision: Decision, found: Covering) -> Decision:
        sig = item.signal
        assert sig is not None  # noqa: S101
        why = found.explain()
        if self.carpet.service.policy.settings.dry_run:
            why.insert(0, "dry run: rules are logged, not announced")
        planned = self.carpet.plan(self.cfg, found.network, sig, why)
        if not planned:
            why.append("carpet bombing: no covering rule could be planned; the /32 rules stay")
            return decision._replace(explanation=(*decision.explanation, *why))
        now = self.now
        inc = Incident(
            id=str(uuid.uuid4()),
            target=str(found.network),
            node=sig.node,
            status=Status.OPEN,
            attack_family=sig.attack_family,
            severity=sig.severity,
            peak_bps=sig.bps,
            peak_pps=sig.pps,
            last_signal=sig.model_dump(mode="json"),
            signals=1,
            opened_at=now,
            updated_at=now,
            raw_details={"carpet_bombing": found.to_dict()},
            tier=self.cfg.label(),
        )
        agg = Decision(
            str(found.network),
            "announce",
            self.cfg.label(),
            tuple(planned),
            (),
            tuple(why),
            self.carpet.service.policy.settings.dry_run,
        )
        self.formed.append((item, inc, agg))
        self.covers.append(LiveCover(inc, found.network, planned=True))
        self.events.append(
            ev.Event(
                ev.Kind.INCIDENT_AGGREGATED,
                now,
                incident_id=inc.id,
                detail={**found.to_dict(), "explanation": why},
            )
        )
        # the counts inside are spent: the covering incident takes over
        version, net = found.network.version, int(found.network.network_address)
        for plen in self.cfg.prefix_lengths.for_version(version):
            step = 1 << (found.network.max_prefixlen - plen)
            if plen >= found.network.prefixlen and found.size // step <= 256:
                for sub in range(net, net + found.size, step):
                    self.window.forget(version, plen, sub)
        line = (
            f"carpet bombing: covering incident {inc.id} opened for {found.network}; "
            "this signal's own rules are withdrawn once its covering rule is active"
        )
        return decision._replace(explanation=(*decision.explanation, line))


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Carpet:
    """Carpet-bombing state of one service instance (see the module docstring)."""

    def __init__(self, service: Service, state: Callable[[], EngineState]) -> None:
        self.service = service
        self._state = state
        self._blocked: tuple[Policy, PrefixSet, PrefixSet] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ policy caches

    def _sets(self) -> tuple[PrefixSet, PrefixSet]:
        policy = self.service.policy
        if self._blocked is None or self._blocked[0] is not policy:
            protected = blocked_space(policy.guardrails.protected_prefixes, ())
            allowed = blocked_space((), (to_network(e.net) for e in policy.allowlist.entries))
            self._blocked = (policy, protected, allowed)
        return self._blocked[1], self._blocked[2]

    def forget_target(self, target: str) -> None:
        self._state().targets.pop(target, None)

    def protected(self) -> PrefixSet:
        return self._sets()[0]

    def allowed(self) -> PrefixSet:
        return self._sets()[1]

    def plan(
        self, cfg: CarpetBombing, network: IPNetwork, signal: Signal, why: list[str]
    ) -> list[PlannedRule]:
        policy = self.service.policy
        checker = compile_policy(policy).checker()
        planned = covering_rules(
            cfg,
            tiers=policy.escalation.tiers,
            default_ttl=policy.settings.default_ttl,
            network=network,
            signal=signal,
            checker=checker,
            why=why,
        )
        return [PlannedRule(r.intent, r.adapter, r.ttl, r.reason) for r in planned]

    # ------------------------------------------------------------ the intake hooks

    def begin(
        self, conn: Connection, now: datetime, targets: list[Any] | None = None
    ) -> CarpetBatch | None:
        """The batch's hook, or None when the policy has no carpet bombing in force.

        ``targets`` (the batch's target addresses) say which prefixes' window to read.
        """
        cfg = self.service.policy.carpet_bombing
        if cfg is None or not cfg.enabled:
            return None
        protected, allowed = self._sets()
        covers = [
            c
            for c in self.live_covers(conn)
            if not (protected.overlaps(c.network) or allowed.overlaps(c.network))
        ]
        return CarpetBatch(self, cfg, covers, now, targets)

    @staticmethod
    def live_covers(conn: Connection) -> list[LiveCover]:
        rows = conn.execute(
            select(incidents).where(
                and_(
                    incidents.c.status.in_([str(s) for s in LIVE]),
                    incidents.c.target.like("%/%"),
                )
            )
        ).all()
        covers = []
        for row in rows:
            net = _prefix_of(row.target)
            if net is not None:
                covers.append(LiveCover(Incident.from_row(row), net))
        if covers:
            by_id = {c.incident.id: c for c in covers}
            held = conn.execute(
                select(
                    rules.c.id, rules.c.incident_id, rules.c.state, rules.c.expires_at, rules.c.ttl
                ).where(
                    and_(
                        rules.c.incident_id.in_(sorted(by_id)),
                        rules.c.state.in_([s.value for s in HELD]),
                    )
                )
            ).all()
            for r in held:
                by_id[r.incident_id].rules.append(r)
        covers.sort(key=lambda c: c.network.prefixlen)  # the widest answers first
        return covers

    def after_write(self, batch: CarpetBatch, applied: list[dict[str, Any]]) -> None:
        """Once the batch committed: watch new covering rules until they are active.

        ``applied`` is what the write made of each formed covering incident's decision. A
        covering incident whose rules were all refused (quotas, an adapter gone) ends at
        once, so the targets inside are handled one by one again.
        """
        ids = [r["rule_id"] for a in applied for r in a["rules"]]
        for (_item, inc, _d), result in zip(batch.formed, applied, strict=True):
            if not result["rules"]:
                self._give_up(inc, result["refused"])
        if not batch.formed and not any(c.planned for c in batch.covers):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.supersede()
            return
        task = loop.create_task(self._watch(ids), name="carpet-supersede")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _give_up(self, inc: Incident, refused: list[dict[str, Any]]) -> None:
        why = "; ".join(f"{r['intent']}: {r['message']}" for r in refused[:3]) or "none made"
        cause = f"carpet bombing: the covering rule was refused ({why})"
        log.warning("covering incident %s for %s ended: %s", inc.id, inc.target, cause)
        try:
            with write(self.service.engine) as conn:
                IncidentStore().end(
                    conn, inc, Status.RESOLVED, now=self.service.clock(), by=ACTOR, cause=cause
                )
        except SluiceError as exc:  # ended meanwhile
            log.info("ending covering incident %s: %s", inc.id, exc.message)

    async def _watch(self, rule_ids: list[int]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SUPERSEDE_WAIT
        while loop.time() < deadline:
            try:
                if self.supersede() == 0 and not self._waiting():
                    return
            except Exception:  # the periodic job tries again
                log.exception("superseding /32 rules")
                return
            if rule_ids:
                await self.service.dispatcher.wait_for(rule_ids[0], 0.5)
            else:
                await asyncio.sleep(0.5)

    def _waiting(self) -> bool:
        """Whether a live covering incident still has a covering rule not yet active."""
        with self.service.engine.connect() as conn:
            covers = self.live_covers(conn)
        return any(c.rules and not any(r.state == State.ACTIVE for r in c.rules) for c in covers)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    # ------------------------------------------------------------ the shared window

    def prune_now(self) -> int:
        """Delete the window's rows last seen before the window; returns how many. Also
        forgets the covered events of covering incidents ended for a day.

        No writer lock (nothing reads a dead row, and an upsert that revives one while
        it is deleted waits for the delete and inserts it again).
        """
        cfg = self.service.policy.carpet_bombing
        keep = cfg.window_seconds if cfg is not None and cfg.enabled else 0
        now = self.service.clock()
        oldest = now.timestamp() - keep
        ce = covered_events
        ended = select(incidents.c.id).where(
            incidents.c.status.in_([str(s) for s in ENDED]),
            incidents.c.updated_at < now - timedelta(days=1),
        )
        with self.service.engine.begin() as conn:
            conn.execute(
                delete(ce).where(ce.c.incident_id.in_(ended), ce.c.at < now - timedelta(days=1))
            )
            return int(
                conn.execute(delete(carpet_window).where(carpet_window.c.seen_at < oldest)).rowcount
            )

    async def prune(self) -> int:
        """The periodic job: :meth:`prune_now`, off the event loop on PostgreSQL.

        On SQLite it stays on the loop's thread, where every other write runs: a commit
        from another thread between a loop transaction's first read and its first write
        makes that transaction's snapshot stale, and SQLite then refuses its write.
        """
        if self.service.engine.dialect.name == "sqlite":
            return self.prune_now()
        return await asyncio.to_thread(self.prune_now)

    # ------------------------------------------------------------ unbans of covered events

    def covering_event(self, source: str, event_id: str) -> str | None:
        """The covering incident a signal with this source + event_id attached to."""
        with self.service.engine.connect() as conn:
            found = conn.execute(
                select(covered_events.c.incident_id).where(
                    covered_events.c.source == source, covered_events.c.event_id == event_id
                )
            ).scalar_one_or_none()
        return None if found is None else str(found)

    def unban(self, source: str, event_id: str, incident_id: str) -> int:
        """Mark the covered event unbanned; returns how many events attached to the covering
        incident are still not unbanned."""
        ce = covered_events
        with write(self.service.engine) as conn:
            conn.execute(
                update(ce)
                .where(ce.c.source == source, ce.c.event_id == event_id)
                .values(unbanned_at=self.service.clock())
            )
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(ce)
                    .where(ce.c.incident_id == incident_id, ce.c.unbanned_at.is_(None))
                ).scalar_one()
            )

    async def supersede_due(self) -> int:
        """The periodic safety net (after a restart, or a covering rule another instance
        announced): :meth:`supersede`."""
        return self.supersede()

    # ------------------------------------------------------------ replacing the /32s

    def supersede(self) -> int:
        """Withdraw the per-target policy rules inside every live covering prefix whose
        covering rule is active; returns how many were withdrawn."""
        svc = self.service
        now = svc.clock()
        with svc.engine.connect() as conn:
            covers = self.live_covers(conn)
        protected, allowed = self._sets()
        blocked = [
            c for c in covers if protected.overlaps(c.network) or allowed.overlaps(c.network)
        ]
        for cover in blocked:
            self._end_blocked(cover)
        covers = [
            c for c in covers if c not in blocked and any(r.state == State.ACTIVE for r in c.rules)
        ]
        if not covers:
            return 0
        afters: list[Callable[[], None]] = []
        targets: set[str] = set()
        total = 0
        try:
            with write(svc.engine) as conn:
                for cover in covers:
                    rows = self._inside(conn, cover)
                    if not rows:
                        continue
                    active = next(r.id for r in cover.rules if r.state == State.ACTIVE)
                    reason = (
                        f"superseded by covering rule {active} for {cover.network} "
                        f"(carpet bombing, incident {cover.incident.id})"
                    )
                    ids, after = svc.withdraw_rows_in(
                        conn, rows, actor=ACTOR, reason=reason, now=now
                    )
                    afters.append(after)
                    total += len(ids)
                    targets.update(str(ip_network(r.target).network_address) for r in rows)
        except Exception:
            svc.rolled_back()
            raise
        for after in afters:
            after()
        for target in targets:  # judged afresh if it is ever attacked outside a cover
            self.forget_target(target)
        if total:
            log.info("carpet bombing: %d per-target rules superseded", total)
        return total

    def _end_blocked(self, cover: LiveCover) -> None:
        """A policy change put protected or allowlisted space inside a live covering
        prefix: end its incident and withdraw its rules (the targets inside are judged one
        by one again)."""
        svc = self.service
        now = svc.clock()
        cause = (
            f"carpet bombing: {cover.network} now overlaps protected or allowlisted space; "
            "its covering rule is withdrawn"
        )
        log.warning("covering incident %s: %s", cover.incident.id, cause)
        after: Callable[[], None] = lambda: None  # noqa: E731
        try:
            with write(svc.engine) as conn:
                IncidentStore().end(
                    conn, cover.incident, Status.RESOLVED, now=now, by=ACTOR, cause=cause
                )
                _ids, after = svc.withdraw_incident_in(
                    conn, cover.incident.id, actor=ACTOR, reason=cause, now=now
                )
        except SluiceError as exc:  # ended meanwhile
            log.info("ending covering incident %s: %s", cover.incident.id, exc.message)
            return
        except Exception:
            svc.rolled_back()
            raise
        after()

    @staticmethod
    def _inside(conn: Connection, cover: LiveCover) -> list[Any]:
        """Held policy rules of other incidents whose target lies inside the prefix."""
        net = cover.network
        cond = [
            rules.c.state.in_([s.value for s in HELD]),
            rules.c.origin == "policy",
            rules.c.incident_id.is_not(None),
            rules.c.incident_id != cover.incident.id,
        ]
        if isinstance(net, IPv4Network):
            first, last = str(net.network_address), str(net.broadcast_address)
            common = _common_prefix(first, last)
            if common:
                cond.append(rules.c.target.like(common.replace("%", "") + "%"))
        else:
            assert isinstance(net, IPv6Network)  # noqa: S101
            cond.append(rules.c.target.like("%:%"))
        rows = conn.execute(
            select(
                rules.c.id,
                rules.c.key,
                rules.c.adapter_id,
                rules.c.dry_run,
                rules.c.kind,
                rules.c.state,
                rules.c.target,
            ).where(and_(*cond))
        ).all()
        out = []
        for r in rows:
            try:
                inner = ip_network(r.target, strict=False)
            except ValueError:
                continue
            if (
                inner.version == net.version
                and inner.prefixlen > net.prefixlen
                and ip_address(inner.network_address) in net
            ):
                out.append(r)
        return out


def _common_prefix(a: str, b: str) -> str:
    """The whole leading octets two dotted quads share ("198.51.100." for a /24): every
    address between them starts with it, so it bounds a LIKE query."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[: a.rfind(".", 0, n) + 1]
