"""End-to-end intake: signals through the HTTP API into stored, announced rules.

    .venv/bin/python -m tests.bench.bench_intake [--signals 5000] [--concurrency 32]
        [--targets N]
    .venv/bin/python -m tests.bench.bench_intake --bulk 1000 [--signals 50000]
        [--concurrency 4] [--postgresql]

Starts the real service (``sluice serve``, SQLite, or with ``--postgresql`` a throwaway
PostgreSQL from labs/postgres.py; a fake adapter) as a subprocess, then
posts attack signals for distinct hosts from concurrent keep-alive clients, the way a
detector drives it: one signal per ``POST /api/v1/incidents``, or with ``--bulk N``, N
signals per ``POST /api/v1/incidents/bulk`` (the bodies are encoded before the clock
starts). Every signal crosses a tier, so each one opens an incident, is evaluated, and
stores its decision and a rule, which is announced. Reports signals/s, request latency,
and checks that every answer carries its decision and rule and that every rule is
stored and active. With ``--targets N`` (fewer than the signals) the signals cycle over N
hosts: after the first round each one updates an incident in progress and mostly keeps
its tier (the common case while an attack lasts). (prefixd publishes ~4,700 events/s of
intake; issue 14's target for the bulk intake is 5,000 distinct-target signals/s.)

The rate limit is raised through the settings (``SLUICE_RATE_LIMIT_PER_MINUTE``), and for
``--bulk`` above the defaults so are ``SLUICE_BULK_MAX_SIGNALS`` and
``SLUICE_MAX_BODY_BYTES``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from labs.postgres import ThrowawayPostgres
from tests.bench.rawhttp import Connection
from tests.integration.test_crash import TOKEN, Server

POLICY = """
settings: {cooldown_seconds: 0, default_ttl: 600}
guardrails: {max_active_rules: 1000000, max_new_rules_per_minute: 1000000,
             flowspec_budget_per_adapter: 1000000}
adapters:
  - {name: edge, adapter_type: fake}
escalation:
  hold_down_seconds: 0
  tiers:
    - {name: tier1, bps: 100M, intents: [{type: flowspec_drop}], adapters: [edge]}
    - {name: tier2, bps: 2G, intents: [{type: blackhole}], adapters: [edge]}
"""


async def run(n: int, concurrency: int, url: str, hosts: int) -> int:
    """Post ``n`` signals; returns how many failed.

    The requests go out on plain keep-alive connections (:mod:`tests.bench.rawhttp`):
    with httpx the client itself took as much CPU per request as the service."""
    base = int(ipaddress.IPv4Address("198.18.0.0"))
    latencies: list[float] = []
    errors: list[str] = []
    bodies = [
        json.dumps(
            {
                "target_ip": str(ipaddress.IPv4Address(base + i % hosts + 1)),
                "bps": "3G",
                "pps": 400_000,
                "attack_family": "udp_flood",
                "severity": "high",
                "top_source_ports": [123],
                "udp_pct": 97,
            }
        ).encode()
        for i in range(n)
    ]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    t0 = time.perf_counter()

    async def worker() -> None:
        conn = Connection(f"{url}/api/v1", {"Authorization": f"Bearer {TOKEN}"})
        try:
            while not queue.empty():
                i = queue.get_nowait()
                t = time.perf_counter()
                try:
                    status, answer = await conn.post("/incidents", bodies[i], "application/json")
                except (OSError, asyncio.IncompleteReadError) as exc:
                    took = time.perf_counter() - t
                    errors.append(f"{type(exc).__name__} after {took:.2f} s, at {t - t0:.1f} s")
                    await conn.close()
                    continue
                latencies.append(time.perf_counter() - t)
                # the first signal for a host crosses a tier and stores a rule
                first = i < hosts
                if status != 200 or (first and not json.loads(answer)["decision"]["rules"]):
                    errors.append(answer[:200].decode(errors="replace"))
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    async with httpx.AsyncClient(
        base_url=f"{url}/api/v1", timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as client:
        total, active = await settle(client, hosts)
    latencies.sort()
    print(
        f"{n} signals with {concurrency} concurrent clients in {elapsed:.2f} s = "
        f"{n / elapsed:,.0f} signals/s "
        + (
            "(each stored and announced a rule)"
            if hosts == n
            else f"({hosts} hosts: {hosts} rules stored and announced, the rest updates)"
        )
    )
    print(
        f"latency p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms"
    )
    print(f"rules stored: {total}, active: {active}; errors: {len(errors)} {errors[:3]}")
    return len(errors) + (total != hosts) + (active != hosts)


async def run_bulk(n: int, per_request: int, concurrency: int, url: str, hosts: int) -> int:
    """Post ``n`` signals in bulk requests of ``per_request``; returns how many failed."""
    base = int(ipaddress.IPv4Address("198.18.0.0"))
    signals = [
        {
            "target_ip": str(ipaddress.IPv4Address(base + i % hosts + 1)),
            "bps": "3G",
            "pps": 400_000,
            "attack_family": "udp_flood",
            "severity": "high",
            "top_source_ports": [123],
            "udp_pct": 97,
        }
        for i in range(n)
    ]
    bodies = [
        (k, json.dumps({"signals": signals[k : k + per_request]}).encode())
        for k in range(0, n, per_request)
    ]
    queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    latencies: list[float] = []
    errors: list[str] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            first, body = queue.get_nowait()
            t = time.perf_counter()
            try:
                r = await client.post(
                    "/incidents/bulk", content=body, headers={"Content-Type": "application/json"}
                )
            except httpx.TransportError as exc:
                errors.append(f"{type(exc).__name__} for the batch from {first}")
                continue
            latencies.append(time.perf_counter() - t)
            if r.status_code != 200:
                errors.append(r.text[:200])
                continue
            for res in r.json()["results"]:
                i = first + res["index"]
                stored = res["ok"] and (i >= hosts or (res["rule_ids"] and res["decision"]))
                if not stored:
                    errors.append(f"signal {i}: {json.dumps(res)[:200]}")

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=f"{url}/api/v1",
        limits=limits,
        timeout=120,
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        total, active = await settle(client, hosts)
    latencies.sort()
    print(
        f"{n} signals in {len(bodies)} bulk requests of {per_request} over {concurrency} "
        f"connections in {elapsed:.2f} s = {n / elapsed:,.0f} signals/s "
        + (
            "(each a distinct target: each stored its decision and a rule, announced)"
            if hosts == n
            else f"({hosts} hosts: {hosts} rules stored and announced, the rest updates)"
        )
    )
    print(
        f"request latency p50 {statistics.median(latencies) * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms"
    )
    print(f"rules stored: {total}, active: {active}; errors: {len(errors)} {errors[:3]}")
    met = "met" if n / elapsed >= 5000 else "NOT met"
    print(f"target >= 5,000 signals/s (issue 14, bulk, distinct targets): {met}")
    return len(errors) + (total != hosts) + (active != hosts)


async def settle(client: httpx.AsyncClient, hosts: int) -> tuple[int, int]:
    """(rules stored, rules active) once every rule is active, or after 120 s."""
    deadline = time.monotonic() + 120
    total = active = 0
    while time.monotonic() < deadline:
        total = (await client.get("/mitigation/rules", params={"limit": 1})).json()["total"]
        active = 0
        for offset in range(0, total, 10_000):
            page = await client.get("/mitigation/rules", params={"limit": 10_000, "offset": offset})
            active += sum(1 for x in page.json()["rules"] if x["state"] == "active")
        if total >= hosts and active >= hosts:
            break
        await asyncio.sleep(0.5)
    return total, active


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--signals", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--targets", type=int, default=0, help="distinct hosts (default: one each)")
    ap.add_argument("--bulk", type=int, default=0, help="signals per bulk request (0: single)")
    ap.add_argument(
        "--postgresql",
        action="store_true",
        help="store in a throwaway PostgreSQL (labs/postgres.py) instead of the SQLite default",
    )
    args = ap.parse_args()
    if args.bulk and args.concurrency == 32:
        args.concurrency = 4  # a few detectors each sending big batches
    load = os.getloadavg()
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        store: dict[str, str] = {}
        if args.postgresql:
            pg = stack.enter_context(ThrowawayPostgres())
            store["SLUICE_DATABASE_URL"] = pg.create_database("intake")
        pdir = Path(tmp) / "policy"
        pdir.mkdir()
        (pdir / "policy.yaml").write_text(POLICY)
        srv = Server(
            Path(tmp),
            pdir,
            env={
                "SLUICE_RATE_LIMIT_PER_MINUTE": "10000000",
                "SLUICE_BULK_MAX_SIGNALS": str(max(1000, args.bulk)),
                "SLUICE_MAX_BODY_BYTES": str(max(1 << 20, args.bulk * 400)),
                **store,
            },
        )
        srv.ready_timeout = 180  # a loaded machine starts Python slowly
        srv.stop_timeout = 20
        url = srv.url
        try:
            srv.start()
            assert srv.proc is not None
            server = psutil.Process(srv.proc.pid)
            server_cpu = sum(server.cpu_times()[:2])
            client_cpu = time.process_time()
            hosts = args.targets or args.signals
            if args.bulk:
                failed = asyncio.run(
                    run_bulk(args.signals, args.bulk, args.concurrency, url, hosts)
                )
            else:
                failed = asyncio.run(run(args.signals, args.concurrency, url, hosts))
            server_cpu = sum(server.cpu_times()[:2]) - server_cpu
            client_cpu = time.process_time() - client_cpu
            print(
                f"CPU: server {server_cpu * 1000 / args.signals:.2f} ms per signal, "
                f"this client {client_cpu * 1000 / args.signals:.2f} ms per signal "
                f"({os.cpu_count()} CPUs shared by both)"
            )
            after = os.getloadavg()
            print(
                f"load average before {load[0]:.2f}, after {after[0]:.2f} "
                "(other work on this machine slows both sides)"
            )
            print(f"RESULT: {'PASS' if not failed else 'FAIL'} ({failed} failures: every answer "
                  "and every rule checked)")  # fmt: skip
            if failed:
                log_text = (Path(tmp) / "serve.log").read_text()
                print("server warnings and errors:")
                for line in log_text.splitlines():
                    if " WARNING " in line or " ERROR " in line or "Error" in line:
                        print("  " + line[:300])
        except BaseException:
            print("server log (tail):", (Path(tmp) / "serve.log").read_text()[-4000:])
            raise
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
