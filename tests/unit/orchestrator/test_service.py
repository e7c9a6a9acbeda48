"""The service layer end to end over a real SQLite store and the fake adapter."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from orchestrator.service import Service
from orchestrator.store.models import audit_log, rules
from policies.errors import (
    AdapterUnavailable,
    CapabilityMissing,
    Conflict,
    GuardrailViolation,
    ValidationFailed,
)
from policies.guardrails import Guardrails
from tests.unit.orchestrator.conftest import add_fake, bh, fs, policy, req

# the store itself is under test here: these run on SQLite and on PostgreSQL
pytestmark = pytest.mark.postgresql


def rule_count(svc: Service) -> int:
    with svc.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(rules)).scalar_one())


async def settle(svc: Service) -> None:
    await svc.dispatcher.drain()


async def until_active(svc: Service, rule_id: int, seconds: float = 10.0) -> None:
    """Wait (retrying due announces) until the rule is active; fail loudly at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while svc.get_rule(rule_id)["state"] != "active":
        assert loop.time() < deadline, svc.get_rule(rule_id)
        await svc.retry_due()
        await settle(svc)
        await asyncio.sleep(0.05)


async def test_rule_is_committed_pending_then_active(make_service: Any) -> None:
    svc = await make_service()
    aid, fake = await add_fake(svc)
    res = await svc.create_rule(req(bh(), aid, ttl=60, reason="test"))
    assert res.rule["state"] == "pending"
    assert fake.held == {}  # nothing sent before the commit returned
    await settle(svc)
    rule = svc.get_rule(res.rule["id"])
    assert rule["state"] == "active"
    assert [e["event"] for e in rule["events"]] == ["announced"]
    assert res.rule["key"] in fake.held


async def test_dedupe_extends_ttl_instead_of_second_rule(make_service: Any) -> None:
    svc = await make_service()
    aid, fake = await add_fake(svc)
    first = await svc.create_rule(req(fs(protocol="udp", source_port="=53 =123"), aid, ttl=60))
    await settle(svc)
    again = await svc.create_rule(req(fs(protocol=17, source_port=[123, 53]), aid, ttl=600))
    assert again.deduplicated
    assert again.rule["id"] == first.rule["id"]
    rule = svc.get_rule(first.rule["id"])
    assert datetime.fromisoformat(rule["expires_at"]) > datetime.fromisoformat(
        first.rule["expires_at"]
    ) + timedelta(seconds=500)
    assert "extended" in [e["event"] for e in rule["events"]]
    assert rule_count(svc) == 1
    assert fake.announced_count(first.rule["key"]) == 1
    # a shorter TTL never shortens a rule
    shorter = await svc.create_rule(req(fs(protocol=17, source_port=[123, 53]), aid, ttl=5))
    assert shorter.rule["expires_at"] == rule["expires_at"]
    # the same intent on another adapter is another rule
    other, _ = await add_fake(svc, "other")
    assert not (
        await svc.create_rule(req(fs(protocol=17, source_port=[53, 123]), other))
    ).deduplicated


async def test_dry_run_is_stored_never_sent(make_service: Any) -> None:
    svc = await make_service()
    aid, fake = await add_fake(svc)
    res = await svc.create_rule(req(bh(), aid, ttl=1, dry_run=True))
    assert res.rule["state"] == "active" and res.rule["dry_run"]
    await asyncio.sleep(1.05)
    assert await svc.expire_due() == 1
    await settle(svc)
    assert svc.get_rule(res.rule["id"])["state"] == "expired"
    assert fake.calls == []


async def test_global_dry_run(make_service: Any) -> None:
    svc = await make_service(policy(dry_run=True))
    aid, fake = await add_fake(svc)
    res = await svc.create_rule(req(bh(), aid))
    await settle(svc)
    assert res.rule["dry_run"] and fake.calls == []


async def test_cooldown_holds_automatic_rules_per_target_and_kind(make_service: Any) -> None:
    svc = await make_service(policy(cooldown_seconds=60))
    aid, _ = await add_fake(svc)
    await svc.create_rule(req(fs(protocol="udp"), aid, origin="runbook"))
    with pytest.raises(GuardrailViolation) as exc:
        await svc.create_rule(req(fs(protocol="tcp"), aid, origin="runbook"))
    assert exc.value.code == "cooldown_active"
    # escalation to another kind is not held back; operators are not either
    await svc.create_rule(req(bh(), aid, origin="runbook"))
    await svc.create_rule(req(fs(protocol="tcp"), aid, origin="manual"))
    # another target is unaffected; policy rules get their cooldown from the engine
    await svc.create_rule(req(fs("203.0.113.6", protocol="tcp"), aid, origin="runbook"))
    await svc.create_rule(req(fs(protocol="icmp"), aid, origin="policy"))


async def test_cooldown_can_apply_to_manual_rules(make_service: Any) -> None:
    svc = await make_service(policy(cooldown_seconds=60, cooldown_applies_to_manual=True))
    aid, _ = await add_fake(svc)
    await svc.create_rule(req(fs(protocol="udp"), aid))
    with pytest.raises(GuardrailViolation, match="cooldown"):
        await svc.create_rule(req(fs(protocol="tcp"), aid))


async def test_retryable_failure_backs_off_then_succeeds(make_service: Any) -> None:
    svc = await make_service()
    aid, fake = await add_fake(svc, fail_announce="peer session down")
    res = await svc.create_rule(req(bh(), aid))
    await settle(svc)
    rule = svc.get_rule(res.rule["id"])
    assert rule["state"] == "failed"
    assert rule["error"] == "peer session down"
    assert rule["next_attempt_at"] is not None
    fake.fail_announce = None
    await asyncio.sleep(0.1)
    assert await svc.retry_due() == 1
    await settle(svc)
    rule = svc.get_rule(res.rule["id"])
    assert rule["state"] == "active"
    assert [e["event"] for e in rule["events"]] == ["failed", "retry", "announced"]


async def test_speaker_without_an_established_session_does_not_make_a_rule_active(
    make_service: Any,
) -> None:
    svc = await make_service()
    down = {"192.0.2.2": "active", "2001:db8::2": "idle"}
    aid, fake = await add_fake(svc, sessions=down)
    res = await svc.create_rule(req(bh(), aid))
    await settle(svc)
    rule = svc.get_rule(res.rule["id"])
    assert rule["state"] == "failed" and rule["next_attempt_at"] is not None
    assert rule["error"] == (
        "the speaker holds the route but no BGP session is established "
        "(192.0.2.2 active, 2001:db8::2 idle): not on the wire yet"
    )
    assert res.rule["key"] in fake.held  # sent as soon as a session comes up
    assert [r["state"] for r in svc.list_active()[0]] == ["failed"]
    fake.sessions["2001:db8::2"] = "Established"  # one session is enough
    # the session watch reconciles at once (the held route is confirmed), else the retry
    await until_active(svc, res.rule["id"])
    second = await svc.create_rule(req(bh("203.0.113.6"), aid))
    await settle(svc)
    assert svc.get_rule(second.rule["id"])["state"] == "active"


async def test_rule_pinned_to_peers_needs_one_of_them_established(make_service: Any) -> None:
    svc = await make_service()
    sessions = {"192.0.2.2": "Established", "2001:0db8:0:0::2": "Active"}
    aid, fake = await add_fake(svc, sessions=sessions)
    pinned = await svc.create_rule(req(bh(peers=["2001:db8::2"]), aid))
    anywhere = await svc.create_rule(req(bh("203.0.113.6"), aid))
    elsewhere = await svc.create_rule(req(bh("203.0.113.7", peers=["192.0.2.9"]), aid))
    await settle(svc)
    rule = svc.get_rule(pinned.rule["id"])
    assert rule["state"] == "failed"
    assert rule["error"] == (
        "the speaker holds the route but no BGP session to the rule's peers is established "
        "(2001:db8::2 active): not on the wire yet"
    )
    assert svc.get_rule(anywhere.rule["id"])["state"] == "active"
    assert "(192.0.2.9 not configured)" in svc.get_rule(elsewhere.rule["id"])["error"]
    fake.sessions["2001:0db8:0:0::2"] = "Established"
    await until_active(svc, pinned.rule["id"])


async def test_refusal_is_final_and_attempts_are_bounded(make_service: Any) -> None:
    svc = await make_service(max_attempts=2)
    aid, fake = await add_fake(svc, fail_announce="malformed NLRI", fail_retryable=False)
    res = await svc.create_rule(req(bh(), aid))
    await settle(svc)
    rule = svc.get_rule(res.rule["id"])
    assert rule["state"] == "failed" and rule["next_attempt_at"] is None
    assert "not retried" in rule["events"][-1]["detail"]
    fake.fail_retryable = True
    res2 = await svc.create_rule(req(bh("203.0.113.9"), aid))
    await settle(svc)
    await asyncio.sleep(0.1)
    await svc.retry_due()
    await settle(svc)
    rule = svc.get_rule(res2.rule["id"])
    assert rule["state"] == "failed" and rule["attempts"] == 2 and rule["next_attempt_at"] is None


async def test_withdraw_removes_and_is_retried_until_it_succeeds(make_service: Any) -> None:
    svc = await make_service(api_wait_seconds=1.0)
    aid, fake = await add_fake(svc)
    res = await svc.create_rule(req(bh(), aid))
    await settle(svc)
    fake.fail_withdraw = "speaker unreachable"
    rule = await svc.withdraw_rule(res.rule["id"], "ops", "attack over")
    assert rule["state"] == "withdrawing"
    assert rule["error"] == "speaker unreachable"
    assert res.rule["key"] in fake.held
    fake.fail_withdraw = None
    await asyncio.sleep(0.1)
    await svc.retry_due()
    await settle(svc)
    rule = svc.get_rule(res.rule["id"])
    assert rule["state"] == "withdrawn" and rule["ended_at"]
    assert res.rule["key"] not in fake.held
    with pytest.raises(Conflict) as exc:
        await svc.withdraw_rule(res.rule["id"], "ops")
    assert exc.value.code == "rule_not_active"


async def test_withdraw_of_pending_rule_wins_over_late_announce(make_service: Any) -> None:
    svc = await make_service(api_wait_seconds=0)
    aid, fake = await add_fake(svc)
    # the announce is held at the speaker until the withdrawal is in (progress counted,
    # not a latency raced against a sleep)
    entered, release = asyncio.Event(), asyncio.Event()
    announce = fake.announce

    async def held(refs: Any) -> Any:
        entered.set()
        await release.wait()
        return await announce(refs)

    fake.announce = held  # type: ignore[method-assign,assignment]
    res = await svc.create_rule(req(bh(), aid))
    await asyncio.wait_for(entered.wait(), 30)  # the announce is now in flight
    await asyncio.wait_for(svc.withdraw_rule(res.rule["id"], "ops"), 30)
    release.set()
    await settle(svc)
    rule = svc.get_rule(res.rule["id"])
    assert rule["state"] == "withdrawn"
    assert "announced" not in [e["event"] for e in rule["events"]]
    assert fake.held == {}
    assert [c.op for c in fake.calls] == ["announce", "withdraw"]


async def test_withdraw_before_dispatch_sends_no_announce(make_service: Any) -> None:
    svc = await make_service(api_wait_seconds=0)
    aid, fake = await add_fake(svc)
    res = await svc.create_rule(req(bh(), aid))
    await svc.withdraw_rule(res.rule["id"], "ops")
    # on PostgreSQL the driver lease may still be being taken: wait, with a deadline
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while svc.get_rule(res.rule["id"])["state"] != "withdrawn":
        assert loop.time() < deadline, svc.get_rule(res.rule["id"])
        await settle(svc)
        await asyncio.sleep(0.05)
    assert [c.op for c in fake.calls] == ["withdraw"]


async def test_expiry_withdraws_when_the_ttl_has_passed(make_service: Any) -> None:
    """On an injected clock: not a second early, at once when due. (How soon the scheduler
    notices is a matter of its interval, measured by benches, not asserted here.)"""
    now = [datetime(2030, 1, 1, 12, 0, 0, 500_000, tzinfo=UTC)]
    svc = await make_service(clock=lambda: now[0])
    aid, fake = await add_fake(svc)
    res = await svc.create_rule(req(bh(), aid, ttl=1))
    await settle(svc)
    expires = datetime.fromisoformat(res.rule["expires_at"])
    assert expires == now[0] + timedelta(seconds=1)
    now[0] = expires - timedelta(milliseconds=1)
    assert await svc.expire_due() == 0  # not yet
    await settle(svc)
    assert svc.get_rule(res.rule["id"], events=False)["state"] == "active"
    assert res.rule["key"] in fake.held
    now[0] = expires
    assert await svc.expire_due() == 1
    await settle(svc)
    rule = svc.get_rule(res.rule["id"])
    assert rule["state"] == "expired"
    assert datetime.fromisoformat(rule["ended_at"]) == expires
    assert fake.held == {}


async def test_ttl_zero_never_expires_and_bad_ttls_are_refused(make_service: Any) -> None:
    svc = await make_service()
    aid, _ = await add_fake(svc)
    res = await svc.create_rule(req(bh(), aid, ttl=0))
    assert res.rule["expires_at"] is None
    for ttl in (-1, 10**9):
        with pytest.raises(ValidationFailed) as exc:
            await svc.create_rule(req(bh("203.0.113.77"), aid, ttl=ttl))
        assert exc.value.code == "invalid_ttl"
    assert rule_count(svc) == 1


async def test_quotas(make_service: Any) -> None:
    g = Guardrails(max_active_rules=2, flowspec_budget_per_adapter=1, max_new_rules_per_minute=100)
    svc = await make_service(policy(guardrails=g, cooldown_seconds=0))
    aid, _ = await add_fake(svc)
    await svc.create_rule(req(fs(), aid))
    with pytest.raises(GuardrailViolation) as exc:
        await svc.create_rule(req(fs("203.0.113.6"), aid))
    assert exc.value.code == "flowspec_budget"
    await svc.create_rule(req(bh(), aid))
    with pytest.raises(GuardrailViolation) as exc:
        await svc.create_rule(req(bh("203.0.113.7"), aid))
    assert exc.value.code == "max_active_rules"
    # withdrawing frees the quota
    await settle(svc)
    first = svc.list_active()[0][0]
    await svc.withdraw_rule(first["id"], "ops")
    await svc.create_rule(req(bh("203.0.113.7"), aid))


async def test_new_rules_per_minute(make_service: Any) -> None:
    g = Guardrails(max_new_rules_per_minute=3)
    svc = await make_service(policy(guardrails=g, cooldown_seconds=0))
    aid, _ = await add_fake(svc)
    for i in range(3):
        await svc.create_rule(req(bh(f"203.0.113.{i + 1}"), aid))
    with pytest.raises(GuardrailViolation) as exc:
        await svc.create_rule(req(bh("203.0.113.50"), aid))
    assert exc.value.code == "rate_limited"


async def test_capability_and_unknown_adapter_refusals_store_nothing(make_service: Any) -> None:
    svc = await make_service()
    aid, _ = await add_fake(svc, caps=["blackhole"])
    with pytest.raises(CapabilityMissing):
        await svc.create_rule(req(fs(), aid))
    with pytest.raises(ValidationFailed) as exc:
        await svc.create_rule(req(bh(), 999))
    assert exc.value.code == "adapter_not_found"
    with pytest.raises(GuardrailViolation):
        await svc.create_rule(req(bh("0.0.0.0/0"), aid))
    assert rule_count(svc) == 0


async def test_adapter_that_cannot_be_built_refuses_rules(make_service: Any) -> None:
    svc = await make_service()
    aid, _ = await add_fake(svc)
    with svc.engine.begin() as conn:
        from orchestrator.store.models import adapters

        conn.execute(update(adapters).values(config={"latency_ms": "not a number"}))
    svc.hub.load()
    with pytest.raises(AdapterUnavailable):
        await svc.create_rule(req(bh(), aid))


async def test_reconcile_repairs_missing_and_orphaned(make_service: Any) -> None:
    svc = await make_service()
    aid, fake = await add_fake(svc)
    keep = await svc.create_rule(req(bh("203.0.113.1"), aid))
    gone = await svc.create_rule(req(bh("203.0.113.2"), aid))
    await settle(svc)
    await svc.withdraw_rule(gone.rule["id"], "ops")
    await settle(svc)
    # the speaker restarted and lost everything, then somebody re-added an old route and
    # a route Sluice never issued
    fake.held.clear()
    fake.held[gone.rule["key"]] = "old"
    fake.held["f" * 32] = "foreign"
    report = await svc.reconcile(aid)
    await settle(svc)
    assert (report.missing, report.orphans, report.foreign) == (1, 1, 1)
    assert set(fake.held) == {keep.rule["key"], "f" * 32}
    events = [e["event"] for e in svc.get_rule(keep.rule["id"])["events"]]
    assert events[-2:] == ["drift_missing", "reannounced"]
    # steady state: nothing to do
    again = await svc.reconcile(aid)
    assert (again.missing, again.orphans) == (0, 0)


async def test_reconcile_without_readback_resends_on_startup(make_service: Any) -> None:
    svc = await make_service()
    aid, fake = await add_fake(svc, readback=False)
    res = await svc.create_rule(req(bh(), aid))
    await settle(svc)
    report = await svc.reconcile(aid, startup=True)
    await settle(svc)
    assert report.resent == 1 and not report.readback
    assert fake.announced_count(res.rule["key"]) == 2


async def test_restart_recovers_state(
    tmp_path_factory: pytest.TempPathFactory, make_service: Any
) -> None:
    # the state file lies in a directory the service allows (not in its data directory)
    adapter_dir = tmp_path_factory.mktemp("adapters")
    state_file = adapter_dir / "fake.jsonl"
    svc = await make_service(adapter_dirs=(adapter_dir,))
    aid, _ = await add_fake(svc, state_file=str(state_file))
    long = await svc.create_rule(req(bh("203.0.113.1"), aid, ttl=600))
    short = await svc.create_rule(req(bh("203.0.113.2"), aid, ttl=600))
    await settle(svc)
    # a rule committed but whose announce outcome was never written (crash in between)
    torn = await svc.create_rule(req(bh("203.0.113.3"), aid, ttl=600))
    await settle(svc)
    with svc.engine.begin() as conn:
        conn.execute(update(rules).where(rules.c.id == torn.rule["id"]).values(state="pending"))
        past = datetime.now(UTC) - timedelta(seconds=5)
        conn.execute(update(rules).where(rules.c.id == short.rule["id"]).values(expires_at=past))
    await svc.stop()

    svc2 = await make_service(adapter_dirs=(adapter_dir,))
    await settle(svc2)
    fake2 = svc2.hub.live(aid)
    assert svc2.get_rule(long.rule["id"])["state"] == "active"
    assert svc2.get_rule(short.rule["id"])["state"] == "expired"
    assert svc2.get_rule(torn.rule["id"])["state"] == "active"
    assert fake2 is not None
    assert fake2.announced_count(torn.rule["key"]) == 1  # confirmed by read-back, not resent
    assert fake2.announced_count(long.rule["key"]) == 1


async def test_deleting_an_adapter_withdraws_its_rules_first(make_service: Any) -> None:
    svc = await make_service(api_wait_seconds=0.3)
    aid, fake = await add_fake(svc)
    res = await svc.create_rule(req(bh(), aid))
    await settle(svc)
    fake.fail_withdraw = "down"
    with pytest.raises(Conflict) as exc:
        await svc.delete_adapter(aid, "ops")
    assert exc.value.code == "withdraw_pending"
    assert svc.hub.get(aid)  # kept while its rule may still be on the wire
    fake.fail_withdraw = None
    await asyncio.sleep(0.1)
    await svc.retry_due()
    await settle(svc)
    out = await svc.delete_adapter(aid, "ops")
    assert out["withdrawn_rules"] == []  # already withdrawing from the first attempt
    assert svc.get_rule(res.rule["id"])["state"] == "withdrawn"
    assert svc.get_rule(res.rule["id"])["adapter_name"] == "fake"


async def test_audit_chain_detects_tampering(make_service: Any) -> None:
    svc = await make_service()
    aid, _ = await add_fake(svc)
    for i in range(5):
        await svc.create_rule(req(bh(f"203.0.113.{i + 1}"), aid, reason=f"r{i}"))
    assert svc.verify_audit().ok
    with svc.engine.begin() as conn:
        conn.execute(
            update(audit_log)
            .where(audit_log.c.id == 3)
            .values(detail='{"reason":"nothing to see"}')
        )
    res = svc.verify_audit()
    assert not res.ok and res.first_bad_id == 3
    with svc.engine.begin() as conn:
        conn.execute(audit_log.delete().where(audit_log.c.id == 3))
    res = svc.verify_audit()
    assert not res.ok and res.first_bad_id == 4 and "missing" in res.problem
