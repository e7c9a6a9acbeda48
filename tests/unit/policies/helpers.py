"""Helpers for policy tests: write policy directories, build signals."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from policies.schema import Policy, load_policy
from policies.signals import Signal

TIERS: list[dict[str, Any]] = [
    {
        "name": "tier1",
        "bps": "100M",
        "intents": [{"type": "flowspec_rate_limit", "rate": "10M"}],
        "adapters": ["log"],
    },
    {"name": "tier2", "bps": "500M", "intents": [{"type": "flowspec_drop"}], "adapters": ["log"]},
    {"name": "tier3", "bps": "2G", "intents": [{"type": "blackhole"}], "adapters": ["log"]},
    {"name": "tier4", "bps": "5G", "intents": [{"type": "scrubbing"}], "adapters": ["log"]},
]


def write(directory: Path, files: dict[str, str | dict[str, Any]]) -> Path:
    """Write ``{name: yaml text or data}`` into ``directory`` and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        (directory / name).write_text(text)
    return directory


def policy_data(**sections: Any) -> dict[str, Any]:
    """A valid policy with four tiers on the ``log`` adapter; ``sections`` override."""
    data: dict[str, Any] = {
        "adapters": [{"name": "log", "adapter_type": "log"}],
        "escalation": {"tiers": copy.deepcopy(TIERS), "deescalate_after_seconds": 30},
        "settings": {"cooldown_seconds": 0},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def make_policy(tmp: Path, **sections: Any) -> Policy:
    return load_policy(write(tmp, {"policy.yaml": policy_data(**sections)}))


def sig(target: str = "192.0.2.10", bps: float = 0, **kw: Any) -> Signal:
    return Signal.model_validate({"target_ip": target, "bps": bps, **kw})
