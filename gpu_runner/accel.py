"""Speed and memory options of a loaded pipeline, as configuration (issue 17).

Each option is applied once at load, logged when applied, and an error (``Permanent(MODEL_ERROR)``)
when requested and unavailable — never a silent fallback:

* ``attention_backend``: diffusers' attention dispatcher (``ModelMixin.set_attention_backend``).
  ``native`` (PyTorch SDPA) is the default and always available; ``flash`` / ``_flash_3`` /
  ``sage`` ... need CUDA and their package installed (diffusers' own requirement check decides);
  the ``*_hub`` backends are refused (they download kernels at load; runners have no network).
* ``compile``: ``torch.compile`` of the repeated transformer blocks (diffusers' regional
  compilation, ``compile_repeated_blocks``); the runner's warm-up then compiles before the first
  pull. Needs a working compiler toolchain on the host (an error at warm-up otherwise).
* ``fp8``: FP8 weights + dynamic FP8 activations for the DiT's linear layers with torchao
  (``Float8DynamicActivationFloat8WeightConfig``); CUDA with compute capability >= 8.9 only.
  Refused loudly on the CPU.
* ``vae_tiling``: tiled VAE decode and encode (``AutoencoderKLWan.enable_tiling``): bounded memory
  (one tile of ``vae_tile`` pixels at a time) at a small blending error along tile seams.
* ``shard``: ``fsdp`` — FSDP2 ``fully_shard`` of the DiT(s) and the text encoder over the ranks
  that run the same forwards (the world, or each CFG half); each rank keeps 1/N of the weights and
  gathers one block at a time. Outputs equal the unsharded model's.
* ``offload``: ``none`` | ``model`` (diffusers' model CPU offload: each component moves to the GPU
  when used) | ``block`` (group offloading of the transformer blocks: one block group on the GPU
  at a time). For GPUs smaller than the model.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from runtime.logging import get_logger
from schemas.errors import ErrorCode, Permanent

log = get_logger(component="accel")

Offload = Literal["none", "model", "block"]
CPU_BACKENDS = ("native", "_native_math", "flex")  # the attention backends that run without CUDA


class AccelConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    attention_backend: str = Field("native", description="diffusers attention backend (native = PyTorch SDPA)")
    compile: bool = False
    fp8: bool = False
    vae_tiling: bool = False
    vae_tile: int = Field(256, ge=32, description="tiled VAE: tile side in pixels (stride = 3/4 of it)")
    offload: Offload = "none"
    shard: Literal["none", "fsdp"] = Field("none", description="FSDP2: DiT blocks and text encoder sharded over "
                                                               "the ranks that run the same forward")

    @classmethod
    def from_settings(cls, settings: Any) -> AccelConfig:
        return cls(
            attention_backend=getattr(settings, "runner_attention_backend", "native") or "native",
            compile=bool(getattr(settings, "runner_compile", False)),
            fp8=bool(getattr(settings, "runner_fp8", False)),
            vae_tiling=bool(getattr(settings, "runner_vae_tiling", False)),
            offload=getattr(settings, "runner_offload", "none") or "none",
            shard=getattr(settings, "runner_shard", "none") or "none",
        )


def _refuse(message: str) -> Permanent:
    return Permanent(message, code=ErrorCode.MODEL_ERROR)


def transformers_of(pipe: Any) -> list[Any]:
    """The pipeline's DiT(s): ``transformer`` and, for Wan2.2-A14B, ``transformer_2``."""
    return [m for m in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None)) if m is not None]


def check(config: AccelConfig, device: str) -> None:
    """Refuse what cannot be applied on ``device`` before anything is loaded onto it."""
    cuda = device.startswith("cuda")
    backend = config.attention_backend.lower()
    from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

    names = {x.value for x in AttentionBackendName.__members__.values()}
    if backend not in names:
        raise _refuse(f"attention backend {backend!r} unknown; diffusers has {', '.join(sorted(names))}")
    if backend.endswith("_hub"):
        raise _refuse(f"attention backend {backend!r} downloads its kernel at load; runners have no network "
                      "(install the package and use the non-hub backend)")
    if backend != "native":
        if not cuda and backend not in CPU_BACKENDS:
            raise _refuse(f"attention backend {backend!r} needs CUDA; this runner is on {device}")
        try:
            _check_attention_backend_requirements(AttentionBackendName(backend))
        except (RuntimeError, ImportError) as e:
            raise _refuse(f"attention backend {backend!r} requested but unavailable: {e}") from e
    if config.fp8:
        if not cuda:
            raise _refuse(f"FP8 weights (runner_fp8) need CUDA (compute capability >= 8.9); this runner is on {device}")
        major, minor = torch.cuda.get_device_capability(torch.device(device))
        if (major, minor) < (8, 9):
            raise _refuse(f"FP8 weights need compute capability >= 8.9, this GPU has {major}.{minor}")
        try:
            import torchao  # noqa: F401
        except ImportError as e:
            raise _refuse(f"FP8 weights requested but torchao is not installed: {e}") from e
    if config.shard != "none" and config.offload != "none":
        raise _refuse("FSDP sharding and CPU offload do not combine: shard over more ranks, or offload on one")
    if config.offload != "none" and not cuda:
        raise _refuse(f"CPU offload ({config.offload}) moves weights between the CPU and a GPU; this runner is on "
                      f"{device}")


def apply(pipe: Any, config: AccelConfig, device: str) -> list[str]:
    """Apply ``config`` to a loaded pipeline (after it was placed). Returns what was applied (logged)."""
    check(config, device)
    applied: list[str] = []
    transformers = transformers_of(pipe)
    backend = config.attention_backend.lower()
    if backend != "native":
        for transformer in transformers:
            transformer.set_attention_backend(backend)
        applied.append(f"attention:{backend}")
    if config.fp8:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_

        for transformer in transformers:
            quantize_(transformer, Float8DynamicActivationFloat8WeightConfig())
        applied.append("fp8:torchao")
    if config.vae_tiling:
        tile = config.vae_tile
        pipe.vae.enable_tiling(tile_sample_min_height=tile, tile_sample_min_width=tile,
                               tile_sample_stride_height=tile * 3 // 4, tile_sample_stride_width=tile * 3 // 4)
        applied.append(f"vae_tiling:{tile}")
    if config.offload == "model":
        pipe.enable_model_cpu_offload(device=torch.device(device))
        applied.append("offload:model")
    elif config.offload == "block":
        for transformer in transformers:
            transformer.enable_group_offload(onload_device=torch.device(device), offload_device=torch.device("cpu"),
                                             offload_type="block_level", num_blocks_per_group=1, use_stream=True)
        applied.append("offload:block")
    if config.compile:
        for transformer in transformers:
            transformer.compile_repeated_blocks(fullgraph=True, dynamic=True)
        applied.append("compile:blocks")
    for what in applied:
        log.info("accel_applied", option=what, device=device)
    return applied


def shard_weights(pipe: Any, mesh: Any) -> dict[str, int]:
    """FSDP2 (``fully_shard``) of every DiT (each block, then the root) and of the text encoder (each
    T5 block, then the root) over the 1-D ``mesh`` (the world, or one CFG half: FSDP gathers a
    block's weights when it runs, so every rank of the mesh must run the same forwards). Returns
    the local parameter bytes per component (logged). Outputs equal the unsharded model's: the full
    weights are gathered for each block's forward, then freed.
    """
    from torch.distributed.fsdp import fully_shard

    out: dict[str, int] = {}
    for name, model, blocks in _shardable(pipe):
        for block in blocks:
            fully_shard(block, mesh=mesh, reshard_after_forward=True)
        fully_shard(model, mesh=mesh, reshard_after_forward=True)
        out[name] = sum(p.to_local().numel() * p.element_size() for p in model.parameters())
    log.info("weights_sharded", ranks=mesh.size(), **out)
    return out


def _shardable(pipe: Any) -> list[tuple[str, Any, list[Any]]]:
    found: list[tuple[str, Any, list[Any]]] = []
    for name in ("transformer", "transformer_2"):
        model = getattr(pipe, name, None)
        if model is not None:
            found.append((name, model, list(model.blocks)))
    encoder = getattr(pipe, "text_encoder", None)
    if encoder is not None:
        blocks = list(getattr(getattr(encoder, "encoder", None), "block", []) or [])
        found.append(("text_encoder", encoder, blocks))
    return found


def resident_bytes(pipe: Any, device: str) -> dict[str, int]:
    """Bytes of parameters and buffers of each component that live on ``device`` now."""
    out: dict[str, int] = {}
    target = torch.device(device)
    for name in ("transformer", "transformer_2", "text_encoder", "image_encoder", "vae"):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        total = 0
        for t in list(module.parameters()) + list(module.buffers()):
            local = t.to_local() if hasattr(t, "to_local") else t  # FSDP2: this rank's shard
            if local.device.type == target.type:
                total += local.numel() * local.element_size()
        out[name] = total
    return out
