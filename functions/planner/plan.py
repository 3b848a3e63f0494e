"""Public planner API: :func:`plan_segments` -> :class:`SegmentPlan` (pure, no I/O).

Policy (see README.md):

* ``T <= cap`` (one window fits): one segment. If ``T`` is a valid length (``4k+1`` for Wan) the
  window is exactly ``T``; otherwise the window is the next valid length and the last
  ``padding_frames <= frame_multiple - 1`` frames are trimmed by the stitcher. Those frames lie
  inside the last latent frame, so they cost no extra DiT tokens. ``prefer_single_window=False``
  instead takes the cheapest exact multi-window plan when one exists.
* ``T > cap``: the cheapest exact plan (no padding) of ``N`` windows of one length
  ``min_window <= L <= cap`` with overlaps ``>= min_overlap``, found by
  :func:`functions.planner.search.best_plan`: uniform ``N*(L-O)+O = T`` when that is within
  ``slack`` of the optimum, otherwise overlaps of ``O`` and ``O+1`` (the first boundaries get the +1).
"""

from __future__ import annotations

from dataclasses import dataclass

from functions.planner.cost import DEFAULT_COST_MODEL, CostModel, window_cost
from functions.planner.memory import DEFAULT_MEMORY_MODEL, GIB, MemoryModel, device_budget, max_window_frames
from functions.planner.search import Candidate, best_plan
from schemas.errors import ErrorCode, Rejected
from schemas.messages import PlanInfo
from schemas.registry import ModelSpec

DEFAULT_DEVICE_BYTES = 79 * GIB
"""An "80 GB" H100 as CUDA reports it (79.2 GiB total), when no runner measured its device."""

DEFAULT_BUDGET_BYTES = device_budget(DEFAULT_DEVICE_BYTES)
"""Declared budget when none is configured: the H100's memory minus the runner's margin (76 GiB)."""

DEFAULT_SLACK = 0.02
"""Relative extra cost accepted for a uniform (and latent-aligned, ``O ≡ 1 mod 4``) overlap."""


class PlanError(Rejected):
    """No plan satisfies the constraints (resolution too large for the device, cap too small)."""

    code = ErrorCode.OUT_OF_RANGE


@dataclass(frozen=True)
class Window:
    """One segment: output frames ``[start_frame, start_frame + frames)`` (0-based).

    The first ``overlap_frames`` of them are shared with the previous window (0 for the first).
    """

    index: int
    start_frame: int
    frames: int
    overlap_frames: int

    @property
    def end_frame(self) -> int:
        """One past the last output frame index (may exceed T by the plan's padding)."""
        return self.start_frame + self.frames


@dataclass(frozen=True)
class SegmentPlan:
    """How ``total_frames`` are covered: ``segments`` windows of ``window_frames`` frames.

    ``overlap_frames`` is the smallest overlap; the first ``segments*L - T - padding - (N-1)*O``
    boundaries overlap by one frame more (0 for uniform plans, where ``N*(L-O)+O == T + padding``).
    The stitcher trims the last ``padding_frames`` (only ever in a single-window plan).
    """

    windows: tuple[Window, ...]
    window_frames: int
    overlap_frames: int
    segments: int
    total_frames: int
    padding_frames: int
    rendered_frames: int
    cost: float
    reason: str
    max_window_frames: int
    min_overlap: int

    @property
    def overlaps(self) -> tuple[int, ...]:
        """Overlap of each boundary ``1..N-1``, i.e. ``windows[i].overlap_frames`` for ``i >= 1``."""
        return tuple(w.overlap_frames for w in self.windows[1:])

    @property
    def uniform(self) -> bool:
        """All boundaries overlap by ``overlap_frames`` (the issue's ``N*(L-O)+O = T``)."""
        return all(o == self.overlap_frames for o in self.overlaps)

    def to_info(self) -> PlanInfo:
        """The plan as carried in job status/events (``segments_total`` = ``segments``)."""
        return PlanInfo(
            segments=self.segments,
            window_frames=self.window_frames,
            overlap_frames=self.overlap_frames,
            total_frames=self.total_frames,
            reason=self.reason,
        )


def default_min_overlap(spec: ModelSpec) -> int:
    """Two latent frames' worth of pixels: ``vae_scale_temporal + 1`` (5 for Wan)."""
    return spec.vae_scale_temporal + 1


def default_min_window(spec: ModelSpec) -> int:
    """Half the trained window, rounded up to a valid length (41 for Wan's 81).

    The FLOP model alone would shrink windows to ~17 frames at 720p (attention is quadratic); this
    floor keeps enough temporal context for coherent motion. Pass ``min_window=1`` to disable it.
    """
    return spec.smallest_window_at_least(spec.max_window_frames // 2)


def _fmt_bytes(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def _single(total: int, spec: ModelSpec, cost_of: dict[int, float]) -> Candidate:
    length = spec.smallest_window_at_least(total)
    return Candidate(1, length, 0, 0, cost_of[length])


def plan_segments(
    total_frames: int,
    spec: ModelSpec,
    width: int,
    height: int,
    *,
    budget_bytes: int | None = None,
    min_overlap: int | None = None,
    max_window: int | None = None,
    ranks: int = 1,
    steps: int | None = None,
    min_window: int | None = None,
    dtype_bytes: int = 2,
    overlap_multiple: int | None = None,
    slack: float = DEFAULT_SLACK,
    prefer_single_window: bool = True,
    cfg_parallel: bool = False,
    cache: str = "none",
    memory_model: MemoryModel = DEFAULT_MEMORY_MODEL,
    cost_model: CostModel = DEFAULT_COST_MODEL,
) -> SegmentPlan:
    """Choose ``N, L, O`` covering ``total_frames`` exactly at minimum modelled cost.

    ``budget_bytes``: free memory per GPU rank (default :data:`DEFAULT_BUDGET_BYTES`);
    ``max_window``: user cap on ``L`` (``max_segment_frames``); ``min_window``: floor on ``L`` for
    multi-window plans (default :func:`default_min_window`, lowered to the cap when the cap is
    smaller); ``ranks``: the runner's GPUs (sequence parallel, or 2 CFG halves of ``ranks/2`` with
    ``cfg_parallel``); ``cache``: the runner's step cache (its state counts against the budget);
    ``overlap_multiple``: preferred overlap grid (default ``spec.vae_scale_temporal``; ``1``
    disables the preference). Raises :class:`PlanError` when no plan fits.
    """
    if total_frames < 1:
        raise PlanError(f"total_frames must be >= 1, got {total_frames}")
    budget = DEFAULT_BUDGET_BYTES if budget_bytes is None else budget_bytes
    o_min = default_min_overlap(spec) if min_overlap is None else max(1, min_overlap)
    steps_ = spec.default_steps if steps is None else steps
    q = spec.vae_scale_temporal if overlap_multiple is None else overlap_multiple
    cap = max_window_frames(spec, width, height, budget, dtype_bytes, ranks, max_frames=max_window,
                            cfg_parallel=cfg_parallel, cache=cache, model=memory_model)
    where = f"{width}x{height} on {_fmt_bytes(budget)}" + (f" x{ranks} ranks" if ranks > 1 else "")
    if cap < 1:
        raise PlanError(f"{spec.name}: not even a 1-frame window fits at {where}; lower the resolution")
    cost_of = {
        length: window_cost(spec, width, height, length, steps_, ranks=ranks, model=cost_model)
        for length in spec.window_lengths(1, cap)
    }
    fits_one = spec.smallest_window_at_least(total_frames) <= cap
    lo = min(cap, default_min_window(spec) if min_window is None else max(1, min_window))
    chosen: Candidate | None = None
    if not (fits_one and prefer_single_window):
        lengths = spec.window_lengths(min(lo, total_frames), cap)  # admits L = T
        chosen = best_plan(total_frames, lengths, o_min, cost_of.__getitem__, overlap_multiple=q, slack=slack)
    if chosen is None and fits_one:
        chosen = _single(total_frames, spec, cost_of)
    if chosen is None:
        raise PlanError(
            f"{spec.name}: T={total_frames} needs several windows but the cap is {cap} frames "
            f"at {where}, too short for an overlap of {o_min}"
        )
    return _build(chosen, total_frames, cap, o_min, where, spec.frame_multiple)


def _build(c: Candidate, total: int, cap: int, o_min: int, where: str, multiple: int) -> SegmentPlan:
    overlaps = (0, *c.overlaps())
    starts = [0]
    for i in range(1, c.segments):
        starts.append(starts[-1] + c.window - overlaps[i])
    windows = tuple(Window(i, starts[i], c.window, overlaps[i]) for i in range(c.segments))
    padding = starts[-1] + c.window - total
    if c.segments == 1:
        what = f"T={total} → 1 window of {c.window}"
        if padding:
            what += f" (T is not {multiple}k+1; last {padding} frame(s) trimmed)"
    else:
        ov = f"{c.overlap}" if c.uniform else f"{c.overlap + 1} ({c.extra}x) / {c.overlap}"
        what = f"T={total} → {c.segments} windows of {c.window} with overlap {ov}"
    reason = f"{what}; memory cap {cap} frames at {where}; modelled cost {c.cost:.1f} s"
    return SegmentPlan(
        windows=windows,
        window_frames=c.window,
        overlap_frames=c.overlap,
        segments=c.segments,
        total_frames=total,
        padding_frames=padding,
        rendered_frames=c.segments * c.window,
        cost=c.cost,
        reason=reason,
        max_window_frames=cap,
        min_overlap=o_min,
    )
