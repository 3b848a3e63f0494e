"""preprocess() end to end on an in-memory store: i2v and animate outputs, and the bad-media
suite through the whole pipeline (each a typed rejection with its code, never a crash)."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest

from functions.preprocess.errors import InputRejected
from functions.preprocess.media import encode_png
from functions.preprocess.pipeline import preprocess, resolve_workers
from functions.preprocess.skeleton import DET, J
from functions.preprocess.synthetic import draw_figure, encode_video, figure_joints, figure_video
from functions.preprocess.validate import resolve
from runtime.frames_store import FramesIndex, read_frames
from runtime.objects import MemoryStore
from runtime.settings import Settings
from schemas.errors import ErrorCode
from schemas.messages import JobRequest
from schemas.registry import MODELS

SETTINGS = Settings()


@pytest.fixture(scope="module")
def inputs() -> dict[str, bytes]:
    return {
        "ref.png": encode_png(draw_figure(0.0, 320, 240)),
        "drive.mp4": figure_video(1.2, 15, 320, 240),
        "short.mp4": figure_video(0.4, 15, 320, 240),
        "long.mp4": figure_video(3.5, 30, 160, 120),
        "empty-scene.mp4": encode_video((np.full((96, 128, 3), 90 + i, np.uint8) for i in range(10)), 15),
        "text.mp4": b"definitely not a video\n" * 10,
        "zero.mp4": b"",
    }


def store_with(inputs: dict[str, bytes]) -> MemoryStore:
    store = MemoryStore()
    for name, data in inputs.items():
        store.objects[("uploads", name)] = data
    return store


def animate_request(video: str = "drive.mp4", **kw: Any) -> JobRequest:
    fields = {"job_id": "anim-1", "task": "animate", "model": "tiny-wan-animate", "image": "s3://uploads/ref.png",
              "video": f"s3://uploads/{video}", "width": 64, "height": 48, "fps": 8, "num_frames": 9} | kw
    return JobRequest.model_validate(fields)


async def run(req: JobRequest, store: MemoryStore, **kw: Any) -> dict[str, Any]:
    job, _ = resolve(req)
    return await preprocess(job, req, store, SETTINGS, workers=2, **kw)


async def test_i2v_stores_original_and_grid_reference(inputs: dict[str, bytes]) -> None:
    store = store_with(inputs)
    req = JobRequest.model_validate({"job_id": "i2v-1", "task": "i2v", "model": "tiny-wan-i2v",
                                     "image": "s3://uploads/ref.png", "width": 64, "height": 48})
    refs = await run(req, store)
    assert set(refs) == {"image", "reference"}
    assert refs["image"].key == "jobs/i2v-1/inputs/image.png"
    assert store.objects[("videogen", refs["image"].key)] == inputs["ref.png"]
    import cv2

    ref = cv2.imdecode(np.frombuffer(store.objects[("videogen", refs["reference"].key)], np.uint8), cv2.IMREAD_COLOR)
    assert ref.shape == (48, 64, 3)


async def test_animate_outputs(inputs: dict[str, bytes]) -> None:
    store = store_with(inputs)
    refs = await run(animate_request(), store)
    assert set(refs) == {"image", "reference", "video", "frames_index", "pose_index", "face_index", "keypoints",
                         "keypoints_meta"}
    assert refs["video"].key == "jobs/anim-1/inputs/video.mp4"
    assert refs["frames_index"].key == "jobs/anim-1/frames/driving/index.json"
    assert refs["keypoints"].key == "jobs/anim-1/keypoints/keypoints.npy"
    kp = np.load(io.BytesIO(store.objects[("videogen", refs["keypoints"].key)]))
    meta = json.loads(store.objects[("videogen", refs["keypoints_meta"].key)])
    assert kp.shape == (9, 33, 4) and kp.dtype == np.float32 and meta["shape"] == [9, 33, 4]
    assert meta["detected_frames"] >= 8 and meta["padded_frames"] == 0
    # plausible coordinates on the 64x48 grid: the 320x240 source is center-cropped to 320x240 (same aspect)
    sx = 64 / 320
    for i in range(9):
        if kp[i, 0, DET]:
            x, y = figure_joints(i / 8, 320, 240)["l_shoulder"]
            assert abs(kp[i, J["left_shoulder"], 0] - x * sx) < 4 and abs(kp[i, J["left_shoulder"], 1] - y * sx) < 4
    driving = await read_frames(store, refs["frames_index"])
    pose = await read_frames(store, refs["pose_index"])
    face = await read_frames(store, refs["face_index"])
    assert driving.shape == (9, 48, 64, 3) and pose.shape == (9, 48, 64, 3)
    side = MODELS["tiny-wan-animate"].face_size  # the model's face-encoder input size
    assert face.shape == (9, side, side, 3)
    assert pose.max() > 100 and pose.mean() < 40  # coloured skeleton on black
    index = FramesIndex.model_validate_json(store.objects[("videogen", refs["pose_index"].key)])
    assert index.frames == 9 and index.meta["stream"] == "pose"


async def test_short_video_is_padded(inputs: dict[str, bytes]) -> None:
    store = store_with(inputs)
    refs = await run(animate_request("short.mp4", num_frames=13), store)  # 0.4 s at 8 fps = 4 frames
    meta = json.loads(store.objects[("videogen", refs["keypoints_meta"].key)])
    assert meta["source_frames"] == 4 and meta["padded_frames"] == 9
    assert (await read_frames(store, refs["frames_index"])).shape[0] == 13


@pytest.mark.parametrize(
    ("video", "code"),
    [
        ("zero.mp4", ErrorCode.INPUT_UNREADABLE),
        ("text.mp4", ErrorCode.INPUT_UNSUPPORTED),
        ("missing.mp4", ErrorCode.INPUT_UNREADABLE),
        ("empty-scene.mp4", ErrorCode.INPUT_UNSUPPORTED),  # nobody to animate
    ],
)
async def test_bad_driving_video_rejected_with_code(inputs: dict[str, bytes], video: str, code: ErrorCode) -> None:
    store = store_with(inputs)
    with pytest.raises(InputRejected) as info:
        await run(animate_request(video), store)
    assert info.value.code == code and str(info.value)
    assert not store.keys("jobs/anim-1/frames/driving/index.json")


async def test_bad_image_rejected_before_video_is_fetched(inputs: dict[str, bytes]) -> None:
    store = store_with(inputs)
    with pytest.raises(InputRejected) as info:
        await run(animate_request(image="s3://uploads/drive.mp4"), store)
    assert info.value.code == ErrorCode.INPUT_UNSUPPORTED
    assert store.keys("jobs/") == []


def test_workers_setting() -> None:
    assert resolve_workers(SETTINGS, 3) == 3
    assert resolve_workers(SETTINGS, None) >= 1


async def test_missing_input_and_t2v() -> None:
    store = MemoryStore()
    req = JobRequest.model_validate({"job_id": "t2v-1", "prompt": "a cat"})
    job, _ = resolve(req)
    assert await preprocess(job, req, store, SETTINGS) == {}
    anim = animate_request()
    job, _ = resolve(anim)
    no_video = anim.model_copy(update={"video": None})
    with pytest.raises(InputRejected) as info:
        await preprocess(job, no_video, store, SETTINGS)
    assert info.value.code == ErrorCode.MISSING_INPUT


async def test_streaming_preprocess_announces_stored_prefixes_and_matches_serial(inputs: dict[str, bytes]) -> None:
    """on_ready: F grows by whole chunks, the partial index at the final key already serves [0, F), and
    the finished objects are byte for byte those of the serial run."""
    req = animate_request("long.mp4", num_frames=100, fps=30, job_id="anim-stream")
    serial_store, stream_store = store_with(inputs), store_with(inputs)
    serial = await run(req, serial_store)
    seen: list[tuple[int, FramesIndex, np.ndarray]] = []

    async def on_ready(refs: dict[str, Any], ready: int) -> None:
        assert set(refs) >= {"frames_index", "pose_index", "face_index", "keypoints", "reference"}
        index = FramesIndex.model_validate_json(await stream_store.get_bytes(refs["pose_index"].key))
        frames = await read_frames(stream_store, index, 0, ready)
        seen.append((ready, index, frames))

    streamed = await run(req, stream_store, on_ready=on_ready)
    readies = [r for r, _, _ in seen]
    assert readies == sorted(set(readies)) and len(readies) >= 2 and readies[0] % 32 == 0
    assert all(not index.complete and index.frames == r for r, index, _ in seen if r < 100)
    final = FramesIndex.model_validate_json(await stream_store.get_bytes(streamed["pose_index"].key))
    assert final.complete and final.frames == 100
    full = await read_frames(stream_store, final, 0, 100)
    for r, _, frames in seen:
        np.testing.assert_array_equal(frames, full[:r])  # what a runner read early is what it would read late
    assert set(streamed) == set(serial)
    chunk_keys = sorted(k for (_, k) in serial_store.objects if k.endswith(".mp4") and "/chunk-" in k)
    assert chunk_keys and all(serial_store.objects[(serial_store.bucket, k)]
                              == stream_store.objects[(stream_store.bucket, k)] for k in chunk_keys)
    kp = streamed["keypoints"].key
    assert serial_store.objects[(serial_store.bucket, kp)] == stream_store.objects[(stream_store.bucket, kp)]


async def test_streaming_preprocess_never_announces_a_video_without_a_person(inputs: dict[str, bytes]) -> None:
    calls: list[int] = []

    async def on_ready(refs: dict[str, Any], ready: int) -> None:
        calls.append(ready)

    with pytest.raises(InputRejected) as e:
        await run(animate_request("empty-scene.mp4", num_frames=40), store_with(inputs), on_ready=on_ready)
    assert e.value.code == ErrorCode.INPUT_UNSUPPORTED and calls == []


async def test_one_worker_and_two_store_identical_objects(inputs: dict[str, bytes]) -> None:
    """The whole path runs on the pool (pose, skeleton, chunk encodes): the bytes do not depend on it."""
    req = animate_request("long.mp4", num_frames=70, fps=30, job_id="anim-workers")
    stores = []
    for n in (1, 2):
        store = store_with(inputs)
        job, _ = resolve(req)
        await preprocess(job, req, store, SETTINGS, workers=n)
        stores.append(store)
    one, two = ({k: v for (_, k), v in s.objects.items() if k.startswith("jobs/")} for s in stores)
    meta = [k for k in one if k.endswith(".json")]  # index/sidecar JSON records the worker count and timing
    assert set(one) == set(two) and len(one) > len(meta) + 6
    assert all(one[k] == two[k] for k in one if k not in meta)
