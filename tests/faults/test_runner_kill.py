"""Failure detected in seconds (issue 16): a runner kill -9'd mid-segment loses its segment to the
other runner within the 10 s ack wait (heartbeats every 3 s from rank 0's I/O process stop with
it); a runner kill -9'd while idle costs the next job no render attempt and no failure.

Figures: kill -> redelivered, kill -> job succeeded; idle kill -> next job's submit -> success."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from runtime.bus import Bus
from runtime.client import stream_messages
from runtime.liveness import RenderAttempts
from schemas.messages import EventType, JobEvent, JobState, StartedData
from schemas.names import RUNNER_ACK_WAIT_S, STREAM_EVENTS, events_subject
from tests.faults.harness import Runner, fault_stack, figure, submit_jobs, wait_jobs

# one segment that renders for several seconds on a shared CPU
LONG = {"width": 128, "height": 128, "num_frames": 33, "steps": 40, "seed": 1}
SHORT = {"width": 64, "height": 64, "num_frames": 9, "steps": 2, "seed": 2}


async def started_runner(bus: Bus, job_id: str) -> str:
    async for m in stream_messages(bus, STREAM_EVENTS, events_subject(job_id)):
        ev = JobEvent.model_validate_json(m.data)
        if ev.type == EventType.STARTED:
            return ev.payload(StartedData).runner
    raise AssertionError(f"{job_id}: no job.started")


def holder(runners: list[Runner], runner_id: str) -> Runner:
    pid = int(runner_id.rsplit("-", 1)[1])
    for r in runners:
        if pid in r.ranks():
            return r
    raise AssertionError(f"no runner has rank pid {pid}")


def ts(rec: dict) -> float:
    return datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp()


async def test_runner_killed_mid_segment_and_idle(tmp_path: Path) -> None:
    with fault_stack(tmp_path) as fs:
        a, b = fs.start_runner(), fs.start_runner()
        async with Bus(fs.settings, "fault-test") as bus:
            # ---- mid-segment --------------------------------------------------------------
            (job,) = await submit_jobs(bus, "kill-mid", 1, **LONG)
            await wait_jobs(bus, [job], lambda s: s.state == JobState.RUNNING and s.progress > 0, 120)
            victim = holder([a, b], await started_runner(bus, job))
            survivor = b if victim is a else a
            t_kill = time.time()
            victim.kill9()
            st = (await wait_jobs(bus, [job], timeout_s=120))[job]
            t_done = time.time()
            assert st.state == JobState.SUCCEEDED, st
            retry = [r for r in fs.log_lines("segment_render_retry") if r.get("job_id") == job]
            assert retry, "the segment was not rendered again by the other runner"
            redelivered_s = ts(retry[0]) - t_kill
            renders = await RenderAttempts(bus).count(job, 0)
            figure("runner_kill9_mid_segment", kill_to_redelivered_s=round(redelivered_s, 1),
                   kill_to_success_s=round(t_done - t_kill, 1), render_attempts=renders,
                   ack_wait_s=RUNNER_ACK_WAIT_S)
            assert redelivered_s <= RUNNER_ACK_WAIT_S + 6, redelivered_s  # ack wait + one pull + slack
            assert renders == 2  # the killed render and the one that finished
            assert fs.renders()[(job, 0)] == 1  # only one render finished

            # ---- idle -----------------------------------------------------------------------
            c = fs.start_runner()
            t_kill = time.time()
            survivor.kill9()  # idle: waiting in a pull
            jobs = await submit_jobs(bus, "kill-idle", 3, **SHORT)
            done = await wait_jobs(bus, jobs, timeout_s=90)
            t_done = time.time()
            assert all(s.state == JobState.SUCCEEDED for s in done.values()), done
            attempts = [await RenderAttempts(bus).count(j, 0) for j in jobs]
            figure("runner_kill9_idle", kill_to_all_succeeded_s=round(t_done - t_kill, 1), jobs=len(jobs),
                   render_attempts=attempts)
            assert attempts == [1, 1, 1]  # a delivery lost to the dead runner costs no render
            assert t_done - t_kill <= RUNNER_ACK_WAIT_S + 30
            assert c.proc.poll() is None
