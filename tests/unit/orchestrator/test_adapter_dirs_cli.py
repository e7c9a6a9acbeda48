"""`sluice policy lint` and `sluice serve` judge adapter paths by the same service settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.unit.orchestrator.test_policy_lint import TIER, no_server  # noqa: F401  # fixture
from tests.unit.policies.helpers import write

runner = CliRunner()


def _policy(root: Path, state_file: Path) -> Path:
    adapters = (
        "adapters:\n  - name: edge\n    adapter_type: fake\n"
        f"    config:\n      state_file: {state_file}\n"
    )
    pdir = write(root / "p", {"a.yaml": adapters})
    (pdir / "b.yaml").write_text(TIER)
    return pdir


def test_lint_and_serve_allow_what_sluice_adapter_dirs_allows(
    tmp_path: Path,
    no_server: list[Any],  # noqa: F811  # the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    monkeypatch.setenv("SLUICE_ADAPTER_DIRS", str(allowed))
    inside = _policy(tmp_path / "in", allowed / "edge.jsonl")
    lint = runner.invoke(app, ["policy", "lint", str(inside)])
    assert lint.exit_code == 0, lint.output
    serve = runner.invoke(
        app, ["serve", "--policy-dir", str(inside), "--data-dir", str(tmp_path / "data")]
    )
    assert serve.exit_code == 0, serve.output
    assert len(no_server) == 1  # it got as far as the HTTP server

    outside = _policy(tmp_path / "out", tmp_path / "elsewhere" / "edge.jsonl")
    lint = runner.invoke(app, ["policy", "lint", str(outside)])
    assert lint.exit_code == 1 and "config.state_file" in lint.output, lint.output
    assert "outside the directories" in " ".join(lint.output.split())
    serve = runner.invoke(
        app, ["serve", "--policy-dir", str(outside), "--data-dir", str(tmp_path / "data")]
    )
    assert serve.exit_code == 2 and "config.state_file" in serve.output, serve.output
    assert len(no_server) == 1


def test_lint_judges_a_gobgp_endpoint_by_sluice_speaker_endpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapters = "adapters:\n  - name: edge\n    adapter_type: gobgp\n    endpoint: 10.0.0.5:50051\n"
    pdir = write(tmp_path / "p", {"a.yaml": adapters})
    (pdir / "b.yaml").write_text(TIER)
    monkeypatch.delenv("SLUICE_SPEAKER_ENDPOINTS", raising=False)
    lint = runner.invoke(app, ["policy", "lint", str(pdir)])
    assert lint.exit_code == 1 and "endpoint" in lint.output, lint.output
    assert "is not a speaker endpoint the service allows" in " ".join(lint.output.split())
    monkeypatch.setenv("SLUICE_SPEAKER_ENDPOINTS", "loopback:50051,10.0.0.0/24:50051")
    lint = runner.invoke(app, ["policy", "lint", str(pdir)])
    assert lint.exit_code == 0, lint.output
