"""The pure side of carpet-bombing awareness: counting, judging, planning."""

from __future__ import annotations

import shutil
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from policies.aggregation import (
    AttackWindow,
    CarpetBombing,
    Covering,
    Refusal,
    covering_rules,
    judge,
)
from policies.cli import app
from policies.guardrails import GuardrailChecker, Guardrails
from policies.intents import FlowSpecIntent
from policies.prefixes import PrefixSet
from policies.signals import Signal
from policies.tiers import Tier

NONE = PrefixSet()


def cfg(**kw: Any) -> CarpetBombing:
    base: dict[str, Any] = {"min_targets": 4, "tier": "t1", "window_seconds": 10}
    return CarpetBombing.model_validate({**base, **kw})


def feed(c: CarpetBombing, w: AttackWindow, addrs: list[str], now: float) -> None:
    for a in addrs:
        ip = ip_address(a)
        w.add(c, ip.version, int(ip), now)


def test_counts_distinct_targets_within_the_window() -> None:
    c, w = cfg(), AttackWindow()
    feed(c, w, ["10.0.0.1"] * 10 + ["10.0.0.2", "10.0.0.3"], 0.0)
    assert judge(c, w, ip_address("10.0.0.3"), 0.0, protected=NONE, allowed=NONE) is None
    feed(c, w, ["10.0.0.4"], 10.0)  # the first three are exactly 10 s old: still in
    found = judge(c, w, ip_address("10.0.0.4"), 10.0, protected=NONE, allowed=NONE)
    assert isinstance(found, Covering) and str(found.network) == "10.0.0.0/24"
    assert found.targets == ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")
    assert found.collateral == 252 and round(found.collateral_share, 4) == 0.9844
    # 10.5 s later the first three fell out of the window
    assert judge(c, w, ip_address("10.0.0.4"), 10.5 + 10, protected=NONE, allowed=NONE) is None


def test_a_target_seen_again_stays_in_the_window() -> None:
    c, w = cfg(), AttackWindow()
    feed(c, w, ["10.0.0.1", "10.0.0.2", "10.0.0.3"], 0.0)
    feed(c, w, ["10.0.0.1"], 8.0)
    feed(c, w, ["10.0.0.9"], 15.0)  # .2 and .3 are too old, .1 was seen at 8 s
    assert judge(c, w, ip_address("10.0.0.9"), 15.0, protected=NONE, allowed=NONE) is None
    feed(c, w, ["10.0.0.10", "10.0.0.11"], 15.0)
    found = judge(c, w, ip_address("10.0.0.9"), 15.0, protected=NONE, allowed=NONE)
    assert isinstance(found, Covering)
    assert found.targets == ("10.0.0.1", "10.0.0.9", "10.0.0.10", "10.0.0.11")


def test_share_threshold_and_both() -> None:
    c, w = cfg(min_targets=None, min_share=0.5, prefix_lengths={"ipv4": [28]}), AttackWindow()
    feed(c, w, [f"10.0.0.{i}" for i in range(1, 8)], 0.0)  # 7 of 16
    assert judge(c, w, ip_address("10.0.0.1"), 0.0, protected=NONE, allowed=NONE) is None
    feed(c, w, ["10.0.0.8"], 0.0)  # 8 of 16
    found = judge(c, w, ip_address("10.0.0.1"), 0.0, protected=NONE, allowed=NONE)
    assert isinstance(found, Covering) and str(found.network) == "10.0.0.0/28"
    both = cfg(min_targets=9, min_share=0.5, prefix_lengths={"ipv4": [28]})
    assert judge(both, w, ip_address("10.0.0.1"), 0.0, protected=NONE, allowed=NONE) is None


def test_refused_prefixes_and_narrower_candidates() -> None:
    c, w = cfg(prefix_lengths={"ipv4": [24, 26]}), AttackWindow()
    feed(c, w, ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"], 0.0)
    allowed = PrefixSet([ip_network("10.0.0.200/32")])
    found = judge(c, w, ip_address("10.0.0.1"), 0.0, protected=NONE, allowed=allowed)
    assert isinstance(found, Covering) and str(found.network) == "10.0.0.0/26"
    allowed = PrefixSet([ip_network("10.0.0.20/32")])
    found = judge(c, w, ip_address("10.0.0.1"), 0.0, protected=NONE, allowed=allowed)
    assert isinstance(found, Refusal) and str(found.network) == "10.0.0.0/24"
    assert "contains allowlisted 10.0.0.20/32" in found.explain()
    protected = PrefixSet([ip_network("10.0.0.0/16")])
    found = judge(c, w, ip_address("10.0.0.1"), 0.0, protected=protected, allowed=NONE)
    assert isinstance(found, Refusal) and "protected prefix 10.0.0.0/16" in found.reason


def test_ipv6() -> None:
    c, w = cfg(), AttackWindow()
    feed(c, w, [f"2001:db8:1:2::{i}" for i in range(1, 5)], 0.0)
    found = judge(c, w, ip_address("2001:db8:1:2::1"), 0.0, protected=NONE, allowed=NONE)
    assert isinstance(found, Covering) and str(found.network) == "2001:db8:1:2::/64"
    assert found.collateral == 2**64 - 4


def test_window_memory_is_swept() -> None:
    c, w = cfg(), AttackWindow()
    feed(c, w, [f"10.{i // 256}.{i % 256}.1" for i in range(5000)], 0.0)
    assert len(w) == 5000
    w.sweep(1.0)
    assert len(w) == 0


def test_covering_flowspec_matches_the_signature_on_the_whole_prefix() -> None:
    tier = Tier.model_validate(
        {"name": "t1", "bps": 1, "intents": [{"type": "flowspec_drop"}], "adapters": ["edge"]}
    )
    sig = Signal.model_validate(
        {"target_ip": "10.0.0.7", "bps": 5, "attack_family": "udp_flood", "top_source_ports": [123]}
    )
    why: list[str] = []
    out = covering_rules(
        cfg(),
        tiers=[tier],
        default_ttl=60,
        network=ip_network("10.0.0.0/24"),
        signal=sig,
        checker=GuardrailChecker(Guardrails()),
        why=why,
    )
    assert len(out) == 1 and out[0].adapter == "edge" and out[0].ttl == 60
    intent = out[0].intent
    assert isinstance(intent, FlowSpecIntent) and str(intent.destination) == "10.0.0.0/24"
    assert intent.source_port is not None
    # the guardrails still have the last word
    strict = GuardrailChecker(Guardrails(min_prefix_flowspec={"ipv4": 25, "ipv6": 48}))
    assert (
        covering_rules(
            cfg(),
            tiers=[tier],
            default_ttl=60,
            network=ip_network("10.0.0.0/24"),
            signal=sig,
            checker=strict,
            why=why,
        )
        == []
    )
    assert any("prefix_too_short" in line for line in why)


def test_the_hold_down_holds_for_the_prefix_too() -> None:
    c, w = cfg(), AttackWindow()
    feed(c, w, ["10.0.0.1", "10.0.0.2"], 0.0)
    feed(c, w, ["10.0.0.3", "10.0.0.4"], 3.0)
    found = judge(c, w, ip_address("10.0.0.4"), 3.0, protected=NONE, allowed=NONE, hold_down=5)
    assert isinstance(found, Refusal) and found.held
    assert "no covering rule yet: hold-down: the prefix has been attacked for 3 s of 5 s" in (
        found.explain()
    )
    found = judge(c, w, ip_address("10.0.0.4"), 5.0, protected=NONE, allowed=NONE, hold_down=5)
    assert isinstance(found, Covering)


EXAMPLES = Path(__file__).resolve().parents[3] / "policies" / "examples"


def test_policy_plan_shows_the_covering_rule(tmp_path: Path) -> None:
    """``sluice policy plan``: the example policy with and without its carpet_bombing file."""
    before = tmp_path / "before"
    shutil.copytree(EXAMPLES / "default", before)
    (before / "carpet_bombing.yaml").unlink()
    # the example ships it off; the change planned here turns it on
    after = tmp_path / "after"
    shutil.copytree(EXAMPLES / "default", after)
    cb = after / "carpet_bombing.yaml"
    cb.write_text(cb.read_text().replace("enabled: false", "enabled: true"))
    hosts = [f"100.64.1.{i}" for i in range(1, 33)]
    # 32 hosts at 3 Gbps (tier3: blackhole); again 5 s later, past the hold-down
    lines = [f"  - {{at: {at}, target_ip: {h}, bps: 3G}}" for at in (0, 5) for h in hosts]
    signals = tmp_path / "signals.yaml"
    signals.write_text("signals:\n" + "\n".join(lines) + "\n")
    result = CliRunner().invoke(
        app,
        ["plan", str(after), "--signals", str(signals), "--current", str(before)],
    )
    assert result.exit_code == 0, result.output
    out = result.output
    # the first signal past the hold-down completes the picture: one /24 for the prefix
    assert "signal 32 at 5 s, target 100.64.1.1: announce/tier3 -> announce/tier3" in out
    assert "  + blackhole 100.64.1.0/24; community 65535:666 via log ttl 300" in out
    # the 31 after it are covered instead of getting their /32
    assert "signal 33 at 5 s, target 100.64.1.2: announce/tier3 -> covered/tier3" in out
    assert "  - blackhole 100.64.1.2/32; community 65535:666 via log ttl 300" in out
    assert out.count("-> covered/tier3") == 31
    # before the hold-down, nothing differs (held either way)
    assert "signal 31 " not in out


def test_min_targets_needs_only_the_widest_candidate_to_reach_it() -> None:
    c = cfg(min_targets=100, prefix_lengths={"ipv4": [24, 26]})  # a /26 has 64 addresses
    assert c.prefix_lengths.ipv4 == [24, 26]
