"""Re-plan the rest of a job after a segment did not fit the runner's GPU (pure, no I/O).

A runner that runs out of memory rendering segment ``k`` (or that refuses a window longer than
its ``runner_max_window_frames``) sends a :class:`schemas.messages.ReplanHint` with the longest
window to try next. :func:`replan` keeps windows ``0..k-1`` (already rendered, their tails
stored) and covers frames ``start_frame(k)..T`` again with windows of at most that length:

* the first new window starts where window ``k`` started and keeps its overlap ``O_k``: it is
  conditioned on the tail segment ``k-1`` already stored (exactly ``O_k`` frames);
* the region ``[start_frame(k), T)`` is planned by :func:`plan_segments` as a job of its own
  (its first ``O_k`` frames are the shared ones), so coverage stays exact, every window is
  ``4k+1`` and later overlaps are ``>= O_min``;
* the plan's ``revision`` goes up by one; segments carry it, so a late result of the old
  revision is recognised and ignored.

Raises :class:`PlanError` (code ``out_of_memory``) when no plan fits under the new cap.
"""

from __future__ import annotations

from functions.planner.plan import PlanError, plan_segments
from functions.planner.segments import DEFAULT_TARGET, RunnerTarget
from schemas.errors import ErrorCode
from schemas.messages import JobPlan, PlanInfo, ReplanHint, WindowSpec
from schemas.registry import MODELS


class ReplanError(PlanError):
    """The rest of the job cannot be planned with windows short enough for the GPU."""

    code = ErrorCode.OUT_OF_MEMORY


def replan(plan: JobPlan, hint: ReplanHint, budget_bytes: int | None = None,
           target: RunnerTarget = DEFAULT_TARGET) -> JobPlan:
    """``plan`` with windows ``hint.index..`` re-planned under ``hint.max_window_frames``."""
    job = plan.job
    spec = MODELS[job.model]
    if not 0 <= hint.index < len(plan.windows):
        raise ReplanError(f"segment {hint.index} is not in the plan ({len(plan.windows)} segments)")
    failed = plan.windows[hint.index]
    cap = hint.max_window_frames if job.max_segment_frames is None else min(hint.max_window_frames,
                                                                             job.max_segment_frames)
    if cap >= failed.frames:
        raise ReplanError(f"re-plan cap {cap} is not below the failed window of {failed.frames} frames")
    start = failed.start_frame
    overlap = failed.overlap_frames
    region = job.num_frames - start  # frames [start, T), the first ``overlap`` shared with window k-1
    where = f"segment {hint.index} ({failed.frames} frames) did not fit"
    if overlap and cap <= overlap:
        raise ReplanError(f"{where}; windows of {cap} frames cannot go past the {overlap}-frame overlap")
    try:
        sub = plan_segments(region, spec, job.width, job.height, budget_bytes=budget_bytes, max_window=cap,
                            steps=job.steps, **target.plan_kwargs())
    except PlanError as e:
        raise ReplanError(f"{where}; no plan with windows of at most {cap} frames: {e}") from e
    first = sub.windows[0]
    if overlap and first.frames <= overlap:  # pragma: no cover - plan_segments' floor is far above O
        raise ReplanError(f"{where}; the first new window ({first.frames}) would add no frames")
    head = list(plan.windows[: hint.index])
    tail = [
        WindowSpec(index=hint.index + i, start_frame=start + w.start_frame, frames=w.frames,
                   overlap_frames=overlap if i == 0 else w.overlap_frames)
        for i, w in enumerate(sub.windows)
    ]
    windows = head + tail
    revision = plan.info.revision + 1
    info = PlanInfo(
        segments=len(windows),
        window_frames=sub.window_frames,
        overlap_frames=min([w.overlap_frames for w in windows[1:]], default=0),
        total_frames=job.num_frames,
        reason=f"revision {revision}: {where} ({hint.reason or 'out of memory'}); from frame {start}: "
               f"{sub.reason}",
        revision=revision,
    )
    return JobPlan(job=job, info=info, windows=windows, padding_frames=sub.padding_frames,
                   replanned_from=hint.index)
