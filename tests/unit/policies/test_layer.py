"""The API's layer over the policy files: the files win for what they declare."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from policies.errors import PolicyInvalid
from policies.layer import DEFAULT_TIERS, compose, declared, effective_layer, owner
from policies.schema import Policy, load_policy
from tests.unit.policies.helpers import policy_data, write


def _files(tmp_path: Path) -> Policy:
    data = policy_data(
        settings={"dry_run": False},
        thresholds=[{"target_ip": "198.51.100.0/24", "thresholds": {"tier1_bps": "200M"}}],
        allowlist=[{"ip_address": "192.0.2.53"}],
    )
    return load_policy(write(tmp_path, {"p.yaml": data}))


def test_files_win_key_by_key_and_entry_by_entry(tmp_path: Path) -> None:
    files = _files(tmp_path)
    layer: dict[str, Any] = {
        "settings": {"dry_run": True, "default_ttl": 60},
        "escalation": {"tiers": [], "hold_down_seconds": 9, "deescalate_after_seconds": 1},
        "thresholds": [
            {"target_ip": "198.51.100.0/24", "thresholds": {"tier1_bps": 5}},
            {"target_ip": "203.0.113.0/24", "thresholds": {"tier1_bps": "50M"}},
        ],
        "allowlist": [{"ip_address": "192.0.2.53/32"}, {"ip_address": "203.0.113.53"}],
    }
    policy = compose(files, layer)
    assert policy.settings.dry_run is False and policy.settings.default_ttl == 60
    assert len(policy.escalation.tiers) == 4  # the files' ladder, not the layer's
    assert policy.escalation.hold_down_seconds == 9
    assert policy.escalation.deescalate_after_seconds == 30  # declared in the files
    assert [e.to_dict()["thresholds"] for e in policy.thresholds.entries] == [
        {"tier1_bps": 200_000_000},
        {"tier1_bps": 50_000_000},
    ]
    assert [e.prefix for e in policy.allowlist.entries] == ["192.0.2.53/32", "203.0.113.53/32"]
    assert policy.adapters == files.adapters
    assert (owner(files, "settings", "dry_run"), owner(files, "settings", "default_ttl")) == (
        "policy",
        "api",
    )
    assert effective_layer(files, layer) == {
        "settings": {"default_ttl": 60},
        "escalation": {"hold_down_seconds": 9},
        "thresholds": [layer["thresholds"][1]],
        "allowlist": [layer["allowlist"][1]],
    }


def test_no_files_no_layer_means_the_default_tiers() -> None:
    files = Policy()
    assert not declared(files, "escalation", "tiers")
    policy = compose(files, {})
    assert [t.name for t in policy.escalation.tiers] == [t["name"] for t in DEFAULT_TIERS]
    assert [t.bps for t in policy.escalation.tiers] == [10**8, 5 * 10**8, 2 * 10**9, 5 * 10**9]
    assert all(t.ttl == 300 and t.adapters == [] for t in policy.escalation.tiers)
    # tiers may name adapters created through the API; the policy declares only the files'
    policy = compose(
        files,
        {"escalation": {"tiers": [{**DEFAULT_TIERS[0], "adapters": ["edge"]}]}},
        [{"name": "edge", "adapter_type": "fake"}],
    )
    assert policy.escalation.tiers[0].adapters == ["edge"] and policy.adapters == []
    with pytest.raises(PolicyInvalid) as info:
        compose(files, {"escalation": {"tiers": [{**DEFAULT_TIERS[0], "adapters": ["edge"]}]}})
    assert info.value.field == "escalation.tiers.0.adapters.0"
