"""Incidents: one attack on one target as the detectors report it, and its one owner.

::

    open ──► mitigating ──► resolved
      │          │
      ├──────────┴────────► expired      (no signal for the episode timeout)
      └───────────────────► resolved

* ``open``: signals arrived; no tier's rules yet (below every tier, or held down).
* ``mitigating``: the policy planned a tier's rules for it (``incident.escalated``).
* ``resolved``: a detector's ``unban``, an operator's resolve; final.
* ``expired``: signals stopped for the episode timeout; final.

:class:`IncidentStore` is the only code that writes the ``incidents`` table. Every status
change is checked against :data:`TRANSITIONS` (a refused one raises, is logged and
changes nothing) and recorded in the event log in the same transaction.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from orchestrator import events as ev
from orchestrator.store.models import incident_events, incidents
from orchestrator.store.rows import insert_rows, update_rows
from policies.errors import Conflict, NotFound

log = logging.getLogger("sluice.incidents")

Pair = tuple[str, str]  # a detector's (source, event_id)


class Status(enum.StrEnum):
    OPEN = "open"
    MITIGATING = "mitigating"
    RESOLVED = "resolved"
    EXPIRED = "expired"


LIVE = frozenset({Status.OPEN, Status.MITIGATING})
ENDED = frozenset({Status.RESOLVED, Status.EXPIRED})

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.OPEN: frozenset({Status.MITIGATING, Status.RESOLVED, Status.EXPIRED}),
    Status.MITIGATING: frozenset({Status.RESOLVED, Status.EXPIRED}),
    Status.RESOLVED: frozenset(),
    Status.EXPIRED: frozenset(),
}


class AlreadyEnded(Conflict):
    code = "incident_already_resolved"


def check_move(incident_id: str, current: Status, new: Status) -> None:
    if new in TRANSITIONS[current]:
        return
    log.error("refused incident transition: %s %s -> %s", incident_id, current, new)
    if current in ENDED:
        raise AlreadyEnded(
            f"incident {incident_id} is already {current}; a new signal opens a new incident"
        )
    raise Conflict(
        f"incident {incident_id} is {current}; it cannot become {new}", code="invalid_state"
    )


@dataclass(slots=True)
class Incident:
    id: str
    target: str
    node: str | None
    status: Status
    attack_family: str
    severity: str
    peak_bps: float
    peak_pps: float
    last_signal: dict[str, Any]
    signals: int
    opened_at: datetime
    updated_at: datetime
    resolved_at: datetime | None = None
    source: str | None = None
    event_id: str | None = None
    raw_details: dict[str, Any] | None = None
    tier: str | None = None
    held_until: datetime | None = None
    resolved_by: str | None = None
    # Not a column: detector events that fed this incident in the batch at hand and that
    # its transaction records (table ``incident_events``; see :func:`feed_event`).
    new_events: tuple[Pair, ...] = field(default=(), metadata={"stored": False})

    @classmethod
    def from_row(cls, row: Any) -> Incident:
        values = {name: getattr(row, name) for name in _COLUMNS}
        values["status"] = Status(values["status"])
        return cls(**values)

    def row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _COLUMNS}

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "target_ip": self.target,
            "node": self.node,
            "status": str(self.status),
            "attack_family": self.attack_family,
            "severity": self.severity,
            "peak_bps": self.peak_bps,
            "peak_pps": self.peak_pps,
            "signals": self.signals,
            "tier": self.tier,
            "source": self.source,
            "event_id": self.event_id,
            "raw_details": self.raw_details,
            "last_signal": self.last_signal,
            "held_until": self.held_until.isoformat() if self.held_until else None,
            "opened_at": self.opened_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
            "resolved_by": self.resolved_by,
        }


_COLUMNS = tuple(f.name for f in fields(Incident) if f.metadata.get("stored", True))


def feed_event(inc: Incident, pair: Pair) -> None:
    """A signal named ``pair`` by its detector fed the existing incident ``inc``.

    An incident collects every event id that fed it: a resolve or ``unban`` by any of them
    finds it (:meth:`IncidentStore.by_event`), after a restart too. The pair is recorded
    when the batch's transaction writes the incident (:meth:`IncidentStore.save_signals`,
    or :meth:`IncidentStore.open` for one opened earlier in the batch); an incident that
    had no event id takes this one as its own.
    """
    if pair in inc.new_events:
        return
    if inc.event_id is None:
        inc.source, inc.event_id = pair
    inc.new_events = (*inc.new_events, pair)


# What a signal changes on an incident it updates (not its status).
_SIGNAL_FIELDS = (
    "node",
    "source",
    "event_id",
    "updated_at",
    "last_signal",
    "signals",
    "peak_bps",
    "peak_pps",
    "attack_family",
    "severity",
    "raw_details",
    "tier",
    "held_until",
)

_LIVE = sorted(str(s) for s in LIVE)
# IncidentStore.for_signals: built once (expanding IN lists), not per batch
_FOR_SIGNALS = select(incidents).where(
    or_(
        and_(
            incidents.c.target.in_(bindparam("targets", expanding=True)),
            incidents.c.status.in_(bindparam("live", expanding=True)),
        ),
        and_(
            incidents.c.event_id.in_(bindparam("events", expanding=True)),
            incidents.c.source.in_(bindparam("sources", expanding=True)),
        ),
    )
)
CHUNK = 2000  # values per IN (...) list: far below SQLite's limit on bound parameters


def _chunks(values: Sequence[str]) -> list[list[str]]:
    ordered = sorted(set(values))
    return [ordered[i : i + CHUNK] for i in range(0, len(ordered), CHUNK)]


class IncidentStore:
    """Incident reads and writes; writes work inside the caller's transaction."""

    # Status changes (resolve, expire, escalation of a known incident) attempted in this
    # process, by any instance of the class: whoever keeps incidents in memory
    # (orchestrator.incident_index) drops them when the count moved.
    moves = 0

    # ------------------------------------------------------------ reads

    @staticmethod
    def get(conn: Connection, incident_id: str) -> Incident:
        row = conn.execute(select(incidents).where(incidents.c.id == incident_id)).first()
        if row is None:
            raise NotFound(
                f"incident {incident_id} does not exist",
                code="incident_not_found",
                field="incident_id",
            )
        return Incident.from_row(row)

    @staticmethod
    def by_ids(conn: Connection, ids: Sequence[str]) -> dict[str, Incident]:
        out: dict[str, Incident] = {}
        for chunk in _chunks(ids):
            rows = conn.execute(select(incidents).where(incidents.c.id.in_(chunk))).all()
            out.update((r.id, Incident.from_row(r)) for r in rows)
        return out

    @staticmethod
    def live_by_target(conn: Connection, targets: Sequence[str]) -> dict[str, Incident]:
        """Per target, its latest live incident (quiet ones too: the caller expires them)."""
        out: dict[str, Incident] = {}
        for chunk in _chunks(targets):
            rows = conn.execute(
                select(incidents)
                .where(
                    and_(
                        incidents.c.target.in_(chunk),
                        incidents.c.status.in_([str(s) for s in LIVE]),
                    )
                )
                .order_by(incidents.c.updated_at)
            ).all()
            out.update((r.target, Incident.from_row(r)) for r in rows)  # the latest one wins
        return out

    @staticmethod
    def by_event(conn: Connection, pairs: Sequence[Pair]) -> dict[Pair, Incident]:
        """Per (source, event_id), the latest incident the event fed: the one it opened
        (at its opening) or one it fed later (at that time, table ``incident_events``)."""
        wanted = set(pairs)
        found: dict[str, Incident] = {}
        for chunk in _chunks([e for _, e in wanted]):
            rows = conn.execute(
                select(incidents).where(
                    and_(
                        incidents.c.event_id.in_(chunk),
                        incidents.c.source.in_(sorted({s for s, _ in wanted})),
                    )
                )
            ).all()
            found.update((r.id, Incident.from_row(r)) for r in rows)
        fed = _fed(conn, wanted)
        missing = [i for _, i, _ in fed if i not in found]
        found.update(IncidentStore.by_ids(conn, missing))
        return _latest(wanted, found.values(), fed)

    @staticmethod
    def for_signals(
        conn: Connection, targets: Sequence[str], pairs: Sequence[tuple[str, str]]
    ) -> tuple[dict[str, Incident], dict[tuple[str, str], Incident]]:
        """:meth:`live_by_target` and :meth:`by_event` in one query (a batch of signals
        reads both): per target its latest live incident, per (source, event_id) the
        latest incident so named; an incident both find is one object in both."""
        wanted = set(pairs)
        events = sorted({e for _, e in wanted})
        sources = sorted({s for s, _ in wanted})
        unique = sorted(set(targets))
        targeted = set(unique)
        if len(unique) > CHUNK or len(events) > CHUNK:  # long lists: chunked, one by one
            return IncidentStore.live_by_target(conn, unique), IncidentStore.by_event(conn, pairs)
        rows = conn.execute(
            _FOR_SIGNALS,
            {"targets": unique, "live": _LIVE, "events": events, "sources": sources},
        ).all()
        found = {r.id: (r, Incident.from_row(r)) for r in rows}
        live: dict[str, Incident] = {}
        for r, inc in sorted(found.values(), key=lambda x: x[0].updated_at):
            if r.status in _LIVE and r.target in targeted:
                live[r.target] = inc  # the latest one wins
        if not wanted:
            return live, {}
        known = {i: inc for i, (_, inc) in found.items()}
        fed = _fed(conn, wanted)
        missing = [i for _, i, _ in fed if i not in known]
        known.update(IncidentStore.by_ids(conn, missing))
        return live, _latest(wanted, known.values(), fed)

    @staticmethod
    def due_hold_down(conn: Connection, now: datetime, limit: int = 500) -> list[Incident]:
        rows = conn.execute(
            select(incidents)
            .where(
                and_(
                    incidents.c.status == str(Status.OPEN),
                    incidents.c.held_until.is_not(None),
                    incidents.c.held_until <= now,
                )
            )
            .order_by(incidents.c.held_until)
            .limit(limit)
        ).all()
        return [Incident.from_row(r) for r in rows]

    @staticmethod
    def quiet(conn: Connection, before: datetime, limit: int = 500) -> list[Incident]:
        """Live incidents with no signal since ``before`` (the episode timeout passed)."""
        rows = conn.execute(
            select(incidents)
            .where(
                and_(
                    incidents.c.status.in_([str(s) for s in LIVE]),
                    incidents.c.updated_at < before,
                )
            )
            .order_by(incidents.c.updated_at)
            .limit(limit)
        ).all()
        return [Incident.from_row(r) for r in rows]

    # ------------------------------------------------------------ writes

    def open(self, conn: Connection, new: Sequence[Incident]) -> None:
        if not new:
            return
        for inc in new:
            if inc.status is not Status.OPEN:
                raise ValueError(f"a new incident starts open, not {inc.status}")
        insert_rows(conn, incidents, [i.row() for i in new])
        _record_events(conn, new)
        ev.record(
            conn,
            (
                ev.Event(
                    ev.Kind.INCIDENT_OPENED,
                    i.opened_at,
                    incident_id=i.id,
                    detail={
                        "target_ip": i.target,
                        "source": i.source,
                        "event_id": i.event_id,
                        "attack_family": i.attack_family,
                    },
                )
                for i in new
            ),
        )

    def save_signals(self, conn: Connection, items: Sequence[Incident]) -> None:
        """Write what signals changed on existing incidents (never their status), and the
        detector events that fed them (:func:`feed_event`)."""
        if items:
            update_rows(
                conn,
                incidents,
                "id",
                _SIGNAL_FIELDS,
                [{"id": i.id, **{c: getattr(i, c) for c in _SIGNAL_FIELDS}} for i in items],
            )
            _record_events(conn, items)

    def escalated(
        self, conn: Connection, items: Sequence[tuple[Incident, str | None, str]], *, now: datetime
    ) -> None:
        """The policy planned a tier's rules (per item: incident, tier, decision status):
        each incident is (or stays) mitigating; one statement and one event batch."""
        if not items:
            return
        opening = list({inc.id: inc for inc, _, _ in items if inc.status is Status.OPEN}.values())
        for inc in {i.id: i for i, _, _ in items if i.status is not Status.OPEN}.values():
            if inc.status is not Status.MITIGATING:  # an ended incident is refused here
                self._move(conn, inc, Status.MITIGATING, now)
        moved = 0
        for chunk in _chunks([i.id for i in opening]):
            moved += conn.execute(
                update(incidents)
                .where(and_(incidents.c.id.in_(chunk), incidents.c.status == str(Status.OPEN)))
                .values(status=str(Status.MITIGATING))
            ).rowcount
        if moved != len(opening):  # some changed since they were read: say which
            for inc in opening:
                current = self.get(conn, inc.id)
                if current.status is not Status.MITIGATING:
                    check_move(inc.id, current.status, Status.MITIGATING)
            raise Conflict("incidents changed meanwhile; try again", code="conflict")
        for inc in opening:
            inc.status = Status.MITIGATING
        ev.record(
            conn,
            (
                ev.Event(
                    ev.Kind.INCIDENT_ESCALATED,
                    now,
                    incident_id=inc.id,
                    detail={"tier": tier, "decision": status},
                )
                for inc, tier, status in items
            ),
        )

    def end(
        self, conn: Connection, inc: Incident, to: Status, *, now: datetime, by: str, cause: str
    ) -> None:
        """Resolve or expire ``inc`` (refused with ``incident_already_resolved`` if ended)."""
        self._move(
            conn, inc, to, now, resolved_at=now, resolved_by=by, held_until=None, updated_at=now
        )
        kind = ev.Kind.INCIDENT_RESOLVED if to is Status.RESOLVED else ev.Kind.INCIDENT_EXPIRED
        ev.record(
            conn, [ev.Event(kind, now, incident_id=inc.id, detail={"by": by, "cause": cause})]
        )

    def _move(
        self, conn: Connection, inc: Incident, to: Status, now: datetime, **values: Any
    ) -> None:
        IncidentStore.moves += 1  # (orchestrator.incident_index: its copies may be stale)
        check_move(inc.id, inc.status, to)
        res = conn.execute(
            update(incidents)
            .where(and_(incidents.c.id == inc.id, incidents.c.status == str(inc.status)))
            .values(status=str(to), **values)
        )
        if not res.rowcount:  # changed by someone else since it was read
            current = self.get(conn, inc.id)
            check_move(inc.id, current.status, to)
            raise Conflict(f"incident {inc.id} changed meanwhile; try again", code="conflict")
        inc.status = to
        for k, v in values.items():
            setattr(inc, k, v)


# ---------------------------------------------------------------- events that fed incidents


def _record_events(conn: Connection, items: Sequence[Incident]) -> None:
    """Record the events that fed ``items`` in this batch (one statement; an event already
    recorded for its incident stays as it was)."""
    rows = [
        {"source": s, "event_id": e, "incident_id": i.id, "at": i.updated_at}
        for i in items
        for s, e in i.new_events
    ]
    if not rows:
        return
    stmt: Any
    if conn.dialect.name == "postgresql":
        stmt = pg_insert(incident_events).on_conflict_do_nothing()
    else:
        stmt = sqlite_insert(incident_events).on_conflict_do_nothing()
    conn.execute(stmt, rows)


def _fed(conn: Connection, wanted: set[Pair]) -> list[tuple[Pair, str, datetime]]:
    """``(pair, incident id, when)`` of each wanted event that fed an incident later."""
    out: list[tuple[Pair, str, datetime]] = []
    ie = incident_events
    sources = sorted({s for s, _ in wanted})
    for chunk in _chunks([e for _, e in wanted]):
        rows = conn.execute(
            select(ie.c.source, ie.c.event_id, ie.c.incident_id, ie.c.at).where(
                and_(ie.c.event_id.in_(chunk), ie.c.source.in_(sources))
            )
        ).all()
        out.extend(((r.source, r.event_id), r.incident_id, r.at) for r in rows)
    return [x for x in out if x[0] in wanted]


def _latest(
    wanted: set[Pair], found: Iterable[Incident], fed: Sequence[tuple[Pair, str, datetime]]
) -> dict[Pair, Incident]:
    """Per wanted event, the incident it named last: the one it opened (at its opening)
    or fed (at that time); on a tie, the incident opened last."""
    by_id = {i.id: i for i in found}
    best: dict[Pair, tuple[datetime, datetime, Incident]] = {}

    def offer(pair: Pair, at: datetime, inc: Incident) -> None:
        key = (at, inc.opened_at, inc)
        if pair not in best or key[:2] > best[pair][:2]:
            best[pair] = key

    for inc in by_id.values():
        if inc.event_id is not None and (pair := (str(inc.source), inc.event_id)) in wanted:
            offer(pair, inc.opened_at, inc)
    for pair, incident_id, at in fed:
        if (named := by_id.get(incident_id)) is not None:
            offer(pair, at, named)
    return {pair: inc for pair, (_, _, inc) in best.items()}
