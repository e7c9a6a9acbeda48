"""The webhook target allowlist: internal ranges, explicit allows, names and resolution."""

from __future__ import annotations

import ipaddress

import pytest

from adapters.webhook.targets import TargetPolicy, TargetRefused, parse_entry


def refusal(entries: list[str], host: str, addr: str) -> str | None:
    return TargetPolicy.from_entries(entries).refusal(host, ipaddress.ip_address(addr))


@pytest.mark.parametrize(
    ("addr", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "metadata"),
        ("169.254.10.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "metadata"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
    ],
)
def test_internal_addresses_are_refused_by_default(addr: str, why: str) -> None:
    text = refusal([], "hooks.example.net", addr)
    assert text is not None and why in text and "not explicitly allowed" in text


def test_public_and_private_addresses_pass_an_empty_allowlist() -> None:
    assert refusal([], "hooks.example.net", "203.0.113.10") is None
    assert refusal([], "hooks.example.net", "10.1.2.3") is None


def test_loopback_needs_an_explicit_entry_inside_the_loopback_range() -> None:
    assert refusal(["127.0.0.1"], "127.0.0.1", "127.0.0.1") is None
    assert refusal(["127.0.0.0/8"], "127.0.0.1", "127.0.0.2") is None
    assert refusal(["127.0.0.1"], "127.0.0.1", "127.0.0.2") is not None
    # a wide entry does not open the internals
    assert "loopback" in (refusal(["0.0.0.0/0"], "x", "127.0.0.1") or "")
    assert "metadata" in (refusal(["169.254.0.0/15"], "x", "169.254.169.254") or "")


def test_a_non_empty_allowlist_limits_names_and_networks() -> None:
    entries = ["hooks.example.net", "*.alerts.example.org", "198.51.100.0/24"]
    assert refusal(entries, "hooks.example.net", "203.0.113.5") is None
    assert refusal(entries, "HOOKS.example.net.", "203.0.113.5") is None
    assert refusal(entries, "a.alerts.example.org", "203.0.113.5") is None
    assert refusal(entries, "other.example.net", "198.51.100.7") is None
    assert "not in the webhook target allowlist" in (
        refusal(entries, "evil.example.com", "203.0.113.5") or ""
    )
    # "*.alerts.example.org" covers subdomains, not the bare name
    assert refusal(entries, "alerts.example.org", "203.0.113.5") is not None
    # a name on the list that resolves to loopback is still refused (DNS rebinding)
    assert "loopback" in (refusal(entries, "hooks.example.net", "127.0.0.1") or "")


@pytest.mark.parametrize("entry", ["", "exa mple.net", "http://x", "10.0.0.1/8"])
def test_bad_entries_are_rejected(entry: str) -> None:
    with pytest.raises(ValueError, match="neither an IP network nor a host name"):
        parse_entry(entry)


async def test_resolution_checks_every_address_of_a_name() -> None:
    # "localhost" resolves to loopback here: allowed by name, refused by address
    policy = TargetPolicy.from_entries(["localhost"])
    with pytest.raises(TargetRefused, match=r"localhost resolves to .*loopback"):
        await policy.resolve("localhost", 80)
    allowed = TargetPolicy.from_entries(["127.0.0.1", "::1"])
    assert str(await allowed.resolve("localhost", 80)) in ("127.0.0.1", "::1")
    assert str(await allowed.resolve("127.0.0.1", 80)) == "127.0.0.1"
    assert str(await allowed.resolve("[::1]", 80)) == "::1"


async def test_unresolvable_name_is_refused() -> None:
    with pytest.raises(TargetRefused, match="cannot resolve"):
        await TargetPolicy().resolve("no-such-host.invalid", 80)
