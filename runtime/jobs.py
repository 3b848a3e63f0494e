"""Job state: events on ``videogen.events.<job_id>`` and the latest JobStatus in KV.

Status writes are compare-and-set on the KV revision: a stale writer re-reads and re-applies
its change, and a terminal state is never overwritten (no "succeeded" flipping back).
"""

from __future__ import annotations

import asyncio

from collections.abc import Awaitable, Callable
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from runtime.bus import Bus
from runtime.logging import get_logger
from runtime.storage import Storage
from schemas.messages import (
    ErrorInfo,
    EventType,
    FailedData,
    JobEvent,
    JobState,
    JobStatus,
    RejectedData,
    utcnow,
)
from schemas.names import events_subject, job_prefix, request_key

log = get_logger(component="jobs")

# What each event does to the status (besides the fields passed explicitly).
_STATE_FOR_EVENT: dict[EventType, JobState] = {
    EventType.ACCEPTED: JobState.PREPROCESSING,
    EventType.REJECTED: JobState.FAILED,
    EventType.PREPROCESSED: JobState.QUEUED,
    EventType.STARTED: JobState.RUNNING,
    EventType.PROGRESS: JobState.RUNNING,
    EventType.SEGMENT_COMPLETED: JobState.RUNNING,
    EventType.SUCCEEDED: JobState.SUCCEEDED,
    EventType.FAILED: JobState.FAILED,
    EventType.CANCELLED: JobState.CANCELLED,
}

Mutator = Callable[[JobStatus | None], JobStatus | None]


class StatusStore:
    """CAS-guarded access to KV ``videogen-jobs``."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def get(self, job_id: str) -> tuple[JobStatus | None, int]:
        kv = await self.bus.kv()
        try:
            entry = await kv.get(job_id)
        except KeyNotFoundError:
            return None, 0
        if entry.value is None or entry.operation is not None and entry.operation != "PUT" and not entry.value:
            return None, entry.revision or 0
        return JobStatus.model_validate_json(entry.value), entry.revision or 0

    async def update(self, job_id: str, mutate: Mutator, *, attempts: int = 20) -> JobStatus | None:
        """Apply ``mutate`` with optimistic concurrency; returns the stored status (or None if unchanged)."""
        kv = await self.bus.kv()
        for _ in range(attempts):
            current, rev = await self.get(job_id)
            if current is not None and current.state.terminal:
                return current  # terminal states are final
            new = mutate(current)
            if new is None:
                return current
            data = new.model_dump_json().encode()
            try:
                if rev == 0:
                    await kv.create(job_id, data)
                else:
                    await kv.update(job_id, data, last=rev)
                return new
            except KeyWrongLastSequenceError:
                continue  # someone wrote in between: re-read, re-apply
            except Exception as e:  # create() on an existing key raises a wrong-sequence API error too
                if "wrong last sequence" in str(e).lower() or "10071" in str(e):
                    continue
                raise
        log.error("status_update_gave_up", job_id=job_id)
        return None


    async def set_queue_position(self, job_id: str, position: int) -> JobStatus | None:
        """Record a queued job's place in its work queue (0 = next to start); returns the stored status.

        Writes only while the job is ``queued`` and only when the position goes down (or is first
        set): the messages ahead of a job only ever leave the queue, so a stale tracker that
        computed a larger number earlier can never move a job back.
        """

        def mutate(cur: JobStatus | None) -> JobStatus | None:
            if cur is None or cur.state != JobState.QUEUED:
                return None
            if cur.queue_position is not None and cur.queue_position <= position:
                return None
            return cur.model_copy(update={"queue_position": position, "updated_at": utcnow()})

        return await self.update(job_id, mutate)


class JobTracker:
    """Emits events and keeps the status in step with them."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.status = StatusStore(bus)

    async def publish_event(self, event: JobEvent) -> None:
        # Nats-Msg-Id = event id: a redelivered stage re-emitting the same change is de-duplicated.
        await self.bus.publish(events_subject(event.job_id), event, msg_id=event.id)

    async def record(self, event: JobEvent, *, alongside: Awaitable[Any] | None = None,
                     state: JobState | None = None, **fields: Any) -> JobStatus | None:
        """Update status for ``event`` (CAS), then publish the event. Idempotent per event id.

        ``alongside``: a write that must be done before the event is published, run concurrently
        with the status update. ``state``: the status state, when not the event's usual one.
        """
        state = state or _STATE_FOR_EVENT[event.type]

        def mutate(cur: JobStatus | None) -> JobStatus | None:
            now = utcnow()
            base: dict[str, Any] = (
                cur.model_dump() if cur is not None else {"job_id": event.job_id, "created_at": now}
            )
            if cur is not None and event.type == EventType.PROGRESS and cur.state not in (
                JobState.RUNNING, JobState.QUEUED, JobState.PREPROCESSING):
                return None
            base.update(fields)
            base["state"] = state
            if state != JobState.QUEUED:
                base["queue_position"] = None  # only queued jobs have a place in the queue
            base["updated_at"] = now
            if state == JobState.SUCCEEDED:
                base["progress"] = 100.0
            if isinstance(event.data, FailedData | RejectedData) and "error" not in fields:
                base["error"] = ErrorInfo(code=event.data.code, message=event.data.message,
                                          retryable=isinstance(event.data, FailedData) and event.data.retryable)
            return JobStatus.model_validate(base)

        if alongside is None:
            stored = await self.status.update(event.job_id, mutate)
        else:
            stored, _ = await asyncio.gather(self.status.update(event.job_id, mutate), alongside)
        if stored is not None and stored.state.terminal and stored.state != state:
            # a terminal state already won; do not publish a contradicting event
            log.info("event_suppressed_after_terminal", job_id=event.job_id, event_type=event.type.value,
                     state=stored.state.value)
            return stored
        await self.publish_event(event)
        return stored


async def discard_partial_objects(storage: Storage, job_id: str) -> list[str]:
    """Delete what a cancelled job left under ``jobs/<job_id>/``; keep ``inputs/request.json``.

    The request stays because it is the job's record (and the webhook dispatcher reads the job's
    subscription from it to deliver ``job.cancelled``); the bucket's lifecycle rule removes it with
    the rest of ``jobs/`` later. Idempotent: every writer that finds the job cancelled after writing
    calls it again (see functions/cancel/README.md).
    """
    keep = request_key(job_id)
    keys = [k for k in await storage.list_keys(job_prefix(job_id)) if k != keep]
    for key in keys:
        await storage.delete(key)
    return keys
