"""Recovery through the running service after a speaker is killed and comes back.

    sudo .venv/bin/python -m tests.bench.bench_recovery --speaker S --rules N

(S one of gobgp, exabgp, bird, frr; the issue's headline is ``--rules 10000``.)

Brings up the lab (the chosen speaker peered with a BIRD receiver) and the real service
(``sluice serve``) with an adapter for that speaker, with N blackhole rules: stored first
by the service in-process on the same data directory (1,000 per transaction, announced and
confirmed, then that service stops; creating 10,000 rules one POST at a time takes many
minutes on a loaded machine and is not what is measured), or with ``--via-api`` POSTed to
the running service. It waits until all N are in the receiver's RIB and every rule is
``active`` as the API shows them.
Then the speaker's daemons are killed with SIGKILL (a crash: no NOTIFICATION is sent,
the kernel closes the TCP sessions) and nothing is done to the service by hand:

1. **dead speaker**: from the kill until the API shows it: ``dead_shown`` when the
   adapter's status is no longer ``connected``, ``rules_suspended`` when no rule of it is
   ``active`` any more (all N ``suspended``: kept, not on the wire). Issue target: 2 s.
2. **recovery**: the daemon is started again with its configuration and an EMPTY RIB (a
   crash loses what the speaker held); ``all_back`` is the time from its BGP session with
   the receiver being Established again until all N routes are back in the receiver's
   RIB; ``all_active`` until the API shows all N ``active`` again. Issue target: all
   routes back within 5 s for 10,000 rules.

Empty RIB per speaker: gobgpd and ExaBGP keep routes in memory only; the lab's FRR writes
a fresh bgpd.conf at start (the adapter's ``ip route``/route-map/``network`` lines are
gone). BIRD re-reads its config at start, and that includes the adapter's include file,
so a plain restart would bring the routes back without Sluice. With ``--bird-state lost``
(the default) the include file is emptied while BIRD is down (a rebuilt speaker, or a
config-management run that rewrote its files): only Sluice's reconciliation can put the
routes back, which is what is measured. ``--bird-state kept`` restarts BIRD with its file
and measures when Sluice confirms the rules (``all_active``) after BIRD restored them.

The last line is a one-line summary (``RESULT ...``) with the load average beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from labs.bird import BirdNode
from labs.netns import wait_for
from labs.peers import crash
from labs.topology import Topology, running
from orchestrator.service import RuleRequest, Service
from orchestrator.settings import Settings
from policies.errors import SluiceError
from policies.intents import build_intent
from policies.schema import load_policy
from tests.bench.bench_mitigate import SPEAKERS
from tests.integration.test_crash import Server

STORM = ipaddress.IPv4Network("198.18.0.0/15")  # RFC 2544 benchmarking range
NEXT_HOP = "192.0.2.3"  # a free address on the speaker-receiver link (an RTBH next hop)
DEAD_TARGET_S = 2.0
BACK_TARGET_S = 5.0


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


def seed(tmp: Path, pdir: Path, hosts: list[str], dirs: tuple[Path, ...]) -> None:
    """Store (and announce) the rules with the service in-process, then stop it."""

    async def go() -> None:
        settings = Settings(data_dir=tmp / "data", policy_dir=pdir, adapter_dirs=(tmp, *dirs))
        svc = Service(settings, policy=load_policy(pdir))
        await svc.start()
        try:
            reqs = [
                RuleRequest(
                    build_intent({"kind": "blackhole", "prefix": f"{h}/32", "next_hop": NEXT_HOP}),
                    "edge",
                    ttl=0,
                    reason="bench",
                )
                for h in hosts
            ]
            for i in range(0, len(reqs), 1000):
                done = svc.create_rules_sync(reqs[i : i + 1000])
                bad = [r for r in done if isinstance(r, SluiceError)]
                assert not bad, bad[:3]
            await svc.dispatcher.drain(600)
        finally:
            await svc.stop()

    asyncio.run(go())


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Watch:
    """What the API says about the adapter ``edge`` and its rules."""

    def __init__(self, srv: Server) -> None:
        self.srv = srv

    def status(self) -> str:
        adapters = self.srv.api("GET", "/mitigation/adapters").json()["adapters"]
        return str(next(a for a in adapters if a["name"] == "edge")["status"])

    def count(self, state: str) -> int:
        r = self.srv.api("GET", "/mitigation/rules", params={"state": state, "limit": 1})
        assert r.status_code == 200, r.text
        return int(r.json()["total"])


def timed(pred: Any, since: float, timeout: float, what: str) -> float | None:
    """Seconds from ``since`` until ``pred()``; None (and a line saying so) on timeout."""
    try:
        wait_for(pred, timeout=timeout, interval=0.05, what=what)
    except Exception as exc:  # a figure to report, not a reason to stop
        print(f"  NOT within {timeout:.0f} s: {exc}")
        return None
    return time.monotonic() - since


def fmt(v: float | None) -> str:
    return "timeout" if v is None else f"{v:.2f}"


def run(topo: Topology, args: argparse.Namespace, tmp: Path) -> str:
    bird = topo.receivers["bird"]
    assert isinstance(bird.node, BirdNode)
    receiver: BirdNode = bird.node
    hosts = [str(h) for h in list(STORM.hosts())[: args.rules]]
    n = len(hosts)
    pdir = tmp / "policy"
    write_policy(pdir, topo.speaker.adapter_config("edge"))
    os.environ["SLUICE_RATE_LIMIT_PER_MINUTE"] = "10000000"  # the bench is not the limiter
    os.environ["SLUICE_API_WAIT_SECONDS"] = "0"  # answer 201 pending; the RIB is watched
    t0 = time.monotonic()
    if not args.via_api:
        seed(tmp, pdir, hosts, topo.access.allowed_dirs)
    srv = Server(tmp, pdir, topo.access.allowed_dirs)  # the lab's sockets
    srv.ready_timeout = 600  # start-up reconciles the N stored rules
    srv.start()
    api = Watch(srv)

    def post(host: str) -> None:
        body = {
            "target_ip": host,
            "intent_type": "blackhole",
            "adapter_id": "edge",
            "next_hop": NEXT_HOP,
            "reason": "bench",
        }
        r = srv.api("POST", "/mitigation/rules", json=body)
        assert r.status_code == 201, r.text

    def in_rib() -> int:
        return receiver.count("master4")  # the receiver holds the speaker's routes only

    try:
        if args.via_api:
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(post, hosts))
        wait_for(lambda: in_rib() == n, timeout=600, interval=0.2,
                 what=f"all {n} routes in the receiver")  # fmt: skip
        wait_for(lambda: api.count("active") == n, timeout=300, interval=0.2,
                 what=f"all {n} rules active")  # fmt: skip
        wait_for(lambda: api.status() == "connected", timeout=60, interval=0.2,
                 what="the adapter connected")  # fmt: skip
        how = "through the API" if args.via_api else "in-process, then served"
        print(f"{args.speaker}: {n} rules created {how}, active and in the receiver in "
              f"{time.monotonic() - t0:.1f} s (load {load()})")  # fmt: skip

        # 1. the speaker dies
        node: Any = topo.speaker
        t_kill = time.monotonic()
        print(f"{args.speaker}: killing the speaker at {time.strftime('%H:%M:%S')}")
        crash(node)
        dead = timed(lambda: api.status() != "connected", t_kill, 60, "status not connected")
        suspended = timed(lambda: api.count("active") == 0, t_kill, 60, "no rule active")
        n_susp = api.count("suspended")
        print(f"{args.speaker}: dead speaker shown {fmt(dead)} s after the kill; no rule "
              f"active {fmt(suspended)} s after it ({n_susp} suspended)")  # fmt: skip
        wait_for(lambda: in_rib() == 0, timeout=300, interval=0.2,
                 what="the receiver to drop the dead speaker's routes",
                 diagnose=lambda: receiver.show("show protocols all"))  # fmt: skip
        if args.speaker == "bird" and args.bird_state == "lost":
            include = Path(topo.speaker.adapter_config("edge")["config"]["include_file"])
            include.write_text("")  # the speaker lost what Sluice had given it

        # 2. it comes back with an empty RIB
        t_start = time.monotonic()
        node.start()
        bird.wait_established(timeout=120)
        t_up = time.monotonic()
        back = timed(lambda: in_rib() == n, t_up, 300, f"all {n} routes back")
        active = timed(lambda: api.count("active") == n, t_up, 300, f"all {n} rules active")
        states = {s: api.count(s) for s in ("active", "suspended", "pending", "failed")}
        print(f"{args.speaker}: session up {t_up - t_start:.2f} s after the start; all "
              f"routes back {fmt(back)} s and all rules active {fmt(active)} s after the "
              f"session was up; rule states now {states}")  # fmt: skip
        ok = (
            dead is not None
            and suspended is not None
            and back is not None
            and max(dead, suspended) <= DEAD_TARGET_S
            and back <= BACK_TARGET_S
        )
        extra = f" bird_state={args.bird_state}" if args.speaker == "bird" else ""
        return (
            f"RESULT speaker={args.speaker} rules={n}{extra} dead_shown_s={fmt(dead)} "
            f"rules_suspended_s={fmt(suspended)} (target <= {DEAD_TARGET_S:g}) "
            f"all_routes_back_s={fmt(back)} (target <= {BACK_TARGET_S:g}) "
            f"all_rules_active_s={fmt(active)} session_up_after_start_s={t_up - t_start:.2f} "
            f"targets={'met' if ok else 'MISSED'} load={load()}"
        )
    finally:
        srv.stop()
        log = tmp / "serve.log"
        for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
            if "suspended" in line or "ERROR" in line or "Error" in line or "failed" in line:
                print(f"  serve.log: {line}")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--speaker", choices=sorted(SPEAKERS), default="gobgp")
    ap.add_argument("--rules", type=int, default=300)
    ap.add_argument("--bird-state", choices=("lost", "kept"), default="lost")
    ap.add_argument("--via-api", action="store_true", help="create the rules by POSTs")
    args = ap.parse_args()
    with (
        running(SPEAKERS[args.speaker](), receivers=("bird",)) as topo,
        tempfile.TemporaryDirectory() as tmp,
    ):
        line = run(topo, args, Path(tmp))
    print(line)


if __name__ == "__main__":
    main()
