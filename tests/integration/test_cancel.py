"""Cancel against the session's real workers (functions + one tiny-wan runner process).

A long job (256x256, 81 frames, 100 steps: ~0.2 s per denoising step here) keeps the only runner
busy, so jobs submitted after it wait in the work queue and report queue positions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from runtime.bus import Bus
from runtime.client import cancel, follow, status, submit
from runtime.settings import Settings
from runtime.storage import Storage
from schemas.messages import CancelledData, EventType, JobEvent, JobRequest, JobState, JobStatus
from schemas.names import job_prefix, request_key
from tests.stack import REPO, child_env, poll_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LONG = {"width": 256, "height": 256, "num_frames": 81, "steps": 100, "seed": 1}
SHORT = {"width": 64, "height": 64, "num_frames": 9, "steps": 2, "seed": 2}


class Watch:
    """All events of one job, collected in the background."""

    def __init__(self, bus: Bus, job_id: str) -> None:
        self.job_id = job_id
        self.events: list[JobEvent] = []
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._run(bus))

    async def _run(self, bus: Bus) -> None:
        async for e in follow(bus, self.job_id):
            self.events.append(e)
            self.changed.set()

    async def wait(self, pred, timeout_s: float = 120.0, *, after: int = 0) -> JobEvent:
        """The first event (from index ``after`` on) matching ``pred``."""
        async with asyncio.timeout(timeout_s):
            while True:
                for e in self.events[after:]:
                    if pred(e):
                        return e
                self.changed.clear()
                await self.changed.wait()

    def types(self) -> list[EventType]:
        return [e.type for e in self.events]


async def wait_status(bus: Bus, job_id: str, pred, timeout_s: float = 30.0) -> JobStatus:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        st = await status(bus, job_id)
        if st is not None and pred(st):
            return st
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{job_id}: status not as expected after {timeout_s}s: {st}")
        await asyncio.sleep(0.2)


def log_records(path: Path, event: str, job_id: str) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if f'"{event}"' in line and job_id in line and line.startswith("{"):
            rec = json.loads(line)
            if rec.get("event") == event and rec.get("job_id") == job_id:
                out.append(rec)
    return out


def ts(rec: dict) -> float:
    return datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp()


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], env=child_env(settings), cwd=str(REPO),
                          capture_output=True, text=True, timeout=90)


async def test_queued_job_never_runs_running_job_stops_within_a_step(stack: Settings, workers, bus: Bus,
                                                                     storage: Storage) -> None:
    data = Path(stack.data_dir)
    a, b, c = "cancel-running", "cancel-q1", "cancel-q2"
    wa = Watch(bus, a)
    await submit(bus, JobRequest(job_id=a, prompt="long", **LONG))
    await wa.wait(lambda e: e.type == EventType.PROGRESS, 240)  # the runner is busy with A

    watches = {b: Watch(bus, b), c: Watch(bus, c)}
    await submit(bus, JobRequest(job_id=b, prompt="queued, then cancelled", **SHORT))
    await submit(bus, JobRequest(job_id=c, prompt="queued behind", **SHORT))
    # queued jobs report their place in the runner's work queue (preprocess and planner run
    # concurrently, so the two may reach the queue in either order)
    try:
        queued = {j: await wait_status(bus, j, lambda s: s.state == JobState.QUEUED and s.queue_position is not None)
                  for j in (b, c)}
        async with asyncio.timeout(10):
            while sorted(st.queue_position for st in queued.values()) != [0, 1]:
                await asyncio.sleep(0.2)
                queued = {j: await status(bus, j) for j in (b, c)}
    except (AssertionError, TimeoutError) as e:
        raise AssertionError(f"{e}\nB: {await status(bus, b)}\nC: {await status(bus, c)}\nA: {await status(bus, a)}"
                             f"\nrunner log: {(data / 'runner.log').read_text()[-3000:]}") from e
    b, c = sorted(queued, key=lambda j: queued[j].queue_position)  # b: next in line, c: behind it
    wb, wc = watches[b], watches[c]
    shown = await asyncio.to_thread(cli, stack, "status", b, c)
    assert shown.returncode == 0, shown.stderr
    assert re.search(rf"{b}\s+queued\s+next", shown.stdout) and re.search(rf"{c}\s+queued\s+1 ahead", shown.stdout), \
        shown.stdout

    # cancel the job next in line: the one behind moves up, the cancelled one never starts
    await cancel(bus, b, "changed my mind")
    cancelled_b = await wb.wait(lambda e: e.type == EventType.CANCELLED, 30)
    assert cancelled_b.data == CancelledData(reason="changed my mind", previous_state=JobState.QUEUED)
    await wait_status(bus, c, lambda s: s.queue_position == 0, 15)

    # cancel the running job right after one of its steps: it stops at the next step boundary
    seen = await wa.wait(lambda e: e.type == EventType.PROGRESS, 60, after=len(wa.events))
    assert seen.data.step < LONG["steps"] - 10, "the long job ended too soon to test a running cancel"
    await cancel(bus, a)
    cancelled_a = await wa.wait(lambda e: e.type == EventType.CANCELLED, 30)
    assert cancelled_a.data.previous_state == "running"

    # the runner takes the next job
    done = await wc.wait(lambda e: e.type in (EventType.SUCCEEDED, EventType.FAILED), 120)
    assert done.type == EventType.SUCCEEDED, done
    assert EventType.STARTED in wc.types()

    runner_log = data / "runner.log"
    [observed] = log_records(runner_log, "job_stop_observed", a)
    [stopped] = [r for r in log_records(runner_log, "segment_cancelled", a)]
    step_stopped = int(re.search(r"at step (\d+)/", stopped["reason"]).group(1))
    # cooperative cancel: once the runner sees the new status, at most the step in flight finishes
    assert step_stopped - observed["step"] <= 1, (observed, stopped)
    seen_to_stop_s = ts(stopped) - cancelled_a.time.timestamp()
    print(f"\ncancel of a running job: observed at step {observed['step']}, stopped at step {step_stopped}, "
          f"{seen_to_stop_s * 1000:.0f} ms after job.cancelled was built")
    assert seen_to_stop_s < 3.0
    assert step_stopped < LONG["steps"]

    # B never ran: no job.started, no runner log line, nothing but its request in S3
    await asyncio.sleep(0.5)
    assert EventType.STARTED not in wb.types() and wb.types()[-1] == EventType.CANCELLED, wb.types()
    assert b not in runner_log.read_text()
    assert await storage.list_keys(job_prefix(b)) == [request_key(b)]
    # A: no output.mp4, no segments left behind
    assert await storage.list_keys(job_prefix(a)) == [request_key(a)]
    for job_id, w in ((a, wa), (b, wb)):
        st = await status(bus, job_id)
        assert st is not None and st.state == JobState.CANCELLED and st.queue_position is None
        assert w.types().count(EventType.CANCELLED) == 1
        assert EventType.SUCCEEDED not in w.types()
    for w in (wa, wb, wc):
        w.task.cancel()


async def test_cancel_during_upload_leaves_nothing_behind(stack: Settings, workers, bus: Bus,
                                                          storage: Storage) -> None:
    """Cancelled after the last denoising step, while the runner decodes and uploads the segment."""
    job_id = "cancel-at-upload"
    w = Watch(bus, job_id)
    # 256x256x81: the VAE decode after the last step takes >10 s on CPU, the window to cancel in
    await submit(bus, JobRequest(job_id=job_id, prompt="big decode", width=256, height=256, num_frames=81,
                                 steps=2, seed=3))
    await w.wait(lambda e: e.type == EventType.PROGRESS and e.data.step == e.data.steps, 240)
    await cancel(bus, job_id)  # no step boundary is left: the runner finds out when it uploads
    await w.wait(lambda e: e.type in (EventType.CANCELLED, EventType.SUCCEEDED), 60)
    assert w.types()[-1] == EventType.CANCELLED, "the decode ended before the cancel landed"
    runner_log = Path(stack.data_dir) / "runner.log"
    await poll_until(lambda: log_records(runner_log, "segment_discarded_job_stopped", job_id),
                     timeout_s=60, interval_s=0.3)
    assert await storage.list_keys(job_prefix(job_id)) == [request_key(job_id)]
    assert not log_records(runner_log, "segment_done", job_id)
    w.task.cancel()


async def test_cancel_finished_or_unknown_job_is_a_noop(stack: Settings, workers, bus: Bus) -> None:
    fn_log = Path(stack.data_dir) / "functions.log"
    job_id = "cancel-after-success"
    await submit(bus, JobRequest(job_id=job_id, prompt="quick", **SHORT))
    async with asyncio.timeout(120):
        events = [e async for e in follow(bus, job_id)]
    assert events[-1].type == EventType.SUCCEEDED
    before = await status(bus, job_id)

    done = await asyncio.to_thread(cli, stack, "cancel", job_id)
    assert done.returncode == 0 and "cancel requested" in done.stdout
    await cancel(bus, "no-such-job")
    await poll_until(lambda: log_records(fn_log, "cancel_ignored", job_id)
                     and log_records(fn_log, "cancel_ignored", "no-such-job"), timeout_s=30, interval_s=0.2)
    [finished] = log_records(fn_log, "cancel_ignored", job_id)
    assert finished["why"] == "job already succeeded"
    [unknown] = log_records(fn_log, "cancel_ignored", "no-such-job")
    assert unknown["why"].startswith("unknown job")
    after = await status(bus, job_id)
    assert after == before  # untouched: still succeeded, same revision content
    again = []
    with contextlib.suppress(TimeoutError):
        async for e in follow(bus, job_id, until_terminal=False, idle_timeout_s=1.0):
            again.append(e)
    assert [e.type for e in again] == [e.type for e in events]  # no job.cancelled after job.succeeded
    assert await status(bus, "no-such-job") is None
