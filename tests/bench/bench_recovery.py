"""Recovery through the running service after a speaker dies and comes back.

    sudo .venv/bin/python -m tests.bench.bench_recovery [--speaker gobgp] [--rules 300]

Brings up the lab (the chosen speaker peered with a BIRD receiver) and the real service
(``sluice serve``) with an adapter for that speaker; creates N blackhole rules through the
REST API and waits until all N are in BIRD's RIB. Then the speaker daemon is stopped
(SIGTERM, SIGKILL after a grace period) and nothing is done to the service by hand:

1. **dead speaker**: time from the stop until the API shows it (the adapter's status is no
   longer ``connected``/ok, or no rule of it is ``active`` any more), up to 60 s;
2. **recovery**: the daemon is started again with its old configuration and an empty
   RIB; time from its BGP session with BIRD being Established again until all N routes
   are back in BIRD's RIB (issue target: at most 5 s for 10,000 rules), up to 180 s.

The service must put the routes back on its own (reconciliation); the benchmark only
watches the API and BIRD.
"""

from __future__ import annotations

import argparse
import ipaddress
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from labs.netns import wait_for
from labs.topology import running
from tests.bench.bench_mitigate import SPEAKERS
from tests.integration.test_crash import Server

STORM = ipaddress.IPv4Network("198.18.0.0/15")  # RFC 2544 benchmarking range


def write_policy(pdir: Path, cfg: dict[str, Any]) -> None:
    pdir.mkdir()
    (pdir / "settings.yaml").write_text(
        "settings:\n  cooldown_seconds: 0\n  default_ttl: 0\n"
        "guardrails:\n  max_new_rules_per_minute: 1000000\n  max_active_rules: 100000\n"
    )
    lines = [f"adapters:\n  - name: edge\n    adapter_type: {cfg['adapter_type']}\n"]
    if cfg.get("endpoint"):
        lines.append(f"    endpoint: {cfg['endpoint']}\n")
    if cfg.get("config"):
        lines.append("    config:\n")
        lines += [f"      {k}: {v}\n" for k, v in cfg["config"].items()]
    (pdir / "adapters.yaml").write_text("".join(lines))


def shows_dead(srv: Server) -> bool:
    adapters = srv.api("GET", "/mitigation/adapters").json()["adapters"]
    edge = next(a for a in adapters if a["name"] == "edge")
    health = edge.get("health") or {}
    if edge["status"] != "connected" or health.get("ok") is False:
        return True
    rules = srv.api("GET", "/mitigation/rules", params={"limit": 1}).json()["rules"]
    return bool(rules) and rules[0]["state"] != "active"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speaker", choices=sorted(SPEAKERS), default="gobgp")
    ap.add_argument("--rules", type=int, default=300)
    args = ap.parse_args()
    hosts = [str(h) for h in list(STORM.hosts())[: args.rules]]
    with (
        running(SPEAKERS[args.speaker](), receivers=("bird",)) as topo,
        tempfile.TemporaryDirectory() as tmp,
    ):
        bird = topo.receivers["bird"]
        pdir = Path(tmp) / "policy"
        write_policy(pdir, topo.speaker.adapter_config("edge"))
        srv = Server(Path(tmp), pdir, topo.access.allowed_dirs)  # the lab's sockets
        srv.start()

        def post(host: str) -> None:
            r = srv.api(
                "POST",
                "/mitigation/rules",
                json={
                    "target_ip": host,
                    "intent_type": "blackhole",
                    "adapter_id": "edge",
                    "next_hop": "192.0.2.3",
                    "reason": "bench",
                },
            )
            assert r.status_code == 201, r.text

        def in_bird() -> int:
            return len({p for p in bird.prefixes(4) if ipaddress.IPv4Network(p).subnet_of(STORM)})

        try:
            t0 = time.monotonic()
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(post, hosts))
            wait_for(lambda: in_bird() == len(hosts), timeout=300, interval=0.2,
                     what=f"all {len(hosts)} routes in BIRD")  # fmt: skip
            print(f"{args.speaker}: {len(hosts)} rules created through the API and in BIRD "
                  f"in {time.monotonic() - t0:.1f} s")  # fmt: skip

            # the baseline: the API shows the speaker healthy and its rules active
            wait_for(lambda: not shows_dead(srv), timeout=60, interval=0.2,
                     what="the API to show the speaker connected")  # fmt: skip

            # 1. the speaker dies: how long until the API says so
            t_stop = time.monotonic()
            topo.speaker.stop()
            try:
                wait_for(lambda: shows_dead(srv), timeout=60, interval=0.1,
                         what="the API to show the dead speaker")  # fmt: skip
                print(f"{args.speaker}: dead speaker shown by the API "
                      f"{time.monotonic() - t_stop:.2f} s after the stop")  # fmt: skip
            except Exception as exc:  # a figure to report, not a reason to stop
                print(f"{args.speaker}: dead speaker NOT shown by the API: {exc}")
            wait_for(lambda: in_bird() == 0, timeout=60, interval=0.2,
                     what="BIRD to drop the routes of the dead speaker")  # fmt: skip

            # 2. it comes back: how long from its session being up until all routes are back
            t_start = time.monotonic()
            topo.speaker.restart()
            topo.wait_established(timeout=60)
            t_up = time.monotonic()
            wait_for(lambda: in_bird() == len(hosts), timeout=180, interval=0.1,
                     what=f"all {len(hosts)} routes back in BIRD",
                     diagnose=lambda: f"{in_bird()} of {len(hosts)} in BIRD")  # fmt: skip
            t_all = time.monotonic()
            print(
                f"{args.speaker}: {len(hosts)} rules: session up {t_up - t_start:.2f} s after "
                f"the start; all routes back in BIRD {t_all - t_up:.2f} s after the session "
                "was up (target <= 5 s)"
            )
            states = srv.api("GET", "/mitigation/rules", params={"limit": 10000}).json()["rules"]
            print(f"{args.speaker}: rule states now: "
                  f"{sorted({r['state'] for r in states})}")  # fmt: skip
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
