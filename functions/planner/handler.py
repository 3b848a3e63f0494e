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
from functions.planner.segments import make_plan, progress_after, segment_job
from runtime.jobs import TERMINAL
from runtime.logging import get_logger
from runtime.plans import read_plan, store_plan
from runtime.ports import Ports
from runtime.work import WorkItem
from schemas.messages import PlanRequest, ReplanHint
from schemas.names import STREAM_SEGMENTS, runner_consumer, segment_msg_id, segments_subject

__all__ = ["handle_plan", "handle_replan", "make_plan", "progress_after", "segment_job"]

log = get_logger(stage="planner")


async def handle_plan(payload: bytes, delivery: WorkItem, ports: Ports) -> None:
    req = PlanRequest.model_validate_json(payload)
    if req.replan is not None:
        await handle_replan(req, req.replan, ports)
        return
    job_id = req.job.job_id
    # e.g. frames preprocess wrote after a cancel are removed on the way
    if (state := await ports.guard.stopped(job_id, among=TERMINAL)) is not None:
        log.info("job_already_finished", job_id=job_id, state=state.value)
        return
    plan = make_plan(req, ports.settings.runner_memory_budget_bytes)
    first = segment_job(plan, 0, None)
    # independent writes, done concurrently; a failure of any redelivers the whole step, and
    # each write is idempotent (same key, same Nats-Msg-Id, same status fields)
    *_, ack = await asyncio.gather(
        store_plan(ports.storage, plan),
        ports.tracker.status.update(job_id, lambda cur: cur and cur.model_copy(update={
            "segments_total": plan.info.segments, "plan": plan.info})),
        ports.bus.publish(segments_subject(req.job.model), first, msg_id=segment_msg_id(job_id, 0)),
    )
    if await ports.guard.stopped(job_id, queued_seq=ack.seq) is not None:
        return
    await set_first_queue_position(ports, req.job.model, job_id)
    log.info("job_planned", job_id=job_id, segments=plan.info.segments, window=plan.info.window_frames,
             overlap=plan.info.overlap_frames, reason=plan.info.reason)


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
        plan = replan(plan, hint, ports.settings.runner_memory_budget_bytes)
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
