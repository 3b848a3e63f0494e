"""Model registry metadata (torch-free): constraints and the memory model per model.

The GPU runner maps each name to a pipeline file and a checkpoint (``gpu_runner.registry``);
CPU stages (preprocess, planner) use only the metadata here.

Frame arithmetic lives here and nowhere else: a window is ``frame_multiple·k + 1`` frames
(``ModelSpec.valid_window``, ``smallest_window_at_least``, ``largest_window_at_most``,
``window_lengths``), and a causal video VAE with temporal factor ``t`` turns ``n`` frames into
``1 + (n - 1) // t`` latent frames (``ModelSpec.latent_frames``; the module functions take ``t``
for code that has a VAE but no model name, e.g. the stitcher's latent blend).

Each ``ModelSpec.family`` names a module ``gpu_runner/pipelines/<family>.py`` whose ``TASKS`` must
include every task the spec lists (checked by ``tests/unit/test_registry.py`` and at load time).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

FACE_SIZE = 512
"""Face crop side of real Wan-Animate models (the face encoder's input); ``ModelSpec.face_size``'s default."""


def latent_frames(frames: int, temporal: int) -> int:
    """Latent frames a causal VAE with temporal factor ``temporal`` makes of ``frames`` (>= 1) frames:
    latent 0 holds frame 0, latent ``j >= 1`` frames ``t·j - t + 1 .. t·j``."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    return (frames - 1) // temporal + 1


def round_up_window(frames: int, multiple: int) -> int:
    """The shortest ``multiple·k + 1`` length >= ``frames`` (>= 1)."""
    return frames + (-(frames - 1)) % multiple


def round_down_window(frames: int, multiple: int) -> int:
    """The longest ``multiple·k + 1`` length <= ``frames``; 0 when ``frames < 1``."""
    return frames - (frames - 1) % multiple if frames >= 1 else 0


class TransformerShape(BaseModel):
    """Enough of the DiT config to model activation memory and attention cost."""

    model_config = ConfigDict(frozen=True)
    num_layers: int
    num_heads: int
    head_dim: int
    ffn_dim: int
    params_b: float = Field(description="parameters, in billions (for weight memory)")

    @property
    def hidden(self) -> int:
        return self.num_heads * self.head_dim


class ModelSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    family: str = Field(description="pipeline file under gpu_runner/pipelines/")
    tasks: tuple[str, ...]
    description: str = ""
    hub_id: str | None = Field(None, description="upstream diffusers-format checkpoint id")
    tiny: bool = Field(False, description="built locally with random weights (no checkpoint)")
    # frame constraint: L = frame_multiple * k + 1
    frame_multiple: int = 4
    max_window_frames: int = Field(81, description="largest window the model was trained on")
    spatial_multiple: int = Field(16, description="width/height must be multiples of this")
    vae_scale_temporal: int = 4
    vae_scale_spatial: int = 8
    patch_t: int = 1
    patch_hw: int = 2
    latent_channels: int = 16
    default_width: int = 832
    default_height: int = 480
    default_frames: int = 81
    default_steps: int = 50
    default_guidance_scale: float = 5.0
    default_fps: int = 16
    max_width: int = 1920
    max_height: int = 1920
    face_size: int = Field(FACE_SIZE, description="animate: side of the square face crops the model consumes")
    transformer: TransformerShape
    # what else stays on (or visits) the GPU, for the planner's memory model (functions/planner/memory.py)
    experts: int = Field(1, ge=1, description="DiTs of the same shape switched at a boundary step (Wan2.2-A14B: 2)")
    text_encoder_params_b: float = Field(5.68, ge=0, description="UMT5-XXL encoder: ~11.4 GB in bf16")
    image_encoder_params_b: float = Field(0.0, ge=0, description="CLIP ViT-H/14 vision tower (i2v, animate; fp32)")
    vae_params_b: float = Field(0.127, ge=0, description="Wan2.1 VAE 127M (fp32); Wan2.2 VAE 705M")

    def latent_tokens(self, width: int, height: int, frames: int) -> int:
        """Sequence length of the DiT for one window (one CFG branch)."""
        lt = self.latent_frames(frames)
        lh = height // self.vae_scale_spatial // self.patch_hw
        lw = width // self.vae_scale_spatial // self.patch_hw
        return (lt // self.patch_t) * lh * lw

    # -- frame arithmetic (the only place it is written) ------------------------------------------
    def latent_frames(self, frames: int) -> int:
        """Latent frames of a ``frames``-frame clip: ``1 + (frames - 1) // vae_scale_temporal``."""
        return latent_frames(frames, self.vae_scale_temporal)

    def pixel_frames(self, latents: int) -> int:
        """Frames that make exactly ``latents`` (>= 1) latent frames: ``1 + vae_scale_temporal·(latents - 1)``."""
        return 1 + self.vae_scale_temporal * (latents - 1)

    def latent_aligned_frames(self, frames: int) -> int:
        """The leading frames of a ``frames``-frame clip that fill whole latent frames
        (``1 + vae_scale_temporal·j``; e.g. 5 of 7 for Wan)."""
        return round_down_window(frames, self.vae_scale_temporal)

    def valid_window(self, frames: int) -> bool:
        """``frames`` is ``frame_multiple·k + 1`` (what the model renders)."""
        return frames >= 1 and (frames - 1) % self.frame_multiple == 0

    def smallest_window_at_least(self, frames: int) -> int:
        """The shortest valid window of at least ``frames`` (>= 1) frames."""
        return round_up_window(max(1, frames), self.frame_multiple)

    def largest_window_at_most(self, cap: int) -> int:
        """The longest valid window of at most ``cap`` frames (0 if none)."""
        return round_down_window(cap, self.frame_multiple)

    def window_lengths(self, lo: int, hi: int) -> range:
        """Every valid window length in ``[lo, hi]``, ascending."""
        return range(self.smallest_window_at_least(lo), hi + 1, self.frame_multiple)


# params_b: counted from the diffusers checkpoints' configs (issue 17), not the marketing names
_WAN21_13B = TransformerShape(num_layers=30, num_heads=12, head_dim=128, ffn_dim=8960, params_b=1.42)
_WAN21_14B = TransformerShape(num_layers=40, num_heads=40, head_dim=128, ffn_dim=13824, params_b=14.29)
_WAN21_I2V_14B = TransformerShape(num_layers=40, num_heads=40, head_dim=128, ffn_dim=13824, params_b=16.39)
_WAN22_ANIMATE_14B = TransformerShape(num_layers=40, num_heads=40, head_dim=128, ffn_dim=13824, params_b=17.3)
_WAN22_5B = TransformerShape(num_layers=30, num_heads=24, head_dim=128, ffn_dim=14336, params_b=5.0)
_CLIP_VIT_H = 0.632
_TINY_PARTS: dict[str, float] = {"text_encoder_params_b": 0.00001, "vae_params_b": 0.000001}
_TINY = TransformerShape(num_layers=2, num_heads=2, head_dim=12, ffn_dim=32, params_b=0.00002)

MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        ModelSpec(
            name="tiny-wan", family="wan", tasks=("t2v",), tiny=True,
            description="Wan text-to-video architecture with tiny random weights (tests, demo).",
            default_width=64, default_height=64, default_frames=9, default_steps=4,
            default_guidance_scale=1.0, default_fps=8, max_width=256, max_height=256,
            max_window_frames=81, transformer=_TINY, **_TINY_PARTS,
        ),
        ModelSpec(
            name="tiny-wan-i2v", family="wan_i2v", tasks=("i2v",), tiny=True,
            description="Wan image-to-video architecture with tiny random weights.",
            default_width=64, default_height=64, default_frames=9, default_steps=4,
            default_guidance_scale=1.0, default_fps=8, max_width=256, max_height=256,
            transformer=_TINY, **_TINY_PARTS,
        ),
        ModelSpec(
            name="tiny-wan-animate", family="wan_animate", tasks=("animate",), tiny=True,
            description="Wan-Animate architecture with tiny random weights.", face_size=16,
            default_width=64, default_height=64, default_frames=9, default_steps=4,
            default_guidance_scale=1.0, default_fps=8, max_width=256, max_height=256,
            transformer=_TINY, **_TINY_PARTS,
        ),
        ModelSpec(
            name="wan2.1-t2v-1.3b", family="wan", tasks=("t2v",),
            hub_id="Wan-AI/Wan2.1-T2V-1.3B-Diffusers", transformer=_WAN21_13B,
            max_width=832, max_height=832,
        ),
        ModelSpec(
            name="wan2.1-t2v-14b", family="wan", tasks=("t2v",),
            hub_id="Wan-AI/Wan2.1-T2V-14B-Diffusers", transformer=_WAN21_14B,
            default_width=1280, default_height=720,
        ),
        ModelSpec(
            name="wan2.1-i2v-14b-480p", family="wan_i2v", tasks=("i2v",),
            hub_id="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", transformer=_WAN21_I2V_14B,
            image_encoder_params_b=_CLIP_VIT_H,
        ),
        # TI2V-5B also does image-to-video upstream (the encoded image replaces the first latent
        # frame, with per-frame timesteps): the `wan` family does not implement that, so it is
        # served as text-to-video only (an i2v job is rejected at the door, not rendered as t2v).
        ModelSpec(
            name="wan2.2-ti2v-5b", family="wan", tasks=("t2v",),
            hub_id="Wan-AI/Wan2.2-TI2V-5B-Diffusers", transformer=_WAN22_5B,
            spatial_multiple=32, vae_scale_spatial=16, latent_channels=48, vae_params_b=0.705,
            default_width=1280, default_height=704, default_frames=121, default_fps=24,
            max_window_frames=121,
        ),
        ModelSpec(
            name="wan2.2-t2v-a14b", family="wan", tasks=("t2v",),
            hub_id="Wan-AI/Wan2.2-T2V-A14B-Diffusers", transformer=_WAN21_14B, experts=2,
            default_width=1280, default_height=720,
        ),
        ModelSpec(
            name="wan2.2-animate-14b", family="wan_animate", tasks=("animate",),
            hub_id="Wan-AI/Wan2.2-Animate-14B-Diffusers", transformer=_WAN22_ANIMATE_14B,
            image_encoder_params_b=_CLIP_VIT_H,
            default_width=1280, default_height=720, default_frames=77, max_window_frames=77,
            default_fps=30,
        ),
    )
}

DEFAULT_MODEL = "tiny-wan"


def get_model(name: str) -> ModelSpec | None:
    return MODELS.get(name)
