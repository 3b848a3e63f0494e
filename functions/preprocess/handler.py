"""preprocess: validate a submission, store its inputs, hand it to the planner.

in:  ``videogen.jobs.submit`` (JobRequest JSON)
out: ``job.accepted`` / ``job.rejected``, ``job.preprocessed``; ``videogen.work.plan`` (PlanRequest)
"""

from __future__ import annotations

from functions.preprocess.validate import RequestRejected, parse_request, resolve
from runtime.consumer import Delivery
from runtime.logging import get_logger
from runtime.ports import Ports
from schemas.errors import ErrorCode
from schemas.messages import (
    AcceptedData,
    EventType,
    JobEvent,
    JobInputs,
    JobRequest,
    JobState,
    PlanRequest,
    PreprocessedData,
    Task,
)
from schemas.names import SUBJECT_WORK_PLAN, request_key

log = get_logger(stage="preprocess")


async def check_webhook(req: JobRequest, ports: Ports) -> None:
    if req.webhook is None:
        return
    from runtime.netguard import ForbiddenTarget, check_url

    try:
        await check_url(req.webhook.url, ports.settings.webhook_allow_hosts)
    except ForbiddenTarget as e:
        raise RequestRejected(f"webhook.url refused: {e}", code=ErrorCode.WEBHOOK_URL_FORBIDDEN,
                              job_id=req.job_id) from e


async def handle_submit(payload: bytes, delivery: Delivery, ports: Ports) -> None:
    req = parse_request(payload)
    current, _ = await ports.tracker.status.get(req.job_id)
    if current is not None and current.state != JobState.PREPROCESSING:
        log.info("duplicate_submission_ignored", job_id=req.job_id, state=current.state.value)
        return
    job, spec = resolve(req)
    await check_webhook(req, ports)

    accepted = AcceptedData(model=job.model, task=job.task, width=job.width, height=job.height,
                            num_frames=job.num_frames, fps=job.fps, steps=job.steps, seed=job.seed)
    # stored before the first event is published: the webhook dispatcher reads the subscription from it
    await ports.tracker.record(JobEvent.build(job.job_id, EventType.ACCEPTED, accepted),
                               alongside=ports.storage.put_bytes(request_key(job.job_id), payload,
                                                                 "application/json"),
                               model=job.model, task=job.task.value)

    if job.task != Task.T2V:
        from functions.preprocess.pipeline import preprocess as run_preprocess

        inputs = await run_preprocess(job, req, ports.storage, ports.settings, heartbeat=delivery.in_progress)
        job = job.model_copy(update={"inputs": JobInputs(**inputs)})

    await ports.tracker.record(
        JobEvent.build(job.job_id, EventType.PREPROCESSED, PreprocessedData(inputs=job.inputs.objects()))
    )
    await ports.bus.publish(SUBJECT_WORK_PLAN, PlanRequest(job=job), msg_id=f"plan:{job.job_id}")
    log.info("job_preprocessed", job_id=job.job_id, model=job.model, task=job.task.value, frames=job.num_frames)
