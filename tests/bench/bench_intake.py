"""End-to-end intake: signals through the HTTP API into stored, announced rules.

    .venv/bin/python -m tests.bench.bench_intake [--signals 5000] [--concurrency 32]
        [--targets N]

Starts the real service (``sluice serve``, SQLite, a fake adapter) as a subprocess, then
posts attack signals for distinct hosts to ``POST /api/v1/incidents`` from concurrent
keep-alive clients. Every signal crosses a tier, so each one opens an incident, is
evaluated, and stores and announces a rule. Reports signals/s, latency, and checks that
every rule is stored and active. With ``--targets N`` (fewer than the signals) the
signals cycle over N hosts: after the first round each one updates an incident in
progress and mostly keeps its tier (the common case while an attack lasts). (prefixd
publishes ~4,700 events/s of intake.)
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

TOKEN = "d" * 64
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(n: int, concurrency: int, url: str, hosts: int) -> int:
    """Post ``n`` signals; returns how many failed."""
    base = int(ipaddress.IPv4Address("198.18.0.0"))
    latencies: list[float] = []
    errors: list[str] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    t0 = time.perf_counter()
    for i in range(n):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            body = {
                "target_ip": str(ipaddress.IPv4Address(base + i % hosts + 1)),
                "bps": "3G",
                "pps": 400_000,
                "attack_family": "udp_flood",
                "severity": "high",
                "top_source_ports": [123],
                "udp_pct": 97,
            }
            t = time.perf_counter()
            try:
                r = await client.post("/incidents", json=body)
            except httpx.TransportError as exc:
                took = time.perf_counter() - t
                errors.append(f"{type(exc).__name__} after {took:.2f} s, at {t - t0:.1f} s")
                continue
            latencies.append(time.perf_counter() - t)
            first = i < hosts  # the first signal for a host crosses a tier and stores a rule
            if r.status_code != 200 or (first and not r.json()["decision"]["rules"]):
                errors.append(r.text[:200])

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=f"{url}/api/v1",
        limits=limits,
        timeout=60,
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = await client.get("/mitigation/rules", params={"limit": 1})
            total = r.json()["total"]
            states = (await client.get("/mitigation/rules", params={"limit": 10000})).json()[
                "rules"
            ]
            if total >= hosts and all(x["state"] == "active" for x in states):
                break
            await asyncio.sleep(0.5)
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
    print(f"rules stored: {total}; errors: {len(errors)} {errors[:3]}")
    return len(errors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--signals", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--targets", type=int, default=0, help="distinct hosts (default: one each)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pdir = Path(tmp) / "policy"
        pdir.mkdir()
        (pdir / "policy.yaml").write_text(POLICY)
        port = free_port()
        env = {
            **os.environ,
            "SLUICE_ADMIN_TOKEN": TOKEN,
            "SLUICE_RATE_LIMIT_PER_MINUTE": "10000000",
        }
        with (Path(tmp) / "serve.log").open("wb") as log:
            proc = subprocess.Popen(  # our own CLI
                [
                    sys.executable,
                    "-m",
                    "orchestrator.cli",
                    "serve",
                    "--data-dir",
                    f"{tmp}/data",
                    "--policy-dir",
                    str(pdir),
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                ],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(100):
                try:
                    if httpx.get(f"{url}/api/v1/health", timeout=1).json()["ready"]:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            server = psutil.Process(proc.pid)
            server_cpu = sum(server.cpu_times()[:2])
            client_cpu = time.process_time()
            failed = asyncio.run(
                run(args.signals, args.concurrency, url, args.targets or args.signals)
            )
            server_cpu = sum(server.cpu_times()[:2]) - server_cpu
            client_cpu = time.process_time() - client_cpu
            print(
                f"CPU: server {server_cpu * 1000 / args.signals:.2f} ms per signal, "
                f"this client {client_cpu * 1000 / args.signals:.2f} ms per signal "
                f"({os.cpu_count()} CPUs shared by both)"
            )
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
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)


if __name__ == "__main__":
    main()
