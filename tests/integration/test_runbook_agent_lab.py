"""The runbook ``iptables`` step end to end: a real ``sluice agent`` (in a namespace, talking
to a real ``sluice serve`` over a veth) receives the step's job on its job channel and
applies the profile's rules with ``iptables-restore`` in that namespace; a second runbook,
triggered when the incident resolves, removes them.

The namespaces and the service come from :func:`tests.integration.test_agent_lab.agent_rig`
(and go with it, even on failure).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labs.netns import wait_for
from tests.integration.conftest import require_lab
from tests.integration.test_agent_lab import Rig, agent_rig

pytestmark = [pytest.mark.root, pytest.mark.lab]
CHAIN = "SLUICE-INPUT"


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    require_lab("iptables", "iptables-restore")
    with agent_rig(tmp_path) as r:
        yield r


def iptables(rig: Rig) -> str:
    return str(rig.lab.run(rig.host, ["iptables", "-S"]).stdout)


def runbook(name: str, event: str, action: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "trigger_conditions": {"events": [event], "min_severity": "low"},
        "steps": [
            {"action_type": "iptables", "action_config": action, "timeout_seconds": 120},
            {"action_type": "log", "action_config": {"message": f"{name} done on {{node}}"}},
        ],
    }


def test_iptables_step_applies_and_removes_rules_through_the_real_agent(rig: Rig) -> None:
    rig.start_agent(1)
    nodes: list[dict[str, Any]] = []

    def online() -> bool:
        nodes[:] = rig.api("GET", "/nodes")["nodes"]
        return bool(nodes) and nodes[0]["status"] == "online"

    wait_for(online, timeout=60, what="the agent to register", diagnose=rig.agent_log)
    node_id = nodes[0]["id"]
    assert CHAIN not in iptables(rig)
    apply = rig.api(
        "POST",
        "/runbooks",
        json=runbook("shield", "incident.opened", {"action": "apply", "profile_id": "game_server"}),
    )["runbook"]
    remove = rig.api(
        "POST", "/runbooks", json=runbook("unshield", "incident.resolved", {"action": "remove"})
    )["runbook"]

    # a detector's signal for the agent's node opens the incident that triggers "shield"
    inc = rig.api(
        "POST",
        "/incidents",
        json={
            "target_ip": "192.0.2.2",
            "pps": 250_000,
            "bps": "900M",
            "attack_family": "udp_flood",
            "severity": "high",
            "node": node_id,
        },
    )["incident"]

    def finished(rid: str) -> dict[str, Any] | None:
        ex = rig.api("GET", f"/runbooks/{rid}/executions")["executions"]
        return ex[0] if ex and ex[0]["status"] != "running" else None

    done: list[dict[str, Any]] = []

    def applied() -> bool:
        got = finished(apply["id"])
        done[:] = [got] if got else []
        return got is not None

    wait_for(applied, timeout=120, what="the apply execution", diagnose=rig.agent_log)
    ex = done[0]
    assert ex["status"] == "succeeded", ex
    step = ex["steps"][0]
    assert step["status"] == "succeeded" and step["output"]["node_id"] == node_id, step
    rules = iptables(rig)
    assert f"-N {CHAIN}" in rules and f"-A INPUT -j {CHAIN}" in rules, rules
    assert f"-A {CHAIN}" in rules and "DROP" in rules, rules  # the profile's rules, for real
    assert rig.svc_addr in rules  # the management address stays reachable
    job = rig.api("GET", f"/jobs/{step['output']['job_id']}")["job"]
    assert job["status"] == "succeeded" and job["node_id"] == node_id, job

    # the incident resolves: "unshield" removes the rules through the same channel
    rig.api("POST", f"/incidents/{inc['id']}/resolve")

    def removed() -> bool:
        got = finished(remove["id"])
        done[:] = [got] if got else []
        return got is not None

    wait_for(removed, timeout=120, what="the remove execution", diagnose=rig.agent_log)
    assert done[0]["status"] == "succeeded", done[0]
    after = iptables(rig)
    assert CHAIN not in after, after
    # each runbook ran once for the incident
    assert len(rig.api("GET", f"/runbooks/{apply['id']}/executions")["executions"]) == 1
    assert len(rig.api("GET", f"/runbooks/{remove['id']}/executions")["executions"]) == 1
