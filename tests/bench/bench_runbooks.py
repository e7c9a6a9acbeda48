"""Incident event -> first runbook step, and -> a channel's message at its receiver.

    .venv/bin/python -m tests.bench.bench_runbooks [--incidents 100] [--spread 0]

Starts the real service (``sluice serve``, SQLite, a fake adapter) as a subprocess, with
one runbook (a ``log`` step) and one Slack channel pointed at a loopback receiver in this
process (``SLUICE_EGRESS_ALLOW=127.0.0.1``), both created through the API. Then it posts
``--incidents`` attack signals for distinct targets to ``POST /api/v1/incidents`` the way
a detector does, all at once (``--spread S``: evenly over S seconds), and reports
p50/p99/max of

* the ``incident.opened`` event's time -> the execution's first step start (both the
  service's own times, from ``GET /events`` and ``GET /runbooks/{id}/executions``);
* the same event time -> the Slack message's arrival at the receiver (wall clock, one
  machine);
* the signal's send time at the detector -> the Slack message's arrival;
* (to read the others) the event's time -> the execution's creation: the event's time is
  when the intake evaluated the signal, before its group commit, so this includes the
  intake's batch and the consumer's pick-up.

The last line is a one-line summary with the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.integration.test_crash import TOKEN, Server
from tests.unit.orchestrator.receivers import http_receivers

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
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def stats(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 4),
        "p99": round(pct(values, 0.99), 4),
        "max": round(max(values), 4),
    }


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def run(url: str, n: int, spread: float, server: psutil.Process) -> dict[str, Any]:
    async with (
        http_receivers() as rec,
        httpx.AsyncClient(
            base_url=f"{url}/api/v1",
            timeout=120,
            headers={"Authorization": f"Bearer {TOKEN}"},
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
        ) as api,
    ):

        async def call(method: str, path: str, **kw: Any) -> dict[str, Any]:
            r = await api.request(method, path, **kw)
            if r.status_code >= 300:
                raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:300]}")
            body: dict[str, Any] = r.json()
            return body

        rb = await call(
            "POST",
            "/runbooks",
            json={
                "name": "bench",
                "trigger_conditions": {"min_severity": "low"},
                "steps": [{"action_type": "log", "action_config": {"message": "{target_ip}"}}],
            },
        )
        await call(
            "POST",
            "/channels",
            json={
                "name": "s",
                "channel_type": "slack",
                "secrets": {"webhook_url": rec.base + "/slack"},
                "filters": {"events": ["incident.opened"]},
            },
        )
        sent: dict[str, float] = {}

        async def detector(i: int) -> None:
            await asyncio.sleep(spread * i / n)
            target = f"198.18.{i // 250}.{i % 250 + 1}"
            sent[target] = time.time()
            await call(
                "POST",
                "/incidents",
                json={
                    "target_ip": target,
                    "bps": "3G",
                    "pps": 400_000,
                    "attack_family": "udp_flood",
                    "severity": "high",
                    "node": f"n{i}",
                },
            )

        t0 = time.monotonic()
        cpu0 = sum(server.cpu_times()[:2])
        await asyncio.gather(*(detector(i) for i in range(n)))
        posted = time.monotonic() - t0
        await rec.wait("/slack", n, seconds=300)
        cpu = sum(server.cpu_times()[:2]) - cpu0
        deadline = time.monotonic() + 300
        while True:
            execs = (await call("GET", f"/runbooks/{rb['runbook']['id']}/executions?limit=500"))[
                "executions"
            ]
            if len(execs) >= n and all(e["steps"] and e["steps"][0]["finished_at"] for e in execs):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(execs)} executions started")
            await asyncio.sleep(0.2)
        opened: dict[str, tuple[float, str]] = {}  # incident id -> (event time, target)
        after = 0
        while True:
            page = await call("GET", f"/events?after={after}&limit=1000")
            for e in page["events"]:
                if e["kind"] == "incident.opened":
                    opened[e["incident_id"]] = (ts(e["at"]), "")
            if not page["events"]:
                break
            after = page["events"][-1]["id"]
        for iid in opened:
            inc = (await call("GET", f"/incidents/{iid}"))["incident"]
            opened[iid] = (opened[iid][0], inc["target_ip"])
    to_step = [ts(e["steps"][0]["started_at"]) - opened[e["incident_id"]][0] for e in execs]
    step_done = [ts(e["steps"][0]["finished_at"]) - opened[e["incident_id"]][0] for e in execs]
    # the part before the event was committed and picked up: the intake's group commit
    to_pickup = [ts(e["started_at"]) - opened[e["incident_id"]][0] for e in execs]
    to_msg, signal_to_msg = [], []
    for g in rec.at("/slack"):
        iid = next(i for i in opened if i in g.body["text"])
        to_msg.append(g.wall - opened[iid][0])
        signal_to_msg.append(g.wall - sent[opened[iid][1]])
    return {
        "incidents": n,
        "spread_s": spread,
        "posting_all_signals_s": round(posted, 2),
        # the service's CPU from the first signal to the last message (all threads)
        "service_cpu_s": round(cpu, 2),
        "event_to_first_step_s": stats(to_step),
        "event_to_first_step_finished_s": stats(step_done),
        "event_to_execution_created_s": stats(to_pickup),
        "event_to_channel_message_s": stats(to_msg),
        "signal_sent_to_channel_message_s": stats(signal_to_msg),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--incidents", type=int, default=100)
    ap.add_argument("--spread", type=float, default=0.0, help="post the signals over S seconds")
    args = ap.parse_args()
    n = max(1, min(args.incidents, 1000))
    with tempfile.TemporaryDirectory() as tmp:
        pdir = Path(tmp) / "policy"
        pdir.mkdir()
        (pdir / "policy.yaml").write_text(POLICY)
        srv = Server(
            Path(tmp),
            pdir,
            env={"SLUICE_RATE_LIMIT_PER_MINUTE": "10000000", "SLUICE_EGRESS_ALLOW": "127.0.0.1"},
        )
        srv.ready_timeout = 120
        srv.stop_timeout = 20
        try:
            srv.start()
            assert srv.proc is not None
            out = asyncio.run(run(srv.url, n, args.spread, psutil.Process(srv.proc.pid)))
        except BaseException:
            print("server log (tail):", (Path(tmp) / "serve.log").read_text()[-4000:])
            raise
        finally:
            srv.stop()
    load = os.getloadavg()
    out["load_average"] = [round(x, 2) for x in load]
    print(json.dumps(out, indent=2))
    s, m = out["event_to_first_step_s"], out["event_to_channel_message_s"]
    print(
        f"runbooks bench: {n} incidents: event -> first step p50 {s['p50']:.3f} s "
        f"p99 {s['p99']:.3f} s; event -> Slack message p50 {m['p50']:.3f} s "
        f"p99 {m['p99']:.3f} s; service CPU {out['service_cpu_s']:.2f} s "
        f"(load average {load[0]:.2f})"
    )


if __name__ == "__main__":
    main()
