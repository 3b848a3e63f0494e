"""Standard Webhooks signatures (https://www.standardwebhooks.com): sign, build headers, verify.

Signature = ``v1,`` + base64(HMAC-SHA256(key, f"{msg_id}.{timestamp}.{body}")), where ``key`` is the
base64-decoded part of a ``whsec_…`` secret. Several secrets (space separated) give several
signatures in one header, so receivers can rotate keys without downtime. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _secrets
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from pydantic import SecretStr

from schemas.errors import ErrorCode, Permanent

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
USER_AGENT = "videogen-webhooks/1"
DEFAULT_TOLERANCE_S = 300
MIN_SECRET_BYTES = 16

HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"


class InvalidSecret(Permanent):
    """A configured ``whsec_…`` secret is malformed (a configuration error; never retried)."""

    code = ErrorCode.INTERNAL


class SignatureError(Permanent):
    """A received webhook failed verification (missing header, stale timestamp, no matching signature)."""

    code = ErrorCode.INVALID_REQUEST


def generate_secret(nbytes: int = 32) -> str:
    """A fresh random ``whsec_…`` secret."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(nbytes)).decode()


def parse_secrets(raw: str | SecretStr, *, min_bytes: int = MIN_SECRET_BYTES) -> list[bytes]:
    """Decode space-separated ``whsec_<base64>`` secrets into HMAC keys (first = current key).

    Raises ``InvalidSecret`` naming the position of the bad secret (never its value).
    """
    text = raw.get_secret_value() if isinstance(raw, SecretStr) else raw
    parts = text.split()
    if not parts:
        raise InvalidSecret("no webhook secret configured (expected 'whsec_<base64>')")
    keys: list[bytes] = []
    for i, part in enumerate(parts, start=1):
        if not part.startswith(SECRET_PREFIX):
            raise InvalidSecret(f"webhook secret #{i} must start with {SECRET_PREFIX!r}")
        b64 = part[len(SECRET_PREFIX):]
        try:
            key = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
        except (binascii.Error, ValueError) as e:
            raise InvalidSecret(f"webhook secret #{i} is not valid base64 after {SECRET_PREFIX!r}") from e
        if len(key) < min_bytes:
            raise InvalidSecret(f"webhook secret #{i} is too short ({len(key)} bytes, need >= {min_bytes})")
        keys.append(key)
    return keys


def _keys(secrets: str | SecretStr | bytes | Sequence[bytes]) -> list[bytes]:
    if isinstance(secrets, (str, SecretStr)):
        return parse_secrets(secrets, min_bytes=1)
    if isinstance(secrets, bytes):
        return [secrets]
    keys = list(secrets)
    if not keys:
        raise InvalidSecret("no webhook secret given")
    return keys


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(mac).decode()}"


def sign(msg_id: str, timestamp: int, body: bytes, secrets: str | SecretStr | bytes | Sequence[bytes]) -> str:
    """The ``webhook-signature`` header value: ``v1,<b64> v1,<b64>`` — one signature per secret."""
    if not msg_id or any(c.isspace() for c in msg_id):
        raise ValueError("msg_id must be non-empty and contain no whitespace")
    return " ".join(_signature(key, msg_id, int(timestamp), body) for key in _keys(secrets))


def headers(
    msg_id: str,
    body: bytes,
    secrets: str | SecretStr | bytes | Sequence[bytes],
    now: float | None = None,
) -> dict[str, str]:
    """All request headers of one delivery; ``now`` (unix seconds) defaults to the current time."""
    ts = int(time.time() if now is None else now)
    return {
        HEADER_ID: msg_id,
        HEADER_TIMESTAMP: str(ts),
        HEADER_SIGNATURE: sign(msg_id, ts, body, secrets),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def verify(
    body: bytes,
    headers: Mapping[str, str],
    secret: str | SecretStr | bytes | Sequence[bytes],
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    *,
    now: float | None = None,
) -> None:
    """Check a received webhook; returns None or raises ``SignatureError``.

    ``secret``: a ``whsec_…`` string (space separated for several), or raw key bytes. The
    timestamp must lie within ``tolerance_s`` of ``now`` (replay protection, both directions).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id = lower.get(HEADER_ID, "")
    ts_raw = lower.get(HEADER_TIMESTAMP, "")
    sig_header = lower.get(HEADER_SIGNATURE, "")
    if not (msg_id and ts_raw and sig_header):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
    if not ts_raw.isdigit():
        raise SignatureError("webhook-timestamp is not a unix timestamp in seconds")
    ts = int(ts_raw)
    current = time.time() if now is None else now
    if ts < current - tolerance_s:
        raise SignatureError("webhook-timestamp is too old")
    if ts > current + tolerance_s:
        raise SignatureError("webhook-timestamp is too far in the future")
    expected = [_signature(key, msg_id, ts, body).encode() for key in _keys(secret)]
    for candidate in sig_header.split():
        if candidate.startswith(SIGNATURE_VERSION + ","):
            got = candidate.encode()
            if any(hmac.compare_digest(got, exp) for exp in expected):
                return
    raise SignatureError("no matching v1 signature")


# ---------------------------------------------------------------------------------------------
# which secret signs a tenant's webhooks
# ---------------------------------------------------------------------------------------------
DEFAULT_TENANT = "default"


class _SecretSettings(Protocol):  # the two settings secret_for reads (runtime.settings.Settings has them)
    @property
    def webhook_secret(self) -> SecretStr: ...

    @property
    def webhook_tenant_secrets(self) -> Mapping[str, SecretStr]: ...


def secret_for(tenant: str, settings: _SecretSettings) -> list[bytes]:
    """The signing keys of ``tenant``'s webhooks (the first signs; all sign during a rotation).

    ``settings.webhook_tenant_secrets[tenant]`` (``"whsec_new whsec_old"`` while rotating); the
    ``default`` tenant falls back to ``settings.webhook_secret``. Any other tenant without its own
    secret is a configuration error, never the shared one: a tenant able to verify its webhooks
    must not be able to forge another tenant's.
    """
    configured = settings.webhook_tenant_secrets.get(tenant)
    if configured is None:
        if tenant != DEFAULT_TENANT:
            raise InvalidSecret(f"no webhook signing secret configured for tenant {tenant!r}")
        configured = settings.webhook_secret
    return parse_secrets(configured)
