"""Several `sluice serve` processes on one throwaway PostgreSQL: one truth, one driver.

Real service subprocesses (the Server of test_crash.py) share one database. Writes go
through all of them at once; the audit chain stays valid, dedupe and the rule quota hold
across instances. ``kill -9`` of the instance that holds the driver lease: another takes
over within 10 s and sends what the store holds, nothing lost or duplicated.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, func, select

from labs.netns import wait_for
from orchestrator.store.audit import ANCHOR_FILE, Anchor, verify
from orchestrator.store.models import leases, rules
from tests.integration.test_crash import Server

QUOTA = 50
AUDIT_KEY = "5a" * 32
KEY = bytes.fromhex(AUDIT_KEY)


class ClusterServer(Server):
    def __init__(
        self, tmp: Path, policy_dir: Path, url: str, adapter_dirs: tuple[Path, ...] = ()
    ) -> None:
        tmp.mkdir()
        super().__init__(tmp, policy_dir, (tmp.parent, *adapter_dirs))  # the shared router file
        self.ready_timeout = 120.0  # several services and PostgreSQL share the machine
        self.database_url = url

    def start(self) -> None:
        os.environ["SLUICE_DATABASE_URL"] = self.database_url
        os.environ["SLUICE_AUDIT_KEY"] = AUDIT_KEY  # one chain, one key, every instance
        try:
            super().start()
        finally:
            del os.environ["SLUICE_DATABASE_URL"]
            del os.environ["SLUICE_AUDIT_KEY"]


def _driver(conn: Connection) -> str:
    """The holder of the one adapter's lease."""
    return str(
        conn.execute(
            select(leases.c.holder).where(leases.c.name.startswith("adapter:"))
        ).scalar_one()
    )


def _post(srv: Server, target: str) -> int:
    body = {"target_ip": target, "intent_type": "blackhole", "adapter_id": "router", "ttl": 0}
    r = srv.api("POST", "/mitigation/rules", json=body)
    return r.status_code if r.status_code != 422 else 0 if "max_active" in r.text else 422


@pytest.mark.parametrize("n", [2, 3])
def test_instances_share_one_truth_and_fail_over(tmp_path: Path, postgres_url: str, n: int) -> None:
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    (policy_dir / "settings.yaml").write_text(
        "settings:\n  cooldown_seconds: 0\n"
        f"guardrails:\n  max_new_rules_per_minute: 100000\n  max_active_rules: {QUOTA}\n"
    )
    router = tmp_path / "router.jsonl"  # one speaker, whoever drives it
    (policy_dir / "adapters.yaml").write_text(
        "adapters:\n  - name: router\n    adapter_type: fake\n    config:\n"
        f"      state_file: {router}\n      latency_ms: 2\n"
    )
    servers = [ClusterServer(tmp_path / f"i{k}", policy_dir, postgres_url) for k in range(n)]
    engine = create_engine(postgres_url)
    try:
        for srv in servers:  # one after the other: the first creates the schema and token
            srv.start()
        # 30 own targets per instance plus 10 every instance asks for, all at once
        jobs: list[tuple[Server, str]] = []
        for k, srv in enumerate(servers):
            jobs += [(srv, f"10.{k}.0.{j}") for j in range(30)]
            jobs += [(srv, f"198.51.100.{j}") for j in range(10)]
        with ThreadPoolExecutor(max_workers=8 * n) as pool:
            codes = Counter(pool.map(lambda job: _post(*job), jobs))
        assert set(codes) <= {201, 200, 0}, codes  # created, deduplicated, over quota
        with engine.connect() as conn:
            per_target = Counter(str(t) for (t,) in conn.execute(select(rules.c.target)).all())
            assert sum(per_target.values()) == QUOTA, per_target
            assert max(per_target.values()) == 1  # never two rules for one target
            report = verify(conn, KEY, Anchor(servers[0].tmp / "data" / ANCHOR_FILE))
            assert report.ok, report
            holder = _driver(conn)

        def all_active() -> bool:
            with engine.connect() as conn:
                states = conn.execute(select(rules.c.state, func.count()).group_by(rules.c.state))
                return dict(states.all()) == {"active": QUOTA}

        wait_for(all_active, timeout=30, what="every stored rule sent by the driver")

        # kill -9 the driver; another instance takes the lease and drives (the deadlines are
        # failure deadlines; the 10 s target is measured by tests/bench/bench_failover.py)
        leader = next(s for s in servers if s.proc and f":{s.proc.pid}:" in holder)
        leader.kill9()
        killed_at = time.monotonic()
        survivors = [s for s in servers if s is not leader]

        def new_holder() -> bool:
            with engine.connect() as conn:
                return _driver(conn) != holder

        wait_for(new_holder, timeout=60, what="another instance takes the driver lease")
        r = survivors[-1].api("DELETE", "/mitigation/rules/1")
        assert r.status_code in {200, 202}, r.text
        made = _post(survivors[0], "203.0.113.77")
        assert made == 201

        def settled() -> bool:
            with engine.connect() as conn:
                states: dict[str, int] = dict(
                    conn.execute(select(rules.c.state, func.count()).group_by(rules.c.state)).all()
                )
            return states == {"active": QUOTA, "withdrawn": 1}

        wait_for(settled, timeout=60, what="the new driver sends and withdraws")
        print(f"the new driver settled {time.monotonic() - killed_at:.1f} s after the kill")
        with engine.connect() as conn:
            for srv in servers:  # each instance's anchor (it follows that instance's commits)
                assert verify(conn, KEY, Anchor(srv.tmp / "data" / ANCHOR_FILE)).ok
    finally:
        engine.dispose()
        for srv in servers:
            srv.stop()
