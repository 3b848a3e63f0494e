"""LoRA adapters per job: resolve, cache, apply for one generation, unload after.

A job names its adapter(s) with ``LoraSpec`` (a local ``.safetensors`` path or ``s3://bucket/key``, a
scale, an optional name). ``AdapterCache`` turns a spec into a state dict: S3 objects are fetched
once through an injected ``fetch(uri) -> bytes`` (sync or async; the runner passes its storage) into
``dir`` and kept there, and the most recently used state dicts stay in memory (LRU).
``applied_lora(pipe, specs, cache)`` loads them with diffusers' PEFT integration
(``load_lora_weights`` + ``set_adapters``) and calls ``unload_lora_weights()`` in ``finally``: PEFT
layers are removed and the base weights were never touched (nothing is fused), so the next job
without adapters is bit-identical to a run of the fresh model.

Under sequence parallelism (a ``WanT2V`` with ``sequence_parallel`` set) adapters on the blocks give
the 1-rank result exactly; an adapter on ``proj_out`` is refused. Only rank 0 does I/O: on other
ranks, put the state dict rank 0 broadcast into the cache with ``AdapterCache.put`` before
``applied_lora``. Needs ``peft`` (an error, not a silent run without the adapter, when it is missing).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import math
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from runtime.logging import get_logger
from schemas.errors import ErrorCode, Permanent, Retryable, VideogenError

log = get_logger(component="lora")

S3_SCHEME = "s3://"
SUFFIX = ".safetensors"
StateDict = dict[str, torch.Tensor]
Fetch = Callable[[str], "bytes | Awaitable[bytes]"]
RunCoroutine = Callable[[Awaitable[bytes]], bytes]


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key)."""
    if not uri.startswith(S3_SCHEME):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len(S3_SCHEME):].partition("/")
    if not bucket or not key:
        raise ValueError(f"s3 URI needs a bucket and a key: {uri!r}")
    return bucket, key


DEFAULT_MAX_BYTES = 1 << 30


def storage_fetch(storage: Any, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Callable[[str], Awaitable[bytes]]:
    """An async ``fetch(uri)`` over ``runtime.storage.Storage.get_bytes`` (run it on the storage's loop).

    Objects larger than ``max_bytes`` are refused before they are read (``input_too_large``).
    """

    async def fetch(uri: str) -> bytes:
        bucket, key = parse_s3_uri(uri)
        data: bytes = await storage.get_bytes(key, bucket=bucket, max_bytes=max_bytes)
        if len(data) > max_bytes:  # a server that lied about Content-Length
            raise Permanent(f"LoRA {uri} is over {max_bytes} bytes", code=ErrorCode.INPUT_TOO_LARGE)
        return data

    return fetch


class LoraSpec(BaseModel):
    """One adapter for one job."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    source: str = Field(description="local path or s3://bucket/key of a diffusers/PEFT LoRA .safetensors file")
    scale: float = Field(1.0, description="adapter weight passed to set_adapters")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_\-]{1,64}$", description="adapter name (default: from source)")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="expected file digest, checked on load")
    expert: Literal["both", "high", "low"] = Field(
        "both", description="two-expert models (Wan2.2-A14B): load into the high-noise transformer, the "
                            "low-noise transformer_2, or both (one-expert models: only 'both')")

    @field_validator("source")
    @classmethod
    def _safetensors_only(cls, v: str) -> str:
        if not v.endswith(SUFFIX):
            raise ValueError(f"LoRA source must be a {SUFFIX} file (no pickles): {v!r}")
        if v.startswith(S3_SCHEME):
            parse_s3_uri(v)
        elif "://" in v:
            raise ValueError(f"LoRA source must be a local path or s3://bucket/key: {v!r}")
        return v

    @field_validator("scale")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("scale must be finite")
        return v

    @property
    def is_s3(self) -> bool:
        return self.source.startswith(S3_SCHEME)

    @property
    def adapter_name(self) -> str:
        return self.name or "lora_" + hashlib.sha256(self.source.encode()).hexdigest()[:12]

    @property
    def cache_key(self) -> str:
        return f"{self.source}#{self.sha256 or ''}"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _run_sync(awaitable: Awaitable[bytes]) -> bytes:
    """Default for async fetchers called from a thread without a running loop."""

    async def wrap() -> bytes:
        return await awaitable

    return asyncio.run(wrap())


class AdapterCache:
    """Source -> local file -> state dict, with the ``max_entries`` most recently used kept in memory.

    ``dir`` holds fetched S3 objects (named by a digest of the URI, kept up to ``max_files``, oldest
    removed first). ``fetch`` gets the bytes of an ``s3://`` URI (sync, or async run with
    ``run_coroutine``; default ``asyncio.run``; the runner passes ``fetch_lora`` of its I/O, which is sync).
    """

    def __init__(self, max_entries: int = 4, dir: Path | str = Path(".videogen/lora"), *,
                 fetch: Fetch | None = None, run_coroutine: RunCoroutine | None = None,
                 max_files: int | None = None) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self.dir = Path(dir)
        self.fetch = fetch
        self.run_coroutine = run_coroutine or _run_sync
        self.max_files = max_files or 4 * max_entries
        self._entries: OrderedDict[str, StateDict] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, spec: LoraSpec) -> bool:
        return spec.cache_key in self._entries

    # -- files ---------------------------------------------------------------------------------
    def local_path(self, spec: LoraSpec) -> Path:
        """Where the adapter file of ``spec`` is (or will be) on this machine."""
        if not spec.is_s3:
            return Path(spec.source).expanduser()
        digest = hashlib.sha256(spec.source.encode()).hexdigest()[:24]
        return self.dir / f"{digest}-{Path(spec.source).name}"

    def resolve(self, spec: LoraSpec) -> Path:
        """The local file for ``spec``, fetching an S3 object first when it is not on disk yet."""
        path = self.local_path(spec)
        if path.is_file():
            if spec.is_s3:
                os.utime(path)  # LRU order of the disk cache
            return path
        if not spec.is_s3:
            raise Permanent(f"LoRA file {spec.source} does not exist", code=ErrorCode.MISSING_INPUT)
        if self.fetch is None:
            raise Permanent(f"cannot fetch {spec.source}: no S3 fetcher configured", code=ErrorCode.MODEL_ERROR)
        started = time.perf_counter()
        try:
            result = self.fetch(spec.source)
            data = self.run_coroutine(result) if inspect.isawaitable(result) else result
        except VideogenError:
            raise
        except Exception as e:  # noqa: BLE001 - storage errors are transient until proven otherwise
            raise Retryable(f"fetching LoRA {spec.source} failed: {e}", code=ErrorCode.STORAGE_ERROR) from e
        if not isinstance(data, bytes | bytearray):
            raise Permanent(f"fetch({spec.source}) returned {type(data).__name__}, not bytes", code=ErrorCode.INTERNAL)
        if spec.sha256 is not None and hashlib.sha256(data).hexdigest() != spec.sha256:
            raise Permanent(f"LoRA {spec.source}: sha256 mismatch", code=ErrorCode.INPUT_UNREADABLE)
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        log.info("lora_fetched", source=spec.source, size_bytes=len(data),
                 seconds=round(time.perf_counter() - started, 3))
        self._prune_files(keep=path)
        return path

    def _prune_files(self, keep: Path) -> None:
        files = sorted((p for p in self.dir.glob(f"*{SUFFIX}") if p != keep), key=lambda p: p.stat().st_mtime)
        for old in files[: max(0, len(files) + 1 - self.max_files)]:
            old.unlink(missing_ok=True)
            log.info("lora_file_evicted", path=str(old))

    # -- state dicts ---------------------------------------------------------------------------
    def state_dict(self, spec: LoraSpec) -> StateDict:
        """The adapter's tensors (CPU), from memory when recently used."""
        key = spec.cache_key
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
        self.misses += 1
        path = self.resolve(spec)
        if spec.sha256 is not None and _file_sha256(path) != spec.sha256:
            if spec.is_s3:
                path.unlink(missing_ok=True)
            raise Permanent(f"LoRA {spec.source}: sha256 mismatch", code=ErrorCode.INPUT_UNREADABLE)
        try:
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
            raise Permanent(f"LoRA {spec.source} is not a readable safetensors file: {e}",
                            code=ErrorCode.INPUT_UNREADABLE) from e
        if not sd:
            raise Permanent(f"LoRA {spec.source} holds no tensors", code=ErrorCode.INPUT_UNSUPPORTED)
        self.put(spec, sd)
        return sd

    def put(self, spec: LoraSpec, state_dict: StateDict) -> None:
        """Insert a state dict (e.g. broadcast from rank 0), evicting the least recently used."""
        with self._lock:
            self._entries[spec.cache_key] = state_dict
            self._entries.move_to_end(spec.cache_key)
            while len(self._entries) > self.max_entries:
                evicted, _ = self._entries.popitem(last=False)
                log.info("lora_evicted", key=evicted)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class PeerView:
    """Rank 0's mirror of which adapters the other ranks' ``AdapterCache`` holds.

    Every rank's cache sees the same sequence (``put`` of what was broadcast, then ``state_dict``
    of each spec in ``applied_lora``), so the same LRU evictions; rank 0 replays it on keys only
    and broadcasts a state dict only when the peers lack it — not with every segment.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._keys: OrderedDict[str, None] = OrderedDict()

    def missing(self, specs: Sequence[LoraSpec]) -> list[LoraSpec]:
        """The specs whose tensors must travel with this segment's command."""
        return [s for s in specs if s.cache_key not in self._keys]

    def record(self, specs: Sequence[LoraSpec], sent: Sequence[str]) -> None:
        """After a job command went out: replay the peers' puts (``sent``) and touches."""
        for key in sent:
            self._keys[key] = None
            self._keys.move_to_end(key)
            while len(self._keys) > self.max_entries:
                self._keys.popitem(last=False)
        for spec in specs:
            if spec.cache_key in self._keys:
                self._keys.move_to_end(spec.cache_key)


def _pipeline_of(target: Any) -> Any:
    pipe = getattr(target, "pipe", target)
    if not hasattr(pipe, "load_lora_weights"):
        raise Permanent(f"{type(pipe).__name__} does not support LoRA adapters", code=ErrorCode.MODEL_ERROR)
    return pipe


def loaded_adapters(target: Any) -> list[str]:
    """Names of the adapters currently loaded in the pipeline's denoiser(s)."""
    pipe = _pipeline_of(target)
    try:
        listed = pipe.get_list_adapters()
    except (ValueError, ImportError):  # no PEFT layers / no peft
        return []
    return sorted({name for names in listed.values() for name in names})


# Layers whose output the sequence-parallel glue gathers (gpu_runner.sequence_parallel puts its gather
# hook on proj_out): a LoRA there adds a shard-sized delta to a gathered output (shape mismatch,
# verified with 2 gloo ranks). LoRAs on the blocks (attention, FFN) give the 1-rank result exactly.
SEQUENCE_PARALLEL_FORBIDDEN_LAYERS = ("proj_out",)


def _refuse_gathered_layers(pipe: Any) -> None:
    for component in ("transformer", "transformer_2"):
        model = getattr(pipe, component, None)
        for layer in SEQUENCE_PARALLEL_FORBIDDEN_LAYERS:
            if model is not None and hasattr(getattr(model, layer, None), "base_layer"):  # a PEFT wrapper
                raise Permanent(f"LoRA on {component}.{layer} is not supported under sequence parallelism "
                                "(its output is gathered across ranks)", code=ErrorCode.INPUT_UNSUPPORTED)


@contextmanager
def applied_lora(target: Any, specs: LoraSpec | Sequence[LoraSpec] | None, cache: AdapterCache) -> Iterator[list[str]]:
    """Load ``specs`` into ``target`` (a ``WanT2V`` or a diffusers pipeline) for the ``with`` block.

    Yields the adapter names. In ``finally`` all LoRA layers are unloaded, so the next job runs the
    base model bit for bit. A spec that does not fit the model is ``Permanent(INPUT_UNSUPPORTED)``.
    """
    if specs is None:
        specs = []
    elif isinstance(specs, LoraSpec):
        specs = [specs]
    if not specs:
        yield []
        return
    pipe = _pipeline_of(target)
    from diffusers.utils import USE_PEFT_BACKEND

    if not USE_PEFT_BACKEND:
        raise Permanent("LoRA requested but the peft package is not installed", code=ErrorCode.MODEL_ERROR)
    names = [s.adapter_name for s in specs]
    if len(set(names)) != len(names):
        raise Permanent(f"duplicate LoRA adapter names {names}", code=ErrorCode.INVALID_REQUEST)
    stale = loaded_adapters(pipe)
    if stale:
        log.warning("stale_lora_unloaded", adapters=stale)
        pipe.unload_lora_weights()
    started = time.perf_counter()
    try:
        for spec in specs:
            sd = cache.state_dict(spec)
            two_experts = getattr(pipe, "transformer_2", None) is not None
            if spec.expert != "both" and not two_experts:
                raise Permanent(f"LoRA {spec.source} targets the {spec.expert}-noise expert but this model has one "
                                "transformer", code=ErrorCode.INPUT_UNSUPPORTED)
            targets = [False, True] if spec.expert == "both" and two_experts else [spec.expert == "low"]
            try:
                for into_second in targets:  # Wan2.2-A14B: the high-noise transformer, the low-noise transformer_2
                    # PEFT consumes the dict it is given: each expert gets its own shallow copy
                    pipe.load_lora_weights(dict(sd), adapter_name=spec.adapter_name,
                                           **({"load_into_transformer_2": True} if into_second else {}))
            except (ValueError, RuntimeError, KeyError) as e:
                raise Permanent(f"LoRA {spec.source} does not fit this model: {e}",
                                code=ErrorCode.INPUT_UNSUPPORTED) from e
        if getattr(target, "sequence_parallel", None) is not None:
            _refuse_gathered_layers(pipe)
        loaded = loaded_adapters(pipe)
        missing = [n for n in names if n not in loaded]
        if missing:
            raise Permanent(f"LoRA adapters {missing} matched no layer of the model", code=ErrorCode.INPUT_UNSUPPORTED)
        pipe.set_adapters(names, adapter_weights=[s.scale for s in specs])
        log.info("lora_applied", adapters=names, scales=[s.scale for s in specs],
                 seconds=round(time.perf_counter() - started, 3), cache_hits=cache.hits, cache_misses=cache.misses)
        yield names
    finally:
        # Always: a load that failed half-way may have injected PEFT layers already.
        pipe.unload_lora_weights()
        log.info("lora_removed", adapters=names)
