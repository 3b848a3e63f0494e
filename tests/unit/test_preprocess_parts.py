"""A long animate job's preprocessing split into parts (functions.preprocess.parts): any worker may make
any part, in any order, and the stored objects are byte for byte those of one worker doing it all."""

from __future__ import annotations

import asyncio
import hashlib
import io
from typing import Any

import numpy as np
import pytest

from functions.preprocess.errors import JobStopped
from functions.preprocess.limits import DEFAULT_LIMITS
from functions.preprocess.parts import PartRecord, load_record, run_part
from functions.preprocess.pipeline import preprocess
from functions.preprocess.synthetic import figure_video
from functions.preprocess.validate import resolve
from runtime.frames_store import FramesIndex, read_frames
from runtime.objects import MemoryStore
from runtime.settings import Settings
from schemas.messages import JobRequest, PreprocessPart
from schemas.names import preprocess_part_key
from tests.unit.test_preprocess_pipeline import animate_request, store_with

SETTINGS = Settings(preprocess_part_frames=32)


@pytest.fixture(scope="module")
def inputs() -> dict[str, bytes]:
    from functions.preprocess.media import encode_png
    from functions.preprocess.synthetic import draw_figure

    return {"ref.png": encode_png(draw_figure(0.0, 320, 240)),
            # 2.5 s at 30 fps = 75 source frames; 110 asked: parts 0-1 real, 2 partly padded, 3 all padding
            "long.mp4": figure_video(2.5, 30, 160, 120)}


class LocalSplitter:
    """Parts run in this process as other workers would (last first: records arrive out of order)."""

    def __init__(self, store: MemoryStore, stop_after: int | None = None) -> None:
        self.store = store
        self.parts: list[PreprocessPart] = []
        self.tasks: list[asyncio.Task[PartRecord]] = []
        self.checks = 0
        self.stop_after = stop_after

    async def publish(self, parts: list[PreprocessPart]) -> None:
        self.parts = parts
        video = self.store.objects[(self.store.bucket, parts[0].video.key)] if parts else b""

        async def all_parts() -> None:
            for p in reversed(parts):
                await run_part(p, video, self.store, DEFAULT_LIMITS, 1)

        self.tasks.append(asyncio.ensure_future(all_parts()))  # type: ignore[arg-type]

    async def check(self) -> None:
        self.checks += 1
        if self.stop_after is not None and self.checks > self.stop_after:
            raise JobStopped("cancelled")


def digests(store: MemoryStore, job_id: str) -> dict[str, str]:
    """sha256 of every object under the job's frames/ and keypoints/ (job id normalised out of the keys)."""
    out = {}
    for (_, key), data in store.objects.items():
        if key.startswith(f"jobs/{job_id}/frames/") or key.startswith(f"jobs/{job_id}/keypoints/"):
            if "/parts/" in key:
                continue  # the split run's own records (the unsplit run has none)
            rel = key.removeprefix(f"jobs/{job_id}/")
            if key.endswith(".json"):  # the indexes name their chunks' keys
                data = data.replace(f"jobs/{job_id}/".encode(), b"jobs/JOB/")
            out[rel] = hashlib.sha256(data).hexdigest()
    return out


def request(job_id: str) -> JobRequest:
    return animate_request("long.mp4", num_frames=110, fps=30, job_id=job_id)


async def test_parts_in_any_order_store_the_bytes_of_one_run(inputs: dict[str, bytes]) -> None:
    one_store, split_store = store_with(inputs), store_with(inputs)
    req_one, req_split = request("one"), request("split")
    job_one, _ = resolve(req_one)
    job_split, _ = resolve(req_split)
    one = await preprocess(job_one, req_one, one_store, SETTINGS, workers=1)
    splitter = LocalSplitter(split_store)
    readies: list[int] = []

    async def on_ready(refs: dict[str, Any], ready: int) -> None:
        index = FramesIndex.model_validate_json(await split_store.get_bytes(refs["face_index"].key))
        assert not index.complete and index.frames == ready
        await read_frames(split_store, index, 0, ready)  # every announced frame is readable
        readies.append(ready)

    split = await preprocess(job_split, req_split, split_store, SETTINGS, workers=2, split=splitter,
                             on_ready=on_ready)
    assert [p.part for p in splitter.parts] == [1, 2, 3] and [p.frames for p in splitter.parts] == [32, 32, 14]
    assert set(split) == set(one)
    # readiness is the stored prefix of parts: it never skips a part that is not stored yet
    assert readies == sorted(set(readies)) and readies[-1] == 110 and all(r % 32 == 0 for r in readies[:-1])
    a, b = digests(one_store, "one"), digests(split_store, "split")
    assert len(a) > 3 * 4 and a == b
    for n in range(4):
        assert await load_record(split_store, "split", n) is not None
    meta = FramesIndex.model_validate_json(split_store.objects[(split_store.bucket, split["face_index"].key)]).meta
    assert meta["padded_frames"] == 110 - meta["source_frames"] and meta["padded_frames"] >= 32 + 1


async def test_face_smoothing_restarts_at_part_boundaries_in_every_mode(inputs: dict[str, bytes]) -> None:
    """Without the restart a part made alone would differ from a run from 0: the smoothing is what the
    boundaries change, so a run with one part differs from one with several exactly in the face stream."""
    stores = []
    for part_frames in (32, 128):
        store = store_with(inputs)
        req = request("p")
        job, _ = resolve(req)
        await preprocess(job, req, store, Settings(preprocess_part_frames=part_frames), workers=1)
        stores.append(digests(store, "p"))
    differs = {k for k in stores[0] if stores[0][k] != stores[1][k]}
    assert any("/face/" in k for k in differs)
    assert not any("/driving/" in k or "/pose/chunk" in k for k in differs)


async def test_redelivered_part_and_stopped_joiner(inputs: dict[str, bytes]) -> None:
    store = store_with(inputs)
    req = request("stop")
    job, _ = resolve(req)
    splitter = LocalSplitter(store, stop_after=2)
    with pytest.raises(JobStopped):
        await preprocess(job, req, store, SETTINGS, workers=1, split=splitter)
    await asyncio.gather(*splitter.tasks)
    assert not any(k.endswith("keypoints/keypoints.npy") for (_, k) in store.objects)  # never joined
    # a part run again (redelivery) rewrites the same bytes
    before = dict(store.objects)
    video = store.objects[(store.bucket, splitter.parts[0].video.key)]
    again = await run_part(splitter.parts[0], video, store, DEFAULT_LIMITS, 2)
    assert again == await load_record(store, "stop", 1)
    assert {k: v for k, v in store.objects.items() if k in before} == before
    rows = np.load(io.BytesIO(store.objects[(store.bucket, preprocess_part_key("stop", 1, "npy"))]))
    assert rows.shape == (32, 33, 4)


# ---- through the handlers (fakes): the submission's worker joins, parts come off the bus ---------------
def _submission(job_id: str) -> bytes:
    import json

    return json.dumps({"job_id": job_id, "task": "animate", "model": "tiny-wan-animate", "prompt": "dance",
                       "image": "s3://videogen/uploads/ref.png", "video": "s3://videogen/uploads/long.mp4",
                       "width": 64, "height": 64, "fps": 30, "num_frames": 81, "steps": 2}).encode()


async def _ports(inputs: dict[str, bytes]):
    from runtime.testing.fakes import fake_ports

    ports = fake_ports(preprocess_part_frames=32, preprocess_workers=1)
    for name, data in inputs.items():
        await ports.storage.put_bytes(f"uploads/{name}", data)
    return ports


def _parts(ports) -> list[PreprocessPart]:
    from schemas.names import SUBJECT_WORK_PREPROCESS_PART

    return ports.bus.payloads(SUBJECT_WORK_PREPROCESS_PART, PreprocessPart)


async def test_handlers_split_join_and_redelivered_part(inputs: dict[str, bytes]) -> None:
    from functions.preprocess.handler import handle_submit
    from functions.preprocess.parts import handle_part
    from runtime.testing.fakes import FakeDelivery
    from schemas.messages import PlanRequest
    from schemas.names import SUBJECT_WORK_PLAN

    ports = await _ports(inputs)
    joiner = asyncio.ensure_future(handle_submit(_submission("h-split"), FakeDelivery(), ports))
    async with asyncio.timeout(120):
        while True:
            if _parts(ports):
                break
            await asyncio.sleep(0.05)
    parts = _parts(ports)
    assert [(p.part, p.start, p.frames) for p in parts] == [(1, 32, 32), (2, 64, 17)]
    for p in reversed(parts):  # out of order: readiness still only grows over the stored prefix
        await handle_part(p.model_dump_json().encode(), FakeDelivery(), ports)
    await joiner
    readies = [r.ready_frames for r in ports.bus.payloads(SUBJECT_WORK_PLAN, PlanRequest)]
    assert readies == sorted(set(readies)) and readies[-1] == 81 and all(r % 32 == 0 for r in readies[:-1])
    assert any(k.endswith("keypoints/keypoints.npy") for (_, k) in ports.storage.objects)
    before = dict(ports.storage.objects)
    await handle_part(parts[0].model_dump_json().encode(), FakeDelivery(num_delivered=2), ports)  # redelivery
    assert ports.storage.objects == before


async def test_a_failed_part_fails_the_job_and_stops_the_joiner(inputs: dict[str, bytes]) -> None:
    from functions.preprocess.errors import InputRejected
    from functions.preprocess.handler import handle_submit
    from functions.preprocess.parts import handle_part
    from runtime.failures import failure_hooks
    from runtime.testing.fakes import FakeDelivery
    from schemas.errors import ErrorCode
    from schemas.messages import JobState

    ports = await _ports(inputs)
    joiner = asyncio.ensure_future(handle_submit(_submission("h-fail"), FakeDelivery(), ports))
    async with asyncio.timeout(120):
        while True:
            if _parts(ports):
                break
            await asyncio.sleep(0.05)
    bad = _parts(ports)[0]
    await ports.storage.put_bytes(bad.video.key, inputs["long.mp4"][: len(inputs["long.mp4"]) // 3])  # cut short
    payload = bad.model_dump_json().encode()
    with pytest.raises(InputRejected) as e:
        await handle_part(payload, FakeDelivery(), ports)
    assert e.value.code == ErrorCode.INPUT_UNREADABLE
    on_permanent, _ = failure_hooks(ports.tracker, "preprocess-part")
    delivery = FakeDelivery()
    assert await on_permanent(payload, e.value, delivery)  # what the stage does with a permanent failure
    async with asyncio.timeout(60):
        await joiner  # the joiner sees the job failed and stops (no join)
    st, _ = await ports.tracker.status.get("h-fail")
    assert st is not None and st.state == JobState.FAILED and st.error is not None
    assert st.error.code == ErrorCode.INPUT_UNREADABLE.value
    assert await load_record(ports.storage, "h-fail", 1) is None
    assert not any(k.endswith("keypoints/keypoints.npy") for (_, k) in ports.storage.objects)
