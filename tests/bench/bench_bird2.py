"""bird2 (or frr) adapter benchmark: a speaker driven by its adapter, a BIRD receiver.

    sudo .venv/bin/python -m tests.bench.bench_bird2 [--speaker bird|frr] [--storm 10000]

Reports (issue 4 targets in brackets):
1. storm: ``--storm`` distinct blackhole /32s in one batch: time until all are in the
   receiver's RIB, and until all are gone after one withdraw batch [<= 5 s each];
2. recovery: the speaker restarts; from its sessions being up to all routes back in the
   receiver's RIB (read back, re-announce what is missing) [<= 5 s];
3. time-to-visible of ``--singles`` rules announced one at a time (one batch each, the
   earlier ones staying announced): p50 / p99 from the call to the route in the
   receiver's RIB [p99 <= 250 ms].

The receiver is polled over its control socket (``show route for P`` / ``show route
count``) every 2 ms, so the figures include at most that much polling delay.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import re
import statistics
import time
from pathlib import Path

from adapters.base import AdapterConfig, Registry, RuleRef
from adapters.bird2 import control
from labs.bird import BirdNode
from labs.peers import Speaker
from labs.topology import BirdSpeaker, FrrSpeaker, running
from policies.intents import build_intent

POLL_S = 0.002


SPEAKERS: dict[str, type[Speaker]] = {"bird": BirdSpeaker, "frr": FrrSpeaker}


async def routes_in(socket: Path) -> int:
    reply = await control.command(socket, "show route table master4 count")
    m = re.search(r"(\d+) of \d+ routes", reply.text)
    if m is None:
        raise RuntimeError(f"unexpected answer to show route count: {reply.text!r}")
    return int(m.group(1))


async def wait_count(socket: Path, want: int, limit_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        if await routes_in(socket) == want:
            return time.monotonic() - start
        await asyncio.sleep(POLL_S)
    raise TimeoutError(f"receiver did not reach {want} routes in {limit_s}s")


async def visible(socket: Path, prefix: str, limit_s: float = 5.0) -> None:
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        reply = await control.command(socket, f"show route for {prefix} table master4")
        if any(line.startswith(prefix) for line in reply.lines):
            return
        await asyncio.sleep(POLL_S)
    raise TimeoutError(f"{prefix} not visible within {limit_s}s")


def hosts(n: int, base: str) -> list[str]:
    net = ipaddress.IPv4Network(base)
    return [f"{net.network_address + i}/32" for i in range(n)]


async def bench(storm: int, singles: int, kind: str) -> None:
    with running(SPEAKERS[kind](), receivers=("bird",)) as topo:
        speaker = topo.speaker
        rx = topo.receivers["bird"].node
        assert isinstance(rx, BirdNode)
        adapter = Registry(access=topo.access).create(AdapterConfig(**speaker.adapter_config()))
        rsock = rx.socket

        refs = [
            RuleRef(i, build_intent({"kind": "blackhole", "prefix": p}))
            for i, p in enumerate(hosts(storm, "198.18.0.0/15"))
        ]
        t0 = time.monotonic()
        outs = await adapter.announce(refs)
        t_call = time.monotonic() - t0
        assert all(o.ok for o in outs), next(o.error for o in outs if not o.ok)
        t_all = t_call + await wait_count(rsock, storm, 60)
        print(
            f"storm announce: {storm} /32s, adapter call {t_call:.2f}s, "
            f"all in receiver RIB after {t_all:.2f}s (target <= 5 s)"
        )
        # recovery: restart the speaker; once its sessions are up, do what the reconciler
        # does (read back, re-announce what is missing) and wait for every route
        await asyncio.to_thread(speaker.restart)
        await asyncio.to_thread(speaker.wait_established, None, 60)
        t0 = time.monotonic()
        held = await adapter.active()
        missing = [r for r in refs if held is None or r.key not in held]
        if missing:
            outs = await adapter.announce(missing)
            assert all(o.ok for o in outs)
        t_back = await wait_count(rsock, storm, 60) + (time.monotonic() - t0)
        print(
            f"recovery: speaker restarted, {len(missing)} re-announced after read-back; all "
            f"{storm} back in receiver RIB {t_back:.2f}s after the sessions were up "
            "(target <= 5 s)"
        )
        t0 = time.monotonic()
        outs = await adapter.withdraw(refs)
        t_call = time.monotonic() - t0
        assert all(o.ok for o in outs)
        t_gone = t_call + await wait_count(rsock, 0, 60)
        print(
            f"storm withdraw: adapter call {t_call:.2f}s, "
            f"all gone from receiver RIB after {t_gone:.2f}s (target <= 5 s)"
        )

        lat: list[float] = []
        single = [
            RuleRef(100000 + i, build_intent({"kind": "blackhole", "prefix": p}))
            for i, p in enumerate(
                hosts(singles, "203.0.113.0/24" if singles <= 256 else "198.51.100.0/22")
            )
        ]
        for ref in single:
            t0 = time.monotonic()
            [out] = await adapter.announce([ref])
            assert out.ok, out.error
            await visible(rsock, str(ref.intent.target))
            lat.append((time.monotonic() - t0) * 1000)
        lat.sort()
        p50 = statistics.median(lat)
        p99 = lat[max(0, int(len(lat) * 0.99) - 1)]
        print(
            f"time-to-visible over {singles} single rules: p50 {p50:.1f} ms, "
            f"p99 {p99:.1f} ms, max {lat[-1]:.1f} ms (target p99 <= 250 ms)"
        )
        await adapter.withdraw(single)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--storm", type=int, default=10000)
    parser.add_argument("--singles", type=int, default=200)
    parser.add_argument("--speaker", choices=sorted(SPEAKERS), default="bird")
    args = parser.parse_args()
    asyncio.run(bench(args.storm, args.singles, args.speaker))


if __name__ == "__main__":
    main()
