"""planner: split a job into GPU-sized windows and publish them one at a time.

in:  ``videogen.work.plan`` (PlanRequest)            -> plan.json, segment 0 on ``videogen.segments.<model>``
in:  ``videogen.work.segment_done`` (SegmentResult)  -> ``job.segment_completed``; segment k+1, or
                                                        ``videogen.work.stitch`` after the last one
Segment k+1 is published only when k is done and carries a reference to k's tail frames, so
any runner can take it and a runner restart between segments loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict

from functions.planner.plan import plan_segments
from runtime.consumer import Delivery
from runtime.jobs import discard_partial_objects
from runtime.logging import get_logger
from runtime.ports import Ports
from schemas.errors import Permanent
from schemas.messages import (
    EventType,
    JobEvent,
    JobPlan,
    JobState,
    ObjectRef,
    PlanRequest,
    SegmentCompletedData,
    SegmentJob,
    SegmentResult,
    StitchRequest,
    WindowSpec,
)
from schemas.names import STREAM_SEGMENTS, SUBJECT_WORK_STITCH, plan_key, segment_result_key, segments_subject
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
        seed=(plan.job.seed + index) % 2**32, condition=condition,
    )


async def _discard_cancelled(ports: Ports, job_id: str, queued_seq: int | None = None) -> None:
    """Delete what a stage wrote for a cancelled job (the canceller may have cleaned up before it
    existed) and the segment message it just queued."""
    if queued_seq:
        with contextlib.suppress(Exception):  # already taken by a runner: it skips cancelled jobs
            await ports.bus.js.delete_msg(STREAM_SEGMENTS, queued_seq)
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
        ports.bus.publish(segments_subject(req.job.model), first, msg_id=f"seg:{job_id}:0"),
    )
    if await _clean_if_cancelled(ports, job_id, ack.seq):
        return
    log.info("job_planned", job_id=job_id, segments=plan.info.segments, window=plan.info.window_frames,
             overlap=plan.info.overlap_frames, reason=plan.info.reason)


# Plans are immutable once written: the chain step (usually in the same process as the
# planner) reads them from here before going to S3.
_PLANS: OrderedDict[str, JobPlan] = OrderedDict()
_PLAN_CACHE_SIZE = 1024


def _remember(plan: JobPlan) -> None:
    _PLANS[plan.job.job_id] = plan
    while len(_PLANS) > _PLAN_CACHE_SIZE:
        _PLANS.popitem(last=False)


async def load_plan(ports: Ports, job_id: str) -> JobPlan:
    if (cached := _PLANS.get(job_id)) is not None:
        return cached
    try:
        plan = JobPlan.model_validate_json(await ports.storage.get_bytes(plan_key(job_id)))
    except Permanent as e:
        raise Permanent(f"plan for {job_id} is missing: {e}") from e
    _remember(plan)
    return plan


async def handle_segment_done(payload: bytes, delivery: Delivery, ports: Ports) -> None:
    res = SegmentResult.model_validate_json(payload)
    job_id = res.job_id
    data = SegmentCompletedData(segment=res.index, segments_total=res.count, object=res.segment,
                                frames=res.frames, elapsed_s=res.elapsed_s)
    last = res.index + 1 >= res.count
    stored = await ports.tracker.record(
        JobEvent.build(job_id, EventType.SEGMENT_COMPLETED, data, res.index),
        state=JobState.STITCHING if last else None,  # the last segment hands the job to stitch
        segments_done=res.index + 1, segments_total=res.count,
        progress=round(100.0 * (res.index + 1) / res.count * 0.98, 2),
    )
    if stored is not None and stored.state.terminal:
        log.info("job_already_finished", job_id=job_id, state=stored.state.value)
        return
    plan = await load_plan(ports, job_id)
    nxt = res.index + 1
    if nxt < len(plan.windows):
        seg = segment_job(plan, nxt, res.tail)
        ack = await ports.bus.publish(segments_subject(plan.job.model), seg, msg_id=f"seg:{job_id}:{nxt}")
        if await _clean_if_cancelled(ports, job_id, ack.seq):
            return
        log.info("segment_chained", job_id=job_id, segment=nxt, of=len(plan.windows))
        return
    results = [res] if res.count == 1 else await _load_results(ports, plan, res)
    await ports.bus.publish(SUBJECT_WORK_STITCH, StitchRequest(job=plan.job, plan=plan.info, segments=results),
                            msg_id=f"stitch:{job_id}")


async def _load_results(ports: Ports, plan: JobPlan, last: SegmentResult) -> list[SegmentResult]:
    out: list[SegmentResult] = []
    for w in plan.windows[:-1]:
        raw = await ports.storage.get_bytes(segment_result_key(plan.job.job_id, w.index))
        out.append(SegmentResult.model_validate_json(raw))
    out.append(last)
    return out
