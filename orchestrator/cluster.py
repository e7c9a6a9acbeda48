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
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, delete, func, select, text, update
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


# ---------------------------------------------------------------- the driver leases

ADAPTER_LEASE = "adapter:"  # + adapter id: who drives that adapter, and its fencing token
MEMBER_LEASE = "member:"  # + holder: an instance alive (renewed with its leases)


def adapter_lease(adapter_id: int) -> str:
    return f"{ADAPTER_LEASE}{adapter_id}"


class Fenced(Exception):
    """This instance no longer holds the adapter's lease: its write is refused."""

    def __init__(self, adapter_id: int, message: str) -> None:
        super().__init__(message)
        self.adapter_id = adapter_id


class AdapterLeases:
    """Who drives each adapter: one instance at a time per adapter, a lease row each.

    Every round (:meth:`acquire`, one transaction) renews the leases this instance holds,
    renews its membership row, and takes adapters whose lease lapsed or was never held,
    up to its fair share: ``ceil(adapters / live instances)``. So two instances split the
    adapters between them, and when one dies only its adapters move. An instance holding
    more than its share (another one joined) gives one adapter up per round; a lease
    lapsed for longer than ``ttl`` is taken whatever the share, so nothing stays undriven.

    A lease lapses ``ttl`` seconds after its last renewal (the database's clock decides).
    Each takeover increments the lease's fencing ``token``. Two fences:

    - :meth:`valid` before every send: false as soon as the last successful renewal is
      older than ``ttl - margin`` on this process's monotonic clock, so a holder that was
      paused (SIGSTOP, a long GC, a frozen VM) stops sending before anyone else can have
      taken over;
    - :meth:`check` inside every write transaction that records what an adapter did: the
      lease row (read ``FOR SHARE``, so a takeover waits for the write or the write for
      the takeover) must still name this instance with the token it holds; if another
      instance took over meanwhile the write raises :class:`Fenced` and rolls back.
    """

    def __init__(
        self, engine: Engine, holder: str, *, ttl: float = 5.0, margin: float = 1.5
    ) -> None:
        self.engine = engine
        self.holder = holder
        self.ttl = ttl
        self.margin = margin
        self.tokens: dict[int, int] = {}  # adapter id -> fencing token held
        self._renewed_at = float("-inf")
        # monotonic time at which the first lease another instance holds lapses, if it is
        # not renewed (the round then may take it over: see LeaseKeeper)
        self.next_lapse: float | None = None

    def valid(self, adapter_id: int) -> bool:
        return adapter_id in self.tokens and (
            time.monotonic() - self._renewed_at < self.ttl - self.margin
        )

    def held(self) -> set[int]:
        return {a for a in self.tokens if self.valid(a)}

    def acquire(self, adapter_ids: Collection[int]) -> tuple[set[int], set[int]]:
        """Renew, take and give up leases; returns (gained, lost) adapter ids.

        ``gained`` includes an adapter this instance held before under an older token (its
        lease lapsed, nobody took it, it was taken anew): it must be driven afresh.
        """
        started = time.monotonic()
        now = func.timezone("UTC", func.now())
        ttl = text(f"interval '{float(self.ttl)} seconds'")
        until = now + ttl
        ids = sorted(set(adapter_ids))
        names = [adapter_lease(a) for a in ids]
        before = dict(self.tokens)
        mine: dict[int, int] = {}
        with self.engine.begin() as conn:
            member = MEMBER_LEASE + self.holder
            conn.execute(
                pg_insert(leases)
                .values(name=member, holder=self.holder, token=0, expires_at=until)
                .on_conflict_do_update(index_elements=["name"], set_={"expires_at": until})
            )
            conn.execute(  # members gone for an hour: forget them
                delete(leases).where(
                    leases.c.name.startswith(MEMBER_LEASE),
                    leases.c.expires_at < now - text("interval '1 hour'"),
                )
            )
            members = int(
                conn.execute(
                    select(func.count())
                    .select_from(leases)
                    .where(leases.c.name.startswith(MEMBER_LEASE), leases.c.expires_at > now)
                ).scalar_one()
            )
            if names:
                conn.execute(
                    pg_insert(leases)
                    .values(
                        [{"name": n, "holder": "", "token": 0, "expires_at": now} for n in names]
                    )
                    .on_conflict_do_nothing(index_elements=["name"])
                )
            rows = conn.execute(
                select(
                    leases.c.name,
                    leases.c.holder,
                    leases.c.token,
                    leases.c.expires_at < now,
                    leases.c.expires_at < now - ttl,
                    func.extract("epoch", leases.c.expires_at - now),
                )
                .where(leases.c.name.in_(names))
                .order_by(leases.c.name)
                .with_for_update()
            ).all()
            share = -(-len(ids) // max(1, members))
            free: list[tuple[int, int, bool]] = []
            lapse: float | None = None
            for name, holder, token, lapsed, orphaned, left in rows:
                aid = int(str(name).removeprefix(ADAPTER_LEASE))
                ours = holder == self.holder and before.get(aid) == int(token)
                if ours and not lapsed:
                    mine[aid] = int(token)
                elif ours or lapsed or holder == "":
                    free.append((aid, int(token), bool(orphaned) or ours))
                elif holder != self.holder:
                    lapse = float(left) if lapse is None else min(lapse, float(left))
            renew = [adapter_lease(a) for a in mine]
            if renew:
                conn.execute(
                    update(leases).where(leases.c.name.in_(renew)).values(expires_at=until)
                )
            for aid, token, urgent in free:
                if len(mine) >= share and not urgent:
                    continue
                mine[aid] = token + 1
                conn.execute(
                    update(leases)
                    .where(leases.c.name == adapter_lease(aid))
                    .values(holder=self.holder, token=token + 1, expires_at=until)
                )
            if len(mine) > share and members > 1:
                # another instance joined: give one adapter up (it takes it next round)
                give = max(mine)
                del mine[give]
                conn.execute(
                    update(leases)
                    .where(leases.c.name == adapter_lease(give))
                    .values(expires_at=now - text("interval '1 hour'"))
                )
        self.tokens = mine
        self._renewed_at = started
        self.next_lapse = None if lapse is None else time.monotonic() + lapse
        gained = {a for a, t in mine.items() if before.get(a) != t}
        lost = set(before) - set(mine)
        return gained, lost

    def check(self, conn: Connection, adapter_id: int, token: int | None = None) -> None:
        """Inside a write transaction: raise :class:`Fenced` unless this instance still
        holds the adapter's lease under the token it drives with (``token``, by default
        the one the newest round holds)."""
        if token is None:
            token = self.tokens.get(adapter_id)
        row = conn.execute(
            select(leases.c.holder, leases.c.token)
            .where(leases.c.name == adapter_lease(adapter_id))
            .with_for_update(read=True)
        ).first()
        if token is None or row is None or row.holder != self.holder or row.token != token:
            now_held = "nobody" if row is None else f"{row.holder} (token {row.token})"
            raise Fenced(
                adapter_id,
                f"adapter {adapter_id} is driven by {now_held}, not by this instance "
                f"(token {token}): write refused",
            )

    def release(self) -> None:
        """Give every lease up (a clean stop): the others take them over at once."""
        names = [adapter_lease(a) for a in self.tokens]
        with self.engine.begin() as conn:
            if names:
                conn.execute(
                    update(leases)
                    .where(leases.c.name.in_(names), leases.c.holder == self.holder)
                    .values(expires_at=func.timezone("UTC", func.now()) - text("interval '1 hour'"))
                )
            conn.execute(delete(leases).where(leases.c.name == MEMBER_LEASE + self.holder))
        self.tokens = {}


LAPSE_SLACK = 0.05  # seconds after another holder's lease lapses before the round


class LeaseKeeper:
    """Runs the lease rounds of one instance on a thread of its own, every ``period``.

    Renewal and takeover (:meth:`AdapterLeases.acquire`) never wait for the event loop:
    an instance whose loop is busy (a storm of intake, a long synchronous call) keeps its
    leases, and a survivor whose loop is busy still takes a dead holder's adapters over in
    time (a round runs a period after the previous one started, or right after a lease
    another instance holds lapses, whichever is first). The loop only learns the outcome:
    after every round ``notify`` is called (from this thread) and the loop reads
    :meth:`snapshot`, the adapters held and their tokens as of the newest round, to start
    driving what was won and stop driving what was lost.

    The rounds use a connection pool of their own (``engine``), so requests that hold
    every connection of the service's pool (waiting for the writer lock) cannot starve
    them.
    """

    def __init__(
        self,
        leases: AdapterLeases,
        adapter_ids: Callable[[], Collection[int]],
        notify: Callable[[], object],
        *,
        period: float | None = None,
    ) -> None:
        self.leases = leases
        self.adapter_ids = adapter_ids
        self.notify = notify
        self.period = leases.ttl / 5 if period is None else period
        self.rounds = 0  # rounds that reached the database (renewed or not)
        self._snapshot: dict[int, int] = {}
        self._mutex = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._waiters: list[Future[dict[int, int]]] = []
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sluice-leases", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """No more rounds (what is held stays held until it lapses or is released)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self._mutex:
            waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_exception(RuntimeError("the lease rounds stopped"))

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def kick(self) -> Future[dict[int, int]]:
        """Run a round now (an adapter was added); the future gets its snapshot."""
        fut: Future[dict[int, int]] = Future()
        with self._mutex:
            if self._stopping.is_set():
                fut.set_exception(RuntimeError("the lease rounds stopped"))
                return fut
            self._waiters.append(fut)
        self._wake.set()
        return fut

    def snapshot(self) -> dict[int, int]:
        """Adapter id -> fencing token, of the leases the newest round holds."""
        with self._mutex:
            return dict(self._snapshot)

    def _run(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            with self._mutex:
                waiters, self._waiters = self._waiters, []
            try:
                self.leases.acquire(list(self.adapter_ids()))
            except Exception as exc:
                # what is held stays fenced by its expiry (AdapterLeases.valid)
                log.exception("renewing the driver leases")
                for fut in waiters:
                    fut.set_exception(exc)
            else:
                held = dict(self.leases.tokens)
                with self._mutex:
                    self._snapshot = held
                    self.rounds += 1
                for fut in waiters:
                    fut.set_result(held)
            if self._stopping.is_set():
                break
            try:
                self.notify()
            except Exception:  # the loop is closing
                log.debug("could not tell the event loop about a lease round", exc_info=True)
            # the next round a period after this one started, or as soon as a lease
            # another instance holds lapses (a dead holder's adapters are taken at once)
            until = started + self.period
            lapse = self.leases.next_lapse
            if lapse is not None:
                until = min(until, lapse + LAPSE_SLACK)
            self._wake.wait(max(0.0, until - time.monotonic()))
            self._wake.clear()
