"""Resolve ``JobRequest.extend`` (v1.3): continue a finished video.

The source is looked up under the submitter's tenant (``job_key(tenant, extend.job_id)``), so another
tenant's job is simply not found. It must have succeeded and match the extension's model, size and
fps. Two objects are stored under the extension's inputs, so it no longer depends on the source's
objects once accepted (the source may be deleted or expire meanwhile):

* ``inputs/source.mp4``: a server-side copy of the source's output.mp4 (stitched in front of the new frames);
* ``inputs/condition.npy``: the source's last ``condition_frames`` frames (uint8 ``(O, H, W, 3)``), the
  conditioning of the extension's segment 0; taken from the source's ``output.tail.npy`` (stitch writes
  it) or, for jobs stitched before it did, decoded from the end of the source's output.

The extension renders ``O + num_frames`` frames: the first ``O`` are pinned to the condition (the same
latent replacement that chains long-video segments) and overlap the source's last ``O`` frames, which
stitch cross-fades like any segment boundary.
"""

from __future__ import annotations

import asyncio
import io

import numpy as np

from functions.planner.plan import default_min_overlap
from functions.preprocess.validate import RequestRejected
from runtime.ports import Ports
from runtime.storage import ObjectNotFound
from runtime.video import decode_range, probe_mp4
from schemas.errors import ErrorCode
from schemas.messages import ExtendSource, JobRequest, JobState, ResolvedJob
from schemas.names import extend_condition_key, extend_source_key, job_key, output_tail_key
from schemas.registry import MODELS


def _reject(message: str, code: ErrorCode, job_id: str) -> RequestRejected:
    return RequestRejected(message, code=code, job_id=job_id, details=[{"loc": ["extend", "job_id"]}])


def _tail(data: bytes, frames: int) -> np.ndarray | None:
    """The last ``frames`` frames of a stored tail .npy, or None when it holds fewer."""
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    if arr.ndim != 4 or arr.dtype != np.uint8 or arr.shape[0] < frames:
        return None
    return np.ascontiguousarray(arr[-frames:])


async def resolve_extend(job: ResolvedJob, req: JobRequest, tenant: str, ports: Ports) -> ResolvedJob:
    """``job`` with ``extend`` resolved and ``num_frames`` = rendered frames (raises RequestRejected)."""
    assert req.extend is not None
    spec = MODELS[job.model]
    frames = req.extend.condition_frames or default_min_overlap(spec)
    src_key = job_key(tenant, req.extend.job_id)
    if src_key == job.job_id:
        raise _reject("a job cannot extend itself", ErrorCode.INVALID_REQUEST, job.job_id)
    status, _ = await ports.tracker.status.get(src_key)
    if status is None:
        raise _reject(f"no job {req.extend.job_id!r} to extend", ErrorCode.EXTEND_SOURCE_NOT_FOUND, job.job_id)
    if status.state != JobState.SUCCEEDED or status.output is None:
        raise _reject(f"job {req.extend.job_id!r} has not succeeded ({status.state.value}); only a finished video "
                      "can be extended", ErrorCode.EXTEND_SOURCE_NOT_READY, job.job_id)
    out = status.output
    mismatches = [f"{name} {mine} != {theirs}" for name, mine, theirs in (
        ("model", job.model, status.model or job.model), ("width", job.width, out.width),
        ("height", job.height, out.height), ("fps", job.fps, round(out.fps))) if mine != theirs]
    if mismatches:
        raise _reject(f"extension does not match its source: {', '.join(mismatches)}", ErrorCode.EXTEND_INCOMPATIBLE,
                      job.job_id)
    if frames > out.frames:
        raise RequestRejected(f"condition_frames={frames} exceeds the source's {out.frames} frames",
                              code=ErrorCode.OUT_OF_RANGE, job_id=job.job_id,
                              details=[{"loc": ["extend", "condition_frames"]}])
    try:
        source = await ports.storage.copy(out.key, extend_source_key(job.job_id), src_bucket=out.bucket,
                                          size=out.size)
    except ObjectNotFound as e:
        raise _reject(f"job {req.extend.job_id!r} has no output any more", ErrorCode.EXTEND_SOURCE_NOT_FOUND,
                      job.job_id) from e
    tail: np.ndarray | None = None
    try:
        tail = _tail(await ports.storage.get_bytes(output_tail_key(src_key)), frames)
    except ObjectNotFound:
        pass
    if tail is None:  # stitched before stitch stored tails (or with fewer frames than asked for)
        data = await ports.storage.get_bytes(source.key)
        count = probe_mp4(data).frames
        tail = await asyncio.to_thread(decode_range, data, count - frames, count)
    buf = io.BytesIO()
    np.save(buf, tail, allow_pickle=False)
    condition = await ports.storage.put_bytes(extend_condition_key(job.job_id), buf.getvalue(),
                                              "application/octet-stream")
    ext = ExtendSource(job_id=src_key, output=source, frames=out.frames, condition=condition,
                       condition_frames=frames)
    return job.model_copy(update={"extend": ext, "num_frames": job.num_frames + frames})
