"""Rank 0's I/O in a child process (``gpu_runner.io_process.IOProcess``), on a real nats-server + S3:
a one-window job taken, rendered frames handed over through shared memory and the job completed by
the I/O process itself; a cancel reaching the compute side as a flag; a dead child ending the runner."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from gpu_runner.io_process import IOProcess, IOProcessGone
from runtime.bus import Bus
from runtime.client import follow
from runtime.jobs import JobTracker
from runtime.settings import Settings
from runtime.storage import Storage
from runtime.video import decode_mp4
from schemas.messages import (
    CancelledData,
    EventType,
    JobEvent,
    JobState,
    JobStatus,
    ResolvedJob,
    SegmentJob,
    StartedData,
    Task,
)
from schemas.names import output_key, segment_msg_id, segments_subject, thumbnail_key

pytestmark = [pytest.mark.integration]

MODEL = "ioproctest"  # its own subject and consumer: no real runner serves it
T = TypeVar("T")


def _job(job_id: str, frames: int = 9) -> ResolvedJob:
    return ResolvedJob(job_id=job_id, task=Task.T2V, model=MODEL, prompt="p", negative_prompt="", width=32,
                       height=32, num_frames=frames, fps=8, steps=2, guidance_scale=1.0, seed=1, presign_ttl_s=3600)


def _with(settings: Settings, fn: Callable[[Bus, Storage, JobTracker], Awaitable[T]]) -> T:
    async def go() -> T:
        async with Bus(settings, "test-ioproc") as bus, Storage(settings) as storage:
            return await fn(bus, storage, JobTracker(bus, storage))

    return asyncio.run(go())


def _queue(settings: Settings, job: ResolvedJob) -> None:
    async def go(bus: Bus, _s: Storage, tracker: JobTracker) -> None:
        await tracker.record(JobEvent.build(job.job_id, EventType.STARTED, StartedData(segment=0, runner="t")))
        seg = SegmentJob(job=job, index=0, count=1, start_frame=0, frames=job.num_frames, seed=1)
        await bus.publish(segments_subject(MODEL), seg, msg_id=segment_msg_id(job.job_id, 0))

    _with(settings, go)


def _status(settings: Settings, job_id: str) -> JobStatus | None:
    async def go(_b: Bus, _s: Storage, tracker: JobTracker) -> JobStatus | None:
        return (await tracker.status.get(job_id))[0]

    return _with(settings, go)


def _wait(pred: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if got := pred():
            return got
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def test_a_one_window_job_is_completed_by_the_io_process(stack: Settings) -> None:
    io = IOProcess(stack, MODEL, runner_id="test-ioproc")
    io.start()
    try:
        assert io.connected()
        job = _job("ioproc-1")
        _queue(stack, job)
        active = io.next_segment(timeout_s=10)
        assert active is not None and active.job.job.job_id == job.job_id and not active.cancelled
        inputs = io.fetch_inputs(active)
        assert inputs.condition is None and inputs.image is None  # t2v: nothing to fetch
        io.begin_render(active)
        for step in (1, 2):
            io.progress(active, step, 2)
        frames = np.random.default_rng(0).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
        io.submit_result(active, frames, 0.05)  # returns at once; the child encodes and stores
        status = _wait(lambda: (st := _status(stack, job.job_id)) is not None and st.state.terminal and st,
                       60, "job completed")
        assert status.state == JobState.SUCCEEDED and status.output is not None
        assert status.output.key == output_key(job.job_id) and status.output.frames == 9

        async def check(bus: Bus, storage: Storage, _t: JobTracker) -> list[EventType]:
            video = decode_mp4(await storage.get_bytes(output_key(job.job_id)))
            assert video.shape == (9, 32, 32, 3)
            assert (await storage.head(thumbnail_key(job.job_id))).size > 0
            return [e.type async for e in follow(bus, job.job_id)]

        types = _with(stack, check)
        assert types[-2:] == [EventType.SEGMENT_COMPLETED, EventType.SUCCEEDED], types
        assert io.pending_uploads() == 0
        # no shared-memory segment left behind (the child unlinks each one after copying it)
        assert not [p for p in Path("/dev/shm").glob("psm_*") if p.stat().st_uid == os.getuid()
                    and p.stat().st_mtime > time.time() - 60]
    finally:
        io.close()


def test_a_cancel_reaches_the_compute_side_as_a_flag(stack: Settings) -> None:
    io = IOProcess(stack, MODEL, runner_id="test-ioproc-cancel")
    io.start()
    try:
        job = _job("ioproc-cancel")
        _queue(stack, job)
        active = io.next_segment(timeout_s=10)
        assert active is not None and not active.cancelled

        async def cancel(_b: Bus, _s: Storage, tracker: JobTracker) -> None:
            await tracker.record(JobEvent.build(job.job_id, EventType.CANCELLED,
                                                CancelledData(reason="test", previous_state=JobState.RUNNING)))

        _with(stack, cancel)
        t0 = time.monotonic()
        _wait(lambda: active.cancelled, 10, "cancel flag")  # what the step callback reads, no round trip
        assert time.monotonic() - t0 < 5
        io.abandon(active)
        assert io.next_segment(timeout_s=1) is None  # acked: not redelivered
    finally:
        io.close()


def test_a_dead_io_process_ends_the_runner(stack: Settings) -> None:
    io = IOProcess(stack, MODEL, runner_id="test-ioproc-dead")
    io.start()
    pid = io.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: not io.connected(), 10, "child gone")
    t0 = time.monotonic()
    with pytest.raises(IOProcessGone, match="gone"):
        io.next_segment(timeout_s=5)
    assert time.monotonic() - t0 < 3  # noticed at once, not after the call's timeout
    io.close()


def test_the_runner_is_named_after_rank_0_not_its_io_child(stack: Settings) -> None:
    io = IOProcess(stack, MODEL)
    assert io.runner_id.endswith(f"-{os.getpid()}")  # what job.started and presence carry
    io.start()
    try:
        assert io.pid != os.getpid()
    finally:
        io.close()


def test_a_segment_comes_with_its_inputs_or_why_not(stack: Settings) -> None:
    """The child fetches a segment's inputs before it hands the segment over (one round trip): the
    arrays come with it, and a fetch that failed is raised by ``fetch_inputs`` (the runner fails the
    segment there, as with the thread I/O)."""
    io = IOProcess(stack, MODEL, runner_id="test-ioproc-inputs")
    io.start()
    try:
        tail = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)

        async def queue(bus: Bus, storage: Storage, _t: JobTracker) -> None:
            import io as iomod

            buf = iomod.BytesIO()
            np.save(buf, tail, allow_pickle=False)
            ref = await storage.put_bytes("jobs/ioproc-in/segments/0.tail.npy", buf.getvalue())
            missing = storage.ref("jobs/ioproc-in/segments/9.tail.npy")
            for k, cond in ((1, ref), (2, missing)):
                seg = SegmentJob(job=_job("ioproc-in", 25), index=k, count=3, start_frame=8 * k, frames=9, seed=1,
                                 overlap_frames=2, condition=cond)
                await bus.publish(segments_subject(MODEL), seg, msg_id=segment_msg_id("ioproc-in", k))

        _with(stack, queue)
        got = io.next_segment(timeout_s=10)
        assert got is not None and got.job.index == 1
        assert got.inputs is not None and got.inputs.condition is not None  # no second call needed
        assert np.array_equal(io.fetch_inputs(got).condition, tail)
        io.abandon(got)
        bad = io.next_segment(timeout_s=10)
        assert bad is not None and bad.job.index == 2 and bad.inputs is None
        with pytest.raises(Exception, match="9.tail.npy"):
            io.fetch_inputs(bad)
        io.abandon(bad)
    finally:
        io.close()
