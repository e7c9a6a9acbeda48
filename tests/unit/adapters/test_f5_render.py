"""Golden cases for the pure F5 rendering (routes, AFM address-list entries, version)."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.f5 import render
from policies.errors import CapabilityMissing
from policies.intents import BlackholeIntent, FlowSpecIntent, build_intent, intent_key

KEY_A = "a" * 32
KEY_B = "b" * 32


def _bh(**kw: Any) -> BlackholeIntent:
    intent = build_intent({"kind": "blackhole", **kw})
    assert isinstance(intent, BlackholeIntent)
    return intent


def _fs(**kw: Any) -> FlowSpecIntent:
    intent = build_intent({"kind": "flowspec", **kw})
    assert isinstance(intent, FlowSpecIntent)
    return intent


def test_blackhole_route_body() -> None:
    intent = _bh(prefix="192.0.2.7")
    key = intent_key(intent)
    assert render.render_route(intent, key, "Common") == {
        "name": f"sluice-{key}",
        "partition": "Common",
        "network": "192.0.2.7/32",
        "blackhole": True,
        "description": "blackhole 192.0.2.7/32; community 65535:666",
    }
    assert render.key_of_route(f"sluice-{key}") == key
    assert render.key_of_route("operator-route") is None
    assert render.object_path("Common", f"sluice-{key}") == f"~Common~sluice-{key}"


def test_ipv6_blackhole_route() -> None:
    body = render.render_route(_bh(prefix="2001:db8::/64"), KEY_A, "edge")
    assert (body["network"], body["partition"]) == ("2001:db8::/64", "edge")


@pytest.mark.parametrize(
    ("extra", "word"),
    [
        ({"communities": ["65535:666", "64500:1"]}, "communities 64500:1 65535:666"),
        ({"communities": []}, "communities none"),
        ({"large_communities": ["64500:1:2"]}, "large communities"),
        ({"next_hop": "192.0.2.1"}, "a next hop"),
        ({"peers": ["198.51.100.1"]}, "a peer selection"),
    ],
)
def test_blackhole_attributes_bigip_cannot_carry_are_refused(
    extra: dict[str, Any], word: str
) -> None:
    with pytest.raises(CapabilityMissing, match=word):
        render.render_route(_bh(prefix="192.0.2.0/24", **extra), KEY_A, "Common")


def test_afm_source_of_a_plain_source_block() -> None:
    intent = _fs(destination="192.0.2.1/32", source="198.51.100.0/24")
    assert render.afm_source(intent) == "198.51.100.0/24"


@pytest.mark.parametrize(
    ("extra", "word"),
    [
        ({}, "no source prefix"),
        ({"source": "198.51.100.0/24", "protocol": "=17"}, "matches on protocol"),
        ({"source": "198.51.100.0/24", "destination_port": "=53"}, "destination_port"),
        (
            {
                "source": "198.51.100.0/24",
                "action": {"type": "rate-limit", "bytes_per_second": 1e6},
            },
            "not discard",
        ),
    ],
)
def test_flowspec_that_afm_cannot_express_is_refused(extra: dict[str, Any], word: str) -> None:
    with pytest.raises(CapabilityMissing, match=word):
        render.afm_source(_fs(destination="192.0.2.1/32", **extra))


def test_address_entries_are_shared_between_rules_and_operator_entries_kept() -> None:
    operator = {"name": "203.0.113.9/32"}
    current = [operator]
    one = render.add_entries(current, [("198.51.100.0/24", KEY_A)])
    assert one == [operator, {"name": "198.51.100.0/24", "description": f"sluice:{KEY_A}"}]
    both = render.add_entries(one, [("198.51.100.0/24", KEY_B), ("203.0.113.9/32", KEY_B)])
    assert both == [
        operator,  # the operator's own entry is neither tagged nor removed
        {"name": "198.51.100.0/24", "description": f"sluice:{KEY_A},{KEY_B}"},
    ]
    assert render.keys_in(both) == {KEY_A, KEY_B}
    assert render.add_entries(both, [("198.51.100.0/24", KEY_A)]) == both  # idempotent
    after_a = render.remove_entries(both, [KEY_A])
    assert after_a == [operator, {"name": "198.51.100.0/24", "description": f"sluice:{KEY_B}"}]
    assert render.remove_entries(after_a, [KEY_B]) == [operator]
    assert render.remove_entries([operator], [KEY_A]) == [operator]
    assert current == [operator]  # inputs are not modified


def test_version_of_sys_version_answer() -> None:
    body = {
        "kind": "tm:sys:version:versionstats",
        "entries": {
            "https://localhost/mgmt/tm/sys/version/0": {
                "nestedStats": {
                    "entries": {
                        "Build": {"description": "0.0.4"},
                        "Product": {"description": "BIG-IP"},
                        "Version": {"description": "17.1.1"},
                    }
                }
            }
        },
    }
    assert render.version_of(body) == "BIG-IP 17.1.1 build 0.0.4"
    with pytest.raises(ValueError, match="no entries"):
        render.version_of({"kind": "x"})
