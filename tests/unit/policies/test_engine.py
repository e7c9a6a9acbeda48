"""Scenario tests: signal sequences in, decisions out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from policies.engine import Decision, evaluate
from policies.intents import BlackholeIntent, FlowSpecIntent, RateLimit, ScrubbingIntent, canonical
from policies.schema import Policy
from policies.state import EngineState
from tests.unit.policies.helpers import make_policy, sig


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    return make_policy(tmp_path)


def run(policy: Policy, steps: list[tuple[float, dict[str, Any]]]) -> list[Decision]:
    state = EngineState()
    return [evaluate(sig(**kw), policy, state, t) for t, kw in steps]


def texts(d: Decision) -> list[str]:
    return [canonical(r.intent) for r in d.rules]


@pytest.mark.parametrize(
    ("bps", "tier", "kind"),
    [
        (150e6, "tier1", "rate-limit"),
        (600e6, "tier2", "discard"),
        (3e9, "tier3", "blackhole"),
        (9e9, "tier4", "scrubbing"),
    ],
)
def test_each_tier(policy: Policy, bps: float, tier: str, kind: str) -> None:
    (d,) = run(policy, [(0, {"bps": bps, "attack_family": "udp_flood", "top_source_ports": [123]})])
    assert d.status == "announce"
    assert d.tier == tier
    assert len(d.rules) == 1
    rule = d.rules[0]
    assert rule.adapter == "log"
    assert rule.ttl == 300
    intent = rule.intent
    if kind == "blackhole":
        assert isinstance(intent, BlackholeIntent)
        assert str(intent.prefix) == "192.0.2.10/32"
        assert intent.communities == ("65535:666",)
    elif kind == "scrubbing":
        assert isinstance(intent, ScrubbingIntent)
        assert str(intent.prefix) == "192.0.2.0/24"
    else:
        assert isinstance(intent, FlowSpecIntent)
        assert str(intent.destination) == "192.0.2.10/32"
        assert intent.protocol is not None and 17 in intent.protocol
        assert intent.source_port is not None and intent.source_port.ranges == ((123, 123),)
        assert str(intent.action).startswith(kind)
        if kind == "rate-limit":
            assert isinstance(intent.action, RateLimit)
            assert intent.action.bytes_per_second == 10e6 / 8
    assert any(f"tier {tier}:" in line for line in d.explanation)


def test_below_every_tier(policy: Policy) -> None:
    (d,) = run(policy, [(0, {"bps": 5e6})])
    assert d.status == "below" and d.rules == () and d.tier is None
    assert "below every tier" in d.explanation[-1]


def test_pps_threshold_alone_selects_a_tier(tmp_path: Path) -> None:
    policy = make_policy(
        tmp_path,
        escalation={
            "tiers": [
                {
                    "name": "t1",
                    "pps": "100k",
                    "intents": [{"type": "flowspec_drop"}],
                    "adapters": ["log"],
                },
                {
                    "name": "t2",
                    "bps": "1G",
                    "pps": "1M",
                    "intents": [{"type": "blackhole"}],
                    "adapters": ["log"],
                },
            ]
        },
    )
    (d,) = run(policy, [(0, {"bps": 1e6, "pps": 2e6, "attack_family": "icmp_flood"})])
    assert d.tier == "t2"
    assert "2 Mpps >= 1 Mpps" in " ".join(d.explanation)


@pytest.mark.parametrize(
    ("signal", "expected"),
    [
        ({"attack_family": "udp_flood", "top_source_ports": [53, 40000]}, "proto =17; sport =53"),
        ({"attack_family": "udp_flood", "top_source_ports": [11211]}, "sport =11211"),
        ({"attack_family": "udp_flood", "top_source_ports": [1900]}, "sport =1900"),
        ({"attack_family": "udp_flood", "top_source_ports": [19]}, "sport =19"),
        ({"attack_family": "syn_flood"}, "proto =6; tcp-flags syn&!ack"),
        (
            {"attack_family": "syn_flood", "top_destination_ports": [443]},
            "dport =443; tcp-flags syn&!ack",
        ),
        ({"attack_family": "icmp_flood"}, "proto =1"),
        ({"attack_family": "icmp_flood", "target": "2001:db8::5"}, "proto =58"),
        (
            {"attack_family": "udp_flood", "top_destination_ports": [27015]},
            "proto =17; dport =27015",
        ),
        ({"attack_family": "http_flood"}, "proto =6; dport =80 =443"),
        ({"attack_family": "dns_flood"}, "proto =17; dport =53"),
        ({"attack_family": "unknown", "udp_pct": 95, "tcp_pct": 5}, "proto =17"),
    ],
)
def test_signature_becomes_the_flowspec_match(
    policy: Policy, signal: dict[str, Any], expected: str
) -> None:
    (d,) = run(policy, [(0, {"bps": 600e6, **signal})])
    (text,) = texts(d)
    host = signal.get("target", "192.0.2.10")
    assert text.startswith(f"flowspec dst {host}/{128 if ':' in host else 32}; ")
    assert expected in text


def test_unknown_attack_without_breakdown_matches_the_host_only(policy: Policy) -> None:
    (d,) = run(policy, [(0, {"bps": 600e6})])
    assert texts(d) == ["flowspec dst 192.0.2.10/32; then discard"]


def test_escalation_withdraws_the_lower_tier(policy: Policy) -> None:
    udp = {"attack_family": "udp_flood", "top_source_ports": [123]}
    a, b, c = run(
        policy, [(0, {"bps": 150e6, **udp}), (5, {"bps": 700e6, **udp}), (9, {"bps": 3e9, **udp})]
    )
    assert (a.status, b.status, c.status) == ("announce", "escalate", "escalate")
    assert b.withdraw == (a.rules[0].key,)
    assert c.withdraw == (b.rules[0].key,)
    assert "(up from tier2)" in " ".join(c.explanation)


def test_more_traffic_of_the_same_tier_is_steady(policy: Policy) -> None:
    decisions = run(policy, [(0, {"bps": 150e6}), (10, {"bps": 300e6}), (20, {"bps": 120e6})])
    assert [d.status for d in decisions] == ["announce", "steady", "steady"]
    assert decisions[1].rules == () and decisions[1].withdraw == ()


def test_rules_are_refreshed_before_their_ttl_runs_out(policy: Policy) -> None:
    times = [0, 60, 120, 180, 240, 275, 300]
    decisions = run(policy, [(t, {"bps": 150e6}) for t in times])
    statuses = [d.status for d in decisions]
    assert statuses == ["announce", "steady", "steady", "steady", "steady", "refresh", "steady"]
    assert texts(decisions[5]) == texts(decisions[0])
    assert decisions[5].withdraw == ()


# ---------------------------------------------------------------- overrides


def test_per_host_override_by_longest_prefix(tmp_path: Path) -> None:
    policy = make_policy(
        tmp_path,
        thresholds=[
            {
                "target_ip": "198.51.100.0/24",
                "label": "web",
                "thresholds": {"tier1_bps": "1G", "tier2_bps": "1500M"},
            },
            {"target_ip": "198.51.100.10", "label": "payments", "thresholds": {"tier1_bps": "20M"}},
            {
                "target_ip": "2001:db8:aa::/48",
                "label": "v6 web",
                "thresholds": {"tier1_bps": "1G", "tier2_bps": "1500M"},
            },
        ],
    )
    state = EngineState()
    web = evaluate(sig("198.51.100.9", 600e6), policy, state, 0)
    assert web.status == "below"
    assert "per-host thresholds 198.51.100.0/24 ('web') apply" in web.explanation
    pay = evaluate(sig("198.51.100.10", 30e6), policy, state, 0)
    assert pay.tier == "tier1"
    assert "per-host thresholds 198.51.100.10/32 ('payments') apply" in pay.explanation
    v6 = evaluate(sig("2001:db8:aa::1", 1.2e9), policy, state, 0)
    assert v6.tier == "tier1"
    other = evaluate(sig("2001:db8:bb::1", 1.2e9), policy, state, 0)
    assert other.tier == "tier2"
    assert "workspace tiers apply" in other.explanation


def test_per_host_override_added_by_a_reload_applies_to_a_known_target(tmp_path: Path) -> None:
    # The engine keeps each target's lookups between signals; a new policy must redo them.
    before = make_policy(tmp_path / "a")
    thresholds = {"tier1_bps": "1G", "tier2_bps": "1500M"}
    override = {"target_ip": "192.0.2.10", "label": "big", "thresholds": thresholds}
    after = make_policy(tmp_path / "b", thresholds=[override])
    state = EngineState()
    assert evaluate(sig(bps=150e6), before, state, 0).status == "announce"
    d = evaluate(sig(bps=150e6), after, state, 1)
    assert "per-host thresholds 192.0.2.10/32 ('big') apply" in d.explanation
    assert any("de-escalation to no tier" in line for line in d.explanation)
    back = evaluate(sig(bps=150e6), before, state, 2)
    assert "workspace tiers apply" in back.explanation


# ---------------------------------------------------------------- allowlist


def test_allowlisted_target_is_never_mitigated(tmp_path: Path) -> None:
    policy = make_policy(tmp_path, allowlist=[{"ip_address": "192.0.2.0/28", "label": "resolvers"}])
    (d,) = run(policy, [(0, {"target": "192.0.2.5", "bps": 9e9})])
    assert d.status == "allowlisted" and d.rules == ()
    assert "allowlist entry 192.0.2.0/28 ('resolvers'), workspace" in d.explanation[-1]


def test_node_scoped_allowlist_applies_to_its_node_only(tmp_path: Path) -> None:
    policy = make_policy(
        tmp_path, allowlist=[{"ip_address": "192.0.2.5", "scope": "node", "node": "edge-1"}]
    )
    state = EngineState()
    assert evaluate(sig("192.0.2.5", 3e9, node="edge-1"), policy, state, 0).status == "allowlisted"
    assert evaluate(sig("192.0.2.5", 3e9, node="edge-2"), policy, state, 1).tier == "tier3"


def test_allowlisted_sources_are_never_flowspec_sources(tmp_path: Path) -> None:
    tiers = [
        {
            "name": "tier1",
            "bps": "100M",
            "intents": [{"type": "flowspec_drop", "per_source": True, "max_sources": 3}],
            "adapters": ["log"],
        }
    ]
    policy = make_policy(
        tmp_path,
        escalation={"tiers": tiers},
        allowlist=[
            {"ip_address": "198.51.100.0/30", "label": "partner"},
            {"ip_address": "198.51.100.9", "scope": "node", "node": "edge-1"},
        ],
    )
    sources = ["198.51.100.1", "198.51.100.9", "198.51.100.20", "198.51.100.21", "198.51.100.22"]
    state = EngineState()
    d = evaluate(
        sig(bps=200e6, attack_family="udp_flood", top_sources=sources, node="edge-1"),
        policy,
        state,
        0,
    )
    srcs = [str(r.intent.source) for r in d.rules if isinstance(r.intent, FlowSpecIntent)]
    assert srcs == ["198.51.100.20/32", "198.51.100.21/32", "198.51.100.22/32"]
    why = " ".join(d.explanation)
    assert "source 198.51.100.1 left out: allowlist entry 198.51.100.0/30 ('partner')" in why
    assert "source 198.51.100.9 left out" in why
    d2 = evaluate(
        sig("192.0.2.11", 200e6, attack_family="udp_flood", top_sources=sources, node="edge-2"),
        policy,
        state,
        0,
    )
    srcs2 = [str(r.intent.source) for r in d2.rules if isinstance(r.intent, FlowSpecIntent)]
    assert srcs2 == ["198.51.100.9/32", "198.51.100.20/32", "198.51.100.21/32"]


def test_target_allowlisted_after_a_reload_withdraws_its_rules(tmp_path: Path) -> None:
    before = make_policy(tmp_path / "a")
    after = make_policy(tmp_path / "b", allowlist=[{"ip_address": "192.0.2.10"}])
    state = EngineState()
    first = evaluate(sig(bps=3e9), before, state, 0)
    second = evaluate(sig(bps=3e9), after, state, 1)
    assert second.status == "allowlisted"
    assert second.withdraw == tuple(r.key for r in first.rules)


# ---------------------------------------------------------------- guardrails


def test_guardrail_refusal_is_explained_and_lower_rules_stay(tmp_path: Path) -> None:
    policy = make_policy(tmp_path, guardrails={"protected_prefixes": ["192.0.2.128/25"]})
    state = EngineState()
    tier3 = evaluate(sig(bps=3e9), policy, state, 0)
    tier4 = evaluate(sig(bps=9e9), policy, state, 1)
    assert tier4.tier == "tier4" and tier4.rules == () and tier4.withdraw == ()
    why = " ".join(tier4.explanation)
    assert "guardrail protected_prefix stopped scrubbing 192.0.2.0/24" in why
    assert "rules already in place stay" in why
    assert state.targets["192.0.2.10"].active == [tier3.rules[0].key]


# ---------------------------------------------------------------- timing


def test_hold_down(tmp_path: Path) -> None:
    policy = make_policy(tmp_path, escalation={"hold_down_seconds": 10})
    decisions = run(policy, [(0, {"bps": 150e6}), (4, {"bps": 150e6}), (10, {"bps": 150e6})])
    assert [d.status for d in decisions] == ["held", "held", "announce"]
    assert "hold-down: attack seen for 4 s of 10 s" in decisions[1].explanation[-1]


def test_hold_down_restarts_when_traffic_drops(tmp_path: Path) -> None:
    policy = make_policy(tmp_path, escalation={"hold_down_seconds": 10})
    decisions = run(
        policy, [(0, {"bps": 150e6}), (5, {"bps": 1e6}), (8, {"bps": 150e6}), (12, {"bps": 150e6})]
    )
    assert [d.status for d in decisions] == ["held", "below", "held", "held"]


def test_cooldown_between_episodes(tmp_path: Path) -> None:
    policy = make_policy(
        tmp_path,
        settings={"cooldown_seconds": 60},
        escalation={"deescalate_after_seconds": 0, "hysteresis": 0.2},
    )
    decisions = run(
        policy,
        [(0, {"bps": 150e6}), (70, {"bps": 1e6}), (80, {"bps": 150e6}), (131, {"bps": 150e6})],
    )
    assert [d.status for d in decisions] == ["announce", "end", "cooldown", "announce"]
    assert (
        "cooldown" in decisions[2].explanation[-1] and "50 s left" in decisions[2].explanation[-1]
    )


def test_escalation_is_not_delayed_by_cooldown_unless_configured(tmp_path: Path) -> None:
    fast = make_policy(tmp_path / "a", settings={"cooldown_seconds": 60})
    slow = make_policy(
        tmp_path / "b",
        settings={"cooldown_seconds": 60},
        escalation={"escalate_during_cooldown": False},
    )
    steps: list[tuple[float, dict[str, Any]]] = [(0, {"bps": 150e6}), (10, {"bps": 3e9})]
    assert [d.status for d in run(fast, steps)] == ["announce", "escalate"]
    assert [d.status for d in run(slow, steps)] == ["announce", "cooldown"]


def test_deescalation_with_hysteresis(tmp_path: Path) -> None:
    policy = make_policy(tmp_path, escalation={"hysteresis": 0.2, "deescalate_after_seconds": 30})
    steps: list[tuple[float, dict[str, Any]]] = [
        (0, {"bps": 3e9}),  # tier3
        (10, {"bps": 1.7e9}),  # below 2G but above 80 %: tier3 holds
        (20, {"bps": 1.5e9}),  # below 1.6G: de-escalation pending
        (40, {"bps": 1.5e9}),  # 20 s below: still pending
        (50, {"bps": 1.5e9}),  # 30 s below: down to tier2
        (60, {"bps": 450e6}),  # 450M > 400M (80 % of 500M): tier2 holds
        (70, {"bps": 1e6}),
        (100, {"bps": 1e6}),  # ends
    ]
    decisions = run(policy, steps)
    assert [(d.status, d.tier) for d in decisions] == [
        ("announce", "tier3"),
        ("steady", "tier3"),
        ("steady", "tier3"),
        ("steady", "tier3"),
        ("deescalate", "tier2"),
        ("steady", "tier2"),
        ("steady", "tier2"),
        ("end", None),
    ]
    assert decisions[4].withdraw == (decisions[0].rules[0].key,)
    assert decisions[7].withdraw == (decisions[4].rules[0].key,)
    assert "de-escalation to tier tier2 after 30 s" in decisions[2].explanation[-1]


def test_a_blip_above_the_hysteresis_band_resets_the_deescalation_timer(tmp_path: Path) -> None:
    policy = make_policy(tmp_path, escalation={"hysteresis": 0.2, "deescalate_after_seconds": 30})
    decisions = run(
        policy,
        [
            (0, {"bps": 600e6}),
            (10, {"bps": 1e6}),
            (30, {"bps": 450e6}),
            (50, {"bps": 1e6}),
            (75, {"bps": 1e6}),
        ],
    )
    assert [d.status for d in decisions] == ["announce", "steady", "steady", "steady", "steady"]


def test_episode_timeout_starts_a_new_attack(tmp_path: Path) -> None:
    policy = make_policy(
        tmp_path, escalation={"episode_timeout_seconds": 60, "hold_down_seconds": 5}
    )
    decisions = run(policy, [(0, {"bps": 600e6}), (5, {"bps": 600e6}), (500, {"bps": 600e6})])
    assert [d.status for d in decisions] == ["held", "announce", "held"]
    assert "previous attack ended" in decisions[2].explanation[0]


# ---------------------------------------------------------------- dry run and state


def test_dry_run_plans_and_says_so(tmp_path: Path) -> None:
    policy = make_policy(tmp_path, settings={"dry_run": True})
    (d,) = run(policy, [(0, {"bps": 3e9})])
    assert d.dry_run is True and d.status == "announce" and len(d.rules) == 1
    assert d.explanation[0].startswith("dry run")
    assert d.to_dict()["dry_run"] is True


def test_state_snapshot_restores_an_attack_in_progress(policy: Policy) -> None:
    state = EngineState()
    first = evaluate(sig(bps=3e9), policy, state, 0)
    restored = EngineState.from_dict(state.to_dict())
    again = evaluate(sig(bps=3e9), policy, restored, 5)
    assert again.status == "steady" and again.tier == "tier3"
    lower = evaluate(sig(bps=1e6), policy, restored, 100)
    lower = evaluate(sig(bps=1e6), policy, restored, 140)
    assert lower.withdraw == (first.rules[0].key,)


def test_state_is_bounded(policy: Policy) -> None:
    state = EngineState(max_targets=100)
    for i in range(300):
        evaluate(
            sig(f"198.51.100.{i % 250}" if i < 250 else f"203.0.113.{i - 250}", 1e6),
            policy,
            state,
            i,
        )
    assert len(state.targets) == 100


def test_decision_to_dict_is_json_ready(policy: Policy) -> None:
    import json

    (d,) = run(policy, [(0, {"bps": 600e6, "attack_family": "syn_flood"})])
    data = json.loads(json.dumps(d.to_dict()))
    assert data["rules"][0]["intent"]["kind"] == "flowspec"
    assert data["rules"][0]["key"] == d.rules[0].key


def test_node_scoped_allowlist_does_not_undo_another_nodes_rules(tmp_path: Path) -> None:
    policy = make_policy(
        tmp_path, allowlist=[{"ip_address": "192.0.2.5", "scope": "node", "node": "edge-1"}]
    )
    state = EngineState()
    b = evaluate(sig("192.0.2.5", 3e9, node="edge-2"), policy, state, 0)
    a = evaluate(sig("192.0.2.5", 3e9, node="edge-1"), policy, state, 1)
    assert b.tier == "tier3" and len(b.rules) == 1
    assert a.status == "allowlisted" and a.withdraw == () and a.rules == ()
    again = evaluate(sig("192.0.2.5", 3e9, node="edge-2"), policy, state, 2)
    assert again.status == "steady"


def test_an_intent_that_cannot_be_built_is_explained_not_raised(tmp_path: Path) -> None:
    tiers = [
        {
            "name": "tier1",
            "bps": "1G",
            "intents": [{"type": "blackhole", "next_hop": "192.0.2.1"}, {"type": "flowspec_drop"}],
            "adapters": ["log"],
        }
    ]
    policy = make_policy(tmp_path, escalation={"tiers": tiers})
    (d,) = run(policy, [(0, {"target": "2001:db8::7", "bps": 2e9})])
    assert d.tier == "tier1"
    assert texts(d) == ["flowspec dst 2001:db8::7/128; then discard"]
    assert any("no blackhole for 2001:db8::7/128" in line for line in d.explanation)


def test_rules_follow_a_change_of_attack_vector(policy: Policy) -> None:
    ntp = {"bps": 600e6, "attack_family": "udp_flood", "top_source_ports": [123]}
    memcached = {"bps": 600e6, "attack_family": "udp_flood", "top_source_ports": [11211]}
    a, b, c = run(policy, [(0, ntp), (5, ntp), (10, memcached)])
    assert (a.status, b.status, c.status) == ("announce", "steady", "update")
    assert texts(c) == ["flowspec dst 192.0.2.10/32; proto =17; sport =11211; then discard"]
    assert c.withdraw == (a.rules[0].key,)
    assert "signature or sources changed" in c.explanation[-2]


def test_vector_change_waits_for_the_cooldown(tmp_path: Path) -> None:
    policy = make_policy(tmp_path, settings={"cooldown_seconds": 60})
    ntp = {"bps": 600e6, "attack_family": "udp_flood", "top_source_ports": [123]}
    dns = {"bps": 600e6, "attack_family": "udp_flood", "top_source_ports": [53]}
    decisions = run(policy, [(0, ntp), (10, dns), (61, dns), (70, dns)])
    assert [d.status for d in decisions] == ["announce", "steady", "update", "steady"]
    assert "when the cooldown ends (50 s)" in decisions[1].explanation[-1]
