"""A synthetic driving video: a cartoon person (drawn with OpenCV) walking in place and
swaying, person-like enough that MediaPipe Pose finds it in every frame.

Used by tests, ``bench/preprocess.py`` and demos; ``figure_joints`` says where each joint was
drawn, so estimated keypoints can be checked against ground truth.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Iterable
from fractions import Fraction

import av
import cv2
import numpy as np

BACKGROUND = (200, 210, 220)
_SKIN = (224, 172, 140)
_SHIRT = (40, 80, 200)
_PANTS = (50, 50, 60)
_HAIR = (40, 30, 20)

# drawn joint -> MediaPipe joint name ("left" = the figure's left = image right: it faces us)
DRAWN_TO_MEDIAPIPE = {
    "head": "nose", "l_shoulder": "left_shoulder", "r_shoulder": "right_shoulder", "l_elbow": "left_elbow",
    "r_elbow": "right_elbow", "l_wrist": "left_wrist", "r_wrist": "right_wrist", "l_hip": "left_hip",
    "r_hip": "right_hip", "l_knee": "left_knee", "r_knee": "right_knee", "l_ankle": "left_ankle",
    "r_ankle": "right_ankle",
}


def figure_joints(t: float, width: int = 640, height: int = 480) -> dict[str, tuple[float, float]]:
    """Pixel position of each drawn joint at time ``t`` seconds."""
    s = height / 480
    cx = width * 0.5 + width * 0.08 * math.sin(2 * math.pi * t * 0.5)
    sw = math.sin(2 * math.pi * t)
    return {
        "head": (cx, 95 * s), "neck": (cx, 140 * s),
        "l_shoulder": (cx + 45 * s, 155 * s), "r_shoulder": (cx - 45 * s, 155 * s),
        "l_elbow": (cx + 60 * s, (225 + 10 * sw) * s), "r_elbow": (cx - 60 * s, (225 - 10 * sw) * s),
        "l_wrist": (cx + (65 + 20 * sw) * s, 290 * s), "r_wrist": (cx - (65 + 20 * sw) * s, 290 * s),
        "l_hip": (cx + 28 * s, 290 * s), "r_hip": (cx - 28 * s, 290 * s),
        "l_knee": (cx + (32 + 10 * sw) * s, 370 * s), "r_knee": (cx - (32 + 10 * sw) * s, 370 * s),
        "l_ankle": (cx + (35 + 15 * sw) * s, 450 * s), "r_ankle": (cx - (35 + 15 * sw) * s, 450 * s),
    }


def draw_figure(t: float, width: int = 640, height: int = 480) -> np.ndarray:
    """One (height, width, 3) uint8 RGB frame of the figure at time ``t``."""
    img = np.full((height, width, 3), BACKGROUND, np.uint8)
    j = figure_joints(t, width, height)

    def p(k: str) -> tuple[int, int]:
        return round(j[k][0]), round(j[k][1])

    s = height / 480
    th = max(2, round(22 * s))
    cv2.fillConvexPoly(img, np.array([p("l_shoulder"), p("r_shoulder"), p("r_hip"), p("l_hip")]), _SHIRT)
    for a, b, color in (("l_shoulder", "l_elbow", _SHIRT), ("l_elbow", "l_wrist", _SKIN),
                        ("r_shoulder", "r_elbow", _SHIRT), ("r_elbow", "r_wrist", _SKIN)):
        cv2.line(img, p(a), p(b), color, th)
    for a, b in (("l_hip", "l_knee"), ("l_knee", "l_ankle"), ("r_hip", "r_knee"), ("r_knee", "r_ankle")):
        cv2.line(img, p(a), p(b), _PANTS, round(th * 1.3))
    neck = p("neck")
    cv2.line(img, neck, (neck[0], p("l_shoulder")[1]), _SKIN, th)
    hx, hy = p("head")
    cv2.ellipse(img, (hx, hy), (round(28 * s), round(36 * s)), 0, 0, 360, _SKIN, -1)
    eye = max(1, round(4 * s))
    for dx in (-10, 10):
        ex, ey = hx + round(dx * s), hy - round(6 * s)
        cv2.circle(img, (ex, ey), eye, (255, 255, 255), -1)
        cv2.circle(img, (ex, ey), max(1, eye // 2), (30, 30, 30), -1)
    mouth = (hx, hy + round(14 * s))
    cv2.ellipse(img, mouth, (round(9 * s), round(4 * s)), 0, 0, 180, (120, 40, 40), max(1, round(2 * s)))
    cv2.ellipse(img, (hx, hy - round(22 * s)), (round(30 * s), round(18 * s)), 0, 180, 360, _HAIR, -1)
    for k in ("l_wrist", "r_wrist"):
        cv2.circle(img, p(k), round(12 * s), _SKIN, -1)
    for k in ("l_ankle", "r_ankle"):
        cv2.ellipse(img, (p(k)[0], p(k)[1] + round(6 * s)), (round(20 * s), round(9 * s)), 0, 0, 360, (20, 20, 20), -1)
    return img


def encode_video(frames: Iterable[np.ndarray], fps: float, *, codec: str = "libx264",
                 container: str = "mp4", pix_fmt: str = "yuv420p", options: dict[str, str] | None = None) -> bytes:
    """Encode RGB frames (streamed) into a video file in memory (any codec/container PyAV writes)."""
    it = iter(frames)
    first = next(it)
    buf = io.BytesIO()
    h, w = first.shape[:2]
    with av.open(buf, mode="w", format=container) as c:
        stream = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        assert isinstance(stream, av.VideoStream), f"{codec} is not a video codec"
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        # a fresh dict typed as PyAV's stubs declare Stream.options (same keys and values)
        opts: dict[str, object] = dict(options) if options is not None else (
            {"preset": "veryfast"} if "264" in codec else {})
        stream.options = opts
        for i, frame in enumerate(itertools.chain([first], it)):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = i
            for packet in stream.encode(vf):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    return buf.getvalue()


def figure_video(seconds: float, fps: float = 30, width: int = 640, height: int = 480, **kw: object) -> bytes:
    """An H.264 MP4 of the figure (``seconds`` long at ``fps``)."""
    n = max(1, round(seconds * fps))
    return encode_video((draw_figure(i / fps, width, height) for i in range(n)), fps, **kw)  # type: ignore[arg-type]
