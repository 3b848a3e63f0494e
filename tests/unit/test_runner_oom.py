"""The runner's out-of-memory policy, routed through ``Runner._render`` (one rank, no bus: the
I/O object records what rank 0 would send)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from functions.planner.handler import make_plan, segment_job
from gpu_runner.inputs import SegmentInputs
from gpu_runner.pipelines.base import LoadContext, VideoPipeline
from gpu_runner.registry import load_model
from gpu_runner.runner import EXIT_RESTART, Runner
from runtime.settings import load_settings
from schemas.errors import ErrorCode, VideogenError
from schemas.messages import PlanRequest, ResolvedJob, SegmentJob, Task


class Pipe:
    """The real tiny-wan pipeline, made to raise what it is told to; counts calls."""

    def __init__(self, real: VideoPipeline) -> None:
        self.real_generate = real.generate  # bound before it is patched
        self.calls = 0
        self.raise_: BaseException | None = None

    def generate(self, params: Any, on_step: Any = None) -> np.ndarray:
        self.calls += 1
        if self.raise_ is not None:
            raise self.raise_
        return self.real_generate(params, on_step=on_step)


class IO:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def replan(self, active: Any, max_window_frames: int, reason: str) -> None:
        self.sent.append(("replan", max_window_frames))

    def fail(self, active: Any, err: BaseException) -> None:
        self.sent.append(("fail", err))

    def hand_back(self, active: Any, delay_s: float = 0.0) -> None:
        self.sent.append(("hand_back", delay_s))

    def submit_result(self, active: Any, frames: np.ndarray, elapsed_s: float) -> None:
        self.sent.append(("result", frames.shape[0]))

    def progress(self, active: Any, step: int, total: int) -> None:
        pass

    def begin_render(self, active: Any) -> None:
        self.sent.append(("begin_render", None))


def segment(job_id: str, frames: int) -> SegmentJob:
    job = ResolvedJob(job_id=job_id, task=Task.T2V, model="tiny-wan", prompt="p", negative_prompt="", width=32,
                      height=32, num_frames=frames, fps=8, steps=2, guidance_scale=1.0, seed=1, presign_ttl_s=3600)
    return segment_job(make_plan(PlanRequest(job=job), None), 0, None)


@pytest.fixture(scope="module")
def tiny() -> VideoPipeline:
    return load_model("tiny-wan", Path("models"), LoadContext(device="cpu", dtype="float32"))


@pytest.fixture
def runner(
    tmp_path: Path, tiny: VideoPipeline, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., tuple[Runner, Pipe, IO]]:
    def make(**settings: Any) -> tuple[Runner, Pipe, IO]:
        r = Runner(load_settings(data_dir=tmp_path, runner_device="cpu", **settings), "tiny-wan")
        pipe, io = Pipe(tiny), IO()
        monkeypatch.setattr(tiny, "generate", pipe.generate)
        r.pipe, r.io = tiny, io
        return r, pipe, io

    return make


def render(r: Runner, seg: SegmentJob) -> None:
    r._render(seg, SegmentInputs(), SimpleNamespace(cancelled=False), [])


def test_cuda_oom_replans_with_fewer_tokens_then_fails_at_the_floor(
    runner: Callable[..., tuple[Runner, Pipe, IO]],
) -> None:
    r, pipe, io = runner()
    pipe.raise_ = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    render(r, segment("a", 81))
    assert io.sent == [("replan", 53)]  # ~2/3 of the latent frames
    render(r, segment("a", 17))  # the same job again (its windows shrink): still its windows
    kind, err = io.sent[-1]
    assert kind == "fail" and isinstance(err, VideogenError) and err.code == ErrorCode.OUT_OF_MEMORY
    assert not err.retryable and r.exit_code == 0 and not r.stop_requested.is_set()


def test_window_over_the_runner_limit_is_replanned_without_compute(
    runner: Callable[..., tuple[Runner, Pipe, IO]],
) -> None:
    r, pipe, io = runner(runner_max_window_frames=25)
    render(r, segment("a", 45))
    assert io.sent == [("replan", 25)] and pipe.calls == 0
    render(r, segment("b", 25))  # within the limit: rendered
    assert io.sent[-1] == ("result", 25) and pipe.calls == 1
    render(r, segment("c", 33))
    render(r, segment("d", 33))
    render(r, segment("e", 33))  # refusals are configuration, never an OOM streak
    assert io.sent[-1] == ("replan", 25) and r.exit_code == 0


def test_a_runner_limit_below_the_replan_floor_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(VideogenError, match="below 17"):
        Runner(load_settings(data_dir=tmp_path, runner_device="cpu", runner_max_window_frames=13), "tiny-wan")


def test_oom_streak_across_jobs_hands_back_and_restarts(runner: Callable[..., tuple[Runner, Pipe, IO]]) -> None:
    r, pipe, io = runner()
    pipe.raise_ = RuntimeError("CUDA error: out of memory")
    render(r, segment("a", 81))
    render(r, segment("b", 81))
    assert [k for k, _ in io.sent] == ["replan", "replan"] and not r.stop_requested.is_set()
    render(r, segment("c", 81))
    assert io.sent[-1][0] == "hand_back" and r.exit_code == EXIT_RESTART and r.stop_requested.is_set()


def test_a_rendered_segment_resets_the_streak(runner: Callable[..., tuple[Runner, Pipe, IO]]) -> None:
    r, pipe, io = runner()
    for job_id in ("a", "b"):
        pipe.raise_ = torch.OutOfMemoryError("out of memory")
        render(r, segment(job_id, 81))
    pipe.raise_ = None
    render(r, segment("c", 9))
    pipe.raise_ = torch.OutOfMemoryError("out of memory")
    render(r, segment("d", 81))
    assert [k for k, _ in io.sent] == ["replan", "replan", "result", "replan"] and r.exit_code == 0


def test_other_errors_are_not_replanned(runner: Callable[..., tuple[Runner, Pipe, IO]]) -> None:
    r, pipe, io = runner()
    pipe.raise_ = RuntimeError("shape mismatch")
    render(r, segment("a", 81))
    assert io.sent[0][0] == "fail" and str(io.sent[0][1]) == "shape mismatch"


@pytest.fixture(autouse=True)
def _no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
