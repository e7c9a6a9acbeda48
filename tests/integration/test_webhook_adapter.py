"""The webhook adapter against a real verifying receiver on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from adapters.access import HostAccess
from adapters.base import AdapterConfig, RuleRef
from adapters.webhook import WebhookAdapter, new_secret, verify
from labs.vendors.server import Fault
from labs.vendors.webhook_receiver import WebhookReceiver
from policies.errors import AdapterConfigInvalid
from policies.intents import build_intent
from tests.hostaccess import LOOPBACK, loopback_name

INCIDENT = {"id": "inc_42", "target_ip": "192.0.2.7", "bps": 9.6e9, "vector": "udp-flood"}


@pytest.fixture
def rx() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


def make(
    url: str,
    secret: str,
    allowed: tuple[str, ...] = ("127.0.0.1",),
    access: HostAccess = LOOPBACK,  # the receiver listens on loopback: allowed on purpose
    **config: Any,
) -> WebhookAdapter:
    return WebhookAdapter.from_config(
        AdapterConfig(
            access=access,
            name="noc",
            adapter_type="webhook",
            endpoint=url,
            auth_token=secret,
            config={
                "allowed_targets": list(allowed),
                "timeout": 1.0,
                "retries": 2,
                "backoff": 0.01,
                **config,
            },
        )
    )


@pytest.fixture
async def hook(rx: WebhookReceiver) -> AsyncIterator[WebhookAdapter]:
    adapter = make(rx.hook_url, rx.secret)
    try:
        yield adapter
    finally:
        await adapter.close()


def rule(rule_id: int = 1, event: str = "announce", **intent: Any) -> RuleRef:
    return RuleRef(
        rule_id,
        build_intent(intent or {"kind": "blackhole", "prefix": "192.0.2.7/32"}),
        context={
            "event": event,
            "reason": "udp flood 9.6 Gbps",
            "origin": "policy",
            "ttl": 600,
            "expires_at": "2026-01-01T00:10:00+00:00",
            "explanation": ["tier 2: bps >= 5 Gbps", "host override: none"],
            "incident": INCIDENT,
        },
    )


async def test_announce_posts_one_signed_message_per_rule(
    rx: WebhookReceiver, hook: WebhookAdapter
) -> None:
    a = rule(1)
    b = rule(2, kind="flowspec", destination="192.0.2.7/32", protocol="=17", source_port="=123")
    before = time.time()
    outcomes = await hook.announce([a, b])
    after = time.time()
    assert [o.ok for o in outcomes] == [True, True], outcomes
    assert sorted(rx.events()) == [("rule.announce", 1), ("rule.announce", 2)]
    first = next(m for m in rx.messages if m.body["data"]["rule"]["id"] == 1)
    assert first.webhook_id == outcomes[0].detail["webhook_id"]
    # signed at the time of sending (whole seconds), however long the sending took
    assert int(before) <= first.timestamp <= after, (before, first.timestamp, after)
    assert first.headers["content-type"] == "application/json"
    assert first.headers["host"] == rx.url.removeprefix("http://")
    assert first.headers["webhook-signature"].startswith("v1,")
    verify(rx.secret, first.headers, first.raw)  # the receiver's own check, done again
    assert json.loads(first.raw) == first.body
    data = first.body["data"]
    assert first.body["type"] == "rule.announce"
    assert data == {
        "event": "announce",
        "adapter": "noc",
        "rule": {
            "id": 1,
            "key": a.key,
            "intent": "blackhole 192.0.2.7/32; community 65535:666",
            "intent_detail": {
                "kind": "blackhole",
                "prefix": "192.0.2.7/32",
                "communities": ["65535:666"],
                "large_communities": [],
                "peers": [],
            },
            "reason": "udp flood 9.6 Gbps",
            "origin": "policy",
            "ttl": 600,
            "expires_at": "2026-01-01T00:10:00+00:00",
        },
        "explanation": ["tier 2: bps >= 5 Gbps", "host override: none"],
        "incident": INCIDENT,
    }
    [post] = rx.journal.find("POST", "/hooks/sluice")[:1]
    assert post.header("user-agent") == "sluice-webhook/1"


async def test_events_follow_the_rule_context(rx: WebhookReceiver, hook: WebhookAdapter) -> None:
    await hook.announce([rule(1, "extend")])
    await hook.withdraw([rule(1, "expire"), rule(2, "withdraw")])
    await hook.withdraw([rule(3, "announce")])  # does not fit a withdraw: plain withdraw
    assert sorted(rx.events()) == [
        ("rule.expire", 1),
        ("rule.extend", 1),
        ("rule.withdraw", 2),
        ("rule.withdraw", 3),
    ]


async def test_5xx_and_timeouts_are_retried_with_the_same_id(
    rx: WebhookReceiver, hook: WebhookAdapter
) -> None:
    rx.faults.add(Fault.answer(503, {"message": "busy"}))
    rx.faults.add(Fault.delay(2.0))
    [outcome] = await hook.announce([rule(1)])
    assert outcome.ok, outcome.error
    posts = rx.journal.find("POST")
    assert [p.fault for p in posts] == ["status 503", "delay 2.0s", None]
    assert len({p.header("webhook-id") for p in posts}) == 1
    assert posts[2].at - posts[1].at >= 1.0  # the timed-out attempt waited 1 s
    assert rx.events() == [("rule.announce", 1)]


async def test_duplicate_delivery_is_recognised_by_the_receiver(
    rx: WebhookReceiver, hook: WebhookAdapter
) -> None:
    # the first attempt is handled only after the sender gave up on it (1 s timeout):
    # the retry is kept first, the late first attempt is then seen as a duplicate
    rx.faults.add(Fault.delay(1.5))
    [outcome] = await hook.announce([rule(1)])
    assert outcome.ok
    for _ in range(80):  # the late attempt is handled 1.5 s after it arrived
        if rx.duplicates:
            break
        await asyncio.sleep(0.05)
    assert (rx.duplicates, rx.events()) == (1, [("rule.announce", 1)])
    assert len({p.header("webhook-id") for p in rx.journal.find("POST")}) == 1


async def test_exhausted_retries_are_a_retryable_failure(
    rx: WebhookReceiver, hook: WebhookAdapter
) -> None:
    rx.faults.add(Fault.answer(502, {"error": "upstream down"}), times=3)
    [outcome] = await hook.announce([rule(1)])
    assert not outcome.ok and outcome.retryable
    assert outcome.error == (
        f"webhook adapter 'noc': POST {rx.url}: HTTP 502: upstream down (after 3 attempts)"
    )
    rx.faults.add(Fault.drop(), times=3)
    [outcome] = await hook.announce([rule(1)])
    assert not outcome.ok and outcome.retryable and "RemoteProtocolError" in (outcome.error or "")
    assert rx.messages == []


async def test_4xx_is_final_and_keeps_the_receivers_message(
    rx: WebhookReceiver, hook: WebhookAdapter
) -> None:
    rx.faults.add(Fault.answer(422, {"message": "unknown event type"}))
    [outcome] = await hook.announce([rule(1)])
    assert not outcome.ok and not outcome.retryable
    assert outcome.error == (f"webhook adapter 'noc': POST {rx.url}: HTTP 422: unknown event type")
    assert len(rx.journal.find("POST")) == 1


async def test_receiver_with_another_secret_refuses(rx: WebhookReceiver) -> None:
    adapter = make(rx.hook_url, new_secret())
    try:
        [outcome] = await adapter.announce([rule(1)])
    finally:
        await adapter.close()
    assert not outcome.ok and not outcome.retryable
    # the receiver checks with the reference library: its words
    assert "HTTP 401: No matching signature found" in (outcome.error or "")
    assert rx.rejected == ["No matching signature found"]


async def test_redirects_are_not_followed(rx: WebhookReceiver, hook: WebhookAdapter) -> None:
    rx.faults.add(Fault.answer(302, None))
    [outcome] = await hook.announce([rule(1)])
    assert not outcome.ok and not outcome.retryable
    assert "HTTP 302 (redirects are not followed" in (outcome.error or "")


async def test_check_sends_a_signed_test_message(rx: WebhookReceiver, hook: WebhookAdapter) -> None:
    health = await hook.check()
    assert health.ok, health.detail
    assert health.detail == f"test message delivered to {rx.url} (HTTP 200)"
    [msg] = rx.messages
    assert msg.body["type"] == "sluice.test" and msg.body["data"] == {"adapter": "noc"}
    assert await hook.active() is None
    rx.faults.add(Fault.answer(500, {"message": "down"}), times=3)
    assert not (await hook.check()).ok


def test_loopback_target_is_refused_unless_the_service_allows_it(rx: WebhookReceiver) -> None:
    # the adapter's own list cannot open loopback: only the service's egress policy can
    strict = HostAccess()
    for allowed in [(), ("0.0.0.0/0",), ("127.0.0.1",), ("localhost",)]:
        for url in (rx.hook_url, rx.hook_url.replace("127.0.0.1", "localhost")):
            with pytest.raises(AdapterConfigInvalid, match="loopback") as err:
                make(url, rx.secret, allowed, strict)
            assert err.value.field == "endpoint"
            assert err.value.code == "invalid_adapter_config"
    with pytest.raises(AdapterConfigInvalid, match="metadata address"):
        make("http://169.254.169.254/latest/meta-data", rx.secret, ())
    # allowed by the service, narrowed by the adapter's list
    with pytest.raises(AdapterConfigInvalid, match="not in the webhook target allowlist"):
        make(rx.hook_url, rx.secret, ("hooks.example.net",))
    with pytest.raises(AdapterConfigInvalid, match="not in the webhook target allowlist"):
        make("https://203.0.113.80/hook", rx.secret, ("198.51.100.0/24",))


async def test_a_name_resolving_to_loopback_is_refused_at_connection(rx: WebhookReceiver) -> None:
    # a name, so nothing is known at creation; the resolver makes it a loopback address,
    # which the connection-time check refuses
    name, address = loopback_name()
    url = rx.hook_url.replace("127.0.0.1", name)
    adapter = make(url, rx.secret, (name,), HostAccess())  # on the list, not allowed
    try:
        [outcome] = await adapter.announce([rule(1)])
        health = await adapter.check()
    finally:
        await adapter.close()
    assert not outcome.ok and not outcome.retryable
    assert f"{name} resolves to {address}, loopback" in (outcome.error or "")
    assert not health.ok
    assert len(rx.journal) == 0  # nothing left the process


async def test_a_resolved_name_is_pinned_to_the_checked_address(rx: WebhookReceiver) -> None:
    url = rx.hook_url.replace("127.0.0.1", "localhost")
    adapter = make(url, rx.secret, ("127.0.0.1",))
    try:
        outcomes = await adapter.announce([rule(1)])
    finally:
        await adapter.close()
    if not outcomes[0].ok:  # localhost may resolve to ::1 first here: refused, as it should
        assert "::1" in (outcomes[0].error or "")
        return
    [msg] = rx.messages
    assert msg.headers["host"] == f"localhost:{rx.port}"


async def test_secrets_stay_out_of_errors_logs_and_reprs(
    rx: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rx.path = "/hooks/T0KEN-in-the-path"
    adapter = make(rx.hook_url, rx.secret, headers={"Authorization": "Bearer receiver-key-123"})
    rx.faults.add(Fault.answer(400, {"message": "bad /hooks/T0KEN-in-the-path"}))
    try:
        [outcome] = await adapter.announce([rule(1)])
    finally:
        await adapter.close()
    assert not outcome.ok
    assert rx.journal.last().header("authorization") == "Bearer receiver-key-123"
    text = caplog.text + str(outcome) + repr(adapter)
    for secret in (rx.secret, "T0KEN-in-the-path", "receiver-key-123"):
        assert secret not in text
    # the settings show the endpoint the operator configured, never the secrets
    assert rx.secret not in repr(adapter.settings)
    assert "receiver-key-123" not in repr(adapter.settings)


@pytest.mark.parametrize(
    ("config", "secret", "field"),
    [
        ({}, "not-a-whsec", "auth_token"),
        ({"allowed_targets": ["exa mple"]}, None, "config.allowed_targets"),
        ({"headers": {"webhook-id": "x"}}, None, "config.headers"),
        ({"max_concurrency": 0}, None, "config.max_concurrency"),
    ],
)
def test_bad_settings_name_the_field(
    config: dict[str, Any], secret: str | None, field: str
) -> None:
    with pytest.raises(AdapterConfigInvalid) as err:
        WebhookAdapter.from_config(
            AdapterConfig(
                access=LOOPBACK,
                name="noc",
                adapter_type="webhook",
                endpoint="https://hooks.example.net/x",
                auth_token=secret or new_secret(),
                config=config,
            )
        )
    assert err.value.field is not None and err.value.field.startswith(field)


def test_registry_finds_the_webhook_entry_point() -> None:
    from adapters.base import Registry

    found: object = Registry().get("webhook")
    assert found is WebhookAdapter
