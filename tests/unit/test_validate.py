"""Validation at the door: every bad request gets a precise, machine-readable code."""

from __future__ import annotations

import json

import pytest

from functions.preprocess.validate import RequestRejected, default_seed, parse_request, resolve
from schemas.errors import ErrorCode


def _resolve(**fields):
    body = {"job_id": "j1", "prompt": "a cat", **fields}
    return resolve(parse_request(json.dumps(body).encode()))


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", ErrorCode.INVALID_JSON),
        (b"[1, 2]", ErrorCode.INVALID_REQUEST),
        (b'{"job_id": "bad id!", "prompt": "x"}', ErrorCode.INVALID_JOB_ID),
        (b'{"job_id": "j", "task": "t2i", "prompt": "x"}', ErrorCode.UNKNOWN_TASK),
        (b'{"job_id": "j", "prompt": "x", "num_frames": 0}', ErrorCode.OUT_OF_RANGE),
        (b'{"job_id": "j", "prompt": "x", "steps": 1000}', ErrorCode.OUT_OF_RANGE),
        (b'{"job_id": "j", "prompt": "x", "presign_ttl_s": 5}', ErrorCode.OUT_OF_RANGE),
        (b'{"job_id": "j", "prompt": "x", "webhook": {"url": "ftp://x"}}', ErrorCode.INVALID_REQUEST),
    ],
)
def test_parse_errors(payload: bytes, code: ErrorCode) -> None:
    with pytest.raises(RequestRejected) as e:
        parse_request(payload)
    assert e.value.code == code
    assert str(e.value)


def test_job_id_kept_when_readable() -> None:
    with pytest.raises(RequestRejected) as e:
        parse_request(b'{"job_id": "keep-me", "steps": -1, "prompt": "x"}')
    assert e.value.job_id == "keep-me" and e.value.details
    with pytest.raises(RequestRejected) as e2:
        parse_request(b'{"job_id": "no way!", "prompt": "x"}')
    assert e2.value.job_id is None


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"model": "nope"}, ErrorCode.UNKNOWN_MODEL),
        ({"task": "i2v"}, ErrorCode.UNSUPPORTED_TASK_FOR_MODEL),
        ({"model": "tiny-wan-i2v", "task": "i2v"}, ErrorCode.MISSING_INPUT),
        ({"width": 50}, ErrorCode.OUT_OF_RANGE),
        ({"width": 4096}, ErrorCode.OUT_OF_RANGE),
        ({"prompt": "  "}, ErrorCode.INVALID_REQUEST),
        ({"max_segment_frames": 10}, ErrorCode.OUT_OF_RANGE),
    ],
)
def test_model_constraints(fields: dict, code: ErrorCode) -> None:
    with pytest.raises(RequestRejected) as e:
        _resolve(**fields)
    assert e.value.code == code


def test_defaults_from_model() -> None:
    job, spec = _resolve()
    assert (job.width, job.height, job.num_frames, job.steps, job.fps) == (
        spec.default_width, spec.default_height, spec.default_frames, spec.default_steps, spec.default_fps)
    assert job.seed == default_seed("j1") == _resolve()[0].seed  # deterministic across redeliveries
    job2, _ = _resolve(seed=7, width=128, num_frames=33)
    assert (job2.seed, job2.width, job2.num_frames) == (7, 128, 33)
