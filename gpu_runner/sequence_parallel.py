"""Ulysses sequence parallelism for ``WanTransformer3DModel``, applied from outside the model.

Each rank holds a contiguous shard of the token sequence for the whole transformer (patch
embedding output, rotary embedding, every block's self-attention input, cross-attention queries,
FFN, output norm/projection); the shard is gathered again after ``proj_out``, before unpatchify.
The splitting and gathering are diffusers' own context-parallel hooks driven by the model's
``_cp_plan`` (``diffusers.hooks.context_parallel``). Inside self-attention (``attn1``), an
all-to-all switches from (sequence shard, all heads) to (full sequence, head shard), attention runs,
and a second all-to-all switches back. Cross-attention needs no communication (queries are local,
text keys are replicated).

Backends (``VIDEOGEN_SP_BACKEND``):
- ``native`` (default): diffusers' built-in Ulysses attention (``ContextParallelConfig``); works on
  CPU/gloo and CUDA/nccl. Sequence lengths or head counts not divisible by the world size switch
  it to diffusers' "Ulysses anything" mode (uneven all-to-all), per call, exactly — no padding.
- ``ulysses``: our own ``attn1`` processor with ``distributed.all_to_all_4d`` + SDPA (reference
  implementation, also CPU-testable).
- ``xfuser`` is **not supported** (issue 17): current xfuser's ``USP`` asserts a runtime state
  (``initialize_runtime_state``, built from an xDiT pipeline and ``EngineConfig``) that a diffusers
  pipeline driven from outside never has, and xfuser drags in yunchang/flash-attn wheels far over
  the device check's budget. diffusers' own Ulysses covers the same ground and runs FlashAttention /
  SageAttention through its attention dispatcher (``gpu_runner.accel``). Asking for ``xfuser`` is a
  ``Permanent`` error naming the alternative, never a silent fallback.

The group: by default every rank of the world; with CFG parallel (``gpu_runner.parallel``) each
CFG half is its own Ulysses group: ``ctx`` is then the half's sub-context (``ctx.group``,
``ctx.mesh``) and every collective here runs inside it.

``diffusers.ModelMixin.enable_parallelism`` is not used: in diffusers 0.42.1 it computes
``rank % torch.accelerator.device_count()``, which divides by zero on a CPU-only host. The glue
below does the same three things (config + mesh, processors, hooks) and can undo them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ContextParallelConfig, WanTransformer3DModel
from diffusers.hooks.context_parallel import apply_context_parallel, remove_context_parallel
from diffusers.hooks.hooks import HookRegistry, ModelHook
from diffusers.models._modeling_parallel import ParallelConfig

from gpu_runner import distributed
from gpu_runner.distributed import DistContext
from runtime.logging import get_logger
from runtime.settings import load_settings
from schemas.errors import ErrorCode, Permanent

log = get_logger(component="sequence_parallel")

SP_BACKEND_ENV = "VIDEOGEN_SP_BACKEND"
BACKENDS = ("native", "ulysses")
UNSUPPORTED_BACKENDS = {"xfuser": "xfuser is not supported (its USP needs xDiT's runtime state; see "
                                  "gpu_runner/sequence_parallel.py): use native (diffusers' Ulysses, with "
                                  "VIDEOGEN_ATTENTION_BACKEND for flash/sage kernels)"}

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_MODE_HOOK = "videogen_sp_mode"
_GATHER_HOOK = "videogen_sp_gather"

_MESHES: dict[tuple[str, int], Any] = {}  # one device mesh per (device type, world size): new_group is collective


def _mesh(ctx: DistContext) -> Any:
    if ctx.mesh is not None:  # a sub-group's own ("ring", "ulysses") mesh (CFG parallel x Ulysses)
        return ctx.mesh
    key = ("cuda" if ctx.device.startswith("cuda") else "cpu", ctx.world_size)
    if key not in _MESHES:
        _MESHES[key] = distributed.device_mesh(ctx, (1, ctx.world_size), ("ring", "ulysses"))
    return _MESHES[key]


def _apply_rotary(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on (B, S, H, D), as in diffusers' ``WanAttnProcessor``."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class UlyssesSelfAttnProcessor:
    """``attn1`` processor: local projections/norms/rope, then a distributed attention function.

    ``attention`` maps local (B, S/P, H, D) q/k/v to the local (B, S/P, H, D) output, doing the
    all-to-alls itself (ours or xDiT's USP).
    """

    def __init__(self, attention: AttentionFn) -> None:
        self.attention = attention

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise RuntimeError("UlyssesSelfAttnProcessor handles self-attention (attn1) without a mask only")
        if attn.fused_projections:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _apply_rotary(query, *rotary_emb)
            key = _apply_rotary(key, *rotary_emb)
        out = self.attention(query, key, value).flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)  # type: ignore[no-any-return]


def torch_ulysses_attention(ctx: DistContext) -> AttentionFn:
    """Ulysses with ``distributed.all_to_all_4d`` and PyTorch SDPA (reference, CPU-testable)."""

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = (distributed.all_to_all_4d(x, scatter_dim=2, gather_dim=1, ctx=ctx) for x in (q, k, v))
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return distributed.all_to_all_4d(out.transpose(1, 2), scatter_dim=1, gather_dim=2, ctx=ctx)

    return attention


@dataclass
class SequenceParallelHandle:
    """What ``apply_sequence_parallel`` changed, so that ``remove`` can undo it exactly."""

    transformers: list[WanTransformer3DModel]
    ctx: DistContext
    backend: str
    config: ParallelConfig
    saved_processors: list[tuple[Any, Any]] = field(default_factory=list)
    active: bool = True
    num_tokens: int = 0  # sequence length of the current forward (set by the mode hook)

    @property
    def world_size(self) -> int:
        return self.ctx.world_size

    def local_tokens(self, num_tokens: int) -> list[int]:
        """How many tokens each rank holds for a sequence of ``num_tokens`` (``tensor_split`` layout)."""
        base, extra = divmod(num_tokens, self.world_size)
        return [base + (1 if r < extra else 0) for r in range(self.world_size)]

    def prepare(self, num_tokens: int) -> None:
        """Adapt to a sequence length (called by a hook before every transformer forward).

        native: even split -> plain Ulysses; uneven tokens or heads -> "Ulysses anything".
        ulysses: needs tokens and heads divisible by the world size, else ``Permanent``.
        """
        heads = int(self.transformers[0].config.num_attention_heads)
        uneven = num_tokens % self.world_size != 0 or heads % self.world_size != 0
        if num_tokens < self.world_size:
            raise Permanent(f"{num_tokens} tokens cannot be split over {self.world_size} ranks",
                            code=ErrorCode.OUT_OF_RANGE)
        self.num_tokens = num_tokens
        cp = self.config.context_parallel_config
        if self.backend == "native":
            if cp.ulysses_anything != uneven:
                cp.ulysses_anything = uneven
                log.info("sp_mode", mode="ulysses_anything" if uneven else "ulysses", tokens=num_tokens,
                         heads=heads, world_size=self.world_size)
        elif uneven:
            raise Permanent(
                f"sequence parallel backend {self.backend!r} needs tokens ({num_tokens}) and heads ({heads}) divisible "
                f"by the world size ({self.world_size}); choose another size or {SP_BACKEND_ENV}=native",
                code=ErrorCode.OUT_OF_RANGE,
            )

    def remove(self) -> None:
        """Restore the transformers exactly as they were (idempotent)."""
        if not self.active:
            return
        for transformer in self.transformers:
            remove_context_parallel(transformer, _split_plan(transformer))
            HookRegistry.check_if_exists_or_initialize(transformer).remove_hook(_MODE_HOOK, recurse=False)
            HookRegistry.check_if_exists_or_initialize(transformer.proj_out).remove_hook(_GATHER_HOOK, recurse=False)
            transformer._parallel_config = None
            for module in transformer.modules():
                proc = getattr(module, "processor", None)
                if proc is not None and hasattr(proc, "_parallel_config"):
                    proc._parallel_config = None
        for module, processor in self.saved_processors:
            module.set_processor(processor)
        self.active = False
        log.info("sequence_parallel_removed", backend=self.backend, world_size=self.world_size)

    def __enter__(self) -> SequenceParallelHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class _SequenceModeHook(ModelHook):
    """On the transformer: read this forward's token count (identical on every rank) and adapt."""

    def __init__(self, handle: SequenceParallelHandle) -> None:
        super().__init__()
        self.handle = handle

    def pre_forward(self, module: Any, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        p_t, p_h, p_w = module.config.patch_size
        _, _, frames, height, width = hidden.shape
        self.handle.prepare((frames // p_t) * (height // p_h) * (width // p_w))
        return args, kwargs


class _GatherTokensHook(ModelHook):
    """On ``proj_out``: gather the sequence shards (uneven shards too; gloo rejects uneven all_gather)."""

    def __init__(self, handle: SequenceParallelHandle) -> None:
        super().__init__()
        self.handle = handle

    def post_forward(self, module: Any, output: torch.Tensor) -> torch.Tensor:
        sizes = self.handle.local_tokens(self.handle.num_tokens)
        return distributed.all_gather_uneven(output, dim=1, sizes=sizes, ctx=self.handle.ctx)


def _split_plan(transformer: WanTransformer3DModel) -> dict[str, Any]:
    """The model's ``_cp_plan`` without its ``proj_out`` gather (ours handles uneven shards)."""
    return {k: v for k, v in transformer._cp_plan.items() if k != "proj_out"}


def _transformers_of(target: Any) -> list[WanTransformer3DModel]:
    if isinstance(target, WanTransformer3DModel):
        return [target]
    found = [getattr(target, name, None) for name in ("transformer", "transformer_2")]
    models = [m for m in found if m is not None]
    if not models or not all(isinstance(m, WanTransformer3DModel) for m in models):
        raise TypeError(f"sequence parallel supports WanTransformer3DModel (or a Wan pipeline), got {type(target)!r}")
    return models


def _check_native_backend(transformer: WanTransformer3DModel) -> None:
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    for module in transformer.modules():
        proc = getattr(module, "processor", None)
        if proc is None or not hasattr(proc, "_attention_backend"):
            continue
        backend = proc._attention_backend
        name = _AttentionBackendRegistry.get_active_backend()[0] if backend is None else AttentionBackendName(backend)
        if not _AttentionBackendRegistry._is_context_parallel_available(name):
            raise Permanent(f"attention backend {name.value!r} does not support context parallelism",
                            code=ErrorCode.MODEL_ERROR)
        return


def apply_sequence_parallel(target: Any, ctx: DistContext, backend: str | None = None) -> SequenceParallelHandle:
    """Shard the sequence of every Wan transformer in ``target`` (a pipeline or a transformer) over all ranks.

    Must be called identically on every rank, after ``distributed.init_from_env``. ``backend``
    defaults to ``Settings.sp_backend`` (``$VIDEOGEN_SP_BACKEND``, ``native``). Undo with ``handle.remove()``.
    """
    backend = (backend or load_settings().sp_backend or "native").lower()
    if backend in UNSUPPORTED_BACKENDS:
        raise Permanent(f"{SP_BACKEND_ENV}={backend}: {UNSUPPORTED_BACKENDS[backend]}", code=ErrorCode.MODEL_ERROR)
    if backend not in BACKENDS:
        raise Permanent(f"{SP_BACKEND_ENV}={backend!r}: expected one of {', '.join(BACKENDS)}",
                        code=ErrorCode.MODEL_ERROR)
    if not ctx.distributed or not distributed.is_initialized():  # ctx.world_size: this SP group's size
        raise Permanent("sequence parallel needs a process group with world size > 1 (launch with torchrun)",
                        code=ErrorCode.MODEL_ERROR)
    transformers = _transformers_of(target)
    if any(t._parallel_config is not None for t in transformers):
        raise Permanent("parallelism is already applied to this transformer", code=ErrorCode.MODEL_ERROR)
    attention: AttentionFn | None = None
    if backend == "ulysses":
        attention = torch_ulysses_attention(ctx)
    else:
        for transformer in transformers:
            _check_native_backend(transformer)

    cp = ContextParallelConfig(ulysses_degree=ctx.world_size)
    config = ParallelConfig(context_parallel_config=cp)
    config.setup(ctx.rank, ctx.world_size, torch.device(ctx.device), mesh=_mesh(ctx))  # rank/size within the group
    handle = SequenceParallelHandle(transformers=transformers, ctx=ctx, backend=backend, config=config)
    for transformer in transformers:
        transformer._parallel_config = config
        if attention is None:  # native: diffusers' attention dispatcher does the all-to-alls
            for module in transformer.modules():
                proc = getattr(module, "processor", None)
                if proc is not None and hasattr(proc, "_parallel_config"):
                    proc._parallel_config = config
        else:
            for block in transformer.blocks:
                handle.saved_processors.append((block.attn1, block.attn1.processor))
                block.attn1.set_processor(UlyssesSelfAttnProcessor(attention))
        apply_context_parallel(transformer, cp, _split_plan(transformer))
        HookRegistry.check_if_exists_or_initialize(transformer).register_hook(_SequenceModeHook(handle), _MODE_HOOK)
        HookRegistry.check_if_exists_or_initialize(transformer.proj_out).register_hook(
            _GatherTokensHook(handle), _GATHER_HOOK
        )
    log.info("sequence_parallel_applied", backend=backend, world_size=ctx.world_size, rank=ctx.rank,
             transformers=len(transformers), heads=int(transformers[0].config.num_attention_heads))
    return handle


@contextmanager
def sequence_parallel(target: Any, ctx: DistContext, backend: str | None = None) -> Iterator[SequenceParallelHandle]:
    """``apply_sequence_parallel`` for the duration of a block; always removed in ``finally``."""
    handle = apply_sequence_parallel(target, ctx, backend)
    try:
        yield handle
    finally:
        handle.remove()
