"""Failed is never on the wire: reconciliation confirms, re-sends or leaves failed rules.

The fake adapter plays a BGP speaker (it reports sessions); a rule announced while no
session is established is counted as failed although the speaker keeps the route, as
gobgpd does. Retries are exhausted at once (``max_attempts=1``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update

from orchestrator.service import Service
from orchestrator.store.models import rules
from tests.unit.orchestrator.conftest import add_fake, bh, req

PEER = "192.0.2.1"


async def failed_for_good(svc: Service, rule_id: int) -> dict[str, Any]:
    await svc.dispatcher.drain()
    rule = svc.get_rule(rule_id)
    assert rule["state"] == "failed", rule
    assert rule["next_attempt_at"] is None, rule  # retries exhausted
    assert "not on the wire" in rule["error"]
    return rule


async def test_held_failed_rule_becomes_active_once_a_session_is_up(make_service: Any) -> None:
    svc = await make_service(max_attempts=1)
    aid, fake = await add_fake(svc, sessions={PEER: "active"})
    res = await svc.create_rule(req(bh(), aid, ttl=600))
    rid, key = res.rule["id"], res.rule["key"]
    await failed_for_good(svc, rid)
    assert key in fake.held  # the speaker keeps it and will send it when a session is up

    # sessions still down: it stays failed, and the route is not taken away
    report = await svc.reconcile(aid)
    await svc.dispatcher.drain()
    assert report.revived == 0 and report.orphans == 0
    assert svc.get_rule(rid)["state"] == "failed"
    assert key in fake.held

    fake.sessions[PEER] = "established"
    report = await svc.reconcile(aid)
    await svc.dispatcher.drain()
    assert report.revived == 1
    rule = svc.get_rule(rid)
    assert rule["state"] == "active" and rule["error"] is None
    assert rule["events"][-1]["event"] == "announced"
    assert "confirmed by read-back" in rule["events"][-1]["detail"]
    assert key in fake.held
    assert fake.announced_count(key) == 1  # confirmed, not sent again

    again = await svc.reconcile(aid)
    await svc.dispatcher.drain()
    assert (again.revived, again.missing, again.orphans) == (0, 0, 0)
    assert svc.get_rule(rid)["state"] == "active" and key in fake.held


async def test_exhausted_rule_the_speaker_lost_is_announced_again(make_service: Any) -> None:
    svc = await make_service(max_attempts=1)
    aid, fake = await add_fake(svc, sessions={PEER: "idle"})
    res = await svc.create_rule(req(bh(), aid, ttl=600))
    rid, key = res.rule["id"], res.rule["key"]
    await failed_for_good(svc, rid)
    fake.held.clear()  # the speaker restarted during the outage

    fake.sessions[PEER] = "established"
    report = await svc.reconcile(aid)
    await svc.dispatcher.drain()
    assert report.revived == 1
    rule = svc.get_rule(rid)
    assert rule["state"] == "active", rule
    assert [e["event"] for e in rule["events"]][-2:] == ["retry", "announced"]
    assert key in fake.held and fake.announced_count(key) == 2


async def test_failed_rule_past_its_ttl_is_not_confirmed_and_is_withdrawn(
    make_service: Any,
) -> None:
    svc = await make_service(max_attempts=1)
    aid, fake = await add_fake(svc, sessions={PEER: "active"})
    res = await svc.create_rule(req(bh(), aid, ttl=600))
    rid, key = res.rule["id"], res.rule["key"]
    await failed_for_good(svc, rid)
    with svc.engine.begin() as conn:  # its TTL has passed
        past = datetime.now(UTC) - timedelta(seconds=1)
        conn.execute(update(rules).where(rules.c.id == rid).values(expires_at=past))

    fake.sessions[PEER] = "established"
    report = await svc.reconcile(aid)
    assert report.revived == 0
    assert svc.get_rule(rid)["state"] == "failed"
    assert await svc.expire_due() == 1
    await svc.dispatcher.drain()
    assert svc.get_rule(rid)["state"] == "expired"
    assert key not in fake.held  # the unwanted route is removed from the speaker


async def test_speaker_without_readback_reannounces_exhausted_rule_when_session_returns(
    make_service: Any,
) -> None:
    svc = await make_service(max_attempts=1)
    aid, fake = await add_fake(svc, readback=False, sessions={PEER: "connect"})
    res = await svc.create_rule(req(bh(), aid, ttl=600))
    rid, key = res.rule["id"], res.rule["key"]
    await failed_for_good(svc, rid)
    await svc.reconcile(aid)  # sessions still down: nothing to do
    await svc.dispatcher.drain()
    assert svc.get_rule(rid)["state"] == "failed"

    fake.sessions[PEER] = "established"
    report = await svc.reconcile(aid)
    await svc.dispatcher.drain()
    assert report.revived == 1
    assert svc.get_rule(rid)["state"] == "active"
    assert fake.announced_count(key) == 2


async def test_exhausted_refusal_of_a_non_speaker_is_not_resent(make_service: Any) -> None:
    """A backend that refused a rule for good (not retryable) is not asked again."""
    svc = await make_service(max_attempts=3)
    aid, fake = await add_fake(svc, fail_announce="refused", fail_retryable=False)
    res = await svc.create_rule(req(bh(), aid, ttl=600))
    await svc.dispatcher.drain()
    assert svc.get_rule(res.rule["id"])["state"] == "failed"
    fake.fail_announce = None
    report = await svc.reconcile(aid)
    await svc.dispatcher.drain()
    assert report.revived == 0
    assert svc.get_rule(res.rule["id"])["state"] == "failed"
    assert fake.announced_count(res.rule["key"]) == 0
