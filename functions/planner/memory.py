"""Memory model of one window on one GPU rank (pure arithmetic, no torch).

Peak bytes of rendering a window of ``frames`` frames at ``width`` x ``height``::

    peak = reserve + weights + max(dit_activations, vae_decode)

* ``weights``: DiT parameters x ``dtype_bytes`` (+ the VAE, ~127 M params in fp32). The text
  encoder is assumed encoded once and offloaded before denoising (``extra_resident_bytes`` adds it
  back for runners that keep it resident).
* ``dit_activations``: inference only, so at any time one block's working set is live. With
  flash / memory-efficient SDPA attention memory is O(tokens), not O(tokens^2): per token we hold
  ``hidden_copies`` tensors of width ``hidden`` (residual, norm output, q, k, v, attention
  output, rotary temporaries, fp32 norm upcasts counted double) and ``ffn_copies`` of width
  ``ffn_dim`` (FFN intermediate), times ``safety`` for allocator fragmentation. Sequence
  parallelism (Ulysses / ring) splits the tokens across ``ranks``; weights are replicated.
* ``vae_decode``: the Wan causal VAE decodes one latent frame (``vae_chunk_frames`` output frames)
  at a time with a small feature cache, so its working set is ∝ pixels x chunk, plus the decoded
  video (frames x 3 x H x W in fp32). The DiT activations are freed before decoding, hence
  ``max`` rather than a sum.

The constants are declared, not measured; they are conservative for diffusers' Wan on CUDA and
can be calibrated per device by passing a different :class:`MemoryModel`.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.registry import ModelSpec

GIB = 1024**3


@dataclass(frozen=True)
class MemoryModel:
    """Declared constants of the memory model (see module docstring)."""

    hidden_copies: float = 10.0
    ffn_copies: float = 2.0
    safety: float = 1.25
    vae_params: float = 127e6
    vae_dtype_bytes: int = 4
    vae_base_dim: int = 96
    vae_chunk_frames: int = 4
    vae_copies: float = 8.0
    reserve_bytes: int = GIB
    extra_resident_bytes: int = 0


DEFAULT_MEMORY_MODEL = MemoryModel()


@dataclass(frozen=True)
class MemoryEstimate:
    """Breakdown of :func:`estimate_window` in bytes (per rank)."""

    weights_bytes: int
    activation_bytes: int
    vae_bytes: int
    reserve_bytes: int

    @property
    def total_bytes(self) -> int:
        """Peak bytes: reserve + weights + max(activations, VAE decode)."""
        return self.reserve_bytes + self.weights_bytes + max(self.activation_bytes, self.vae_bytes)


def estimate_window(
    spec: ModelSpec,
    width: int,
    height: int,
    frames: int,
    *,
    dtype_bytes: int = 2,
    ranks: int = 1,
    model: MemoryModel = DEFAULT_MEMORY_MODEL,
) -> MemoryEstimate:
    """Peak-memory breakdown of one window of ``frames`` frames on one of ``ranks`` GPUs."""
    if ranks < 1:
        raise ValueError("ranks must be >= 1")
    shape = spec.transformer
    weights = shape.params_b * 1e9 * dtype_bytes + model.vae_params * model.vae_dtype_bytes
    weights += model.extra_resident_bytes
    tokens = spec.latent_tokens(width, height, frames)
    tokens_per_rank = -(-tokens // ranks)
    width_per_token = model.hidden_copies * shape.hidden + model.ffn_copies * shape.ffn_dim
    activations = tokens_per_rank * width_per_token * dtype_bytes * model.safety
    pixels = width * height
    vae_work = model.vae_chunk_frames * pixels * model.vae_base_dim * model.vae_dtype_bytes * model.vae_copies
    vae_out = frames * 3 * pixels * model.vae_dtype_bytes
    return MemoryEstimate(
        weights_bytes=int(weights),
        activation_bytes=int(activations),
        vae_bytes=int(vae_work + vae_out),
        reserve_bytes=model.reserve_bytes,
    )


def window_bytes(
    spec: ModelSpec,
    width: int,
    height: int,
    frames: int,
    *,
    dtype_bytes: int = 2,
    ranks: int = 1,
    model: MemoryModel = DEFAULT_MEMORY_MODEL,
) -> int:
    """Peak bytes per rank of rendering one window (see :func:`estimate_window`)."""
    return estimate_window(spec, width, height, frames, dtype_bytes=dtype_bytes, ranks=ranks, model=model).total_bytes


def max_window_frames(
    spec: ModelSpec,
    width: int,
    height: int,
    budget_bytes: int,
    dtype_bytes: int = 2,
    ranks: int = 1,
    *,
    max_frames: int | None = None,
    model: MemoryModel = DEFAULT_MEMORY_MODEL,
) -> int:
    """Largest valid window length (``frame_multiple*k+1``) that fits ``budget_bytes``.

    Also bounded by ``spec.max_window_frames`` and the optional ``max_frames`` (user cap).
    Returns 0 when not even a one-frame window fits.
    """
    cap = spec.max_window_frames if max_frames is None else min(spec.max_window_frames, max_frames)
    best = 0
    for frames in spec.window_lengths(1, cap):  # memory is monotone in frames: stop at the first that does not fit
        if window_bytes(spec, width, height, frames, dtype_bytes=dtype_bytes, ranks=ranks, model=model) > budget_bytes:
            break
        best = frames
    return best
