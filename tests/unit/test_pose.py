"""Pose keypoints on a synthetic person drawn with OpenCV: plausible coordinates, order and
results independent of the number of worker threads, skeleton rendering and face crops."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from functions.preprocess.pose import PoseEstimator, to_pixels
from functions.preprocess.render import FaceCropper, openpose_points, render_pose, render_pose_video
from functions.preprocess.skeleton import DET, JOINTS, VIS, J, schema
from functions.preprocess.synthetic import DRAWN_TO_MEDIAPIPE, draw_figure, figure_joints

W, H, FPS = 640, 480, 15
N = 12


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    return [draw_figure(i / FPS, W, H) for i in range(N)]


@pytest.fixture(scope="module")
def estimator() -> Iterator[PoseEstimator]:
    with PoseEstimator(2) as est:
        yield est


@pytest.fixture(scope="module")
def keypoints(clip: list[np.ndarray], estimator: PoseEstimator) -> np.ndarray:
    return to_pixels(estimator.estimate(clip), W, H)


def test_joint_names_match_mediapipe() -> None:
    from mediapipe.python.solutions.pose import PoseLandmark

    assert tuple(lm.name.lower() for lm in PoseLandmark) == JOINTS


def test_person_detected_in_every_frame(keypoints: np.ndarray) -> None:
    assert keypoints.shape == (N, 33, 4) and keypoints.dtype == np.float32
    assert (keypoints[:, :, DET].max(axis=1) == 1.0).all()


@pytest.mark.parametrize(
    ("drawn", "tolerance_px"),
    [("head", 30), ("l_shoulder", 25), ("r_shoulder", 25), ("l_hip", 45), ("r_hip", 45), ("l_elbow", 40),
     ("r_elbow", 40), ("l_knee", 45), ("r_knee", 45)],
)
def test_keypoints_near_drawn_joints(keypoints: np.ndarray, drawn: str, tolerance_px: float) -> None:
    idx = J[DRAWN_TO_MEDIAPIPE[drawn]]
    errors = []
    for i in range(N):
        x, y = figure_joints(i / FPS, W, H)[drawn]
        errors.append(np.hypot(keypoints[i, idx, 0] - x, keypoints[i, idx, 1] - y))
    assert np.median(errors) < tolerance_px, (drawn, np.round(errors, 1))
    assert keypoints[:, idx, VIS].mean() > 0.5


def test_left_right_follow_the_person(keypoints: np.ndarray) -> None:
    # the figure faces the camera: its left shoulder is on the image's right
    assert (keypoints[:, J["left_shoulder"], 0] > keypoints[:, J["right_shoulder"], 0]).all()
    assert (keypoints[:, J["nose"], 1] < keypoints[:, J["left_hip"], 1]).all()


def test_sway_is_tracked(keypoints: np.ndarray) -> None:
    drawn = np.array([figure_joints(i / FPS, W, H)["head"][0] for i in range(N)])
    found = keypoints[:, J["nose"], 0]
    assert np.corrcoef(drawn, found)[0, 1] > 0.9


def test_same_result_and_order_with_one_or_many_workers(clip: list[np.ndarray], keypoints: np.ndarray) -> None:
    with PoseEstimator(1) as one:
        single = to_pixels(one.estimate(clip), W, H)
    np.testing.assert_allclose(single, keypoints, atol=1e-4)
    # reversed input -> reversed output: results come back in input order, not completion order
    with PoseEstimator(3, window=2) as many:
        tagged = list(many.map_ordered(list(enumerate(clip))[::-1], lambda item: item[1]))
    assert [i for (i, _), _ in tagged] == list(range(N))[::-1]
    np.testing.assert_allclose(to_pixels(np.stack([kp for _, kp in tagged]), W, H), keypoints[::-1], atol=1e-4)


def test_no_person_gives_zeros(estimator: PoseEstimator) -> None:
    kp = estimator.estimate_one(np.full((240, 320, 3), 128, np.uint8))
    assert not kp.any()
    assert render_pose(kp, 64, 64).max() == 0


def test_render_pose_draws_coloured_limbs_on_black(keypoints: np.ndarray) -> None:
    frames = list(render_pose_video(keypoints[:2], W, H))
    img = frames[0]
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    lit = img.max(axis=2) > 0
    assert 0.005 < lit.mean() < 0.2  # a skeleton, not a filled frame
    assert len({tuple(c) for c in img[lit][::7]}) > 8  # many limb colours
    pts = openpose_points(keypoints[0])
    neck = pts[1]
    assert neck is not None
    assert img[round(neck[1]), round(neck[0])].max() > 0


def test_face_crop_follows_head(clip: list[np.ndarray], keypoints: np.ndarray) -> None:
    cropper = FaceCropper(96)
    crops = [cropper.crop(frame, kp) for frame, kp in zip(clip[:4], keypoints[:4], strict=True)]
    assert all(c.shape == (96, 96, 3) for c in crops)
    centre = crops[0][36:60, 36:60].reshape(-1, 3).mean(0)
    assert np.abs(centre - (224, 172, 140)).max() < 40  # skin colour of the drawn face
    # no face at all: a fixed top-centre box, still the right size
    assert FaceCropper(32).crop(clip[0], np.zeros((33, 4), np.float32)).shape == (32, 32, 3)


def test_schema_sidecar() -> None:
    meta = schema(10, 64, 48, 8, detected_frames=9)
    assert meta["shape"] == [10, 33, 4] and meta["columns"] == ["x", "y", "visibility", "detected"]
    assert meta["joints"][0] == "nose" and meta["detected_frames"] == 9


def test_pose_call_releases_the_gil(clip: list[np.ndarray], estimator: PoseEstimator) -> None:
    """While a pose call runs in one thread, Python code in another thread keeps running: that is
    what lets the worker pool scale across cores. If the call held the GIL, the other thread could
    not execute a single bytecode during the middle of any call (robust to a loaded machine:
    preemption may hide progress in some calls, not in most). A GIL-holding C call of the same
    length (a backtracking regex) scores 0-2 of 12 here."""
    import sys
    import threading
    import time

    calls = 12
    spans: list[tuple[float, float]] = []
    warm = threading.Event()

    def work() -> None:
        estimator.estimate_one(clip[0])  # builds this thread's graph (not measured)
        warm.set()
        for i in range(calls):
            t0 = time.perf_counter()
            estimator.estimate_one(clip[i % N])
            spans.append((t0, time.perf_counter()))

    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)  # GIL hand-offs at call boundaries stay far shorter than a call
    try:
        worker = threading.Thread(target=work)
        worker.start()
        warm.wait()
        ticks: list[float] = []
        while worker.is_alive():
            now = time.perf_counter()
            if not ticks or now - ticks[-1] > 0.0005:
                ticks.append(now)
    finally:
        sys.setswitchinterval(switch)
    stamps = np.array(ticks)
    progressed = 0
    for t0, t1 in spans:
        lo, hi = t0 + 0.25 * (t1 - t0), t1 - 0.25 * (t1 - t0)
        progressed += bool(((stamps > lo) & (stamps < hi)).any())
    assert progressed >= calls // 2, (progressed, calls)
