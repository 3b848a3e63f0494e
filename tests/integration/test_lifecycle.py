"""Job lifecycle against real servers: stable event ids, throttled progress, CAS status with final
terminal states, queue positions that only go down, status TTL and the bucket lifecycle rule, and
the `videogen events` / `videogen status` commands."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from runtime.bus import Bus
from runtime.client import follow, status, stream_messages, submit
from runtime.jobs import JobTracker, StaleRevision, StatusStore
from runtime.settings import Settings, load_settings
from runtime.stack import provision, start_servers
from runtime.storage import Storage
from schemas.messages import (
    EventType,
    FailedData,
    JobEvent,
    JobRequest,
    JobState,
    PreprocessedData,
    ProgressData,
    StartedData,
)
from schemas.names import STREAM_EVENTS, events_subject
from tests.sample_events import sample_data
from tests.stack import REPO, child_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def stored_events(bus: Bus, job_id: str) -> list[JobEvent]:
    messages = stream_messages(bus, STREAM_EVENTS, events_subject(job_id))
    return [JobEvent.model_validate_json(m.data) async for m in messages]


def progress(job_id: str, step: int) -> JobEvent:
    data = ProgressData(progress=min(99.0, step / 100), segment=0, segments_total=1, step=step, steps=10**6)
    return JobEvent.build(job_id, EventType.PROGRESS, data, 0, step)


async def test_event_ids_are_stable_and_redelivered_stages_deduplicated(stack: Settings, bus: Bus) -> None:
    tracker = JobTracker(bus)
    job_id = "lifecycle-dedupe"
    first = JobEvent.build(job_id, EventType.ACCEPTED, sample_data(EventType.ACCEPTED))
    await asyncio.sleep(0.01)
    again = JobEvent.build(job_id, EventType.ACCEPTED, sample_data(EventType.ACCEPTED))  # a redelivered stage
    assert first.id == again.id and first.time != again.time
    assert JobEvent.build(job_id, EventType.PROGRESS, sample_data(EventType.PROGRESS), 0, 1).id != JobEvent.build(
        job_id, EventType.PROGRESS, sample_data(EventType.PROGRESS), 0, 2).id
    await tracker.record(first)
    await tracker.record(again)
    await tracker.record(progress(job_id, 1))
    await tracker.record(progress(job_id, 1))
    events = await stored_events(bus, job_id)
    assert [e.type for e in events] == [EventType.ACCEPTED, EventType.PROGRESS]  # one per state change
    ack = await bus.publish(events_subject(job_id), again, msg_id=again.id)
    assert ack.duplicate


async def test_two_writers_race_terminal_state_wins(stack: Settings) -> None:
    job_id = "lifecycle-race"
    async with Bus(stack, "writer-runner") as b1, Bus(stack, "writer-stitch") as b2:
        runner, stitch = JobTracker(b1), JobTracker(b2)
        await runner.record(JobEvent.build(job_id, EventType.STARTED, StartedData(segment=0, runner="r")))
        stop = asyncio.Event()
        writes = Counter()

        async def late_progress() -> None:  # a runner still reporting steps, unaware the job ended
            step = 0
            while not stop.is_set():
                step += 1
                st = await runner.record(progress(job_id, step), progress=min(99.0, step / 10))
                writes[st.state.value if st else "none"] += 1

        async def finish() -> None:
            await asyncio.sleep(0.3)
            succeeded = JobEvent.build(job_id, EventType.SUCCEEDED, sample_data(EventType.SUCCEEDED))
            await stitch.record(succeeded, progress=100.0)

        writer = asyncio.create_task(late_progress())
        await finish()
        _, rev_at_finish = await StatusStore(b2).get(job_id)
        await asyncio.sleep(0.5)  # the stale writer keeps trying
        stop.set()
        await writer
        st, rev = await StatusStore(b1).get(job_id)
        assert st is not None and st.state == JobState.SUCCEEDED and st.progress == 100.0
        assert rev == rev_at_finish, "a write landed after the terminal state"
        assert writes["running"] > 5 and writes["succeeded"] > 5, writes  # they really raced
        events = await stored_events(b1, job_id)
        assert events[-1].type == EventType.SUCCEEDED  # no progress event published after it

        # deterministic interleaving: read, the other writer ends the job, the stale CAS is refused
        job2 = "lifecycle-stale"
        await runner.record(JobEvent.build(job2, EventType.STARTED, StartedData(segment=0, runner="r")))
        stale, stale_rev = await StatusStore(b1).get(job2)
        await stitch.record(JobEvent.build(job2, EventType.FAILED, FailedData(code="model_error", message="boom")))
        with pytest.raises(StaleRevision):
            await StatusStore(b1).write(job2, stale.model_copy(update={"progress": 50.0}), last=stale_rev)
        kept = await StatusStore(b1).update(
            job2, lambda cur: cur and cur.model_copy(update={"state": JobState.RUNNING}))
        assert kept is not None and kept.state == JobState.FAILED and kept.error and kept.error.code == "model_error"


async def test_queue_position_only_goes_down_and_clears_on_start(stack: Settings, bus: Bus) -> None:
    tracker = JobTracker(bus)
    store = tracker.status
    job_id = "lifecycle-queue"
    await tracker.record(JobEvent.build(job_id, EventType.PREPROCESSED, PreprocessedData()))
    assert (await store.set_queue_position(job_id, 3)).queue_position == 3
    assert (await store.set_queue_position(job_id, 5)).queue_position == 3  # a stale tracker's larger number
    assert (await store.set_queue_position(job_id, 0)).queue_position == 0
    started = await tracker.record(JobEvent.build(job_id, EventType.STARTED, StartedData(segment=0, runner="r")))
    assert started.state == JobState.RUNNING and started.queue_position is None
    assert (await store.set_queue_position(job_id, 0)).queue_position is None  # only queued jobs have one


async def test_progress_is_throttled_and_carries_percent_segment_step(stack: Settings, workers, bus: Bus) -> None:
    job_id = "lifecycle-progress"
    # 3 segments of 100 fast steps each: far more steps than the throttle lets through
    await submit(bus, JobRequest(job_id=job_id, prompt="progress", width=64, height=64, num_frames=33,
                                 max_segment_frames=17, steps=100, seed=4))
    async with asyncio.timeout(240):
        events = [e async for e in follow(bus, job_id)]
    assert events[-1].type == EventType.SUCCEEDED, events[-1]
    prog = [e for e in events if e.type == EventType.PROGRESS]
    total = prog[0].data.segments_total
    assert total >= 2
    for e in prog:
        assert set(json.loads(e.model_dump_json())["data"]) == {"progress", "segment", "segments_total", "step",
                                                                "steps"}, e.data
        assert 0 <= e.data.progress <= 100 and 1 <= e.data.step <= e.data.steps == 100
    pct = [e.data.progress for e in prog]
    assert pct == sorted(pct), "overall percent never goes back"
    assert {e.data.segment for e in prog} == set(range(total))
    for seg in range(total):  # the last step of each segment is always reported
        assert any(e.data.segment == seg and e.data.step == 100 for e in prog)
    # at most a few per second per job: the runner sends one per 0.25 s (+ each segment's last step)
    times = [e.time.timestamp() for e in prog]
    busiest = max(sum(1 for t in times if t0 <= t < t0 + 1.0) for t0 in times)
    assert busiest <= 4 + total, (busiest, len(prog))
    assert len(prog) < 0.2 * total * 100
    st = await status(bus, job_id)
    assert st is not None and st.progress == 100 and st.segments_done == st.segments_total == total


async def test_status_ttl_and_bucket_lifecycle_rule(stack: Settings, tmp_path: Path) -> None:
    # the session stack: KV TTL from settings, and the S3 rule expiring jobs/
    async with Bus(stack, "ttl-check") as b:
        kv_status = await (await b.kv()).status()
        assert kv_status.ttl == stack.status_ttl_s
    async with Storage(stack) as s3:
        rules = (await s3.client.get_bucket_lifecycle_configuration(Bucket=stack.bucket))["Rules"]
    [rule] = [r for r in rules if r["ID"] == "videogen-expire-jobs"]
    assert rule["Filter"]["Prefix"] == "jobs/" and rule["Status"] == "Enabled"
    assert rule["Expiration"]["Days"] == max(1, stack.status_ttl_s // 86400)

    # a stack provisioned with a 2 s TTL really forgets a finished job
    settings, nats, s3srv = start_servers(load_settings(data_dir=tmp_path, status_ttl_s=2), fixed_ports=False)
    try:
        await provision(settings, [])
        async with Bus(settings, "ttl") as b:
            tracker = JobTracker(b)
            await tracker.record(JobEvent.build("ttl-job", EventType.STARTED, StartedData(segment=0, runner="r")))
            await tracker.record(JobEvent.build("ttl-job", EventType.SUCCEEDED, sample_data(EventType.SUCCEEDED)))
            assert (await status(b, "ttl-job")).state == JobState.SUCCEEDED
            assert (await (await b.kv()).status()).ttl == 2
            deadline = time.monotonic() + 10
            while await status(b, "ttl-job") is not None:
                assert time.monotonic() < deadline, "status did not expire"
                await asyncio.sleep(0.5)
    finally:
        s3srv.stop()
        nats.stop()


async def test_events_cli_follows_live_and_status_cli_shows_progress(stack: Settings, workers, bus: Bus) -> None:
    job_id = "lifecycle-cli"
    env = child_env(stack)
    # started off the event loop, like the subprocess.run calls below
    follower = await asyncio.to_thread(subprocess.Popen, [sys.executable, "-m", "runtime.cli", "events", job_id],
                                       env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
    try:
        await asyncio.sleep(3.0)  # the follower is up and waiting for a job that does not exist yet
        assert follower.poll() is None
        await submit(bus, JobRequest(job_id=job_id, prompt="cli", width=64, height=64, num_frames=9, steps=2))
        out, errs = await asyncio.to_thread(follower.communicate, timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            follower.kill()
    assert follower.returncode == 0, errs
    printed = [JobEvent.model_validate_json(line) for line in out.splitlines() if line.startswith("{")]
    assert printed[0].type == EventType.ACCEPTED and printed[-1].type == EventType.SUCCEEDED, printed
    assert [e.id for e in printed] == [e.id for e in await stored_events(bus, job_id)]

    shown = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "runtime.cli", "status", job_id],
                                    env=env, cwd=str(REPO), capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "succeeded" in shown.stdout and "100.0%" in shown.stdout and "output.mp4" in shown.stdout, shown.stdout
    missing = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "runtime.cli", "status", "nope-job"],
                                      env=env, cwd=str(REPO), capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "no such job" in missing.stderr


async def test_consumers_keep_their_ack_wait(stack: Settings, bus: Bus) -> None:
    """NATS replaces ack_wait by backoff[0]: a shorter first back-off would redeliver every message a
    worker holds longer than it (heartbeats or not), i.e. run stages and GPU segments twice."""
    from schemas.names import CPU_CONSUMERS, runner_consumer

    for spec in (*CPU_CONSUMERS, runner_consumer("tiny-wan")):
        info = await bus.js.consumer_info(spec.stream, spec.durable)
        assert info.config.ack_wait == spec.ack_wait_s, (spec.durable, info.config.ack_wait, info.config.backoff)
        if spec.durable.startswith("runner-"):
            # the runner heartbeats on its own, shorter interval (issue 16: a dead runner's segment
            # comes back within its 10 s ack wait): at least three beats per ack wait
            assert spec.ack_wait_s >= 3 * Settings.model_fields["runner_heartbeat_s"].default
            assert not spec.backoff_s or spec.backoff_s[0] == spec.ack_wait_s
            continue
        assert spec.ack_wait_s > stack.heartbeat_s and spec.ack_wait_s > 10.0  # the default heartbeat_s
