"""The runner's memory budget: measured free device memory minus a margin, checked with the
planner's own memory model (``functions.planner.memory``), so the runner and the planner agree.

* At start (before the model is loaded) the budget is ``free - runner_memory_margin_bytes`` on
  CUDA (``runner_memory_budget_bytes`` overrides it; none on the CPU: nothing is checked).
* After load and warm-up: a step cache whose state cannot fit at the model's default window
  (while the window without it would) is refused at start, with the figures — not on the first
  job (``check_cache``).
* Before every segment: a window longer than what fits at the job's resolution is refused before
  any compute (``oom.WindowTooLong``), which the runner turns into a re-plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from functions.planner.memory import (
    DEFAULT_MEMORY_MODEL,
    GIB,
    MemoryModel,
    device_budget,
    estimate_window,
    max_window_frames,
    window_bytes,
)
from runtime.logging import get_logger
from schemas.errors import ErrorCode, Permanent
from schemas.registry import ModelSpec

log = get_logger(component="budget")


def free_device_bytes(device: str) -> int | None:
    """Free memory of a CUDA device now (None on the CPU)."""
    if not device.startswith("cuda"):
        return None
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


@dataclass(frozen=True)
class WindowBudget:
    """What one rank may spend on a window, and the memory model that decides."""

    spec: ModelSpec
    budget_bytes: int
    ranks: int = 1
    cfg_parallel: bool = False
    cache: str = "none"
    dtype_bytes: int = 2
    model: MemoryModel = DEFAULT_MEMORY_MODEL

    @classmethod
    def measure(cls, spec: ModelSpec, device: str, *, override: int | None, margin: int, ranks: int = 1,
                cfg_parallel: bool = False, cache: str = "none", dtype_bytes: int = 2,
                model: MemoryModel = DEFAULT_MEMORY_MODEL) -> WindowBudget | None:
        free = free_device_bytes(device)
        if override is None and free is None:
            return None
        budget = override if override is not None else device_budget(free or 0, margin)
        out = cls(spec=spec, budget_bytes=budget, ranks=ranks, cfg_parallel=cfg_parallel, cache=cache,
                  dtype_bytes=dtype_bytes, model=model)
        log.info("memory_budget", device=device, free_gib=None if free is None else round(free / GIB, 2),
                 margin_gib=round(margin / GIB, 2), budget_gib=round(budget / GIB, 2), ranks=ranks,
                 cfg_parallel=cfg_parallel, cache=cache)
        return out

    def window_bytes(self, width: int, height: int, frames: int, *, cache: str | None = None) -> int:
        return window_bytes(self.spec, width, height, frames, dtype_bytes=self.dtype_bytes, ranks=self.ranks,
                            cfg_parallel=self.cfg_parallel, cache=self.cache if cache is None else cache,
                            model=self.model)

    def cap(self, width: int, height: int) -> int:
        """Longest window that fits at ``width`` x ``height`` (0: none)."""
        return max_window_frames(self.spec, width, height, self.budget_bytes, self.dtype_bytes, self.ranks,
                                 cfg_parallel=self.cfg_parallel, cache=self.cache, model=self.model)

    def check_cache(self) -> None:
        """Refuse a step cache that cannot fit at the model's default window while the window alone would."""
        if self.cache in ("none", "faster"):
            return
        s = self.spec
        w, h, f = s.default_width, s.default_height, s.default_frames
        with_cache = self.window_bytes(w, h, f)
        if with_cache <= self.budget_bytes or self.window_bytes(w, h, f, cache="none") > self.budget_bytes:
            return
        state = estimate_window(s, w, h, f, dtype_bytes=self.dtype_bytes, ranks=self.ranks,
                                cfg_parallel=self.cfg_parallel, cache=self.cache, model=self.model).cache_bytes
        raise Permanent(
            f"step cache {self.cache!r} keeps {state / GIB:.1f} GiB per rank at {s.name} {w}x{h}x{f}: the window "
            f"needs {with_cache / GIB:.1f} GiB with it, the budget is {self.budget_bytes / GIB:.1f} GiB "
            "(use a lighter cache or more ranks)", code=ErrorCode.OUT_OF_MEMORY)
