"""Incident event -> first runbook step, and -> a channel's message at its receiver.

Opens ``--incidents`` incidents at once (concurrent ``POST /incidents`` with distinct
targets) on a service on a temporary SQLite store, with one runbook (a ``log`` step) and
one Slack channel pointed at a loopback receiver; reports p50/p99/max of

* the ``incident.opened`` event's time -> the execution's first step start (store times);
* the same event time -> the Slack message's arrival at the receiver (wall clock).

``python -m tests.bench.run runbooks -- --incidents 100``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from orchestrator.store.models import events, runbook_executions, runbook_step_results
from tests.unit.orchestrator.receivers import http_receivers
from tests.unit.orchestrator.test_runbooks import Env, runbook


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with http_receivers() as rec:
            env = Env(Path(tmp), rec)
            await env.start()
            try:
                await env.ok("POST", "/runbooks", 201, json=runbook())
                await env.ok(
                    "POST",
                    "/channels",
                    201,
                    json={
                        "name": "s",
                        "channel_type": "slack",
                        "secrets": {"webhook_url": rec.base + "/slack"},
                        "filters": {"events": ["incident.opened"]},
                    },
                )
                t0 = time.monotonic()
                await asyncio.gather(
                    *(env.signal(target_ip=f"203.0.113.{i + 1}", node=f"n{i}") for i in range(n))
                )
                posted = time.monotonic() - t0
                await rec.wait("/slack", n, seconds=120)
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    with env.svc.engine.connect() as conn:
                        started = conn.execute(
                            select(
                                runbook_executions.c.incident_id, runbook_step_results.c.started_at
                            )
                            .join(
                                runbook_step_results,
                                runbook_step_results.c.execution_id == runbook_executions.c.id,
                            )
                            .where(runbook_step_results.c.step_index == 0)
                        ).all()
                    if len(started) >= n:
                        break
                    await asyncio.sleep(0.1)
                with env.svc.engine.connect() as conn:
                    opened = {
                        r.incident_id: r.at
                        for r in conn.execute(
                            select(events.c.incident_id, events.c.at).where(
                                events.c.kind == "incident.opened"
                            )
                        )
                    }
                to_step = [(s.started_at - opened[s.incident_id]).total_seconds() for s in started]
                to_msg = []
                for g in rec.at("/slack"):
                    iid = next(i for i in opened if i in g.body["text"])
                    to_msg.append(g.wall - opened[iid].timestamp())
            finally:
                await env.stop()
    out: dict[str, Any] = {"incidents": n, "posting_all_signals_s": round(posted, 2)}
    for name, vals in (("event_to_first_step_s", to_step), ("event_to_channel_message_s", to_msg)):
        out[name] = {
            "n": len(vals),
            "p50": round(statistics.median(vals), 4),
            "p99": round(pct(vals, 0.99), 4),
            "max": round(max(vals), 4),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--incidents", type=int, default=100)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(min(args.incidents, 250))), indent=2))


if __name__ == "__main__":
    main()
