"""A plan as messages (pure): the job's ``JobPlan`` and the ``SegmentJob`` of each of its windows.

Shared by the planner (segment 0, a re-planned segment k) and the chain (segment k+1).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from functions.planner.memory import DEFAULT_MEMORY_MODEL, MemoryModel
from functions.planner.plan import plan_segments
from runtime.jobs import window_progress
from schemas.messages import JobPlan, JobStatus, ObjectRef, PlanRequest, SegmentJob, WindowSpec
from schemas.registry import MODELS


@dataclass(frozen=True)
class RunnerTarget:
    """The runners a plan is for: their ranks, CFG parallel and step cache (``Settings.runner_*``)."""

    ranks: int = 1
    cfg_parallel: bool = False
    cache: str = "none"
    shard: str = "none"

    @classmethod
    def from_settings(cls, settings: Any) -> RunnerTarget:
        return cls(ranks=int(getattr(settings, "runner_ranks", 1) or 1),
                   cfg_parallel=bool(getattr(settings, "runner_cfg_parallel", False)),
                   cache=str(getattr(settings, "runner_cache", "none") or "none"),
                   shard=str(getattr(settings, "runner_shard", "none") or "none"))

    @property
    def cfg(self) -> bool:
        return self.cfg_parallel and self.ranks > 1

    def memory_model(self) -> MemoryModel:
        """FSDP shards over the ranks that run the same forwards: one CFG half, or all of them."""
        if self.shard != "fsdp" or self.ranks < 2:
            return DEFAULT_MEMORY_MODEL
        return replace(DEFAULT_MEMORY_MODEL, shard_ranks=self.ranks // 2 if self.cfg else self.ranks)

    def plan_kwargs(self) -> dict[str, Any]:
        """``plan_segments`` keyword arguments (tokens split over ranks/2 with CFG parallel)."""
        return {"ranks": self.ranks, "cfg_parallel": self.cfg, "cache": self.cache,
                "memory_model": self.memory_model()}


DEFAULT_TARGET = RunnerTarget()


def make_plan(req: PlanRequest, budget_bytes: int | None, target: RunnerTarget = DEFAULT_TARGET) -> JobPlan:
    job = req.job
    spec = MODELS[job.model]
    plan = plan_segments(
        job.num_frames, spec, job.width, job.height,
        budget_bytes=budget_bytes, max_window=job.max_segment_frames, steps=job.steps,
        **target.plan_kwargs(),
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


def window_overlap(plan: JobPlan, index: int) -> int:
    """Leading frames window ``index`` shares with what comes before it: the previous window, or for an
    extension's window 0 the source video's last ``condition_frames``."""
    ext = plan.job.extend
    if index == 0 and ext is not None:
        return ext.condition_frames
    return plan.windows[index].overlap_frames


def segment_job(plan: JobPlan, index: int, condition: ObjectRef | None) -> SegmentJob:
    """Segment ``index``, conditioned on ``condition`` (the previous segment's tail). An extension's
    segment 0 is conditioned on its source's last frames and overlaps them (``ResolvedJob.extend``)."""
    w = plan.windows[index]
    overlap = window_overlap(plan, index)
    if index == 0 and plan.job.extend is not None:
        condition = condition or plan.job.extend.condition
    return SegmentJob(
        job=plan.job, index=index, count=len(plan.windows), start_frame=w.start_frame, frames=w.frames,
        overlap_frames=overlap,
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
