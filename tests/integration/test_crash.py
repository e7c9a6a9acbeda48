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
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from labs.netns import wait_for

TOKEN = "c" * 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    ready_timeout = 30.0  # seconds until /health says ready (a bench with 10k rules: more)
    stop_timeout = 10.0  # seconds a SIGTERM gets before SIGKILL

    def __init__(
        self,
        tmp: Path,
        policy_dir: Path | None,
        adapter_dirs: tuple[Path, ...] = (),
        *,
        env: dict[str, str] | None = None,
        log_level: str = "warning",
    ) -> None:
        self.tmp = tmp
        # settings for the service (SLUICE_*), on top of this process's environment
        self.env: dict[str, str] = dict(env or {})
        self.log_level = log_level
        self.policy_dir = policy_dir
        # the adapters' files live in the test's directories: allowed explicitly
        self.adapter_dirs = (tmp, *adapter_dirs)
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
        env = {
            **os.environ,
            "SLUICE_ADMIN_TOKEN": TOKEN,
            "SLUICE_ADAPTER_DIRS": ":".join(str(d) for d in self.adapter_dirs),
            **self.env,
        }
        with (self.tmp / "serve.log").open("ab") as log:
            self.proc = subprocess.Popen(  # our own CLI with fixed arguments
                [
                    sys.executable,
                    "-m",
                    "orchestrator.cli",
                    "serve",
                    "--data-dir",
                    str(self.tmp / "data"),
                    *(("--policy-dir", str(self.policy_dir)) if self.policy_dir else ()),
                    "--port",
                    str(self.port),
                    "--log-level",
                    self.log_level,
                ],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.ready_timeout
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
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        # one client for the whole test: building one per request costs ~40 ms (TLS setup)
        return self.client.request(method, f"/api/v1{path}", **kw)

    def rule(self, rule_id: int) -> dict[str, Any]:
        """One rule read by id (never from a page of the history, which may not hold it)."""
        r = self.api("GET", f"/mitigation/rules/{rule_id}")
        assert r.status_code == 200, r.text
        rule: dict[str, Any] = r.json()["rule"]
        return rule

    def all_rules(self) -> list[dict[str, Any]]:
        """Every rule in the store, read page by page from the history."""
        rules: list[dict[str, Any]] = []
        while True:
            page = self.api(
                "GET", "/mitigation/rules/history", params={"limit": 500, "offset": len(rules)}
            ).json()
            rules.extend(page["rules"])
            if not page["rules"] or len(rules) >= page["total"]:
                return rules

    def live_rules(self) -> list[dict[str, Any]]:
        rules: list[dict[str, Any]] = self.api(
            "GET", "/mitigation/rules", params={"limit": 10000}
        ).json()["rules"]
        return rules

    def wait_all_live_active(self, timeout: float = 60) -> None:
        """Wait until no live rule is pending or failed; fail loudly at the deadline."""
        wait_for(
            lambda: all(r["state"] == "active" for r in self.live_rules()),
            timeout=timeout,
            interval=0.2,
            what="every live rule to be active after the restart",
            diagnose=lambda: str(Counter(r["state"] for r in self.live_rules())),
        )


def storm_then_kill(
    srv: Server, jobs: Sequence[Callable[[], int | None]], kill_after: int
) -> list[int]:
    """Run ``jobs`` (each creates one rule) on 8 connections; ``kill -9`` the service as soon
    as ``kill_after`` of them were acknowledged, whatever the machine's speed.

    The kill is made by the worker whose acknowledgement reached the count, so the other
    workers are mid-request. Returns the ids of every acknowledged rule, and asserts that
    the storm was still under way (some requests had not been answered) when it died.
    """
    assert 0 < kill_after < len(jobs)
    acked: list[int] = []
    lock = threading.Lock()
    killed = threading.Event()
    started = finished = 0
    at_kill: dict[str, int] = {}

    def run(job: Callable[[], int | None]) -> int | None:
        nonlocal started, finished
        with lock:
            if killed.is_set():
                return None  # the storm goes on against a dead service: nothing to send
            started += 1
        rid = job()
        with lock:
            finished += 1
            if rid is None:
                return None
            acked.append(rid)  # an answer that arrived just before the kill still counts
            if len(acked) == kill_after and not killed.is_set():
                at_kill.update(unanswered=len(jobs) - finished, in_flight=started - finished)
                srv.kill9()
                killed.set()
        return rid

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(run, job) for job in jobs]
        if not killed.wait(timeout=180):
            raise AssertionError(f"only {len(acked)} of {kill_after} rules acknowledged in 180 s")
        for f in futures:
            f.result()
    assert at_kill["unanswered"] > 0, "the kill came after every request was answered"
    assert len(acked) >= kill_after
    print(
        f"kill -9 after {len(acked)} of {len(jobs)} storm rules were acknowledged; "
        f"{at_kill['in_flight']} requests in flight, {at_kill['unanswered']} unanswered"
    )
    return acked


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
    storm = [partial(create, server, i, 600) for i in range(10, 400)]
    acked = storm_then_kill(server, storm, kill_after=130)
    time.sleep(2.5)  # the short rules' TTL passes while nothing runs

    server.start()
    server.wait_all_live_active()

    # every acknowledged rule is present and active, the short ones expired, nothing is
    # left half-way (rules committed but not acknowledged before the kill count too)
    for rid in acked:
        rule = server.rule(rid)
        assert rule["state"] == "active", rule
    for short_id in short:
        assert short_id is not None
        rule = server.rule(short_id)
        assert rule["state"] == "expired", rule
    every = server.all_rules()
    assert len(every) >= len(acked) + len(short)
    assert {r["state"] for r in every} <= {"active", "expired"}

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
    active_keys = {r["key"] for r in every if r["state"] == "active"}
    assert held == active_keys
    expired_keys = {r["key"] for r in every if r["state"] == "expired"}
    assert expired_keys.isdisjoint(held)

    verify = server.api("GET", "/audit/verify").json()
    assert verify["valid"] is True
