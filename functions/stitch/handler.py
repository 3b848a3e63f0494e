"""stitch: join the rendered segments into ``jobs/<job_id>/output.mp4`` and complete the job.

in:  ``videogen.work.stitch`` (StitchRequest)
out: ``output.mp4`` (written atomically), ``job.succeeded`` with output info + presigned URL
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from pathlib import Path

from functions.stitch.blend import Method
from runtime.jobs import CANCELLED, TERMINAL
from runtime.logging import get_logger
from runtime.ports import Ports
from runtime.work import WorkItem
from schemas.messages import (
    EventType,
    JobEvent,
    OutputInfo,
    StitchRequest,
    SucceededData,
)
from schemas.names import output_key

log = get_logger(stage="stitch")

# Cross-fade measured the smaller seam (bench/seams.py); latent blend needs the real VAE to judge.
STITCH_METHOD: Method = "crossfade"


async def _assemble_multi(req: StitchRequest, ports: Ports, workdir: Path) -> tuple[bytes, int]:
    """Download every segment, drop/blend the overlaps, produce exactly T frames.

    Segments are remuxed packet by packet; only the blended overlap frames are re-encoded."""
    from functions.stitch.assemble import stitch_mp4

    paths: list[Path] = []
    for seg in req.segments:
        p = workdir / f"{seg.index}.mp4"
        p.write_bytes(await ports.storage.get_bytes(seg.segment.key, bucket=seg.segment.bucket))
        paths.append(p)
    out = workdir / "output.mp4"
    overlaps = [s.overlap_frames for s in req.segments[1:]]
    report = await asyncio.to_thread(stitch_mp4, paths, overlaps, req.job.num_frames, out, fps=req.job.fps,
                                     method=STITCH_METHOD)
    log.info("stitched", job_id=req.job.job_id, segments=len(paths), frames=report.frames,
             remuxed_frames=report.remuxed_frames, encoded_frames=report.encoded_frames)
    return out.read_bytes(), report.frames


async def handle_stitch(payload: bytes, delivery: WorkItem, ports: Ports) -> None:
    req = StitchRequest.model_validate_json(payload)
    job = req.job
    if (state := await ports.guard.stopped(job.job_id, among=TERMINAL)) is not None:
        log.info("job_already_finished", job_id=job.job_id, state=state.value)
        return
    key = output_key(job.job_id)
    segs = sorted(req.segments, key=lambda s: s.index)
    first = segs[0]
    if len(segs) == 1 and first.frames == job.num_frames:
        # one segment covering exactly T frames: a server-side copy (no download, no re-encode)
        ref = await ports.storage.copy(first.segment.key, key, src_bucket=first.segment.bucket,
                                       size=first.segment.size)
        sha, size, frames = first.sha256, ref.size, first.frames
    else:
        with tempfile.TemporaryDirectory(prefix=f"stitch-{job.job_id}-") as tmp:
            data, frames = await _assemble_multi(req.model_copy(update={"segments": segs}), ports, Path(tmp))
        sha, size = hashlib.sha256(data).hexdigest(), len(data)
        await ports.storage.put_atomic(key, data, "video/mp4")
    output = OutputInfo(
        bucket=ports.storage.bucket, key=key, size=size, sha256=sha, duration_s=round(frames / job.fps, 4),
        frames=frames, width=first.width, height=first.height, fps=float(job.fps),
    )
    url, expires = await ports.storage.presign_get(key, job.presign_ttl_s)
    data_s = SucceededData(output=output, url=url, url_expires_at=expires)
    stored = await ports.tracker.record(
        JobEvent.build(job.job_id, EventType.SUCCEEDED, data_s),
        output=output, url=url, url_expires_at=expires, segments_done=len(segs),
    )
    if await ports.guard.stopped(job.job_id, among=CANCELLED, status=stored) is not None:
        # cancelled while stitching: the cancel won the compare-and-set, so no job.succeeded was
        # published; the canceller may have cleaned up before output.mp4 existed: the guard deleted it
        log.info("output_discarded_job_cancelled", job_id=job.job_id)
        return
    log.info("job_succeeded", job_id=job.job_id, key=key, frames=frames, size=size)
