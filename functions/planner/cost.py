"""Cost model of rendering windows, in seconds on a reference GPU (pure arithmetic).

One window of ``tokens`` latent tokens costs::

    cost = steps * cfg_branches * (a * tokens**2 + b * tokens) / (flops_per_s * ranks) + overhead_s

with, summed over the DiT's ``num_layers`` (FLOPs = 2 x multiply-adds):

* ``a = 4 * hidden`` per layer: self-attention scores ``QK^T`` and ``softmax(.)V``, the
  quadratic term that makes long windows expensive;
* ``b = 2 * (4 h^2 + 2 h^2 + 2 h ffn + 2 text_tokens h)`` per layer: q/k/v/o projections,
  cross-attention q/o projections, the FFN, and cross-attention scores over the text tokens.

``overhead_s`` is the fixed per-segment price that does not shrink with the window: a model call
(pipeline set-up, conditioning encode), VAE decode, MP4 encode, S3 upload and bus hops between
segments; it is what keeps the optimiser from choosing many tiny windows. Dividing FLOPs by an
effective throughput puts both terms in one unit (seconds). The throughput is declared unless a
GPU run measured it: ``bench/device_check.sh`` writes ``measured_cost.json`` next to this file
(or ``$VIDEOGEN_COST_CONSTANTS``) from its measured s/step, and :func:`load_cost_model` reads it.
Overlap recompute needs no separate term: every window's cost includes its overlap frames.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from schemas.registry import ModelSpec


@dataclass(frozen=True)
class CostModel:
    """Declared constants; ``flops_per_s`` ≈ 40 % of an H100's dense bf16 peak, unless measured."""

    flops_per_s: float = 4.0e14
    overhead_s: float = 4.0
    cfg_branches: int = 2
    text_tokens: int = 512
    source: str = "declared"


MEASURED_ENV = "VIDEOGEN_COST_CONSTANTS"
MEASURED_PATH = Path(__file__).with_name("measured_cost.json")
"""Written by ``bench/device_check.sh`` on a GPU: the effective throughput its s/step implies."""


def step_flops(spec: ModelSpec, width: int, height: int, frames: int, *, cfg: bool = True,
               model: CostModel | None = None) -> float:
    """FLOPs of one denoising step (both CFG branches with ``cfg``) of one window."""
    a, b = flop_coefficients(spec, model or CostModel())
    tokens = spec.latent_tokens(width, height, frames)
    return (2 if cfg else 1) * (a * tokens * tokens + b * tokens)


def measured_flops_per_s(spec: ModelSpec, width: int, height: int, frames: int, s_per_step: float, *,
                         cfg: bool = True) -> float:
    """The effective throughput a measured s/step implies (what ``CostModel.flops_per_s`` means)."""
    if s_per_step <= 0:
        raise ValueError("s_per_step must be > 0")
    return step_flops(spec, width, height, frames, cfg=cfg) / s_per_step


def load_cost_model(path: Path | str | None = None) -> CostModel:
    """``CostModel`` with the measured constants of ``path`` (default ``$VIDEOGEN_COST_CONSTANTS`` or
    ``measured_cost.json`` next to this file) when the file exists, else the declared ones.

    The file: ``{"flops_per_s": float, "overhead_s": float (optional), "device_name": str, "measured": [...]}``.
    A malformed file is an error (planning on silently wrong constants is worse than not starting).
    """
    target = Path(path) if path is not None else Path(os.environ.get(MEASURED_ENV) or MEASURED_PATH)
    if not target.is_file():
        return CostModel()
    data = json.loads(target.read_text())
    flops = float(data["flops_per_s"])
    if not flops > 0:
        raise ValueError(f"{target}: flops_per_s must be > 0, got {flops}")
    overhead = float(data.get("overhead_s", CostModel.overhead_s))
    return CostModel(flops_per_s=flops, overhead_s=overhead,
                     source=f"measured on {data.get('device_name', '?')} ({target.name})")


DEFAULT_COST_MODEL = load_cost_model()


def flop_coefficients(spec: ModelSpec, model: CostModel = DEFAULT_COST_MODEL) -> tuple[float, float]:
    """``(a, b)``: FLOPs per step and branch are ``a * tokens**2 + b * tokens``."""
    shape = spec.transformer
    h = shape.hidden
    a = 4.0 * h * shape.num_layers
    b = 2.0 * (6.0 * h * h + 2.0 * h * shape.ffn_dim + 2.0 * model.text_tokens * h) * shape.num_layers
    return a, b


def window_cost(
    spec: ModelSpec,
    width: int,
    height: int,
    frames: int,
    steps: int,
    *,
    ranks: int = 1,
    model: CostModel = DEFAULT_COST_MODEL,
) -> float:
    """Modelled seconds to render one window of ``frames`` frames (including its overlap)."""
    a, b = flop_coefficients(spec, model)
    tokens = spec.latent_tokens(width, height, frames)
    flops = steps * model.cfg_branches * (a * tokens * tokens + b * tokens)
    return flops / (model.flops_per_s * ranks) + model.overhead_s
