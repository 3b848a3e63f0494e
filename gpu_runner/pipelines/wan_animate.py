"""Wan-Animate family (diffusers ``WanAnimatePipeline``): tiny build, loading, generation.

Same anatomy as ``wan.py``. Inputs (all uint8 RGB, ``F = num_frames``):
- ``params.image``: the character reference (h, w, 3), any size (letterboxed to H×W by the pipeline);
- ``params.pose_video``: the rendered pose skeleton (F, H, W, 3) on the output grid;
- ``params.face_video``: face crops (F, S, S, 3), ideally ``S = face_size`` (the motion encoder's
  input, ``ModelSpec.face_size``: 16 for the tiny model, 512 for Wan2.2-Animate-14B; a checkpoint
  whose ``motion_encoder_size`` disagrees is refused at load); other square sizes are resized by
  the pipeline;
- ``params.extra`` (optional): ``mode`` (``"animate"`` default, or ``"replace"`` with
  ``background_video`` (F, H, W, 3) and ``mask_video`` (F, H, W) uint8, white = regenerate),
  ``segment_frame_length`` (the pipeline's internal segment, ``4k+1`` ≤ F; default F).

The pipeline renders ``F`` frames in internal segments of ``segment_frame_length`` frames that
overlap by one frame (each restarts its denoising loop). ``on_step`` reports one increasing count
over all of them: step ``s`` of internal segment ``i`` (of ``n``) is ``i·steps + s`` of ``n·steps``.

Latent layout: latent frame 0 is the reference-image slot (dropped on decode); video latent frame
``j`` is latent frame ``j + 1``; the channel-concatenated condition is [4-channel frame mask,
16-channel latents] of [reference image | previous-segment frames + zeros (animate) or background
(replace)].

Chaining across the planner's segments: diffusers exposes only a *count*
(``prev_segment_conditioning_frames``) for its own internal segments, and its first internal
segment is unconditioned. For segment k+1 the ``O`` condition frames (the window's first ``O``
frames) are handed to the pipeline's own ``prepare_prev_segment_cond_latents`` for the first
internal segment — they enter the mask/condition channels exactly as a previous internal segment's
tail would — via a per-call override that is always removed afterwards. On top of that the first
``1 + (O-1)//4`` video latent frames are pinned by latent replacement (as in ``wan.py``), so the
window starts exactly on the previous segment's frames. Any ``1 ≤ O < segment_frame_length``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import WanAnimatePipeline, WanAnimateTransformer3DModel

from gpu_runner.pipelines import _common as common
from gpu_runner.pipelines import tiny_components as tc
from gpu_runner.pipelines.base import GenerateParams, LoadContext, StepCallback
from runtime.logging import get_logger
from schemas.errors import ErrorCode, Permanent
from schemas.messages import Task
from schemas.registry import ModelSpec

log = get_logger(component="pipeline", family="wan_animate")

MODES = ("animate", "replace")
INTERNAL_OVERLAP = 1  # frames shared by the pipeline's own consecutive internal segments
REQUIRED_COMPONENTS = (
    "transformer", "vae", "text_encoder", "tokenizer", "scheduler", "image_encoder", "image_processor",
)
FP32_COMPONENTS = ("vae", "image_encoder")

# Tiny motion/face encoder: 16x16 faces (the tiny spec's face_size) -> one 8-channel residual
# block per halving down to 4x4.
_TINY_MOTION_CHANNELS = {"16": 8, "8": 8, "4": 8}


def internal_segments(num_frames: int, segment_frame_length: int, overlap: int = INTERNAL_OVERLAP) -> int:
    """How many internal segments ``WanAnimatePipeline`` runs for ``num_frames`` (its own formula)."""
    effective = segment_frame_length - overlap
    remainder = (num_frames - overlap) % effective
    padded = num_frames + (effective - remainder if remainder else 0)
    return padded // effective


def tiny_animate_transformer(seed: int, image_dim: int, face_size: int = 16) -> WanAnimateTransformer3DModel:
    """A 2-block ``WanAnimateTransformer3DModel`` (as ``tiny_transformer``) with a tiny motion/face encoder."""
    inner = tc.NUM_HEADS * tc.HEAD_DIM
    model = tc.build_seeded(
        seed,
        "transformer",
        lambda: WanAnimateTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=tc.NUM_HEADS,
            attention_head_dim=tc.HEAD_DIM,
            in_channels=2 * tc.Z_DIM + 4,
            latent_channels=tc.Z_DIM,
            out_channels=tc.Z_DIM,
            text_dim=tc.TEXT_DIM,
            freq_dim=256,
            ffn_dim=tc.FFN_DIM,
            num_layers=tc.NUM_LAYERS,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            image_dim=image_dim,
            added_kv_proj_dim=inner,
            rope_max_seq_len=32,
            pos_embed_seq_len=None,
            motion_encoder_channel_sizes=dict(_TINY_MOTION_CHANNELS),
            motion_encoder_size=face_size,
            motion_style_dim=16,
            motion_dim=8,
            motion_encoder_dim=16,
            face_encoder_hidden_dim=16,
            face_encoder_num_heads=2,
            inject_face_latents_blocks=tc.NUM_LAYERS,  # one face adapter, after block 0 (real: every 5th of 40)
            motion_encoder_batch_size=8,
        ),
    )
    return model.eval()


@dataclass(frozen=True)
class AnimateInputs:
    """Validated inputs of one window (uint8 arrays), before conversion to the pipeline's PIL lists."""

    image: np.ndarray
    pose: np.ndarray
    face: np.ndarray
    mode: str
    segment_frame_length: int
    background: np.ndarray | None = None
    mask: np.ndarray | None = None


class WanAnimate(common.WanFamily):
    """A loaded Wan-Animate pipeline; implements ``gpu_runner.pipelines.base.VideoPipeline``.

    No sequence parallelism for this family (``sequence_parallel`` stays ``None``, see ``_common.place``).
    """

    family = "wan_animate"
    tasks = frozenset({Task.ANIMATE})
    log = log
    sequence_parallel_supported = False
    pipe: WanAnimatePipeline

    @property
    def face_size(self) -> int:
        """Side of the face crops the motion encoder takes (``spec.face_size``, checked at load)."""
        return int(self.pipe.transformer.config.motion_encoder_size)

    @classmethod
    def finish(cls, spec: ModelSpec, pipe: Any, ctx: LoadContext) -> WanAnimate:
        size = int(pipe.transformer.config.motion_encoder_size)
        if size != spec.face_size:  # preprocess crops faces to spec.face_size
            raise Permanent(f"{spec.name}: the checkpoint's motion encoder takes {size}x{size} faces, the registry "
                            f"says face_size={spec.face_size} (fix schemas/registry.py)", code=ErrorCode.MODEL_ERROR)
        return super().finish(spec, pipe, ctx)

    # -- inputs --------------------------------------------------------------------------------
    def check_inputs(self, params: GenerateParams) -> AnimateInputs:
        """Validate ``params``: ``Permanent(MISSING_INPUT)`` for an absent input, ``OUT_OF_RANGE`` otherwise."""
        common.check_params(self.spec, params)
        f, size = params.num_frames, (params.height, params.width)
        missing = [name for name in ("image", "pose_video", "face_video") if getattr(params, name) is None]
        mode = params.extra.get("mode", "animate")
        if mode not in MODES:
            raise common.out_of_range(f"mode={mode!r}: expected one of {', '.join(MODES)}")
        if mode == "replace":
            missing += [name for name in ("background_video", "mask_video") if params.extra.get(name) is None]
        if missing:
            raise common.missing_input(f"{self.spec.name} ({mode}) needs {', '.join(missing)}")
        image = common.check_image("image", params.image)
        pose = common.check_video("pose_video", params.pose_video, size, frames=f)
        face = common.check_video("face_video", params.face_video, frames=f)
        if face.shape[1] != face.shape[2]:
            raise common.out_of_range(f"face_video frames must be square ({self.face_size}x{self.face_size}), "
                                      f"got {face.shape[2]}x{face.shape[1]}")
        background = mask = None
        if mode == "replace":
            background = common.check_video("background_video", params.extra["background_video"], size, frames=f)
            mask = params.extra["mask_video"]
            if not isinstance(mask, np.ndarray) or mask.dtype != np.uint8 or mask.shape != (f, *size):
                got = f"{mask.dtype} {mask.shape}" if isinstance(mask, np.ndarray) else type(mask).__name__
                raise common.out_of_range(f"mask_video must be uint8 ({f}, {size[0]}, {size[1]}), got {got}")
        length = params.extra.get("segment_frame_length", f)
        shortest = self.spec.smallest_window_at_least(2)  # 5 for Wan
        if isinstance(length, bool) or not isinstance(length, int | np.integer) \
                or not shortest <= length <= f or not self.spec.valid_window(int(length)):
            raise common.out_of_range(f"segment_frame_length={length!r}: must be {self.spec.frame_multiple}k+1 "
                                      f"in [{shortest}, num_frames={f}]")
        length = int(length)
        cond = params.condition_frames
        if cond is not None and cond.shape[0] >= length:
            raise common.out_of_range(f"{cond.shape[0]} condition frames for internal segments of {length} frames")
        return AnimateInputs(image, pose, face, mode, length, background, mask)

    def prepare_latents(self, params: GenerateParams, segment_frame_length: int,
                        generator: torch.Generator) -> torch.Tensor:
        """The first internal segment's noise (1, z_dim, 1 + T_lat, H/8, W/8), drawn on the CPU.

        ``generator`` (CPU, seeded from ``params.seed``) keeps going for the later internal segments.
        """
        shape = self.latent_shape(params, self.pipe.vae.config.z_dim, segment_frame_length,
                                  extra_frames=1)  # + the reference slot
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)

    @contextmanager
    def _previous_segment(self, frames: np.ndarray | None) -> Iterator[None]:
        """For this call, condition the first internal segment on ``frames`` (O, H, W, 3) like a previous one.

        Wraps the pipeline's own ``prepare_prev_segment_cond_latents``; ``start_frame=1`` there only
        switches its frame mask on for the ``O`` given frames (it is 0 for an unconditioned start).
        """
        if frames is None:
            yield
            return
        pipe = self.pipe
        video = common.to_video_tensor(frames, self.device, torch.float32)
        original = pipe.prepare_prev_segment_cond_latents

        def prepare(prev_segment_cond_video: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
            if kwargs.get("start_frame", 0) == 0:
                kwargs.update(start_frame=1, prev_segment_cond_frames=video.shape[2])
                return original(video, *args, **kwargs)  # type: ignore[no-any-return]
            return original(prev_segment_cond_video, *args, **kwargs)  # type: ignore[no-any-return]

        pipe.prepare_prev_segment_cond_latents = prepare
        try:
            yield
        finally:
            del pipe.prepare_prev_segment_cond_latents  # back to the class's method

    # -- generation ----------------------------------------------------------------------------
    def generate(self, params: GenerateParams, on_step: StepCallback | None = None) -> np.ndarray:
        """Render ``params.num_frames`` frames as (F, H, W, 3) uint8: ``image`` moving as ``pose``/``face``.

        ``on_step(i, total)`` runs after every denoising step of every internal segment, with
        ``total = segments · steps``; raising ``Cancelled`` there stops the job at that step boundary
        (the exception reaches the caller; the pipeline stays usable).
        """
        inputs = self.check_inputs(params)
        segments = internal_segments(params.num_frames, inputs.segment_frame_length)
        if inputs.face.shape[1] != self.face_size:
            log.info("face_video_resized", model=self.spec.name, source=inputs.face.shape[1], target=self.face_size)
        generator = torch.Generator(device="cpu").manual_seed(params.seed)
        noise = self.prepare_latents(params, inputs.segment_frame_length, generator)
        latents, pin = self.pin_condition(params, noise, offset=1)  # latent frame 0 is the reference slot
        return self.run(
            params, latents, pin, on_step, total=segments * params.steps,
            around=self._previous_segment(params.condition_frames),
            log_fields={"internal_segments": segments, "mode": inputs.mode},
            image=common.to_pil(inputs.image),
            pose_video=common.to_pil_frames(inputs.pose),
            face_video=common.to_pil_frames(inputs.face),
            background_video=None if inputs.background is None else common.to_pil_frames(inputs.background),
            mask_video=None if inputs.mask is None else _mask_frames(inputs.mask),
            segment_frame_length=inputs.segment_frame_length,
            mode=inputs.mode,
            prev_segment_conditioning_frames=INTERNAL_OVERLAP,
            generator=generator,
        )

    def warmup_inputs(self, side: int, frames: int) -> dict[str, Any]:
        """A grey reference image, a blank pose video and grey face crops for the warmup window."""
        return {
            "image": np.full((side, side, 3), 128, np.uint8),
            "pose_video": np.zeros((frames, side, side, 3), np.uint8),
            "face_video": np.full((frames, self.face_size, self.face_size, 3), 128, np.uint8),
        }


def _mask_frames(mask: np.ndarray) -> list[Any]:
    """(F, H, W) uint8 -> greyscale PIL frames (white = regenerate, black = keep the background)."""
    from PIL import Image

    return [Image.fromarray(np.ascontiguousarray(frame), mode="L") for frame in mask]


TASKS = WanAnimate.tasks


def build_tiny(spec: ModelSpec, ctx: LoadContext) -> WanAnimate:
    """The real Wan-Animate architecture with tiny random weights; same ``ctx.seed`` -> same weights."""
    dtype = common.torch_dtype(ctx.dtype)
    parts = common.tiny_parts(ctx.seed, dtype, image=True)  # VAE and CLIP stay float32
    transformer = tiny_animate_transformer(ctx.seed, image_dim=int(parts["image_encoder"].config.hidden_size),
                                           face_size=spec.face_size)
    pipe = WanAnimatePipeline(**parts, transformer=tc.cast_like_from_pretrained(transformer, dtype))
    log.info("tiny_model_built", model=spec.name, seed=ctx.seed, dtype=ctx.dtype, device=ctx.device,
             face_size=spec.face_size)
    return WanAnimate.finish(spec, pipe, ctx)


def load(spec: ModelSpec, checkpoint: Path | None, ctx: LoadContext) -> WanAnimate:
    """Tiny models without a checkpoint are built; otherwise read a LOCAL diffusers directory (no hub)."""
    return common.load_family(
        spec, checkpoint, ctx, pipeline_cls=WanAnimatePipeline, build_tiny=build_tiny, required=REQUIRED_COMPONENTS,
        fp32=FP32_COMPONENTS, finish=WanAnimate.finish, family_log=log,
        log_fields=lambda pipe: {"face_size": int(pipe.transformer.config.motion_encoder_size)},
    )
