"""``kill -9`` of a real ``sluice serve`` in the middle of an alert delivery.

The Slack receiver (loopback, this process) holds the first request without answering;
the service is killed while it waits. Started again on the same store, the service
resumes the unconfirmed delivery at start-up and it is confirmed once; killed and started
again after that, it does not send the confirmed one a second time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from labs.netns import wait_for
from tests.integration.test_crash import Server
from tests.unit.orchestrator.receivers import http_receivers


def deliveries(srv: Server) -> list[dict[str, Any]]:
    r = srv.api("GET", "/channels")
    assert r.status_code == 200, r.text
    return [d for c in r.json()["channels"] for d in c["recent_deliveries"]]


def signal(srv: Server, target: str) -> str:
    r = srv.api(
        "POST",
        "/incidents",
        json={"target_ip": target, "pps": 900_000, "bps": "2G", "attack_family": "udp_flood"},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["incident"]["id"])


async def test_kill9_mid_delivery_resumes_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    (policy_dir / "settings.yaml").write_text("settings:\n  cooldown_seconds: 0\n")
    monkeypatch.setenv("SLUICE_EGRESS_ALLOW", "127.0.0.1")  # the receiver is on loopback
    async with http_receivers() as rec:
        rec.script["/slack"] = ["hang"]
        srv = Server(tmp_path, policy_dir)
        try:
            await asyncio.to_thread(srv.start)
            r = await asyncio.to_thread(
                srv.api,
                "POST",
                "/channels",
                json={
                    "name": "oncall",
                    "channel_type": "slack",
                    "secrets": {"webhook_url": rec.base + "/slack"},
                    "filters": {"events": ["incident.opened"]},
                },
            )
            assert r.status_code == 201, r.text
            first = await asyncio.to_thread(signal, srv, "203.0.113.50")
            await rec.wait("/slack", 1, seconds=60)  # the send is in flight, unanswered
            await asyncio.to_thread(srv.kill9)
            rec.release.set()
            assert rec.ok_at("/slack") == []

            await asyncio.to_thread(srv.start)  # same store: the delivery is resumed
            await rec.wait("/slack", 2, seconds=60)

            def confirmed() -> bool:
                return [(d["status"], d["attempts"]) for d in deliveries(srv)] == [("delivered", 1)]

            await asyncio.to_thread(
                wait_for, confirmed, timeout=60, what="the resumed delivery confirmed"
            )
            assert len(rec.ok_at("/slack")) == 1 and first in rec.ok_at("/slack")[0].body["text"]

            await asyncio.to_thread(srv.kill9)
            await asyncio.to_thread(srv.start)
            # progress to wait on: a new incident's message; the confirmed one stays sent once
            second = await asyncio.to_thread(signal, srv, "203.0.113.51")
            await rec.wait("/slack", 3, seconds=60)
            texts = [g.body["text"] for g in rec.ok_at("/slack")]
            assert len(texts) == 2 and first in texts[0] and second in texts[1], texts
        finally:
            rec.release.set()
            await asyncio.to_thread(srv.stop)
