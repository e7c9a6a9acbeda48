"""`sluice serve` run in-process leaves the logging set-up as it found it.

Typer's test runner closes the stderr it lends each call; a handler left on it made every
later log line in the test run print ``--- Logging error ---``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.unit.orchestrator.test_policy_lint import no_server  # noqa: F401  # fixture

runner = CliRunner()


@pytest.mark.parametrize("outcome", ["served", "refused"])
def test_serve_restores_the_root_logger(
    outcome: str,
    tmp_path: Path,
    no_server: list[Any],  # noqa: F811  # the fixture imported above
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level, logging.getLogger("apscheduler").level)
    args = ["serve", "--data-dir", str(tmp_path / "data"), "--log-level", "debug"]
    if outcome == "refused":
        args += ["--policy-dir", str(tmp_path / "no-such-dir")]
    res = runner.invoke(app, args)
    assert res.exit_code == (0 if outcome == "served" else 2), res.output
    assert len(no_server) == (1 if outcome == "served" else 0)
    after = (list(root.handlers), root.level, logging.getLogger("apscheduler").level)
    assert after == before
    logging.getLogger("sluice.test").error("a line after serve")
    assert "Logging error" not in capsys.readouterr().err
