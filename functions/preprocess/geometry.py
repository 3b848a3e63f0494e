"""Fitting frames to the model's grid: center crop to the target aspect ratio, then resize.

The same crop is used for the stored frames and for the (possibly larger) analysis frame the
pose estimator sees, so normalised keypoint coordinates are shared by both.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True, slots=True)
class CropBox:
    """A rectangle in source pixels: x, y (top-left), width, height."""

    x: int
    y: int
    w: int
    h: int


def center_crop_box(src_w: int, src_h: int, dst_w: int, dst_h: int) -> CropBox:
    """The largest centered box of the source with the destination's aspect ratio ("cover")."""
    if src_w * dst_h > dst_w * src_h:  # source wider than target: trim left/right
        w = max(1, round(src_h * dst_w / dst_h))
        return CropBox((src_w - w) // 2, 0, w, src_h)
    h = max(1, round(src_w * dst_h / dst_w))
    return CropBox(0, (src_h - h) // 2, src_w, h)


def crop_resize(img: np.ndarray, box: CropBox, width: int, height: int) -> np.ndarray:
    """Crop ``img`` to ``box`` and resize to (height, width); INTER_AREA when shrinking."""
    view = img[box.y : box.y + box.h, box.x : box.x + box.w]
    if view.shape[1] == width and view.shape[0] == height:
        return np.ascontiguousarray(view)
    shrink = width * height < box.w * box.h
    return cv2.resize(view, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def fit_to_grid(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Center-crop to the aspect ratio of (width, height) and resize to exactly that size."""
    box = center_crop_box(img.shape[1], img.shape[0], width, height)
    return crop_resize(img, box, width, height)


def analysis_size(width: int, height: int, min_side: int) -> tuple[int, int]:
    """Size of the frame the pose estimator sees: the grid size, scaled up so its short side
    is at least ``min_side`` (tiny test models use 64x64 grids, too small to find a person)."""
    short = min(width, height)
    if short >= min_side:
        return width, height
    scale = min_side / short
    return round(width * scale), round(height * scale)


def rotate_display(img: np.ndarray, rotation_deg: float) -> np.ndarray:
    """Apply a container's display rotation (counter-clockwise degrees, multiples of 90)."""
    k = round(rotation_deg / 90.0) % 4
    return np.ascontiguousarray(np.rot90(img, k)) if k else img
