"""Dashboard and /metrics at scale: ``python -m tests.bench.bench_dashboard``.

1. With ``--rules`` active rules (fake adapter, made through the service's batch path):
   the dashboard's first load in Chromium (navigation to the overview rendered), and the
   delay from a rule's event being committed to its row on the rules page (the page's own
   MutationObserver stamps the moment; both clocks are this machine's wall clock).
2. With ``--metrics-rules`` rules: the time of a ``/metrics`` scrape, the first one (the
   database aggregates the whole event log) and the following ones (only what is new).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from orchestrator.service import RuleRequest, Service
from policies.guardrails import Guardrails
from policies.intents import build_intent
from policies.schema import GlobalSettings, Policy

PASSWORD = "correct horse battery"
# Stamps, in the page, when each rule's row first appears (wall-clock milliseconds).
OBSERVER = """
window.seen = {};
new MutationObserver(() => {
  for (const tr of document.querySelectorAll('#rules-table tr[data-rule-id]')) {
    const id = tr.dataset.ruleId;
    if (!(id in window.seen)) window.seen[id] = performance.timeOrigin + performance.now();
  }
}).observe(document.getElementById('view'), {childList: true, subtree: true});
"""


def policy(n: int) -> Policy:
    return Policy(
        settings=GlobalSettings(cooldown_seconds=0, default_ttl=0),
        guardrails=Guardrails(
            max_active_rules=n * 2,
            max_new_rules_per_minute=n * 2,
            flowspec_budget_per_adapter=n * 2,
        ),
    )


async def fill(svc: Service, aid: int, n: int, first: int = 0) -> float:
    base = int(ipaddress.IPv4Address("10.0.0.0"))
    t0 = time.perf_counter()
    for i in range(first, first + n, 2000):
        chunk = [
            build_intent({"kind": "blackhole", "prefix": str(ipaddress.IPv4Address(base + j))})
            for j in range(i, min(first + n, i + 2000))
        ]
        results = svc.create_rules_sync(
            [RuleRequest(x, aid, ttl=0, origin="policy") for x in chunk]
        )
        bad = [r for r in results if isinstance(r, Exception)]
        if bad:
            raise bad[0]
        await asyncio.sleep(0)
    await svc.dispatcher.drain()
    return time.perf_counter() - t0


async def start(data: Path, n: int) -> tuple[Service, Any, asyncio.Task[None], str]:
    import uvicorn

    from orchestrator.api.app import create_app
    from orchestrator.settings import Settings

    token = "e" * 64
    svc = Service(
        Settings(
            data_dir=data, api_wait_seconds=5, admin_token=token, rate_limit_per_minute=100_000
        ),
        policy=policy(n),
    )
    app = create_app(svc, run_scheduler=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return svc, server, task, f"http://127.0.0.1:{port}"


async def dashboard(n: int, samples: int) -> None:
    from tests.unit.orchestrator.test_dashboard_browser import chromium, css, log_in, until

    with tempfile.TemporaryDirectory(prefix="bench-dash-") as tmp:
        svc, server, task, base = await start(Path(tmp), n)
        h = {"Authorization": "Bearer " + "e" * 64}
        try:
            async with httpx.AsyncClient(base_url=base + "/api/v1", headers=h, timeout=60) as api:
                r = await api.post(
                    "/mitigation/adapters", json={"adapter_type": "fake", "name": "edge"}
                )
                aid = r.json()["adapter"]["id"]
                took = await fill(svc, aid, n)
                print(f"{n} active rules made in {took:.1f} s")
                await api.post(
                    "/workspace/operators",
                    json={"username": "bench", "password": PASSWORD, "role": "operator"},
                )
                with chromium(Path(tmp) / "profile") as driver:
                    await asyncio.to_thread(log_in, driver, base, "bench")

                    def first_load() -> float:
                        t0 = time.perf_counter()
                        driver.get(base + "/ui/overview")
                        until(
                            "the overview", lambda: css(driver, "#rules-by-adapter td[data-count]")
                        )
                        return time.perf_counter() - t0

                    loads = [await asyncio.to_thread(first_load) for _ in range(3)]
                    print(
                        f"first load of the overview with {n} active rules: "
                        f"{', '.join(f'{x * 1000:.0f}' for x in loads)} ms"
                    )

                    def to_rules() -> None:
                        driver.get(base + "/ui/rules")
                        until("the rules page", lambda: css(driver, "#rules-table"))
                        until("the stream", lambda: css(driver, "#live.on"))
                        driver.execute_script(OBSERVER)

                    await asyncio.to_thread(to_rules)
                    delays = []
                    for i in range(samples):
                        r = await api.post(
                            "/mitigation/rules",
                            json={
                                "intent_type": "blackhole",
                                "target_ip": f"203.0.113.{i + 1}",
                                "adapter_id": aid,
                            },
                        )
                        rid = r.json()["rule"]["id"]
                        rule = svc.get_rule(rid)
                        created = datetime.fromisoformat(rule["created_at"]).timestamp() * 1000

                        def seen_at(rid: int = rid) -> float:
                            return float(
                                until(
                                    "the row",
                                    lambda: driver.execute_script(
                                        "return window.seen[arguments[0]]", str(rid)
                                    ),
                                )
                            )

                        shown = await asyncio.to_thread(seen_at)
                        delays.append(shown - created)
                        await asyncio.sleep(0.3)
                    print(
                        f"live update, rule created -> row on the page ({samples} rules): "
                        f"median {statistics.median(delays):.0f} ms, max {max(delays):.0f} ms"
                    )
        finally:
            server.should_exit = True
            await task


async def metrics(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        svc, server, task, base = await start(Path(tmp), n)
        h = {"Authorization": "Bearer " + "e" * 64}
        try:
            async with httpx.AsyncClient(base_url=base, headers=h, timeout=300) as http:
                r = await http.post(
                    "/api/v1/mitigation/adapters", json={"adapter_type": "fake", "name": "edge"}
                )
                aid = r.json()["adapter"]["id"]
                took = await fill(svc, aid, n)
                print(f"{n} rules made in {took:.1f} s")
                times = []
                for _ in range(4):
                    t0 = time.perf_counter()
                    r = await http.get("/metrics")
                    times.append(time.perf_counter() - t0)
                    assert r.status_code == 200
                line = next(x for x in r.text.splitlines() if x.startswith("sluice_rules{"))
                print(f"  {line}")
                rest = ", ".join(f"{t * 1000:.0f}" for t in times[1:])
                print(
                    f"/metrics with {n} rules: first scrape {times[0] * 1000:.0f} ms (the database "
                    f"aggregates the whole event log), then {rest} ms"
                )
        finally:
            server.should_exit = True
            await task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=int, default=10_000)
    ap.add_argument("--metrics-rules", type=int, default=100_000)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--only", choices=["dashboard", "metrics"])
    args = ap.parse_args()
    if args.only != "metrics":
        asyncio.run(dashboard(args.rules, args.samples))
    if args.only != "dashboard":
        asyncio.run(metrics(args.metrics_rules))


if __name__ == "__main__":
    main()
