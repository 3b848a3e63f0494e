"""A message whose worker is killed on every delivery is not lost: after the consumer's last
delivery JetStream publishes a max-deliveries advisory, the sweeper dead-letters the message with
its payload, fails the job (``max_deliveries``, retryable) and removes it from the work queue.

Real nats-server; the workers are real processes killed with SIGKILL while holding the message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from functions.sweeper.handler import fails_job, stage_of
from runtime.bus import Bus
from runtime.client import status
from runtime.jobs import JobTracker
from schemas.messages import (
    DLQEntry,
    EventType,
    JobEvent,
    JobState,
    JobStatus,
    ResolvedJob,
    SegmentJob,
    StartedData,
    Task,
)
from schemas.names import STREAM_DLQ, STREAM_SEGMENTS, ConsumerSpec, dlq_subject, segments_subject
from tests.stack import REPO, child_env, poll_until

pytestmark = [pytest.mark.integration]

MODEL = "strandtest"  # a subject of its own: no real runner serves it
DURABLE = f"runner-{MODEL}"
SPEC = ConsumerSpec(STREAM_SEGMENTS, DURABLE, segments_subject(MODEL), ack_wait_s=1, max_deliver=2,
                    description="test: a runner that dies on every delivery")

WORKER = """
import asyncio, sys
from runtime.bus import Bus
from runtime.settings import load_settings
from runtime.work import Puller
from schemas.names import ConsumerSpec

async def main():
    async with Bus(load_settings(), "strand-worker") as bus:
        puller = Puller(bus, ConsumerSpec(sys.argv[2], sys.argv[1], "", ack_wait_s=1, max_deliver=2), stage="t")
        await puller.open(ensure=False)  # the test made the consumer
        while True:
            item = await puller.next(timeout_s=2)
            if item is None:
                continue
            print("holding", item.num_delivered, flush=True)  # and never acks: killed here
            await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_stage_mapping() -> None:
    assert stage_of("runner-wan2_1-t2v-14b") == "runner" and stage_of("stitch") == "stitch"
    assert stage_of("preprocess") == "preprocess" and stage_of("someone-else") == "someone-else"
    assert fails_job("runner") and fails_job("stitch") and fails_job("planner") and fails_job("preprocess")
    assert not fails_job("webhook") and not fails_job("cancel") and not fails_job("someone-else")


def _worker_holding(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    out = log.open("wb")
    proc = subprocess.Popen([sys.executable, "-c", WORKER, DURABLE, STREAM_SEGMENTS], env=env, stdout=out,
                            stderr=subprocess.STDOUT, cwd=str(REPO), start_new_session=True)
    for _ in range(300):
        text = log.read_text()
        if "holding" in text:
            return proc, int(text.split("holding", 1)[1].split()[0])
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited: {text}")
        time.sleep(0.1)
    proc.kill()
    raise TimeoutError(f"worker never got the message: {log.read_text()}")


async def test_message_killing_every_worker_is_dead_lettered_and_fails_the_job(stack, workers, bus: Bus) -> None:
    data = Path(stack.data_dir)
    await bus.ensure_consumer(SPEC)
    job = ResolvedJob(job_id="stranded-1", task=Task.T2V, model=MODEL, prompt="p", negative_prompt="", width=32,
                      height=32, num_frames=9, fps=8, steps=1, guidance_scale=1.0, seed=1, presign_ttl_s=3600)
    tracker = JobTracker(bus)
    await tracker.record(JobEvent.build(job.job_id, EventType.STARTED, StartedData(segment=0, runner="test")))
    seg = SegmentJob(job=job, index=0, count=1, start_frame=0, frames=9, seed=1)
    ack = await bus.publish(segments_subject(MODEL), seg, msg_id=f"seg:{job.job_id}:0")
    env = child_env(stack)

    deliveries = []
    for attempt in range(SPEC.max_deliver):
        proc, n = await asyncio.to_thread(_worker_holding, env, data / f"strand-worker-{attempt}.log")
        deliveries.append(n)
        os.kill(proc.pid, signal.SIGKILL)  # dies holding the message
        proc.wait(timeout=10)
    assert deliveries == [1, 2]

    # the next pull after the ack wait makes JetStream give up on it (and publish the advisory)
    sub = await bus.js.pull_subscribe_bind(DURABLE, stream=STREAM_SEGMENTS)
    await asyncio.sleep(SPEC.ack_wait_s + 0.5)
    with pytest.raises(TimeoutError):  # nothing is delivered (nats' TimeoutError subclasses the builtin)
        await sub.fetch(1, timeout=2)
    await sub.unsubscribe()

    entry = await _dlq_entry(bus, dlq_subject("runner"), job.job_id)
    assert entry.code == "max_deliveries" and entry.stage == "runner" and entry.num_delivered == 2
    assert entry.stream_seq == ack.seq and entry.subject == segments_subject(MODEL)
    assert SegmentJob.model_validate_json(base64.b64decode(entry.payload_b64)) == seg  # the payload survives
    async def failed() -> JobStatus | None:
        st = await status(bus, job.job_id)
        return st if st is not None and st.state == JobState.FAILED else None

    st = await poll_until(failed, timeout_s=30, interval_s=0.2)
    assert isinstance(st, JobStatus)
    assert st.error is not None and st.error.code == "max_deliveries" and st.error.retryable
    # gone from the work queue: no lag left behind
    assert await bus.get_message(STREAM_SEGMENTS, ack.seq) is None

    def swept() -> list[dict]:  # the sweeper logs after its last write: the line may trail the status by a moment
        # every log of the session's functions process (a test may have restarted it into another file)
        return [json.loads(line) for log in sorted(data.glob("functions*.log")) for line in log.read_text().splitlines()
                if '"stranded_message_swept"' in line and job.job_id in line]

    with contextlib.suppress(TimeoutError):
        await poll_until(swept, timeout_s=10, interval_s=0.2)
    lines = swept()
    assert len(lines) == 1 and lines[0]["consumer"] == DURABLE
    await bus.js.delete_consumer(STREAM_SEGMENTS, DURABLE)


async def _dlq_entry(bus: Bus, subject: str, job_id: str, timeout_s: float = 30.0) -> DLQEntry:
    sub = await bus.js.pull_subscribe(subject, stream=STREAM_DLQ)
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    msgs = await sub.fetch(10, timeout=1)
                except Exception:
                    continue
                for m in msgs:
                    entry = DLQEntry.model_validate_json(m.data)
                    if entry.job_id == job_id:
                        return entry
    finally:
        await sub.unsubscribe()
