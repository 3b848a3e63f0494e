"""Failure hooks: turn a stage's typed failure into ``job.rejected`` / ``job.failed``."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from runtime.jobs import JobTracker
from runtime.work import FailureHook, WorkItem, job_id_of
from schemas.errors import ErrorCode, VideogenError
from schemas.messages import EventType, FailedData, JobEvent, JobState, RejectedData, valid_job_key
from schemas.names import job_key_for

WAITING_STATES = frozenset({JobState.PREPROCESSING, JobState.QUEUED, JobState.RUNNING, JobState.STITCHING})


# retryable door failures that end as job.rejected (not job.failed) once the attempts are spent
REJECTED_WHEN_EXHAUSTED = frozenset({ErrorCode.WEBHOOK_URL_FORBIDDEN, ErrorCode.INPUT_UNREADABLE})

# (payload, error, delivery, delay before the next attempt)
RetryHook = Callable[[bytes, VideogenError, WorkItem, float], Awaitable[None]]


def retry_hook(tracker: JobTracker, stage: str) -> RetryHook:
    """Make a retried failure visible: the job's ``waiting_reason`` names it and the next attempt
    (cleared when the job moves on; the last attempt ends in job.rejected/job.failed)."""

    async def on_retry(payload: bytes, err: VideogenError, d: WorkItem, delay_s: float) -> None:
        job_id = getattr(err, "job_id", None) or job_id_of(payload)
        job_id = job_key_for(d.subject, job_id) if isinstance(job_id, str) else job_id
        if not valid_job_key(job_id):
            return
        assert job_id is not None
        at = datetime.fromtimestamp(time.time() + delay_s, UTC).isoformat(timespec="seconds")
        reason = (f"{stage}: {err} -- attempt {d.num_delivered} of {d.max_deliver} failed ({err.code.value}); "
                  f"next attempt at {at}")[:1000]
        await tracker.status.set_waiting_reason(job_id, reason, among=WAITING_STATES)

    return on_retry


def failure_hooks(tracker: JobTracker, stage: str, *, rejects: bool = False) -> tuple[FailureHook, FailureHook]:
    """(on_permanent, on_exhausted). ``rejects``: permanent failures here are ``job.rejected``."""

    async def on_permanent(payload: bytes, err: VideogenError, d: WorkItem) -> bool:
        job_id = getattr(err, "job_id", None) or job_id_of(payload)
        job_id = job_key_for(d.subject, job_id) if isinstance(job_id, str) else job_id
        if not valid_job_key(job_id):
            return False  # nothing to attach it to: DLQ
        assert job_id is not None
        if rejects:
            data = RejectedData(code=err.code.value, message=str(err), details=list(getattr(err, "details", []) or []),
                                retryable=bool(getattr(err, "client_retryable", False)))
            event = JobEvent.build(job_id, EventType.REJECTED, data, stage)
        else:
            data_f = FailedData(code=err.code.value, message=f"{stage}: {err}", retryable=False)
            event = JobEvent.build(job_id, EventType.FAILED, data_f, stage)
        await tracker.record(event)
        return True

    async def on_exhausted(payload: bytes, err: VideogenError, d: WorkItem) -> bool:
        job_id = job_id_of(payload)
        job_id = job_key_for(d.subject, job_id) if isinstance(job_id, str) else job_id
        if not valid_job_key(job_id):
            return False
        assert job_id is not None
        if rejects and err.code in REJECTED_WHEN_EXHAUSTED:
            # e.g. an input URL or webhook host that never answered: the request, not videogen, failed
            rdata = RejectedData(code=err.code.value,
                                 message=f"{err} (gave up after {d.num_delivered} attempts)")
            await tracker.record(JobEvent.build(job_id, EventType.REJECTED, rdata, stage, "exhausted"))
            return True
        data = FailedData(
            code=ErrorCode.MAX_DELIVERIES.value,
            message=f"{stage} gave up after {d.num_delivered} attempts: {err}",
            retryable=True,
        )
        await tracker.record(JobEvent.build(job_id, EventType.FAILED, data, stage, "exhausted"))
        return True  # the consumer still dead-letters exhausted messages

    return on_permanent, on_exhausted
