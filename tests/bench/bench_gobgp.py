"""Speaker benchmark: GoBGP adapter -> gobgpd -> a BIRD receiver, in lab namespaces (root).

    .venv/bin/python -m tests.bench.bench_gobgp [--visible 200] [--storm 10000] [--runs 3]

Reports (issue 4 targets for GoBGP in brackets; bench_exabgp prints ExaBGP's):
1. time-to-visible: one blackhole per call, from ``announce()`` until the prefix is in
   BIRD's RIB, p50/p99 over ``--visible`` rules [p99 <= 100 ms];
2. storm: ``--storm`` distinct /32s in one call, time until all are in BIRD's RIB and,
   after one ``withdraw()`` call, until all are gone [<= 2 s each]; ``--runs`` times (the
   first run is cold), each run printed and the median;
3. recovery: the speaker restarts; from its sessions being up again, time until a
   re-announce of all ``--storm`` routes is complete in BIRD [<= 5 s].

BIRD is polled through its control socket (one persistent connection, no birdc
process per poll). Storm prefixes come from 198.18.0.0/15 (RFC 2544's benchmarking
range): the documentation ranges hold fewer than 10,000 /32s.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import re
import socket
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from adapters.base import Adapter, AdapterConfig, Registry, RuleRef
from labs.bird import BirdNode
from labs.netns import wait_for
from labs.peers import Speaker
from labs.topology import Topology, running
from policies.intents import build_intent

_FINAL = re.compile(rb"^(\d{4}) ", re.MULTILINE)
_COUNT = re.compile(rb"(\d+) of \d+ routes")


class BirdSocket:
    """BIRD's control protocol on one connection: send a command, read to its final line."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.buf = b""
        self._reply()  # 0001 BIRD x.y ready.

    def _reply(self) -> bytes:
        while True:
            # a reply ends with a line "dddd text" (code and a space; others use "-")
            last = self.buf.rstrip(b"\n").rsplit(b"\n", 1)[-1]
            if self.buf.endswith(b"\n") and _FINAL.match(last):
                out, self.buf = self.buf, b""
                return out
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("BIRD closed its control socket")
            self.buf += chunk

    def command(self, text: str) -> bytes:
        self.sock.sendall(text.encode() + b"\n")
        return self._reply()

    def has(self, prefix: str) -> bool:
        return b"8001" not in self.command(f"show route {prefix}")

    def count(self, table: str = "master4") -> int:
        m = _COUNT.search(self.command(f"show route table {table} count"))
        return int(m.group(1)) if m else 0

    def close(self) -> None:
        self.sock.close()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(len(ordered) * p / 100 + 0.5) - 1)]


def poll(pred: Callable[[], bool], timeout: float, what: str, every: float = 0.01) -> float:
    """Seconds until ``pred()`` holds, asking every ``every`` s (sleeping leaves the CPU to
    the daemons being measured); raises after ``timeout``."""
    start = time.perf_counter()
    while not pred():
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(every)
    return time.perf_counter() - start


def refs(prefixes: list[str]) -> list[RuleRef]:
    return [
        RuleRef(n, build_intent({"kind": "blackhole", "prefix": p}))
        for n, p in enumerate(prefixes, 1)
    ]


def storm_prefixes(n: int) -> list[str]:
    base = int(ipaddress.IPv4Address("198.18.0.0"))
    if n > 1 << 17:
        raise ValueError("at most 131072 /32s fit in 198.18.0.0/15")
    return [f"{ipaddress.IPv4Address(base + i)}/32" for i in range(n)]


def visible_prefixes(n: int) -> list[str]:
    pool = [f"{net}.{i}/32" for net in ("203.0.113", "198.51.100") for i in range(1, 255)]
    if n > len(pool):
        raise ValueError(f"at most {len(pool)} time-to-visible rules")
    return pool[:n]


def check(rows: list[Any]) -> None:
    bad = [o for o in rows if not o.ok]
    if bad:
        raise RuntimeError(f"{len(bad)} rules failed, first: {bad[0].error}")


async def _call(adapter: Adapter, op: str, rules: list[RuleRef]) -> None:
    check(await getattr(adapter, op)(rules))


def bench(
    speaker: Speaker,
    label: str,
    visible: int,
    storm: int,
    targets: Mapping[str, float],
    *,
    runs: int = 3,
) -> None:
    with running(speaker, receivers=("bird",)) as topo:
        print(f"{label}: lab up (speaker + BIRD receiver), sessions established")
        asyncio.run(_bench(topo, label, visible, storm, targets, runs=runs))


async def _bench(
    topo: Topology,
    label: str,
    visible: int,
    storm: int,
    targets: Mapping[str, float],
    *,
    runs: int,
) -> None:
    node = topo.receivers["bird"].node
    assert isinstance(node, BirdNode)
    bird = BirdSocket(node.socket)
    adapter = Registry(access=topo.access).create(
        AdapterConfig(**topo.speaker.adapter_config("bench"))
    )
    try:
        # 1. time-to-visible
        rules = refs(visible_prefixes(visible))
        times: list[float] = []
        for ref in rules:
            start = time.perf_counter()
            await _call(adapter, "announce", [ref])
            prefix = str(ref.intent.target)
            poll(lambda p=prefix: bird.has(p), 10, f"{prefix} in BIRD", 0.001)  # type: ignore[misc]
            times.append((time.perf_counter() - start) * 1000)
        await _call(adapter, "withdraw", rules)
        poll(lambda: bird.count() == 0, 30, "BIRD empty")
        p50, p99 = statistics.median(times), pct(times, 99)
        print(
            f"{label} time-to-visible over {visible} rules: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
            f"max {max(times):.1f} ms [target p99 <= {targets['visible_p99_ms']:.0f} ms]"
        )

        # 2. storm (the first run is cold: the daemons' tables grow for the first time)
        rules = refs(storm_prefixes(storm))
        ups: list[float] = []
        downs: list[float] = []
        for run in range(1, runs + 1):
            start = time.perf_counter()
            await _call(adapter, "announce", rules)
            acked = time.perf_counter() - start
            poll(lambda: bird.count() >= storm, 120, f"{storm} routes in BIRD")
            ups.append(time.perf_counter() - start)
            start = time.perf_counter()
            await _call(adapter, "withdraw", rules)
            wacked = time.perf_counter() - start
            poll(lambda: bird.count() == 0, 120, "BIRD empty")
            downs.append(time.perf_counter() - start)
            print(
                f"{label} storm of {storm} /32s, run {run}: all in BIRD after {ups[-1]:.2f} s "
                f"(adapter call {acked:.2f} s), all gone {downs[-1]:.2f} s after withdraw "
                f"(adapter call {wacked:.2f} s) [target <= {targets['storm_s']:.0f} s]"
            )
        print(
            f"{label} storm median of {runs}: in {statistics.median(ups):.2f} s, "
            f"out {statistics.median(downs):.2f} s"
        )

        # 3. recovery after a speaker restart
        await _call(adapter, "announce", rules)
        poll(lambda: bird.count() >= storm, 120, f"{storm} routes in BIRD")
        await adapter.close()
        restart_start = time.perf_counter()
        topo.speaker.restart()
        topo.speaker.wait_established(None, 60)
        session_up = time.perf_counter()
        wait_for(lambda: node.count("master4") == 0, timeout=30, what="BIRD flushed the session")
        flushed = time.perf_counter()
        adapter = Registry(access=topo.access).create(
            AdapterConfig(**topo.speaker.adapter_config("bench"))
        )
        assert await adapter.active() == frozenset(), "read-back after restart is not empty"
        await _call(adapter, "announce", rules)
        poll(lambda: bird.count() >= storm, 120, f"{storm} routes back in BIRD")
        done = time.perf_counter()
        print(
            f"{label} recovery: speaker restart to sessions up {session_up - restart_start:.2f} s; "
            f"all {storm} back in BIRD {done - session_up:.2f} s after sessions up "
            f"({done - flushed:.2f} s after re-announce began) "
            f"[target <= {targets['recovery_s']:.0f} s after session up]"
        )
        await _call(adapter, "withdraw", rules)
        poll(lambda: bird.count() == 0, 120, "BIRD empty")
    finally:
        await adapter.close()
        bird.close()


def main() -> None:
    from labs.gobgp import GoBgpSpeaker

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--visible", type=int, default=200)
    ap.add_argument("--storm", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3, help="storm repetitions")
    args = ap.parse_args()
    targets = {"visible_p99_ms": 100, "storm_s": 2, "recovery_s": 5}
    bench(GoBgpSpeaker(), "gobgp", args.visible, args.storm, targets, runs=args.runs)


if __name__ == "__main__":
    main()
