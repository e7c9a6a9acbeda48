"""The node agent under a bounded flood: what it counts, what it costs, how fast it alerts.

Builds the lab of ``tests/integration/test_agent_lab.py`` (namespaces, a real ``sluice
serve``, the agent in the "host" namespace), then floods the watched interface from
``--senders`` processes (each capped in packets and seconds) and reports:

* packets the senders sent, the host's interface received, and the agent's kernel
  counters counted (the observation is in the kernel: the ratio should be 100 %);
* the agent process's CPU (% of one core) and peak RSS during the flood;
* time from the flood's start to the open incident in the service.

Needs root. ``python -m tests.bench.run agent -- --senders 4 --seconds 10``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from labs.netns import wait_for
from tests.integration.test_agent_lab import agent_rig


def rx_packets(rig: Any) -> int:
    out = rig.lab.run(rig.host, ["cat", f"/sys/class/net/{rig.host_if}/statistics/rx_packets"])
    return int(out.stdout.strip())


def counted(rig: Any) -> int:
    out = rig.lab.run(rig.host, ["nft", "-j", "list", "counter", "netdev", "sluice_obs", "c_all"])
    for item in json.loads(out.stdout)["nftables"]:
        if "counter" in item:
            return int(item["counter"]["packets"])
    raise AssertionError("no counter")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--count", type=int, default=2_000_000, help="cap per sender")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, agent_rig(Path(tmp)) as rig:
        proc = rig.start_agent(1)
        wait_for(
            lambda: bool(rig.api("GET", "/nodes")["nodes"]),
            timeout=60,
            what="the agent to register",
            diagnose=rig.agent_log,
        )
        wait_for(lambda: "observing" in rig.agent_log(), timeout=30, what="observation")
        agent = psutil.Process(proc.pid)
        time.sleep(2)
        idle0 = agent.cpu_times()
        time.sleep(5)
        idle1 = agent.cpu_times()
        idle_cpu = (idle1.user + idle1.system - idle0.user - idle0.system) / 5 * 100
        rx0, c0 = rx_packets(rig), counted(rig)
        cpu0 = agent.cpu_times()
        t0 = time.monotonic()
        floods = [
            subprocess.Popen(  # our own helper, fixed arguments, inside the attacker namespace
                [
                    "ip",
                    "netns",
                    "exec",
                    rig.attacker.netns,
                    sys.executable,
                    "-m",
                    "labs.traffic",
                    "flood",
                    "--dst",
                    "192.0.2.2",
                    "--dport",
                    str(5000 + i),
                    "--sport",
                    "53",
                    "--count",
                    str(a.count),
                    "--seconds",
                    str(a.seconds),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(a.senders)
        ]
        detect = None
        rss = 0
        while any(f.poll() is None for f in floods):
            rss = max(rss, agent.memory_info().rss)
            if (
                detect is None
                and rig.api("GET", "/incidents", params={"status": "open"})["incidents"]
            ):
                detect = time.monotonic() - t0
            time.sleep(0.2)
        wall = time.monotonic() - t0
        cpu1 = agent.cpu_times()
        sent = [json.loads(f.communicate()[0]) for f in floods]
        time.sleep(1.5)
        rx1, c1 = rx_packets(rig), counted(rig)
        total = sum(s["sent"] for s in sent)
        busy = cpu1.user + cpu1.system - cpu0.user - cpu0.system
        got = rx1 - rx0
        print(f"senders: {a.senders}, {total} packets in {wall:.1f} s = {total / wall:,.0f} pps")
        print(f"host interface received {got:,} packets ({got / wall:,.0f} pps)")
        print(f"agent's kernel counter: {c1 - c0:,} ({100 * (c1 - c0) / max(got, 1):.2f} %)")
        print(f"agent CPU: {100 * busy / wall:.1f} % of one core (idle: {idle_cpu:.1f} %)")
        print(f"agent peak RSS: {rss / 2**20:.1f} MiB")
        print(f"flood start -> open incident: {detect:.2f} s" if detect else "no incident seen")


if __name__ == "__main__":
    main()
