"""Webhook dispatcher against real servers and a real receiver (aiohttp on a loopback address).

A private stack (own nats-server + S3 server) with its own functions process, so the retry schedule
can be compressed (``VIDEOGEN_WEBHOOK_RETRY_SCHEDULE_S``) and no other dispatcher takes the events.
The allow-list admits only 127.0.0.2, where the receivers listen: 127.0.0.1 and ``localhost`` are
refused like any other non-public address. Events are published straight to ``videogen.events.<id>``
(the job's subscription is read from ``jobs/<id>/inputs/request.json``), so no runner is needed.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from functions.webhook.signing import generate_secret
from runtime.bus import Bus
from runtime.client import follow, stream_messages, webhook_attempts, webhook_disabled
from runtime.settings import Settings, load_settings
from runtime.stack import provision, start_servers
from runtime.storage import Storage
from runtime.testing.webhook_receiver import Reply, WebhookReceiver
from schemas.messages import DLQEntry, EventType, JobEvent, JobRequest, WebhookSpec
from schemas.names import STREAM_DLQ, SUBJECT_SUBMIT, dlq_subject, events_subject, request_key
from tests.sample_events import sample_data
from tests.stack import REPO, child_env, start_functions, stop

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOST = "127.0.0.2"  # the only allow-listed address
SCHEDULE_S = [0, 0.5, 1, 2, 2]  # 5 attempts over 5.5 s (production: 8 over ~27.6 h)
NEW_SECRET = generate_secret()
OLD_SECRET = generate_secret()  # rotation: both sign until receivers have moved to the new one
ALL_TYPES = [t.value for t in EventType]


def _fn_env() -> dict[str, str]:
    return {
        "VIDEOGEN_WEBHOOK_RETRY_SCHEDULE_S": json.dumps(SCHEDULE_S),
        "VIDEOGEN_WEBHOOK_ALLOW_HOSTS": json.dumps([HOST]),
        "VIDEOGEN_WEBHOOK_SECRET": f"{NEW_SECRET} {OLD_SECRET}",
        "VIDEOGEN_WEBHOOK_TIMEOUT_S": "3",
    }


def _start_dispatcher(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    """preprocess (submit-time SSRF check), webhook and webhook-replay, with the test settings."""
    before = _count(log, '"service_starting"')
    proc = start_functions(settings, log, ["preprocess", "webhook", "webhook-replay"], env_extra=_fn_env())
    deadline = time.monotonic() + 60
    while _count(log, '"service_starting"') <= before or _count(log, '"consumer_started"') < 3 * (before + 1):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(log.read_text()[-3000:] if log.exists() else "no log")
        time.sleep(0.2)
    return proc


def _count(log: Path, needle: str) -> int:
    return log.read_text(errors="replace").count(needle) if log.exists() else 0


@pytest.fixture(scope="module")
def hook_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    data = tmp_path_factory.mktemp("videogen-webhooks")
    settings, nats, s3 = start_servers(load_settings(data_dir=data, heartbeat_s=2.0), fixed_ports=False)
    asyncio.run(provision(settings, ["tiny-wan"]))
    try:
        yield settings
    finally:
        s3.stop()
        nats.stop()


@pytest.fixture(scope="module")
def dispatcher(hook_stack: Settings) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    log = Path(hook_stack.data_dir) / "dispatcher.log"
    procs = {"functions": _start_dispatcher(hook_stack, log)}
    try:
        yield procs
    finally:
        stop(procs["functions"])


@pytest.fixture
async def hbus(hook_stack: Settings) -> AsyncIterator[Bus]:
    async with Bus(hook_stack, "test-webhooks") as b:
        yield b


@pytest.fixture
async def hstorage(hook_stack: Settings) -> AsyncIterator[Storage]:
    async with Storage(hook_stack) as s:
        yield s


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def subscribe_job(storage: Storage, job_id: str, url: str, events: list[str] = ALL_TYPES) -> None:
    """What preprocess stores for an accepted job (the dispatcher reads the subscription from it)."""
    req = JobRequest(job_id=job_id, prompt="webhook test", webhook=WebhookSpec(url=url, events=events))  # type: ignore[arg-type]
    await storage.put_bytes(request_key(job_id), req.model_dump_json().encode(), "application/json")


async def publish_events(bus: Bus, job_id: str, n: int, type_: EventType = EventType.PROGRESS) -> list[JobEvent]:
    fields = ({"progress": float(i), "segment": 0, "step": i} for i in range(n)) if type_ == EventType.PROGRESS \
        else ({} for _ in range(n))
    events = [JobEvent.build(job_id, type_, sample_data(type_, **f), i) for i, f in enumerate(fields)]
    for e in events:
        await bus.publish(events_subject(job_id), e, msg_id=e.id)
    return events


async def dlq_webhook_entries(bus: Bus, job_id: str) -> list[DLQEntry]:
    out = []
    async for m in stream_messages(bus, STREAM_DLQ, dlq_subject("webhook")):
        entry = DLQEntry.model_validate_json(m.data)
        if entry.job_id == job_id:
            out.append(entry)
    return out


async def eventually(check, timeout_s: float = 20.0, interval_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(interval_s)


def verify_both_secrets(d) -> dict:
    """Every delivery carries one signature per configured secret: either secret verifies it."""
    sigs = d.headers["webhook-signature"].split()
    assert len(sigs) == 2 and all(s.startswith("v1,") for s in sigs)
    payloads = [Webhook(secret).verify(d.body, dict(d.headers)) for secret in (NEW_SECRET, OLD_SECRET)]
    assert payloads[0] == payloads[1] and payloads[0]["id"] == d.headers["webhook-id"]
    return payloads[0]


# ---------------------------------------------------------------------------------------------
async def test_receiver_down_then_up_every_event_delivered_once(dispatcher, hbus: Bus, hstorage: Storage) -> None:
    port = free_port()
    url = f"http://{HOST}:{port}/hook"
    await subscribe_job(hstorage, "wh-down", url)
    events = await publish_events(hbus, "wh-down", 6)
    await asyncio.sleep(1.2)  # attempts 1 and 2 hit a closed port (connection refused)
    async with WebhookReceiver(OLD_SECRET, host=HOST, port=port) as rx:  # a receiver still on the old secret
        await rx.wait_for(len(events), timeout_s=20)
        await asyncio.sleep(2.5)  # any duplicate would arrive by now (next scheduled attempt)
        ok = [d for d in rx.deliveries if 200 <= d.reply_status < 300]
        ids = Counter(d.headers["webhook-id"] for d in ok)
        assert sorted(ids) == sorted(e.id for e in events)
        assert set(ids.values()) == {1}, ids  # exactly one 2xx-acked delivery per event id
        assert all(d.verified and d.verified_by == "standardwebhooks" for d in rx.deliveries)
        for d in rx.deliveries:
            payload = verify_both_secrets(d)
            assert JobEvent.model_validate(payload).job_id == "wh-down"

    attempts = await webhook_attempts(hbus, "wh-down")
    by_event: dict[str, list] = {}
    for a in attempts:
        by_event.setdefault(a.event_id, []).append(a)
    assert set(by_event) == {e.id for e in events}
    for tries in by_event.values():
        tries.sort(key=lambda a: a.attempt)
        *failed, last = tries
        assert failed, "the receiver was down: at least one failed attempt first"
        assert all(a.outcome == "retry" and a.status_code is None and a.error for a in failed)
        assert all(a.next_retry_s is not None for a in failed)
        assert last.outcome == "delivered" and last.status_code == 200 and last.next_retry_s is None
        assert [a.attempt for a in tries] == list(range(1, len(tries) + 1))
        assert all(a.latency_ms >= 0 and a.url == url for a in tries)
    assert not await dlq_webhook_entries(hbus, "wh-down")


async def test_retries_grow_then_dead_letter(dispatcher, hbus: Bus, hstorage: Storage) -> None:
    async with WebhookReceiver(NEW_SECRET, host=HOST, default=Reply(503)) as rx:
        await subscribe_job(hstorage, "wh-503", rx.url)
        [event] = await publish_events(hbus, "wh-503", 1, EventType.FAILED)
        await rx.wait_for(len(SCHEDULE_S), timeout_s=30)
        entries = await eventually(lambda: dlq_webhook_entries(hbus, "wh-503"))
        await asyncio.sleep(1.0)
        assert len(rx.deliveries) == len(SCHEDULE_S)  # every scheduled attempt, and no more
    gaps = [b.received_at - a.received_at for a, b in itertools.pairwise(rx.deliveries)]
    for gap, planned in zip(gaps, SCHEDULE_S[1:], strict=True):
        assert gap >= planned * 0.8, (gaps, SCHEDULE_S)  # JetStream redelivery after nak(delay)
    assert {d.headers["webhook-id"] for d in rx.deliveries} == {event.id}
    [entry] = entries
    assert entry.code == "max_deliveries" and "503" in entry.reason
    assert json.loads(base64.b64decode(entry.payload_b64))["id"] == event.id
    attempts = await webhook_attempts(hbus, "wh-503", event.id)
    assert [a.status_code for a in attempts] == [503] * len(SCHEDULE_S)
    assert attempts[-1].next_retry_s is None and all(a.next_retry_s is not None for a in attempts[:-1])


async def test_redirect_is_not_followed(dispatcher, hbus: Bus, hstorage: Storage) -> None:
    async with WebhookReceiver(NEW_SECRET, host=HOST) as rx:
        rx.behave(then=Reply.redirect(rx.url_for("/elsewhere")))
        await subscribe_job(hstorage, "wh-302", rx.url)
        await publish_events(hbus, "wh-302", 1, EventType.SUCCEEDED)
        [entry] = await eventually(lambda: dlq_webhook_entries(hbus, "wh-302"))
        await asyncio.sleep(1.0)
        assert [d.path for d in rx.deliveries] == ["/hook"]  # never /elsewhere, never retried
    assert "302" in entry.reason and "not followed" in entry.reason
    [attempt] = await webhook_attempts(hbus, "wh-302")
    assert attempt.outcome == "permanent" and attempt.status_code == 302


async def test_other_4xx_is_permanent(dispatcher, hbus: Bus, hstorage: Storage) -> None:
    async with WebhookReceiver(NEW_SECRET, host=HOST, default=Reply(400)) as rx:
        await subscribe_job(hstorage, "wh-400", rx.url)
        await publish_events(hbus, "wh-400", 1, EventType.SUCCEEDED)
        [entry] = await eventually(lambda: dlq_webhook_entries(hbus, "wh-400"))
        await asyncio.sleep(1.0)
        assert len(rx.deliveries) == 1
    assert entry.code == "invalid_request" and "400" in entry.reason


SSRF_TARGETS = {
    "loopback": "http://127.0.0.1:{port}/hook",  # not allow-listed here (only 127.0.0.2 is)
    "metadata": "http://169.254.169.254/latest/meta-data/",
    "private": "http://10.0.0.1/hook",
    "name-to-loopback": "http://localhost:{port}/hook",
}


async def test_ssrf_targets_refused_at_submit(dispatcher, hbus: Bus) -> None:
    for name, url in SSRF_TARGETS.items():
        job = {"job_id": f"ssrf-submit-{name}", "prompt": "x", "webhook": {"url": url.format(port=8080)}}
        await hbus.publish(SUBJECT_SUBMIT, json.dumps(job).encode(), msg_id=job["job_id"])
    for name in SSRF_TARGETS:
        async with asyncio.timeout(30):
            events = [e async for e in follow(hbus, f"ssrf-submit-{name}")]
        assert events[-1].type == EventType.REJECTED, (name, events)
        assert events[-1].data.code == "webhook_url_forbidden", (name, events[-1].data)


async def test_ssrf_targets_refused_at_delivery(dispatcher, hbus: Bus, hstorage: Storage) -> None:
    """The job was accepted earlier (e.g. the name resolved elsewhere then): checked again per attempt."""
    async with WebhookReceiver(NEW_SECRET, host="127.0.0.1") as loopback_rx:
        for name, url in SSRF_TARGETS.items():
            job_id = f"ssrf-deliver-{name}"
            await subscribe_job(hstorage, job_id, url.format(port=loopback_rx.port))
            await publish_events(hbus, job_id, 1, EventType.SUCCEEDED)
        for name in SSRF_TARGETS:
            [entry] = await eventually(lambda n=name: dlq_webhook_entries(hbus, f"ssrf-deliver-{n}"))
            assert entry.code == "webhook_url_forbidden", (name, entry)
            [attempt] = await webhook_attempts(hbus, f"ssrf-deliver-{name}")
            assert attempt.outcome == "forbidden" and attempt.status_code is None, (name, attempt)
        assert loopback_rx.deliveries == []  # nothing ever reached 127.0.0.1


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = child_env(settings, **_fn_env())
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], env=env, cwd=str(REPO),
                          capture_output=True, text=True, timeout=90)


async def test_replay_redelivers_same_id_and_body(dispatcher, hook_stack: Settings, hbus: Bus,
                                                  hstorage: Storage) -> None:
    async with WebhookReceiver(NEW_SECRET, host=HOST) as rx:
        await subscribe_job(hstorage, "wh-replay", rx.url)
        [event] = await publish_events(hbus, "wh-replay", 1, EventType.SUCCEEDED)
        [first] = await rx.wait_for(1, timeout_s=15)
        # the real CLI, as an operator would run it (finds the job through the attempt records)
        done = await asyncio.to_thread(_cli, hook_stack, "webhooks", "replay", event.id)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "replay attempt 1 -> delivered [200]" in done.stdout, done.stdout
        second = rx.deliveries[1]
        assert second.headers["webhook-id"] == first.headers["webhook-id"] == event.id
        assert second.body == first.body  # byte for byte: receivers de-duplicate on webhook-id
        verify_both_secrets(second)
        listing = await asyncio.to_thread(_cli, hook_stack, "webhooks", "attempts", "wh-replay")
        assert listing.returncode == 0 and listing.stdout.count("-> delivered [200]") == 2, listing.stdout
        unknown = await asyncio.to_thread(_cli, hook_stack, "webhooks", "replay", "evt_nosuchevent", "--job",
                                          "wh-replay")
        assert unknown.returncode == 1 and "not found" in unknown.stderr
    attempts = await webhook_attempts(hbus, "wh-replay", event.id)
    assert [(a.attempt, a.replay, a.outcome) for a in attempts] == [(1, False, "delivered"), (1, True, "delivered")]


# last: it kills and restarts the dispatcher
async def test_410_stops_and_disables_durably(dispatcher, hook_stack: Settings, hbus: Bus,
                                              hstorage: Storage) -> None:
    async with WebhookReceiver(NEW_SECRET, host=HOST, default=Reply(410)) as rx:
        await subscribe_job(hstorage, "wh-gone", rx.url)
        await publish_events(hbus, "wh-gone", 1, EventType.ACCEPTED)
        await rx.wait_for(1, timeout_s=15)
        assert await eventually(lambda: webhook_disabled(hbus, "wh-gone"))
        await publish_events(hbus, "wh-gone", 1, EventType.PREPROCESSED)
        # a restarted dispatcher (killed, not drained) must not call the endpoint again either
        log = Path(hook_stack.data_dir) / "dispatcher.log"
        dispatcher["functions"].send_signal(signal.SIGKILL)
        dispatcher["functions"].wait(10)
        dispatcher["functions"] = _start_dispatcher(hook_stack, log)
        await publish_events(hbus, "wh-gone", 1, EventType.SUCCEEDED)
        await asyncio.sleep(3.0)
        assert len(rx.deliveries) == 1, [d.headers["webhook-id"] for d in rx.deliveries]
    [attempt] = await webhook_attempts(hbus, "wh-gone")
    assert attempt.outcome == "gone" and attempt.status_code == 410 and attempt.next_retry_s is None
    assert not await dlq_webhook_entries(hbus, "wh-gone")  # 410 is an answer, not a failure
    assert "webhook_skipped_disabled" in log.read_text()
