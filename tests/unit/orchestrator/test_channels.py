"""Alert channels against real receivers on loopback: nine transports, PagerDuty
trigger/resolve with the incident's dedup key, correlated groups, retries, bad input."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import select

from adapters.egress import EgressPolicy
from orchestrator.channels.transports import Egress
from orchestrator.store.models import channel_deliveries, channels
from tests.unit.orchestrator.receivers import WEBHOOK_SECRET, http_receivers, self_signed
from tests.unit.orchestrator.test_runbooks import Env


class Inbox:
    def __init__(self) -> None:
        self.mail: list[tuple[Envelope, bool]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802  # aiosmtpd's hook name
        self.mail.append((envelope, session.ssl is not None))
        return "250 OK"


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[tuple[Inbox, int, Path]]:
    cert, key = self_signed(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inbox = Inbox()
    ctl = Controller(inbox, hostname="127.0.0.1", port=port, tls_context=ctx, require_starttls=True)
    ctl.start()
    try:
        yield inbox, port, cert
    finally:
        ctl.stop()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with http_receivers() as rec:
        e = Env(tmp_path, rec)
        await e.start()
        try:
            yield e
        finally:
            await e.stop()


def specs(base: str, smtp_port: int, ca: Path) -> dict[str, dict[str, Any]]:
    return {
        "slack": {"secrets": {"webhook_url": base + "/slack"}},
        "discord": {"secrets": {"webhook_url": base + "/discord"}},
        "teams": {"secrets": {"webhook_url": base + "/teams"}},
        "telegram": {
            "config": {"chat_id": "-100123", "api_base": base + "/telegram"},
            "secrets": {"bot_token": "123:abc"},
        },
        "pagerduty": {"config": {"api_base": base + "/pd"}, "secrets": {"routing_key": "R0UT1NG"}},
        "opsgenie": {"config": {"api_base": base + "/og"}, "secrets": {"api_key": "og-key"}},
        "sms": {
            "config": {"api_url": base + "/sms", "sender": "Sluice", "to": ["+15550100"]},
            "secrets": {"api_key": "sms-key"},
        },
        "webhook": {"config": {"url": base + "/hook/ch"}, "secrets": {"secret": WEBHOOK_SECRET}},
        "email": {
            "config": {
                "host": "127.0.0.1",
                "port": smtp_port,
                "starttls": True,
                "sender": "sluice@example.net",
                "to": ["oncall@example.net"],
                "ca_file": str(ca),
            },
        },
    }


PATHS = {
    "slack": "/slack",
    "discord": "/discord",
    "teams": "/teams",
    "telegram": "/telegram/bot123:abc/sendMessage",
    "pagerduty": "/pd/v2/enqueue",
    "opsgenie": "/og/v2/alerts",
    "sms": "/sms",
    "webhook": "/hook/ch",
}


async def test_every_channel_type_reaches_its_receiver(
    env: Env, smtp: tuple[Inbox, int, Path]
) -> None:
    inbox, port, ca = smtp
    ids = {}
    for kind, spec in specs(env.rec.base, port, ca).items():
        body = await env.ok(
            "POST", "/channels", 201, json={"name": kind, "channel_type": kind, **spec}
        )
        ch = body["channel"]
        assert "secrets" not in ch and sorted(ch["secrets_set"]) == sorted(spec.get("secrets", {}))
        assert spec.get("secrets", {}) == {} or all(
            v not in str(body) for v in spec["secrets"].values()
        )
        ids[kind] = ch["id"]
    for kind, cid in ids.items():
        r = await env("POST", f"/channels/{cid}/test")
        assert r.status_code == 200, (kind, r.text)
    for kind, path in PATHS.items():
        assert len(env.rec.at(path)) == 1, kind
    assert env.rec.errors == []
    assert len(inbox.mail) == 1 and inbox.mail[0][1] is True  # delivered over STARTTLS
    assert inbox.mail[0][0].rcpt_tos == ["oncall@example.net"]
    # the list shows every channel, never a secret
    listed = (await env.ok("GET", "/channels"))["channels"]
    assert len(listed) == 9 and "og-key" not in str(listed) and "R0UT1NG" not in str(listed)
    # an update without secrets keeps them; a delete removes the channel
    await env.ok("PUT", f"/channels/{ids['slack']}", json={"filters": {"min_severity": "high"}})
    assert (await env("POST", f"/channels/{ids['slack']}/test")).status_code == 200
    await env.ok("DELETE", f"/channels/{ids['slack']}")
    r = await env("POST", f"/channels/{ids['slack']}/test")
    assert r.status_code == 404 and r.json()["error"]["code"] == "channel_not_found"


async def test_pagerduty_triggered_on_open_and_resolved_with_the_same_key(env: Env) -> None:
    await env.ok(
        "POST",
        "/channels",
        201,
        json={
            "name": "pd",
            "channel_type": "pagerduty",
            "config": {"api_base": env.rec.base + "/pd"},
            "secrets": {"routing_key": "R0UT1NG"},
        },
    )
    iid = await env.signal()
    got = await env.rec.wait("/pd/v2/enqueue", 1)
    assert got[0].body["event_action"] == "trigger" and got[0].body["dedup_key"] == iid
    assert got[0].body["payload"]["severity"] == "error"  # high -> error
    await env.ok("POST", f"/incidents/{iid}/resolve")
    got = await env.rec.wait("/pd/v2/enqueue", 2)
    assert got[1].body["event_action"] == "resolve" and got[1].body["dedup_key"] == iid
    await env.auto.channels.drain()
    with env.svc.engine.connect() as conn:
        rows = conn.execute(select(channel_deliveries)).all()
    assert sorted((r.event_kind, r.status, r.attempts) for r in rows) == [
        ("incident.opened", "delivered", 1),
        ("incident.resolved", "delivered", 1),
    ]
    assert env.rec.errors == []


async def test_correlated_incidents_on_several_nodes_alert_once(env: Env) -> None:
    await env.ok(
        "POST",
        "/channels",
        201,
        json={
            "name": "s",
            "channel_type": "slack",
            "secrets": {"webhook_url": env.rec.base + "/slack"},
        },
    )
    srcs = ["198.51.100.7", "198.51.100.8"]
    a = await env.signal(target_ip="203.0.113.30", node="edge-1", top_sources=srcs)
    b = await env.signal(target_ip="203.0.113.31", node="edge-2", top_sources=srcs[1:])
    c = await env.signal(
        target_ip="203.0.113.32", node="edge-3", top_sources=["192.0.2.99"]
    )  # no overlap: its own alert
    assert len({a, b, c}) == 3
    await env.rec.wait("/slack", 2)
    await asyncio.sleep(0.5)
    await env.auto.channels.drain()
    texts = [g.body["text"] for g in env.rec.at("/slack")]
    assert len(texts) == 2 and any(a in t for t in texts) and any(c in t for t in texts)


async def test_failed_delivery_is_retried_with_backoff_and_recorded(env: Env) -> None:
    await env.ok(
        "POST",
        "/channels",
        201,
        json={
            "name": "down",
            "channel_type": "slack",
            "secrets": {"webhook_url": env.rec.base + "/fail"},
        },
    )
    await env.signal()
    await env.rec.wait("/fail", 4)
    await env.auto.channels.drain()
    with env.svc.engine.connect() as conn:
        row = conn.execute(select(channel_deliveries)).one()
    assert (row.status, row.attempts) == ("failed", 4) and "HTTP 503" in row.last_error
    gaps = [b.at - a.at for a, b in zip(env.rec.at("/fail"), env.rec.at("/fail")[1:], strict=False)]
    assert gaps[2] > gaps[0]  # exponential backoff


@pytest.mark.parametrize(
    ("body", "code", "fld"),
    [
        ({"name": "x", "channel_type": "carrier_pigeon"}, "unknown_channel_type", "channel_type"),
        (
            {"name": "x", "channel_type": "slack", "secrets": {}},
            "invalid_channel",
            "secrets.webhook_url",
        ),
        (
            {"name": "x", "channel_type": "slack", "secrets": {"webhook_url": "ftp://x"}},
            "invalid_channel",
            "secrets.webhook_url",
        ),
        (
            {
                "name": "x",
                "channel_type": "webhook",
                "config": {"url": "http://h/"},
                "secrets": {"secret": "plain"},
            },
            "invalid_channel",
            "secrets.secret",
        ),
        (
            {
                "name": "x",
                "channel_type": "slack",
                "secrets": {"webhook_url": "http://h/"},
                "filters": {"min_severity": "huge"},
            },
            "unknown_severity",
            "filters.min_severity",
        ),
        (
            {"name": "x", "channel_type": "telegram", "secrets": {"bot_token": "t"}},
            "invalid_channel",
            "config.chat_id",
        ),
    ],
)
async def test_bad_channels_save_nothing(
    env: Env, body: dict[str, Any], code: str, fld: str
) -> None:
    r = await env("POST", "/channels", json=body)
    assert r.status_code == 422, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["field"]) == (code, fld)
    with env.svc.engine.connect() as conn:
        assert conn.execute(select(channels)).all() == []


async def test_egress_refuses_internal_targets_not_allowed(tmp_path: Path) -> None:
    async with http_receivers() as rec:
        e = Env(tmp_path, rec)
        await e.start()
        try:
            e.auto.channels.egress = Egress(EgressPolicy.from_entries([]))  # nothing internal
            cid = (
                await e.ok(
                    "POST",
                    "/channels",
                    201,
                    json={
                        "name": "s",
                        "channel_type": "slack",
                        "secrets": {"webhook_url": rec.base + "/slack"},
                    },
                )
            )["channel"]["id"]
            r = await e("POST", f"/channels/{cid}/test")
            assert r.status_code == 502 and "loopback" in r.json()["error"]["message"]
            assert rec.got == []
        finally:
            await e.stop()
