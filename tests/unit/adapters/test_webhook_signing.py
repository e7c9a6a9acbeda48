"""Standard Webhooks signing and the receiver-side verify() helper."""

from __future__ import annotations

import time

import pytest

from adapters.webhook import WebhookVerificationError, new_secret, sign, verify
from adapters.webhook.signing import headers_for, secret_key

# The test vector published with the Standard Webhooks reference libraries.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TS = 1614265330
SPEC_BODY = '{"test": 2432232314}'
SPEC_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signature_matches_the_published_vector() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY) == SPEC_SIG
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY.encode()) == SPEC_SIG


def _headers(**over: str) -> dict[str, str]:
    base = {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TS), "webhook-signature": SPEC_SIG}
    return {**base, **over}


def test_verify_accepts_the_vector_and_any_header_case() -> None:
    verify(SPEC_SECRET, _headers(), SPEC_BODY, now=SPEC_TS + 10)
    upper = {k.title(): v for k, v in _headers().items()}
    verify(SPEC_SECRET, upper, SPEC_BODY.encode(), now=SPEC_TS - 10)


def test_verify_accepts_one_good_signature_among_several() -> None:
    rotated = f"v1,bm90IGl0 {SPEC_SIG} v2,whatever"
    verify(SPEC_SECRET, _headers(**{"webhook-signature": rotated}), SPEC_BODY, now=SPEC_TS)


def test_tampered_body_is_refused() -> None:
    with pytest.raises(WebhookVerificationError, match="no matching v1 signature") as err:
        verify(SPEC_SECRET, _headers(), '{"test": 2432232315}', now=SPEC_TS)
    assert err.value.code == "invalid_signature" and err.value.status == 401


def test_tampered_id_or_timestamp_is_refused() -> None:
    with pytest.raises(WebhookVerificationError):
        verify(SPEC_SECRET, _headers(**{"webhook-id": "msg_other"}), SPEC_BODY, now=SPEC_TS)
    with pytest.raises(WebhookVerificationError):
        verify(
            SPEC_SECRET,
            _headers(**{"webhook-timestamp": str(SPEC_TS + 1)}),
            SPEC_BODY,
            now=SPEC_TS,
        )


def test_wrong_secret_is_refused() -> None:
    with pytest.raises(WebhookVerificationError, match="no matching"):
        verify(new_secret(), _headers(), SPEC_BODY, now=SPEC_TS)


@pytest.mark.parametrize("offset", [301, -301, 10_000])
def test_timestamp_outside_tolerance_is_refused_as_replay(offset: int) -> None:
    with pytest.raises(WebhookVerificationError, match="possible replay"):
        verify(SPEC_SECRET, _headers(), SPEC_BODY, now=SPEC_TS + offset)
    verify(SPEC_SECRET, _headers(), SPEC_BODY, tolerance=abs(offset), now=SPEC_TS + offset)


def test_missing_or_malformed_headers_are_refused() -> None:
    with pytest.raises(WebhookVerificationError, match=r"missing header.*webhook-signature"):
        verify(SPEC_SECRET, {"webhook-id": SPEC_ID, "webhook-timestamp": "1"}, SPEC_BODY)
    with pytest.raises(WebhookVerificationError, match="not an integer"):
        verify(SPEC_SECRET, _headers(**{"webhook-timestamp": "soon"}), SPEC_BODY)


def test_fresh_messages_round_trip_with_the_real_clock() -> None:
    secret = new_secret()
    now = int(time.time())
    headers = headers_for(secret, "msg_1", now, b"{}")
    verify(secret, headers, b"{}")
    assert len(secret_key(secret)) == 32


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "starts with 'whsec_'"),
        ("whsec_not*base64", "not base64"),
        ("whsec_c2hvcnQ=", "24 to 64 bytes"),
    ],
)
def test_malformed_secrets_are_rejected(secret: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        secret_key(secret)
    with pytest.raises(WebhookVerificationError, match="secret is unusable"):
        verify(secret, _headers(), SPEC_BODY, now=SPEC_TS)
