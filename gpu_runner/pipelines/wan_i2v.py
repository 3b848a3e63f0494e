"""Wan image-to-video family (diffusers ``WanImageToVideoPipeline``): tiny build, loading, generation.

Same anatomy as ``wan.py``: ``check_inputs`` (validate), ``prepare_latents`` (seeded CPU noise),
chaining by latent replacement (``_common.LatentReplacement`` in ``callback_on_step_end``), the
pipeline's own denoising loop, decode to uint8 frames.

Inputs: ``params.image`` (h, w, 3) uint8, any size (the pipeline resizes it to H×W without
keeping the aspect ratio, and CLIP centre-crops it: fit it to the output grid beforehand), needed
unless ``condition_frames`` are given; the rest as for ``wan.py``.

Image conditioning (Wan 2.1 I2V): the first frame is VAE-encoded together with zeros for the other
frames and concatenated to the noise in the channel dimension with a 4-channel frame mask
(16 noise + 4 mask + 16 condition = 36 input channels); its CLIP hidden states (penultimate layer)
reach every block through a separate image cross-attention (``add_k_proj``/``add_v_proj``).

Chaining (segment k+1): the window starts with the previous segment's last ``O`` frames, so its
frame 0 is ``condition_frames[0]``; that frame is the i2v image (VAE first-frame condition and CLIP
embedding), and the first ``1 + (O-1)//4`` latent frames are pinned to the condition frames as in
``wan.py``. ``params.image`` (the job's reference image) is only needed for the first segment.
Using the *last* condition frame as the i2v image would tell the model that frame 0 looks like
frame ``O-1`` while latent replacement pins frame 0 to ``condition_frames[0]``: for ``O > 1`` the
two disagree (for ``O = 1`` they are the same frame).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import WanImageToVideoPipeline

from gpu_runner.pipelines import _common as common
from gpu_runner.pipelines import tiny_components as tc
from gpu_runner.pipelines.base import GenerateParams, LoadContext, StepCallback
from runtime.logging import get_logger
from schemas.messages import Task
from schemas.registry import ModelSpec

log = get_logger(component="pipeline", family="wan_i2v")

REQUIRED_COMPONENTS = (
    "transformer", "vae", "text_encoder", "tokenizer", "scheduler", "image_encoder", "image_processor",
)
FP32_COMPONENTS = ("vae", "image_encoder")  # as Wan recommends: VAE and CLIP stay float32
CONDITION_CHANNELS = 4 + tc.Z_DIM  # frame mask + first-frame latents, concatenated to the noise


class WanI2V(common.WanFamily):
    """A loaded Wan image-to-video pipeline; implements ``gpu_runner.pipelines.base.VideoPipeline``."""

    family = "wan_i2v"
    tasks = frozenset({Task.I2V})
    log = log
    pipe: WanImageToVideoPipeline

    # -- inputs --------------------------------------------------------------------------------
    def check_inputs(self, params: GenerateParams) -> np.ndarray:
        """Validate ``params``; return the image that conditions the window's frame 0.

        ``Permanent(MISSING_INPUT)`` without ``image`` (first segment), ``OUT_OF_RANGE`` otherwise.
        """
        common.check_params(self.spec, params)
        if params.condition_frames is not None:
            first: np.ndarray = params.condition_frames[0]  # the window starts with the previous segment's tail
            return first
        if params.image is None:
            raise common.missing_input(f"{self.spec.name} (image-to-video) needs an input image")
        return common.check_image("image", params.image)

    def prepare_latents(self, params: GenerateParams) -> torch.Tensor:
        """The window's initial noise (1, z_dim, T_lat, H/8, W/8), drawn on the CPU from ``params.seed``."""
        return self.seeded_latents(params, self.pipe.vae.config.z_dim)

    # -- generation ----------------------------------------------------------------------------
    def generate(self, params: GenerateParams, on_step: StepCallback | None = None) -> np.ndarray:
        """Render ``params.num_frames`` frames as (F, H, W, 3) uint8 from ``params.image``.

        ``on_step(i, total)`` runs after every denoising step; raising ``Cancelled`` there stops
        the job at that step boundary (the exception reaches the caller; the pipeline stays usable).
        """
        first = self.check_inputs(params)
        if first.shape[:2] != (params.height, params.width):
            log.info("image_resized", model=self.spec.name, source=list(first.shape[:2]),
                     target=[params.height, params.width])
        latents, pin = self.pin_condition(params, self.prepare_latents(params))
        return self.run(params, latents, pin, on_step, image=common.to_pil(first), num_frames=params.num_frames)

    def warmup_inputs(self, side: int, frames: int) -> dict[str, Any]:
        """A grey image for the warmup window."""
        return {"image": np.full((side, side, 3), 128, np.uint8)}


TASKS = WanI2V.tasks


def build_tiny(spec: ModelSpec, ctx: LoadContext) -> WanI2V:
    """The real Wan 2.1 I2V architecture with tiny random weights; same ``ctx.seed`` -> same weights.

    As in diffusers' own tests the transformer takes 36 input channels and ``image_dim`` = the CLIP
    hidden size; like the real checkpoints (and unlike those tests) ``added_kv_proj_dim`` is the
    transformer's inner dimension, so the image tokens get their own cross-attention.
    """
    dtype = common.torch_dtype(ctx.dtype)
    parts = common.tiny_parts(ctx.seed, dtype, image=True)  # VAE and CLIP stay float32
    transformer = tc.tiny_transformer(
        ctx.seed,
        in_channels=tc.Z_DIM + CONDITION_CHANNELS,
        image_dim=int(parts["image_encoder"].config.hidden_size),
        added_kv_proj_dim=tc.NUM_HEADS * tc.HEAD_DIM,
    )
    pipe = WanImageToVideoPipeline(**parts, transformer=tc.cast_like_from_pretrained(transformer, dtype))
    log.info("tiny_model_built", model=spec.name, seed=ctx.seed, dtype=ctx.dtype, device=ctx.device)
    return WanI2V.finish(spec, pipe, ctx)


def load(spec: ModelSpec, checkpoint: Path | None, ctx: LoadContext) -> WanI2V:
    """Tiny models without a checkpoint are built; otherwise read a LOCAL diffusers directory (no hub)."""
    return common.load_family(spec, checkpoint, ctx, pipeline_cls=WanImageToVideoPipeline, build_tiny=build_tiny,
                              required=REQUIRED_COMPONENTS, fp32=FP32_COMPONENTS, finish=WanI2V.finish,
                              family_log=log)
