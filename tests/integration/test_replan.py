"""A segment that does not fit the runner's GPU is re-planned mid-job, not failed or retried as is.

Runner A (no limit) renders segment 0 of a plan of 41-45-frame windows and exits; runner B, a "smaller
GPU" (``VIDEOGEN_RUNNER_MAX_WINDOW_FRAMES=25``), takes segment 1, refuses it before computing,
and asks the planner for shorter windows. The planner keeps segment 0, re-plans the rest as
revision 1, and the job finishes with exactly T frames. Real nats-server, weed mini, processes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from runtime.bus import Bus
from runtime.client import follow, status
from runtime.settings import load_settings
from runtime.stack import provision, start_servers
from runtime.storage import Storage
from runtime.video import probe_mp4
from schemas.messages import EventType, JobPlan, JobRequest, SegmentResult
from schemas.names import SUBJECT_SUBMIT, plan_key, segment_result_key
from tests.stack import start_functions, start_runner, stop, wait_for_log

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T = 97
LIMIT = 25


def _log_events(log: Path, name: str) -> list[dict[str, object]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if f'"{name}"' in line and line.startswith("{"):
            out.append(json.loads(line))
    return out


async def test_segment_over_the_runner_limit_is_replanned_mid_job(tmp_path: Path) -> None:
    settings, nats, s3 = start_servers(load_settings(data_dir=tmp_path, heartbeat_s=2.0), fixed_ports=False)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        await provision(settings, ["tiny-wan"])
        procs.append(fn := start_functions(settings, tmp_path / "functions.log"))
        procs.append(a := start_runner(settings, tmp_path / "runner-a.log", max_segments=1))
        await asyncio.to_thread(wait_for_log, tmp_path / "functions.log", '"consumer_started"', 120, fn)
        await asyncio.to_thread(wait_for_log, tmp_path / "runner-a.log", "runner_io_ready", 240, a)
        async with Bus(settings, "test-replan") as bus, Storage(settings) as storage:
            job = JobRequest(job_id="replan-97", prompt="a long take", num_frames=T, width=32, height=32, steps=1,
                             fps=16, max_segment_frames=45)
            await bus.publish(SUBJECT_SUBMIT, job.model_dump_json(exclude_none=True).encode(), msg_id=job.job_id)
            events_task = asyncio.create_task(_collect(bus, job.job_id))
            original = JobPlan.model_validate_json(await _wait_for_object(storage, plan_key(job.job_id)))
            assert len(original.windows) >= 2 and original.windows[1].frames > LIMIT
            assert await asyncio.to_thread(a.wait, 240) == 0  # renders segment 0, drains, exits cleanly
            procs.append(b := start_runner(settings, tmp_path / "runner-b.log",
                                           env_extra={"VIDEOGEN_RUNNER_MAX_WINDOW_FRAMES": str(LIMIT)}))
            async with asyncio.timeout(300):
                events = await events_task
            assert events[-1].type == EventType.SUCCEEDED, events[-1]
            assert not [e for e in events if e.type == EventType.FAILED]

            plan = JobPlan.model_validate_json(await storage.get_bytes(plan_key(job.job_id)))
            assert plan.info.revision == 1 and plan.replanned_from == 1
            assert plan.windows[0] == original.windows[0]  # segment 0 was kept, not rendered again
            assert all(w.frames <= LIMIT for w in plan.windows[1:]) and len(plan.windows) > len(original.windows)
            assert plan.windows[1].overlap_frames == original.windows[1].overlap_frames

            # one segment_completed per window of the final plan, segment 0 from revision 0
            completed = [e.data.segment for e in events if e.type == EventType.SEGMENT_COMPLETED]
            assert sorted(completed) == list(range(len(plan.windows)))
            progress = [e.data.progress for e in events if e.type == EventType.PROGRESS]
            assert progress == sorted(progress), progress  # never backwards, though segments_total grew
            results = [SegmentResult.model_validate_json(await storage.get_bytes(segment_result_key(job.job_id, i)))
                       for i in range(len(plan.windows))]
            assert [r.plan_revision for r in results] == [0] + [1] * (len(plan.windows) - 1)
            assert [r.frames for r in results] == [w.frames for w in plan.windows]
            assert results[0].runner != results[1].runner

            out = events[-1].data.output
            assert probe_mp4(await storage.get_bytes(out.key)).frames == T == out.frames
            st = await status(bus, job.job_id)
            assert st is not None and st.plan is not None and st.plan.revision == 1
            assert st.segments_done == st.segments_total == len(plan.windows)

        refusals = _log_events(tmp_path / "runner-b.log", "segment_replan_requested")
        assert len(refusals) == 1
        assert refusals[0]["frames"] == original.windows[1].frames and refusals[0]["max_window_frames"] == LIMIT
        replans = _log_events(tmp_path / "functions.log", "job_replanned")
        assert len(replans) == 1 and replans[0]["segment"] == 1 and replans[0]["revision"] == 1
        assert stop(b) == 0
    finally:
        for proc in reversed(procs):
            stop(proc)
        s3.stop()
        nats.stop()


async def _collect(bus: Bus, job_id: str) -> list:
    return [e async for e in follow(bus, job_id)]


async def _wait_for_object(storage: Storage, key: str, timeout_s: float = 60.0) -> bytes:
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                return await storage.get_bytes(key)
            except Exception:
                await asyncio.sleep(0.2)
