"""gateway/videos.py: ids and owners, create-request mapping, JobStatus -> OpenAI Video."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from openai._models import validate_type
from openai.types import Video as SdkVideo
from openai.types import VideoDeleteResponse

from gateway.videos import (
    DEFAULT_TENANT,
    GatewayError,
    VideoDeleted,
    build_request,
    id_created_at,
    is_gateway_id,
    new_video_id,
    owned_by,
    remix_request,
    to_video,
)
from schemas.messages import (
    ErrorInfo,
    JobRequest,
    JobState,
    JobStatus,
    OutputInfo,
    valid_job_id,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _status(state: JobState, **kw: object) -> JobStatus:
    return JobStatus.model_validate({"job_id": "x", "state": state, "created_at": T0,
                                     "updated_at": T0 + timedelta(seconds=30), "model": "tiny-wan", **kw})


def test_ids_fit_the_contract_order_by_time_and_name_their_tenant() -> None:
    a = new_video_id("acme", now_ms=1_700_000_000_000)
    b = new_video_id("acme", now_ms=1_700_000_000_001)
    assert valid_job_id(a) and len(a) <= 64
    assert a < b and is_gateway_id(a)
    assert id_created_at(a) == 1_700_000_000
    assert owned_by(a, "acme") and not owned_by(a, "default") and not owned_by(a, "acme2")
    assert new_video_id("acme") != new_video_id("acme")
    # jobs submitted on the bus directly belong to the default tenant only
    assert owned_by("my-job-1", DEFAULT_TENANT) and not owned_by("my-job-1", "acme")
    assert id_created_at("my-job-1") is None


def test_openai_fields_map_to_a_job_request() -> None:
    req = build_request("video_x", {"prompt": "p", "model": "tiny-wan", "seconds": "2", "size": "96x64"}, form=True)
    assert (req.width, req.height, req.num_frames, req.job_id) == (96, 64, 16, "video_x")  # 2 s x 8 fps
    req = build_request("v", {"prompt": "p", "seconds": "4", "fps": "4", "num_frames": "9", "steps": "3",
                              "seed": "7", "guidance_scale": "2.5", "webhook": '{"url": "https://h.example/x"}'},
                        form=True)
    assert (req.num_frames, req.fps, req.steps, req.seed, req.guidance_scale) == (9, 4, 3, 7, 2.5)
    assert req.webhook is not None and req.webhook.url == "https://h.example/x"
    req = build_request("v", {"prompt": "p", "model": "tiny-wan-i2v", "input_reference": {"image_url": "https://i.example/a.png"}})
    assert req.task.value == "i2v" and req.image == "https://i.example/a.png"
    req = build_request("v", {"prompt": "p", "model": "tiny-wan-animate"}, image="s3://b/u/i.png", video="s3://b/u/v.mp4")
    assert req.task.value == "animate" and req.video == "s3://b/u/v.mp4"


@pytest.mark.parametrize(("fields", "status", "code"), [
    ({"prompt": "p", "model": "nope"}, 400, "unknown_model"),
    ({"prompt": "p", "size": "1280x720"}, 422, "out_of_range"),  # tiny-wan: at most 256x256
    ({"prompt": "p", "size": "64"}, 400, "invalid_request"),
    ({"prompt": "p", "seconds": "-1"}, 422, "out_of_range"),
    ({"prompt": "p", "seconds": "four"}, 400, "invalid_request"),
    ({"prompt": "p", "steps": 0}, 422, "out_of_range"),
    ({"prompt": "p", "job_id": "mine"}, 400, "invalid_request"),  # ids are the gateway's to choose
    ({"prompt": "p", "webhook": "{"}, 400, "invalid_json"),
    ({"prompt": "p", "input_reference": {"file_id": "file_1"}}, 400, "invalid_request"),
    ({"prompt": " "}, 400, "invalid_request"),
])
def test_bad_requests_carry_job_rejected_codes(fields: dict, status: int, code: str) -> None:
    with pytest.raises(GatewayError) as info:
        build_request("video_x", fields)
    assert (info.value.status, info.value.code) == (status, code)
    assert info.value.body()["error"]["code"] == code


def test_form_text_numbers_are_parsed_but_json_keeps_strict_types() -> None:
    with pytest.raises(GatewayError) as info:  # a JSON body: the contract's strict integers
        build_request("v", {"prompt": "p", "num_frames": "9"})
    assert info.value.code == "invalid_request"
    for bad in ("9.5", "true", "1e3"):
        with pytest.raises(GatewayError) as info:
            build_request("v", {"prompt": "p", "num_frames": bad}, form=True)
        assert info.value.code == "invalid_request" and info.value.body()["error"]["param"] == "num_frames"
    with pytest.raises(GatewayError):
        build_request("v", {"prompt": "p", "guidance_scale": "nan"}, form=True)
    assert build_request("v", {"prompt": "p", "num_frames": " 9 "}, form=True).num_frames == 9


def test_remix_keeps_settings_and_changes_prompt() -> None:
    original = JobRequest(job_id="a", prompt="day", num_frames=9, width=96, height=64, seed=3, steps=2)
    remix = remix_request(original, "b", "night")
    assert remix.model_dump(exclude={"job_id", "prompt"}) == original.model_dump(exclude={"job_id", "prompt"})
    assert (remix.job_id, remix.prompt) == ("b", "night")
    with pytest.raises(GatewayError):
        remix_request(original, "c", "  ")


def test_states_map_to_openai_statuses() -> None:
    req = JobRequest(job_id="x", prompt="p", num_frames=9)
    assert to_video("x", req, None, assets_ttl_s=60).status == "queued"
    assert to_video("x", req, None, assets_ttl_s=60).state == "submitted"
    assert to_video("x", req, _status(JobState.PREPROCESSING), assets_ttl_s=60).status == "queued"
    queued = to_video("x", req, _status(JobState.QUEUED, queue_position=2), assets_ttl_s=60)
    assert queued.status == "queued" and queued.queue_position == 2
    running_status = _status(JobState.RUNNING, progress=42.9, segments_done=1, segments_total=3)
    running = to_video("x", req, running_status, assets_ttl_s=60)
    assert (running.status, running.progress, running.segments_done, running.segments_total) == (
        "in_progress", 42, 1, 3)
    failed_status = _status(JobState.FAILED, error=ErrorInfo(code="model_error", message="boom"))
    failed = to_video("x", req, failed_status, assets_ttl_s=60)
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "model_error"
    cancelled = to_video("x", req, _status(JobState.CANCELLED), assets_ttl_s=60)
    assert cancelled.status == "failed" and cancelled.error is not None and cancelled.error.code == "cancelled"
    out = OutputInfo(bucket="b", key="k", size=1, sha256="0" * 64, duration_s=1.125, frames=9, width=96, height=64,
                     fps=8)
    done = to_video("x", req, _status(JobState.SUCCEEDED, output=out, progress=100), assets_ttl_s=60)
    assert (done.status, done.size, done.seconds, done.progress) == ("completed", "96x64", "1.125", 100)
    assert done.completed_at == int((T0 + timedelta(seconds=30)).timestamp())
    assert done.expires_at == done.completed_at + 60
    assert done.created_at == int(T0.timestamp())  # not a gateway id: the status's created_at
    with pytest.raises(GatewayError):
        to_video("x", None, None, assets_ttl_s=60)


def test_the_openai_sdk_accepts_our_objects_strictly() -> None:
    """The SDK's own models, unmodified, in strict mode (size must be one of Sora's four)."""
    req = JobRequest(job_id="x", model="wan2.1-t2v-14b", prompt="p", width=1280, height=720, num_frames=81)
    for status in (None, _status(JobState.RUNNING, model="wan2.1-t2v-14b", progress=10),
                   _status(JobState.CANCELLED, model="wan2.1-t2v-14b")):
        body = to_video("x", req, status, assets_ttl_s=60).model_dump(mode="json")
        video = validate_type(type_=SdkVideo, value=body)
        assert video.size == "1280x720" and video.seconds == "5.062"
    deleted = validate_type(type_=VideoDeleteResponse, value=VideoDeleted(id="x", deleted=True).model_dump())
    assert deleted.object == "video.deleted"
