"""The Radware DefenseFlow adapter against the fake Vision/DefenseFlow REST server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from adapters.base import AdapterConfig, RuleRef
from adapters.radware import RadwareAdapter
from labs.vendors.radware import RadwareServer
from labs.vendors.server import Fault
from policies.errors import AdapterConfigInvalid
from policies.intents import build_intent
from tests.hostaccess import LOOPBACK

PASSWORD = "radware-pw"
START = "/mgmt/device/df/config/action/attackstart"
STOP = "/mgmt/device/df/config/action/attackstop"
LOGIN = "/mgmt/system/user/login"


@pytest.fixture
def srv() -> Iterator[RadwareServer]:
    with RadwareServer() as server:
        yield server


def make(srv: RadwareServer, password: str = PASSWORD, **config: Any) -> RadwareAdapter:
    return RadwareAdapter.from_config(
        AdapterConfig(
            access=LOOPBACK,
            name="df",
            adapter_type="radware",
            endpoint=srv.url,
            auth_token=password,
            config={"username": "radware", "timeout": 1.0, "retries": 1, "backoff": 0.01, **config},
        )
    )


@pytest.fixture
async def df(srv: RadwareServer) -> AsyncIterator[RadwareAdapter]:
    adapter = make(srv)
    try:
        yield adapter
    finally:
        await adapter.close()


def scrub(rule_id: int, prefix: str = "192.0.2.0/24", **context: Any) -> RuleRef:
    return RuleRef(rule_id, build_intent({"kind": "scrubbing", "prefix": prefix}), context=context)


async def test_start_status_stop_with_exact_requests(
    srv: RadwareServer, df: RadwareAdapter
) -> None:
    rule = scrub(7, bps=80_000_000, pps=20_000, protocol="udp", reason="udp flood")
    [outcome] = await df.announce([rule])
    assert outcome.ok, outcome.error
    attack_id = f"sluice-{rule.key}"
    assert outcome.detail == {"external_attack_id": attack_id}
    login, start = srv.journal.all()
    assert (login.method, login.path, login.body) == (
        "POST",
        LOGIN,
        {"username": "radware", "password": PASSWORD},
    )
    session = start.header("jsessionid")
    assert session is not None and srv.sessions.user(session) == "radware"
    assert start.header("cookie") == f"JSESSIONID={session}"
    assert (start.method, start.path) == ("POST", START)
    assert start.body == {
        "externalAttackId": attack_id,
        "alertInfo": "sluice rule 7: divert 192.0.2.0/24 (udp flood)",
        "networksDetails": {"networks": [{"ip": "192.0.2.0", "prefix": 24}]},
        "baselinesIpv4": {
            "baselineUdpBytesPerSecond": 10_000_000,
            "baselineUdpPacketsPerSecond": 20_000,
        },
    }
    assert set(srv.attacks) == {attack_id}

    health = await df.check()
    assert health.ok and health.detail == "DefenseFlow: 1 protected objects (customer-a)"
    assert await df.active() is None

    srv.journal.clear()
    [outcome] = await df.withdraw([rule])
    assert outcome.ok
    [stop] = srv.journal.all()
    assert (stop.method, stop.path, stop.body) == ("POST", STOP, {"externalAttackId": attack_id})
    assert stop.header("jsessionid") == session
    assert srv.attacks == {} and srv.stopped == [attack_id]
    assert (await df.withdraw([rule]))[0].ok  # stopping again is harmless
    assert df.logins == 1


async def test_ipv6_prefix_and_repeat_announce_update_one_attack(
    srv: RadwareServer, df: RadwareAdapter
) -> None:
    rule = scrub(1, "2001:db8:0:1::/64")
    assert (await df.announce([rule]))[0].ok
    assert (await df.announce([rule]))[0].ok
    assert list(srv.attacks) == [f"sluice-{rule.key}"]
    body = srv.attacks[f"sluice-{rule.key}"]
    assert body["networksDetails"] == {"networks": [{"ip": "2001:db8:0:1::", "prefix": 64}]}
    assert "baselinesIpv4" not in body and "baselinesIpv6" not in body


async def test_blackhole_and_flowspec_are_refused(srv: RadwareServer, df: RadwareAdapter) -> None:
    rules = [
        RuleRef(1, build_intent({"kind": "blackhole", "prefix": "192.0.2.1/32"})),
        RuleRef(2, build_intent({"kind": "flowspec", "destination": "192.0.2.1/32"})),
        scrub(3),
    ]
    outcomes = await df.announce(rules)
    assert [(o.ok, o.retryable) for o in outcomes] == [
        (False, False),
        (False, False),
        (True, False),
    ]
    assert "cannot carry blackhole intents; it carries scrubbing" in (outcomes[0].error or "")
    assert srv.journal.summary() == [("POST", LOGIN), ("POST", START)]


async def test_expired_session_logs_in_again_once(srv: RadwareServer, df: RadwareAdapter) -> None:
    assert (await df.announce([scrub(1)]))[0].ok
    srv.sessions.expire_all()
    srv.journal.clear()
    assert (await df.announce([scrub(2, "192.0.2.128/25")]))[0].ok
    assert srv.journal.summary() == [("POST", START), ("POST", LOGIN), ("POST", START)]
    first, _, second = srv.journal.all()
    assert first.header("jsessionid") != second.header("jsessionid")
    assert df.logins == 2 and len(srv.attacks) == 2


async def test_session_rejected_twice_is_an_auth_failure(
    srv: RadwareServer, df: RadwareAdapter
) -> None:
    assert (await df.check()).ok
    srv.faults.add(
        Fault.answer(401, {"status": "error", "message": "Unauthorized"}), times=2, path=START
    )
    [outcome] = await df.announce([scrub(1)])
    assert not outcome.ok and not outcome.retryable
    assert outcome.error == f"radware adapter 'df': POST {START}: HTTP 401: Unauthorized"
    assert srv.journal.summary()[-3:] == [("POST", START), ("POST", LOGIN), ("POST", START)]


async def test_wrong_password_fails_without_leaking_it(
    srv: RadwareServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    adapter = make(srv, password="not-the-password")
    try:
        [outcome] = await adapter.announce([scrub(1)])
        health = await adapter.check()
    finally:
        await adapter.close()
    assert not outcome.ok and not outcome.retryable
    assert outcome.error == (
        f"radware adapter 'df': POST {LOGIN}: HTTP 401: Invalid Username or invalid Password"
    )
    assert not health.ok
    everything = caplog.text + repr(adapter) + repr(adapter.settings) + str(outcome)
    assert "not-the-password" not in everything
    assert srv.attacks == {}


async def test_session_id_never_appears_in_errors(srv: RadwareServer, df: RadwareAdapter) -> None:
    assert (await df.check()).ok
    session = srv.journal.last().header("jsessionid")
    assert session is not None
    srv.faults.add(
        Fault.answer(400, {"status": "error", "message": f"bad session {session} state"}), path=STOP
    )
    [outcome] = await df.withdraw([scrub(1)])
    assert not outcome.ok and session not in (outcome.error or "")
    assert "bad session *** state" in (outcome.error or "")


async def test_network_outside_protected_objects_is_refused(
    srv: RadwareServer, df: RadwareAdapter
) -> None:
    [outcome] = await df.announce([scrub(1, "203.0.113.0/24")])
    assert not outcome.ok and not outcome.retryable
    assert outcome.error == (
        f"radware adapter 'df': POST {START}: HTTP 400: "
        "network 203.0.113.0/24 is not part of any protected object"
    )


@pytest.mark.parametrize(
    ("fault", "times", "text"),
    [
        (
            Fault.answer(500, {"status": "error", "message": "DefenseFlow unreachable"}),
            2,
            "HTTP 500: DefenseFlow unreachable (after 2 attempts)",
        ),
        (Fault.delay(3.0), 2, "timed out after 1s"),
        (Fault.drop(), 2, "RemoteProtocolError"),
    ],
)
async def test_server_errors_and_timeouts_are_retryable(
    srv: RadwareServer, df: RadwareAdapter, fault: Fault, times: int, text: str
) -> None:
    srv.faults.add(fault, times=times, path=START)
    [outcome] = await df.announce([scrub(1)])
    assert not outcome.ok and outcome.retryable
    assert text in (outcome.error or "")
    assert srv.attacks == {}
    assert (await df.announce([scrub(1)]))[0].ok  # the controller is back


async def test_malformed_login_answer_is_retryable(srv: RadwareServer, df: RadwareAdapter) -> None:
    srv.faults.add(Fault.malformed(), path=LOGIN)
    [outcome] = await df.announce([scrub(1)])
    assert not outcome.ok and outcome.retryable and "not JSON" in (outcome.error or "")
    srv.faults.add(Fault.answer(200, {"status": "ok"}), path=LOGIN)
    [outcome] = await df.announce([scrub(1)])
    assert not outcome.ok and outcome.retryable and "no jsessionid" in (outcome.error or "")


async def test_close_logs_out(srv: RadwareServer) -> None:
    adapter = make(srv)
    assert (await adapter.check()).ok
    await adapter.close()
    assert srv.journal.summary()[-1] == ("POST", "/mgmt/system/user/logout")
    assert srv.sessions.live() == 0


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"username": ""}, "config.username"),
        ({"attack_id_prefix": "a b"}, "config.attack_id_prefix"),
    ],
)
def test_bad_settings_name_the_field(config: dict[str, Any], field: str) -> None:
    with pytest.raises(AdapterConfigInvalid) as err:
        RadwareAdapter.from_config(
            AdapterConfig(
                name="df",
                adapter_type="radware",
                endpoint="https://192.0.2.10",
                auth_token=PASSWORD,
                config={"username": "radware", **config},
            )
        )
    assert err.value.field == field


def test_registry_finds_the_radware_entry_point() -> None:
    from adapters.base import Registry

    found: object = Registry().get("radware")
    assert found is RadwareAdapter
