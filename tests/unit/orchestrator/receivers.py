"""Real HTTP and SMTP receivers on loopback standing in for the alerting providers.

Each HTTP route checks the request shape of the provider's published API and answers
400 when it is wrong (so a malformed message is a failed delivery, not a silent pass):
Slack (``text``), Discord (``content`` <= 2000), Teams (a MessageCard), Telegram
(``/bot<token>/sendMessage`` with ``chat_id`` and ``text``), PagerDuty Events v2
(``routing_key``, ``event_action``, ``dedup_key``, a ``payload`` with summary/source/
severity on trigger; 202), OpsGenie (``GenieKey`` auth, ``message`` <= 130; close by
alias), an SMS provider (bearer key, from/to/text) and the signed webhook (verified
with the Standard Webhooks reference library).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

WEBHOOK_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class Got:
    path: str
    headers: dict[str, str]
    body: Any
    at: float
    wall: float = 0.0
    status: int = 200  # what the receiver answered


@dataclass
class Receivers:
    base: str = ""
    got: list[Got] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    # per path, what to do with the next requests before answering normally:
    # "503" answers 503; "hang" holds the request until ``release`` is set, then 503
    script: dict[str, list[str]] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def ok_at(self, prefix: str) -> list[Got]:
        """The requests at ``prefix`` the receiver took (answered 2xx)."""
        return [g for g in self.at(prefix) if g.status < 300]

    def at(self, prefix: str) -> list[Got]:
        return [g for g in self.got if g.path.startswith(prefix)]

    async def wait(self, prefix: str, n: int = 1, seconds: float = 20.0) -> list[Got]:
        async with asyncio.timeout(seconds):
            while len(self.at(prefix)) < n:
                self.arrived.clear()
                if len(self.at(prefix)) >= n:
                    break
                await self.arrived.wait()
        return self.at(prefix)


def _bad(rec: Receivers, why: str) -> Response:
    rec.errors.append(why)
    return JSONResponse({"error": why}, status_code=400)


def app_for(rec: Receivers) -> Starlette:
    async def handle(request: Request) -> Response:
        raw = await request.body()
        path = request.url.path
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            return _bad(rec, f"{path}: body is not JSON")
        if not (request.headers.get("content-type") or "").startswith("application/json"):
            return _bad(rec, f"{path}: content-type is not JSON")
        answer: Response = Response(status_code=200)
        todo = rec.script.get(path)
        if todo:
            action = todo.pop(0)
            rec.got.append(Got(path, headers, body, time.monotonic(), time.time(), 503))
            rec.arrived.set()
            if action == "hang":
                await rec.release.wait()
            return Response(status_code=503)
        if path == "/slack":
            if not isinstance(body.get("text"), str) or not body["text"]:
                return _bad(rec, "slack: text missing")
        elif path == "/discord":
            c = body.get("content")
            if not isinstance(c, str) or not c or len(c) > 2000:
                return _bad(rec, "discord: content missing or longer than 2000")
            answer = Response(status_code=204)
        elif path == "/teams":
            if body.get("@type") != "MessageCard" or "summary" not in body or "text" not in body:
                return _bad(rec, "teams: not a MessageCard with summary and text")
            answer = Response("1")
        elif path.startswith("/telegram/bot"):
            if not path.endswith("/sendMessage") or "chat_id" not in body or not body.get("text"):
                return _bad(rec, "telegram: sendMessage needs chat_id and text")
            answer = JSONResponse({"ok": True, "result": {"message_id": len(rec.got) + 1}})
        elif path == "/pd/v2/enqueue":
            if not body.get("routing_key") or body.get("event_action") not in (
                "trigger",
                "resolve",
                "acknowledge",
            ):
                return _bad(rec, "pagerduty: routing_key/event_action")
            if not body.get("dedup_key"):
                return _bad(rec, "pagerduty: dedup_key missing")
            if body["event_action"] == "trigger":
                p = body.get("payload") or {}
                if not p.get("summary") or not p.get("source"):
                    return _bad(rec, "pagerduty: payload summary/source")
                if p.get("severity") not in ("critical", "error", "warning", "info"):
                    return _bad(rec, "pagerduty: payload severity")
            answer = JSONResponse(
                {"status": "success", "message": "Event processed", "dedup_key": body["dedup_key"]},
                status_code=202,
            )
        elif path.startswith("/og/v2/alerts"):
            if not headers.get("authorization", "").startswith("GenieKey "):
                return _bad(rec, "opsgenie: GenieKey authorization")
            if path == "/og/v2/alerts":
                m = body.get("message")
                if not isinstance(m, str) or not m or len(m) > 130:
                    return _bad(rec, "opsgenie: message")
            elif (
                not path.endswith("/close") or request.query_params.get("identifierType") != "alias"
            ):
                return _bad(rec, "opsgenie: close by alias")
            answer = JSONResponse({"result": "Request will be processed", "requestId": "r1"}, 202)
        elif path == "/sms":
            if headers.get("authorization") != "Bearer sms-key":
                return _bad(rec, "sms: bearer key")
            if not body.get("to") or not body.get("from") or not body.get("text"):
                return _bad(rec, "sms: from/to/text")
        elif path.startswith("/hook"):
            try:
                Webhook(WEBHOOK_SECRET).verify(raw, headers)
            except Exception as exc:
                return _bad(rec, f"webhook: signature: {exc}")
        elif path == "/fail":
            rec.got.append(Got(path, headers, body, time.monotonic(), time.time()))
            rec.arrived.set()
            return Response(status_code=503)
        rec.got.append(Got(path, headers, body, time.monotonic(), time.time()))
        rec.arrived.set()
        return answer

    return Starlette(routes=[Route("/{p:path}", handle, methods=["POST", "PUT"])])


@contextlib.asynccontextmanager
async def http_receivers() -> AsyncIterator[Receivers]:
    rec = Receivers()
    server = uvicorn.Server(
        uvicorn.Config(app_for(rec), host="127.0.0.1", port=0, log_config=None, lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(20):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        rec.base = f"http://127.0.0.1:{port}"
        yield rec
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)


def self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "smtp.crt", tmp / "smtp.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key
