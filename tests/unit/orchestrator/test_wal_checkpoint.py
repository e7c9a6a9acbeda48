"""The service's SQLite log is checkpointed by a thread of its own, not by its commits.

A commit that crosses ``wal_autocheckpoint`` copies the log into the database and syncs
it, on the committing thread (in the service: the event loop). The service's engine
raises that threshold to a fallback and a :class:`WalCheckpointer` thread does the copy.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from sqlalchemy import Engine, text

from labs.netns import wait_for
from orchestrator.service import Service
from orchestrator.store.checkpoint import FALLBACK_PAGES, WalCheckpointer
from orchestrator.store.db import make_engine
from tests.unit.orchestrator.conftest import policy, settings_for

PAGE = 4096
ROW = b"x" * 3000  # about one page per row


def fill(engine: Engine, commits: int, rows: int) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS blobs (id INTEGER PRIMARY KEY, b BLOB)"))
    for _ in range(commits):
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO blobs (b) VALUES (:b)"), [{"b": ROW}] * rows)


def wal_pages(db: Path) -> int:
    wal = db.with_name(db.name + "-wal")
    return wal.stat().st_size // (PAGE + 24) if wal.exists() else 0


def test_the_service_engine_leaves_checkpoints_to_the_thread(tmp_path: Path) -> None:
    own, plain = tmp_path / "own.db", tmp_path / "plain.db"
    left = make_engine(f"sqlite:///{own}", checkpoint_thread=True)
    usual = make_engine(f"sqlite:///{plain}")
    try:
        with left.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == FALLBACK_PAGES
        with usual.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000
        fill(left, 20, 100)  # about 2,000 pages, in commits of about 100
        fill(usual, 20, 100)
        # SQLite's own commits checkpointed the plain log at 1,000 pages and reused it;
        # the other one was left to grow, nothing having checkpointed it
        assert wal_pages(plain) < 1300
        assert wal_pages(own) > 1900
    finally:
        left.dispose()
        usual.dispose()


def test_the_thread_copies_the_log_into_the_database(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    engine = make_engine(f"sqlite:///{db}", checkpoint_thread=True)
    cp = WalCheckpointer(db, interval=0.05)
    try:
        cp.start()
        assert cp.running
        fill(engine, 5, 100)
        wait_for(
            lambda: cp.last is not None and cp.last[0] >= 500 and cp.last[0] == cp.last[1],
            timeout=30,
            what="a checkpoint that copied the whole log",
            diagnose=lambda: f"last round: {cp.last}, rounds {cp.rounds}, errors {cp.errors}",
        )
    finally:
        cp.stop()
        engine.dispose()
    assert not cp.running
    assert cp.errors == 0
    # the database file alone, without its log, holds every row: the pages were copied
    alone = tmp_path / "alone.db"
    shutil.copyfile(db, alone)
    with sqlite3.connect(alone) as conn:
        assert conn.execute("SELECT count(*) FROM blobs").fetchone() == (500,)


async def test_the_service_runs_the_thread_while_it_runs(tmp_path: Path) -> None:
    svc = Service(settings_for(tmp_path), policy=policy())
    cp = svc._checkpointer
    assert cp is not None
    assert not cp.running
    await svc.start()
    try:
        assert cp.running
    finally:
        await svc.stop()
    assert not cp.running
    assert cp.rounds >= 1  # stopping ran one last round


async def test_no_thread_for_a_store_in_memory(tmp_path: Path) -> None:
    svc = Service(settings_for(tmp_path, database_url="sqlite://"), policy=policy())
    assert svc._checkpointer is None
