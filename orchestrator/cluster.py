"""Several instances on one PostgreSQL store: one writer at a time, and stale caches noticed.

Every write transaction of the service goes through :func:`write`. On PostgreSQL it first
takes a transaction-scoped advisory lock (``pg_advisory_xact_lock``, released at commit
or rollback), so write transactions of all instances run one after the other:

- the audit chain's head is read and advanced inside the entry's transaction while no
  other instance can append (no fork, no duplicate id);
- event ids are assigned under the lock and the lock is held until commit, so ids become
  visible in commit order: a consumer paging with ``after=<last id>`` never skips a
  late-committed id;
- dedupe (the live-rule index), quotas (held rules, FlowSpec budgets, new rules in the
  last minute) and cooldowns are checked against what every instance wrote.

The lock also bumps a generation counter (table ``cluster_state``). An instance that finds
the generation moved since its own last write knows another instance wrote, and rebuilds
what it keeps in memory (its ``on_foreign`` callbacks run inside the locked transaction,
before the caller's work). A writer that read outside the lock (the signal intake reads
incidents first) passes the generation it read at and gets :class:`StaleRead` when another
instance wrote in between; it retries with fresh reads.

SQLite needs none of this: one service per data directory (orchestrator/instance.py), and
SQLite serialises writers itself; :func:`write` is a plain ``engine.begin()`` there.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from orchestrator.store.models import cluster_state, leases

log = logging.getLogger("sluice.cluster")

WRITER_LOCK = 0x51C1_0001  # advisory lock key of the writer lock
GENERATION_ROW = "writers"


class StaleRead(Exception):
    """Another instance wrote after the caller read; read again and retry."""


class Writers:
    """The writer lock and generation bookkeeping of one engine (one per process)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.shared = engine.dialect.name == "postgresql"
        self._seen = 0  # the generation after this process's last committed write
        self._callbacks: list[Callable[[], None]] = []
        self._mutex = threading.Lock()

    def on_foreign(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (inside the locked transaction) when another instance wrote."""
        self._callbacks.append(callback)

    def seen(self) -> int:
        return self._seen

    @contextmanager
    def write(self, read_at: int | None = None) -> Iterator[Connection]:
        if not self.shared:
            with self.engine.begin() as conn:
                yield conn
            return
        with self.engine.begin() as conn:
            conn.execute(select(func.pg_advisory_xact_lock(WRITER_LOCK)))
            gen = int(
                conn.execute(
                    update(cluster_state)
                    .where(cluster_state.c.name == GENERATION_ROW)
                    .values(generation=cluster_state.c.generation + 1)
                    .returning(cluster_state.c.generation)
                ).scalar_one()
            )
            before = gen - 1
            with self._mutex:
                foreign = before != self._seen
                if foreign:
                    for callback in self._callbacks:
                        callback()
                    self._seen = before  # memory now matches the store as of the lock
            if read_at is not None and read_at != before:
                raise StaleRead(f"the store moved from generation {read_at} to {before}")
            yield conn
        with self._mutex:
            self._seen = max(self._seen, gen)


_WRITERS: weakref.WeakKeyDictionary[Engine, Writers] = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


def writers(engine: Engine) -> Writers:
    with _REGISTRY_LOCK:
        found = _WRITERS.get(engine)
        if found is None:
            found = _WRITERS[engine] = Writers(engine)
        return found


@contextmanager
def write(engine: Engine, read_at: int | None = None) -> Iterator[Connection]:
    """A write transaction: ``engine.begin()``, under the writer lock on PostgreSQL."""
    with writers(engine).write(read_at) as conn:
        yield conn


# ---------------------------------------------------------------- the driver lease

DRIVER_LEASE = "drivers"


class Lease:
    """Who drives the speakers: one instance at a time, through a lease row with expiry.

    The holder renews it every ``renew`` seconds; it lapses ``ttl`` seconds after the last
    renewal (the database's clock decides, so instances need no common clock), and any
    other instance then takes it over with the next fencing ``token``. The holder checks
    :meth:`valid` before every send to a speaker: it is false as soon as the last
    successful renewal is older than ``ttl - margin`` on this process's monotonic clock,
    so a holder that was paused (SIGSTOP, a long GC, a frozen VM) stops sending before
    anyone else can have taken over, and starts again only after it won the lease anew.
    """

    def __init__(self, engine: Engine, holder: str, *, ttl: float = 5.0, margin: float = 1.5):
        self.engine = engine
        self.holder = holder
        self.ttl = ttl
        self.margin = margin
        self.token: int | None = None
        self._renewed_at = float("-inf")

    def valid(self) -> bool:
        return self.token is not None and (
            time.monotonic() - self._renewed_at < self.ttl - self.margin
        )

    def acquire(self) -> bool:
        """Take or renew the lease; True when this instance holds it afterwards."""
        started = time.monotonic()
        now = func.timezone("UTC", func.now())
        until = now + text(f"interval '{float(self.ttl)} seconds'")
        with self.engine.begin() as conn:
            conn.execute(
                pg_insert(leases)
                .values(name=DRIVER_LEASE, holder="", token=0, expires_at=now)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            row = conn.execute(
                select(leases.c.holder, leases.c.token, leases.c.expires_at < now)
                .where(leases.c.name == DRIVER_LEASE)
                .with_for_update()
            ).one()
            holder, token, lapsed = str(row[0]), int(row[1]), bool(row[2])
            if holder == self.holder and self.token == token and not lapsed:
                conn.execute(
                    update(leases).where(leases.c.name == DRIVER_LEASE).values(expires_at=until)
                )
            elif holder == self.holder and self.token == token and lapsed:
                # ours, but it lapsed: nobody took it; renew under a new token all the same
                token += 1
                conn.execute(
                    update(leases)
                    .where(leases.c.name == DRIVER_LEASE)
                    .values(token=token, expires_at=until)
                )
            elif lapsed or holder == "":
                token += 1
                conn.execute(
                    update(leases)
                    .where(leases.c.name == DRIVER_LEASE)
                    .values(holder=self.holder, token=token, expires_at=until)
                )
            else:
                self.token = None
                return False
        self.token = token
        self._renewed_at = started
        return True

    def release(self) -> None:
        if self.token is None:
            return
        with self.engine.begin() as conn:
            conn.execute(
                update(leases)
                .where(leases.c.name == DRIVER_LEASE, leases.c.holder == self.holder)
                .values(expires_at=func.timezone("UTC", func.now()) - text("interval '1 hour'"))
            )
        self.token = None
