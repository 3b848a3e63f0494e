"""Completing a job once its output exists: previews next to it, ``job.succeeded`` with a presigned URL.

Two callers: the stitch stage (``functions.stitch.handler``) after it joined the segments, and the
runner for a job whose plan is one window that is exactly the output (``finishes_in_runner``): that
segment *is* ``output.mp4``, so the runner stores it there and completes the job itself, with no
chain or stitch hop (a one-segment job's chain -> stitch hand-off was ~17 ms of its ~140 ms). The
events are the same either way: ``job.segment_completed`` then ``job.succeeded``.
"""

from __future__ import annotations

import asyncio
import io
from datetime import datetime
from typing import Any

import av
import numpy as np

from functions.planner.plan import default_min_overlap
from functions.stitch.previews import make_previews
from runtime.jobs import CANCELLED
from runtime.logging import get_logger
from runtime.ports import Ports
from schemas.messages import (
    EventType,
    JobEvent,
    JobState,
    JobStatus,
    ObjectRef,
    OutputInfo,
    ResolvedJob,
    SegmentJob,
    SucceededData,
)
from schemas.names import output_tail_key, spritesheet_key, thumbnail_key
from schemas.registry import MODELS

log = get_logger(component="finish")


def finishes_in_runner(seg: SegmentJob) -> bool:
    """One window covering exactly the job's frames (no extension, no padding to trim): the
    rendered segment is the output, byte for byte what stitch's server-side copy would make."""
    return seg.count == 1 and seg.index == 0 and seg.job.extend is None and seg.frames == seg.job.num_frames


def tail_frames_for(model: str) -> int:
    """Output frames kept as ``output.tail.npy``: what an extension is conditioned on by default."""
    spec = MODELS.get(model)
    return default_min_overlap(spec) if spec is not None else 5


async def store_previews(ports: Ports, job_id: str, mp4: bytes, tail_frames: int,
                         frames: int | None = None, *, tail: bool = True) -> tuple[ObjectRef, ObjectRef] | None:
    """Thumbnail + spritesheet JPEGs and (``tail``) the output's last frames next to output.mp4, from one
    decode of ``mp4`` (``frames``: its frame count, if known); None (and a warning) when the output
    cannot be decoded: the job still succeeds, the gateway makes them later."""
    try:
        previews = await asyncio.to_thread(make_previews, mp4, tail_frames, frames=frames)
    except (ValueError, av.error.FFmpegError) as e:
        log.warning("previews_failed", job_id=job_id, error=str(e))
        return None
    jpegs = store_jpegs(ports, job_id, previews.thumbnail, previews.spritesheet)
    if not tail:
        return await jpegs
    (thumb, sheet), _ = await asyncio.gather(jpegs, _put_tail(ports, job_id, previews.tail))
    return thumb, sheet


async def store_jpegs(ports: Ports, job_id: str, thumbnail: bytes, spritesheet: bytes) -> tuple[ObjectRef, ObjectRef]:
    """``thumbnail.jpg`` and ``spritesheet.jpg`` next to output.mp4 (the runner makes them from the
    frames as rendered, ``previews.frame_jpegs``)."""
    thumb, sheet = await asyncio.gather(
        ports.storage.put_bytes(thumbnail_key(job_id), thumbnail, "image/jpeg"),
        ports.storage.put_bytes(spritesheet_key(job_id), spritesheet, "image/jpeg"))
    return thumb, sheet


async def _put_tail(ports: Ports, job_id: str, tail: np.ndarray) -> ObjectRef:
    buf = io.BytesIO()
    np.save(buf, tail, allow_pickle=False)
    return await ports.storage.put_bytes(output_tail_key(job_id), buf.getvalue(), "application/octet-stream")


async def complete(ports: Ports, job: ResolvedJob, output: OutputInfo, url: str, expires: datetime,
                   previews: tuple[ObjectRef, ObjectRef] | None, segments_done: int, *,
                   by: str = "stitch", segment_done: JobEvent | None = None) -> JobStatus | None:
    """Record ``job.succeeded`` (status CAS, then the event); a cancel that won the CAS gets no
    event, and its output is deleted (the canceller may have cleaned up before it existed).

    ``segment_done``: the job's last ``job.segment_completed``, not recorded yet (the runner completing
    a one-window job): both changes go in one status write, both events are published in order."""
    data = SucceededData(output=output, url=url, url_expires_at=expires,
                         thumbnail=previews[0] if previews else None, spritesheet=previews[1] if previews else None)
    succeeded = JobEvent.build(job.job_id, EventType.SUCCEEDED, data)
    fields: dict[str, Any] = {"output": output, "url": url, "url_expires_at": expires,
                              "segments_done": segments_done}
    if segment_done is None:
        stored = await ports.tracker.record(succeeded, **fields)
    else:
        stored = await ports.tracker.record(segment_done, state=JobState.STITCHING, then=[succeeded],
                                            segments_total=segments_done, **fields)
    if await ports.guard.stopped(job.job_id, among=CANCELLED, status=stored) is not None:
        log.info("output_discarded_job_cancelled", job_id=job.job_id, by=by)
        return stored
    if stored is None or stored.state != JobState.SUCCEEDED:  # another ending (a failure) won
        log.info("job_ended_before_success", job_id=job.job_id, state=stored.state.value if stored else None, by=by)
        return stored
    log.info("job_succeeded", job_id=job.job_id, key=output.key, frames=output.frames, size=output.size, by=by)
    return stored


def output_info(job: ResolvedJob, ref: ObjectRef, sha256: str, frames: int, width: int, height: int) -> OutputInfo:
    return OutputInfo(bucket=ref.bucket, key=ref.key, size=ref.size, sha256=sha256,
                      duration_s=round(frames / job.fps, 4), frames=frames, width=width, height=height,
                      fps=float(job.fps))
