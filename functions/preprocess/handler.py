"""preprocess: validate a submission, store its inputs, hand it to the planner.

in:  ``videogen.jobs.submit`` (JobRequest JSON)
out: ``job.accepted`` / ``job.rejected``, ``job.preprocessed``; ``videogen.work.plan`` (PlanRequest);
     a t2v job (nothing to preprocess) is planned here: plan.json and segment 0 on
     ``videogen.segments.<model>``, as the planner would (``functions.planner.handler.queue_segment``)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any

from functions.planner.handler import plan_for, queue_segment
from functions.preprocess.admission import Limits, admit
from functions.preprocess.errors import JobStopped
from functions.preprocess.extend import resolve_extend
from functions.preprocess.validate import (
    RequestRejected,
    check_input_scope,
    check_loras,
    parse_request,
    resolve,
)
from runtime.consumer import Delivery
from runtime.jobs import STOPPED, TERMINAL
from runtime.logging import get_logger
from runtime.plans import read_plan, store_plan
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
    ObjectRef,
    PlanRequest,
    PreprocessedData,
    ResolvedJob,
    Task,
    utcnow,
)
from schemas.names import SUBJECT_WORK_PLAN, job_key, request_key, tenant_of_subject

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
# claim(): this delivery created the job's status just now
CREATED = "created"


async def claim(job_id: str, payload: bytes, delivery: Delivery, ports: Ports) -> bool | str:
    """Create the job's status (KV create: exactly one submission wins), or prove this is its own.

    ``CREATED``: this submission created the job now. True: a redelivery of the message that did,
    and preprocessing has not finished. ``HAND_OFF``: a redelivery of the message after
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

    current = await ports.tracker.status.update(job_id, mutate, assume_new=True)  # a create, no read first
    if created:
        return CREATED
    try:
        stored = await ports.storage.get_bytes(request_key(job_id), max_bytes=1 << 20)
    except ObjectNotFound:
        stored = None
    preprocessing = current is not None and (current.state == JobState.PREPROCESSING or streaming_unfinished(current))
    if stored == payload:
        if preprocessing:
            return True  # our own message again, interrupted mid-preprocess: carry on
        if (current is not None and current.state == JobState.QUEUED and delivery.num_delivered > 1
                and (current.plan is None or current.task == Task.T2V.value and current.segments_done == 0)):
            # our own message again, after job.preprocessed but with no plan yet (or a t2v job planned
            # here, its segment 0 maybe not queued): the hand-off to the planner (or the runners) may
            # have failed (e.g. a NATS node died mid-publish). Carry on: every write again is
            # idempotent (same event ids, same Nats-Msg-Id plan:<job_id> or segment id), and a
            # message that did arrive is de-duplicated.
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


async def admit_quota(tenant: str, job_id: str, ports: Ports) -> None:
    """The tenant's in-flight and rate limits (``runtime/quotas.py``): ``quota_exceeded`` when over."""
    from runtime.quotas import quota_gate

    await quota_gate(ports.bus, ports.settings, ports.tracker.status).admit(tenant, job_id)


def streaming_unfinished(st: JobStatus) -> bool:
    """A job handed to the planner before its preprocessing ended (``preprocessed_frames`` short of T)."""
    if st.state.terminal or st.preprocessed_frames is None:
        return False
    return st.plan is None or st.preprocessed_frames < st.plan.total_frames


async def handle_submit(payload: bytes, delivery: Delivery, ports: Ports) -> None:
    # the tenant is the subject's (the broker maps each tenant account's videogen.jobs.submit to
    # videogen.t.<tenant>.jobs.submit), never the payload's; from here on job_id is the internal key
    tenant = tenant_of_subject(delivery.subject)
    try:
        req = parse_request(payload)
    except RequestRejected as e:
        if e.job_id is not None:
            e.job_id = job_key(tenant, e.job_id)
        # a bad request naming an existing job must not turn that job FAILED
        if e.job_id is not None and (await ports.tracker.status.get(e.job_id))[0] is not None:
            await refuse_duplicate(payload, delivery, ports, e.job_id, f"{e.code.value}: {e}")
            return
        raise
    req = req.model_copy(update={"job_id": job_key(tenant, req.job_id)})
    claimed = await claim(req.job_id, payload, delivery, ports)
    if not claimed:
        return
    # the job is this submission's: its request.json is stored while it is admitted and checked (a
    # rejected job keeps it too: the job's record; a redelivery of it is then recognised as its own)
    early_put = (asyncio.ensure_future(ports.storage.put_bytes(request_key(req.job_id), payload, "application/json"))
                 if claimed == CREATED else None)
    try:
        job = await _admitted(req, tenant, ports)
    except BaseException:
        if early_put is not None:
            early_put.cancel()
            with contextlib.suppress(BaseException):
                await early_put
        raise

    accepted_event = JobEvent.build(job.job_id, EventType.ACCEPTED, AcceptedData(
        model=job.model, task=job.task, width=job.width, height=job.height, num_frames=job.num_frames,
        fps=job.fps, steps=job.steps, seed=job.seed))
    # (a status this delivery just created is the plain PREPROCESSING one: no need to read it back)
    current = None if claimed == CREATED else (await ports.tracker.status.get(job.job_id))[0]
    announced = claimed != HAND_OFF and (current is None or not streaming_unfinished(current))
    # stored before the first event is published: the webhook dispatcher reads the subscription from it
    # (a redelivery of a job already planned and rendering while it was preprocessed skips this: the
    # job stays where it is, and request.json was stored before it was handed on)
    store_request = early_put if early_put is not None else (
        ports.storage.put_bytes(request_key(job.job_id), payload, "application/json") if announced else None)
    if job.task == Task.T2V:
        await _plan_t2v(job, accepted_event, claimed, current, store_request, ports)
        return
    if announced:
        await ports.tracker.record(accepted_event, alongside=store_request, model=job.model, task=job.task.value)

    from functions.preprocess.pipeline import preprocess as run_preprocess

    settings = ports.settings
    stream: ReadyAnnouncer | None = None
    split = None
    if job.task == Task.ANIMATE:
        if settings.preprocess_streaming:
            stream = ReadyAnnouncer(job, ports)
        if settings.preprocess_split:
            from functions.preprocess.parts import BusSplitter

            split = BusSplitter(job.job_id, ports)
    try:
        inputs = await run_preprocess(job, req, ports.storage, settings, on_ready=stream, split=split)
    except JobStopped as e:
        # cancelled (or failed) while preprocessing: stop; a cancelled job's objects are removed
        await ports.guard.stopped(job.job_id, among=STOPPED)
        log.info("preprocess_stopped", job_id=job.job_id, state=str(e))
        return
    job = job.model_copy(update={"inputs": JobInputs(**inputs)})

    if stream is not None and stream.ready_frames:
        # already planned and rendering: the last word is "every frame is stored"
        await stream.publish(job, job.num_frames)
        log.info("job_preprocessed", job_id=job.job_id, model=job.model, task=job.task.value,
                 frames=job.num_frames, streamed_from_frames=stream.first_frames)
        return
    if claimed == HAND_OFF:
        await _publish_again(job, accepted_event, ports)
    else:
        await ports.tracker.record(_preprocessed(job))
    await ports.bus.publish(SUBJECT_WORK_PLAN, PlanRequest(job=job), msg_id=f"plan:{job.job_id}")
    log.info("job_preprocessed", job_id=job.job_id, model=job.model, task=job.task.value, frames=job.num_frames)


async def _admitted(req: JobRequest, tenant: str, ports: Ports) -> ResolvedJob:
    """The job as it will run, once admitted: quotas, scopes, limits, the webhook URL (raises to reject)."""
    await admit_quota(tenant, req.job_id, ports)  # after the create: the job counts (raises QuotaExceeded)
    job, _spec = resolve(req)
    settings = ports.settings
    check_input_scope(req, tenant, settings.bucket, settings.input_buckets)
    check_loras(req, settings.bucket, settings.lora_allow_prefixes, settings.input_buckets)
    if req.extend is not None:
        job = await resolve_extend(job, req, tenant, ports)
    admit(job, Limits(max_frame_pixels=settings.max_job_frame_pixels, max_gpu_seconds=settings.max_job_gpu_seconds,
                      max_stitch_bytes=settings.max_stitch_bytes, budget_bytes=settings.runner_memory_budget_bytes))
    await check_webhook(req, ports)
    return job


async def _plan_t2v(job: ResolvedJob, accepted: JobEvent, claimed: bool | str, current: JobStatus | None,
                    store_request: Awaitable[Any] | None, ports: Ports) -> None:
    """A t2v job has nothing to preprocess: it is planned here (``functions.planner``'s plan, as the
    planner would make it) and its segment 0 queued, without the planner hop (a PlanRequest, a
    delivery, a status read and a status write). Accepted, preprocessed and planned in one status
    write, after request.json and plan.json are stored (a redelivery finds both); then both events,
    then segment 0. A redelivery of a job planned here whose segment 0 may not have been queued
    (``HAND_OFF``) publishes its events and segment 0 again, de-duplicated by their ids."""
    job_id = job.job_id
    if claimed == HAND_OFF:
        await _publish_again(job, accepted, ports)
        if current is None or current.plan is None:  # queued by an earlier version, via the planner
            await ports.bus.publish(SUBJECT_WORK_PLAN, PlanRequest(job=job), msg_id=f"plan:{job_id}")
            return
        plan = await read_plan(ports.storage, job_id)
        stored: JobStatus | None = current
        planned_now = False
    else:
        plan = plan_for(ports, PlanRequest(job=job))
        # stored before the status says queued, not alongside: a write landing while a PUT fails (S3
        # down) would leave a queued job without its request (which a redelivery's claim takes for
        # another submission's: only a preprocessing one may lack it) or without its plan
        await asyncio.gather(*(w for w in (store_request, store_plan(ports.storage, plan)) if w is not None))
        stored = await ports.tracker.record(accepted, then=[_preprocessed(job)], model=job.model,
                                            task=job.task.value, segments_total=plan.info.segments, plan=plan.info)
        planned_now = True
    if stored is None or await ports.guard.stopped(job_id, among=TERMINAL, status=stored) is not None:
        log.info("job_stopped_before_queued", job_id=job_id, state=stored.state.value if stored else None)
        return
    await queue_segment(ports, plan, 0, None, stored, planned_now=planned_now)
    log.info("job_preprocessed", job_id=job_id, model=job.model, task=job.task.value, frames=job.num_frames,
             planned=True)


async def _publish_again(job: ResolvedJob, accepted: JobEvent, ports: Ports) -> None:
    """The status says preprocessed, but the delivery that wrote it may have died (or lost a publish)
    before its events went out: publish them again, de-duplicated by event id."""
    for event in (accepted, _preprocessed(job)):
        await ports.tracker.publish_event(event)


def _preprocessed(job: ResolvedJob) -> JobEvent:
    return JobEvent.build(job.job_id, EventType.PREPROCESSED, PreprocessedData(inputs=job.inputs.objects()))


class ReadyAnnouncer:
    """Streaming preprocess (animate): hand the job to the planner as soon as its first frames are stored,
    then tell it how far the stored frames go after every batch (``PlanRequest.ready_frames``).

    The first call records ``job.preprocessed`` (the inputs exist, more frames follow) and sends the
    PlanRequest that plans the job (``Nats-Msg-Id = plan:<job>``); later ones ``plan:<job>:f<F>``. The
    planner records F in the status (``preprocessed_frames``) and releases a segment whose window became
    ready; the chain publishes the next segment itself when its window was ready in time. Every call
    also checks the job: cancelled or failed -> :class:`JobStopped` (preprocessing ends there).
    """

    def __init__(self, job: ResolvedJob, ports: Ports) -> None:
        self.job = job
        self.ports = ports
        self.ready_frames = 0
        self.first_frames: int | None = None

    async def __call__(self, refs: dict[str, ObjectRef], ready: int) -> None:
        job_id = self.job.job_id
        status, _ = await self.ports.tracker.status.get(job_id)
        if (state := await self.ports.guard.stopped(job_id, among=STOPPED, status=status, clean_up=False)) is not None:
            raise JobStopped(state.value)
        job = self.job.model_copy(update={"inputs": JobInputs(**refs)})
        if self.first_frames is None:
            self.first_frames = ready
            if status is None or status.preprocessed_frames is None:
                # the status says how far the stored frames go from the start (a redelivered submission
                # sees preprocessing unfinished and carries on, see ``claim``); a redelivery that carries
                # on finds it set and neither re-announces the job nor moves its state back
                await self.ports.tracker.record(
                    JobEvent.build(job_id, EventType.PREPROCESSED, PreprocessedData(inputs=job.inputs.objects())),
                    preprocessed_frames=ready)
        await self.publish(job, ready)

    async def publish(self, job: ResolvedJob, ready: int) -> None:
        first = self.ready_frames == 0
        msg_id = f"plan:{job.job_id}" if first else f"plan:{job.job_id}:f{ready}"
        await self.ports.bus.publish(SUBJECT_WORK_PLAN, PlanRequest(job=job, ready_frames=ready), msg_id=msg_id)
        self.ready_frames = ready
        log.info("preprocess_frames_ready", job_id=job.job_id, ready_frames=ready, of=job.num_frames)
