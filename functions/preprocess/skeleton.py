"""The keypoint schema: MediaPipe Pose's 33 joints, the array columns, and the OpenPose body-18
view (limbs and colours) used to draw Wan-Animate style pose conditioning."""

from __future__ import annotations

from typing import Any

JOINTS: tuple[str, ...] = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye", "right_eye_outer",
    "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_pinky", "right_pinky", "left_index", "right_index",
    "left_thumb", "right_thumb", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle", "left_heel", "right_heel", "left_foot_index", "right_foot_index",
)
"""MediaPipe Pose landmark order ("left" = the person's left)."""
J = {name: i for i, name in enumerate(JOINTS)}
NUM_JOINTS = len(JOINTS)

COLUMNS: tuple[str, ...] = ("x", "y", "visibility", "detected")
"""Last axis of the keypoints array: pixel x, pixel y (on the model grid), MediaPipe's
visibility score in [0, 1] (confidence that the joint is visible), and ``detected`` (1.0 when a
person was found in the frame). A frame without a detected person is all zeros."""
X, Y, VIS, DET = range(4)

FACE_JOINTS: tuple[int, ...] = tuple(range(0, 11))
"""Nose, eyes, ears, mouth: the landmarks a face crop is centred on."""

# OpenPose body-18 order, each as the MediaPipe joint(s) it comes from (neck = mid-shoulders).
OPENPOSE_18: tuple[tuple[int, ...], ...] = (
    (J["nose"],), (J["left_shoulder"], J["right_shoulder"]), (J["right_shoulder"],), (J["right_elbow"],),
    (J["right_wrist"],), (J["left_shoulder"],), (J["left_elbow"],), (J["left_wrist"],), (J["right_hip"],),
    (J["right_knee"],), (J["right_ankle"],), (J["left_hip"],), (J["left_knee"],), (J["left_ankle"],),
    (J["right_eye"],), (J["left_eye"],), (J["right_ear"],), (J["left_ear"],),
)
# Limbs between OpenPose joints and their colours (RGB), as in the OpenPose / ControlNet renderer
# that Wan-Animate's pose conditioning follows: coloured limbs and joints on black.
OPENPOSE_LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
OPENPOSE_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)


def schema(frames: int, width: int, height: int, fps: float, **extra: Any) -> dict[str, Any]:
    """The ``keypoints.json`` sidecar describing ``keypoints.npy``."""
    return {
        "version": 1,
        "estimator": "mediapipe-pose-landmark-full (0.10.21), per-frame detection",
        "dtype": "float32",
        "shape": [frames, NUM_JOINTS, len(COLUMNS)],
        "axes": ["frame", "joint", "column"],
        "columns": list(COLUMNS),
        "joints": list(JOINTS),
        "coordinates": "pixels on the model grid: x right in [0, width), y down in [0, height); "
                       "may fall slightly outside for joints outside the frame",
        "missing": "a frame without a detected person is all zeros (detected = 0)",
        "width": width,
        "height": height,
        "fps": fps,
        "frames": frames,
        **extra,
    }
