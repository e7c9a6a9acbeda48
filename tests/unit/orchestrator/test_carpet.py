"""Carpet bombing through the service API, as a detector drives it (SQLite and PostgreSQL).

Signals go to ``POST /api/v1/incidents`` concurrently; the service's clock is injected
(the attack window and TTLs move only when a test moves it); waits are on conditions
with deadlines, never on time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.fake import FakeAdapter
from orchestrator.api.app import bootstrap_token, create_app
from orchestrator.service import Service
from orchestrator.settings import Settings
from policies.errors import PolicyInvalid
from policies.schema import load_policy
from tests.unit.orchestrator.conftest import settings_for

# signal intake into stored rules: these run on SQLite and on PostgreSQL
pytestmark = pytest.mark.postgresql

ADMIN = "c" * 64
H = {"Authorization": f"Bearer {ADMIN}"}

ADAPTERS = "adapters:\n  - name: edge\n    adapter_type: fake\n"
ESCALATION = """
escalation:
  episode_timeout_seconds: 120
  tiers:
    - name: tier1
      bps: 100M
      ttl: 300
      intents: [{type: blackhole}]
      adapters: [edge]
"""
CARPET = """
carpet_bombing:
  window_seconds: 10
  min_targets: 32
  prefix_lengths: {ipv4: [24], ipv6: [64]}
  min_prefix_length: {ipv4: 24, ipv6: 48}
  tier: tier1
"""


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Sluice:
    def __init__(self, app: Any, svc: Service, clock: Clock) -> None:
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://sluice"
        )
        self.app = app
        self.svc = svc
        self.clock = clock

    async def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return await self.http.request(method, "/api/v1" + path, headers=H, **kw)

    async def signals(self, targets: list[str]) -> list[dict[str, Any]]:
        answers = await asyncio.gather(
            *(self.call("POST", "/incidents", json=signal(t)) for t in targets)
        )
        for a in answers:
            assert a.status_code == 200, a.text
        return [a.json() for a in answers]

    def fake(self) -> FakeAdapter:
        adapter = self.svc.hub.live(self.svc.hub.by_name("edge").id)
        assert isinstance(adapter, FakeAdapter)
        return adapter

    def live_targets(self) -> list[str]:
        return sorted(r["target_ip"] for r in self.svc.list_active(limit=5000)[0])

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after = 0
        while True:
            page = self.svc.events.after(after, 1000)
            if not page:
                return [e for e in out if kind is None or e["kind"] == kind]
            out += page
            after = page[-1]["id"]

    async def incidents(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            r = await self.call("GET", "/incidents", params={"limit": 100, "offset": len(found)})
            assert r.status_code == 200, r.text
            page = r.json()["incidents"]
            if not page:
                return found
            found += page

    async def wait_until(self, what: str, cond: Callable[[], bool], seconds: float = 60) -> None:
        """Wait for ``cond`` (the dispatcher and the supersede watch run meanwhile)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not cond():
            if loop.time() > deadline:
                raise AssertionError(f"not within {seconds} s: {what}")
            await asyncio.sleep(0.02)


def signal(target: str, **kw: Any) -> dict[str, Any]:
    return {
        "target_ip": target,
        "bps": "800M",
        "pps": 90000,
        "attack_family": "udp_flood",
        "severity": "high",
        "top_source_ports": [123],
        "udp_pct": 97,
        **kw,
    }


def hosts(prefix: str, first: int, count: int) -> list[str]:
    return [f"{prefix}.{i}" for i in range(first, first + count)]


def write_policy(pdir: Path, *extra: str, carpet: str = CARPET) -> Path:
    pdir.mkdir(exist_ok=True)
    (pdir / "adapters.yaml").write_text(ADAPTERS)
    (pdir / "escalation.yaml").write_text(ESCALATION)
    (pdir / "carpet.yaml").write_text(carpet)
    for i, text in enumerate(extra):
        (pdir / f"extra{i}.yaml").write_text(text)
    return pdir


async def boot(settings: Settings, clock: Clock) -> Sluice:
    """A service with its API in-process, started the way ``sluice serve`` starts it."""
    svc = Service(settings, clock=clock)
    app = create_app(svc, run_scheduler=False)
    await svc.start()
    bootstrap_token(svc, app.state.tokens)
    app.state.runtime.load_state()
    app.state.policy_doc.load()
    return Sluice(app, svc, clock)


async def stop(s: Sluice) -> None:
    s.app.state.runtime.intake.cancel_timers()
    await s.http.aclose()
    s.app.state.limiter.close()  # the app's lifespan does it under a server
    s.app.state.agent_limiter.close()
    if s.svc.started:
        await s.svc.stop()
        s.svc.started = False


@pytest.fixture
async def sluice_at(tmp_path: Path, store_url: str | None) -> AsyncIterator[Callable[..., Any]]:
    started: list[Sluice] = []

    async def make(*extra: str, carpet: str = CARPET) -> Sluice:
        pdir = write_policy(tmp_path / "policy", *extra, carpet=carpet)
        settings = settings_for(
            tmp_path,
            admin_token=ADMIN,
            policy_dir=pdir,
            database_url=store_url,
            rate_limit_per_minute=100_000,
        )
        s = await boot(settings, Clock())
        started.append(s)
        return s

    yield make
    for s in started:
        await stop(s)


# ---------------------------------------------------------------- one covering rule


async def test_500_signals_in_one_24_give_one_covering_rule(sluice_at: Any) -> None:
    s: Sluice = await sluice_at()
    # 500 signals over 250 hosts of one /24, all within the same second (the clock stands)
    targets = [f"198.51.100.{i % 250 + 1}" for i in range(500)]
    answers = await s.signals(targets)

    found = [i for i in await s.incidents() if i["target_ip"] == "198.51.100.0/24"]
    assert len(found) == 1, found
    cover = found[0]
    assert cover["status"] == "mitigating" and cover["tier"] == "tier1"
    details = cover["raw_details"]["carpet_bombing"]
    assert details["prefix"] == "198.51.100.0/24" and details["attacked"] == 32
    assert details["collateral"] == 256 - 32 and details["window_seconds"] == 10
    # the first 32 distinct targets (in the order the intake took them) got their /32
    # before the picture was complete; every later signal inside the /24 attached to the
    # covering incident
    announced = [a for a in answers if a["decision"]["status"] == "announce"]
    assert sorted(a["incident"]["target_ip"] for a in announced) == sorted(details["targets"])
    assert len({a["incident"]["target_ip"] for a in announced}) == 32
    covered = [a for a in answers if a["decision"]["status"] == "covered"]
    assert len(covered) == 500 - 32
    assert {a["incident"]["id"] for a in covered} == {cover["id"]}
    assert all(a["decision"]["rules"] == [] for a in covered)
    triggers = [
        a
        for a in announced
        if any(f"covering incident {cover['id']}" in x for x in a["decision"]["explanation"])
    ]
    assert len(triggers) == 1

    detail = (await s.call("GET", f"/incidents/{cover['id']}")).json()["incident"]
    assert detail["signals"] == 500 - 31
    first = detail["decisions"][0]
    assert first["status"] == "announce"
    why = "\n".join(first["explanation"])
    assert "32 targets in 198.51.100.0/24 attacked within 10 s" in why
    assert "collateral: 224 of 256 addresses (87.5%)" in why
    assert [r["intent"] for r in first["rules"]] == [
        "blackhole 198.51.100.0/24; community 65535:666"
    ]
    covering_id = first["rules"][0]["rule_id"]

    # once the covering rule is active, the 32 /32s are withdrawn: one rule left
    await s.wait_until(
        "only the covering rule is live", lambda: s.live_targets() == ["198.51.100.0/24"]
    )
    await s.svc.dispatcher.drain()
    assert list(s.fake().held) == [s.svc.get_rule(covering_id)["key"]]
    # on the wire: the covering announce before any /32 withdrawal (never a gap)
    calls = s.fake().calls
    announce_at = next(i for i, c in enumerate(calls) if c.rule_id == covering_id)
    withdrawals = [i for i, c in enumerate(calls) if c.op == "withdraw"]
    assert len(withdrawals) == 32 and min(withdrawals) > announce_at
    assert sum(1 for c in calls if c.op == "announce") == 33

    # the event log says why
    agg = s.events("incident.aggregated")
    assert len(agg) == 1 and agg[0]["incident_id"] == cover["id"]
    assert agg[0]["detail"]["collateral"] == 224 and agg[0]["detail"]["attacked"] == 32
    gone = [e for e in s.events("rule.withdrawing") if e["rule_id"] != covering_id]
    assert len(gone) == 32
    assert all(f"superseded by covering rule {covering_id}" in str(e["detail"]) for e in gone)


async def test_later_signals_refresh_and_the_covering_rule_expires_like_any(
    sluice_at: Any,
) -> None:
    s: Sluice = await sluice_at()
    await s.signals(hosts("198.51.100", 1, 40))
    await s.wait_until("superseded", lambda: s.live_targets() == ["198.51.100.0/24"])
    cover = next(i for i in await s.incidents() if i["target_ip"] == "198.51.100.0/24")

    # past the covering rule's TTL (300 s): it expires like any rule
    s.clock.advance(301)
    assert await s.svc.expire_due() == 1
    await s.wait_until("expired", lambda: s.live_targets() == [])
    # the attack goes on: the next signal inside asks for the covering rule again
    # (no /32 comes back)
    again = (await s.signals(["198.51.100.77"]))[0]
    assert again["incident"]["id"] == cover["id"]
    assert again["decision"]["status"] == "refresh"
    assert [r["intent"] for r in again["decision"]["rules"]] == [
        "blackhole 198.51.100.0/24; community 65535:666"
    ]
    await s.wait_until("asked again", lambda: s.live_targets() == ["198.51.100.0/24"])

    # signals stop: the covering incident expires after the episode timeout, and its rule
    # is withdrawn with it
    s.clock.advance(121)
    await s.app.state.runtime.intake.expire_quiet()
    await s.wait_until("all withdrawn", lambda: s.live_targets() == [])
    ended = next(i for i in await s.incidents() if i["id"] == cover["id"])
    assert ended["status"] == "expired"


# ---------------------------------------------------------------- guardrails


ALLOWLISTED = """
allowlist:
  - ip_address: 198.51.100.53
    label: resolver
"""
PROTECTED = """
guardrails:
  protected_prefixes: [203.0.113.240/28]
"""


async def test_no_covering_rule_over_allowlisted_or_protected_space(sluice_at: Any) -> None:
    s: Sluice = await sluice_at(ALLOWLISTED, PROTECTED)
    # 500 signals: 250 in a /24 holding an allowlisted address, 250 in one holding a
    # protected /28 (the targets themselves are outside both)
    a = [f"198.51.100.{i % 50 + 1}" for i in range(250)]
    b = [f"203.0.113.{i % 50 + 1}" for i in range(250)]
    answers = await s.signals([x for pair in zip(a, b, strict=True) for x in pair])
    assert not [i for i in await s.incidents() if "/" in i["target_ip"]]
    assert s.events("incident.aggregated") == []
    # the /32s stay: one per distinct target
    await s.svc.dispatcher.drain()
    live = s.live_targets()
    assert len(live) == 100 and all(t.endswith("/32") for t in live)
    lines = [line for x in answers for line in x["decision"]["explanation"]]
    assert any(
        "no covering rule: it contains allowlisted 198.51.100.53/32" in line for line in lines
    )
    assert any(
        "no covering rule: it overlaps protected prefix 203.0.113.240/28" in line for line in lines
    )


WIDE = """
carpet_bombing:
  window_seconds: 10
  min_targets: 16
  prefix_lengths: {ipv4: [24, 26]}
  min_prefix_length: {ipv4: 24, ipv6: 48}
  tier: tier1
"""


async def test_covering_rules_never_wider_than_min_prefix_length(sluice_at: Any) -> None:
    s: Sluice = await sluice_at(carpet=WIDE)
    # a /22 carpet-bombed: 20 hosts in each of its four /24s
    targets = [f"10.20.{n}.{h}" for h in range(1, 21) for n in (4, 5, 6, 7)]
    await s.signals(targets)
    covers = sorted(i["target_ip"] for i in await s.incidents() if "/" in i["target_ip"])
    assert covers == ["10.20.4.0/24", "10.20.5.0/24", "10.20.6.0/24", "10.20.7.0/24"]
    await s.wait_until("only the four /24s", lambda: s.live_targets() == covers)


async def test_the_widest_candidate_that_passes_wins_and_narrower_ones_fill_in(
    sluice_at: Any,
) -> None:
    # the /24 holds an allowlisted address: the /26 that does not is covered instead
    s: Sluice = await sluice_at("allowlist:\n  - ip_address: 10.30.0.200\n", carpet=WIDE)
    await s.signals(hosts("10.30.0", 1, 20))
    covers = [i["target_ip"] for i in await s.incidents() if "/" in i["target_ip"]]
    assert covers == ["10.30.0.0/26"]
    await s.wait_until("the /26", lambda: s.live_targets() == ["10.30.0.0/26"])


# ---------------------------------------------------------------- threshold and window


async def test_below_the_threshold_nothing_aggregates(sluice_at: Any) -> None:
    s: Sluice = await sluice_at()
    # 31 distinct targets (one short of min_targets), many signals each
    answers = await s.signals([f"198.51.100.{i % 31 + 1}" for i in range(310)])
    assert not [i for i in await s.incidents() if "/" in i["target_ip"]]
    assert not any(a["decision"]["status"] == "covered" for a in answers)
    await s.svc.dispatcher.drain()
    assert s.live_targets() == sorted(f"198.51.100.{i}/32" for i in range(1, 32))


async def test_targets_outside_the_window_do_not_count(sluice_at: Any) -> None:
    s: Sluice = await sluice_at()
    await s.signals(hosts("198.51.100", 1, 20))
    s.clock.advance(11)  # the window is 10 s: those 20 are too old now
    await s.signals(hosts("198.51.100", 21, 20))
    assert not [i for i in await s.incidents() if "/" in i["target_ip"]]
    # still attacked: signals for the first 20 again, within the window of the second 20
    s.clock.advance(5)
    await s.signals(hosts("198.51.100", 1, 11))
    assert not [i for i in await s.incidents() if "/" in i["target_ip"]]  # 31 in the window
    await s.signals(["198.51.100.12"])
    covers = [i for i in await s.incidents() if "/" in i["target_ip"]]
    assert len(covers) == 1
    assert covers[0]["raw_details"]["carpet_bombing"]["attacked"] == 32


async def test_dry_run_is_respected(sluice_at: Any) -> None:
    s: Sluice = await sluice_at("settings:\n  dry_run: true\n")
    answers = await s.signals(hosts("198.51.100", 1, 40))
    assert all(a["decision"]["dry_run"] for a in answers)
    await s.wait_until("superseded", lambda: s.live_targets() == ["198.51.100.0/24"])
    rule = s.svc.list_active()[0][0]
    assert rule["dry_run"] is True
    assert s.fake().calls == []  # nothing reached the adapter


# ---------------------------------------------------------------- the policy files


def _lint(tmp_path: Path, carpet: str, *extra: str) -> PolicyInvalid:
    pdir = write_policy(tmp_path / "p", *extra, carpet=carpet)
    with pytest.raises(PolicyInvalid) as info:
        load_policy(pdir)
    return info.value


@pytest.mark.parametrize(
    ("carpet", "field", "message"),
    [
        (
            "carpet_bombing:\n  tier: tier1\n",
            "carpet_bombing",
            "set min_targets",
        ),
        (
            "carpet_bombing:\n  min_targets: 8\n",
            "carpet_bombing",
            "name the covering rule's tier",
        ),
        (
            "carpet_bombing:\n  min_targets: 8\n  tier: tier9\n",
            "carpet_bombing.tier",
            "unknown tier 'tier9' (tiers: tier1)",
        ),
        (
            "carpet_bombing:\n  min_targets: 8\n  tier: tier1\n  adapters: [core]\n",
            "carpet_bombing.adapters.0",
            "adapter 'core' is not declared",
        ),
        (
            "carpet_bombing:\n  min_targets: 8\n  tier: tier1\n  prefix_lengths: {ipv4: [22]}\n",
            "carpet_bombing",
            "/22 is wider than min_prefix_length /24",
        ),
        (
            "carpet_bombing:\n  min_targets: 8\n  tier: tier1\n"
            "  prefix_lengths: {ipv4: [20]}\n  min_prefix_length: {ipv4: 20, ipv6: 48}\n",
            "carpet_bombing.min_prefix_length.ipv4",
            "/20 is wider than guardrails.min_prefix_blackhole.ipv4 /24",
        ),
        (
            "carpet_bombing:\n  min_targets: 300\n  tier: tier1\n",
            "carpet_bombing",
            "min_targets 300 can never be reached in a /24 (256 addresses)",
        ),
        (
            "carpet_bombing:\n  min_share: 1.5\n  tier: tier1\n",
            "carpet_bombing.min_share",
            "less than or equal to 1",
        ),
        (
            "carpet_bombing:\n  min_targets: 8\n  tier: tier1\n  window_seconds: 0\n",
            "carpet_bombing.window_seconds",
            "greater than or equal to 1",
        ),
        (
            "carpet_bombing:\n  min_targets: 8\n  intents: [{type: blackhole}]\n",
            "carpet_bombing",
            "adapters: name the adapters",
        ),
        (
            "carpet_bombing:\n  min_targets: 8\n  adapters: [edge]\n"
            "  intents: [{type: blackhole, prefix_length_v4: 24}]\n",
            "carpet_bombing",
            "per_source and prefix_length_v4/v6 do not apply",
        ),
        (
            "carpet_bombing:\n  min_targets: 8\n  tier: tier1\n  window: 10\n",
            "carpet_bombing.window",
            "Extra inputs are not permitted",
        ),
    ],
)
def test_policy_errors_name_the_field_and_line(
    tmp_path: Path, carpet: str, field: str, message: str
) -> None:
    err = _lint(tmp_path, carpet)
    assert err.field == field, err
    assert message in err.message, err.message
    assert err.location is not None and "carpet.yaml:" in err.location, err.location


def test_example_policy_documents_carpet_bombing() -> None:
    root = Path(__file__).resolve().parents[3] / "policies" / "examples" / "default"
    policy = load_policy(root)
    cb = policy.carpet_bombing
    assert cb is not None and cb.min_prefix_length.ipv4 == 24


# ---------------------------------------------------------------- the policy API


async def test_policy_api_sets_validates_and_refuses_carpet_bombing(
    tmp_path: Path, store_url: str | None
) -> None:
    clock = Clock()
    settings = settings_for(
        tmp_path, admin_token=ADMIN, database_url=store_url, rate_limit_per_minute=100_000
    )
    s = await boot(settings, clock)
    svc = s.svc
    try:
        r = await s.call(
            "POST", "/mitigation/adapters", json={"adapter_type": "fake", "name": "edge"}
        )
        assert r.status_code == 201, r.text
        tiers = [
            {
                "name": "tier1",
                "bps": "100M",
                "intents": [{"type": "blackhole"}],
                "adapters": ["edge"],
            }
        ]
        r = await s.call("PUT", "/mitigation/escalation-policy", json={"tiers": tiers})
        assert r.status_code == 200, r.text
        # a bad section changes nothing and names the field
        bad = {"min_targets": 8, "tier": "tier7"}
        r = await s.call("PUT", "/mitigation/escalation-policy", json={"carpet_bombing": bad})
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["field"] == "carpet_bombing.tier" and "tier7" in err["message"]
        assert svc.policy.carpet_bombing is None
        bad = {"min_targets": 8, "tier": "tier1", "prefix_lengths": {"ipv4": [16]}}
        r = await s.call("PUT", "/mitigation/escalation-policy", json={"carpet_bombing": bad})
        assert r.status_code == 422 and "/16 is wider than" in r.json()["error"]["message"]
        good = {"min_targets": 16, "tier": "tier1", "window_seconds": 5}
        r = await s.call("PUT", "/mitigation/escalation-policy", json={"carpet_bombing": good})
        assert r.status_code == 200, r.text
        view = r.json()["policy"]
        assert view["carpet_bombing"]["min_targets"] == 16
        assert view["managed_by_field"]["carpet_bombing"] == "api"
        # in force: 16 targets of a /24 give one covering rule
        await s.signals(hosts("192.0.2", 1, 16))
        await s.wait_until("covered", lambda: s.live_targets() == ["192.0.2.0/24"])
        # the export writes it out, to commit into the policy files
        r = await s.call("GET", "/policy/export")
        assert r.status_code == 200 and "carpet_bombing" in r.text
        # null removes it
        r = await s.call("PUT", "/mitigation/escalation-policy", json={"carpet_bombing": None})
        assert r.status_code == 200 and r.json()["policy"]["carpet_bombing"] is None
    finally:
        await stop(s)


async def test_policy_api_refuses_a_section_the_files_declare(sluice_at: Any) -> None:
    s: Sluice = await sluice_at()
    r = await s.call(
        "PUT", "/mitigation/escalation-policy", json={"carpet_bombing": {"min_targets": 4}}
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "read_only"
    assert s.svc.policy.carpet_bombing is not None
    assert s.svc.policy.carpet_bombing.min_targets == 32


async def test_an_allowlist_change_inside_a_covering_prefix_ends_it(
    sluice_at: Any, tmp_path: Path
) -> None:
    s: Sluice = await sluice_at()
    await s.signals(hosts("198.51.100", 1, 32))
    await s.wait_until("covered", lambda: s.live_targets() == ["198.51.100.0/24"])
    cover = next(i for i in await s.incidents() if i["target_ip"] == "198.51.100.0/24")
    # an explicit incident id inside the prefix keeps its incident and forms no second cover
    mine = next(i for i in await s.incidents() if i["target_ip"] == "198.51.100.3")
    r = await s.call(
        "POST", "/incidents", json={**signal("198.51.100.3"), "incident_id": mine["id"]}
    )
    assert r.status_code == 200 and r.json()["incident"]["id"] == mine["id"]
    assert r.json()["decision"]["rules"] == []  # no /32 inside a cover
    assert len([i for i in await s.incidents() if "/" in i["target_ip"]]) == 1

    (tmp_path / "policy" / "allow.yaml").write_text("allowlist:\n  - ip_address: 198.51.100.200\n")
    status = await s.app.state.runtime.reload()
    assert status is not None and status.ok, status
    await s.app.state.runtime.intake.carpet.supersede_due()  # the periodic job
    ended = next(i for i in await s.incidents() if i["id"] == cover["id"])
    assert ended["status"] == "resolved" and ended["resolved_by"] == "system:carpet-bombing"
    await s.wait_until("cover withdrawn", lambda: "198.51.100.0/24" not in s.live_targets())
    # the targets inside are judged one by one again
    again = (await s.signals(["198.51.100.9"]))[0]
    assert again["decision"]["status"] == "announce"
    assert again["decision"]["rules"][0]["intent"].startswith("blackhole 198.51.100.9/32")


async def test_the_hold_down_holds_for_the_prefix_and_rechecks_form_the_cover(
    sluice_at: Any,
) -> None:
    s: Sluice = await sluice_at()
    # the escalation file of this test's policy holds down for 5 s
    pdir = s.svc.settings.policy_dir
    assert pdir is not None
    (pdir / "escalation.yaml").write_text(
        ESCALATION.replace(
            "episode_timeout_seconds: 120", "episode_timeout_seconds: 120\n  hold_down_seconds: 5"
        )
    )
    status = await s.app.state.runtime.reload()
    assert status is not None and status.ok, status
    answers = await s.signals(hosts("198.51.100", 1, 40))
    assert {a["decision"]["status"] for a in answers} == {"held"}
    assert not [i for i in await s.incidents() if "/" in i["target_ip"]]
    assert any(
        "no covering rule yet: hold-down" in x
        for a in answers
        for x in a["decision"]["explanation"]
    )
    # past the hold-down, the incidents are evaluated again: the first completes the
    # prefix, the others are covered (never a /32 after the cover)
    s.app.state.runtime.intake.cancel_timers()
    s.clock.advance(5)
    assert await s.app.state.runtime.intake.recheck_held() == 40
    covers = [i for i in await s.incidents() if "/" in i["target_ip"]]
    assert [c["target_ip"] for c in covers] == ["198.51.100.0/24"]
    await s.wait_until("covered", lambda: s.live_targets() == ["198.51.100.0/24"])
    created = s.events("rule.created")
    assert len(created) == 2, created  # the first target's /32 and the covering /24
