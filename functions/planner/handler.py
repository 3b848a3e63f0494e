"""planner: split a job into GPU-sized windows and publish them one at a time.

in:  ``videogen.work.plan`` (PlanRequest)            -> plan.json, segment 0 on ``videogen.segments.<model>``
in:  ``videogen.work.plan`` (PlanRequest + ReplanHint, from a runner whose GPU a segment did not fit)
                                                     -> plan.json revision r+1, segment k again (shorter windows)
in:  ``videogen.work.segment_done`` (SegmentResult)  -> ``job.segment_completed``; segment k+1, or
                                                        ``videogen.work.stitch`` after the last one
Segment k+1 is published only when k is done and carries a reference to k's tail frames, so
any runner can take it and a runner restart between segments loses nothing. Segments and results
carry the plan revision: a result of a revision that was re-planned since is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict

from functions.planner.plan import plan_segments
from functions.planner.replan import replan
from runtime.consumer import Delivery
from runtime.jobs import discard_partial_objects
from runtime.logging import get_logger
from runtime.ports import Ports
from schemas.errors import Permanent, Retryable
from schemas.messages import (
    EventType,
    JobEvent,
    JobPlan,
    JobState,
    ObjectRef,
    PlanRequest,
    ReplanHint,
    SegmentCompletedData,
    SegmentJob,
    SegmentResult,
    StitchRequest,
    WindowSpec,
)
from schemas.names import (
    STREAM_SEGMENTS,
    SUBJECT_WORK_STITCH,
    plan_key,
    revision_tag,
    segment_msg_id,
    segment_result_key,
    segments_subject,
)
from schemas.registry import MODELS

log = get_logger(stage="planner")


def make_plan(req: PlanRequest, budget_bytes: int | None) -> JobPlan:
    job = req.job
    spec = MODELS[job.model]
    plan = plan_segments(
        job.num_frames, spec, job.width, job.height,
        budget_bytes=budget_bytes, max_window=job.max_segment_frames, steps=job.steps,
    )
    windows = [WindowSpec(index=w.index, start_frame=w.start_frame, frames=w.frames,
                          overlap_frames=w.overlap_frames) for w in plan.windows]
    return JobPlan(job=job, info=plan.to_info(), windows=windows, padding_frames=plan.padding_frames)


def segment_job(plan: JobPlan, index: int, condition: ObjectRef | None) -> SegmentJob:
    w = plan.windows[index]
    return SegmentJob(
        job=plan.job, index=index, count=len(plan.windows), start_frame=w.start_frame, frames=w.frames,
        overlap_frames=w.overlap_frames,
        next_overlap_frames=plan.windows[index + 1].overlap_frames if index + 1 < len(plan.windows) else 0,
        seed=(plan.job.seed + index) % 2**32, condition=condition, plan_revision=plan.info.revision,
    )


def progress_after(plan: JobPlan, index: int) -> float:
    """Job progress (0-98) once segment ``index`` is rendered: the share of output frames covered.

    Counted in frames, not segments, so a re-plan (more, shorter segments) never moves it back."""
    w = plan.windows[index]
    return round(98.0 * min(1.0, (w.start_frame + w.frames) / plan.job.num_frames), 2)


async def _discard_cancelled(ports: Ports, job_id: str, queued_seq: int | None = None) -> None:
    """Delete what a stage wrote for a cancelled job (the canceller may have cleaned up before it
    existed) and the segment message it just queued (already taken by a runner: it skips
    cancelled jobs)."""
    await _delete_segment_msg(ports, queued_seq)
    removed = await discard_partial_objects(ports.storage, job_id)
    log.info("cancelled_job_cleaned", job_id=job_id, objects_deleted=len(removed))


async def _clean_if_cancelled(ports: Ports, job_id: str, queued_seq: int | None = None) -> bool:
    """A cancel that landed while this stage wrote: clean up. True when the job is cancelled."""
    status, _ = await ports.tracker.status.get(job_id)
    if status is None or status.state != JobState.CANCELLED:
        return False
    await _discard_cancelled(ports, job_id, queued_seq)
    return True


async def handle_plan(payload: bytes, delivery: Delivery, ports: Ports) -> None:
    req = PlanRequest.model_validate_json(payload)
    if req.replan is not None:
        await handle_replan(req, req.replan, ports)
        return
    job_id = req.job.job_id
    status, _ = await ports.tracker.status.get(job_id)
    if status is not None and status.state.terminal:
        log.info("job_already_finished", job_id=job_id, state=status.state.value)
        if status.state == JobState.CANCELLED:
            await _discard_cancelled(ports, job_id)  # e.g. frames preprocess wrote after the cancel
        return
    plan = make_plan(req, ports.settings.runner_memory_budget_bytes)
    _remember(plan)
    first = segment_job(plan, 0, None)
    # independent writes, done concurrently; a failure of any redelivers the whole step, and
    # each write is idempotent (same key, same Nats-Msg-Id, same status fields)
    *_, ack = await asyncio.gather(
        ports.storage.put_bytes(plan_key(job_id), plan.model_dump_json().encode(), "application/json"),
        ports.tracker.status.update(job_id, lambda cur: cur and cur.model_copy(update={
            "segments_total": plan.info.segments, "plan": plan.info})),
        ports.bus.publish(segments_subject(req.job.model), first, msg_id=segment_msg_id(job_id, 0)),
    )
    if await _clean_if_cancelled(ports, job_id, ack.seq):
        return
    log.info("job_planned", job_id=job_id, segments=plan.info.segments, window=plan.info.window_frames,
             overlap=plan.info.overlap_frames, reason=plan.info.reason)


async def handle_replan(req: PlanRequest, hint: ReplanHint, ports: Ports) -> None:
    """A runner could not fit segment ``hint.index``: re-plan the rest with shorter windows.

    Idempotent: a redelivery after plan.json was written finishes the hand-off (same segment
    message id); a hint for a revision that moved on, or for a segment already done, is dropped.
    """
    job_id = req.job.job_id
    status, _ = await ports.tracker.status.get(job_id)
    if status is None or status.state.terminal:
        log.info("replan_skipped_job_finished", job_id=job_id, state=status and status.state.value)
        await _delete_segment_msg(ports, hint.segment_seq)
        return
    if status.segments_done > hint.index:
        log.info("replan_skipped_segment_done", job_id=job_id, segment=hint.index)
        return
    plan = await load_plan(ports, job_id, min_revision=hint.plan_revision)
    if plan.info.revision == hint.plan_revision:
        plan = replan(plan, hint, ports.settings.runner_memory_budget_bytes)
        await ports.storage.put_bytes(plan_key(job_id), plan.model_dump_json().encode(), "application/json")
        _remember(plan)
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
    await _delete_segment_msg(ports, hint.segment_seq)
    seg = segment_job(plan, hint.index, hint.condition)
    ack = await ports.bus.publish(segments_subject(plan.job.model), seg,
                                  msg_id=segment_msg_id(job_id, hint.index, info.revision))
    if await _clean_if_cancelled(ports, job_id, ack.seq):
        return
    w = plan.windows[hint.index]
    log.warning("job_replanned", job_id=job_id, segment=hint.index, revision=info.revision,
                failed_frames=hint.failed_frames, window=w.frames, segments=info.segments, runner=hint.runner,
                reason=hint.reason)


async def _delete_segment_msg(ports: Ports, seq: int | None) -> None:
    if seq:
        with contextlib.suppress(Exception):  # already taken or acked (work queue: gone)
            await ports.bus.js.delete_msg(STREAM_SEGMENTS, seq)


# The chain step (usually in the same process as the planner) reads plans from here before
# going to S3. A plan changes only by a re-plan, which raises its revision: a cached plan older
# than the revision a message refers to is read again.
_PLANS: OrderedDict[str, JobPlan] = OrderedDict()
_PLAN_CACHE_SIZE = 1024


def _remember(plan: JobPlan) -> None:
    _PLANS[plan.job.job_id] = plan
    _PLANS.move_to_end(plan.job.job_id)
    while len(_PLANS) > _PLAN_CACHE_SIZE:
        _PLANS.popitem(last=False)


async def load_plan(ports: Ports, job_id: str, *, min_revision: int = 0) -> JobPlan:
    cached = _PLANS.get(job_id)
    if cached is not None and cached.info.revision >= min_revision:
        return cached
    try:
        plan = JobPlan.model_validate_json(await ports.storage.get_bytes(plan_key(job_id)))
    except Permanent as e:
        raise Permanent(f"plan for {job_id} is missing: {e}") from e
    if plan.info.revision < min_revision:  # pragma: no cover - plan.json is written before the segment
        raise Retryable(f"plan for {job_id} is at revision {plan.info.revision}, message refers to {min_revision}")
    _remember(plan)
    return plan


async def handle_segment_done(payload: bytes, delivery: Delivery, ports: Ports) -> None:
    res = SegmentResult.model_validate_json(payload)
    job_id = res.job_id
    try:
        plan: JobPlan | None = await load_plan(ports, job_id, min_revision=res.plan_revision)
    except Permanent:
        plan = None  # e.g. a cancelled job's objects are gone: decided below, once the status is known
    if plan is not None and plan.info.revision != res.plan_revision:
        log.info("segment_result_superseded", job_id=job_id, segment=res.index, result_revision=res.plan_revision,
                 plan_revision=plan.info.revision)
        return
    data = SegmentCompletedData(segment=res.index, segments_total=res.count, object=res.segment,
                                frames=res.frames, elapsed_s=res.elapsed_s)
    last = res.index + 1 >= res.count
    stored = await ports.tracker.record(
        JobEvent.build(job_id, EventType.SEGMENT_COMPLETED, data, res.index, *revision_tag(res.plan_revision)),
        state=JobState.STITCHING if last else None,  # the last segment hands the job to stitch
        segments_done=res.index + 1, segments_total=res.count,
        progress=progress_after(plan, res.index) if plan is not None else round(98.0 * (res.index + 1) / res.count, 2),
    )
    if stored is not None and stored.state.terminal:
        log.info("job_already_finished", job_id=job_id, state=stored.state.value)
        return
    if plan is None:
        plan = await load_plan(ports, job_id, min_revision=res.plan_revision)  # raises: plan missing
    nxt = res.index + 1
    if nxt < len(plan.windows):
        seg = segment_job(plan, nxt, res.tail)
        ack = await ports.bus.publish(segments_subject(plan.job.model), seg,
                                      msg_id=segment_msg_id(job_id, nxt, plan.info.revision))
        if await _clean_if_cancelled(ports, job_id, ack.seq):
            return
        log.info("segment_chained", job_id=job_id, segment=nxt, of=len(plan.windows))
        return
    results = [res] if res.count == 1 else await _load_results(ports, plan, res)
    await ports.bus.publish(SUBJECT_WORK_STITCH, StitchRequest(job=plan.job, plan=plan.info, segments=results),
                            msg_id=f"stitch:{job_id}")


async def _load_results(ports: Ports, plan: JobPlan, last: SegmentResult) -> list[SegmentResult]:
    """Every segment's stored result, checked against the plan's windows (a re-plan changes them)."""
    out: list[SegmentResult] = []
    for w in plan.windows[:-1]:
        raw = await ports.storage.get_bytes(segment_result_key(plan.job.job_id, w.index))
        res = SegmentResult.model_validate_json(raw)
        if res.frames != w.frames or res.overlap_frames != w.overlap_frames:
            raise Retryable(f"segment {w.index} result ({res.frames} frames, overlap {res.overlap_frames}) does not "
                            f"match plan revision {plan.info.revision} ({w.frames}, {w.overlap_frames})")
        out.append(res)
    out.append(last)
    return out
