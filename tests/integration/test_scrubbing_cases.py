"""Per-provider cases for test_scrubbing_contract.py (fake server + adapter config).

Each :class:`Case` says how to start the provider's fake, how to configure the
integration against it (with good or wrong credentials), which prefix to divert, which
write requests announce and withdraw must send (method, path, body), how every request
must authenticate, and how to read "diverting" straight from the fake's state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from adapters.base import AdapterConfig
from adapters.scrubbing.aws_shield import AwsShieldAdapter
from adapters.scrubbing.cloudflare_magic_transit import MagicTransitAdapter
from adapters.scrubbing.cloudflare_waf import CloudflareWafAdapter
from adapters.scrubbing.common import ScrubbingAdapter
from adapters.scrubbing.digitalocean import DigitalOceanAdapter
from adapters.scrubbing.hetzner import HetznerAdapter
from adapters.scrubbing.linode import LinodeAdapter
from adapters.scrubbing.vultr import VultrAdapter
from labs.vendors import digitalocean as do_fake
from labs.vendors import vultr as vultr_fake
from labs.vendors.aws import ShieldServer
from labs.vendors.cloudflare import CloudflareServer
from labs.vendors.digitalocean import DigitalOceanServer
from labs.vendors.hetzner import HetznerServer
from labs.vendors.linode import LinodeServer
from labs.vendors.server import FakeVendorServer, Request
from labs.vendors.vultr import VultrServer
from tests.hostaccess import LOOPBACK

FAST = {"timeout": 0.5, "retries": 1, "backoff": 0.0}
Write = tuple[str, str, Any]


@dataclass(frozen=True)
class Case:
    adapter_type: str
    cls: type[ScrubbingAdapter[Any]]
    server: Callable[[], FakeVendorServer]
    config: Callable[[FakeVendorServer, bool], AdapterConfig]  # (server, good credentials)
    prefix: str
    announce: list[Write]
    withdraw: list[Write]
    auth: Callable[[Request], None]
    diverting: Callable[[Any], bool]
    secrets: tuple[str, ...]
    outside: str = "198.51.100.0/24"
    refused_body: Any = None  # a 4xx body in the provider's error shape
    refused_text: str = ""  # what of it the outcome must keep
    summarize: Callable[[Request], Write | None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.adapter_type

    def writes(self, reqs: list[Request]) -> list[Write]:
        if self.summarize is not None:
            return [w for w in (self.summarize(r) for r in reqs) if w is not None]
        return [(r.method, r.path, r.body) for r in reqs if r.method != "GET"]


def cfg(
    adapter_type: str, srv: FakeVendorServer, token: str, suffix: str = "", **config: Any
) -> AdapterConfig:
    return AdapterConfig(
        access=LOOPBACK,
        name="it",
        adapter_type=adapter_type,
        endpoint=srv.url + suffix,
        auth_token=token,
        config={**FAST, **config},
    )


# ---------------------------------------------------------------- Cloudflare

CF_TOKEN = "cf-test-token"
CF_BGP = "/accounts/acc1/addressing/prefixes/pfx1/bgp/prefixes/pfx1-bgp"


def cf_auth(req: Request) -> None:
    assert req.header("authorization") == f"Bearer {CF_TOKEN}", req


CF_ERROR = {"success": False, "errors": [{"code": 1004, "message": "DNS Validation Error"}]}

MAGIC_TRANSIT = Case(
    adapter_type="cloudflare_magic_transit",
    cls=MagicTransitAdapter,
    server=CloudflareServer,
    config=lambda srv, good: cfg(
        "cloudflare_magic_transit",
        srv,
        CF_TOKEN if good else "bad-cf-token",
        account_id="acc1",
        prefixes=[{"prefix": "203.0.113.0/24", "prefix_id": "pfx1"}],
    ),
    prefix="203.0.113.0/24",
    announce=[("PATCH", CF_BGP, {"on_demand": {"advertised": True}})],
    withdraw=[("PATCH", CF_BGP, {"on_demand": {"advertised": False}})],
    auth=cf_auth,
    diverting=lambda srv: srv.prefixes["pfx1"]["advertised"],
    secrets=(CF_TOKEN, "bad-cf-token"),
    refused_body=CF_ERROR,
    refused_text="1004: DNS Validation Error",
)

WAF_LEVEL = "/zones/{}/settings/security_level"

CLOUDFLARE_WAF = Case(
    adapter_type="cloudflare_waf",
    cls=CloudflareWafAdapter,
    server=lambda: CloudflareServer(zones=("zone1", "zone2")),
    config=lambda srv, good: cfg(
        "cloudflare_waf",
        srv,
        CF_TOKEN if good else "bad-cf-token",
        account_id="acc1",
        targets=[
            {"prefix": "203.0.113.0/25", "zone_ids": ["zone1", "zone2"], "normal_level": "high"}
        ],
    ),
    prefix="203.0.113.10/32",
    announce=[
        ("PATCH", WAF_LEVEL.format("zone1"), {"value": "under_attack"}),
        ("PATCH", WAF_LEVEL.format("zone2"), {"value": "under_attack"}),
    ],
    withdraw=[
        ("PATCH", WAF_LEVEL.format("zone1"), {"value": "high"}),
        ("PATCH", WAF_LEVEL.format("zone2"), {"value": "high"}),
    ],
    auth=cf_auth,
    diverting=lambda srv: all(z["value"] == "under_attack" for z in srv.zones.values()),
    secrets=(CF_TOKEN, "bad-cf-token"),
    refused_body=CF_ERROR,
    refused_text="1004: DNS Validation Error",
)

# OVH is not in the contract: it cannot divert since OVH ended permanent mitigation
# (tests/integration/test_scrubbing_ovh.py checks the refusal and the status read-back).

# ---------------------------------------------------------------- Hetzner Robot


def hetzner_auth(req: Request) -> None:
    assert req.basic_auth() == ("robot-user", "robot-pw"), req.headers


HETZNER = Case(
    adapter_type="hetzner_mitigation",
    cls=HetznerAdapter,
    server=HetznerServer,
    config=lambda srv, good: cfg(
        "hetzner_mitigation",
        srv,
        "robot-pw" if good else "robot-wrong-pw",
        username="robot-user",
        targets=[{"prefix": "203.0.113.0/28", "server_numbers": [321, 322]}],
        attack_template_id="1002",
        normal_template_id="1001",
    ),
    prefix="203.0.113.0/28",
    announce=[
        ("POST", "/firewall/321", "template_id=1002"),
        ("POST", "/firewall/322", "template_id=1002"),
    ],
    withdraw=[
        ("POST", "/firewall/321", "template_id=1001"),
        ("POST", "/firewall/322", "template_id=1001"),
    ],
    auth=hetzner_auth,
    diverting=lambda srv: srv.applied(321) == srv.applied(322) == "1002",
    secrets=("robot-pw", "robot-wrong-pw"),
    refused_body={"error": {"status": 400, "code": "INVALID_INPUT", "message": "invalid input"}},
    refused_text="invalid input",
    summarize=lambda r: None if r.method == "GET" else (r.method, r.path, r.raw.decode()),
)

# ---------------------------------------------------------------- DigitalOcean


def bearer(token: str) -> Callable[[Request], None]:
    def check(req: Request) -> None:
        assert req.header("authorization") == f"Bearer {token}", req.headers

    return check


def droplets(fw: str, *ids: int) -> Write:
    return ("POST", f"/v2/firewalls/{fw}/droplets", {"droplet_ids": list(ids)})


def undroplets(fw: str, *ids: int) -> Write:
    return ("DELETE", f"/v2/firewalls/{fw}/droplets", {"droplet_ids": list(ids)})


def tagged(method: str, tag: str, droplet: int) -> Write:
    body = {"resources": [{"resource_id": str(droplet), "resource_type": "droplet"}]}
    return (method, f"/v2/tags/{tag}/resources", body)


def do_announce(droplet: int) -> list[Write]:
    """Into the lockdown firewall; the marker records that the normal one had it by id."""
    return [
        droplets(do_fake.LOCKDOWN, droplet),
        ("POST", "/v2/tags", {"name": "sluice-normal-id"}),
        tagged("POST", "sluice-normal-id", droplet),
        undroplets(do_fake.NORMAL, droplet),
    ]


def do_withdraw(droplet: int) -> list[Write]:
    return [
        droplets(do_fake.NORMAL, droplet),
        tagged("DELETE", "sluice-normal-id", droplet),
        undroplets(do_fake.LOCKDOWN, droplet),
    ]


DIGITALOCEAN = Case(
    adapter_type="digitalocean",
    cls=DigitalOceanAdapter,
    server=DigitalOceanServer,
    config=lambda srv, good: cfg(
        "digitalocean",
        srv,
        "do-test-token" if good else "do-wrong-token",
        targets=[{"prefix": "203.0.113.32/28", "droplet_ids": [1001, 1002]}],
        lockdown_firewall_id=do_fake.LOCKDOWN,
        normal_firewall_id=do_fake.NORMAL,
    ),
    prefix="203.0.113.32/28",
    announce=do_announce(1001) + do_announce(1002),
    withdraw=do_withdraw(1001) + do_withdraw(1002),
    auth=bearer("do-test-token"),
    diverting=lambda srv: (
        srv.firewalls[do_fake.LOCKDOWN]["droplet_ids"] == [1001, 1002]
        and srv.firewalls[do_fake.NORMAL]["droplet_ids"] == []
    ),
    secrets=("do-test-token", "do-wrong-token"),
    refused_body={"id": "bad_request", "message": "droplet is locked"},
    refused_text="droplet is locked",
)

# ---------------------------------------------------------------- Vultr

VULTR_IDS = list(vultr_fake.INSTANCES)

VULTR = Case(
    adapter_type="vultr",
    cls=VultrAdapter,
    server=VultrServer,
    config=lambda srv, good: cfg(
        "vultr",
        srv,
        "vultr-test-key" if good else "vultr-wrong-key",
        targets=[{"prefix": "203.0.113.16/28", "instance_ids": VULTR_IDS}],
        lockdown_group_id=vultr_fake.LOCKDOWN_GROUP,
        normal_group_id=vultr_fake.NORMAL_GROUP,
    ),
    prefix="203.0.113.20/32",
    announce=[
        ("PATCH", f"/v2/instances/{i}", {"firewall_group_id": vultr_fake.LOCKDOWN_GROUP})
        for i in VULTR_IDS
    ],
    withdraw=[
        ("PATCH", f"/v2/instances/{i}", {"firewall_group_id": vultr_fake.NORMAL_GROUP})
        for i in VULTR_IDS
    ],
    auth=bearer("vultr-test-key"),
    diverting=lambda srv: all(
        i["firewall_group_id"] == vultr_fake.LOCKDOWN_GROUP for i in srv.instances.values()
    ),
    secrets=("vultr-test-key", "vultr-wrong-key"),
    refused_body={"error": "Invalid firewall group.", "status": 400},
    refused_text="Invalid firewall group.",
)

# ---------------------------------------------------------------- Linode

LINODE_MARKED = ["web", "sluice-disabled"]  # the normal firewall's tag, and Sluice's marker

LINODE = Case(
    adapter_type="linode",
    cls=LinodeAdapter,
    server=LinodeServer,
    config=lambda srv, good: cfg(
        "linode",
        srv,
        "linode-test-token" if good else "linode-wrong-token",
        targets=[{"prefix": "2001:db8:100::/48", "firewall_id": 7001, "normal_firewall_id": 7000}],
    ),
    prefix="2001:db8:100:1::/64",
    outside="2001:db8:200::/48",
    announce=[
        ("PUT", "/v4/networking/firewalls/7000", {"status": "disabled", "tags": LINODE_MARKED}),
        ("PUT", "/v4/networking/firewalls/7001", {"status": "enabled"}),
    ],
    withdraw=[
        ("PUT", "/v4/networking/firewalls/7001", {"status": "disabled"}),
        ("PUT", "/v4/networking/firewalls/7000", {"status": "enabled", "tags": ["web"]}),
    ],
    auth=bearer("linode-test-token"),
    diverting=lambda srv: (
        srv.firewalls[7001]["status"] == "enabled" and srv.firewalls[7000]["status"] == "disabled"
    ),
    secrets=("linode-test-token", "linode-wrong-token"),
    refused_body={"errors": [{"reason": "Firewall is locked", "field": "status"}]},
    refused_text="Firewall is locked",
)

# ---------------------------------------------------------------- AWS Shield Advanced

AWS_KEY, AWS_SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
EIP = "arn:aws:ec2:us-east-1:123456789012:eip-allocation/eipalloc-0123456789abcdef0"
SHIELD_READS = ("ListProtections", "DescribeProtection", "GetSubscriptionState")


def shield_auth(req: Request) -> None:
    assert (req.header("authorization") or "").startswith(
        f"AWS4-HMAC-SHA256 Credential={AWS_KEY}/"
    ), req.headers
    assert req.header("content-type") == "application/x-amz-json-1.1"
    assert (req.header("x-amz-target") or "").startswith("AWSShield_20160616.")


def shield_write(req: Request) -> Write | None:
    op = (req.header("x-amz-target") or "").removeprefix("AWSShield_20160616.")
    if op in SHIELD_READS:
        return None
    body = dict(req.body or {})
    if "ProtectionId" in body:
        body["ProtectionId"] = "<id>"
    return (op, req.path, body)


AWS_SHIELD = Case(
    adapter_type="aws_shield",
    cls=AwsShieldAdapter,
    server=ShieldServer,
    config=lambda srv, good: cfg(
        "aws_shield",
        srv,
        AWS_SECRET if good else "wrongSecretKeyValue/abc",
        access_key_id=AWS_KEY,
        targets=[{"prefix": "203.0.113.64/26", "resource_arn": EIP}],
    ),
    prefix="203.0.113.70/32",
    announce=[("CreateProtection", "/", {"Name": "sluice-203.0.113.64_26", "ResourceArn": EIP})],
    withdraw=[("DeleteProtection", "/", {"ProtectionId": "<id>"})],
    auth=shield_auth,
    diverting=lambda srv: srv.protected(EIP),
    secrets=(AWS_SECRET, "wrongSecretKeyValue/abc"),
    refused_body={"__type": "InvalidParameterException", "message": "bad resource"},
    refused_text="InvalidParameterException: bad resource",
    summarize=shield_write,
)

CASES = [MAGIC_TRANSIT, CLOUDFLARE_WAF, HETZNER, DIGITALOCEAN, VULTR, LINODE, AWS_SHIELD]
