"""Shared test helpers.

Tests that need root or real daemons call :func:`need` (or use the ``root``/``lab``
markers with it). Without the prerequisite they skip; with ``SLUICE_REQUIRE_LAB=1``, as
CI sets, the same condition is a failure, so a CI run cannot go green by skipping them.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from labs.postgres import ThrowawayPostgres, postgres_bin

REQUIRE_LAB = os.environ.get("SLUICE_REQUIRE_LAB") == "1"


def need(condition: bool, why: str) -> None:
    """Skip (or, in CI, fail) the calling test unless ``condition`` holds."""
    if condition:
        return
    if REQUIRE_LAB:
        pytest.fail(f"required for this test and SLUICE_REQUIRE_LAB=1: {why}")
    pytest.skip(why)


def need_root() -> None:
    need(os.geteuid() == 0, "needs root for network namespaces")


def need_binaries(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None and not Path(n).exists()]
    need(not missing, f"missing binaries: {', '.join(missing)}")


@pytest.fixture(scope="session")
def postgres() -> Iterator[ThrowawayPostgres]:
    """One throwaway PostgreSQL cluster for the whole run (see labs/postgres.py)."""
    need(postgres_bin() is not None, "PostgreSQL server missing (Debian package postgresql)")
    with ThrowawayPostgres() as pg:
        yield pg


_databases = itertools.count(1)


@pytest.fixture
def postgres_url(postgres: ThrowawayPostgres) -> str:
    """A new, empty database in the session's cluster, for this test alone."""
    return postgres.create_database(f"test_{next(_databases)}")


@pytest.fixture(autouse=True)
def root_logging_restored() -> Iterator[None]:
    """Undo what a test's in-process ``sluice serve`` (or agent) did to the root logger.

    Their logging set-up puts a plain StreamHandler on the stream of the moment (a test
    runner's capture, closed after the test) and lowers the level: later tests' threads
    would log into the closed stream ("--- Logging error ---" in the output).
    """
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in before and type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    root.setLevel(level)
