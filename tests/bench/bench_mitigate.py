"""Time to mitigate through the whole service: API request -> route in a peer's RIB.

    sudo .venv/bin/python -m tests.bench.bench_mitigate [--speaker gobgp] [--rules 200]

Brings up the lab (the chosen speaker peered with a BIRD receiver), runs the real service
(``sluice serve``) with an adapter for that speaker, then for each of N rules: sends
``POST /api/v1/mitigation/rules`` and polls BIRD until the /32 is in its RIB. Reports p50
and p99 of the time from sending the request to the route being visible (issue targets:
p99 <= 100 ms for GoBGP, <= 250 ms for the others), and the same for withdrawal.
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import tempfile
import time
from pathlib import Path

from labs.exabgp import ExaBgpSpeaker
from labs.gobgp import GoBgpSpeaker
from labs.peers import Speaker
from labs.topology import BirdSpeaker, FrrSpeaker, running
from tests.integration.test_crash import Server

SPEAKERS: dict[str, type[Speaker]] = {
    "gobgp": GoBgpSpeaker,
    "exabgp": ExaBgpSpeaker,
    "bird": BirdSpeaker,
    "frr": FrrSpeaker,
}


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speaker", choices=sorted(SPEAKERS), default="gobgp")
    ap.add_argument("--rules", type=int, default=200)
    args = ap.parse_args()
    hosts = [str(h) for h in list(ipaddress.IPv4Network("198.18.0.0/23").hosts())[: args.rules]]
    with (
        running(SPEAKERS[args.speaker](), receivers=("bird",)) as topo,
        tempfile.TemporaryDirectory() as tmp,
    ):
        bird = topo.receivers["bird"]
        cfg = topo.speaker.adapter_config("edge")
        pdir = Path(tmp) / "policy"
        pdir.mkdir()
        (pdir / "settings.yaml").write_text(
            "settings:\n  cooldown_seconds: 0\n"
            "guardrails:\n  max_new_rules_per_minute: 100000\n  max_active_rules: 100000\n"
        )
        lines = [f"adapters:\n  - name: edge\n    adapter_type: {cfg['adapter_type']}\n"]
        if cfg.get("endpoint"):
            lines.append(f"    endpoint: {cfg['endpoint']}\n")
        if cfg.get("config"):
            lines.append("    config:\n")
            lines += [f"      {k}: {v}\n" for k, v in cfg["config"].items()]
        (pdir / "adapters.yaml").write_text("".join(lines))
        srv = Server(Path(tmp), pdir)
        srv.start()
        try:
            up: list[float] = []
            ids: list[int] = []
            for h in hosts:
                t0 = time.perf_counter()
                r = srv.api(
                    "POST",
                    "/mitigation/rules",
                    json={
                        "target_ip": h,
                        "intent_type": "blackhole",
                        "adapter_id": "edge",
                        "ttl": 0,
                        "next_hop": "192.0.2.3",
                    },
                )
                assert r.status_code == 201, r.text
                ids.append(r.json()["rule"]["id"])
                while f"{h}/32" not in bird.prefixes(4):
                    if time.perf_counter() - t0 > 10:
                        raise AssertionError(f"{h} not in BIRD after 10 s")
                up.append(time.perf_counter() - t0)
            down: list[float] = []
            for h, rid in zip(hosts, ids, strict=True):
                t0 = time.perf_counter()
                r = srv.api("DELETE", f"/mitigation/rules/{rid}")
                assert r.status_code == 200, r.text
                while f"{h}/32" in bird.prefixes(4):
                    if time.perf_counter() - t0 > 10:
                        raise AssertionError(f"{h} still in BIRD after 10 s")
                down.append(time.perf_counter() - t0)
        finally:
            srv.stop()
    for label, xs in (("announce", up), ("withdraw", down)):
        print(
            f"{args.speaker}: API request -> BIRD RIB, {label} of {len(xs)} rules: "
            f"p50 {statistics.median(xs) * 1000:.1f} ms, p99 {pct(xs, 99) * 1000:.1f} ms, "
            f"max {max(xs) * 1000:.1f} ms (includes one birdc poll, ~5 ms)"
        )


if __name__ == "__main__":
    main()
