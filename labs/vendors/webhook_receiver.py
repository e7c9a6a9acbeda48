"""A webhook receiver that verifies Standard Webhooks signatures, for tests and trials.

``POST <path>`` (default ``/hooks/sluice``) is checked against the receiver's ``whsec_``
secret by the official Standard Webhooks library (PyPI ``standardwebhooks``, a dev
dependency), not by Sluice's own :func:`adapters.webhook.verify`, so a signing mistake
shared by our signer and our verifier cannot hide. The receiver also refuses a
``webhook-timestamp`` more than ``tolerance`` seconds from its ``clock`` (the library's
own window is 5 minutes of the real clock). A good message
is kept in :attr:`WebhookReceiver.messages` and answered ``200 {"ok": true}``; a message
whose ``webhook-id`` was already received is answered 200 again but not kept twice (as
receivers should treat retries); a bad one is answered ``401 {"message": why}`` and its
reason kept in :attr:`WebhookReceiver.rejected`. Faults from the base class (5xx, delays,
drops) make the sender retry.

Run ``python -m labs.vendors.webhook_receiver --port 9000`` for manual trials; it prints
the secret to configure in the webhook adapter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import standardwebhooks

from adapters.webhook import new_secret
from labs.vendors.server import FakeVendorServer, Request, Response


def reference_verify(
    secret: str, headers: Mapping[str, str], raw: bytes, *, tolerance: int, now: float
) -> None:
    """Raise ``standardwebhooks.WebhookVerificationError`` unless the message is good."""
    stamp = {k.lower(): v for k, v in headers.items()}.get("webhook-timestamp", "")
    if stamp.isdigit() and abs(now - int(stamp)) > tolerance:
        raise standardwebhooks.WebhookVerificationError(
            f"webhook-timestamp is {int(now - int(stamp))} s from the receiver's clock"
        )
    standardwebhooks.Webhook(secret).verify(raw, dict(headers), json_parse=False)


@dataclass(frozen=True, slots=True)
class Received:
    webhook_id: str
    timestamp: int
    body: Any
    raw: bytes
    headers: dict[str, str]


class WebhookReceiver(FakeVendorServer):
    vendor = "webhook"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        secret: str | None = None,
        path: str = "/hooks/sluice",
        tolerance: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(host, port)
        self.secret = secret or new_secret()
        self.path = path
        self.tolerance = tolerance
        self.clock = clock
        self.messages: list[Received] = []
        self.duplicates = 0
        self.rejected: list[str] = []
        self._ids: set[str] = set()

    @property
    def hook_url(self) -> str:
        return self.url + self.path

    def handle(self, req: Request) -> Response:
        if req.path != self.path:
            return Response(404, {"message": f"no such resource: {req.path}"})
        if req.method != "POST":
            return Response(405, {"message": f"method {req.method} not allowed"}, {"Allow": "POST"})
        with self.lock:
            try:
                reference_verify(
                    self.secret, req.headers, req.raw, tolerance=self.tolerance, now=self.clock()
                )
            except standardwebhooks.WebhookVerificationError as exc:
                self.rejected.append(str(exc))
                return Response(401, {"message": str(exc)})
            msg_id = req.headers["webhook-id"]
            if msg_id in self._ids:
                self.duplicates += 1
                return Response(200, {"ok": True, "duplicate": True})
            self._ids.add(msg_id)
            self.messages.append(
                Received(
                    msg_id,
                    int(req.headers["webhook-timestamp"]),
                    req.body,
                    req.raw,
                    dict(req.headers),
                )
            )
        return Response(200, {"ok": True})

    def events(self) -> list[tuple[str, int]]:
        """``(type, rule id)`` of every kept message, for compact assertions."""
        out = []
        for m in self.messages:
            body = m.body if isinstance(m.body, dict) else {}
            rule = body.get("data", {}).get("rule") or {}
            out.append((str(body.get("type")), int(rule.get("id", -1))))
        return out


def main(argv: list[str] | None = None) -> None:
    from labs.vendors.server import serve_main

    secret = new_secret()  # a throwaway secret for a local trial receiver

    def factory(host: str, port: int) -> WebhookReceiver:
        return WebhookReceiver(host, port, secret=secret)

    serve_main(factory, argv, f"POST /hooks/sluice, signing secret {secret}")


if __name__ == "__main__":
    main()
