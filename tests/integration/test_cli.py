"""The ``sluice`` command line against a real running service: what scripts rely on.

Every ``--json`` output parses; exit codes say what happened (0 done, 1 refused or
failed, 2 cannot even ask); adapters are named by id or name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.integration.test_crash import TOKEN, Server, free_port

pytestmark = pytest.mark.slow

runner = CliRunner()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("cli")
    pdir = tmp / "policy"
    pdir.mkdir()
    (pdir / "settings.yaml").write_text("settings:\n  cooldown_seconds: 0\n")
    (pdir / "adapters.yaml").write_text(
        "adapters:\n"
        "  - name: router\n    adapter_type: fake\n"
        "  - name: broken\n    adapter_type: fake\n    config:\n"
        "      fail_announce: 'the router said no'\n      fail_retryable: false\n"
        "      healthy: false\n"
    )
    srv = Server(Path(tmp), pdir)
    srv.start()
    yield srv
    srv.stop()


def sluice(srv: Server | None, *args: str, token: str = TOKEN) -> tuple[int, str, str]:
    url = srv.url if srv is not None else f"http://127.0.0.1:{free_port()}"
    res = runner.invoke(app, [*args, "--url", url, "--token", token])
    return res.exit_code, res.stdout, res.stderr


def as_json(out: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(out)
    return body


def test_version() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0
    assert res.stdout.strip() == f"sluice {version('sluice')}"


def test_clear_messages_when_it_cannot_ask(server: Server) -> None:
    code, _, stderr = sluice(server, "rules", "list", token="")
    assert code == 2 and "no API token" in stderr
    code, _, stderr = sluice(None, "rules", "list")
    assert code == 2 and "cannot reach the service" in stderr
    code, _, stderr = sluice(server, "rules", "list", token="x" * 40)
    # the CLI's own message is the last line (earlier lines can be other tests' logging)
    last = stderr.strip().splitlines()[-1]
    assert code == 1 and "401" not in last and "token" in last.lower(), stderr


def test_rule_life_in_json(server: Server) -> None:
    code, out, _ = sluice(
        server, "rules", "add", "203.0.113.77", "--type", "blackhole", "--adapter", "router",
        "--ttl", "600", "--reason", "cli test", "--json",
    )  # fmt: skip
    assert code == 0
    rule = as_json(out)["rule"]
    assert rule["state"] == "active"

    code, out, _ = sluice(server, "rules", "list", "--json")
    assert code == 0 and rule["id"] in {r["id"] for r in as_json(out)["rules"]}
    code, out, _ = sluice(server, "rules", "show", str(rule["id"]), "--json")
    assert code == 0 and as_json(out)["rule"]["events"], "a rule shows its events"
    code, out, _ = sluice(server, "rules", "show", str(rule["id"]))
    assert code == 0 and "cli test" in out and "events" in out
    code, out, _ = sluice(server, "rules", "history", "--limit", "5", "--json")
    assert code == 0 and as_json(out)["rules"][0]["id"] == rule["id"]
    code, out, _ = sluice(server, "rules", "withdraw", str(rule["id"]), "--reason", "x", "--json")
    assert code == 0 and as_json(out)["rule"]["state"] in {"withdrawing", "withdrawn"}


def test_a_failed_rule_exits_non_zero(server: Server) -> None:
    code, out, _ = sluice(
        server, "rules", "add", "203.0.113.78", "--type", "blackhole", "--adapter", "broken",
        "--json",
    )  # fmt: skip
    assert code == 1
    assert as_json(out)["rule"]["state"] == "failed"
    code, _, stderr = sluice(
        server, "rules", "add", "0.0.0.0/0", "--type", "blackhole", "--adapter", "router"
    )
    assert code == 1 and "default_route" in stderr


def test_adapters_by_name_or_id(server: Server) -> None:
    code, out, _ = sluice(server, "adapters", "list", "--json")
    assert code == 0
    ids = {a["name"]: a["id"] for a in as_json(out)["adapters"]}
    code, out, _ = sluice(server, "adapters", "test", "router", "--json")
    assert code == 0 and as_json(out)["test"]["ok"] is True
    code, out, _ = sluice(server, "adapters", "test", str(ids["router"]))
    assert code == 0 and "ok" in out
    code, out, _ = sluice(server, "adapters", "test", "broken", "--json")
    assert code == 1 and as_json(out)["test"]["ok"] is False
    code, _, stderr = sluice(server, "adapters", "test", "nosuch")
    assert code == 1 and "adapter_not_found" in stderr


def test_incidents(server: Server) -> None:
    r = server.api(
        "POST",
        "/incidents",
        json={"target_ip": "198.51.100.9", "attack_family": "udp_flood", "pps": 10, "bps": 10},
    )
    assert r.status_code == 200, r.text
    code, out, _ = sluice(server, "incidents", "list", "--json")
    assert code == 0
    incident = as_json(out)["incidents"][0]
    assert incident["target_ip"] == "198.51.100.9"
    code, out, _ = sluice(server, "incidents", "show", incident["id"], "--json")
    assert code == 0 and as_json(out)["incident"]["id"] == incident["id"]
    code, out, _ = sluice(server, "incidents", "show", incident["id"])
    assert code == 0 and "decisions" in out
    code, out, _ = sluice(server, "incidents", "resolve", incident["id"], "--json")
    assert code == 0 and as_json(out)["incident"]["status"] == "resolved"
    code, _, stderr = sluice(server, "incidents", "show", "no-such-incident")
    assert code == 1 and "incident_not_found" in stderr
