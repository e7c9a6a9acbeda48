"""A storm through the bulk intake into a real RIB: signals -> gobgpd -> BIRD (root).

    sudo .venv/bin/python -m tests.bench.bench_bulk_gobgp [--signals 10000] [--bulk 1000]
        [--connections 10]

Brings up the lab (gobgpd peered with a BIRD receiver, in network namespaces) and the
real service (``sluice serve``) with the gobgp adapter and a policy whose tier blackholes
any target over 2 Gbps. Then ``--signals`` attack signals, each for a distinct /32 of
198.18.0.0/15, are posted the way a detector under a carpet bomb would: in
``POST /api/v1/incidents/bulk`` requests of ``--bulk`` signals, sent at once over
``--connections`` keep-alive connections (bodies encoded before the clock starts). Reports
the time from the first request to the last answer, and to every route being in BIRD's
RIB (issue 14's target: 10,000 signals, every route in the RIB within 2 s). The rate
limit, batch size and body limit are raised through settings (``SLUICE_*``), not code.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import tempfile
import time
from pathlib import Path

import httpx

from labs.bird import BirdNode
from labs.topology import running
from tests.bench.bench_gobgp import BirdSocket
from tests.bench.bench_mitigate import SPEAKERS
from tests.integration.test_crash import TOKEN, Server

STORM = ipaddress.IPv4Network("198.18.0.0/15")  # RFC 2544 benchmarking range


def write_policy(pdir: Path, cfg: dict[str, object]) -> None:
    pdir.mkdir()
    (pdir / "settings.yaml").write_text(
        "settings:\n  cooldown_seconds: 0\n  default_ttl: 0\n"
        "guardrails:\n  max_new_rules_per_minute: 1000000\n  max_active_rules: 1000000\n"
        "escalation:\n  hold_down_seconds: 0\n  tiers:\n"
        "    - {name: rtbh, bps: 2G, intents: [{type: blackhole, next_hop: 192.0.2.3}],"
        " adapters: [edge]}\n"
    )
    lines = [f"adapters:\n  - name: edge\n    adapter_type: {cfg['adapter_type']}\n"]
    if cfg.get("endpoint"):
        lines.append(f"    endpoint: {cfg['endpoint']}\n")
    config = cfg.get("config")
    if isinstance(config, dict) and config:
        lines.append("    config:\n")
        lines += [f"      {k}: {v}\n" for k, v in config.items()]
    (pdir / "adapters.yaml").write_text("".join(lines))


async def storm(url: str, bodies: list[bytes], connections: int) -> tuple[float, int]:
    """Send every body at once; (seconds to the last answer, signals refused)."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(
        base_url=f"{url}/api/v1",
        limits=limits,
        timeout=120,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    ) as client:
        await client.get("/health")  # a connection open before the clock starts
        t0 = time.perf_counter()
        answers = await asyncio.gather(*(client.post("/incidents/bulk", content=b) for b in bodies))
        took = time.perf_counter() - t0
    refused = 0
    for r in answers:
        if r.status_code != 200:
            raise RuntimeError(f"bulk request refused: {r.status_code} {r.text[:300]}")
        refused += sum(1 for x in r.json()["results"] if not (x["ok"] and x["rule_ids"]))
    return took, refused


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--signals", type=int, default=10_000)
    ap.add_argument("--bulk", type=int, default=1000, help="signals per request")
    ap.add_argument("--connections", type=int, default=10)
    args = ap.parse_args()
    hosts = [str(h) for h in list(STORM.hosts())[: args.signals]]
    bodies = [
        json.dumps(
            {
                "signals": [
                    {"target_ip": h, "bps": "3G", "pps": 400_000, "attack_family": "udp_flood",
                     "severity": "high"}
                    for h in hosts[k : k + args.bulk]
                ]
            }
        ).encode()
        for k in range(0, len(hosts), args.bulk)
    ]  # fmt: skip
    os.environ.update(
        SLUICE_RATE_LIMIT_PER_MINUTE="100000000",
        SLUICE_BULK_MAX_SIGNALS=str(max(1000, args.bulk)),
        SLUICE_MAX_BODY_BYTES=str(max(1 << 20, args.bulk * 400)),
    )
    load = os.getloadavg()
    with (
        running(SPEAKERS["gobgp"](), receivers=("bird",)) as topo,
        tempfile.TemporaryDirectory() as tmp,
    ):
        node = topo.receivers["bird"].node
        assert isinstance(node, BirdNode)
        bird = BirdSocket(node.socket)
        pdir = Path(tmp) / "policy"
        write_policy(pdir, topo.speaker.adapter_config("edge"))
        srv = Server(Path(tmp), pdir, topo.access.allowed_dirs)  # the lab's sockets
        srv.ready_timeout = 180  # a loaded machine starts Python slowly
        srv.start()
        try:
            before = bird.count()
            t0 = time.perf_counter()
            answered, refused = asyncio.run(storm(srv.url, bodies, args.connections))
            deadline = time.perf_counter() + 120
            while bird.count() < before + len(hosts):
                if time.perf_counter() > deadline:
                    raise TimeoutError(
                        f"{bird.count() - before} of {len(hosts)} routes in BIRD after 120 s"
                    )
                time.sleep(0.01)
            in_rib = time.perf_counter() - t0
        finally:
            bird.close()
            srv.stop()
    after = os.getloadavg()
    print(
        f"gobgp: {len(hosts):,} distinct-target signals in {len(bodies)} bulk requests of "
        f"{args.bulk} over {args.connections} connections: all answered {answered:.2f} s, "
        f"every route in BIRD's RIB {in_rib:.2f} s after the first request (target <= 2 s)"
    )
    print(f"signals without a rule: {refused}; load average {load[0]:.2f} -> {after[0]:.2f} "
          f"({os.cpu_count()} CPUs)")  # fmt: skip
    print(f"RESULT: {'PASS' if in_rib <= 2 and not refused else 'FAIL'}")


if __name__ == "__main__":
    main()
