"""preprocess for i2v / animate jobs: fetch, validate, store originals, derive model inputs.

Returns named ``ObjectRef``s (they go into ``ResolvedJob.inputs``):

=================  =======================================================  ===========
name               key                                                      tasks
=================  =======================================================  ===========
``image``          ``jobs/<id>/inputs/image.<ext>`` (original bytes)         i2v, animate
``reference``      ``jobs/<id>/frames/reference.png`` (on the model grid)    i2v, animate
``video``          ``jobs/<id>/inputs/video.<ext>`` (original bytes)         animate
``frames_index``   ``jobs/<id>/frames/driving/index.json`` (+ chunks)        animate
``pose_index``     ``jobs/<id>/keypoints/pose/index.json`` (+ chunks)        animate
``face_index``     ``jobs/<id>/keypoints/face/index.json`` (+ chunks)        animate
``keypoints``      ``jobs/<id>/keypoints/keypoints.npy`` (F, 33, 4) float32  animate
``keypoints_meta`` ``jobs/<id>/keypoints/keypoints.json`` (schema)           animate
=================  =======================================================  ===========

Blocking work (decode, pose, encode) runs in threads, so the event loop stays free for uploads and
for ``runtime.consumer.ConsumerLoop``'s ``in_progress`` heartbeat, which keeps the message alive.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from functions.preprocess.animate import STREAMS, AnimateRun, AnimateStats
from functions.preprocess.errors import InputRejected, InputUnsupported
from functions.preprocess.fetch import fetch_input
from functions.preprocess.limits import DEFAULT_LIMITS, MediaLimits
from functions.preprocess.media import encode_png, probe_video, reference_image
from functions.preprocess.pose import available_cores, shared_estimator
from functions.preprocess.skeleton import schema
from functions.preprocess.sniff import sniff
from runtime.frames_store import Chunk, ChunkInfo, FramesIndex, chunk_key, index_json, index_key
from runtime.logging import get_logger
from runtime.objects import ObjectStore
from runtime.settings import Settings
from schemas.errors import ErrorCode
from schemas.messages import JobRequest, ObjectRef, ResolvedJob, Task
from schemas.names import frames_key, input_key, keypoints_key
from schemas.registry import FACE_SIZE, get_model

if TYPE_CHECKING:
    from functions.preprocess.parts import Splitter

log = get_logger(stage="preprocess")

CHUNK_FRAMES = 32
"""Frames per stored chunk, and per ``AnimateRun.step``."""

STEP_FRAMES = 8
"""Frames per ``AnimateRun.step`` when streaming (finished chunks go out sooner)."""

OnReady = Callable[[dict[str, ObjectRef], int], Awaitable[None]]
"""Streaming preprocess: called with the job's input refs (every name, keys final) and F each time the
frame streams are stored (partial ``index.json`` written) for frames ``[0, F)``; it may raise to stop."""


def resolve_workers(settings: Settings, workers: int | None) -> int:
    """Explicit value > ``settings.preprocess_workers`` > the cores available."""
    configured = workers if workers is not None else settings.preprocess_workers
    return max(1, int(configured)) if configured else available_cores()


def default_face_size(job: ResolvedJob) -> int:
    """The square face-crop side the job's model consumes (``ModelSpec.face_size``)."""
    spec = get_model(job.model)
    return spec.face_size if spec is not None else FACE_SIZE


async def preprocess(job: ResolvedJob, request: JobRequest, storage: ObjectStore, settings: Settings, *,
                     workers: int | None = None,
                     limits: MediaLimits | None = None, face_size: int | None = None,
                     require_person: bool = True, on_ready: OnReady | None = None,
                     split: Splitter | None = None) -> dict[str, ObjectRef]:
    """Fetch and validate the job's inputs, store originals and derived objects; see module doc.

    Raises ``InputRejected`` subclasses (permanent: job.rejected with the error's code) or
    ``Retryable`` (network/storage trouble). ``require_person``: an animate job whose driving
    video shows nobody in any frame is rejected (``input_unsupported``). ``on_ready`` (animate): stream
    the frame products (see :data:`OnReady`); called only once a person was seen, so a video with nobody
    in it is still rejected before anything is planned. ``split`` (animate, longer than
    ``settings.preprocess_part_frames``): parts after the first go to other preprocess workers
    (``functions.preprocess.parts``); this call processes the first and joins them. The stored bytes are
    the same with or without it.
    """
    limits = limits or DEFAULT_LIMITS
    refs: dict[str, ObjectRef] = {}
    if job.task == Task.T2V:
        return refs
    t0 = time.perf_counter()
    allow = settings.input_allow_hosts
    buckets = settings.input_buckets or None

    if not request.image or (job.task == Task.ANIMATE and not request.video):
        needs = "'image' and 'video'" if job.task == Task.ANIMATE else "'image'"
        raise InputRejected(f"task {job.task.value} needs {needs}", code=ErrorCode.MISSING_INPUT)
    image = await fetch_input(request.image, storage, limits, allow, max_bytes=limits.max_image_bytes,
                              allowed_buckets=buckets)
    reference, info = await asyncio.to_thread(reference_image, image, limits, job.width, job.height)
    video: bytes | None = None
    if job.task == Task.ANIMATE and request.video:
        video = await fetch_input(request.video, storage, limits, allow, max_bytes=limits.max_video_bytes,
                                  allowed_buckets=buckets)
        vinfo = await asyncio.to_thread(probe_video, video, limits)
        log.info("input_video", codec=vinfo.codec, width=vinfo.width, height=vinfo.height, fps=vinfo.fps,
                 duration_s=vinfo.duration_s, frames=vinfo.frames, size=len(video))

    jid = job.job_id
    refs["image"] = await storage.put_bytes(input_key(jid, f"image.{info.kind.extension}"), image, info.kind.mime)
    png = await asyncio.to_thread(encode_png, reference)
    refs["reference"] = await storage.put_bytes(frames_key(jid, "reference.png"), png, "image/png")
    if video is not None:
        kind = sniff(video)
        refs["video"] = await storage.put_bytes(input_key(jid, f"video.{kind.extension}"), video, kind.mime)
        n_workers, face = resolve_workers(settings, workers), face_size or default_face_size(job)
        part_frames = settings.preprocess_part_frames
        if split is not None and job.num_frames > part_frames:
            from functions.preprocess.parts import animate_in_parts

            refs.update(await animate_in_parts(job, video, refs["video"], storage, limits, n_workers, face,
                                               require_person, refs, on_ready, split, part_frames))
        else:
            refs.update(await _animate(job, video, storage, limits, n_workers, face, require_person, refs, on_ready,
                                       part_frames))
    log.info("preprocess_done", job_id=jid, task=job.task.value, objects=len(refs),
             elapsed_s=round(time.perf_counter() - t0, 3))
    return refs


class _Uploader:
    """Uploads finished chunks concurrently with the next processing step (at most 2 batches
    in flight, so encoded bytes waiting in memory stay bounded) and records their refs."""

    def __init__(self, storage: ObjectStore, prefixes: dict[str, str],
                 on_stored: Callable[[], Awaitable[None]] | None = None, base: int = 0) -> None:
        self._storage = storage
        self._prefixes = prefixes
        self._on_stored = on_stored
        self._base = base
        self._announcing = asyncio.Lock()
        self._inflight: list[asyncio.Future[Any]] = []
        self.chunks: dict[str, list[ChunkInfo]] = {name: [] for name in prefixes}

    def stored(self) -> dict[str, list[ChunkInfo]]:
        """Each stream's chunks stored so far without a gap from ``base`` (uploads finish in any order)."""
        out: dict[str, list[ChunkInfo]] = {}
        for name, chunks in self.chunks.items():
            prefix: list[ChunkInfo] = []
            for c in sorted(chunks, key=lambda c: c.start):
                if c.start != self._base + sum(p.frames for p in prefix):
                    break
                prefix.append(c)
            out[name] = prefix
        return out

    async def _put(self, stream: str, chunk: Chunk) -> None:
        key = chunk_key(self._prefixes[stream], chunk.number)
        ref = await self._storage.put_bytes(key, chunk.data, "video/mp4")
        self.chunks[stream].append(ChunkInfo(key=key, start=chunk.start, frames=chunk.frames, size=len(chunk.data),
                                             etag=ref.etag))

    async def submit(self, batch: list[tuple[str, Chunk]]) -> None:
        if not batch:
            return
        while len(self._inflight) >= 2:
            await self._inflight.pop(0)
        self._inflight.append(asyncio.ensure_future(self._batch(batch)))

    async def _batch(self, batch: list[tuple[str, Chunk]]) -> None:
        await asyncio.gather(*(self._put(s, c) for s, c in batch))
        if self._on_stored is not None:
            async with self._announcing:  # as soon as a batch is stored, in order
                await self._on_stored()

    async def drain(self) -> None:
        while self._inflight:
            await self._inflight.pop(0)

    def cancel(self) -> None:
        for task in self._inflight:
            task.cancel()


_NAMES = {"driving": "frames_index", "pose": "pose_index", "face": "face_index"}


def stream_prefixes(job_id: str) -> dict[str, str]:
    return {"driving": frames_key(job_id, "driving"), "pose": keypoints_key(job_id, "pose"),
            "face": keypoints_key(job_id, "face")}


def final_refs(job: ResolvedJob, bucket: str, known: dict[str, ObjectRef] | None = None) -> dict[str, ObjectRef]:
    """Every name the job will have, keys final (the partial indexes are rewritten at the same keys;
    keypoints appear when preprocessing ends: nothing downstream reads them before)."""
    prefixes = stream_prefixes(job.job_id)
    return {**(known or {}),
            **{_NAMES[s]: ObjectRef(bucket=bucket, key=index_key(prefixes[s])) for s in STREAMS},
            "keypoints": ObjectRef(bucket=bucket, key=keypoints_key(job.job_id, "keypoints.npy")),
            "keypoints_meta": ObjectRef(bucket=bucket, key=keypoints_key(job.job_id, "keypoints.json"))}


def _index(job: ResolvedJob, stream: str, chunks: list[ChunkInfo], face_size: int, meta: dict[str, Any],
           complete: bool) -> FramesIndex:
    w, h = (face_size, face_size) if stream == "face" else (job.width, job.height)
    return FramesIndex(width=w, height=h, fps=job.fps, frames=sum(c.frames for c in chunks), chunk_frames=CHUNK_FRAMES,
                       chunks=chunks, meta={"stream": stream, **meta}, complete=complete)


async def write_partial(job: ResolvedJob, storage: ObjectStore, stored: dict[str, list[ChunkInfo]], ready: int,
                        face_size: int) -> None:
    """Rewrite the three partial indexes (``complete: false``) to serve frames ``[0, ready)``."""
    prefixes = stream_prefixes(job.job_id)
    await asyncio.gather(*(storage.put_bytes(index_key(prefixes[s]), index_json(
        _index(job, s, _upto(stored[s], ready), face_size, {"streaming": True}, complete=False)), "application/json")
        for s in STREAMS))


def ready_frames(stored: dict[str, list[ChunkInfo]]) -> int:
    return min(sum(c.frames for c in stored[s]) for s in STREAMS)


@dataclass
class PartOutput:
    """What processing frames ``[start, end)`` stored: each stream's chunks, the keypoint rows, the counts."""

    chunks: dict[str, list[ChunkInfo]]
    keypoints: np.ndarray
    stats: AnimateStats


Progress = Callable[[dict[str, list[ChunkInfo]], AnimateStats], Awaitable[None]]
"""Called after every stored chunk batch with the chunks stored without a gap from the part's start."""


async def process_frames(job: ResolvedJob, video: bytes, storage: ObjectStore, limits: MediaLimits, workers: int,
                         face_size: int, *, start: int, end: int, part_frames: int, step_frames: int = CHUNK_FRAMES,
                         on_stored: Progress | None = None,
                         should_stop: Callable[[], Awaitable[None]] | None = None) -> PartOutput:
    """Output frames ``[start, end)`` of an animate job: chunks stored at their final keys; the same bytes
    whichever worker (and however many parts) produced them (see ``AnimateRun``). ``should_stop`` is awaited
    between steps (it raises to stop)."""
    estimator = await asyncio.to_thread(shared_estimator, workers)
    run = await asyncio.to_thread(
        AnimateRun, video, width=job.width, height=job.height, fps=job.fps, num_frames=job.num_frames,
        limits=limits, estimator=estimator, face_size=face_size, chunk_frames=CHUNK_FRAMES, start=start, end=end,
        reset_every=part_frames,
    )

    async def stored() -> None:
        assert on_stored is not None
        await on_stored(uploader.stored(), run.stats)

    uploader = _Uploader(storage, stream_prefixes(job.job_id), on_stored=stored if on_stored else None, base=start)
    try:
        while not run.done:
            if should_stop is not None:
                await should_stop()
            batch = await asyncio.to_thread(run.step, step_frames)
            await uploader.submit(batch)
        await uploader.drain()
    finally:
        uploader.cancel()
        await asyncio.to_thread(run.close)
    chunks = {s: sorted(uploader.chunks[s], key=lambda c: c.start) for s in STREAMS}
    return PartOutput(chunks, run.keypoints(), run.stats)


async def store_final(job: ResolvedJob, storage: ObjectStore, chunks: dict[str, list[ChunkInfo]],
                      keypoints: np.ndarray, stats: AnimateStats, face_size: int) -> dict[str, ObjectRef]:
    """keypoints.npy, keypoints.json, then the three complete indexes (written last)."""
    jid = job.job_id
    # deterministic content only (no timing, no worker count): the stored bytes are the same for any
    # number of worker threads or processes; those go to the log
    meta = {"source_frames": stats.source_frames, "padded_frames": stats.padded_frames,
            "detected_frames": stats.detected_frames}
    refs: dict[str, ObjectRef] = {}
    buf = io.BytesIO()
    np.save(buf, keypoints, allow_pickle=False)
    refs["keypoints"] = await storage.put_bytes(keypoints_key(jid, "keypoints.npy"), buf.getvalue(),
                                                "application/x-npy")
    sidecar = schema(len(keypoints), job.width, job.height, job.fps, **meta)
    refs["keypoints_meta"] = await storage.put_bytes(keypoints_key(jid, "keypoints.json"),
                                                     json.dumps(sidecar, indent=1).encode(), "application/json")
    prefixes = stream_prefixes(jid)
    for stream in STREAMS:
        index = _index(job, stream, chunks[stream], face_size, meta, complete=True)
        refs[_NAMES[stream]] = await storage.put_bytes(index_key(prefixes[stream]), index_json(index),
                                                       "application/json")
    return refs


async def _animate(job: ResolvedJob, video: bytes, storage: ObjectStore, limits: MediaLimits, workers: int,
                   face_size: int, require_person: bool, known: dict[str, ObjectRef] | None = None,
                   on_ready: OnReady | None = None, part_frames: int = 256) -> dict[str, ObjectRef]:
    jid = job.job_id
    t0 = time.perf_counter()
    streaming_refs = final_refs(job, getattr(storage, "bucket", ""), known)
    announced = 0

    async def announce(stored: dict[str, list[ChunkInfo]], stats: AnimateStats) -> None:
        nonlocal announced
        ready = ready_frames(stored)
        if on_ready is None or ready <= announced or stats.detected_frames == 0:
            return
        await write_partial(job, storage, stored, ready, face_size)
        announced = ready
        await on_ready(streaming_refs, ready)

    # small steps when streaming: a chunk whose encode finished is uploaded (and announced) within STEP_FRAMES
    out = await process_frames(job, video, storage, limits, workers, face_size, start=0, end=job.num_frames,
                               part_frames=part_frames, step_frames=STEP_FRAMES if on_ready else CHUNK_FRAMES,
                               on_stored=announce if on_ready is not None else None)
    stats = out.stats
    if require_person and stats.detected_frames == 0:
        raise InputUnsupported(f"no person was detected in any of the {stats.source_frames} driving video frames")
    refs = await store_final(job, storage, out.chunks, out.keypoints, stats, face_size)
    elapsed = time.perf_counter() - t0
    log.info("animate_preprocessed", job_id=jid, frames=len(out.keypoints), streamed=announced > 0, parts=1,
             workers=workers, elapsed_s=round(elapsed, 3),
             fps_processed=round(stats.source_frames / elapsed, 1) if elapsed else None,
             source_frames=stats.source_frames, padded_frames=stats.padded_frames,
             detected_frames=stats.detected_frames)
    return refs


def _upto(chunks: list[ChunkInfo], frames: int) -> list[ChunkInfo]:
    """The leading chunks holding frames [0, frames) (chunk boundaries are the same in every stream)."""
    out: list[ChunkInfo] = []
    for c in chunks:
        if c.start >= frames:
            break
        out.append(c)
    return out
