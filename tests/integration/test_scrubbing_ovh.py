"""OVH specifics: clock synchronisation, signature checks, automatic mitigation, limits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from adapters.base import AdapterConfig, RuleRef
from adapters.scrubbing.ovh import OvhMitigationAdapter
from labs.vendors.ovh import OvhServer
from policies.errors import AdapterConfigInvalid
from policies.intents import build_intent

BLOCK = "/1.0/ip/203.0.113.0%2F28/mitigation"


@pytest.fixture
def ovh() -> Iterator[OvhServer]:
    with OvhServer(clock_offset=3600) as srv:  # OVH's clock is an hour ahead of ours
        yield srv


def make(srv: OvhServer, **config: Any) -> OvhMitigationAdapter:
    base = {
        "application_key": "ak-test",
        "consumer_key": "ck-test-consumer",
        "targets": [{"prefix": "203.0.113.0/28"}],
        "timeout": 0.5,
        "retries": 0,
    }
    return OvhMitigationAdapter.from_config(
        AdapterConfig(
            name="ovh",
            adapter_type="ovh_mitigation",
            endpoint=srv.url + "/1.0",
            auth_token="as-test-secret",
            config={**base, **config},
        )
    )


def scrub(prefix: str) -> RuleRef:
    return RuleRef(1, build_intent({"kind": "scrubbing", "prefix": prefix}))


async def test_requests_use_ovh_time_and_verify(ovh: OvhServer) -> None:
    ad = make(ovh)
    try:
        health = await ad.check()
        assert health.ok, health.detail
        assert "credential 4242 is validated" in health.detail
        assert ovh.journal.summary()[:2] == [
            ("GET", "/1.0/auth/time"),
            ("GET", "/1.0/auth/currentCredential"),
        ]
        ts = int(ovh.journal.last().header("x-ovh-timestamp") or 0)
        assert abs(ts - ovh.now()) <= 2
        [out] = await ad.announce([scrub("203.0.113.9/32")])
        assert out.ok, out.error
        post = ovh.journal.find("POST")[0]
        assert post.raw == b'{"ipOnMitigation": "203.0.113.9"}'
        assert post.header("content-type") == "application/json"
        assert (
            ovh.journal.find("GET", "/1.0/auth/time")
            and len(ovh.journal.find("GET", "/1.0/auth/time")) == 1
        )
    finally:
        await ad.close()


async def test_a_wrong_consumer_key_is_an_auth_failure(ovh: OvhServer) -> None:
    ad = make(ovh, consumer_key="ck-unknown-consumer")
    try:
        [out] = await ad.announce([scrub("203.0.113.9/32")])
        assert not out.ok and not out.retryable
        assert "INVALID_CREDENTIAL" in (out.error or "")
        assert "ck-unknown-consumer" not in (out.error or "")
    finally:
        await ad.close()


async def test_automatic_mitigation_is_made_permanent_and_left_to_ovh_on_withdraw(
    ovh: OvhServer,
) -> None:
    ovh.blocks["203.0.113.0/28"]["203.0.113.9"] = {
        "ipOnMitigation": "203.0.113.9",
        "permanent": False,
        "auto": True,
        "state": "ok",
    }
    ad = make(ovh)
    try:
        status = await ad.status()
        assert status.diverting is True  # OVH's own mitigation shows in the status
        assert status.units[0].detail["auto"] is True
        [out] = await ad.announce([scrub("203.0.113.9/32")])
        assert out.ok
        put = ovh.journal.find("PUT")[0]
        assert (put.path, put.body) == (BLOCK + "/203.0.113.9", {"permanent": True})
        assert ovh.blocks["203.0.113.0/28"]["203.0.113.9"]["permanent"] is True
        [out] = await ad.withdraw([scrub("203.0.113.9/32")])
        assert out.ok and "203.0.113.9" not in ovh.blocks["203.0.113.0/28"]
    finally:
        await ad.close()


async def test_prefixes_too_wide_for_per_address_mitigation_are_refused(ovh: OvhServer) -> None:
    ad = make(ovh, max_addresses=4)
    try:
        [out] = await ad.announce([scrub("203.0.113.0/29")])
        assert not out.ok and not out.retryable
        assert "at most 4" in (out.error or "")
        assert ovh.journal.find("POST") == []
    finally:
        await ad.close()


def test_settings() -> None:
    def cfg(**config: Any) -> AdapterConfig:
        return AdapterConfig(
            name="o", adapter_type="ovh_mitigation", auth_token="s3cret", config=config
        )

    with pytest.raises(AdapterConfigInvalid, match=r"config\.application_key"):
        OvhMitigationAdapter.from_config(
            cfg(consumer_key="c", targets=[{"prefix": "203.0.113.0/28"}])
        )
    with pytest.raises(AdapterConfigInvalid, match="IPv4 blocks only"):
        OvhMitigationAdapter.from_config(
            cfg(application_key="a", consumer_key="c", targets=[{"prefix": "2001:db8::/64"}])
        )
    ad = OvhMitigationAdapter.from_config(
        cfg(application_key="a", consumer_key="c", targets=[{"prefix": "203.0.113.0/28"}])
    )
    assert ad.settings.endpoint == "https://eu.api.ovh.com/1.0"
    assert "s3cret" not in repr(ad.settings)
