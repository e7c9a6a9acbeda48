"""The service's session watch, with the fake playing a BGP speaker.

Sessions all down: the adapter is ``disconnected`` and its active rules become
``suspended`` (kept, on no wire; the event log says so); a session back: the adapter is
reconciled at once (its routes re-sent without any call), the rules are ``active`` again
and the adapter ``connected``. Waits have deadlines that fail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from adapters.fake import FakeSpeaker
from orchestrator.service import Service
from tests.unit.orchestrator.conftest import add_fake, bh, req


async def until(check: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds} s")
        await asyncio.sleep(0.02)


def status(svc: Service, aid: int) -> str:
    return str(svc.hub.get(aid).to_api()["status"])


async def test_sessions_down_and_back_through_the_service(make_service: Any) -> None:
    svc = await make_service()
    aid, fake = await add_fake(svc, sessions={"192.0.2.2": "Established"})
    assert isinstance(fake, FakeSpeaker)
    res = await svc.create_rule(req(bh(), aid))
    rule_id = res.rule["id"]
    await svc.dispatcher.drain(5)
    await until(lambda: status(svc, aid) == "connected", "connected")
    rule = svc.get_rule(rule_id)
    assert rule["state"] == "active" and rule["on_the_wire"] is True

    fake.sessions["192.0.2.2"] = "Idle"
    await until(lambda: status(svc, aid) == "disconnected", "all sessions down seen")
    await until(lambda: svc.get_rule(rule_id)["state"] == "suspended", "rule suspended")
    rule = svc.get_rule(rule_id)
    assert rule["on_the_wire"] is False, rule
    assert rule["off_the_wire"] == "no BGP session established (192.0.2.2 idle)"
    assert rule["events"][-1]["event"] == "suspended"
    [listed] = svc.list_active(adapter_id=aid)[0]
    assert listed["state"] == "suspended" and listed["on_the_wire"] is False
    assert svc.list_active(state="active")[1] == 0
    assert svc.list_active(state="suspended")[1] == 1
    kinds = [e["kind"] for e in svc.events.after(0, 1000) if e["rule_id"] == rule_id]
    assert kinds[-1] == "rule.suspended", kinds

    fake.held.clear()  # the speaker lost its routes meanwhile
    announced = fake.announced_count(res.rule["key"])
    fake.sessions["192.0.2.2"] = "Established"
    await until(lambda: res.rule["key"] in fake.held, "re-announced on the session's return")
    assert fake.announced_count(res.rule["key"]) == announced + 1
    await until(lambda: status(svc, aid) == "connected", "connected again")
    await until(lambda: svc.get_rule(rule_id)["state"] == "active", "active again")
    assert svc.get_rule(rule_id)["on_the_wire"] is True


async def test_a_plain_adapter_is_not_watched(make_service: Any) -> None:
    svc = await make_service()
    aid, _ = await add_fake(svc)
    res = await svc.create_rule(req(bh(), aid))
    await svc.dispatcher.drain(5)
    svc.session_watcher.sync()
    assert svc.session_watcher.watched() == []
    assert svc.get_rule(res.rule["id"])["on_the_wire"] is None
