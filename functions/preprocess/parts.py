"""A long animate job's preprocessing on several preprocess workers: parts of whole 32-frame chunks.

in:  ``videogen.work.preprocess_part`` (PreprocessPart)  -> chunks of frames [start, start + frames) at their
     final keys, then ``keypoints/parts/part-<k>.npy`` (keypoint rows) and ``part-<k>.json`` (the record,
     written last: "part k is stored")

The worker holding the submission (``handler.handle_submit``) publishes parts 1..N-1 (``Nats-Msg-Id =
prep:<job>:p<k>``), processes part 0 itself, then follows the records in order: readiness is the stored
*prefix* of parts (``ready_frames`` only ever covers parts 0..k all stored), and after the last it writes
``keypoints.npy``, ``keypoints.json`` and the complete indexes (the join). Every part decodes the video
from its start (frames before the part are decoded, not converted), so the resampling is that of one
run; pose is per frame; chunks are independent MP4s; and the face box's smoothing restarts at every part
boundary in every mode (``AnimateRun(reset_every=...)``): the stored objects are byte for byte those of
one worker doing the whole job (tested: 1 process vs 2).

A redelivered part whose record exists is acknowledged without work; one without rewrites the same
bytes. A part of a cancelled or failed job stops between steps (a cancelled job's objects are removed).
A part that fails for good (e.g. the video turns out corrupt there) fails the job with its error's code
(the stage records ``job.failed``), which stops the joiner and the other parts.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from functions.preprocess.animate import STREAMS, AnimateStats
from functions.preprocess.errors import InputUnsupported, JobStopped
from functions.preprocess.limits import DEFAULT_LIMITS, MediaLimits
from functions.preprocess.pipeline import (
    CHUNK_FRAMES,
    STEP_FRAMES,
    OnReady,
    Progress,
    final_refs,
    process_frames,
    ready_frames,
    resolve_workers,
    store_final,
    write_partial,
)
from runtime.consumer import Delivery
from runtime.frames_store import ChunkInfo
from runtime.jobs import STOPPED
from runtime.logging import get_logger
from runtime.objects import ObjectStore
from runtime.ports import Ports
from runtime.storage import ObjectNotFound
from schemas.messages import ObjectRef, PreprocessPart, ResolvedJob
from schemas.names import SUBJECT_WORK_PREPROCESS_PART, preprocess_part_key, preprocess_part_msg_id

log = get_logger(stage="preprocess-part")

POLL_S = 0.25
"""How often the joiner looks for the next part's record."""


class Splitter(Protocol):
    """What the joiner needs from its stage: hand parts out, and say whether the job was stopped."""

    async def publish(self, parts: list[PreprocessPart]) -> None: ...

    async def check(self) -> None:
        """Raise :class:`JobStopped` when the job was cancelled or failed."""
        ...


class PartRecord(BaseModel):
    """``keypoints/parts/part-<k>.json``: what part k stored (written after its chunks and keypoint rows)."""

    model_config = ConfigDict(frozen=True)
    part: int
    start: int
    frames: int
    source_frames: int
    padded_frames: int
    detected_frames: int
    chunks: dict[str, list[ChunkInfo]]


def part_specs(job: ResolvedJob, video: ObjectRef, part_frames: int, face_size: int,
               require_person: bool) -> list[PreprocessPart]:
    if part_frames % CHUNK_FRAMES:
        raise ValueError(f"part_frames={part_frames} is not a multiple of {CHUNK_FRAMES}")
    starts = list(range(0, job.num_frames, part_frames))
    return [PreprocessPart(job=job, part=k, parts=len(starts), part_frames=part_frames, start=a,
                           frames=min(part_frames, job.num_frames - a), video=video, face_size=face_size,
                           require_person=require_person) for k, a in enumerate(starts)]


async def run_part(spec: PreprocessPart, video: bytes, storage: ObjectStore, limits: MediaLimits, workers: int, *,
                   on_stored: Progress | None = None, should_stop: Callable[[], Awaitable[None]] | None = None,
                   step_frames: int = CHUNK_FRAMES) -> PartRecord:
    """Process one part and store it: chunks, keypoint rows, then its record."""
    job = spec.job
    out = await process_frames(job, video, storage, limits, workers, spec.face_size, start=spec.start,
                               end=spec.start + spec.frames, part_frames=spec.part_frames, step_frames=step_frames,
                               on_stored=on_stored, should_stop=should_stop)
    got = {s: sum(c.frames for c in out.chunks[s]) for s in STREAMS}
    if set(got.values()) != {spec.frames} or len(out.keypoints) != spec.frames:
        raise RuntimeError(f"part {spec.part} of {job.job_id}: made {got} frames / {len(out.keypoints)} rows, "
                           f"expected {spec.frames}")
    buf = io.BytesIO()
    np.save(buf, out.keypoints, allow_pickle=False)
    await storage.put_bytes(preprocess_part_key(job.job_id, spec.part, "npy"), buf.getvalue(), "application/x-npy")
    st = out.stats
    record = PartRecord(part=spec.part, start=spec.start, frames=spec.frames, source_frames=st.source_frames,
                        padded_frames=st.padded_frames, detected_frames=st.detected_frames, chunks=out.chunks)
    await storage.put_bytes(preprocess_part_key(job.job_id, spec.part), record.model_dump_json().encode(),
                            "application/json")
    return record


async def load_record(storage: ObjectStore, job_id: str, part: int) -> PartRecord | None:
    try:
        raw = await storage.get_bytes(preprocess_part_key(job_id, part), max_bytes=16 << 20)
    except ObjectNotFound:
        return None
    return PartRecord.model_validate_json(raw)


def _merge(records: list[PartRecord], extra: dict[str, list[ChunkInfo]] | None = None) -> dict[str, list[ChunkInfo]]:
    out = {s: [c for r in records for c in r.chunks[s]] for s in STREAMS}
    for s, chunks in (extra or {}).items():
        out[s] += chunks
    return out


async def animate_in_parts(job: ResolvedJob, video: bytes, video_ref: ObjectRef, storage: ObjectStore,
                           limits: MediaLimits, workers: int, face_size: int, require_person: bool,
                           known: dict[str, ObjectRef], on_ready: OnReady | None, split: Splitter,
                           part_frames: int) -> dict[str, ObjectRef]:
    """The joiner: hand out parts 1..N-1, process part 0 here, follow the stored prefix, write the products."""
    jid = job.job_id
    t0 = time.perf_counter()
    specs = part_specs(job, video_ref, part_frames, face_size, require_person)
    await split.publish(specs[1:])
    refs = final_refs(job, getattr(storage, "bucket", ""), known)
    announced = 0

    async def announce(stored: dict[str, list[ChunkInfo]], detected: int) -> None:
        nonlocal announced
        ready = ready_frames(stored)
        if on_ready is None or ready <= announced or detected == 0:
            return
        await write_partial(job, storage, stored, ready, face_size)
        announced = ready
        await on_ready(refs, ready)

    async def first_part_progress(stored: dict[str, list[ChunkInfo]], stats: AnimateStats) -> None:
        await announce(stored, stats.detected_frames)

    records: list[PartRecord] = []
    own = await load_record(storage, jid, 0)  # a redelivered submission: part 0 may be stored already
    if own is None:
        own = await run_part(specs[0], video, storage, limits, workers, should_stop=split.check,
                             on_stored=first_part_progress if on_ready is not None else None,
                             step_frames=STEP_FRAMES if on_ready is not None else CHUNK_FRAMES)
    records.append(own)
    waited = 0.0
    while True:
        await announce(_merge(records), sum(r.detected_frames for r in records))
        if len(records) == len(specs):
            break
        rec = await load_record(storage, jid, len(records))
        if rec is None:
            await split.check()
            await asyncio.sleep(POLL_S)
            waited += POLL_S
            continue
        records.append(rec)
    detected = sum(r.detected_frames for r in records)
    source = sum(r.source_frames for r in records)
    if require_person and detected == 0:
        raise InputUnsupported(f"no person was detected in any of the {source} driving video frames")
    rows = [np.load(io.BytesIO(await storage.get_bytes(preprocess_part_key(jid, r.part, "npy"))),
                    allow_pickle=False) for r in records]
    stats = AnimateStats(source_frames=source, padded_frames=sum(r.padded_frames for r in records),
                         detected_frames=detected)
    keypoints = np.concatenate(rows).astype(np.float32, copy=False)
    out = await store_final(job, storage, _merge(records), keypoints, stats, face_size)
    elapsed = time.perf_counter() - t0
    log.info("animate_preprocessed", job_id=jid, frames=len(keypoints), streamed=announced > 0, parts=len(specs),
             workers=workers, elapsed_s=round(elapsed, 3), waited_for_parts_s=round(waited, 2),
             source_frames=source, padded_frames=stats.padded_frames, detected_frames=detected)
    return out


class BusSplitter:
    """:class:`Splitter` on the bus: parts on ``videogen.work.preprocess_part``, stop = the job's status."""

    def __init__(self, job_id: str, ports: Ports) -> None:
        self.job_id = job_id
        self.ports = ports

    async def publish(self, parts: list[PreprocessPart]) -> None:
        for p in parts:
            await self.ports.bus.publish(SUBJECT_WORK_PREPROCESS_PART, p,
                                         msg_id=preprocess_part_msg_id(self.job_id, p.part))
        log.info("preprocess_parts_published", job_id=self.job_id, parts=len(parts) + 1)

    async def check(self) -> None:
        if (state := await self.ports.guard.stopped(self.job_id, among=STOPPED, clean_up=False)) is not None:
            raise JobStopped(state.value)


async def handle_part(payload: bytes, delivery: Delivery, ports: Ports) -> None:
    spec = PreprocessPart.model_validate_json(payload)
    jid = spec.job.job_id
    if (state := await ports.guard.stopped(jid, among=STOPPED)) is not None:
        log.info("preprocess_part_skipped_job_stopped", job_id=jid, part=spec.part, state=state.value)
        return
    if await load_record(ports.storage, jid, spec.part) is not None:
        log.info("preprocess_part_already_stored", job_id=jid, part=spec.part)  # a redelivery
        return
    t0 = time.perf_counter()
    limits = DEFAULT_LIMITS
    video = await ports.storage.get_bytes(spec.video.key, bucket=spec.video.bucket, max_bytes=limits.max_video_bytes)
    stop = BusSplitter(jid, ports)
    try:
        rec = await run_part(spec, video, ports.storage, limits, resolve_workers(ports.settings, None),
                             should_stop=stop.check)
    except JobStopped as e:
        await ports.guard.stopped(jid, among=STOPPED)  # a cancelled job's objects are removed
        log.info("preprocess_part_stopped", job_id=jid, part=spec.part, state=str(e))
        return
    if (state := await ports.guard.stopped(jid, among=STOPPED)) is not None:
        # cancelled while the last chunks were written: what this part stored goes too (idempotent)
        log.info("preprocess_part_stopped", job_id=jid, part=spec.part, state=state.value)
        return
    log.info("preprocess_part_done", job_id=jid, part=spec.part, of=spec.parts, start=spec.start, frames=spec.frames,
             detected_frames=rec.detected_frames, elapsed_s=round(time.perf_counter() - t0, 3))
