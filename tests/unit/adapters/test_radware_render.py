"""Golden cases for the pure DefenseFlow rendering (attack start/stop, baselines)."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.radware import render
from policies.intents import ScrubbingIntent, build_intent

KEY = "0123456789abcdef0123456789abcdef"


def _scrub(prefix: str) -> ScrubbingIntent:
    intent = build_intent({"kind": "scrubbing", "prefix": prefix})
    assert isinstance(intent, ScrubbingIntent)
    return intent


def test_start_without_baselines() -> None:
    body = render.render_start(_scrub("192.0.2.0/24"), KEY, 42, "sluice", {})
    assert body == {
        "externalAttackId": f"sluice-{KEY}",
        "alertInfo": "sluice rule 42: divert 192.0.2.0/24",
        "networksDetails": {"networks": [{"ip": "192.0.2.0", "prefix": 24}]},
    }


def test_start_with_total_rates_sets_every_protocol_in_bytes() -> None:
    context = {"bps": 8_000_000, "pps": 1500.4, "reason": "udp flood"}
    body = render.render_start(_scrub("192.0.2.0/25"), KEY, 1, "df", context)
    assert body["alertInfo"] == "sluice rule 1: divert 192.0.2.0/25 (udp flood)"
    assert body["baselinesIpv4"] == {
        "baselineTcpBytesPerSecond": 1_000_000,
        "baselineTcpPacketsPerSecond": 1500,
        "baselineUdpBytesPerSecond": 1_000_000,
        "baselineUdpPacketsPerSecond": 1500,
        "baselineIcmpBytesPerSecond": 1_000_000,
        "baselineIcmpPacketsPerSecond": 1500,
    }
    assert "baselinesIpv6" not in body


@pytest.mark.parametrize("protocol", ["udp", "UDP", 17, "17"])
def test_known_protocol_sets_only_its_fields(protocol: Any) -> None:
    body = render.render_start(
        _scrub("2001:db8::/48"), KEY, 1, "sluice", {"bps": 800, "protocol": protocol}
    )
    assert body["networksDetails"] == {"networks": [{"ip": "2001:db8::", "prefix": 48}]}
    assert body["baselinesIpv6"] == {"baselineUdpBytesPerSecond": 100}
    assert "baselinesIpv4" not in body


@pytest.mark.parametrize(
    "context", [{}, {"bps": None}, {"bps": "lots"}, {"pps": -1}, {"bps": True}]
)
def test_missing_or_unusable_rates_send_no_baselines(context: dict[str, Any]) -> None:
    assert render.baselines(context) is None


def test_stop_body_and_protected_object_summary() -> None:
    assert render.render_stop(KEY, "sluice") == {"externalAttackId": f"sluice-{KEY}"}
    body = {
        "ProtectedObjects": [
            {"name": "a", "underAttack": True},
            {"name": "b", "underAttack": False},
        ]
    }
    assert render.protected_objects_summary(body) == ["a", "b"]  # attack state is not read
    with pytest.raises(ValueError, match="no ProtectedObjects"):
        render.protected_objects_summary({"status": "ok"})
