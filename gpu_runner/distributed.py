"""The process group of one GPU runner — the only module that calls ``torch.distributed``.

Launched by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``),
or as a plain process (world size 1: no process group is created and every collective here is a
no-op that returns its input), so the same code runs in tests, on a laptop and on a GPU node.
Backend: ``nccl`` on CUDA, ``gloo`` on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from runtime.logging import get_logger

log = get_logger(component="distributed")

T = TypeVar("T")

# Generous: a collective may wait for the slowest rank's whole denoising step or a model load.
DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the runner's process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str = "gloo"

    @property
    def is_main(self) -> bool:
        """Rank 0 owns all I/O (bus, storage, encode)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group exists (world size > 1)."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def _pick_device(device_pref: str, local_rank: int) -> str:
    if device_pref == "auto":
        device_pref = "cuda" if torch.cuda.is_available() else "cpu"
    if device_pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device_pref!r} requested but CUDA is not available")
        return device_pref if ":" in device_pref else f"cuda:{local_rank}"
    if device_pref != "cpu":
        raise ValueError(f"unknown device preference {device_pref!r} (auto | cpu | cuda | cuda:N)")
    return "cpu"


def init_from_env(device_pref: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """Join the torchrun process group (or run alone), pick the device and the backend.

    Idempotent: if a process group already exists, it is reused.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    device = _pick_device(device_pref, local_rank)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    ctx = DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device, backend=backend)
    if world_size > 1 and not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=timeout_s)}
        if device.startswith("cuda"):
            kwargs["device_id"] = torch.device(device)  # eager NCCL init, binds the rank to its GPU
        dist.init_process_group(rank=rank, world_size=world_size, **kwargs)
    log.info(
        "distributed_ready", rank=rank, world_size=world_size, local_rank=local_rank, device=device,
        backend=backend, master=f"{os.environ.get('MASTER_ADDR', '-')}:{os.environ.get('MASTER_PORT', '-')}",
    )
    return ctx


def current(device: str | None = None) -> DistContext:
    """The context of an already initialised process group (world size 1 when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext(device=device or "cpu", backend="gloo")
    backend = str(dist.get_backend())
    local_rank = _env_int("LOCAL_RANK", dist.get_rank())
    return DistContext(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
        device=device or ("cuda:%d" % local_rank if "nccl" in backend else "cpu"), backend=backend,
    )


def is_initialized() -> bool:
    """True when a process group exists in this process."""
    return dist.is_available() and dist.is_initialized()


def broadcast_object(obj: T, src: int = 0, ctx: DistContext | None = None) -> T:
    """Send a picklable object from ``src`` to every rank; returns it on every rank."""
    if ctx is None or not ctx.distributed:
        return obj
    box: list[Any] = [obj if ctx.rank == src else None]
    device = torch.device(ctx.device) if ctx.backend == "nccl" else None
    dist.broadcast_object_list(box, src=src, device=device)
    return box[0]  # type: ignore[no-any-return]


def barrier(ctx: DistContext | None = None) -> None:
    """Wait until every rank gets here."""
    if ctx is None or not ctx.distributed:
        return
    if ctx.backend == "nccl":
        dist.barrier(device_ids=[torch.device(ctx.device).index or 0])
    else:
        dist.barrier()


def all_gather(tensor: torch.Tensor, dim: int = 0, ctx: DistContext | None = None) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` (same shape on all ranks) along ``dim``."""
    if ctx is None or not ctx.distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(ctx.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=dim)


def all_gather_uneven(
    tensor: torch.Tensor, dim: int, sizes: list[int], ctx: DistContext | None = None
) -> torch.Tensor:
    """Concatenate along ``dim`` pieces whose sizes differ by rank (``sizes[r]`` on rank r).

    Pads every piece to the largest size, all-gathers, trims: works on gloo, which rejects
    uneven ``all_gather`` lists.
    """
    if ctx is None or not ctx.distributed:
        return tensor
    if len(sizes) != ctx.world_size or tensor.shape[dim] != sizes[ctx.rank]:
        raise ValueError(f"rank {ctx.rank} holds {tensor.shape[dim]} along dim {dim}, expected sizes {sizes}")
    largest = max(sizes)
    if largest != tensor.shape[dim]:
        pad_shape = list(tensor.shape)
        pad_shape[dim] = largest - tensor.shape[dim]
        tensor = torch.cat([tensor, tensor.new_zeros(pad_shape)], dim=dim)
    parts = [torch.empty_like(tensor) for _ in range(ctx.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, sizes, strict=True)], dim=dim)


def all_gather_sizes(size: int, ctx: DistContext | None = None) -> list[int]:
    """Every rank's value of one integer (e.g. its local sequence length)."""
    if ctx is None or not ctx.distributed:
        return [size]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, size)
    return [int(x) for x in out]


def all_to_all_4d(x: torch.Tensor, scatter_dim: int, gather_dim: int, ctx: DistContext | None = None) -> torch.Tensor:
    """Ulysses all-to-all on a (B, S, H, D) tensor.

    ``scatter_dim=2, gather_dim=1``: (B, S/P, H, D) sequence shard, all heads
    -> (B, S, H/P, D) full sequence, head shard. ``scatter_dim=1, gather_dim=2`` is the inverse.
    Requires the scattered dimension to be divisible by the world size.
    """
    if ctx is None or not ctx.distributed:
        return x
    world = ctx.world_size
    if x.dim() != 4 or {scatter_dim, gather_dim} != {1, 2}:
        raise ValueError(f"all_to_all_4d expects (B, S, H, D) with dims 1/2, got {tuple(x.shape)}, {scatter_dim}/{gather_dim}")
    if x.shape[scatter_dim] % world:
        raise ValueError(f"dimension {scatter_dim} of size {x.shape[scatter_dim]} is not divisible by {world} ranks")
    # Move the scattered dim to the front, split it into (world, chunk): chunk r goes to rank r.
    moved = x.movedim(scatter_dim, 0)
    chunk = moved.shape[0] // world
    send = moved.reshape(world, chunk, *moved.shape[1:]).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send)
    # recv[r] is rank r's piece of the gathered dim: concatenate the pieces along the gather dim.
    gather_in_moved = gather_dim if gather_dim > scatter_dim else gather_dim + 1
    pieces = [recv[r] for r in range(world)]  # each (chunk, ...) in moved layout
    out = torch.cat(pieces, dim=gather_in_moved)
    return out.movedim(0, scatter_dim).contiguous()


def device_mesh(ctx: DistContext, shape: tuple[int, ...], names: tuple[str, ...]) -> Any:
    """A ``DeviceMesh`` over all ranks (for diffusers' context-parallel hooks)."""
    from torch.distributed.device_mesh import init_device_mesh

    device_type = "cuda" if ctx.device.startswith("cuda") else "cpu"
    return init_device_mesh(device_type=device_type, mesh_shape=shape, mesh_dim_names=names)


def init_xfuser_groups(ctx: DistContext, ulysses_degree: int, ring_degree: int = 1) -> None:
    """Create xDiT's (xfuser) parallel groups on top of our process group. CUDA only; lazy import."""
    if not ctx.device.startswith("cuda"):
        raise RuntimeError("xfuser sequence parallelism needs CUDA")
    try:
        from xfuser.core.distributed import parallel_state as ps  # type: ignore[import-not-found]
    except Exception as e:  # noqa: BLE001 - any import failure means "unavailable"
        raise RuntimeError(f"VIDEOGEN_SP_BACKEND=xfuser but xfuser cannot be imported: {e}") from e
    if getattr(ps, "_SP", None) is not None:
        return
    ps.init_distributed_environment(rank=ctx.rank, world_size=ctx.world_size, local_rank=ctx.local_rank)
    ps.initialize_model_parallel(
        sequence_parallel_degree=ulysses_degree * ring_degree, ulysses_degree=ulysses_degree, ring_degree=ring_degree,
    )
    log.info("xfuser_groups_ready", ulysses_degree=ulysses_degree, ring_degree=ring_degree)


def destroy(ctx: DistContext | None = None) -> None:
    """Leave the process group (no-op for world size 1)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        log.info("distributed_destroyed", rank=ctx.rank if ctx else None)
