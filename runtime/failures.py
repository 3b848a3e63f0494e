"""Failure hooks: turn a stage's typed failure into ``job.rejected`` / ``job.failed``."""

from __future__ import annotations

from runtime.jobs import JobTracker
from runtime.work import FailureHook, WorkItem, job_id_of
from schemas.errors import ErrorCode, VideogenError
from schemas.messages import EventType, FailedData, JobEvent, RejectedData, valid_job_key
from schemas.names import job_key_for


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
        data = FailedData(
            code=ErrorCode.MAX_DELIVERIES.value,
            message=f"{stage} gave up after {d.num_delivered} attempts: {err}",
            retryable=True,
        )
        await tracker.record(JobEvent.build(job_id, EventType.FAILED, data, stage, "exhausted"))
        return True  # the consumer still dead-letters exhausted messages

    return on_permanent, on_exhausted
