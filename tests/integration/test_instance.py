"""One service per data directory, and an online backup restored into a new one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.instance import InstanceLock, InstanceLocked
from tests.integration.test_crash import TOKEN, Server, create, free_port

pytestmark = pytest.mark.slow


def policy(tmp: Path) -> Path:
    pdir = tmp / "policy"
    pdir.mkdir(exist_ok=True)
    (pdir / "adapters.yaml").write_text(
        "adapters:\n  - name: router\n    adapter_type: fake\n    config:\n"
        f"      state_file: {tmp / 'router.jsonl'}\n"
    )
    return pdir


def serve_once(data_dir: Path, pdir: Path) -> subprocess.CompletedProcess[str]:
    """Run a second ``sluice serve``; it must give up on its own (bounded by a timeout)."""
    return subprocess.run(  # our own CLI with fixed arguments
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "serve",
            "--data-dir",
            str(data_dir),
            "--policy-dir",
            str(pdir),
            "--port",
            str(free_port()),
        ],
        env={**os.environ, "SLUICE_ADMIN_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    first = InstanceLock(tmp_path)
    first.acquire()
    with pytest.raises(InstanceLocked, match=rf"pid {os.getpid()}"):
        InstanceLock(tmp_path).acquire()
    first.release()
    with InstanceLock(tmp_path):  # free again once released
        pass


def test_second_serve_refuses_before_touching_anything(tmp_path: Path) -> None:
    srv = Server(tmp_path, policy(tmp_path))
    try:
        srv.start()
        assert create(srv, 1, 600) is not None
        lock_file = tmp_path / "data" / "sluice.lock"
        holder = lock_file.read_text()
        total = srv.api("GET", "/mitigation/rules/history").json()["total"]
        calls_before = (tmp_path / "router.jsonl").read_text()

        res = serve_once(tmp_path / "data", tmp_path / "policy")
        assert res.returncode == 2, res.stderr
        assert "another Sluice service" in res.stderr, res.stderr
        assert (tmp_path / "router.jsonl").read_text() == calls_before, "it announced"
        assert srv.api("GET", "/mitigation/rules/history").json()["total"] == total
        assert lock_file.read_text() == holder
        assert srv.api("GET", "/audit/verify").json()["valid"] is True

        # kill -9 leaves the lock file behind, but not the lock: a restart works
        srv.kill9()
        srv.start()
        assert srv.live_rules()[0]["state"] == "active"
    finally:
        srv.stop()


def test_backup_of_a_running_service_restores(tmp_path: Path) -> None:
    srv = Server(tmp_path, policy(tmp_path))
    ids = []
    try:
        srv.start()
        ids = [create(srv, i, 600) for i in range(1, 21)]
        assert all(ids)
        out = tmp_path / "backup"
        res = subprocess.run(  # our own CLI with fixed arguments
            [
                sys.executable,
                "-m",
                "orchestrator.cli",
                "backup",
                str(out),
                "--data-dir",
                str(tmp_path / "data"),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        assert (out / "sluice.db").stat().st_mode & 0o777 == 0o600
        assert out.stat().st_mode & 0o777 == 0o700
        # a second backup into the same directory is refused, the first left as it was
        again = subprocess.run(  # our own CLI with fixed arguments
            [
                sys.executable,
                "-m",
                "orchestrator.cli",
                "backup",
                str(out),
                "--data-dir",
                str(tmp_path / "data"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert again.returncode == 1
        assert "already exists" in " ".join(again.stderr.split())  # rich wraps lines
    finally:
        srv.stop()

    # restore: the backup directory becomes a data directory of its own
    restored = tmp_path / "restored"
    restored.mkdir()
    (restored / "data").symlink_to(tmp_path / "backup")
    other = Server(restored, tmp_path / "policy", (tmp_path,))  # the fake's file is there
    try:
        other.start()
        for rid in ids:
            assert rid is not None
            assert other.rule(rid)["state"] == "active"
        assert other.api("GET", "/audit/verify").json()["valid"] is True
    finally:
        other.stop()
