"""The HTTP gateway on the real stack (nats-server, weed mini, functions, tiny-wan runner) with the
official ``openai`` SDK, strict response validation on.

One relaxation, and only one: the SDK's ``Video.size`` is the enum of Sora's four sizes
(720x1280, 1280x720, 1024x1792, 1792x1024); tiny-wan renders at most 256x256, and the gateway
reports the size it really renders, so ``size`` is widened to ``str`` for these tests.
``test_size_enum_is_the_only_strict_mismatch`` shows that every other field of our answer passes
the SDK's unmodified model, and tests/unit/test_gateway_videos.py validates a 1280x720 Video
against it with nothing changed.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator

import cv2
import httpx2 as httpx
import numpy as np
import openai
import pytest
from openai._models import validate_type
from openai.types import Video as SdkVideo

from runtime.settings import Settings
from runtime.video import probe_mp4
from tests.gateway_server import make_key, running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def sdk_video_with_any_size() -> Iterator[None]:
    field = SdkVideo.model_fields["size"]
    original = field.annotation
    field.annotation = str
    SdkVideo.model_rebuild(force=True)
    yield
    field.annotation = original
    SdkVideo.model_rebuild(force=True)


@pytest.fixture(scope="module")
def gateway(stack: Settings, workers: dict) -> Iterator[str]:
    with running_gateway(stack) as url:
        yield url


@pytest.fixture(scope="module")
def keys(stack: Settings) -> dict[str, str]:
    return {"default": make_key(stack, "default"), "acme": make_key(stack, "acme")}


@pytest.fixture
def sdk(gateway: str, keys: dict[str, str], sdk_video_with_any_size: None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key=keys["default"], _strict_response_validation=True,
                         max_retries=0, timeout=120)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _decode_image(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, "not a decodable image"
    return img


def test_create_and_poll_download_and_previews(sdk: openai.OpenAI) -> None:
    video = sdk.videos.create_and_poll(prompt="a lighthouse in a storm", model="tiny-wan", size="64x48",
                                       seconds="1", extra_body={"num_frames": 9, "steps": 2, "seed": 5})
    assert video.status == "completed", video.error
    assert video.object == "video" and video.progress == 100 and video.error is None
    assert video.size == "64x48" and video.seconds == "1.125" and video.model == "tiny-wan"
    assert video.completed_at is not None and video.completed_at >= video.created_at
    assert video.expires_at is not None and video.expires_at > video.completed_at
    assert video.prompt == "a lighthouse in a storm"

    mp4 = sdk.videos.download_content(video.id).read()  # follows the 302 to the presigned URL
    assert mp4[4:8] == b"ftyp"
    info = probe_mp4(mp4)
    assert (info.frames, info.width, info.height) == (9, 64, 48)

    thumb = sdk.videos.download_content(video.id, variant="thumbnail").read()
    assert thumb[:3] == b"\xff\xd8\xff"  # JPEG
    assert _decode_image(thumb).shape == (48, 64, 3)
    assert sdk.videos.download_content(video.id, variant="thumbnail").read() == thumb  # stored, not remade
    sheet = _decode_image(sdk.videos.download_content(video.id, variant="spritesheet").read())
    assert sheet.shape == (2 * 48, 5 * 64, 3)  # 9 frames -> 5 columns x 2 rows of 64x48 tiles


def test_seconds_map_to_frames_at_the_model_fps(sdk: openai.OpenAI) -> None:
    video = sdk.videos.create(prompt="one second", model="tiny-wan", seconds="1", extra_body={"steps": 1})
    assert video.status == "queued" and video.seconds == "1" and video.size == "64x64"
    done = sdk.videos.poll(video.id)
    assert done.status == "completed", done.error
    assert probe_mp4(sdk.videos.download_content(video.id).read()).frames == 8  # tiny-wan: 8 fps


def test_list_retrieve_remix_delete(sdk: openai.OpenAI, gateway: str, keys: dict[str, str]) -> None:
    first = sdk.videos.create_and_poll(prompt="first", extra_body={"num_frames": 5, "steps": 1, "seed": 11})
    assert first.status == "completed", first.error
    remix = sdk.videos.remix(first.id, prompt="first, but at night")
    assert remix.id != first.id and remix.prompt == "first, but at night"
    remix = sdk.videos.poll(remix.id)
    assert remix.status == "completed", remix.error
    assert (remix.size, remix.seconds, remix.model) == (first.size, first.seconds, first.model)
    assert probe_mp4(sdk.videos.download_content(remix.id).read()).frames == 5

    got = sdk.videos.retrieve(first.id)
    assert got.id == first.id and got.status == "completed"

    page = sdk.videos.list(limit=100)
    ids = [v.id for v in page.data]
    assert ids.index(remix.id) < ids.index(first.id)  # newest first
    asc = [v.id for v in sdk.videos.list(order="asc", limit=100).data]
    assert asc == sorted(asc) and set(asc) == set(ids)
    one = sdk.videos.list(limit=1)
    assert len(one.data) == 1 and one.has_more
    raw = httpx.get(f"{gateway}/v1/videos", params={"limit": 1, "after": one.data[0].id},
                    headers=_auth(keys["default"])).json()
    assert raw["object"] == "list" and raw["data"][0]["id"] == ids[1] and raw["last_id"] == ids[1]
    assert [v.id for v in sdk.videos.list(limit=1)] == ids  # the SDK's auto-pagination (after = last_id)

    deleted = sdk.videos.delete(first.id)
    assert deleted.deleted is True and deleted.id == first.id and deleted.object == "video.deleted"
    with pytest.raises(openai.NotFoundError):
        sdk.videos.retrieve(first.id)
    assert first.id not in [v.id for v in sdk.videos.list(limit=100).data]


def test_delete_and_cancel_a_running_job(sdk: openai.OpenAI) -> None:
    long = {"num_frames": 81, "steps": 100, "seed": 3}
    running = sdk.videos.create(prompt="long", size="256x256", extra_body=long)
    deadline = time.monotonic() + 180
    while sdk.videos.retrieve(running.id).status != "in_progress":
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.2)
    resp = sdk.post(f"/videos/{running.id}/cancel", cast_to=SdkVideo, options={"headers": {"Prefer": "wait=60"}})
    assert resp.status == "failed" and resp.error is not None and resp.error.code == "cancelled"
    assert sdk.videos.retrieve(running.id).status == "failed"

    other = sdk.videos.create(prompt="long too", size="256x256", extra_body=long)
    deleted = sdk.videos.delete(other.id)  # cancels first, then deletes
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        sdk.videos.retrieve(other.id)


def test_prefer_wait_answers_when_done(gateway: str, keys: dict[str, str]) -> None:
    t0 = time.monotonic()
    resp = httpx.post(f"{gateway}/v1/videos", json={"prompt": "sync", "num_frames": 5, "steps": 1},
                      headers={**_auth(keys["default"]), "Prefer": "wait=120"}, timeout=150)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "completed" and body["progress"] == 100, body
    assert resp.headers["preference-applied"] == "wait=120"
    assert "openai-poll-after-ms" not in resp.headers
    assert time.monotonic() - t0 < 120
    # a short wait on a job that cannot finish in time answers the current state after ~wait seconds
    t0 = time.monotonic()
    resp = httpx.post(f"{gateway}/v1/videos", json={"prompt": "slow", "width": 256, "height": 256,
                                                    "num_frames": 81, "steps": 100},
                      headers={**_auth(keys["default"]), "Prefer": "wait=1"}, timeout=30)
    elapsed = time.monotonic() - t0
    assert resp.status_code == 200 and resp.json()["status"] in ("queued", "in_progress")
    assert 1.0 <= elapsed < 5.0
    assert int(resp.headers["openai-poll-after-ms"]) == 200
    httpx.delete(f"{gateway}/v1/videos/{resp.json()['id']}", headers=_auth(keys["default"]), timeout=60)


def test_events_are_server_sent_events(gateway: str, keys: dict[str, str]) -> None:
    created = httpx.post(f"{gateway}/v1/videos", json={"prompt": "sse", "num_frames": 5, "steps": 2},
                         headers=_auth(keys["default"])).json()
    events: list[dict] = []
    with httpx.stream("GET", f"{gateway}/v1/videos/{created['id']}/events", headers=_auth(keys["default"]),
                      timeout=120) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        current: dict[str, str] = {}
        for line in resp.iter_lines():
            if not line:
                if "data" in current:
                    events.append(current)
                current = {}
                continue
            if line.startswith(":"):
                continue  # ping
            name, _, value = line.partition(":")
            current[name] = value.strip()
    types = [e["event"] for e in events]
    assert types[0] == "job.accepted" and types[-1] == "job.succeeded", types
    assert "job.started" in types and "job.progress" in types
    for e in events:
        payload = json.loads(e["data"])
        assert payload["type"] == e["event"] and payload["id"] == e["id"] and payload["job_id"] == created["id"]
    assert len({e["id"] for e in events}) == len(events)


def test_auth_and_tenants(gateway: str, keys: dict[str, str], sdk: openai.OpenAI) -> None:
    mine = sdk.videos.create(prompt="tenant default", extra_body={"num_frames": 5, "steps": 1})
    assert httpx.get(f"{gateway}/v1/videos").status_code == 401
    assert httpx.get(f"{gateway}/v1/videos/{mine.id}").status_code == 401
    resp = httpx.get(f"{gateway}/v1/videos", headers=_auth("vg_not-a-real-key"))
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"
    assert httpx.post(f"{gateway}/v1/videos", json={"prompt": "x"}, headers=_auth("garbage")).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{gateway}/v1", api_key="vg_wrong", max_retries=0).videos.list()

    acme = openai.OpenAI(base_url=f"{gateway}/v1", api_key=keys["acme"], _strict_response_validation=True,
                         max_retries=0)
    for call in (lambda: acme.videos.retrieve(mine.id), lambda: acme.videos.delete(mine.id),
                 lambda: acme.videos.remix(mine.id, prompt="steal"),
                 lambda: acme.videos.download_content(mine.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert httpx.get(f"{gateway}/v1/videos/{mine.id}/events", headers=_auth(keys["acme"])).status_code == 404
    theirs = acme.videos.create_and_poll(prompt="tenant acme", extra_body={"num_frames": 5, "steps": 1})
    assert theirs.status == "completed"
    assert [v.id for v in acme.videos.list().data] == [theirs.id]
    assert theirs.id not in [v.id for v in sdk.videos.list(limit=100).data]
    with pytest.raises(openai.NotFoundError):
        sdk.videos.retrieve(theirs.id)
    assert sdk.videos.poll(mine.id).status == "completed"  # still there for its owner


def test_validation_errors_use_job_rejected_codes(gateway: str, keys: dict[str, str]) -> None:
    cases = [
        ({"prompt": "x", "model": "no-such-model"}, 400, "unknown_model"),
        ({"prompt": "x", "size": "4096x64"}, 422, "out_of_range"),
        ({"prompt": "x", "size": "63x64"}, 422, "out_of_range"),  # not a multiple of 16
        ({"prompt": "x", "size": "big"}, 400, "invalid_request"),
        ({"prompt": "x", "num_frames": 0}, 422, "out_of_range"),
        ({"prompt": "x", "colour": "red"}, 400, "invalid_request"),
        ({"prompt": ""}, 400, "invalid_request"),
        ({"prompt": "x", "task": "i2v", "model": "tiny-wan-i2v"}, 400, "missing_input"),
        ({"prompt": "x", "task": "dance"}, 400, "unknown_task"),
        ({"prompt": "x", "model": "tiny-wan", "task": "i2v", "image": "s3://videogen/uploads/a.png"},
         422, "unsupported_task_for_model"),
        # the SSRF policy, at the door (cloud metadata, private ranges)
        ({"prompt": "x", "webhook": {"url": "http://169.254.169.254/latest"}}, 400, "webhook_url_forbidden"),
        ({"prompt": "x", "model": "tiny-wan-i2v", "image": "https://10.1.2.3/a.png"}, 400, "input_forbidden"),
    ]
    for body, status, code in cases:
        resp = httpx.post(f"{gateway}/v1/videos", json=body, headers=_auth(keys["default"]))
        assert (resp.status_code, resp.json()["error"]["code"]) == (status, code), (body, resp.text)
    resp = httpx.post(f"{gateway}/v1/videos", content=b"{not json", headers={
        **_auth(keys["default"]), "Content-Type": "application/json"})
    assert (resp.status_code, resp.json()["error"]["code"]) == (400, "invalid_json")
    resp = httpx.post(f"{gateway}/v1/videos", data={"prompt": "x", "num_frames": "lots"},
                      headers=_auth(keys["default"]))
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "num_frames"


def test_uploaded_input_reference_reaches_preprocess(gateway: str, keys: dict[str, str], sdk: openai.OpenAI) -> None:
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, :32] = (0, 128, 255)
    ok, png = cv2.imencode(".png", img)
    assert ok
    video = sdk.videos.create(prompt="she turns", model="tiny-wan-i2v",
                              input_reference=("portrait.png", io.BytesIO(png.tobytes()), "image/png"),
                              extra_body={"num_frames": 5, "steps": 1})
    assert video.task == "i2v"  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60
    state = ""
    while time.monotonic() < deadline:  # no tiny-wan-i2v runner here: the job waits in its queue
        state = httpx.get(f"{gateway}/v1/videos/{video.id}", headers=_auth(keys["default"])).json()["state"]
        if state in ("queued", "failed"):
            break
        time.sleep(0.2)
    assert state == "queued", state  # preprocess read, sniffed and resized the uploaded PNG
    assert sdk.videos.delete(video.id).deleted


def test_size_enum_is_the_only_strict_mismatch(gateway: str, keys: dict[str, str]) -> None:
    """Against the SDK's own (unpatched) model, a 64x64 answer fails on ``size`` and nothing else."""
    body = httpx.post(f"{gateway}/v1/videos", json={"prompt": "enum", "num_frames": 5, "steps": 1},
                      headers=_auth(keys["default"])).json()
    original = {"720x1280", "1280x720", "1024x1792", "1792x1024"}
    from typing import Literal

    from pydantic import ValidationError

    field = SdkVideo.model_fields["size"]
    saved = field.annotation
    field.annotation = Literal[tuple(sorted(original))]  # type: ignore[misc,valid-type]
    SdkVideo.model_rebuild(force=True)
    try:
        with pytest.raises(ValidationError) as info:
            validate_type(type_=SdkVideo, value=body)
        assert [e["loc"] for e in info.value.errors()] == [("size",)]
        validate_type(type_=SdkVideo, value={**body, "size": "1280x720"})
    finally:
        field.annotation = saved
        SdkVideo.model_rebuild(force=True)


def test_openapi_docs_health_metrics(gateway: str) -> None:
    spec = httpx.get(f"{gateway}/openapi.json").json()
    for path in ("/v1/videos", "/v1/videos/{video_id}", "/v1/videos/{video_id}/content",
                 "/v1/videos/{video_id}/remix", "/v1/videos/{video_id}/events", "/v1/videos/{video_id}/cancel"):
        assert path in spec["paths"], path
    assert "multipart/form-data" in spec["paths"]["/v1/videos"]["post"]["requestBody"]["content"]
    assert "VideoCreateBody" in spec["components"]["schemas"]
    assert "swagger" in httpx.get(f"{gateway}/docs").text.lower()
    assert httpx.get(f"{gateway}/healthz").json()["status"] == "ok"
    ready = httpx.get(f"{gateway}/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["nats_connected"]
    metrics = httpx.get(f"{gateway}/metrics").text
    assert 'videogen_gateway_requests_total{method="POST",route="/v1/videos",status="200"}' in metrics
    assert "videogen_gateway_jobs_submitted_total" in metrics


def test_keys_cli_prints_a_working_key_once(stack: Settings, gateway: str) -> None:
    import subprocess
    import sys

    from tests.stack import REPO, child_env

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "runtime.cli", "keys", *args], env=child_env(stack),
                              cwd=str(REPO), capture_output=True, text=True, timeout=60, check=False)
    created = run("create", "--tenant", "cli-tenant", "--name", "from the test")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("vg_") and len(key) > 40
    resp = httpx.get(f"{gateway}/v1/videos", headers=_auth(key))
    assert resp.status_code == 200 and resp.json()["data"] == []
    listed = run("list")
    assert key not in listed.stdout and "cli-tenant" in listed.stdout  # hashes and hints only
    entry = next(e for e in json.loads(listed.stdout) if e["name"] == "from the test")
    assert entry["hint"] == key[:7] + "…"
    assert run("revoke", entry["sha256"]).returncode == 0
    assert run("create", "--tenant", "Not A Tenant!").returncode == 2


def test_retrieve_with_prefer_wait(gateway: str, keys: dict[str, str]) -> None:
    created = httpx.post(f"{gateway}/v1/videos", json={"prompt": "wait on get", "num_frames": 5, "steps": 1},
                         headers=_auth(keys["default"])).json()
    assert created["status"] == "queued" and created["state"] == "submitted"
    resp = httpx.get(f"{gateway}/v1/videos/{created['id']}", headers={**_auth(keys["default"]), "Prefer": "wait=90"},
                     timeout=120)
    assert resp.status_code == 200 and resp.json()["status"] == "completed"
    assert resp.headers["preference-applied"] == "wait=90"
