"""The webhook target allowlist: names and networks, only ever narrowing the egress policy."""

from __future__ import annotations

import ipaddress

import pytest

from adapters.egress import EgressPolicy, EgressRefused
from adapters.webhook.targets import TargetPolicy, parse_entry

LOOPBACK_OK = EgressPolicy.from_entries(["loopback"])


def refusal(entries: list[str], host: str, addr: str) -> str | None:
    return TargetPolicy.from_entries(entries).refusal(host, ipaddress.ip_address(addr))


def test_an_empty_allowlist_narrows_nothing() -> None:
    assert refusal([], "hooks.example.net", "203.0.113.10") is None


def test_a_non_empty_allowlist_limits_names_and_networks() -> None:
    entries = ["hooks.example.net", "*.alerts.example.org", "198.51.100.0/24"]
    assert refusal(entries, "hooks.example.net", "203.0.113.5") is None
    assert refusal(entries, "HOOKS.example.net.", "203.0.113.5") is None
    assert refusal(entries, "a.alerts.example.org", "203.0.113.5") is None
    assert refusal(entries, "other.example.net", "198.51.100.7") is None
    assert refusal(entries, "other.example.net", "::ffff:198.51.100.7") is None
    assert "not in the webhook target allowlist" in (
        refusal(entries, "evil.example.com", "203.0.113.5") or ""
    )
    # "*.alerts.example.org" covers subdomains, not the bare name
    assert refusal(entries, "alerts.example.org", "203.0.113.5") is not None


@pytest.mark.parametrize("entry", ["", "exa mple.net", "http://x", "10.0.0.1/8"])
def test_bad_entries_are_rejected(entry: str) -> None:
    with pytest.raises(ValueError, match="neither an IP network nor a host name"):
        parse_entry(entry)


async def test_an_entry_never_opens_what_the_egress_policy_refuses() -> None:
    # "localhost" resolves to loopback here: on the list, refused by the service's policy
    listed = TargetPolicy.from_entries(["localhost", "127.0.0.1", "::1"])
    with pytest.raises(EgressRefused, match=r"localhost resolves to .*loopback"):
        await listed.resolve("localhost", 80)
    with pytest.raises(EgressRefused, match="loopback"):
        await listed.resolve("127.0.0.1", 80)
    # allowed by the service and on the list
    assert {str(a) for a in await listed.resolve("localhost", 80, LOOPBACK_OK)} <= {
        "127.0.0.1",
        "::1",
    }
    assert [str(a) for a in await listed.resolve("[::1]", 80, LOOPBACK_OK)] == ["::1"]
    # allowed by the service but not on the list
    narrow = TargetPolicy.from_entries(["127.0.0.2"])
    with pytest.raises(EgressRefused, match="not in the webhook target allowlist"):
        await narrow.resolve("127.0.0.1", 80, LOOPBACK_OK)


async def test_unresolvable_name_is_refused() -> None:
    with pytest.raises(EgressRefused, match="cannot resolve"):
        await TargetPolicy().resolve("no-such-host.invalid", 80)
