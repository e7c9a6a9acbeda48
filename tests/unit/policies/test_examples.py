"""The shipped example policies do what their comments say."""

from __future__ import annotations

from pathlib import Path

from policies.engine import evaluate
from policies.intents import BlackholeIntent, FlowSpecIntent
from policies.schema import load_policy
from policies.state import EngineState
from tests.unit.policies.helpers import sig

EXAMPLES = Path(__file__).resolve().parents[3] / "policies" / "examples"


def test_default_walks_up_the_four_tiers() -> None:
    policy = load_policy(EXAMPLES / "default")
    state = EngineState()
    ntp = {"attack_family": "udp_flood", "top_source_ports": [123]}
    steps = [(0, 150e6), (5, 150e6), (6, 600e6), (7, 2.5e9), (8, 6e9)]
    decisions = [evaluate(sig("2001:db8:1::77", bps, **ntp), policy, state, t) for t, bps in steps]
    assert [(d.status, d.tier) for d in decisions] == [
        ("held", None),
        ("announce", "tier1"),
        ("escalate", "tier2"),
        ("escalate", "tier3"),
        ("escalate", "tier4"),
    ]
    assert all(r.adapter == "log" for d in decisions for r in d.rules)
    assert isinstance(decisions[3].rules[0].intent, BlackholeIntent)
    assert [r.intent.kind for r in decisions[4].rules] == ["scrubbing"]


def test_default_allowlist_and_overrides() -> None:
    policy = load_policy(EXAMPLES / "default")
    state = EngineState()
    assert evaluate(sig("203.0.113.53", 9e9), policy, state, 0).status == "allowlisted"
    vpn = sig("203.0.113.200", 9e9, node="edge-1")
    assert evaluate(vpn, policy, state, 0).status == "allowlisted"
    web = evaluate(sig("198.51.100.20", 600e6), policy, state, 0)
    assert web.status == "below" and "('web front-ends')" in web.explanation[0]


def test_game_server_small_packet_flood_rate_limits_per_source() -> None:
    policy = load_policy(EXAMPLES / "game-server")
    state = EngineState()
    flood = sig(
        "198.51.100.42",
        bps=9e6,
        pps=12_000,
        attack_family="udp_flood",
        top_destination_ports=[27015],
        top_sources=["192.0.2.70", "198.18.0.1", "198.18.0.2"],
    )
    evaluate(flood, policy, state, 0)
    d = evaluate(flood, policy, state, 2)
    assert (d.status, d.tier) == ("announce", "tier1")
    assert "per-host thresholds 198.51.100.42/32 ('tournament server') apply" in d.explanation
    sources = [str(r.intent.source) for r in d.rules if isinstance(r.intent, FlowSpecIntent)]
    assert sources == ["198.18.0.1/32", "198.18.0.2/32"]  # anti-cheat collector left out
    assert all("dport =27015" in r.to_dict()["text"] for r in d.rules)
    assert all(r.ttl == 600 for r in d.rules)
