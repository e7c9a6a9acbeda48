"""The F5 adapter against the fake iControl REST server on loopback (exact requests)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from adapters.base import AdapterConfig, Capability, RuleRef
from adapters.f5 import F5Adapter
from labs.vendors.f5 import F5Server
from labs.vendors.server import Fault
from policies.errors import AdapterConfigInvalid
from policies.intents import build_intent
from tests.hostaccess import LOOPBACK

PASSWORD = "admin-pw"
LIST = "sluice_blocked_sources"


@pytest.fixture
def srv() -> Iterator[F5Server]:
    with F5Server() as server:
        yield server


def make(srv: F5Server, **config: Any) -> F5Adapter:
    settings: dict[str, Any] = {
        "username": "admin",
        "afm_address_list": LIST,
        "timeout": 1.0,
        "retries": 1,
        "backoff": 0.01,
        **config,
    }
    password = settings.pop("password", PASSWORD)
    return F5Adapter.from_config(
        AdapterConfig(
            access=LOOPBACK,
            name="edge",
            adapter_type="f5",
            endpoint=srv.url,
            auth_token=password,
            config=settings,
        )
    )


@pytest.fixture
async def f5(srv: F5Server) -> AsyncIterator[F5Adapter]:
    adapter = make(srv)
    try:
        yield adapter
    finally:
        await adapter.close()


def ref(rule_id: int, **intent: Any) -> RuleRef:
    return RuleRef(rule_id, build_intent(intent))


BH = {"kind": "blackhole", "prefix": "192.0.2.7/32"}
FS = {"kind": "flowspec", "destination": "192.0.2.1/32", "source": "198.51.100.0/24"}


def token_of(srv: F5Server, index: int = -1) -> str:
    logins = srv.journal.find("POST", "/mgmt/shared/authn/login")
    token = logins[index]
    assert token.body is not None
    # the token the adapter got is the one it sends next
    after = [r for r in srv.journal.all() if r.at >= token.at and r.header("x-f5-auth-token")]
    value = after[0].header("x-f5-auth-token")
    assert value is not None
    return value


async def test_blackhole_announce_check_active_withdraw(srv: F5Server, f5: F5Adapter) -> None:
    rule = ref(1, **BH)
    [outcome] = await f5.announce([rule])
    assert outcome.ok, outcome.error
    name = f"sluice-{rule.key}"
    login, create = srv.journal.all()
    assert (login.method, login.path) == ("POST", "/mgmt/shared/authn/login")
    assert login.body == {"username": "admin", "password": PASSWORD, "loginProviderName": "tmos"}
    assert (create.method, create.path) == ("POST", "/mgmt/tm/net/route")
    assert create.body == {
        "name": name,
        "partition": "Common",
        "network": "192.0.2.7/32",
        "blackhole": True,
        "description": "blackhole 192.0.2.7/32; community 65535:666",
    }
    token = create.header("x-f5-auth-token")
    assert token is not None and srv.sessions.user(token) == "admin"
    assert srv.routes[f"/Common/{name}"]["blackhole"] is True

    health = await f5.check()
    assert health.ok, health.detail
    assert health.detail == f"BIG-IP 17.1.1 build 0.0.4; AFM list /Common/{LIST} holds 0 entries"
    assert await f5.active() == frozenset({rule.key})

    srv.journal.clear()
    [outcome] = await f5.withdraw([rule])
    assert outcome.ok
    [delete] = srv.journal.all()
    assert (delete.method, delete.path) == ("DELETE", f"/mgmt/tm/net/route/~Common~{name}")
    assert delete.header("x-f5-auth-token") == token  # the session is reused
    assert srv.routes == {}
    assert await f5.active() == frozenset()
    assert f5.logins == 1


async def test_announce_and_withdraw_are_idempotent(srv: F5Server, f5: F5Adapter) -> None:
    rule = ref(1, **BH)
    assert (await f5.announce([rule]))[0].ok
    again = (await f5.announce([rule]))[0]
    assert again.ok and again.detail["existed"] is True
    assert len(srv.routes) == 1
    assert (await f5.withdraw([rule]))[0].ok
    gone = (await f5.withdraw([rule]))[0]
    assert gone.ok and gone.detail["existed"] is False


async def test_flowspec_source_blocks_share_one_entry(srv: F5Server, f5: F5Adapter) -> None:
    srv.address_lists[f"/Common/{LIST}"]["addresses"] = [{"name": "203.0.113.9/32"}]
    a = ref(1, **FS)
    b = ref(2, **{**FS, "destination": "192.0.2.2/32"})
    outcomes = await f5.announce([a, b])
    assert [o.ok for o in outcomes] == [True, True], outcomes
    get, patch = srv.journal.all()[1:]
    assert (get.method, get.path) == (
        "GET",
        f"/mgmt/tm/security/firewall/address-list/~Common~{LIST}",
    )
    assert (patch.method, patch.path) == ("PATCH", get.path)
    keys = ",".join(sorted([a.key, b.key]))
    assert patch.body == {
        "addresses": [
            {"name": "203.0.113.9/32"},
            {"name": "198.51.100.0/24", "description": f"sluice:{keys}"},
        ]
    }
    assert await f5.active() == frozenset({a.key, b.key})

    assert (await f5.withdraw([a]))[0].ok
    assert srv.address_lists[f"/Common/{LIST}"]["addresses"] == [
        {"name": "203.0.113.9/32"},
        {"name": "198.51.100.0/24", "description": f"sluice:{b.key}"},
    ]
    assert (await f5.withdraw([b]))[0].ok
    assert srv.address_lists[f"/Common/{LIST}"]["addresses"] == [{"name": "203.0.113.9/32"}]
    srv.journal.clear()
    assert (await f5.withdraw([b]))[0].ok  # nothing to change: no PATCH
    assert srv.journal.summary() == [("GET", get.path)]


async def test_what_bigip_cannot_carry_is_refused_per_rule(srv: F5Server, f5: F5Adapter) -> None:
    rules = [
        ref(1, kind="scrubbing", prefix="192.0.2.0/24"),
        ref(2, **{**FS, "destination_port": "=53"}),
        ref(3, **{**BH, "communities": ["64500:666"]}),
        ref(4, **BH),
    ]
    outcomes = await f5.announce(rules)
    assert [(o.rule_id, o.ok, o.retryable) for o in outcomes] == [
        (1, False, False),
        (2, False, False),
        (3, False, False),
        (4, True, False),
    ]
    assert "cannot carry scrubbing" in (outcomes[0].error or "")
    assert "destination_port" in (outcomes[1].error or "")
    assert "route-map" in (outcomes[2].error or "")
    assert srv.journal.summary() == [
        ("POST", "/mgmt/shared/authn/login"),
        ("POST", "/mgmt/tm/net/route"),
    ]


async def test_without_address_list_flowspec_is_not_a_capability(srv: F5Server) -> None:
    adapter = make(srv, afm_address_list=None)
    try:
        assert adapter.capabilities == frozenset({Capability.BLACKHOLE})
        [outcome] = await adapter.announce([ref(1, **FS)])
        assert not outcome.ok and "cannot carry flowspec" in (outcome.error or "")
    finally:
        await adapter.close()
    with pytest.raises(AdapterConfigInvalid) as err:
        F5Adapter.from_config(
            AdapterConfig(
                access=LOOPBACK,
                name="edge",
                adapter_type="f5",
                endpoint=srv.url,
                auth_token=PASSWORD,
                config={"username": "admin"},
                capabilities=(Capability.FLOWSPEC,),
            )
        )
    assert err.value.field == "config.afm_address_list"


async def test_expired_token_means_one_new_login_and_a_retry(srv: F5Server, f5: F5Adapter) -> None:
    assert (await f5.announce([ref(1, **BH)]))[0].ok
    old = token_of(srv)
    srv.sessions.expire_all()  # the device forgot every token
    srv.journal.clear()
    assert (await f5.announce([ref(2, prefix="192.0.2.8/32", kind="blackhole")]))[0].ok
    first, login, second = srv.journal.all()
    assert (first.path, first.header("x-f5-auth-token")) == ("/mgmt/tm/net/route", old)
    assert login.path == "/mgmt/shared/authn/login"
    new = second.header("x-f5-auth-token")
    assert second.path == "/mgmt/tm/net/route" and new not in (None, old)
    assert f5.logins == 2 and len(srv.routes) == 2


async def test_token_is_renewed_before_it_expires(srv: F5Server, f5: F5Adapter) -> None:
    await f5.check()
    f5._renew_at = time.monotonic()  # as if the token were about to run out
    await f5.check()
    assert srv.journal.summary() == [
        ("POST", "/mgmt/shared/authn/login"),
        ("GET", "/mgmt/tm/sys/version"),
        ("GET", f"/mgmt/tm/security/firewall/address-list/~Common~{LIST}"),
        ("POST", "/mgmt/shared/authn/login"),
        ("GET", "/mgmt/tm/sys/version"),
        ("GET", f"/mgmt/tm/security/firewall/address-list/~Common~{LIST}"),
    ]


async def test_token_timeout_is_set_and_close_revokes_the_token(
    srv: F5Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    adapter = make(srv, token_timeout=3600)
    assert (await adapter.check()).ok
    await adapter.close()
    token = token_of(srv)
    patch = srv.journal.find("PATCH")[0]
    assert (patch.path, patch.body) == (f"/mgmt/shared/authz/tokens/{token}", {"timeout": 3600})
    assert srv.journal.summary()[-1] == ("DELETE", f"/mgmt/shared/authz/tokens/{token}")
    assert srv.sessions.live() == 0
    # the token is part of those URLs; httpx's and our own log lines show *** instead
    assert "/mgmt/shared/authz/tokens/***" in caplog.text
    assert token not in caplog.text


async def test_wrong_password_fails_without_retry_or_secret(
    srv: F5Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    adapter = make(srv, password="wrong-password-value")
    try:
        [outcome] = await adapter.announce([ref(1, **BH)])
        health = await adapter.check()
    finally:
        await adapter.close()
    assert not outcome.ok and not outcome.retryable
    assert outcome.error == (
        "f5 adapter 'edge': POST /mgmt/shared/authn/login: HTTP 401: Authentication failed."
    )
    assert not health.ok and "Authentication failed." in health.detail
    text = caplog.text + repr(adapter) + repr(adapter.settings) + repr(adapter.http)
    assert "wrong-password-value" not in text
    assert srv.routes == {}


async def test_device_errors_keep_the_vendor_message(srv: F5Server, f5: F5Adapter) -> None:
    srv.faults.add(
        Fault.answer(400, {"code": 400, "message": "01070734:3: Configuration error: bad"}),
        path="/mgmt/tm/net/route",
    )
    [outcome] = await f5.announce([ref(1, **BH)])
    assert not outcome.ok and not outcome.retryable
    assert outcome.error == (
        "f5 adapter 'edge': POST /mgmt/tm/net/route: HTTP 400: 01070734:3: Configuration error: bad"
    )

    srv.faults.add(Fault.answer(503, {"code": 503, "message": "restjavad busy"}), times=2)
    [outcome] = await f5.announce([ref(1, **BH)])
    assert not outcome.ok and outcome.retryable
    assert "HTTP 503: restjavad busy (after 2 attempts)" in (outcome.error or "")
    assert srv.routes == {}


@pytest.mark.parametrize(
    ("fault", "attempts", "text"),
    [
        (Fault.delay(3.0), 2, "timed out after 1s (after 2 attempts)"),
        (Fault.drop(), 2, "RemoteProtocolError"),
        (Fault.malformed(), 1, "not JSON"),  # an answer came: not re-sent at once
    ],
)
async def test_unreachable_or_garbled_device_is_retryable(
    srv: F5Server, f5: F5Adapter, fault: Fault, attempts: int, text: str
) -> None:
    srv.faults.add(fault, times=attempts, path="/mgmt/shared/authn/login")
    [outcome] = await f5.announce([ref(1, **BH)])
    assert not outcome.ok and outcome.retryable, outcome
    assert text in (outcome.error or "")
    health = await f5.check()  # the faults are used up: the device answers again
    assert health.ok, health.detail


async def test_missing_address_list_is_refused_clearly(srv: F5Server, f5: F5Adapter) -> None:
    srv.address_lists.clear()
    [outcome] = await f5.announce([ref(1, **FS)])
    assert not outcome.ok and not outcome.retryable
    assert f"/Common/{LIST} does not exist" in (outcome.error or "")
    assert not (await f5.check()).ok


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"username": ""}, "config.username"),
        ({"partition": "Com mon"}, "config.partition"),
        ({"token_timeout": 5}, "config.token_timeout"),
        ({"bogus": 1}, "config.bogus"),
    ],
)
def test_bad_settings_name_the_field(config: dict[str, Any], field: str) -> None:
    with pytest.raises(AdapterConfigInvalid) as err:
        F5Adapter.from_config(
            AdapterConfig(
                name="edge",
                adapter_type="f5",
                endpoint="https://192.0.2.10",
                auth_token=PASSWORD,
                config={"username": "admin", **config},
            )
        )
    assert err.value.field == field
    with pytest.raises(AdapterConfigInvalid) as err:
        F5Adapter.from_config(
            AdapterConfig(
                name="edge",
                adapter_type="f5",
                endpoint="https://192.0.2.10",
                config={},
            )
        )
    assert err.value.field in ("config.username", "auth_token")


def test_registry_finds_the_f5_entry_point() -> None:
    from adapters.base import Registry

    found: object = Registry().get("f5")
    assert found is F5Adapter
