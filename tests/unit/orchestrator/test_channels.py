"""Alert channels against real receivers on loopback: nine transports, PagerDuty
trigger/resolve with the incident's dedup key, correlated groups, retries, bad input."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select, update

from adapters.egress import EgressPolicy
from orchestrator.channels.service import reseal_channel_secrets
from orchestrator.channels.transports import Egress
from orchestrator.store.crypto import KEY_FILE, PREFIX, SecretBox
from orchestrator.store.models import channel_deliveries, channels
from tests.unit.orchestrator.receivers import WEBHOOK_SECRET, http_receivers, self_signed
from tests.unit.orchestrator.test_runbooks import Env


class Inbox:
    def __init__(self) -> None:
        self.mail: list[tuple[Envelope, bool]] = []
        self.logins: list[tuple[str, str]] = []

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        """aiosmtpd's authenticator: only over TLS (its default), one known account."""
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            b"alerts-smtp-user",
            b"smtp-pass",
        )
        if ok:
            self.logins.append((data.login.decode(), data.password.decode()))
        return AuthResult(success=ok)

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
    ctl = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        tls_context=ctx,
        require_starttls=True,
        authenticator=inbox.authenticate,
    )
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


@dataclass(frozen=True)
class Provider:
    """One channel type: how it is set up against the loopback receivers, where its
    message arrives, and what the provider's published API requires of that request
    (the receivers refuse a wrong shape with 400; this checks the content too)."""

    config: dict[str, Any]
    secrets: dict[str, str]
    path: str  # "" for email (the SMTP inbox)
    check: Callable[[Any], bool]


def providers(base: str, smtp_port: int, ca: Path) -> dict[str, Provider]:
    title = "Sluice test message"
    return {
        "slack": Provider(
            {}, {"webhook_url": base + "/slack"}, "/slack", lambda b: title in b["text"]
        ),
        "discord": Provider(
            {}, {"webhook_url": base + "/discord"}, "/discord", lambda b: title in b["content"]
        ),
        "teams": Provider(
            {}, {"webhook_url": base + "/teams"}, "/teams", lambda b: b["title"] == title
        ),
        "telegram": Provider(
            {"chat_id": "-100123", "api_base": base + "/telegram"},
            {"bot_token": "123:abc"},
            "/telegram/bot123:abc/sendMessage",
            lambda b: b["chat_id"] == "-100123" and title in b["text"],
        ),
        "pagerduty": Provider(
            {"api_base": base + "/pd"},
            {"routing_key": "R0UT1NG"},
            "/pd/v2/enqueue",
            lambda b: b["routing_key"] == "R0UT1NG" and b["payload"]["severity"] == "info",
        ),
        "opsgenie": Provider(
            {"api_base": base + "/og"},
            {"api_key": "og-key"},
            "/og/v2/alerts",
            lambda b: b["message"] == title and b["priority"] == "P4",
        ),
        "sms": Provider(
            {"api_url": base + "/sms", "sender": "Sluice", "to": ["+15550100"]},
            {"api_key": "sms-key"},
            "/sms",
            lambda b: b["to"] == ["+15550100"] and b["text"].startswith(title),
        ),
        "webhook": Provider(
            {"url": base + "/hook/ch"},
            {"secret": WEBHOOK_SECRET},
            "/hook/ch",
            lambda b: b["type"] == "test" and b["title"] == title,
        ),
        "email": Provider(
            {
                "host": "127.0.0.1",
                "port": smtp_port,
                "starttls": True,
                "sender": "sluice@example.net",
                "to": ["oncall@example.net"],
                "ca_file": str(ca),
            },
            {"username": "alerts-smtp-user", "password": "smtp-pass"},
            "",
            lambda _b: True,
        ),
    }


async def test_every_channel_type_reaches_its_receiver(
    env: Env, smtp: tuple[Inbox, int, Path]
) -> None:
    inbox, port, ca = smtp
    table = providers(env.rec.base, port, ca)
    ids = {}
    for kind, p in table.items():
        body = await env.ok(
            "POST",
            "/channels",
            201,
            json={"name": kind, "channel_type": kind, "config": p.config, "secrets": p.secrets},
        )
        ch = body["channel"]
        assert "secrets" not in ch and ch["secrets_set"] == sorted(p.secrets), kind
        assert all(v not in str(body) for v in p.secrets.values()), kind
        ids[kind] = ch["id"]
        r = await env("POST", f"/channels/{ch['id']}/test")
        assert r.status_code == 200, (kind, r.text)
        if p.path:
            got = env.rec.at(p.path)
            assert len(got) == 1 and p.check(got[0].body), (kind, got)
    assert env.rec.errors == []
    assert len(inbox.mail) == 1 and inbox.mail[0][1] is True  # delivered over STARTTLS
    assert inbox.mail[0][0].rcpt_tos == ["oncall@example.net"]
    assert inbox.logins == [("alerts-smtp-user", "smtp-pass")]
    # the list shows every channel, never a secret
    listed = (await env.ok("GET", "/channels"))["channels"]
    assert len(listed) == len(table)
    assert all(v not in str(listed) for p in table.values() for v in p.secrets.values())
    # an update without secrets keeps them; a delete removes the channel
    await env.ok("PUT", f"/channels/{ids['slack']}", json={"filters": {"min_severity": "high"}})
    assert (await env("POST", f"/channels/{ids['slack']}/test")).status_code == 200
    await env.ok("DELETE", f"/channels/{ids['slack']}")
    r = await env("POST", f"/channels/{ids['slack']}/test")
    assert r.status_code == 404 and r.json()["error"]["code"] == "channel_not_found"


async def test_secrets_are_encrypted_at_rest_and_old_rows_sealed_at_start(
    tmp_path: Path, smtp: tuple[Inbox, int, Path]
) -> None:
    _, port, ca = smtp
    async with http_receivers() as rec:
        table = providers(rec.base, port, ca)
        e = Env(tmp_path, rec)
        await e.start()
        try:
            for kind, p in table.items():
                await e.ok(
                    "POST",
                    "/channels",
                    201,
                    json={
                        "name": kind,
                        "channel_type": kind,
                        "config": p.config,
                        "secrets": p.secrets,
                    },
                )
            raw = stored_secrets(e)
            assert all(SecretBox.is_sealed(v) for secrets in raw.values() for v in secrets.values())
            everything = str(raw)
            assert all(v not in everything for p in table.values() for v in p.secrets.values())
            # an old store: one row written in clear, as before encryption
            with e.svc.engine.begin() as conn:
                conn.execute(
                    update(channels)
                    .where(channels.c.name == "slack")
                    .values(secrets={"webhook_url": rec.base + "/slack"})
                )
        finally:
            await e.stop()
        e = Env(tmp_path, rec)
        await e.start()  # the start-up seals what it finds in clear
        try:
            raw = stored_secrets(e)
            assert SecretBox.is_sealed(raw["slack"]["webhook_url"])
            assert rec.base not in str(raw)
            r = await e("POST", "/channels/slack/test")
            assert r.status_code == 200 and len(rec.at("/slack")) == 1
            # a rotation (what `sluice secrets rotate` runs): under the new key only
            old = Fernet((tmp_path / KEY_FILE).read_text().strip().encode())
            new = Fernet(Fernet.generate_key())
            with e.svc.engine.begin() as conn:
                assert reseal_channel_secrets(conn, SecretBox([new, old])) == len(table)
            token = stored_secrets(e)["slack"]["webhook_url"].removeprefix(PREFIX).encode()
            assert new.decrypt(token) == f'"{rec.base}/slack"'.encode()
            with pytest.raises(InvalidToken):
                old.decrypt(token)
        finally:
            await e.stop()


def stored_secrets(e: Env) -> dict[str, dict[str, Any]]:
    with e.svc.engine.connect() as conn:
        return {r.name: dict(r.secrets) for r in conn.execute(select(channels)).all()}


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


async def test_egress_policy_refuses_internal_targets_not_allowed(
    tmp_path: Path, smtp: tuple[Inbox, int, Path]
) -> None:
    inbox, port, ca = smtp
    async with http_receivers() as rec:
        e = Env(tmp_path, rec)
        await e.start()
        try:
            email = providers(rec.base, port, ca)["email"]
            slack = await e.ok(
                "POST",
                "/channels",
                201,
                json={
                    "name": "s",
                    "channel_type": "slack",
                    "secrets": {"webhook_url": rec.base + "/slack"},
                },
            )
            mail = await e.ok(
                "POST",
                "/channels",
                201,
                json={"name": "m", "channel_type": "email", "config": email.config},
            )
            e.auto.channels.egress = Egress(EgressPolicy.from_entries([]))  # nothing internal
            # saving: a refused literal is refused at once, naming the field; nothing saved
            for body, fld in [
                (
                    {
                        "name": "s2",
                        "channel_type": "slack",
                        "secrets": {"webhook_url": rec.base + "/slack"},
                    },
                    "secrets.webhook_url",
                ),
                ({"name": "m2", "channel_type": "email", "config": email.config}, "config.host"),
                (
                    {
                        "name": "m3",
                        "channel_type": "email",
                        "config": {**email.config, "host": "localhost"},
                    },
                    "config.host",
                ),
            ]:
                r = await e("POST", "/channels", json=body)
                assert r.status_code == 422, r.text
                err = r.json()["error"]
                assert (err["code"], err["field"]) == ("egress_refused", fld), err
                assert "loopback" in err["message"] and "SLUICE_EGRESS_ALLOW" in err["message"]
            assert len((await e.ok("GET", "/channels"))["channels"]) == 2
            # testing: HTTP and SMTP alike, refused where the connection would be made
            for cid, what in [
                (slack["channel"]["id"], "loopback"),
                (mail["channel"]["id"], "SMTP"),
            ]:
                r = await e("POST", f"/channels/{cid}/test")
                assert r.status_code == 502, r.text
                assert r.json()["error"]["code"] == "egress_refused"
                assert what in r.json()["error"]["message"]
            assert rec.got == [] and inbox.mail == []
            # delivering: recorded as failed at once (not retried), with the reason
            await e.ok("PUT", f"/channels/{slack['channel']['id']}", json={"enabled": False})
            await e.signal()
            await e.until(lambda: delivery_rows(e), what="the email delivery")
            await e.until(
                lambda: delivery_rows(e)[0].status == "failed", what="the failed delivery"
            )
            row = delivery_rows(e)[0]
            assert row.attempts == 1 and "egress refused: SMTP 127.0.0.1" in row.last_error
            assert inbox.mail == []
        finally:
            await e.stop()


def delivery_rows(e: Env) -> list[Any]:
    with e.svc.engine.connect() as conn:
        return list(conn.execute(select(channel_deliveries).order_by(channel_deliveries.c.id)))


async def test_open_deliveries_resume_after_a_restart_and_never_repeat_a_confirmed_one(
    tmp_path: Path,
) -> None:
    """Stopped during a send, and stopped during a backoff: both resumed at start-up (the
    backoff kept), each delivered once; a confirmed delivery is not sent again."""
    async with http_receivers() as rec:
        rec.script["/slack"] = ["hang"]  # the first send never gets an answer
        rec.script["/discord"] = ["503"]  # the first attempt fails: a backoff follows
        e = Env(tmp_path, rec)
        await e.start()
        try:
            e.auto.channels.retry_base = 3600.0  # the backoff outlasts the first service
            for kind in ("slack", "discord"):
                await e.ok(
                    "POST",
                    "/channels",
                    201,
                    json={
                        "name": kind,
                        "channel_type": kind,
                        "secrets": {"webhook_url": f"{rec.base}/{kind}"},
                    },
                )
            iid = await e.signal()
            await rec.wait("/slack", 1)  # in flight
            await e.until(
                lambda: {r.status for r in delivery_rows(e)} == {"pending", "retrying"},
                what="one delivery in flight, one waiting for its retry",
            )
            retry = next(r for r in delivery_rows(e) if r.status == "retrying")
            assert retry.attempts == 1 and retry.next_attempt_at is not None
        finally:
            await e.stop()  # mid-send and mid-backoff
        rec.release.set()
        e = Env(tmp_path, rec)
        await e.start()
        try:  # the one cut off mid-send is sent again; the other keeps its backoff
            await e.until(
                lambda: [r.status for r in delivery_rows(e)] == ["delivered", "retrying"],
                what="the interrupted send confirmed after the restart",
            )
            assert len(rec.ok_at("/slack")) == 1 and len(rec.at("/discord")) == 1
        finally:
            await e.stop()
        with e.svc.engine.begin() as conn:  # its time has come
            conn.execute(
                update(channel_deliveries)
                .where(channel_deliveries.c.status == "retrying")
                .values(next_attempt_at=datetime.now(UTC))
            )
        e = Env(tmp_path, rec)
        await e.start()
        try:
            await e.until(
                lambda: [r.status for r in delivery_rows(e)] == ["delivered", "delivered"],
                what="the retry made after the second restart",
            )
            assert [r.attempts for r in delivery_rows(e)] == [1, 2]
            assert len(rec.ok_at("/slack")) == 1 and len(rec.ok_at("/discord")) == 1
            assert all(iid in g.body.get("text", g.body.get("content", "")) for g in rec.got)
        finally:
            await e.stop()
        e = Env(tmp_path, rec)
        await e.start()
        try:  # confirmed deliveries are not taken up again
            assert e.auto.channels.recover(starting=True) == []
            assert len(rec.ok_at("/slack")) == 1 and len(rec.ok_at("/discord")) == 1
        finally:
            await e.stop()
