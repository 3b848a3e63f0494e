"""Long videos: a job planned into several chained segments, stitched to exactly T frames,
with segments taken by different runners."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runtime.bus import Bus
from runtime.client import follow, status
from runtime.settings import Settings
from runtime.storage import Storage
from runtime.video import probe_mp4
from schemas.messages import EventType, JobPlan, JobRequest, SegmentResult
from schemas.names import SUBJECT_SUBMIT, plan_key, segment_result_key
from tests.stack import start_runner, stop, wait_for_log

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def _run(bus: Bus, job: JobRequest, timeout_s: float = 300):
    await bus.publish(SUBJECT_SUBMIT, job.model_dump_json(exclude_none=True).encode(), msg_id=job.job_id)
    async with asyncio.timeout(timeout_s):
        return [e async for e in follow(bus, job.job_id)]


async def test_161_frames_in_three_or_more_segments_by_two_runners(stack: Settings, workers, bus: Bus,
                                                                   storage: Storage) -> None:
    data = Path(stack.data_dir)
    second = start_runner(stack, data / "runner-b.log")
    try:
        wait_for_log(data / "runner-b.log", "runner_io_ready", 240, second)
        job = JobRequest(job_id="long-161", prompt="a long take", num_frames=161, width=32, height=32,
                         steps=1, fps=16, max_segment_frames=45)
        events = await _run(bus, job)
    finally:
        stop(second)
    types = [e.type for e in events]
    assert types[-1] == EventType.SUCCEEDED, events[-1]
    plan = JobPlan.model_validate_json(await storage.get_bytes(plan_key("long-161")))
    n = len(plan.windows)
    assert n >= 3 and all(w.frames <= 45 and (w.frames - 1) % 4 == 0 for w in plan.windows)
    # exact coverage: N windows minus the shared overlaps is T
    assert sum(w.frames for w in plan.windows) - sum(w.overlap_frames for w in plan.windows) == 161
    completed = [e for e in events if e.type == EventType.SEGMENT_COMPLETED]
    assert sorted(e.data.segment for e in completed) == list(range(n))
    # progress never goes backwards and covers the whole job
    progress = [e.data.progress for e in events if e.type == EventType.PROGRESS]
    assert progress == sorted(progress) and progress[-1] > 90
    out = events[-1].data.output
    info = probe_mp4(await storage.get_bytes(out.key))
    assert info.frames == 161 == out.frames
    results = [SegmentResult.model_validate_json(await storage.get_bytes(segment_result_key("long-161", i)))
               for i in range(n)]
    assert len({r.runner for r in results}) == 2, [r.runner for r in results]
    # each segment after the first was conditioned on the previous one's tail
    assert all(r.tail is not None for r in results[:-1]) and results[-1].tail is None
    st = await status(bus, "long-161")
    assert st is not None and st.segments_done == st.segments_total == n and st.plan is not None
