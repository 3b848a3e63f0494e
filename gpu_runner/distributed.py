"""The process group of one GPU runner — the only module that calls ``torch.distributed``.

Launched by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``),
or as a plain process (world size 1: no process group is created and every collective here is a
no-op that returns its input), so the same code runs in tests, on a laptop and on a GPU node.
Backend: ``gloo`` on CPU; on CUDA ``cpu:gloo,cuda:nccl`` — tensors go over NCCL, while the control
objects (the per-segment command, the per-step cancel flag) are pickled into CPU tensors and go
over gloo, so they never cost a device sync or a host<->device copy.

Sub-groups: a ``DistContext`` may carry a ``group`` (and a ``mesh``): its ``rank``/``world_size``
are then the rank and size *inside* that group and every collective here runs on it (CFG parallel
x Ulysses splits the world into such groups, see ``gpu_runner.parallel``).

On CUDA the allocator is set to ``expandable_segments:True`` before the first allocation (unless
``PYTORCH_ALLOC_CONF``/``PYTORCH_CUDA_ALLOC_CONF`` already says otherwise): windows of changing
length then reuse memory instead of fragmenting it.
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
    group: Any = None  # a sub-group: rank/world_size are within it (None: the whole world)
    mesh: Any = None  # the sub-group's ("ring", "ulysses") DeviceMesh, for diffusers' context parallel

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


CUDA_BACKEND = "cpu:gloo,cuda:nccl"
ALLOC_ENV = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")
ALLOC_SETTING = "expandable_segments:True"


def configure_allocator() -> str:
    """``expandable_segments:True`` for the CUDA caching allocator unless already configured; returns
    the setting in force (logged). Must run before the first CUDA allocation of the process."""
    for name in ALLOC_ENV:
        if os.environ.get(name):
            return os.environ[name]
    os.environ[ALLOC_ENV[0]] = ALLOC_SETTING  # read by the allocator at the process's first CUDA allocation
    log.info("cuda_allocator_configured", setting=ALLOC_SETTING)
    return ALLOC_SETTING


def uses_nccl(ctx: DistContext) -> bool:
    """True when tensors of ``ctx`` travel over NCCL (CUDA)."""
    return "nccl" in ctx.backend


def init_from_env(device_pref: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """Join the torchrun process group (or run alone), pick the device and the backend.

    Idempotent: if a process group already exists, it is reused.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    device = _pick_device(device_pref, local_rank)
    backend = CUDA_BACKEND if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        configure_allocator()
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
        device=device or (f"cuda:{local_rank}" if "nccl" in backend else "cpu"), backend=backend,
    )


def is_initialized() -> bool:
    """True when a process group exists in this process."""
    return dist.is_available() and dist.is_initialized()


def broadcast_object(obj: T, src: int = 0, ctx: DistContext | None = None) -> T:
    """Send a picklable object from ``src`` to every rank; returns it on every rank.

    Always over the CPU (gloo) side of the group: with ``cpu:gloo,cuda:nccl`` the pickled bytes never
    touch the GPU. A pure-NCCL group (created elsewhere) falls back to the device.
    """
    if ctx is None or not ctx.distributed:
        return obj
    box: list[Any] = [obj if ctx.rank == src else None]
    device = torch.device(ctx.device) if ctx.backend == "nccl" else torch.device("cpu")
    dist.broadcast_object_list(box, src=src, device=device, group=ctx.group)
    return box[0]  # type: ignore[no-any-return]


def barrier(ctx: DistContext | None = None) -> None:
    """Wait until every rank gets here."""
    if ctx is None or not ctx.distributed:
        return
    if ctx.backend == "nccl":
        dist.barrier(group=ctx.group, device_ids=[torch.device(ctx.device).index or 0])
    else:
        dist.barrier(group=ctx.group)


def all_gather(tensor: torch.Tensor, dim: int = 0, ctx: DistContext | None = None) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` (same shape on all ranks) along ``dim``."""
    if ctx is None or not ctx.distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(ctx.world_size)]
    dist.all_gather(parts, tensor.contiguous(), group=ctx.group)
    return torch.cat(parts, dim=dim)


def all_gather_uneven(
    tensor: torch.Tensor, dim: int, sizes: list[int], ctx: DistContext | None = None
) -> torch.Tensor:
    """Concatenate along ``dim`` pieces whose sizes differ by rank (``sizes[r]`` on rank r).

    Pads every piece to the largest size, all-gathers, trims: works on gloo, which rejects
    uneven ``all_gather`` lists. ``sizes`` are host integers known on every rank (from the
    sequence length), so there is no size exchange and no ``.item()`` device sync.
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
    dist.all_gather(parts, tensor.contiguous(), group=ctx.group)
    return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, sizes, strict=True)], dim=dim)


def all_gather_sizes(size: int, ctx: DistContext | None = None) -> list[int]:
    """Every rank's value of one integer (e.g. its local sequence length)."""
    if ctx is None or not ctx.distributed:
        return [size]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, size, group=ctx.group)
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
        raise ValueError(f"all_to_all_4d expects (B, S, H, D) with dims 1/2, got {tuple(x.shape)}, "
                         f"{scatter_dim}/{gather_dim}")
    if x.shape[scatter_dim] % world:
        raise ValueError(f"dimension {scatter_dim} of size {x.shape[scatter_dim]} is not divisible by {world} ranks")
    # Move the scattered dim to the front, split it into (world, chunk): chunk r goes to rank r.
    moved = x.movedim(scatter_dim, 0)
    chunk = moved.shape[0] // world
    send = moved.reshape(world, chunk, *moved.shape[1:]).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=ctx.group)
    # recv[r] is rank r's piece of the gathered dim: concatenate the pieces along the gather dim.
    gather_in_moved = gather_dim if gather_dim > scatter_dim else gather_dim + 1
    pieces = [recv[r] for r in range(world)]  # each (chunk, ...) in moved layout
    out = torch.cat(pieces, dim=gather_in_moved)
    return out.movedim(0, scatter_dim).contiguous()


def device_mesh(ctx: DistContext, shape: tuple[int, ...], names: tuple[str, ...]) -> Any:
    """A ``DeviceMesh`` over all ranks (for diffusers' context-parallel hooks). Collective: call it
    on every rank in the same order."""
    from torch.distributed.device_mesh import init_device_mesh

    device_type = "cuda" if ctx.device.startswith("cuda") else "cpu"
    return init_device_mesh(device_type=device_type, mesh_shape=shape, mesh_dim_names=names)


def destroy(ctx: DistContext | None = None) -> None:
    """Leave the process group (no-op for world size 1)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        log.info("distributed_destroyed", rank=ctx.rank if ctx else None)
