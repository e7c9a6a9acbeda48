"""``suspended``: an active rule whose speaker has no BGP session up is kept, off the wire.

The fake adapter plays a BGP speaker (it reports sessions and holds routes). Covered: the
transitions (active -> suspended -> active, and suspended -> withdrawing by expiry or by
an operator), the event log, the API filter, the view, and that a suspended rule the
speaker still holds is confirmed (not re-sent) while one it lost is re-sent.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from orchestrator import reconcile
from orchestrator.lifecycle import HELD, LIVE, State, can_move
from orchestrator.service import Service
from orchestrator.sessions import Seen
from orchestrator.store.models import rules
from policies.errors import ValidationFailed
from tests.unit.orchestrator.conftest import add_fake, bh, req
from tests.unit.orchestrator.test_session_watch import until

# a lifecycle state kept in the store: these run on SQLite and on PostgreSQL
pytestmark = pytest.mark.postgresql

PEER = "192.0.2.1"


def test_transitions() -> None:
    assert can_move(State.ACTIVE, State.SUSPENDED)
    assert can_move(State.SUSPENDED, State.ACTIVE)
    assert can_move(State.SUSPENDED, State.WITHDRAWING)  # expiry, operator
    assert can_move(State.SUSPENDED, State.FAILED)  # the re-send was refused
    assert not can_move(State.SUSPENDED, State.PENDING)
    assert not can_move(State.PENDING, State.SUSPENDED)
    assert not can_move(State.FAILED, State.SUSPENDED)
    assert State.SUSPENDED in LIVE and State.SUSPENDED in HELD  # TTL and quotas count it


async def active_rule(svc: Service, ttl: int = 0) -> tuple[int, Any, int, str]:
    aid, fake = await add_fake(svc, sessions={PEER: "established"})
    res = await svc.create_rule(req(bh(), aid, ttl=ttl))
    await svc.dispatcher.drain(5)
    rule = svc.get_rule(res.rule["id"])
    assert rule["state"] == "active", rule
    return aid, fake, int(rule["id"]), str(rule["key"])


async def suspended(svc: Service, fake: Any, rid: int) -> dict[str, Any]:
    fake.sessions[PEER] = "idle"
    await until(lambda: svc.get_rule(rid)["state"] == "suspended", "rule suspended")
    return svc.get_rule(rid)


async def test_suspended_while_down_confirmed_when_back(make_service: Any) -> None:
    svc = await make_service()
    aid, fake, rid, key = await active_rule(svc)
    rule = await suspended(svc, fake, rid)
    assert rule["on_the_wire"] is False
    assert "no BGP session" in rule["off_the_wire"]
    last = rule["events"][-1]
    assert last["event"] == "suspended" and "kept but on no wire" in last["detail"]
    kinds = [e["kind"] for e in svc.events.after(0, 1000) if e["rule_id"] == rid]
    assert kinds[-1] == "rule.suspended"
    # reconciliation while the sessions are still down changes nothing
    await svc.reconcile(aid)
    await svc.dispatcher.drain(5)
    assert svc.get_rule(rid)["state"] == "suspended"
    assert svc.state_counts().get("suspended") == 1

    sent = fake.announced_count(key)
    fake.sessions[PEER] = "established"
    await until(lambda: svc.get_rule(rid)["state"] == "active", "active again")
    await svc.dispatcher.drain(5)
    rule = svc.get_rule(rid)
    assert rule["on_the_wire"] is True
    assert "on the wire again" in rule["events"][-1]["detail"]
    assert fake.announced_count(key) == sent  # the speaker held it: confirmed, not re-sent


async def test_suspended_rule_the_speaker_lost_is_sent_again(make_service: Any) -> None:
    svc = await make_service()
    _, fake, rid, key = await active_rule(svc)
    await suspended(svc, fake, rid)
    fake.held.clear()  # the speaker restarted empty
    sent = fake.announced_count(key)
    fake.sessions[PEER] = "established"
    await until(lambda: svc.get_rule(rid)["state"] == "active", "active again")
    assert key in fake.held
    assert fake.announced_count(key) == sent + 1
    assert svc.get_rule(rid)["on_the_wire"] is True


async def test_ttl_runs_while_suspended(make_service: Any) -> None:
    svc = await make_service()
    _, fake, rid, key = await active_rule(svc, ttl=600)
    await suspended(svc, fake, rid)
    past = svc.clock() - timedelta(seconds=1)
    with svc.engine.begin() as conn:
        conn.execute(update(rules).where(rules.c.id == rid).values(expires_at=past))
    assert await svc.expire_due() == 1
    await svc.dispatcher.drain(5)
    rule = svc.get_rule(rid)
    assert rule["state"] == "expired", rule
    assert key not in fake.held
    assert [e["event"] for e in rule["events"]][-3:] == ["suspended", "withdrawing", "expired"]


async def test_operator_withdraws_a_suspended_rule(make_service: Any) -> None:
    svc = await make_service()
    _, fake, rid, key = await active_rule(svc)
    await suspended(svc, fake, rid)
    await svc.withdraw_rule(rid, actor="test", reason="no longer needed")
    await svc.dispatcher.drain(5)
    assert svc.get_rule(rid)["state"] == "withdrawn"
    assert key not in fake.held
    fake.sessions[PEER] = "established"  # nothing comes back with the session
    await svc.reconcile(svc.get_rule(rid)["adapter_id"])
    await svc.dispatcher.drain(5)
    assert key not in fake.held and svc.get_rule(rid)["state"] == "withdrawn"


async def test_state_filter(make_service: Any) -> None:
    svc = await make_service()
    _, fake, rid, _ = await active_rule(svc)
    assert svc.list_active(state="active")[1] == 1
    await suspended(svc, fake, rid)
    [row], total = svc.list_active(state="suspended")
    assert total == 1 and row["id"] == rid
    assert svc.list_active(state="active")[1] == 0
    with pytest.raises(ValidationFailed) as err:
        svc.list_active(state="withdrawn")
    assert err.value.field == "state"


async def three_active(svc: Service, monkeypatch: pytest.MonkeyPatch) -> tuple[int, list[int]]:
    aid, _ = await add_fake(svc, sessions={PEER: "established"})
    ids = []
    for host in ("203.0.113.10", "203.0.113.11", "203.0.113.12"):
        res = await svc.create_rule(req(bh(host), aid))
        ids.append(int(res.rule["id"]))
    await svc.dispatcher.drain(5)
    await svc.session_watcher.stop()  # this test drives the suspension itself
    monkeypatch.setattr(reconcile, "CHUNK", 1)  # one rule per transaction
    svc.sessions.observe(aid, {PEER: "idle"})
    return aid, ids


async def test_suspension_goes_on_when_the_sessions_become_unknown(
    make_service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = await make_service()
    aid, ids = await three_active(svc, monkeypatch)
    move = svc.rule_store.move

    def move_then_forget(*args: Any, **kw: Any) -> list[int]:
        moved: list[int] = move(*args, **kw)
        svc.sessions.forget(aid)  # a failed check: the sessions are unknown now
        return moved

    monkeypatch.setattr(svc.rule_store, "move", move_then_forget)
    assert await svc.suspend_off_wire(aid) == 3
    assert {svc.get_rule(i)["state"] for i in ids} == {"suspended"}


async def test_suspension_stops_when_a_session_is_back(
    make_service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = await make_service()
    aid, ids = await three_active(svc, monkeypatch)
    move, get = svc.rule_store.move, svc.sessions.get
    back: list[bool] = []

    def move_then_up(*args: Any, **kw: Any) -> list[int]:
        moved: list[int] = move(*args, **kw)
        back.append(True)  # the watch sees a session come up meanwhile
        return moved

    def seen(adapter_id: int) -> Seen | None:
        return Seen(0.0, {PEER: "established"}) if back else get(adapter_id)

    monkeypatch.setattr(svc.rule_store, "move", move_then_up)
    monkeypatch.setattr(svc.sessions, "get", seen)
    assert await svc.suspend_off_wire(aid) == 1
    assert sorted(svc.get_rule(i)["state"] for i in ids) == ["active", "active", "suspended"]
