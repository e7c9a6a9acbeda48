"""One service per data directory, and online backups of it.

``sluice serve`` on a SQLite store takes an exclusive ``flock`` on ``<data-dir>/sluice.lock``
before it opens the database, reads the policy or touches a speaker. A second ``serve`` on
the same directory fails at once, naming the process that holds it, instead of
re-announcing rules and then failing on its port. The kernel drops the lock when the
holder dies (``kill -9`` included), so a stale lock file never blocks a restart.

:func:`backup` makes a consistent copy of a running service's store with SQLite's online
backup API (readers and the writer go on meanwhile), together with the data directory's
other files (keys, anchors) that the store cannot be read without.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from policies.errors import SluiceError

LOCK_NAME = "sluice.lock"
DB_NAME = "sluice.db"
# files that belong to the live database or to the lock, never copied as they are
_LIVE_FILES = {LOCK_NAME, DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", f"{DB_NAME}-journal"}


class InstanceLocked(SluiceError):
    """Another service holds the data directory."""

    code = "instance_locked"


class InstanceLock:
    """An exclusive, non-blocking lock on a data directory, held while the service runs."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        handle = os.fdopen(fd, "r+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise InstanceLocked(
                f"another Sluice service (pid {holder}) is running on {self.path.parent}; "
                "stop it first, or give this one its own --data-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.release()


@dataclass(frozen=True)
class BackupResult:
    directory: Path
    database: Path
    pages: int
    files: tuple[str, ...]


def backup(data_dir: Path, output: Path) -> BackupResult:
    """Copy the store of ``data_dir`` (consistent, online) and its key files into ``output``.

    ``output`` must not exist yet; it is created 0700 and every file in it 0600.
    """
    source = data_dir / DB_NAME
    if not source.is_file():
        raise SluiceError(f"no Sluice store at {source}")
    if output.exists():
        raise SluiceError(f"{output} already exists; name a new directory for the backup")
    output.mkdir(parents=True, mode=0o700)
    target = output / DB_NAME
    # read-only URI: the backup never writes to (or migrates) the live store
    src = sqlite3.connect(f"file:{source.resolve()}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst, pages=1024)
        pages = int(dst.execute("PRAGMA page_count").fetchone()[0])
        check = dst.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            raise SluiceError(f"the copy failed its integrity check: {check}")
        # a backup is one file, whatever journal mode the live store uses
        dst.execute("PRAGMA journal_mode=DELETE")
    finally:
        dst.close()
        src.close()
    target.chmod(0o600)
    copied = [DB_NAME]
    for entry in sorted(data_dir.iterdir()):
        if entry.name in _LIVE_FILES or not entry.is_file() or entry.is_symlink():
            continue
        shutil.copy2(entry, output / entry.name)
        (output / entry.name).chmod(0o600)
        copied.append(entry.name)
    return BackupResult(directory=output, database=target, pages=pages, files=tuple(copied))
