"""``policies.state.snapshot``: the intake reuses a decision only while a target's
snapshot is unchanged, so every field a decision can read must show in it."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import pytest

from policies.state import Lookups, TargetState, snapshot

BASE = TargetState(
    attack_since=1.0,
    last_seen=2.0,
    tier="tier1",
    tier_since=3.0,
    below_since=None,
    last_action=4.0,
    last_emit=5.0,
    ttl=600,
    active=["k1"],
    shape=("a",),
)
CHANGED: dict[str, Any] = {
    "attack_since": 9.0,
    "last_seen": 9.0,
    "tier": "tier2",
    "tier_since": 9.0,
    "below_since": 9.0,
    "last_action": 9.0,
    "last_emit": 9.0,
    "ttl": 60,
    "active": ["k1", "k2"],
    "shape": ("b",),
}


def test_every_field_but_the_lookup_cache_is_named_here() -> None:
    assert {f.name for f in fields(TargetState)} == {*CHANGED, "memo"}


@pytest.mark.parametrize("name", sorted(CHANGED))
def test_a_changed_field_changes_the_snapshot(name: str) -> None:
    assert snapshot(replace(BASE, **{name: CHANGED[name]})) != snapshot(BASE)


def test_equal_states_have_equal_snapshots_whatever_their_cache() -> None:
    twin = replace(BASE, active=list(BASE.active), memo=Lookups(7, None, None, None, ""))
    assert snapshot(twin) == snapshot(BASE)
    twin.active.append("k2")  # a list changed in place shows too
    assert snapshot(twin) != snapshot(BASE)
