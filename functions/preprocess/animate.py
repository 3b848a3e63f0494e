"""The CPU-heavy part of an animate job, driven step by step from the event loop.

``AnimateRun.step(n)`` (call it in a worker thread) pulls up to ``n`` more frames through
decode -> resample -> fit to grid -> pose (thread pool, ordered) -> render pose -> face crop ->
encode, and returns the chunks that got finished, ready to upload. Memory stays bounded: one
decoded frame, the pool's in-flight window, three encoders and the small keypoint rows.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from functions.preprocess.geometry import analysis_size
from functions.preprocess.limits import MediaLimits
from functions.preprocess.media import SampledFrame, Source, iter_frames
from functions.preprocess.pose import PoseEstimator, to_pixels
from functions.preprocess.render import FaceCropper, render_pose
from functions.preprocess.skeleton import DET, NUM_JOINTS
from runtime.frames_store import Chunk, ChunkWriter

STREAMS = ("driving", "pose", "face")
"""Frame streams an animate job produces: the driving video on the model grid, the rendered
skeleton on the model grid, and the face crops (face_size x face_size)."""


@dataclass
class AnimateStats:
    source_frames: int = 0
    """Output frames taken from the video (the rest, if any, repeat the last one)."""
    padded_frames: int = 0
    detected_frames: int = 0
    """Frames in which a person was found."""
    chunks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))


class AnimateRun:
    """One animate job's frame processing. ``step`` and ``close`` may be called from any thread;
    a lock serialises them (``close`` waits for a running ``step``, e.g. after a cancellation)."""

    def __init__(self, video: Source, *, width: int, height: int, fps: int, num_frames: int,
                 limits: MediaLimits, estimator: PoseEstimator, face_size: int,
                 chunk_frames: int = 32, analysis_min_side: int = 512) -> None:
        self.width, self.height, self.fps, self.num_frames = width, height, fps, num_frames
        self.face_size = face_size
        self.analysis_w, self.analysis_h = analysis_size(width, height, analysis_min_side)
        frames = iter_frames(video, fps=fps, width=width, height=height, limits=limits, max_frames=num_frames,
                             analysis_min_side=analysis_min_side)
        self._results: Iterator[tuple[SampledFrame, np.ndarray]] = estimator.map_ordered(frames, lambda s: s.analysis)
        self._writers = {
            "driving": ChunkWriter(width, height, fps, chunk_frames=chunk_frames),
            "pose": ChunkWriter(width, height, fps, chunk_frames=chunk_frames),
            "face": ChunkWriter(face_size, face_size, fps, chunk_frames=chunk_frames),
        }
        self._cropper = FaceCropper(face_size)
        self._rows: list[np.ndarray] = []
        self._last: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # driving, pose, face
        self.stats = AnimateStats()
        self.done = False
        self._lock = threading.Lock()

    def step(self, max_frames: int) -> list[tuple[str, Chunk]]:
        """Process up to ``max_frames`` frames; returns ``(stream, chunk)`` for each finished chunk.
        After the video (or ``num_frames``) is exhausted, pads, flushes and sets ``done``."""
        out: list[tuple[str, Chunk]] = []
        with self._lock:
            for _ in range(max_frames):
                nxt = next(self._results, None)
                if nxt is None:
                    self._finish(out)
                    break
                sampled, kp = nxt
                self._add(sampled, kp, out)
        return out

    def close(self) -> None:
        """Stop early: cancel in-flight pose work and close the video (idempotent)."""
        with self._lock:
            close = getattr(self._results, "close", None)
            if close is not None:
                close()

    def keypoints(self) -> np.ndarray:
        """(F, 33, 4) float32: x, y in grid pixels, visibility, detected (see ``skeleton``)."""
        if not self._rows:
            return np.zeros((0, NUM_JOINTS, 4), np.float32)
        return np.stack(self._rows).astype(np.float32, copy=False)

    def _emit(self, frames: tuple[np.ndarray, np.ndarray, np.ndarray], out: list[tuple[str, Chunk]]) -> None:
        for name, frame in zip(STREAMS, frames, strict=True):
            chunk = self._writers[name].add(frame)
            if chunk is not None:
                out.append((name, chunk))

    def _add(self, sampled: SampledFrame, kp: np.ndarray, out: list[tuple[str, Chunk]]) -> None:
        grid_kp = to_pixels(kp, self.width, self.height)
        self._rows.append(grid_kp)
        self.stats.source_frames += 1
        if kp[:, DET].max() > 0:
            self.stats.detected_frames += 1
        pose = render_pose(grid_kp, self.width, self.height)
        face = self._cropper.crop(sampled.analysis, to_pixels(kp, self.analysis_w, self.analysis_h))
        self._last = (sampled.frame, pose, face)
        self._emit(self._last, out)

    def _finish(self, out: list[tuple[str, Chunk]]) -> None:
        if self.done:
            return
        while self._last is not None and len(self._rows) < self.num_frames:  # video shorter than asked
            self._rows.append(self._rows[-1])
            self.stats.padded_frames += 1
            self._emit(self._last, out)
        for name, writer in self._writers.items():
            chunk = writer.flush()
            if chunk is not None:
                out.append((name, chunk))
        for name in STREAMS:
            self.stats.chunks[name] = self._writers[name].chunks
        self.done = True
