"""Preview images derived from a finished video: the first frame (``thumbnail``) and a grid of
evenly spaced frames (``spritesheet``), as JPEG.

The pipeline does not produce these; the gateway makes them on first request from the output
MP4 and keeps them next to it in S3 (``jobs/<id>/thumbnail.jpg``, ``jobs/<id>/spritesheet.jpg``),
so each is computed once.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from runtime.video import iter_decode, probe_mp4

SPRITE_COLUMNS = 5
SPRITE_MAX_TILES = 25
SPRITE_TILE_WIDTH = 160
JPEG_QUALITY = 90


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def thumbnail_jpeg(mp4: Path | bytes) -> bytes:
    """The first frame, full size."""
    for frame in iter_decode(mp4):
        return _jpeg(frame)
    raise ValueError("no video frames decoded")


def spritesheet_jpeg(mp4: Path | bytes) -> bytes:
    """Up to 25 evenly spaced frames, 160 px wide each, 5 per row (decodes the video once)."""
    total = probe_mp4(mp4).frames
    if total <= 0:
        raise ValueError("no video frames")
    n = min(SPRITE_MAX_TILES, total)
    wanted = {round(i * (total - 1) / max(1, n - 1)) for i in range(n)}
    tiles: list[np.ndarray] = []
    for i, frame in enumerate(iter_decode(mp4)):
        if i in wanted:
            h, w = frame.shape[:2]
            tw = min(SPRITE_TILE_WIDTH, w)
            th = max(1, round(h * tw / w))
            tiles.append(cv2.resize(frame, (tw, th), interpolation=cv2.INTER_AREA))
    cols = min(SPRITE_COLUMNS, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    th, tw = tiles[0].shape[:2]
    sheet = np.zeros((rows * th, cols * tw, 3), dtype=np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = tile
    return _jpeg(sheet)
