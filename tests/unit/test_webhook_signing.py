"""Standard Webhooks signing, checked against the ``standardwebhooks`` reference package."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from functions.webhook import signing
from functions.webhook.signing import InvalidSecret, SignatureError

SECRET_A = "whsec_" + base64.b64encode(b"a" * 32).decode()
SECRET_B = "whsec_" + base64.b64encode(b"b" * 24).decode()
BODY = b'{"id":"evt_1","type":"job.succeeded","job_id":"j1","time":"2024-01-01T00:00:00Z","data":{}}'
MSG_ID = "evt_0123456789abcdef01234567"


# --- parse_secrets ----------------------------------------------------------------------------
def test_parse_single_and_rotation() -> None:
    assert signing.parse_secrets(SECRET_A) == [b"a" * 32]
    assert signing.parse_secrets(f"  {SECRET_A}   {SECRET_B} ") == [b"a" * 32, b"b" * 24]
    assert signing.parse_secrets(SecretStr(SECRET_B)) == [b"b" * 24]


def test_parse_unpadded_base64() -> None:
    unpadded = "whsec_" + base64.b64encode(b"x" * 17).decode().rstrip("=")
    assert signing.parse_secrets(unpadded) == [b"x" * 17]


def test_default_settings_secret_parses() -> None:
    from runtime.settings import Settings

    assert signing.parse_secrets(Settings().webhook_secret) == [b"videogen-development-secret-key"]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "no webhook secret"),
        ("   ", "no webhook secret"),
        ("c2VjcmV0c2VjcmV0c2VjcmV0", "#1 must start with 'whsec_'"),
        (f"{SECRET_A} whsec_!!notbase64!!", "#2 is not valid base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "#1 is too short"),
        ("whsec_", "#1 is too short"),
    ],
)
def test_parse_malformed(raw: str, fragment: str) -> None:
    with pytest.raises(InvalidSecret, match=fragment) as info:
        signing.parse_secrets(raw)
    assert "!!notbase64!!" not in str(info.value)  # never echo secret material


# --- sign / headers, verified by the reference implementation ---------------------------------
def test_sign_matches_reference() -> None:
    ts = 1_700_000_000
    ours = signing.sign(MSG_ID, ts, BODY, signing.parse_secrets(SECRET_A))
    ref = Webhook(SECRET_A).sign(MSG_ID, datetime.fromtimestamp(ts, tz=UTC), BODY.decode())
    assert ours == ref


def test_one_signature_per_secret() -> None:
    sig = signing.sign(MSG_ID, 1, BODY, signing.parse_secrets(f"{SECRET_A} {SECRET_B}"))
    parts = sig.split(" ")
    assert len(parts) == 2 and all(p.startswith("v1,") for p in parts)


def test_headers_shape() -> None:
    h = signing.headers(MSG_ID, BODY, signing.parse_secrets(SECRET_A), now=1_700_000_000.7)
    assert h["webhook-id"] == MSG_ID
    assert h["webhook-timestamp"] == "1700000000"
    assert h["content-type"] == "application/json"
    assert h["user-agent"] == "videogen-webhooks/1"
    assert h["webhook-signature"].startswith("v1,")


def test_reference_verifies_our_headers() -> None:
    h = signing.headers(MSG_ID, BODY, signing.parse_secrets(SECRET_A))
    assert Webhook(SECRET_A).verify(BODY, h)["type"] == "job.succeeded"


def test_rotation_either_secret_verifies() -> None:
    h = signing.headers(MSG_ID, BODY, signing.parse_secrets(f"{SECRET_A} {SECRET_B}"))
    Webhook(SECRET_A).verify(BODY, h)
    Webhook(SECRET_B).verify(BODY, h)
    other = "whsec_" + base64.b64encode(b"c" * 32).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(BODY, h)


def test_reference_rejects_tampered_body() -> None:
    h = signing.headers(MSG_ID, BODY, signing.parse_secrets(SECRET_A))
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET_A).verify(BODY.replace(b"succeeded", b"failed"), h)


def test_reference_rejects_tampered_timestamp() -> None:
    h = signing.headers(MSG_ID, BODY, signing.parse_secrets(SECRET_A))
    h["webhook-timestamp"] = str(int(h["webhook-timestamp"]) - 1)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET_A).verify(BODY, h)


def test_reference_rejects_tampered_id() -> None:
    h = signing.headers(MSG_ID, BODY, signing.parse_secrets(SECRET_A))
    h["webhook-id"] = "evt_other"
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET_A).verify(BODY, h)


def test_reference_rejects_old_timestamp() -> None:
    h = signing.headers(MSG_ID, BODY, signing.parse_secrets(SECRET_A), now=time.time() - 600)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(SECRET_A).verify(BODY, h)


def test_sign_rejects_bad_msg_id() -> None:
    with pytest.raises(ValueError):
        signing.sign("evt 1", 1, BODY, [b"k" * 32])
    with pytest.raises(ValueError):
        signing.sign("", 1, BODY, [b"k" * 32])


# --- our verify ---------------------------------------------------------------------------------
def test_verify_accepts_reference_signature() -> None:
    ts = int(time.time())
    ref_sig = Webhook(SECRET_A).sign(MSG_ID, datetime.fromtimestamp(ts, tz=UTC), BODY.decode())
    h = {"Webhook-Id": MSG_ID, "Webhook-Timestamp": str(ts), "Webhook-Signature": ref_sig}
    signing.verify(BODY, h, SECRET_A)  # header names are case-insensitive


def test_verify_rotation_and_secret_forms() -> None:
    h = signing.headers(MSG_ID, BODY, signing.parse_secrets(f"{SECRET_A} {SECRET_B}"))
    signing.verify(BODY, h, SECRET_A)
    signing.verify(BODY, h, SECRET_B)
    signing.verify(BODY, h, b"a" * 32)
    signing.verify(BODY, h, SecretStr(SECRET_B))
    # a receiver holding the new key plus an unrelated one still verifies
    signing.verify(BODY, h, "whsec_" + base64.b64encode(b"z" * 32).decode() + " " + SECRET_B)


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda h, b: (h, b + b" "), "no matching"),
        (lambda h, b: ({**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) + 1)}, b), "no matching"),
        (lambda h, b: ({**h, "webhook-id": "evt_x"}, b), "no matching"),
        (lambda h, b: ({**h, "webhook-timestamp": "12.5"}, b), "not a unix timestamp"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b), "missing"),
        (lambda h, b: ({**h, "webhook-signature": "v2,abc v1"}, b), "no matching"),
    ],
)
def test_verify_rejects(mutate, fragment: str) -> None:  # type: ignore[no-untyped-def]
    h, b = mutate(signing.headers(MSG_ID, BODY, [b"a" * 32]), BODY)
    with pytest.raises(SignatureError, match=fragment):
        signing.verify(b, h, SECRET_A)


def test_verify_wrong_secret() -> None:
    h = signing.headers(MSG_ID, BODY, [b"a" * 32])
    with pytest.raises(SignatureError, match="no matching"):
        signing.verify(BODY, h, SECRET_B)


def test_verify_timestamp_tolerance() -> None:
    now = 1_700_000_000
    h = signing.headers(MSG_ID, BODY, [b"a" * 32], now=now)
    signing.verify(BODY, h, SECRET_A, now=now + 300)
    with pytest.raises(SignatureError, match="too old"):
        signing.verify(BODY, h, SECRET_A, now=now + 301)
    with pytest.raises(SignatureError, match="future"):
        signing.verify(BODY, h, SECRET_A, now=now - 301)
    signing.verify(BODY, h, SECRET_A, tolerance_s=3600, now=now + 3000)


def test_generate_secret_roundtrip() -> None:
    secret = signing.generate_secret()
    assert len(signing.parse_secrets(secret)[0]) == 32
    Webhook(secret).verify(BODY, signing.headers(MSG_ID, BODY, secret))
