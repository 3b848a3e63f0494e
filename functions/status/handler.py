"""status: answer a tenant's status and event-history requests (request/reply, core NATS).

in:  ``videogen.t.<tenant>.status.<job_id>`` / ``videogen.t.<tenant>.history.<job_id>`` (a tenant
     account's ``videogen.status.<job_id>`` / ``videogen.history.<job_id>``, mapped by the broker), and
     the ``default`` tenant's ``videogen.status.<job_id>`` / ``videogen.history.<job_id>``
out: the reply: ``JobStatus`` JSON (the tenant's own job id) or ``{"error": "not_found"}``; for
     history a JSON array of the job's stored ``JobEvent``s, oldest first (at most ``MAX_EVENTS``).

The tenant comes from the subject (the broker put it there), so a tenant can only ever name its own
jobs. Tenant accounts have no JetStream and no KV access: this is how they read. A periodic stage:
the first tick subscribes, later ticks only check the subscription is alive.
"""

from __future__ import annotations

import json
from typing import Any

from runtime.client import stream_messages
from runtime.logging import get_logger
from runtime.ports import Ports
from schemas.messages import JobStatus
from schemas.names import (
    STREAM_EVENTS,
    all_tenants,
    events_subject,
    job_key_of_subject,
    public_job_id,
)

log = get_logger(stage="status")

MAX_EVENTS = 1000
NOT_FOUND = b'{"error":"not_found"}'


def public_status(status: JobStatus) -> bytes:
    return status.model_copy(update={"job_id": public_job_id(status.job_id)}).model_dump_json().encode()


class StatusResponder:
    def __init__(self, ports: Ports) -> None:
        self.ports = ports
        self.subs: list[Any] = []

    async def answer(self, subject: str) -> bytes:
        key = job_key_of_subject(subject)
        if key is None:
            return NOT_FOUND
        if ".history." in f".{subject}":
            events = []
            async for msg in stream_messages(self.ports.bus, STREAM_EVENTS, events_subject(key)):
                events.append(json.loads(msg.data))
                if len(events) >= MAX_EVENTS:
                    break
            return json.dumps(events).encode()
        status, _ = await self.ports.tracker.status.get(key)
        return NOT_FOUND if status is None else public_status(status)

    async def tick(self) -> int:
        if not self.subs:
            self.subs = await self.ports.bus.serve(
                [*all_tenants("status.*"), *all_tenants("history.*")], self.answer, queue="videogen-status")
            log.info("status_responder_started", subjects=len(self.subs))
        return len(self.subs)
