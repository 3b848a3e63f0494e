"""preprocess() against a real S3 server (weed mini) through ``runtime.storage.Storage``:
an animate job from a synthetic driving video yields keypoints with plausible coordinates,
and S3-side failures (missing object, oversized object) map to their codes."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from functions.preprocess.errors import InputRejected
from functions.preprocess.limits import MediaLimits
from functions.preprocess.media import encode_png
from functions.preprocess.pipeline import preprocess
from functions.preprocess.skeleton import DET, J
from functions.preprocess.synthetic import draw_figure, figure_joints, figure_video
from functions.preprocess.validate import resolve
from runtime.embedded import S3Server
from runtime.frames_store import read_frames
from runtime.settings import Settings, load_settings
from runtime.storage import Storage
from schemas.errors import ErrorCode
from schemas.messages import JobRequest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def s3_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    data: Path = tmp_path_factory.mktemp("preprocess-s3")
    base = load_settings(data_dir=data)
    server = S3Server(data, base.s3_access_key.get_secret_value(), base.s3_secret_key.get_secret_value()).start()
    try:
        yield load_settings(data_dir=data, s3_endpoint=server.endpoint)
    finally:
        server.stop()


@pytest.fixture
async def storage(s3_settings: Settings) -> AsyncIterator[Storage]:
    async with Storage(s3_settings) as s:
        await s.ensure_bucket()
        await s.ensure_bucket("uploads")
        yield s


def request(job_id: str, video: str = "s3://uploads/drive.mp4") -> JobRequest:
    return JobRequest.model_validate({
        "job_id": job_id, "task": "animate", "model": "tiny-wan-animate", "image": "s3://uploads/ref.png",
        "video": video, "width": 128, "height": 96, "fps": 10, "num_frames": 17,
    })


async def test_animate_job_keypoints_on_real_s3(storage: Storage, s3_settings: Settings) -> None:
    await storage.put_bytes("ref.png", encode_png(draw_figure(0.0, 640, 480)), "image/png", bucket="uploads")
    await storage.put_bytes("drive.mp4", figure_video(2.0, 30, 640, 480), "video/mp4", bucket="uploads")
    req = request("s3-anim")
    job, _ = resolve(req)
    refs = await preprocess(job, req, storage, s3_settings, workers=2)

    keys = await storage.list_keys("jobs/s3-anim/")
    assert "jobs/s3-anim/keypoints/keypoints.npy" in keys and "jobs/s3-anim/inputs/video.mp4" in keys
    kp = np.load(io.BytesIO(await storage.get_bytes(refs["keypoints"].key)))
    meta = json.loads(await storage.get_bytes(refs["keypoints_meta"].key))
    assert kp.shape == (17, 33, 4) and meta["detected_frames"] >= 15
    # 640x480 -> 128x96: same aspect ratio, scale 0.2
    for i in np.flatnonzero(kp[:, 0, DET]):
        for drawn, joint, tol in (("l_shoulder", "left_shoulder", 4), ("head", "nose", 6), ("r_hip", "right_hip", 9)):
            x, y = figure_joints(i / 10, 640, 480)[drawn]
            assert np.hypot(kp[i, J[joint], 0] - 0.2 * x, kp[i, J[joint], 1] - 0.2 * y) < tol, (i, drawn)
    pose = await read_frames(storage, refs["pose_index"], 4, 8)
    assert pose.shape == (8, 96, 128, 3) and pose.max() > 100


async def test_missing_and_oversized_objects_rejected(storage: Storage, s3_settings: Settings) -> None:
    req = request("s3-missing", "s3://uploads/nope.mp4")
    job, _ = resolve(req)
    with pytest.raises(InputRejected) as info:
        await preprocess(job, req, storage, s3_settings, workers=1)
    assert info.value.code == ErrorCode.INPUT_UNREADABLE

    req = request("s3-big")
    job, _ = resolve(req)
    with pytest.raises(InputRejected) as info:
        await preprocess(job, req, storage, s3_settings, workers=1, limits=MediaLimits(max_video_bytes=1000))
    assert info.value.code == ErrorCode.INPUT_TOO_LARGE
