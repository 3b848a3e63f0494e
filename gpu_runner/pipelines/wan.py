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

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import WanPipeline

from gpu_runner.pipelines import _common as common
from gpu_runner.pipelines import tiny_components as tc
from gpu_runner.pipelines._common import (  # re-exported: part of this module's public API
    MAX_STEPS,
    check_params,
    condition_latent_frames,
    quiet_progress_bars,
    torch_dtype,
)
from gpu_runner.pipelines.base import GenerateParams, LoadContext, StepCallback
from runtime.logging import get_logger
from schemas.errors import ErrorCode, Permanent
from schemas.registry import ModelSpec

log = get_logger(component="pipeline", family="wan")

REQUIRED_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")

__all__ = [
    "MAX_STEPS", "REQUIRED_COMPONENTS", "WanT2V", "build_tiny", "check_params", "condition_latent_frames",
    "load", "quiet_progress_bars", "torch_dtype",
]


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
    def encode_condition(self, frames: np.ndarray) -> torch.Tensor:
        """(O, H, W, 3) uint8 -> normalised latents (1, C, 1 + (O-1)//4, H/8, W/8), float32."""
        return common.encode_condition(self.pipe.vae, frames, self.device, self.pipe.vae_scale_factor_temporal)

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
        return common.seeded_noise(shape, params.seed, self.device)

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
        pin: common.LatentReplacement | None = None
        if params.condition_frames is not None:
            pin = common.LatentReplacement(self.encode_condition(params.condition_frames), noise)
            common.warn_unaligned(log, params.condition_frames.shape[0], pin.frames, pipe.vae_scale_factor_temporal)
            pin.apply(latents, common.first_sigma(pipe.scheduler, total, self.device))

        def on_step_end(p: WanPipeline, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            current = kwargs["latents"]
            if pin is not None:
                pin.apply(current, common.current_sigma(p.scheduler))
            if on_step is not None:
                on_step(i + 1, total)
            return {"latents": current}

        started = time.perf_counter()
        with common.generation_errors(self.spec, params, log):
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
        video = common.to_uint8(out.frames[0])
        log.info("generation_done", model=self.spec.name, frames=video.shape[0], width=params.width,
                 height=params.height, steps=total, conditioned=pin is not None,
                 seconds=round(time.perf_counter() - started, 3))
        return video

    @staticmethod
    def _renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        """Flow-matching forward process on the condition latents' frames."""
        return common.renoise(x0, noise, sigma)

    def warmup(self) -> None:
        """One step at the smallest sensible size (no CFG) so kernels/allocations exist before a job."""
        side, frames = common.warmup_size(self.spec, self.ctx.world_size)
        self.generate(GenerateParams(prompt="warmup", width=side, height=side, num_frames=frames,
                                     steps=1, guidance_scale=1.0, seed=0))

    def save(self, path: Path) -> None:
        """Save in diffusers format (``WanPipeline.from_pretrained``/``load`` can read it back)."""
        common.save_pipeline(self.pipe, path, self.spec.name, log)

    def close(self) -> None:
        """Undo sequence parallelism (if applied)."""
        if self.sequence_parallel is not None:
            self.sequence_parallel.remove()
            self.sequence_parallel = None


def _finish(spec: ModelSpec, pipe: WanPipeline, ctx: LoadContext) -> WanT2V:
    return WanT2V(spec, pipe, ctx, sequence_parallel=common.place(pipe, ctx, family="wan"))


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
    common.check_checkpoint(checkpoint, REQUIRED_COMPONENTS)


def load(spec: ModelSpec, checkpoint: Path | None, ctx: LoadContext) -> WanT2V:
    """Tiny models without a checkpoint are built; otherwise read a LOCAL diffusers directory (no hub)."""
    if checkpoint is None:
        if spec.tiny:
            return build_tiny(spec, ctx)
        raise Permanent(f"{spec.name} needs a checkpoint directory", code=ErrorCode.MODEL_ERROR)
    checkpoint = Path(checkpoint)
    pipe = common.load_pretrained(WanPipeline, spec, checkpoint, ctx, REQUIRED_COMPONENTS)
    log.info("model_loaded", model=spec.name, checkpoint=str(checkpoint), dtype=ctx.dtype, device=ctx.device)
    return _finish(spec, pipe, ctx)
