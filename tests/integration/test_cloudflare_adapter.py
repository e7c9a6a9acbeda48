"""The Cloudflare adapter against a real HTTP fake of the Cloudflare API on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from adapters.base import AdapterConfig, Capability, RuleRef
from adapters.cloudflare import CloudflareAdapter
from labs.vendors.cloudflare import CloudflareServer
from labs.vendors.server import Fault
from policies.errors import AdapterConfigInvalid, AdapterRefused
from policies.intents import build_intent
from tests.hostaccess import LOOPBACK

TOKEN = "cf-test-token"
PREFIX = "203.0.113.0/24"
STATUS = "/accounts/acc1/addressing/prefixes/pfx1/bgp/prefixes/pfx1-bgp"
ITEMS = "/accounts/acc1/rules/lists/list1/items"


@pytest.fixture
def cf() -> Iterator[CloudflareServer]:
    with CloudflareServer() as srv:
        yield srv


def make(srv: CloudflareServer, token: str = TOKEN, **config: Any) -> CloudflareAdapter:
    base: dict[str, Any] = {
        "account_id": "acc1",
        "prefixes": [{"prefix": PREFIX, "prefix_id": "pfx1"}],
        "block_list_id": "list1",
        "zones": [{"zone_id": "zone1"}],
        "timeout": 1.0,
        "retries": 1,
        "backoff": 0.0,
        "list_poll_interval": 0.01,
    }
    base.update(config)
    return CloudflareAdapter.from_config(
        AdapterConfig(
            access=LOOPBACK,
            name="cf",
            adapter_type="cloudflare",
            endpoint=srv.url,
            auth_token=token,
            config=base,
        )
    )


def scrub(prefix: str, rule_id: int = 1) -> RuleRef:
    return RuleRef(rule_id, build_intent({"kind": "scrubbing", "prefix": prefix}))


def block(source: str, rule_id: int = 2, **extra: Any) -> RuleRef:
    spec = {"kind": "flowspec", "destination": "203.0.113.10/32", "source": source, **extra}
    return RuleRef(rule_id, build_intent(spec))


async def test_scrubbing_advertises_the_byoip_prefix_and_reads_it_back(
    cf: CloudflareServer,
) -> None:
    ad = make(cf)
    ref = scrub(PREFIX)
    try:
        [out] = await ad.announce([ref])
        assert out.ok, out.error
        req = cf.journal.last()
        assert (req.method, req.path, req.body) == (
            "PATCH",
            STATUS,
            {"on_demand": {"advertised": True}},
        )
        assert req.header("authorization") == f"Bearer {TOKEN}"
        assert cf.prefixes["pfx1"]["advertised"] is True
        assert ref.key in (await ad.active() or set())
        status = (await ad.status()).to_dict()
        assert status["diverting"] is True
        assert status["connection"]["ok"] is True
        assert status["targets"][0]["prefix"] == PREFIX
        assert status["provider"]["account_id"] == "acc1"
        assert TOKEN not in repr(status)

        [out] = await ad.withdraw([ref])
        assert out.ok, out.error
        assert cf.journal.last().body == {"on_demand": {"advertised": False}}
        assert cf.prefixes["pfx1"]["advertised"] is False
        assert await ad.active() == frozenset()
        assert (await ad.status()).diverting is False
    finally:
        await ad.close()


async def test_a_restarted_adapter_still_sees_the_diversion(cf: CloudflareServer) -> None:
    first = make(cf)
    await first.announce([scrub(PREFIX)])
    await first.close()
    second = make(cf)  # a new process: nothing in memory
    try:
        assert scrub(PREFIX).key in (await second.active() or set())
        assert (await second.status()).diverting is True
    finally:
        await second.close()


async def test_a_narrower_prefix_maps_to_its_byoip_prefix_and_is_reference_counted(
    cf: CloudflareServer,
) -> None:
    ad = make(cf)
    host, whole = scrub("203.0.113.10/32", 1), scrub(PREFIX, 2)
    try:
        outs = await ad.announce([host, whole])
        assert all(o.ok for o in outs), outs
        assert [r.path for r in cf.journal.find("PATCH")] == [STATUS, STATUS]
        held = await ad.active() or frozenset()
        assert {host.key, whole.key} <= held
        [out] = await ad.withdraw([host])  # the /24 still needs the advertisement
        assert out.ok and out.detail["kept_for_others"] == ["pfx1"]
        assert cf.prefixes["pfx1"]["advertised"] is True
        await ad.withdraw([whole])
        assert cf.prefixes["pfx1"]["advertised"] is False
    finally:
        await ad.close()


async def test_a_prefix_outside_every_byoip_prefix_is_refused_without_a_request(
    cf: CloudflareServer,
) -> None:
    ad = make(cf)
    try:
        [out] = await ad.announce([scrub("198.51.100.0/24")])
        assert not out.ok and not out.retryable
        assert "not inside any configured target prefix" in (out.error or "")
        assert len(cf.journal) == 0
    finally:
        await ad.close()


async def test_wrong_token_fails_without_leaking_it(cf: CloudflareServer) -> None:
    ad = make(cf, token="wrong-token-value")
    try:
        [out] = await ad.announce([scrub(PREFIX)])
        assert not out.ok and not out.retryable
        assert "10000: Authentication error" in (out.error or "")
        assert "wrong-token-value" not in (out.error or "")
        health = await ad.check()
        assert not health.ok and "wrong-token-value" not in health.detail
        status = await ad.status()
        assert status.diverting is None and "Authentication error" in (status.error or "")
    finally:
        await ad.close()


async def test_vendor_errors_become_failed_outcomes(cf: CloudflareServer) -> None:
    ad = make(cf)
    try:
        body = {"success": False, "errors": [{"code": 1000, "message": "bad prefix"}]}
        cf.faults.add(Fault.answer(400, body))
        [out] = await ad.announce([scrub(PREFIX)])
        assert not out.ok and not out.retryable and "1000: bad prefix" in (out.error or "")

        cf.faults.add(
            Fault.answer(503, {"success": False, "errors": [{"code": 1, "message": "busy"}]}),
            times=2,
        )
        [out] = await ad.announce([scrub(PREFIX)])
        assert not out.ok and out.retryable and "busy" in (out.error or "")

        cf.faults.add(Fault.delay(2.0), times=2)
        [out] = await ad.announce([scrub(PREFIX)])
        assert not out.ok and out.retryable and "timed out" in (out.error or "")

        cf.faults.add(Fault.malformed())
        [out] = await ad.announce([scrub(PREFIX)])
        assert not out.ok and out.retryable

        cf.faults.add(Fault.answer(200, {"result": {"advertised": True}}))  # no envelope
        [out] = await ad.announce([scrub(PREFIX)])
        assert not out.ok and out.retryable and "envelope" in (out.error or "")

        cf.faults.add(
            Fault.answer(200, {"success": False, "errors": [{"code": 7, "message": "nope"}]})
        )
        [out] = await ad.announce([scrub(PREFIX)])
        assert not out.ok and not out.retryable and "7: nope" in (out.error or "")

        [out] = await ad.announce([scrub(PREFIX)])  # and it recovers
        assert out.ok
    finally:
        await ad.close()


async def test_flowspec_source_discard_becomes_a_waf_list_item(cf: CloudflareServer) -> None:
    cf.lists["list1"].append({"id": "op1", "ip": "192.0.2.7", "comment": "operator"})
    ad = make(cf)
    one, two = (
        block("198.51.100.0/24", 2),
        block("198.51.100.0/24", 3, destination="203.0.113.11/32"),
    )
    try:
        [out] = await ad.announce([one])
        assert out.ok, out.error
        post = cf.journal.find("POST", ITEMS)[-1]
        assert post.body == [{"ip": "198.51.100.0/24", "comment": f"sluice {one.key}"}]
        assert post.header("authorization") == f"Bearer {TOKEN}"
        assert cf.journal.find("GET", r"/accounts/acc1/rules/lists/bulk_operations/.*")
        assert one.key in (await ad.active() or set())

        [out] = await ad.announce([two])
        assert out.ok
        comment = cf.journal.find("POST", ITEMS)[-1].body[0]["comment"]
        assert comment == "sluice " + ",".join(sorted([one.key, two.key]))
        [again] = await ad.announce([two])  # idempotent: nothing to change
        assert again.ok and again.detail["changed"] is False

        await ad.withdraw([one])
        assert cf.journal.find("POST", ITEMS)[-1].body == [
            {"ip": "198.51.100.0/24", "comment": f"sluice {two.key}"}
        ]
        await ad.withdraw([two])
        delete = cf.journal.find("DELETE", ITEMS)[-1]
        assert delete.body == {"items": [{"id": next(iter(delete.body["items"]))["id"]}]}
        assert [it["ip"] for it in cf.lists["list1"]] == ["192.0.2.7"]  # operator's item kept
        assert await ad.active() == frozenset()
    finally:
        await ad.close()


async def test_list_paging_is_followed(cf: CloudflareServer) -> None:
    cf.lists["list1"].extend(
        {"id": f"i{n}", "ip": f"192.0.2.{n}", "comment": "operator"} for n in range(1, 8)
    )
    cf.lists["list1"].append(
        {"id": "ours", "ip": "198.51.100.0/24", "comment": f"sluice {block('198.51.100.0/24').key}"}
    )
    ad = make(cf)
    try:
        items = await ad.api.call_paged(ITEMS, per_page=3)
        assert len(items) == 8
        assert len(cf.journal.find("GET", ITEMS)) == 3
    finally:
        await ad.close()


async def test_flowspec_that_a_list_cannot_express_is_refused(cf: CloudflareServer) -> None:
    ad = make(cf)
    try:
        outs = await ad.announce(
            [
                block("198.51.100.0/24", 2, destination_port="=53"),
                RuleRef(4, build_intent({"kind": "flowspec", "destination": "203.0.113.1/32"})),
                block(
                    "198.51.100.0/24", 5, action={"type": "rate-limit", "bytes_per_second": 1000}
                ),
                RuleRef(6, build_intent({"kind": "blackhole", "prefix": "203.0.113.1/32"})),
            ]
        )
        assert [o.ok for o in outs] == [False] * 4
        assert "destination_port" in (outs[0].error or "")
        assert "no source prefix" in (outs[1].error or "")
        assert "not discard" in (outs[2].error or "")
        assert "cannot carry blackhole" in (outs[3].error or "")
        assert len(cf.journal) == 0
    finally:
        await ad.close()


async def test_a_failed_list_operation_is_reported(cf: CloudflareServer) -> None:
    ad = make(cf)
    try:
        cf.faults.add(
            Fault.answer(
                200,
                {
                    "success": True,
                    "errors": [],
                    "result": {"id": "x", "status": "failed", "error": "quota exceeded"},
                },
            ),
            path=r".*/bulk_operations/.*",
        )
        [out] = await ad.announce([block("198.51.100.0/24")])
        assert not out.ok and "quota exceeded" in (out.error or "")
    finally:
        await ad.close()


async def test_under_attack_mode_toggles_the_zone_security_level(cf: CloudflareServer) -> None:
    ad = make(cf)
    try:
        on = await ad.under_attack("zone1", enabled=True)
        req = cf.journal.last()
        assert (req.method, req.path, req.body) == (
            "PATCH",
            "/zones/zone1/settings/security_level",
            {"value": "under_attack"},
        )
        assert on["security_level"] == "under_attack"
        assert await ad.security_levels() == {"zone1": "under_attack"}
        await ad.under_attack("zone1", enabled=False)
        assert cf.zones["zone1"]["value"] == "medium"
        with pytest.raises(AdapterRefused, match="not configured"):
            await ad.under_attack("zone9", enabled=True)
    finally:
        await ad.close()


def test_settings_are_validated_at_creation() -> None:
    def cfg(**config: Any) -> AdapterConfig:
        return AdapterConfig(
            name="cf", adapter_type="cloudflare", auth_token="t0ken", config=config
        )

    with pytest.raises(AdapterConfigInvalid, match=r"config\.account_id"):
        CloudflareAdapter.from_config(cfg())
    with pytest.raises(AdapterConfigInvalid, match="overlap"):
        CloudflareAdapter.from_config(
            cfg(
                account_id="a",
                prefixes=[
                    {"prefix": PREFIX, "prefix_id": "p"},
                    {"prefix": "203.0.113.0/25", "prefix_id": "q"},
                ],
            )
        )
    with pytest.raises(AdapterConfigInvalid, match=r"config\.prefixes"):
        CloudflareAdapter.from_config(
            cfg(account_id="a", prefixes=[{"prefix": "203.0.113.1/24", "prefix_id": "p"}])
        )
    with pytest.raises(AdapterConfigInvalid, match="auth_token"):
        CloudflareAdapter.from_config(
            AdapterConfig(name="cf", adapter_type="cloudflare", config={"account_id": "a"})
        )
    ad = CloudflareAdapter.from_config(cfg(account_id="a", block_list_id="l"))
    assert ad.capabilities == {Capability.FLOWSPEC}
    assert ad.settings.endpoint == "https://api.cloudflare.com/client/v4"
    assert "t0ken" not in repr(ad) and "t0ken" not in repr(ad.settings)
    with pytest.raises(AdapterConfigInvalid, match=r"config\.prefixes"):
        CloudflareAdapter.from_config(
            AdapterConfig(
                name="cf",
                adapter_type="cloudflare",
                auth_token="t0ken",
                config={"account_id": "a"},
                capabilities=(Capability.SCRUBBING,),
            )
        )
