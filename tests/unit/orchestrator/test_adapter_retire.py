"""Retiring a dead adapter: forced delete by an admin, and adapters removed from the policy."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from adapters.fake import FakeAdapter
from orchestrator.service import Service
from orchestrator.store.models import audit_log, rules
from policies.schema import AdapterDecl
from tests.unit.orchestrator.conftest import add_fake, bh, policy, req


def error(r: httpx.Response) -> tuple[int, str]:
    body = r.json()
    assert body["ok"] is False, body
    return r.status_code, body["error"]["code"]


def audit_count(svc: Service) -> int:
    with svc.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(audit_log)).scalar_one())


def last_audit(svc: Service, action: str) -> Any:
    with svc.engine.connect() as conn:
        return conn.execute(
            select(audit_log).where(audit_log.c.action == action).order_by(audit_log.c.id.desc())
        ).first()


def states(svc: Service) -> dict[int, str]:
    with svc.engine.connect() as conn:
        return {int(r.id): str(r.state) for r in conn.execute(select(rules.c.id, rules.c.state))}


async def dead_adapter_with_rule(api: Any) -> tuple[int, int, FakeAdapter]:
    aid = await api.fake("edge")
    r = await api.call(
        "POST",
        "/mitigation/rules",
        json={"target_ip": "203.0.113.10", "intent_type": "blackhole", "adapter_id": aid},
    )
    assert r.status_code == 201, r.text
    rid = int(r.json()["rule"]["id"])
    await api.svc.dispatcher.drain(5)
    assert api.svc.get_rule(rid)["state"] == "active"
    fake = api.svc.hub.live(aid)
    assert isinstance(fake, FakeAdapter)
    fake.fail_withdraw = "backend unreachable"  # gone for good
    return aid, rid, fake


async def test_forced_delete_by_admin_retires_a_dead_adapter(make_api: Any) -> None:
    api = await make_api(api_wait_seconds=0.3)
    aid, rid, _ = await dead_adapter_with_rule(api)

    # without force the refusal stays; the rule is being withdrawn
    assert error(await api.call("DELETE", f"/mitigation/adapters/{aid}")) == (
        409,
        "withdraw_pending",
    )
    assert api.svc.get_rule(rid)["state"] == "withdrawing"

    # bad input changes nothing
    writer = await api.token("write")
    before = (audit_count(api.svc), states(api.svc), len(api.svc.hub.records()))
    r = await api.call("DELETE", f"/mitigation/adapters/{aid}?force=true", token=writer)
    assert error(r) == (403, "insufficient_scope")
    assert error(await api.call("DELETE", "/mitigation/adapters/999?force=true")) == (
        404,
        "adapter_not_found",
    )
    r = await api.call("DELETE", f"/mitigation/adapters/{aid}?force=maybe")
    assert r.status_code == 422 and r.json()["ok"] is False
    assert (audit_count(api.svc), states(api.svc), len(api.svc.hub.records())) == before

    r = await api.call("DELETE", f"/mitigation/adapters/{aid}?force=true")
    assert r.status_code == 200, r.text
    deleted = r.json()["deleted"]
    assert deleted["forced"] is True and deleted["unconfirmed_rules"] == [rid]
    rule = api.svc.get_rule(rid)
    assert rule["state"] == "withdrawn"
    assert "withdrawal not confirmed" in rule["error"]
    assert "withdrawal not confirmed" in rule["events"][-1]["detail"]
    entry = last_audit(api.svc, "adapter.delete")
    assert entry is not None and entry.actor == "admin" and '"forced":true' in entry.detail
    assert f"[{rid}]" in entry.detail
    assert (await api.call("GET", "/audit/verify")).json()["valid"] is True
    assert api.svc.hub.records() == []
    assert error(await api.call("DELETE", f"/mitigation/adapters/{aid}")) == (
        404,
        "adapter_not_found",
    )
    # the dead backend's late answer changes nothing
    await api.svc.dispatcher.drain(5)
    assert api.svc.get_rule(rid)["state"] == "withdrawn"


async def test_forced_delete_is_one_transaction(
    make_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If retiring fails, the rules' end and the audit entry are not written either."""
    api = await make_api(api_wait_seconds=0.3)
    aid, rid, _ = await dead_adapter_with_rule(api)

    def broken(adapter_id: int, conn: Any = None) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(api.svc.hub, "mark_deleted", broken)
    before = audit_count(api.svc)
    with pytest.raises(RuntimeError):
        await api.svc.delete_adapter(aid, "admin", force=True)
    assert api.svc.get_rule(rid)["state"] == "withdrawing"
    assert audit_count(api.svc) == before + 1  # the withdrawal's start, not the delete
    assert last_audit(api.svc, "adapter.delete") is None
    monkeypatch.undo()
    out = await api.svc.delete_adapter(aid, "admin", force=True)
    assert out["unconfirmed_rules"] == [rid]
    assert (await api.call("GET", "/audit/verify")).json()["valid"] is True


def declared(*names: str) -> list[AdapterDecl]:
    return [AdapterDecl(name=n, adapter_type="fake") for n in names]


async def test_adapter_removed_from_policy_is_withdrawn_and_retired(make_service: Any) -> None:
    svc = await make_service(
        policy(cooldown_seconds=0).model_copy(update={"adapters": declared("edge", "core")})
    )
    edge = svc.hub.resolve("edge").id
    core = svc.hub.resolve("core").id
    a = await svc.create_rule(req(bh("203.0.113.1"), edge))
    b = await svc.create_rule(req(bh("203.0.113.2"), core))
    await svc.dispatcher.drain(5)
    fake = svc.hub.live(edge)
    assert isinstance(fake, FakeAdapter) and a.rule["key"] in fake.held

    svc.set_policy(svc.policy.model_copy(update={"adapters": declared("core")}))
    await svc.dispatcher.drain(5)
    rule = svc.get_rule(a.rule["id"])
    assert rule["state"] == "withdrawn"
    assert "removed from the policy files" in rule["events"][-2]["detail"]
    assert a.rule["key"] not in fake.held
    assert svc.get_rule(b.rule["id"])["state"] == "active"
    await svc.reconcile_all()
    assert [r.name for r in svc.hub.records()] == ["core"]
    entry = last_audit(svc, "adapter.delete")
    assert entry is not None and entry.actor == "policy" and "edge" in entry.detail


async def test_dead_adapter_removed_from_policy_waits_then_force_retires(
    make_service: Any,
) -> None:
    svc = await make_service(
        policy(cooldown_seconds=0).model_copy(update={"adapters": declared("edge")}),
        api_wait_seconds=0.3,
    )
    edge = svc.hub.resolve("edge").id
    a = await svc.create_rule(req(bh("203.0.113.1"), edge))
    await svc.dispatcher.drain(5)
    fake = svc.hub.live(edge)
    assert isinstance(fake, FakeAdapter)
    fake.fail_withdraw = "backend unreachable"

    svc.set_policy(svc.policy.model_copy(update={"adapters": []}))
    await svc.dispatcher.drain(5)
    assert svc.get_rule(a.rule["id"])["state"] == "withdrawing"
    await svc.reconcile_all()
    assert [r.name for r in svc.hub.records()] == ["edge"]  # kept until confirmed
    # no longer "managed by policy": an admin may retire it
    out = await svc.delete_adapter(edge, "admin", force=True)
    assert out["unconfirmed_rules"] == [a.rule["id"]]
    assert svc.get_rule(a.rule["id"])["state"] == "withdrawn"
    assert svc.hub.records() == []


async def test_declared_policy_adapter_stays_read_only_even_with_force(
    make_service: Any,
) -> None:
    svc = await make_service(policy().model_copy(update={"adapters": declared("edge")}))
    from policies.errors import ReadOnly

    with pytest.raises(ReadOnly):
        await svc.delete_adapter(svc.hub.resolve("edge").id, "admin", force=True)
    assert len(svc.hub.records()) == 1


async def test_api_adapter_untouched_by_policy_sync(make_service: Any) -> None:
    svc = await make_service()
    aid, _ = await add_fake(svc)
    svc.set_policy(svc.policy)
    assert [r.id for r in svc.hub.records()] == [aid]
