"""Crash safety: ``kill -9`` the real service mid-storm, start it again, check the store.

The fake adapter keeps a durable JSON-lines log of every call it received, so the test
can tell exactly what reached the "router" across the crash.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

TOKEN = "c" * 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, tmp: Path, policy_dir: Path) -> None:
        self.tmp = tmp
        self.policy_dir = policy_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(
            base_url=self.url,
            timeout=10,
            headers={"Authorization": f"Bearer {TOKEN}"},
            limits=httpx.Limits(max_connections=16),
        )

    def start(self) -> None:
        env = {**os.environ, "SLUICE_ADMIN_TOKEN": TOKEN}
        with (self.tmp / "serve.log").open("ab") as log:
            self.proc = subprocess.Popen(  # our own CLI with fixed arguments
                [
                    sys.executable,
                    "-m",
                    "orchestrator.cli",
                    "serve",
                    "--data-dir",
                    str(self.tmp / "data"),
                    "--policy-dir",
                    str(self.policy_dir),
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                ],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=1).json().get("ready"):
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"service did not start: {(self.tmp / 'serve.log').read_text()}")

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        # one client for the whole test: building one per request costs ~40 ms (TLS setup)
        return self.client.request(method, f"/api/v1{path}", **kw)


@pytest.fixture
def server(tmp_path: Path) -> Any:
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    (policy_dir / "settings.yaml").write_text(
        "settings:\n  cooldown_seconds: 0\n"
        "guardrails:\n  max_new_rules_per_minute: 100000\n  max_active_rules: 100000\n"
    )
    (policy_dir / "adapters.yaml").write_text(
        "adapters:\n  - name: router\n    adapter_type: fake\n    config:\n"
        f"      state_file: {tmp_path / 'router.jsonl'}\n      latency_ms: 2\n"
    )
    srv = Server(tmp_path, policy_dir)
    yield srv
    srv.stop()


def fake_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def create(srv: Server, i: int, ttl: int) -> int | None:
    body = {
        "target_ip": f"198.51.100.{i % 250 + 1}" if i < 250 else f"2001:db8::{i:x}",
        "intent_type": "blackhole",
        "adapter_id": "router",
        "ttl": ttl,
        "reason": f"storm {i}",
    }
    try:
        r = srv.api("POST", "/mitigation/rules", json=body)
    except httpx.HTTPError:
        return None  # the service died under us
    return int(r.json()["rule"]["id"]) if r.status_code == 201 else None


@pytest.mark.slow
def test_kill9_mid_storm_then_restart(server: Server, tmp_path: Path) -> None:
    server.start()
    # rules that will expire while the service is down
    short = [create(server, i, ttl=2) for i in range(10)]
    assert all(short)
    acked: list[int] = []
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(create, server, i, 600) for i in range(10, 400)]
        time.sleep(0.5)
        server.kill9()  # mid-storm: some requests are in flight
        for f in futures:
            rid = f.result()
            if rid is not None:
                acked.append(rid)
    assert acked, "the storm should have been under way when the service was killed"
    print(f"{len(acked)} of 390 storm rules acknowledged before kill -9")
    time.sleep(2.5)  # the short rules' TTL passes while nothing runs

    server.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rules = server.api("GET", "/mitigation/rules", params={"limit": 10000}).json()["rules"]
        if all(r["state"] == "active" for r in rules):
            break
        time.sleep(0.2)
    history = server.api("GET", "/mitigation/rules/history", params={"limit": 500}).json()
    by_id = {r["id"]: r for r in history["rules"]}

    # every acknowledged rule is present, and nothing is left half-way
    for rid in acked:
        assert by_id[rid]["state"] == "active", by_id[rid]
    for rid in short:
        assert rid is not None and by_id[rid]["state"] == "expired", by_id[rid]
    assert {r["state"] for r in by_id.values()} <= {"active", "expired"}

    # the router holds exactly the active rules; nothing was announced twice
    calls = fake_log(tmp_path / "router.jsonl")
    announces = Counter(c["key"] for c in calls if c["op"] == "announce")
    assert max(announces.values()) == 1, [k for k, n in announces.items() if n > 1]
    held: set[str] = set()
    for c in calls:
        if c["op"] == "announce":
            held.add(c["key"])
        else:
            held.discard(c["key"])
    active_keys = {r["key"] for r in by_id.values() if r["state"] == "active"}
    assert held == active_keys
    expired_keys = {r["key"] for r in by_id.values() if r["state"] == "expired"}
    assert expired_keys.isdisjoint(held)

    verify = server.api("GET", "/audit/verify").json()
    assert verify["valid"] is True
