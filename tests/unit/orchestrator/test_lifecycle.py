"""Rule and incident lifecycles, driven by an injected clock (no sleeps).

The rule and incident state machines are checked transition by transition against the
real store; the incident lifecycle end to end through the REST API: hold-down elapsing,
resolve withdrawing, a new incident after resolve, the episode timeout, detector fields.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from itertools import product
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, insert, inspect, select

from adapters.base import AdapterConfig
from adapters.fake import FakeAdapter
from orchestrator import events as ev
from orchestrator.api.app import bootstrap_token, create_app
from orchestrator.core import Core
from orchestrator.incidents import TRANSITIONS as INCIDENT_MOVES
from orchestrator.incidents import Incident, IncidentStore, Status
from orchestrator.lifecycle import TRANSITIONS as RULE_MOVES
from orchestrator.lifecycle import State
from orchestrator.rulestore import RuleStore
from orchestrator.service import RuleRequest, Service
from orchestrator.store.db import make_engine, migrate
from orchestrator.store.models import adapters, events, incidents, rule_events, rules
from policies.errors import Conflict
from policies.intents import build_intent
from policies.schema import Policy
from policies.signals import Signal
from tests.unit.orchestrator.conftest import settings_for

# the store itself is under test here: these run on SQLite and on PostgreSQL
pytestmark = pytest.mark.postgresql

T0 = datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC)
ADMIN = "c" * 64
H = {"Authorization": f"Bearer {ADMIN}"}


class Clock:
    """A clock that moves only when told."""

    def __init__(self, at: datetime = T0) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


# ---------------------------------------------------------------- the rule state machine


@pytest.fixture
def engine(tmp_path: Path, store_url: str | None) -> Iterator[Engine]:
    eng = make_engine(store_url or f"sqlite:///{tmp_path / 'm.db'}")
    migrate(eng)
    with eng.begin() as conn:
        conn.execute(
            insert(adapters).values(
                id=1, name="a", adapter_type="fake", endpoint="", config={}, source="api",
                created_at=T0, updated_at=T0,
            )
        )  # fmt: skip
    yield eng
    eng.dispose()


def _rule(engine: Engine, state: State) -> int:
    with engine.begin() as conn:
        rid = conn.execute(
            insert(rules).values(
                key="k",
                kind="blackhole",
                target="203.0.113.5",
                intent="blackhole 203.0.113.5/32",
                adapter_id=1,
                state=state,
                dry_run=False,
                origin="manual",
                reason="",
                ttl=0,
                created_at=T0,
                updated_at=T0,
                attempts=0,
            )
        ).inserted_primary_key
    assert rid is not None
    return int(rid[0])  # fmt: skip


@pytest.mark.parametrize(("frm", "to"), list(product(State, State)))
def test_every_rule_transition_is_allowed_or_refused(engine: Engine, frm: State, to: State) -> None:
    rid = _rule(engine, frm)
    store = RuleStore()
    with engine.begin() as conn:
        n_before = conn.execute(select(func.count()).select_from(rule_events)).scalar_one()
    if to in RULE_MOVES[frm]:
        with engine.begin() as conn:
            moved = store.move(conn, [rid], frm=frm, to=to, now=T0, event="test", why="cause")
        assert moved == [rid]
        with engine.connect() as conn:
            assert conn.execute(select(rules.c.state).where(rules.c.id == rid)).scalar() == to
            line = conn.execute(select(rule_events).where(rule_events.c.rule_id == rid)).one()
            assert (line.event, line.detail) == ("test", "cause")
            logged = conn.execute(select(events).where(events.c.rule_id == rid)).one()
            assert logged.kind == f"rule.{to}" and logged.detail == {"cause": "cause"}
    else:
        with pytest.raises(Conflict) as exc, engine.begin() as conn:
            store.move(conn, [rid], frm=frm, to=to, now=T0, event="test")
        assert exc.value.code == "invalid_state"
        with engine.connect() as conn:
            assert conn.execute(select(rules.c.state).where(rules.c.id == rid)).scalar() == frm
            assert (
                conn.execute(select(func.count()).select_from(rule_events)).scalar_one() == n_before
            )
            assert conn.execute(select(func.count()).select_from(events)).scalar_one() == 0


def test_a_guarded_move_of_a_rule_in_another_state_changes_nothing(engine: Engine) -> None:
    """A late 'announced' for a rule withdrawn since is not an error: it matches no row."""
    rid = _rule(engine, State.WITHDRAWING)
    with engine.begin() as conn:
        moved = RuleStore().move(
            conn, [rid], frm=State.PENDING, to=State.ACTIVE, now=T0, event="announced"
        )
    assert moved == []
    with engine.connect() as conn:
        assert conn.execute(select(rules.c.state)).scalar() == State.WITHDRAWING


# ---------------------------------------------------------------- the incident state machine


def _incident(engine: Engine, status: Status) -> Incident:
    inc = Incident(
        id=f"inc-{status}", target="203.0.113.5", node=None, status=Status.OPEN,
        attack_family="udp_flood", severity="high", peak_bps=0.0, peak_pps=0.0,
        last_signal={}, signals=1, opened_at=T0, updated_at=T0,
    )  # fmt: skip
    with engine.begin() as conn:
        IncidentStore().open(conn, [inc])
        conn.execute(incidents.update().values(status=str(status)))
    inc.status = status
    return inc


@pytest.mark.parametrize(("frm", "to"), list(product(Status, Status)))
def test_every_incident_transition_is_allowed_or_refused(
    engine: Engine, frm: Status, to: Status
) -> None:
    inc = _incident(engine, frm)
    store = IncidentStore()

    def move() -> None:
        with engine.begin() as conn:
            if to in (Status.RESOLVED, Status.EXPIRED):
                store.end(conn, inc, to, now=T0, by="test", cause="test")
            elif to is Status.MITIGATING:
                store.escalated(conn, [(inc, "t1", "announce")], now=T0)
            else:
                store._move(conn, inc, to, T0)

    if to in INCIDENT_MOVES[frm]:
        move()
        with engine.connect() as conn:
            assert IncidentStore.get(conn, inc.id).status is to
    elif frm is Status.MITIGATING and to is Status.MITIGATING:
        move()  # another tier while mitigating: an escalation event, no status change
        with engine.connect() as conn:
            assert IncidentStore.get(conn, inc.id).status is Status.MITIGATING
    else:
        with pytest.raises(Conflict) as exc:
            move()
        expected = (
            "incident_already_resolved"
            if frm in (Status.RESOLVED, Status.EXPIRED)
            else "invalid_state"
        )
        assert exc.value.code == expected  # fmt: skip
        with engine.connect() as conn:
            assert IncidentStore.get(conn, inc.id).status is frm
            kinds = conn.execute(select(events.c.kind)).scalars().all()
        assert kinds == ["incident.opened"]


# ---------------------------------------------------------------- the lifecycle through the API


def lab_policy(**settings: Any) -> Policy:
    return Policy.model_validate(
        {
            "settings": {"cooldown_seconds": 0, "default_ttl": 600, **settings},
            "adapters": [{"name": "edge", "adapter_type": "fake"}],
            "escalation": {
                "hold_down_seconds": 5,
                "episode_timeout_seconds": 60,
                "tiers": [
                    {
                        "name": "tier1",
                        "bps": "100M",
                        "ttl": 600,
                        "intents": [{"type": "blackhole"}],
                        "adapters": ["edge"],
                    }
                ],
            },
        }
    )


class Api:
    def __init__(self, svc: Service, app: Any, clock: Clock) -> None:
        self.svc, self.app, self.clock = svc, app, clock
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://sluice"
        )

    @property
    def rt(self) -> Any:
        return self.app.state.runtime

    async def __call__(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return await self.http.request(method, "/api/v1" + path, headers=H, **kw)

    def fake(self) -> FakeAdapter:
        adapter = self.svc.hub.live(self.svc.hub.by_name("edge").id)
        assert isinstance(adapter, FakeAdapter)
        return adapter

    def count(self, table: Any) -> int:
        with self.svc.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.svc.events.after(0, 1000)]


async def make(tmp_path: Path, clock: Clock, policy: Policy, store_url: str | None) -> Api:
    settings = settings_for(tmp_path, admin_token=ADMIN, database_url=store_url)
    svc = Service(settings, policy=policy, clock=clock)
    app = create_app(svc, run_scheduler=False)
    await svc.start()
    bootstrap_token(svc, app.state.tokens)
    app.state.policy_doc.load()
    return Api(svc, app, clock)


@pytest.fixture
async def api(tmp_path: Path, store_url: str | None) -> AsyncIterator[Api]:
    a = await make(tmp_path, Clock(), lab_policy(), store_url)
    yield a
    a.rt.intake.cancel_timers()
    await a.svc.stop()


def attack(**kw: Any) -> dict[str, Any]:
    return {
        "target_ip": "203.0.113.20",
        "bps": "800M",
        "attack_family": "udp_flood",
        "severity": "high",
        **kw,
    }


async def hold_then_announce(api: Api, **kw: Any) -> dict[str, Any]:
    """One signal, held; the hold-down elapses on the clock; the rule is made."""
    r = await api("POST", "/incidents", json=attack(**kw))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["decision"]["status"] == "held"
    api.clock.advance(5)
    assert await api.rt.intake.recheck_held() == 1
    await api.svc.dispatcher.drain()
    return dict(body["incident"])


async def test_a_held_signal_is_evaluated_again_when_its_hold_down_elapses(api: Api) -> None:
    r = await api("POST", "/incidents", json=attack())
    d = r.json()["decision"]
    assert d["status"] == "held" and d["rules"] == []
    assert d["held_until"] == (T0 + timedelta(seconds=5)).isoformat()
    assert any("held until 12:00:05" in line for line in d["explanation"]), d["explanation"]
    iid = r.json()["incident"]["id"]
    assert r.json()["incident"]["status"] == "open"

    api.clock.advance(4.9)  # not yet
    assert await api.rt.intake.recheck_held() == 0
    api.clock.advance(0.1)
    assert await api.rt.intake.recheck_held() == 1
    assert await api.rt.intake.recheck_held() == 0  # once
    await api.svc.dispatcher.drain()

    inc = (await api("GET", f"/incidents/{iid}")).json()["incident"]
    assert inc["status"] == "mitigating" and inc["tier"] == "tier1"
    assert inc["signals"] == 1  # the re-evaluation is not a signal
    assert [d["status"] for d in inc["decisions"]] == ["held", "announce"]
    assert len(inc["live_rules"]) == 1
    assert len(api.fake().held) == 1


async def test_a_held_incident_resolved_before_its_hold_down_is_not_evaluated(api: Api) -> None:
    r = await api("POST", "/incidents", json=attack())
    iid = r.json()["incident"]["id"]
    assert (await api("POST", f"/incidents/{iid}/resolve")).status_code == 200
    api.clock.advance(10)
    assert await api.rt.intake.recheck_held() == 0
    assert api.count(rules) == 0


async def test_resolve_withdraws_and_twice_is_an_error(api: Api) -> None:
    inc = await hold_then_announce(api)
    assert len(api.fake().held) == 1
    r = await api("POST", f"/incidents/{inc['id']}/resolve")
    assert r.status_code == 200, r.text
    await api.svc.dispatcher.drain()
    got = r.json()["incident"]
    assert got["status"] == "resolved" and got["live_rules"] == []
    assert api.fake().held == {}
    assert api.svc.list_active()[1] == 0

    before = (api.count(events), api.count(rule_events))
    r = await api("POST", f"/incidents/{inc['id']}/resolve")
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "incident_already_resolved"
    assert (api.count(events), api.count(rule_events)) == before
    r = await api("POST", "/incidents/no-such-incident/resolve")
    assert r.status_code == 404 and r.json()["error"]["code"] == "incident_not_found"


async def test_resolve_can_leave_rules_to_their_ttl(tmp_path: Path, store_url: str | None) -> None:
    api = await make(tmp_path, Clock(), lab_policy(withdraw_on_resolve=False), store_url)
    try:
        inc = await hold_then_announce(api)
        r = await api("POST", f"/incidents/{inc['id']}/resolve")
        assert r.json()["incident"]["status"] == "resolved"
        assert len(r.json()["incident"]["live_rules"]) == 1
        assert len(api.fake().held) == 1
    finally:
        api.rt.intake.cancel_timers()
        await api.svc.stop()


async def test_after_resolve_the_next_signal_opens_a_new_incident_judged_afresh(api: Api) -> None:
    first = await hold_then_announce(api)
    await api("POST", f"/incidents/{first['id']}/resolve")
    api.clock.advance(1)
    r = await api("POST", "/incidents", json=attack())
    body = r.json()
    assert body["incident"]["id"] != first["id"]
    assert body["incident"]["status"] == "open" and body["incident"]["signals"] == 1
    # judged afresh: the attack state of the old incident is gone, so hold-down applies
    assert body["decision"]["status"] == "held"
    assert any("seen for 0 s" in line for line in body["decision"]["explanation"])


async def test_a_signal_naming_a_resolved_incident_is_refused(api: Api) -> None:
    inc = await hold_then_announce(api)
    await api("POST", f"/incidents/{inc['id']}/resolve")
    n = api.count(incidents)
    r = await api("POST", "/incidents", json=attack(incident_id=inc["id"]))
    assert r.status_code == 409 and r.json()["error"]["code"] == "incident_already_resolved"
    assert api.count(incidents) == n


async def test_the_episode_timeout_expires_the_incident_and_withdraws(api: Api) -> None:
    inc = await hold_then_announce(api)  # the last signal was 5 s ago
    api.clock.advance(54)
    assert await api.rt.intake.expire_quiet() == 0
    api.clock.advance(2)
    assert await api.rt.intake.expire_quiet() == 1
    await api.svc.dispatcher.drain()
    got = (await api("GET", f"/incidents/{inc['id']}")).json()["incident"]
    assert got["status"] == "expired" and got["live_rules"] == []
    assert api.fake().held == {}


async def test_rules_reference_their_incident_by_foreign_key(api: Api) -> None:
    inc = await hold_then_announce(api)
    with api.svc.engine.connect() as conn:
        assert conn.execute(select(rules.c.incident_id)).scalar() == inc["id"]
        fks = inspect(conn).get_foreign_keys("rules")
    assert {"referred_table": "incidents", "constrained_columns": ["incident_id"]}.items() <= {
        k: fk[k]
        for fk in fks
        for k in ("referred_table", "constrained_columns")
        if fk["referred_table"] == "incidents"
    }.items()


# ---------------------------------------------------------------- detectors


async def test_source_and_event_id_name_one_incident_and_unban_resolves(api: Api) -> None:
    ban = attack(source="fastnetmon", event_id="203.0.113.20-1")
    r1 = (await api("POST", "/incidents", json=ban)).json()
    details = {"attack_type": "udp_flood", "in_bps": 100_000_000}
    r2 = (await api("POST", "/incidents", json={**ban, "raw_details": details})).json()
    assert r1["incident"]["id"] == r2["incident"]["id"]
    assert r2["incident"]["signals"] == 2
    assert r2["incident"]["source"] == "fastnetmon"
    assert r2["incident"]["raw_details"] == details
    api.clock.advance(5)
    assert await api.rt.intake.recheck_held() == 1
    await api.svc.dispatcher.drain()
    assert len(api.fake().held) == 1

    r = await api(
        "POST",
        "/incidents",
        json={"action": "unban", "source": "fastnetmon", "event_id": "203.0.113.20-1"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["incident"]["status"] == "resolved"
    assert len(r.json()["withdrawn"]) == 1
    await api.svc.dispatcher.drain()
    assert api.fake().held == {}
    # the same unban again: the incident is already resolved
    r = await api(
        "POST",
        "/incidents",
        json={"action": "unban", "source": "fastnetmon", "event_id": "203.0.113.20-1"},
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "incident_already_resolved"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"action": "unban", "source": "fnm", "event_id": "nope"}, 404, "event_not_found"),
        ({"action": "unban", "source": "fnm"}, 422, "missing_parameter"),
        ({"action": "block", **attack()}, 422, "invalid_action"),
        ({**attack(), "source": "bad name!"}, 422, "invalid_source"),
        ({**attack(), "source": 7}, 422, "invalid_source"),
        ({**attack(), "source": "fnm", "event_id": "a" * 200}, 422, "invalid_event_id"),
        ({**attack(), "source": "fnm", "event_id": ["x"]}, 422, "invalid_event_id"),
        ({**attack(), "event_id": "x1"}, 422, "missing_parameter"),
        ({**attack(), "raw_details": "text"}, 422, "invalid_raw_details"),
        ({**attack(), "raw_details": {"x": "y" * 20_000}}, 422, "raw_details_too_large"),
        ({**attack(), "surprise": 1}, 422, "invalid_parameter"),
    ],
)
async def test_bad_detector_input_changes_nothing(
    api: Api, body: dict[str, Any], status: int, code: str
) -> None:
    before = (api.count(incidents), api.count(events))
    r = await api("POST", "/incidents", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert (api.count(incidents), api.count(events)) == before


async def test_alertmanager_firing_bans_and_resolved_unbans(api: Api) -> None:
    alert = {
        "status": "firing",
        "labels": {"alertname": "DDoS", "target_ip": "203.0.113.20", "severity": "critical"},
        "annotations": {"bps": "800000000"},
        "fingerprint": "a1b2c3d4",
    }
    other = {"status": "firing", "labels": {"alertname": "NoTarget"}, "fingerprint": "ffff"}
    hook = {"version": "4", "status": "firing", "alerts": [alert, other]}
    r = await api("POST", "/detectors/alertmanager", json=hook)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert res[0]["ok"] and res[0]["decision"] == "held"
    assert not res[1]["ok"] and res[1]["error"]["code"] == "missing_parameter"
    iid = res[0]["incident_id"]
    inc = (await api("GET", f"/incidents/{iid}")).json()["incident"]
    assert inc["source"] == "alertmanager" and inc["event_id"] == "a1b2c3d4"
    assert inc["severity"] == "critical" and inc["raw_details"]["labels"]["alertname"] == "DDoS"
    api.clock.advance(5)
    await api.rt.intake.recheck_held()
    await api.svc.dispatcher.drain()
    assert len(api.fake().held) == 1

    hook = {"version": "4", "status": "resolved", "alerts": [{**alert, "status": "resolved"}]}
    r = await api("POST", "/detectors/alertmanager", json=hook)
    assert r.json()["results"][0] == {
        "fingerprint": "a1b2c3d4",
        "action": "unban",
        "ok": True,
        "incident_id": iid,
    }
    await api.svc.dispatcher.drain()
    assert api.fake().held == {}
    r = await api("POST", "/detectors/alertmanager", json={"alerts": [{"status": "odd"}]})
    assert r.status_code == 422


# ---------------------------------------------------------------- events of a scenario


async def test_every_state_change_of_a_scenario_is_logged_once_in_order(api: Api) -> None:
    inc = await hold_then_announce(api)
    await api("POST", f"/incidents/{inc['id']}/resolve")
    await api.svc.dispatcher.drain()
    assert api.kinds() == [
        ev.Kind.INCIDENT_OPENED,
        ev.Kind.RULE_CREATED,
        ev.Kind.INCIDENT_ESCALATED,
        ev.Kind.RULE_ACTIVE,
        ev.Kind.INCIDENT_RESOLVED,
        ev.Kind.RULE_WITHDRAWING,
        ev.Kind.RULE_WITHDRAWN,
    ]
    page = (await api("GET", "/events", params={"after": 0, "limit": 3})).json()
    assert [e["kind"] for e in page["events"]] == api.kinds()[:3]
    ids = [e["id"] for e in api.svc.events.after(0, 100)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    rest = (await api("GET", "/events", params={"after": page["last_id"]})).json()
    assert [e["kind"] for e in rest["events"]] == api.kinds()[3:]
    assert all(e["incident_id"] == inc["id"] for e in page["events"] + rest["events"])
    r = await api("GET", "/events", params={"limit": 0})
    assert r.status_code == 422


async def test_a_signal_after_the_episode_timeout_opens_a_new_incident(api: Api) -> None:
    """Before the expiry job ran: the quiet incident expires in the signal's transaction."""
    old = await hold_then_announce(api)
    api.clock.advance(61)
    r = (await api("POST", "/incidents", json=attack())).json()
    assert r["incident"]["id"] != old["id"]
    assert r["decision"]["status"] == "held"
    await api.svc.dispatcher.drain()
    got = (await api("GET", f"/incidents/{old['id']}")).json()["incident"]
    assert got["status"] == "expired" and got["live_rules"] == []
    assert api.fake().held == {}
    api.clock.advance(5)
    assert await api.rt.intake.recheck_held() == 1
    await api.svc.dispatcher.drain()
    assert len(api.fake().held) == 1
    with api.svc.engine.connect() as conn:
        live = conn.execute(
            select(rules.c.incident_id).where(rules.c.state == State.ACTIVE)
        ).scalars()
        assert list(live) == [r["incident"]["id"]]


async def test_without_the_http_api_rules_still_expire_and_held_signals_still_act(
    tmp_path: Path,
) -> None:
    """Core wires the service, the runtime and the periodic jobs; no app is involved."""
    svc = Service(settings_for(tmp_path, expiry_interval=0.05), policy=lab_policy(), clock=Clock())
    async with Core(svc) as core:
        assert core.scheduler is not None
        assert {"expire", "retry", "reconcile", "hold-down", "incident-expiry"} <= {
            job.id for job in core.scheduler.get_jobs()
        }
        clock = svc.clock
        assert isinstance(clock, Clock)
        res = await core.runtime.handle(Signal.model_validate(attack()), actor="test")
        assert res["decision"]["status"] == "held"
        clock.advance(5)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while svc.list_active()[1] == 0:  # the hold-down job (every second) acts alone
            assert loop.time() < deadline, "the held signal was never evaluated again"
            await asyncio.sleep(0.05)
        clock.advance(601)  # past the rule's TTL: the expiry job withdraws it
        while svc.state_counts().get("expired", 0) == 0:
            assert loop.time() < deadline + 20, f"not expired: {svc.state_counts()}"
            await asyncio.sleep(0.05)
    assert not svc.started


async def test_session_changes_dry_run_rules_and_policy_reloads_are_logged(
    tmp_path: Path,
) -> None:
    pdir = tmp_path / "policy"
    pdir.mkdir()
    (pdir / "settings.yaml").write_text("settings:\n  cooldown_seconds: 0\n")
    svc = Service(settings_for(tmp_path, policy_dir=pdir), clock=Clock())
    async with Core(svc, run_scheduler=False) as core:
        rec, _ = await svc.upsert_adapter(
            AdapterConfig(
                name="spk", adapter_type="fake", config={"sessions": {"192.0.2.2": "established"}}
            ),
            adapter_id=None,
            actor="test",
        )
        fake = svc.hub.live(rec["id"])
        assert isinstance(fake, FakeAdapter)
        await svc.test_adapter(rec["id"])
        fake.sessions["192.0.2.2"] = "Active"
        await svc.test_adapter(rec["id"])
        await svc.test_adapter(rec["id"])  # no change: no event

        dry = build_intent({"kind": "blackhole", "prefix": "203.0.113.9"})
        made = await svc.create_rule(RuleRequest(dry, rec["id"], ttl=0, dry_run=True))

        (pdir / "settings.yaml").write_text("settings:\n  cooldown_seconds: 5\n")
        assert (await core.runtime.reload()) is not None
        logged = svc.events.after(0, 100)
    assert [(e["kind"], e["adapter_id"], e["rule_id"]) for e in logged] == [
        ("adapter.session_up", rec["id"], None),
        ("adapter.session_down", rec["id"], None),
        ("rule.created", rec["id"], made.rule["id"]),
        ("rule.active", rec["id"], made.rule["id"]),
        ("policy.reloaded", None, None),
    ]
    assert logged[1]["detail"] == {"peer": "192.0.2.2", "state": "active"}


async def test_a_policy_change_through_the_api_is_logged(api: Api) -> None:
    r = await api("PUT", "/mitigation/escalation-policy", json={"escalation": {"hysteresis": 0.3}})
    assert r.status_code == 200, r.text
    assert api.kinds()[-1] == "policy.reloaded"
    assert api.svc.events.after(0, 100)[-1]["detail"]["by"] == "admin"
