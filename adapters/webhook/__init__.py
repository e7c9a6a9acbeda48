"""Webhooks: one Standard Webhooks-signed JSON POST per rule change.

Receivers verify what they get with :func:`verify` (``adapters.webhook.verify(secret,
headers, body, tolerance=300)``), which raises :class:`WebhookVerificationError` for a
missing header, a bad or tampered signature, or a timestamp outside the tolerance.
"""

from adapters.webhook.adapter import WebhookAdapter, WebhookSettings
from adapters.webhook.signing import WebhookVerificationError, new_secret, sign, verify

__all__ = [
    "WebhookAdapter",
    "WebhookSettings",
    "WebhookVerificationError",
    "new_secret",
    "sign",
    "verify",
]
