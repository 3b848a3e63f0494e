"""preprocess: validate a submission, store its inputs, hand it to the planner.

in:  ``videogen.jobs.submit`` (JobRequest JSON)
out: ``job.accepted`` / ``job.rejected``, ``job.preprocessed``; ``videogen.work.plan`` (PlanRequest)
"""

from __future__ import annotations

from functions.preprocess.admission import Limits, admit
from functions.preprocess.validate import (
    RequestRejected,
    check_loras,
    parse_request,
    resolve,
)
from runtime.consumer import Delivery
from runtime.logging import get_logger
from runtime.ports import Ports
from runtime.storage import ObjectNotFound
from schemas.errors import ErrorCode
from schemas.messages import (
    AcceptedData,
    EventType,
    JobEvent,
    JobInputs,
    JobRequest,
    JobState,
    JobStatus,
    PlanRequest,
    PreprocessedData,
    Task,
    utcnow,
)
from schemas.names import SUBJECT_WORK_PLAN, request_key

log = get_logger(stage="preprocess")


async def check_webhook(req: JobRequest, ports: Ports) -> None:
    if req.webhook is None:
        return
    from runtime.netguard import ForbiddenTarget, check_url, require_https

    try:
        await check_url(req.webhook.url, ports.settings.webhook_allow_hosts)
        require_https(req.webhook.url, ports.settings.webhook_allow_hosts)
    except ForbiddenTarget as e:
        raise RequestRejected(f"webhook.url refused: {e}", code=ErrorCode.WEBHOOK_URL_FORBIDDEN,
                              job_id=req.job_id) from e


async def refuse_duplicate(payload: bytes, delivery: Delivery, ports: Ports, job_id: str, why: str) -> None:
    """A submission naming a job that already exists: a DLQ entry, never a change to that job."""
    reason = f"job {job_id} already exists; this submission was not applied ({why})"
    await delivery.dead_letter(ErrorCode.DUPLICATE_JOB.value, reason)
    log.warning("duplicate_submission_refused", job_id=job_id, why=why)


# claim(): the job is ours and only its hand-off to the planner may be missing
HAND_OFF = "hand_off"


async def claim(job_id: str, payload: bytes, delivery: Delivery, ports: Ports) -> bool | str:
    """Create the job's status (KV create: exactly one submission wins), or prove this is its own.

    True: this submission owns the job (it created it now, or it is a redelivery of the message
    that did and preprocessing has not finished). ``HAND_OFF``: a redelivery of the message after
    ``job.preprocessed`` was recorded but before a plan exists (the publish to the planner may have
    failed): only the hand-off is redone. False: nothing more to do (an already handled
    redelivery, or a different submission with the same job_id: dead-lettered ``duplicate_job``).
    """
    created = False

    def mutate(cur: JobStatus | None) -> JobStatus | None:
        nonlocal created
        created = cur is None  # re-evaluated on every CAS retry: only a real create counts
        if cur is not None:
            return None
        now = utcnow()
        return JobStatus(job_id=job_id, state=JobState.PREPROCESSING, created_at=now, updated_at=now)

    current = await ports.tracker.status.update(job_id, mutate)
    if created:
        return True
    try:
        stored = await ports.storage.get_bytes(request_key(job_id), max_bytes=1 << 20)
    except ObjectNotFound:
        stored = None
    preprocessing = current is not None and current.state == JobState.PREPROCESSING
    if stored == payload:
        if preprocessing:
            return True  # our own message again, interrupted mid-preprocess: carry on
        if (current is not None and current.state == JobState.QUEUED and current.plan is None
                and delivery.num_delivered > 1):
            # our own message again, after job.preprocessed but with no plan yet: the hand-off to
            # the planner may have failed (e.g. a NATS node died mid-publish). Carry on: every
            # write again is idempotent (same event ids, same Nats-Msg-Id plan:<job_id>), and a
            # plan request that did arrive is de-duplicated.
            log.info("submission_resumed_for_hand_off", job_id=job_id, delivery=delivery.num_delivered)
            return HAND_OFF
        log.info("duplicate_submission_ignored", job_id=job_id, state=current.state.value if current else None)
        return False
    if stored is None and preprocessing and delivery.num_delivered > 1:
        # redelivery of the message that claimed the job and died before storing its request
        # (a different submission's first delivery is refused below; see README)
        return True
    state = current.state.value if current is not None else "unknown"
    await refuse_duplicate(payload, delivery, ports, job_id, f"it is {state}; job ids are idempotency keys")
    return False


async def handle_submit(payload: bytes, delivery: Delivery, ports: Ports) -> None:
    try:
        req = parse_request(payload)
    except RequestRejected as e:
        # a bad request naming an existing job must not turn that job FAILED
        if e.job_id is not None and (await ports.tracker.status.get(e.job_id))[0] is not None:
            await refuse_duplicate(payload, delivery, ports, e.job_id, f"{e.code.value}: {e}")
            return
        raise
    claimed = await claim(req.job_id, payload, delivery, ports)
    if not claimed:
        return
    job, _spec = resolve(req)
    settings = ports.settings
    check_loras(req, settings.bucket, settings.lora_allow_prefixes, settings.input_buckets)
    admit(job, Limits(max_frame_pixels=settings.max_job_frame_pixels, max_gpu_seconds=settings.max_job_gpu_seconds,
                      max_stitch_bytes=settings.max_stitch_bytes, budget_bytes=settings.runner_memory_budget_bytes))
    await check_webhook(req, ports)

    if claimed != HAND_OFF:  # (a resumed hand-off: accepted and preprocessed already; states never go back)
        accepted = AcceptedData(model=job.model, task=job.task, width=job.width, height=job.height,
                                num_frames=job.num_frames, fps=job.fps, steps=job.steps, seed=job.seed)
        # stored before the first event is published: the webhook dispatcher reads the subscription from it
        await ports.tracker.record(JobEvent.build(job.job_id, EventType.ACCEPTED, accepted),
                                   alongside=ports.storage.put_bytes(request_key(job.job_id), payload,
                                                                     "application/json"),
                                   model=job.model, task=job.task.value)

    if job.task != Task.T2V:
        from functions.preprocess.pipeline import preprocess as run_preprocess

        inputs = await run_preprocess(job, req, ports.storage, ports.settings)
        job = job.model_copy(update={"inputs": JobInputs(**inputs)})

    if claimed != HAND_OFF:
        await ports.tracker.record(
            JobEvent.build(job.job_id, EventType.PREPROCESSED, PreprocessedData(inputs=job.inputs.objects()))
        )
    await ports.bus.publish(SUBJECT_WORK_PLAN, PlanRequest(job=job), msg_id=f"plan:{job.job_id}")
    log.info("job_preprocessed", job_id=job.job_id, model=job.model, task=job.task.value, frames=job.num_frames)
