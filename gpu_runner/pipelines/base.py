"""What every model-family pipeline file provides (same anatomy as diffusers pipelines).

A family module (``gpu_runner/pipelines/<family>.py``) exposes ``TASKS`` (the ``schemas.messages.Task``
values its ``generate`` implements; every ``ModelSpec`` naming the family must list only these, see
``gpu_runner.registry.family_module``) and ``load(spec, checkpoint, ctx)`` returning a
``VideoPipeline``. The runner only talks to this interface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from schemas.registry import ModelSpec

# Called after every denoising step with (step_index starting at 1, total_steps).
# It may raise ``schemas.errors.Cancelled`` to stop at this step boundary.
StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class GenerateParams:
    prompt: str
    width: int
    height: int
    num_frames: int
    steps: int
    guidance_scale: float
    seed: int
    negative_prompt: str = ""
    # Previous segment's last decoded frames (O, H, W, 3) uint8: the next window starts with them.
    condition_frames: np.ndarray | None = None
    # Reference image (H, W, 3) uint8 for i2v / animate.
    image: np.ndarray | None = None
    # Animate: pose skeleton video and face crops (F, H, W, 3) uint8.
    pose_video: np.ndarray | None = None
    face_video: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadContext:
    """Where and how to load: device/dtype and the process group (for sequence parallel)."""

    device: str = "cpu"
    dtype: str = "float32"
    rank: int = 0
    world_size: int = 1
    sequence_parallel: bool = False  # split each segment across ranks (Ulysses)
    seed: int = 0  # for tiny random weights
    cfg_parallel: bool = False  # half the ranks compute the unconditional branch (gpu_runner.parallel)
    host_frames: bool = True  # copy the decoded uint8 frames to the host (the runner: rank 0 only)
    # None = auto: offload the text encoder to the CPU after encoding on CUDA, keep it on the CPU
    offload_text_encoder: bool | None = None
    accel: Any = None  # a gpu_runner.accel.AccelConfig (attention backend, compile, FP8, VAE tiling, offload)


class VideoPipeline(Protocol):
    spec: ModelSpec

    def generate(self, params: GenerateParams, on_step: StepCallback | None = None) -> np.ndarray:
        """Render ``params.num_frames`` frames, returned as (F, H, W, 3) uint8 on the CPU."""
        ...

    def warmup(self) -> None:
        """Run a minimal generation so kernels/allocations are ready before the first job."""
        ...

    def save(self, path: Path) -> None:
        """Save in diffusers format (``from_pretrained``-loadable)."""
        ...
