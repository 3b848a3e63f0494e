"""The long-lived runner loop, one per rank of a ``torchrun`` group.

rank 0: takes a segment job from the bus (``RunnerIO``), broadcasts it; every rank runs the
model; rank 0 hands the frames to the I/O thread (encode + upload + ack) and immediately
takes the next segment, so uploads overlap denoising. Cancellation is decided by rank 0 and
broadcast at each step boundary so all ranks stop at the same step.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpu_runner import distributed as dist
from gpu_runner.pipelines.base import GenerateParams, LoadContext, VideoPipeline
from gpu_runner.registry import load_model
from runtime.logging import bind_contextvars, get_logger
from runtime.settings import Settings
from schemas.errors import Cancelled
from schemas.messages import SegmentJob

log = get_logger(component="runner")

_IDLE = ("idle",)
_STOP = ("stop",)


@dataclass
class RunnerStats:
    segments: int = 0
    compute_s: float = 0.0
    started: float = 0.0

    @property
    def duty_cycle(self) -> float:
        wall = time.monotonic() - self.started
        return self.compute_s / wall if wall > 0 else 0.0


def resolve_device(pref: str) -> str:
    import torch

    if pref == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return pref


def resolve_dtype(pref: str, device: str) -> str:
    if pref != "auto":
        return pref
    return "bfloat16" if device.startswith("cuda") else "float32"


def params_for(seg: SegmentJob, condition: np.ndarray | None) -> GenerateParams:
    j = seg.job
    return GenerateParams(
        prompt=j.prompt, negative_prompt=j.negative_prompt, width=j.width, height=j.height,
        num_frames=seg.frames, steps=j.steps, guidance_scale=j.guidance_scale, seed=seg.seed,
        condition_frames=condition,
    )


class Runner:
    def __init__(self, settings: Settings, model: str, *, max_segments: int | None = None) -> None:
        self.settings = settings
        self.model = model
        self.max_segments = max_segments
        self.ctx = dist.init_from_env(resolve_device(settings.runner_device))
        self.stop_requested = threading.Event()
        self.stats = RunnerStats()
        self.io: Any = None
        self.pipe: VideoPipeline | None = None

    @property
    def is_rank0(self) -> bool:
        return self.ctx.rank == 0

    def install_signal_handlers(self) -> None:
        def _on_signal(signum: int, _frame: Any) -> None:
            log.info("shutdown_requested", signal=signal.Signals(signum).name, rank=self.ctx.rank)
            self.stop_requested.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _on_signal)

    def load(self) -> None:
        ctx = LoadContext(
            device=self.ctx.device, dtype=resolve_dtype(self.settings.runner_dtype, self.ctx.device),
            rank=self.ctx.rank, world_size=self.ctx.world_size, sequence_parallel=self.ctx.world_size > 1,
        )
        t0 = time.monotonic()
        self.pipe = load_model(self.model, self.settings.models_dir, ctx)
        if self.settings.runner_warmup:
            self.pipe.warmup()
        log.info("model_ready", model=self.model, load_s=round(time.monotonic() - t0, 2), rank=self.ctx.rank)

    def run(self) -> RunnerStats:
        self.load()
        if self.is_rank0:
            from gpu_runner.io import RunnerIO

            self.io = RunnerIO(self.settings, self.model)
            self.io.start()
        dist.barrier(self.ctx)
        self.stats.started = time.monotonic()
        try:
            self._loop()
        finally:
            if self.io is not None:
                self.io.close()
            log.info("runner_stopped", segments=self.stats.segments, duty_cycle=round(self.stats.duty_cycle, 4))
            dist.destroy(self.ctx)
        return self.stats

    # ---- the loop ----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            active = None
            if self.is_rank0:
                done = self.stop_requested.is_set() or (
                    self.max_segments is not None and self.stats.segments >= self.max_segments)
                if done:
                    command: Any = _STOP
                else:
                    active = self.io.next_segment(timeout_s=1.0)
                    command = _IDLE if active is None else ("job", active.job, self.io.fetch_condition(active))
            else:
                command = None
            command = dist.broadcast_object(command, ctx=self.ctx)
            if command[0] == "stop":
                return
            if command[0] == "idle":
                continue
            _, seg, condition = command
            self._render(seg, condition, active)

    def _render(self, seg: SegmentJob, condition: np.ndarray | None, active: Any) -> None:
        assert self.pipe is not None
        bind_contextvars(job_id=seg.job.job_id, segment=seg.index)
        t0 = time.monotonic()

        def on_step(step: int, total: int) -> None:
            cancel = False
            if self.is_rank0:
                self.io.progress(active, step, total)
                cancel = bool(active.cancelled)
            if self.ctx.world_size > 1:
                cancel = bool(dist.broadcast_object(cancel, ctx=self.ctx))
            if cancel:
                raise Cancelled(f"job {seg.job.job_id} cancelled at step {step}/{total}")

        try:
            frames = self.pipe.generate(params_for(seg, condition), on_step=on_step)
        except Cancelled as e:
            log.info("segment_cancelled", reason=str(e))
            if self.is_rank0:
                self.io.abandon(active)
            return
        except Exception as e:
            log.error("segment_failed", error=str(e), exc_info=True)
            if self.is_rank0:
                self.io.fail(active, e)
            self._after_error()
            return
        finally:
            elapsed = time.monotonic() - t0
            self.stats.compute_s += elapsed
        self.stats.segments += 1
        if self.is_rank0:
            self.io.submit_result(active, frames, elapsed)
        log.info("segment_rendered", frames=int(frames.shape[0]), elapsed_s=round(elapsed, 3))

    def _after_error(self) -> None:
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - best effort cleanup
            pass
