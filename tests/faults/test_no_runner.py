"""Nothing waits silently (issue 16): a job for a model no live runner serves gets a clear status
reason at once and ``job.failed`` ``no_runner`` (retryable) after ``no_runner_timeout_s`` (8 s
here); its waiting segment leaves the queue. ``queue_position`` is set as the job enters the
queue. An input fetch being retried names its error and next attempt in the status."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from runtime.bus import Bus
from runtime.client import status, submit
from schemas.messages import JobRequest, JobState
from schemas.names import STREAM_SEGMENTS, runner_consumer
from tests.faults.harness import fault_stack, figure, wait_jobs

TIMEOUT_S = 8


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_no_live_runner_is_said_then_fails_and_input_retries_are_visible(tmp_path: Path) -> None:
    with fault_stack(tmp_path, functions_env={"VIDEOGEN_NO_RUNNER_TIMEOUT_S": str(TIMEOUT_S)}) as fs:
        async with Bus(fs.settings, "fault-test") as bus:
            t0 = time.monotonic()
            await submit(bus, JobRequest(job_id="nobody-home", prompt="p", width=64, height=64, num_frames=9,
                                         steps=2))
            queued = (await wait_jobs(bus, ["nobody-home"], lambda s: s.state == JobState.QUEUED
                                      and s.waiting_reason is not None, 30))["nobody-home"]
            said_s = time.monotonic() - t0
            assert "no live runner for model tiny-wan" in (queued.waiting_reason or "")
            assert queued.queue_position == 0
            failed = (await wait_jobs(bus, ["nobody-home"], timeout_s=TIMEOUT_S + 20))["nobody-home"]
            failed_s = time.monotonic() - t0
            assert failed.state == JobState.FAILED and failed.error is not None
            assert failed.error.code == "no_runner" and failed.error.retryable
            pending, _ = await bus.pending(STREAM_SEGMENTS, runner_consumer("tiny-wan").durable)
            assert pending == 0  # no runner started later renders a failed job

            # an input fetch that keeps failing: the status says so, with the next attempt
            url = f"http://127.0.0.1:{closed_port()}/ref.png"
            await submit(bus, JobRequest(job_id="input-down", task="i2v", model="tiny-wan-i2v", prompt="p",
                                         image=url, width=64, height=64, num_frames=9, steps=2))
            t1 = time.monotonic()
            st = (await wait_jobs(bus, ["input-down"], lambda s: s.waiting_reason is not None, 30))["input-down"]
            retry_said_s = time.monotonic() - t1
            assert st.state == JobState.PREPROCESSING
            assert "attempt 1 of" in (st.waiting_reason or "") and "next attempt at" in (st.waiting_reason or "")
            assert (await status(bus, "input-down")) is not None
        figure("no_runner", reason_after_s=round(said_s, 1), failed_after_s=round(failed_s, 1),
               no_runner_timeout_s=TIMEOUT_S, input_retry_visible_after_s=round(retry_said_s, 1))
        assert failed_s <= TIMEOUT_S + 15
