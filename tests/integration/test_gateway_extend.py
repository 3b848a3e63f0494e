"""``POST /v1/videos/{id}/extend`` (contract v1.3 ``JobRequest.extend``) and the previews stitch stores,
on the real stack through the gateway (fixtures of ``test_gateway``)."""

from __future__ import annotations

import asyncio
import io

import cv2
import httpx2 as httpx
import numpy as np
import openai
import pytest

from runtime.settings import Settings
from runtime.storage import ObjectNotFound, Storage
from runtime.video import decode_mp4, probe_mp4
from schemas.messages import JobStatus
from schemas.names import (
    extend_condition_key,
    job_key,
    output_tail_key,
    segment_key,
    spritesheet_key,
    thumbnail_key,
)
from tests.integration.test_gateway import _auth, gateway, keys, sdk, sdk_video_with_any_size  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

OVERLAP = 5  # tiny-wan's default condition: the minimum segment overlap (vae_scale_temporal + 1)


def _get(stack: Settings, key: str) -> bytes:
    async def go() -> bytes:
        async with Storage(stack) as s:
            return await s.get_bytes(key)
    return asyncio.run(go())


def _exists(stack: Settings, key: str) -> bool:
    async def go() -> bool:
        async with Storage(stack) as s:
            return await s.exists(key)
    return asyncio.run(go())


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _frames(client: openai.OpenAI, video_id: str) -> np.ndarray:
    return decode_mp4(client.videos.download_content(video_id).read())


def test_stitch_stores_previews_and_tail(sdk: openai.OpenAI, stack: Settings) -> None:  # noqa: F811
    video = sdk.videos.create_and_poll(prompt="previews made by the pipeline", model="tiny-wan", size="64x48",
                                       extra_body={"num_frames": 9, "steps": 1, "seed": 3})
    assert video.status == "completed", video.error
    key = job_key("default", video.id)
    thumb = _get(stack, thumbnail_key(key))  # stored by the pipeline (here the runner), before anyone asked
    sheet = _get(stack, spritesheet_key(key))
    assert thumb[:3] == b"\xff\xd8\xff" and sheet[:3] == b"\xff\xd8\xff"
    assert cv2.imdecode(np.frombuffer(sheet, np.uint8), cv2.IMREAD_COLOR).shape == (2 * 48, 5 * 64, 3)
    assert sdk.videos.download_content(video.id, variant="thumbnail").read() == thumb  # served as stored
    assert sdk.videos.download_content(video.id, variant="spritesheet").read() == sheet
    frames = _frames(sdk, video.id)
    # a one-window job completed by its runner stores no output.tail.npy (contract v1.7): an extension
    # decodes the output's last frames instead (test_extend_continues_the_original checks they are exact)
    assert not _exists(stack, output_tail_key(key))
    assert frames.shape == (9, 48, 64, 3)
    status = JobStatus.model_validate_json(_kv_status(stack, key))
    assert status.output is not None and status.output.frames == 9


def _kv_status(stack: Settings, key: str) -> bytes:
    from runtime.bus import Bus
    from runtime.jobs import StatusStore

    async def go() -> bytes:
        async with Bus(stack, "videogen-test-extend") as bus:
            st, _ = await StatusStore(bus).get(key)
            assert st is not None
            return st.model_dump_json().encode()
    return asyncio.run(go())


def test_extend_continues_the_original(sdk: openai.OpenAI, gateway: str, keys: dict[str, str],  # noqa: F811
                                       stack: Settings) -> None:
    prompt = "a paper boat drifting down a stream"
    first = sdk.videos.create_and_poll(prompt=prompt, model="tiny-wan", size="64x48",
                                       extra_body={"num_frames": 9, "steps": 2, "seed": 21})
    assert first.status == "completed", first.error
    original = _frames(sdk, first.id)
    assert len(original) == 9

    r = httpx.post(f"{gateway}/v1/videos/{first.id}/extend", json={"num_frames": 8, "seed": 77},
                   headers=_auth(keys["default"]), timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["extended_from_video_id"] == first.id and body["id"] != first.id
    assert (body["size"], body["model"], body["prompt"]) == ("64x48", "tiny-wan", prompt)
    ext = sdk.videos.poll(body["id"])
    assert ext.status == "completed", ext.error
    assert ext.size == "64x48" and ext.seconds == f"{17 / 8:g}"

    out = _frames(sdk, ext.id)
    assert len(out) == 9 + 8 == probe_mp4(sdk.videos.download_content(ext.id).read()).frames
    # the original's frames come first (remuxed, bit-exact up to the seam, whose OVERLAP frames are cross-faded)
    assert np.array_equal(out[:9 - OVERLAP], original[:9 - OVERLAP])
    # the condition is exactly the original's last OVERLAP frames
    ext_key = job_key("default", ext.id)
    condition = _npy(_get(stack, extend_condition_key(ext_key)))
    assert condition.shape == (OVERLAP, 48, 64, 3) and np.array_equal(condition, original[-OVERLAP:])
    # the extension's first rendered frames continue the original's tail: segment 0 starts from the
    # condition's latents (latent replacement, as chained segments do), so they are the same whatever
    # the seed, while a fresh job with the same settings and seed starts elsewhere. (A random-weight
    # VAE reconstructs poorly, so the distance to the condition's pixels says little; tests/unit/
    # test_tiny_wan.py checks the latents themselves.)
    head = decode_mp4(_get(stack, segment_key(ext_key, 0)))[:OVERLAP]
    r = httpx.post(f"{gateway}/v1/videos/{first.id}/extend", json={"num_frames": 8, "seed": 4242},
                   headers=_auth(keys["default"]), timeout=30)
    assert r.status_code == 200, r.text
    other_seed = sdk.videos.poll(r.json()["id"])
    assert other_seed.status == "completed", other_seed.error
    other_head = decode_mp4(_get(stack, segment_key(job_key("default", other_seed.id), 0)))[:OVERLAP]
    fresh = sdk.videos.create_and_poll(prompt=prompt, model="tiny-wan", size="64x48",
                                       extra_body={"num_frames": 8 + OVERLAP, "steps": 2, "seed": 77})
    assert fresh.status == "completed", fresh.error
    fresh_head = _frames(sdk, fresh.id)[:OVERLAP]
    same_condition, unconditioned = _diff(head, other_head), _diff(head, fresh_head)
    assert same_condition < 0.25 * unconditioned, (same_condition, unconditioned)
    conditioned = _diff(head, original[-OVERLAP:])
    seam = _diff(out[9 - OVERLAP:9], original[-OVERLAP:])
    assert seam <= conditioned + 1.0, (seam, conditioned)
    # and the extension can itself be extended: 17 + 4 frames
    r = httpx.post(f"{gateway}/v1/videos/{ext.id}/extend", json={"num_frames": 4},
                   headers=_auth(keys["default"]), timeout=30)
    assert r.status_code == 200, r.text
    again = sdk.videos.poll(r.json()["id"])
    assert again.status == "completed", again.error
    twice = _frames(sdk, again.id)
    assert len(twice) == 21 and np.array_equal(twice[:17 - OVERLAP], out[:17 - OVERLAP])


def test_extend_refusals(sdk: openai.OpenAI, gateway: str, keys: dict[str, str], stack: Settings) -> None:  # noqa: F811
    mine = sdk.videos.create_and_poll(prompt="mine", model="tiny-wan", size="64x48",
                                      extra_body={"num_frames": 5, "steps": 1})
    assert mine.status == "completed", mine.error
    other = httpx.post(f"{gateway}/v1/videos/{mine.id}/extend", json={"num_frames": 4},
                       headers=_auth(keys["acme"]), timeout=30)
    assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
    too_many = httpx.post(f"{gateway}/v1/videos/{mine.id}/extend", json={"num_frames": 4, "condition_frames": 99},
                          headers=_auth(keys["default"]), timeout=30)
    assert too_many.status_code == 422 and too_many.json()["error"]["code"] == "out_of_range"
    # a source that is not finished: refused at the door
    running = sdk.videos.create(prompt="still rendering", model="tiny-wan", size="64x48",
                                extra_body={"num_frames": 41, "steps": 4})
    r = httpx.post(f"{gateway}/v1/videos/{running.id}/extend", json={"num_frames": 4},
                   headers=_auth(keys["default"]), timeout=30)
    assert r.status_code == 409 and r.json()["error"]["code"] == "extend_source_not_ready"
    sdk.videos.delete(running.id)


def test_extend_on_the_bus_rejects_an_unknown_source(stack: Settings, workers: dict) -> None:
    """Preprocess checks the source too (a client on NATS does not pass the gateway)."""
    from runtime import client
    from runtime.bus import Bus
    from schemas.messages import EventType, JobRequest

    async def go() -> tuple[str, str]:
        async with Bus(stack, "videogen-test-extend") as bus:
            req = JobRequest.model_validate({"job_id": "ext-missing-src", "prompt": "x", "num_frames": 4,
                                             "extend": {"job_id": "no-such-job"}})
            await client.submit(bus, req)
            async for event in client.follow(bus, req.job_id):
                if event.type in (EventType.REJECTED, EventType.SUCCEEDED, EventType.FAILED):
                    data = event.model_dump(mode="json")["data"]
                    return event.type.value, data.get("code", "")
        raise AssertionError("no terminal event")

    with pytest.raises(ObjectNotFound):
        _get(stack, output_tail_key("no-such-job"))
    assert asyncio.run(asyncio.wait_for(go(), 60)) == ("job.rejected", "extend_source_not_found")
