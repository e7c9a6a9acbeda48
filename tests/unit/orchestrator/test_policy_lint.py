"""`sluice policy lint` checks what `sluice serve` checks, and both fail the same clean way;
hot reload reports bad files truthfully (issue 10, item 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.unit.orchestrator.test_signals_api import start
from tests.unit.policies.helpers import policy_data, write

runner = CliRunner()
TIER = (
    "escalation:\n  tiers:\n    - name: tier1\n      bps: 1G\n"
    "      intents: [{type: blackhole}]\n      adapters: [edge]\n"
)


def _adapters(extra: str) -> str:
    return "adapters:\n  - name: edge\n    adapter_type: fake\n" + extra


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """`serve` must stop before the HTTP server; record it if it gets that far."""
    ran: list[Any] = []
    # serve runs uvicorn.Server(config).run() (its own header timeouts); never for real here
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **kw: ran.append(self))
    return ran


def _lint_and_serve(pdir: Path, data: Path, no_server: list[Any]) -> tuple[str, str]:
    lint = runner.invoke(app, ["policy", "lint", str(pdir)])
    assert lint.exit_code == 1, lint.output
    assert isinstance(lint.exception, SystemExit)  # a message, not a traceback
    serve = runner.invoke(app, ["serve", "--policy-dir", str(pdir), "--data-dir", str(data)])
    assert serve.exit_code == 2, serve.output
    assert isinstance(serve.exception, SystemExit) and no_server == []
    return lint.output, serve.output


def test_misspelt_adapter_setting_fails_lint_and_serve_alike(
    tmp_path: Path, no_server: list[Any]
) -> None:
    pdir = write(tmp_path / "p", {"a.yaml": _adapters("    config:\n      latncy_ms: 5\n")})
    (pdir / "b.yaml").write_text(TIER)
    lint, serve = _lint_and_serve(pdir, tmp_path / "var", no_server)
    where = f"{pdir / 'a.yaml'}:5"
    assert where in lint and "latncy_ms" in lint
    assert f"cannot start: {where}" in serve and "latncy_ms" in serve


def test_missing_environment_variable_fails_lint_and_serve_alike(
    tmp_path: Path, no_server: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLUICE_TEST_NOT_SET", raising=False)
    pdir = write(
        tmp_path / "p",
        {
            "a.yaml": _adapters(
                "    config:\n      nested:\n        api_token: ${SLUICE_TEST_NOT_SET}\n"
            )
        },
    )
    (pdir / "b.yaml").write_text(TIER)
    lint, serve = _lint_and_serve(pdir, tmp_path / "var", no_server)
    assert "SLUICE_TEST_NOT_SET is not set" in lint and f"{pdir / 'a.yaml'}:6" in lint
    assert "SLUICE_TEST_NOT_SET" in serve
    # with the variable set, lint passes (and the fake adapter refuses the unknown key)
    monkeypatch.setenv("SLUICE_TEST_NOT_SET", "x")
    lint_ok = runner.invoke(app, ["policy", "lint", str(pdir)])
    assert lint_ok.exit_code == 1 and "nested" in lint_ok.output
    (pdir / "a.yaml").write_text(
        _adapters("    config:\n      fail_announce: ${SLUICE_TEST_NOT_SET}\n")
    )
    lint_ok = runner.invoke(app, ["policy", "lint", str(pdir)])
    assert lint_ok.exit_code == 0, lint_ok.output


def test_lint_of_a_non_utf8_file_names_it(tmp_path: Path, no_server: list[Any]) -> None:
    pdir = write(tmp_path / "p", {"a.yaml": policy_data()})
    (pdir / "b.yaml").write_bytes(b"settings:\n  dry_run: \xff\n")
    lint, serve = _lint_and_serve(pdir, tmp_path / "var", no_server)
    assert f"{pdir / 'b.yaml'}:2: not UTF-8" in lint
    assert f"cannot start: {pdir / 'b.yaml'}:2: not UTF-8" in serve


async def test_hot_reload_reports_bad_files_and_clears_when_they_go(tmp_path: Path) -> None:
    pdir = write(tmp_path / "p", {"a.yaml": _adapters(""), "b.yaml": TIER})
    c = await start(tmp_path, pdir)
    rt = c.app.state.runtime
    try:
        before = c.svc.policy
        (pdir / "c.yaml").write_bytes(b"allowlist:\n  - ip_address: 192.0.2.1\n    label: \xe9\n")
        status = await rt.reload()  # was: UnicodeDecodeError out of the reload job
        assert status is not None and not status.ok
        assert f"{pdir / 'c.yaml'}:3" in (status.error or "") and "UTF-8" in (status.error or "")
        assert c.svc.policy is before
        view = (await c("GET", "/mitigation/escalation-policy")).json()["policy"]
        assert view["last_reload"]["ok"] is False and "c.yaml" in view["last_reload"]["error"]
        # a misspelt adapter setting is refused on reload as lint refuses it
        (pdir / "c.yaml").unlink()
        (pdir / "a.yaml").write_text(_adapters("    config:\n      readbak: false\n"))
        status = await rt.reload()
        assert status is not None and not status.ok and "readbak" in (status.error or "")
        assert f"{pdir / 'a.yaml'}:5" in (status.error or "")
        # the bad file goes: the files are the policy in force again, the error is gone
        (pdir / "a.yaml").write_text(_adapters(""))
        status = await rt.reload()  # was: None, and the old error stayed shown
        assert status is not None and status.ok and status.error is None
        view = (await c("GET", "/mitigation/escalation-policy")).json()["policy"]
        assert view["last_reload"] == {**view["last_reload"], "ok": True, "error": None}
        assert c.svc.policy is before
    finally:
        await c.svc.stop()
