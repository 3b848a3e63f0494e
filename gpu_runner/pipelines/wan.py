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

from pathlib import Path

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
from schemas.messages import Task
from schemas.registry import ModelSpec

log = get_logger(component="pipeline", family="wan")

REQUIRED_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")

__all__ = [
    "MAX_STEPS", "REQUIRED_COMPONENTS", "TASKS", "WanT2V", "build_tiny", "check_params", "condition_latent_frames",
    "load", "quiet_progress_bars", "torch_dtype",
]


class WanT2V(common.WanFamily):
    """A loaded Wan text-to-video pipeline; implements ``gpu_runner.pipelines.base.VideoPipeline``."""

    family = "wan"
    tasks = frozenset({Task.T2V})  # the prompt only: no image conditioning (see TI2V-5B in schemas/registry.py)
    log = log
    pipe: WanPipeline

    def prepare_latents(self, params: GenerateParams) -> torch.Tensor:
        """The window's initial noise, drawn on the CPU from ``params.seed`` (device-independent)."""
        return self.seeded_latents(params, self.pipe.transformer.config.in_channels)

    # -- generation ----------------------------------------------------------------------------
    def generate(self, params: GenerateParams, on_step: StepCallback | None = None) -> np.ndarray:
        """Render ``params.num_frames`` frames as (F, H, W, 3) uint8.

        ``on_step(i, total)`` runs after every denoising step; raising ``Cancelled`` there stops
        the job at that step boundary (the exception reaches the caller; the pipeline stays usable).
        """
        check_params(self.spec, params)
        latents, pin = self.pin_condition(params, self.prepare_latents(params))
        return self.run(params, latents, pin, on_step, num_frames=params.num_frames)

    @staticmethod
    def _renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        """Flow-matching forward process on the condition latents' frames."""
        return common.renoise(x0, noise, sigma)


TASKS = WanT2V.tasks


def build_tiny(spec: ModelSpec, ctx: LoadContext) -> WanT2V:
    """The real Wan architecture with tiny random weights; same ``ctx.seed`` -> bit-identical weights."""
    dtype = torch_dtype(ctx.dtype)
    pipe = WanPipeline(
        **common.tiny_parts(ctx.seed, dtype),
        transformer=tc.cast_like_from_pretrained(tc.tiny_transformer(ctx.seed), dtype),
    )
    log.info("tiny_model_built", model=spec.name, seed=ctx.seed, dtype=ctx.dtype, device=ctx.device)
    return WanT2V.finish(spec, pipe, ctx)


def _check_checkpoint(checkpoint: Path) -> None:
    common.check_checkpoint(checkpoint, REQUIRED_COMPONENTS)


def load(spec: ModelSpec, checkpoint: Path | None, ctx: LoadContext) -> WanT2V:
    """Tiny models without a checkpoint are built; otherwise read a LOCAL diffusers directory (no hub)."""
    return common.load_family(spec, checkpoint, ctx, pipeline_cls=WanPipeline, build_tiny=build_tiny,
                              required=REQUIRED_COMPONENTS, finish=WanT2V.finish, family_log=log)
