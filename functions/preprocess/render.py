"""What the animate pipeline consumes besides the keypoints: the pose skeleton video (OpenPose
body-18 look: coloured limbs on black, as Wan-Animate's pose conditioning) and face crops.

Keypoints here are in pixel coordinates of the image they are drawn on / cropped from, with the
columns of ``skeleton.COLUMNS``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import cv2
import numpy as np

from functions.preprocess.skeleton import DET, FACE_JOINTS, OPENPOSE_18, OPENPOSE_COLORS, OPENPOSE_LIMBS, VIS, X, Y

DEFAULT_THRESHOLD = 0.3
"""Minimum visibility for a joint to be drawn / used."""


def openpose_points(kp: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> list[tuple[float, float] | None]:
    """The 18 OpenPose body joints (pixel x, y) from 33 MediaPipe joints; None where not visible."""
    out: list[tuple[float, float] | None] = []
    for sources in OPENPOSE_18:
        rows = kp[list(sources)]
        if rows[:, DET].min() <= 0 or rows[:, VIS].min() < threshold:
            out.append(None)
        else:
            out.append((float(rows[:, X].mean()), float(rows[:, Y].mean())))
    return out


def render_pose(kp: np.ndarray, width: int, height: int, *, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """One (height, width, 3) uint8 RGB frame: the skeleton of ``kp`` (33, 4) on black."""
    canvas = np.zeros((height, width, 3), np.uint8)
    pts = openpose_points(kp, threshold)
    scale = min(width, height) / 512.0
    stick = max(1, round(4 * scale))
    radius = max(1, round(4 * scale))
    for i, (a, b) in enumerate(OPENPOSE_LIMBS):
        pa, pb = pts[a], pts[b]
        if pa is None or pb is None:
            continue
        mx, my = (pa[0] + pb[0]) / 2, (pa[1] + pb[1]) / 2
        length = math.hypot(pa[0] - pb[0], pa[1] - pb[1]) / 2
        angle = math.degrees(math.atan2(pa[1] - pb[1], pa[0] - pb[0]))
        # ellipse2Poly returns an (N, 2) int32 array (the stubs say Sequence[Sequence[int]]): asarray is a no-op
        poly = np.asarray(cv2.ellipse2Poly((round(mx), round(my)), (max(1, round(length)), stick), round(angle),
                                           0, 360, 1), dtype=np.int32)
        color = tuple(int(c * 0.6) for c in OPENPOSE_COLORS[i])
        cv2.fillConvexPoly(canvas, poly, color, lineType=cv2.LINE_AA)
    for i, p in enumerate(pts):
        if p is not None:
            cv2.circle(canvas, (round(p[0]), round(p[1])), radius, OPENPOSE_COLORS[i], -1, lineType=cv2.LINE_AA)
    return canvas


def render_pose_video(keypoints: Iterable[np.ndarray], width: int, height: int, *,
                      threshold: float = DEFAULT_THRESHOLD) -> Iterator[np.ndarray]:
    """The pose video, one frame per keypoint row (F, 33, 4), lazily."""
    for kp in keypoints:
        yield render_pose(kp, width, height, threshold=threshold)


class FaceCropper:
    """Square face crops that follow the head, smoothed over time and held when the face is lost.

    The box is centred on the visible face landmarks (nose, eyes, ears, mouth) with a side of
    ~2x their extent; before any face was seen it covers the top-centre of the frame.
    """

    def __init__(self, size: int, *, threshold: float = DEFAULT_THRESHOLD, smoothing: float = 0.5,
                 margin: float = 2.0) -> None:
        self.size = size
        self.threshold = threshold
        self.smoothing = smoothing
        self.margin = margin
        self._box: tuple[float, float, float] | None = None  # cx, cy, side

    def _measure(self, kp: np.ndarray, width: int, height: int) -> tuple[float, float, float] | None:
        face = kp[list(FACE_JOINTS)]
        ok = (face[:, DET] > 0) & (face[:, VIS] >= self.threshold)
        if ok.sum() < 3:
            return None
        pts = face[ok][:, [X, Y]]
        lo, hi = pts.min(0), pts.max(0)
        extent = max(float(hi[0] - lo[0]), 1.5 * float(hi[1] - lo[1]))
        side = max(self.margin * extent, 0.05 * min(width, height), 8.0)
        cx, cy = pts.mean(0)
        return float(cx), float(cy), side

    def box(self, kp: np.ndarray, width: int, height: int) -> tuple[float, float, float]:
        """Update with this frame's keypoints and return the (cx, cy, side) to crop."""
        measured = self._measure(kp, width, height)
        if measured is None:
            if self._box is None:
                side = min(width, height) / 3
                return width / 2, side / 2 + height * 0.05, side
            return self._box
        if self._box is None:
            self._box = measured
        else:
            a = self.smoothing
            (pcx, pcy, pside), (mcx, mcy, mside) = self._box, measured
            self._box = (a * pcx + (1 - a) * mcx, a * pcy + (1 - a) * mcy, a * pside + (1 - a) * mside)
        return self._box

    def crop(self, image: np.ndarray, kp: np.ndarray) -> np.ndarray:
        """(size, size, 3) crop of ``image`` around the face in ``kp`` (pixels of ``image``);
        parts of the box outside the image are black."""
        h, w = image.shape[:2]
        cx, cy, side = self.box(kp, w, h)
        n = max(1, min(round(side), 2 * max(w, h)))
        x0, y0 = round(cx - n / 2), round(cy - n / 2)
        if x0 >= 0 and y0 >= 0 and x0 + n <= w and y0 + n <= h:
            patch = image[y0 : y0 + n, x0 : x0 + n]
        else:
            patch = np.zeros((n, n, 3), np.uint8)
            sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + n, w), min(y0 + n, h)
            if sx1 > sx0 and sy1 > sy0:
                patch[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
        interp = cv2.INTER_AREA if n > self.size else cv2.INTER_LINEAR
        return cv2.resize(patch, (self.size, self.size), interpolation=interp)

def face_crops(frames: Iterable[np.ndarray], keypoints: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Face crops (size x size) per frame; ``keypoints`` in pixel coordinates of ``frames``."""
    cropper = FaceCropper(size)
    for frame, kp in zip(frames, keypoints, strict=True):
        yield cropper.crop(frame, kp)
