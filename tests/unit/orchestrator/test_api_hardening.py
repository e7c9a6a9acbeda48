"""Regression tests for issue #10 (requests, errors, docs): one per defect found.

Requests are driven straight through the ASGI interface where the test must control how
the body arrives (never, or in chunks); everything else goes through the in-process client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest

from adapters.http import check_endpoint
from tests.unit.orchestrator.conftest import ADMIN, Api

MIB = 1024 * 1024


def error(r: httpx.Response) -> tuple[int, str, str | None]:
    body = r.json()
    assert body["ok"] is False, r.text
    return r.status_code, body["error"]["code"], body["error"].get("field")


class Asgi:
    """One request through the raw ASGI interface, the body fed as the test says."""

    def __init__(self, api: Api) -> None:
        transport = api.client._transport
        assert isinstance(transport, httpx.ASGITransport)
        self.app = transport.app

    async def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        chunks: list[bytes] | None,
        *,
        hang_after: bool = False,
    ) -> tuple[int, dict[str, str], dict[str, Any], int]:
        """(status, headers, JSON answer, body chunks the application took)."""
        taken = 0
        pending = list(chunks or [])
        forever = asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal taken
            if pending:
                taken += 1
                chunk = pending.pop(0)
                return {
                    "type": "http.request",
                    "body": chunk,
                    "more_body": bool(pending) or hang_after,
                }
            if hang_after:
                await forever.wait()  # the client never sends the rest
            return {"type": "http.disconnect"}

        sent: list[MutableMapping[str, Any]] = []

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": "/api/v1" + path,
            "raw_path": ("/api/v1" + path).encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("sluice", 80),
        }
        # a bounded wait: the old code waited for a body that never comes
        await asyncio.wait_for(self.app(scope, receive, send), timeout=10)
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        hdrs = {k.decode(): v.decode() for k, v in start["headers"]}
        return start["status"], hdrs, json.loads(body), taken


# ---------------------------------------------------------------- requests


async def test_no_token_is_refused_before_the_body_is_read(make_api: Any) -> None:
    api = await make_api()
    asgi = Asgi(api)
    big = str(30 * MIB)  # announced, never sent
    head = {"content-type": "application/json", "content-length": big}
    for path in ("/mitigation/rules", "/mitigation/adapters", "/workspace/tokens"):
        status, hdrs, body, taken = await asgi.request(
            "POST", path, head, [b'{"target_ip": '], hang_after=True
        )
        assert (status, body["error"]["code"]) == (413, "body_too_large")
    # within the limit, without a token: 401 before a single body chunk is taken
    head = {"content-type": "application/json", "content-length": str(MIB)}
    status, hdrs, body, taken = await asgi.request(
        "POST", "/mitigation/rules", head, [b"{" * 1000], hang_after=True
    )
    assert (status, body["error"]["code"], taken) == (401, "missing_token", 0)
    assert hdrs["connection"] == "close"
    status, _, body, taken = await asgi.request(
        "POST",
        "/mitigation/rules",
        {**head, "authorization": "Bearer " + "x" * 64},
        [b"{" * 1000],
        hang_after=True,
    )
    assert (status, body["error"]["code"], taken) == (401, "invalid_token", 0)
    # a read token on a write endpoint: 403, the body untouched too
    reader = await api.token("read")
    status, _, body, taken = await asgi.request(
        "POST",
        "/mitigation/rules",
        {**head, "authorization": f"Bearer {reader}"},
        [b"{" * 1000],
        hang_after=True,
    )
    assert (status, body["error"]["code"], taken) == (403, "insufficient_scope", 0)
    # agent endpoints: the node key first
    status, _, body, taken = await asgi.request(
        "POST", "/agent/metrics", head, [b"{" * 1000], hang_after=True
    )
    assert (status, body["error"]["code"], taken) == (401, "missing_token", 0)


async def test_body_limit_is_enforced_while_reading(make_api: Any) -> None:
    api = await make_api(max_body_bytes=64 * 1024)
    asgi = Asgi(api)
    auth = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
    # chunked (no Content-Length): refused as soon as the limit is passed
    chunks = [b" " * 16 * 1024] * 100  # 1.6 MB offered
    status, hdrs, body, taken = await asgi.request(
        "POST", "/mitigation/rules", {**auth, "transfer-encoding": "chunked"}, chunks
    )
    assert (status, body["error"]["code"]) == (413, "body_too_large")
    assert taken == 5  # 80 KiB read, the rest never asked for
    assert hdrs["connection"] == "close"
    # an announced length over the limit: refused without reading
    r = await api.call("POST", "/mitigation/rules", content=b" " * (64 * 1024 + 1))
    assert error(r)[:2] == (413, "body_too_large")
    # just under the limit: read and judged on its content
    r = await api.call("POST", "/mitigation/rules", content=b" " * (64 * 1024 - 2) + b"{}")
    assert error(r)[:2] == (422, "missing_parameter")


async def test_pcap_uploads_have_their_own_limit(make_api: Any) -> None:
    """The 1 MiB limit is for JSON; a capture streams to disk under the PCAP store's limit."""
    api = await make_api(max_body_bytes=64 * 1024)
    r = await api.call(
        "POST",
        "/pcaps",
        content=b"\x00" * (256 * 1024),
        headers={"Content-Type": "application/vnd.tcpdump.pcap"},
    )
    assert r.json()["error"]["code"] != "body_too_large", r.text  # judged by the PCAP store
    r = await api.call("POST", "/mitigation/rules", content=b" " * (256 * 1024))
    assert error(r)[:2] == (413, "body_too_large")


async def test_slow_body_gets_408(make_api: Any) -> None:
    api = await make_api(http_body_timeout_seconds=0.2)
    asgi = Asgi(api)
    head = {
        "authorization": f"Bearer {ADMIN}",
        "content-type": "application/json",
        "content-length": "100",
    }
    status, hdrs, body, _ = await asgi.request(
        "POST", "/mitigation/rules", head, [b"{"], hang_after=True
    )
    assert (status, body["error"]["code"]) == (408, "request_timeout")
    assert hdrs["connection"] == "close"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "/mitigation/rules",
            {
                "target_ip": "203.0.113.1",
                "intent_type": "blackhole",
                "adapter_id": 1,
                "communities": ["65535:666"] * 65,
            },
            "communities",
        ),
        (
            "/mitigation/rules",
            {
                "target_ip": "203.0.113.1",
                "intent_type": "flowspec",
                "adapter_id": 1,
                "destination_port": list(range(33)),
            },
            "destination_port",
        ),
        (
            "/mitigation/adapters",
            {"adapter_type": "fake", "name": "x", "config": {f"k{i}": i for i in range(101)}},
            "config",
        ),
        (
            "/scrubbing",
            {"type": "cloudflare", "name": "x", "config": {f"k{i}": i for i in range(101)}},
            "config",
        ),
        (
            "/mitigation/thresholds",
            {"target_ip": "203.0.113.1", "thresholds": {f"t{i}": 1 for i in range(65)}},
            "thresholds",
        ),
        (
            "/incidents",
            {"target_ip": "203.0.113.1", "top_sources": ["198.51.100.1"] * 65},
            "top_sources",
        ),
    ],
)
async def test_collections_are_bounded(
    make_api: Any, path: str, body: dict[str, Any], field: str
) -> None:
    api = await make_api()
    await api.fake()
    r = await api.call("POST", path, json=body)
    assert error(r) == (422, "invalid_parameter", field), r.text
    assert "at most" in r.json()["error"]["message"]
    assert api.svc.history()[1] == 0


async def test_escalation_tiers_are_bounded(make_api: Any) -> None:
    api = await make_api()
    tiers = [{"name": f"t{i}", "bps": 1000 * (i + 1)} for i in range(33)]
    r = await api.call("PUT", "/mitigation/escalation-policy", json={"tiers": tiers})
    assert error(r) == (422, "invalid_parameter", "tiers")


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("method", "path", "params"),
    [
        ("GET", f"/mitigation/rules/{2**64}", None),
        ("DELETE", f"/mitigation/rules/{2**63}", None),
        ("DELETE", f"/mitigation/adapters/{2**64}", None),
        ("POST", f"/mitigation/adapters/{2**64}/test", None),
        ("GET", f"/scrubbing/{2**64}/status", None),
        ("DELETE", f"/workspace/tokens/{2**64}", None),
        ("GET", "/mitigation/rules", {"offset": 2**64}),
        ("GET", "/mitigation/rules", {"adapter_id": 2**64}),
        ("GET", "/mitigation/rules/history", {"offset": 2**64}),
        ("GET", "/incidents", {"offset": 2**64}),
        ("GET", "/nodes", {"offset": 2**64}),
        ("GET", "/events", {"after": 2**64}),
        ("GET", "/events/stream", {"after": 2**64}),
    ],
)
async def test_huge_integers_are_refused_not_500(
    make_api: Any, method: str, path: str, params: dict[str, Any] | None
) -> None:
    api = await make_api()
    r = await api.call(method, path, params=params)
    status, code, _ = error(r)
    assert (status, code) == (422, "invalid_parameter"), r.text


async def test_huge_event_ids_are_refused(make_api: Any) -> None:
    api = await make_api()
    r = await api.call("GET", "/events/stream", headers={"Last-Event-ID": str(2**64)})
    assert error(r) == (422, "invalid_parameter", "Last-Event-ID")


async def test_huge_integers_in_bodies_are_refused(make_api: Any) -> None:
    api = await make_api()
    r = await api.call("POST", "/workspace/tokens", json={"name": "x", "expires_in": 10**12})
    assert error(r) == (422, "invalid_parameter", "expires_in")
    r = await api.call(
        "POST", "/mitigation/adapters", json={"id": 2**64, "adapter_type": "fake", "name": "x"}
    )
    assert error(r) == (422, "invalid_parameter", "id")


async def test_escalation_tier_without_a_name(make_api: Any) -> None:
    api = await make_api()
    r = await api.call("PUT", "/mitigation/escalation-policy", json={"tiers": [{"bps": 1}]})
    assert error(r) == (422, "missing_parameter", "tiers.0.name")


async def test_numeric_host_spellings_are_refused(make_api: Any) -> None:
    api = await make_api()
    secret = "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="
    for host in ("0177.0.0.1", "0x7f.1", "2130706433", "127.1"):
        r = await api.call(
            "POST",
            "/mitigation/adapters",
            json={
                "adapter_type": "webhook",
                "name": "hook",
                "endpoint": f"http://{host}/hook",
                "auth_token": secret,
            },
        )
        status, code, field = error(r)
        assert (status, code, field) == (422, "invalid_adapter_config", "endpoint"), r.text
        assert "dotted-decimal" in r.json()["error"]["message"]
    with pytest.raises(ValueError, match="dotted-decimal"):
        check_endpoint("https://0300.0250.0.1:8443/api")
    assert check_endpoint("https://cafe.example/api/") == "https://cafe.example/api"


async def test_405_names_every_allowed_method(make_api: Any) -> None:
    api = await make_api()
    r = await api.call("PUT", "/mitigation/rules")
    assert error(r)[:2] == (405, "method_not_allowed")
    assert r.headers["allow"] == "GET, HEAD, POST"
    r = await api.call("PATCH", "/mitigation/rules/1")
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET, HEAD"
    r = await api.call("GET", "/mitigation/adapters/1/test")
    assert r.status_code == 405 and r.headers["allow"] == "POST"


async def test_unreadable_bodies_get_the_envelope(make_api: Any) -> None:
    api = await make_api()
    r = await api.call("POST", "/mitigation/rules", content=b'{"target_ip": "\xff"}')
    assert error(r)[:2] == (400, "invalid_body")
    deep = b"[" * 100_000 + b"]" * 100_000
    assert error(await api.call("POST", "/mitigation/rules", content=deep))[:2] == (
        400,
        "invalid_body",
    )
    r = await api.call("POST", "/incidents", content=deep)
    assert error(r)[:2] == (422, "invalid_json")
    nan = (
        b'{"target_ip": "203.0.113.1", "intent_type": "flowspec", "adapter_id": 1,'
        b' "action": "rate-limit", "rate_limit": NaN}'
    )
    r = await api.call("POST", "/mitigation/rules", content=nan)
    assert error(r) == (422, "invalid_parameter", "rate_limit")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/mitigation/adapters", {"adapter_type": "fake", "name": "edge\nINFO forged"}, "name"),
        ("/mitigation/adapters", {"adapter_type": "fake", "name": "edge\x1b[31m"}, "name"),
        ("/mitigation/adapters", {"adapter_type": "fake", "name": "edge\u2028x"}, "name"),
        ("/workspace/tokens", {"name": "noc\r\nadmin"}, "name"),
        ("/nodes", {"name": "n\n1", "ip": "192.0.2.1"}, "name"),
        ("/scrubbing", {"type": "cloudflare", "name": "cf\n"}, "name"),
        ("/allowlist", {"ip_address": "192.0.2.1", "label": "x\ny"}, "label"),
    ],
)
async def test_control_characters_in_names_are_refused(
    make_api: Any, path: str, body: dict[str, Any], field: str
) -> None:
    api = await make_api()
    r = await api.call("POST", path, json=body)
    assert error(r) == (422, "invalid_parameter", field)
    assert "control characters" in r.json()["error"]["message"]
    assert len(api.svc.hub.records()) == 0


def test_log_lines_cannot_be_forged() -> None:
    from orchestrator.logfmt import OneLineFormatter

    fmt = OneLineFormatter("%(levelname)s %(name)s: %(message)s")
    record = logging.LogRecord(
        "sluice.api",
        logging.INFO,
        __file__,
        1,
        "adapter %r created by %s",
        ("edge", "x\n2026-01-01 00:00:00 INFO sluice.api: admin token revoked\x1b[0m\u2028y"),
        None,
    )
    line = fmt.format(record)
    assert "\n" not in line and "\x1b" not in line and "\u2028" not in line
    assert "\\n2026-01-01" in line and "\\x1b[0m" in line


def test_serve_logs_one_line_per_event(capsys: pytest.CaptureFixture[str]) -> None:
    """``sluice serve``'s logging set-up (logfmt.configure) escapes what it is given."""
    from orchestrator import logfmt

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logfmt.configure("info")
        logging.getLogger("sluice.test").warning(
            "adapter %s created", "edge\n2026-01-01 00:00:00,000 WARNING sluice.api: forged"
        )
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        "adapter edge\\n2026-01-01 00:00:00,000 WARNING sluice.api: forged created"
    ), lines


async def test_every_status_is_documented_with_the_envelope(make_api: Any) -> None:
    api = await make_api()
    doc = (await api.client.get("/api/v1/openapi.json")).json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["apiToken"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "opaque",
        "description": schemes["apiToken"]["description"],
    }
    assert schemes["nodeKey"]["scheme"] == "bearer"
    envelope = {"$ref": "#/components/schemas/ErrorEnvelope"}
    # no token: health, and the dashboard's login (password) and logout (its own cookie)
    PUBLIC = {"/api/v1/health", "/api/v1/auth/login", "/api/v1/auth/logout"}  # noqa: N806
    for path, item in doc["paths"].items():
        for method, op in item.items():
            responses = op["responses"]
            if path.startswith("/api/v1/agent/"):
                assert op["security"] == [{"nodeKey": []}]
            elif path not in PUBLIC:
                assert op["security"] == [{"apiToken": []}], (method, path)
                assert {"401", "429"} <= set(responses), (method, path)
            for status, answer in responses.items():
                if status.startswith(("4", "5")):
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == envelope, (method, path, status)
    rules = doc["paths"]["/api/v1/mitigation/rules/{rule_id}"]
    assert {"404", "422"} <= set(rules["get"]["responses"])
    create = doc["paths"]["/api/v1/mitigation/rules"]["post"]["responses"]
    assert {"400", "401", "403", "404", "408", "409", "413", "422", "429"} <= set(create)
    assert "HTTPValidationError" not in doc["components"]["schemas"]


async def test_docs_are_served_without_a_cdn(make_api: Any) -> None:
    api = await make_api()
    r = await api.client.get("/api/v1/docs")
    assert r.status_code == 200 and "swagger-ui" in r.text
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", r.text), r.text
    assets = re.findall(r"(?:src|href)=[\"']?(/api/v1/docs/static/[^\"' >]+)", r.text)
    assert {a.rsplit("/", 1)[1] for a in assets} >= {"swagger-ui-bundle.js", "swagger-ui.css"}
    for asset in assets:
        got = await api.client.get(asset)
        assert got.status_code == 200 and len(got.content) > 1000, asset
