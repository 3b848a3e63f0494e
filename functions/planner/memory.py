"""Memory model of one window on one GPU rank (pure arithmetic, no torch).

Peak bytes of rendering a window of ``frames`` frames at ``width`` x ``height``::

    peak = reserve + resident + max(encode, dit_activations + step_cache, vae_decode)

* ``resident``: what stays on the device for the runner's life — every DiT expert (Wan2.2-A14B
  keeps both the high-noise and the low-noise transformer: ``spec.experts``) x ``dtype_bytes``,
  the VAE (fp32), and, when *not* offloaded, the text encoder (UMT5-XXL, 5.68 B params, ~11.4 GB
  in bf16); the CLIP image encoder (i2v/animate, fp32) always. With FSDP (``shard_ranks``) each
  rank holds 1/N of the DiT(s) and the text encoder plus one gathered block. Parameter counts are
  the checkpoints' real ones (``schemas.registry``: 1.42 B for "1.3B", 14.29 B for T2V-14B, 16.39 B for I2V-14B,
  ~17.3 B for Animate).
* ``encode``: with the text encoder offloaded (the runner's default on CUDA,
  ``gpu_runner.pipelines._common.offloads_text_encoder``) it visits the device for one encode per
  new prompt (embeddings are cached per job: segments share the prompt) while the DiT is resident,
  but never together with the denoising activations.
* ``dit_activations``: inference only, so at any time one block's working set is live. With
  flash / memory-efficient SDPA attention memory is O(tokens), not O(tokens^2): per token we hold
  ``hidden_copies`` tensors of width ``hidden`` (residual, norm output, q, k, v, attention
  output, rotary temporaries, fp32 norm upcasts counted double) and ``ffn_copies`` of width
  ``ffn_dim`` (FFN intermediate), times ``safety`` for allocator fragmentation. Sequence
  parallelism (Ulysses) splits the tokens across the ranks of one CFG half: with CFG parallel the
  ``ranks`` are two halves of ``ranks/2`` and the tokens split ``ranks/2`` ways. Weights are
  replicated on every rank.
* ``step_cache``: the state a step cache keeps between steps (:func:`step_cache_bytes`; per CFG
  branch this rank computes). TaylorSeer in full mode at 14B 720p x 81 is ~346 GiB — the runner
  refuses it at start; the default is its lite mode.
* ``vae_decode``: the Wan causal VAE decodes one latent frame (``vae_chunk_frames`` output frames)
  at a time with a small feature cache, so its working set is ∝ pixels x chunk (one tile's pixels
  with tiled decode), plus the decoded video (frames x 3 x H x W in fp32). The DiT activations
  are freed before decoding, hence ``max`` rather than a sum.

The constants are declared, not measured; they are conservative for diffusers' Wan on CUDA and
can be calibrated per device by passing a different :class:`MemoryModel`. The budget a runner
measures is its free device memory minus :data:`DEVICE_MARGIN_BYTES` (``device_budget``).
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
    encoder_dtype_bytes: int = 2  # the text encoder in bf16
    image_encoder_dtype_bytes: int = 4  # CLIP stays fp32 (as Wan recommends)
    offload_text_encoder: bool = True  # the runner's default on CUDA
    vae_tile_pixels: int | None = None  # tiled VAE decode: pixels of one tile (None: whole frames)
    shard_ranks: int = 1  # FSDP2: ranks the DiT and text encoder are sharded over


DEFAULT_MEMORY_MODEL = MemoryModel()

DEVICE_MARGIN_BYTES = 3 * GIB
"""Kept free below a device's measured free memory (CUDA context growth, NCCL buffers, fragmentation)."""


def device_budget(free_bytes: int, margin_bytes: int = DEVICE_MARGIN_BYTES) -> int:
    """The planner budget of a device with ``free_bytes`` free: free memory minus a margin."""
    return max(0, int(free_bytes) - int(margin_bytes))


def sp_degree(ranks: int, cfg_parallel: bool = False) -> int:
    """Ranks the sequence is split over: all of them, or half with CFG parallel (2 CFG x ranks/2 SP)."""
    if ranks < 1:
        raise ValueError("ranks must be >= 1")
    if cfg_parallel:
        if ranks % 2:
            raise ValueError(f"CFG parallel needs an even number of ranks, got {ranks}")
        return ranks // 2
    return ranks


def step_cache_bytes(kind: str, spec: ModelSpec, width: int, height: int, frames: int, *, ranks: int = 1,
                     cfg_parallel: bool = False, cfg: bool = True, dtype_bytes: int = 2,
                     taylor_orders: int = 2, taylor_modules: int = 3, taylor_lite: bool = True,
                     factor_bytes: int | None = None, pab_hooked: int = 1) -> int:
    """Extra bytes per rank a step cache holds between steps (``gpu_runner.caches.cache_memory_bytes``
    passes a config's parameters; the defaults are the runner's defaults).

    In units of one hidden-state tensor (tokens x hidden) per CFG branch this rank computes:
    first_block 3 (head output, head residual, tail residual); mag 1 (previous residual);
    taylorseer ``taylor_orders`` per predicted module (``taylor_modules`` of every block; lite:
    only ``proj_out``'s small output); pab 1 per hooked attention module of every block.
    """
    if kind in ("none", "faster"):
        return 0
    shape = spec.transformer
    tokens = -(-spec.latent_tokens(width, height, frames) // sp_degree(ranks, cfg_parallel))
    hidden_state = tokens * shape.hidden * dtype_bytes
    branches = (1 if cfg_parallel else 2) if cfg else 1
    fbytes = dtype_bytes if factor_bytes is None else factor_bytes
    if kind == "first_block":
        per_branch = 3 * hidden_state
    elif kind == "mag":
        per_branch = hidden_state
    elif kind == "taylorseer":
        if taylor_lite:
            out_width = spec.latent_channels * spec.patch_t * spec.patch_hw**2
            per_branch = taylor_orders * tokens * out_width * fbytes
        else:
            per_branch = taylor_orders * taylor_modules * shape.num_layers * tokens * shape.hidden * fbytes
    elif kind == "pab":
        per_branch = pab_hooked * shape.num_layers * hidden_state
    else:
        raise ValueError(f"unknown step cache {kind!r}")
    return branches * per_branch


@dataclass(frozen=True)
class MemoryEstimate:
    """Breakdown of :func:`estimate_window` in bytes (per rank)."""

    weights_bytes: int  # resident: DiT expert(s), VAE, and the encoders when not offloaded
    activation_bytes: int
    vae_bytes: int
    reserve_bytes: int
    encode_bytes: int = 0  # offloaded encoders visiting for an encode
    cache_bytes: int = 0  # step-cache state

    @property
    def total_bytes(self) -> int:
        """Peak bytes: reserve + resident + max(encode, activations + step cache, VAE decode)."""
        return self.reserve_bytes + self.weights_bytes + max(
            self.encode_bytes, self.activation_bytes + self.cache_bytes, self.vae_bytes)


def encoder_bytes(spec: ModelSpec, model: MemoryModel = DEFAULT_MEMORY_MODEL) -> int:
    """Bytes of the text encoder and (i2v/animate) the CLIP image encoder."""
    return int(spec.text_encoder_params_b * 1e9 * model.encoder_dtype_bytes
               + spec.image_encoder_params_b * 1e9 * model.image_encoder_dtype_bytes)


def estimate_window(
    spec: ModelSpec,
    width: int,
    height: int,
    frames: int,
    *,
    dtype_bytes: int = 2,
    ranks: int = 1,
    cfg_parallel: bool = False,
    cache: str = "none",
    model: MemoryModel = DEFAULT_MEMORY_MODEL,
) -> MemoryEstimate:
    """Peak-memory breakdown of one window of ``frames`` frames on one of ``ranks`` GPUs."""
    sp = sp_degree(ranks, cfg_parallel)
    shape = spec.transformer
    weights = spec.experts * shape.params_b * 1e9 * dtype_bytes + spec.vae_params_b * 1e9 * model.vae_dtype_bytes
    weights += model.extra_resident_bytes
    text = int(spec.text_encoder_params_b * 1e9 * model.encoder_dtype_bytes)
    weights += encoder_bytes(spec, model) - text  # CLIP stays resident (small, used once per window)
    if model.shard_ranks > 1:  # FSDP2: 1/N of the DiT(s) and text encoder, plus one gathered block
        dit = spec.experts * shape.params_b * 1e9 * dtype_bytes
        weights -= dit * (1 - 1 / model.shard_ranks) - dit / spec.experts / shape.num_layers
        text = int(text / model.shard_ranks)
        weights += text  # a sharded text encoder stays (no offload)
    elif not model.offload_text_encoder:
        weights += text
    tokens = spec.latent_tokens(width, height, frames)
    tokens_per_rank = -(-tokens // sp)
    width_per_token = model.hidden_copies * shape.hidden + model.ffn_copies * shape.ffn_dim
    activations = tokens_per_rank * width_per_token * dtype_bytes * model.safety
    pixels = width * height
    work_pixels = pixels if model.vae_tile_pixels is None else min(pixels, model.vae_tile_pixels)
    vae_work = model.vae_chunk_frames * work_pixels * model.vae_base_dim * model.vae_dtype_bytes * model.vae_copies
    vae_out = frames * 3 * pixels * model.vae_dtype_bytes
    return MemoryEstimate(
        weights_bytes=int(weights),
        activation_bytes=int(activations),
        vae_bytes=int(vae_work + vae_out),
        reserve_bytes=model.reserve_bytes,
        encode_bytes=text if model.offload_text_encoder and model.shard_ranks <= 1 else 0,
        cache_bytes=step_cache_bytes(cache, spec, width, height, frames, ranks=ranks, cfg_parallel=cfg_parallel,
                                     dtype_bytes=dtype_bytes),
    )


def window_bytes(
    spec: ModelSpec,
    width: int,
    height: int,
    frames: int,
    *,
    dtype_bytes: int = 2,
    ranks: int = 1,
    cfg_parallel: bool = False,
    cache: str = "none",
    model: MemoryModel = DEFAULT_MEMORY_MODEL,
) -> int:
    """Peak bytes per rank of rendering one window (see :func:`estimate_window`)."""
    return estimate_window(spec, width, height, frames, dtype_bytes=dtype_bytes, ranks=ranks,
                           cfg_parallel=cfg_parallel, cache=cache, model=model).total_bytes


def max_window_frames(
    spec: ModelSpec,
    width: int,
    height: int,
    budget_bytes: int,
    dtype_bytes: int = 2,
    ranks: int = 1,
    *,
    max_frames: int | None = None,
    cfg_parallel: bool = False,
    cache: str = "none",
    model: MemoryModel = DEFAULT_MEMORY_MODEL,
) -> int:
    """Largest valid window length (``frame_multiple*k+1``) that fits ``budget_bytes``.

    Also bounded by ``spec.max_window_frames`` and the optional ``max_frames`` (user cap).
    Returns 0 when not even a one-frame window fits.
    """
    cap = spec.max_window_frames if max_frames is None else min(spec.max_window_frames, max_frames)
    best = 0
    for frames in spec.window_lengths(1, cap):  # memory is monotone in frames: stop at the first that does not fit
        if window_bytes(spec, width, height, frames, dtype_bytes=dtype_bytes, ranks=ranks, cfg_parallel=cfg_parallel,
                        cache=cache, model=model) > budget_bytes:
            break
        best = frames
    return best
