"""Several services on one PostgreSQL store, writing at the same time.

Each service keeps its own in-memory view (dedupe index, quota counters, audit head); the
writer lock and generation in orchestrator/cluster.py keep them one truth. The services
write from their own threads, so their transactions really overlap on the server.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from adapters.fake import FakeAdapter
from orchestrator.cluster import write
from orchestrator.service import RuleRequest, RuleResult, Service
from orchestrator.store.models import events, rules
from policies.errors import SluiceError
from policies.guardrails import Guardrails
from tests.unit.orchestrator.conftest import add_fake, bh, policy, req, settings_for

pytestmark = pytest.mark.usefixtures("postgres")
AUDIT_KEY = "5a" * 32  # every instance signs the one chain with the same key


async def _services(tmp_path: Path, url: str, n: int, **pol: Any) -> list[Service]:
    made: list[Service] = []
    for k in range(n):
        data = tmp_path / f"i{k}"
        data.mkdir()
        svc = Service(
            settings_for(data, database_url=url, audit_key=AUDIT_KEY), policy=policy(**pol)
        )
        await svc.start()
        if k == 0:
            await add_fake(svc, "edge")
        made.append(svc)
    for svc in made:
        svc.hub.load()  # the adapter row written by the first instance
    return made


def _run_threads(
    services: list[Service], work: Callable[[Service, int], list[RuleRequest]], rounds: int
) -> list[RuleResult | SluiceError]:
    """Each service creates its requests in rounds from its own thread, all at once."""
    loop = asyncio.get_running_loop()
    out: list[RuleResult | SluiceError] = []
    errors: list[BaseException] = []
    mutex = threading.Lock()
    start = threading.Barrier(len(services))

    def run(svc: Service) -> None:
        try:
            start.wait(timeout=30)
            for r in range(rounds):
                with write(svc.engine) as conn:
                    results, after = svc.create_rules_in(conn, work(svc, r), svc.clock())
                loop.call_soon_threadsafe(after)
                with mutex:
                    out.extend(results)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in services]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return out


@pytest.mark.parametrize("n", [2, 3])
async def test_concurrent_writers_keep_one_chain_and_dedupe(
    tmp_path: Path, postgres_url: str, n: int
) -> None:
    services = await _services(tmp_path, postgres_url, n)
    try:
        # every instance asks for the same 40 targets (dedupe across instances) and 40 of
        # its own, in rounds of 4
        def work(svc: Service, r: int) -> list[RuleRequest]:
            k = services.index(svc)
            shared = [req(bh(f"198.51.100.{r * 4 + j}"), "edge", actor=f"i{k}") for j in range(4)]
            own = [req(bh(f"10.{k}.0.{r * 4 + j}"), "edge", actor=f"i{k}") for j in range(4)]
            return shared + own

        results = _run_threads(services, work, 10)
        assert all(isinstance(r, RuleResult) for r in results), [
            r for r in results if not isinstance(r, RuleResult)
        ]
        with services[0].engine.connect() as conn:
            per_target = conn.execute(
                select(rules.c.target, func.count()).group_by(rules.c.target)
            ).all()
            ids = [int(i) for (i,) in conn.execute(select(events.c.id).order_by(events.c.id))]
        assert len(per_target) == 40 + 40 * n
        assert all(c == 1 for _, c in per_target), [t for t, c in per_target if c != 1]
        for svc in services:
            report = svc.verify_audit()
            assert report.ok, report
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # no gap: nothing rolled back
    finally:
        for svc in services:
            await svc.stop()


async def test_quota_is_exact_across_instances(tmp_path: Path, postgres_url: str) -> None:
    services = await _services(
        tmp_path, postgres_url, 3, guardrails=Guardrails(max_active_rules=50)
    )
    try:

        def work(svc: Service, r: int) -> list[RuleRequest]:
            k = services.index(svc)
            return [req(bh(f"10.{k}.{r}.{j}"), "edge") for j in range(5)]

        results = _run_threads(services, work, 6)  # 90 asked for, 50 allowed
        made = [r for r in results if isinstance(r, RuleResult)]
        refused = [r for r in results if isinstance(r, SluiceError)]
        assert len(made) == 50
        assert {e.code for e in refused} == {"max_active_rules"}
        with services[0].engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(rules)).scalar() == 50
        assert services[1].verify_audit().ok
    finally:
        for svc in services:
            await svc.stop()


async def test_rate_quota_counts_other_instances(tmp_path: Path, postgres_url: str) -> None:
    a, b = await _services(
        tmp_path, postgres_url, 2, guardrails=Guardrails(max_new_rules_per_minute=10)
    )
    try:
        first = await a.create_rules([req(bh(f"10.0.0.{j}"), "edge") for j in range(8)])
        assert all(isinstance(r, RuleResult) for r in first)
        second = await b.create_rules([req(bh(f"10.1.0.{j}"), "edge") for j in range(8)])
        codes = [r.code if isinstance(r, SluiceError) else "ok" for r in second]
        assert codes == ["ok", "ok"] + ["rate_limited"] * 6
    finally:
        await a.stop()
        await b.stop()


async def _until(cond: Callable[[], bool], seconds: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        await asyncio.sleep(0.05)


def _state(svc: Service, rule_id: int) -> str:
    with svc.engine.connect() as conn:
        return str(conn.execute(select(rules.c.state).where(rules.c.id == rule_id)).scalar_one())


async def test_one_driver_takeover_and_fencing(tmp_path: Path, postgres_url: str) -> None:
    """The lease holder sends the rules any instance stored; when it stops renewing (a
    pause), it stops sending at once and another instance takes over."""
    made: list[Service] = []
    try:
        for k in range(2):
            data = tmp_path / f"i{k}"
            data.mkdir()
            svc = Service(
                settings_for(
                    data, database_url=postgres_url, lease_seconds=3.0, audit_key=AUDIT_KEY
                ),
                policy=policy(),
            )
            await svc.start()
            made.append(svc)
            if k == 0:
                await add_fake(svc, "edge")
        a, b = made
        b.hub.load()
        assert a.leading and not b.leading
        fake_a, fake_b = a.hub.live(1), b.hub.live(1)
        assert isinstance(fake_a, FakeAdapter) and isinstance(fake_b, FakeAdapter)

        first = await b.create_rule(req(bh("198.51.100.1"), "edge"))  # on the non-leader
        rid = int(first.rule["id"])
        await _until(lambda: _state(a, rid) == "active", 10, "rule made on B sent by A")
        assert len(fake_a.held) == 1 and not fake_b.calls

        # A pauses: its lease task stops renewing; it must stop sending before B takes over
        assert a._leader_task is not None
        a._leader_task.cancel()
        if a._acquiring is not None:
            await a._acquiring
        await _until(lambda: not a.leading, 5, "A fences itself")
        await _until(lambda: b.leading, 10, "B takes over")
        second = await a.create_rule(req(bh("198.51.100.2"), "edge"))  # on the old leader
        rid2 = int(second.rule["id"])
        await _until(lambda: _state(b, rid2) == "active", 10, "rule made on A sent by B")
        assert len(fake_a.held) == 1  # A sent nothing after its lease lapsed
        # B also re-announced what the store holds (its recover on takeover)
        assert len(fake_b.held) == 2
    finally:
        for svc in made:
            await svc.stop()


async def test_secrets_rotate_writes_under_the_writer_lock(
    tmp_path: Path, postgres_url: str
) -> None:
    """`sluice secrets rotate` on PostgreSQL appends its audit entry through the cluster's
    write(): the generation moves, so running instances notice the new audit head."""
    from typer.testing import CliRunner

    from orchestrator.cli import app as cli_app
    from orchestrator.store.models import cluster_state

    svc = Service(settings_for(tmp_path, database_url=postgres_url), policy=policy())
    await svc.start()
    await svc.stop()

    def generation() -> int:
        with svc.engine.connect() as conn:
            return int(conn.execute(select(cluster_state.c.generation)).scalar_one())

    before = generation()
    rotate = ["secrets", "rotate", "--data-dir", str(tmp_path), "--database", postgres_url]
    r = CliRunner().invoke(cli_app, rotate)
    assert r.exit_code == 0, r.output
    assert generation() == before + 1
    svc.engine.dispose()
    again = Service(settings_for(tmp_path, database_url=postgres_url), policy=policy())
    await again.start()
    try:
        assert again.verify_audit().ok
    finally:
        await again.stop()
