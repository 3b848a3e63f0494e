"""H.264 MP4 encode/decode/probe with PyAV (bundled libx264): shared by the runner and stitch."""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    width: int
    height: int
    fps: float
    duration_s: float
    codec: str


def encode_mp4(frames: np.ndarray, fps: int, *, keyframes_at: list[int] | None = None, crf: int = 18,
               preset: str = "veryfast", out: Path | None = None) -> bytes:
    """Encode (F, H, W, 3) uint8 RGB to H.264 yuv420p MP4. Odd sizes are padded to even.

    ``keyframes_at``: frame indices forced to be IDR frames, so a later remux can cut there
    (the runner forces one at the first frame after the overlap).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (F,H,W,3) uint8 frames, got {frames.shape} {frames.dtype}")
    f, h, w, _ = frames.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    force = set(keyframes_at or [])
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(int(fps), 1))
        stream.width, stream.height = w + pad_w, h + pad_h
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset, "bf": "0"}
        for i in range(f):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            vf.pts = i
            if i in force:
                vf.pict_type = av.video.frame.PictureType.I
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = buf.getvalue()
    if out is not None:
        Path(out).write_bytes(data)
    return data


def _open(src: bytes | Path) -> av.container.InputContainer:
    return av.open(io.BytesIO(src) if isinstance(src, bytes | bytearray) else str(src))


def decode_mp4(src: bytes | Path) -> np.ndarray:
    """All frames as (F, H, W, 3) uint8 RGB."""
    with _open(src) as c:
        frames = [fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)]
    if not frames:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    return np.stack(frames)


def probe(src: bytes | Path) -> VideoInfo:
    """Frame count by decoding (exact, not the container's claim)."""
    with _open(src) as c:
        stream = c.streams.video[0]
        fps = float(stream.average_rate or stream.base_rate or 0)
        n = sum(1 for _ in c.decode(video=0))
        return VideoInfo(frames=n, width=stream.codec_context.width, height=stream.codec_context.height,
                         fps=fps, duration_s=n / fps if fps else 0.0, codec=stream.codec_context.name)
