"""CUDA out-of-memory: recognise it, free what can be freed, propose a smaller window.

Policy (wired by ``gpu_runner.runner``): when rendering a segment raises and ``is_oom(exc)``:

1. ``free_memory()`` (drop references first: the exception's traceback holds the activations, so
   call it after leaving the ``except`` block or after ``del``-ing the exception).
2. ``plan_after_oom(frames, spec)``: while a valid smaller window exists (``smaller_window``: the
   largest ``4k+1`` frame count with at most ~2/3 of the tokens, not below ``min_frames``), the
   runner sends the planner a ``ReplanHint`` with that window and acks the segment; the planner
   re-plans the rest of the job (``functions/planner/replan.py``). When none is left, the segment
   fails with ``OUT_OF_MEMORY`` (it cannot fit this GPU).
3. ``OomStreak``: several OOMs in a row on different jobs mean the GPU itself is short
   (fragmentation, a leak, a co-tenant), not the windows: hand the segment back with a delay (a
   healthy runner renders it as planned) and restart the runner for a fresh CUDA context.

A runner with ``runner_max_window_frames`` set (a smaller GPU than the planner's budget) refuses
longer windows before computing anything (``WindowTooLong``): that is an out-of-memory known in
advance, re-planned straight to the runner's limit (``plan_after_oom(..., device_cap=...)``).

Nothing here touches the bus; these are pure helpers (torch only where CUDA is present).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias

from runtime.logging import get_logger
from schemas.errors import ErrorCode, VideogenError
from schemas.registry import ModelSpec

if TYPE_CHECKING:
    import torch

    Device: TypeAlias = "torch.device | str | int | None"
else:
    Device = object

log = get_logger(component="oom")

TOKEN_FRACTION = 2.0 / 3.0
_OOM_MARKERS = ("out of memory", "cuda error: out of memory", "cublas_status_alloc_failed",
                "hip out of memory", "cudnn_status_alloc_failed")


def is_oom(exc: BaseException | None) -> bool:
    """True for ``torch.OutOfMemoryError``, an 'out of memory' ``RuntimeError``, a ``VideogenError``
    with code ``OUT_OF_MEMORY``, or any of these in the ``__cause__``/``__context__`` chain."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if _is_torch_oom(exc):
            return True
        if isinstance(exc, VideogenError) and exc.code == ErrorCode.OUT_OF_MEMORY:
            return True
        if isinstance(exc, RuntimeError | MemoryError) and any(m in str(exc).lower() for m in _OOM_MARKERS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _is_torch_oom(exc: BaseException) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the runner
        return False
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return oom_type is not None and isinstance(exc, oom_type)


def free_memory(device: Device = None) -> dict[str, int]:
    """``gc.collect`` + ``torch.cuda.empty_cache`` + reset peak statistics; returns bytes before/after.

    Without CUDA only the garbage collector runs and every figure is 0.
    """
    gc.collect()
    stats = {"allocated_before": 0, "reserved_before": 0, "allocated_after": 0, "reserved_after": 0}
    try:
        import torch
    except ImportError:  # pragma: no cover
        return stats
    if not torch.cuda.is_available():
        return stats
    stats["allocated_before"] = int(torch.cuda.memory_allocated(device))
    stats["reserved_before"] = int(torch.cuda.memory_reserved(device))
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    stats["allocated_after"] = int(torch.cuda.memory_allocated(device))
    stats["reserved_after"] = int(torch.cuda.memory_reserved(device))
    log.info("memory_freed", **stats)
    return stats


def default_min_frames(spec: ModelSpec) -> int:
    """Smallest window worth re-planning to: 4 latent frames beyond the first (17 frames for Wan)."""
    return spec.pixel_frames(5)


def smaller_window(frames: int, spec: ModelSpec, *, min_frames: int | None = None,
                   token_fraction: float = TOKEN_FRACTION) -> int | None:
    """The largest valid window (``frame_multiple·k + 1``) with at most ``token_fraction`` of the
    tokens of ``frames`` (tokens grow with latent frames at a fixed size), and at least
    ``min_frames``; ``None`` when no such window exists.
    """
    if not 0.0 < token_fraction < 1.0:
        raise ValueError("token_fraction must be in (0, 1)")
    floor = default_min_frames(spec) if min_frames is None else min_frames
    budget = token_fraction * spec.latent_frames(frames)
    candidate = largest_window_at_most(min(frames - 1, spec.max_window_frames), spec)
    while candidate >= max(floor, 1):
        if spec.valid_window(candidate) and spec.latent_frames(candidate) <= budget:
            return candidate
        candidate -= spec.frame_multiple
    return None


class WindowTooLong(VideogenError):
    """The window is longer than this runner accepts (``runner_max_window_frames``): an
    out-of-memory known before computing, handled like one (re-planned)."""

    code = ErrorCode.OUT_OF_MEMORY
    retryable = True

    def __init__(self, frames: int, cap: int) -> None:
        super().__init__(f"window of {frames} frames is longer than this runner's limit of {cap} "
                         "(runner_max_window_frames)")
        self.frames = frames
        self.cap = cap


def largest_window_at_most(cap: int, spec: ModelSpec) -> int:
    """The longest valid window (``frame_multiple·k + 1``) of at most ``cap`` frames (0 if none)."""
    return spec.largest_window_at_most(cap)


@dataclass(frozen=True)
class OomPlan:
    """What to do with a segment that ran out of memory."""

    action: Literal["replan", "fail"]
    replan_max_window: int | None = None
    reason: str = ""


def plan_after_oom(frames: int, spec: ModelSpec, *, min_frames: int | None = None,
                   device_cap: int | None = None) -> OomPlan:
    """``replan`` with a smaller window when one exists, else ``fail`` (the segment cannot fit).

    ``device_cap``: the runner's known limit (``WindowTooLong``): re-plan straight to the longest
    valid window within it instead of shrinking by a token fraction.
    """
    floor = default_min_frames(spec) if min_frames is None else min_frames
    if device_cap is not None:
        longest = largest_window_at_most(min(device_cap, frames - 1), spec)
        window: int | None = longest if longest >= max(floor, 1) else None
        what = f"window of {frames} frames over this runner's limit of {device_cap}"
    else:
        window = smaller_window(frames, spec, min_frames=min_frames)
        what = f"out of memory at {frames} frames"
    if window is None:
        return OomPlan("fail", None, f"{what} and no smaller window is allowed (min {floor})")
    return OomPlan("replan", window, f"{what}: re-plan with windows of at most {window}")


class OomStreak:
    """Consecutive real out-of-memory errors of one runner.

    ``limit`` OOMs in a row spanning at least two jobs say the GPU is short (fragmentation, a
    leak, another tenant), not that these windows are too long: re-planning them would shrink
    every job for nothing. Any segment rendered resets the streak.
    """

    def __init__(self, limit: int = 3) -> None:
        self.limit = limit
        self.jobs: list[str] = []

    def succeeded(self) -> None:
        self.jobs.clear()

    def record(self, job_id: str) -> bool:
        """Count an OOM of ``job_id``; True when the GPU should be considered short."""
        self.jobs.append(job_id)
        return len(self.jobs) >= self.limit and len(set(self.jobs[-self.limit:])) >= 2
