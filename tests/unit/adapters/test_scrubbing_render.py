"""Golden cases for the pure parts of the scrubbing integrations."""

from __future__ import annotations

import ipaddress

import pytest

from adapters.scrubbing import ovh
from adapters.scrubbing.common import Target, covering, disjoint, parse_prefix
from policies.errors import AdapterRefused


def test_ovh_signature_golden() -> None:
    # "$1$" + sha1(AS+CK+METHOD+URL+BODY+TIMESTAMP joined by "+"), as OVH documents it
    assert (
        ovh.signature(
            "7kbG7Bk7S9Nt7ZSV",
            "MtSwSrPpNjqfuvEqc",
            method="get",
            url="https://eu.api.ovh.com/1.0/auth/currentCredential",
            body="",
            ts=1366560945,
        )
        == "$1$390fbfa43fee1262bec58c1561590afb812ffdd5"
    )
    assert (
        ovh.signature(
            "sec",
            "ck",
            method="POST",
            url="https://eu.api.ovh.com/1.0" + ovh.block_path("203.0.113.0/28"),
            body=ovh.mitigation_body("203.0.113.4"),
            ts=1700000000,
        )
        == "$1$09f83155fcd578d7423ea45f43d467d37e29f0e3"
    )


def test_ovh_paths_and_bodies() -> None:
    assert ovh.block_path("203.0.113.0/28") == "/ip/203.0.113.0%2F28/mitigation"
    assert ovh.mitigation_body("203.0.113.4") == '{"ipOnMitigation": "203.0.113.4"}'


def test_covering_picks_the_most_specific_target() -> None:
    targets = disjoint(
        [
            Target(prefix=parse_prefix("203.0.113.0/25")),
            Target(prefix=parse_prefix("2001:db8::/48")),
        ]
    )
    assert str(covering(targets, ipaddress.ip_network("203.0.113.7/32"), what="x").prefix) == (
        "203.0.113.0/25"
    )
    assert str(covering(targets, ipaddress.ip_network("2001:db8::/64"), what="x").prefix) == (
        "2001:db8::/48"
    )
    with pytest.raises(AdapterRefused, match=r"203\.0\.113\.128/25 is not inside"):
        covering(targets, ipaddress.ip_network("203.0.113.128/25"), what="x")
    with pytest.raises(AdapterRefused, match="not inside"):
        covering(targets, ipaddress.ip_network("203.0.113.0/24"), what="x")  # wider than any


def test_targets_must_be_valid_and_disjoint() -> None:
    with pytest.raises(ValueError, match="overlap"):
        disjoint(
            [
                Target(prefix=parse_prefix("203.0.113.0/24")),
                Target(prefix=parse_prefix("203.0.113.64/26")),
            ]
        )
    with pytest.raises(ValueError, match="at least one"):
        disjoint([])
    with pytest.raises(ValueError, match="not a valid prefix"):
        parse_prefix("203.0.113.1/24")
    with pytest.raises(ValueError, match="not a valid prefix"):
        parse_prefix("bogus")
