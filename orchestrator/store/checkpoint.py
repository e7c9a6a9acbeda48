"""Checkpointing a SQLite store's write-ahead log on a thread of its own.

In WAL mode SQLite appends every commit to the ``-wal`` file and copies those pages back
into the database ("checkpoints") once the log holds ``wal_autocheckpoint`` pages (1,000
by default). That copy, and the ``fsync`` of the database file that ends it, is run by
whichever commit crosses the threshold. In the service most commits run on the event
loop's thread, so during a storm of signals one batch commit in every few stalled the
loop for tens of milliseconds (a bulk intake of 10,000 signals writes about 40 MB) while
HTTP requests and rule announcements waited.

:class:`WalCheckpointer` takes that work off the writers. The service's connections raise
their own threshold to :data:`FALLBACK_PAGES` (see :func:`orchestrator.store.db.make_engine`),
and this thread runs a passive checkpoint every :attr:`~WalCheckpointer.interval` on a
connection of its own. A passive checkpoint never waits for a lock and never blocks a
reader or a writer; SQLite releases the GIL while it copies, so the copy runs beside the
loop on another core. Frames still in use by an open read transaction are left for a
later round.

The fallback threshold keeps the log bounded if this thread is not running (a service
built but not started, or the thread stopped by an error): commits then checkpoint by
themselves again, only less often. After a checkpoint, a log that grew past
:data:`JOURNAL_SIZE_LIMIT` is truncated back to it the next time SQLite restarts the log.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)

FALLBACK_PAGES = 10_000  # about 40 MB of log before a commit checkpoints by itself
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes of log kept once it has been checkpointed


class WalCheckpointer:
    """Passive checkpoints of one SQLite database file, every ``interval`` seconds."""

    def __init__(self, path: Path, *, interval: float = 0.5) -> None:
        self.path = path
        self.interval = interval
        self.rounds = 0  # checkpoints run
        # after the last round: (frames in the log, frames of it in the database)
        self.last: tuple[int, int] | None = None
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after one last checkpoint (the log is left short)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False)
        except sqlite3.Error as exc:
            log.error("WAL checkpoints left to the writers: %s", exc)  # noqa: TRY400
            return
        try:
            while True:
                stopping = self._stop.wait(self.interval)
                self.checkpoint(conn)
                if stopping:
                    return
        finally:
            conn.close()

    def checkpoint(self, conn: sqlite3.Connection) -> tuple[int, int] | None:
        """One passive checkpoint on ``conn``: (frames in the log, frames of it now in
        the database), or None when it failed."""
        try:
            _busy, logged, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # e.g. the file went away: try again next round
            self.errors += 1
            if self.errors == 1 or self.errors % 100 == 0:
                log.warning("WAL checkpoint failed (%d times): %s", self.errors, exc)
            return None
        self.rounds += 1
        self.last = (int(logged), int(copied))
        return self.last
