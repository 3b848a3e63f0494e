"""Model name -> pipeline file + checkpoint. One model stays warm per runner.

Checkpoints are local diffusers-format directories: ``<models_dir>/<model name>/``. ``tiny-*``
models are built locally with random weights when no directory exists (tests, demo).

A family module (``gpu_runner/pipelines/<family>.py``) exposes ``TASKS`` (what its ``generate``
implements) and ``load(spec, checkpoint, ctx)``; ``family_module`` refuses a spec that lists a task
its family does not implement, before any weights are read.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from gpu_runner.pipelines.base import LoadContext, VideoPipeline
from runtime.logging import get_logger
from schemas.errors import ErrorCode, Permanent
from schemas.registry import MODELS, ModelSpec

log = get_logger(component="registry")


def checkpoint_dir(spec: ModelSpec, models_dir: Path) -> Path | None:
    path = Path(models_dir) / spec.name
    if path.is_dir() and (path / "model_index.json").is_file():
        return path
    return None


def family_module(spec: ModelSpec) -> ModuleType:
    """The pipeline module of ``spec.family``, checked to implement every task in ``spec.tasks``."""
    try:
        module = importlib.import_module(f"gpu_runner.pipelines.{spec.family}")
    except ModuleNotFoundError as e:
        raise Permanent(f"{spec.name}: no pipeline file gpu_runner/pipelines/{spec.family}.py",
                        code=ErrorCode.MODEL_ERROR) from e
    implemented = frozenset(getattr(module, "TASKS", ()))
    missing = sorted(set(spec.tasks) - implemented)
    if missing:
        raise Permanent(
            f"{spec.name} is registered for tasks {', '.join(spec.tasks)} but family {spec.family!r} implements "
            f"only {', '.join(sorted(implemented)) or 'none'} (fix schemas/registry.py)", code=ErrorCode.MODEL_ERROR)
    return module


def load_model(name: str, models_dir: Path, ctx: LoadContext) -> VideoPipeline:
    spec = MODELS.get(name)
    if spec is None:
        raise Permanent(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}", code=ErrorCode.UNKNOWN_MODEL)
    ckpt = checkpoint_dir(spec, models_dir)
    if ckpt is None and not spec.tiny:
        raise Permanent(
            f"no checkpoint for {name}: expected a diffusers-format directory at {Path(models_dir) / name} "
            f"(e.g. `huggingface-cli download {spec.hub_id} --local-dir {Path(models_dir) / name}`)",
            code=ErrorCode.MODEL_ERROR,
        )
    module = family_module(spec)
    log.info("model_loading", model=name, family=spec.family, checkpoint=str(ckpt) if ckpt else "tiny-random",
             device=ctx.device, dtype=ctx.dtype, world_size=ctx.world_size)
    pipe: VideoPipeline = module.load(spec, ckpt, ctx)
    return pipe
