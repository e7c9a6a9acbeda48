"""A throwaway PostgreSQL cluster for tests and benchmarks.

Debian's ``postgresql`` package ships ``initdb`` and ``pg_ctl`` under
``/usr/lib/postgresql/<version>/bin``. :class:`ThrowawayPostgres` makes a cluster in a
temporary directory, listening only on a unix socket in that directory (no TCP port, so
two test runs never collide), with durability switched off (``fsync=off``: a test store is
thrown away). PostgreSQL refuses to run as root: as root the cluster runs as the
``postgres`` system user that the package creates. Everything is removed on exit, also when
the test fails.

    with ThrowawayPostgres() as pg:
        url = pg.create_database("t1")   # postgresql+psycopg://sluice@/t1?host=...
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from labs.netns import LabError

USER = "sluice"
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin directory, or None."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


class ThrowawayPostgres:
    def __init__(self) -> None:
        bindir = postgres_bin()
        if bindir is None:
            raise LabError("PostgreSQL server is not installed (Debian package postgresql)")
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="sluice-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root
        self._as_root = os.geteuid() == 0
        self._started = False

    def _run(self, *argv: str, timeout: float = 60) -> str:
        cmd = list(argv)
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if res.returncode != 0:
            raise LabError(f"{' '.join(argv[:2])}: {res.stderr.strip() or res.stdout.strip()}")
        return res.stdout

    def start(self) -> None:
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self.root.chmod(0o700)
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            USER,
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        options = (
            f"-k {self.socket_dir} -c listen_addresses='' -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "postgres.log"),
            "-w",
            "-t",
            "60",
            "start",
            timeout=90,
        )
        self._started = True

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self._run(
            str(self.bindir / "psql"),
            "-h",
            str(self.socket_dir),
            "-U",
            USER,
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-Atc",
            sql,
        )

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{USER}@/{database}?host={self.socket_dir}"

    def create_database(self, name: str) -> str:
        if not _NAME.match(name):
            raise LabError(f"not a plain database name: {name!r}")
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        try:
            if self._started:
                self._run(
                    str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"
                )
                self._started = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> ThrowawayPostgres:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop()
