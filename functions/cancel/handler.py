"""cancel: stop a queued or running job.

in:  ``videogen.jobs.cancel`` (CancelRequest ``{"job_id": ..., "reason": ...}``)
out: status ``cancelled`` (compare-and-set) + ``job.cancelled``; the job's waiting segment messages
     deleted from the GPU work queue; its partial objects deleted (all of ``jobs/<id>/`` except
     ``inputs/request.json``). Unknown or finished jobs: a no-op with a ``cancel_ignored`` log line.

A running segment stops at the next denoising step boundary: the runner watches the job's status
key and raises ``Cancelled`` from the step callback. Writers racing with the cancel clean up after
themselves (see README.md).
"""

from __future__ import annotations

from runtime.logging import get_logger
from runtime.ports import Ports
from runtime.queue import WorkQueueView
from runtime.work import WorkItem
from schemas.errors import ErrorCode, Permanent
from schemas.messages import CancelledData, CancelRequest, EventType, JobEvent, JobState
from schemas.names import job_key_for, segments_subject

log = get_logger(stage="cancel")


def parse_cancel(payload: bytes) -> CancelRequest:
    try:
        return CancelRequest.model_validate_json(payload)
    except ValueError as e:
        raise Permanent(f"bad cancel request: {e}", code=ErrorCode.INVALID_REQUEST) from e


async def handle_cancel(payload: bytes, delivery: WorkItem, ports: Ports) -> None:
    req = parse_cancel(payload)
    job_id = job_key_for(delivery.subject, req.job_id)  # the tenant comes from the subject, never the body
    status, _ = await ports.tracker.status.get(job_id)
    if status is None:
        log.info("cancel_ignored", job_id=job_id, why="unknown job (no status in KV videogen-jobs)")
        return
    if status.state.terminal and status.state != JobState.CANCELLED:
        log.info("cancel_ignored", job_id=job_id, why=f"job already {status.state.value}", state=status.state.value)
        return
    if status.state == JobState.CANCELLED:
        # a redelivered cancel, or a second one: the cleanup is idempotent, do it again
        log.info("cancel_repeated", job_id=job_id)
    else:
        event = JobEvent.build(job_id, EventType.CANCELLED,
                               CancelledData(reason=req.reason, previous_state=status.state))
        stored = await ports.tracker.record(event)
        if stored is None or stored.state != JobState.CANCELLED:
            # the job finished between the read and the compare-and-set: the finish wins
            log.info("cancel_ignored", job_id=job_id, why="job finished first",
                     state=stored.state.value if stored else None)
            return
    await _drop_waiting_segments(ports, job_id, status.model)
    removed = await ports.guard.discard(job_id)
    log.info("job_cancelled", job_id=job_id, previous_state=status.state.value, reason=req.reason,
             objects_deleted=len(removed))


async def _drop_waiting_segments(ports: Ports, job_id: str, model: str | None) -> None:
    """Delete the job's not-yet-delivered segment messages so they stop taking a place in the queue.

    Best effort: a message a runner takes meanwhile is skipped by the runner (the job is terminal).
    """
    try:
        subject = segments_subject(model) if model else None
        waiting = await WorkQueueView(ports.bus).waiting_for(job_id, subject)
        for w in waiting:  # one already delivered and acked, or gone, is skipped
            await ports.guard.drop_message(w.seq)
        if waiting:
            log.info("queued_segments_deleted", job_id=job_id, segments=[w.segment for w in waiting])
    except Exception as e:
        log.warning("queued_segments_not_scanned", job_id=job_id, error=str(e))
