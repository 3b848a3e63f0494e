"""Validate and decode client media: images (header first, then OpenCV) and videos (PyAV).

Order of checks, cheapest first, so a hostile file costs almost nothing:
``sniff`` (magic bytes) -> header / container metadata (size, codec, duration, frame count)
-> decode, still enforcing the limits per decoded frame (metadata can lie).

Every failure is an ``InputRejected`` subclass carrying the contract's error code; library
errors (FFmpeg, OpenCV) never escape as such.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import av
import cv2
import numpy as np

from functions.preprocess.errors import InputTooLarge, InputUnreadable, InputUnsupported
from functions.preprocess.geometry import analysis_size, center_crop_box, crop_resize, fit_to_grid, rotate_display
from functions.preprocess.limits import MediaLimits
from functions.preprocess.sniff import SNIFF_BYTES, HeaderError, MediaKind, image_header_size, sniff

T = TypeVar("T")
Source = bytes | Path

# FFmpeg demuxer forced for each accepted container: no format probing, so a file can never
# select a demuxer that opens other files or URLs (HLS, concat, ...).
_DEMUXER = {MediaKind.MP4: "mov", MediaKind.MATROSKA: "matroska", MediaKind.AVI: "avi",
            MediaKind.MPEG_TS: "mpegts", MediaKind.FLV: "flv", MediaKind.OGG: "ogg"}
_DECODE_ERRORS: tuple[type[BaseException], ...] = (av.FFmpegError, OSError, ValueError, EOFError, IndexError)


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ImageInfo:
    kind: MediaKind
    width: int
    height: int


def _check_kind(kind: MediaKind, data_len: int, expected: str, allowed: tuple[str, ...]) -> None:
    if data_len == 0:
        raise InputUnreadable(f"{expected} is empty (0 bytes)")
    if kind == MediaKind.UNKNOWN:
        raise InputUnsupported(f"{expected} is not a recognised media file (content sniffed from its bytes)")
    if expected == "image" and kind.is_video:
        raise InputUnsupported(f"expected an image, got a video ({kind.value})")
    if expected == "video" and kind.is_image:
        raise InputUnsupported(f"expected a video, got an image ({kind.value})")
    if kind.value not in allowed:
        raise InputUnsupported(f"{expected} format {kind.value} is not supported (accepted: {', '.join(allowed)})")


def _check_size(what: str, width: int, height: int, max_pixels: int, limits: MediaLimits) -> None:
    if width <= 0 or height <= 0:
        raise InputUnreadable(f"{what} has invalid dimensions {width}x{height}")
    if width > limits.max_width or height > limits.max_height or width * height > max_pixels:
        raise InputTooLarge(
            f"{what} is {width}x{height} ({width * height} pixels); limits: {limits.max_width}x{limits.max_height}, "
            f"{max_pixels} pixels"
        )


def probe_image(data: bytes, limits: MediaLimits) -> ImageInfo:
    """Kind and size from the magic bytes and header only (no pixel is decoded)."""
    kind = sniff(data)
    _check_kind(kind, len(data), "image", limits.image_formats)
    try:
        width, height = image_header_size(data, kind)
    except HeaderError as e:
        raise InputUnreadable(f"image header is unreadable: {e}") from e
    _check_size("image", width, height, limits.max_image_pixels, limits)
    return ImageInfo(kind, width, height)


def decode_image(data: bytes, limits: MediaLimits) -> tuple[np.ndarray, ImageInfo]:
    """Decode to RGB uint8 (H, W, 3), EXIF orientation applied, after the header checks passed."""
    info = probe_image(data, limits)
    try:
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:
        raise InputUnreadable(f"{info.kind.value} image could not be decoded: {e}") from e
    if bgr is None or bgr.ndim != 3 or bgr.size == 0:
        raise InputUnreadable(f"{info.kind.value} image is corrupt or truncated")
    h, w = bgr.shape[:2]
    if {w, h} != {info.width, info.height}:  # EXIF rotation may swap them, nothing else may change
        raise InputUnreadable(f"decoded size {w}x{h} does not match the header {info.width}x{info.height}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), info


def encode_png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encode failed")
    return buf.tobytes()


def reference_image(data: bytes, limits: MediaLimits, width: int, height: int) -> tuple[np.ndarray, ImageInfo]:
    """Decode and fit to the model grid (center crop + resize)."""
    rgb, info = decode_image(data, limits)
    return fit_to_grid(rgb, width, height), info


# ---------------------------------------------------------------------------------------------
# videos
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class VideoInfo:
    kind: MediaKind
    codec: str
    width: int
    height: int
    fps: float
    duration_s: float | None
    """From the container (None: not declared)."""
    frames: int
    """Declared by the container (0: not declared)."""


def _head(src: Source) -> tuple[bytes, int]:
    if isinstance(src, Path):
        with src.open("rb") as f:
            return f.read(max(SNIFF_BYTES, 377)), src.stat().st_size
    return bytes(src[: max(SNIFF_BYTES, 377)]), len(src)


def _open(src: Source, kind: MediaKind) -> Any:
    file: Any = str(src) if isinstance(src, Path) else io.BytesIO(src)
    return av.open(file, mode="r", format=_DEMUXER[kind])


def _float(value: Any) -> float:
    try:
        return float(value) if value else 0.0
    except (TypeError, ZeroDivisionError):
        return 0.0


def _inspect(container: Any, kind: MediaKind, limits: MediaLimits) -> tuple[Any, VideoInfo]:
    if not container.streams.video:
        raise InputUnsupported(f"{kind.value} file has no video stream")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    codec = (ctx.name or "unknown") if ctx is not None else "unknown"
    if codec not in limits.video_codecs:
        raise InputUnsupported(f"video codec {codec} is not supported (accepted: {', '.join(limits.video_codecs)})")
    _check_size("video frame", int(ctx.width or 0), int(ctx.height or 0), limits.max_video_pixels, limits)
    duration: float | None = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    fps = _float(stream.average_rate) or _float(stream.guessed_rate) or _float(stream.base_rate)
    frames = int(stream.frames or 0)
    if duration is not None and duration > limits.max_duration_s:
        raise InputTooLarge(f"video is {duration:.1f} s long; limit {limits.max_duration_s:g} s")
    if frames > limits.max_frames:
        raise InputTooLarge(f"video declares {frames} frames; limit {limits.max_frames}")
    if fps > limits.max_fps:
        raise InputTooLarge(f"video declares {fps:g} fps; limit {limits.max_fps:g}")
    info = VideoInfo(kind, codec, int(ctx.width), int(ctx.height), fps, duration, frames)
    return stream, info


def probe_video(src: Source, limits: MediaLimits) -> VideoInfo:
    """Container, codec, size, rate, duration, declared frames — checked against ``limits``
    from metadata alone, before any frame is decoded."""
    head, size = _head(src)
    kind = sniff(head)
    _check_kind(kind, size, "video", limits.containers)
    try:
        with _open(src, kind) as container:
            return _inspect(container, kind, limits)[1]
    except _DECODE_ERRORS as e:
        raise InputUnreadable(f"{kind.value} video could not be opened (corrupt or truncated): {e}") from e


@dataclass(frozen=True, slots=True)
class SampledFrame:
    """One output frame: ``frame`` is on the model grid, ``analysis`` is what the pose
    estimator sees (the same crop, at least ``analysis_min_side`` on its short side)."""

    index: int
    time_s: float
    frame: np.ndarray
    analysis: np.ndarray


def resample(timed: Iterable[tuple[float | None, T]], fps: float, max_out: int,
             src_frame_s: float) -> Iterator[tuple[int, float, T]]:
    """Nearest-timestamp resampling of a stream of ``(time_s, item)`` to ``fps``.

    Output i is at ``i / fps`` seconds after the first item; each output takes the item whose
    timestamp is nearest (ties: the later one). Items may repeat (upsampling) or be skipped
    (downsampling). Missing or backwards timestamps are replaced by ``previous + src_frame_s``.
    """
    i = 0
    t0: float | None = None
    prev: tuple[float, T] | None = None
    for t, item in timed:
        if t0 is None:
            t0 = t if t is not None else 0.0
        rel = (t - t0) if t is not None else (prev[0] + src_frame_s if prev else 0.0)
        if prev is not None and rel <= prev[0]:
            rel = prev[0] + 1e-9
        while i < max_out and i / fps <= rel + 1e-9:
            target = i / fps
            chosen = prev[1] if prev is not None and (target - prev[0]) < (rel - target) else item
            yield i, target, chosen
            i += 1
        prev = (rel, item)
        if i >= max_out:
            return
    if prev is not None:  # the last frame lasts one source frame interval
        while i < max_out and i / fps < prev[0] + src_frame_s - 1e-9:
            yield i, i / fps, prev[1]
            i += 1


class TruncatedVideo(InputUnreadable):
    """Fewer decodable frames than the container declares."""


def iter_frames(src: Source, *, fps: float, width: int, height: int, limits: MediaLimits,
                max_frames: int | None = None, analysis_min_side: int = 512, start: int = 0) -> Iterator[SampledFrame]:
    """Stream the video resampled to ``fps`` and fitted to ``width`` x ``height``.

    Bounded memory: one decoded frame (plus the decoder's reference frames) at a time. Stops
    after ``max_frames`` outputs; ends early (fewer outputs) if the video is shorter. Limits are
    enforced again on every decoded frame: size, source frame count, timestamp.

    ``start``: outputs ``[start, max_frames)`` only (a preprocess part). Earlier frames are decoded
    (so the resampling is exactly that of a run from 0) but not converted. If the video ends before
    ``start``, its last output frame is yielded alone (``index < start``: what padding repeats).
    """
    info = probe_video(src, limits)
    out_cap = max_frames if max_frames is not None else limits.max_frames
    a_w, a_h = analysis_size(width, height, analysis_min_side)
    src_frame_s = 1.0 / info.fps if info.fps > 0 else 1.0 / 30
    try:
        with _open(src, info.kind) as container:
            stream, _ = _inspect(container, info.kind, limits)
            stream.thread_type = "AUTO"
            timed = _CheckedFrames(container.decode(stream), limits, info)
            last: tuple[Any, np.ndarray] | None = None
            before: tuple[int, float, Any] | None = None  # the last output frame before ``start``
            emitted = 0

            def sampled(index: int, target_t: float, vf: Any) -> SampledFrame:
                nonlocal last
                if last is None or last[0] is not vf:
                    last = (vf, rotate_display(vf.to_ndarray(format="rgb24"), _float(vf.rotation)))
                rgb = last[1]
                box = center_crop_box(rgb.shape[1], rgb.shape[0], width, height)
                frame = crop_resize(rgb, box, width, height)
                analysis = frame if (a_w, a_h) == (width, height) else crop_resize(rgb, box, a_w, a_h)
                return SampledFrame(index, target_t, frame, analysis)

            for index, target_t, vf in resample(timed, fps, out_cap, src_frame_s):
                if index < start:
                    before = (index, target_t, vf)
                    continue
                emitted += 1
                yield sampled(index, target_t, vf)
            decoded = timed.count
            if emitted == 0 and before is not None:
                yield sampled(*before)
    except _DECODE_ERRORS as e:
        raise InputUnreadable(f"{info.kind.value} video is corrupt or truncated: {e}") from e
    if emitted == 0 and before is None:
        raise InputUnreadable(f"{info.kind.value} video has no decodable frames")
    if start + emitted < out_cap and info.frames and decoded + max(2, info.frames // 50) < info.frames:
        raise TruncatedVideo(
            f"{info.kind.value} video is truncated: the container declares {info.frames} frames, "
            f"only {decoded} could be decoded"
        )


class _CheckedFrames:
    """Iterator of (time_s, frame) that counts frames and enforces limits per decoded frame."""

    def __init__(self, frames: Iterator[Any], limits: MediaLimits, info: VideoInfo) -> None:
        self._frames = frames
        self._limits = limits
        self._info = info
        self.count = 0

    def __iter__(self) -> _CheckedFrames:
        return self

    def __next__(self) -> tuple[float | None, Any]:
        vf = next(self._frames)
        self.count += 1
        lim = self._limits
        if self.count > lim.max_frames:
            raise InputTooLarge(f"video has more than {lim.max_frames} frames")
        if vf.width != self._info.width or vf.height != self._info.height:
            _check_size("video frame", vf.width, vf.height, lim.max_video_pixels, lim)
        t = vf.time
        if t is not None and t > lim.max_duration_s:
            raise InputTooLarge(f"video runs past {lim.max_duration_s:g} s (frame at {t:.1f} s)")
        return t, vf

