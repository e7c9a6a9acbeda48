"""Failover against a real receiver's RIB: two `sluice serve` on one PostgreSQL, gobgpd, BIRD.

gobgpd (the speaker the ``edge`` adapter drives) peers with a BIRD receiver in network
namespaces; two real service processes share one throwaway PostgreSQL. While rules are
being created through the instance that does NOT drive gobgpd, the one that drives it is
killed with ``kill -9``. The other instance must take the adapter's lease over within
10 s, and at the end BIRD's RIB equals the store: every active rule's route is there once,
nothing else is (rules withdrawn after the kill are gone, none lost, none duplicated).

:func:`failover` is shared with the benchmark (tests/bench/bench_failover.py), which
reports the times from the kill to the new lease holder, to the new driver's first
successful announce, and to BIRD's RIB equal to the store.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, select

from labs.bird import BirdNode
from labs.gobgp import GoBgpSpeaker
from labs.netns import wait_for
from labs.topology import Receiver, running
from orchestrator.store.models import leases, rules
from tests.integration.conftest import BIRD_BINARIES, require_lab
from tests.integration.test_cluster_serve import ClusterServer
from tests.integration.test_crash import Server

pytestmark = [pytest.mark.root, pytest.mark.lab]

STORM = ipaddress.IPv4Network("198.18.0.0/15")  # RFC 2544 benchmarking range
NEXT_HOP = "192.0.2.3"  # on the speaker's link to BIRD


@dataclass
class Failover:
    rules: int  # rules created (201) through the API
    withdrawn: int  # of them withdrawn after the kill
    to_new_holder: float  # kill -> another instance holds the adapter's lease
    to_first_announce: float  # kill -> the store's first announce after the takeover
    to_rib_equal: float  # kill -> BIRD's RIB equals the store's active rules
    lost: set[str]  # active in the store, not in BIRD
    extra: set[str]  # in BIRD, not active in the store
    duplicated: dict[str, int]  # prefixes BIRD holds more than one path for
    twice: dict[str, int]  # targets with more than one live rule in the store


def _holder(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(
            conn.execute(
                select(leases.c.holder).where(leases.c.name.startswith("adapter:"))
            ).scalar_one()
        )


def _active(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {
            str(t) for (t,) in conn.execute(select(rules.c.target).where(rules.c.state == "active"))
        }


def _net(target: str) -> str:
    return ipaddress.ip_network(target).with_prefixlen  # stored as given: 198.18.0.1[/32]


def _unsettled(engine: Engine) -> int:
    with engine.connect() as conn:
        return len(
            conn.execute(
                select(rules.c.id).where(rules.c.state.in_(["pending", "withdrawing", "failed"]))
            ).all()
        )


def _rib(bird: Receiver) -> Counter[str]:
    """Paths per storm prefix in BIRD's RIB (``show route`` lists each path)."""
    out: Counter[str] = Counter()
    assert isinstance(bird.node, BirdNode)
    for r in bird.node.routes(4):
        if ipaddress.IPv4Network(r.network).subnet_of(STORM):
            out[r.network] += 1
    return out


def _post(srv: Server, host: str, *, may_die: bool = False) -> int | None:
    """Create a rule; its id, or None when the instance was killed under the request."""
    body = {
        "target_ip": host,
        "intent_type": "blackhole",
        "adapter_id": "edge",
        "next_hop": NEXT_HOP,
        "ttl": 0,
        "reason": "failover",
    }
    try:
        r = srv.api("POST", "/mitigation/rules", json=body)
    except Exception:
        if may_die:  # the killed instance: the store says whether it was made
            return None
        raise
    assert r.status_code == 201, r.text
    return int(r.json()["rule"]["id"])


def failover(tmp: Path, postgres_url: str, n_rules: int, withdraw_every: int = 5) -> Failover:
    """The scenario: see the module's docstring. ``n_rules`` rules in all, a third of them
    before the kill (through both instances), the rest after (through the survivor)."""
    with running(GoBgpSpeaker(), receivers=("bird",)) as topo:
        bird = topo.receivers["bird"]
        pdir = tmp / "policy"
        pdir.mkdir()
        (pdir / "settings.yaml").write_text(
            "settings:\n  cooldown_seconds: 0\n  default_ttl: 0\n"
            "guardrails:\n  max_new_rules_per_minute: 1000000\n  max_active_rules: 100000\n"
        )
        cfg = topo.speaker.adapter_config("edge")
        (pdir / "adapters.yaml").write_text(
            f"adapters:\n  - name: edge\n    adapter_type: {cfg['adapter_type']}\n"
            f"    endpoint: {cfg['endpoint']}\n"
        )
        servers = [
            ClusterServer(tmp / f"i{k}", pdir, postgres_url, topo.access.allowed_dirs)
            for k in range(2)
        ]
        engine = create_engine(postgres_url)
        try:
            for srv in servers:
                srv.start()
            wait_for(lambda: _holder(engine) != "", timeout=60, what="a driver for gobgpd")
            holder = _holder(engine)
            driver = next(s for s in servers if s.proc and f":{s.proc.pid}:" in holder)
            survivor = next(s for s in servers if s is not driver)
            hosts = [str(h) for h in list(STORM.hosts())[:n_rules]]
            before, after = hosts[: n_rules // 3], hosts[n_rules // 3 :]

            # rules being created through both instances when the driver dies: the kill
            # happens once a third of the storm's requests were answered (counted, not timed)
            done = threading.Semaphore(0)

            def post(srv: Server, host: str) -> int | None:
                try:
                    return _post(srv, host, may_die=srv is driver)
                finally:
                    done.release()

            def new_driver() -> tuple[float, float]:
                """When the lease names another holder, and when the store first records
                an announce after that (watched from the kill on: the requests in flight
                to the survivor may wait for their outcome longer). The survivor keeps
                storing rules, so there is always one to announce."""
                wait_for(
                    lambda: _holder(engine) not in ("", holder),
                    timeout=30,
                    interval=0.02,
                    what="the survivor takes the gobgp adapter's lease over",
                )
                holder_at = time.monotonic()
                was = len(_active(engine))
                wait_for(
                    lambda: len(_active(engine)) > was,
                    timeout=60,
                    interval=0.02,
                    what="the new driver announces",
                )
                return holder_at, time.monotonic()

            with ThreadPoolExecutor(8) as pool, ThreadPoolExecutor(1) as watch:
                futures = [
                    pool.submit(post, (driver, survivor)[i % 2], h) for i, h in enumerate(before)
                ]
                for _ in range(len(before) // 2):
                    assert done.acquire(timeout=60), "the storm stalled before the kill"
                driver.kill9()
                killed = time.monotonic()
                took_over = watch.submit(new_driver)
                probe = pool.submit(post, survivor, after[0]).result(timeout=60)
                assert probe is not None
                futures += [pool.submit(post, survivor, h) for h in after[1:]]
                holder_at, announce_at = took_over.result(timeout=120)
                to_holder, to_announce = holder_at - killed, announce_at - killed
                wait_for(
                    lambda: survivor.rule(probe)["state"] == "active",
                    timeout=30,
                    interval=0.05,
                    what="the new driver announces a rule made after the kill",
                )
                for f in futures:
                    f.result(timeout=120)  # the survivor answered every one of its own

            # withdraw every k-th rule the store holds (made before or after the kill)
            with engine.connect() as conn:
                ids = sorted(int(i) for (i,) in conn.execute(select(rules.c.id)))
            gone = ids[::withdraw_every]
            with ThreadPoolExecutor(8) as pool:
                codes = list(
                    pool.map(
                        lambda rid: survivor.api("DELETE", f"/mitigation/rules/{rid}").status_code,
                        gone,
                    )
                )
            assert set(codes) <= {200, 202}, Counter(codes)

            def equal() -> bool:
                return _unsettled(engine) == 0 and set(_rib(bird)) == {
                    _net(t) for t in _active(engine)
                }

            wait_for(
                equal,
                timeout=120,
                interval=0.2,
                what="BIRD's RIB equals the store's active rules",
                diagnose=lambda: (
                    f"{len(_rib(bird))} in BIRD, {len(_active(engine))} active, "
                    f"{_unsettled(engine)} unsettled"
                ),
            )
            to_rib = time.monotonic() - killed
            rib = _rib(bird)
            want = {_net(t) for t in _active(engine)}
            with engine.connect() as conn:
                total = len(conn.execute(select(rules.c.id)).all())
                live = Counter(
                    str(t)
                    for (t,) in conn.execute(
                        select(rules.c.target).where(rules.c.state.in_(["active", "pending"]))
                    )
                )
            return Failover(
                rules=total,
                withdrawn=len(gone),
                to_new_holder=to_holder,
                to_first_announce=to_announce,
                to_rib_equal=to_rib,
                lost=want - set(rib),
                extra=set(rib) - want,
                duplicated={p: c for p, c in rib.items() if c > 1},
                twice={t: c for t, c in live.items() if c > 1},
            )
        finally:
            engine.dispose()
            for srv in servers:
                srv.stop()


def test_kill_the_gobgp_driver_mid_storm_rib_equals_store(
    tmp_path: Path, postgres_url: str
) -> None:
    require_lab("gobgpd", "gobgp", *BIRD_BINARIES)
    got = failover(tmp_path, postgres_url, 150)
    assert got.rules >= 100  # every rule made through the survivor, some through the driver
    # how soon (the 10 s target) is measured by tests/bench/bench_failover.py; here
    # the takeover only has to happen (took_over's failure deadline in failover())
    print(f"new holder {got.to_new_holder:.1f} s, first announce {got.to_first_announce:.1f} s")
    assert not got.lost and not got.extra and not got.duplicated and not got.twice, got
    assert got.withdrawn > 0
