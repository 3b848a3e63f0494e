"""Preview images of a finished video, as JPEG: the first frame (``thumbnail``) and a grid of evenly
spaced frames (``spritesheet``); plus the video's last frames (the ``tail`` an extension is
conditioned on).

Stitch makes all three in one decode of the output and stores them next to it
(``schemas.names.thumbnail_key``, ``spritesheet_key``, ``output_tail_key``); the gateway serves the
stored previews and makes them with the same functions for jobs stitched before stitch did.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from runtime.video import iter_decode, probe_mp4

SPRITE_COLUMNS = 5
SPRITE_MAX_TILES = 25
SPRITE_TILE_WIDTH = 160
JPEG_QUALITY = 90

Mp4 = Path | bytes


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def sprite_frames(total: int) -> set[int]:
    """Indices of the (up to 25) evenly spaced frames of a ``total``-frame video."""
    n = min(SPRITE_MAX_TILES, total)
    return {round(i * (total - 1) / max(1, n - 1)) for i in range(n)}


def _tile(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    tw = min(SPRITE_TILE_WIDTH, w)
    th = max(1, round(h * tw / w))
    return cv2.resize(frame, (tw, th), interpolation=cv2.INTER_AREA)


def _sheet(tiles: list[np.ndarray]) -> bytes:
    cols = min(SPRITE_COLUMNS, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    th, tw = tiles[0].shape[:2]
    sheet = np.zeros((rows * th, cols * tw, 3), dtype=np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = tile
    return _jpeg(sheet)


def thumbnail_jpeg(mp4: Mp4) -> bytes:
    """The first frame, full size."""
    for frame in iter_decode(mp4):
        return _jpeg(frame)
    raise ValueError("no video frames decoded")


def spritesheet_jpeg(mp4: Mp4) -> bytes:
    """Up to 25 evenly spaced frames, 160 px wide each, 5 per row (decodes the video once)."""
    total = probe_mp4(mp4).frames
    if total <= 0:
        raise ValueError("no video frames")
    wanted = sprite_frames(total)
    tiles = [_tile(frame) for i, frame in enumerate(iter_decode(mp4)) if i in wanted]
    return _sheet(tiles)


@dataclass(frozen=True)
class Previews:
    thumbnail: bytes
    spritesheet: bytes
    tail: np.ndarray  # (min(tail_frames, F), H, W, 3) uint8: the video's last frames


def make_previews(mp4: Mp4, tail_frames: int, *, frames: int | None = None) -> Previews:
    """Thumbnail, spritesheet and the last ``tail_frames`` frames, in one decode. ``frames``: the
    video's frame count when the caller knows it (the stitcher does), else it is probed first."""
    total = frames if frames is not None else probe_mp4(mp4).frames
    if total <= 0:
        raise ValueError("no video frames")
    wanted = sprite_frames(total)
    thumb: bytes | None = None
    tiles: list[np.ndarray] = []
    tail: deque[np.ndarray] = deque(maxlen=max(1, tail_frames))
    for i, frame in enumerate(iter_decode(mp4)):
        if thumb is None:
            thumb = _jpeg(frame)
        if i in wanted:
            tiles.append(_tile(frame))
        tail.append(frame)
    if thumb is None:
        raise ValueError("no video frames decoded")
    return Previews(thumbnail=thumb, spritesheet=_sheet(tiles), tail=np.stack(tail))


def frame_jpegs(frames: np.ndarray) -> tuple[bytes, bytes]:
    """Thumbnail and spritesheet JPEGs of a video's frames as rendered (the runner holds them for a
    one-window job): the same images ``make_previews`` makes, without decoding the MP4 for them."""
    total = int(frames.shape[0])
    if total <= 0:
        raise ValueError("no video frames")
    return _jpeg(frames[0]), _sheet([_tile(frames[i]) for i in sorted(sprite_frames(total))])
