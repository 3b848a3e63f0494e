"""Webhooks nobody can forge: https only, per-tenant secrets, replay by reference only."""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr

from functions.webhook.replay import replay_reference
from functions.webhook.signing import (
    DEFAULT_TENANT,
    InvalidSecret,
    generate_secret,
    parse_secrets,
    secret_for,
    verify,
)
from functions.webhook.signing import headers as signed_headers
from runtime.netguard import ForbiddenTarget, require_https
from runtime.settings import Settings


@pytest.mark.parametrize("url", ["https://example.com/hook", "http://127.0.0.1:8080/hook",
                                 "http://receiver.local/hook", "http://10.1.2.3/x"])
def test_https_or_allow_listed(url: str) -> None:
    require_https(url, ["127.0.0.1", "receiver.local", "10.0.0.0/8"])


@pytest.mark.parametrize("url", ["http://example.com/hook", "http://127.0.0.1:8080/hook", "http://[::1]/x"])
def test_plain_http_refused(url: str) -> None:
    with pytest.raises(ForbiddenTarget, match="https only"):
        require_https(url, ["receiver.local"])


def _settings(**kw: object) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


def test_default_tenant_uses_todays_secret() -> None:
    s = _settings()
    assert secret_for(DEFAULT_TENANT, s) == parse_secrets(s.webhook_secret)


def test_tenant_secrets_with_rotation_and_no_fallback() -> None:
    new, old, other = generate_secret(), generate_secret(), generate_secret()
    s = _settings(webhook_tenant_secrets={"acme": SecretStr(f"{new} {old}"), "globex": SecretStr(other)})
    keys = secret_for("acme", s)
    assert keys == parse_secrets(new) + parse_secrets(old)
    body, hdrs = b'{"x":1}', signed_headers("evt_1", b'{"x":1}', keys)
    verify(body, hdrs, old)  # a receiver still on the old secret accepts it during the rotation
    verify(body, hdrs, new)
    with pytest.raises(Exception):  # noqa: B017 - another tenant's secret never verifies acme's webhooks
        verify(body, hdrs, other)
    with pytest.raises(InvalidSecret):
        secret_for("initech", s)  # no secret of its own: refused, never the shared default


EVENT = {"id": "evt_0123456789abcdef01234567", "type": "job.succeeded", "job_id": "j1",
         "time": "2026-01-01T00:00:00Z", "data": {"url": "https://evil.example/x"}}


def test_replay_reference_takes_only_ids() -> None:
    raw = json.dumps(EVENT).encode()
    assert replay_reference(raw, "videogen.webhooks.replay.j1") == ("j1", EVENT["id"])
    bare = json.dumps({"id": EVENT["id"]}).encode()
    assert replay_reference(bare, "videogen.webhooks.replay.j1") == ("j1", EVENT["id"])


@pytest.mark.parametrize(
    ("body", "subject"),
    [
        (EVENT, "videogen.webhooks.replay.other-job"),  # body names another job than the subject
        ({**EVENT, "id": "not-an-event-id"}, "videogen.webhooks.replay.j1"),
        ({"job_id": "j1"}, "videogen.webhooks.replay.j1"),
        (EVENT, "videogen.events.j1"),
        ([1, 2], "videogen.webhooks.replay.j1"),
    ],
)
def test_replay_reference_refusals(body: object, subject: str) -> None:
    assert replay_reference(json.dumps(body).encode(), subject) is None


def test_replay_reference_deep_nesting() -> None:
    assert replay_reference(b"[" * 100_000, "videogen.webhooks.replay.j1") is None
