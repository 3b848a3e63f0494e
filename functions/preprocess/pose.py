"""Pose keypoints with MediaPipe Pose (pose_landmark_full + pose_detection, bundled in the
mediapipe 0.10.21 wheel: runs offline on CPU) on a pool of worker threads.

Threading model: a ``ThreadPoolExecutor`` of ``workers`` threads; each thread lazily builds its
own MediaPipe graph (graphs are not thread-safe) and keeps it for its lifetime. ``map_ordered``
submits frames with at most ``window`` (default 2 x workers) in flight and yields results in
input order, so memory is bounded and order is preserved. MediaPipe runs its graph in C++ and
releases the GIL while waiting for it, so threads scale across cores.

Every frame is estimated independently (``static_image_mode``: detector + landmark model per
frame). Tracking mode would be ~30 % cheaper per frame but makes each result depend on the
frames a thread saw before it, so results would change with the number of workers; per-frame
estimation is exactly reproducible (1 worker == N workers) and matches Wan-Animate's own
per-frame pose extraction.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from functions.preprocess.render import face_crops, render_pose, render_pose_video
from functions.preprocess.skeleton import NUM_JOINTS
from runtime.logging import get_logger

__all__ = ["PoseEstimator", "available_cores", "face_crops", "render_pose", "render_pose_video",
           "shared_estimator", "to_pixels"]

T = TypeVar("T")
R = TypeVar("R")
log = get_logger(stage="preprocess")


def available_cores() -> int:
    """CPUs this process may run on (affinity / cpuset aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _pose_module() -> Any:
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ INFO/WARNING lines on stderr
    from mediapipe.python.solutions import pose as mp_pose

    return mp_pose


class PoseEstimator:
    """A pool of threads, each with its own MediaPipe Pose graph. Use as a context manager or
    call ``close()``; ``shared_estimator`` keeps one per worker count for the process."""

    def __init__(self, workers: int | None = None, *, model_complexity: int = 1,
                 min_detection_confidence: float = 0.5, window: int | None = None) -> None:
        self.workers = max(1, workers or available_cores())
        self.window = max(1, window or 2 * self.workers)
        self._opts = {"static_image_mode": True, "model_complexity": model_complexity, "smooth_landmarks": False,
                      "enable_segmentation": False, "min_detection_confidence": min_detection_confidence}
        self._mp = _pose_module()
        self._local = threading.local()
        self._graphs: list[Any] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="pose")
        self._closed = False

    def __enter__(self) -> PoseEstimator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _graph(self) -> Any:
        graph = getattr(self._local, "graph", None)
        if graph is None:
            graph = self._mp.Pose(**self._opts)
            self._local.graph = graph
            with self._lock:
                self._graphs.append(graph)
        return graph

    def estimate_one(self, rgb: np.ndarray) -> np.ndarray:
        """(33, 4) float32 for one RGB uint8 frame: x, y normalised to [0, 1] of the frame,
        visibility, detected (1.0); all zeros when no person is found. Runs in the calling thread."""
        result = self._graph().process(rgb)
        out = np.zeros((NUM_JOINTS, 4), np.float32)
        if result.pose_landmarks is not None:
            out[:] = [(p.x, p.y, p.visibility, 1.0) for p in result.pose_landmarks.landmark]
        return out

    def map_ordered(self, items: Iterable[T], image_of: Callable[[T], np.ndarray]) -> Iterator[tuple[T, np.ndarray]]:
        """Yield ``(item, keypoints)`` in input order; at most ``window`` items in flight."""
        if self._closed:
            raise RuntimeError("PoseEstimator is closed")
        pending: deque[tuple[T, Future[np.ndarray]]] = deque()
        try:
            for item in items:
                pending.append((item, self._pool.submit(self.estimate_one, image_of(item))))
                if len(pending) >= self.window:
                    head, fut = pending.popleft()
                    yield head, fut.result()
            while pending:
                head, fut = pending.popleft()
                yield head, fut.result()
        finally:
            for _, fut in pending:
                fut.cancel()

    def map_ordered_then(self, items: Iterable[T], image_of: Callable[[T], np.ndarray],
                         then: Callable[[T, np.ndarray], R]) -> Iterator[tuple[T, np.ndarray, R]]:
        """Like :meth:`map_ordered`, and ``then(item, keypoints)`` runs in the same worker thread right
        after the pose (per-frame work that needs the keypoints, e.g. drawing the skeleton, in parallel)."""
        if self._closed:
            raise RuntimeError("PoseEstimator is closed")

        def work(item: T) -> tuple[np.ndarray, R]:
            kp = self.estimate_one(image_of(item))
            return kp, then(item, kp)

        pending: deque[tuple[T, Future[tuple[np.ndarray, R]]]] = deque()
        try:
            for item in items:
                pending.append((item, self._pool.submit(work, item)))
                if len(pending) >= self.window:
                    head, fut = pending.popleft()
                    yield (head, *fut.result())
            while pending:
                head, fut = pending.popleft()
                yield (head, *fut.result())
        finally:
            for _, fut in pending:
                fut.cancel()

    def submit(self, fn: Callable[..., R], *args: Any) -> Future[R]:
        """Run ``fn(*args)`` on the pool (e.g. encoding a finished chunk while pose goes on)."""
        return self._pool.submit(fn, *args)

    def estimate(self, frames: Iterable[np.ndarray]) -> np.ndarray:
        """(F, 33, 4) normalised keypoints for a sequence of RGB frames, in order."""
        rows = [kp for _, kp in self.map_ordered(frames, lambda f: f)]
        return np.stack(rows) if rows else np.zeros((0, NUM_JOINTS, 4), np.float32)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for graph in self._graphs:
                graph.close()
            self._graphs.clear()


def to_pixels(kp: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalised keypoints (..., 33, 4) -> the stored schema: x, y in grid pixels."""
    out = np.array(kp, dtype=np.float32, copy=True)
    out[..., 0] *= width
    out[..., 1] *= height
    return out


_shared: dict[int, PoseEstimator] = {}
_shared_lock = threading.Lock()


def shared_estimator(workers: int | None = None) -> PoseEstimator:
    """One long-lived estimator per worker count (graphs take ~0.3 s each to build)."""
    n = max(1, workers or available_cores())
    with _shared_lock:
        est = _shared.get(n)
        if est is None or est._closed:
            est = _shared[n] = PoseEstimator(n)
            log.info("pose_estimator_started", workers=n, window=est.window)
        return est
