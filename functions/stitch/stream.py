"""The job's HLS stream in S3: write piece k when segment k is done, rewrite the playlist, close it.

Objects (keys from ``schemas.names``): ``stream_piece_key(job, k)`` (MPEG-TS) and ``playlist_key(job)``.
Every write is idempotent (a piece is a pure function of segments k-1 and k; the playlist is
re-derived from the plan and k), so a redelivered chain step rewrites the same thing. See
:mod:`functions.stitch.hls` for which frames are final when.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from functions.stitch.blend import Method
from functions.stitch.handler import STITCH_METHOD
from functions.stitch.hls import (
    PIECE_TYPE,
    PLAYLIST_TYPE,
    StreamPiece,
    build_piece,
    is_closed,
    playlist_text,
    stream_pieces,
)
from runtime.hls import close_playlist
from runtime.logging import get_logger
from runtime.storage import ObjectNotFound, Storage
from schemas.messages import JobPlan, ObjectRef, SegmentResult
from schemas.names import playlist_key, segment_result_key, stream_piece_key

__all__ = ["STREAM_METHOD", "StreamUpdate", "close_playlist", "plan_pieces_of", "publish_piece"]

log = get_logger(stage="stream")

STREAM_METHOD: Method = STITCH_METHOD
"""The stitcher's blend (the stream shows output.mp4's frames)."""


@dataclass(frozen=True)
class StreamUpdate:
    """What segment k added to the stream."""

    piece: StreamPiece
    object: ObjectRef
    url: str
    url_expires_at: datetime
    playlist_url: str
    playlist_url_expires_at: datetime
    playable_frames: int
    ended: bool


def plan_pieces_of(plan: JobPlan) -> list[StreamPiece] | None:
    return stream_pieces([(w.start_frame, w.frames, w.overlap_frames) for w in plan.windows], plan.job.num_frames)


async def _segment_bytes(storage: Storage, ref: ObjectRef) -> bytes:
    return await storage.get_bytes(ref.key, bucket=ref.bucket)


async def publish_piece(storage: Storage, plan: JobPlan, res: SegmentResult) -> StreamUpdate | None:
    """Build and store piece ``res.index`` and the playlist listing pieces ``0..res.index``.

    ``None`` when the plan is not streamable (a frame in three windows). Raises what storage raises
    (retryable: the chain step is redelivered)."""
    pieces = plan_pieces_of(plan)
    if pieces is None:
        return None
    job = plan.job
    k = res.index
    piece = pieces[k]
    if not await _still_streaming(storage, job.job_id, k):
        return None
    prev: bytes | None = None
    if k > 0 and res.overlap_frames:
        prev_res = SegmentResult.model_validate_json(await storage.get_bytes(segment_result_key(job.job_id, k - 1)))
        prev = await _segment_bytes(storage, prev_res.segment)
    seg = await _segment_bytes(storage, res.segment)
    with tempfile.TemporaryDirectory(prefix=f"stream-{job.job_id}-") as tmp:
        # files, not bytes: PyAV re-reads a segment once per clip
        seg_path = Path(tmp) / "seg.mp4"
        seg_path.write_bytes(seg)
        prev_path = None
        if prev is not None:
            prev_path = Path(tmp) / "prev.mp4"
            prev_path.write_bytes(prev)
        data = await asyncio.to_thread(build_piece, seg_path, prev_path, piece, res.overlap_frames, fps=job.fps,
                                       method=STREAM_METHOD)
    ref = await storage.put_bytes(stream_piece_key(job.job_id, k), data, PIECE_TYPE)
    ended = k + 1 >= len(pieces)
    text, entries = await _playlist(storage, plan, pieces, k + 1, ended)
    await storage.put_bytes(playlist_key(job.job_id), text.encode(), PLAYLIST_TYPE)
    purl, pexp = await storage.presign_get(playlist_key(job.job_id), job.presign_ttl_s)
    url, exp = entries[k]
    log.info("stream_piece_published", job_id=job.job_id, piece=k, frames=piece.frames, playable_frames=piece.stop,
             bytes=len(data), ended=ended)
    return StreamUpdate(piece=piece, object=ref, url=url, url_expires_at=exp, playlist_url=purl,
                        playlist_url_expires_at=pexp, playable_frames=piece.stop, ended=ended)


async def _still_streaming(storage: Storage, job_id: str, k: int) -> bool:
    """False once the stream was stopped: closed before piece ``k`` (a failure, a piece that could not be
    built) or never started. A redelivery of a piece already listed is rebuilt (same bytes)."""
    try:
        text = (await storage.get_bytes(playlist_key(job_id), max_bytes=4 << 20)).decode()
    except ObjectNotFound:
        return k == 0
    listed = sum(1 for line in text.splitlines() if line.strip() and not line.startswith("#"))
    if listed < k:
        return False
    return not (is_closed(text) and listed < k + 1)


async def _playlist(storage: Storage, plan: JobPlan, pieces: list[StreamPiece], listed: int,
                    ended: bool) -> tuple[str, list[tuple[str, datetime]]]:
    job = plan.job
    signed = [await storage.presign_get(stream_piece_key(job.job_id, p.index), job.presign_ttl_s)
              for p in pieces[:listed]]
    target = max(p.frames for p in pieces) / job.fps
    text = playlist_text([(u, p.frames / job.fps) for (u, _), p in zip(signed, pieces, strict=False)],
                         target_duration_s=target, ended=ended)
    return text, signed
