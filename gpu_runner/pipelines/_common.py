"""Helpers shared by the Wan family files (``wan``, ``wan_i2v``, ``wan_animate``).

Everything here is family-agnostic: dtype names, quiet loading, validation of ``GenerateParams``,
seeded CPU noise, chaining by latent replacement, uint8 conversion, checkpoint checks, loading a
local diffusers directory, sequence parallelism, and the error mapping around a pipeline call.

Latent replacement (how a window continues the previous one): the previous segment's last ``O``
decoded frames are VAE-encoded and normalised exactly like the pipeline's latents
(``(z - latents_mean) / latents_std``). The causal Wan VAE maps frame 0 to latent frame 0 and
frames ``4j-3..4j`` to latent frame ``j``, so the first ``1 + (O-1)//4`` latent frames are fully
determined by the condition frames. Before the first step and after every step those latent
frames are overwritten with the clean condition latents re-noised to the scheduler's current sigma
(flow matching: ``x_t = (1 - σ)·x0 + σ·ε``, ``ε`` the window's own initial noise); after the last
step ``σ = 0`` and they equal the condition latents.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from gpu_runner.pipelines import tiny_components as tc
from gpu_runner.pipelines.base import GenerateParams, LoadContext
from runtime.logging import get_logger
from schemas.errors import Cancelled, ErrorCode, Permanent
from schemas.registry import ModelSpec

if TYPE_CHECKING:
    from PIL import Image
    from transformers import CLIPVisionModel

log = get_logger(component="pipeline")

P = TypeVar("P")

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
MAX_STEPS = 100
MAX_GUIDANCE_SCALE = 20.0


# -- dtypes and quiet I/O ----------------------------------------------------------------------
def torch_dtype(name: str) -> torch.dtype:
    """``LoadContext.dtype`` string -> torch dtype (``Permanent(MODEL_ERROR)`` if unknown)."""
    try:
        return DTYPES[name.lower()]
    except KeyError as e:
        raise Permanent(f"unsupported dtype {name!r}; use one of {sorted(set(DTYPES))}", code=ErrorCode.MODEL_ERROR) from e


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


# -- validation --------------------------------------------------------------------------------
def out_of_range(message: str) -> Permanent:
    return Permanent(message, code=ErrorCode.OUT_OF_RANGE)


def missing_input(message: str) -> Permanent:
    return Permanent(message, code=ErrorCode.MISSING_INPUT)


def condition_latent_frames(num_condition_frames: int, temporal_factor: int = 4) -> int:
    """Latent frames fully determined by the first ``O`` frames of a causal Wan VAE."""
    return 1 + (num_condition_frames - 1) // temporal_factor


def check_params(spec: ModelSpec, params: GenerateParams) -> None:
    """Reject what the model cannot render with ``Permanent(OUT_OF_RANGE)`` (never retried)."""
    if not spec.valid_window(params.num_frames) or params.num_frames > spec.max_window_frames:
        raise out_of_range(
            f"num_frames={params.num_frames}: {spec.name} renders {spec.frame_multiple}k+1 frames, "
            f"at most {spec.max_window_frames} per window"
        )
    for name, value, limit in (("width", params.width, spec.max_width), ("height", params.height, spec.max_height)):
        if value % spec.spatial_multiple or not spec.spatial_multiple <= value <= limit:
            raise out_of_range(f"{name}={value}: must be a multiple of {spec.spatial_multiple} in "
                               f"[{spec.spatial_multiple}, {limit}]")
    if not 1 <= params.steps <= MAX_STEPS:
        raise out_of_range(f"steps={params.steps}: must be in [1, {MAX_STEPS}]")
    if not (math.isfinite(params.guidance_scale) and 0.0 <= params.guidance_scale <= MAX_GUIDANCE_SCALE):
        raise out_of_range(f"guidance_scale={params.guidance_scale}: must be in [0, {MAX_GUIDANCE_SCALE:g}]")
    cond = params.condition_frames
    if cond is not None:
        check_video("condition_frames", cond, (params.height, params.width))
        if not 1 <= cond.shape[0] < params.num_frames:
            raise out_of_range(f"{cond.shape[0]} condition frames for a {params.num_frames}-frame window")


def check_image(name: str, image: Any) -> np.ndarray:
    """An RGB image (h, w, 3) uint8 of any size, else ``Permanent(OUT_OF_RANGE)``."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 \
            or min(image.shape[:2]) < 1:
        raise out_of_range(f"{name} must be uint8 (H, W, 3), got {_describe(image)}")
    return image


def check_video(name: str, video: Any, size: tuple[int, int] | None = None, frames: int | None = None) -> np.ndarray:
    """An RGB clip (F, h, w, 3) uint8; ``size`` = (h, w) and ``frames`` pin those dimensions."""
    ok = isinstance(video, np.ndarray) and video.ndim == 4 and video.shape[3] == 3 and video.dtype == np.uint8 \
        and video.shape[0] >= 1 and min(video.shape[1:3]) >= 1
    if ok and size is not None:
        ok = tuple(video.shape[1:3]) == tuple(size)
    if not ok:
        h, w = size if size is not None else ("H", "W")
        raise out_of_range(f"{name} must be uint8 ({frames if frames is not None else 'F'}, {h}, {w}, 3), "
                           f"got {_describe(video)}")
    if frames is not None and video.shape[0] != frames:
        raise out_of_range(f"{name} has {video.shape[0]} frames, the window has {frames}")
    return video  # type: ignore[no-any-return]


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {value.shape}"
    return type(value).__name__


# -- images ------------------------------------------------------------------------------------
def to_pil(image: np.ndarray) -> Image.Image:
    """(H, W, 3) uint8 -> RGB PIL image (what the diffusers i2v/animate pipelines accept)."""
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(image), mode="RGB")


def to_pil_frames(video: np.ndarray) -> list[Image.Image]:
    """(F, H, W, 3) uint8 -> list of RGB PIL images."""
    return [to_pil(frame) for frame in video]


def to_uint8(frames: Any) -> np.ndarray:
    """The pipelines' ``output_type="np"`` frames (F, H, W, 3) in [0, 1] -> uint8."""
    return np.clip(np.round(np.asarray(frames) * 255.0), 0, 255).astype(np.uint8)  # type: ignore[no-any-return]


def to_video_tensor(frames: np.ndarray, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (1, 3, F, H, W) in [-1, 1] (the VAE's pixel convention)."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).to(torch.float32) / 127.5 - 1.0
    return video.permute(3, 0, 1, 2).unsqueeze(0).to(device, dtype)


# -- latents -----------------------------------------------------------------------------------
def seeded_noise(shape: Sequence[int], seed: int, device: torch.device | str) -> torch.Tensor:
    """Gaussian noise drawn on the CPU from ``seed`` (identical on every device), then moved."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device)


def _latent_stats(vae: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)
    return mean, std


@torch.no_grad()
def encode_condition(vae: Any, frames: np.ndarray, device: torch.device | str,
                     temporal_factor: int = 4) -> torch.Tensor:
    """(O, H, W, 3) uint8 -> normalised latents (1, C, 1 + (O-1)//4, H/8, W/8), float32.

    Only the frames that fully determine a latent frame are encoded (``1 + 4·(k-1)`` of them).
    """
    keep = 1 + (condition_latent_frames(frames.shape[0], temporal_factor) - 1) * temporal_factor
    z: torch.Tensor = vae.encode(to_video_tensor(frames[:keep], device, vae.dtype)).latent_dist.mode().float()
    mean, std = _latent_stats(vae, z.device)
    return (z - mean) / std


@torch.no_grad()
def decode_latents(vae: Any, latents: torch.Tensor) -> np.ndarray:
    """Normalised latents (1, C, T, h, w) -> (F, H, W, 3) uint8 (the inverse of ``encode_condition``)."""
    mean, std = _latent_stats(vae, latents.device)
    video = vae.decode((latents.to(torch.float32) * std + mean).to(vae.dtype)).sample.to(torch.float32)
    video = ((video.clamp(-1, 1) + 1) / 2 * 255).round().squeeze(0).permute(1, 2, 3, 0)
    return video.cpu().numpy().astype(np.uint8)  # type: ignore[no-any-return]


def renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """Flow-matching forward process ``(1 - σ)·x0 + σ·ε`` on ``x0``'s frames (``noise`` sliced to fit)."""
    return (1.0 - sigma) * x0 + sigma * noise[:, :, : x0.shape[2]]


class LatentReplacement:
    """Pins latent frames ``[offset, offset + k)`` of a window to clean condition latents ``x0``.

    ``noise`` is the window's initial noise at those frames' positions (same slicing as the
    latents), so the pinned frames follow the exact trajectory a window that had landed on the
    condition would take. ``apply`` is called before the first step (σ₀) and after every step.
    """

    def __init__(self, x0: torch.Tensor, noise: torch.Tensor, offset: int = 0) -> None:
        self.x0 = x0
        self.offset = offset
        self.noise = noise[:, :, offset: offset + x0.shape[2]]

    @property
    def frames(self) -> int:
        return int(self.x0.shape[2])

    def apply(self, latents: torch.Tensor, sigma: float) -> torch.Tensor:
        """Overwrite the pinned frames of ``latents`` in place (re-noised to ``sigma``); returns it."""
        end = self.offset + self.frames
        latents[:, :, self.offset: end] = renoise(self.x0, self.noise, sigma).to(latents.dtype)
        return latents


def current_sigma(scheduler: Any) -> float:
    """Sigma the latents are at after the scheduler's last ``step`` (inside ``callback_on_step_end``)."""
    return float(scheduler.sigmas[scheduler.step_index])


def first_sigma(scheduler: Any, steps: int, device: torch.device | str) -> float:
    """Sigma of the initial latents for a ``steps``-step schedule (sets the scheduler's timesteps)."""
    scheduler.set_timesteps(steps, device=device)
    return float(scheduler.sigmas[0])


def warn_unaligned(family_log: Any, frames: int, latent_frames: int, temporal_factor: int = 4) -> None:
    """Log when ``O`` condition frames do not fill whole latent frames (the tail is left to the model)."""
    if (frames - 1) % temporal_factor:
        family_log.warning("condition_not_latent_aligned", frames=frames, replaced_latent_frames=latent_frames)


# -- tiny parts -------------------------------------------------------------------------------
def tiny_image_encoder(seed: int) -> CLIPVisionModel:
    """``tiny_components.tiny_clip_vision`` as a ``CLIPVisionModel`` (the class Wan checkpoints ship).

    The i2v/animate pipelines use only the vision tower's penultimate hidden states, so the
    projection head is dropped; the tower's weights are exactly those of ``tiny_clip_vision(seed)``.
    """
    from transformers import CLIPVisionModel

    with_projection = tc.tiny_clip_vision(seed)
    with tc.seeded(seed):  # the throwaway init must not touch the caller's RNG
        encoder = CLIPVisionModel(with_projection.config)
    encoder.load_state_dict(with_projection.vision_model.state_dict())
    return encoder.eval()


# -- running -----------------------------------------------------------------------------------
@contextmanager
def generation_errors(spec: ModelSpec, params: GenerateParams, family_log: Any) -> Iterator[None]:
    """Around a pipeline call: log cancellation (and re-raise it), map OOM to ``Permanent(OUT_OF_MEMORY)``."""
    try:
        yield
    except Cancelled:
        family_log.info("generation_cancelled", model=spec.name)
        raise
    except torch.OutOfMemoryError as e:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise Permanent(f"out of memory rendering {params.width}x{params.height}x{params.num_frames}: {e}",
                        code=ErrorCode.OUT_OF_MEMORY) from e


def warmup_size(spec: ModelSpec, world_size: int) -> tuple[int, int]:
    """(side, frames) of the smallest sensible warmup window where every rank gets a token."""
    side, frames = 2 * spec.spatial_multiple, spec.frame_multiple + 1
    while spec.latent_tokens(side, side, frames) < world_size:
        side *= 2
    return side, frames


# -- loading -----------------------------------------------------------------------------------
def check_checkpoint(checkpoint: Path, required: Sequence[str]) -> None:
    """A local diffusers directory with ``model_index.json`` and every ``required`` component."""
    if not (checkpoint / "model_index.json").is_file():
        raise Permanent(f"{checkpoint} is not a diffusers checkpoint (no model_index.json)", code=ErrorCode.MODEL_ERROR)
    missing = [name for name in required if not (checkpoint / name).is_dir()]
    if missing:
        raise Permanent(f"checkpoint {checkpoint} is incomplete: missing {', '.join(missing)}", code=ErrorCode.MODEL_ERROR)


def load_pretrained(pipeline_cls: type[P], spec: ModelSpec, checkpoint: Path, ctx: LoadContext,
                    required: Sequence[str], fp32_components: Sequence[str] = ("vae",)) -> P:
    """``pipeline_cls.from_pretrained`` on a LOCAL directory (no hub); ``fp32_components`` stay float32.

    Any failure is ``Permanent(MODEL_ERROR)``: a broken checkpoint does not get better on retry.
    """
    check_checkpoint(checkpoint, required)
    dtype = torch_dtype(ctx.dtype)
    dtypes: dict[str, torch.dtype] = {"default": dtype, **{name: torch.float32 for name in fp32_components}}
    try:
        with quiet_progress_bars():
            pipe = pipeline_cls.from_pretrained(  # type: ignore[attr-defined]
                str(checkpoint), dtype=dtypes, local_files_only=True
            )
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError) as e:
        raise Permanent(f"cannot load {spec.name} from {checkpoint}: {e}", code=ErrorCode.MODEL_ERROR) from e
    return pipe  # type: ignore[no-any-return]


def place(pipe: Any, ctx: LoadContext, *, sequence_parallel_supported: bool = True, family: str = "") -> Any:
    """Move ``pipe`` to ``ctx.device``; shard its transformer over ranks when asked (returns the handle).

    Asking for sequence parallelism where the family does not support it is an error, never a
    silent fallback to every rank computing the whole window.
    """
    pipe.to(ctx.device)
    pipe.set_progress_bar_config(disable=True)
    if not (ctx.sequence_parallel and ctx.world_size > 1):
        return None
    if not sequence_parallel_supported:
        raise Permanent(f"sequence parallelism is not supported for the {family or 'this'} family; "
                        "run it with world size 1 or without sequence_parallel", code=ErrorCode.MODEL_ERROR)
    from gpu_runner import distributed
    from gpu_runner.sequence_parallel import apply_sequence_parallel

    return apply_sequence_parallel(pipe, distributed.current(ctx.device))


def save_pipeline(pipe: Any, path: Path, model: str, family_log: Any) -> None:
    """``save_pretrained`` in diffusers format, quietly."""
    with quiet_progress_bars():
        pipe.save_pretrained(str(path))
    family_log.info("model_saved", model=model, path=str(path))
