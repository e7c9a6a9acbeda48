"""One test per mismatch of issue 16 between an integration and its vendor's real API.

Each test drives the integration against its corrected fake (``labs/vendors``), which
refuses what the real API refuses, and fails on the code before the fix. Round trips
(announce, read, withdraw, read) must end in exactly the state they started from.
"""

from __future__ import annotations

import copy
import datetime as dt
import time
from typing import Any

import httpx
import pytest
import standardwebhooks

from adapters.base import AdapterConfig, RuleRef
from adapters.cloudflare import CloudflareAdapter
from adapters.f5 import F5Adapter
from adapters.radware import RadwareAdapter
from adapters.scrubbing import sigv4
from adapters.scrubbing.aws_shield import AwsShieldAdapter
from adapters.scrubbing.cloudflare_waf import CloudflareWafAdapter
from adapters.scrubbing.digitalocean import DigitalOceanAdapter
from adapters.scrubbing.linode import LinodeAdapter
from adapters.webhook import WebhookAdapter
from labs.vendors import digitalocean as do_fake
from labs.vendors.aws import ShieldServer
from labs.vendors.cloudflare import CloudflareServer
from labs.vendors.digitalocean import DigitalOceanServer
from labs.vendors.f5 import F5Server
from labs.vendors.linode import LinodeServer
from labs.vendors.radware import RadwareServer
from labs.vendors.server import Fault
from labs.vendors.webhook_receiver import WebhookReceiver
from policies.errors import AdapterConfigInvalid
from policies.intents import build_intent
from tests.hostaccess import LOOPBACK
from tests.integration.test_scrubbing_cases import AWS_KEY, AWS_SECRET, EIP, FAST


def scrub(prefix: str, rule_id: int = 1) -> RuleRef:
    return RuleRef(rule_id, build_intent({"kind": "scrubbing", "prefix": prefix}))


def config(kind: str, url: str, token: str, **settings: Any) -> AdapterConfig:
    return AdapterConfig(
        name="it",
        adapter_type=kind,
        endpoint=url,
        auth_token=token,
        config={**FAST, **settings},
        access=LOOPBACK,  # the vendor fakes listen on loopback: allowed on purpose
    )


# ---------------------------------------------------------------- webhooks (item 8)


class SteppingClock:
    """Unix time that moves ``step`` seconds each time the sender reads it."""

    def __init__(self, step: float) -> None:
        self.now = time.time()
        self.step = step
        self.reads: list[int] = []

    def sender(self) -> float:
        value = self.now
        self.reads.append(int(value))
        self.now += self.step
        return value

    def receiver(self) -> float:
        return self.now - self.step  # the moment of the last attempt


def webhook(url: str, secret: str, clock: SteppingClock | None = None) -> WebhookAdapter:
    made = WebhookAdapter.from_config(
        config("webhook", url, secret, allowed_targets=["127.0.0.1"], retries=2, backoff=0.0)
    )
    if clock is None:
        return made
    return WebhookAdapter(made.name, made.settings, made.capabilities, clock=clock.sender)


async def test_webhook_retries_carry_a_fresh_timestamp_and_signature() -> None:
    clock = SteppingClock(step=120.0)  # each retry comes 2 minutes after the previous one
    with WebhookReceiver(tolerance=60) as rx:
        rx.clock = clock.receiver
        rx.faults.add(Fault.answer(503, {"message": "busy"}), times=2)
        hook = webhook(rx.hook_url, rx.secret, clock)
        try:
            [out] = await hook.announce(
                [RuleRef(1, build_intent({"kind": "blackhole", "prefix": "192.0.2.7/32"}))]
            )
        finally:
            await hook.close()
        assert out.ok, out.error
        posts = rx.journal.find("POST")
        assert len(posts) == 3
        assert len({p.header("webhook-id") for p in posts}) == 1  # one message
        stamps = [int(p.header("webhook-timestamp") or 0) for p in posts]
        assert stamps == clock.reads and stamps[1] - stamps[0] == stamps[2] - stamps[1] == 120
        assert len({p.header("webhook-signature") for p in posts}) == 3
        # the delivered attempt verifies with the reference library, independently of ours
        good = posts[-1]
        standardwebhooks.Webhook(rx.secret).verify(good.raw, dict(good.headers))


async def test_webhook_secret_without_base64_padding_is_accepted() -> None:
    padded = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes: no padding needed
    unpadded = "whsec_" + "c2x1aWNlIHdlYmhvb2sga2V5IDI1IGJ5dA"  # 25 bytes, "=" left off
    standardwebhooks.Webhook(unpadded)  # the reference library takes it
    with WebhookReceiver(secret=unpadded) as rx:
        hook = webhook(rx.hook_url, unpadded)
        try:
            health = await hook.check()
        finally:
            await hook.close()
        assert health.ok, health.detail
        [post] = rx.journal.find("POST")
        body = standardwebhooks.Webhook(unpadded).verify(post.raw, dict(post.headers))
        assert body["type"] == "sluice.test"
    assert webhook("http://127.0.0.1:9/h", padded).settings.auth_token.get_secret_value()


# ---------------------------------------------------------------- AWS Shield (item 7)


async def test_shield_region_other_than_us_east_1_is_refused_at_creation() -> None:
    with ShieldServer() as srv:
        settings = {
            "access_key_id": AWS_KEY,
            "targets": [{"prefix": "203.0.113.64/26", "resource_arn": EIP}],
        }
        with pytest.raises(AdapterConfigInvalid, match=r"config\.region"):
            AwsShieldAdapter.from_config(
                config("aws_shield", srv.url, AWS_SECRET, region="eu-west-1", **settings)
            )
        ad = AwsShieldAdapter.from_config(
            config("aws_shield", srv.url, AWS_SECRET, region="us-east-1", **settings)
        )
        try:
            [out] = await ad.announce([scrub("203.0.113.64/26")])
            assert out.ok, out.error
            assert (await ad.check()).ok
        finally:
            await ad.close()


def test_shield_fake_refuses_a_scope_other_than_us_east_1() -> None:
    with ShieldServer() as srv:
        body = b"{}"
        headers = {
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "AWSShield_20160616.GetSubscriptionState",
        }
        host = srv.url.removeprefix("http://")
        for region, status in (("eu-west-1", 403), ("us-east-1", 200)):
            signed = sigv4.sign(
                method="POST",
                url=srv.url + "/",
                headers={"Host": host, **headers},
                payload=body,
                access_key=AWS_KEY,
                secret_key=AWS_SECRET,
                region=region,
                service="shield",
                amz_date=dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ"),
            )
            resp = httpx.post(srv.url + "/", content=body, headers={**headers, **signed})
            assert resp.status_code == status, resp.text
            if status == 403:
                assert resp.json()["__type"] == "InvalidSignatureException"
                assert "us-east-1" in resp.json()["message"]


# ---------------------------------------------------------------- F5 (item 5)


def f5(srv: F5Server) -> F5Adapter:
    return F5Adapter.from_config(
        config(
            "f5", srv.url, "admin-pw", username="admin", afm_address_list="sluice_blocked_sources"
        )
    )


async def test_f5_withdrawing_the_last_entry_never_empties_the_address_list() -> None:
    with F5Server() as srv:
        lst = srv.address_lists["/Common/sluice_blocked_sources"]
        before = copy.deepcopy(lst)
        ad = f5(srv)
        spec = {"kind": "flowspec", "destination": "192.0.2.1/32", "source": "198.51.100.0/24"}
        rule = RuleRef(7, build_intent(spec))
        try:
            [out] = await ad.announce([rule])
            assert out.ok, out.error
            assert await ad.active() == frozenset({rule.key})
            # the operator tidies the list by hand: Sluice's entry is now its only member
            lst["addresses"] = [a for a in lst["addresses"] if a["name"] != "100::/128"]
            [out] = await ad.withdraw([rule])
            assert out.ok, out.error  # the fake refuses a list left without members
            assert await ad.active() == frozenset()
        finally:
            await ad.close()
        assert lst == before
        for patch in srv.journal.find("PATCH"):
            assert patch.body["addresses"], patch.body


def test_f5_fake_refuses_an_address_list_without_members() -> None:
    with F5Server() as srv:
        token = httpx.post(
            srv.url + "/mgmt/shared/authn/login",
            json={"username": "admin", "password": "admin-pw", "loginProviderName": "tmos"},
        ).json()["token"]["token"]
        url = srv.url + "/mgmt/tm/security/firewall/address-list/~Common~sluice_blocked_sources"
        auth = {"X-F5-Auth-Token": token}
        resp = httpx.patch(url, json={"addresses": []}, headers=auth)
        assert resp.status_code == 400 and "at least one" in resp.json()["message"]
        srv.address_lists["/Common/sluice_blocked_sources"]["fqdns"] = [{"name": "example.net"}]
        assert httpx.patch(url, json={"addresses": []}, headers=auth).status_code == 200


# ---------------------------------------------------------------- Cloudflare (item 6)


async def test_cloudflare_uses_bgp_prefixes_not_the_deprecated_status() -> None:
    with CloudflareServer() as srv:
        before = dict(srv.prefixes["pfx1"])
        ad = CloudflareAdapter.from_config(
            config(
                "cloudflare",
                srv.url,
                "cf-test-token",
                account_id="acc1",
                prefixes=[{"prefix": "203.0.113.0/24", "prefix_id": "pfx1"}],
            )
        )
        rule = scrub("203.0.113.0/24")
        try:
            assert await ad.active() == frozenset()
            [out] = await ad.announce([rule])
            assert out.ok, out.error
            assert out.detail["units"][0]["bgp_prefix_id"] == "pfx1-bgp"
            assert await ad.active() == frozenset({rule.key})
            [out] = await ad.withdraw([rule])
            assert out.ok, out.error
            assert await ad.active() == frozenset()
        finally:
            await ad.close()
        paths = {r.path for r in srv.journal.all()}
        assert not any(p.endswith("/bgp/status") for p in paths), paths
        assert "/accounts/acc1/addressing/prefixes/pfx1/bgp/prefixes/pfx1-bgp" in paths
        after = srv.prefixes["pfx1"]
        assert {k: v for k, v in after.items() if k != "advertised_modified_at"} == {
            k: v for k, v in before.items() if k != "advertised_modified_at"
        }


async def test_cloudflare_locked_advertisement_is_refused() -> None:
    with CloudflareServer() as srv:
        srv.prefixes["pfx1"]["on_demand_locked"] = True
        ad = CloudflareAdapter.from_config(
            config(
                "cloudflare",
                srv.url,
                "cf-test-token",
                account_id="acc1",
                prefixes=[{"prefix": "203.0.113.0/24", "prefix_id": "pfx1"}],
            )
        )
        try:
            [out] = await ad.announce([scrub("203.0.113.0/24")])
        finally:
            await ad.close()
        assert not out.ok and not out.retryable and "locked" in (out.error or "")
        assert srv.prefixes["pfx1"]["advertised"] is False


@pytest.mark.parametrize("owner", ["account", "user"])
async def test_cloudflare_token_is_verified_where_its_kind_is(owner: str) -> None:
    kind = {"tokens": ("acct-token",)} if owner == "account" else {"user_tokens": ("usr-token",)}
    token = "acct-token" if owner == "account" else "usr-token"
    with CloudflareServer(**kind) as srv:  # type: ignore[arg-type]
        ad = CloudflareWafAdapter.from_config(
            config(
                "cloudflare_waf",
                srv.url,
                token,
                token_owner=owner,
                **({"account_id": "acc1"} if owner == "account" else {}),
                targets=[{"prefix": "203.0.113.0/25", "zone_ids": ["zone1"]}],
            )
        )
        try:
            health = await ad.check()
        finally:
            await ad.close()
        assert health.ok, health.detail
        want = "/accounts/acc1/tokens/verify" if owner == "account" else "/user/tokens/verify"
        assert [r.path for r in srv.journal.all()] == [want]


def test_cloudflare_account_token_needs_the_account_id() -> None:
    with pytest.raises(AdapterConfigInvalid, match="account_id is required"):
        CloudflareWafAdapter.from_config(
            config(
                "cloudflare_waf",
                "http://127.0.0.1:9",
                "t",
                targets=[{"prefix": "203.0.113.0/25", "zone_ids": ["zone1"]}],
            )
        )


# ---------------------------------------------------------------- Linode (item 2)


def linode(srv: LinodeServer, **target: Any) -> LinodeAdapter:
    t = {"prefix": "2001:db8:100::/48", "firewall_id": 7001, **target}
    return LinodeAdapter.from_config(config("linode", srv.url, "linode-test-token", targets=[t]))


async def test_linode_disables_the_normal_firewall_before_enabling_the_lockdown() -> None:
    with LinodeServer() as srv:
        before = copy.deepcopy(srv.firewalls)
        ad = linode(srv, normal_firewall_id=7000)
        rule = scrub("2001:db8:100::/48")
        try:
            assert await ad.active() == frozenset()
            [out] = await ad.announce([rule])
            assert out.ok, out.error
            assert (srv.firewalls[7000]["status"], srv.firewalls[7001]["status"]) == (
                "disabled",
                "enabled",
            )
            assert await ad.active() == frozenset({rule.key})
            [out] = await ad.withdraw([rule])
            assert out.ok, out.error
            assert await ad.active() == frozenset()
        finally:
            await ad.close()
        assert srv.firewalls == before


async def test_linode_a_normal_firewall_already_disabled_is_left_alone() -> None:
    with LinodeServer() as srv:
        srv.firewalls[7000]["status"] = "disabled"  # the operator's choice, before any attack
        before = copy.deepcopy(srv.firewalls)
        first = linode(srv, normal_firewall_id=7000)
        try:
            [out] = await first.announce([scrub("2001:db8:100::/48")])
            assert out.ok, out.error
        finally:
            await first.close()
        second = linode(srv, normal_firewall_id=7000)  # after a restart
        try:
            [out] = await second.withdraw([scrub("2001:db8:100::/48")])
            assert out.ok, out.error
        finally:
            await second.close()
        assert srv.firewalls == before
        assert [r.path for r in srv.journal.find("PUT")] == [
            "/v4/networking/firewalls/7001",
            "/v4/networking/firewalls/7001",
        ]


async def test_linode_lockdown_is_refused_while_the_normal_firewall_is_enabled() -> None:
    with LinodeServer() as srv:
        ad = linode(srv)  # no normal firewall named: the Linodes' normal one stays enabled
        try:
            [out] = await ad.announce([scrub("2001:db8:100::/48")])
            assert not out.ok and "only one enabled firewall" in (out.error or "")
            assert (await ad.status()).diverting is False
        finally:
            await ad.close()
        assert srv.firewalls[7001]["status"] == "disabled"


async def test_linode_a_refused_lockdown_re_enables_the_normal_firewall() -> None:
    with LinodeServer() as srv:
        locked = {"errors": [{"reason": "Firewall 7001 is being updated", "field": "status"}]}
        srv.faults.add(Fault.answer(400, locked), method="PUT", path=r".*/7001")
        ad = linode(srv, normal_firewall_id=7000)
        try:
            [out] = await ad.announce([scrub("2001:db8:100::/48")])
        finally:
            await ad.close()
        assert not out.ok and "being updated" in (out.error or "")
        statuses = {fid: fw["status"] for fid, fw in srv.firewalls.items()}
        assert statuses == {7000: "enabled", 7001: "disabled"}
        writes = [(r.path.rsplit("/", 1)[-1], r.body) for r in srv.journal.find("PUT")]
        assert writes == [
            ("7000", {"status": "disabled", "tags": ["web", "sluice-disabled"]}),
            ("7001", {"status": "enabled"}),
            ("7000", {"status": "enabled", "tags": ["web"]}),
        ]
        assert srv.firewalls[7000]["tags"] == ["web"]


# ---------------------------------------------------------------- DigitalOcean (item 4)


def digitalocean(srv: DigitalOceanServer, *droplets: int) -> DigitalOceanAdapter:
    return DigitalOceanAdapter.from_config(
        config(
            "digitalocean",
            srv.url,
            "do-test-token",
            targets=[{"prefix": "203.0.113.32/28", "droplet_ids": list(droplets)}],
            lockdown_firewall_id=do_fake.LOCKDOWN,
            normal_firewall_id=do_fake.NORMAL,
        )
    )


@pytest.mark.parametrize("by_id", [False, True])
async def test_digitalocean_droplet_reached_through_a_tag_leaves_and_returns(by_id: bool) -> None:
    with DigitalOceanServer() as srv:
        normal = srv.firewalls[do_fake.NORMAL]
        normal["droplet_ids"] = [1001, 1002] if by_id else [1002]
        normal["tags"] = ["web"]
        srv.tags |= {"web", "prod"}
        srv.droplet_tags[1001] = ["prod", "web"]
        state = (copy.deepcopy(srv.firewalls), copy.deepcopy(srv.droplet_tags))
        ad = digitalocean(srv, 1001)
        rule = scrub("203.0.113.32/28")
        try:
            assert await ad.active() == frozenset()
            [out] = await ad.announce([rule])
            assert out.ok, out.error
            assert 1001 not in srv.reached(do_fake.NORMAL)  # the rules no longer add up
            assert srv.reached(do_fake.LOCKDOWN) == [1001]
            assert srv.reached(do_fake.NORMAL) == [1002]  # the other droplet keeps it
            assert await ad.active() == frozenset({rule.key})
            [out] = await ad.withdraw([rule])
            assert out.ok, out.error
            assert await ad.active() == frozenset()
        finally:
            await ad.close()
        assert (srv.firewalls, srv.droplet_tags) == state


async def test_digitalocean_restart_restores_from_the_markers_at_the_provider() -> None:
    with DigitalOceanServer() as srv:
        srv.firewalls[do_fake.NORMAL]["tags"] = ["web"]
        srv.firewalls[do_fake.NORMAL]["droplet_ids"] = [1002]
        srv.tags.add("web")
        srv.droplet_tags[1001] = ["web"]
        state = (copy.deepcopy(srv.firewalls), copy.deepcopy(srv.droplet_tags))
        first = digitalocean(srv, 1001)
        try:
            [out] = await first.announce([scrub("203.0.113.32/28")])
            assert out.ok, out.error
        finally:
            await first.close()
        second = digitalocean(srv, 1001)  # a new process: nothing in memory
        try:
            assert (await second.status()).diverting is True
            [out] = await second.withdraw([scrub("203.0.113.32/28")])
            assert out.ok, out.error
        finally:
            await second.close()
        assert (srv.firewalls, srv.droplet_tags) == state


def test_digitalocean_fake_refuses_unknown_tags_and_bad_names() -> None:
    with DigitalOceanServer() as srv:
        auth = {"Authorization": "Bearer do-test-token"}
        one = {"resources": [{"resource_id": "1001", "resource_type": "droplet"}]}
        r = httpx.post(srv.url + "/v2/tags/nope/resources", json=one, headers=auth)
        assert r.status_code == 404
        r = httpx.post(srv.url + "/v2/tags", json={"name": "bad tag!"}, headers=auth)
        assert r.status_code == 422


# ---------------------------------------------------------------- Radware (item 9)


async def test_radware_check_claims_no_attack_state_that_no_source_documents() -> None:
    with RadwareServer() as srv:
        df = RadwareAdapter.from_config(
            config("radware", srv.url, "radware-pw", username="radware")
        )
        try:
            [out] = await df.announce([scrub("192.0.2.0/24")])
            assert out.ok, out.error
            health = await df.check()
        finally:
            await df.close()
        # an attack is running, and the answer (names only) cannot say so: neither may we
        assert health.ok and health.detail == "DefenseFlow: 1 protected objects (customer-a)"
        [listing] = srv.journal.find("GET", r".*/ProtectedObjects")
        assert listing.path == "/mgmt/device/df/config/ProtectedObjects"


async def test_digitalocean_an_existing_marker_tag_answered_422_is_fine() -> None:
    with DigitalOceanServer() as srv:
        srv.tags.add("sluice-normal-id")  # left in the account by an earlier lockdown
        taken = {"id": "unprocessable_entity", "message": "tag already exists"}
        srv.faults.add(Fault.answer(422, taken), method="POST", path="/v2/tags")
        ad = digitalocean(srv, 1001)
        try:
            [out] = await ad.announce([scrub("203.0.113.32/28")])
            assert out.ok, out.error
            assert srv.droplet_tags[1001] == ["sluice-normal-id"]
            [out] = await ad.withdraw([scrub("203.0.113.32/28")])
            assert out.ok, out.error
        finally:
            await ad.close()
        assert srv.reached(do_fake.NORMAL) == [1001, 1002] and srv.droplet_tags[1001] == []
