"""The agent's bounded buffers across a service outage, against the real app in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from orchestrator.agent.detect import Thresholds
from orchestrator.agent.runner import Agent, AgentConfig
from orchestrator.agent.traffic import Sample
from orchestrator.api.app import bootstrap_token, create_app
from orchestrator.service import Service
from tests.unit.orchestrator.conftest import ADMIN, policy, settings_for


def flood(at: float, pps: float) -> Sample:
    rates = {"all": pps, "udp": pps, "dns": pps}
    return Sample(at, pps, pps * 800, rates, [], [("192.0.2.1", pps)], [("udp/53", pps)], [])


async def test_outage_keeps_the_newest_batches_and_delivers_them_in_order(tmp_path: Path) -> None:
    svc = Service(settings_for(tmp_path, admin_token=ADMIN), policy=policy(cooldown_seconds=0))
    await svc.start()
    try:
        app = create_app(svc, run_scheduler=False)
        bootstrap_token(svc, app.state.tokens)
        api = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://sluice/api/v1",
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        # the service is down: nothing listens on this port
        cfg = AgentConfig(
            url="http://127.0.0.1:9",
            state_dir=tmp_path / "agent",
            interface="eth0",
            name="edge-1",
            ip="203.0.113.9",
            deploy_token=ADMIN,
            thresholds=Thresholds(pps=1000, bps=1e12, resolve_after=3),
            max_metrics=50,
            max_incident_events=20,
        )
        agent = Agent(cfg)
        reg = await api.post("/nodes", json={"name": "edge-1", "ip": "203.0.113.9"})
        agent.state.node_id, agent.state.node_key = reg.json()["node"]["id"], reg.json()["api_key"]
        for t in range(120):  # two minutes of flood while the service is unreachable
            agent.observe(flood(float(t), 5000))
        assert await agent.flush() is False
        assert len(agent.metrics) == 50 and agent.dropped["metrics"] == 70
        kinds = [e.kind for e in agent.incidents]
        assert kinds == ["open", "update"]  # unsent updates collapse into the newest
        assert agent.incidents[1].body["peak_pps"] == 5000

        # the service is back
        await agent.client.aclose()
        agent.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://sluice/api/v1"
        )
        assert await agent.flush() is True
        assert not agent.metrics and not agent.incidents
        incs: list[dict[str, Any]] = (await api.get("/incidents")).json()["incidents"]
        assert len(incs) == 1 and incs[0]["attack_family"] == "dns_flood"
        # two incident reports, then every buffered metrics batch fed the open incident
        assert incs[0]["status"] == "open" and incs[0]["signals"] == 2 + 50
        for t in range(120, 125):  # quiet: the agent resolves its incident
            agent.observe(flood(float(t), 10))
        assert await agent.flush() is True
        inc = (await api.get(f"/incidents/{incs[0]['id']}")).json()["incident"]
        assert inc["status"] == "resolved"
        await agent.client.aclose()
        await api.aclose()
    finally:
        await svc.stop()
