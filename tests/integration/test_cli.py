"""The ``sluice`` command line against a real running service: what scripts rely on.

Every ``--json`` output parses; exit codes say what happened (0 done, 1 refused or
failed, 2 cannot even ask); adapters are named by id or name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import typer
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


# ---------------------------------------------------------------- every command, --json

# Commands that run in the foreground until stopped: their output is the service's log.
FOREGROUND = {"serve", "agent"}
# Needs root and the BGP daemons (the lab tests cover its --json); never run here.
NEEDS_ROOT = {"lab up"}
# a run: (arguments, exit code, what its JSON must hold; None: stdout stays empty)
Case = tuple[list[str], int, Callable[[Any], bool] | None]


def leaf_commands() -> dict[str, Any]:
    """Every command of the typer app, by its full name ("rules add")."""
    out: dict[str, Any] = {}

    def walk(cmd: Any, path: list[str]) -> None:
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])
        else:
            out[" ".join(path)] = cmd

    walk(typer.main.get_command(app), [])
    return out


def test_every_command_has_json() -> None:
    missing = [
        name
        for name, cmd in leaf_commands().items()
        if name not in FOREGROUND
        and "--json" not in [o for p in cmd.params for o in getattr(p, "opts", [])]
    ]
    assert missing == [], f"commands without --json: {missing}"


def test_every_command_json_output_and_exit_code(server: Server, tmp_path: Path) -> None:
    remote = ["--url", server.url, "--token", TOKEN]
    data = server.tmp / "data"
    signal = tmp_path / "signal.json"
    signal.write_text(json.dumps({"target_ip": "198.51.100.30", "bps": "5G"}))
    signals = tmp_path / "signals.json"
    signals.write_text(json.dumps([{"target_ip": "198.51.100.31", "bps": "5G", "at": 0}]))
    pdir = str(server.policy_dir)
    password = "a long enough password"
    r = server.api(
        "POST",
        "/incidents",
        json={"target_ip": "198.51.100.40", "attack_family": "udp_flood", "pps": 10, "bps": 10},
    )
    incident = r.json()["incident"]["id"]
    r = server.api(
        "POST",
        "/mitigation/rules",
        json={"intent_type": "blackhole", "target_ip": "203.0.113.92", "adapter_id": "router"},
    )
    rid = str(r.json()["rule"]["id"])
    cases: dict[str, list[Case]] = {
        "backup": [
            ([str(tmp_path / "bk"), "--data-dir", str(data)], 0, lambda j: j["files"]),
            ([str(tmp_path / "bk"), "--data-dir", str(data)], 1, None),  # exists already
        ],
        "rules add": [
            (["203.0.113.90", "--type", "blackhole", "--adapter", "router", *remote], 0,
             lambda j: j["rule"]["state"] == "active"),
            (["203.0.113.91", "--type", "blackhole", "--adapter", "broken", *remote], 1,
             lambda j: j["rule"]["state"] == "failed"),
            (["0.0.0.0/0", "--type", "blackhole", "--adapter", "router", *remote], 1, None),
        ],
        "rules list": [(remote, 0, lambda j: j["total"] >= 1)],
        "rules history": [(remote, 0, lambda j: j["rules"])],
        "rules show": [([rid, *remote], 0, lambda j: j["rule"]["id"] == int(rid)),
                       (["999999", *remote], 1, None)],
        "rules withdraw": [([rid, "--reason", "done", *remote], 0,
                            lambda j: j["rule"]["state"] in ("withdrawing", "withdrawn")),
                           ([rid, *remote], 1, None)],  # already withdrawn
        "adapters list": [(remote, 0, lambda j: {"router", "broken"} <= {
            a["name"] for a in j["adapters"]})],
        "adapters test": [(["router", *remote], 0, lambda j: j["test"]["ok"]),
                          (["broken", *remote], 1, lambda j: not j["test"]["ok"]),
                          (["nosuch", *remote], 1, None)],
        "audit verify": [
            (remote, 0, lambda j: j["valid"] and j["code"] == "ok"),
            (["--database", f"sqlite:///{data}/sluice.db", "--data-dir", str(data)], 0,
             lambda j: j["valid"]),
        ],
        "tokens create": [(["ci", "--scope", "read", *remote], 0,
                           lambda j: j["token"] and j["role"] == "viewer")],
        "tokens list": [(remote, 0, lambda j: "ci" in {t["name"] for t in j["tokens"]})],
        "tokens revoke": [(["ci", *remote], 0, lambda j: j["revoked"]),
                          (["ci", *remote], 1, None)],  # no live token of that name left
        "incidents list": [(remote, 0, lambda j: incident in {i["id"] for i in j["incidents"]})],
        "incidents show": [([incident, *remote], 0, lambda j: j["incident"]["id"] == incident),
                           (["no-such", *remote], 1, None)],
        "incidents resolve": [([incident, *remote], 0,
                               lambda j: j["incident"]["status"] == "resolved")],
        "policy lint": [([pdir], 0, lambda j: j["ok"]),
                        ([str(tmp_path / "nope")], 1, lambda j: j["ok"] is False)],
        "policy explain": [([pdir, "--signal", str(signal)], 0, lambda j: j["target"]),
                           ([pdir, "--signal", str(tmp_path / "nope.json")], 1,
                            lambda j: "cannot read" in j["error"])],
        "policy plan": [([pdir, "--signals", str(signals)], 0, lambda j: j["signals"] == 1)],
        "policy export": [(remote, 0, lambda j: "yaml" in j and "document" in j)],
        "lab status": [(["--state-dir", str(tmp_path / "lab")], 1, lambda j: j["lab_id"] is None)],
        "lab down": [(["--state-dir", str(tmp_path / "lab")], 0, lambda j: j["down"] is None)],
        "operators create": [
            (["olga", "--password", password, "--role", "operator", *remote], 0,
             lambda j: j["operator"]["role"] == "operator"),
            (["olga", "--password", password, *remote], 1, None),  # exists
        ],
        "operators list": [(remote, 0,
                            lambda j: "olga" in {o["username"] for o in j["operators"]})],
        "operators set-role": [(["olga", "viewer", *remote], 0,
                                lambda j: j["operator"]["role"] == "viewer"),
                               (["olga", "root", *remote], 1, None)],
        "operators reset-password": [(["olga", "--password", "another long password", *remote],
                                      0, lambda j: j["operator"]["username"] == "olga"),
                                     (["olga", "--password", "short", *remote], 1, None)],
        "operators disable": [(["olga", *remote], 0, lambda j: j["operator"]["disabled"])],
        "operators enable": [(["olga", *remote], 0, lambda j: not j["operator"]["disabled"])],
        "secrets new-key": [([], 0, lambda j: len(j["key"]) == 44)],
        # the running service holds the data directory: refused before touching anything
        "secrets rotate": [(["--data-dir", str(data)], 2, None)],
    }  # fmt: skip
    assert set(cases) | FOREGROUND | NEEDS_ROOT == set(leaf_commands()), (
        "every command needs a case here"
    )
    for name, runs in cases.items():
        for args, code, check in runs:
            res = runner.invoke(app, [*name.split(), *args, "--json"])
            where = f"sluice {name} {' '.join(args)} --json"
            assert res.exit_code == code, (where, res.exit_code, res.stdout, res.stderr)
            if check is None:
                assert res.stdout.strip() == "", (where, res.stdout)
                assert res.stderr.strip(), (where, "a refusal says why on stderr")
            else:
                assert check(json.loads(res.stdout)), (where, res.stdout)
