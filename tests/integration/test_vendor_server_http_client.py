"""adapters.http against a real loopback server: retries, backoff, error translation."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

import adapters.http as http_module
from adapters.base import AdapterConfig, RuleRef, validate_settings
from adapters.http import HttpClient, HttpSettings, failed, vendor_message
from labs.vendors.server import FakeVendorServer, Fault, HttpError, Request, Response, route
from policies.errors import AdapterConfigInvalid, AdapterRefused, AdapterUnavailable
from policies.intents import build_intent
from tests.hostaccess import LOOPBACK

SECRET = "s3cr3t-token-value"


class ThingServer(FakeVendorServer):
    vendor = "thing"

    @route("GET", r"/thing")
    def thing(self, req: Request, params: dict[str, str]) -> Response:
        return Response(200, {"ok": True, "auth": req.header("x-token")})

    @route("POST", r"/refuse")
    def refuse(self, req: Request, params: dict[str, str]) -> Response:
        raise HttpError(409, {"code": 409, "message": f"duplicate object (token {SECRET})"})


@pytest.fixture
def server() -> Any:
    with ThingServer() as srv:
        yield srv


def _client(url: str, **kw: Any) -> HttpClient:
    settings = HttpSettings.model_validate(
        {"endpoint": url, "timeout": kw.pop("timeout", 0.5), "backoff": kw.pop("backoff", 0.01)}
        | kw,
        context={"access": LOOPBACK},  # the fake listens on loopback: allowed on purpose
    )
    client = HttpClient(settings, label="thing adapter 't1'", headers={"X-Token": SECRET})
    client.add_secret(SECRET)
    return client


async def test_success_sends_default_headers(server: ThingServer) -> None:
    client = _client(server.url)
    try:
        resp = await client.send("GET", "/thing")
        assert client.json(resp) == {"ok": True, "auth": SECRET}
    finally:
        await client.close()
    assert SECRET not in repr(client)


async def test_retries_5xx_with_backoff_then_succeeds(server: ThingServer) -> None:
    server.faults.add(Fault.answer(503, {"message": "busy"}), times=2)
    client = _client(server.url, backoff=0.1)
    try:
        resp = await client.send("GET", "/thing")
    finally:
        await client.close()
    assert resp.status_code == 200
    seen = server.journal.all()
    assert len(seen) == 3
    assert seen[1].at - seen[0].at >= 0.1  # backoff 0.1 s, then 0.2 s
    assert seen[2].at - seen[1].at >= 0.2


async def test_exhausted_5xx_is_retryable_with_vendor_message(server: ThingServer) -> None:
    server.faults.add(Fault.answer(500, {"errors": [{"message": "internal boom"}]}), times=3)
    client = _client(server.url)
    with pytest.raises(AdapterUnavailable) as err:
        await client.send("GET", "/thing")
    await client.close()
    assert (
        str(err.value)
        == "thing adapter 't1': GET /thing: HTTP 500: internal boom (after 3 attempts)"
    )
    assert err.value.retryable


async def test_timeout_and_drop_are_retryable(server: ThingServer) -> None:
    server.faults.add(Fault.delay(3.0))
    client = _client(server.url, retries=0, timeout=0.2)
    try:
        with pytest.raises(AdapterUnavailable, match=r"timed out after 0.2s") as err:
            await client.send("GET", "/thing")
        assert err.value.code == "adapter_timeout"
        server.faults.add(Fault.drop())
        with pytest.raises(AdapterUnavailable, match="RemoteProtocolError"):
            await client.send("GET", "/thing")
    finally:
        await client.close()


async def test_4xx_is_not_retried_and_secrets_are_redacted(
    server: ThingServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = _client(server.url)
    try:
        resp = await client.send("POST", "/refuse", json={"a": 1})
        with pytest.raises(AdapterRefused) as err:
            client.check(resp)
    finally:
        await client.close()
    assert len(server.journal) == 1
    assert (
        str(err.value) == "thing adapter 't1': POST /refuse: HTTP 409: duplicate object (token ***)"
    )
    assert not err.value.retryable
    ref = RuleRef(7, build_intent({"kind": "scrubbing", "prefix": "192.0.2.0/24"}))
    outcome = failed(ref, err.value)
    assert (outcome.ok, outcome.retryable, outcome.rule_id) == (False, False, 7)
    assert SECRET not in caplog.text


async def test_malformed_body_is_a_retryable_bad_response(server: ThingServer) -> None:
    server.faults.add(Fault.malformed())
    client = _client(server.url)
    try:
        resp = await client.send("GET", "/thing")
        with pytest.raises(AdapterUnavailable) as err:
            client.json(resp)
    finally:
        await client.close()
    assert err.value.code == "adapter_bad_response"


async def test_connection_refused_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    srv = ThingServer().start()
    url = srv.url
    srv.stop()
    client = _client(url, retries=1)
    waits: list[float] = []  # the client's pauses between attempts (counted, not timed)

    async def sleep(delay: float) -> None:
        waits.append(delay)
        await asyncio.sleep(delay)

    monkeypatch.setattr(http_module, "asyncio", SimpleNamespace(sleep=sleep))
    with pytest.raises(AdapterUnavailable, match="ConnectError"):
        await client.send("GET", "/thing")
    await client.close()
    assert waits == [0.01]  # two attempts, one pause of the configured backoff


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("", "an http:// or https:// URL is required"),
        ("ftp://192.0.2.1", "is not an http:// or https:// URL"),
        ("https://user:pw@192.0.2.1", "credentials do not belong"),
        ("https://192.0.2.1/?key=1", "must not have a query"),
        ("https://", "has no host"),
    ],
)
def test_endpoint_validation_names_the_field(endpoint: str, message: str) -> None:
    config = AdapterConfig(name="t", adapter_type="thing", endpoint=endpoint)
    with pytest.raises(AdapterConfigInvalid, match=message) as err:
        validate_settings(HttpSettings, config)
    assert err.value.field == "endpoint"


def test_vendor_message_shapes() -> None:
    import httpx

    def msg(body: Any) -> str:
        return vendor_message(httpx.Response(400, json=body))

    assert msg({"code": 400, "message": "bad"}) == "bad"
    assert msg({"success": False, "errors": [{"code": 1, "message": "a"}, {"message": "b"}]}) == (
        "a; b"
    )
    assert msg({"detail": "nope"}) == "nope"
    assert msg({"weird": 1}) == '{"weird": 1}'
    assert vendor_message(httpx.Response(502, text="<html>bad gateway</html>")) == (
        "<html>bad gateway</html>"
    )


async def test_429_is_retryable_later_but_not_resent_at_once(server: ThingServer) -> None:
    server.faults.add(Fault.answer(429, {"message": "slow down"}))
    client = _client(server.url)
    try:
        resp = await client.send("GET", "/thing")
        with pytest.raises(AdapterUnavailable, match="HTTP 429: slow down") as err:
            client.check(resp)
    finally:
        await client.close()
    assert err.value.code == "adapter_rate_limited" and err.value.retryable
    assert len(server.journal) == 1
