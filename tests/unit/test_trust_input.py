"""Issue 13 item 6 at the unit level: job ids, strict numbers, nested JSON (no broker needed)."""

from __future__ import annotations

import json

import pytest

from functions.preprocess.validate import RequestRejected, parse_request
from runtime.consumer import job_id_of
from schemas.errors import ErrorCode
from schemas.messages import CancelRequest, JobRequest, valid_job_id

NESTED = b'{"job_id": "deep", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"


@pytest.mark.parametrize("job_id", ["j1\n", "j1\r\n", "\nj1", "j 1", "", "x" * 65, None, 7])
def test_invalid_job_ids(job_id: object) -> None:
    assert valid_job_id(job_id) is False


@pytest.mark.parametrize("job_id", ["j1", "A-b_9", "x" * 64])
def test_valid_job_ids(job_id: str) -> None:
    assert valid_job_id(job_id) is True


def test_trailing_newline_job_id_rejected_by_the_model_too() -> None:
    with pytest.raises(RequestRejected) as e:
        parse_request(json.dumps({"job_id": "j1\n", "prompt": "x"}).encode())
    assert e.value.code == ErrorCode.INVALID_JOB_ID


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_frames", "9"), ("num_frames", True), ("width", "64"), ("steps", 1.5), ("steps", 1.0),
     ("seed", False), ("presign_ttl_s", "600"), ("guidance_scale", "5"), ("guidance_scale", True),
     ("max_segment_frames", "9")],
)
def test_numbers_are_strict(field: str, value: object) -> None:
    with pytest.raises(RequestRejected) as e:
        parse_request(json.dumps({"job_id": "j1", "prompt": "x", field: value}).encode())
    assert e.value.code == ErrorCode.INVALID_REQUEST
    assert e.value.job_id == "j1" and field in str(e.value)


def test_strict_numbers_still_accept_proper_json_numbers() -> None:
    req = parse_request(json.dumps({"job_id": "j1", "num_frames": 9, "guidance_scale": 5, "steps": 2,
                                    "loras": [{"source": "s3://b/l.safetensors", "scale": 1}],
                                    "task": "t2v"}).encode())
    assert req.num_frames == 9 and req.guidance_scale == 5.0 and req.loras[0].scale == 1.0
    # Python callers (CLI, demo) build requests with enum strings and lists as before
    assert JobRequest(job_id="j2", task="i2v", loras=[]).task.value == "i2v"  # type: ignore[arg-type]


def test_lora_scale_strict() -> None:
    with pytest.raises(RequestRejected):
        parse_request(json.dumps({"job_id": "j1", "loras": [{"source": "s3://b/l.safetensors",
                                                             "scale": "1"}]}).encode())


def test_cancel_request_job_id_fullmatch() -> None:
    with pytest.raises(ValueError):
        CancelRequest.model_validate_json(b'{"job_id": "j1\\n"}')


def test_deeply_nested_json_is_a_rejection_not_a_crash() -> None:
    with pytest.raises(RequestRejected) as e:
        parse_request(NESTED)
    assert e.value.code == ErrorCode.INVALID_JSON and e.value.job_id is None


def test_job_id_of_survives_deep_nesting() -> None:
    assert job_id_of(NESTED) is None
    assert job_id_of(b'{"job_id": "ok"}') == "ok"
