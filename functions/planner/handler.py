"""planner: split a job into GPU-sized windows and publish the first one.

in:  ``videogen.work.plan`` (PlanRequest)            -> plan.json, segment 0 on ``videogen.segments.<model>``
in:  ``videogen.work.plan`` (PlanRequest + ReplanHint, from a runner whose GPU a segment did not fit)
                                                     -> plan.json revision r+1, segment k again (shorter windows)

Segment k+1 is published by the chain stage (``functions.chain``) once k is done. Segments carry
the plan revision: a result of a revision that was re-planned since is ignored there.
"""

from __future__ import annotations

import asyncio

from functions.planner.replan import replan
from functions.planner.segments import RunnerTarget, inputs_needed, inputs_ready, make_plan, progress_after, segment_job
from runtime.jobs import TERMINAL
from runtime.logging import get_logger
from runtime.plans import read_plan, store_plan
from runtime.ports import Ports
from runtime.work import WorkItem
from schemas.errors import Permanent
from schemas.messages import JobPlan, JobStatus, ObjectRef, PlanRequest, ReplanHint, SegmentResult
from schemas.names import STREAM_SEGMENTS, runner_consumer, segment_msg_id, segment_result_key, segments_subject

__all__ = ["handle_plan", "handle_replan", "make_plan", "plan_for", "progress_after", "queue_segment", "segment_job"]

log = get_logger(stage="planner")


async def handle_plan(payload: bytes, delivery: WorkItem, ports: Ports) -> None:
    req = PlanRequest.model_validate_json(payload)
    if req.replan is not None:
        await handle_replan(req, req.replan, ports)
        return
    job_id = req.job.job_id
    # e.g. frames preprocess wrote after a cancel are removed on the way
    status, _ = await ports.tracker.status.get(job_id)
    if (state := await ports.guard.stopped(job_id, among=TERMINAL, status=status)) is not None:
        log.info("job_already_finished", job_id=job_id, state=state.value)
        return
    # a streaming preprocess sends one PlanRequest per stored batch of frames (``ready_frames``): the
    # first plans the job, every one records how far the inputs go and may release the waiting segment.
    # A status without a plan: not planned, no S3 read (a plan stored by a planner that died before
    # the status update is made again, the same). plan.json and the status are written together; the
    # segment goes out once both are stored, and a planner that died between the two writes is
    # redelivered: the status names a plan whose plan.json is missing, so it is made and stored again.
    plan = await _stored_plan(ports, job_id) if status is None or status.plan is not None else None
    fresh = plan is None
    if plan is None:
        plan = plan_for(ports, req)
    info = plan.info
    before: list[int | None] = []

    def mutate(cur: JobStatus | None) -> JobStatus | None:
        if cur is None:
            return None
        before[:] = [cur.preprocessed_frames]
        update: dict[str, object] = {}
        if cur.plan is None or cur.plan.revision < info.revision or fresh:
            update.update(segments_total=info.segments, plan=info)
        if req.ready_frames is not None and (cur.preprocessed_frames or 0) < req.ready_frames:
            update["preprocessed_frames"] = req.ready_frames
        return cur.model_copy(update=update) if update else None

    if fresh:
        stored, _ = await asyncio.gather(ports.tracker.status.update(job_id, mutate), store_plan(ports.storage, plan))
    else:
        stored = await ports.tracker.status.update(job_id, mutate)
    if stored is None:
        return
    k = stored.segments_done
    if k >= len(plan.windows):
        return  # every segment rendered already
    if not inputs_ready(stored, plan, k):
        log.info("segment_waits_for_inputs", job_id=job_id, segment=k, ready_frames=stored.preprocessed_frames,
                 needs=inputs_needed(plan, k))
        return
    # publish k only on the message that made it ready (the chain publishes a segment whose inputs were
    # ready when its predecessor finished): one publisher per segment; a redelivery publishes again
    # (same Nats-Msg-Id, de-duplicated)
    was_ready = bool(before) and before[0] is not None and before[0] >= inputs_needed(plan, k)
    if not (fresh and k == 0) and was_ready and delivery.num_delivered <= 1:
        return
    if not fresh and k == 0 and req.ready_frames is None and delivery.num_delivered <= 1:
        return  # nothing new: segment 0 went out with the plan
    condition = None
    if k > 0:
        prev = SegmentResult.model_validate_json(await ports.storage.get_bytes(segment_result_key(job_id, k - 1)))
        condition = prev.tail
    await queue_segment(ports, plan, k, condition, stored, planned_now=fresh)


async def queue_segment(ports: Ports, plan: JobPlan, k: int, condition: ObjectRef | None, stored: JobStatus, *,
                        planned_now: bool) -> None:
    """Publish segment ``k`` of ``plan`` (``Nats-Msg-Id`` per job, segment and revision: a redelivery's
    publish is de-duplicated) once the status names the plan; a cancel that landed meanwhile removes
    it from the queue. ``planned_now``: the plan was just made (``job_planned``, the first
    ``queue_position``). Also called by preprocess, which plans a t2v job itself (``plan_t2v``)."""
    job_id, info = plan.job.job_id, plan.info
    seg = segment_job(plan, k, condition)
    msg_id = segment_msg_id(job_id, k, info.revision)
    ack = await ports.bus.publish(segments_subject(plan.job.model), seg, msg_id=msg_id)
    if await ports.guard.stopped(job_id, queued_seq=ack.seq) is not None:
        return
    if planned_now:
        await set_first_queue_position(ports, plan.job.model, job_id)
        log.info("job_planned", job_id=job_id, segments=info.segments, window=info.window_frames,
                 overlap=info.overlap_frames, reason=info.reason, ready_frames=stored.preprocessed_frames)
    else:
        log.info("segment_released_inputs_ready", job_id=job_id, segment=k, ready_frames=stored.preprocessed_frames)


def plan_for(ports: Ports, req: PlanRequest) -> JobPlan:
    """A fresh plan of ``req.job`` for this deployment's runners (memory budget, sequence parallelism)."""
    return make_plan(req, ports.settings.runner_memory_budget_bytes, RunnerTarget.from_settings(ports.settings))


async def _stored_plan(ports: Ports, job_id: str) -> JobPlan | None:
    try:
        return await read_plan(ports.storage, job_id)
    except Permanent:
        return None


async def set_first_queue_position(ports: Ports, model: str, job_id: str) -> None:
    """``queue_position`` as the job enters the queue (the queue stage refines it each tick).

    The messages of the model's queue not yet delivered, less this one: never below the true
    place (messages published after it only add to the count), and a position only ever goes
    down (``StatusStore.set_queue_position``), so the queue stage's exact number wins."""
    try:
        undelivered, _ = await ports.bus.pending(STREAM_SEGMENTS, runner_consumer(model).durable)
        if undelivered > 0:
            await ports.tracker.status.set_queue_position(job_id, undelivered - 1)
    except Exception as e:  # informative only: the queue stage sets it within a tick
        log.debug("first_queue_position_failed", job_id=job_id, error=str(e))


async def handle_replan(req: PlanRequest, hint: ReplanHint, ports: Ports) -> None:
    """A runner could not fit segment ``hint.index``: re-plan the rest with shorter windows.

    Idempotent: a redelivery after plan.json was written finishes the hand-off (same segment
    message id); a hint for a revision that moved on, or for a segment already done, is dropped.
    """
    job_id = req.job.job_id
    status, _ = await ports.tracker.status.get(job_id)
    if status is None or await ports.guard.stopped(job_id, among=TERMINAL, status=status) is not None:
        log.info("replan_skipped_job_finished", job_id=job_id, state=status and status.state.value)
        await ports.guard.drop_message(hint.segment_seq)
        return
    if status.segments_done > hint.index:
        log.info("replan_skipped_segment_done", job_id=job_id, segment=hint.index)
        return
    plan = await read_plan(ports.storage, job_id, min_revision=hint.plan_revision)
    if plan.info.revision == hint.plan_revision:
        plan = replan(plan, hint, ports.settings.runner_memory_budget_bytes, RunnerTarget.from_settings(ports.settings))
        await store_plan(ports.storage, plan)
    elif not (plan.info.revision == hint.plan_revision + 1 and plan.replanned_from == hint.index):
        log.info("replan_skipped_stale", job_id=job_id, segment=hint.index, hint_revision=hint.plan_revision,
                 plan_revision=plan.info.revision)
        return
    # (else: a redelivery after this very re-plan was stored; finish the hand-off)
    info = plan.info
    await ports.tracker.status.update(job_id, lambda cur: cur and cur.model_copy(update={
        "segments_total": info.segments, "plan": info}))
    # the runner acks the old message after publishing the hint; if it died in between, the old
    # revision must not be rendered too
    await ports.guard.drop_message(hint.segment_seq)
    seg = segment_job(plan, hint.index, hint.condition)
    ack = await ports.bus.publish(segments_subject(plan.job.model), seg,
                                  msg_id=segment_msg_id(job_id, hint.index, info.revision))
    if await ports.guard.stopped(job_id, queued_seq=ack.seq) is not None:
        return
    w = plan.windows[hint.index]
    log.warning("job_replanned", job_id=job_id, segment=hint.index, revision=info.revision,
                failed_frames=hint.failed_frames, window=w.frames, segments=info.segments, runner=hint.runner,
                reason=hint.reason)
