"""Shared test helpers.

Tests that need root or real daemons call :func:`need` (or use the ``root``/``lab``
markers with it). Without the prerequisite they skip; with ``SLUICE_REQUIRE_LAB=1``, as
CI sets, the same condition is a failure, so a CI run cannot go green by skipping them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

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
