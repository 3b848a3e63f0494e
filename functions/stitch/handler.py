"""stitch: join the rendered segments into ``jobs/<job_id>/output.mp4`` and complete the job.

in:  ``videogen.work.stitch`` (StitchRequest)
out: ``output.mp4`` (written atomically), ``thumbnail.jpg``, ``spritesheet.jpg`` and ``output.tail.npy``
     next to it, ``job.succeeded`` with output info + presigned URL (+ the previews' refs)

An extension (``job.extend``) is stitched as its source's output followed by its segments, the first
overlapping the source's last ``condition_frames`` frames.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from pathlib import Path

from functions.stitch.blend import Method
from functions.stitch.finish import complete, output_info, store_previews, tail_frames_for
from runtime.jobs import TERMINAL
from runtime.logging import get_logger
from runtime.ports import Ports
from runtime.work import WorkItem
from schemas.messages import ObjectRef, StitchRequest
from schemas.names import output_key

log = get_logger(stage="stitch")

# Cross-fade measured the smaller seam (bench/seams.py); latent blend needs the real VAE to judge.
STITCH_METHOD: Method = "crossfade"


async def _assemble_multi(req: StitchRequest, ports: Ports, workdir: Path) -> tuple[bytes, int]:
    """Download every segment, drop/blend the overlaps, produce exactly the job's output frames.

    Segments are remuxed packet by packet; only the blended overlap frames are re-encoded. An
    extension's source video comes first, overlapping segment 0 by ``condition_frames``."""
    from functions.stitch.assemble import stitch_mp4

    job = req.job
    refs = [(str(seg.index), seg.segment) for seg in req.segments]
    overlaps = [s.overlap_frames for s in req.segments[1:]]
    if job.extend is not None:
        refs.insert(0, ("source", job.extend.output))
        overlaps.insert(0, job.extend.condition_frames)
    paths: list[Path] = []
    for name, ref in refs:
        p = workdir / f"{name}.mp4"
        p.write_bytes(await ports.storage.get_bytes(ref.key, bucket=ref.bucket))
        paths.append(p)
    out = workdir / "output.mp4"
    report = await asyncio.to_thread(stitch_mp4, paths, overlaps, job.output_frames, out, fps=job.fps,
                                     method=STITCH_METHOD)
    log.info("stitched", job_id=job.job_id, segments=len(req.segments), frames=report.frames,
             remuxed_frames=report.remuxed_frames, encoded_frames=report.encoded_frames,
             extends=job.extend.job_id if job.extend else None)
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
    tail_n = tail_frames_for(job.model)
    if job.extend is None and len(segs) == 1 and first.frames == job.num_frames:
        # one segment covering exactly T frames: a server-side copy (no re-encode); the segment is
        # downloaded for the previews only, which are made while the copy runs
        async def previews() -> tuple[ObjectRef, ObjectRef] | None:
            data = await ports.storage.get_bytes(first.segment.key, bucket=first.segment.bucket)
            return await store_previews(ports, job.job_id, data, tail_n, first.frames)

        ref, refs, (url, expires) = await asyncio.gather(
            ports.storage.copy(first.segment.key, key, src_bucket=first.segment.bucket, size=first.segment.size),
            previews(), ports.storage.presign_get(key, job.presign_ttl_s))
        sha, size, frames = first.sha256, ref.size, first.frames
    else:
        with tempfile.TemporaryDirectory(prefix=f"stitch-{job.job_id}-") as tmp:
            data, frames = await _assemble_multi(req.model_copy(update={"segments": segs}), ports, Path(tmp))
        sha, size = hashlib.sha256(data).hexdigest(), len(data)
        _, refs, (url, expires) = await asyncio.gather(ports.storage.put_atomic(key, data, "video/mp4"),
                                                       store_previews(ports, job.job_id, data, tail_n, frames),
                                                       ports.storage.presign_get(key, job.presign_ttl_s))
    output = output_info(job, ports.storage.ref(key, size=size), sha, frames, first.width, first.height)
    await complete(ports, job, output, url, expires, refs, len(segs))
