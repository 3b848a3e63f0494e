"""webhook: deliver the events a job subscribed to, signed per Standard Webhooks.

in:  ``videogen.events.>`` (JobEvent)
out: HTTP POST to the job's ``webhook.url``; retries by JetStream redelivery with the delays
     of ``settings.webhook_retry_schedule_s``; 410 stops; other 4xx / redirects / SSRF refusal
     and exhausted retries go to ``videogen.dlq.webhook``. Never changes the job's state.
"""

from __future__ import annotations

from collections import OrderedDict

import aiohttp

from functions.webhook.delivery import Outcome, deliver, next_delay_s
from functions.webhook.signing import parse_secrets
from runtime.consumer import Delivery
from runtime.logging import get_logger
from runtime.netguard import guarded_connector
from runtime.ports import Ports
from runtime.storage import ObjectNotFound
from schemas.errors import ErrorCode, Permanent, Retryable
from schemas.messages import JobEvent, JobRequest, WebhookSpec
from schemas.names import request_key

log = get_logger(stage="webhook")

_CACHE_SIZE = 4096
_specs: OrderedDict[str, WebhookSpec | None] = OrderedDict()
_session: dict[int, aiohttp.ClientSession] = {}


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
    _specs[job_id] = spec
    if len(_specs) > _CACHE_SIZE:
        _specs.popitem(last=False)
    return spec


def _http(ports: Ports) -> aiohttp.ClientSession:
    key = id(ports)
    sess = _session.get(key)
    if sess is None or sess.closed:
        # re-checks every DNS answer at connect time: a rebinding host is refused even after the URL check
        sess = aiohttp.ClientSession(connector=guarded_connector(ports.settings.webhook_allow_hosts, limit=256),
                                     trust_env=False)
        _session[key] = sess
    return sess


async def handle_event(payload: bytes, delivery: Delivery, ports: Ports) -> None:
    event = JobEvent.model_validate_json(payload)
    spec = await webhook_for(event.job_id, ports)
    if spec is None or event.type not in spec.events:
        return
    secrets = parse_secrets(ports.settings.webhook_secret.get_secret_value())
    result = await deliver(
        _http(ports), spec.url, payload, event.id, secrets,
        timeout_s=ports.settings.webhook_timeout_s, allow=ports.settings.webhook_allow_hosts,
        attempt=delivery.num_delivered,
    )
    if result.outcome == Outcome.DELIVERED:
        return
    if result.outcome == Outcome.GONE:
        log.warning("webhook_gone_disabled", job_id=event.job_id, url=result.url)
        _specs[event.job_id] = None  # 410: stop calling this endpoint for this job
        return
    if result.outcome == Outcome.RETRY:
        delay = next_delay_s(result, ports.settings.webhook_retry_schedule_s)
        if delay is not None:
            raise Retryable(f"webhook {result.url}: {result.error or result.status_code}",
                            code=ErrorCode.INTERNAL, delay_s=delay, backoff=False)
        raise Permanent(f"webhook {result.url}: gave up after {delivery.num_delivered} attempts "
                        f"({result.error or result.status_code})", code=ErrorCode.MAX_DELIVERIES)
    raise Permanent(f"webhook {result.url}: {result.outcome.value} ({result.error or result.status_code})",
                    code=ErrorCode.WEBHOOK_URL_FORBIDDEN if result.outcome == Outcome.FORBIDDEN
                    else ErrorCode.INVALID_REQUEST)
