"""i2v and animate through the whole pipeline: inputs from S3 and from an allow-listed local
HTTP server, pose keypoints from a synthetic driving video, MP4s with the requested frames."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from functions.preprocess.media import encode_png
from functions.preprocess.synthetic import draw_figure, figure_video
from runtime.bus import Bus
from runtime.client import follow
from runtime.settings import Settings
from runtime.storage import Storage
from runtime.video import probe_mp4
from schemas.messages import EventType, JobRequest
from schemas.names import SUBJECT_SUBMIT
from tests.stack import start_runner, stop, wait_for_log

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def input_runners(stack: Settings, workers) -> Iterator[None]:
    data = Path(stack.data_dir)
    procs = {m: start_runner(stack, data / f"runner-{m}.log", model=m) for m in ("tiny-wan-i2v", "tiny-wan-animate")}
    try:
        for m, p in procs.items():
            wait_for_log(data / f"runner-{m}.log", "runner_io_ready", 300, p)
        yield
    finally:
        for p in procs.values():
            stop(p)


@pytest.fixture
async def http_server() -> AsyncIterator[tuple[str, dict[str, bytes]]]:
    files: dict[str, bytes] = {}

    async def serve(request: web.Request) -> web.Response:
        body = files.get(request.match_info["name"])
        return web.Response(body=body) if body is not None else web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", files
    finally:
        await runner.cleanup()


async def _run(bus: Bus, job: JobRequest, timeout_s: float = 300):
    await bus.publish(SUBJECT_SUBMIT, job.model_dump_json(exclude_none=True).encode(), msg_id=job.job_id)
    async with asyncio.timeout(timeout_s):
        return [e async for e in follow(bus, job.job_id)]


def _png(rgb: np.ndarray) -> bytes:
    return encode_png(rgb)


async def test_i2v_from_s3_and_from_http(stack, input_runners, bus: Bus, storage: Storage, http_server) -> None:
    base_url, files = http_server
    image = _png(draw_figure(0.0, 96, 80))
    await storage.put_bytes("uploads/ref.png", image, "image/png")
    files["ref.png"] = image
    for job_id, src in (("i2v-s3", f"s3://{stack.bucket}/uploads/ref.png"), ("i2v-http", f"{base_url}/ref.png")):
        job = JobRequest(job_id=job_id, task="i2v", model="tiny-wan-i2v", prompt="wave", image=src,
                         num_frames=9, steps=2, width=64, height=64)
        events = await _run(bus, job)
        assert events[-1].type == EventType.SUCCEEDED, events[-1]
        info = probe_mp4(await storage.get_bytes(events[-1].data.output.key))
        assert (info.frames, info.width, info.height) == (9, 64, 64)
        keys = await storage.list_keys(f"jobs/{job_id}/inputs/")
        assert any(k.endswith("image.png") for k in keys)


async def test_animate_from_synthetic_driving_video(stack, input_runners, bus: Bus, storage: Storage) -> None:
    await storage.put_bytes("uploads/dance.mp4", figure_video(1.5, fps=8, width=320, height=240), "video/mp4")
    await storage.put_bytes("uploads/person.png", _png(draw_figure(0.0, 320, 240)), "image/png")
    job = JobRequest(job_id="animate-1", task="animate", model="tiny-wan-animate", prompt="dance",
                     image=f"s3://{stack.bucket}/uploads/person.png", video=f"s3://{stack.bucket}/uploads/dance.mp4",
                     num_frames=9, fps=8, steps=2, width=64, height=64)
    events = await _run(bus, job)
    assert events[-1].type == EventType.SUCCEEDED, events[-1]
    info = probe_mp4(await storage.get_bytes(events[-1].data.output.key))
    assert info.frames == 9
    kp = np.load(io.BytesIO(await storage.get_bytes("jobs/animate-1/keypoints/keypoints.npy")))
    assert kp.shape == (9, 33, 4)
    detected = kp[..., 3] > 0
    assert detected.mean() > 0.5  # the drawn person is found
    xs, ys = kp[..., 0][detected], kp[..., 1][detected]
    assert xs.min() >= 0 and xs.max() <= 64 and ys.min() >= 0 and ys.max() <= 64  # grid pixel coordinates


async def test_bad_media_is_rejected_and_workers_survive(stack, input_runners, bus: Bus, storage: Storage) -> None:
    await storage.put_bytes("uploads/empty.png", b"", "image/png")
    await storage.put_bytes("uploads/notes.mp4", b"these are my notes, not a video\n" * 10, "video/mp4")
    await storage.put_bytes("uploads/person2.png", _png(draw_figure(0.0, 64, 64)), "image/png")
    cases = {
        "bad-empty": dict(task="i2v", model="tiny-wan-i2v", image=f"s3://{stack.bucket}/uploads/empty.png"),
        "bad-text": dict(task="animate", model="tiny-wan-animate", image=f"s3://{stack.bucket}/uploads/person2.png",
                         video=f"s3://{stack.bucket}/uploads/notes.mp4"),
        "bad-missing": dict(task="i2v", model="tiny-wan-i2v", image=f"s3://{stack.bucket}/uploads/nope.png"),
    }
    for job_id, fields in cases.items():
        job = JobRequest(job_id=job_id, prompt="x", num_frames=9, steps=1, width=64, height=64, **fields)
        events = await _run(bus, job, 120)
        assert events[-1].type == EventType.REJECTED, (job_id, events[-1])
        assert events[-1].data.code.startswith("input_"), events[-1].data
    ok = JobRequest(job_id="after-bad-media", task="i2v", model="tiny-wan-i2v", prompt="x",
                    image=f"s3://{stack.bucket}/uploads/person2.png", num_frames=9, steps=1, width=64, height=64)
    assert (await _run(bus, ok))[-1].type == EventType.SUCCEEDED
