"""Prometheus series for a NOC, computed when scraped (nothing polls in the background).

Two sources, both read at scrape time:

* cheap aggregate queries over the store and the service's memory: rules by state and
  adapter, adapter status, BGP session state per peer, incidents open, signals received,
  the policy's last reload;
* the event log and the decisions table, read from where the previous scrape stopped:
  counters and histograms (decisions, guardrail refusals, rule failures, session flaps,
  policy reloads, time from request to announce, expiry lateness). Each scrape reads only
  what was appended since the last one, so the cost stays flat as the log grows.

A scrape far behind the log (the first one, or after a storm) does not walk it row by
row in Python: it asks the database for the same counters and histogram buckets as
aggregates (``GROUP BY`` and ``SUM(CASE ...)`` up to the newest id it saw,
:meth:`SluiceCollector._aggregate`), then follows from there.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import ColumnElement, Float, Integer, String, and_, case, cast, func, or_, select

from orchestrator.store.models import decisions, events, incidents, rules

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from orchestrator.runtime import PolicyRuntime
    from orchestrator.service import Service

ANNOUNCE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
LATENESS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
PAGE = 20_000


class Histogram:
    def __init__(self, buckets: Iterable[float]) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * len(self.bounds)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for i, b in enumerate(self.bounds):
            if value <= b:
                self.counts[i] += 1

    def family(self, name: str, doc: str, labels: dict[str, str] | None = None) -> Metric:
        fam = HistogramMetricFamily(name, doc, labels=list(labels or {}))
        buckets = [(_le(b), float(c)) for b, c in zip(self.bounds, self.counts, strict=True)]
        buckets.append(("+Inf", float(self.total)))
        fam.add_metric(list((labels or {}).values()), buckets, self.sum)
        return fam


def _le(b: float) -> str:
    return repr(float(b))


class SluiceCollector(Collector):
    def __init__(
        self,
        service: Service,
        runtime: PolicyRuntime | None = None,
        *,
        aggregate_after: int | None = PAGE,
    ) -> None:
        self.service = service
        self.runtime = runtime
        self._lock = threading.Lock()
        self._event_cursor = 0
        self._decision_cursor = 0
        self.events_by_kind: Counter[tuple[str, str]] = Counter()  # (kind, adapter)
        self.decisions: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self.announce = Histogram(ANNOUNCE_BUCKETS)
        self.lateness = Histogram(LATENESS_BUCKETS)
        # how far behind the log a scrape asks the database to aggregate rather than read
        # the rows (None: always read them; the tests compare both ways)
        self.aggregate_after = aggregate_after

    # ------------------------------------------------------------ the log, aggregated once

    def _seconds_between(self, a: Any, b: Any) -> ColumnElement[Any]:
        """``a - b`` in seconds, to the microsecond, computed by the database."""
        if self.service.engine.dialect.name == "sqlite":
            # stored as 'YYYY-MM-DD HH:MM:SS.ffffff' (naive UTC): whole seconds + micros
            whole = cast(func.strftime("%s", a), Integer) - cast(func.strftime("%s", b), Integer)
            micro = cast(func.substr(a, 21, 6), Integer) - cast(func.substr(b, 21, 6), Integer)
            return cast(whole * 1_000_000 + micro, Float) / 1_000_000.0  # as total_seconds()
        return cast(func.extract("epoch", a - b), Float)

    def _histogram(
        self, conn: Connection, hist: Histogram, kind: str, since: Any, upto: Any
    ) -> None:
        # the difference once per row: a subquery SQLite cannot fold into the aggregate
        # (it has a LIMIT), so the buckets compare a number, not re-parse two timestamps
        diffs = (
            select(self._seconds_between(events.c.at, since).label("d"))
            .select_from(events.join(rules, rules.c.id == events.c.rule_id))
            .where(upto, events.c.kind == kind, since.is_not(None))
            .limit(2**62)
            .subquery()
        )
        d = diffs.c.d
        cols: list[ColumnElement[Any]] = [func.count(), func.coalesce(func.sum(d), 0.0)]
        cols += [func.coalesce(func.sum(case((d <= b, 1), else_=0)), 0) for b in hist.bounds]
        row = conn.execute(select(*cols).select_from(diffs)).one()
        hist.total += int(row[0])
        hist.sum += float(row[1])
        for i, n in enumerate(row[2:]):
            hist.counts[i] += int(n)

    def _aggregate(self, conn: Connection, head: int, dhead: int) -> None:
        """Counters and histograms of the log up to ``head``, aggregated by the database."""
        svc = self.service
        since = events.c.id > self._event_cursor
        upto = and_(since, events.c.id <= head)
        # rule events carry their adapter; only older rows without it need the rule's
        groups: list[Any] = list(
            conn.execute(
                select(events.c.kind, events.c.adapter_id, func.count())
                .where(upto, or_(events.c.adapter_id.is_not(None), events.c.rule_id.is_(None)))
                .group_by(events.c.kind, events.c.adapter_id)
            ).all()
        )
        groups += conn.execute(
            select(events.c.kind, rules.c.adapter_id, func.count())
            .select_from(events.join(rules, rules.c.id == events.c.rule_id))
            .where(upto, events.c.adapter_id.is_(None))
            .group_by(events.c.kind, rules.c.adapter_id)
        ).all()
        for kind, adapter_id, n in groups:
            name = svc.hub.name_of(adapter_id) if adapter_id is not None else ""
            self.events_by_kind[(kind, name)] += int(n)
        self._histogram(conn, self.announce, "rule.active", rules.c.created_at, upto)
        self._histogram(conn, self.lateness, "rule.expired", rules.c.expires_at, upto)
        dupto = and_(decisions.c.id > self._decision_cursor, decisions.c.id <= dhead)
        for status, n in conn.execute(
            select(decisions.c.status, func.count()).where(dupto).group_by(decisions.c.status)
        ).all():
            self.decisions[status] += int(n)
        # refusals are few: only the decisions that have any are read
        for (refused,) in conn.execute(
            select(decisions.c.refused).where(
                and_(dupto, cast(decisions.c.refused, String) != "[]")
            )
        ).all():
            self._count_refusals(refused)
        self._event_cursor, self._decision_cursor = head, dhead

    def _count_refusals(self, refused: Any) -> None:
        for item in refused or []:
            code = item.get("code", "refused") if isinstance(item, dict) else "refused"
            self.refusals[str(code)] += 1

    # ------------------------------------------------------------ the log, incrementally

    def _follow(self) -> None:
        svc = self.service
        with svc.engine.connect() as conn:
            head = int(conn.execute(select(func.coalesce(func.max(events.c.id), 0))).scalar_one())
            if (
                self.aggregate_after is not None
                and head - self._event_cursor > self.aggregate_after
            ):
                # far behind (the first scrape, or a storm since the last one): the
                # database counts, rather than this process reading every row
                dhead = int(
                    conn.execute(select(func.coalesce(func.max(decisions.c.id), 0))).scalar_one()
                )
                self._aggregate(conn, head, dhead)
            while True:
                rows = conn.execute(
                    select(
                        events.c.id,
                        events.c.kind,
                        events.c.at,
                        events.c.adapter_id,
                        rules.c.adapter_id.label("rule_adapter"),
                        rules.c.created_at,
                        rules.c.expires_at,
                    )
                    .select_from(events.outerjoin(rules, rules.c.id == events.c.rule_id))
                    .where(events.c.id > self._event_cursor)
                    .order_by(events.c.id)
                    .limit(PAGE)
                ).all()
                for r in rows:
                    adapter_id = r.adapter_id if r.adapter_id is not None else r.rule_adapter
                    name = svc.hub.name_of(adapter_id) if adapter_id is not None else ""
                    self.events_by_kind[(r.kind, name)] += 1
                    if r.kind == "rule.active" and r.created_at is not None:
                        self.announce.observe(_seconds(r.at, r.created_at))
                    elif r.kind == "rule.expired" and r.expires_at is not None:
                        self.lateness.observe(_seconds(r.at, r.expires_at))
                if rows:
                    self._event_cursor = int(rows[-1].id)
                if len(rows) < PAGE:
                    break
            while True:
                drows = conn.execute(
                    select(decisions.c.id, decisions.c.status, decisions.c.refused)
                    .where(decisions.c.id > self._decision_cursor)
                    .order_by(decisions.c.id)
                    .limit(PAGE)
                ).all()
                for d in drows:
                    self.decisions[d.status] += 1
                    self._count_refusals(d.refused)
                if drows:
                    self._decision_cursor = int(drows[-1].id)
                if len(drows) < PAGE:
                    break

    # ------------------------------------------------------------ collect

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            self._follow()
            yield from self._from_log()
        yield from self._from_store()

    def _from_log(self) -> Iterator[Metric]:
        ev = CounterMetricFamily(
            "sluice_events",
            "Events written to the event log, by kind and adapter",
            labels=["kind", "adapter"],
        )
        for (kind, adapter), n in sorted(self.events_by_kind.items()):
            ev.add_metric([kind, adapter], n)
        yield ev
        failed = CounterMetricFamily(
            "sluice_rule_failures", "Rules that ended failed, by adapter", labels=["adapter"]
        )
        flaps = CounterMetricFamily(
            "sluice_bgp_session_transitions",
            "BGP sessions that came up or went down, by adapter",
            labels=["adapter", "direction"],
        )
        reloads = CounterMetricFamily("sluice_policy_reloads", "Policy changes put in force")
        n_reloads = 0
        for (kind, adapter), n in self.events_by_kind.items():
            if kind == "rule.failed":
                failed.add_metric([adapter], n)
            elif kind == "adapter.session_up":
                flaps.add_metric([adapter, "up"], n)
            elif kind == "adapter.session_down":
                flaps.add_metric([adapter, "down"], n)
            elif kind == "policy.reloaded":
                n_reloads += n
        reloads.add_metric([], n_reloads)
        yield failed
        yield flaps
        yield reloads
        dec = CounterMetricFamily(
            "sluice_decisions", "Policy decisions on signals, by outcome", labels=["status"]
        )
        for status, n in sorted(self.decisions.items()):
            dec.add_metric([status], n)
        yield dec
        ref = CounterMetricFamily(
            "sluice_guardrail_refusals",
            "Rules a decision wanted that a guardrail refused, by code",
            labels=["code"],
        )
        for code, n in sorted(self.refusals.items()):
            ref.add_metric([code], n)
        yield ref
        yield self.announce.family(
            "sluice_request_to_announce_seconds",
            "Time from a rule's request to its announcement being confirmed (rule.active)",
        )
        yield self.lateness.family(
            "sluice_expiry_lateness_seconds", "How long after its expiry a rule was withdrawn"
        )

    def _from_store(self) -> Iterator[Metric]:
        svc = self.service
        with svc.engine.connect() as conn:
            by = conn.execute(
                select(rules.c.state, rules.c.adapter_id, func.count()).group_by(
                    rules.c.state, rules.c.adapter_id
                )
            ).all()
            open_incidents = conn.execute(
                select(incidents.c.status, func.count())
                .where(incidents.c.resolved_at.is_(None))
                .group_by(incidents.c.status)
            ).all()
            signals = conn.execute(select(func.coalesce(func.sum(incidents.c.signals), 0))).scalar()
            now = svc.clock()
            late = conn.execute(
                select(func.min(rules.c.expires_at)).where(
                    rules.c.state == "active", rules.c.expires_at.is_not(None)
                )
            ).scalar()
        fam = GaugeMetricFamily(
            "sluice_rules", "Rules by state and adapter", labels=["state", "adapter"]
        )
        for state, adapter_id, n in by:
            fam.add_metric([str(state), svc.hub.name_of(adapter_id)], n)
        yield fam
        overdue = GaugeMetricFamily(
            "sluice_expiry_overdue_seconds",
            "How far past its expiry the most overdue active rule is (0 when none is)",
        )
        overdue.add_metric([], max(0.0, _seconds(now, late)) if late is not None else 0.0)
        yield overdue
        inc = GaugeMetricFamily(
            "sluice_incidents_open", "Open incidents by status", labels=["status"]
        )
        for status, n in open_incidents:
            inc.add_metric([str(status)], n)
        yield inc
        sig = CounterMetricFamily("sluice_signals", "Signals received (all incidents)")
        sig.add_metric([], float(signals or 0))
        yield sig
        up = GaugeMetricFamily(
            "sluice_adapter_up",
            "1 when the adapter's last health check passed",
            labels=["adapter", "type"],
        )
        sess = GaugeMetricFamily(
            "sluice_bgp_session_up",
            "1 when the BGP session with the peer is established",
            labels=["adapter", "peer", "state"],
        )
        for rec in svc.hub.records():
            up.add_metric(
                [rec.name, rec.adapter_type], 1.0 if rec.to_api()["status"] == "connected" else 0.0
            )
            seen = svc.sessions.get(rec.id)
            for peer, state in sorted((seen.states if seen else {}).items()):
                sess.add_metric([rec.name, peer, state], 1.0 if state == "established" else 0.0)
        yield up
        yield sess
        if self.runtime is not None:
            status = self.runtime.reload_status
            ok = GaugeMetricFamily(
                "sluice_policy_reload_ok", "1 when the policy directory's last change was taken"
            )
            ok.add_metric([], 1.0 if status.ok else 0.0)
            yield ok


def _seconds(a: datetime, b: datetime) -> float:
    return (a - b).total_seconds()


def registry_for(service: Service, runtime: PolicyRuntime | None) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SluiceCollector(service, runtime))
    return reg
