"""Webhook delivery against a real aiohttp receiver on 127.0.0.1 (the only host contacted)."""

from __future__ import annotations

import base64
import json
import random
import time
from collections.abc import AsyncIterator
from email.utils import formatdate

import aiohttp
import pytest
from standardwebhooks.webhooks import Webhook

from functions.webhook import signing
from functions.webhook.delivery import (
    DEFAULT_RETRY_SCHEDULE_S,
    DeliveryResult,
    Outcome,
    classify_status,
    deliver,
    next_delay_s,
    parse_retry_after,
    retry_delay_s,
)
from runtime.netguard import guarded_session
from runtime.settings import Settings
from runtime.testing.webhook_receiver import Reply, WebhookReceiver
from schemas.messages import EventType, JobEvent
from tests.sample_events import sample_data

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
NEW_SECRET = "whsec_" + base64.b64encode(b"n" * 32).decode()
ALLOW = ["127.0.0.1"]


def event_bytes() -> tuple[str, bytes]:
    event = JobEvent.build("job-1", EventType.SUCCEEDED, sample_data(EventType.SUCCEEDED,
                                                                     url="https://s3.example/x.mp4?sig=abc"))
    return event.id, event.model_dump_json().encode()


@pytest.fixture
async def rx() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver(SECRET) as receiver:
        yield receiver


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with guarded_session(ALLOW) as s:
        yield s


async def send(session: aiohttp.ClientSession, url: str, **kw) -> DeliveryResult:  # type: ignore[no-untyped-def]
    msg_id, body = event_bytes()
    kw.setdefault("allow", ALLOW)
    return await deliver(session, url, body, msg_id, signing.parse_secrets(SECRET), **kw)


# --- outcomes -----------------------------------------------------------------------------------
async def test_200_delivered_and_verified_by_reference(rx: WebhookReceiver, session: aiohttp.ClientSession) -> None:
    msg_id, body = event_bytes()
    result = await deliver(session, rx.url + "?token=secret", body, msg_id, signing.parse_secrets(SECRET),
                           allow=ALLOW, attempt=3)
    assert result.outcome is Outcome.DELIVERED and result.ok
    assert result.status_code == 200 and result.attempt == 3
    assert result.url == rx.url  # no query string in results/logs
    assert result.latency_ms >= 0 and result.error is None
    [d] = await rx.wait_for(1)
    assert d.verified and d.verified_by == "standardwebhooks"
    assert d.body == body and d.msg_id == msg_id
    assert d.headers["content-type"] == "application/json"
    assert d.headers["user-agent"] == "videogen-webhooks/1"
    # independent check with the reference package
    assert Webhook(SECRET).verify(d.body, d.headers)["id"] == msg_id


async def test_rotation_both_receivers_verify(session: aiohttp.ClientSession) -> None:
    msg_id, body = event_bytes()
    both = signing.parse_secrets(f"{NEW_SECRET} {SECRET}")
    async with WebhookReceiver(SECRET) as old_rx, WebhookReceiver(NEW_SECRET) as new_rx:
        for target in (old_rx, new_rx):
            result = await deliver(session, target.url, body, msg_id, both, allow=ALLOW)
            assert result.ok
            [d] = await target.wait_for(1)
            assert d.verified
            assert len(d.headers["webhook-signature"].split(" ")) == 2


async def test_wrong_secret_is_not_verified(session: aiohttp.ClientSession) -> None:
    async with WebhookReceiver(NEW_SECRET) as other:
        assert (await send(session, other.url)).ok  # the receiver answers 200 regardless
        [d] = await other.wait_for(1)
        assert not d.verified and d.error


async def test_503_retry(rx: WebhookReceiver, session: aiohttp.ClientSession) -> None:
    rx.behave(Reply(503, body=b"overloaded"), then=Reply(200))
    first = await send(session, rx.url)
    assert first.outcome is Outcome.RETRY and first.status_code == 503
    assert first.body_snippet == "overloaded" and first.retry_after_s is None
    assert next_delay_s(first) == 5
    second = await send(session, rx.url, attempt=2)
    assert second.ok and next_delay_s(second) is None
    assert [d.reply_status for d in await rx.wait_for(2)] == [503, 200]


async def test_503_retry_after_honoured(rx: WebhookReceiver, session: aiohttp.ClientSession) -> None:
    rx.behave(Reply(503, {"Retry-After": "120"}))
    result = await send(session, rx.url)
    assert result.retry_after_s == 120 and next_delay_s(result) == 120


async def test_429_retry_after(rx: WebhookReceiver, session: aiohttp.ClientSession) -> None:
    rx.behave(Reply(429, {"Retry-After": "30"}))
    result = await send(session, rx.url)
    assert result.outcome is Outcome.RETRY and result.status_code == 429
    assert result.retry_after_s == 30
    assert next_delay_s(result) == 30  # max(schedule 5 s, Retry-After 30 s)


async def test_429_retry_after_capped(rx: WebhookReceiver, session: aiohttp.ClientSession) -> None:
    rx.behave(Reply(429, {"Retry-After": "999999"}))
    result = await send(session, rx.url, max_retry_after_s=600)
    assert result.retry_after_s == 600


async def test_retry_after_ignored_on_other_statuses(rx: WebhookReceiver, session: aiohttp.ClientSession) -> None:
    rx.behave(Reply(500, {"Retry-After": "30"}))
    result = await send(session, rx.url)
    assert result.outcome is Outcome.RETRY and result.retry_after_s is None


async def test_410_gone(rx: WebhookReceiver, session: aiohttp.ClientSession) -> None:
    rx.behave(Reply(410))
    result = await send(session, rx.url)
    assert result.outcome is Outcome.GONE and result.outcome.final
    assert next_delay_s(result) is None


async def test_302_permanent_and_not_followed(rx: WebhookReceiver, session: aiohttp.ClientSession) -> None:
    async with WebhookReceiver(SECRET) as target:
        rx.behave(Reply.redirect(target.url + "?leak=1"))
        result = await send(session, rx.url)
        assert result.outcome is Outcome.PERMANENT and result.status_code == 302
        assert result.error is not None and "redirect" in result.error and "leak" not in result.error
        assert len(await rx.wait_for(1)) == 1
        assert target.deliveries == []


@pytest.mark.parametrize("status", [301, 307, 308])
async def test_other_redirects_permanent(rx: WebhookReceiver, session: aiohttp.ClientSession, status: int) -> None:
    rx.behave(Reply.redirect(rx.url_for("/elsewhere"), status))
    result = await send(session, rx.url)
    assert result.outcome is Outcome.PERMANENT
    assert [d.path for d in rx.deliveries] == ["/hook"]


async def test_400_permanent(rx: WebhookReceiver, session: aiohttp.ClientSession) -> None:
    rx.behave(Reply(400, body=b"x" * 1000))
    result = await send(session, rx.url)
    assert result.outcome is Outcome.PERMANENT and result.status_code == 400
    assert result.body_snippet == "x" * 256


async def test_slow_receiver_times_out(rx: WebhookReceiver, session: aiohttp.ClientSession) -> None:
    rx.behave(Reply(200, delay_s=5.0))
    t0 = time.monotonic()
    result = await send(session, rx.url, timeout_s=0.3)
    assert time.monotonic() - t0 < 2.0
    assert result.outcome is Outcome.RETRY and result.status_code is None
    assert result.error is not None and "timeout" in result.error


async def test_connection_refused_retry() -> None:
    async with WebhookReceiver(SECRET) as gone:
        url = gone.url
    async with aiohttp.ClientSession() as plain:  # plain session: deliver's pre-flight check still applies
        result = await send(plain, url)
    assert result.outcome is Outcome.RETRY and result.status_code is None and result.error


async def test_not_allow_listed_forbidden(rx: WebhookReceiver) -> None:
    async with aiohttp.ClientSession() as plain:
        result = await send(plain, rx.url, allow=[])
    assert result.outcome is Outcome.FORBIDDEN and result.outcome.final
    assert result.error is not None and "loopback" in result.error
    assert rx.deliveries == []


async def test_guarded_session_forbids_even_if_preflight_allowed(rx: WebhookReceiver) -> None:
    """A session guarded with a stricter allow-list refuses at connect time (rebinding layer)."""
    host_url = rx.url.replace("127.0.0.1", "hooks.test")

    async def dns(host: str) -> list[str]:
        return ["127.0.0.1"]

    async with guarded_session([], resolver=dns) as strict:
        result = await send(strict, host_url, resolver=dns)
    assert result.outcome is Outcome.FORBIDDEN
    assert rx.deliveries == []


async def test_unresolvable_host_retry() -> None:
    async def nxdomain(host: str) -> list[str]:
        raise OSError("Name or service not known")

    async with aiohttp.ClientSession() as plain:
        result = await send(plain, "https://nx.example.invalid/hook", resolver=nxdomain)
    assert result.outcome is Outcome.RETRY and "does not resolve" in (result.error or "")


async def test_bad_scheme_forbidden() -> None:
    async with aiohttp.ClientSession() as plain:
        result = await send(plain, "ftp://127.0.0.1/hook")
    assert result.outcome is Outcome.FORBIDDEN


async def test_log_fields_are_flat_and_safe(rx: WebhookReceiver, session: aiohttp.ClientSession) -> None:
    result = await send(session, rx.url + "?token=abc")
    fields = result.log_fields()
    assert fields["outcome"] == "delivered" and "token" not in json.dumps(fields)


# --- classification and schedule ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, Outcome.DELIVERED), (201, Outcome.DELIVERED), (204, Outcome.DELIVERED), (299, Outcome.DELIVERED),
     (301, Outcome.PERMANENT), (302, Outcome.PERMANENT), (304, Outcome.PERMANENT),
     (400, Outcome.PERMANENT), (401, Outcome.PERMANENT), (404, Outcome.PERMANENT), (413, Outcome.PERMANENT),
     (408, Outcome.RETRY), (425, Outcome.RETRY), (429, Outcome.RETRY), (410, Outcome.GONE),
     (500, Outcome.RETRY), (502, Outcome.RETRY), (503, Outcome.RETRY), (599, Outcome.RETRY)],
)
def test_classify_status(status: int, outcome: Outcome) -> None:
    assert classify_status(status) is outcome


def test_default_schedule_matches_settings() -> None:
    assert list(DEFAULT_RETRY_SCHEDULE_S) == Settings().webhook_retry_schedule_s


def test_retry_delay_walks_the_schedule() -> None:
    delays = [retry_delay_s(n) for n in range(1, 10)]
    assert delays == [5, 300, 1800, 7200, 18000, 36000, 36000, None, None]
    assert retry_delay_s(1, [0, 1]) == 1 and retry_delay_s(2, [0, 1]) is None
    assert retry_delay_s(1, [0]) is None
    with pytest.raises(ValueError):
        retry_delay_s(0)


def test_retry_delay_jitter() -> None:
    rng = random.Random(7)
    values = [retry_delay_s(2, jitter=0.1, rng=rng) for _ in range(200)]
    assert all(v is not None and 270 <= v <= 330 for v in values)
    assert len(set(values)) > 100
    assert retry_delay_s(1, [0, 0], jitter=0.5) == 0
    with pytest.raises(ValueError):
        retry_delay_s(1, jitter=1.5)


def test_next_delay_exhausted() -> None:
    last = DeliveryResult(outcome=Outcome.RETRY, url="u", attempt=len(DEFAULT_RETRY_SCHEDULE_S))
    assert next_delay_s(last) is None
    mid = DeliveryResult(outcome=Outcome.RETRY, url="u", attempt=2, retry_after_s=10)
    assert next_delay_s(mid) == 300


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("15") == 15
    assert parse_retry_after(formatdate(now + 90, usegmt=True), now=now) == pytest.approx(90)
    assert parse_retry_after(formatdate(now - 90, usegmt=True), now=now) == 0
    assert parse_retry_after("7200", cap_s=3600) == 3600
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-5") is None
