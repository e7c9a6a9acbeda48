"""Engine creation, schema migrations and the data directory's permissions.

SQLite runs in WAL mode with ``synchronous=NORMAL`` (durable across a process crash; a
power loss may lose the last transactions) and a busy timeout; PostgreSQL needs nothing
special. The schema is always brought to Alembic's head at start-up.

The data directory is 0700 and the SQLite file 0600 (created so before SQLite opens it;
SQLite gives its ``-wal`` and ``-shm`` files the database file's mode, and existing ones
are tightened too).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event

from orchestrator.store.checkpoint import FALLBACK_PAGES, JOURNAL_SIZE_LIMIT

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def _checkpointed_elsewhere(dbapi_conn: Any, _record: Any) -> None:
    """A :class:`~orchestrator.store.checkpoint.WalCheckpointer` checkpoints the log:
    commits do it themselves only past the fallback threshold."""
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_PAGES}")
    cur.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
    cur.close()


def secure_dir(path: Path) -> None:
    """Create ``path`` (0700) or take group and other access away from it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o700)


def secure_sqlite_files(db: Path) -> None:
    """Create the database file 0600 if missing; make it and its WAL/SHM files 0600."""
    fd = os.open(db, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        try:
            if stat.S_IMODE(path.stat().st_mode) & 0o077:
                path.chmod(0o600)
        except FileNotFoundError:
            continue


def json_text(value: Any) -> str:
    """How JSON columns are written: orjson, several times faster than ``json.dumps``
    (a bulk intake writes some ten JSON values per signal); keys that are not strings
    are written as strings, as ``json.dumps`` does. What orjson refuses and ``json.dumps``
    writes (an integer beyond 64 bits, e.g. in a detector's raw_details) goes through
    ``json.dumps``."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(value)


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other stores, for a database in memory
    and for a ``file:`` URI."""
    if not url.startswith("sqlite") or "///" not in url:
        return None
    path = url.split("///", 1)[1].split("?", 1)[0]
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return Path(path)


def make_engine(url: str, *, checkpoint_thread: bool = False) -> Engine:
    """The engine for ``url``. On SQLite, ``checkpoint_thread`` says a
    :class:`~orchestrator.store.checkpoint.WalCheckpointer` will checkpoint the log, so
    the engine's own commits leave that to it (the service's engine)."""
    if url.startswith("sqlite"):
        path = sqlite_file(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            secure_sqlite_files(path)
        engine = create_engine(
            url, connect_args={"check_same_thread": False}, json_serializer=json_text
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        if checkpoint_thread:
            event.listen(engine, "connect", _checkpointed_elsewhere)
        return engine
    return create_engine(url, pool_pre_ping=True, json_serializer=json_text)


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration."""
    command.upgrade(alembic_config(engine), "head")
