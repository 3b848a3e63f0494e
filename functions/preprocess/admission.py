"""Admission control at the door: a job the pipeline would regret is ``job.rejected`` ``over_limit``.

Three ceilings, each from the same models the rest of the pipeline uses, with the computed
figure in the message:

* frames x width x height (``max_job_frame_pixels``);
* modelled GPU seconds of the plan the planner will make (``functions.planner.plan_segments`` and
  its cost model, the same budget setting) (``max_job_gpu_seconds``);
* stitch's peak memory for that plan (``max_stitch_bytes``): stitch remuxes segments and keeps
  only the decoded overlap frames of every boundary (``functions.stitch.assemble``), or decodes
  the whole video when overlaps are longer than a segment's share.

Pure: no I/O. Per-tenant quotas (waiting/in-flight jobs, submit rate) are runtime/quotas.py, after the claim.
"""

from __future__ import annotations

from dataclasses import dataclass

from functions.planner.cost import window_cost
from functions.planner.plan import PlanError, plan_segments
from functions.preprocess.validate import RequestRejected
from schemas.errors import ErrorCode
from schemas.messages import ResolvedJob
from schemas.registry import MODELS

RGB_BYTES = 3


@dataclass(frozen=True)
class Limits:
    max_frame_pixels: int
    max_gpu_seconds: float
    max_stitch_bytes: int
    budget_bytes: int | None = None  # the planner's memory budget (settings.runner_memory_budget_bytes)


@dataclass(frozen=True)
class Figures:
    frame_pixels: int
    gpu_seconds: float
    stitch_bytes: int
    segments: int


def stitch_peak_bytes(frames: tuple[int, ...], overlaps: tuple[int, ...], total_frames: int,
                      width: int, height: int) -> int:
    """Upper bound of decoded frames stitch holds at once for a plan (uint8 RGB)."""
    frame = width * height * RGB_BYTES
    ov = (0, *overlaps, 0)
    if any(ov[i] + ov[i + 1] > frames[i] for i in range(len(frames))):
        return total_frames * frame  # stitch decodes every segment whole
    # every boundary's blend is kept until the concat, plus the tail being decoded
    return (sum(overlaps) + max(overlaps, default=0)) * frame


def figures(job: ResolvedJob, budget_bytes: int | None = None) -> Figures | None:
    """What the job would cost; None when no plan exists (the planner reports that itself)."""
    spec = MODELS[job.model]
    try:
        plan = plan_segments(job.num_frames, spec, job.width, job.height, budget_bytes=budget_bytes,
                             max_window=job.max_segment_frames, steps=job.steps)
    except PlanError:
        return None
    gpu_s = sum(window_cost(spec, job.width, job.height, w.frames, job.steps) for w in plan.windows)
    frames = tuple(w.frames for w in plan.windows)
    return Figures(frame_pixels=job.num_frames * job.width * job.height, gpu_seconds=gpu_s,
                   stitch_bytes=stitch_peak_bytes(frames, plan.overlaps, job.num_frames, job.width, job.height),
                   segments=len(plan.windows))


def admit(job: ResolvedJob, limits: Limits) -> Figures | None:
    """Raise ``RequestRejected(over_limit)`` when the job exceeds a ceiling; return its figures."""
    pixels = job.num_frames * job.width * job.height
    if pixels > limits.max_frame_pixels:
        raise RequestRejected(
            f"over_limit: {job.num_frames} frames x {job.width}x{job.height} = {pixels:,} frame pixels "
            f"(limit {limits.max_frame_pixels:,})", code=ErrorCode.OVER_LIMIT, job_id=job.job_id)
    fig = figures(job, limits.budget_bytes)
    if fig is None:
        return None
    if fig.gpu_seconds > limits.max_gpu_seconds:
        raise RequestRejected(
            f"over_limit: the plan ({fig.segments} segments, {job.steps} steps on {job.model}) is modelled at "
            f"{fig.gpu_seconds:,.0f} GPU seconds (limit {limits.max_gpu_seconds:,.0f})",
            code=ErrorCode.OVER_LIMIT, job_id=job.job_id)
    if fig.stitch_bytes > limits.max_stitch_bytes:
        raise RequestRejected(
            f"over_limit: stitching {fig.segments} segments at {job.width}x{job.height} needs about "
            f"{fig.stitch_bytes / (1 << 30):,.1f} GiB of memory "
            f"(limit {limits.max_stitch_bytes / (1 << 30):,.1f} GiB); "
            "use longer max_segment_frames or a lower resolution",
            code=ErrorCode.OVER_LIMIT, job_id=job.job_id)
    return fig
