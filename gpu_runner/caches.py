"""Step caches as configuration: diffusers cache hooks applied to a Wan transformer for one job.

A cache is chosen by a ``CacheConfig`` (per model or per job), applied from outside the model with
``applied_cache(...)`` (``transformer.enable_cache``) and removed in ``finally``
(``transformer.disable_cache``), so the next job runs the unmodified model, bit for bit. Every
application is logged; asking for a cache that cannot work here is a ``Permanent(MODEL_ERROR)``,
never a silent run without it.

What was checked against diffusers 0.42.1 with ``WanPipeline`` (cond and uncond are two separate
transformer calls per step, each inside ``transformer.cache_context("cond" | "uncond", step_index=…)``):

- ``first_block`` (FirstBlockCache): per-branch state, works on Wan's ``blocks`` as is. Its skip
  decision is data dependent (relative change of block 0's residual).
- ``mag`` (MagCache): needs magnitude ratios calibrated for the checkpoint + scheduler; diffusers ships
  ratios for Flux only. ``calibrate_mag_ratios`` measures them with one generation (cond branch),
  the way diffusers' ``calibrate=True`` does; a config without ratios is refused.
- Under sequence parallelism only ``taylorseer`` and ``pab`` are allowed (identical output to the
  1-rank cached run, checked with 2 gloo ranks): the first_block and mag hooks on ``blocks.0`` sit
  outside the context-parallel split (``SEQUENCE_PARALLEL_REFUSED``).
- ``taylorseer`` (TaylorSeer): the default identifiers (``^blocks.*attn`` with ``re.fullmatch``)
  match nothing on Wan (its attention modules are ``blocks.N.attn1`` / ``attn2``), so the default
  silently caches nothing. We use ``WAN_TAYLORSEER_IDENTIFIERS`` (``blocks.N.attn1|attn2|ffn``) or
  the lite mode (``blocks.N`` skipped, ``proj_out`` predicted), and refuse patterns matching nothing.
- ``pab`` (PyramidAttentionBroadcast): diffusers keeps ONE state per attention module, so with Wan's
  separate cond/uncond calls the uncond call would reuse the cond call's attention output of the
  same step. We swap each PAB hook for ``_BranchPABHook`` (same logic, state per cache context).
- ``faster`` (FasterCache): refused. Its denoiser hook assumes cond and uncond are one batched call
  (it splits the batch in two); Wan runs them as separate calls, and the default config crashes.

Verification: ``ComputeCounter`` counts the calls that really compute inside each block (the first
projection of ``attn1``, ``attn2`` and ``ffn``: a skipped block or a broadcast attention never reaches
them), so ``verify_cache_skips`` can prove a cache skipped work, and raise when it skipped nothing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gpu_runner.pipelines.base import GenerateParams
from runtime.logging import get_logger
from schemas.errors import ErrorCode, Permanent
from schemas.registry import ModelSpec

log = get_logger(component="caches")

CacheKind = Literal["none", "first_block", "mag", "taylorseer", "pab", "faster"]
SUPPORTED_KINDS: tuple[str, ...] = ("none", "first_block", "mag", "taylorseer", "pab")

# Modules of WanTransformer3DModel that TaylorSeer predicts (re.fullmatch on named_modules names).
WAN_TAYLORSEER_IDENTIFIERS: tuple[str, ...] = (r"blocks\.\d+\.attn1", r"blocks\.\d+\.attn2", r"blocks\.\d+\.ffn")
# Wan's attention module names contain "blocks"; PAB tells self from cross attention by is_cross_attention.
WAN_PAB_IDENTIFIERS: tuple[str, ...] = (r"blocks",)

# = diffusers.hooks.pyramid_attention_broadcast._PYRAMID_ATTENTION_BROADCAST_HOOK (what disable_cache removes)
_PAB_HOOK = "pyramid_attention_broadcast"
_CONTEXT_PROBE_HOOK = "videogen_cache_context_probe"

# Caches whose hook sits on blocks[0], OUTSIDE the context-parallel split of its input: under sequence
# parallelism they see the full sequence at the head and a shard at the tail (checked with 2 gloo ranks:
# MagCache fails with a shape mismatch). FirstBlockCache would also decide per rank from its own shard.
SEQUENCE_PARALLEL_REFUSED: dict[str, str] = {
    "first_block": "its head hook on blocks.0 sees the unsplit sequence, and each rank would decide from its "
                   "own shard whether to skip (ranks could disagree and deadlock).",
    "mag": "its head hook on blocks.0 sees the unsplit sequence while the tail returns a shard "
           "(shape mismatch, verified with 2 ranks).",
}

FASTER_CACHE_REFUSAL = (
    "FasterCache is not supported for Wan: its denoiser hook expects the conditional and unconditional "
    "branches in ONE batched transformer call (it splits the batch in two), but WanPipeline runs them as "
    "two separate calls (cache_context 'cond' and 'uncond'); with diffusers 0.42.1 the default config "
    "crashes. Use first_block, mag, taylorseer or pab."
)


# ---- configuration ----------------------------------------------------------------------------
class FirstBlockParams(BaseModel):
    """FirstBlockCache: skip blocks 1..N-1 while block 0's residual changes less than ``threshold``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    threshold: float = Field(0.05, gt=0.0,
                             description="relative mean-abs change of block 0's residual (diffusers' default)")


class MagParams(BaseModel):
    """MagCache: skip whole steps while the accumulated magnitude-ratio error stays small."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    threshold: float = Field(0.06, gt=0.0, description="accumulated error allowed before recomputing")
    max_skip_steps: int = Field(3, ge=1, description="consecutive skipped steps at most (K)")
    retention_ratio: float = Field(0.2, ge=0.0, lt=1.0, description="fraction of first steps never skipped")
    mag_ratios: tuple[float, ...] | None = Field(
        None, description="per-step ratios calibrated for this checkpoint+scheduler (calibrate_mag_ratios)")


class TaylorSeerParams(BaseModel):
    """TaylorSeer: full compute every ``cache_interval`` steps, Taylor-extrapolated outputs in between."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    cache_interval: int = Field(5, ge=2, description="steps between full computations")
    disable_cache_before_step: int = Field(3, ge=1, description="first steps always computed (fill the factors)")
    disable_cache_after_step: int | None = Field(None, ge=1, description="steps from here on always computed")
    max_order: int = Field(1, ge=0, le=4)
    factors_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of the stored Taylor factors; auto: the transformer's dtype")
    identifiers: tuple[str, ...] = Field(WAN_TAYLORSEER_IDENTIFIERS, description="modules to predict (re.fullmatch)")
    skip_identifiers: tuple[str, ...] = Field((), description="modules returning zeros on predicted steps")
    lite: bool = Field(True, description="diffusers' lite mode (the default: its state is proj_out's small output, "
                                         "full mode holds ~346 GiB at 14B 720p x 81): blocks skipped, proj_out "
                                         "predicted")


class PABParams(BaseModel):
    """Pyramid Attention Broadcast: reuse attention outputs for ``*_skip_range - 1`` of every N calls."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    spatial_skip_range: int | None = Field(2, ge=2, description="self-attention (attn1): compute 1 in N calls")
    cross_skip_range: int | None = Field(None, ge=2, description="cross-attention (attn2): compute 1 in N calls")
    spatial_timestep_range: tuple[int, int] = (100, 800)
    cross_timestep_range: tuple[int, int] = (100, 800)
    identifiers: tuple[str, ...] = WAN_PAB_IDENTIFIERS


class CacheConfig(BaseModel):
    """Which step cache a job runs with, and its parameters (defaults chosen for Wan 2.1)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: CacheKind = "none"
    first_block: FirstBlockParams = FirstBlockParams()
    mag: MagParams = MagParams()
    taylorseer: TaylorSeerParams = TaylorSeerParams()
    pab: PABParams = PABParams()

    @model_validator(mode="after")
    def _one_range_for_pab(self) -> CacheConfig:
        if self.kind == "pab" and self.pab.spatial_skip_range is None and self.pab.cross_skip_range is None:
            raise ValueError("pab needs spatial_skip_range and/or cross_skip_range")
        return self

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    def with_mag_ratios(self, ratios: Sequence[float]) -> CacheConfig:
        """The same config with calibrated MagCache ratios."""
        mag = self.mag.model_copy(update={"mag_ratios": tuple(float(r) for r in ratios)})
        return self.model_copy(update={"mag": mag})

    def summary(self) -> dict[str, Any]:
        """The parameters that matter for ``kind`` (for logs)."""
        if self.kind in ("none", "faster"):
            return {"kind": self.kind}
        params = getattr(self, self.kind).model_dump()
        if self.kind == "mag" and params.get("mag_ratios") is not None:
            params["mag_ratios"] = f"{len(params['mag_ratios'])} ratios"
        return {"kind": self.kind, **params}


# ---- target resolution ------------------------------------------------------------------------
@dataclass
class _Target:
    transformers: list[Any]
    timestep_fn: Callable[[], Any] | None
    sequence_parallel: bool


def _resolve(target: Any, timestep_fn: Callable[[], Any] | None) -> _Target:
    """WanT2V-like (``.pipe``), a diffusers pipeline (``.transformer``) or a transformer itself."""
    sp = getattr(target, "sequence_parallel", None) is not None and not isinstance(target, torch.nn.Module)
    pipe = getattr(target, "pipe", target)
    if isinstance(pipe, torch.nn.Module):
        transformers = [pipe]
    else:
        transformers = [t for t in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None))
                        if t is not None]
        if timestep_fn is None and hasattr(type(pipe), "current_timestep"):
            timestep_fn = lambda: pipe.current_timestep  # noqa: E731 - read at call time
    if not transformers or not all(hasattr(t, "enable_cache") for t in transformers):
        raise Permanent(f"{type(target).__name__} has no transformer with diffusers cache support",
                        code=ErrorCode.MODEL_ERROR)
    return _Target(transformers, timestep_fn, sp)


def transformers_of(target: Any) -> list[Any]:
    """The denoiser(s) of a WanT2V, a pipeline, or a transformer."""
    return _resolve(target, None).transformers


# ---- hooks ------------------------------------------------------------------------------------
def _make_branch_pab_hook(template: Any) -> Any:
    """A PAB hook with the same parameters as ``template`` but one state per cache context (cond/uncond)."""
    from diffusers.hooks.hooks import CacheContext, StateManager
    from diffusers.hooks.pyramid_attention_broadcast import (
        PyramidAttentionBroadcastHook,
        PyramidAttentionBroadcastState,
    )

    class _BranchPABHook(PyramidAttentionBroadcastHook):  # type: ignore[misc]
        _is_stateful = True

        def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
            self.states = StateManager(PyramidAttentionBroadcastState)  # type: ignore[arg-type]  # (diffusers annotates an instance)
            return module

        @property
        def state(self) -> Any:  # read by PyramidAttentionBroadcastHook.new_forward
            if self.states._context is None:
                self.states.set_context(CacheContext(name="inference"))
            return self.states.get_state()

        def reset_state(self, module: torch.nn.Module) -> Any:
            self.states.reset()
            return module

    return _BranchPABHook(template.timestep_skip_range, template.block_skip_range, template.current_timestep_callback)


def _registries(transformer: torch.nn.Module) -> Iterator[tuple[str, Any]]:
    for name, module in transformer.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None:
            yield name, registry


def _make_pab_per_branch(transformer: torch.nn.Module) -> int:
    """Replace every PAB hook under ``transformer`` by its per-branch variant; returns how many."""
    from diffusers.hooks import HookRegistry

    swapped = 0
    for _name, registry in _registries(transformer):
        hook = registry.get_hook(_PAB_HOOK)
        if hook is None:
            continue
        registry.remove_hook(_PAB_HOOK, recurse=False)
        registry.register_hook(_make_branch_pab_hook(hook), _PAB_HOOK)
        swapped += 1
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
    return swapped


def hooked_modules(transformer: torch.nn.Module) -> dict[str, list[str]]:
    """Module name -> names of the diffusers hooks on it (for logs and tests)."""
    return {name or "<root>": list(reg._hook_order) for name, reg in _registries(transformer) if reg._hook_order}


# ---- building diffusers configs ---------------------------------------------------------------
def _dtype_of(transformer: torch.nn.Module) -> torch.dtype:
    return getattr(transformer, "dtype", None) or next(transformer.parameters()).dtype


def _check_patterns(transformer: torch.nn.Module, patterns: Sequence[str], what: str) -> None:
    names = [n for n, _ in transformer.named_modules()]
    for pattern in patterns:
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise Permanent(f"{what} pattern {pattern!r} is not a regex: {e}", code=ErrorCode.MODEL_ERROR) from e
        if not any(regex.fullmatch(n) for n in names):
            raise Permanent(
                f"{what} pattern {pattern!r} matches no module of {type(transformer).__name__} "
                f"(e.g. {', '.join(n for n in names[:6] if n)} …): the cache would skip nothing",
                code=ErrorCode.MODEL_ERROR)


def diffusers_config(config: CacheConfig, transformer: torch.nn.Module, *, steps: int | None = None,
                     timestep_fn: Callable[[], Any] | None = None) -> Any:
    """The diffusers config object for ``config`` (``None`` for ``kind="none"``); refuses what cannot work."""
    from diffusers.hooks import (
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
    )

    kind = config.kind
    if kind == "none":
        return None
    if kind == "faster":
        raise Permanent(FASTER_CACHE_REFUSAL, code=ErrorCode.MODEL_ERROR)
    if kind == "first_block":
        return FirstBlockCacheConfig(threshold=config.first_block.threshold)
    if kind == "mag":
        mp = config.mag
        if mp.mag_ratios is None:
            raise Permanent(
                "MagCache needs magnitude ratios calibrated for this checkpoint and scheduler (diffusers ships "
                "them for Flux only): run gpu_runner.caches.calibrate_mag_ratios(model, params) once (e.g. at "
                "warm-up) and use config.with_mag_ratios(ratios)", code=ErrorCode.MODEL_ERROR)
        if steps is None:
            raise Permanent("MagCache needs the job's number of steps", code=ErrorCode.MODEL_ERROR)
        return MagCacheConfig(threshold=mp.threshold, max_skip_steps=mp.max_skip_steps,
                              retention_ratio=mp.retention_ratio, num_inference_steps=steps,
                              mag_ratios=list(mp.mag_ratios))
    if kind == "taylorseer":
        tp = config.taylorseer
        if not tp.lite:
            _check_patterns(transformer, tp.identifiers, "taylorseer identifiers")
            if tp.skip_identifiers:
                _check_patterns(transformer, tp.skip_identifiers, "taylorseer skip_identifiers")
        dtype = _dtype_of(transformer) if tp.factors_dtype == "auto" else getattr(torch, tp.factors_dtype)
        return TaylorSeerCacheConfig(
            cache_interval=tp.cache_interval, disable_cache_before_step=tp.disable_cache_before_step,
            disable_cache_after_step=tp.disable_cache_after_step, max_order=tp.max_order, taylor_factors_dtype=dtype,
            cache_identifiers=list(tp.identifiers), skip_predict_identifiers=list(tp.skip_identifiers) or None,
            use_lite_mode=tp.lite)
    if kind == "pab":
        p = config.pab
        if timestep_fn is None:
            raise Permanent("PyramidAttentionBroadcast needs the current timestep: pass a pipeline, or "
                            "timestep_fn= with a bare transformer", code=ErrorCode.MODEL_ERROR)
        return PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=p.spatial_skip_range,
            cross_attention_block_skip_range=p.cross_skip_range,
            spatial_attention_timestep_skip_range=p.spatial_timestep_range,
            cross_attention_timestep_skip_range=p.cross_timestep_range,
            spatial_attention_block_identifiers=p.identifiers,
            cross_attention_block_identifiers=p.identifiers,
            current_timestep_callback=timestep_fn)
    raise Permanent(f"unknown cache kind {kind!r}; supported: {', '.join(SUPPORTED_KINDS)}",
                    code=ErrorCode.MODEL_ERROR)


# ---- apply / remove ---------------------------------------------------------------------------
@dataclass
class CacheHandle:
    """What ``applied_cache`` yields: the config and the hooked modules per transformer."""

    config: CacheConfig
    hooked: list[dict[str, list[str]]] = field(default_factory=list)

    def reset(self, target: Any) -> None:
        """Reset the caches' state (between two generations inside one ``applied_cache``)."""
        for transformer in transformers_of(target):
            transformer._reset_stateful_cache()


@contextmanager
def applied_cache(target: Any, config: CacheConfig, *, steps: int | None = None,
                  timestep_fn: Callable[[], Any] | None = None) -> Iterator[CacheHandle]:
    """Enable ``config`` on the target's transformer(s) for the ``with`` block; always removed after.

    ``target``: a ``WanT2V`` (uses ``.pipe``; sequence parallel is detected), a ``WanPipeline`` or a
    bare transformer (then PAB needs ``timestep_fn``). ``steps``: the job's denoising steps (MagCache).
    Raises ``Permanent(MODEL_ERROR)`` when the cache cannot work here (see the module docstring).
    """
    handle = CacheHandle(config)
    if not config.enabled:
        yield handle
        return
    resolved = _resolve(target, timestep_fn)
    if config.kind in SEQUENCE_PARALLEL_REFUSED and resolved.sequence_parallel:
        raise Permanent(f"{config.kind} cache is not supported under sequence parallelism: "
                        f"{SEQUENCE_PARALLEL_REFUSED[config.kind]} Use taylorseer or pab.", code=ErrorCode.MODEL_ERROR)
    if config.kind == "mag" and len(resolved.transformers) > 1:
        raise Permanent("MagCache ratios are calibrated for one denoiser; this pipeline has two experts "
                        "(transformer_2)", code=ErrorCode.MODEL_ERROR)
    started = time.perf_counter()
    enabled: list[Any] = []
    try:
        for transformer in resolved.transformers:
            if transformer.is_cache_enabled:
                log.warning("stale_cache_removed", cache=type(transformer._cache_config).__name__)
                transformer.disable_cache()
            cfg = diffusers_config(config, transformer, steps=steps, timestep_fn=resolved.timestep_fn)
            before = hooked_modules(transformer)  # e.g. sequence-parallel hooks, not ours
            try:
                transformer.enable_cache(cfg)
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                raise Permanent(f"cannot apply {config.kind} cache: {e}", code=ErrorCode.MODEL_ERROR) from e
            enabled.append(transformer)
            if config.kind == "pab":
                _make_pab_per_branch(transformer)
            hooked = {name: [h for h in hooks if h not in before.get(name, [])]
                      for name, hooks in hooked_modules(transformer).items()}
            hooked = {name: hooks for name, hooks in hooked.items() if hooks}
            if not hooked:
                raise Permanent(f"cache {config.kind} configured but hooked no module of "
                                f"{type(transformer).__name__}", code=ErrorCode.MODEL_ERROR)
            transformer._reset_stateful_cache()
            handle.hooked.append(hooked)
        log.info("cache_applied", **config.summary(), hooked_modules=sum(len(h) for h in handle.hooked),
                 seconds=round(time.perf_counter() - started, 4))
        yield handle
    finally:
        for transformer in enabled:
            transformer._reset_stateful_cache()  # drop cached tensors before the hooks go
            transformer.disable_cache()
        if enabled:
            log.info("cache_removed", kind=config.kind)


# ---- memory -----------------------------------------------------------------------------------
def cache_memory_bytes(config: CacheConfig, spec: ModelSpec, width: int, height: int, frames: int, *,
                       cfg: bool = True, dtype_bytes: int = 2, world_size: int = 1, cfg_parallel: bool = False) -> int:
    """Extra GPU memory the cache's state holds during one generation, per rank (the planner's
    ``functions.planner.memory.step_cache_bytes`` with this config's parameters).

    Per CFG branch this rank computes and per rank (tokens are sharded under sequence parallelism),
    in units of one hidden-state tensor (tokens x hidden): first_block 3 (head output, head
    residual, tail residual); mag 1 (previous residual); taylorseer (max_order+1) per predicted
    module (attn1, attn2, ffn of every block; lite — the default — only proj_out's small output);
    pab 1 per hooked attention module.
    """
    from functions.planner.memory import step_cache_bytes

    if not config.enabled or config.kind == "faster":
        return 0
    tp, pp = config.taylorseer, config.pab
    factor_bytes = None if tp.factors_dtype == "auto" else (4 if tp.factors_dtype == "float32" else 2)
    modules = sum(1 for i in tp.identifiers for part in ("attn1", "attn2", "ffn") if part in i)
    return step_cache_bytes(
        config.kind, spec, width, height, frames, ranks=world_size * (2 if cfg_parallel else 1),
        cfg_parallel=cfg_parallel, cfg=cfg, dtype_bytes=dtype_bytes, taylor_orders=tp.max_order + 1,
        taylor_modules=modules, taylor_lite=tp.lite, factor_bytes=factor_bytes,
        pab_hooked=(pp.spatial_skip_range is not None) + (pp.cross_skip_range is not None),
    )


# ---- counting compute -------------------------------------------------------------------------
PARTS = ("self_attn", "cross_attn", "ffn")


def _first_linear(module: torch.nn.Module) -> torch.nn.Module:
    for sub in module.modules():
        if isinstance(sub, torch.nn.Linear):
            return sub
    raise Permanent(f"{type(module).__name__} has no Linear layer to count", code=ErrorCode.MODEL_ERROR)


def _probes(block: Any) -> dict[str, torch.nn.Module]:
    """The first projection of each part of a Wan block: reached only when that part really computes."""
    return {
        "self_attn": getattr(block.attn1, "to_q", None) or _first_linear(block.attn1),
        "cross_attn": getattr(block.attn2, "to_q", None) or _first_linear(block.attn2),
        "ffn": _first_linear(block.ffn),
    }


@dataclass(frozen=True)
class ComputeReport:
    """Work done in the transformer blocks during one counted run."""

    transformer_calls: int
    blocks: int
    computed: dict[str, int]

    @property
    def full(self) -> int:
        """Calls of each part if nothing were skipped."""
        return self.transformer_calls * self.blocks

    @property
    def skipped(self) -> dict[str, int]:
        return {part: self.full - n for part, n in self.computed.items()}

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    @property
    def skip_fraction(self) -> float:
        total = self.full * len(self.computed)
        return self.skipped_total / total if total else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"transformer_calls": self.transformer_calls, "blocks": self.blocks, "computed": dict(self.computed),
                "skipped": self.skipped, "skip_fraction": round(self.skip_fraction, 4)}


class ComputeCounter:
    """Counts, with plain forward hooks, the block parts that really run (``with ComputeCounter(t) as c``)."""

    def __init__(self, target: Any) -> None:
        self.transformers: list[Any] = transformers_of(target)
        self.transformer_calls = 0
        self.computed = dict.fromkeys(PARTS, 0)
        self.blocks = 0
        self._handles: list[Any] = []

    def __enter__(self) -> ComputeCounter:
        for transformer in self.transformers:
            blocks = getattr(transformer, "blocks", None)
            if blocks is None:
                raise Permanent(f"{type(transformer).__name__} has no .blocks to count", code=ErrorCode.MODEL_ERROR)
            self.blocks = max(self.blocks, len(blocks))
            self._handles.append(transformer.register_forward_pre_hook(self._on_transformer))
            for block in blocks:
                for part, module in _probes(block).items():
                    self._handles.append(module.register_forward_hook(self._counter(part)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _on_transformer(self, _module: torch.nn.Module, _args: Any) -> None:
        self.transformer_calls += 1

    def _counter(self, part: str) -> Callable[..., None]:
        def hook(_module: torch.nn.Module, _args: Any, _output: Any) -> None:
            self.computed[part] += 1
        return hook

    def report(self) -> ComputeReport:
        return ComputeReport(self.transformer_calls, self.blocks, dict(self.computed))


# ---- verification -----------------------------------------------------------------------------
def verification_params(spec: ModelSpec, *, steps: int | None = None, guidance_scale: float | None = None,
                        world_size: int = 1) -> GenerateParams:
    """A small generation with a job-like number of steps (caches need several steps to skip).

    Defaults: the model's default steps (at least 12) and guidance, a tiny frame size (grown until
    every rank of a sequence-parallel group gets a token, as ``WanT2V.warmup`` does).
    """
    side, frames = 2 * spec.spatial_multiple, spec.smallest_window_at_least(2)
    while spec.latent_tokens(side, side, frames) < world_size:
        side *= 2
    return GenerateParams(prompt="cache verification", width=side, height=side, num_frames=frames,
                          steps=steps or max(spec.default_steps, 12),
                          guidance_scale=spec.default_guidance_scale if guidance_scale is None else guidance_scale,
                          seed=0)


def _default_params(model: Any) -> GenerateParams:
    ctx = getattr(model, "ctx", None)
    return verification_params(model.spec, world_size=getattr(ctx, "world_size", 1))


def raise_if_nothing_skipped(config: CacheConfig, report: ComputeReport) -> None:
    """``Permanent(MODEL_ERROR)`` when a configured cache skipped no compute."""
    if config.enabled and report.skipped_total <= 0:
        raise Permanent(f"cache {config.kind} configured but skipped no compute "
                        f"({report.transformer_calls} transformer calls, all {report.blocks} blocks computed "
                        f"every time); check its parameters for this model", code=ErrorCode.MODEL_ERROR)


def verify_cache_skips(model: Any, config: CacheConfig, params: GenerateParams | None = None) -> ComputeReport:
    """Run one generation with the cache and prove it skipped block compute (use at warm-up).

    ``model`` is a ``VideoPipeline`` (``generate``/``spec``); ``params`` default to
    ``verification_params(model.spec)``. Raises ``Permanent(MODEL_ERROR)`` when nothing was skipped.
    Under sequence parallelism every rank must call it (it runs a generation).
    """
    params = params or _default_params(model)
    with applied_cache(model, config, steps=params.steps), ComputeCounter(model) as counter:
        model.generate(params)
    report = counter.report()
    log.info("cache_verified", kind=config.kind, steps=params.steps, **report.as_dict())
    raise_if_nothing_skipped(config, report)
    return report


@contextmanager
def counted_cache(target: Any, config: CacheConfig, *, steps: int | None = None, check: bool = False,
                  timestep_fn: Callable[[], Any] | None = None) -> Iterator[ComputeCounter]:
    """``applied_cache`` plus a per-job ``ComputeCounter`` (cheap: 3 forward hooks per block).

    After the block the skip counts are logged; with ``check=True`` a cache that skipped nothing
    raises ``Permanent`` (only meaningful for jobs with enough steps for the cache to engage).
    """
    with applied_cache(target, config, steps=steps, timestep_fn=timestep_fn), ComputeCounter(target) as counter:
        yield counter
    if config.enabled:
        report = counter.report()
        log.info("cache_job_skips", kind=config.kind, **report.as_dict())
        if check:
            raise_if_nothing_skipped(config, report)


# ---- MagCache calibration ---------------------------------------------------------------------
def _context_probe() -> Any:
    """A stateful diffusers hook whose StateManager receives the pipeline's cache context (cond/uncond)."""
    from diffusers.hooks.hooks import BaseState, ModelHook, StateManager

    class _Probe(ModelHook):  # type: ignore[misc]
        _is_stateful = True

        def __init__(self) -> None:
            super().__init__()
            self.states = StateManager(BaseState)  # type: ignore[arg-type]  # (diffusers annotates an instance)

        @property
        def branch(self) -> str:
            ctx = self.states._context
            return ctx.name if ctx is not None else "inference"

        def reset_state(self, module: torch.nn.Module) -> Any:
            return module

    return _Probe()


class MagCalibrator:
    """Measures MagCache ratios while a denoising loop runs (``with MagCalibrator(transformer) as cal``).

    Per branch (cache context): mean over tokens of |residual_t| / |residual_t-1|, where residual =
    last block's output - first block's input; the first step is 1.0 (as in diffusers).
    """

    def __init__(self, transformer: Any) -> None:
        self.transformer = transformer
        self.probe = _context_probe()
        self.head_input: dict[str, torch.Tensor] = {}
        self.previous: dict[str, torch.Tensor] = {}
        self.ratios: dict[str, list[float]] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> MagCalibrator:
        from diffusers.hooks import HookRegistry

        registry = HookRegistry.check_if_exists_or_initialize(self.transformer)
        registry.register_hook(self.probe, _CONTEXT_PROBE_HOOK)
        registry.invalidate_child_registries_cache()
        blocks = self.transformer.blocks
        self._handles.append(blocks[0].register_forward_pre_hook(self._on_head))
        self._handles.append(blocks[-1].register_forward_hook(self._on_tail))
        return self

    def __exit__(self, *exc: object) -> None:
        from diffusers.hooks import HookRegistry

        for h in self._handles:
            h.remove()
        registry = HookRegistry.check_if_exists_or_initialize(self.transformer)
        registry.remove_hook(_CONTEXT_PROBE_HOOK, recurse=False)
        registry.invalidate_child_registries_cache()

    def _on_head(self, _module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        self.head_input[self.probe.branch] = args[0]

    def _on_tail(self, _module: torch.nn.Module, _args: Any, output: Any) -> None:
        branch = self.probe.branch
        out = output[0] if isinstance(output, tuple) else output
        residual = (out - self.head_input[branch]).float()
        prev = self.previous.get(branch)
        if prev is None:
            ratio = 1.0
        else:
            ratio = (torch.linalg.norm(residual, dim=-1) / (torch.linalg.norm(prev, dim=-1) + 1e-8)).mean().item()
        self.ratios.setdefault(branch, []).append(float(ratio))
        self.previous[branch] = residual

    def ratios_for(self, branch: str = "cond") -> tuple[float, ...]:
        """The ratios of ``branch`` (falling back to the only branch seen, e.g. without CFG)."""
        ratios = self.ratios.get(branch) or self.ratios.get("inference") or next(iter(self.ratios.values()), [])
        return tuple(ratios)


def calibrate_mag_ratios(model: Any, params: GenerateParams) -> tuple[float, ...]:
    """MagCache ratios for this model: one generation without caches, ratios of the cond branch.

    The same measurement as diffusers' ``MagCacheConfig(calibrate=True)`` (which only prints them).
    Ratios are per step and interpolated to other step counts by diffusers.
    """
    resolved = _resolve(model, None)
    transformers = resolved.transformers
    if resolved.sequence_parallel:
        raise Permanent(f"MagCache is not supported under sequence parallelism: {SEQUENCE_PARALLEL_REFUSED['mag']}",
                        code=ErrorCode.MODEL_ERROR)
    if len(transformers) != 1:
        raise Permanent("MagCache calibration supports one denoiser", code=ErrorCode.MODEL_ERROR)
    if transformers[0].is_cache_enabled:
        raise Permanent("calibrate_mag_ratios must run without a cache enabled", code=ErrorCode.MODEL_ERROR)
    started = time.perf_counter()
    with MagCalibrator(transformers[0]) as cal:
        model.generate(params)
    ratios = cal.ratios_for("cond")
    if len(ratios) != params.steps:
        raise Permanent(f"MagCache calibration saw {len(ratios)} steps, expected {params.steps}",
                        code=ErrorCode.MODEL_ERROR)
    log.info("mag_ratios_calibrated", steps=params.steps, branches=sorted(cal.ratios),
             ratios=[round(r, 4) for r in ratios], seconds=round(time.perf_counter() - started, 3))
    return tuple(ratios)


def prepare(model: Any, config: CacheConfig, params: GenerateParams | None = None) -> CacheConfig:
    """Fill what a config needs from the model (MagCache ratios), then verify it skips compute.

    Intended for the runner's warm-up: returns the config to use for every job.
    """
    if not config.enabled:
        return config
    params = params or _default_params(model)
    if config.kind == "mag" and config.mag.mag_ratios is None:
        config = config.with_mag_ratios(calibrate_mag_ratios(model, replace(params, seed=params.seed + 1)))
    verify_cache_skips(model, config, params)
    return config
