"""Standard Webhooks signatures: signing (sender) and verification (receiver).

The secret is ``whsec_`` followed by base64 of 24 to 64 random bytes, with or without
its ``=`` padding (the reference libraries accept both); the key is the decoded bytes.
A message is signed as::

    webhook-id:        a unique id per message (kept across retries of the same message)
    webhook-timestamp: integer Unix seconds when it was sent
    webhook-signature: "v1," + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}"))

``webhook-signature`` may carry several space-separated signatures (during a secret
rotation); one match is enough. :func:`verify` also refuses a timestamp more than
``tolerance`` seconds away from the receiver's clock, so a captured request cannot be
replayed later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

from policies.errors import AuthError

PREFIX = "whsec_"
MIN_KEY, MAX_KEY = 24, 64


class WebhookVerificationError(AuthError):
    """A webhook failed verification (missing headers, bad signature, stale timestamp)."""

    code = "invalid_signature"


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a ``whsec_<base64>`` secret (ValueError when malformed)."""
    if not secret.startswith(PREFIX):
        raise ValueError("a webhook secret starts with 'whsec_'")
    text = secret.removeprefix(PREFIX)
    text += "=" * (-len(text) % 4)  # padding is optional, as in the reference libraries
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after 'whsec_' is not base64") from None
    if not MIN_KEY <= len(key) <= MAX_KEY:
        raise ValueError(f"the secret key must be {MIN_KEY} to {MAX_KEY} bytes, not {len(key)}")
    return key


def new_secret(size: int = 32) -> str:
    """A fresh ``whsec_`` secret to give to a receiver."""
    return PREFIX + base64.b64encode(secrets.token_bytes(size)).decode()


def _as_bytes(body: bytes | str) -> bytes:
    return body.encode() if isinstance(body, str) else body


def sign(secret: str, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """The ``webhook-signature`` value (``v1,<base64>``) for one message."""
    key = secret_key(secret)
    signed = f"{msg_id}.{timestamp}.".encode() + _as_bytes(body)
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers_for(secret: str, msg_id: str, timestamp: int, body: bytes | str) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance: int = 300,
    *,
    now: float | None = None,
) -> None:
    """Check a received webhook; raise :class:`WebhookVerificationError` if it is not good.

    ``headers`` may be any mapping (names are matched case-insensitively); ``body`` must
    be the raw bytes as received, before any JSON parsing.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    missing = [
        h for h in ("webhook-id", "webhook-timestamp", "webhook-signature") if not lowered.get(h)
    ]
    if missing:
        raise WebhookVerificationError(f"missing header(s): {', '.join(missing)}")
    msg_id, stamp, signatures = (
        lowered["webhook-id"],
        lowered["webhook-timestamp"],
        lowered["webhook-signature"],
    )
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    clock = time.time() if now is None else now
    if abs(clock - timestamp) > tolerance:
        raise WebhookVerificationError(
            f"webhook-timestamp is {int(clock - timestamp)} s away from now "
            f"(tolerance {tolerance} s): refused as a possible replay"
        )
    try:
        expected = sign(secret, msg_id, timestamp, body).removeprefix("v1,")
    except ValueError as exc:
        raise WebhookVerificationError(f"receiver secret is unusable: {exc}") from None
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected.encode()):
            return
    raise WebhookVerificationError("no matching v1 signature")
