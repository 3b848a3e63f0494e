"""A plan as messages (pure): the job's ``JobPlan`` and the ``SegmentJob`` of each of its windows.

Shared by the planner (segment 0, a re-planned segment k) and the chain (segment k+1).
"""

from __future__ import annotations

from functions.planner.plan import plan_segments
from runtime.jobs import window_progress
from schemas.messages import JobPlan, JobStatus, ObjectRef, PlanRequest, SegmentJob, WindowSpec
from schemas.registry import MODELS


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


def playable_before(plan: JobPlan, index: int) -> int | None:
    """Output frames final once segments ``0..index-1`` are rendered (``functions.stitch.hls``); None when
    the plan is not streamed (a frame in three windows)."""
    from functions.stitch.hls import piece_frames_available, stream_pieces

    pieces = stream_pieces([(w.start_frame, w.frames, w.overlap_frames) for w in plan.windows], plan.job.num_frames)
    return None if pieces is None else piece_frames_available(pieces, index)


def segment_job(plan: JobPlan, index: int, condition: ObjectRef | None) -> SegmentJob:
    w = plan.windows[index]
    return SegmentJob(
        job=plan.job, index=index, count=len(plan.windows), start_frame=w.start_frame, frames=w.frames,
        overlap_frames=w.overlap_frames,
        next_overlap_frames=plan.windows[index + 1].overlap_frames if index + 1 < len(plan.windows) else 0,
        seed=(plan.job.seed + index) % 2**32, condition=condition, plan_revision=plan.info.revision,
        playable_frames=playable_before(plan, index),
    )


def progress_after(plan: JobPlan, index: int) -> float:
    """Job progress once segment ``index`` is rendered (``runtime.jobs.window_progress``)."""
    w = plan.windows[index]
    return window_progress(w.start_frame, w.frames, w.overlap_frames, plan.job.num_frames)


def inputs_needed(plan: JobPlan, index: int) -> int:
    """Output frames whose preprocessed inputs (driving/pose/face) window ``index`` reads: ``[0, n)``."""
    w = plan.windows[index]
    return min(w.start_frame + w.frames, plan.job.num_frames)


def inputs_ready(status: JobStatus | None, plan: JobPlan, index: int) -> bool:
    """Whether everything window ``index`` needs is stored (``JobStatus.preprocessed_frames``: None when
    the job's inputs were all stored before planning)."""
    ready = None if status is None else status.preprocessed_frames
    return ready is None or ready >= inputs_needed(plan, index)
