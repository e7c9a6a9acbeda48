"""Several services on one PostgreSQL store, writing at the same time.

Each service keeps its own in-memory view (dedupe index, quota counters, audit head); the
writer lock and generation in orchestrator/cluster.py keep them one truth. The services
write from their own threads, so their transactions really overlap on the server.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from adapters.fake import FakeAdapter
from orchestrator.cluster import write
from orchestrator.service import RuleRequest, RuleResult, Service
from orchestrator.store.models import events, leases, rule_events, rules
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


async def _pair(tmp_path: Path, url: str, adapters: int) -> tuple[list[Service], list[int]]:
    """Two instances, ``adapters`` fake adapters (made on the first, loaded by both)."""
    made: list[Service] = []
    for k in range(2):
        data = tmp_path / f"i{k}"
        data.mkdir()
        svc = Service(
            settings_for(data, database_url=url, lease_seconds=3.0, audit_key=AUDIT_KEY),
            policy=policy(),
        )
        await svc.start()
        made.append(svc)
    ids = [(await add_fake(made[0], f"edge{n}"))[0] for n in range(adapters)]
    made[1].hub.load()
    return made, ids


def _driver(services: list[Service], adapter_id: int) -> Service | None:
    drivers = [s for s in services if s.drives(adapter_id)]
    assert len(drivers) <= 1, "two instances drive one adapter"
    return drivers[0] if drivers else None


async def _pause(svc: Service) -> None:
    """Stop the instance's lease rounds, as a SIGSTOP would (its other tasks go on)."""
    assert svc._keeper is not None
    await asyncio.to_thread(svc._keeper.stop)


def _tokens(svc: Service) -> dict[str, int]:
    with svc.engine.connect() as conn:
        rows = conn.execute(select(leases.c.name, leases.c.token)).all()
    return {str(n): int(t) for n, t in rows if str(n).startswith("adapter:")}


def _holders(svc: Service) -> dict[int, str]:
    with svc.engine.connect() as conn:
        rows = conn.execute(select(leases.c.name, leases.c.holder)).all()
    return {int(str(n).split(":")[1]): str(h) for n, h in rows if str(n).startswith("adapter:")}


async def test_one_driver_per_adapter_takeover_and_fencing(
    tmp_path: Path, postgres_url: str
) -> None:
    """The adapter's lease holder sends the rules any instance stored; when it stops
    renewing (a pause), it stops sending at once and the other instance takes over."""
    made, (aid,) = await _pair(tmp_path, postgres_url, 1)
    try:
        await _until(lambda: _driver(made, aid) is not None, 10, "someone drives the adapter")
        a = _driver(made, aid)
        assert a is not None
        b = next(s for s in made if s is not a)
        fake_a, fake_b = a.hub.live(aid), b.hub.live(aid)
        assert isinstance(fake_a, FakeAdapter) and isinstance(fake_b, FakeAdapter)

        first = await b.create_rule(req(bh("198.51.100.1"), aid))  # on the other instance
        rid = int(first.rule["id"])
        await _until(lambda: _state(a, rid) == "active", 10, "rule made on B sent by A")
        assert len(fake_a.held) == 1 and not fake_b.calls

        # A pauses: its lease task stops renewing; it must stop sending before B takes over
        await _pause(a)
        await _until(lambda: not a.drives(aid), 5, "A fences itself")
        await _until(lambda: b.drives(aid), 10, "B takes over")
        second = await a.create_rule(req(bh("198.51.100.2"), aid))  # on the old driver
        rid2 = int(second.rule["id"])
        await _until(lambda: _state(b, rid2) == "active", 10, "rule made on A sent by B")
        assert len(fake_a.held) == 1  # A sent nothing after its lease lapsed
        # B also re-announced what the store holds (its recover on takeover)
        assert len(fake_b.held) == 2
    finally:
        for svc in made:
            await svc.stop()


async def test_leases_are_renewed_while_the_event_loop_is_blocked(
    tmp_path: Path, postgres_url: str
) -> None:
    """Renewal and takeover run on the lease thread: with the event loop held in one
    synchronous call for more than twice the lease time (both instances share this loop,
    as one busy with intake would be), the holder keeps driving the adapter without a
    gap and the other instance, whose lease thread keeps trying, does not take it."""
    made, (aid,) = await _pair(tmp_path, postgres_url, 1)
    try:
        await _until(lambda: _driver(made, aid) is not None, 10, "someone drives the adapter")
        a = _driver(made, aid)
        assert a is not None and a.leases is not None
        b = next(s for s in made if s is not a)
        assert a._keeper is not None and b._keeper is not None
        token = _tokens(a)[f"adapter:{aid}"]
        rounds_a, rounds_b = a._keeper.rounds, b._keeper.rounds
        blocked = 2.5 * a.leases.ttl

        def hold_the_loop() -> list[float]:
            """Block (synchronously, on the loop's thread); when A did not drive."""
            gaps: list[float] = []
            start = time.monotonic()
            while (now := time.monotonic()) - start < blocked:
                if not a.drives(aid) or b.drives(aid):
                    gaps.append(now - start)
                time.sleep(0.05)
            return gaps

        gaps = hold_the_loop()  # not awaited: the loop runs nothing else meanwhile
        assert not gaps, f"A stopped driving (or B drove) {len(gaps)} times, first {gaps[0]:.2f} s"
        # both lease threads ran rounds during the block (about five per lease time)
        assert a._keeper.rounds - rounds_a >= 5 and b._keeper.rounds - rounds_b >= 5
        assert _holders(a)[aid] == a.leases.holder
        assert _tokens(a)[f"adapter:{aid}"] == token  # renewed, never lapsed and retaken
        rid = int((await b.create_rule(req(bh("198.51.100.7"), aid))).rule["id"])
        await _until(lambda: _state(a, rid) == "active", 10, "rule made on B sent by A")
        fake_a, fake_b = a.hub.live(aid), b.hub.live(aid)
        assert isinstance(fake_a, FakeAdapter) and isinstance(fake_b, FakeAdapter)
        assert len(fake_a.held) == 1 and not fake_b.calls
    finally:
        for svc in made:
            await svc.stop()


async def test_instances_share_adapters_and_a_takeover_moves_only_the_dead_ones(
    tmp_path: Path, postgres_url: str
) -> None:
    made, ids = await _pair(tmp_path, postgres_url, 4)
    try:

        def split() -> bool:
            return all(len([i for i in ids if s.drives(i)]) == 2 for s in made)

        await _until(split, 15, "each instance drives two of the four adapters")
        a, b = made
        kept = [i for i in ids if b.drives(i)]
        moved = [i for i in ids if a.drives(i)]
        before = _tokens(a)
        for k, aid in enumerate(ids):  # every adapter gets a rule, from either instance
            await made[k % 2].create_rule(req(bh(f"198.51.100.{k}"), aid))
        with a.engine.connect() as conn:
            rids = [int(r) for (r,) in conn.execute(select(rules.c.id))]
        await _until(lambda: all(_state(a, r) == "active" for r in rids), 10, "all sent")
        holders = _holders(a)
        for aid in ids:  # each rule went out through its adapter's lease holder only
            driver = next(s for s in made if s.leases and s.leases.holder == holders[aid])
            other = b if driver is a else a
            drv_fake, other_fake = driver.hub.live(aid), other.hub.live(aid)
            assert isinstance(drv_fake, FakeAdapter) and isinstance(other_fake, FakeAdapter)
            assert len(drv_fake.held) == 1 and not other_fake.calls

        await _pause(a)  # A stops renewing: its two adapters go to B, B's stay put
        await _until(lambda: all(b.drives(i) for i in ids), 15, "B drives all four")
        after = _tokens(b)
        for aid in kept:
            assert after[f"adapter:{aid}"] == before[f"adapter:{aid}"], "kept: same token"
        for aid in moved:
            assert after[f"adapter:{aid}"] == before[f"adapter:{aid}"] + 1, "moved: next token"
            fake_b = b.hub.live(aid)
            assert isinstance(fake_b, FakeAdapter)
            held = fake_b.held
            await _until(lambda: len(held) == 1, 10, "B re-sent the moved rules")  # noqa: B023
    finally:
        for svc in made:
            await svc.stop()


async def test_a_former_driver_cannot_record_an_outcome(tmp_path: Path, postgres_url: str) -> None:
    """Fencing inside the write transaction: a driver paused in the middle of a send whose
    lease another instance took over sends (its pre-send check passed before the pause)
    but cannot commit the outcome; the rule's state is what the new driver records."""
    made, (aid,) = await _pair(tmp_path, postgres_url, 1)
    try:
        await _until(lambda: _driver(made, aid) is not None, 10, "someone drives the adapter")
        a = _driver(made, aid)
        assert a is not None
        b = next(s for s in made if s is not a)
        gates = {a: asyncio.Event(), b: asyncio.Event()}
        entered = {a: asyncio.Event(), b: asyncio.Event()}
        for svc in made:  # each instance's speaker answers only when the test says so
            fake = svc.hub.live(aid)
            assert isinstance(fake, FakeAdapter)

            async def held(svc: Service = svc) -> None:
                entered[svc].set()
                await gates[svc].wait()

            fake._delay = held  # type: ignore[method-assign]

        rid = int((await a.create_rule(req(bh("198.51.100.9"), aid))).rule["id"])
        await asyncio.wait_for(entered[a].wait(), 10)  # A is sending, past its pre-send check
        await _pause(a)
        await _until(lambda: b.drives(aid), 15, "B takes over")
        await asyncio.wait_for(entered[b].wait(), 10)  # B's recover sends it too
        assert a.dispatcher.is_queued("announce", rid)
        gates[a].set()  # A's speaker answers: A tries to record the announce
        await _until(lambda: not a.dispatcher.is_queued("announce", rid), 10, "A's batch ends")
        assert _state(a, rid) == "pending"  # refused: A no longer holds the lease
        gates[b].set()
        await _until(lambda: _state(b, rid) == "active", 10, "B records the announce")
        with a.engine.connect() as conn:
            announced = conn.execute(
                select(func.count())
                .select_from(rule_events)
                .where(rule_events.c.rule_id == rid, rule_events.c.event == "announced")
            ).scalar_one()
        assert announced == 1
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


async def test_rate_limit_windows_are_shared_by_instances(
    tmp_path: Path, postgres_url: str
) -> None:
    """The per-token limit counts requests through every instance (windows in the
    database); a new minute starts a new window and past minutes' rows are swept."""
    import httpx

    from orchestrator.api.app import bootstrap_token, create_app
    from orchestrator.store.models import rate_windows
    from tests.unit.orchestrator.conftest import ADMIN

    made: list[Service] = []
    clients: list[httpx.AsyncClient] = []
    now = [1_800_000_000.0]  # the start of a minute
    try:
        for k in range(2):
            data = tmp_path / f"i{k}"
            data.mkdir()
            svc = Service(
                settings_for(
                    data,
                    database_url=postgres_url,
                    audit_key=AUDIT_KEY,
                    admin_token=ADMIN,
                    rate_limit_per_minute=5,
                ),
                policy=policy(),
            )
            await svc.start()
            made.append(svc)
            app = create_app(svc, run_scheduler=False)
            assert app.state.limiter.windows is not None  # in the database, not in memory
            app.state.limiter.clock = lambda: now[0]
            bootstrap_token(svc, app.state.tokens)
            transport = httpx.ASGITransport(app=app)
            clients.append(httpx.AsyncClient(transport=transport, base_url="http://sluice"))

        async def get(k: int) -> httpx.Response:
            return await clients[k].get(
                "/api/v1/mitigation/rules", headers={"Authorization": f"Bearer {ADMIN}"}
            )

        left = []
        for k in (0, 1, 0, 1, 1):
            r = await get(k)
            assert r.status_code == 200, r.text
            left.append(r.headers["X-RateLimit-Remaining"])
        assert left == ["4", "3", "2", "1", "0"]
        for k in (0, 1):
            r = await get(k)
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
            assert r.headers["Retry-After"] == "60"
            assert r.headers["X-RateLimit-Reset"] == str(int(now[0]) + 60)
        now[0] += 59.5
        assert (await get(0)).status_code == 429
        assert (await get(1)).headers["Retry-After"] == "1"
        now[0] += 0.5  # the next minute: a fresh window
        r = await get(1)
        assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == "4"
        now[0] += 120
        assert (await get(0)).status_code == 200
        with made[0].engine.connect() as conn:
            minutes = {int(m) for (m,) in conn.execute(select(rate_windows.c.minute))}
        assert minutes == {int(now[0] // 60)}  # past minutes swept
    finally:
        for c in clients:
            await c.aclose()
        for svc in made:
            await svc.stop()
