"""Core benchmark: rules through the service layer with the fake adapter.

    .venv/bin/python -m tests.bench.bench_core [--rules 100000] [--batch 1000]

Reports (issue 2 targets in brackets):
1. rules/s created through the service layer, one transaction per rule and batched
   [>= 5,000/s], and the time until the fake adapter confirmed all of them;
2. RSS with all rules active [<= 500 MB];
3. expiry lateness when every rule expires within the same minute, measured as the
   rule's ended_at minus expires_at, with the APScheduler expiry job running [p99 <= 1 s];
4. time from start-up to ready with all rules active in the store [<= 10 s].
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import bindparam, select, update

from adapters.base import AdapterConfig
from orchestrator.scheduler import build_scheduler
from orchestrator.service import RuleRequest, Service
from orchestrator.settings import Settings
from orchestrator.store.models import rules
from policies.guardrails import Guardrails
from policies.intents import BlackholeIntent, FlowSpecIntent, build_intent
from policies.schema import GlobalSettings, Policy


def rss_mb() -> float:
    with Path("/proc/self/status").open() as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def intents(n: int) -> list[BlackholeIntent | FlowSpecIntent]:
    out: list[BlackholeIntent | FlowSpecIntent] = []
    base4 = int(ipaddress.IPv4Address("100.64.0.0"))
    for i in range(n):
        if i % 4 == 3:
            out.append(
                build_intent(
                    {
                        "kind": "flowspec",  # type: ignore[arg-type]
                        "destination": str(ipaddress.IPv4Address(base4 + i)),
                        "protocol": "udp",
                        "source_port": 123,
                    }
                )
            )
        elif i % 4 == 2:
            out.append(
                build_intent(
                    {
                        "kind": "blackhole",  # type: ignore[arg-type]
                        "prefix": f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::1",
                    }
                )
            )
        else:
            out.append(
                build_intent(
                    {
                        "kind": "blackhole",  # type: ignore[arg-type]
                        "prefix": str(ipaddress.IPv4Address(base4 + i)),
                    }
                )
            )
    return out


def policy(n: int) -> Policy:
    return Policy(
        settings=GlobalSettings(cooldown_seconds=0, default_ttl=0),
        guardrails=Guardrails(
            max_active_rules=n * 2,
            max_new_rules_per_minute=n * 2,
            flowspec_budget_per_adapter=n * 2,
        ),
    )


async def run(n: int, batch: int, data: Path) -> None:
    settings = Settings(data_dir=data, api_wait_seconds=0, batch_size=2000)
    svc = Service(settings, policy=policy(n))
    await svc.start()
    rec, _ = await svc.upsert_adapter(
        AdapterConfig(name="fake", adapter_type="fake"), adapter_id=None, actor="bench"
    )
    aid = rec["id"]
    t0 = time.perf_counter()
    all_intents = intents(n)
    build_s = time.perf_counter() - t0
    print(f"built {n} intents in {build_s:.2f} s ({n / build_s:,.0f}/s)")

    single = min(5000, n // 10)
    t0 = time.perf_counter()
    for intent in all_intents[:single]:
        await svc.create_rule(RuleRequest(intent, aid, ttl=0, origin="policy"))
    single_s = time.perf_counter() - t0
    print(
        f"1. one transaction per rule: {single} rules in {single_s:.2f} s = "
        f"{single / single_s:,.0f} rules/s"
    )

    t0 = time.perf_counter()
    c0 = time.process_time()
    in_create = 0.0
    rest = all_intents[single:]
    for i in range(0, len(rest), batch):
        chunk = rest[i : i + batch]
        tc = time.perf_counter()
        results = svc.create_rules_sync(
            [RuleRequest(x, aid, ttl=0, origin="policy") for x in chunk]
        )
        in_create += time.perf_counter() - tc
        bad = [r for r in results if isinstance(r, Exception)]
        if bad:
            raise bad[0]
        await asyncio.sleep(0)  # let the dispatcher run between batches
    batch_s = time.perf_counter() - t0
    print(
        f"   batched ({batch} per transaction): {len(rest)} rules in {batch_s:.2f} s = "
        f"{len(rest) / batch_s:,.0f} rules/s"
    )
    t1 = time.perf_counter()
    await svc.dispatcher.drain(600)
    print(
        f"   of which inside the service's create calls (validate, guardrails, dedupe, "
        f"quotas, insert, audit, queue): {in_create:.2f} s = {len(rest) / in_create:,.0f} "
        "rules/s"
    )
    cpu = time.process_time() - c0
    print(
        f"   all {len(rest)} confirmed active by the adapter "
        f"{time.perf_counter() - t1:.2f} s after the last create; create + announce + "
        f"write-back used {cpu:.2f} s of CPU = {len(rest) / cpu:,.0f} rules per CPU-second "
        f"(wall {len(rest) / (time.perf_counter() - t0):,.0f} rules/s on this machine)"
    )
    counts = svc.state_counts()
    assert counts.get("active") == n, counts
    print(f"2. RSS with {n} active rules: {rss_mb():.0f} MB")

    # 3. expiry: every rule expires at a random moment of one minute starting in 5 s
    start = datetime.now(UTC) + timedelta(seconds=5)
    with svc.engine.begin() as conn:
        ids = [r.id for r in conn.execute(select(rules.c.id)).all()]
        random.seed(1)
        stmt = (
            update(rules)
            .where(rules.c.id == bindparam("b_id"))
            .values(expires_at=bindparam("b_exp"), ttl=60)
        )
        conn.execute(
            stmt,
            [{"b_id": i, "b_exp": start + timedelta(seconds=random.random() * 60)} for i in ids],
        )
    sched = build_scheduler(svc)
    sched.start()
    t0 = time.perf_counter()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        await asyncio.sleep(1)
        if svc.state_counts().get("expired", 0) == n:
            break
    sched.shutdown(wait=False)
    with svc.engine.connect() as conn:
        rows = conn.execute(select(rules.c.expires_at, rules.c.ended_at)).all()
    late = [(r.ended_at - r.expires_at).total_seconds() for r in rows if r.ended_at]
    print(
        f"3. expiry of {n} rules within one minute: {len(late)} expired; lateness "
        f"p50 {statistics.median(late) * 1000:.0f} ms, p99 {pct(late, 99) * 1000:.0f} ms, "
        f"max {max(late) * 1000:.0f} ms (sweep every {settings.expiry_interval} s)"
    )
    await svc.stop()

    # 4. start-up with n active rules
    svc = Service(settings, policy=policy(n))
    await svc.start()
    aid = svc.hub.by_name("fake").id
    svc.create_rules_sync([RuleRequest(x, aid, ttl=0, origin="policy") for x in all_intents])
    await svc.dispatcher.drain(600)
    await svc.stop()
    t0 = time.perf_counter()
    svc = Service(settings, policy=policy(n))
    await svc.start()
    ready = time.perf_counter() - t0
    await svc.dispatcher.drain(600)
    print(
        f"4. start-up to ready with {n} active rules: {ready:.2f} s (the fake adapter "
        f"starts empty, so all {n} are re-announced; done {time.perf_counter() - t0:.2f} s "
        f"after start)"
    )
    await svc.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"pid {os.getpid()}, SQLite in {tmp}")
        asyncio.run(run(args.rules, args.batch, Path(tmp)))


if __name__ == "__main__":
    main()
