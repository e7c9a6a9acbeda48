"""The incidents signals touch, kept in memory so a batch of signals reads none of them
from the store when nothing but this process's own batches changed them.

A batch of signals (:class:`orchestrator.intake.Intake`) needs, per target, its latest live
incident, and per detector ``(source, event_id)`` the latest incident so named. The index
answers from memory and reads only what it does not know
(:meth:`~orchestrator.incidents.IncidentStore.for_signals`, "none" remembered too). It is
exact, never "fresh enough":

* it learns a batch's incidents only after that batch's transaction committed, from the
  objects the transaction wrote (:meth:`IncidentIndex.committed`);
* it forgets everything when anything else may have changed an incident:
  - a status change in this process outside a batch's own writes (resolve, ``unban``,
    expiry, carpet bombing's covers): :attr:`IncidentStore.moves` moved;
  - a batch that failed, or that changed what it cannot vouch for (an incident given a
    detector's event id that its transaction did not record);
  - on PostgreSQL, another instance's write: every write transaction bumps the store's
    generation (:mod:`orchestrator.cluster`); the index reads it at each batch (one
    one-row query instead of the incident reads) and is kept only when nobody but this
    process wrote since it last looked (the writer lock's ``on_foreign`` tells it about a
    foreign write that this process's own writes came after);
* it hands out copies: a batch changes its incidents in memory before it writes them.

SQLite has one service per data directory (orchestrator/instance.py): only the first two
apply there. The index is bounded (:data:`MAX_ENTRIES`); when full it starts over.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import replace

from sqlalchemy import Connection, Engine, select

from orchestrator.cluster import GENERATION_ROW, writers
from orchestrator.incidents import LIVE, Incident, IncidentStore
from orchestrator.store.models import cluster_state

MAX_ENTRIES = 300_000  # incidents + targets + event ids remembered, at most
Pair = tuple[str, str]

_GENERATION = select(cluster_state.c.generation).where(cluster_state.c.name == GENERATION_ROW)


class Read:
    """What one batch read: the incidents (copies, one object per incident) per target
    and per event, and what the index must check before it learns the batch's writes."""

    __slots__ = ("by_event", "live", "moves", "pairs")

    def __init__(
        self, live: dict[str, Incident], by_event: dict[Pair, Incident], moves: int
    ) -> None:
        self.live = live
        self.by_event = by_event
        self.moves = moves
        # the event id each incident had when read (a batch may give one in memory only)
        self.pairs: dict[str, tuple[str | None, str | None]] = {}
        self.note((*live.values(), *by_event.values()))

    def note(self, read: Iterable[Incident]) -> None:
        """Incidents the batch read elsewhere (by id)."""
        for i in read:
            self.pairs.setdefault(i.id, (i.source, i.event_id))


class IncidentIndex:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.shared = engine.dialect.name == "postgresql"
        self._rows: dict[str, Incident] = {}  # incident id -> as committed
        self._targets: dict[str, str | None] = {}  # target -> its live incident's id
        self._events: dict[Pair, str | None] = {}  # (source, event_id) -> latest incident
        self._moves = IncidentStore.moves
        self._generation: int | None = None
        self._foreign = 0  # foreign writes the writer lock reported
        self._foreign_seen = 0
        self._lock = threading.Lock()  # on_foreign runs on whichever thread writes
        if self.shared:
            writers(engine).on_foreign(self._on_foreign)
        self.hits = 0  # (for tests and curiosity) targets and events answered from memory
        self.misses = 0

    def _on_foreign(self) -> None:
        with self._lock:
            self._foreign += 1

    def clear(self) -> None:
        self._rows.clear()
        self._targets.clear()
        self._events.clear()

    def _validate(self, conn: Connection) -> None:
        """Forget everything that may have changed since the index last looked."""
        if IncidentStore.moves != self._moves:
            self._moves = IncidentStore.moves
            self.clear()
        if not self.shared:
            return
        generation = int(conn.execute(_GENERATION).scalar_one())
        with self._lock:
            foreign, self._foreign_seen = self._foreign != self._foreign_seen, self._foreign
        # unchanged, or changed by this process alone (its last write is the newest, and no
        # foreign write came before one of its own: on_foreign would have said so)
        ours = generation == writers(self.engine).seen()
        if foreign or (generation != self._generation and not ours):
            self.clear()
        self._generation = generation

    def read(self, conn: Connection, targets: Sequence[str], pairs: Sequence[Pair]) -> Read:
        """Per target its latest live incident, per event the latest incident so named
        (as :meth:`IncidentStore.for_signals`), from memory where known."""
        self._validate(conn)
        moves = self._moves
        want_t, want_p = set(targets), set(pairs)
        miss_t = [t for t in want_t if t not in self._targets]
        miss_p = [p for p in want_p if p not in self._events]
        self.hits += len(want_t) + len(want_p) - len(miss_t) - len(miss_p)
        self.misses += len(miss_t) + len(miss_p)
        if miss_t or miss_p:
            held = len(self._rows) + len(self._targets) + len(self._events)
            if held + 2 * (len(miss_t) + len(miss_p)) > MAX_ENTRIES:
                self.clear()
                miss_t, miss_p = list(want_t), list(want_p)
            live, by_event = IncidentStore.for_signals(conn, miss_t, miss_p)
            for inc in (*live.values(), *by_event.values()):
                self._rows[inc.id] = replace(inc)
            for t in miss_t:
                found = live.get(t)
                self._targets[t] = found.id if found is not None else None
            for p in miss_p:
                named = by_event.get(p)
                self._events[p] = named.id if named is not None else None
        copies: dict[str, Incident] = {}

        def copy(incident_id: str) -> Incident:
            if incident_id not in copies:
                copies[incident_id] = replace(self._rows[incident_id])
            return copies[incident_id]

        out_t = {t: copy(i) for t in want_t if (i := self._targets[t]) is not None}
        out_p = {p: copy(i) for p in want_p if (i := self._events[p]) is not None}
        return Read(out_t, out_p, moves)

    def committed(self, read: Read, written: Iterable[Incident], *, opened: set[str]) -> None:
        """A batch's transaction committed: learn its incidents as written (``opened``: the
        ids of the incidents it opened)."""
        if IncidentStore.moves != read.moves or self._moves != read.moves:
            self._moves = IncidentStore.moves
            self.clear()  # the batch (or something meanwhile) moved a status
            return
        for inc in written:
            named = read.pairs.get(inc.id) != (inc.source, inc.event_id)
            if inc.id not in opened and named and (inc.source, inc.event_id) not in inc.new_events:
                self.clear()  # named in memory only: what the store holds is not this
                return
        for inc in written:
            # the events that fed it are recorded now: the latest incident each named
            for pair in inc.new_events:
                if pair in self._events:  # (not read: unknown it stays)
                    self._events[pair] = inc.id
            self._rows[inc.id] = replace(inc, new_events=())
            if inc.status in LIVE:
                self._targets[inc.target] = inc.id
            elif self._targets.get(inc.target) == inc.id:
                self._targets[inc.target] = None
            if inc.id in opened and inc.source is not None and inc.event_id is not None:
                pair = (inc.source, inc.event_id)
                if pair not in self._events:
                    continue  # not read: unknown it stays
                known = self._events[pair]
                if known is None or self._rows[known].opened_at <= inc.opened_at:
                    self._events[pair] = inc.id
                else:  # an older clock: the store's latest is another one
                    del self._events[pair]
        if self.shared:
            self._generation = writers(self.engine).seen()

    def failed(self) -> None:
        """A batch failed (its copies may hold changes the store does not)."""
        self.clear()
