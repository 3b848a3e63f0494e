"""Re-planning after an out-of-memory: the rendered head is kept, the rest is covered exactly
again with shorter windows, conditioning and overlaps stay consistent, revisions go up."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from functions.planner.handler import make_plan, progress_after, segment_job
from functions.planner.plan import default_min_overlap
from functions.planner.replan import ReplanError, replan
from gpu_runner.io import segment_progress
from gpu_runner.oom import OomStreak, largest_window_at_most, plan_after_oom
from runtime.queue import parse_msg_id
from schemas.errors import ErrorCode
from schemas.messages import JobPlan, ObjectRef, PlanRequest, ReplanHint, ResolvedJob, Task
from schemas.names import replan_msg_id, segment_done_msg_id, segment_msg_id
from schemas.registry import MODELS

TINY = MODELS["tiny-wan"]
WAN = MODELS["wan2.1-t2v-14b"]


def job(num_frames: int, *, model: str = "tiny-wan", width: int = 32, height: int = 32,
        max_segment_frames: int | None = None) -> ResolvedJob:
    return ResolvedJob(job_id="j1", task=Task.T2V, model=model, prompt="p", negative_prompt="", width=width,
                       height=height, num_frames=num_frames, fps=8, steps=2, guidance_scale=1.0, seed=7,
                       presign_ttl_s=3600, max_segment_frames=max_segment_frames)


def hint(plan: JobPlan, index: int, max_window: int) -> ReplanHint:
    w = plan.windows[index]
    return ReplanHint(index=index, plan_revision=plan.info.revision, failed_frames=w.frames,
                      max_window_frames=max_window, reason="test", runner="r1", segment_seq=3)


def check_plan(plan: JobPlan) -> None:
    """Exact coverage of T, valid windows, consistent starts/overlaps (the stitcher's invariants)."""
    spec = MODELS[plan.job.model]
    end = 0
    for i, w in enumerate(plan.windows):
        assert w.index == i and spec.valid_window(w.frames)
        if i == 0:
            assert w.start_frame == 0 and w.overlap_frames == 0
        else:
            assert 0 < w.overlap_frames < w.frames and w.start_frame == end - w.overlap_frames
        end = w.start_frame + w.frames
    assert end == plan.job.num_frames + plan.padding_frames
    assert plan.padding_frames < spec.frame_multiple
    assert plan.info.segments == len(plan.windows) and plan.info.total_frames == plan.job.num_frames


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(total=st.integers(2, 700), user_cap=st.sampled_from([None, 45, 61, 81]), data=st.data())
def test_replan_keeps_head_and_covers_the_rest_exactly(total: int, user_cap: int | None, data: st.DataObject) -> None:
    plan = make_plan(PlanRequest(job=job(total, max_segment_frames=user_cap)), None)
    check_plan(plan)
    index = data.draw(st.integers(0, len(plan.windows) - 1), label="index")
    failed = plan.windows[index]
    o_min = default_min_overlap(TINY)
    floor = failed.overlap_frames + 1 if index else 1
    if failed.frames - 1 < max(floor, o_min + 1):
        return
    cap = data.draw(st.integers(max(floor, o_min + 1), failed.frames - 1), label="cap")
    try:
        new = replan(plan, hint(plan, index, cap))
    except ReplanError as e:
        assert e.code == ErrorCode.OUT_OF_MEMORY
        return
    check_plan(new)
    assert new.windows[:index] == plan.windows[:index]  # rendered segments are kept as they are
    first = new.windows[index]
    assert first.start_frame == failed.start_frame and first.overlap_frames == failed.overlap_frames
    assert all(w.frames <= cap for w in new.windows[index:])
    assert all(w.overlap_frames >= o_min for w in new.windows[index + 1:])
    assert new.info.revision == plan.info.revision + 1 and new.replanned_from == index
    # segments of the new revision say so; progress in frames never moves back across the re-plan
    assert segment_job(new, index, None).plan_revision == new.info.revision
    if index:
        assert progress_after(new, index - 1) == progress_after(plan, index - 1)
    assert progress_after(new, len(new.windows) - 1) == 98.0


def test_replan_example_at_a_middle_segment() -> None:
    plan = make_plan(PlanRequest(job=job(161, max_segment_frames=45)), None)
    assert [w.frames for w in plan.windows] == [45] * len(plan.windows) and len(plan.windows) >= 4
    tail = ObjectRef(bucket="videogen", key="jobs/j1/segments/0.tail.npy")
    h = hint(plan, 1, 25).model_copy(update={"condition": tail})
    new = replan(plan, h)
    assert new.windows[0] == plan.windows[0]
    assert {w.frames for w in new.windows[1:]} <= set(range(1, 26)) and len(new.windows) > len(plan.windows)
    assert "revision 1" in new.info.reason and new.info.revision == 1
    seg = segment_job(new, 1, h.condition)
    assert seg.condition == tail and seg.overlap_frames == plan.windows[1].overlap_frames
    assert seg.count == len(new.windows)
    # a second out-of-memory on the new revision re-plans again, from wherever it happens
    again = replan(new, hint(new, 2, 17))
    assert again.info.revision == 2 and again.windows[:2] == new.windows[:2]
    assert all(w.frames <= 17 for w in again.windows[2:])


def test_replan_refuses_what_cannot_work() -> None:
    plan = make_plan(PlanRequest(job=job(161, max_segment_frames=45)), None)
    with pytest.raises(ReplanError, match="not below"):
        replan(plan, hint(plan, 1, 45))  # not shorter than what failed
    with pytest.raises(ReplanError, match="overlap"):
        replan(plan, hint(plan, 1, plan.windows[1].overlap_frames))  # cannot get past the overlap
    with pytest.raises(ReplanError, match="not in the plan"):
        replan(plan, hint(plan, 0, 21).model_copy(update={"index": 99}))
    # a long job whose windows must shrink below the overlap floor: no plan, out_of_memory
    with pytest.raises(ReplanError) as info:
        replan(plan, hint(plan, 0, 5))
    assert info.value.code == ErrorCode.OUT_OF_MEMORY


def test_single_window_job_replans_into_several() -> None:
    plan = make_plan(PlanRequest(job=job(81)), None)
    assert len(plan.windows) == 1 and plan.windows[0].frames == 81
    new = replan(plan, hint(plan, 0, 41))
    check_plan(new)
    assert len(new.windows) >= 2 and all(w.frames <= 41 for w in new.windows)


def test_runner_progress_is_in_frames_and_monotonic_across_segments() -> None:
    plan = make_plan(PlanRequest(job=job(161, max_segment_frames=45)), None)
    seen = []
    for i in range(len(plan.windows)):
        seg = segment_job(plan, i, None)
        seen += [segment_progress(seg, s, 4) for s in range(5)]
        assert segment_progress(seg, 4, 4) == progress_after(plan, i)
    assert seen == sorted(seen) and seen[-1] == 98.0 and seen[0] == 0.0


def test_plan_after_oom_with_a_runner_limit() -> None:
    assert largest_window_at_most(25, WAN) == 25 and largest_window_at_most(24, WAN) == 21
    assert largest_window_at_most(0, WAN) == 0
    known = plan_after_oom(81, WAN, device_cap=50)
    assert known.action == "replan" and known.replan_max_window == 49  # straight to the limit
    assert plan_after_oom(81, WAN, device_cap=100).replan_max_window == 77  # below what failed
    assert plan_after_oom(81, WAN, device_cap=10).action == "fail"  # under the 17-frame floor


def test_oom_streak_needs_several_jobs() -> None:
    streak = OomStreak(limit=3)
    assert not streak.record("a") and not streak.record("a") and not streak.record("a")  # one job: its windows
    streak.succeeded()
    assert not streak.record("a") and not streak.record("b")
    assert streak.record("c")  # three in a row across jobs: the GPU is short
    streak.succeeded()
    assert streak.jobs == []


def test_message_ids_carry_the_revision() -> None:
    assert segment_msg_id("j", 3) == "seg:j:3" and segment_done_msg_id("j", 3) == "done:j:3"
    assert segment_msg_id("j", 3, 2) == "seg:j:3:r2" and segment_done_msg_id("j", 3, 1) == "done:j:3:r1"
    assert replan_msg_id("j", 3, 0) == "replan:j:3:r0"
    # the queue-position tracker reads segment ids of every revision
    assert parse_msg_id("seg:my-job:3") == ("my-job", 3)
    assert parse_msg_id("seg:my-job:3:r2") == ("my-job", 3)
    assert parse_msg_id("seg:r:3:r2") == ("r", 3)
    assert parse_msg_id("done:my-job:3") is None and parse_msg_id("seg:x:y") is None
