"""Guardrails: each refusal has its own code."""

from __future__ import annotations

import ipaddress

import pytest

from policies.errors import GuardrailViolation
from policies.guardrails import GuardrailChecker, Guardrails, MinPrefix
from policies.intents import build_intent
from policies.prefixes import PrefixSet


def refusal(checker: GuardrailChecker, data: dict[str, object]) -> str:
    with pytest.raises(GuardrailViolation) as exc:
        checker.check(build_intent(data))
    return exc.value.code


def test_default_routes_never_pass_even_with_permissive_minimums() -> None:
    g = GuardrailChecker(Guardrails(min_prefix_blackhole=MinPrefix(ipv4=1, ipv6=1)))
    assert refusal(g, {"kind": "blackhole", "prefix": "0.0.0.0/0"}) == "default_route"
    assert refusal(g, {"kind": "blackhole", "prefix": "::/0"}) == "default_route"
    assert refusal(g, {"kind": "flowspec", "destination": "0.0.0.0/0"}) == "default_route"


def test_minimum_prefix_length_per_intent_and_family() -> None:
    g = GuardrailChecker(Guardrails())
    assert refusal(g, {"kind": "blackhole", "prefix": "203.0.112.0/23"}) == "prefix_too_short"
    assert refusal(g, {"kind": "scrubbing", "prefix": "2001:db8::/47"}) == "prefix_too_short"
    g.check(build_intent({"kind": "blackhole", "prefix": "203.0.113.0/24"}))
    g.check(build_intent({"kind": "scrubbing", "prefix": "2001:db8::/48"}))
    loose = GuardrailChecker(Guardrails(min_prefix_flowspec=MinPrefix(ipv4=16, ipv6=32)))
    loose.check(build_intent({"kind": "flowspec", "destination": "198.51.0.0/16"}))


def test_protected_prefixes_both_directions() -> None:
    g = GuardrailChecker(Guardrails(protected_prefixes=("198.51.100.0/25",)))
    assert refusal(g, {"kind": "blackhole", "prefix": "198.51.100.7"}) == "protected_prefix"
    assert refusal(g, {"kind": "blackhole", "prefix": "198.51.100.0/24"}) == "protected_prefix"
    assert (
        refusal(g, {"kind": "flowspec", "destination": "203.0.113.1", "source": "198.51.100.0/24"})
        == "protected_prefix"
    )
    g.check(build_intent({"kind": "blackhole", "prefix": "198.51.100.128"}))


def test_allowlist_blocks_blackholes_and_flowspec_sources() -> None:
    allow = PrefixSet(
        [ipaddress.ip_network("203.0.113.10/32"), ipaddress.ip_network("2001:db8:1::/48")]
    )
    g = GuardrailChecker(Guardrails(), allow)
    assert refusal(g, {"kind": "blackhole", "prefix": "203.0.113.0/24"}) == "allowlisted"
    assert refusal(g, {"kind": "scrubbing", "prefix": "2001:db8:1::/64"}) == "allowlisted"
    assert (
        refusal(g, {"kind": "flowspec", "destination": "198.51.100.1", "source": "203.0.113.0/28"})
        == "allowlisted"
    )
    g.check(build_intent({"kind": "blackhole", "prefix": "203.0.113.11"}))


def test_prefix_set_overlap_and_cover() -> None:
    s = PrefixSet(
        [ipaddress.ip_network(p) for p in ("10.0.0.0/24", "10.0.1.0/24", "2001:db8::/32")]
    )
    assert s.covers(ipaddress.ip_network("10.0.0.0/23"))
    assert s.overlaps(ipaddress.ip_network("10.0.0.0/8"))
    assert not s.overlaps(ipaddress.ip_network("10.0.2.0/24"))
    assert not s.overlaps(ipaddress.ip_network("2001:db9::/32"))
