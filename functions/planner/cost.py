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
effective throughput puts both terms in one unit (seconds). Overlap recompute needs no separate
term: every window's cost includes its overlap frames.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.registry import ModelSpec


@dataclass(frozen=True)
class CostModel:
    """Declared constants; ``flops_per_s`` ≈ 40 % of an H100's dense bf16 peak."""

    flops_per_s: float = 4.0e14
    overhead_s: float = 4.0
    cfg_branches: int = 2
    text_tokens: int = 512


DEFAULT_COST_MODEL = CostModel()


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
