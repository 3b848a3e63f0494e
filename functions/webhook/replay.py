"""Replay requests name an event; the body that gets signed is the one stored in VIDEOGEN_EVENTS.

A message on ``videogen.webhooks.replay.<job_id>`` is only a reference: its ``id`` (and the job
in its subject). The dispatcher never signs bytes it was handed; it looks the event up in the
job's own events (``videogen.events.<job_id>``) and delivers exactly what was published there.
A forged or altered event is not found, or is replaced by the stored original.
"""

from __future__ import annotations

import json

from runtime.bus import Bus
from runtime.client import find_event
from runtime.logging import get_logger
from schemas.messages import JobEvent, valid_job_key
from schemas.names import job_key_of_subject, public_job_id

log = get_logger(stage="webhook-replay")


def replay_reference(payload: bytes, subject: str) -> tuple[str, str] | None:
    """``(job_id, event_id)`` a replay request names, or None when it names nothing usable.

    The job comes from the subject; an ``id`` (and, when present, a ``job_id`` that agrees with
    the subject) from the body. Nothing else in the body is used.
    """
    key = job_key_of_subject(subject) if ".webhooks.replay." in f".{subject}" else None
    job_id = key or ""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(body, dict) or not valid_job_key(job_id):
        return None
    event_id, named_job = body.get("id"), body.get("job_id", public_job_id(job_id))
    if (not isinstance(event_id, str) or not event_id.startswith("evt_") or len(event_id) > 64
            or named_job != public_job_id(job_id)):
        return None
    return job_id, event_id


async def stored_event(bus: Bus, payload: bytes, subject: str) -> tuple[bytes, JobEvent] | None:
    """The published bytes and event a replay request refers to, or None (logged) if there is none."""
    ref = replay_reference(payload, subject)
    if ref is None:
        log.warning("webhook_replay_refused", subject=subject, why="no job/event id")
        return None
    job_id, event_id = ref
    found = await find_event(bus, event_id, job_id)  # the job's subject only: never a stream scan
    if found is None or found[1].job_id != public_job_id(job_id):
        log.warning("webhook_replay_refused", job_id=job_id, event_id=event_id, why="not in VIDEOGEN_EVENTS")
        return None
    if found[0] != payload:
        log.warning("webhook_replay_body_replaced", job_id=job_id, event_id=event_id)
    return found
