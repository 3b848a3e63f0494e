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

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import WanImageToVideoPipeline

from gpu_runner.pipelines import _common as common
from gpu_runner.pipelines import tiny_components as tc
from gpu_runner.pipelines.base import GenerateParams, LoadContext, StepCallback
from runtime.logging import get_logger
from schemas.errors import ErrorCode, Permanent
from schemas.registry import ModelSpec

log = get_logger(component="pipeline", family="wan_i2v")

REQUIRED_COMPONENTS = (
    "transformer", "vae", "text_encoder", "tokenizer", "scheduler", "image_encoder", "image_processor",
)
FP32_COMPONENTS = ("vae", "image_encoder")  # as Wan recommends: VAE and CLIP stay float32
CONDITION_CHANNELS = 4 + tc.Z_DIM  # frame mask + first-frame latents, concatenated to the noise


class WanI2V:
    """A loaded Wan image-to-video pipeline; implements ``gpu_runner.pipelines.base.VideoPipeline``."""

    def __init__(self, spec: ModelSpec, pipe: WanImageToVideoPipeline, ctx: LoadContext,
                 sequence_parallel: Any = None) -> None:
        self.spec = spec
        self.pipe = pipe
        self.ctx = ctx
        self.sequence_parallel = sequence_parallel  # a SequenceParallelHandle when sharded over ranks
        pipe.set_progress_bar_config(disable=True)

    @property
    def device(self) -> torch.device:
        return torch.device(self.ctx.device)

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

    def encode_condition(self, frames: np.ndarray) -> torch.Tensor:
        """(O, H, W, 3) uint8 -> normalised latents (1, C, 1 + (O-1)//4, H/8, W/8), float32."""
        return common.encode_condition(self.pipe.vae, frames, self.device, self.pipe.vae_scale_factor_temporal)

    def prepare_latents(self, params: GenerateParams) -> torch.Tensor:
        """The window's initial noise (1, z_dim, T_lat, H/8, W/8), drawn on the CPU from ``params.seed``."""
        pipe = self.pipe
        shape = (
            1,
            int(pipe.vae.config.z_dim),
            (params.num_frames - 1) // pipe.vae_scale_factor_temporal + 1,
            params.height // pipe.vae_scale_factor_spatial,
            params.width // pipe.vae_scale_factor_spatial,
        )
        return common.seeded_noise(shape, params.seed, self.device)

    # -- generation ----------------------------------------------------------------------------
    def generate(self, params: GenerateParams, on_step: StepCallback | None = None) -> np.ndarray:
        """Render ``params.num_frames`` frames as (F, H, W, 3) uint8 from ``params.image``.

        ``on_step(i, total)`` runs after every denoising step; raising ``Cancelled`` there stops
        the job at that step boundary (the exception reaches the caller; the pipeline stays usable).
        """
        first = self.check_inputs(params)
        pipe = self.pipe
        total = params.steps
        if first.shape[:2] != (params.height, params.width):
            log.info("image_resized", model=self.spec.name, source=list(first.shape[:2]),
                     target=[params.height, params.width])
        noise = self.prepare_latents(params)
        latents = noise.clone()
        pin: common.LatentReplacement | None = None
        if params.condition_frames is not None:
            pin = common.LatentReplacement(self.encode_condition(params.condition_frames), noise)
            common.warn_unaligned(log, params.condition_frames.shape[0], pin.frames, pipe.vae_scale_factor_temporal)
            pin.apply(latents, common.first_sigma(pipe.scheduler, total, self.device))

        def on_step_end(p: WanImageToVideoPipeline, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            current = kwargs["latents"]
            if pin is not None:
                pin.apply(current, common.current_sigma(p.scheduler))
            if on_step is not None:
                on_step(i + 1, total)
            return {"latents": current}

        started = time.perf_counter()
        with common.generation_errors(self.spec, params, log):
            out = pipe(
                image=common.to_pil(first),
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

    def warmup(self) -> None:
        """One step at the smallest sensible size (no CFG, a grey image) before the first job."""
        side, frames = common.warmup_size(self.spec, self.ctx.world_size)
        self.generate(GenerateParams(prompt="warmup", width=side, height=side, num_frames=frames, steps=1,
                                     guidance_scale=1.0, seed=0, image=np.full((side, side, 3), 128, np.uint8)))

    def save(self, path: Path) -> None:
        """Save in diffusers format (``WanImageToVideoPipeline.from_pretrained``/``load`` read it back)."""
        common.save_pipeline(self.pipe, path, self.spec.name, log)

    def close(self) -> None:
        """Undo sequence parallelism (if applied)."""
        if self.sequence_parallel is not None:
            self.sequence_parallel.remove()
            self.sequence_parallel = None


def _finish(spec: ModelSpec, pipe: WanImageToVideoPipeline, ctx: LoadContext) -> WanI2V:
    return WanI2V(spec, pipe, ctx, sequence_parallel=common.place(pipe, ctx, family="wan_i2v"))


def build_tiny(spec: ModelSpec, ctx: LoadContext) -> WanI2V:
    """The real Wan 2.1 I2V architecture with tiny random weights; same ``ctx.seed`` -> same weights.

    As in diffusers' own tests the transformer takes 36 input channels and ``image_dim`` = the CLIP
    hidden size; like the real checkpoints (and unlike those tests) ``added_kv_proj_dim`` is the
    transformer's inner dimension, so the image tokens get their own cross-attention.
    """
    dtype = common.torch_dtype(ctx.dtype)
    tokenizer = tc.tiny_tokenizer()
    image_encoder = common.tiny_image_encoder(ctx.seed)  # stays float32
    transformer = tc.tiny_transformer(
        ctx.seed,
        in_channels=tc.Z_DIM + CONDITION_CHANNELS,
        image_dim=int(image_encoder.config.hidden_size),
        added_kv_proj_dim=tc.NUM_HEADS * tc.HEAD_DIM,
    )
    pipe = WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=tc.cast_like_from_pretrained(tc.tiny_text_encoder(ctx.seed, vocab_size=len(tokenizer)), dtype),
        vae=tc.tiny_vae(ctx.seed),  # the VAE stays float32, as Wan recommends
        scheduler=tc.tiny_scheduler(),
        image_processor=tc.tiny_clip_image_processor(int(image_encoder.config.image_size)),
        image_encoder=image_encoder,
        transformer=tc.cast_like_from_pretrained(transformer, dtype),
    )
    log.info("tiny_model_built", model=spec.name, seed=ctx.seed, dtype=ctx.dtype, device=ctx.device)
    return _finish(spec, pipe, ctx)


def load(spec: ModelSpec, checkpoint: Path | None, ctx: LoadContext) -> WanI2V:
    """Tiny models without a checkpoint are built; otherwise read a LOCAL diffusers directory (no hub)."""
    if checkpoint is None:
        if spec.tiny:
            return build_tiny(spec, ctx)
        raise Permanent(f"{spec.name} needs a checkpoint directory", code=ErrorCode.MODEL_ERROR)
    checkpoint = Path(checkpoint)
    pipe = common.load_pretrained(WanImageToVideoPipeline, spec, checkpoint, ctx, REQUIRED_COMPONENTS,
                                  FP32_COMPONENTS)
    log.info("model_loaded", model=spec.name, checkpoint=str(checkpoint), dtype=ctx.dtype, device=ctx.device)
    return _finish(spec, pipe, ctx)
