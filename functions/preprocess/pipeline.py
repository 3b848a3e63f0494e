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
from typing import Any

import numpy as np

from functions.preprocess.animate import STREAMS, AnimateRun
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
                     require_person: bool = True, on_ready: OnReady | None = None) -> dict[str, ObjectRef]:
    """Fetch and validate the job's inputs, store originals and derived objects; see module doc.

    Raises ``InputRejected`` subclasses (permanent: job.rejected with the error's code) or
    ``Retryable`` (network/storage trouble). ``require_person``: an animate job whose driving
    video shows nobody in any frame is rejected (``input_unsupported``). ``on_ready`` (animate): stream
    the frame products (see :data:`OnReady`); called only once a person was seen, so a video with nobody
    in it is still rejected before anything is planned.
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
        refs.update(await _animate(job, video, storage, limits, resolve_workers(settings, workers),
                                   face_size or default_face_size(job), require_person, refs, on_ready))
    log.info("preprocess_done", job_id=jid, task=job.task.value, objects=len(refs),
             elapsed_s=round(time.perf_counter() - t0, 3))
    return refs


class _Uploader:
    """Uploads finished chunks concurrently with the next processing step (at most 2 batches
    in flight, so encoded bytes waiting in memory stay bounded) and records their refs."""

    def __init__(self, storage: ObjectStore, prefixes: dict[str, str],
                 on_stored: Callable[[], Awaitable[None]] | None = None) -> None:
        self._storage = storage
        self._prefixes = prefixes
        self._on_stored = on_stored
        self._announcing = asyncio.Lock()
        self._inflight: list[asyncio.Future[Any]] = []
        self.chunks: dict[str, list[ChunkInfo]] = {name: [] for name in prefixes}

    def stored(self) -> dict[str, list[ChunkInfo]]:
        """Each stream's chunks stored so far without a gap from frame 0 (uploads finish in any order)."""
        out: dict[str, list[ChunkInfo]] = {}
        for name, chunks in self.chunks.items():
            prefix: list[ChunkInfo] = []
            for c in sorted(chunks, key=lambda c: c.start):
                if c.start != sum(p.frames for p in prefix):
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


def _index(job: ResolvedJob, stream: str, chunks: list[ChunkInfo], face_size: int, meta: dict[str, Any],
           complete: bool) -> FramesIndex:
    w, h = (face_size, face_size) if stream == "face" else (job.width, job.height)
    return FramesIndex(width=w, height=h, fps=job.fps, frames=sum(c.frames for c in chunks), chunk_frames=CHUNK_FRAMES,
                       chunks=chunks, meta={"stream": stream, **meta}, complete=complete)


async def _animate(job: ResolvedJob, video: bytes, storage: ObjectStore, limits: MediaLimits, workers: int,
                   face_size: int, require_person: bool, known: dict[str, ObjectRef] | None = None,
                   on_ready: OnReady | None = None) -> dict[str, ObjectRef]:
    jid = job.job_id
    t0 = time.perf_counter()
    estimator = await asyncio.to_thread(shared_estimator, workers)
    run = await asyncio.to_thread(
        AnimateRun, video, width=job.width, height=job.height, fps=job.fps, num_frames=job.num_frames,
        limits=limits, estimator=estimator, face_size=face_size, chunk_frames=CHUNK_FRAMES,
    )
    prefixes = {"driving": frames_key(jid, "driving"), "pose": keypoints_key(jid, "pose"),
                "face": keypoints_key(jid, "face")}
    bucket = getattr(storage, "bucket", "")
    # every name the job will have, keys final (the partial indexes are rewritten at the same keys;
    # keypoints appear when preprocessing ends: nothing downstream reads them before)
    streaming_refs = {**(known or {}),
                      **{_NAMES[s]: ObjectRef(bucket=bucket, key=index_key(prefixes[s])) for s in STREAMS},
                      "keypoints": ObjectRef(bucket=bucket, key=keypoints_key(jid, "keypoints.npy")),
                      "keypoints_meta": ObjectRef(bucket=bucket, key=keypoints_key(jid, "keypoints.json"))}
    announced = 0

    async def announce() -> None:
        nonlocal announced
        stored = uploader.stored()
        ready = min(sum(c.frames for c in stored[s]) for s in STREAMS)
        if on_ready is None or ready <= announced or run.stats.detected_frames == 0:
            return
        partial = {"workers": workers, "streaming": True}
        await asyncio.gather(*(storage.put_bytes(index_key(prefixes[s]), index_json(
            _index(job, s, _upto(stored[s], ready), face_size, partial, complete=False)), "application/json")
            for s in STREAMS))
        announced = ready
        await on_ready(streaming_refs, ready)

    uploader = _Uploader(storage, prefixes, on_stored=announce if on_ready is not None else None)
    try:
        while not run.done:
            # small steps: a chunk whose encode finished is uploaded (and announced) within STEP_FRAMES
            batch = await asyncio.to_thread(run.step, STEP_FRAMES if on_ready is not None else CHUNK_FRAMES)
            await uploader.submit(batch)
        await uploader.drain()
    finally:
        uploader.cancel()
        await asyncio.to_thread(run.close)
    stats = run.stats
    if require_person and stats.detected_frames == 0:
        raise InputUnsupported(f"no person was detected in any of the {stats.source_frames} driving video frames")
    elapsed = time.perf_counter() - t0
    meta = {"source_frames": stats.source_frames, "padded_frames": stats.padded_frames,
            "detected_frames": stats.detected_frames, "workers": workers, "elapsed_s": round(elapsed, 3)}
    refs: dict[str, ObjectRef] = {}
    keypoints = run.keypoints()
    buf = io.BytesIO()
    np.save(buf, keypoints, allow_pickle=False)
    refs["keypoints"] = await storage.put_bytes(keypoints_key(jid, "keypoints.npy"), buf.getvalue(),
                                                "application/x-npy")
    sidecar = schema(len(keypoints), job.width, job.height, job.fps, **meta)
    refs["keypoints_meta"] = await storage.put_bytes(keypoints_key(jid, "keypoints.json"),
                                                     json.dumps(sidecar, indent=1).encode(), "application/json")
    for stream in STREAMS:
        chunks = sorted(uploader.chunks[stream], key=lambda c: c.start)
        index = _index(job, stream, chunks, face_size, meta, complete=True)
        refs[_NAMES[stream]] = await storage.put_bytes(index_key(prefixes[stream]), index_json(index),
                                                       "application/json")
    log.info("animate_preprocessed", job_id=jid, frames=len(keypoints), streamed=announced > 0,
             fps_processed=round(stats.source_frames / elapsed, 1) if elapsed else None, **meta)
    return refs


def _upto(chunks: list[ChunkInfo], frames: int) -> list[ChunkInfo]:
    """The leading chunks holding frames [0, frames) (chunk boundaries are the same in every stream)."""
    out: list[ChunkInfo] = []
    for c in chunks:
        if c.start >= frames:
            break
        out.append(c)
    return out
