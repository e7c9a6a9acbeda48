"""Group commit for the runbook and channel workers' small writes.

A runbook step's start and result, a delivery's outcome: each must be committed before
the worker goes on (a step's start before its side effect, so a restart knows it was
begun), but a hundred executions starting together need not pay for a hundred
transactions. :meth:`Journal.write` queues a function of the connection and waits; every
write queued in the same turn of the event loop (and those queued while a commit is in
progress) is applied in ONE transaction (:func:`orchestrator.cluster.write`, so under the
writer lock on PostgreSQL), and each caller gets its own function's result once the
transaction is committed. If that transaction fails, each write is tried again in a
transaction of its own, so one bad write fails only its own caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

from orchestrator.cluster import write

log = logging.getLogger("sluice.journal")
T = TypeVar("T")
Op = Callable[[Connection], Any]


class Journal:
    def __init__(self, engine: Engine, *, max_batch: int = 500) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._queue: list[tuple[Op, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.commits = 0  # transactions made (a measure of the batching)

    async def write(self, op: Callable[[Connection], T]) -> T:
        """Apply ``op`` in a (shared) write transaction; returns its result once committed."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.append((op, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="journal-flush")
        # shielded: a cancelled caller does not cancel the commit others wait for
        return await asyncio.shield(fut)

    async def _flush(self) -> None:
        # runs one loop turn after the first write was queued: the writers of that turn
        # have queued theirs. No further yield: under a busy loop (the intake's group
        # commits) every turn waits for a whole intake batch.
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            try:
                with write(self.engine) as conn:
                    results = [op(conn) for op, _ in batch]
            except Exception:
                log.warning("a group commit of %d writes failed; one by one", len(batch))
                for op, fut in batch:
                    try:
                        with write(self.engine) as conn:
                            one = op(conn)
                    except Exception as exc:
                        if not fut.done():
                            fut.set_exception(exc)
                    else:
                        if not fut.done():
                            fut.set_result(one)
                continue
            finally:
                self.commits += 1
            for (_, fut), res in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(res)
