"""Admission control: the planner's own cost model, frames x pixels and stitch memory ceilings."""

from __future__ import annotations

import json

import pytest

from functions.planner.cost import window_cost
from functions.planner.plan import plan_segments
from functions.preprocess.admission import Limits, admit, figures, stitch_peak_bytes
from functions.preprocess.validate import RequestRejected, parse_request, resolve
from runtime.settings import Settings
from schemas.errors import ErrorCode
from schemas.registry import MODELS

DEFAULTS = Settings(_env_file=None)  # type: ignore[call-arg]
LIMITS = Limits(DEFAULTS.max_job_frame_pixels, DEFAULTS.max_job_gpu_seconds, DEFAULTS.max_stitch_bytes)


def _job(**fields):
    body = {"job_id": "j1", "prompt": "x", **fields}
    return resolve(parse_request(json.dumps(body).encode()))[0]


def test_the_issue_job_is_over_limit_with_its_figure() -> None:
    job = _job(model="wan2.1-t2v-14b", num_frames=5000, width=1920, height=1920, steps=100)
    with pytest.raises(RequestRejected) as e:
        admit(job, LIMITS)
    assert e.value.code == ErrorCode.OVER_LIMIT
    assert "18,432,000,000 frame pixels" in str(e.value)


def test_gpu_seconds_come_from_the_planner_cost_model() -> None:
    job = _job(model="wan2.1-t2v-14b", num_frames=5000, width=1920, height=1920, steps=100)
    fig = figures(job)
    assert fig is not None
    spec = MODELS[job.model]
    plan = plan_segments(job.num_frames, spec, job.width, job.height, steps=job.steps)
    expected = sum(window_cost(spec, job.width, job.height, w.frames, job.steps) for w in plan.windows)
    assert fig.gpu_seconds == pytest.approx(expected)
    assert fig.gpu_seconds > 15 * 86400  # "about 20 GPU-days", as the issue measured
    with pytest.raises(RequestRejected, match=r"modelled at [\d,]+ GPU seconds") as e:
        admit(job, Limits(max_frame_pixels=10**12, max_gpu_seconds=DEFAULTS.max_job_gpu_seconds,
                          max_stitch_bytes=10**15))
    assert e.value.code == ErrorCode.OVER_LIMIT


def test_stitch_memory_bound_rejects_many_small_windows() -> None:
    job = _job(model="wan2.1-t2v-14b", num_frames=5000, width=1280, height=720, steps=1, max_segment_frames=9)
    fig = figures(job)
    assert fig is not None and fig.segments > 1000 and fig.stitch_bytes > 8 << 30
    with pytest.raises(RequestRejected, match="GiB of memory") as e:
        admit(job, Limits(10**12, 10**12, DEFAULTS.max_stitch_bytes))
    assert e.value.code == ErrorCode.OVER_LIMIT


def test_stitch_peak_bytes_model() -> None:
    frame = 4 * 2 * 3
    assert stitch_peak_bytes((9,), (), 9, 4, 2) == 0  # one segment: a copy
    assert stitch_peak_bytes((9, 9, 9), (2, 3), 22, 4, 2) == (2 + 3 + 3) * frame
    assert stitch_peak_bytes((4, 4), (5,), 3, 4, 2) == 3 * frame  # overlap longer than a segment: whole video


@pytest.mark.parametrize("fields", [{"num_frames": 9, "steps": 1}, {"num_frames": 161, "width": 32, "height": 32},
                                    {"model": "wan2.1-t2v-14b", "num_frames": 81, "width": 1280, "height": 720}])
def test_ordinary_jobs_are_admitted(fields: dict) -> None:
    assert admit(_job(**fields), LIMITS) is not None
