"""Hot reload and the `sluice policy` commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from policies.cli import app
from policies.watch import PolicyWatcher
from tests.unit.policies.helpers import policy_data, write

EXAMPLES = Path(__file__).resolve().parents[3] / "policies" / "examples"
runner = CliRunner()


def test_watcher_reloads_valid_changes_and_keeps_the_old_policy_on_errors(tmp_path: Path) -> None:
    write(tmp_path, {"policy.yaml": policy_data()})
    watcher = PolicyWatcher(tmp_path)
    assert watcher.poll() is None
    (tmp_path / "policy.yaml").touch()
    assert watcher.poll() is None  # same content
    write(tmp_path, {"policy.yaml": policy_data(settings={"dry_run": True})})
    change = watcher.poll()
    assert change is not None and change.policy is not None and change.error is None
    assert watcher.current.settings.dry_run is True
    good = watcher.current
    (tmp_path / "extra.yaml").write_text("allowlist:\n  - {ip_address: 192.0.2.0/33}\n")
    bad = watcher.poll()
    assert bad is not None and bad.policy is None and bad.error is not None
    assert bad.error.location == f"{tmp_path / 'extra.yaml'}:2"
    assert watcher.current is good
    assert watcher.poll() is None  # the same broken content is reported once
    (tmp_path / "extra.yaml").write_text("allowlist:\n  - {ip_address: 192.0.2.0/24}\n")
    fixed = watcher.poll()
    assert fixed is not None and fixed.policy is not None
    assert len(watcher.current.allowlist) == 1


def test_lint_ok_and_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["lint", str(EXAMPLES / "default")])
    assert result.exit_code == 0, result.output
    assert "tiers tier1, tier2, tier3, tier4" in result.output
    write(
        tmp_path,
        {
            "p.yaml": "escalation:\n  tiers:\n"
            "    - {name: t1, bps: 1G, intents: [], adapters: [log]}\n"
        },
    )
    result = runner.invoke(app, ["lint", str(tmp_path)])
    assert result.exit_code == 1
    assert f"{tmp_path / 'p.yaml'}:3" in result.output


def test_explain_prints_the_decision(tmp_path: Path) -> None:
    signal = tmp_path / "signal.json"
    signal.write_text(
        json.dumps({"target_ip": "192.0.2.99", "bps": "3G", "attack_family": "udp_flood"})
    )
    result = runner.invoke(app, ["explain", str(EXAMPLES / "default"), "--signal", str(signal)])
    assert result.exit_code == 0, result.output
    assert "target 192.0.2.99: announce, tier tier3" in result.output
    assert "announce via log ttl 300: blackhole 192.0.2.99/32; community 65535:666" in result.output
    result = runner.invoke(
        app, ["explain", str(EXAMPLES / "default"), "--signal", str(signal), "--json"]
    )
    assert json.loads(result.output)["tier"] == "tier3"


def test_plan_shows_what_changes(tmp_path: Path) -> None:
    new = tmp_path / "new"
    shutil.copytree(EXAMPLES / "default", new)
    text = (new / "escalation.yaml").read_text().replace("bps: 2G", "bps: 1800M")
    (new / "escalation.yaml").write_text(text)
    signals = tmp_path / "signals.yaml"
    signals.write_text(
        "signals:\n"
        "  - {at: 0, target_ip: 192.0.2.99, bps: 1.9G, attack_family: syn_flood}\n"
        "  - {at: 10, target_ip: 192.0.2.99, bps: 1.9G, attack_family: syn_flood}\n"
        "  - {at: 10, target_ip: 198.51.100.77, bps: 10M}\n"
    )
    result = runner.invoke(
        app, ["plan", str(new), "--signals", str(signals), "--current", str(EXAMPLES / "default")]
    )
    assert result.exit_code == 0, result.output
    assert "signal 1 at 10 s, target 192.0.2.99: announce/tier2 -> announce/tier3" in result.output
    assert "  + blackhole 192.0.2.99/32; community 65535:666 via log ttl 300" in result.output
    assert "1 of 3 signal(s) decided differently" in result.output


def test_bad_signal_file(tmp_path: Path) -> None:
    signal = tmp_path / "s.yaml"
    signal.write_text("target_ip: not-an-ip\n")
    result = runner.invoke(app, ["explain", str(EXAMPLES / "default"), "--signal", str(signal)])
    assert result.exit_code == 1
    assert "signal 0" in result.output
