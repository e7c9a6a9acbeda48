"""The deployment files in deploy/ are checked by the tools that will read them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from adapters.base import AdapterConfig, Registry
from orchestrator.settings import Settings
from policies.schema import load_policy

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing (Debian package systemd)")
    unit = (DEPLOY / "systemd" / "sluice.service").read_text()
    # point ExecStart at this checkout's interpreter, which exists here
    unit = unit.replace(
        "/opt/sluice/.venv/bin/sluice serve", f"{sys.executable} -m orchestrator.cli serve"
    )
    path = tmp_path / "sluice.service"
    path.write_text(unit)
    res = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr


def test_compose_policy_and_unit_agree() -> None:
    compose = yaml.safe_load((DEPLOY / "container" / "compose.yaml").read_text())
    assert set(compose["services"]) == {"gobgpd", "sluice"}
    assert "./policy:/etc/sluice/policy:ro" in compose["services"]["sluice"]["volumes"]
    policy = load_policy(DEPLOY / "container" / "policy")
    assert [a.name for a in policy.adapters] == ["edge"]


def test_the_example_speaker_is_inside_the_default_speaker_endpoints(tmp_path: Path) -> None:
    """The compose gobgpd's API is on loopback only, where the default settings allow it."""
    compose = yaml.safe_load((DEPLOY / "container" / "compose.yaml").read_text())
    assert "--api-hosts 127.0.0.1:50051" in compose["services"]["gobgpd"]["command"]
    (decl,) = load_policy(DEPLOY / "container" / "policy").adapters
    access = Settings(data_dir=tmp_path).host_access()
    config = AdapterConfig(name=decl.name, adapter_type=decl.adapter_type, endpoint=decl.endpoint)
    assert Registry(access=access).create(config).name == "edge"  # not refused
