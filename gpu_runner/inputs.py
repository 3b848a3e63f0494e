"""What rank 0 fetches for a window and broadcasts to every rank (plain arrays, picklable)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SegmentInputs:
    """Arrays for one window: the previous segment's tail and the preprocessed conditioning."""

    condition: np.ndarray | None = None
    image: np.ndarray | None = None
    pose_video: np.ndarray | None = None
    face_video: np.ndarray | None = None
