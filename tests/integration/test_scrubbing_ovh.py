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
from tests.hostaccess import LOOPBACK

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
            access=LOOPBACK,
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
        status = await ad.status()  # signed reads of the block
        assert status.error is None and status.diverting is False
        assert len(ovh.journal.find("GET", "/1.0/auth/time")) == 1
    finally:
        await ad.close()


async def test_a_wrong_consumer_key_is_an_auth_failure(ovh: OvhServer) -> None:
    ad = make(ovh, consumer_key="ck-unknown-consumer")
    try:
        health = await ad.check()
        assert not health.ok
        assert "INVALID_CREDENTIAL" in health.detail
        assert "ck-unknown-consumer" not in health.detail
    finally:
        await ad.close()


async def test_announce_is_refused_because_ovh_ended_permanent_mitigation(ovh: OvhServer) -> None:
    ad = make(ovh)
    try:
        [out] = await ad.announce([scrub("203.0.113.4/31")])
        assert not out.ok and not out.retryable
        assert "ended permanent mitigation" in (out.error or "")
        assert [r for r in ovh.journal.all() if r.method != "GET"] == []  # nothing sent
        [out] = await ad.withdraw([scrub("203.0.113.4/31")])  # a rule from before: no call
        assert out.ok, out.error
        assert ovh.journal.all() == []
        assert ovh.blocks["203.0.113.0/28"] == {}
    finally:
        await ad.close()


async def test_status_shows_ovh_automatic_mitigation_but_sluice_holds_nothing(
    ovh: OvhServer,
) -> None:
    ad = make(ovh)
    try:
        ovh.attack("203.0.113.9")
        status = await ad.status()
        assert status.diverting is True  # OVH is scrubbing it: say so
        [unit] = status.units
        assert (unit.unit.uid, unit.detail["auto"]) == ("203.0.113.9", True)
        assert await ad.active() == frozenset()  # but it is not a rule of Sluice's
        ovh.calm("203.0.113.9")
        assert (await ad.status()).diverting is False
    finally:
        await ad.close()


def test_settings() -> None:
    def cfg(**config: Any) -> AdapterConfig:
        return AdapterConfig(
            name="o",
            adapter_type="ovh_mitigation",
            auth_token="s3cret",
            config=config,
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
