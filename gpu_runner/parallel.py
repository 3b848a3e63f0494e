"""How a runner's ranks split the work: CFG parallel x Ulysses sequence parallel.

``world = cfg_degree x sp_degree``. With CFG parallel (``cfg_degree = 2``) the ranks
``[0, sp)`` compute the conditional branch of every denoising step and ``[sp, 2·sp)`` the
unconditional one; the two results are exchanged once per step (one ``all_gather`` between the
rank pairs ``r`` and ``r + sp``) and every rank combines them exactly as the 1-rank pipeline does
(``uncond + g·(cond - uncond)``), so all ranks keep identical latents. Inside each half the
sequence is split over ``sp`` ranks (Ulysses, ``gpu_runner.sequence_parallel``) on that half's own
sub-group. 4 ranks with CFG parallel = 2 CFG x 2 SP.

The split is done from outside the diffusers pipelines: a hook on the transformer (outermost, so
the sequence-parallel hooks run inside it) reads which branch a call is from diffusers'
``cache_context("cond" | "uncond")`` (every Wan pipeline sets it). On a ``cond`` call the
unconditional half returns an empty placeholder; on the ``uncond`` call the conditional half skips
its forward; then the pair exchanges results and the placeholder is filled in place before the
pipeline combines them (nothing reads it in between). With ``guidance_scale <= 1`` diffusers makes
no ``uncond`` call at all; both halves then compute the same conditional branch (no exchange).

Requesting CFG parallel with an odd world size is a ``Permanent`` error, never a silent fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks.hooks import HookRegistry, ModelHook, StateManager

from gpu_runner import distributed
from gpu_runner.distributed import DistContext
from runtime.logging import get_logger
from schemas.errors import ErrorCode, Permanent

log = get_logger(component="parallel")

_CFG_HOOK = "videogen_cfg_parallel"


@dataclass(frozen=True)
class Layout:
    """Where one rank sits: its CFG half and its sequence-parallel group."""

    world: DistContext
    cfg_degree: int = 1
    sp_degree: int = 1
    sp: DistContext | None = None  # this rank's Ulysses group (None: no sequence parallel)
    cfg: DistContext | None = None  # this rank's CFG pair (None: no CFG parallel)
    sp_mesh: Any = None  # 1-D mesh of this rank's SP group (FSDP shards over it)

    @property
    def cfg_rank(self) -> int:
        """0: computes the conditional branch; 1: the unconditional one."""
        return self.world.rank // self.sp_degree

    def describe(self) -> dict[str, int]:
        return {"world_size": self.world.world_size, "cfg_degree": self.cfg_degree, "sp_degree": self.sp_degree,
                "cfg_rank": self.cfg_rank}


_LAYOUTS: dict[tuple[int, int, str], Layout] = {}  # new_group is collective: build each layout once


def layout(world: DistContext, *, cfg_parallel: bool, sequence_parallel: bool = True) -> Layout:
    """The layout of ``world`` (collective on first use: call on every rank in the same order)."""
    if not world.distributed:
        if cfg_parallel:
            raise Permanent("CFG parallel needs a process group of 2·k ranks (launch with torchrun)",
                            code=ErrorCode.MODEL_ERROR)
        return Layout(world=world)
    cfg = 2 if cfg_parallel else 1
    if world.world_size % cfg:
        raise Permanent(f"CFG parallel splits the ranks in two halves; world size {world.world_size} is odd",
                        code=ErrorCode.MODEL_ERROR)
    sp = world.world_size // cfg if sequence_parallel else 1
    if cfg == 1 and sp == 1:
        return Layout(world=world)
    if not sequence_parallel and cfg * sp != world.world_size:
        raise Permanent(f"{world.world_size} ranks with CFG parallel and no sequence parallel: use 2 ranks",
                        code=ErrorCode.MODEL_ERROR)
    key = (cfg, sp, world.device.split(":")[0])
    if key in _LAYOUTS:
        return _LAYOUTS[key]
    mesh = distributed.device_mesh(world, (cfg, 1, sp), ("cfg", "ring", "ulysses"))
    sp_ctx = cfg_ctx = None
    if sp > 1:
        sub = mesh["ring", "ulysses"]
        group = mesh["ulysses"].get_group()
        sp_ctx = DistContext(rank=world.rank % sp, world_size=sp, local_rank=world.local_rank, device=world.device,
                             backend=world.backend, group=group, mesh=sub)
    if cfg > 1:
        cfg_ctx = DistContext(rank=world.rank // sp, world_size=cfg, local_rank=world.local_rank, device=world.device,
                              backend=world.backend, group=mesh["cfg"].get_group())
    out = Layout(world=world, cfg_degree=cfg, sp_degree=sp, sp=sp_ctx, cfg=cfg_ctx, sp_mesh=mesh["ulysses"])
    _LAYOUTS[key] = out
    log.info("parallel_layout", **out.describe(), rank=world.rank)
    return out


class _BranchState(StateManager):  # type: ignore[misc]
    """Receives diffusers' cache context (``cond`` / ``uncond``) like a cache hook's state does."""

    def __init__(self) -> None:
        self.name: str | None = None

    def set_context(self, context: Any) -> None:
        self.name = None if context is None else context.name

    def reset(self, *args: Any, **kwargs: Any) -> None:
        self.name = None


@dataclass
class CfgStats:
    """Transformer forwards this rank ran / skipped (tests and logs)."""

    computed: int = 0
    skipped: int = 0
    exchanges: int = 0


class CfgParallelHook(ModelHook):  # type: ignore[misc]
    """On a Wan transformer: compute only this rank's CFG branch, exchange once per step."""

    _is_stateful = True

    def __init__(self, cfg: DistContext, guidance_on: Callable[[], bool]) -> None:
        super().__init__()
        self.cfg = cfg
        self.guidance_on = guidance_on
        self.branch = _BranchState()
        self.pending: torch.Tensor | None = None  # cond: the result (rank 0 of the pair) or the placeholder
        self.stats = CfgStats()

    def reset_state(self, module: torch.nn.Module) -> Any:
        self.pending = None
        return module

    def _call(self, module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> Any:
        self.stats.computed += 1
        return self.fn_ref.original_forward(*args, **kwargs)

    @staticmethod
    def _first(output: Any) -> torch.Tensor:
        return output[0] if isinstance(output, tuple) else output.sample  # type: ignore[no-any-return]

    @staticmethod
    def _wrap(tensor: torch.Tensor, like_kwargs: dict[str, Any]) -> Any:
        if like_kwargs.get("return_dict", True) is False:
            return (tensor,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=tensor)

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        branch = self.branch.name
        if branch not in ("cond", "uncond") or not self.guidance_on():
            # outside a denoising loop, or guidance <= 1 (no uncond call follows): plain forward
            return self._call(module, args, kwargs)
        mine = self.cfg.rank == (0 if branch == "cond" else 1)
        if branch == "cond":
            if mine:
                out = self._call(module, args, kwargs)
                self.pending = self._first(out)
                return out
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            b, _, t, h, w = hidden.shape
            shape = (b, int(module.config.out_channels), t, h, w)  # type: ignore[union-attr]
            dtype = module.proj_out.weight.dtype  # type: ignore[union-attr]
            self.pending = torch.empty(shape, dtype=dtype, device=hidden.device)
            self.stats.skipped += 1
            return self._wrap(self.pending, kwargs)
        # uncond: the second call of this step; the pair exchanges (cond, uncond) once
        if self.pending is None:
            raise RuntimeError("CFG parallel: an uncond call without a cond call before it in this step")
        if mine:
            out = self._call(module, args, kwargs)
            local = self._first(out)
        else:
            out, local = None, self.pending
            self.stats.skipped += 1
        both = distributed.all_gather(local.unsqueeze(0), dim=0, ctx=self.cfg)  # [cond, uncond]
        self.stats.exchanges += 1
        cond, uncond = both[0], both[1]
        if self.cfg.rank == 1:
            self.pending.copy_(cond)  # the tensor the pipeline holds as noise_pred
        self.pending = None
        if mine:
            return out
        return self._wrap(uncond.clone(), kwargs)


@dataclass
class CfgParallelHandle:
    transformers: list[Any]
    hooks: list[CfgParallelHook] = field(default_factory=list)
    active: bool = True

    @property
    def stats(self) -> CfgStats:
        total = CfgStats()
        for hook in self.hooks:
            total.computed += hook.stats.computed
            total.skipped += hook.stats.skipped
            total.exchanges += hook.stats.exchanges
        return total

    def remove(self) -> None:
        if not self.active:
            return
        for transformer in self.transformers:
            HookRegistry.check_if_exists_or_initialize(transformer).remove_hook(_CFG_HOOK, recurse=False)
        self.active = False


def apply_cfg_parallel(transformers: list[Any], cfg: DistContext,
                       guidance_on: Callable[[], bool]) -> CfgParallelHandle:
    """Register the CFG hook on every transformer (after sequence parallel: it must be outermost).

    ``guidance_on()`` says whether the current pipeline call makes an ``uncond`` call after each
    ``cond`` one (the pipeline's ``do_classifier_free_guidance``)."""
    if cfg.world_size != 2:
        raise Permanent(f"CFG parallel runs over pairs of ranks, got a group of {cfg.world_size}",
                        code=ErrorCode.MODEL_ERROR)
    handle = CfgParallelHandle(transformers=list(transformers))
    for transformer in transformers:
        hook = CfgParallelHook(cfg, guidance_on)
        HookRegistry.check_if_exists_or_initialize(transformer).register_hook(hook, _CFG_HOOK)
        handle.hooks.append(hook)
    log.info("cfg_parallel_applied", cfg_rank=cfg.rank, transformers=len(transformers))
    return handle
