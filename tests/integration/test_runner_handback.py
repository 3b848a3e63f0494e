"""A segment handed back (shutdown, GPU short) on its last delivery is failed and dead-lettered,
not nak'ed into a message JetStream will never deliver again. Real nats-server + S3, RunnerIO."""

from __future__ import annotations

import base64

import pytest

from gpu_runner.io import RunnerIO
from runtime.settings import Settings
from schemas.messages import DLQEntry, EventType, JobEvent, JobState, ResolvedJob, SegmentJob, StartedData, Task
from schemas.names import STREAM_DLQ, dlq_subject, runner_consumer, segment_msg_id, segments_subject

pytestmark = [pytest.mark.integration]

MODEL = "handbacktest"  # its own subject and consumer: no real runner serves it


def test_hand_back_on_the_last_delivery_fails_the_job_and_dead_letters(stack: Settings) -> None:
    io = RunnerIO(stack, MODEL, runner_id="test-handback")
    io.start()
    try:
        job = ResolvedJob(job_id="handback-1", task=Task.T2V, model=MODEL, prompt="p", negative_prompt="", width=32,
                          height=32, num_frames=9, fps=8, steps=1, guidance_scale=1.0, seed=1, presign_ttl_s=3600)
        assert io.tracker is not None
        io.call(io.tracker.record(JobEvent.build(job.job_id, EventType.STARTED, StartedData(segment=0, runner="t"))))
        seg = SegmentJob(job=job, index=0, count=1, start_frame=0, frames=9, seed=1)
        io.call(io.bus.publish(segments_subject(MODEL), seg, msg_id=segment_msg_id(job.job_id, 0)))
        max_deliver = runner_consumer(MODEL).max_deliver
        for n in range(1, max_deliver + 1):
            active = io.next_segment(timeout_s=10)
            assert active is not None, f"delivery {n} never came"
            assert active.item.num_delivered == n
            io.hand_back(active, delay_s=0)  # e.g. SIGTERM mid-segment, every time
        assert io.next_segment(timeout_s=2) is None  # terminated: not delivered again

        status, _ = io.call(io.tracker.status.get(job.job_id))
        assert status is not None and status.state == JobState.FAILED
        assert status.error is not None and status.error.code == "max_deliveries" and status.error.retryable

        async def dlq() -> DLQEntry:
            sub = await io.bus.js.pull_subscribe(dlq_subject("runner"), stream=STREAM_DLQ)
            try:
                for _ in range(20):
                    for m in await sub.fetch(20, timeout=2):
                        entry = DLQEntry.model_validate_json(m.data)
                        if entry.job_id == job.job_id:
                            return entry
            finally:
                await sub.unsubscribe()
            raise AssertionError("no DLQ entry")

        entry = io.call(dlq())
        assert entry.num_delivered == max_deliver and entry.code == "max_deliveries"
        assert SegmentJob.model_validate_json(base64.b64decode(entry.payload_b64)) == seg
    finally:
        io.close()
