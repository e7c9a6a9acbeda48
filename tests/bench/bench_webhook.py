"""Webhook adapter benchmark: throughput and the latency the adapter adds.

    .venv/bin/python -m tests.bench.bench_webhook [--rounds 10] [--concurrency 100]

Against a local verifying receiver (``python -m labs.vendors.webhook_receiver``, real
HTTP on 127.0.0.1, in its own process so it does not share the adapter's GIL) it reports:

1. rules/s through ``WebhookAdapter.announce`` with ``--concurrency`` rule changes per
   batch (one signed POST each), over ``--rounds`` batches;
2. per-message latency p50/p99 with that many in flight, through the adapter
   (render + sign + target check + POST) and posting the same pre-signed bytes directly
   with one ``httpx.AsyncClient`` (same receiver, same connection limits);
3. the same two latencies one message at a time (no queueing), where the difference is
   the adapter's own cost; and the CPU time of rendering and signing alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator

import httpx

from adapters.base import AdapterConfig, RuleRef
from adapters.webhook import WebhookAdapter
from adapters.webhook import render as wrender
from adapters.webhook.signing import headers_for
from policies.intents import build_intent


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def refs(start: int, count: int) -> list[RuleRef]:
    out = []
    for i in range(count):
        n = start + i
        prefix = f"198.51.100.{n % 256}/32" if n % 2 else f"203.0.113.{n % 256}/32"
        out.append(
            RuleRef(
                n,
                build_intent({"kind": "blackhole", "prefix": prefix}),
                context={
                    "event": "announce",
                    "reason": "bench",
                    "origin": "policy",
                    "ttl": 600,
                    "explanation": ["tier 1: bps >= 1 Gbps"],
                    "incident": {"id": f"inc_{n}", "bps": 1.2e9},
                },
            )
        )
    return out


async def timed(fn: Callable[[], Awaitable[object]], into: list[float]) -> None:
    started = time.perf_counter()
    await fn()
    into.append((time.perf_counter() - started) * 1000)


def line(name: str, values: list[float]) -> str:
    return (
        f"  {name:<28} p50 {pct(values, 50):7.2f} ms   p99 {pct(values, 99):7.2f} ms   "
        f"mean {statistics.fmean(values):7.2f} ms   (n={len(values)})"
    )


@contextlib.contextmanager
def receiver_process() -> Iterator[tuple[str, str]]:
    """A verifying receiver in its own process (own GIL): ``(hook url, secret)``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "labs.vendors.webhook_receiver", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split(" on ")[-1].strip()
        secret = proc.stdout.readline().split("signing secret ")[-1].strip()
        if not url.startswith("http://") or not secret.startswith("whsec_"):
            raise SystemExit("the receiver did not start")
        yield url + "/hooks/sluice", secret
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def run(rounds: int, concurrency: int) -> None:
    with receiver_process() as (hook_url, secret):
        adapter = WebhookAdapter.from_config(
            AdapterConfig(
                name="bench",
                adapter_type="webhook",
                endpoint=hook_url,
                auth_token=secret,
                config={
                    "allowed_targets": ["127.0.0.1"],
                    "max_concurrency": concurrency,
                    "timeout": 10,
                },
            )
        )
        direct = httpx.AsyncClient(timeout=10)
        try:
            await adapter.announce(refs(0, concurrency))  # warm up connections
            # 1. throughput through announce()
            total, started = 0, time.perf_counter()
            for r in range(rounds):
                outcomes = await adapter.announce(refs((r + 1) * 10_000, concurrency))
                failed = [o for o in outcomes if not o.ok]
                if failed:
                    raise SystemExit(f"delivery failed: {failed[0].error}")
                total += len(outcomes)
            elapsed = time.perf_counter() - started
            print(f"webhook adapter, {concurrency} concurrent rule changes per batch:")
            print(f"  {total} rules in {elapsed:.2f} s = {total / elapsed:,.0f} rules/s")
            sample = refs(5_000_000, 2000)
            cpu = time.perf_counter()
            for ref in sample:
                body = wrender.body_bytes(wrender.payload(ref, "bench", "announce"))
                headers_for(secret, f"msg_{ref.rule_id}", int(time.time()), body)
            per = (time.perf_counter() - cpu) / len(sample) * 1e6
            print(f"  render + sign alone: {per:.0f} us per message ({1e6 / per:,.0f}/s)")

            # 2./3. latency, adapter vs direct, concurrent and one at a time
            def presigned(ref: RuleRef) -> tuple[bytes, dict[str, str]]:
                body = wrender.body_bytes(wrender.payload(ref, "bench", "announce"))
                signed = headers_for(secret, f"msg_direct_{ref.rule_id}", int(time.time()), body)
                return body, {"Content-Type": "application/json", **signed}

            async def post_direct(ref: RuleRef) -> None:
                body, headers = presigned(ref)
                resp = await direct.post(hook_url, content=body, headers=headers)
                if resp.status_code != 200:
                    raise SystemExit(f"direct post failed: {resp.status_code}")

            def announce_one(ref: RuleRef) -> Callable[[], Awaitable[object]]:
                return lambda: adapter.announce([ref])

            def direct_one(ref: RuleRef) -> Callable[[], Awaitable[object]]:
                return lambda: post_direct(ref)

            for mode, width in (("concurrent", concurrency), ("one at a time", 1)):
                via: list[float] = []
                raw: list[float] = []
                base = 1_000_000 if width > 1 else 2_000_000
                for r in range(rounds):
                    batch = refs(base + r * 1000, concurrency)
                    for chunk in (batch[i : i + width] for i in range(0, len(batch), width)):
                        await asyncio.gather(*(timed(announce_one(x), via) for x in chunk))
                        await asyncio.gather(*(timed(direct_one(x), raw) for x in chunk))
                print(f"latency per message, {mode} ({width} in flight):")
                print(line("through the adapter", via))
                print(line("direct httpx, same bytes", raw))
                print(
                    f"  {'added by the adapter':<28} p50 {pct(via, 50) - pct(raw, 50):+7.2f} ms"
                    f"   p99 {pct(via, 99) - pct(raw, 99):+7.2f} ms"
                )
        finally:
            await direct.aclose()
            await adapter.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(run(args.rounds, args.concurrency))


if __name__ == "__main__":
    main()
