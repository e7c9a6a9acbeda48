"""Golden cases for the pure parts of the scrubbing integrations."""

from __future__ import annotations

import ipaddress

import pytest

from adapters.scrubbing import aws_shield, hetzner, ovh, sigv4
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


# AWS's published Signature Version 4 examples (get-vanilla of the SigV4 test suite and
# the IAM ListUsers walk-through of the SigV4 documentation).
AKID, AKSECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def test_sigv4_matches_aws_get_vanilla() -> None:
    headers = sigv4.sign(
        method="GET",
        url="https://example.amazonaws.com/",
        headers={"Host": "example.amazonaws.com"},
        payload=b"",
        access_key=AKID,
        secret_key=AKSECRET,
        region="us-east-1",
        service="service",
        amz_date="20150830T123600Z",
    )
    assert headers == {
        "X-Amz-Date": "20150830T123600Z",
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/"
        "aws4_request, SignedHeaders=host;x-amz-date, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
    }


def test_sigv4_matches_aws_iam_list_users() -> None:
    headers = sigv4.sign(
        method="GET",
        url="https://iam.amazonaws.com/?Version=2010-05-08&Action=ListUsers",
        headers={
            "Host": "iam.amazonaws.com",
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        },
        payload=b"",
        access_key=AKID,
        secret_key=AKSECRET,
        region="us-east-1",
        service="iam",
        amz_date="20150830T123600Z",
    )
    assert headers["Authorization"].endswith(
        "SignedHeaders=content-type;host;x-amz-date, "
        "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
    )


def test_sigv4_session_token_is_signed() -> None:
    headers = sigv4.sign(
        method="POST",
        url="https://shield.us-east-1.amazonaws.com/",
        headers={"Host": "shield.us-east-1.amazonaws.com"},
        payload=b"{}",
        access_key=AKID,
        secret_key=AKSECRET,
        region="us-east-1",
        service="shield",
        amz_date="20240101T000000Z",
        session_token="FQoGZXIvYXdzEXAMPLE",
    )
    assert headers["X-Amz-Security-Token"] == "FQoGZXIvYXdzEXAMPLE"
    assert "SignedHeaders=host;x-amz-date;x-amz-security-token," in headers["Authorization"]


def test_shield_request_rendering() -> None:
    headers, body = aws_shield.request_body(
        "CreateProtection", {"Name": "sluice-203.0.113.0_24", "ResourceArn": "arn:aws:x"}
    )
    assert headers == {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": "AWSShield_20160616.CreateProtection",
    }
    assert body == b'{"Name":"sluice-203.0.113.0_24","ResourceArn":"arn:aws:x"}'
    assert aws_shield.protection_name("2001:db8::/48") == "sluice-2001.db8.._48"
    assert aws_shield.error_type(
        {"__type": "com.amazonaws.shield#ResourceNotFoundException", "message": "gone"}
    ) == ("ResourceNotFoundException", "gone")
    assert aws_shield.error_type("x") == ("", "")


def test_hetzner_rule_normalization_and_form() -> None:
    rules = [
        {"ip_version": "ipv4", "name": "a", "dst_ip": None, "src_port": "", "action": "accept"}
    ]
    assert hetzner.normalize_rules(rules) == [
        {"ip_version": "ipv4", "name": "a", "action": "accept"}
    ]
    assert hetzner.normalize_rules(None) == []
    assert hetzner.template_form("1002") == b"template_id=1002"
