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
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from functions.planner.segments import RunnerTarget
from gpu_runner import distributed as dist
from gpu_runner import oom
from gpu_runner.accel import AccelConfig, resident_bytes
from gpu_runner.budget import WindowBudget
from gpu_runner.caches import CacheConfig, counted_cache
from gpu_runner.caches import prepare as prepare_cache
from gpu_runner.inputs import IDLE, STOP, CommandKind, RankCommand, SegmentInputs
from gpu_runner.lora import AdapterCache, LoraSpec, PeerView, applied_lora
from gpu_runner.metrics import HealthServer, ReadinessFile, RunnerMetrics
from gpu_runner.pipelines.base import GenerateParams, LoadContext, VideoPipeline
from gpu_runner.registry import load_model
from runtime.logging import bind_contextvars, get_logger
from runtime.settings import Settings
from schemas.errors import Cancelled, ErrorCode, Permanent
from schemas.messages import SegmentJob
from schemas.registry import MODELS

log = get_logger(component="runner")

# CUDA OOM with the GPU itself short (an OOM streak): hand the segment back for another runner.
OOM_RETRY_DELAY_S = 10.0
# Exit status asking the orchestrator for a restart (a fresh CUDA context): EX_TEMPFAIL.
EXIT_RESTART = 75
# A pull waits this long for a segment (returns at once when one arrives); between pulls rank 0
# checks for shutdown and tells the other ranks it is idle. Longer pulls expire less often, and
# an expiry racing a new message is what delays that message to the next pull.
FETCH_TIMEOUT_S = 5.0


# Input errors every rank raises alike, before any collective (``check_params``, missing inputs):
# safe to fail the job and carry on. Anything else out of ``generate`` in a group ends the group.
GROUP_SAFE_CODES = frozenset({ErrorCode.OUT_OF_RANGE, ErrorCode.MISSING_INPUT, ErrorCode.INPUT_UNSUPPORTED,
                              ErrorCode.INPUT_UNREADABLE})


class GroupFailed(RuntimeError):
    """Raised out of the loop after a group-ending failure (the runner exits ``EXIT_RESTART``)."""


def is_device_error(error: BaseException) -> bool:
    """A CUDA or NCCL/distributed failure: the device or the group is in an unknown state (fatal)."""
    import torch

    kinds = tuple(k for k in (getattr(torch, "AcceleratorError", None),
                              getattr(torch.distributed, "DistError", None)) if isinstance(k, type))
    if kinds and isinstance(error, kinds):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(m in text for m in ("CUDA error", "NCCL", "cuDNN error",
                                                                         "CUBLAS_STATUS"))


def ends_group(error: BaseException, world_size: int) -> bool:
    """True when ``error`` out of ``generate`` must end the process group (see ``Runner._end_group``)."""
    if isinstance(error, Cancelled):
        return False
    if is_device_error(error):
        return True
    if world_size <= 1:
        return False
    return not (isinstance(error, Permanent) and error.code in GROUP_SAFE_CODES)


@dataclass
class RunnerStats:
    segments: int = 0
    compute_s: float = 0.0
    started: float = 0.0

    @property
    def duty_cycle(self) -> float:
        wall = time.monotonic() - self.started
        return self.compute_s / wall if wall > 0 else 0.0


def open_io(settings: Settings, model: str) -> Any:
    """Rank 0's I/O, started: a ``RunnerIO`` in a process of its own (``runner_io=process``, the
    default: no I/O holds the compute thread's GIL) or on a thread of this one (``thread``)."""
    if settings.runner_io == "thread":
        from gpu_runner.io import RunnerIO

        io: Any = RunnerIO(settings, model)
    else:
        from gpu_runner.io_process import IOProcess

        io = IOProcess(settings, model)
    io.start()
    return io


def resolve_device(pref: str) -> str:
    import torch

    if pref == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return pref


def resolve_dtype(pref: str, device: str) -> str:
    if pref != "auto":
        return pref
    return "bfloat16" if device.startswith("cuda") else "float32"


def lora_specs(seg: SegmentJob) -> list[LoraSpec]:
    return [LoraSpec(source=r.source, scale=r.scale, sha256=r.sha256) for r in seg.job.loras]


def params_for(seg: SegmentJob, inputs: SegmentInputs) -> GenerateParams:
    j = seg.job
    return GenerateParams(
        prompt=j.prompt, negative_prompt=j.negative_prompt, width=j.width, height=j.height,
        num_frames=seg.frames, steps=j.steps, guidance_scale=j.guidance_scale, seed=seg.seed,
        condition_frames=inputs.condition, image=inputs.image, pose_video=inputs.pose_video,
        face_video=inputs.face_video,
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
        self.metrics = RunnerMetrics()
        self.warmed_up = False
        self.exit_code = 0
        self.oom_streak = oom.OomStreak()
        spec, cap = MODELS.get(model), settings.runner_max_window_frames
        if cap is not None and spec is not None and cap < oom.default_min_frames(spec):
            # every refused segment would have to fail: say so now, not on the first job
            raise Permanent(f"runner_max_window_frames={cap} is below {oom.default_min_frames(spec)}, the "
                            f"shortest window {model} is re-planned to", code=ErrorCode.OUT_OF_RANGE)
        self.health: HealthServer | None = None
        self.ready_file = ReadinessFile(settings.data_dir, self.ctx.rank)
        self.cache_config = CacheConfig(kind=settings.runner_cache)  # type: ignore[arg-type]
        # per-job LoRA adapters: rank 0 fetches, every rank keeps the same LRU of state dicts
        self.budget: WindowBudget | None = None  # measured in load() (CUDA, or runner_memory_budget_bytes)
        self.adapters = AdapterCache(max_entries=8, dir=Path(settings.data_dir) / "lora" / f"rank{self.ctx.rank}")
        self.peer_adapters = PeerView(self.adapters.max_entries)  # rank 0: what the other ranks hold

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
        s = self.settings
        dtype = resolve_dtype(s.runner_dtype, self.ctx.device)
        ctx = LoadContext(
            device=self.ctx.device, dtype=dtype, rank=self.ctx.rank, world_size=self.ctx.world_size,
            sequence_parallel=self.ctx.world_size > 1, cfg_parallel=s.runner_cfg_parallel and self.ctx.world_size > 1,
            host_frames=self.is_rank0, offload_text_encoder=s.runner_offload_text_encoder,
            accel=AccelConfig.from_settings(s),
        )
        if s.runner_ranks != self.ctx.world_size:
            log.warning("planner_ranks_mismatch", runner_ranks=s.runner_ranks, world_size=self.ctx.world_size,
                        hint="set VIDEOGEN_RUNNER_RANKS to the group's size so the planner splits windows alike")
        spec = MODELS.get(self.model)
        if spec is not None:  # measured before the weights land on the device
            self.budget = WindowBudget.measure(
                spec, self.ctx.device, override=s.runner_memory_budget_bytes, margin=s.runner_memory_margin_bytes,
                ranks=self.ctx.world_size, cfg_parallel=ctx.cfg_parallel, cache=self.cache_config.kind,
                dtype_bytes=2 if dtype in ("bfloat16", "bf16", "float16", "fp16") else 4,
                model=RunnerTarget(ranks=self.ctx.world_size, cfg_parallel=ctx.cfg_parallel,
                                   shard=s.runner_shard).memory_model())
            if self.budget is not None and self.ctx.device.startswith("cuda"):
                self.budget.check_cache()  # before minutes of loading: a cache that cannot fit is refused now
        t0 = time.monotonic()
        self.pipe = load_model(self.model, s.models_dir, ctx)
        if self.settings.runner_warmup:
            self.pipe.warmup()  # with runner_compile: the blocks compile here, before the first pull
        if self.cache_config.enabled:
            # calibrates what the cache needs and fails loudly if it would skip nothing
            self.cache_config = prepare_cache(self.pipe, self.cache_config)
            log.info("step_cache_enabled", kind=self.cache_config.kind)
        pipe = getattr(self.pipe, "pipe", None)
        if pipe is not None:
            resident = resident_bytes(pipe, self.ctx.device)
            log.info("resident_bytes", rank=self.ctx.rank, device=self.ctx.device, total=sum(resident.values()),
                     **resident)
        self.warmed_up = True
        log.info("model_ready", model=self.model, load_s=round(time.monotonic() - t0, 2), rank=self.ctx.rank)

    def run(self) -> RunnerStats:
        self.load()
        if self.is_rank0:
            self.io = open_io(self.settings, self.model)
            self.adapters.fetch = self.io.fetch_lora
            if self.settings.health_port is not None:
                self.health = HealthServer(self.settings.health_port, self.metrics, {
                    "model_loaded": lambda: self.pipe is not None,
                    "warmed_up": lambda: self.warmed_up,
                    "bus_connected": lambda: self.io.connected(),
                }).start()
        dist.barrier(self.ctx)
        self.stats.started = time.monotonic()
        self.ready_file.set(True)
        group_failed = False
        try:
            self._loop()
        except GroupFailed:
            group_failed = True  # exit_code is EXIT_RESTART; torchrun ends the peers stuck in a collective
        finally:
            self.ready_file.set(False)
            if self.health is not None:
                self.health.stop()
            if self.io is not None:
                self.io.close()
            log.info("runner_stopped", segments=self.stats.segments, duty_cycle=round(self.stats.duty_cycle, 4),
                     exit_code=self.exit_code)
            if not group_failed:  # a peer may be inside a collective: do not wait on it
                dist.destroy(self.ctx)
        return self.stats

    # ---- the loop ----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            active = None
            self.metrics.heartbeat()
            self.metrics.set_duty_cycle(self.stats.duty_cycle)
            if self.is_rank0:
                done = self.stop_requested.is_set() or (
                    self.max_segments is not None and self.stats.segments >= self.max_segments)
                if done:
                    command: RankCommand | None = STOP
                else:
                    active = self.io.next_segment(timeout_s=FETCH_TIMEOUT_S)
                    if active is not None and active.stored_at is not None:
                        self.metrics.observe_queue_wait_since(active.stored_at)
                    command = IDLE if active is None else self._job_command(active)
            else:
                command = None
            command = dist.broadcast_object(command, ctx=self.ctx)
            assert command is not None
            if command.kind == CommandKind.STOP:
                return
            if command.kind == CommandKind.IDLE:
                continue
            assert command.segment is not None and command.inputs is not None
            loras = lora_specs(command.segment)
            for spec in loras:  # ranks > 0 receive the state dicts rank 0 fetched
                if spec not in self.adapters and spec.cache_key in command.adapters:
                    self.adapters.put(spec, command.adapters[spec.cache_key])
            self._render(command.segment, command.inputs, active, loras)

    def _job_command(self, active: Any) -> RankCommand:
        """Rank 0: everything the other ranks need for this segment, or idle if it could not be had."""
        try:
            inputs = self.io.fetch_inputs(active)
            self.io.begin_render(active)  # the segment's own budget: renders started (runtime/liveness.py)
            specs = lora_specs(active.job)
            # state_dict() fetches and caches on rank 0; the other ranks get the tensors in the broadcast,
            # only those they do not hold yet (not every segment: a job's segments share its adapters)
            for spec in specs:
                self.adapters.state_dict(spec)
            send = self.peer_adapters.missing(specs) if self.ctx.world_size > 1 else []
            adapters = {spec.cache_key: self.adapters.state_dict(spec) for spec in send}
        except Exception as e:
            log.error("segment_inputs_failed", job_id=active.job.job.job_id, error=str(e))
            self.io.fail(active, e)
            return IDLE
        self.peer_adapters.record(specs, list(adapters))
        return RankCommand.job(active.job, inputs, adapters)

    def _render(self, seg: SegmentJob, inputs: SegmentInputs, active: Any, loras: list[LoraSpec]) -> None:
        assert self.pipe is not None
        bind_contextvars(job_id=seg.job.job_id, segment=seg.index)
        t0 = time.monotonic()
        last_step = [t0]

        def on_step(step: int, total: int) -> None:
            now = time.monotonic()
            self.metrics.observe_step(now - last_step[0])
            self.metrics.heartbeat()
            last_step[0] = now
            cancel = False
            if self.is_rank0:
                self.io.progress(active, step, total)
                cancel = bool(active.cancelled)
            if self.ctx.world_size > 1:
                cancel = bool(dist.broadcast_object(cancel, ctx=self.ctx))
            if cancel:
                raise Cancelled(f"job {seg.job.job_id} cancelled at step {step}/{total}")

        outcome = "failed"
        out_of_memory = False
        try:
            cap = self.settings.runner_max_window_frames
            if self.budget is not None:  # what fits this rank's measured memory at the job's resolution
                fits = self.budget.cap(seg.job.width, seg.job.height)
                cap = fits if cap is None else min(cap, fits)
            if cap is not None and seg.frames > cap:
                raise oom.WindowTooLong(seg.frames, cap)  # before any compute, on every rank alike
            # no cache: no counting hooks on every block either (they cost a Python call per block call)
            cache = counted_cache(self.pipe, self.cache_config, steps=seg.job.steps) if self.cache_config.enabled \
                else nullcontext()
            with applied_lora(self.pipe, loras or None, self.adapters), cache:
                frames = self.pipe.generate(params_for(seg, inputs), on_step=on_step)
            outcome = "succeeded"
            self.oom_streak.succeeded()
        except Cancelled as e:
            outcome = "cancelled"
            log.info("segment_cancelled", reason=str(e))
            if self.is_rank0:
                self.io.abandon(active)
            return
        except Exception as e:
            out_of_memory = oom.is_oom(e)
            refused = isinstance(e, oom.WindowTooLong)
            if not (out_of_memory or refused) and ends_group(e, self.ctx.world_size):
                outcome = "retried"  # handed back for a fresh group
                self._end_group(active, e)  # raises GroupFailed: this rank never re-enters a collective
            outcome = "refused" if refused else "oom" if out_of_memory else "failed"
            if refused:
                log.warning("segment_window_refused", frames=seg.frames,
                            max_window_frames=self.settings.runner_max_window_frames)
            else:
                log.error("segment_failed", error=str(e), oom=out_of_memory, exc_info=not out_of_memory)
            if out_of_memory:
                self._after_oom(seg, active, e if refused else None)
            elif self.is_rank0:
                self.io.fail(active, e)
            return
        finally:
            elapsed = time.monotonic() - t0
            self.stats.compute_s += elapsed
            self.metrics.observe_segment(elapsed, outcome)
            self.metrics.update_gpu_memory()
            if out_of_memory and outcome == "oom":
                oom.free_memory()  # outside the except block: the traceback no longer pins activations
                if self.ctx.world_size > 1:
                    # another rank may be stuck in a collective: let torchrun restart the whole group
                    self.exit_code = EXIT_RESTART
                    self.stop_requested.set()
        self.stats.segments += 1
        if self.is_rank0:
            self.io.submit_result(active, frames, elapsed)
        log.info("segment_rendered", frames=int(frames.shape[0]), elapsed_s=round(elapsed, 3))

    def _end_group(self, active: Any, error: BaseException) -> None:
        """A rank-local failure (or a CUDA/NCCL error): the peers may sit in a collective this rank
        will never join, so no rank re-enters the broadcast: hand the segment back (rank 0) and exit
        ``EXIT_RESTART`` on every rank; torchrun/the orchestrator restarts the whole group."""
        log.error("segment_failed_group_restart", error=str(error), error_type=type(error).__name__,
                  world_size=self.ctx.world_size, exc_info=True)
        if self.is_rank0:
            try:
                self.io.hand_back(active, delay_s=OOM_RETRY_DELAY_S)
            except Exception as e:  # noqa: BLE001 - exiting anyway: the message is redelivered after its ack wait
                log.error("hand_back_failed", error=str(e))
        self.exit_code = EXIT_RESTART
        raise GroupFailed(str(error)) from error

    def _after_oom(self, seg: SegmentJob, active: Any, refused: oom.WindowTooLong | None) -> None:
        """Out of memory (or a window over this runner's limit): re-plan shorter windows, fail the
        job when none is left, or, when the GPU itself looks short, hand back and restart."""
        if refused is None and self.oom_streak.record(seg.job.job_id):
            log.error("gpu_memory_short_restarting", oom_streak=len(self.oom_streak.jobs),
                      jobs=sorted(set(self.oom_streak.jobs)))
            if self.is_rank0:
                self.io.hand_back(active, delay_s=OOM_RETRY_DELAY_S)
            self.exit_code = EXIT_RESTART
            self.stop_requested.set()
            return
        assert self.pipe is not None
        decision = oom.plan_after_oom(seg.frames, self.pipe.spec, device_cap=refused.cap if refused else None)
        log.warning("segment_out_of_memory", action=decision.action, frames=seg.frames,
                    max_window_frames=decision.replan_max_window, reason=decision.reason)
        if not self.is_rank0:
            return
        if decision.action == "replan" and decision.replan_max_window is not None:
            self.io.replan(active, decision.replan_max_window, decision.reason)
        else:
            self.io.fail(active, Permanent(decision.reason, code=ErrorCode.OUT_OF_MEMORY))

