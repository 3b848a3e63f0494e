"""The optimiser: exact window plans of minimum modelled cost (pure, fast).

Two families of plans of ``N`` windows of ``L`` frames (``L`` valid, i.e. ``4k+1`` for Wan):

* **uniform**: every overlap is ``O``, so ``N*(L-O)+O = T``. With the stride ``s = L - O`` this is
  ``T - L = (N-1)*s``: an exact plan exists iff ``s`` divides ``T - L`` and
  ``1 <= s <= L - O_min``. For fixed ``L`` the cost ``N*cost(L)`` falls as ``s`` grows, so the best
  stride is the largest such divisor (O(sqrt T) to enumerate).
* **balanced**: the fewest windows of length ``L`` that reach ``T`` with overlaps ``>= O_min``,
  ``N = ceil((T - O_min) / (L - O_min))``; the excess ``S = N*L - T`` (what a fixed-window
  schedule would render past the end and throw away) is spread over the ``N-1`` overlaps:
  the first ``r = S mod (N-1)`` boundaries overlap by ``O+1``, the others by ``O = S // (N-1)``.
  It exists for every ``L >= O_min + 1`` and never needs more windows than a fixed-window
  schedule with the same ``L`` and ``O_min``. With ``r = 0`` it is a uniform plan.

The search enumerates the valid ``L`` in ``[min_window, cap]`` (a few dozen) and keeps the
cheapest plan; among plans with as many windows and within ``slack`` of its cost, a uniform plan
whose overlap is latent-aligned
(``O ≡ 1 mod q``: whole latent frames of the causal VAE) is preferred, then any uniform plan.
Alignment cannot be a hard constraint: ``L ≡ O ≡ 1 (mod q)`` forces ``T ≡ 1 (mod q)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """``segments`` windows of ``window`` frames; the first ``extra`` boundaries overlap by
    ``overlap + 1`` frames, the others by ``overlap``."""

    segments: int
    window: int
    overlap: int
    extra: int
    cost: float

    @property
    def uniform(self) -> bool:
        """Every boundary has the same overlap (``N*(L-O)+O == T``)."""
        return self.extra == 0

    def overlaps(self) -> tuple[int, ...]:
        """Overlap of each boundary ``1..N-1`` (frames shared with the previous window)."""
        return boundary_overlaps(self.segments, self.overlap, self.extra)


def boundary_overlaps(segments: int, overlap: int, extra: int) -> tuple[int, ...]:
    """``extra`` boundaries of ``overlap + 1`` frames first, then ``overlap`` frames."""
    return tuple(overlap + 1 if i < extra else overlap for i in range(segments - 1))


def overlaps_from_totals(segments: int, window: int, overlap: int, total: int) -> tuple[int, ...]:
    """Rebuild the per-boundary overlaps from the summary ``(N, L, O, T)`` of an exact plan."""
    extra = segments * window - total - (segments - 1) * overlap if segments > 1 else 0
    if segments > 1 and not 0 <= extra < segments - 1:
        raise ValueError(f"(N={segments}, L={window}, O={overlap}) does not cover T={total} exactly")
    return boundary_overlaps(segments, overlap, extra)


def _largest_divisor(n: int, bound: int, residue: int | None = None, modulus: int = 1) -> int | None:
    """Largest divisor ``d <= bound`` of ``n >= 1`` (with ``d ≡ residue mod modulus`` if given)."""
    best: int | None = None
    for i in range(1, math.isqrt(n) + 1):
        if n % i:
            continue
        for d in (i, n // i):
            if d <= bound and (residue is None or d % modulus == residue) and (best is None or d > best):
                best = d
    return best


def _uniform(total: int, length: int, min_overlap: int, cost: float, aligned_q: int | None) -> Candidate | None:
    rest, bound = total - length, length - min_overlap
    if rest < 1 or bound < 1:
        return None
    residue = None if aligned_q is None else (length - 1) % aligned_q
    stride = _largest_divisor(rest, bound, residue, aligned_q or 1)
    if stride is None:
        return None
    n = rest // stride + 1
    return Candidate(n, length, length - stride, 0, n * cost)


def _balanced(total: int, length: int, min_overlap: int, cost: float) -> Candidate | None:
    if length >= total or length <= min_overlap:
        return None
    n = -(-(total - min_overlap) // (length - min_overlap))
    excess = n * length - total
    return Candidate(n, length, excess // (n - 1), excess % (n - 1), n * cost)


def best_plan(
    total: int,
    lengths: range,
    min_overlap: int,
    window_cost: Callable[[int], float],
    *,
    overlap_multiple: int = 1,
    slack: float = 0.0,
    allow_single: bool = True,
) -> Candidate | None:
    """Cheapest exact plan covering ``total`` frames with window lengths from ``lengths``.

    ``allow_single`` admits the one-window plan ``L = total``. Returns ``None`` if none exists.
    """
    cands: list[Candidate] = []
    q = max(1, overlap_multiple)
    for length in lengths:
        cost = window_cost(length)
        if length == total and allow_single:
            cands.append(Candidate(1, length, 0, 0, cost))
            continue
        for cand in (
            _balanced(total, length, min_overlap, cost),
            _uniform(total, length, min_overlap, cost, None),
            _uniform(total, length, min_overlap, cost, q) if q > 1 else None,
        ):
            if cand is not None:
                cands.append(cand)
    if not cands:
        return None
    cheapest = min(cands, key=lambda c: (c.cost, c.segments))
    floor = cheapest.cost * (1.0 + slack)

    def preference(c: Candidate) -> tuple[bool, bool, float, int]:
        aligned = c.uniform and (c.segments == 1 or (c.overlap - 1) % q == 0)
        return (not aligned, not c.uniform, c.cost, c.segments)

    near = (c for c in cands if c.cost <= floor and c.segments == cheapest.segments)
    return min(near, key=preference)


@dataclass(frozen=True)
class FixedSchedule:
    """The vanilla schedule: windows of ``window`` frames, stride ``window - overlap``, tail padded."""

    segments: int
    window: int
    overlap: int
    total: int

    @property
    def covered_frames(self) -> int:
        """Distinct frames rendered (``>= total``; the excess is thrown away)."""
        return self.segments * (self.window - self.overlap) + self.overlap

    @property
    def rendered_frames(self) -> int:
        """Frames the model renders, overlap included."""
        return self.segments * self.window


def fixed_window_schedule(total: int, window: int = 77, overlap: int = 1) -> FixedSchedule:
    """Vanilla fixed windows: ``1 + ceil((T - L) / (L - O))`` windows (one if ``T <= L``)."""
    if total <= window:
        return FixedSchedule(1, window, overlap, total)
    stride = window - overlap
    return FixedSchedule(1 + -(-(total - window) // stride), window, overlap, total)
