"""Client side: submit, cancel, follow events, read status, inspect and replay webhook deliveries
(what the `videogen` CLI uses).

Plain nats-py is all a client needs; this module is a convenience over it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator

import nats.errors
from nats.aio.msg import Msg
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from runtime.bus import Bus
from runtime.jobs import StatusStore
from schemas.messages import (
    TERMINAL_EVENTS,
    CancelRequest,
    JobEvent,
    JobRequest,
    JobStatus,
    WebhookAttempt,
    WebhookDisabled,
)
from schemas.names import (
    DEFAULT_TENANT,
    STREAM_EVENTS,
    STREAM_WEBHOOKS,
    SUBJECT_EVENTS_PREFIX,
    cancel_subject,
    events_subject,
    job_key,
    job_key_of_subject,
    submit_subject,
    webhook_attempts_subject,
    webhook_disabled_subject,
    webhook_replay_subject,
)


async def submit(bus: Bus, req: JobRequest, tenant: str = DEFAULT_TENANT) -> int:
    """Publish a JobRequest; ``Nats-Msg-Id = job_id`` makes resubmission idempotent. Returns the stream seq.

    ``tenant``: a service-side caller (the HTTP gateway) files the job in that tenant's namespace by
    publishing on its internal subject, exactly as the broker maps the tenant account's own submit."""
    ack = await bus.publish(submit_subject(tenant), req.model_dump_json(exclude_none=True).encode(),
                            msg_id=job_key(tenant, req.job_id))
    return int(ack.seq)


async def cancel(bus: Bus, job_id: str, reason: str = "", tenant: str = DEFAULT_TENANT) -> None:
    """Cancel ``job_id`` (the tenant's own id; see :func:`submit` for ``tenant``)."""
    await bus.publish(cancel_subject(tenant), CancelRequest(job_id=job_id, reason=reason))


async def follow(bus: Bus, job_id: str, *, until_terminal: bool = True,
                 idle_timeout_s: float | None = None) -> AsyncGenerator[JobEvent, None]:
    """Every event of the job from the beginning (ordered, ephemeral consumer), then live."""
    queue: asyncio.Queue[JobEvent] = asyncio.Queue()

    async def on_msg(msg: object) -> None:
        await queue.put(JobEvent.model_validate_json(msg.data))  # type: ignore[attr-defined]

    sub = await bus.js.subscribe(
        events_subject(job_id), cb=on_msg, ordered_consumer=True,
        config=js_api.ConsumerConfig(deliver_policy=js_api.DeliverPolicy.ALL),
    )
    try:
        while True:
            event = await asyncio.wait_for(queue.get(), timeout=idle_timeout_s)
            yield event
            if until_terminal and event.type in TERMINAL_EVENTS:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def status(bus: Bus, job_id: str) -> JobStatus | None:
    st, _ = await StatusStore(bus).get(job_id)
    return st


async def recent_jobs(bus: Bus, limit: int = 20) -> list[JobStatus]:
    """The ``limit`` most recently updated jobs in KV ``videogen-jobs``, newest first.

    One ordered watcher over the latest value of every key (no per-key round trips); entries that
    are not a readable ``JobStatus`` are skipped.
    """
    kv = await bus.kv()
    watcher = await kv.watchall(ignore_deletes=True)
    found: list[JobStatus] = []
    try:
        async for entry in watcher:
            if entry is None:  # the end of the values stored when the watch began
                break
            if not entry.value:
                continue
            try:
                found.append(JobStatus.model_validate_json(entry.value))
            except ValueError:
                continue
    finally:
        with contextlib.suppress(Exception):
            await watcher.stop()
    found.sort(key=lambda st: (st.updated_at, st.created_at), reverse=True)
    return found[:max(0, limit)]


# ---- reading streams ------------------------------------------------------------------------
async def stream_messages(bus: Bus, stream: str, subject: str, *, exact_count: bool = True,
                          timeout_s: float = 10.0) -> AsyncIterator[Msg]:
    """Every message of ``stream`` matching ``subject`` (wildcards allowed), oldest first, then stop.

    ``exact_count``: count the matching messages with a subject-filtered STREAM.INFO first (cheap
    for a few subjects); False uses the stream's total (a full scan of a stream with many subjects).
    """
    if exact_count:
        info = await bus.js.stream_info(stream, subjects_filter=subject)
        total = sum((info.state.subjects or {}).values())
    else:
        info = await bus.js.stream_info(stream)
        total = int(info.state.messages or 0)
    if not total:
        return
    sub = await bus.js.subscribe(subject, stream=stream, ordered_consumer=True,
                                 config=js_api.ConsumerConfig(deliver_policy=js_api.DeliverPolicy.ALL))
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout_s)
            except nats.errors.TimeoutError:
                return  # fewer than counted (expired or deleted meanwhile)
            yield msg
            if msg.metadata.num_pending == 0:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


# ---- webhooks ---------------------------------------------------------------------------------
async def webhook_attempts(bus: Bus, job_id: str, event_id: str = "*") -> list[WebhookAttempt]:
    """Every recorded delivery attempt of a job's events (or of one event), oldest first."""
    return [WebhookAttempt.model_validate_json(m.data)
            async for m in stream_messages(bus, STREAM_WEBHOOKS, webhook_attempts_subject(job_id, event_id))]


async def webhook_disabled(bus: Bus, job_id: str) -> WebhookDisabled | None:
    try:
        msg = await bus.js.get_last_msg(STREAM_WEBHOOKS, webhook_disabled_subject(job_id))
    except NotFoundError:
        return None
    return WebhookDisabled.model_validate_json(msg.data or b"")


async def find_event(bus: Bus, event_id: str, job_id: str | None = None) -> tuple[bytes, JobEvent] | None:
    """Find an event by id in ``VIDEOGEN_EVENTS``: the exact bytes that were published, parsed.

    Where to look: the given job; else the job named by the event's delivery attempts
    (``videogen.webhooks.attempts.<job_id>.<event_id>``: one subject-filtered STREAM.INFO); else a
    scan of the whole events stream (slow on a big stream: pass ``job_id``).
    """
    needle = f'"id":"{event_id}"'.encode()
    if job_id is None:
        info = await bus.js.stream_info(STREAM_WEBHOOKS, subjects_filter=webhook_attempts_subject("*", event_id))
        subjects = list(info.state.subjects or {})
        if subjects:
            job_id = job_key_of_subject(subjects[0])
    subject = events_subject(job_id) if job_id else f"{SUBJECT_EVENTS_PREFIX}.>"
    async for msg in stream_messages(bus, STREAM_EVENTS, subject, exact_count=job_id is not None):
        if needle in msg.data.replace(b" ", b""):
            event = JobEvent.model_validate_json(msg.data)
            if event.id == event_id:
                return msg.data, event
    return None


async def replay_webhook(bus: Bus, raw_event: bytes, event: JobEvent) -> str:
    """Ask the dispatcher to deliver ``event`` again (same body, same ``webhook-id``); returns the request id."""
    request_id = f"replay:{event.id}:{uuid.uuid4().hex[:12]}"
    await bus.publish(webhook_replay_subject(event.job_id), raw_event, msg_id=request_id)  # default's jobs
    return request_id


async def attempts_seq(bus: Bus) -> int:
    """The webhook records stream's last sequence: pass ``+1`` to ``follow_attempts`` to see only newer ones."""
    return int((await bus.js.stream_info(STREAM_WEBHOOKS)).state.last_seq or 0)


async def follow_attempts(bus: Bus, job_id: str, event_id: str,
                          from_seq: int) -> AsyncGenerator[WebhookAttempt, None]:
    """Attempts of one event recorded at stream sequence ``from_seq`` or later, live."""
    queue: asyncio.Queue[WebhookAttempt] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        await queue.put(WebhookAttempt.model_validate_json(msg.data))

    sub = await bus.js.subscribe(
        webhook_attempts_subject(job_id, event_id), stream=STREAM_WEBHOOKS, cb=on_msg, ordered_consumer=True,
        config=js_api.ConsumerConfig(deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE,
                                     opt_start_seq=max(1, from_seq)),
    )
    try:
        while True:
            yield await queue.get()
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
