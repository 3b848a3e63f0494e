"""webhook: deliver the events a job subscribed to, signed per Standard Webhooks.

in:  ``videogen.events.>`` (JobEvent); ``videogen.webhooks.replay.<job_id>`` (a JobEvent to send again)
out: HTTP POST to the job's ``webhook.url``; one ``WebhookAttempt`` per attempt on
     ``videogen.webhooks.attempts.<job_id>.<event_id>``; retries by JetStream redelivery with the
     delays of ``settings.webhook_retry_schedule_s``; 410 disables the job's endpoint durably
     (``videogen.webhooks.disabled.<job_id>``); other 4xx / redirects / SSRF refusal and exhausted
     retries go to ``videogen.dlq.webhook``. Never changes the job's state.
"""

from __future__ import annotations

from collections import OrderedDict

import aiohttp

from functions.webhook.delivery import DeliveryResult, Outcome, deliver, next_delay_s
from functions.webhook.replay import stored_event
from functions.webhook.signing import secret_for
from runtime.logging import get_logger
from runtime.netguard import guarded_connector
from runtime.ports import Ports
from runtime.storage import ObjectNotFound
from runtime.work import WorkItem
from schemas.errors import ErrorCode, Permanent, Retryable
from schemas.messages import (
    JobEvent,
    JobRequest,
    WebhookAttempt,
    WebhookDisabled,
    WebhookSpec,
)
from schemas.names import (
    STREAM_WEBHOOKS,
    job_key_of_subject,
    public_job_id,
    request_key,
    tenant_of,
    webhook_attempts_subject,
    webhook_disabled_subject,
)

log = get_logger(stage="webhook")

_CACHE_SIZE = 4096
_specs: OrderedDict[str, WebhookSpec | None] = OrderedDict()  # job_id -> subscription (None: none/disabled)
_disabled: OrderedDict[str, bool] = OrderedDict()  # job_id -> endpoint disabled (410), looked up once
_session: dict[int, aiohttp.ClientSession] = {}


def _remember(cache: OrderedDict, key: str, value: object) -> None:
    cache[key] = value
    cache.move_to_end(key)
    if len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)


async def webhook_for(job_id: str, ports: Ports) -> WebhookSpec | None:
    """The job's webhook subscription (from its stored request), cached."""
    if job_id in _specs:
        _specs.move_to_end(job_id)
        return _specs[job_id]
    try:
        raw = await ports.storage.get_bytes(request_key(job_id), max_bytes=1 << 20)
        spec = JobRequest.model_validate_json(raw).webhook
    except ObjectNotFound:
        return None  # rejected before its request was stored: nobody to call (not cached)
    _remember(_specs, job_id, spec)
    return spec


async def is_disabled(job_id: str, ports: Ports) -> bool:
    """Did the job's endpoint answer 410 Gone (this process or any other, before a restart)?

    Only "yes" is cached: "no" is read again before every POST, so events already queued or
    in flight when another dispatcher records the 410 are not sent."""
    if job_id in _disabled:
        _disabled.move_to_end(job_id)
        return _disabled[job_id]
    if await ports.bus.last_message(STREAM_WEBHOOKS, webhook_disabled_subject(job_id)) is None:
        return False  # not cached: another dispatcher may record a 410 any moment
    _remember(_disabled, job_id, True)
    return True


async def disable(event: JobEvent, result: DeliveryResult, ports: Ports) -> None:
    _remember(_disabled, event.job_id, True)
    record = WebhookDisabled(job_id=event.job_id, url=result.url, event_id=event.id,
                             status_code=result.status_code or 410)
    # durable: a restarted (or another) dispatcher reads it back in is_disabled(); raises -> retried
    await ports.bus.publish(webhook_disabled_subject(event.job_id), record, msg_id=f"disabled:{event.job_id}")
    log.warning("webhook_gone_disabled", job_id=event.job_id, url=result.url, event_id=event.id)


async def record_attempt(event: JobEvent, result: DeliveryResult, delivery: WorkItem, ports: Ports, *,
                         replay: bool, next_retry_s: float | None) -> None:
    """One record per attempt. Best effort: a failure to record never causes a second POST."""
    attempt = WebhookAttempt(
        event_id=event.id, event_type=event.type, job_id=event.job_id, attempt=delivery.num_delivered,
        replay=replay, url=result.url, outcome=result.outcome.value, status_code=result.status_code,
        latency_ms=result.latency_ms, error=result.error, next_retry_s=next_retry_s,
    )
    seq = f"replay-{delivery.stream_seq}-{delivery.num_delivered}" if replay else str(delivery.num_delivered)
    try:
        await ports.bus.publish(webhook_attempts_subject(event.job_id, event.id), attempt,
                                msg_id=f"attempt:{event.id}:{seq}")
    except Exception as e:
        log.error("webhook_attempt_not_recorded", job_id=event.job_id, event_id=event.id, error=str(e))


def _http(ports: Ports) -> aiohttp.ClientSession:
    key = id(ports)
    sess = _session.get(key)
    if sess is None or sess.closed:
        # re-checks every DNS answer at connect time: a rebinding host is refused even after the URL check
        sess = aiohttp.ClientSession(connector=guarded_connector(ports.settings.webhook_allow_hosts, limit=256),
                                     trust_env=False)
        _session[key] = sess
    return sess


def _keyed(event: JobEvent, subject: str) -> JobEvent:
    """The event with its internal job key (tenant from the subject) for our own bookkeeping; the
    bytes POSTed are always the published ones (the tenant's own job id)."""
    key = job_key_of_subject(subject) or event.job_id
    if public_job_id(key) != event.job_id:
        raise Permanent(f"event {event.id} names job {event.job_id} on {subject}", code=ErrorCode.INVALID_REQUEST)
    return event if key == event.job_id else event.model_copy(update={"job_id": key})


async def handle_event(payload: bytes, delivery: WorkItem, ports: Ports) -> None:
    event = _keyed(JobEvent.model_validate_json(payload), delivery.subject)
    spec = await webhook_for(event.job_id, ports)
    if spec is None or event.type not in spec.events:
        return
    if await is_disabled(event.job_id, ports):
        log.info("webhook_skipped_disabled", job_id=event.job_id, event_id=event.id)
        return
    await _attempt(event, payload, spec, delivery, ports, replay=False)


async def handle_replay(payload: bytes, delivery: WorkItem, ports: Ports) -> None:
    """Deliver one event again (``videogen webhooks replay``): same body, same ``webhook-id``.

    An explicit operator request: it is sent even if the endpoint was disabled by a 410 (that
    does not re-enable normal deliveries), but only to a job that subscribed to the event's type.
    """
    found = await stored_event(ports.bus, payload, delivery.subject)  # never sign what we were handed
    if found is None:
        return
    payload, event = found
    event = _keyed(event, delivery.subject)
    spec = await webhook_for(event.job_id, ports)
    if spec is None or event.type not in spec.events:
        log.warning("webhook_replay_skipped", job_id=event.job_id, event_id=event.id,
                    why="job has no webhook" if spec is None else f"{event.type.value} not subscribed")
        return
    await _attempt(event, payload, spec, delivery, ports, replay=True)


async def _attempt(event: JobEvent, payload: bytes, spec: WebhookSpec, delivery: WorkItem, ports: Ports, *,
                   replay: bool) -> None:
    if not replay and await is_disabled(event.job_id, ports):  # re-read right before the POST (410 in flight)
        log.info("webhook_skipped_disabled", job_id=event.job_id, event_id=event.id)
        return
    secrets = secret_for(tenant_of(event.job_id), ports.settings)  # the tenant's own secret(s), never another's
    result = await deliver(
        _http(ports), spec.url, payload, event.id, secrets,
        timeout_s=ports.settings.webhook_timeout_s, allow=ports.settings.webhook_allow_hosts,
        attempt=delivery.num_delivered,
    )
    delay = (next_delay_s(result, ports.settings.webhook_retry_schedule_s)
             if result.outcome == Outcome.RETRY else None)
    await record_attempt(event, result, delivery, ports, replay=replay, next_retry_s=delay)
    if result.outcome == Outcome.DELIVERED:
        return
    if result.outcome == Outcome.GONE:
        await disable(event, result, ports)
        return
    if result.outcome == Outcome.RETRY:
        if delay is not None:
            raise Retryable(f"webhook {result.url}: {result.error or result.status_code}",
                            code=ErrorCode.INTERNAL, delay_s=delay, backoff=False)
        raise Permanent(f"webhook {result.url}: gave up after {delivery.num_delivered} attempts "
                        f"({result.error or result.status_code})", code=ErrorCode.MAX_DELIVERIES)
    raise Permanent(f"webhook {result.url}: {result.outcome.value} ({result.error or result.status_code})",
                    code=ErrorCode.WEBHOOK_URL_FORBIDDEN if result.outcome == Outcome.FORBIDDEN
                    else ErrorCode.INVALID_REQUEST)
