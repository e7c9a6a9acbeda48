"""``kill -9`` the real service mid-storm while it drives a real gobgpd, then restart it.

After the restart, the receiving BIRD's RIB must match the store exactly: every rule the
store holds as active is in the RIB, rules whose TTL passed while the service was down
are gone from it, and nothing else is there (nothing missing, nothing orphaned).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest

from labs.gobgp import GoBgpSpeaker
from labs.netns import wait_for
from labs.topology import Topology, running
from tests.integration.conftest import RECEIVER_BINARIES, require_lab
from tests.integration.test_crash import Server, storm_then_kill

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.slow]

STORM = ipaddress.IPv4Network("198.18.0.0/22")  # RFC 2544 benchmarking range


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    require_lab("gobgpd", "gobgp", *RECEIVER_BINARIES)
    with running(GoBgpSpeaker(), receivers=("bird",)) as t:
        yield t


def post(srv: Server, prefix: str, ttl: int) -> int | None:
    try:
        r = srv.api(
            "POST",
            "/mitigation/rules",
            json={
                "target_ip": prefix,
                "intent_type": "blackhole",
                "adapter_id": "edge",
                "ttl": ttl,
                "next_hop": "192.0.2.3",
                "reason": "storm",
            },
        )
    except httpx.HTTPError:
        return None
    return int(r.json()["rule"]["id"]) if r.status_code == 201 else None


def test_kill9_mid_storm_with_real_peers(topo: Topology, tmp_path: Path) -> None:
    bird = topo.receivers["bird"]
    cfg = topo.speaker.adapter_config("edge")
    pdir = tmp_path / "policy"
    pdir.mkdir()
    (pdir / "settings.yaml").write_text(
        "settings:\n  cooldown_seconds: 0\n"
        "guardrails:\n  max_new_rules_per_minute: 100000\n  max_active_rules: 100000\n"
    )
    (pdir / "adapters.yaml").write_text(
        f"adapters:\n  - name: edge\n    adapter_type: gobgp\n    endpoint: {cfg['endpoint']}\n"
    )
    srv = Server(tmp_path, pdir, topo.access.allowed_dirs)
    hosts = [str(h) for h in list(STORM.hosts())[:600]]
    try:
        srv.start()
        short = [post(srv, h, ttl=2) for h in hosts[:10]]
        assert all(short)
        storm = [partial(post, srv, h, 600) for h in hosts[10:]]
        acked = storm_then_kill(srv, storm, kill_after=200)
        time.sleep(3)  # the short rules expire while nothing runs
        srv.start()

        def store_active() -> set[str] | None:
            rules = srv.live_rules()
            if any(r["state"] != "active" for r in rules):
                return None
            return {r["target_ip"] for r in rules}

        def in_storm(prefixes: set[str]) -> set[str]:
            return {p for p in prefixes if ipaddress.IPv4Network(p).subnet_of(STORM)}

        wait_for(
            lambda: (s := store_active()) is not None and s == in_storm(bird.prefixes(4)),
            timeout=60,
            what="BIRD's RIB to match the store's active rules",
        )
        active = store_active()
        assert active is not None and len(active) >= len(acked)
        print(f"after the restart: {len(active)} active rules, all in BIRD's RIB, nothing else")
        for short_id in short:
            assert short_id is not None
            rule = srv.rule(short_id)
            assert rule["state"] == "expired", rule
            assert rule["target_ip"] not in bird.prefixes(4)
        for rid in acked:
            rule = srv.rule(rid)
            assert rule["state"] == "active", rule
            assert rule["target_ip"] in active
        assert srv.api("GET", "/audit/verify").json()["valid"]
    finally:
        srv.stop()
