"""Provider specifics beyond the shared contract (test_scrubbing_contract.py)."""

from __future__ import annotations

from typing import Any

from adapters.base import AdapterConfig, RuleRef
from adapters.scrubbing.aws_shield import AwsShieldAdapter
from adapters.scrubbing.cloudflare_waf import CloudflareWafAdapter
from adapters.scrubbing.digitalocean import DigitalOceanAdapter
from adapters.scrubbing.hetzner import HetznerAdapter
from adapters.scrubbing.vultr import VultrAdapter
from labs.vendors import digitalocean as do_fake
from labs.vendors import vultr as vultr_fake
from labs.vendors.aws import ShieldServer
from labs.vendors.cloudflare import CloudflareServer
from labs.vendors.digitalocean import DigitalOceanServer
from labs.vendors.hetzner import HetznerServer
from labs.vendors.server import FakeVendorServer, Fault
from labs.vendors.vultr import VultrServer
from policies.intents import build_intent
from tests.hostaccess import LOOPBACK
from tests.integration.test_scrubbing_cases import AWS_KEY, AWS_SECRET, EIP, FAST


def cfg(kind: str, srv: FakeVendorServer, token: str, **config: Any) -> AdapterConfig:
    return AdapterConfig(
        access=LOOPBACK,
        name="p",
        adapter_type=kind,
        endpoint=srv.url,
        auth_token=token,
        config={**FAST, **config},
    )


def scrub(prefix: str, rule_id: int = 1) -> RuleRef:
    return RuleRef(rule_id, build_intent({"kind": "scrubbing", "prefix": prefix}))


def hetzner(srv: HetznerServer) -> HetznerAdapter:
    return HetznerAdapter.from_config(
        cfg(
            "hetzner_mitigation",
            srv,
            "robot-pw",
            username="robot-user",
            targets=[{"prefix": "203.0.113.10/31", "server_numbers": [321]}],
            attack_template_id="1002",
            normal_template_id="1001",
        )
    )


async def test_hetzner_busy_firewall_and_rate_limit_are_retryable() -> None:
    with HetznerServer() as srv:
        ad = hetzner(srv)
        try:
            busy = {"error": {"status": 409, "code": "FIREWALL_IN_PROCESS", "message": "busy"}}
            srv.faults.add(Fault.answer(409, busy), method="POST")
            [out] = await ad.announce([scrub("203.0.113.10/32")])
            assert not out.ok and out.retryable and "FIREWALL_IN_PROCESS" in (out.error or "")
            limit = {"error": {"status": 403, "code": "RATE_LIMIT_EXCEEDED", "message": "slow"}}
            srv.faults.add(Fault.answer(403, limit))
            [out] = await ad.announce([scrub("203.0.113.10/32")])
            assert not out.ok and out.retryable
            [out] = await ad.announce([scrub("203.0.113.10/32")])
            assert out.ok and srv.applied(321) == "1002"
            status = (await ad.status()).to_dict()
            assert status["targets"][0]["server_ip"] == "203.0.113.10"
            assert status["provider"]["attack_template_id"] == "1002"
            assert "robot-pw" not in repr(status)
        finally:
            await ad.close()


async def test_hetzner_operator_edits_mean_not_diverting() -> None:
    with HetznerServer() as srv:
        ad = hetzner(srv)
        try:
            await ad.announce([scrub("203.0.113.10/32")])
            srv.firewalls[321]["rules"]["input"].pop()  # someone edited the firewall by hand
            assert (await ad.status()).diverting is False
            assert await ad.active() == frozenset()
        finally:
            await ad.close()


async def test_digitalocean_without_a_normal_firewall_only_touches_the_lockdown_one() -> None:
    with DigitalOceanServer() as srv:
        ad = DigitalOceanAdapter.from_config(
            cfg(
                "digitalocean",
                srv,
                "do-test-token",
                targets=[{"prefix": "203.0.113.32/28", "droplet_ids": [1001]}],
                lockdown_firewall_id=do_fake.LOCKDOWN,
            )
        )
        try:
            [out] = await ad.announce([scrub("203.0.113.32/28")])
            assert out.ok
            assert srv.journal.summary() == [("POST", f"/v2/firewalls/{do_fake.LOCKDOWN}/droplets")]
            assert srv.firewalls[do_fake.NORMAL]["droplet_ids"] == [1001, 1002]  # untouched
            [out] = await ad.withdraw([scrub("203.0.113.32/28")])
            assert out.ok and srv.firewalls[do_fake.LOCKDOWN]["droplet_ids"] == []
        finally:
            await ad.close()


async def test_a_partly_diverted_target_is_shown_but_not_reported_as_held() -> None:
    with DigitalOceanServer() as srv:
        ad = DigitalOceanAdapter.from_config(
            cfg(
                "digitalocean",
                srv,
                "do-test-token",
                targets=[{"prefix": "203.0.113.32/28", "droplet_ids": [1001, 1002]}],
                lockdown_firewall_id=do_fake.LOCKDOWN,
                normal_firewall_id=do_fake.NORMAL,
            )
        )
        try:
            srv.firewalls[do_fake.LOCKDOWN]["droplet_ids"] = [1001]
            srv.firewalls[do_fake.NORMAL]["droplet_ids"] = [1002]
            status = await ad.status()
            assert status.diverting is True
            assert [u.diverting for u in status.units] == [True, False]
            assert await ad.active() == frozenset()  # the /28 is not fully diverted
            [out] = await ad.announce([scrub("203.0.113.32/28")])  # repairs it
            assert out.ok and scrub("203.0.113.32/28").key in (await ad.active() or set())
        finally:
            await ad.close()


async def test_vultr_returns_instances_to_no_firewall_group_with_0() -> None:
    """vultr-cli unsets a group with "0"; the fake refuses the "" the adapter used to send."""
    with VultrServer() as srv:
        iid = next(iter(vultr_fake.INSTANCES))
        srv.instances[iid]["firewall_group_id"] = ""
        ad = VultrAdapter.from_config(
            cfg(
                "vultr",
                srv,
                "vultr-test-key",
                targets=[{"prefix": "203.0.113.20/32", "instance_ids": [iid]}],
                lockdown_group_id=vultr_fake.LOCKDOWN_GROUP,
            )
        )
        try:
            before = dict(srv.instances[iid])
            [out] = await ad.announce([scrub("203.0.113.20/32")])
            assert out.ok, out.error
            assert await ad.active() == frozenset({scrub("203.0.113.20/32").key})
            [out] = await ad.withdraw([scrub("203.0.113.20/32")])
            assert out.ok, out.error
            assert srv.journal.last().body == {"firewall_group_id": "0"}
            assert srv.instances[iid] == before
            assert await ad.active() == frozenset()
        finally:
            await ad.close()


def shield(srv: ShieldServer, **config: Any) -> AwsShieldAdapter:
    base = {
        "access_key_id": AWS_KEY,
        "targets": [{"prefix": "203.0.113.64/26", "resource_arn": EIP}],
    }
    return AwsShieldAdapter.from_config(cfg("aws_shield", srv, AWS_SECRET, **{**base, **config}))


async def test_shield_read_back_follows_pages() -> None:
    with ShieldServer(page_size=2) as srv:
        for n in range(5):
            srv.protections[f"p{n}"] = {
                "Id": f"p{n}",
                "Name": f"other-{n}",
                "ResourceArn": f"arn:aws:ec2:us-east-1:123456789012:eip-allocation/eipalloc-{n}",
            }
        srv.protections["z-ours"] = {"Id": "z-ours", "Name": "sluice-x", "ResourceArn": EIP}
        ad = shield(srv)
        try:
            status = await ad.status()
            assert status.diverting is True
            assert status.units[0].detail["protection_id"] == "z-ours"
            lists = [
                r
                for r in srv.journal.all()
                if r.header("x-amz-target") == "AWSShield_20160616.ListProtections"
            ]
            assert len(lists) == 3
            assert lists[1].body == {"MaxResults": 100, "NextToken": "2"}
            [out] = await ad.withdraw([scrub("203.0.113.64/26")])
            assert out.ok and out.detail["units"][0]["protection_id"] == "z-ours"
            assert not srv.protected(EIP)
        finally:
            await ad.close()


async def test_shield_subscription_and_throttling() -> None:
    with ShieldServer(subscribed=False) as srv:
        ad = shield(srv)
        try:
            health = await ad.check()
            assert not health.ok and "INACTIVE" in health.detail
        finally:
            await ad.close()
    with ShieldServer() as srv:
        ad = shield(srv)
        try:
            srv.faults.add(
                Fault.answer(400, {"__type": "ThrottlingException", "message": "Rate exceeded"})
            )
            [out] = await ad.announce([scrub("203.0.113.64/26")])
            assert not out.ok and out.retryable and "Rate exceeded" in (out.error or "")
            srv.faults.add(
                Fault.answer(400, {"__type": "LimitsExceededException", "message": "too many"})
            )
            [out] = await ad.announce([scrub("203.0.113.64/26")])
            assert not out.ok and not out.retryable
        finally:
            await ad.close()


async def test_cloudflare_waf_status_shows_each_zone_level() -> None:
    with CloudflareServer(zones=("zone1", "zone2")) as srv:
        ad = CloudflareWafAdapter.from_config(
            cfg(
                "cloudflare_waf",
                srv,
                "cf-test-token",
                account_id="acc1",
                targets=[
                    {"prefix": "203.0.113.0/25", "zone_ids": ["zone1"]},
                    {"prefix": "203.0.113.128/25", "zone_ids": ["zone2"]},
                ],
            )
        )
        try:
            await ad.announce([scrub("203.0.113.200/32")])
            status = (await ad.status()).to_dict()
            levels = {t["id"]: t["security_level"] for t in status["targets"]}
            assert levels == {"zone1": "medium", "zone2": "under_attack"}
            assert status["diverting"] is True
            assert status["provider"]["zones"] == {
                "203.0.113.0/25": ["zone1"],
                "203.0.113.128/25": ["zone2"],
            }
        finally:
            await ad.close()
