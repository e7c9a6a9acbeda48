"""Benchmark of the policy engine; run on purpose, prints its figures.

    .venv/bin/python -m tests.bench.bench_policy [--entries 100000] [--evaluations 200000]
        [--rounds 5]

Builds a policy directory with N per-host thresholds and N allowlist entries (IPv4 and
IPv6 mixed) as YAML, times loading and validating it, then times ``evaluate`` on a
signal stream pinned to one CPU core:

* steady: ongoing attacks on 2,000 hosts (IPv4 and IPv6; a third under per-host
  overrides, some allowlisted), traffic wandering inside and across tiers, so most
  evaluations keep the tier in force and some escalate, de-escalate or refresh;
* cold: every signal is the first for a new host and crosses a tier, so every
  evaluation plans and validates new rules (the worst case).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from policies.engine import evaluate
from policies.schema import Policy, load_policy
from policies.signals import Signal
from policies.state import EngineState

HEADER = """\
adapters:
  - {name: log, adapter_type: log}
settings: {cooldown_seconds: 60, default_ttl: 300}
escalation:
  hold_down_seconds: 2
  deescalate_after_seconds: 30
  tiers:
    - {name: tier1, bps: 100M, intents: [{type: flowspec_rate_limit, rate: 10M}], adapters: [log]}
    - {name: tier2, bps: 500M, intents: [{type: flowspec_drop}], adapters: [log]}
    - {name: tier3, bps: 2G, intents: [{type: blackhole}], adapters: [log]}
    - {name: tier4, bps: 5G, intents: [{type: scrubbing}], adapters: [log]}
"""


def v4_host(i: int, base: int) -> str:
    return str(ipaddress.IPv4Address(base + i))


def v6_host(i: int, base: int) -> str:
    return str(ipaddress.IPv6Address(base + (i << 16)))


V4_THR = int(ipaddress.IPv4Address("10.0.0.0"))
V6_THR = int(ipaddress.IPv6Address("2001:db8:1::"))
V4_ALLOW = int(ipaddress.IPv4Address("11.0.0.0"))
V6_ALLOW = int(ipaddress.IPv6Address("2001:db8:2::"))


def write_policy(directory: Path, entries: int) -> None:
    (directory / "escalation.yaml").write_text(HEADER)
    lines = ["thresholds:\n"]
    for i in range(entries):
        target = f"{v4_host(i, V4_THR)}/32" if i % 2 else f"{v6_host(i, V6_THR)}/112"
        lines.append(
            f"  - {{target_ip: {target}, label: host-{i}, "
            f"thresholds: {{tier1_bps: {20_000_000 + i}, tier2_bps: {300_000_000 + i}}}}}\n"
        )
    (directory / "thresholds.yaml").write_text("".join(lines))
    lines = ["allowlist:\n"]
    for i in range(entries):
        net = f"{v4_host(i, V4_ALLOW)}/32" if i % 2 else f"{v6_host(i, V6_ALLOW)}/112"
        lines.append(f"  - {{ip_address: {net}, label: allow-{i}}}\n")
    (directory / "allowlist.yaml").write_text("".join(lines))


def targets(entries: int, count: int, rng: random.Random) -> list[str]:
    out = []
    for k in range(count):
        kind = k % 6
        i = rng.randrange(entries)
        if kind == 0:
            out.append(v4_host(i | 1, V4_THR))  # per-host override (IPv4)
        elif kind == 1:
            out.append(v6_host(i & ~1, V6_THR + 5))  # per-host override (IPv6)
        elif kind == 2:
            out.append(v4_host(i | 1, V4_ALLOW))  # allowlisted
        elif kind == 3:
            out.append(str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("198.18.0.0")) + k)))
        else:
            out.append(str(ipaddress.IPv6Address(int(ipaddress.IPv6Address("2001:db8:ff::")) + k)))
    return out


FAMILIES: list[dict[str, Any]] = [
    {"attack_family": "udp_flood", "top_source_ports": [123]},
    {"attack_family": "syn_flood", "top_destination_ports": [443]},
    {"attack_family": "icmp_flood"},
    {"attack_family": "udp_flood", "top_destination_ports": [27015]},
]


def signals(hosts: list[str], n: int, rng: random.Random) -> list[Signal]:
    levels = [50e6, 150e6, 180e6, 600e6, 700e6, 2.5e9, 6e9]
    pool = []
    for k, host in enumerate(hosts):
        for level in levels:
            pool.append(
                Signal.model_validate(
                    {"target_ip": host, "bps": level, "pps": level / 8000, **FAMILIES[k % 4]}
                )
            )
    by_host = len(levels)
    out = []
    state = [rng.randrange(by_host) for _ in hosts]
    for _ in range(n):
        h = rng.randrange(len(hosts))
        if rng.random() < 0.02:  # traffic moves to another level now and then
            state[h] = rng.randrange(by_host)
        out.append(pool[h * by_host + state[h]])
    return out


def bench_load(entries: int, runs: int) -> tuple[float, Policy]:
    """Load the directory ``runs`` times; prints each wall and CPU time (the host is shared)."""
    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        write_policy(directory, entries)
        size = sum(p.stat().st_size for p in directory.iterdir())
        for _ in range(runs):
            start, cpu = time.perf_counter(), time.process_time()
            policy = load_policy(directory)
            elapsed, used = time.perf_counter() - start, time.process_time() - cpu
            times.append(elapsed)
            print(
                f"load+validate {len(policy.thresholds):,} per-host thresholds + "
                f"{len(policy.allowlist):,} allowlist entries ({size / 1e6:.1f} MB YAML): "
                f"{elapsed:.2f} s wall, {used:.2f} s CPU"
            )
    print(f"load+validate: best {min(times):.2f} s, worst {max(times):.2f} s of {runs}")
    return min(times), policy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--evaluations", type=int, default=200_000)
    parser.add_argument("--cold", type=int, default=20_000)
    parser.add_argument("--load-runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    start = time.perf_counter()
    total = 0
    for i in range(1_000_000):
        total += i
    print(
        f"calibration: 1e6 Python additions in {time.perf_counter() - start:.3f} s "
        "(~0.04-0.05 s on an idle current desktop core; higher means a slower or busy CPU)"
    )
    rng = random.Random(7)
    _, policy = bench_load(args.entries, args.load_runs)
    hosts = targets(args.entries, 2_000, rng)
    stream = signals(hosts, args.evaluations, rng)
    state = EngineState()
    for i, s in enumerate(stream[:20_000]):  # warm up: attacks start, rules are planned
        evaluate(s, policy, state, i * 0.01)
    statuses: dict[str, int] = {}
    t0 = 200.0
    rates: list[float] = []
    cpu_rates: list[float] = []
    for _ in range(args.rounds):  # the host is shared: report every round and the median
        cpu = time.process_time()
        start = time.perf_counter()
        for i, s in enumerate(stream):
            d = evaluate(s, policy, state, t0 + i * 0.01)
            statuses[d.status] = statuses.get(d.status, 0) + 1
        elapsed = time.perf_counter() - start
        used = time.process_time() - cpu
        t0 += len(stream) * 0.01
        rates.append(len(stream) / elapsed)
        cpu_rates.append(len(stream) / used)
    print(
        f"steady: {args.rounds} rounds of {len(stream):,} evaluations, one core: "
        f"median {statistics.median(rates):,.0f}/s wall "
        f"({statistics.median(cpu_rates):,.0f}/s of CPU time); "
        "rounds: " + ", ".join(f"{r:,.0f}" for r in rates)
    )
    print("  decisions: " + ", ".join(f"{k} {v:,}" for k, v in sorted(statuses.items())))
    cold_hosts = [
        str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("100.64.0.0")) + i))
        for i in range(args.cold)
    ]
    cold = [
        Signal.model_validate({"target_ip": h, "bps": 700e6, **FAMILIES[i % 4]})
        for i, h in enumerate(cold_hosts)
    ]
    state = EngineState()
    for s in cold:  # first sight of each attack: hold-down
        evaluate(s, policy, state, 1000.0)
    start = time.perf_counter()
    rules = 0
    for s in cold:  # hold-down over: every evaluation plans new rules
        rules += len(evaluate(s, policy, state, 1003.0).rules)
    elapsed = time.perf_counter() - start
    print(
        f"cold: {len(cold):,} new attacks ({rules:,} rules planned) in {elapsed:.2f} s = "
        f"{len(cold) / elapsed:,.0f} evaluations/s"
    )


if __name__ == "__main__":
    main()
