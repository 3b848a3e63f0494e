"""H.264/MP4 encode, decode and probe with PyAV (local files or in-memory buffers).

Every MP4 videogen writes uses the same x264 settings (:data:`X264_PARAMS`) so that streams
encoded separately can be spliced packet by packet: ``stitchable=1`` keeps the SPS/PPS independent
of the content, ``bframes=0`` makes decode order equal display order (a cut after any packet is
clean) and ``forced-idr`` turns a frame forced to type I into an IDR frame (a closed-GOP start where
a remux may begin).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
from av.video.frame import PictureType

Source = str | Path | bytes | BinaryIO
"""An MP4: a path, its bytes, or a readable binary file object."""

Dest = str | Path | BinaryIO

X264_PARAMS = "stitchable=1:bframes=0"
DEFAULT_CRF = 18
DEFAULT_PRESET = "veryfast"


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_mp4` reads from the container (frames counted from packets)."""

    frames: int
    width: int
    height: int
    fps: float
    duration_s: float


def open_source(src: Source) -> av.container.InputContainer:
    """Open an MP4 for reading from a path, bytes or a file object."""
    if isinstance(src, bytes | bytearray):
        src = io.BytesIO(src)
    elif hasattr(src, "seek"):
        src.seek(0)
    return av.open(src if not isinstance(src, Path) else str(src), "r")


def _first_and_rest(frames: np.ndarray | Iterable[np.ndarray]) -> tuple[np.ndarray, Iterator[np.ndarray]]:
    it = iter(frames)
    try:
        first = next(it)
    except StopIteration:
        raise ValueError("cannot encode an empty video") from None
    return first, it


def encode_mp4(
    frames: np.ndarray | Iterable[np.ndarray],
    fps: int,
    dest: Dest,
    *,
    crf: int = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
    keyframes_at: Iterable[int] = (),
) -> int:
    """Encode RGB uint8 frames ``(H, W, 3)`` to H.264 yuv420p MP4; returns the frame count.

    ``keyframes_at``: frame indices forced to IDR (frame 0 always is one), e.g. the first frame
    after a segment's overlap so that the overlap can be dropped by a remux. ``H`` and ``W`` must
    be even (4:2:0 chroma).
    """
    first, rest = _first_and_rest(frames)
    if first.ndim != 3 or first.shape[2] != 3 or first.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (H, W, 3), got {first.dtype} {first.shape}")
    height, width = first.shape[:2]
    if width % 2 or height % 2:
        raise ValueError(f"yuv420p needs even dimensions, got {width}x{height}")
    forced = set(keyframes_at)
    container = av.open(str(dest) if isinstance(dest, Path) else dest, "w", format="mp4")
    count = 0
    try:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        stream.options = {"crf": str(crf), "preset": preset, "x264-params": X264_PARAMS, "forced-idr": "1"}
        for frame in _chain(first, rest):
            if frame.shape != first.shape:
                raise ValueError(f"frame {count} has shape {frame.shape}, expected {first.shape}")
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = count
            if count in forced:
                vf.pict_type = PictureType.I
            container.mux(stream.encode(vf))
            count += 1
        container.mux(stream.encode(None))
    finally:
        container.close()
    return count


def remux_keyframes(frames: int, overlap_before: int, overlap_after: int) -> list[int]:
    """IDR frames a segment needs so the stitcher can remux it without re-encoding: the first
    frame after the overlap with the previous segment, and the first frame of the tail that
    the next segment overlaps (where a blend starts decoding)."""
    keys = {overlap_before, frames - overlap_after if overlap_after else 0}
    return sorted(k for k in keys if 0 < k < frames)


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def iter_decode(src: Source) -> Iterator[np.ndarray]:
    """Yield the frames of an MP4 as RGB uint8 ``(H, W, 3)`` arrays, in display order."""
    container = open_source(src)
    try:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")
    finally:
        container.close()


def decode_range(src: Source, start: int, stop: int) -> np.ndarray:
    """Frames ``[start, stop)`` only: decoding starts at the last keyframe at or before ``start``.

    Assumes decode order = display order (our encodes use ``bframes=0``), so packet ``i`` is frame ``i``.
    """
    container = open_source(src)
    try:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size > 0]
        if not 0 <= start < stop <= len(packets):
            raise ValueError(f"range [{start}, {stop}) outside {len(packets)} frames")
        first = max(i for i in range(start + 1) if packets[i].is_keyframe or i == 0)
        frames: list[np.ndarray] = []
        ctx = stream.codec_context
        for packet in [*packets[first:stop], None]:  # None flushes the decoder
            frames.extend(frame.to_ndarray(format="rgb24") for frame in ctx.decode(packet))
    finally:
        container.close()
    return np.stack(frames[start - first : stop - first])


def decode_mp4(src: Source) -> np.ndarray:
    """All frames of an MP4 as one RGB uint8 array ``(F, H, W, 3)``."""
    frames = list(iter_decode(src))
    if not frames:
        raise ValueError("no video frames decoded")
    return np.stack(frames)


def probe_mp4(src: Source) -> VideoInfo:
    """Frame count (from packets, no decoding), size, frame rate and duration of an MP4."""
    container = open_source(src)
    try:
        stream = container.streams.video[0]
        frames = sum(1 for p in container.demux(stream) if p.size > 0)
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        width, height = stream.codec_context.width, stream.codec_context.height
    finally:
        container.close()
    return VideoInfo(frames=frames, width=width, height=height, fps=fps, duration_s=frames / fps if fps else 0.0)
