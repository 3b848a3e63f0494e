"""Helpers shared by the Wan family files (``wan``, ``wan_i2v``, ``wan_animate``).

Everything here is family-agnostic: dtype names, quiet loading, validation of ``GenerateParams``,
seeded CPU noise, chaining by latent replacement, uint8 conversion, checkpoint checks, loading a
local diffusers directory, sequence parallelism, and the error mapping around a pipeline call;
``WanFamily`` (the base class of the loaded pipelines: device, conditioning, the pipeline call with
its step callback, warmup, save, close) and ``load_family`` (a family's ``load``).

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
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

import numpy as np
import torch

from gpu_runner.pipelines import tiny_components as tc
from gpu_runner.pipelines.base import GenerateParams, LoadContext, StepCallback
from runtime.logging import get_logger
from schemas.errors import Cancelled, ErrorCode, Permanent
from schemas.messages import Task
from schemas.registry import ModelSpec, latent_frames, round_down_window

if TYPE_CHECKING:
    from PIL import Image
    from transformers import CLIPVisionModel

log = get_logger(component="pipeline")

P = TypeVar("P")
F = TypeVar("F", bound="WanFamily")

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
        raise Permanent(f"unsupported dtype {name!r}; use one of {sorted(set(DTYPES))}",
                        code=ErrorCode.MODEL_ERROR) from e


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
    """Latent frames fully determined by the first ``O`` frames of a causal Wan VAE
    (``schemas.registry.latent_frames``; ``ModelSpec.latent_frames`` with the model's factor)."""
    return latent_frames(num_condition_frames, temporal_factor)


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
    keep = round_down_window(frames.shape[0], temporal_factor)
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


def warn_unaligned(family_log: Any, frames: int, replaced: int, temporal_factor: int = 4) -> None:
    """Log when ``O`` condition frames do not fill whole latent frames (the tail is left to the model)."""
    if round_down_window(frames, temporal_factor) != frames:
        family_log.warning("condition_not_latent_aligned", frames=frames, replaced_latent_frames=replaced)


def check_spec(family: type[WanFamily], spec: ModelSpec) -> None:
    """Refuse a ``ModelSpec`` that names another family or a task ``family`` does not implement
    (an i2v job must never be rendered silently as t2v)."""
    if spec.family != family.family:
        raise Permanent(f"{spec.name} is registered with family {spec.family!r}, not {family.family!r}",
                        code=ErrorCode.MODEL_ERROR)
    missing = sorted(set(spec.tasks) - family.tasks)
    if missing:
        raise Permanent(f"{spec.name} is registered for tasks {', '.join(spec.tasks)} but family {family.family!r} "
                        f"implements only {', '.join(sorted(family.tasks))} (fix schemas/registry.py)",
                        code=ErrorCode.MODEL_ERROR)


def check_pipeline(spec: ModelSpec, pipe: Any) -> None:
    """Refuse a loaded pipeline whose VAE disagrees with the frame arithmetic of ``spec``."""
    temporal = getattr(pipe, "vae_scale_factor_temporal", spec.vae_scale_temporal)
    spatial = getattr(pipe, "vae_scale_factor_spatial", spec.vae_scale_spatial)
    if (temporal, spatial) != (spec.vae_scale_temporal, spec.vae_scale_spatial):
        raise Permanent(f"{spec.name}: the checkpoint's VAE compresses {temporal}x in time and {spatial}x in space, "
                        f"the registry says {spec.vae_scale_temporal}x and {spec.vae_scale_spatial}x "
                        "(fix schemas/registry.py)", code=ErrorCode.MODEL_ERROR)


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


def tiny_parts(seed: int, dtype: torch.dtype, *, image: bool = False) -> dict[str, Any]:
    """The tiny components every Wan family pipeline takes besides its transformer (keyword arguments).

    The text encoder is cast to ``dtype`` like ``from_pretrained`` would; the VAE (and, with
    ``image``, the CLIP ``image_encoder`` with its ``image_processor``) stay float32, as Wan recommends.
    """
    tokenizer = tc.tiny_tokenizer()
    parts: dict[str, Any] = {
        "tokenizer": tokenizer,
        "text_encoder": tc.cast_like_from_pretrained(tc.tiny_text_encoder(seed, vocab_size=len(tokenizer)), dtype),
        "vae": tc.tiny_vae(seed),
        "scheduler": tc.tiny_scheduler(),
    }
    if image:
        image_encoder = tiny_image_encoder(seed)
        parts["image_processor"] = tc.tiny_clip_image_processor(int(image_encoder.config.image_size))
        parts["image_encoder"] = image_encoder
    return parts


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
    side, frames = 2 * spec.spatial_multiple, spec.smallest_window_at_least(2)
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
        raise Permanent(f"checkpoint {checkpoint} is incomplete: missing {', '.join(missing)}",
                        code=ErrorCode.MODEL_ERROR)


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
    silent fallback to every rank computing the whole window. See ``place_parallel`` for CFG parallel.
    """
    return place_parallel(pipe, ctx, sequence_parallel_supported=sequence_parallel_supported, family=family)[0]


def place_parallel(pipe: Any, ctx: LoadContext, *, sequence_parallel_supported: bool = True,
                   family: str = "") -> tuple[Any, Any]:
    """``place`` with CFG parallel: (sequence-parallel handle, CFG-parallel handle), either None.

    The text encoder stays on the CPU when ``offload_text_encoder`` (default on CUDA):
    ``WanFamily.prompt_embeds`` moves them in for an encode and out again.
    """
    from gpu_runner import accel

    config = ctx.accel if ctx.accel is not None else accel.AccelConfig()
    accel.check(config, ctx.device)
    if config.offload == "none":
        pipe.to(ctx.device)
        if offloads_text_encoder(ctx):
            pipe.text_encoder.to("cpu")
    pipe.set_progress_bar_config(disable=True)
    sp_handle = cfg_handle = None
    wants_sp = ctx.sequence_parallel and ctx.world_size > 1
    if wants_sp or ctx.cfg_parallel:
        if wants_sp and not sequence_parallel_supported and not ctx.cfg_parallel:
            raise Permanent(f"sequence parallelism is not supported for the {family or 'this'} family; "
                            "run it with world size 1 or without sequence_parallel", code=ErrorCode.MODEL_ERROR)
        from gpu_runner import distributed, parallel
        from gpu_runner.sequence_parallel import apply_sequence_parallel

        lay = parallel.layout(distributed.current(ctx.device), cfg_parallel=ctx.cfg_parallel,
                              sequence_parallel=wants_sp)
        if lay.sp is not None:
            if not sequence_parallel_supported:
                raise Permanent(f"sequence parallelism is not supported for the {family or 'this'} family; with CFG "
                                "parallel use 2 ranks", code=ErrorCode.MODEL_ERROR)
            sp_handle = apply_sequence_parallel(pipe, lay.sp)
        if lay.cfg is not None:
            cfg_handle = parallel.apply_cfg_parallel(
                accel.transformers_of(pipe), lay.cfg, lambda: bool(getattr(pipe, "do_classifier_free_guidance", False)))
    if config.shard == "fsdp":
        from gpu_runner import distributed, parallel

        world = distributed.current(ctx.device)
        if not world.distributed:
            raise Permanent("FSDP sharding needs a process group (launch with torchrun)", code=ErrorCode.MODEL_ERROR)
        lay = parallel.layout(world, cfg_parallel=ctx.cfg_parallel, sequence_parallel=ctx.sequence_parallel)
        # the ranks that run the same forwards: one CFG half (its SP group), else the whole world
        if lay.cfg is not None:
            if lay.sp is None:
                raise Permanent("FSDP with CFG parallel shards within a CFG half: use 2·k ranks with k >= 2 "
                                "(sequence parallel on)", code=ErrorCode.MODEL_ERROR)
            mesh = lay.sp_mesh
        elif lay.sp_mesh is not None:
            mesh = lay.sp_mesh  # the SP group is the whole world here
        else:
            mesh = distributed.device_mesh(world, (world.world_size,), ("shard",))
        accel.shard_weights(pipe, mesh)
    accel.apply(pipe, config, ctx.device)
    if config.vae_tiling and ctx.world_size > 1:  # every rank decodes 1/world of the tiles
        from gpu_runner import distributed, vae_split

        vae_split.install(pipe.vae, distributed.current(ctx.device))
    return sp_handle, cfg_handle


def offloads_text_encoder(ctx: LoadContext) -> bool:
    """The text encoder (UMT5-XXL, ~11.4 GB bf16) lives on the CPU between encodes (default on CUDA;
    never when sharded: each rank keeps 1/N of it). CLIP (~2.5 GB fp32) stays resident."""
    if ctx.accel is not None and getattr(ctx.accel, "shard", "none") != "none":
        return False
    if ctx.offload_text_encoder is not None:
        return bool(ctx.offload_text_encoder) and ctx.device.startswith("cuda")
    return ctx.device.startswith("cuda")


def frames_to_uint8(video: torch.Tensor) -> torch.Tensor:
    """The pipelines' ``output_type="pt"`` video (1, F, 3, H, W) in [0, 1] -> (F, H, W, 3) uint8, on its device.

    One fused pass on the device (same rounding as ``to_uint8``: round half to even, clip).
    """
    return video[0].mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def save_pipeline(pipe: Any, path: Path, model: str, family_log: Any) -> None:
    """``save_pretrained`` in diffusers format, quietly."""
    with quiet_progress_bars():
        pipe.save_pretrained(str(path))
    family_log.info("model_saved", model=model, path=str(path))


# -- the shared anatomy of a loaded family pipeline --------------------------------------------
class WanFamily:
    """What ``WanT2V``, ``WanI2V`` and ``WanAnimate`` share (each implements ``base.VideoPipeline``).

    A family subclass sets ``family``/``log`` (and ``sequence_parallel_supported``), implements
    ``generate`` (validate, draw noise, call ``run``) and, for warmup, ``warmup_inputs``.
    """

    family: str = "wan"
    tasks: ClassVar[frozenset[Task]] = frozenset()
    """The tasks this family's ``generate`` implements; every ``ModelSpec`` naming the family must
    list only these (checked when loading, see ``check_spec``)."""
    log: Any = log
    sequence_parallel_supported: bool = True

    PROMPT_CACHE = 8  # prompt embeddings kept per runner (a job's segments share one prompt)

    def __init__(self, spec: ModelSpec, pipe: Any, ctx: LoadContext, sequence_parallel: Any = None,
                 cfg_parallel: Any = None) -> None:
        self.spec = spec
        self.pipe = pipe
        self.ctx = ctx
        self.sequence_parallel = sequence_parallel  # a SequenceParallelHandle when sharded over ranks
        self.cfg_parallel = cfg_parallel  # a gpu_runner.parallel.CfgParallelHandle with 2·k ranks
        self._prompts: OrderedDict[tuple[str, str, bool], tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
        self.prompt_encodes = 0
        pipe.set_progress_bar_config(disable=True)

    @classmethod
    def finish(cls, spec: ModelSpec, pipe: Any, ctx: LoadContext) -> Self:
        """Check ``pipe`` against ``spec``, place it on ``ctx.device`` (sharded when asked, see
        ``place_parallel``) and wrap it."""
        check_spec(cls, spec)
        check_pipeline(spec, pipe)
        sp, cfg = place_parallel(pipe, ctx, sequence_parallel_supported=cls.sequence_parallel_supported,
                                 family=cls.family)
        return cls(spec, pipe, ctx, sequence_parallel=sp, cfg_parallel=cfg)

    # -- prompts -------------------------------------------------------------------------------
    def prompt_embeds(self, prompt: str, negative_prompt: str,
                      guidance: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prompt_embeds, negative_prompt_embeds) as the pipeline would compute them, cached per prompt.

        With ``offload_text_encoder`` the encoder is moved to the device for the encode and back to
        the CPU after it, so it is not resident while the DiT denoises.
        """
        key = (prompt, negative_prompt, guidance)
        if key in self._prompts:
            self._prompts.move_to_end(key)
            return self._prompts[key]
        encoder = self.pipe.text_encoder
        offload = offloads_text_encoder(self.ctx)
        if offload:
            encoder.to(self.device)
        try:
            with torch.no_grad():
                pos, neg = self.pipe.encode_prompt(prompt=prompt, negative_prompt=negative_prompt or None,
                                                   do_classifier_free_guidance=guidance, num_videos_per_prompt=1,
                                                   max_sequence_length=512, device=self.device)
        finally:
            if offload:
                encoder.to("cpu")
        self.prompt_encodes += 1
        self._prompts[key] = (pos, neg)
        while len(self._prompts) > self.PROMPT_CACHE:
            self._prompts.popitem(last=False)
        return pos, neg

    @property
    def device(self) -> torch.device:
        return torch.device(self.ctx.device)

    # -- conditioning --------------------------------------------------------------------------
    def encode_condition(self, frames: np.ndarray) -> torch.Tensor:
        """(O, H, W, 3) uint8 -> normalised latents (1, C, 1 + (O-1)//4, H/8, W/8), float32."""
        return encode_condition(self.pipe.vae, frames, self.device, self.spec.vae_scale_temporal)

    def latent_shape(self, params: GenerateParams, channels: int, num_frames: int | None = None,
                     extra_frames: int = 0) -> tuple[int, int, int, int, int]:
        """(1, channels, T_lat + extra_frames, H/8, W/8) of a ``num_frames`` window (default: the params')."""
        pipe = self.pipe
        frames = params.num_frames if num_frames is None else num_frames
        return (
            1,
            int(channels),
            self.spec.latent_frames(frames) + extra_frames,
            params.height // pipe.vae_scale_factor_spatial,
            params.width // pipe.vae_scale_factor_spatial,
        )

    def seeded_latents(self, params: GenerateParams, channels: int) -> torch.Tensor:
        """The window's initial noise, drawn on the CPU from ``params.seed`` (device-independent)."""
        return seeded_noise(self.latent_shape(params, channels), params.seed, self.device)

    def pin_condition(self, params: GenerateParams, noise: torch.Tensor,
                      offset: int = 0) -> tuple[torch.Tensor, LatentReplacement | None]:
        """Initial latents (a copy of ``noise``) and, with ``condition_frames``, their latent replacement.

        The pinned frames start at ``offset`` and are already set to the first sigma of a
        ``params.steps``-step schedule.
        """
        latents = noise.clone()
        cond = params.condition_frames
        if cond is None:
            return latents, None
        pin = LatentReplacement(self.encode_condition(cond), noise, offset=offset)
        warn_unaligned(self.log, cond.shape[0], pin.frames, self.spec.vae_scale_temporal)
        pin.apply(latents, first_sigma(self.pipe.scheduler, params.steps, self.device))
        return latents, pin

    # -- generation ----------------------------------------------------------------------------
    def generate(self, params: GenerateParams, on_step: StepCallback | None = None) -> np.ndarray:
        raise NotImplementedError

    def run(self, params: GenerateParams, latents: torch.Tensor, pin: LatentReplacement | None,
            on_step: StepCallback | None, *, total: int | None = None, around: Any = None,
            log_fields: dict[str, Any] | None = None, **inputs: Any) -> np.ndarray:
        """Call the pipeline from ``latents`` and return (F, H, W, 3) uint8 frames.

        After every denoising step (``callback_on_step_end``) the first ``params.steps`` steps
        re-apply ``pin`` and every step reports ``on_step(done, total)`` (``total`` defaults to
        ``params.steps``); ``Cancelled`` raised there stops the job at that step boundary.
        ``around`` is an extra context manager entered inside the error mapping; ``inputs`` are
        the family's own pipeline arguments; ``log_fields`` go into ``generation_done``.
        """
        steps = params.steps
        total = steps if total is None else total
        done = 0

        def on_step_end(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            nonlocal done
            done += 1
            current = kwargs["latents"]
            if pin is not None and done <= steps:  # only the first denoising loop continues the condition
                pin.apply(current, current_sigma(p.scheduler))
            if on_step is not None:
                on_step(done, total)
            return {"latents": current}

        started = time.perf_counter()
        with generation_errors(self.spec, params, self.log), (around if around is not None else nullcontext()):
            pos, neg = self.prompt_embeds(params.prompt, params.negative_prompt, params.guidance_scale > 1.0)
            out = self.pipe(
                **inputs,
                prompt_embeds=pos,
                negative_prompt_embeds=neg,
                height=params.height,
                width=params.width,
                num_inference_steps=steps,
                guidance_scale=params.guidance_scale,
                latents=latents,
                output_type="pt",
                callback_on_step_end=on_step_end,
                callback_on_step_end_tensor_inputs=["latents"],
            )
            frames = frames_to_uint8(out.frames)
        if self.ctx.host_frames:
            video = frames.cpu().numpy()
        else:  # ranks > 0 of a runner: the frames stay on the device (rank 0 uploads); shape only
            video = np.empty((frames.shape[0], 0, 0, 3), dtype=np.uint8)
        self.log.info("generation_done", model=self.spec.name, frames=video.shape[0], width=params.width,
                      height=params.height, steps=steps, **(log_fields or {}), conditioned=pin is not None,
                      seconds=round(time.perf_counter() - started, 3))
        return video

    def warmup_inputs(self, side: int, frames: int) -> dict[str, Any]:
        """The family's extra ``GenerateParams`` fields for a (side x side x frames) warmup window."""
        return {}

    def warmup(self) -> None:
        """One step at the smallest sensible size (no CFG, blank inputs) so kernels/allocations exist."""
        side, frames = warmup_size(self.spec, self.ctx.world_size)
        self.generate(GenerateParams(prompt="warmup", width=side, height=side, num_frames=frames, steps=1,
                                     guidance_scale=1.0, seed=0, **self.warmup_inputs(side, frames)))

    def save(self, path: Path) -> None:
        """Save in diffusers format (the family's ``from_pretrained``/``load`` read it back)."""
        save_pipeline(self.pipe, path, self.spec.name, self.log)

    def close(self) -> None:
        """Undo CFG and sequence parallelism (if applied)."""
        if self.cfg_parallel is not None:
            self.cfg_parallel.remove()
            self.cfg_parallel = None
        if self.sequence_parallel is not None:
            self.sequence_parallel.remove()
            self.sequence_parallel = None


def load_family(spec: ModelSpec, checkpoint: Path | None, ctx: LoadContext, *, pipeline_cls: type[Any],
                build_tiny: Callable[[ModelSpec, LoadContext], F], required: Sequence[str],
                fp32: Sequence[str] = ("vae",), finish: Callable[[ModelSpec, Any, LoadContext], F],
                family_log: Any = log, log_fields: Callable[[Any], dict[str, Any]] | None = None) -> F:
    """A family's ``load``: tiny models without a checkpoint are built; otherwise read a LOCAL
    diffusers directory (no hub) with ``load_pretrained`` and hand it to ``finish``."""
    if checkpoint is None:
        if spec.tiny:
            return build_tiny(spec, ctx)
        raise Permanent(f"{spec.name} needs a checkpoint directory", code=ErrorCode.MODEL_ERROR)
    checkpoint = Path(checkpoint)
    pipe = load_pretrained(pipeline_cls, spec, checkpoint, ctx, required, fp32)
    family_log.info("model_loaded", model=spec.name, checkpoint=str(checkpoint), dtype=ctx.dtype, device=ctx.device,
                    **(log_fields(pipe) if log_fields is not None else {}))
    return finish(spec, pipe, ctx)
