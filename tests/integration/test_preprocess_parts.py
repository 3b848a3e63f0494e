"""A long animate job's preprocessing on several preprocess worker processes (issue 14): the same job
through 1 worker process and through 2 stores byte-identical objects (sha256 of every object under the
job's frames/ and keypoints/), the second process really did parts, and a cancel mid-preprocess stops
every part (no join, the job's objects removed)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from functions.preprocess.media import encode_png
from functions.preprocess.synthetic import draw_figure, figure_video
from runtime.bus import Bus
from runtime.client import cancel
from runtime.settings import Settings
from runtime.storage import ObjectNotFound, Storage
from schemas.messages import JobRequest
from schemas.names import SUBJECT_SUBMIT, frames_key, job_prefix, keypoints_key, request_key
from tests.integration.test_streaming_animate import _log
from tests.stack import start_functions, stop, wait_for_log

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PART_FRAMES = 64
ENV = {"VIDEOGEN_PREPROCESS_PART_FRAMES": str(PART_FRAMES), "VIDEOGEN_PREPROCESS_WORKERS": "1"}
STAGES = ["preprocess", "preprocess-part", "cancel"]


def _fields(stack: Settings) -> dict:
    # 9 s at 16 fps = 144 source frames of 225 asked: parts 0-1 real, 2 real then padded, 3 padding only
    return dict(task="animate", model="tiny-wan-animate", prompt="dance", seed=3, num_frames=225, fps=16, steps=2,
                width=64, height=64, image=f"s3://{stack.bucket}/uploads/parts-person.png",
                video=f"s3://{stack.bucket}/uploads/parts-dance.mp4")


async def _submit(bus: Bus, job: JobRequest) -> None:
    await bus.publish(SUBJECT_SUBMIT, job.model_dump_json(exclude_none=True).encode(), msg_id=job.job_id)


async def _exists(storage: Storage, key: str) -> bool:
    try:
        await storage.get_bytes(key)
    except ObjectNotFound:
        return False
    return True


async def _wait_joined(storage: Storage, job_id: str, timeout_s: float = 300) -> None:
    async with asyncio.timeout(timeout_s):
        key = keypoints_key(job_id, "pose/index.json")
        while True:
            if await _exists(storage, key) and b'"complete": true' in await storage.get_bytes(key):
                return
            await asyncio.sleep(0.5)


async def _digests(storage: Storage, job_id: str) -> dict[str, str]:
    out = {}
    for prefix in (frames_key(job_id, ""), keypoints_key(job_id, "")):
        for key in await storage.list_keys(prefix):
            data = await storage.get_bytes(key)
            if key.endswith(".json"):  # indexes and part records name their chunks' keys
                data = data.replace(f"jobs/{job_id}/".encode(), b"jobs/JOB/")
            out[key.removeprefix(f"jobs/{job_id}/")] = hashlib.sha256(data).hexdigest()
    return out


def _start(stack: Settings, log: Path):
    proc = start_functions(stack, log, STAGES, env_extra=ENV)
    wait_for_log(log, '"consumer_started"', 120, proc)
    return proc


@pytest.fixture
def session_functions_paused(stack: Settings, workers: dict) -> Iterator[None]:
    """The session's functions process runs preprocess-part too: stop it while this test counts which of
    its own processes did the parts, and start it again afterwards (into its own log file)."""
    stop(workers["functions"])
    try:
        yield
    finally:  # back into the session's own log (later tests read it), ready once it logs a new start
        log = Path(stack.data_dir) / "functions.log"
        before = log.read_text().count('"consumer_started"') if log.exists() else 0
        workers["functions"] = start_functions(stack, log)
        deadline = time.monotonic() + 120
        while log.read_text().count('"consumer_started"') <= before:
            if time.monotonic() > deadline or workers["functions"].poll() is not None:
                raise RuntimeError("the session's functions process did not start again")
            time.sleep(0.2)


async def test_two_worker_processes_store_what_one_does_and_cancel_stops_every_part(
        stack: Settings, bus: Bus, storage: Storage, session_functions_paused: None) -> None:
    data = Path(stack.data_dir)
    await storage.put_bytes("uploads/parts-dance.mp4", figure_video(9.0, fps=16, width=320, height=240), "video/mp4")
    await storage.put_bytes("uploads/parts-person.png", encode_png(draw_figure(0.0, 320, 240)), "image/png")
    fields = _fields(stack)

    one_log = data / "parts-one.log"
    proc = _start(stack, one_log)
    try:
        await _submit(bus, JobRequest(job_id="parts-one", **fields))
        await _wait_joined(storage, "parts-one")
    finally:
        stop(proc)

    logs = [data / "parts-two-a.log", data / "parts-two-b.log"]
    procs = [_start(stack, log) for log in logs]
    try:
        await _submit(bus, JobRequest(job_id="parts-two", **fields))
        await _wait_joined(storage, "parts-two")
        one, two = await _digests(storage, "parts-one"), await _digests(storage, "parts-two")
        assert len(one) >= 3 * 8 + 2 and one == two
        assert len(_log(one_log, "preprocess_part_done", "parts-one")) == 3
        done = [len(_log(log, "preprocess_part_done", "parts-two")) for log in logs]
        joiner = [bool(_log(log, "preprocess_parts_published", "parts-two")) for log in logs]
        assert sum(done) == 3 and joiner.count(True) == 1
        assert done[joiner.index(False)] >= 1, f"the other process did no part: {done}"

        # cancel mid-preprocess: no part goes on, nothing is joined, the job's objects are removed
        await _submit(bus, JobRequest(job_id="parts-cancel", **fields))
        async with asyncio.timeout(120):
            while True:
                if any(_log(log, "preprocess_parts_published", "parts-cancel") for log in logs):
                    break
                await asyncio.sleep(0.2)
        await cancel(bus, "parts-cancel", reason="test")
        async with asyncio.timeout(120):
            while True:
                stopped = sum(len(_log(log, ev, "parts-cancel")) for log in logs
                              for ev in ("preprocess_part_stopped", "preprocess_part_skipped_job_stopped",
                                         "preprocess_part_done"))
                joiner_stopped = any(_log(log, "preprocess_stopped", "parts-cancel") for log in logs)
                if stopped == 3 and joiner_stopped:
                    break
                await asyncio.sleep(0.5)
        await asyncio.sleep(2)
        assert not any(_log(log, "animate_preprocessed", "parts-cancel") for log in logs)
        left = await storage.list_keys(job_prefix("parts-cancel"))
        assert left in ([], [request_key("parts-cancel")]), left
    finally:
        for p in procs:
            stop(p)
