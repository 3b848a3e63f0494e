"""A segment's retry budget is the renders started (KV videogen-renders), not JetStream deliveries.

Real nats-server + S3, ``RunnerIO`` on a model no real runner serves. A delivery that never
reached the model (a runner that died idle or before its render; simulated by a nak without
``begin_render``) costs the segment nothing; renders that ended with their runner gone (no ack,
no failure reported; simulated by a nak after ``begin_render``) do, and the delivery after the
last of them fails the job without rendering again. Also: a redelivered segment whose result an
earlier delivery stored is handed off again, not rendered; presence is announced.
"""

from __future__ import annotations

import time

import pytest

from gpu_runner.io import RunnerIO
from runtime.liveness import live_runners, model_token
from runtime.settings import Settings
from schemas.messages import (
    EventType,
    JobEvent,
    JobState,
    ObjectRef,
    ResolvedJob,
    SegmentJob,
    SegmentResult,
    StartedData,
    Task,
)
from schemas.names import RENDER_ATTEMPTS, segment_msg_id, segment_result_key, segments_subject

pytestmark = [pytest.mark.integration]

MODEL = "budgettest"


def _job(job_id: str) -> SegmentJob:
    job = ResolvedJob(job_id=job_id, task=Task.T2V, model=MODEL, prompt="p", negative_prompt="", width=32,
                      height=32, num_frames=9, fps=8, steps=1, guidance_scale=1.0, seed=1, presign_ttl_s=3600)
    return SegmentJob(job=job, index=0, count=1, start_frame=0, frames=9, seed=1)


def test_only_started_renders_count_against_the_segment(stack: Settings) -> None:
    io = RunnerIO(stack, MODEL, runner_id="test-budget")
    io.start()
    try:
        seg = _job("budget-1")
        job_id = seg.job.job_id
        assert io.tracker is not None
        io.call(io.tracker.record(JobEvent.build(job_id, EventType.STARTED, StartedData(segment=0, runner="t"))))
        io.call(io.bus.publish(segments_subject(MODEL), seg, msg_id=segment_msg_id(job_id, 0)))
        # five deliveries lost before any render (idle deaths, failed input fetches): free
        for n in range(1, 6):
            active = io.next_segment(timeout_s=10)
            assert active is not None and active.item.num_delivered == n
            io.call(active.item.nak(0))
            io._release(active)
        assert io.call(io.attempts.count(job_id, 0)) == 0
        # RENDER_ATTEMPTS renders, each "crashing" (no ack, no reported failure)
        for r in range(1, RENDER_ATTEMPTS + 1):
            active = io.next_segment(timeout_s=10)
            assert active is not None, f"render {r} never delivered"
            io.begin_render(active)  # on the I/O thread, while compute would start
            io.call(io._counted(active))
            assert active.item.attempts == r
            assert active.item.final_attempt == (r == RENDER_ATTEMPTS)
            io.call(active.item.nak(0))
            io._release(active)
        assert io.call(io.attempts.count(job_id, 0)) == RENDER_ATTEMPTS
        # the next delivery does not render: the job fails (retryable, max_deliveries) and the
        # segment is terminated
        assert io.next_segment(timeout_s=10) is None
        status, _ = io.call(io.tracker.status.get(job_id))
        assert status is not None and status.state == JobState.FAILED
        assert status.error is not None and status.error.code == "max_deliveries" and status.error.retryable
        assert "renders started" in status.error.message
        assert io.next_segment(timeout_s=2) is None  # terminated, not delivered again
        # presence: this runner is announced for its model
        live = io.call(live_runners(io.bus))
        assert live.get(model_token(MODEL), 0) >= 1
    finally:
        io.close()
    # withdrawn on close
    io2 = RunnerIO(stack, "budgetcheck", runner_id="probe")
    io2.start()
    try:
        assert io2.call(live_runners(io2.bus)).get(model_token(MODEL), 0) == 0
    finally:
        io2.close()


def test_a_redelivered_segment_already_stored_is_not_rendered_again(stack: Settings) -> None:
    io = RunnerIO(stack, MODEL, runner_id="test-stored")
    io.start()
    try:
        seg = _job("budget-2")
        job_id = seg.job.job_id
        assert io.tracker is not None
        io.call(io.tracker.record(JobEvent.build(job_id, EventType.STARTED, StartedData(segment=0, runner="t"))))
        result = SegmentResult(job_id=job_id, index=0, count=1, segment=ObjectRef(bucket=stack.bucket, key="x"),
                               tail=None, frames=9, overlap_frames=0, width=32, height=32, fps=8, sha256="0" * 64,
                               runner="earlier", elapsed_s=1.0, plan_revision=0)
        io.call(io.storage.put_bytes(segment_result_key(job_id, 0), result.model_dump_json().encode(),
                                     "application/json"))
        io.call(io.bus.publish(segments_subject(MODEL), seg, msg_id=segment_msg_id(job_id, 0)))
        first = io.next_segment(timeout_s=10)  # a first delivery is never checked (no extra GET)
        assert first is not None
        io.call(first.item.nak(0))  # "died before its ack"
        io._release(first)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10:
            again = io.next_segment(timeout_s=2)
            assert again is None  # handed off from the stored result, acked: nothing to render
            pending, ack_pending = io.call(io.bus.pending("VIDEOGEN_SEGMENTS", io.puller.spec.durable))  # type: ignore[union-attr]
            if pending == 0 and ack_pending == 0:
                break
        assert io.call(io.attempts.count(job_id, 0)) == 0
    finally:
        io.close()
