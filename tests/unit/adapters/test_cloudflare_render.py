"""Golden cases for the pure Cloudflare request rendering."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.cloudflare import render
from adapters.cloudflare.api import errors_text
from policies.errors import CapabilityMissing
from policies.intents import FlowSpecIntent, build_intent


def flow(**spec: Any) -> FlowSpecIntent:
    intent = build_intent({"kind": "flowspec", "destination": "203.0.113.1/32", **spec})
    assert isinstance(intent, FlowSpecIntent)
    return intent


def test_paths_and_bodies() -> None:
    assert (
        render.bgp_prefixes_path("acc", "pfx")
        == "/accounts/acc/addressing/prefixes/pfx/bgp/prefixes"
    )
    assert (
        render.bgp_prefix_path("acc", "pfx", "b1")
        == "/accounts/acc/addressing/prefixes/pfx/bgp/prefixes/b1"
    )
    assert render.advertise_body(True) == {"on_demand": {"advertised": True}}
    assert render.advertised_of({"on_demand": {"advertised": False}}) is False
    assert render.advertised_of({"on_demand": {}}) is None
    assert render.advertised_of({"advertised": True}) is None  # the deprecated shape
    assert render.security_level_path("z") == "/zones/z/settings/security_level"
    assert render.security_level_body("under_attack") == {"value": "under_attack"}
    with pytest.raises(ValueError, match="security level"):
        render.security_level_body("panic")
    assert render.list_items_path("a", "l") == "/accounts/a/rules/lists/l/items"
    assert render.bulk_operation_path("a", "op") == "/accounts/a/rules/lists/bulk_operations/op"


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("198.51.100.7/32", "198.51.100.7"),
        ("198.51.100.0/24", "198.51.100.0/24"),
        ("10.0.0.0/8", "10.0.0.0/8"),
    ],
)
def test_waf_source_values(source: str, value: str) -> None:
    assert render.waf_source(flow(source=source)) == value


def test_waf_source_ipv6() -> None:
    intent = build_intent(
        {"kind": "flowspec", "destination": "2001:db8::1/128", "source": "2001:db8:1::/48"}
    )
    assert isinstance(intent, FlowSpecIntent)
    assert render.waf_source(intent) == "2001:db8:1::/48"
    narrow = build_intent(
        {"kind": "flowspec", "destination": "2001:db8::1/128", "source": "2001:db8:1::1/128"}
    )
    assert isinstance(narrow, FlowSpecIntent)
    with pytest.raises(CapabilityMissing, match="/12-/64, not /128"):
        render.waf_source(narrow)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({}, "no source prefix"),
        ({"source": "198.51.100.0/24", "protocol": "=17"}, "matches on protocol"),
        (
            {"source": "198.51.100.0/24", "action": {"type": "rate-limit", "bytes_per_second": 10}},
            "not discard",
        ),
        ({"source": "10.0.0.0/7"}, "/8-/32, not /7"),
    ],
)
def test_waf_source_refusals(spec: dict[str, Any], problem: str) -> None:
    with pytest.raises(CapabilityMissing, match=problem):
        render.waf_source(flow(**spec))


def test_plan_add_and_remove() -> None:
    items = [
        {"id": "a", "ip": "192.0.2.7", "comment": "operator's"},
        {"id": "b", "ip": "198.51.100.0/24", "comment": "sluice k1"},
    ]
    assert render.plan_add(items, [("192.0.2.7/32", "k9")]) == []  # the operator blocks it already
    assert render.plan_add(items, [("198.51.100.0/24", "k1")]) == []
    assert render.plan_add(items, [("198.51.100.0/24", "k2"), ("203.0.113.9", "k3")]) == [
        {"ip": "198.51.100.0/24", "comment": "sluice k1,k2"},
        {"ip": "203.0.113.9", "comment": "sluice k3"},
    ]
    items[1]["comment"] = "sluice k1,k2"
    assert render.plan_remove(items, [("198.51.100.0/24", "k1")]) == (
        [],
        [{"ip": "198.51.100.0/24", "comment": "sluice k2"}],
    )
    assert render.plan_remove(items, [("198.51.100.0/24", "k1"), ("198.51.100.0/24", "k2")]) == (
        [{"id": "b"}],
        [],
    )
    assert render.plan_remove(items, [("192.0.2.7", "k9"), ("203.0.113.9", "k3")]) == ([], [])
    assert render.held_keys(items) == {"k1", "k2"}


def test_errors_text() -> None:
    body = {"success": False, "errors": [{"code": 10000, "message": "Authentication error"}, "x"]}
    assert errors_text(body) == "10000: Authentication error; x"
    assert errors_text({"errors": []}) == ""
    assert errors_text("nope") == ""
