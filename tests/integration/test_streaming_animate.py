"""Rendering overlaps preprocessing, against real workers: a tiny-wan-animate job of >= 4 segments starts
rendering before its driving video is fully preprocessed, and its output equals the serial path's (the
same job preprocessed first, then rendered) for the same seed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from functions.preprocess.media import encode_png
from functions.preprocess.synthetic import draw_figure, figure_video
from runtime.bus import Bus
from runtime.client import follow
from runtime.settings import Settings
from runtime.storage import Storage
from runtime.video import decode_mp4
from schemas.messages import EventType, JobPlan, JobRequest
from schemas.names import SUBJECT_SUBMIT, plan_key
from tests.stack import start_functions, start_runner, stop, wait_for_log

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def animate_runner(stack: Settings, workers) -> Iterator[None]:
    data = Path(stack.data_dir)
    proc = start_runner(stack, data / "runner-stream-animate.log", model="tiny-wan-animate")
    try:
        wait_for_log(data / "runner-stream-animate.log", "runner_io_ready", 300, proc)
        yield
    finally:
        stop(proc)


async def _run(bus: Bus, job: JobRequest, timeout_s: float = 400):
    await bus.publish(SUBJECT_SUBMIT, job.model_dump_json(exclude_none=True).encode(), msg_id=job.job_id)
    async with asyncio.timeout(timeout_s):
        return [e async for e in follow(bus, job.job_id)]


def _log(path: Path, event: str, job_id: str) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{") and f'"{event}"' in line and job_id in line:
            rec = json.loads(line)
            if rec.get("event") == event and rec.get("job_id") == job_id:
                out.append(rec)
    return out


async def test_streamed_animate_starts_early_and_equals_serial(stack: Settings, workers, animate_runner, bus: Bus,
                                                               storage: Storage) -> None:
    data = Path(stack.data_dir)
    await storage.put_bytes("uploads/stream-dance.mp4", figure_video(11.0, fps=16, width=320, height=240),
                            "video/mp4")
    await storage.put_bytes("uploads/stream-person.png", encode_png(draw_figure(0.0, 320, 240)), "image/png")
    fields = dict(task="animate", model="tiny-wan-animate", prompt="dance", seed=11, num_frames=161, fps=16,
                  steps=2, width=64, height=64, max_segment_frames=41,
                  image=f"s3://{stack.bucket}/uploads/stream-person.png",
                  video=f"s3://{stack.bucket}/uploads/stream-dance.mp4")

    streamed = await _run(bus, JobRequest(job_id="anim-streamed", **fields))
    assert streamed[-1].type == EventType.SUCCEEDED, streamed[-1]
    plan = JobPlan.model_validate_json(await storage.get_bytes(plan_key("anim-streamed")))
    assert len(plan.windows) >= 4
    # the job was planned and its first segment started before preprocessing ended
    log = data / "functions.log"
    ready = _log(log, "preprocess_frames_ready", "anim-streamed")
    assert len(ready) >= 2 and ready[0]["ready_frames"] < 161 and ready[-1]["ready_frames"] == 161
    types = [e.type for e in streamed]
    assert types.index(EventType.PREPROCESSED) < types.index(EventType.STARTED)
    done_rec = _log(log, "preprocess_done", "anim-streamed")[-1]
    done_at = datetime.fromisoformat(done_rec["timestamp"].replace("Z", "+00:00"))
    started = next(e for e in streamed if e.type == EventType.STARTED)
    assert started.time < done_at, "rendering did not overlap preprocessing"

    # the serial path: the same job with a functions process that preprocesses everything first
    stop(workers["functions"])
    serial_log = data / "functions-serial.log"
    serial_fn = start_functions(stack, serial_log, env_extra={"VIDEOGEN_PREPROCESS_STREAMING": "false"})
    try:
        wait_for_log(serial_log, '"consumer_started"', 120, serial_fn)
        serial = await _run(bus, JobRequest(job_id="anim-serial", **fields))
    finally:
        stop(serial_fn)
        restarted = data / "functions-restarted.log"
        workers["functions"] = start_functions(stack, restarted)
        wait_for_log(restarted, '"consumer_started"', 120, workers["functions"])
    assert serial[-1].type == EventType.SUCCEEDED, serial[-1]
    assert _log(serial_log, "preprocess_frames_ready", "anim-serial") == []
    a = decode_mp4(await storage.get_bytes(streamed[-1].data.output.key))
    b = decode_mp4(await storage.get_bytes(serial[-1].data.output.key))
    assert a.shape[0] == b.shape[0] == 161
    np.testing.assert_array_equal(a, b)
