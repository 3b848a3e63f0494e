"""Wan text-to-video family (diffusers ``WanPipeline``): tiny random build, loading, generation.

Anatomy as in diffusers pipelines: ``check_params`` (validate), ``prepare_latents`` (seeded noise),
conditioning on the previous segment's tail (``encode_condition`` + latent replacement in
``callback_on_step_end``), the pipeline's own denoising loop, decode to uint8 frames.

Chaining (latent replacement): the previous segment's last ``O`` decoded frames are VAE-encoded
and normalised exactly like the pipeline's latents (``(z - latents_mean) / latents_std``). The
causal Wan VAE maps frame 0 to latent frame 0 and frames ``4j-3..4j`` to latent frame ``j``, so
``O = 4j+1`` frames fill exactly ``j+1`` latent frames. Before the first step and after every
step those latent frames are overwritten with the clean condition latents re-noised to the
scheduler's current sigma (flow matching: ``x_t = (1 - σ)·x0 + σ·ε``, with ``ε`` the window's own
initial noise); after the last step ``σ = 0`` and they equal the condition latents. Any ``O`` is
accepted: only the ``1 + (O-1)//4`` latent frames fully covered by condition frames are replaced
(the planner prefers ``O ≡ 1 mod 4``, where nothing is left over).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import WanPipeline

from gpu_runner.pipelines import tiny_components as tc
from gpu_runner.pipelines.base import GenerateParams, LoadContext, StepCallback
from runtime.logging import get_logger
from schemas.errors import Cancelled, ErrorCode, Permanent
from schemas.registry import ModelSpec

log = get_logger(component="pipeline", family="wan")

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
REQUIRED_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
MAX_STEPS = 100


def torch_dtype(name: str) -> torch.dtype:
    """``LoadContext.dtype`` string -> torch dtype."""
    try:
        return _DTYPES[name.lower()]
    except KeyError as e:
        raise Permanent(f"unsupported dtype {name!r}; use one of {sorted(set(_DTYPES))}", code=ErrorCode.MODEL_ERROR) from e


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Silence diffusers/transformers/hub tqdm bars while loading or saving (logs are structured)."""
    import diffusers.utils.logging as dlog
    import huggingface_hub.utils as hub
    import transformers.utils.logging as tlog

    state = (dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled(), hub.are_progress_bars_disabled())
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    hub.disable_progress_bars()
    try:
        yield
    finally:
        if state[0]:
            dlog.enable_progress_bar()
        if state[1]:
            tlog.enable_progress_bar()
        if not state[2]:
            hub.enable_progress_bars()


def _out_of_range(message: str) -> Permanent:
    return Permanent(message, code=ErrorCode.OUT_OF_RANGE)


def condition_latent_frames(num_condition_frames: int, temporal_factor: int = 4) -> int:
    """Latent frames fully determined by the first ``O`` frames of a causal Wan VAE."""
    return 1 + (num_condition_frames - 1) // temporal_factor


def check_params(spec: ModelSpec, params: GenerateParams) -> None:
    """Reject what the model cannot render with ``Permanent(OUT_OF_RANGE)`` (never retried)."""
    if not spec.valid_window(params.num_frames) or params.num_frames > spec.max_window_frames:
        raise _out_of_range(
            f"num_frames={params.num_frames}: {spec.name} renders {spec.frame_multiple}k+1 frames, "
            f"at most {spec.max_window_frames} per window"
        )
    for name, value, limit in (("width", params.width, spec.max_width), ("height", params.height, spec.max_height)):
        if value % spec.spatial_multiple or not spec.spatial_multiple <= value <= limit:
            raise _out_of_range(f"{name}={value}: must be a multiple of {spec.spatial_multiple} in "
                                f"[{spec.spatial_multiple}, {limit}]")
    if not 1 <= params.steps <= MAX_STEPS:
        raise _out_of_range(f"steps={params.steps}: must be in [1, {MAX_STEPS}]")
    if not (math.isfinite(params.guidance_scale) and 0.0 <= params.guidance_scale <= 20.0):
        raise _out_of_range(f"guidance_scale={params.guidance_scale}: must be in [0, 20]")
    cond = params.condition_frames
    if cond is not None:
        expected = (params.height, params.width, 3)
        if not isinstance(cond, np.ndarray) or cond.ndim != 4 or cond.shape[1:] != expected or cond.dtype != np.uint8:
            shape = getattr(cond, "shape", None)
            raise _out_of_range(f"condition_frames must be uint8 (O, {params.height}, {params.width}, 3), got {shape}")
        if not 1 <= cond.shape[0] < params.num_frames:
            raise _out_of_range(f"{cond.shape[0]} condition frames for a {params.num_frames}-frame window")


class WanT2V:
    """A loaded Wan text-to-video pipeline; implements ``gpu_runner.pipelines.base.VideoPipeline``."""

    def __init__(self, spec: ModelSpec, pipe: WanPipeline, ctx: LoadContext, sequence_parallel: Any = None) -> None:
        self.spec = spec
        self.pipe = pipe
        self.ctx = ctx
        self.sequence_parallel = sequence_parallel  # a SequenceParallelHandle when sharded over ranks
        pipe.set_progress_bar_config(disable=True)

    @property
    def device(self) -> torch.device:
        return torch.device(self.ctx.device)

    # -- conditioning --------------------------------------------------------------------------
    @torch.no_grad()
    def encode_condition(self, frames: np.ndarray) -> torch.Tensor:
        """(O, H, W, 3) uint8 -> normalised latents (1, C, 1 + (O-1)//4, H/8, W/8), float32."""
        vae = self.pipe.vae
        keep = 1 + (condition_latent_frames(frames.shape[0], self.pipe.vae_scale_factor_temporal) - 1) * \
            self.pipe.vae_scale_factor_temporal
        video = torch.from_numpy(np.ascontiguousarray(frames[:keep])).to(torch.float32) / 127.5 - 1.0
        video = video.permute(3, 0, 1, 2).unsqueeze(0)  # (1, 3, O, H, W) in [-1, 1]
        z = vae.encode(video.to(self.device, vae.dtype)).latent_dist.mode().to(torch.float32)
        mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=z.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std, dtype=torch.float32, device=z.device).view(1, -1, 1, 1, 1)
        return (z - mean) / std

    def prepare_latents(self, params: GenerateParams) -> torch.Tensor:
        """The window's initial noise, drawn on the CPU from ``params.seed`` (device-independent)."""
        pipe = self.pipe
        shape = (
            1,
            int(pipe.transformer.config.in_channels),
            (params.num_frames - 1) // pipe.vae_scale_factor_temporal + 1,
            params.height // pipe.vae_scale_factor_spatial,
            params.width // pipe.vae_scale_factor_spatial,
        )
        generator = torch.Generator(device="cpu").manual_seed(params.seed)
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)

    # -- generation ----------------------------------------------------------------------------
    def generate(self, params: GenerateParams, on_step: StepCallback | None = None) -> np.ndarray:
        """Render ``params.num_frames`` frames as (F, H, W, 3) uint8.

        ``on_step(i, total)`` runs after every denoising step; raising ``Cancelled`` there stops
        the job at that step boundary (the exception reaches the caller; the pipeline stays usable).
        """
        check_params(self.spec, params)
        pipe = self.pipe
        total = params.steps
        noise = self.prepare_latents(params)
        latents = noise.clone()
        cond: torch.Tensor | None = None
        if params.condition_frames is not None:
            cond = self.encode_condition(params.condition_frames)
            if (params.condition_frames.shape[0] - 1) % pipe.vae_scale_factor_temporal:
                log.warning("condition_not_latent_aligned", frames=params.condition_frames.shape[0],
                            replaced_latent_frames=cond.shape[2])
            pipe.scheduler.set_timesteps(total, device=self.device)
            latents[:, :, : cond.shape[2]] = self._renoise(cond, noise, float(pipe.scheduler.sigmas[0]))

        def on_step_end(p: WanPipeline, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            current = kwargs["latents"]
            if cond is not None:
                sigma = float(p.scheduler.sigmas[p.scheduler.step_index])  # sigma the latents are now at
                current[:, :, : cond.shape[2]] = self._renoise(cond, noise, sigma).to(current.dtype)
            if on_step is not None:
                on_step(i + 1, total)
            return {"latents": current}

        started = time.perf_counter()
        try:
            out = pipe(
                prompt=params.prompt,
                negative_prompt=params.negative_prompt or None,
                height=params.height,
                width=params.width,
                num_frames=params.num_frames,
                num_inference_steps=total,
                guidance_scale=params.guidance_scale,
                latents=latents,
                output_type="np",
                callback_on_step_end=on_step_end,
                callback_on_step_end_tensor_inputs=["latents"],
            )
        except Cancelled:
            log.info("generation_cancelled", model=self.spec.name)
            raise
        except torch.OutOfMemoryError as e:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise Permanent(f"out of memory rendering {params.width}x{params.height}x{params.num_frames}: {e}",
                            code=ErrorCode.OUT_OF_MEMORY) from e
        frames = np.asarray(out.frames[0])
        video = np.clip(np.round(frames * 255.0), 0, 255).astype(np.uint8)
        log.info("generation_done", model=self.spec.name, frames=video.shape[0], width=params.width,
                 height=params.height, steps=total, conditioned=cond is not None,
                 seconds=round(time.perf_counter() - started, 3))
        return video

    @staticmethod
    def _renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        """Flow-matching forward process on the condition latents' frames."""
        return (1.0 - sigma) * x0 + sigma * noise[:, :, : x0.shape[2]]

    def warmup(self) -> None:
        """One step at the smallest sensible size (no CFG) so kernels/allocations exist before a job."""
        side, frames = 2 * self.spec.spatial_multiple, self.spec.frame_multiple + 1
        while self.spec.latent_tokens(side, side, frames) < self.ctx.world_size:  # every rank needs a token
            side *= 2
        self.generate(GenerateParams(prompt="warmup", width=side, height=side, num_frames=frames,
                                     steps=1, guidance_scale=1.0, seed=0))

    def save(self, path: Path) -> None:
        """Save in diffusers format (``WanPipeline.from_pretrained``/``load`` can read it back)."""
        with quiet_progress_bars():
            self.pipe.save_pretrained(str(path))
        log.info("model_saved", model=self.spec.name, path=str(path))

    def close(self) -> None:
        """Undo sequence parallelism (if applied)."""
        if self.sequence_parallel is not None:
            self.sequence_parallel.remove()
            self.sequence_parallel = None


def _finish(spec: ModelSpec, pipe: WanPipeline, ctx: LoadContext) -> WanT2V:
    pipe.to(ctx.device)
    handle = None
    if ctx.sequence_parallel and ctx.world_size > 1:
        from gpu_runner import distributed
        from gpu_runner.sequence_parallel import apply_sequence_parallel

        handle = apply_sequence_parallel(pipe, distributed.current(ctx.device))
    return WanT2V(spec, pipe, ctx, sequence_parallel=handle)


def build_tiny(spec: ModelSpec, ctx: LoadContext) -> WanT2V:
    """The real Wan architecture with tiny random weights; same ``ctx.seed`` -> bit-identical weights."""
    dtype = torch_dtype(ctx.dtype)
    tokenizer = tc.tiny_tokenizer()
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=tc.cast_like_from_pretrained(tc.tiny_text_encoder(ctx.seed, vocab_size=len(tokenizer)), dtype),
        vae=tc.tiny_vae(ctx.seed),  # the VAE stays float32, as Wan recommends
        scheduler=tc.tiny_scheduler(),
        transformer=tc.cast_like_from_pretrained(tc.tiny_transformer(ctx.seed), dtype),
    )
    log.info("tiny_model_built", model=spec.name, seed=ctx.seed, dtype=ctx.dtype, device=ctx.device)
    return _finish(spec, pipe, ctx)


def _check_checkpoint(checkpoint: Path) -> None:
    if not (checkpoint / "model_index.json").is_file():
        raise Permanent(f"{checkpoint} is not a diffusers checkpoint (no model_index.json)", code=ErrorCode.MODEL_ERROR)
    missing = [name for name in REQUIRED_COMPONENTS if not (checkpoint / name).is_dir()]
    if missing:
        raise Permanent(f"checkpoint {checkpoint} is incomplete: missing {', '.join(missing)}", code=ErrorCode.MODEL_ERROR)


def load(spec: ModelSpec, checkpoint: Path | None, ctx: LoadContext) -> WanT2V:
    """Tiny models without a checkpoint are built; otherwise read a LOCAL diffusers directory (no hub)."""
    if checkpoint is None:
        if spec.tiny:
            return build_tiny(spec, ctx)
        raise Permanent(f"{spec.name} needs a checkpoint directory", code=ErrorCode.MODEL_ERROR)
    checkpoint = Path(checkpoint)
    _check_checkpoint(checkpoint)
    dtype = torch_dtype(ctx.dtype)
    try:
        with quiet_progress_bars():
            pipe = WanPipeline.from_pretrained(
                str(checkpoint), dtype={"default": dtype, "vae": torch.float32}, local_files_only=True
            )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise Permanent(f"cannot load {spec.name} from {checkpoint}: {e}", code=ErrorCode.MODEL_ERROR) from e
    log.info("model_loaded", model=spec.name, checkpoint=str(checkpoint), dtype=ctx.dtype, device=ctx.device)
    return _finish(spec, pipe, ctx)
