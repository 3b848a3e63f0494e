"""Planner properties: exact coverage, 4k+1, memory bound, overlap >= O_min, near-optimal cost."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from functions.planner import PlanError, SegmentPlan, plan_segments
from functions.planner.cost import window_cost
from functions.planner.memory import GIB, estimate_window, max_window_frames, window_bytes
from functions.planner.plan import default_min_overlap, default_min_window
from functions.planner.search import fixed_window_schedule, overlaps_from_totals
from schemas.registry import MODELS, ModelSpec

NAMES = sorted(MODELS)


def brute_force(
    total: int, spec: ModelSpec, width: int, height: int, budget: int, o_min: int, lo: int, cap: int, ranks: int
) -> float:
    """Cheapest cost over every feasible multi-window plan of N windows of one valid L in [lo, cap]
    with overlaps in [o_min, L-1] summing to N*L - T (uniform O as the special case)."""
    best = math.inf
    steps = spec.default_steps
    for length in range(1, cap + 1):
        if not spec.valid_window(length) or length < lo or length >= total:
            continue
        assert window_bytes(spec, width, height, length, ranks=ranks) <= budget
        cost = window_cost(spec, width, height, length, steps, ranks=ranks)
        for overlap in range(o_min, length):  # uniform (L, O, N)
            if (total - overlap) % (length - overlap) == 0:
                best = min(best, (total - overlap) // (length - overlap) * cost)
        for n in range(2, total + 1):  # any overlaps: S = N*L - T spread over N-1 boundaries
            excess = n * length - total
            if (n - 1) * o_min <= excess <= (n - 1) * (length - 1):
                best = min(best, n * cost)
                break
    return best


def check_structure(plan: SegmentPlan, spec: ModelSpec, total: int, o_min: int) -> None:
    assert plan.total_frames == total and plan.segments == len(plan.windows) >= 1
    assert spec.valid_window(plan.window_frames) and plan.window_frames <= plan.max_window_frames
    end = 0
    for i, w in enumerate(plan.windows):
        assert w.index == i and w.frames == plan.window_frames
        if i == 0:
            assert w.start_frame == 0 and w.overlap_frames == 0
        else:
            assert o_min <= w.overlap_frames < w.frames and w.overlap_frames >= plan.overlap_frames
            assert w.start_frame == end - w.overlap_frames
        end = w.end_frame
    assert end == total + plan.padding_frames
    assert plan.rendered_frames == plan.segments * plan.window_frames
    if plan.segments > 1:
        assert plan.padding_frames == 0
        assert plan.overlaps == overlaps_from_totals(plan.segments, plan.window_frames, plan.overlap_frames, total)
    else:
        assert 0 <= plan.padding_frames < spec.frame_multiple
    if plan.uniform:
        n, big_l, o = plan.segments, plan.window_frames, plan.overlap_frames
        assert n * (big_l - o) + o == total + plan.padding_frames
    info = plan.to_info()
    assert (info.segments, info.window_frames, info.overlap_frames, info.total_frames) == (
        plan.segments, plan.window_frames, plan.overlap_frames, total)
    assert info.reason == plan.reason and f"T={total}" in plan.reason


@st.composite
def scenarios(draw: st.DrawFn) -> dict:
    spec = MODELS[draw(st.sampled_from(NAMES))]
    m = spec.spatial_multiple
    width = m * draw(st.integers(1, spec.max_width // m))
    height = m * draw(st.integers(1, spec.max_height // m))
    floor = window_bytes(spec, width, height, 1)  # around the smallest feasible budget, up to ~3x it
    budget = int(floor * 2 ** draw(st.floats(-0.2, 1.6)))
    return {
        "total": draw(st.integers(1, 5000)),
        "spec": spec,
        "width": width,
        "height": height,
        "budget": budget,
        "min_overlap": draw(st.one_of(st.none(), st.integers(1, 16))),
        "max_window": draw(st.one_of(st.none(), st.integers(5, 1000))),
        "ranks": draw(st.sampled_from([1, 1, 2, 4, 8])),
    }


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_plan_properties(sc: dict) -> None:
    spec, total, budget, ranks = sc["spec"], sc["total"], sc["budget"], sc["ranks"]
    o_min = sc["min_overlap"] or default_min_overlap(spec)
    cap = max_window_frames(spec, sc["width"], sc["height"], budget, ranks=ranks, max_frames=sc["max_window"])
    lo = min(cap, default_min_window(spec))
    try:
        plan = plan_segments(
            total, spec, sc["width"], sc["height"], budget_bytes=budget, min_overlap=sc["min_overlap"],
            max_window=sc["max_window"], ranks=ranks,
        )
    except PlanError:
        fits_one = total + (-(total - 1)) % spec.frame_multiple <= cap
        assert cap < 1 or (not fits_one and cap <= o_min)
        return
    check_structure(plan, spec, total, o_min)
    assert window_bytes(spec, sc["width"], sc["height"], plan.window_frames, ranks=ranks) <= budget
    if plan.segments == 1:
        assert plan.window_frames == total + plan.padding_frames <= cap
        return
    assert total + (-(total - 1)) % spec.frame_multiple > cap  # multi-window only when one cannot fit
    best = brute_force(total, spec, sc["width"], sc["height"], budget, o_min, lo, cap, ranks)
    assert best * (1 - 1e-9) <= plan.cost <= best * 1.03


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 12), st.sampled_from([64, 256, 832]))
def test_exact_multi_window_when_asked(total: int, o_min: int, width: int) -> None:
    """``prefer_single_window=False``: padding only when no exact plan exists at all."""
    spec = MODELS["wan2.1-t2v-1.3b"]
    plan = plan_segments(total, spec, width, 480, min_overlap=o_min, prefer_single_window=False)
    check_structure(plan, spec, total, o_min)
    if plan.padding_frames:
        lo = min(plan.max_window_frames, default_min_window(spec))
        assert brute_force(total, spec, width, 480, 80 * GIB, o_min, lo, plan.max_window_frames, 1) == math.inf


def test_short_videos_are_one_window() -> None:
    spec = MODELS["wan2.1-t2v-1.3b"]
    for total in range(1, 82):
        plan = plan_segments(total, spec, 832, 480)
        assert plan.segments == 1 and plan.window_frames % 4 == 1
        assert plan.padding_frames == (0 if total % 4 == 1 else plan.window_frames - total) < 4
    assert plan_segments(77, spec, 832, 480).padding_frames == 0


def test_never_costlier_than_fixed_windows_with_the_same_overlap() -> None:
    """Vanilla = windows of 77 overlapping by O_min, tail padded; ours covers T exactly."""
    for name, width, height in [("wan2.1-t2v-1.3b", 832, 480), ("wan2.1-t2v-14b", 1280, 720), ("tiny-wan", 64, 64)]:
        spec = MODELS[name]
        for total in range(1, 5001, 7):
            plan = plan_segments(total, spec, width, height)
            vanilla = fixed_window_schedule(total, 77, default_min_overlap(spec))
            v_cost = vanilla.segments * window_cost(spec, width, height, 77, spec.default_steps)
            assert plan.cost <= v_cost * 1.02 + 1e-9, (name, total, plan.reason)


def test_memory_model_monotone_and_sequence_parallel() -> None:
    spec = MODELS["wan2.1-t2v-14b"]
    sizes = [window_bytes(spec, 1280, 720, f) for f in range(1, 82, 4)]
    assert sizes == sorted(sizes)
    one = estimate_window(spec, 1280, 720, 81)
    four = estimate_window(spec, 1280, 720, 81, ranks=4)
    assert four.weights_bytes == one.weights_bytes and four.activation_bytes < one.activation_bytes / 3.9
    assert max_window_frames(spec, 1280, 720, 8 * GIB) == 0  # 14B weights alone exceed 8 GiB
    assert max_window_frames(spec, 1280, 720, 80 * GIB, max_frames=50) == 49
    tight = max_window_frames(spec, 1280, 720, 40 * GIB)
    assert 1 <= tight < 81
    assert window_bytes(spec, 1280, 720, tight) <= 40 * GIB < window_bytes(spec, 1280, 720, tight + 4)
    assert max_window_frames(spec, 1280, 720, 40 * GIB, ranks=2) > tight


def test_infeasible_plans_raise() -> None:
    spec = MODELS["wan2.1-t2v-14b"]
    with pytest.raises(PlanError, match="not even a 1-frame window"):
        plan_segments(100, spec, 1280, 720, budget_bytes=8 * GIB)
    with pytest.raises(PlanError, match="too short for an overlap"):
        plan_segments(100, spec, 1280, 720, max_window=8, min_overlap=5)
    with pytest.raises(PlanError):
        plan_segments(0, spec, 1280, 720)


def test_planner_is_fast() -> None:
    spec = MODELS["wan2.1-t2v-14b"]
    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        plan_segments(5000, spec, 1280, 720, min_window=1)
        best = min(best, time.perf_counter() - t0)
    assert best < 0.020


def test_explains_itself() -> None:
    plan = plan_segments(161, MODELS["tiny-wan"], 64, 64, budget_bytes=24 * GIB)
    assert plan.segments == 3 and plan.window_frames == 57 and plan.overlap_frames == 5
    assert plan.reason.startswith("T=161 → 3 windows of 57 with overlap 5; memory cap 81 frames at 64x64 on 24.0 GiB")
